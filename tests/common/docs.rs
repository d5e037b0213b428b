//! Reading the administrator's documentation from tests, so that tests can hold the code, the
//! manual pages and `docs/` to the same lists of names (tests/docs_cover_options.rs,
//! tests/man_pages.rs).

use std::path::Path;

/// The text of `docs/<name>`.
pub fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The rows of the first Markdown table after the line `heading` of `text`, each as its cells
/// (trimmed, without the header row and the `|---|` line). Panics when there is no such
/// heading or table: a renamed heading must not make a comparison pass on nothing.
pub fn table_after(text: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| l.trim() != heading);
    assert!(lines.next().is_some(), "no heading `{heading}`");
    let rows: Vec<Vec<String>> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(!rows.is_empty(), "no table after `{heading}`");
    rows
}

/// The names written in backticks in a table cell: "`ASTLM` `BIOLM`" gives both.
pub fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}
