//! How the dispatcher stops, with real processes (the echo test image as the workers): once a
//! stop has begun no worker is started any more, so nothing is left that was never told to
//! drain; and the workers live in their own process group, so the SIGINT a terminal's Ctrl-C
//! sends to the dispatcher's group reaches the dispatcher alone, which then drains them.
//!
//! The shutdown bound is 30 s here (the layout's default is 5 s): a dispatcher that waits for
//! the bound instead of for its workers is then plain to see.

mod common;

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::dispatcher::{field, Client, Dispatcher, Layout};
use common::load::log_from;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const BOUND: &str = "30";
/// Well below the bound: a stop that waits for its workers, not for the bound, ends by then.
const PROMPT: Duration = Duration::from_secs(10);

/// An installation with the echo image on both services and `limits`, its dispatcher run with
/// a 30 s shutdown bound; `configure` adjusts the command further.
fn start(limits: &str, configure: impl FnOnce(&mut std::process::Command)) -> Dispatcher {
    let layout = Layout::new(limits, ["echo_image", "echo_image"], |_| {});
    Dispatcher::launch(layout, |cmd| {
        cmd.args(["--shutdown-timeout", BOUND]);
        configure(cmd);
    })
}

/// The next line from the server, or why there is none (`Ok("")` at end of file).
fn next_line(c: &mut Client) -> std::io::Result<String> {
    let mut s = String::new();
    c.reader.read_line(&mut s)?;
    Ok(s)
}

/// The process group of `pid`, from `/proc/<pid>/stat` (`pid (comm) state ppid pgrp ...`).
fn process_group(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The command may hold spaces and parentheses: the fields start after the last `)`.
    let close = stat.rfind(')').expect("a command name in /proc/<pid>/stat");
    stat[close + 2..]
        .split_whitespace()
        .nth(2)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no process group in {stat:?}"))
}

/// When worker B of two (MIN_PROCS=2) is killed: just before the SIGTERM, or after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    BeforeTheStop,
    DuringTheStop,
}

/// One session on worker A, worker B lost, SIGTERM; A's client goes on for 2 s, then
/// QUITs. No worker may be started from the SIGTERM on (a replacement would never be told to
/// drain, and the stop would wait for it until the bound), and the dispatcher exits as soon
/// as A's session has ended, well before the bound.
fn stop_with_a_lost_worker(loss: Loss) {
    let mut d = start("MIN_PROCS=2\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=5", |_| {});
    d.wait_for_started("LMTPSS", 2);
    let mut a = Client::connect(RELAY, d.addr(0));
    let pid_a: i32 = field(&a.line(), "pid").parse().expect("pid");
    let log = d.log();
    let pid_b: i32 = log
        .lines()
        .filter(|l| l.contains("[SERVICE=LMTPSS] worker ") && l.contains(" started, pid "))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .find(|&p| p != pid_a)
        .unwrap_or_else(|| panic!("no second LMTPSS worker in the log:\n{log}"));
    let kill_b = |d: &Dispatcher| {
        kill(Pid::from_raw(pid_b), Signal::SIGKILL).expect("kill -9 worker B");
        d.wait_for_log(&format!("(pid {pid_b}) exited: signal 9"));
    };

    // Lost before the stop: B served nothing and was young, so its start counts as failed
    // and its replacement waits out a 1 s back-off, which the SIGTERM falls inside.
    if loss == Loss::BeforeTheStop {
        kill_b(&d);
    }
    // Lost during the stop: B holds a session (MIN_CONNS=1 sends the second client to the
    // idle worker), or it would drain and exit by itself before it could be killed.
    let b = (loss == Loss::DuringTheStop).then(|| {
        let mut b = Client::connect(RELAY, d.addr(0));
        let pid: i32 = field(&b.line(), "pid").parse().expect("pid");
        assert_eq!(pid, pid_b, "the second session is on worker B");
        b
    });
    let stop = Instant::now();
    d.signal(Signal::SIGTERM);
    d.wait_for_log("stopping:");
    if let Some(mut b) = b {
        kill_b(&d);
        assert_eq!(b.line(), "", "worker B's client sees the close");
    }
    std::thread::sleep(Duration::from_secs(2));
    a.say("still here");
    assert_eq!(a.line(), "250 still here\r\n", "A's session goes on");
    assert_eq!(a.quit(), "221 bye\r\n");

    let status = d.child.wait_for(PROMPT);
    let log = d.log();
    let late = log_from(&log, "stopping:");
    // A start asked for before the stop may be reported after it (starts are made off the
    // event loop); such a worker was there at the stop and was told to retire with the
    // others. A worker no stop line names was asked for after the stop.
    let at_the_stop: Vec<&str> = late
        .lines()
        .filter(|l| l.contains(" retires (Stop)"))
        .filter_map(|l| l.split(" worker ").nth(1)?.split(' ').next())
        .collect();
    for l in late.lines().filter(|l| l.contains(" started, pid ")) {
        let id = l
            .split(" worker ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?");
        assert!(
            at_the_stop.contains(&id),
            "worker {id} was started after the stop began:\n{late}"
        );
    }
    let status = status.unwrap_or_else(|| {
        panic!(
            "the dispatcher still runs {:?} after SIGTERM, its last session over:\n{log}",
            stop.elapsed()
        )
    });
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!late.contains("killed"), "a worker was killed:\n{late}");
}

#[test]
fn a_worker_lost_just_before_a_stop_is_not_replaced_during_it() {
    stop_with_a_lost_worker(Loss::BeforeTheStop);
}

#[test]
fn a_worker_lost_during_a_stop_is_not_replaced() {
    stop_with_a_lost_worker(Loss::DuringTheStop);
}

#[test]
fn workers_run_in_a_process_group_of_their_own() {
    let d = start("MIN_PROCS=1", |cmd| {
        cmd.process_group(0);
    });
    let dispatcher = i32::try_from(d.child.pid()).expect("a pid fits i32");
    assert_eq!(
        process_group(dispatcher),
        dispatcher,
        "the test made it a leader"
    );
    let mut c = Client::connect(RELAY, d.addr(0));
    let worker: i32 = field(&c.line(), "pid").parse().expect("pid");
    assert_ne!(
        process_group(worker),
        dispatcher,
        "worker {worker} is in the dispatcher's process group"
    );
    c.quit();
}

/// What a terminal's Ctrl-C does: SIGINT to the foreground process group, the dispatcher's.
#[test]
fn sigint_to_the_dispatchers_group_stops_it_without_cutting_a_session() {
    let mut d = start("MIN_PROCS=1", |cmd| {
        cmd.process_group(0);
    });
    let group = Pid::from_raw(i32::try_from(d.child.pid()).expect("a pid fits i32"));
    let mut c = Client::connect(RELAY, d.addr(0));
    let worker = field(&c.line(), "pid");
    c.say("MAIL FROM:<a@relay.example>");
    assert_eq!(c.line(), "250 MAIL FROM:<a@relay.example>\r\n");

    kill(Pid::from_raw(-group.as_raw()), Signal::SIGINT).expect("SIGINT to the group");
    d.wait_for_log("stopping:");
    c.say("DATA");
    let reply = next_line(&mut c);
    assert!(
        matches!(&reply, Ok(line) if line == "250 DATA\r\n"),
        "the session of worker {worker} was cut by the group's SIGINT: {reply:?}\n{}",
        d.log()
    );
    assert_eq!(c.quit(), "221 bye\r\n");
    let status = d
        .child
        .wait_for(PROMPT)
        .unwrap_or_else(|| panic!("the dispatcher did not stop:\n{}", d.log()));
    assert!(status.success(), "{status:?}");
    let log = d.log();
    assert!(
        log.contains(&format!("(pid {worker}) exited: exit status 0")),
        "the worker drained and exited by itself:\n{log}"
    );
}
