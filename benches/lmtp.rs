//! `make bench` (LMTP part): durable deliveries per second into our message store through the
//! dispatcher, against Dovecot's LMTP server on the same machine, side by side in one run.
//!
//! The load is Postfix's `smtp-source -L` (same arguments for both servers): a fixed number
//! of 1 KiB messages over a number of parallel sessions, one or three recipients each. Ours
//! is the whole product path (dispatcher, PORT_ACCESS, hand-off, `tcp_lmtp_server`, Maildir
//! with fsync of the file and of `new/` before every 250). Dovecot is a throwaway instance
//! (loopback, static users, Maildir), measured twice: with `mail_fsync = optimized` (its
//! default) and with `mail_fsync = always`. After every row the messages are counted in both
//! stores: a row whose count is short is reported, not hidden. Each row is sent in four
//! rounds of 500 messages, alternating which server goes first, because the speed of a
//! virtual machine's disk drifts during a run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;
use common::peers;

const LIMITS: &str = "MIN_PROCS=2\nMAX_PROCS=4\nMIN_CONNS=5\nMAX_CONNS=20";
const MESSAGES: usize = 2000;
/// Each row's messages go in this many alternating rounds per server.
const ROUNDS: usize = 4;
const BODY: &str = "1024";
/// (parallel sessions, recipients per message)
const ROWS: [(usize, usize); 4] = [(1, 1), (4, 1), (10, 1), (8, 3)];
const LOAD_LIMIT: Duration = Duration::from_secs(300);

/// Sends `messages` messages with `smtp-source`; the seconds it took.
fn load(addr: SocketAddr, sessions: usize, rcpts: usize, messages: usize, to: &str) -> f64 {
    let start = Instant::now();
    let out = peers::smtp_source(
        addr,
        &[
            "-s",
            &sessions.to_string(),
            "-m",
            &messages.to_string(),
            "-r",
            &rcpts.to_string(),
            "-l",
            BODY,
            "-f",
            "bench@relay.example",
            "-t",
            &format!("{to}@example.com"),
        ],
        LOAD_LIMIT,
    );
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "smtp-source against {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

/// Messages in `root/<user>/new` and `cur` for the row's recipients (`to`, `2to`, `3to`).
fn stored(root: &Path, to: &str, rcpts: usize) -> usize {
    (1..=rcpts)
        .map(|n| {
            if n == 1 {
                to.to_string()
            } else {
                format!("{n}{to}")
            }
        })
        .flat_map(|user| ["new", "cur"].map(|d| root.join(&user).join(d)))
        .map(|dir| std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0))
        .sum()
}

struct Row {
    label: String,
    expected: usize,
    ours: (f64, usize),
    dovecot: (f64, usize),
}

fn main() {
    let ours = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
    let our_addr = ours.addr(0);
    let our_store = ours.root.join("store");
    let mut table: Vec<(&str, Vec<Row>)> = Vec::new();
    for fsync in ["optimized", "always"] {
        let dv_dir = tempfile::tempdir().expect("tempdir");
        let dv_mail = dv_dir.path().join("mail");
        std::fs::create_dir_all(&dv_mail).expect("Dovecot's mail root");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dovecot = peers::Dovecot::start_with(dv_dir.path(), &dv_mail, Some(port), fsync);
        let dv_addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Warm-up: processes started, caches filled, mailboxes created.
        load(our_addr, 4, 1, 200, &format!("warm{fsync}"));
        load(dv_addr, 4, 1, 200, &format!("warm{fsync}"));
        let mut rows = Vec::new();
        for (i, &(sessions, rcpts)) in ROWS.iter().enumerate() {
            let to = format!("r{i}{fsync}");
            let expected = MESSAGES * rcpts;
            // Interleaved in rounds, the order alternating, so that a drift of the machine's
            // disk speed during the row weighs on both servers alike.
            let (mut t_ours, mut t_dv) = (0.0, 0.0);
            for round in 0..ROUNDS {
                let each = MESSAGES / ROUNDS;
                if round % 2 == 0 {
                    t_ours += load(our_addr, sessions, rcpts, each, &to);
                    t_dv += load(dv_addr, sessions, rcpts, each, &to);
                } else {
                    t_dv += load(dv_addr, sessions, rcpts, each, &to);
                    t_ours += load(our_addr, sessions, rcpts, each, &to);
                }
            }
            rows.push(Row {
                label: format!("-s {sessions} -r {rcpts}"),
                expected,
                ours: (t_ours, stored(&our_store, &to, rcpts)),
                dovecot: (t_dv, stored(&dv_mail, &to, rcpts)),
            });
        }
        drop(dovecot);
        table.push((fsync, rows));
    }
    println!(
        "smtp-source -L -m {} -l {BODY}, {ROUNDS} rounds per server and row (messages/s; stored = copies counted in the store afterwards)",
        MESSAGES / ROUNDS
    );
    println!();
    println!("| load | Dovecot mail_fsync | stored ours / Dovecot / expected | ours msg/s | Dovecot msg/s | ratio |");
    println!("|---|---|---:|---:|---:|---:|");
    for (fsync, rows) in &table {
        for r in rows {
            let ours = MESSAGES as f64 / r.ours.0;
            let dv = MESSAGES as f64 / r.dovecot.0;
            println!(
                "| {} | {fsync} | {} / {} / {} | {ours:.0} | {dv:.0} | {:.2} |",
                r.label,
                r.ours.1,
                r.dovecot.1,
                r.expected,
                ours / dv
            );
        }
    }
}
