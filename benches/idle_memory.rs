//! `make bench` (memory part): resident memory per idle LMTP connection.
//!
//! The real `tcp_lmtp_server` behind the dispatcher (4 workers started up front, room for
//! 1,200 connections, no recycling during the run), 1,000 connections from 127.0.0.1, each
//! greeted and answered one `LHLO`, then left idle. The cost is the resident memory (`VmRSS`)
//! summed over the workers, minus what the same workers held before the first connection,
//! divided by the connections. A second row does the same after each connection delivered one
//! 64 KiB message (a relay's cached connection: busy once, then idle), so memory a message
//! needed and the session did not give back shows. Under the table, where the difference
//! went, from `/proc/<pid>/smaps`: thread stacks (anonymous mappings of the service's
//! STACKSIZE), other anonymous memory (malloc's arenas and heap), and file-backed pages.
//!
//! The peer, measured the same way in the same run: Dovecot's LMTP server in the same shape,
//! 4 `lmtp` processes started up front holding 250 connections each (`client_limit = 250`;
//! Dovecot's own default is a process per connection, `client_limit = 1`, which would cost a
//! whole process each), the same clients, the same rows; its cost is the resident memory of
//! its `lmtp` processes.
//!
//! Every wait is bounded: each read by the client's timeout, the whole run by [`DEADLINE`].

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;
use common::lmtp::Lmtp;
use common::peers;

const CONNECTIONS: usize = 1000;
const WORKERS: usize = 4;
const LIMITS: &str =
    "MIN_PROCS=4\nMAX_PROCS=4\nMIN_CONNS=250\nMAX_CONNS=300\nMAX_LIFE_CONNS=1000000";
/// The services' STACKSIZE in `fixtures/runtime/dispatcher.cnf.in`.
const STACKSIZE: u64 = 2_048_000;
const TARGET_KIB: f64 = 32.0;
const DEADLINE: Duration = Duration::from_secs(300);
const MESSAGE_SIZE: usize = 64 * 1024;

/// Resident memory of one process, split by what the mappings are (KiB).
#[derive(Debug, Default, Clone, Copy)]
struct Resident {
    total: u64,
    stacks: u64,
    other_anon: u64,
    file: u64,
}

impl std::ops::Sub for Resident {
    type Output = Resident;
    fn sub(self, o: Resident) -> Resident {
        Resident {
            total: self.total.saturating_sub(o.total),
            stacks: self.stacks.saturating_sub(o.stacks),
            other_anon: self.other_anon.saturating_sub(o.other_anon),
            file: self.file.saturating_sub(o.file),
        }
    }
}

impl std::ops::Add for Resident {
    type Output = Resident;
    fn add(self, o: Resident) -> Resident {
        Resident {
            total: self.total + o.total,
            stacks: self.stacks + o.stacks,
            other_anon: self.other_anon + o.other_anon,
            file: self.file + o.file,
        }
    }
}

/// `/proc/<pid>/smaps`, summed: a mapping is a thread stack when it is anonymous, writable
/// and of the STACKSIZE (glibc may add a page or a little TLS).
fn resident(pid: i32) -> Resident {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/smaps: {e}"));
    let mut r = Resident::default();
    let mut anon = false;
    let mut size = 0u64;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            // A mapping's header: range perms offset dev inode [path]
            anon = fields.len() < 6 || fields[5] == "[heap]";
            size = 0;
            continue;
        }
        let value = || {
            fields
                .get(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match fields.first().copied() {
            Some("Size:") => size = value() * 1024,
            Some("Rss:") => {
                let kib = value();
                r.total += kib;
                if !anon {
                    r.file += kib;
                } else if (STACKSIZE..STACKSIZE + 256 * 1024).contains(&size) {
                    r.stacks += kib;
                } else {
                    r.other_anon += kib;
                }
            }
            _ => {}
        }
    }
    r
}

/// A server under test: where its clients connect, and the processes whose memory counts.
trait Server {
    fn addr(&self) -> SocketAddr;
    fn processes(&self) -> Vec<i32>;
}

struct Ours(Dispatcher);

impl Ours {
    fn start() -> Ours {
        let d = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
        d.wait_for_started("LMTPSS", WORKERS);
        Ours(d)
    }
}

impl Server for Ours {
    fn addr(&self) -> SocketAddr {
        self.0.addr(0)
    }
    fn processes(&self) -> Vec<i32> {
        self.0.workers("tcp_lmtp_server")
    }
}

struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
    _server: peers::Dovecot,
}

impl Dovecot {
    fn start() -> Dovecot {
        let dir = tempfile::tempdir().expect("tempdir");
        let mail = dir.path().join("mail");
        std::fs::create_dir_all(&mail).expect("Dovecot's mail root");
        let port = common::dispatcher::free_ports::<1>()[0];
        let server = peers::Dovecot::start_with(dir.path(), &mail, Some(port), "optimized");
        // Our shape: 4 processes started up front, 250 connections each (merged by Dovecot
        // into the helper's `service lmtp`), applied with a reload.
        let conf = server.config_path().to_path_buf();
        let mut text = std::fs::read_to_string(&conf).expect("read dovecot.conf");
        text.push_str(&format!(
            "service lmtp {{\n  client_limit = {}\n  process_limit = {WORKERS}\n  \
             process_min_avail = {WORKERS}\n}}\n",
            CONNECTIONS / WORKERS
        ));
        std::fs::write(&conf, text).expect("write dovecot.conf");
        let reload = std::process::Command::new("doveadm")
            .arg("-c")
            .arg(&conf)
            .arg("reload")
            .status()
            .expect("doveadm reload");
        assert!(reload.success(), "doveadm reload");
        Dovecot {
            dir,
            port,
            _server: server,
        }
    }

    fn master(&self) -> u32 {
        let pid = self.dir.path().join("run/master.pid");
        std::fs::read_to_string(&pid)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", pid.display()))
    }
}

impl Server for Dovecot {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
    fn processes(&self) -> Vec<i32> {
        common::children_named(self.master(), "lmtp")
    }
}

fn resident_of(server: &dyn Server) -> Resident {
    let pids = server.processes();
    assert_eq!(pids.len(), WORKERS, "server processes: {pids:?}");
    pids.into_iter()
        .map(resident)
        .fold(Resident::default(), |a, b| a + b)
}

/// Lets threads that were just handed a connection reach their wait, then measures.
fn settled(server: &dyn Server) -> Resident {
    std::thread::sleep(Duration::from_secs(1));
    resident_of(server)
}

/// The descriptors the client needs (1,000 connections and some).
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = (CONNECTIONS as u64 * 2 + 256).min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit RLIMIT_NOFILE");
    }
    assert!(
        want >= CONNECTIONS as u64 + 64,
        "RLIMIT_NOFILE hard limit {hard} is too low for {CONNECTIONS} connections"
    );
}

struct Row {
    server: &'static str,
    label: &'static str,
    before: Resident,
    after: Resident,
}

impl Row {
    fn per_connection(&self) -> f64 {
        (self.after - self.before).total as f64 / CONNECTIONS as f64
    }
}

fn message() -> Vec<u8> {
    let mut m = b"Subject: idle memory bench\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while m.len() + line.len() <= MESSAGE_SIZE {
        m.extend_from_slice(line);
    }
    m
}

/// A freshly started server, 1,000 connections greeted and answered `LHLO`; with `deliver`,
/// each then delivers one message before it is left idle.
fn measure(
    server: &'static str,
    start: fn() -> Box<dyn Server>,
    label: &'static str,
    deliver: bool,
    started: Instant,
) -> Row {
    let d = start();
    assert!(
        common::wait_until(Duration::from_secs(15), || d.processes().len() == WORKERS),
        "{server}: {WORKERS} processes did not start: {:?}",
        d.processes()
    );
    let before = settled(d.as_ref());
    let body = message();
    let mut open = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        assert!(
            started.elapsed() < DEADLINE,
            "{label}: only {i} connections open after {DEADLINE:?}"
        );
        let mut c = Lmtp::connect(Ipv4Addr::LOCALHOST, d.addr());
        c.lhlo();
        if deliver {
            let r = c.send_message(
                "bench@relay.example",
                &format!("idle{i}@example.com"),
                &body,
            );
            assert_eq!(r.code, 250, "{label}: delivery {i}: {r:?}");
        }
        open.push(c);
    }
    let after = settled(d.as_ref());
    drop(open);
    Row {
        server,
        label,
        before,
        after,
    }
}

fn ours() -> Box<dyn Server> {
    Box::new(Ours::start())
}

fn dovecot() -> Box<dyn Server> {
    Box::new(Dovecot::start())
}

fn main() {
    raise_descriptor_limit();
    let started = Instant::now();
    let mut rows = Vec::new();
    for (label, deliver) in [
        ("LHLO, then idle", false),
        ("LHLO, one 64 KiB message, then idle", true),
    ] {
        rows.push(measure("ours", ours, label, deliver, started));
        rows.push(measure("Dovecot", dovecot, label, deliver, started));
    }
    println!();
    println!(
        "### Idle LMTP connections: resident memory of the {WORKERS} server processes \
         (ours: tcp_lmtp_server workers, STACKSIZE={STACKSIZE}; Dovecot: lmtp processes)"
    );
    println!();
    println!("| server | connections | RSS before (KiB) | after (KiB) | per connection (KiB) | target (KiB) | met |");
    println!("|---|---|---:|---:|---:|---:|---|");
    for r in &rows {
        let per = r.per_connection();
        // The target is ours; the peer's row is there for scale.
        let (target, met) = match (r.server, per <= TARGET_KIB) {
            ("ours", true) => (format!("{TARGET_KIB:.0}"), "yes"),
            ("ours", false) => (format!("{TARGET_KIB:.0}"), "no"),
            _ => (String::new(), ""),
        };
        println!(
            "| {} | {CONNECTIONS} x {} | {} | {} | {per:.1} | {target} | {met} |",
            r.server, r.label, r.before.total, r.after.total,
        );
    }
    println!();
    println!("Where the difference went (KiB per connection, from /proc/<pid>/smaps):");
    println!();
    println!("| server | connections | thread stacks | other anonymous (malloc) | file-backed |");
    println!("|---|---|---:|---:|---:|");
    for r in &rows {
        let diff = r.after - r.before;
        let per = |kib: u64| kib as f64 / CONNECTIONS as f64;
        println!(
            "| {} | {CONNECTIONS} x {} | {:.1} | {:.1} | {:.1} |",
            r.server,
            r.label,
            per(diff.stacks),
            per(diff.other_anon),
            per(diff.file)
        );
    }
}
