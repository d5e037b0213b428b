//! Properties of the pattern matcher: it never panics, always terminates, and on the plain
//! glob sublanguage finds exactly the match a naive backtracking matcher finds (same
//! captures), so the memo that keeps it polynomial changes nothing. And of the entry index:
//! on random tables and probes, walking only the entries it finds decides exactly as walking
//! every entry (same output, flags, notes and PORT_ACCESS decision).

use std::path::Path;
use std::sync::Arc;

use msdispatcher::config::error::Diagnostics;
use msdispatcher::config::mappings;
use msdispatcher::mapping::pattern::Pattern;
use msdispatcher::mapping::port_access;
use msdispatcher::mapping::table::{InputFlags, MappingSet, Notes, Walk};
use proptest::prelude::*;

/// A mappings file's text compiled; `None` when it does not parse or compile.
fn compile(text: &str) -> Option<MappingSet> {
    let file: Arc<Path> = Arc::from(Path::new("m"));
    let mut d = Diagnostics::default();
    let m = mappings::parse_str(&file, text, &mut d).ok()?;
    MappingSet::compile(&m, &mut d).ok()
}

/// A pattern element of the sublanguage: a literal, `*`, `%` or lazy `$_*`.
#[derive(Debug, Clone)]
enum El {
    Lit(char),
    Star,
    LazyStar,
    One,
}

fn text_of(p: &[El]) -> String {
    p.iter()
        .map(|e| match e {
            El::Lit(c) => c.to_string(),
            El::Star => "*".into(),
            El::LazyStar => "$_*".into(),
            El::One => "%".into(),
        })
        .collect()
}

/// Exhaustive backtracking in the documented order: greedy stars try the longest first.
fn naive(p: &[El], s: &[char], caps: &mut Vec<String>) -> bool {
    let Some((first, rest)) = p.split_first() else {
        return s.is_empty();
    };
    match first {
        El::Lit(c) => {
            s.first().is_some_and(|x| x.eq_ignore_ascii_case(c)) && naive(rest, &s[1..], caps)
        }
        El::One => {
            if s.is_empty() {
                return false;
            }
            caps.push(s[..1].iter().collect());
            if naive(rest, &s[1..], caps) {
                return true;
            }
            caps.pop();
            false
        }
        El::Star | El::LazyStar => {
            let lens: Vec<usize> = if matches!(first, El::Star) {
                (0..=s.len()).rev().collect()
            } else {
                (0..=s.len()).collect()
            };
            for n in lens {
                caps.push(s[..n].iter().collect());
                if naive(rest, &s[n..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

fn element() -> impl Strategy<Value = El> {
    prop_oneof![
        4 => prop::sample::select(vec!['a', 'b', '|']).prop_map(El::Lit),
        2 => Just(El::Star),
        1 => Just(El::LazyStar),
        1 => Just(El::One),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn same_match_and_captures_as_naive_backtracking(
        p in prop::collection::vec(element(), 0..7),
        s in "[abAB|]{0,10}",
    ) {
        let chars: Vec<char> = s.chars().collect();
        let mut caps = Vec::new();
        let expected = naive(&p, &chars, &mut caps).then_some(caps);
        let pattern = Pattern::compile(&text_of(&p)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(pattern.matches(&s), expected);
    }

    #[test]
    fn compiling_and_matching_never_panic(p in "\\PC{0,40}", s in "\\PC{0,60}") {
        if let Ok(pattern) = Pattern::compile(&p) {
            let _ = pattern.matches(&s);
        }
    }

    #[test]
    fn mapping_language_characters_never_panic(p in "[*%$\\[\\]()<>{}^_@0-9a-fADHOSTX./|:\\\\-]{0,30}", s in "[0-9a-f.:|*%$ -]{0,40}") {
        if let Ok(pattern) = Pattern::compile(&p) {
            let _ = pattern.matches(&s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Whole tables of random entries, with $R loops and table calls, always finish.
    #[test]
    fn random_tables_always_finish(
        entries in prop::collection::vec(
            ("[*%a-c|]{1,6}", "[a-c|]{0,3}(\\$[0-2CERLYN]|\\$\\|T;\\$0\\|)?[a-c]{0,2}"),
            1..6,
        ),
        input in "[a-c|]{0,12}",
    ) {
        let mut text = String::from("T\n\n");
        for (p, t) in &entries {
            text.push_str(&format!("  {p}  {}\n", if t.is_empty() { "x" } else { t }));
        }
        if let Some(set) = compile(&text) {
            let _ = set.map("T", &input, &InputFlags::new(), &mut Notes::default());
        }
    }
}

#[test]
fn pathological_pattern_against_a_long_string_finishes() {
    let pattern = Pattern::compile("*a*a*a*a*a*a*a*a*a*a*b").expect("compiles");
    let input = "a".repeat(20_000);
    assert_eq!(pattern.matches(&input), None);
    let input = format!("{}b", "a".repeat(20_000));
    assert!(pattern.matches(&input).is_some());
}

#[test]
fn back_matches_are_bounded() {
    // Back matches disable the memo; the step limit still ends the search.
    let pattern = Pattern::compile("*$0**$1**$2**b").expect("compiles");
    let input = "a".repeat(3_000);
    assert_eq!(pattern.matches(&input), None);
}

#[test]
fn doubling_table_stops_at_the_output_limit() {
    // Each pass of GROW quadruples the string through a call to FOUR, then restarts.
    let text = "GROW\n\n  *  $|FOUR;$0|$R\n\nFOUR\n\n  *  $0$0$0$0$Y\n";
    let set = compile(text).expect("compiles");
    let mut notes = Notes::default();
    let got = set.map("GROW", "ab", &InputFlags::new(), &mut notes);
    assert!(notes.output_limit_hit, "{notes:?}");
    let len = got.map_or(0, |m| m.output.len());
    assert!(len <= msdispatcher::mapping::table::OUTPUT_LIMIT, "{len}");
}

#[test]
fn restarting_self_calls_stop_at_the_entry_budget() {
    // Every level restarts up to the iteration limit and calls itself eight deep: without a
    // budget that is 11^8 passes.
    let text = "LOOP\n\n  *  $C$|LOOP;$0|$Y$R\n  *  $0$Y\n";
    let set = compile(text).expect("compiles");
    let mut notes = Notes::default();
    let _ = set.map("LOOP", "a", &InputFlags::new(), &mut notes);
    assert!(notes.entry_budget_hit, "{notes:?}");
}

// The entry index against the linear walk.

const V4: &[&str] = &[
    "10.0.0.1",
    "10.0.0.10",
    "10.0.1.1",
    "1.2.3.4",
    "1.2.3.5",
    "12.3.4.5",
    "2.3.4.5",
    "192.0.2.1",
    "192.0.2.129",
    "172.16.5.4",
    "0.0.0.0",
    "255.255.255.255",
];
const V6: &[&str] = &[
    "::1",
    "2001:db8::1",
    "2001:DB8:1::1",
    "2001:db8::a",
    "2001:db9::1",
    "fe80::1",
    "::ffff:1.2.3.4",
];
const PORTS: &[&str] = &["25", "225", "226", "587", "40000", "2"];

fn any_address() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(V4).prop_map(str::to_string),
        prop::sample::select(V6).prop_map(str::to_string),
    ]
}

/// A pattern for an address field: every form that can stand for an address.
fn address_pattern() -> impl Strategy<Value = String> {
    let bits4 = prop::sample::select(vec!["", "/0", "/8", "/16", "/24", "/30", "/31", "/32"]);
    let ignored = prop::sample::select(vec!["", "/0", "/1", "/2", "/8", "/32"]);
    let bits6 = prop::sample::select(vec!["", "/0", "/16", "/32", "/48", "/64", "/127", "/128"]);
    prop_oneof![
        2 => Just("*".to_string()),
        3 => any_address(),
        2 => any_address().prop_map(|a| a.to_uppercase()),
        3 => (prop::sample::select(V4), bits4).prop_map(|(a, b)| format!("$({a}{b})")),
        2 => (prop::sample::select(V4), ignored).prop_map(|(a, b)| format!("$<{a}{b}>")),
        3 => (prop::sample::select(V6), bits6).prop_map(|(a, b)| format!("${{{a}{b}}}")),
        2 => (any_address(), 1..6usize).prop_map(|(a, n)| format!("{}*", &a[..n.min(a.len())])),
        2 => (any_address(), 1..6usize).prop_map(|(a, n)| format!("*{}", &a[a.len() - n.min(a.len())..])),
        1 => Just("$D*.$D*.$D*.$D*".to_string()),
        1 => Just("$_*".to_string()),
        1 => Just("%*".to_string()),
        1 => (prop::sample::select(V4)).prop_map(|a| format!("*$({a})")),
    ]
}

fn port_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("*".to_string()),
        3 => prop::sample::select(PORTS).prop_map(str::to_string),
        1 => Just("$D*".to_string()),
        1 => Just("2%".to_string()),
        1 => Just("%%5".to_string()),
    ]
}

/// A pattern: mostly the probe's shape, sometimes anything in the language's alphabet.
fn pattern() -> impl Strategy<Value = String> {
    let proto = prop::sample::select(vec!["TCP", "tcp", "*", "T%P", "UDP", "$@*"]);
    prop_oneof![
        8 => (proto, address_pattern(), port_pattern(), address_pattern(), port_pattern())
            .prop_map(|(a, b, c, d, e)| format!("{a}|{b}|{c}|{d}|{e}")),
        1 => "[*%a-cT|0-9.:]{1,10}",
        1 => Just("TCP|$D*.$0*|*".to_string()),
        1 => Just("*".to_string()),
    ]
}

/// Controls that never go back to the top of the table.
const FORWARD: &[&str] = &["", "", "$E", "$C", "$C", "$+1E"];

/// Every control, `$L` and `$R` too: a table that shortens and lengthens the string in turn
/// restarts until the entry budget (a million entries), so such cases are slow.
const ANY_CONTROL: &[&str] = &["", "", "$E", "$C", "$C", "$L", "$R", "$+1E"];

/// A template: a body (flags, texts, rewrites that make a new probe), maybe a condition,
/// maybe one of `controls`.
fn template(controls: &'static [&'static str]) -> impl Strategy<Value = String> {
    let body = prop::sample::select(vec![
        "$Y",
        "$N550$ no",
        "$F",
        "$<log$ $0|$N550$ x",
        "$>refused$ $1|$N421-a~421$ b$T",
        "$Yok||note$ $3",
        "TCP|$1|25|$3|2",
        "TCP|$0|225|10.0.0.1|$1",
        "$0",
        "$3$2$1$0",
        "$|SUB;$0|$Y",
        "$|SUB;$3|$N$0",
        "${db}$Y",
        "x",
    ]);
    let condition = prop::sample::select(vec!["", "", "", "$:x", "$;x", "$?0?", "$?100?"]);
    let control = prop::sample::select(controls);
    (condition, body, control).prop_map(|(c, b, k)| match k {
        // A failed substitution after `$C` moves on; before it, it ends the mapping.
        "$C" if b.starts_with("${") => format!("{c}$C{b}"),
        _ => format!("{c}{b}{k}"),
    })
}

/// A probe as the dispatcher writes it, from the pools.
fn real_probe() -> impl Strategy<Value = String> {
    (
        any_address(),
        prop::sample::select(PORTS),
        any_address(),
        prop::sample::select(PORTS),
    )
        .prop_map(|(s, sp, c, cp)| format!("TCP|{s}|{sp}|{c}|{cp}"))
}

/// A probe: mostly a real one from the pools, sometimes with one character changed (a near
/// miss), sometimes any short string.
fn probe() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => real_probe(),
        3 => (real_probe(), any::<prop::sample::Index>(), prop::sample::select(vec!['0', '1', '9', '.', ':', 'a', '|']))
            .prop_map(|(p, at, c)| {
                let mut chars: Vec<char> = p.chars().collect();
                let i = at.index(chars.len());
                chars[i] = c;
                chars.into_iter().collect()
            }),
        1 => "[a-cT0-9.:|]{0,20}",
    ]
}

fn table_text(entries: &[(String, String)], sub: &[String]) -> String {
    let mut text = String::from("PORT_ACCESS\n\n");
    for (p, t) in entries {
        text.push_str(&format!("  {p}  {t}\n"));
    }
    text.push_str("\nSUB\n\n");
    for p in sub {
        text.push_str(&format!("  {p}  [$0]$Y\n"));
    }
    text
}

/// The same result, notes and decision from both walks, for each probe.
fn walks_agree(set: &MappingSet, probes: &[String]) -> Result<(), TestCaseError> {
    let none = InputFlags::new();
    for probe in probes {
        let mut linear_notes = Notes::default();
        let mut indexed_notes = Notes::default();
        let linear = set.map_with("PORT_ACCESS", probe, &none, &mut linear_notes, Walk::Linear);
        let indexed = set.map_with(
            "PORT_ACCESS",
            probe,
            &none,
            &mut indexed_notes,
            Walk::Indexed,
        );
        prop_assert_eq!(&indexed, &linear, "probe {}", probe);
        prop_assert_eq!(&indexed_notes, &linear_notes, "probe {}", probe);
        prop_assert_eq!(
            port_access::decide_with(set, probe, Walk::Indexed),
            port_access::decide_with(set, probe, Walk::Linear),
            "probe {}",
            probe
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Walking only the indexed candidates gives what walking every entry gives.
    #[test]
    fn indexed_walk_decides_as_the_linear_walk(
        entries in prop::collection::vec((pattern(), template(FORWARD)), 1..40),
        sub in prop::collection::vec(pattern(), 0..4),
        probes in prop::collection::vec(probe(), 1..8),
    ) {
        if let Some(set) = compile(&table_text(&entries, &sub)) {
            walks_agree(&set, &probes)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The same with restarts (`$R`) and extra passes (`$L`).
    #[test]
    fn indexed_walk_decides_as_the_linear_walk_with_restarts(
        entries in prop::collection::vec((pattern(), template(ANY_CONTROL)), 1..24),
        sub in prop::collection::vec(pattern(), 0..4),
        probes in prop::collection::vec(probe(), 1..4),
    ) {
        if let Some(set) = compile(&table_text(&entries, &sub)) {
            walks_agree(&set, &probes)?;
        }
    }
}

#[test]
fn passed_over_entries_count_against_the_entry_budget() {
    // A calls B and restarts, eleven times; B does the same with C, and so on down to E:
    // 11^5 runs of E alone, each over 101 entries, far past the budget for the linear walk.
    // The index finds one candidate per pass, but the entries it passes over must count, or
    // it would run on where the linear walk stops.
    let mut text = String::new();
    let tables = [
        ("A", "$C$|B;$0|$Y$R"),
        ("B", "$C$|C;$0|$Y$R"),
        ("C", "$C$|D;$0|$Y$R"),
        ("D", "$C$|E;$0|$Y$R"),
        ("E", "$0$Y"),
    ];
    for (name, call) in tables {
        text.push_str(&format!("{name}\n\n"));
        for i in 0..100 {
            text.push_str(&format!("  nomatch{i}  $N\n"));
        }
        text.push_str(&format!("  *  {call}\n  *  $0$Y\n\n"));
    }
    let set = compile(&text).expect("compiles");
    let none = InputFlags::new();
    let mut linear_notes = Notes::default();
    let linear = set.map_with("A", "x", &none, &mut linear_notes, Walk::Linear);
    assert!(
        linear_notes.entry_budget_hit,
        "the premise: {linear_notes:?}"
    );
    let mut indexed_notes = Notes::default();
    let indexed = set.map_with("A", "x", &none, &mut indexed_notes, Walk::Indexed);
    assert_eq!(indexed, linear);
    assert_eq!(indexed_notes, linear_notes);
}
