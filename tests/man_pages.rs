//! The manual pages in man/ are clean roff (`mandoc -T lint` says nothing) and name what the
//! documentation and the program name: every option of docs/configuration.md's table in
//! dispatcher.cnf(5) and nothing else, every flag of `dispatcher --help` in dispatcher(8) and
//! nothing else, every channel option of docs/lmtp.md's table in the image page(s) it applies
//! to and nothing else, and every reply code of docs/lmtp.md's "Every reply" in both image
//! pages. So a page cannot drift from the docs unnoticed.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::docs::{backticked, doc, table_after};

const PAGES: [&str; 4] = [
    "dispatcher.8",
    "dispatcher.cnf.5",
    "tcp_lmtp_server.8",
    "tcp_lmtpn_server.8",
];
const IMAGE_PAGES: [&str; 2] = ["tcp_lmtp_server.8", "tcp_lmtpn_server.8"];

fn page_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name)
}

fn page(name: &str) -> String {
    let path = page_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// What `mandoc -T lint` prints about a file (empty: nothing to say), with its exit status.
fn lint(path: &Path) -> (String, bool) {
    let out = Command::new("mandoc")
        .args(["-T", "lint"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run mandoc ({e}): install it with scripts/install-test-deps.sh")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

/// The tag lines of the `.TP` items in section `section` of a page.
fn tags<'a>(text: &'a str, section: &str) -> Vec<&'a str> {
    let header = format!(".SH {section}");
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.starts_with(".SH "))
        .collect();
    assert!(!lines.is_empty(), "no section `{header}`");
    lines
        .windows(2)
        .filter(|w| w[0].trim() == ".TP")
        .map(|w| w[1])
        .collect()
}

/// The names a page gives as the tags of `.TP` items in section `section`: the upper-case
/// words (`MAX_CONNS`, `ASTLM BIOLM ...`) of the `.B`/`.BR` tag lines.
fn tagged_names(text: &str, section: &str) -> BTreeSet<String> {
    tags(text, section)
        .into_iter()
        .filter_map(|tag| tag.strip_prefix(".B ").or_else(|| tag.strip_prefix(".BR ")))
        .flat_map(|tag| tag.split([' ', ',', '"']).map(str::to_string))
        .filter(|w| {
            w.len() > 1
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        })
        .collect()
}

/// The long flags (`--check`) a text names; roff writes a hyphen as `\-`.
fn long_flags(text: &str) -> BTreeSet<String> {
    text.replace("\\-", "-")
        .split(|c: char| !(c.is_ascii_lowercase() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches('-').to_string())
        .collect()
}

fn missing(want: &BTreeSet<String>, have: &BTreeSet<String>) -> Vec<String> {
    want.difference(have).cloned().collect()
}

#[test]
fn mandoc_lint_reports_nothing_on_every_page() {
    for name in PAGES {
        let (text, ok) = lint(&page_path(name));
        assert!(ok && text.is_empty(), "mandoc -T lint man/{name}:\n{text}");
    }
}

#[test]
fn mandoc_lint_reports_a_page_without_header_or_with_an_unknown_macro() {
    for name in ["no_header.8", "unknown_macro.8"] {
        let path = common::fixtures().join("man").join(name);
        let (text, ok) = lint(&path);
        assert!(
            !ok && !text.is_empty(),
            "mandoc -T lint found nothing wrong with fixtures/man/{name}"
        );
    }
}

#[test]
fn every_page_has_a_th_header_naming_itself_its_section_date_source_and_manual() {
    for name in PAGES {
        let text = page(name);
        let (title, section) = name.rsplit_once('.').expect("a page name ends in .SECTION");
        let th = text
            .lines()
            .find(|l| l.starts_with(".TH "))
            .unwrap_or_else(|| panic!("man/{name} has no .TH line"));
        let want = format!(".TH {} {section} \"", title.to_uppercase());
        assert!(
            th.starts_with(&want),
            "man/{name}: `{th}` does not start with `{want}`"
        );
        let quoted = th.matches('"').count();
        assert_eq!(
            quoted, 6,
            "man/{name}: `{th}` wants a quoted date, source and manual"
        );
    }
}

#[test]
fn dispatcher_cnf_page_names_the_options_of_the_configuration_doc_and_no_other() {
    let docs: BTreeSet<String> = table_after(&doc("configuration.md"), "### Options")
        .iter()
        .flat_map(|row| backticked(&row[0]))
        .collect();
    let man = tagged_names(&page("dispatcher.cnf.5"), "OPTIONS");
    assert!(
        docs.len() > 20,
        "too few options read from the doc: {docs:?}"
    );
    assert_eq!(
        missing(&docs, &man),
        Vec::<String>::new(),
        "in docs/configuration.md, not in dispatcher.cnf.5"
    );
    assert_eq!(
        missing(&man, &docs),
        Vec::<String>::new(),
        "in dispatcher.cnf.5, not in docs/configuration.md"
    );
}

#[test]
fn dispatcher_page_names_every_flag_of_dispatcher_help_and_no_other() {
    let out = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .arg("--help")
        .output()
        .expect("run dispatcher --help");
    assert!(out.status.success(), "dispatcher --help failed");
    let help = long_flags(&String::from_utf8_lossy(&out.stdout));
    let text = page("dispatcher.8");
    let described = long_flags(&tags(&text, "OPTIONS").join("\n"));
    assert!(help.len() > 8, "too few flags read from --help: {help:?}");
    assert_eq!(
        missing(&help, &described),
        Vec::<String>::new(),
        "not described under OPTIONS in dispatcher.8"
    );
    assert_eq!(
        missing(&long_flags(&text), &help),
        Vec::<String>::new(),
        "in dispatcher.8, not in dispatcher --help"
    );
}

#[test]
fn image_pages_name_the_channel_options_of_the_lmtp_doc_that_apply_to_them() {
    let rows = table_after(&doc("lmtp.md"), "### The channel option file");
    for (name, image) in [
        ("tcp_lmtp_server.8", "store"),
        ("tcp_lmtpn_server.8", "native"),
    ] {
        let docs: BTreeSet<String> = rows
            .iter()
            .filter(|row| row[1] == image || row[1] == "both")
            .flat_map(|row| backticked(&row[0]))
            .collect();
        let man = tagged_names(&page(name), "CHANNEL OPTIONS");
        assert!(
            docs.len() > 5,
            "too few options for {image} in docs/lmtp.md"
        );
        assert_eq!(missing(&docs, &man), Vec::<String>::new(), "not in {name}");
        assert_eq!(
            missing(&man, &docs),
            Vec::<String>::new(),
            "in {name}, not for {image} in docs/lmtp.md"
        );
    }
}

#[test]
fn image_pages_give_every_reply_code_of_the_lmtp_doc() {
    let codes: BTreeSet<String> = table_after(&doc("lmtp.md"), "### Every reply")
        .iter()
        .flat_map(|row| backticked(&row[1]))
        .filter_map(|reply| {
            let words: Vec<&str> = reply.split([' ', '-']).collect();
            let code = words
                .first()
                .filter(|w| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))?;
            Some(
                match words.get(1).filter(|w| {
                    w.split('.').count() == 3 && w.starts_with(|c: char| c.is_ascii_digit())
                }) {
                    Some(enhanced) => format!("{code} {enhanced}"),
                    None => code.to_string(),
                },
            )
        })
        .collect();
    assert!(codes.len() > 25, "too few reply codes read: {codes:?}");
    for name in IMAGE_PAGES {
        let text = page(name);
        let absent: Vec<&String> = codes
            .iter()
            .filter(|c| !text.contains(c.as_str()))
            .collect();
        assert!(absent.is_empty(), "{name} does not give {absent:?}");
    }
}
