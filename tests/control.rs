//! The control socket and the commands that use it (`--status [--json]`, `--reload`,
//! `--restart`, `--stop`, the refusals of `--takeover`), against a running dispatcher; and the
//! socket's own defences: mode 0600, another uid refused by its credentials, a planted link,
//! a stale socket left by a killed dispatcher.

mod common;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::dispatcher::{field, Client, Dispatcher, Layout, WAIT};
use common::ChildGuard;
use nix::sys::signal::Signal;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// `dispatcher ARGS` of the installation at `root` (found through its tailor, beside the
/// program), bounded in time.
fn ctl(root: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(root.join("lib/dispatcher"));
    cmd.args(args)
        .env_remove("IMTA_TAILOR")
        .stdin(Stdio::null());
    common::peers::run_bounded(cmd, "dispatcher", Duration::from_secs(60))
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn socket(d: &Dispatcher) -> std::path::PathBuf {
    d.root.join("log/dispatcher.socket")
}

/// A JSON document read by Python's json module (no parser of ours), one value out of it.
fn json_value(doc: &str, expr: &str) -> String {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        &format!("import json,sys; d=json.load(sys.stdin); print({expr})"),
    ]);
    let out = common::peers::run_bounded_with_input(
        cmd,
        "python3",
        Duration::from_secs(20),
        Some(doc.as_bytes()),
    );
    assert!(
        out.status.success(),
        "python3: {}\n{doc}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

#[test]
fn status_shows_workers_and_counts_as_a_table_and_as_json() {
    let d = Dispatcher::start("MIN_PROCS=1");
    d.wait_for_started("LMTPSS", 1);
    let mut c = Client::connect(RELAY, d.addr(0));
    let pid = field(&c.line(), "pid");
    let o = ctl(&d.root, &["--status"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("LMTPSS") && l.contains(&pid))
        .unwrap_or_else(|| panic!("a worker row for pid {pid}:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // service worker pid generation state age active total
    assert_eq!(cells[2], pid, "{table}");
    assert_eq!(cells[4], "ready", "{table}");
    assert_eq!(cells[6], "1", "one active connection: {table}");
    let service = table
        .lines()
        .find(|l| l.starts_with("LMTPSS ") && l.contains("yes"))
        .unwrap_or_else(|| panic!("a service row:\n{table}"));
    let cells: Vec<&str> = service.split_whitespace().collect();
    // service generation accepting waiting accepted refused handed_off starts failed kills backoff
    assert_eq!(&cells[4..8], ["1", "0", "1", "1"], "{table}");
    assert!(table.contains(&format!("pid {}", d.child.pid())), "{table}");

    let o = ctl(&d.root, &["--status", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let doc = text(&o.stdout);
    assert_eq!(json_value(&doc, "d['pid']"), d.child.pid().to_string());
    let svc = "[s for s in d['services'] if s['name']=='LMTPSS'][0]";
    assert_eq!(json_value(&doc, &format!("{svc}['accepted']")), "1");
    assert_eq!(
        json_value(&doc, &format!("{svc}['workers'][0]['pid']")),
        pid
    );
    assert_eq!(
        json_value(&doc, &format!("{svc}['workers'][0]['active']")),
        "1"
    );
    assert_eq!(
        json_value(&doc, &format!("{svc}['backoff_seconds']")),
        "None"
    );
    c.quit();
}

#[test]
fn status_shows_the_back_off_of_an_image_that_fails() {
    let d = Dispatcher::start_with("MIN_PROCS=1", ["no_such_image", "echo_image"], |_| {});
    // Two failed starts: the second back-off (2 s) is under way.
    d.wait_for_log("failed to start; next start in 2 s");
    let o = ctl(&d.root, &["--status", "--json"]);
    let doc = text(&o.stdout);
    let svc = "[s for s in d['services'] if s['name']=='LMTPSS'][0]";
    let failed: u64 = json_value(&doc, &format!("{svc}['failed_starts']"))
        .parse()
        .expect("a count");
    assert!(failed >= 2, "{doc}");
    let backoff: f64 = json_value(&doc, &format!("{svc}['backoff_seconds'] or 0"))
        .parse()
        .expect("seconds");
    assert!(backoff > 0.0 && backoff <= 4.0, "{doc}");
}

#[test]
fn reload_waits_for_the_result_and_names_file_line_and_column_when_refused() {
    let d = Dispatcher::start("MIN_PROCS=0");
    let o = ctl(&d.root, &["--reload"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("applied: configuration reloaded (generation 1)"),
        "{}",
        text(&o.stdout)
    );
    d.edit_config("dispatcher.cnf", |t| format!("{t}MAX_CONNS=abc\n"));
    let o = ctl(&d.root, &["--reload"]);
    assert_eq!(o.status.code(), Some(1), "refused is a failure");
    let err = text(&o.stderr);
    assert!(
        err.contains("reload refused, still running on the previous configuration")
            && err.contains("dispatcher.cnf:23:11: MAX_CONNS=abc: not a whole number"),
        "{err}"
    );
    // The log has the same words.
    d.wait_for_log("dispatcher.cnf:23:11: MAX_CONNS=abc: not a whole number");
    let mut c = Client::connect(RELAY, d.addr(0));
    assert!(c.line().starts_with("220 LMTPSS echo"), "still serving");
    c.quit();
    let o = ctl(&d.root, &["--status", "--json"]);
    let doc = text(&o.stdout);
    assert_eq!(json_value(&doc, "d['reloads_applied']"), "1");
    assert_eq!(json_value(&doc, "d['reloads_refused']"), "1");
}

#[test]
fn restart_replaces_one_services_workers_without_cutting_a_session() {
    let d = Dispatcher::start("MIN_PROCS=1");
    d.wait_for_started("LMTPSS", 1);
    d.wait_for_started("LMTPSN", 1);
    let mut open = Client::connect(RELAY, d.addr(0));
    let old_pid = field(&open.line(), "pid");
    let mut other = Client::connect(RELAY, d.addr(1));
    let other_pid = field(&other.line(), "pid");

    let o = ctl(&d.root, &["--restart", "lmtpss"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("restarted LMTPSS"),
        "{}",
        text(&o.stdout)
    );
    // New connections go to a new worker; the open session goes on with the old one.
    let mut fresh = Client::connect(RELAY, d.addr(0));
    let new_pid = field(&fresh.line(), "pid");
    assert_ne!(new_pid, old_pid, "a new worker takes new connections");
    open.say("still here");
    assert_eq!(
        open.line(),
        "250 still here\r\n",
        "the old session was not cut"
    );
    // The other service was not restarted.
    let mut again = Client::connect(RELAY, d.addr(1));
    assert_eq!(field(&again.line(), "pid"), other_pid);
    again.quit();
    other.quit();
    fresh.quit();
    open.quit();
    // The old worker exits once its session is over.
    let old: i32 = old_pid.parse().expect("pid");
    let end = Instant::now() + WAIT;
    while common::pid_alive(old) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!common::pid_alive(old), "the drained worker exited");

    // '*' restarts both; an unknown service is refused, naming the services there are.
    let o = ctl(&d.root, &["--restart", "*"]);
    assert!(
        text(&o.stdout).contains("restarted LMTPSS, LMTPSN"),
        "{}",
        text(&o.stdout)
    );
    let o = ctl(&d.root, &["--restart", "LMTPXX"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains(
            "no service LMTPXX in the configuration in force (its services: LMTPSS, LMTPSN)"
        ),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn stop_returns_once_the_dispatcher_has_exited() {
    let mut d = Dispatcher::start("MIN_PROCS=1");
    d.wait_for_started("LMTPSS", 1);
    let mut open = Client::connect(RELAY, d.addr(0));
    open.line();
    let root = d.root.clone();
    let stopper = std::thread::spawn(move || ctl(&root, &["--stop"]));
    d.wait_for_log("stopping: listeners closed");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !stopper.is_finished(),
        "--stop waits while a session drains"
    );
    open.say("last words");
    assert_eq!(open.line(), "250 last words\r\n");
    open.quit();
    let o = stopper.join().expect("the stopper");
    // When it answers, the next start finds neither the pid file nor the socket.
    assert!(
        !d.root.join("log/dispatcher.pid").exists(),
        "the pid file is gone"
    );
    assert!(
        !d.root.join("log/dispatcher.socket").exists(),
        "the socket is gone"
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("stopped"), "{}", text(&o.stdout));
    // By the time it answered, the dispatcher was done: it exits at once.
    let end = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(s) = d.child.0.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "exited cleanly right after --stop answered"
    );
    assert!(
        !d.root.join("log/dispatcher.socket").exists(),
        "its socket is gone"
    );
    let o = ctl(&d.root, &["--status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no dispatcher is running here"),
        "{}",
        text(&o.stderr)
    );
}

/// Runs a Python client as uid/gid 65534 that connects to `path` and prints what the
/// dispatcher says unasked (a refused client is answered at once), or the connect error's
/// errno name.
fn as_nobody(path: &Path) -> String {
    let script = format!(
        "import socket,errno\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect({:?})\nexcept OSError as e:\n print('connect', errno.errorcode[e.errno]); raise SystemExit\ns.settimeout(10)\nprint(s.recv(4096).decode())",
        path.display().to_string()
    );
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        // Debian's, which every account can run (not a per-user installation).
        "/usr/bin/python3",
        "-c",
        &script,
    ]);
    let o = common::peers::run_bounded(cmd, "setpriv python3", Duration::from_secs(20));
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn another_uid_is_kept_out_by_the_mode_and_by_its_credentials() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let d = Dispatcher::start("MIN_PROCS=0");
    let path = socket(&d);
    let m = std::fs::symlink_metadata(&path).expect("the socket");
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o777, 0o600, "mode 0600");
    assert_eq!(m.uid(), 0, "owned by the dispatcher's account");
    // Let the other account reach the directory: only the socket's own mode is tested.
    for dir in [d.root.as_path(), &d.root.join("log")] {
        let mode = std::fs::metadata(dir).expect("dir").mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))
            .expect("chmod");
    }
    assert_eq!(
        as_nobody(&path).trim(),
        "connect EACCES",
        "the mode keeps it out"
    );
    // With the mode opened by mistake, the credentials still do.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let reply = as_nobody(&path);
    assert!(
        reply.starts_with(
            "ERR permission denied: uid 65534 is neither the dispatcher's (0) nor root"
        ),
        "{reply}"
    );
    d.wait_for_log("control socket: refused a client with uid 65534");
}

#[test]
fn a_planted_link_is_removed_not_followed_and_a_stale_socket_is_replaced() {
    let layout = Layout::new("MIN_PROCS=0", ["echo_image", "echo_image"], |_| {});
    let target = layout.root.join("precious");
    std::fs::write(&target, "keep me\n").expect("write");
    std::os::unix::fs::symlink(&target, layout.root.join("log/dispatcher.socket")).expect("plant");
    let mut d = Dispatcher::launch(layout, |_| {});
    d.wait_for_log("was a symbolic link");
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "keep me\n"
    );
    let m = std::fs::symlink_metadata(socket(&d)).expect("socket");
    assert!(m.file_type().is_socket(), "a socket now, not the link");
    assert!(ctl(&d.root, &["--status"]).status.success());

    // Killed, it leaves its socket behind; the next start replaces it.
    d.signal(Signal::SIGKILL);
    let _ = d.child.0.wait();
    assert!(socket(&d).exists(), "left behind");
    let o = ctl(&d.root, &["--status"]);
    assert!(
        text(&o.stderr).contains("no dispatcher answers on"),
        "{}",
        text(&o.stderr)
    );
    let layout_root = d.root.clone();
    let mut cmd = Command::new(layout_root.join("lib/dispatcher"));
    cmd.args(["--foreground", "--shutdown-timeout", "5"])
        .env_remove("IMTA_TAILOR")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let second = ChildGuard(cmd.spawn().expect("start again"));
    d.wait_for_log("was a stale control socket");
    let end = Instant::now() + WAIT;
    let mut o = ctl(&layout_root, &["--status"]);
    while !o.status.success() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        o = ctl(&layout_root, &["--status"]);
    }
    assert!(
        text(&o.stdout).contains(&format!("pid {}", second.pid())),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn a_malformed_request_gets_an_error_and_a_silent_client_is_dropped() {
    let d = Dispatcher::start("MIN_PROCS=0");
    let mut s = UnixStream::connect(socket(&d)).expect("connect");
    s.write_all(b"FLY\n").expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert_eq!(reply, "ERR unknown request `FLY`\n");
    // One that says nothing is closed after the request wait, and the dispatcher serves on.
    let mut silent = UnixStream::connect(socket(&d)).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).expect("closed, not timed out"), 0);
    assert!(
        t.elapsed() >= Duration::from_secs(4),
        "after the request wait"
    );
    assert!(ctl(&d.root, &["--status"]).status.success());
}

#[test]
fn a_second_takeover_while_one_is_under_way_is_refused_and_the_first_can_give_up() {
    let d = Dispatcher::start("MIN_PROCS=0");
    // A takeover that holds its offer without committing.
    let mut first = UnixStream::connect(socket(&d)).expect("connect");
    first.write_all(b"TAKEOVER\n").expect("write");
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).expect("the offer");
    assert!(buf[..n].starts_with(b"OK 2 "), "{}", text(&buf[..n]));
    d.wait_for_log("listening sockets handed over; still serving until it commits");

    let o = ctl(&d.root, &["--takeover", "--takeover-timeout", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr)
            .contains("takeover: the dispatcher's reply: a takeover is already under way (by pid"),
        "{}",
        text(&o.stderr)
    );
    // Still serving, and still the same dispatcher.
    let mut c = Client::connect(RELAY, d.addr(0));
    assert!(c.line().starts_with("220 LMTPSS echo"));
    c.quit();
    let pid_file = std::fs::read_to_string(d.root.join("log/dispatcher.pid")).expect("pid file");
    assert_eq!(pid_file.trim(), d.child.pid().to_string());
    // The first gives up: the dispatcher says so and serves on; a takeover is possible again.
    drop(first);
    d.wait_for_log("abandoned (the new dispatcher closed the connection); still serving");
    let mut again = UnixStream::connect(socket(&d)).expect("connect");
    again.write_all(b"TAKEOVER\n").expect("write");
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = again.read(&mut buf).expect("the offer");
    assert!(buf[..n].starts_with(b"OK 2 "), "{}", text(&buf[..n]));
    // A COMMIT from a connection that is not the takeover's is refused.
    let mut stranger = UnixStream::connect(socket(&d)).expect("connect");
    stranger.write_all(b"COMMIT 1\n").expect("write");
    let mut reply = String::new();
    stranger.read_to_string(&mut reply).expect("read");
    assert_eq!(reply, "ERR COMMIT outside a takeover\n");
}

#[test]
fn a_takeover_whose_workers_never_get_ready_leaves_the_old_dispatcher_serving() {
    let d = Dispatcher::start("MIN_PROCS=1");
    d.wait_for_started("LMTPSS", 1);
    let mut open = Client::connect(RELAY, d.addr(0));
    let old_worker = field(&open.line(), "pid");
    // The new configuration's image cannot start.
    d.edit_config("dispatcher.cnf", |t| {
        t.replacen(
            "IMAGE=IMTA_BIN:echo_image",
            "IMAGE=IMTA_BIN:failing_image",
            1,
        )
    });
    std::fs::write(d.root.join("lib/failing_image"), "#!/bin/sh\nexit 3\n").expect("write");
    std::fs::set_permissions(
        d.root.join("lib/failing_image"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let o = ctl(&d.root, &["--takeover", "--takeover-timeout", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("takeover failed: its workers were not ready in time; the running dispatcher goes on serving"),
        "{}",
        text(&o.stderr)
    );
    d.wait_for_log("abandoned (the new dispatcher closed the connection); still serving");
    // The old one serves as before: the open session, new connections, its pid file.
    open.say("on");
    assert_eq!(open.line(), "250 on\r\n");
    let mut c = Client::connect(RELAY, d.addr(0));
    assert_eq!(field(&c.line(), "pid"), old_worker);
    c.quit();
    open.quit();
    let pid_file = std::fs::read_to_string(d.root.join("log/dispatcher.pid")).expect("pid file");
    assert_eq!(pid_file.trim(), d.child.pid().to_string());
    let o = ctl(&d.root, &["--status"]);
    assert!(
        text(&o.stdout).contains(&format!("pid {}", d.child.pid())),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_reply() {
    let d = Dispatcher::start("MIN_PROCS=0");
    let mut s = UnixStream::connect(socket(&d)).expect("connect");
    s.write_all(b"STATUS\n").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("OK status\n"), "{reply:?}");
}

#[test]
fn a_takeover_that_commits_and_then_vanishes_leaves_the_old_dispatcher_serving_again() {
    let d = Dispatcher::start("MIN_PROCS=1");
    d.wait_for_started("LMTPSS", 1);
    let mut t = UnixStream::connect(socket(&d)).expect("connect");
    t.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    t.write_all(b"TAKEOVER\n").expect("write");
    let mut buf = [0u8; 512];
    let n = t.read(&mut buf).expect("the offer");
    assert!(buf[..n].starts_with(b"OK 2 "), "{}", text(&buf[..n]));
    t.write_all(b"COMMIT 1\n").expect("write");
    let n = t.read(&mut buf).expect("the commit's reply");
    assert!(buf[..n].starts_with(b"OK committed"), "{}", text(&buf[..n]));
    d.wait_for_log("committed: not accepting");
    // The old one has let go: no pid file lock, no control socket name; a client waits queued.
    assert!(
        !socket(&d).exists(),
        "the name was let go for the new dispatcher"
    );
    let waiting = std::thread::spawn({
        let addr = d.addr(0);
        move || {
            let mut c = Client::connect(RELAY, addr);
            let greeting = c.line();
            c.quit();
            greeting
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "nobody accepts between COMMIT and DONE"
    );
    // The new dispatcher dies before saying DONE.
    drop(t);
    d.wait_for_log("after its commit: accepting again, pid file and control socket taken back");
    let greeting = waiting.join().expect("the waiting client");
    assert!(
        greeting.starts_with("220 LMTPSS echo"),
        "the queued client was served: {greeting:?}"
    );
    let pid_file = std::fs::read_to_string(d.root.join("log/dispatcher.pid")).expect("pid file");
    assert_eq!(pid_file.trim(), d.child.pid().to_string());
    let o = ctl(&d.root, &["--status"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&format!("pid {}", d.child.pid())));
}
