//! Properties of the pattern matcher: it never panics, always terminates, and on the plain
//! glob sublanguage finds exactly the match a naive backtracking matcher finds (same
//! captures), so the memo that keeps it polynomial changes nothing.

use std::path::Path;
use std::sync::Arc;

use msdispatcher::config::error::Diagnostics;
use msdispatcher::config::mappings;
use msdispatcher::mapping::pattern::Pattern;
use msdispatcher::mapping::table::{InputFlags, MappingSet, Notes};
use proptest::prelude::*;

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
        let file: Arc<Path> = Arc::from(Path::new("m"));
        let mut d = Diagnostics::default();
        if let Ok(m) = mappings::parse_str(&file, &text, &mut d) {
            if let Ok(set) = MappingSet::compile(&m, &mut d) {
                let _ = set.map("T", &input, &InputFlags::new(), &mut Notes::default());
            }
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
    let file: Arc<Path> = Arc::from(Path::new("m"));
    // Each pass of GROW quadruples the string through a call to FOUR, then restarts.
    let text = "GROW\n\n  *  $|FOUR;$0|$R\n\nFOUR\n\n  *  $0$0$0$0$Y\n";
    let mut d = Diagnostics::default();
    let m = mappings::parse_str(&file, text, &mut d).expect("parses");
    let set = MappingSet::compile(&m, &mut d).expect("compiles");
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
    let file: Arc<Path> = Arc::from(Path::new("m"));
    let text = "LOOP\n\n  *  $C$|LOOP;$0|$Y$R\n  *  $0$Y\n";
    let mut d = Diagnostics::default();
    let m = mappings::parse_str(&file, text, &mut d).expect("parses");
    let set = MappingSet::compile(&m, &mut d).expect("compiles");
    let mut notes = Notes::default();
    let _ = set.map("LOOP", "a", &InputFlags::new(), &mut notes);
    assert!(notes.entry_budget_hit, "{notes:?}");
}
