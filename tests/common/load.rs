//! Load and what it leaves behind, for the stress scenarios (`tests/stress_runtime.rs`) and
//! the refused-flood bench (`benches/refused_flood.rs`): the LMTP installation with a shutdown
//! bound of the test's choosing, a Postfix relay that also takes SMTP (so that `smtp-source`
//! can feed it at speed), a flood of connections from one address, and the counts a scenario
//! is judged by (descriptors and workers from `/proc`, copies of a message in the store).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::dispatcher::free_ports;
use super::peers::{run_bounded, smtp_greets, Postfix};

/// A throwaway Postfix relaying to our LMTP service (its own `lmtp` client, connection
/// caching on demand, as Postfix ships it) that also accepts SMTP on `smtp`, a loopback port
/// of its own, from 127.0.0.1 (`mynetworks`).
pub struct Relay {
    pub postfix: Postfix,
    pub smtp: SocketAddr,
}

impl Relay {
    pub fn start(dir: &Path, lmtp: SocketAddr) -> Relay {
        let postfix = Postfix::start(dir, lmtp);
        let conf = postfix.conf();
        let [port] = free_ports::<1>();
        let smtp = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Stated rather than left to the default: the stop scenario is about cached sessions.
        postfix.tool("postconf", &["-e", "lmtp_connection_cache_on_demand = yes"]);
        let mut master = std::fs::read_to_string(conf.join("master.cf")).expect("master.cf");
        master.push_str(&format!("{smtp} inet n - n - - smtpd\n"));
        std::fs::write(conf.join("master.cf"), master).expect("write master.cf");
        postfix.tool("postfix", &["reload"]);
        let greeted = super::wait_until(Duration::from_secs(20), || smtp_greets(smtp));
        assert!(
            greeted,
            "Postfix's smtpd does not answer on {smtp}:\n{}",
            postfix.log()
        );
        Relay { postfix, smtp }
    }

    /// Holds or releases delivery ([`Postfix::hold_delivery`]).
    pub fn hold_delivery(&self, hold: bool) {
        self.postfix.hold_delivery(hold);
    }

    /// How many messages wait in Postfix's queue.
    pub fn queued(&self) -> usize {
        self.postfix.queued()
    }

    /// `postqueue -f`: every deferred message is tried again now.
    pub fn flush(&self) {
        self.postfix.flush();
    }
}

/// Postfix's `smtp-source` speaking SMTP (not LMTP) to `addr`, bounded by `limit`.
pub fn smtp_source_smtp(addr: SocketAddr, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new("smtp-source");
    cmd.args(args).arg(addr.to_string());
    run_bounded(cmd, "smtp-source", limit)
}

/// CPU seconds (user + system) process `pid` has used (`/proc/<pid>/stat`, fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The command may hold spaces and parentheses: the fields start after the last `)`.
    let rest = stat.rfind(')').map_or("", |close| &stat[close + 2..]);
    let field = |n: usize| -> u64 {
        rest.split_whitespace()
            .nth(n)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("field {} of {stat:?}", n + 3))
    };
    // SAFETY: sysconf reads a constant of the system; it has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (field(11) + field(12)) as f64 / hz
}

/// The message files of the Maildir `dir` (`new/` and `cur/`).
pub fn message_files(dir: &Path) -> Vec<PathBuf> {
    ["new", "cur"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flat_map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())))
        .collect()
}

/// The queue id Postfix gave a message, from its `Received:` line (`... (Postfix) with ESMTP
/// id 4C1A598C4A3`): the same for every copy of one queued message, whoever delivered it.
pub fn postfix_queue_id(message: &str) -> Option<String> {
    let at = message.find("(Postfix) with ")?;
    let rest = &message[at..];
    let id = rest.split(" id ").nth(1)?;
    id.split(|c: char| c.is_whitespace() || c == ';')
        .next()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// How many times each key (`key` of each file's text) occurs in `files`; files without a key
/// are counted under `""`.
pub fn copies(files: &[PathBuf], key: impl Fn(&str) -> Option<String>) -> BTreeMap<String, usize> {
    let texts: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    copies_of(&texts, key)
}

/// How many times each key (`key` of each message's text) occurs in `messages`; messages
/// without a key are counted under `""`.
pub fn copies_of(
    messages: &[Vec<u8>],
    key: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in messages {
        let k = key(&String::from_utf8_lossy(m)).unwrap_or_default();
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

/// What a flood of connections achieved.
#[derive(Debug, Default, Clone)]
pub struct Flood {
    /// Connections established.
    pub connected: usize,
    /// Of those, how many got the refusal text (a line starting with `refusal`).
    pub refused: usize,
    /// Connect attempts that failed (the listen queue full, or the cap reached).
    pub failed: usize,
    pub elapsed: Duration,
}

/// `total` connections from `from` to `to`, as fast as `threads` threads can open them, each
/// read up to its first line (the refusal, which must start with `refusal`) and closed.
/// Bounded by `total` and by `cap`: whatever is left when the cap passes is not attempted.
pub fn flood(
    from: Ipv4Addr,
    to: SocketAddr,
    total: usize,
    threads: usize,
    cap: Duration,
    refusal: &'static str,
) -> Flood {
    let start = Instant::now();
    let end = start + cap;
    let per = total.div_ceil(threads.max(1));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let mine = per.min(total.saturating_sub(t * per));
            std::thread::spawn(move || {
                let mut f = Flood::default();
                for _ in 0..mine {
                    if Instant::now() >= end {
                        break;
                    }
                    match try_connect_from(from, to) {
                        Some(mut s) => {
                            f.connected += 1;
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 64];
                            let n = s.read(&mut buf).unwrap_or(0);
                            if buf[..n].starts_with(refusal.as_bytes()) {
                                f.refused += 1;
                            }
                        }
                        None => f.failed += 1,
                    }
                }
                f
            })
        })
        .collect();
    let mut sum = Flood::default();
    for h in handles {
        let f = h.join().unwrap_or_default();
        sum.connected += f.connected;
        sum.refused += f.refused;
        sum.failed += f.failed;
    }
    sum.elapsed = start.elapsed();
    sum
}

/// A connection from `from`, or `None` if it cannot be made (unlike
/// `dispatcher::connect_from`, which panics: in a flood a failed connect is a number).
fn try_connect_from(from: Ipv4Addr, to: SocketAddr) -> Option<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((from, 0)).into()).ok()?;
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .ok()?;
    Some(socket.into())
}

/// Lines of `log` from the first one containing `mark` on (empty if none does).
pub fn log_from(log: &str, mark: &str) -> String {
    log.find(mark)
        .map_or_else(String::new, |at| log[at..].to_string())
}
