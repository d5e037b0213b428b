//! Helpers shared by the integration tests: where the fixtures are, and how a broken fixture
//! is checked against the exact error it must produce.
#![allow(dead_code)]

pub mod delivery_log;
pub mod dispatcher;
pub mod docs;
pub mod faulty;
pub mod lmtp;
pub mod load;
pub mod netns;
pub mod peers;
pub mod two_tier;

use std::path::{Path, PathBuf};

/// `fixtures/` of this repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Runs `load` on every file of `fixtures/broken/<kind>/` that has a `<file>.expected` beside
/// it, and asserts that it fails with exactly the message in that file (the first line; the
/// directory part of paths in the actual message is removed, so the expected text names files
/// by their file name: `bad_port.cnf:3:6: ...`). Returns how many cases ran; a kind with no
/// case is itself a failure, so a misplaced directory cannot pass silently.
pub fn check_broken_fixtures<E: std::fmt::Display>(
    kind: &str,
    load: impl Fn(&Path) -> Result<(), E>,
) -> usize {
    let dir = fixtures().join("broken").join(kind);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "expected"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no broken fixtures in {}", dir.display());
    let prefix = format!("{}/", dir.display());
    let mut failures = Vec::new();
    for expected_file in &cases {
        let input = expected_file.with_extension("");
        let expected = std::fs::read_to_string(expected_file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", expected_file.display()));
        let expected = expected.lines().next().unwrap_or("").trim_end();
        match load(&input) {
            Ok(()) => failures.push(format!("{}: loaded without error", input.display())),
            Err(e) => {
                let got = e.to_string().replace(&prefix, "");
                if got != expected {
                    failures.push(format!(
                        "{}:\n  expected: {expected}\n  got:      {got}",
                        input.display()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "broken fixtures:\n{}",
        failures.join("\n")
    );
    cases.len()
}

/// An example program built by cargo for the tests (`examples/<name>.rs`).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    path
}

/// A child process that is killed (by pid) and reaped when the guard goes, whatever happens
/// in the test.
pub struct ChildGuard<P: Reapable = std::process::Child>(pub P);

/// A process a test started: the standard library's, or the dispatcher's own start
/// (`msdispatcher::dispatcher::child::Process`).
pub trait Reapable {
    fn id(&self) -> u32;
    fn kill(&mut self) -> std::io::Result<()>;
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus>;
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>>;
}

macro_rules! reapable {
    ($t:ty) => {
        impl Reapable for $t {
            fn id(&self) -> u32 {
                <$t>::id(self)
            }
            fn kill(&mut self) -> std::io::Result<()> {
                <$t>::kill(self)
            }
            fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
                <$t>::wait(self)
            }
            fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
                <$t>::try_wait(self)
            }
        }
    };
}
reapable!(std::process::Child);
reapable!(msdispatcher::dispatcher::child::Process);

impl<P: Reapable> ChildGuard<P> {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_for(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }
}

impl<P: Reapable> Drop for ChildGuard<P> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pids of `parent`'s children whose command is `name` (as `/proc` shows it: the first 15
/// characters of the program name).
pub fn children_named(parent: u32, name: &str) -> Vec<i32> {
    children(parent)
        .into_iter()
        .filter(|(_, comm)| !comm.is_empty() && name.starts_with(comm.as_str()))
        .map(|(pid, _)| pid)
        .collect()
}

/// `parent`'s children: pid and command (`/proc/<pid>/stat`).
pub fn children(parent: u32) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid: u32 = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == parent {
            out.push((pid, comm.to_string()));
        }
    }
    out
}

/// Whether a process of this pid exists (a zombie not yet reaped still does).
pub fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Polls `done` every 20 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How many descriptors process `pid` has open (`/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// A client connection to `listener`, accepted and sent to the worker on `ctrl` as hand-off
/// `conn` (a test playing the dispatcher); returns the client's end.
pub fn send_hand_off(
    ctrl: &std::os::fd::OwnedFd,
    listener: &std::net::TcpListener,
    conn: u64,
) -> std::net::TcpStream {
    use msdispatcher::handoff::wire::{self, ToWorker};
    use std::os::fd::AsFd;
    let server = listener.local_addr().expect("listener's address");
    let client = std::net::TcpStream::connect(server).expect("connect");
    let (accepted, peer) = listener.accept().expect("accept");
    let msg = ToWorker::HandOff {
        conn,
        client: peer,
        server,
    };
    wire::send_to_worker(ctrl.as_fd(), &msg, Some(accepted.as_fd())).expect("hand off");
    client
}

/// The next message a worker sends on its control socket (the dispatcher's end), waiting at
/// most 10 s; `None` at end of file.
pub fn next_message(
    ctrl: &std::os::fd::OwnedFd,
) -> Option<msdispatcher::handoff::wire::ToDispatcher> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(ctrl.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
    assert!(ready > 0, "no message from the worker within 10 s");
    msdispatcher::handoff::wire::recv_from_worker(ctrl.as_fd()).expect("receive")
}
