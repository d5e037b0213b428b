//! The dispatcher keeps serving whatever its workers do (issue 11): a worker that hangs, a
//! start that never says READY, one that lies on its control socket, one that closes it, an image whose later starts fail, and
//! a worker at its own descriptor limit. Real processes: the dispatcher on free loopback
//! ports, the echo image or the faulty image (`examples/faulty_image.rs`) as workers, clients
//! from 127.0.0.2. Each test collects every broken guarantee before it fails, so that one run
//! shows all of them.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dispatcher::{Client, Dispatcher, WAIT};
use common::faulty::{self, connect, greeting_within, log_lines, Greeting, KillPids, Tally, RELAY};
use common::ChildGuard;
use common::{fd_count, pid_alive, wait_until};
use msdispatcher::handoff::wire::{self, ToWorker};
use nix::sys::signal::Signal;

/// The target: with one of two workers stopped, every new client is greeted within
/// this.
const GREETED_WITHIN: Duration = Duration::from_secs(2);

/// Fails with every message in `failures`, and the dispatcher log to judge them by.
fn verdict(d: &Dispatcher, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{}\n--- dispatcher.log:\n{}",
        failures.join("\n"),
        d.log()
    );
}

/// Waits until the first service has `n` workers that have said they are ready (their
/// LOGFILE says so), and returns their pids.
fn ready_echo_workers(d: &Dispatcher, n: usize) -> Vec<i32> {
    let ok = wait_until(WAIT, || {
        d.workers("echo_image").len() >= n
            && d.service_log("tcp_lmtpss_server.log")
                .matches("worker ready")
                .count()
                >= n
    });
    assert!(ok, "{n} ready echo workers\n{}", d.log());
    d.workers("echo_image")
}

/// Lines of the log saying a worker of the first service was started.
fn starts(d: &Dispatcher) -> usize {
    log_lines(d, &format!("[SERVICE={}] worker", faulty::SERVICE))
        .iter()
        .filter(|l| l.contains(" started"))
        .count()
}

#[test]
fn a_stopped_worker_is_given_no_client_and_is_replaced() {
    let d = faulty::start(
        "MIN_PROCS=1\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=5",
        "echo_image",
        "CHANNEL=tcp_lmtpss",
    );
    ready_echo_workers(&d, 1);
    // One session makes the first worker "busy enough" (MIN_CONNS=1): a second one starts.
    let mut first = connect(&d, RELAY);
    let busy = greeting_within(&mut first, WAIT)
        .pid()
        .expect("the first client is greeted");
    let pids = ready_echo_workers(&d, 2);
    let stopped = *pids.iter().find(|&&p| p != busy).expect("a second worker");
    let _reaper = KillPids::new(&[stopped]);
    let starts_before = starts(&d);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped), Signal::SIGSTOP)
        .expect("stop the idle worker");
    let stopped_at = Instant::now();
    // Clients come only once the stop holds every thread: before, the worker still serves.
    assert!(
        wait_until(WAIT, || faulty::all_threads_stopped(stopped)),
        "worker {stopped} is not stopped {:?} after SIGSTOP",
        stopped_at.elapsed()
    );

    let mut failures = Vec::new();
    let mut held = vec![first];
    let mut unserved = Vec::new();
    for n in 1..=6 {
        let mut c = connect(&d, RELAY);
        let t = Instant::now();
        let g = greeting_within(&mut c, GREETED_WITHIN);
        if !g.greeted() {
            failures.push(format!(
                "client {n} of 6: {g:?} after {:?} (wanted a greeting within {GREETED_WITHIN:?})",
                t.elapsed()
            ));
        }
        if g.greeted() {
            held.push(c);
        } else {
            unserved.push(c);
        }
    }
    let bound = Duration::from_secs(5).saturating_sub(stopped_at.elapsed());
    if !wait_until(bound, || !pid_alive(stopped)) {
        failures.push(format!(
            "the stopped worker (pid {stopped}) still exists {:?} after SIGSTOP (wanted it killed within 5 s)",
            stopped_at.elapsed()
        ));
    }
    if starts(&d) <= starts_before {
        failures.push("no worker was started after the stop (wanted a replacement)".into());
    }
    if log_lines(&d, "unresponsive").is_empty() {
        failures.push("no log line says a worker is `unresponsive`".into());
    }
    if log_lines(&d, "killed").is_empty() {
        failures.push("no log line says the worker was `killed`".into());
    }
    // The sessions that were greeted are still served.
    for (n, c) in held.iter_mut().enumerate() {
        let reply = faulty::reply_within(c, "still there", GREETED_WITHIN);
        if reply != Greeting::Line("250 still there\r\n".into()) {
            failures.push(format!(
                "greeted session {n}: {reply:?} instead of the echo"
            ));
        }
    }
    drop(unserved);
    verdict(&d, &failures);
}

/// Opens `n` sessions one after another, holds them past the health bounds (a hand-off not
/// acknowledged within 500 ms, then 1 s), and checks that each is still served and no worker
/// was declared unresponsive or killed.
fn sessions_outlive_the_health_bounds(d: &Dispatcher, n: usize) {
    let mut failures = Vec::new();
    let mut held = Vec::new();
    let mut pids = BTreeSet::new();
    for i in 1..=n {
        let mut c = connect(d, RELAY);
        match greeting_within(&mut c, Duration::from_secs(5)) {
            g if g.greeted() => {
                pids.extend(g.pid());
                held.push(c);
            }
            g => failures.push(format!("client {i} of {n}: {g:?}")),
        }
    }
    std::thread::sleep(Duration::from_millis(2_500));
    for (i, c) in held.iter_mut().enumerate() {
        let reply = faulty::reply_within(c, "after the bounds", Duration::from_secs(2));
        if reply != Greeting::Line("250 after the bounds\r\n".into()) {
            failures.push(format!("session {i}: {reply:?} instead of the echo"));
        }
    }
    for pid in &pids {
        if !pid_alive(*pid) {
            failures.push(format!("worker pid {pid} is gone"));
        }
    }
    for word in ["unresponsive", "killed", "protocol violation"] {
        let lines = log_lines(d, word);
        if !lines.is_empty() {
            failures.push(format!("a healthy worker was judged: {lines:?}"));
        }
    }
    verdict(d, &failures);
}

#[test]
fn a_worker_of_the_written_protocol_with_plain_ready_is_served_and_left_alone() {
    // Health is judged by writability alone for an image that never says TAKEN.
    let d = faulty::start_faulty(
        "MIN_PROCS=2\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=5",
        "normal-plain",
    );
    sessions_outlive_the_health_bounds(&d, 4);
}

#[test]
fn a_worker_that_acknowledges_each_hand_off_is_served_and_left_alone() {
    let d = faulty::start_faulty(
        "MIN_PROCS=2\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=5",
        "normal-ack",
    );
    sessions_outlive_the_health_bounds(&d, 4);
}

/// Six clients at once to a service whose first worker works and whose later starts fail:
/// all are greeted within 5 s by that one worker, which has the slots.
fn back_off_does_not_strand_clients(mode: &str) {
    let d = faulty::start_faulty(
        "MIN_PROCS=1\nMAX_PROCS=3\nMIN_CONNS=2\nMAX_CONNS=20",
        &format!("{mode}:@STATE@"),
    );
    let first = faulty::first_faulty_worker(&d);
    let mut failures = Vec::new();
    let mut pids = BTreeSet::new();
    let greeted = faulty::burst_greetings(&d, 6, Duration::from_secs(5));
    for (n, (_, g)) in greeted.iter().enumerate() {
        match g.pid() {
            Some(pid) if g.greeted() => {
                pids.insert(pid);
            }
            _ => failures.push(format!("client {} of 6: {g:?} within 5 s", n + 1)),
        }
    }
    if pids.iter().any(|&p| p != first) {
        failures.push(format!(
            "served by {pids:?}, not only by the first worker {first}, though later starts fail"
        ));
    }
    verdict(&d, &failures);
}

#[test]
fn back_off_after_failed_starts_does_not_strand_clients_of_a_ready_worker() {
    back_off_does_not_strand_clients("fail-after-first");
}

#[test]
fn back_off_does_not_strand_clients_of_a_plain_ready_worker() {
    back_off_does_not_strand_clients("fail-after-first-plain");
}

/// The first worker of the service lies in `mode` (its replacements behave): it is killed
/// within 5 s, the log has exactly one `protocol violation` line and no line forged by the
/// worker, a replacement serves a new client, and with MAX_CONNS=2 no process ever held more
/// than 2 of the clients at once. With `check_fds`, the dispatcher's descriptors are back
/// where they were once the clients have gone.
fn a_lying_worker_is_killed_and_replaced(mode: &str, check_fds: bool) {
    let d = faulty::start_faulty(
        "MIN_PROCS=1\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=2",
        &format!("{mode}:@STATE@"),
    );
    // Its READY is in when a client of its own is served; count descriptors before that.
    let liar = faulty::first_faulty_worker(&d);
    let dispatcher = d.child.pid();
    std::thread::sleep(Duration::from_millis(300));
    let baseline = fd_count(dispatcher) as i64 - d.workers("faulty_image").len() as i64;
    let listing_before = faulty::fd_listing(dispatcher);

    let mut failures = Vec::new();
    let mut tally = Tally::new(2);
    for _ in 0..5 {
        let mut c = connect(&d, RELAY);
        let g = greeting_within(&mut c, Duration::from_secs(3));
        tally.add(c, &g);
    }
    for (pid, count) in &tally.over {
        failures.push(format!(
            "pid {pid}{} held {count} clients at once with MAX_CONNS=2",
            if *pid == liar { " (the liar)" } else { "" }
        ));
    }
    if !wait_until(Duration::from_secs(5), || !pid_alive(liar)) {
        failures.push(format!(
            "the lying worker (pid {liar}) was not killed within 5 s"
        ));
    }
    let violations = log_lines(&d, "protocol violation");
    if violations.len() != 1 {
        failures.push(format!(
            "{} log lines say `protocol violation` (wanted exactly 1): {violations:#?}",
            violations.len()
        ));
    }
    let forged = log_lines(&d, "")
        .into_iter()
        .filter(|l| l.starts_with("2026-12-01T00:00:00Z"))
        .collect::<Vec<_>>();
    if !forged.is_empty() {
        failures.push(format!("lines forged by the worker: {forged:?}"));
    }
    let mut fresh = connect(&d, RELAY);
    match greeting_within(&mut fresh, Duration::from_secs(5)) {
        g if g.greeted() && g.pid() != Some(liar) => {}
        g => failures.push(format!("a new client after the lie: {g:?} within 5 s")),
    }
    if check_fds {
        drop(fresh);
        drop(tally);
        let settled = wait_until(Duration::from_secs(5), || {
            fd_count(dispatcher) as i64 - d.workers("faulty_image").len() as i64 == baseline
        });
        if !settled {
            failures.push(format!(
                "the dispatcher's descriptors, less one per worker, are {} (were {baseline} before the lie)\nbefore:\n{listing_before}\nnow:\n{}",
                fd_count(dispatcher) as i64 - d.workers("faulty_image").len() as i64,
                faulty::fd_listing(dispatcher)
            ));
        }
    }
    verdict(&d, &failures);
}

#[test]
fn a_worker_that_reports_a_connection_ended_twice_is_killed() {
    a_lying_worker_is_killed_and_replaced("ended-twice", false);
}

#[test]
fn a_worker_that_reports_the_end_of_a_connection_it_never_had_is_killed() {
    a_lying_worker_is_killed_and_replaced("ended-unknown", false);
}

#[test]
fn a_worker_that_sends_an_empty_packet_is_killed() {
    a_lying_worker_is_killed_and_replaced("empty-packet", false);
}

#[test]
fn a_worker_that_sends_garbage_is_killed_and_cannot_forge_a_log_line() {
    a_lying_worker_is_killed_and_replaced("garbage", false);
}

#[test]
fn a_worker_that_sends_descriptors_is_killed_and_none_of_them_leaks() {
    a_lying_worker_is_killed_and_replaced("send-fd", true);
}

#[test]
fn a_worker_that_says_ready_twice_is_killed() {
    a_lying_worker_is_killed_and_replaced("ready-twice", false);
}

#[test]
fn a_worker_that_takes_a_connection_twice_is_killed() {
    a_lying_worker_is_killed_and_replaced("taken-twice", false);
}

#[test]
fn a_worker_that_takes_a_connection_it_was_never_handed_is_killed() {
    a_lying_worker_is_killed_and_replaced("taken-unknown", false);
}

#[test]
fn a_connection_not_taken_by_a_worker_that_drains_goes_to_another_worker() {
    // The first worker says DRAINING instead of TAKEN on its first hand-off and drops the
    // socket unserved, as if DRAIN had crossed the HANDOFF: the dispatcher still holds its
    // copy and hands the client to another worker.
    let d = faulty::start_faulty(
        "MIN_PROCS=1\nMAX_PROCS=2\nMIN_CONNS=1\nMAX_CONNS=5",
        "drain-untaken:@STATE@",
    );
    let drainer = faulty::first_faulty_worker(&d);
    let mut failures = Vec::new();
    let mut c = connect(&d, RELAY);
    match greeting_within(&mut c, Duration::from_secs(5)) {
        g if g.greeted() && g.pid() != Some(drainer) => {}
        g => failures.push(format!(
            "the client handed to the draining worker: {g:?} within 5 s (wanted another worker's greeting)"
        )),
    }
    if !wait_until(Duration::from_secs(5), || !pid_alive(drainer)) {
        failures.push(format!("the drained worker (pid {drainer}) has not exited"));
    }
    for word in ["protocol violation", "killed"] {
        let lines = log_lines(&d, word);
        if !lines.is_empty() {
            failures.push(format!("DRAINING is no fault: {lines:?}"));
        }
    }
    verdict(&d, &failures);
}

#[test]
fn a_worker_that_closes_its_control_socket_is_replaced_and_killed() {
    let d = faulty::start_faulty(
        "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=5",
        "close-control:@STATE@",
    );
    let closer = faulty::first_faulty_worker(&d);
    let _reaper = KillPids::new(&[closer]);
    let mut failures = Vec::new();
    let mut first = connect(&d, RELAY);
    let g = greeting_within(&mut first, Duration::from_secs(5));
    assert_eq!(g.pid(), Some(closer), "the first client: {g:?}");
    // It has closed its control socket right after that hand-off.
    std::thread::sleep(Duration::from_millis(200));
    let closed_at = Instant::now();
    let mut next = connect(&d, RELAY);
    match greeting_within(&mut next, Duration::from_secs(5)) {
        g if g.greeted() && g.pid() != Some(closer) => {}
        g => failures.push(format!(
            "a new client after the control socket closed: {g:?} within 5 s (wanted a replacement's greeting)"
        )),
    }
    let bound = Duration::from_secs(15).saturating_sub(closed_at.elapsed());
    if !wait_until(bound, || !pid_alive(closer)) {
        failures.push(format!(
            "the worker that closed its control socket (pid {closer}) still runs 15 s later"
        ));
    }
    verdict(&d, &failures);
}

// --- A worker at its own descriptor limit, driven directly over its control socket.

/// Starts the echo image the way the dispatcher does (descriptor 3 its end of the control
/// pair), with `RLIMIT_NOFILE` lowered to `limit`; its standard error goes to `log`.
fn echo_with_nofile(limit: u64, log: &std::path::Path) -> (ChildGuard, OwnedFd) {
    let (mine, theirs) = wire::control_pair().expect("control pair");
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(common::example("echo_image"));
    cmd.env_clear()
        .env("IMTA_SERVICE", "ECHO")
        .env("IMTA_PARAMETER", "CHANNEL=none")
        .env("IMTA_STACKSIZE", "262144")
        .env("IMTA_MAX_CONNS", "100")
        .env("IMTA_DEBUG", "1")
        .env("IMTA_TAILOR", "/nonexistent/imta_tailor")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("worker log"));
    // SAFETY: runs between fork and exec and calls only fcntl and dup2, async-signal-safe;
    // `fd` is our end's number, copied in, open in the child as in the parent.
    unsafe {
        cmd.pre_exec(move || {
            let placed = if fd == wire::CONTROL_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, wire::CONTROL_FD)
            };
            if placed == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    faulty::with_nofile(&mut cmd, limit, limit);
    let child = cmd.spawn().expect("start the echo image");
    drop(theirs);
    (ChildGuard(child), mine)
}

/// The next packet from the worker as text, whatever the message (`READY` or `READY ACK`),
/// waiting at most WAIT.
fn next_text(ctrl: &OwnedFd) -> String {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(ctrl.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
    assert!(ready > 0, "no message from the worker within 10 s");
    let mut buf = [0u8; wire::MAX_MESSAGE];
    let n = nix::sys::socket::recv(
        ctrl.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("receive");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Hands connections to an echo image limited to `limit` descriptors until one is not
/// served, then checks that the sessions already in hand are served to their end and that
/// the image exits only after them. What went wrong, if anything.
fn sessions_in_hand_survive_a_descriptor_limit_of(limit: u64) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("echo.log");
    let (mut child, ctrl) = echo_with_nofile(limit, &log);
    let ready = next_text(&ctrl);
    assert!(ready.starts_with("READY"), "{ready}");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("address");
    let mut sessions: Vec<BufReader<TcpStream>> = Vec::new();
    let mut refused = None;
    for conn in 1..=40u64 {
        let client = TcpStream::connect(server).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let msg = ToWorker::HandOff {
            conn,
            client: peer,
            server,
        };
        if let Err(e) = wire::send_to_worker(ctrl.as_fd(), &msg, Some(accepted.as_fd())) {
            refused = Some(format!("connection {conn}: hand-off failed: {e}"));
            break;
        }
        drop(accepted);
        let mut c = Client {
            reader: BufReader::new(client),
        };
        match greeting_within(&mut c, Duration::from_secs(3)) {
            g if g.greeted() => sessions.push(c.reader),
            g => {
                refused = Some(format!("connection {conn}: {g:?}"));
                break;
            }
        }
    }
    let refused = refused.expect("the worker's descriptor limit was reached within 40 hand-offs");
    let worker_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        sessions.len() >= 4,
        "{} sessions before the limit ({refused})",
        sessions.len()
    );
    let mut failures = Vec::new();
    if let Some(status) = child.wait_for(Duration::from_millis(300)) {
        failures.push(format!(
            "RLIMIT_NOFILE={limit}: the image exited ({status}) with {} sessions in hand after {refused}",
            sessions.len()
        ));
    }
    for (n, s) in sessions.iter_mut().enumerate() {
        let echoed = s
            .get_mut()
            .write_all(b"still here\r\nQUIT\r\n")
            .ok()
            .and_then(|()| {
                let mut a = String::new();
                let mut b = String::new();
                s.read_line(&mut a).ok()?;
                s.read_line(&mut b).ok()?;
                Some((a, b))
            });
        if echoed != Some(("250 still here\r\n".into(), "221 bye\r\n".into())) {
            failures.push(format!(
                "RLIMIT_NOFILE={limit}: session {n} after the limit: {echoed:?}"
            ));
        }
    }
    // Whatever it decided about the failed receive, it exits once told to drain (or has).
    let _ = wire::send_to_worker(ctrl.as_fd(), &ToWorker::Drain, None);
    if child.wait_for(WAIT).is_none() {
        failures.push(format!(
            "RLIMIT_NOFILE={limit}: the image did not exit after its sessions ended and DRAIN"
        ));
    }
    if !failures.is_empty() {
        failures.push(format!("--- the image's log:\n{}", worker_log()));
    }
    failures
}

#[test]
fn a_worker_at_its_descriptor_limit_finishes_the_sessions_in_hand() {
    // The echo image uses two descriptors a session (the socket and a clone for writing), so
    // at one of two neighbouring limits the last free descriptor is taken by the clone, at
    // the other by the receive of a HANDOFF (MSG_CTRUNC): the case that matters. Try both.
    let failures: Vec<String> = [16, 17]
        .into_iter()
        .flat_map(sessions_in_hand_survive_a_descriptor_limit_of)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A start that hangs before `READY` (the exec worked, the image never speaks): the
/// dispatcher kills it once `READY_TIMEOUT` has passed since its start, not sooner, reaps it,
/// names it in the log, and starts a replacement after the one-second back-off of a failed
/// start, which serves the client that waited through all of it and every new one.
#[test]
fn a_worker_that_never_says_ready_is_killed_after_the_ready_timeout_and_replaced() {
    use msdispatcher::dispatcher::policy::READY_TIMEOUT;
    let timeout = Duration::from_millis(READY_TIMEOUT);
    let d = faulty::start_faulty(
        "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=5",
        "silent-first:@STATE@",
    );
    let silent = faulty::faulty_workers_saying(&d, "never saying READY", 1, WAIT)
        .unwrap_or_else(|| panic!("the first start is the silent one\n{}", d.log()))[0];
    let _reaper = KillPids::new(&[silent]);
    let seen = Instant::now();
    let mut failures = Vec::new();
    // Arrives while the only worker the pool may have is the silent one.
    let mut waiting = connect(&d, RELAY);

    let gone = wait_until(timeout + Duration::from_secs(10), || !pid_alive(silent));
    let after = seen.elapsed();
    if !gone {
        failures.push(format!(
            "the silent worker (pid {silent}) is still there {after:?} after it was seen starting"
        ));
    } else if after + Duration::from_secs(1) < timeout {
        // Seen within a second of its start: gone before READY_TIMEOUT is a slow start killed.
        failures.push(format!(
            "the silent worker (pid {silent}) was gone {after:?} after it was seen starting, before READY_TIMEOUT ({timeout:?})"
        ));
    }
    let named = log_lines(&d, &format!("(pid {silent}) did not say READY within"));
    if named.len() != 1 {
        failures.push(format!(
            "{} log lines name the silent worker's kill (wanted 1): {named:#?}",
            named.len()
        ));
    }
    let Some(replacement) =
        faulty::faulty_workers_saying(&d, "saying READY", 1, Duration::from_secs(10))
            .map(|pids| pids[0])
    else {
        failures.push("no replacement said READY within 10 s".into());
        return verdict(&d, &failures);
    };
    if replacement == silent {
        failures.push(format!("the silent worker {silent} said READY after all"));
    }
    let _replacement = KillPids::new(&[replacement]);
    match greeting_within(&mut waiting, Duration::from_secs(10)) {
        g if g.pid() == Some(replacement) => {}
        g => failures.push(format!(
            "the client that waited through the hung start: {g:?} (wanted the replacement {replacement})"
        )),
    }
    let mut fresh = connect(&d, RELAY);
    match greeting_within(&mut fresh, Duration::from_secs(5)) {
        g if g.pid() == Some(replacement) => {}
        g => failures.push(format!(
            "a new client after the replacement: {g:?} within 5 s (wanted {replacement})"
        )),
    }
    verdict(&d, &failures);
}
