//! imta.cnf as installations have it: the seed's minimal file (with its missing blank line),
//! a relay-style file with defaults, continued keyword lines and an include, channel option
//! files, and broken files with their exact errors.

mod common;

use std::path::Path;
use std::sync::Arc;

use msdispatcher::config::channel_option;
use msdispatcher::config::error::{ConfigError, Diagnostics};
use msdispatcher::config::imta_cnf::{self, ImtaCnf};
use msdispatcher::config::tailor::Tailor;
use proptest::prelude::*;

fn load(path: &Path) -> Result<(ImtaCnf, Diagnostics), ConfigError> {
    let mut diags = Diagnostics::default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let tailor = Tailor::from_text(&dir.join("tailor"), "", &mut diags)?;
    let cnf = imta_cnf::load(path, &tailor, &mut diags)?;
    Ok((cnf, diags))
}

fn keyword_names(cnf: &ImtaCnf, channel: &str) -> Vec<String> {
    cnf.channel(channel)
        .map(|c| {
            c.effective_keywords()
                .iter()
                .map(|k| k.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn seed_imta_cnf_defines_both_lmtp_channels_with_a_warning() {
    let (c, d) = load(&common::fixtures().join("seed/imta.cnf")).expect("seed parses");
    for (name, host) in [
        ("tcp_lmtpss", "tcp_lmtpss-daemon"),
        ("tcp_lmtpsn", "tcp_lmtpsn-daemon"),
    ] {
        let ch = c.channel(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(ch.is_lmtp(), "{name} has lmtp");
        assert_eq!(ch.official_host, host);
    }
    assert!(c.rewrite_rules.is_empty());
    let w: Vec<String> = d.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains(
            "imta.cnf:2:1: warning: channel block `tcp_lmtpss` before the first blank line"
        ),
        "{w:#?}"
    );
}

#[test]
fn seed_with_the_blank_line_gives_no_warning() {
    let (c, d) = load(&common::fixtures().join("imta_cnf/seed_with_blank_line")).expect("parses");
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.channels.len(), 2);
}

#[test]
fn defaults_are_inherited_and_own_keywords_win() {
    let (c, _) = load(&common::fixtures().join("imta_cnf/full.cnf")).expect("parses");
    assert_eq!(
        keyword_names(&c, "l"),
        ["logging", "subdirs", "maxjobs", "pool"]
    );
    let ss = keyword_names(&c, "tcp_lmtpss");
    assert!(
        ss.contains(&"nologging".to_string()) && !ss.contains(&"logging".to_string()),
        "{ss:?}"
    );
    assert_eq!(
        keyword_names(&c, "tcp_lmtpsn"),
        ["lmtp_crlf", "blocklimit"],
        "nodefaults cancels logging"
    );
    assert!(
        c.channel("TCP_LMTPSN").is_some_and(|ch| ch.is_lmtp()),
        "lookup in lower case"
    );
}

#[test]
fn keyword_arguments_are_consumed_by_arity() {
    let (c, d) = load(&common::fixtures().join("imta_cnf/full.cnf")).expect("parses");
    let tcp = c.channel("tcp_local").expect("tcp_local");
    let args = |k: &str| tcp.keyword(k).map(|k| k.args.clone()).unwrap_or_default();
    assert_eq!(args("backoff"), ["\"pt2m\"", "\"pt5m\"", "\"pt30m\""]);
    assert_eq!(args("notices"), ["1", "2", "3"]);
    assert_eq!(args("pool"), ["SMTP_POOL"]);
    assert_eq!(args("threaddepth"), ["20"]);
    assert_eq!(tcp.official_host, "tcp-daemon");
    assert_eq!(tcp.local_alias.as_deref(), Some("relay.example.com"));
    assert_eq!(tcp.hosts, [("relay.example.com".to_string(), None)]);
    let ss = c.channel("tcp_lmtpss").expect("tcp_lmtpss");
    let unknown: Vec<&str> = ss
        .unknown_keywords()
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(unknown, ["mailsrv_group"]);
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn rewrite_rules_include_the_included_ones() {
    let (c, _) = load(&common::fixtures().join("imta_cnf/full.cnf")).expect("parses");
    let patterns: Vec<&str> = c.rewrite_rules.iter().map(|r| r.pattern.as_str()).collect();
    assert_eq!(patterns, ["$*", ".example.com", ".org"]);
}

#[test]
fn channel_option_file_is_read_and_an_absent_one_is_empty() {
    let dir = common::fixtures().join("imta_cnf");
    let mut d = Diagnostics::default();
    let o = channel_option::load(&dir.join("tcp_lmtpss_option"), &mut d).expect("reads");
    assert_eq!(
        o.get("store_root").map(|s| s.value.as_str()),
        Some("/var/opt/store/")
    );
    assert_eq!(
        o.get("COMMAND_RECEIVE_TIME").map(|s| s.value.as_str()),
        Some("10")
    );
    let none = channel_option::load(&dir.join("tcp_lmtpsn_option"), &mut d).expect("absent");
    assert!(!none.exists);
}

#[test]
fn broken_imta_cnf_files_fail_with_their_exact_messages() {
    let n = common::check_broken_fixtures("imta_cnf", |p| load(p).map(|_| ()));
    assert!(n >= 7, "only {n} cases");
}

proptest! {
    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let file: Arc<Path> = Arc::from(Path::new("imta.cnf"));
        let _ = imta_cnf::parse_str(&file, &text, &mut Diagnostics::default());
    }
}
