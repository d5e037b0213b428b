//! The mapping engine against the test vectors in `fixtures/mappings/*.vectors` (format in
//! `fixtures/mappings/README.md`): each case is a table, an input, and the output string and
//! flags the engine must give.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use msdispatcher::config::error::Diagnostics;
use msdispatcher::config::mappings;
use msdispatcher::mapping::table::{InputFlags, MappingSet, Notes};

struct Case {
    line: usize,
    table: String,
    input: String,
    expected: Option<String>,
    flags: String,
    input_flags: InputFlags,
}

/// `\t` → tab, `\\` → backslash; any other backslash stays as it is.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('t') => {
                    chars.next();
                    out.push('\t');
                    continue;
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

fn letters(s: &str) -> String {
    if s == "-" {
        String::new()
    } else {
        s.to_string()
    }
}

/// Splits a vectors file into its mappings text and its cases.
fn read_vectors(path: &Path) -> (String, Vec<Case>) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (head, cases_text) = text
        .split_once("=== cases\n")
        .unwrap_or_else(|| panic!("{}: no `=== cases` line", path.display()));
    let tables = head
        .strip_prefix("=== tables\n")
        .unwrap_or_else(|| panic!("{}: must start with `=== tables`", path.display()));
    let first_case_line = head.lines().count() + 2;
    let mut cases = Vec::new();
    for (i, line) in cases_text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(
            cols.len() == 4 || cols.len() == 5,
            "{}:{}: expected 4 or 5 tab-separated columns, got {}",
            path.display(),
            first_case_line + i,
            cols.len()
        );
        cases.push(Case {
            line: first_case_line + i,
            table: cols[0].to_string(),
            input: unescape(cols[1]),
            expected: (cols[2] != "NO MATCH").then(|| unescape(cols[2])),
            flags: letters(cols[3]),
            input_flags: cols
                .get(4)
                .map(|f| letters(f).chars().collect())
                .unwrap_or_default(),
        });
    }
    (tables.to_string(), cases)
}

fn vector_files() -> Vec<PathBuf> {
    let dir = common::fixtures().join("mappings");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "vectors"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_vector_gives_its_output_and_flags() {
    let mut failures = Vec::new();
    let mut total = 0;
    for path in vector_files() {
        let (tables, cases) = read_vectors(&path);
        let file: Arc<Path> = Arc::from(path.as_path());
        let mut diags = Diagnostics::default();
        let parsed =
            mappings::parse_str(&file, &tables, &mut diags).unwrap_or_else(|e| panic!("{e}"));
        let set = MappingSet::compile(&parsed, &mut diags).unwrap_or_else(|e| panic!("{e}"));
        for case in cases {
            total += 1;
            let mut notes = Notes::default();
            let got = set.map(&case.table, &case.input, &case.input_flags, &mut notes);
            let got_output = got.as_ref().map(|m| m.output.clone());
            let got_flags: String = got
                .as_ref()
                .map(|m| m.flags.iter().collect())
                .unwrap_or_default();
            let expected_flags = if case.expected.is_some() {
                case.flags.clone()
            } else {
                String::new()
            };
            if got_output != case.expected || got_flags != expected_flags {
                failures.push(format!(
                    "{}:{}: {} {:?}\n    expected {:?} [{}]\n    got      {:?} [{}]",
                    path.file_name().and_then(|f| f.to_str()).unwrap_or("?"),
                    case.line,
                    case.table,
                    case.input,
                    case.expected,
                    expected_flags,
                    got_output,
                    got_flags
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 150, "only {total} vectors");
}
