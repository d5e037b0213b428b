//! The dispatcher's trust in its configuration, attacked with real processes: the seed's
//! PORT_ACCESS (relays at 127.0.0.2, a stranger at 127.0.0.9 refused) on free loopback ports,
//! the echo test image as the workers.
//!
//! * A `mappings` file removed, emptied, rewritten without PORT_ACCESS, cut short, turned
//!   into garbage, a link to nothing or a FIFO before a SIGHUP: the reload is refused, the
//!   stranger is still refused with the same text, the relay still served.
//! * A `mappings` file that is there but cannot be read is an error at start (and for
//!   `--check`), never "no table".
//! * A start or `--check` with no PORT_ACCESS table warns, naming each service; `--strict`
//!   fails.
//! * A worker's control message cannot write a line of its choosing into `dispatcher.log`.

mod common;

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::dispatcher::{Client, Dispatcher, WAIT};
use common::{fixtures, ChildGuard};
use nix::sys::signal::Signal;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
/// What the fixture's PORT_ACCESS sends a stranger.
const REFUSAL: &str = "500 Do not connect to this machine\r\n";
const REFUSED: &str = "reload refused, still running on the previous configuration: ";

/// The exit status of a start refused for its configuration (docs/admin-guide.md).
const EX_CONFIG: i32 = 78;

fn trust_fixture(name: &str) -> PathBuf {
    fixtures().join("trust").join(name)
}

fn mappings_of(d: &Dispatcher) -> PathBuf {
    d.root.join("config/mappings")
}

/// The stranger is refused with the table's text, and the relay is served by a worker.
fn assert_guarded(d: &Dispatcher) {
    let mut stranger = Client::connect(STRANGER, d.addr(0));
    assert_eq!(stranger.line(), REFUSAL, "the stranger is refused");
    assert_eq!(stranger.line(), "", "and the connection closed");
    let mut relay = Client::connect(RELAY, d.addr(0));
    let greeting = relay.line();
    assert!(greeting.starts_with("220 LMTPSS echo"), "{greeting}");
    assert_eq!(relay.quit(), "221 bye\r\n");
}

/// How many SIGHUPs the dispatcher has dealt with (refused or applied).
fn reload_outcomes(d: &Dispatcher) -> usize {
    d.count_in_log(REFUSED) + d.count_in_log("configuration reloaded")
}

/// Damages the running dispatcher's `mappings` with `fault`, sends SIGHUP and asserts that the
/// stranger is still refused and the relay served, and that the reload was refused with a
/// reason naming the file and containing `reason`.
fn refused_after(d: &Dispatcher, fault: impl FnOnce(&Path), reason: &str) {
    let mappings = mappings_of(d);
    let before = reload_outcomes(d);
    let refusals = d.count_in_log(REFUSED);
    fault(&mappings);
    d.signal(Signal::SIGHUP);
    let end = std::time::Instant::now() + WAIT;
    while reload_outcomes(d) == before {
        assert!(
            std::time::Instant::now() < end,
            "the SIGHUP was neither refused nor applied (the dispatcher hangs):\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // First what a client sees, then what the log says.
    assert_guarded(d);
    let log = d.log();
    let line = log.lines().filter(|l| l.contains(REFUSED)).nth(refusals);
    assert!(
        line.is_some_and(|l| l.contains(&mappings.display().to_string()) && l.contains(reason)),
        "a refusal naming {} and saying `{reason}`: {line:?}\n{log}",
        mappings.display()
    );
    assert_eq!(d.count_in_log("configuration reloaded"), 0, "{log}");
}

/// Starts a dispatcher, shows its table holds, then [`refused_after`]; returns the
/// dispatcher for more.
fn reload_is_refused(fault: impl FnOnce(&Path), reason: &str) -> Dispatcher {
    let d = Dispatcher::start("MIN_PROCS=0");
    assert_guarded(&d);
    refused_after(&d, fault, reason);
    d
}

/// Puts a symbolic link to nothing in place of `mappings`, as when the file system holding
/// the real file is not mounted.
fn replace_with_link_to_nothing(mappings: &Path) {
    std::fs::remove_file(mappings).expect("remove mappings");
    let target = mappings.with_file_name("unmounted").join("mappings");
    std::os::unix::fs::symlink(target, mappings).expect("symlink");
}

/// Puts a FIFO in place of `mappings`: reading it would wait for a writer that never comes,
/// and a dispatcher reading it would stop accepting connections at all.
fn replace_with_fifo(mappings: &Path) {
    std::fs::remove_file(mappings).expect("remove mappings");
    nix::unistd::mkfifo(mappings, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
}

/// Replaces `path` in one rename, as the administrator's guide asks.
fn replace_atomically(path: &Path, text: &[u8]) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).expect("write the new file");
    std::fs::rename(&new, path).expect("rename it over the old one");
}

#[test]
fn sighup_after_mappings_was_removed_is_refused_and_a_restored_file_applies() {
    let mut saved = Vec::new();
    let d = reload_is_refused(
        |m| {
            saved = std::fs::read(m).expect("read mappings");
            std::fs::remove_file(m).expect("remove mappings");
        },
        "there is no mappings file",
    );
    // Refusing is not refusing everything: the file back in place, a reload applies.
    replace_atomically(&mappings_of(&d), &saved);
    d.signal(Signal::SIGHUP);
    d.wait_for_log("configuration reloaded");
    assert_guarded(&d);
}

#[test]
fn sighup_after_mappings_was_emptied_is_refused() {
    reload_is_refused(
        |m| std::fs::write(m, "").expect("empty mappings"),
        "has no PORT_ACCESS table",
    );
}

#[test]
fn sighup_after_mappings_was_rewritten_without_port_access_is_refused() {
    reload_is_refused(
        |m| {
            std::fs::copy(trust_fixture("mappings_without_port_access"), m)
                .expect("rewrite mappings");
        },
        "has no PORT_ACCESS table",
    );
}

#[test]
fn sighup_after_mappings_was_cut_short_after_the_table_name_is_refused() {
    reload_is_refused(
        |m| {
            std::fs::copy(trust_fixture("mappings_port_access_without_entries"), m)
                .expect("rewrite mappings");
        },
        "PORT_ACCESS table of",
    );
}

#[test]
fn sighup_after_mappings_lost_its_final_refusal_is_refused() {
    // Cut on a line boundary before the catch-all `$N500`: the relays' entries remain, and
    // every other client would be let in.
    reload_is_refused(
        |m| {
            let text = std::fs::read_to_string(m).expect("read mappings");
            let cut: String = text
                .lines()
                .filter(|l| !l.contains("$N500"))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_ne!(cut, text, "the fixture ends in a catch-all refusal");
            replace_atomically(m, cut.as_bytes());
        },
        "would admit a stranger",
    );
}

#[test]
fn sighup_after_mappings_became_a_link_to_nothing_is_refused() {
    reload_is_refused(replace_with_link_to_nothing, "which does not exist");
}

#[test]
fn sighup_after_mappings_became_a_fifo_is_refused_without_blocking() {
    reload_is_refused(replace_with_fifo, "it is a FIFO, not a regular file");
}

#[test]
fn sighup_after_mappings_became_garbage_is_refused() {
    // Bytes that are no text: an error when read (so the reload is refused).
    let d = reload_is_refused(
        |m| {
            std::fs::copy(trust_fixture("mappings_garbage_binary"), m).expect("garbage");
        },
        "the file is not text",
    );
    // Text that parses as some table names, none of them PORT_ACCESS: refused as well.
    refused_after(
        &d,
        |m| {
            std::fs::copy(trust_fixture("mappings_garbage_text"), m).expect("garbage");
        },
        "has no PORT_ACCESS table",
    );
}

/// Stops `d` (SIGTERM) and waits until it has exited, keeping its installation.
fn stop(d: &mut Dispatcher) {
    d.signal(Signal::SIGTERM);
    assert!(d.child.wait_for(WAIT).is_some(), "the dispatcher stops");
}

/// Starts the installation's dispatcher again (in the foreground) as the current user, or as
/// `uid`/`gid`; returns its exit status and standard error, panicking if it is still running
/// after [`WAIT`] (it started instead of failing, or hangs).
fn start_again(root: &Path, uid_gid: Option<(u32, u32)>) -> (std::process::ExitStatus, String) {
    let stderr_path = root.join("second-start.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut command = Command::new(root.join("lib/dispatcher"));
    command
        .args(["--foreground", "--shutdown-timeout", "1"])
        .env_remove("IMTA_TAILOR")
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some((uid, gid)) = uid_gid {
        command.uid(uid).gid(gid);
    }
    let mut child = ChildGuard(command.spawn().expect("start the dispatcher"));
    let status = child.wait_for(WAIT);
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let log = std::fs::read_to_string(root.join("log/dispatcher.log")).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("the dispatcher did not exit (it runs or hangs):\n{text}\nlog:\n{log}")
    });
    (status, text)
}

/// Starts an installation, stops it, damages its `mappings` with `fault`, and asserts that a
/// new start fails with `dispatcher: error: cannot read <mappings>: <reason>`.
fn start_fails(fault: impl FnOnce(&Path), reason: &str) {
    let mut d = Dispatcher::start("MIN_PROCS=0");
    stop(&mut d);
    let mappings = mappings_of(&d);
    fault(&mappings);
    let (status, stderr) = start_again(&d.root, None);
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    let expected = format!(
        "dispatcher: error: cannot read {}: {reason}",
        mappings.display()
    );
    assert!(
        stderr.contains(&expected),
        "expected `{expected}` in:\n{stderr}"
    );
}

#[test]
fn a_start_with_mappings_a_link_to_nothing_fails_naming_the_file() {
    start_fails(replace_with_link_to_nothing, "it is a symbolic link to");
}

#[test]
fn a_start_with_mappings_a_fifo_fails_naming_the_file_without_blocking() {
    start_fails(replace_with_fifo, "it is a FIFO, not a regular file");
}

#[test]
fn a_start_with_mappings_that_do_not_parse_fails_naming_the_file() {
    let mut d = Dispatcher::start("MIN_PROCS=0");
    stop(&mut d);
    let mappings = mappings_of(&d);
    std::fs::copy(trust_fixture("mappings_garbage_binary"), &mappings).expect("garbage");
    let (status, stderr) = start_again(&d.root, None);
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(
        stderr.contains(&format!("dispatcher: error: {}:3:3:", mappings.display()))
            && stderr.contains("the file is not text"),
        "{stderr}"
    );
}

/// The uid and gid of the account `nobody`.
fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody")
        .expect("look up nobody")
        .expect("the account nobody exists");
    (user.uid.as_raw(), user.gid.as_raw())
}

#[test]
fn mappings_behind_a_directory_the_dispatcher_may_not_search_is_an_error_not_absent() {
    // Root reads through any permission, so the dispatcher runs as nobody here: the file is
    // there, but `stat` says EACCES, which `Path::exists()` reports as "no file".
    let (uid, gid) = nobody();
    let mut d = Dispatcher::start("MIN_PROCS=0");
    stop(&mut d);
    let private = d.root.join("private");
    std::fs::create_dir(&private).expect("mkdir private");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod private");
    let hidden = private.join("mappings");
    std::fs::rename(mappings_of(&d), &hidden).expect("move mappings");
    let tailor = d.root.join("config/imta_tailor");
    let text = std::fs::read_to_string(&tailor).expect("read the tailor");
    let text = text.replace(
        &format!("IMTA_MAPPING_FILE={}", mappings_of(&d).display()),
        &format!("IMTA_MAPPING_FILE={}", hidden.display()),
    );
    assert!(text.contains("private/mappings"), "{text}");
    std::fs::write(&tailor, text).expect("write the tailor");
    // The log directory becomes nobody's, so only the mappings file stands in the way.
    for entry in std::fs::read_dir(d.root.join("log")).expect("log directory") {
        let p = entry.expect("entry").path();
        nix::unistd::chown(&p, Some(uid.into()), Some(gid.into())).expect("chown");
    }
    nix::unistd::chown(&d.root.join("log"), Some(uid.into()), Some(gid.into())).expect("chown");
    let expected = format!(
        "dispatcher: error: cannot read {}: Permission denied",
        hidden.display()
    );

    let check = Command::new(d.root.join("lib/dispatcher"))
        .arg("--check")
        .env_remove("IMTA_TAILOR")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run --check as nobody");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&expected), "--check: {stderr}");

    let (status, stderr) = start_again(&d.root, Some((uid, gid)));
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(stderr.contains(&expected), "start: {stderr}");
}

/// The warning a start and `--check` give for a service that PORT_ACCESS does not guard.
fn open_service_warning(service: &str, port: u16, reason: &str) -> String {
    format!("warning: [SERVICE={service}] (PORT={port}) accepts every connection: {reason}")
}

#[test]
fn a_start_with_a_port_access_table_that_refuses_nothing_warns_for_each_service() {
    let d = Dispatcher::start_with("MIN_PROCS=0", ["echo_image", "echo_image"], |root| {
        std::fs::copy(
            trust_fixture("mappings_port_access_without_entries"),
            root.join("config/mappings"),
        )
        .expect("mappings");
    });
    let reason = format!(
        "the PORT_ACCESS table of {} has no entries",
        mappings_of(&d).display()
    );
    for (service, port) in [("LMTPSS", d.ports[0]), ("LMTPSN", d.ports[1])] {
        let warning = open_service_warning(service, port, &reason);
        d.wait_for_log(&format!("WARN: configuration: {warning}"));
    }
    // Allowed, as the original allows it: the stranger is served.
    let mut stranger = Client::connect(STRANGER, d.addr(0));
    assert!(stranger.line().starts_with("220 LMTPSS echo"));
}

#[test]
fn check_warns_about_services_without_port_access_and_strict_fails() {
    let d = Dispatcher::start("MIN_PROCS=0");
    let mappings = mappings_of(&d);
    let check = |strict: bool| {
        let mut c = Command::new(d.root.join("lib/dispatcher"));
        c.arg("--check").env_remove("IMTA_TAILOR");
        if strict {
            c.arg("--strict");
        }
        let out = c.output().expect("run --check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (fault, reason) in [
        (
            trust_fixture("mappings_port_access_without_entries"),
            format!(
                "the PORT_ACCESS table of {} has no entries",
                mappings.display()
            ),
        ),
        (
            PathBuf::new(),
            format!("there is no mappings file {}", mappings.display()),
        ),
    ] {
        if fault.as_os_str().is_empty() {
            std::fs::remove_file(&mappings).expect("remove mappings");
        } else {
            std::fs::copy(&fault, &mappings).expect("mappings");
        }
        let (code, stderr) = check(false);
        assert_eq!(code, Some(0), "usable: {stderr}");
        for (service, port) in [("LMTPSS", d.ports[0]), ("LMTPSN", d.ports[1])] {
            let warning = open_service_warning(service, port, &reason);
            assert!(stderr.contains(&warning), "`{warning}` in:\n{stderr}");
        }
        let (code, stderr) = check(true);
        assert_eq!(code, Some(1), "--strict fails: {stderr}");
    }
}

#[test]
fn a_control_message_cannot_forge_a_line_of_the_dispatcher_log() {
    // The first service's image sends `READY\n<what looks like a log line>` on its control
    // socket (examples/echo_image.rs, PARAMETER=FORGE_CONTROL_MESSAGE).
    let d = Dispatcher::start_with("MIN_PROCS=1", ["echo_image", "echo_image"], |root| {
        let cnf = root.join("config/dispatcher.cnf");
        let text = std::fs::read_to_string(&cnf).expect("dispatcher.cnf");
        let text = text.replacen(
            "PARAMETER=CHANNEL=tcp_lmtpss\n",
            "PARAMETER=FORGE_CONTROL_MESSAGE\n",
            1,
        );
        std::fs::write(&cnf, text).expect("dispatcher.cnf");
    });
    d.wait_for_log("[SERVICE=LMTPSS] worker 1 (pid");
    d.wait_for_log("protocol violation");
    let log = d.log();
    let forged = "2000-01-01T00:00:00Z dispatcher[1] INFO: FORGED";
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line in the log:\n{log}"
    );
    assert!(
        log.contains("READY\\n2000-01-01T00:00:00Z dispatcher[1] INFO: FORGED by a worker"),
        "the message is shown escaped:\n{log}"
    );
}
