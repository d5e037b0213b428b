//! Recycling (`MAX_LIFE_CONNS`) under a steady load makes no client wait for a worker start:
//! the successor is started ahead and is ready before the retiring worker stops taking
//! connections (`src/dispatcher/policy.rs`, "Recycling costs no client a wait").
//!
//! The workers are the faulty image in `slow-start` mode, which takes 500 ms to say `READY`,
//! so that a client that waits for a start is told from one that does not by a wide margin.

mod common;

use std::time::{Duration, Instant};

use common::dispatcher::Client;
use common::faulty::{self, RELAY};

/// One pool of one worker at a time, recycled every 6 connections.
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=5\nMAX_CONNS=20\nMAX_LIFE_CONNS=6";
const CONNECTIONS: usize = 36;
/// Between two clients: a worker lives 6 x 100 ms, its successor starts in 500 ms.
const SPACING: Duration = Duration::from_millis(100);
/// A client greeted later than this waited for a start (which takes 500 ms).
const WAITED: Duration = Duration::from_millis(250);

#[test]
fn recycling_makes_no_client_wait_for_a_worker_start() {
    let d = faulty::start_faulty(LIMITS, "slow-start");
    // The first worker is ready once it greets.
    let mut first = Client::connect(RELAY, d.addr(0));
    assert!(first.line().starts_with("220 faulty "), "{}", d.log());
    assert!(first.quit().starts_with("221"));
    let mut served_by = std::collections::BTreeSet::new();
    let mut slow = Vec::new();
    for i in 0..CONNECTIONS {
        let start = Instant::now();
        let mut c = Client::connect(RELAY, d.addr(0));
        let greeting = c.line();
        let waited = start.elapsed();
        assert!(
            greeting.starts_with("220 faulty "),
            "client {i}: {greeting:?}"
        );
        assert!(c.quit().starts_with("221"), "client {i}");
        served_by.insert(greeting.split_whitespace().nth(2).map(str::to_string));
        if waited > WAITED {
            slow.push((i, waited));
        }
        std::thread::sleep(SPACING);
    }
    assert!(
        served_by.len() >= 4,
        "recycled every 6 connections, {CONNECTIONS} clients met {} workers:\n{}",
        served_by.len(),
        d.log()
    );
    assert!(
        slow.is_empty(),
        "clients that waited for a worker start (client, greeted after): {slow:?}\n{}",
        d.log()
    );
    assert!(
        d.count_in_log("retires (LifeConns)") >= 3,
        "workers retired for MAX_LIFE_CONNS:\n{}",
        d.log()
    );
}
