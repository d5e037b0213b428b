//! The mappings file as administrators write it: the seed's table, several tables with
//! comments, a continued entry, includes, and broken files with their exact errors.

mod common;

use std::path::Path;
use std::sync::Arc;

use msdispatcher::config::error::{ConfigError, Diagnostics};
use msdispatcher::config::mappings::{self, MappingFile};
use msdispatcher::config::tailor::Tailor;
use msdispatcher::mapping::table::MappingSet;
use proptest::prelude::*;

/// Loads a mappings file with the tailor beside it, and compiles it as --check does.
fn load(path: &Path) -> Result<(MappingFile, Diagnostics), ConfigError> {
    let mut diags = Diagnostics::default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let tailor = Tailor::from_text(&dir.join("tailor"), "", &mut diags)?;
    let file = mappings::load(path, &tailor, &mut diags)?;
    MappingSet::compile(&file, &mut diags)?;
    Ok((file, diags))
}

fn entries(file: &MappingFile, table: &str) -> Vec<(String, String)> {
    file.table(table)
        .map(|t| {
            t.entries
                .iter()
                .map(|e| (e.pattern.clone(), e.template.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn seed_port_access_table_has_five_entries_in_order() {
    let (m, d) = load(&common::fixtures().join("seed/mappings")).expect("seed parses");
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(m.tables.len(), 1);
    let e = entries(&m, "port_access");
    assert_eq!(e.len(), 5);
    assert_eq!(e[0], ("TCP|*|225|1.2.3.4|*".into(), "$Y".into()));
    assert_eq!(
        e[4],
        (
            "TCP|*|*|*|*".into(),
            "$N500$ Do$ not$ connect$ to$ this$ machine".into()
        )
    );
    let t = m.table("PORT_ACCESS").expect("table");
    assert_eq!(
        (t.entries[4].loc.line, t.entries[4].template_loc.col),
        (7, 17)
    );
}

#[test]
fn quoted_space_does_not_end_the_pattern() {
    let (m, _) = load(&common::fixtures().join("mappings_files/several_tables")).expect("parses");
    assert_eq!(
        entries(&m, "SMS_TEXT")[1],
        ("B|*$ $ *".into(), "B|$0$ $1$R".into())
    );
}

#[test]
fn crlf_line_ends_and_tab_indentation_are_accepted() {
    let path = common::fixtures().join("mappings_files/crlf_tabs");
    let raw = std::fs::read_to_string(&path).expect("fixture");
    assert!(raw.contains("\r\n"), "the fixture lost its CRLF line ends");
    let (m, d) = load(&path).expect("parses");
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(
        entries(&m, "PORT_ACCESS"),
        [
            ("TCP|*|25|*|*".to_string(), "$Y".to_string()),
            ("*|*|*|*|*".into(), "$N500$\tGo$ away".into())
        ]
    );
}

#[test]
fn comments_between_entries_do_not_end_a_table() {
    let (m, _) = load(&common::fixtures().join("mappings_files/several_tables")).expect("parses");
    let names: Vec<&str> = m.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["PORT_ACCESS", "INTERNAL_IP", "SMS_TEXT"]);
    assert_eq!(entries(&m, "PORT_ACCESS").len(), 2);
    assert_eq!(
        entries(&m, "INTERNAL_IP")[0],
        ("$(123.45.67.89/24)".into(), "$Y".into()),
        "tabs separate columns like spaces"
    );
    assert_eq!(entries(&m, "SMS_TEXT")[1].0, "B|*$ $ *");
}

#[test]
fn documented_continued_entry_is_one_pattern_and_one_template() {
    let (m, d) = load(&common::fixtures().join("mappings_files/continued")).expect("parses");
    let e = entries(&m, "ORIG_MAIL_ACCESS");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, "TCP|*|*|*|*|SMTP|MAIL|*|*@*|*|*");
    assert_eq!(
        e[0].1,
        "$[msg_svr_base/lib/dns_verify.so,  dns_verify,$6|$$y|$$NInvalid$ host:$ $$6$ -$ %e]"
    );
    assert!(
        d.warnings
            .iter()
            .any(|w| w.message.contains("site routine call")),
        "the callout is reported as unsupported: {d:?}"
    );
}

#[test]
fn continuation_line_in_column_one_is_not_a_table_name() {
    let (m, _) = load(&common::fixtures().join("mappings_files/continued")).expect("parses");
    let names: Vec<&str> = m.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ORIG_MAIL_ACCESS"]);
    let e = &m.tables[0].entries[0];
    assert_eq!(
        (
            e.loc.line,
            e.loc.col,
            e.template_loc.line,
            e.template_loc.col
        ),
        (3, 3, 4, 1),
        "positions are those of the physical lines"
    );
}

#[test]
fn included_entries_join_the_table_in_place() {
    let (m, _) = load(&common::fixtures().join("mappings_files/with_include")).expect("parses");
    let e = entries(&m, "PORT_ACCESS");
    let patterns: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        patterns,
        ["TCP|*|225|1.2.3.4|*", "TCP|*|225|1.2.3.5|*", "TCP|*|*|*|*"]
    );
    let t = m.table("PORT_ACCESS").expect("table");
    assert!(t.entries[0].loc.file.ends_with("relays.inc"));
}

#[test]
fn broken_mapping_files_fail_with_their_exact_messages() {
    let n = common::check_broken_fixtures("mappings", |p| load(p).map(|_| ()));
    assert!(n >= 10, "only {n} cases");
}

#[test]
fn doubtful_lines_are_read_with_a_warning_naming_line_and_column() {
    let (m, d) = load(&common::fixtures().join("mappings_files/warnings")).expect("parses");
    let dir = format!("{}/", common::fixtures().join("mappings_files").display());
    let w: Vec<String> = d
        .warnings
        .iter()
        .map(|w| w.to_string().replace(&dir, ""))
        .collect();
    assert_eq!(
        w,
        [
            "warnings:2:15: warning: `old name` after table name PORT_ACCESS is ignored (a table \
             name stands alone on its line; an entry must be indented by a blank or tab)",
            "warnings:3:21: warning: `# allow SMTP` after the template is ignored (quote blanks \
             inside a template as `$ `)",
            "warnings:4:3: warning: `!TCP|*|26|*|*` is read as an entry whose pattern starts \
             with `!`; a comment must start in column 1",
            "warnings:5:3: warning: entry `TCP|*|27|*|*` has no template; its template is empty",
            // Warnings about the structure come after those about single lines.
            "warnings:3:3: warning: a blank line must follow table name PORT_ACCESS (read as its \
             entry anyway)",
        ]
    );
    let t = m.table("PORT_ACCESS").expect("table");
    assert_eq!(t.entries.len(), 3);
    assert_eq!(t.entries[0].trailing.as_deref(), Some("# allow SMTP"));
    assert_eq!(t.entries[2].template, "");
    assert_eq!(entries(&m, "INTERNAL_IP").len(), 1);
}

#[test]
fn columns_longer_than_the_documented_limits_warn() {
    let file: Arc<Path> = Arc::from(Path::new("mappings"));
    let ok = format!("T\n\n  {}  {}\n", "a".repeat(252), "b".repeat(1024));
    let mut d = Diagnostics::default();
    mappings::parse_str(&file, &ok, &mut d).expect("parses");
    assert!(d.is_empty(), "{d:?}");
    let long = format!("T\n\n  {}  {}\n", "a".repeat(253), "b".repeat(1025));
    mappings::parse_str(&file, &long, &mut d).expect("parses");
    let w: Vec<String> = d.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "mappings:3:3: warning: pattern of 253 characters, longer than the 252 the original \
             documents (Sun 6.3 allows 256)",
            "mappings:3:258: warning: template of 1025 characters, longer than the 1024 the \
             original allows",
        ]
    );
}

#[test]
fn missing_blank_line_after_a_name_and_text_after_a_template_warn() {
    let file: Arc<Path> = Arc::from(Path::new("mappings"));
    let mut d = Diagnostics::default();
    let m = mappings::parse_str(&file, "T\n  a  b  c\n", &mut d).expect("parses");
    assert_eq!(m.tables[0].entries[0].trailing.as_deref(), Some("c"));
    let w: Vec<String> = d.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].starts_with("mappings:2:9: warning: `c` after the template"),
        "{w:#?}"
    );
    assert!(
        w[1].starts_with("mappings:2:3: warning: a blank line must follow"),
        "{w:#?}"
    );
}

/// Column text as units: ordinary characters, `$ `/`$<tab>`-quoted blanks and `$$`, never a
/// bare blank.
fn column_units() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9|.*%@]{1,4}".prop_map(|s| s),
            Just("$ ".to_string()),
            Just("$\t".to_string()),
            Just("$$".to_string()),
        ],
        1..6,
    )
}

fn column() -> impl Strategy<Value = String> {
    column_units().prop_map(|parts| parts.concat())
}

/// Blanks between the indentation, the pattern and the template.
fn blanks() -> impl Strategy<Value = String> {
    "[ \t]{1,3}".prop_map(|s| s)
}

proptest! {
    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let file: Arc<Path> = Arc::from(Path::new("m"));
        let _ = mappings::parse_str(&file, &text, &mut Diagnostics::default());
    }

    #[test]
    fn generated_tables_round_trip(
        tables in prop::collection::vec(
            ("[A-Z][A-Z_]{0,10}", prop::collection::vec((column(), column()), 1..5)),
            1..4,
        )
    ) {
        let mut text = String::new();
        let mut names = Vec::new();
        for (i, (name, entries)) in tables.iter().enumerate() {
            let name = format!("{name}{i}");
            text.push_str(&format!("{name}\n\n"));
            for (p, t) in entries {
                text.push_str(&format!(" \t{p} \t {t}\n"));
            }
            text.push('\n');
            names.push(name);
        }
        let file: Arc<Path> = Arc::from(Path::new("m"));
        let m = mappings::parse_str(&file, &text, &mut Diagnostics::default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(m.tables.len(), tables.len());
        for ((_, entries), (table, name)) in tables.iter().zip(m.tables.iter().zip(&names)) {
            prop_assert_eq!(&table.name, name);
            let got: Vec<(String, String)> = table.entries.iter()
                .map(|e| (e.pattern.clone(), e.template.clone())).collect();
            prop_assert_eq!(&got, entries);
        }
    }

    /// A line break (`\` + newline) between any two units, or inside the blanks, changes
    /// nothing: the backslash and the newline are removed, all else is kept, and the pieces
    /// that start in column 1 are not table names.
    #[test]
    fn continuation_between_any_two_units_changes_nothing(
        indent in blanks(),
        pattern in column_units(),
        sep in blanks(),
        template in column_units(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut units: Vec<String> = vec![indent];
        units.extend(pattern.iter().cloned());
        units.extend(sep.chars().map(String::from));
        units.extend(template.iter().cloned());
        let mut at: Vec<usize> = cuts.iter().map(|c| 1 + c.index(units.len() - 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut line = String::new();
        for (i, u) in units.iter().enumerate() {
            if at.contains(&i) {
                line.push_str("\\\n");
            }
            line.push_str(u);
        }
        let text = format!("T\n\n{line}\n");
        let file: Arc<Path> = Arc::from(Path::new("m"));
        let m = mappings::parse_str(&file, &text, &mut Diagnostics::default())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(m.tables.len(), 1);
        prop_assert_eq!(m.tables[0].entries.len(), 1);
        let e = &m.tables[0].entries[0];
        prop_assert_eq!(&e.pattern, &pattern.concat());
        prop_assert_eq!(&e.template, &template.concat());
    }
}
