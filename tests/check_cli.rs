//! `dispatcher --check` run as an administrator runs it: the real binary, on the seed's
//! files, on an installed demo layout (tailor found beside the binary), and on layouts whose
//! files contradict each other.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DISPATCHER: &str = env!("CARGO_BIN_EXE_dispatcher");

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("IMTA_TAILOR")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn seed_tailor() -> String {
    common::fixtures()
        .join("seed/imta_tailor")
        .display()
        .to_string()
}

/// Lays out an installation in a temporary directory with scripts/demo-layout.sh and the
/// binaries cargo built for these tests.
fn demo_layout() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bindir = Path::new(DISPATCHER).parent().expect("binary directory");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo-layout.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .arg(bindir)
        .output()
        .expect("run demo-layout.sh");
    assert!(
        out.status.success(),
        "demo-layout.sh: {}",
        text(&out.stderr)
    );
    let root = dir.path().to_path_buf();
    (dir, root)
}

#[test]
fn check_on_the_seed_prints_both_services_with_ports_and_resolved_images() {
    let out = run(
        Path::new(DISPATCHER),
        &["--tailor", &seed_tailor(), "--check"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for expected in [
        "[SERVICE=LMTPSS]",
        "[SERVICE=LMTPSN]",
        "IMTA_BIN:tcp_lmtp_server -> /opt/SUNWmsgsr/lib/tcp_lmtp_server",
        "IMTA_BIN:tcp_lmtpn_server -> /opt/SUNWmsgsr/lib/tcp_lmtpn_server",
        "IMTA_LOG:tcp_lmtpss_server.log -> /var/opt/SUNWmsgsr/log/tcp_lmtpss_server.log",
        "channel tcp_lmtpss",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let port_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("PORT "))
        .collect();
    assert_eq!(port_lines.len(), 2, "{stdout}");
    assert!(
        port_lines[0].contains(" 225 ") && port_lines[1].contains(" 226 "),
        "{port_lines:?}"
    );
    assert!(stdout.contains("PORT_ACCESS has 5 entries"), "{stdout}");
    assert!(
        text(&out.stderr).contains("imta.cnf:2:1: warning: channel block `tcp_lmtpss`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn strict_check_fails_on_warnings() {
    let out = run(
        Path::new(DISPATCHER),
        &["--tailor", &seed_tailor(), "--check", "--strict"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("which --strict treats as errors"));
}

#[test]
fn installed_dispatcher_finds_its_tailor_beside_it_and_the_demo_is_clean() {
    let (_dir, root) = demo_layout();
    let out = run(&root.join("lib/dispatcher"), &["--check", "--strict"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("found by ../config/imta_tailor beside the binary"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("-> {}/lib/tcp_lmtp_server", root.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("configuration is usable (0 warning(s))"),
        "{stdout}"
    );
}

#[test]
fn environment_variable_names_the_tailor() {
    let out = Command::new(DISPATCHER)
        .arg("--check")
        .env("IMTA_TAILOR", seed_tailor())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("found by environment variable IMTA_TAILOR"));
}

#[test]
fn layouts_whose_files_disagree_fail_with_their_exact_messages() {
    let dir = common::fixtures().join("broken/check");
    let mut cases = 0;
    for case in ["no_channel", "not_lmtp"] {
        let layout = dir.join(case);
        let tailor = layout.join("imta_tailor").display().to_string();
        let out = run(Path::new(DISPATCHER), &["--tailor", &tailor, "--check"]);
        assert_eq!(out.status.code(), Some(1), "{case}");
        let expected = std::fs::read_to_string(layout.join("expected")).expect("expected");
        let stderr = text(&out.stderr).replace(&format!("{}/", layout.display()), "");
        let last = stderr.lines().last().unwrap_or("");
        assert_eq!(last, expected.trim_end(), "{case}");
        cases += 1;
    }
    assert_eq!(cases, 2);
}

#[test]
fn version_and_help() {
    let out = run(Path::new(DISPATCHER), &["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("dispatcher {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(Path::new(DISPATCHER), &["--help"]);
    assert!(text(&out.stdout).contains("--check"));
    for image in [
        env!("CARGO_BIN_EXE_tcp_lmtp_server"),
        env!("CARGO_BIN_EXE_tcp_lmtpn_server"),
    ] {
        let out = run(Path::new(image), &["--version"]);
        assert!(
            text(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
            "{image}"
        );
    }
}

#[test]
fn unknown_argument_is_a_usage_error() {
    let out = run(Path::new(DISPATCHER), &["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown argument `--frobnicate`"));
}

#[test]
fn running_without_a_readable_tailor_fails_before_detaching() {
    let out = run(
        Path::new(DISPATCHER),
        &["--tailor", "/nonexistent/imta_tailor", "--foreground"],
    );
    // EX_CONFIG: a unit's RestartPreventExitStatus=78 does not restart into it.
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/imta_tailor"));
}

#[test]
fn unreadable_tailor_is_an_error_naming_it() {
    let out = run(
        Path::new(DISPATCHER),
        &["--tailor", "/nonexistent/imta_tailor", "--check"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/imta_tailor"));
}

#[test]
fn debug_environment_variable_sets_the_dispatchers_mask_in_hex() {
    let out = Command::new(DISPATCHER)
        .args(["--tailor", &seed_tailor(), "--check"])
        .env("IMTA_DISPATCHER_DEBUG", "FFFFFFFF")
        .output()
        .expect("run");
    assert!(
        text(&out.stdout).contains("DEBUG=0xffffffff (environment IMTA_DISPATCHER_DEBUG)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_workers_account_that_does_not_exist_is_named_before_detaching() {
    let (_dir, root) = demo_layout();
    let cnf = root.join("config/dispatcher.cnf");
    let text_cnf = std::fs::read_to_string(&cnf).expect("dispatcher.cnf");
    std::fs::write(
        &cnf,
        text_cnf.replacen(
            "[SERVICE=LMTPSS]",
            "[SERVICE=LMTPSS]\nUSER=no-such-account-9",
            1,
        ),
    )
    .expect("write dispatcher.cnf");
    let expected = "[SERVICE=LMTPSS]: its workers are to run as no-such-account-9 (its USER)";
    // --check warns (the installation may come from another host); --strict fails.
    let check = run(&root.join("lib/dispatcher"), &["--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(
        text(&check.stderr).contains(expected),
        "{}",
        text(&check.stderr)
    );
    let strict = run(&root.join("lib/dispatcher"), &["--check", "--strict"]);
    assert_eq!(strict.status.code(), Some(1));
    if nix::unistd::geteuid().is_root() {
        // Started as root without --foreground: the error comes before the dispatcher
        // detaches, and nothing is left running.
        let start = run(&root.join("lib/dispatcher"), &[]);
        assert_eq!(
            start.status.code(),
            Some(78),
            "EX_CONFIG: {}",
            text(&start.stdout)
        );
        assert!(
            text(&start.stderr).contains(expected),
            "{}",
            text(&start.stderr)
        );
        assert!(
            !root.join("log/dispatcher.pid").exists(),
            "no pid file: it never ran"
        );
    }
}
