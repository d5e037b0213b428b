//! imta.cnf as installations have it: the seed's minimal file (with its missing blank line),
//! a relay-style file with defaults, continued keyword lines and includes, channel option
//! files, and broken files with their exact errors.

mod common;

use std::path::Path;
use std::sync::Arc;

use msdispatcher::config::channel_option;
use msdispatcher::config::error::{ConfigError, Diagnostics};
use msdispatcher::config::imta_cnf::{self, ImtaCnf};
use msdispatcher::config::tailor::Tailor;
use proptest::prelude::*;

/// Loads an imta.cnf with a tailor whose `IMTA_TABLE` is the file's own directory.
fn load(path: &Path) -> Result<(ImtaCnf, Diagnostics), ConfigError> {
    let mut diags = Diagnostics::default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let tailor = Tailor::from_text(&dir.join("tailor"), "", &mut diags)?;
    let cnf = imta_cnf::load(path, &tailor, &mut diags)?;
    Ok((cnf, diags))
}

fn fixture(name: &str) -> (ImtaCnf, Diagnostics) {
    load(&common::fixtures().join("imta_cnf").join(name))
        .unwrap_or_else(|e| panic!("{name} does not load: {e}"))
}

fn warnings(d: &Diagnostics) -> Vec<String> {
    d.warnings.iter().map(ToString::to_string).collect()
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
    let (c, d) = fixture("seed_imta.cnf");
    for (name, host) in [
        ("tcp_lmtpss", "tcp_lmtpss-daemon"),
        ("tcp_lmtpsn", "tcp_lmtpsn-daemon"),
    ] {
        let ch = c.channel(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(ch.is_lmtp(), "{name} has lmtp");
        assert_eq!(keyword_names(&c, name), ["lmtp"]);
        assert_eq!(ch.official_host, host);
        assert_eq!(ch.local_alias, None);
        assert!(ch.hosts.is_empty());
    }
    assert!(c.rewrite_rules.is_empty());
    let w = warnings(&d);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].ends_with(
            "/seed_imta.cnf:2:1: warning: channel block `tcp_lmtpss` before the first blank \
             line; treated as a channel (put a blank line before it: by the original's rules \
             these lines are rewrite rules)"
        ),
        "{w:?}"
    );
}

#[test]
fn seed_with_the_blank_line_gives_no_warning() {
    let (c, d) = fixture("seed_with_blank_line");
    assert!(d.is_empty(), "{:?}", warnings(&d));
    assert!(c.rewrite_rules.is_empty());
    let names: Vec<&str> = c.channels.iter().map(|ch| ch.name.as_str()).collect();
    assert_eq!(names, ["tcp_lmtpss", "tcp_lmtpsn"]);
}

#[test]
fn realistic_file_loads_without_warnings() {
    let (c, d) = fixture("full.cnf");
    assert!(d.is_empty(), "{:?}", warnings(&d));
    let names: Vec<&str> = c.channels.iter().map(|ch| ch.name.as_str()).collect();
    assert_eq!(
        names,
        ["l", "tcp_local", "tcp_lmtpcs", "tcp_lmtpss", "tcp_lmtpsn"]
    );
}

#[test]
fn defaults_are_inherited_and_own_keywords_win() {
    let (c, _) = fixture("full.cnf");
    assert_eq!(
        keyword_names(&c, "l"),
        ["logging", "subdirs", "maxjobs", "pool"]
    );
    let ss = c.channel("tcp_lmtpss").expect("tcp_lmtpss");
    assert!(ss.has_keyword("nologging") && !ss.has_keyword("logging"));
    assert!(
        ss.inherited.is_empty(),
        "own nologging replaces inherited logging"
    );
    assert_eq!(
        keyword_names(&c, "tcp_lmtpsn"),
        ["lmtp_crlf", "blocklimit"],
        "nodefaults cancels logging"
    );
    assert!(
        c.channel("TCP_LMTPSN").is_some_and(|ch| ch.is_lmtp()),
        "lookup in lower case, lmtp_crlf is lmtp"
    );
}

#[test]
fn keyword_arguments_are_consumed_by_arity() {
    let (c, _) = fixture("full.cnf");
    let tcp = c.channel("tcp_local").expect("tcp_local");
    let args = |k: &str| tcp.keyword(k).map(|k| k.args.clone()).unwrap_or_default();
    assert_eq!(args("backoff"), ["\"pt2m\"", "\"pt5m\"", "\"pt30m\""]);
    assert_eq!(args("notices"), ["1", "2", "3"]);
    assert_eq!(args("pool"), ["SMTP_POOL"]);
    assert_eq!(args("threaddepth"), ["20"]);
    assert_eq!(args("subdirs"), ["20"]);
    let lmtpcs = c.channel("tcp_lmtpcs").expect("tcp_lmtpcs");
    let fileinto = lmtpcs.keyword("fileinto").map(|k| k.args.clone());
    assert_eq!(fileinto, Some(vec!["@$4O:$U+$S@$D".to_string()]));
    assert_eq!(
        lmtpcs.keyword("port").map(|k| k.args.clone()),
        Some(vec!["225".to_string()])
    );
}

#[test]
fn continued_keyword_lines_are_one_line_and_keep_file_positions() {
    let (c, _) = fixture("full.cnf");
    let tcp = c.channel("tcp_local").expect("tcp_local");
    let threaddepth = tcp
        .keyword("threaddepth")
        .expect("from the third physical line");
    assert_eq!((threaddepth.loc.line, threaddepth.loc.col), (17, 18));
}

#[test]
fn host_lines_give_official_host_alias_and_more_hosts() {
    let (c, _) = fixture("full.cnf");
    let tcp = c.channel("tcp_local").expect("tcp_local");
    assert_eq!(tcp.official_host, "tcp-daemon");
    assert_eq!(tcp.local_alias.as_deref(), Some("relay.example.com"));
    assert_eq!(tcp.hosts, [("relay.example.com".to_string(), None)]);
}

#[test]
fn unknown_words_are_flags_listed_for_check() {
    let (c, _) = fixture("full.cnf");
    let ss = c.channel("tcp_lmtpss").expect("tcp_lmtpss");
    let unknown: Vec<&str> = ss
        .unknown_keywords()
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(unknown, ["mailsrv_group"]);
    assert!(ss
        .keyword("mailsrv_group")
        .is_some_and(|k| k.args.is_empty()));
    assert!(c
        .channel("tcp_local")
        .is_some_and(|ch| ch.unknown_keywords().is_empty()));
}

#[test]
fn rewrite_rules_include_the_included_ones() {
    let (c, _) = fixture("full.cnf");
    let rules: Vec<(&str, &str)> = c
        .rewrite_rules
        .iter()
        .map(|r| (r.pattern.as_str(), r.template.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            ("$*", "$A$E$F@tcp_local-daemon"),
            (".example.com", "$U%example.com@tcp_lmtpcs-daemon"),
            (".org", "$U%$H@tcp_local-daemon")
        ]
    );
    assert!(c.rewrite_rules[2].loc.file.ends_with("internet.rules"));
}

#[test]
fn an_included_channel_block_inherits_defaults_and_keeps_its_place() {
    let (c, _) = fixture("full.cnf");
    let cs = c.channel("tcp_lmtpcs").expect("included block");
    assert!(cs.loc.file.ends_with("lmtp_relay_channels.cnf"));
    assert_eq!(cs.loc.line, 2);
    assert!(
        cs.has_keyword("logging"),
        "inherits defaults of the including file"
    );
    assert_eq!(cs.official_host, "tcp_lmtpcs-daemon");
}

#[test]
fn channel_option_file_is_read_and_an_absent_one_is_empty() {
    let dir = common::fixtures().join("imta_cnf");
    let mut d = Diagnostics::default();
    let o = channel_option::load(&dir.join("tcp_lmtpss_option"), &mut d).expect("reads");
    assert!(o.exists);
    assert_eq!(
        o.get("store_root").map(|s| s.value.as_str()),
        Some("/var/opt/store/")
    );
    assert_eq!(
        o.get("DATA_RECEIVE_TIME").map(|s| s.value.as_str()),
        Some("5")
    );
    assert_eq!(
        o.get("ALLOW_TRANSACTIONS_PER_SESSION")
            .map(|s| s.value.as_str()),
        Some("50")
    );
    let none = channel_option::load(&dir.join("tcp_lmtpsn_option"), &mut d).expect("absent");
    assert!(!none.exists && none.settings.is_empty());
    assert!(d.is_empty(), "{:?}", warnings(&d));
}

#[test]
fn channel_option_file_path_comes_from_the_tailor() {
    let dir = common::fixtures().join("imta_cnf");
    let mut d = Diagnostics::default();
    let tailor = Tailor::from_text(&dir.join("tailor"), "", &mut d).expect("tailor");
    let o = channel_option::load(&tailor.channel_option_file("tcp_lmtpss"), &mut d).expect("reads");
    assert!(o.exists, "{}", o.path.display());
}

#[test]
fn broken_imta_cnf_files_fail_with_their_exact_messages() {
    let n = common::check_broken_fixtures("imta_cnf", |p| load(p).map(|_| ()));
    assert!(n >= 11, "only {n} cases");
}

proptest! {
    #[test]
    fn parse_str_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let file: Arc<Path> = Arc::from(Path::new("imta.cnf"));
        let _ = imta_cnf::parse_str(&file, &text, &mut Diagnostics::default());
    }

    #[test]
    fn parse_str_never_panics_on_imta_cnf_like_text(
        lines in prop::collection::vec(
            prop_oneof![
                Just(String::new()),
                Just(" \t".to_string()),
                Just("! comment \\".to_string()),
                Just("<".to_string()),
                Just("defaults logging".to_string()),
                Just("nodefaults x".to_string()),
                Just("\\".to_string()),
                "[a-z_$]{1,6}( [a-z0-9\"@$%]{1,6}){0,4}( \\\\)?",
                "(maxjobs|notices|pool|backoff|fileinto) ?[0-9\"a-z]{0,3}",
            ],
            0..14,
        ),
        crlf in any::<bool>(),
    ) {
        let file: Arc<Path> = Arc::from(Path::new("imta.cnf"));
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        let _ = imta_cnf::parse_str(&file, &text, &mut Diagnostics::default());
    }
}
