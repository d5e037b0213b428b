//! `make bench` (refused flood): how much a flood of connections from an address PORT_ACCESS
//! refuses slows the delivery of a relay the dispatcher admits.
//!
//! The relay is Postfix's `smtp-source -L` from 127.0.0.1 (admitted, like the relays at
//! 127.0.0.2 and .3: `smtp-source` cannot choose its source address) delivering 1 KiB
//! messages to `tcp_lmtp_server` through the dispatcher, over 4 sessions. The flooder, from
//! 127.0.0.9 (refused by the catch-all entry), opens 5,000 connections from 8 threads as fast
//! as it can (capped at 60 s), reads the refusal and closes. Three runs: the flood alone
//! (which must start no worker: a refused client never reaches one), the relay alone, and
//! the relay during the flood. The relay sends as many messages as it delivers, alone, in the
//! time the flood alone lasts, so that the flood covers its run. Issue 11's target: the rate
//! falls by less than half (ratio above 0.5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;
use common::load::{self, Flood};
use common::peers;

const LIMITS: &str = "MIN_PROCS=2\nMAX_PROCS=4\nMIN_CONNS=5\nMAX_CONNS=20";
const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const FLOOD_CONNECTS: usize = 5_000;
const FLOOD_THREADS: usize = 8;
const FLOOD_CAP: Duration = Duration::from_secs(60);
/// The seed's PORT_ACCESS refusal (fixtures/runtime/mappings.in).
const REFUSAL: &str = "500 ";
const SESSIONS: &str = "4";

/// Delivers `messages` messages to `to@example.com` with `smtp-source -L`; the seconds taken.
fn deliver(addr: SocketAddr, messages: usize, to: &str) -> f64 {
    let start = Instant::now();
    let out = peers::smtp_source(
        addr,
        &[
            "-s",
            SESSIONS,
            "-m",
            &messages.to_string(),
            "-l",
            "1024",
            "-f",
            "bench@relay.example",
            "-t",
            &format!("{to}@example.com"),
        ],
        Duration::from_secs(600),
    );
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64()
}

fn stored(store: &Path, user: &str) -> usize {
    load::message_files(&store.join(user)).len()
}

fn flood(to: SocketAddr) -> Flood {
    load::flood(
        FLOODER,
        to,
        FLOOD_CONNECTS,
        FLOOD_THREADS,
        FLOOD_CAP,
        REFUSAL,
    )
}

fn main() {
    let d = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
    let addr = d.addr(0);
    let store = d.root.join("store");
    // Warm-up: workers started, the mailboxes created.
    for user in ["warm", "alone", "flooded"] {
        deliver(addr, 100, user);
    }

    let started = || d.count_in_log(" started, pid ");
    let before = started();
    let flood_alone = flood(addr);
    // A worker started for a refused client would be logged within a tick.
    std::thread::sleep(Duration::from_secs(2));
    let started_by_flood = started() - before;

    // As many messages as the relay delivers alone while the flood alone lasts.
    let probe = deliver(addr, 200, "alone");
    let rate_probe = 200.0 / probe;
    let messages = ((rate_probe * flood_alone.elapsed.as_secs_f64()) as usize).clamp(200, 5000);

    let alone_before = stored(&store, "alone");
    let t_alone = deliver(addr, messages, "alone");
    let alone_stored = stored(&store, "alone") - alone_before;

    let flooded_before = stored(&store, "flooded");
    let flooder = std::thread::spawn(move || flood(addr));
    let t_flooded = deliver(addr, messages, "flooded");
    let during = flooder.join().unwrap_or_default();
    let flooded_stored = stored(&store, "flooded") - flooded_before;

    let alone_rate = messages as f64 / t_alone;
    let flooded_rate = messages as f64 / t_flooded;
    let per_s = |f: &Flood| f.connected as f64 / f.elapsed.as_secs_f64();
    println!(
        "smtp-source -L -s {SESSIONS} -m {messages} -l 1024 from 127.0.0.1; flooder from \
         {FLOODER}: {FLOOD_CONNECTS} connects, {FLOOD_THREADS} threads, cap {FLOOD_CAP:?}"
    );
    println!();
    println!("| run | messages stored / sent | relay msg/s | flood connects (refused / failed) | flood connects/s | flood s |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| flood alone | | | {} ({} / {}) | {:.0} | {:.1} |",
        flood_alone.connected,
        flood_alone.refused,
        flood_alone.failed,
        per_s(&flood_alone),
        flood_alone.elapsed.as_secs_f64()
    );
    println!("| relay alone | {alone_stored} / {messages} | {alone_rate:.0} | | | |");
    println!(
        "| relay during the flood | {flooded_stored} / {messages} | {flooded_rate:.0} | {} ({} / {}) | {:.0} | {:.1} |",
        during.connected,
        during.refused,
        during.failed,
        per_s(&during),
        during.elapsed.as_secs_f64()
    );
    println!(
        "| ratio during / alone (target > 0.5) | | {:.2} | | | |",
        flooded_rate / alone_rate
    );
    println!();
    println!(
        "workers started during the flood alone: {started_by_flood} (must be 0); relay run \
         {t_flooded:.1} s, flood {:.1} s of it",
        during.elapsed.as_secs_f64()
    );
}
