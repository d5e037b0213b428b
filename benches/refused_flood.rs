//! `make bench` (refused flood): how much a flood of connections from an address PORT_ACCESS
//! refuses slows the delivery of a relay the dispatcher admits.
//!
//! The relay is Postfix's `smtp-source -L` from 127.0.0.1 (admitted, like the relays at
//! 127.0.0.2 and .3: `smtp-source` cannot choose its source address) delivering 1 KiB
//! messages to `tcp_lmtp_server` through the dispatcher, over 4 sessions. The flooder, from
//! 127.0.0.9 (refused by the catch-all entry), opens 5,000 connections from 8 threads as fast
//! as it can (capped at 60 s), reads the refusal and closes. First the flood alone (which
//! must start no worker: a refused client never reaches one); then six rounds, the order
//! alternating, of the relay alone and the relay during a flood. Each relay run sends as many
//! messages as the relay delivers alone while a flood lasts (200 at least), so that the flood
//! covers most of it. Issue 11's target: the rate falls by less than half (ratio above 0.5).

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
const ROUNDS: usize = 6;

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
    let cpu_before = load::cpu_seconds(d.child.pid());
    let flood_alone = flood(addr);
    let dispatcher_cpu = load::cpu_seconds(d.child.pid()) - cpu_before;
    // A worker started for a refused client would be logged within a tick.
    std::thread::sleep(Duration::from_secs(2));
    let started_by_flood = started() - before;

    // As many messages as the relay delivers alone while the flood alone lasts.
    let probe = deliver(addr, 200, "alone");
    let rate_probe = 200.0 / probe;
    let messages = ((rate_probe * flood_alone.elapsed.as_secs_f64()) as usize).clamp(200, 5000);

    // In rounds, the order alternating, so that a drift of the machine's speed weighs on
    // both runs alike.
    let (mut t_alone, mut t_flooded) = (0.0, 0.0);
    let mut during = Flood::default();
    let alone_before = stored(&store, "alone");
    let flooded_before = stored(&store, "flooded");
    for round in 0..ROUNDS {
        let alone = |t: &mut f64| *t += deliver(addr, messages, "alone");
        if round % 2 == 0 {
            alone(&mut t_alone);
        }
        let flooder = std::thread::spawn(move || flood(addr));
        t_flooded += deliver(addr, messages, "flooded");
        let f = flooder.join().unwrap_or_default();
        during.connected += f.connected;
        during.refused += f.refused;
        during.failed += f.failed;
        during.elapsed += f.elapsed;
        if round % 2 == 1 {
            alone(&mut t_alone);
        }
    }
    let alone_stored = stored(&store, "alone") - alone_before;
    let flooded_stored = stored(&store, "flooded") - flooded_before;
    let sent = messages * ROUNDS;

    let alone_rate = sent as f64 / t_alone;
    let flooded_rate = sent as f64 / t_flooded;
    let per_s = |f: &Flood| f.connected as f64 / f.elapsed.as_secs_f64();
    println!(
        "{ROUNDS} rounds of smtp-source -L -s {SESSIONS} -m {messages} -l 1024 from 127.0.0.1, \
         alone and during a flood from {FLOODER} ({FLOOD_CONNECTS} connects per round, \
         {FLOOD_THREADS} threads, cap {FLOOD_CAP:?})"
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
    println!("| relay alone | {alone_stored} / {sent} | {alone_rate:.0} | | | |");
    println!(
        "| relay during the flood | {flooded_stored} / {sent} | {flooded_rate:.0} | {} ({} / {}) | {:.0} | {:.1} |",
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
        "dispatcher CPU during the flood alone: {:.0} µs per refused connection",
        dispatcher_cpu / flood_alone.connected.max(1) as f64 * 1e6
    );
    println!(
        "workers started during the flood alone: {started_by_flood} (must be 0); relay runs \
         during the floods {t_flooded:.1} s in all, the floods {:.1} s in all",
        during.elapsed.as_secs_f64()
    );
}
