//! The tests of worker faults and descriptor limits: a dispatcher whose first service runs a
//! chosen image (the echo image, or `examples/faulty_image.rs` in a chosen mode) while the
//! second service starts no worker, clients whose greeting is awaited for a bounded time,
//! and what `/proc` says of a process (alive, descriptors, limits).
#![allow(dead_code)]

use std::io::{BufRead, Read};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::dispatcher::{mail_ids, Client, Dispatcher, Layout};
use super::example;

/// The first relay address of the test mappings (admitted on both ports).
pub const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The service the faults are tried on (the first of the test configuration, port 0).
pub const SERVICE: &str = "LMTPSS";

/// Where the faulty image keeps its count of starts (`MODE=<mode>:<dir>`).
pub fn state_dir(root: &Path) -> PathBuf {
    root.join("faulty-state")
}

/// Lays out an installation with `limits`, the first service running `image` with
/// `PARAMETER=<parameter>` (`@STATE@` in it becomes [`state_dir`], made writable by the
/// workers' account), the second one `MIN_PROCS=0` so that it starts no worker: every
/// worker the test sees is the first service's.
pub fn layout(limits: &str, image: &str, parameter: &str) -> Layout {
    Layout::new(limits, [image, "echo_image"], |root| {
        if image == "faulty_image" {
            std::fs::copy(example("faulty_image"), root.join("lib/faulty_image"))
                .expect("copy the faulty image");
        }
        let state = state_dir(root);
        std::fs::create_dir(&state).expect("state dir");
        let (uid, gid) = mail_ids();
        std::os::unix::fs::chown(&state, Some(uid.as_raw()), Some(gid.as_raw()))
            .expect("give the state dir to the mail account");
        let parameter = parameter.replace("@STATE@", &state.display().to_string());
        let cnf = root.join("config/dispatcher.cnf");
        let text = std::fs::read_to_string(&cnf).expect("read dispatcher.cnf");
        let text = text
            .replacen(
                "PARAMETER=CHANNEL=tcp_lmtpss",
                &format!("PARAMETER={parameter}"),
                1,
            )
            .replacen("[SERVICE=LMTPSN]", "[SERVICE=LMTPSN]\nMIN_PROCS=0", 1);
        std::fs::write(&cnf, text).expect("write dispatcher.cnf");
    })
}

/// Starts the dispatcher on [`layout`].
pub fn start(limits: &str, image: &str, parameter: &str) -> Dispatcher {
    Dispatcher::launch(layout(limits, image, parameter), |_| {})
}

/// Starts the dispatcher with the faulty image in `mode` (`MODE=<mode>`, `@STATE@` allowed).
pub fn start_faulty(limits: &str, mode: &str) -> Dispatcher {
    start(limits, "faulty_image", &format!("MODE={mode}"))
}

/// Waits until the first worker of the faulty image is saying READY (its LOGFILE says so)
/// and returns its pid. Give the dispatcher a moment to read the message before relying on
/// it.
pub fn first_faulty_worker(d: &Dispatcher) -> i32 {
    let pids = faulty_workers_saying(d, "saying READY", 1, super::dispatcher::WAIT);
    assert!(
        pids.is_some(),
        "the first faulty worker said READY\n{}",
        d.log()
    );
    pids.unwrap_or_default()[0]
}

/// Waits until `n` workers of the faulty image have written `faulty <pid>: <what>` to the
/// service's LOGFILE, at most `limit`, and returns their pids in the order they wrote it;
/// `None` if fewer did.
pub fn faulty_workers_saying(
    d: &Dispatcher,
    what: &str,
    n: usize,
    limit: Duration,
) -> Option<Vec<i32>> {
    let suffix = format!(": {what}");
    let mut pids = Vec::new();
    let found = super::wait_until(limit, || {
        pids = d
            .service_log("tcp_lmtpss_server.log")
            .lines()
            .filter_map(|l| {
                l.strip_prefix("faulty ")?
                    .strip_suffix(&suffix)?
                    .parse()
                    .ok()
            })
            .collect();
        pids.len() >= n
    });
    found.then_some(pids)
}

/// Makes `cmd` start with `RLIMIT_NOFILE` soft `soft` and hard `hard`.
pub fn with_nofile(cmd: &mut Command, soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: runs between fork and exec; setrlimit is an async-signal-safe system call and
    // the closure reads only the copy of `limit` moved into it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// What a client saw within its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// The first line.
    Line(String),
    /// The connection closed without a line.
    Closed,
    /// Nothing within the bound.
    Silent,
}

impl Greeting {
    /// The pid in `220 faulty <pid> ready` or in the echo image's `pid=<pid>`.
    pub fn pid(&self) -> Option<i32> {
        let Greeting::Line(l) = self else {
            return None;
        };
        if let Some(rest) = l.strip_prefix("220 faulty ") {
            return rest.split_whitespace().next().and_then(|p| p.parse().ok());
        }
        super::dispatcher::field(l, "pid").parse().ok()
    }

    pub fn greeted(&self) -> bool {
        matches!(self, Greeting::Line(l) if l.starts_with("220 "))
    }
}

/// Connects from `from` to `d`'s first service.
pub fn connect(d: &Dispatcher, from: Ipv4Addr) -> Client {
    Client::connect(from, d.addr(0))
}

/// Waits up to `limit` for the client's first line.
pub fn greeting_within(c: &mut Client, limit: Duration) -> Greeting {
    let stream = c.reader.get_ref();
    stream
        .set_read_timeout(Some(limit))
        .expect("set the read timeout");
    let mut line = String::new();
    let got = match c.reader.read_line(&mut line) {
        Ok(0) => Greeting::Closed,
        Ok(_) => Greeting::Line(line),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Greeting::Silent
        }
        Err(_) => Greeting::Closed,
    };
    c.reader
        .get_ref()
        .set_read_timeout(Some(super::dispatcher::WAIT))
        .expect("set the read timeout");
    got
}

/// Connects `n` clients at once (their connections wait in the listen queue if need be), then
/// reads each one's greeting, all within `bound` from the last connect.
pub fn burst_greetings(d: &Dispatcher, n: usize, bound: Duration) -> Vec<(Client, Greeting)> {
    let clients: Vec<Client> = (0..n).map(|_| connect(d, RELAY)).collect();
    let end = Instant::now() + bound;
    clients
        .into_iter()
        .map(|mut c| {
            let left = end
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let g = greeting_within(&mut c, left);
            (c, g)
        })
        .collect()
}

/// Sends `text` and waits up to `limit` for the reply line.
pub fn reply_within(c: &mut Client, text: &str, limit: Duration) -> Greeting {
    use std::io::Write;
    if c.reader
        .get_mut()
        .write_all(format!("{text}\r\n").as_bytes())
        .is_err()
    {
        return Greeting::Closed;
    }
    greeting_within(c, limit)
}

/// Whether the server has closed this connection (end of file or reset), without waiting.
pub fn is_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut probe = [0u8; 1];
    let closed = match stream.peek(&mut probe) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// Clients held open and who greeted them: checks that no process ever holds more than
/// `max_conns` of them at once (a client whose server closed it no longer counts).
pub struct Tally {
    pub max_conns: usize,
    pub clients: Vec<(Client, Option<i32>)>,
    /// Every time a process was seen over `max_conns`: pid and count.
    pub over: Vec<(i32, usize)>,
}

impl Tally {
    pub fn new(max_conns: usize) -> Tally {
        Tally {
            max_conns,
            clients: Vec::new(),
            over: Vec::new(),
        }
    }

    /// Records a client and what it saw.
    pub fn add(&mut self, client: Client, greeting: &Greeting) {
        let pid = greeting.pid();
        self.clients.push((client, pid));
        if let Some(pid) = pid {
            let open = self.open_of(pid);
            if open > self.max_conns {
                self.over.push((pid, open));
            }
        }
    }

    /// How many recorded clients of `pid` are still open.
    pub fn open_of(&self, pid: i32) -> usize {
        self.clients
            .iter()
            .filter(|(c, p)| *p == Some(pid) && !is_closed(c.reader.get_ref()))
            .count()
    }
}

/// The descriptors of a process as `/proc` names them (`3 -> socket:[123]`), for a failure
/// message.
pub fn fd_listing(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return String::new();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    v.join("\n")
}

/// The soft and hard `RLIMIT_NOFILE` of a running process (`/proc/<pid>/limits`).
pub fn nofile_limits(pid: u32) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    Some((f.next()?.to_string(), f.next()?.to_string()))
}

/// When a process started (`/proc/<pid>/stat` field 22, clock ticks after boot), which tells
/// a process from a later one that reuses its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: the command may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether every thread of `pid` is stopped (`T` in `/proc/<pid>/task/*/stat`). A SIGSTOP
/// takes effect only once one thread has run to take it, and the others are stopped only then:
/// until it has, a thread woken by a hand-off still runs, and may take a connection.
pub fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        // tid (comm) state ...: the command may hold spaces and parentheses.
        let state = stat
            .rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next());
        if state != Some("T") {
            return false;
        }
        any = true;
    }
    any
}

/// Kills these processes (SIGKILL, which also ends a stopped one) when it goes: a worker the
/// test stopped must not outlive the test, whatever the dispatcher did with it. Each is
/// killed only if its pid still names the process seen at [`KillPids::new`].
pub struct KillPids(Vec<(i32, Option<u64>)>);

impl KillPids {
    pub fn new(pids: &[i32]) -> KillPids {
        KillPids(pids.iter().map(|&p| (p, start_time(p))).collect())
    }
}

impl Drop for KillPids {
    fn drop(&mut self) {
        for &(pid, started) in &self.0 {
            if started.is_some() && start_time(pid) == started {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Reads what is left on a client until end of file or `limit`, for failure messages.
pub fn drain_text(c: &mut Client, limit: Duration) -> String {
    let _ = c.reader.get_ref().set_read_timeout(Some(limit));
    let mut s = String::new();
    let _ = c.reader.read_to_string(&mut s);
    s
}

/// Lines of the dispatcher log that contain `text`.
pub fn log_lines(d: &Dispatcher, text: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}
