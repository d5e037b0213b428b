//! `make bench` (LMTP part): durable deliveries per second into our message store through the
//! dispatcher, against Dovecot's LMTP server and against the disk itself, side by side in one
//! run.
//!
//! Two tables:
//!
//! 1. **Against Dovecot** (`mail_fsync = optimized`, its default): the matrix {1 KiB, 64 KiB}
//!    x {1, 4, 16 sessions} x {1, 5 recipients} sent by Postfix's `smtp-source -L` with a new
//!    connection per message, then the same load over reused connections (`-d`) and with a
//!    new mailbox for every message (our own client: one user name per message, which both
//!    servers create on delivery). The same client and arguments for both servers.
//! 2. **Against the disk** (group commit): the disk's single-writer durable rate (create a
//!    file in `tmp/`, write 1 KiB, `fdatasync`, rename into `new/`, `fsync` of `new/`, one
//!    after another, on the file system our store is on) against 16 one-recipient sessions
//!    over reused connections into our store; beside them the same steps by 16 threads side
//!    by side, which is what the disk gives sixteen deliveries that share no flush.
//!
//! Ours is the whole product path (dispatcher, PORT_ACCESS, hand-off, `tcp_lmtp_server`,
//! Maildir with the file and `new/` flushed before every 250). After every row the messages
//! are counted in both stores: a row whose count is short is reported, not hidden. Each row
//! is sent in rounds alternating which side goes first, because the speed of a virtual
//! machine's disk drifts during a run.
//!
//! `cargo bench --bench lmtp -- dovecot` runs table 1 only, `-- disk` table 2 only; any other
//! argument keeps the rows of table 1 whose label contains it (`-- '5 rcpt'`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;
use common::lmtp::Lmtp;
use common::peers;

/// `MAX_LIFE_CONNS=10000` is what the vendor's guide for an LMTP store shows (Messaging Server
/// 6.3, "minimal MTA"); with the global default of 100 a worker recycled while a relay reuses
/// its connection closes that session with `421` at the next `MAIL`, which `smtp-source -d`
/// takes as fatal. Dovecot's LMTP does not recycle on a connection count at all.
const LIMITS: &str = "MIN_PROCS=2\nMAX_PROCS=4\nMIN_CONNS=5\nMAX_CONNS=20\nMAX_LIFE_CONNS=10000";
/// Messages per row and server, sent in `ROUNDS` alternating rounds.
const MESSAGES: usize = 800;
const ROUNDS: usize = 4;
const LOAD_LIMIT: Duration = Duration::from_secs(300);
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// How a row sends its messages.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `smtp-source`, a new connection per message.
    NewConnection,
    /// `smtp-source -d`, connections reused.
    Reused,
    /// Our client, connections reused, a new user (mailbox) for every message.
    NewMailbox,
}

#[derive(Clone, Copy)]
struct Load {
    size: usize,
    sessions: usize,
    rcpts: usize,
    mode: Mode,
}

impl Load {
    fn label(&self) -> String {
        let size = if self.size >= 1024 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        let mode = match self.mode {
            Mode::NewConnection => "new connection per message",
            Mode::Reused => "reused connections",
            Mode::NewMailbox => "reused connections, new mailbox per message",
        };
        format!(
            "{size}, {} sessions, {} rcpt, {mode}",
            self.sessions, self.rcpts
        )
    }
}

/// Sends `messages` messages as `load` says; the seconds it took.
fn send(addr: SocketAddr, load: Load, messages: usize, to: &str) -> f64 {
    if load.mode == Mode::NewMailbox {
        return send_to_new_mailboxes(addr, load, messages, to);
    }
    let start = Instant::now();
    let mut args = vec![
        "-s".to_string(),
        load.sessions.to_string(),
        "-m".to_string(),
        messages.to_string(),
        "-r".to_string(),
        load.rcpts.to_string(),
        "-l".to_string(),
        load.size.to_string(),
        "-f".to_string(),
        "bench@relay.example".to_string(),
        "-t".to_string(),
        format!("{to}@example.com"),
    ];
    if load.mode == Mode::Reused {
        args.push("-d".to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = peers::smtp_source(addr, &args, LOAD_LIMIT);
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "smtp-source against {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

/// `load.sessions` reused connections; message `i` of session `s` goes to the new user
/// `<to>s<s>m<i>` (one recipient: a new mailbox per message).
fn send_to_new_mailboxes(addr: SocketAddr, load: Load, messages: usize, to: &str) -> f64 {
    let mut body = b"Subject: bench\r\n\r\n".to_vec();
    while body.len() < load.size {
        body.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq\r\n",
        );
    }
    body.truncate(load.size - 2);
    body.extend_from_slice(b"\r\n");
    let body = std::sync::Arc::new(body);
    let start = Instant::now();
    let threads: Vec<_> = (0..load.sessions)
        .map(|s| {
            let (body, to) = (std::sync::Arc::clone(&body), to.to_string());
            // The messages shared out, the first sessions taking one more where they do not
            // divide evenly.
            let per = messages / load.sessions + usize::from(s < messages % load.sessions);
            std::thread::spawn(move || {
                let mut c = Lmtp::connect(CLIENT, addr);
                c.lhlo();
                for i in 0..per {
                    let r = c.send_message(
                        "bench@relay.example",
                        &format!("{to}s{s}m{i}@example.com"),
                        &body,
                    );
                    assert_eq!(r.code, 250, "{r:?}");
                }
                c.quit();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client session");
    }
    start.elapsed().as_secs_f64()
}

/// Messages in `root/<user>/new` and `cur` for the row's recipients: `to`, `2to`, ... as
/// `smtp-source -r` names them, or every user whose name starts with `to` for new mailboxes.
fn stored(root: &Path, load: Load, to: &str) -> usize {
    let users: Vec<String> = if load.mode == Mode::NewMailbox {
        std::fs::read_dir(root)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(to) && n[to.len()..].starts_with('s'))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        (1..=load.rcpts)
            .map(|n| {
                if n == 1 {
                    to.to_string()
                } else {
                    format!("{n}{to}")
                }
            })
            .collect()
    };
    users
        .iter()
        .flat_map(|user| ["new", "cur"].map(|d| root.join(user).join(d)))
        .map(|dir| std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0))
        .sum()
}

/// Runs `a` and `b` in `ROUNDS` alternating rounds; the seconds each took in all.
fn interleaved(
    mut a: impl FnMut(usize) -> f64,
    mut b: impl FnMut(usize) -> f64,
    total: usize,
) -> (f64, f64) {
    let each = total / ROUNDS;
    let (mut ta, mut tb) = (0.0, 0.0);
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            ta += a(each);
            tb += b(each);
        } else {
            tb += b(each);
            ta += a(each);
        }
    }
    (ta, tb)
}

/// The disk's durable rate without a protocol: `writers` threads side by side, `n` times in
/// all, each time create a file in `dir/tmp`, write 1 KiB, `fdatasync`, rename it into
/// `dir/new`, `fsync` `dir/new`. One writer is the single-writer rate the target is measured
/// against; sixteen show what the disk itself gives sixteen concurrent deliveries that share
/// nothing. Seconds.
fn writers(dir: &Path, n: usize, writers: usize, serial: &AtomicUsize) -> f64 {
    let tmp = dir.join("tmp");
    let new = dir.join("new");
    let new_dir = std::fs::File::open(&new).expect("open new/");
    let block = vec![b'x'; 1024];
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            // The first `n % writers` threads write one more: `n` in all.
            let mine = n / writers + usize::from(w < n % writers);
            let (tmp, new, new_dir, block) = (&tmp, &new, &new_dir, &block);
            s.spawn(move || {
                for _ in 0..mine {
                    let name = format!("m{}", serial.fetch_add(1, Ordering::Relaxed));
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(tmp.join(&name))
                        .expect("create in tmp/");
                    f.write_all(block).expect("write 1 KiB");
                    f.sync_data().expect("fdatasync");
                    drop(f);
                    std::fs::rename(tmp.join(&name), new.join(&name)).expect("rename into new/");
                    nix::unistd::fsync(new_dir.as_fd()).expect("fsync new/");
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tables = ["dovecot", "disk"];
    let wanted =
        |t: &str| !only.iter().any(|a| tables.contains(&a.as_str())) || only.iter().any(|a| a == t);
    // Any other argument keeps only the rows of table 1 whose label contains it.
    let filters: Vec<&String> = only
        .iter()
        .filter(|a| !tables.contains(&a.as_str()))
        .collect();
    let ours = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
    let our_addr = ours.addr(0);
    let our_store = ours.root.join("store");
    let dv_dir = tempfile::tempdir().expect("tempdir");
    let dv_mail = dv_dir.path().join("mail");
    std::fs::create_dir_all(&dv_mail).expect("Dovecot's mail root");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dovecot = peers::Dovecot::start_with(dv_dir.path(), &dv_mail, Some(port), "optimized");
    let dv_addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Warm-up: processes started, caches filled.
    let warm = Load {
        size: 1024,
        sessions: 4,
        rcpts: 1,
        mode: Mode::NewConnection,
    };
    send(our_addr, warm, 200, "warm");
    send(dv_addr, warm, 200, "warm");

    let mut loads = Vec::new();
    if !wanted("dovecot") {
        loads.clear();
    } else {
        for size in [1024, 64 * 1024] {
            for sessions in [1, 4, 16] {
                for rcpts in [1, 5] {
                    loads.push(Load {
                        size,
                        sessions,
                        rcpts,
                        mode: Mode::NewConnection,
                    });
                }
            }
        }
        for sessions in [1, 4, 16] {
            loads.push(Load {
                size: 1024,
                sessions,
                rcpts: 1,
                mode: Mode::Reused,
            });
        }
        loads.push(Load {
            size: 1024,
            sessions: 16,
            rcpts: 5,
            mode: Mode::Reused,
        });
        loads.push(Load {
            size: 64 * 1024,
            sessions: 16,
            rcpts: 1,
            mode: Mode::Reused,
        });
        for sessions in [1, 16] {
            loads.push(Load {
                size: 1024,
                sessions,
                rcpts: 1,
                mode: Mode::NewMailbox,
            });
        }
    }

    if wanted("dovecot") {
        println!(
        "Table 1: against Dovecot's LMTP (mail_fsync = optimized), {MESSAGES} messages per row and server in {ROUNDS} alternating rounds (messages/s; stored = copies counted afterwards)"
    );
        println!();
        println!(
            "| load | stored ours / Dovecot / expected | ours msg/s | Dovecot msg/s | ratio |"
        );
        println!("|---|---:|---:|---:|---:|");
    }
    let mut ratios = Vec::new();
    for (i, &load) in loads.iter().enumerate() {
        if !filters.is_empty() && !filters.iter().any(|f| load.label().contains(f.as_str())) {
            continue;
        }
        let to = format!("r{i}x");
        let (t_ours, t_dv) = interleaved(
            |n| send(our_addr, load, n, &to),
            |n| send(dv_addr, load, n, &to),
            MESSAGES,
        );
        let (ours, dv) = (MESSAGES as f64 / t_ours, MESSAGES as f64 / t_dv);
        ratios.push(ours / dv);
        println!(
            "| {} | {} / {} / {} | {ours:.0} | {dv:.0} | {:.2} |",
            load.label(),
            stored(&our_store, load, &to),
            stored(&dv_mail, load, &to),
            MESSAGES * load.rcpts,
            ours / dv
        );
        std::io::stdout().flush().ok();
    }
    drop(dovecot);
    ratios.sort_by(f64::total_cmp);
    if !ratios.is_empty() {
        println!();
        println!(
            "ratio: lowest {:.2}, median {:.2}, highest {:.2} (target: at least 3 in every row)",
            ratios[0],
            ratios[ratios.len() / 2],
            ratios[ratios.len() - 1]
        );
    }
    if !wanted("disk") {
        return;
    }

    // Table 2: group commit, against the disk itself, on the store's file system.
    let disk = tempfile::tempdir_in(&ours.root).expect("a directory beside the store");
    for sub in ["tmp", "new"] {
        std::fs::create_dir(disk.path().join(sub)).expect("tmp/ and new/");
    }
    let loads = [1, 16].map(|sessions| Load {
        size: 1024,
        sessions,
        rcpts: 1,
        mode: Mode::Reused,
    });
    let serial = AtomicUsize::new(0);
    let total = 2000;
    // Four sides, each round in another order: the disk with one writer (what the target is
    // measured against) and with sixteen, ours with one session (the same work as the single
    // writer plus the protocol) and with sixteen.
    let mut secs = [0.0f64; 4];
    for round in 0..ROUNDS {
        for k in 0..secs.len() {
            let side = (round + k) % secs.len();
            let n = total / ROUNDS;
            secs[side] += match side {
                0 => writers(disk.path(), n, 1, &serial),
                1 => writers(disk.path(), n, 16, &serial),
                s => send(our_addr, loads[s - 2], n, &format!("group{}", s - 1)),
            };
        }
    }
    let rates = secs.map(|t| total as f64 / t);
    println!();
    println!("Table 2: group commit, {total} messages each in {ROUNDS} rounds in turning order");
    println!();
    println!("| what | stored / expected | durable msg/s | ratio to the disk's single writer |");
    println!("|---|---:|---:|---:|");
    let written = std::fs::read_dir(disk.path().join("new"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    let step = "create, write 1 KiB, fdatasync, rename, fsync new/";
    println!(
        "| the disk, one writer ({step}) | {written} / {} (both disk rows) | {:.0} | 1.00 |",
        2 * total,
        rates[0]
    );
    println!(
        "| the disk, 16 writers side by side into one new/ (the same steps) | (counted above) | {:.0} | {:.2} |",
        rates[1],
        rates[1] / rates[0]
    );
    for (s, load) in loads.iter().enumerate() {
        println!(
            "| ours, {} session{}, one recipient, reused connections, 1 KiB | {} / {total} | {:.0} | {:.2} |",
            load.sessions,
            if load.sessions == 1 { "" } else { "s" },
            stored(&our_store, *load, &format!("group{}", s + 1)),
            rates[s + 2],
            rates[s + 2] / rates[0]
        );
    }
    println!();
    println!("target: ours with 16 sessions at least 3.00 times the disk's single writer");
}
