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

fn column() -> impl Strategy<Value = String> {
    // Column text: ordinary characters, `$ `-quoted blanks and `$$`, never a bare blank.
    prop::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9|.*%@]{1,4}".prop_map(|s| s),
            Just("$ ".to_string()),
            Just("$$".to_string()),
        ],
        1..6,
    )
    .prop_map(|parts| parts.concat())
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
                text.push_str(&format!("  {p}   {t}\n"));
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
}
