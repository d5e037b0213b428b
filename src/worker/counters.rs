//! The delivery counters of one worker process, shared by its connection threads, and taken
//! as a [`WorkerStats`] delta when the runtime reports to the dispatcher (`STATS`, just before
//! each `ENDED`).
//!
//! Each counter is an atomic of its own: recording is a few uncontended atomic additions per
//! recipient or transaction, no lock. [`Counters::take`] swaps each to zero one at a time,
//! so a report may split a transaction's counts between two reports, but every count goes
//! into exactly one report: the dispatcher's totals are exact once the worker is quiet.
//!
//! What is counted, and when, is the image's business (the LMTP session: `src/lmtp/session.rs`);
//! this module knows nothing of LMTP but reply classes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::handoff::stats::{latency_bucket, WorkerStats, LATENCY_BUCKETS};

/// A worker's counters since the last [`Counters::take`].
#[derive(Debug, Default)]
pub struct Counters {
    delivered: AtomicU64,
    deferred: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS],
    latency_sum_micros: AtomicU64,
}

/// Adds `n` to `counter`, stopping at `u64::MAX` rather than wrapping.
fn add(counter: &AtomicU64, n: u64) {
    if n == 0 {
        return;
    }
    // The closure always returns Some: fetch_update cannot fail.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

impl Counters {
    pub fn new() -> Counters {
        Counters::default()
    }

    /// One recipient's final reply: 2xx delivered, 4xx deferred, 5xx refused (other codes
    /// are no recipient's result and are not counted).
    pub fn recipient(&self, code: u16) {
        match code / 100 {
            2 => add(&self.delivered, 1),
            4 => add(&self.deferred, 1),
            5 => add(&self.refused, 1),
            _ => {}
        }
    }

    /// `bytes` stored (a message's size times the copies stored).
    pub fn stored(&self, bytes: u64) {
        add(&self.bytes, bytes);
    }

    /// One transaction's delivery latency.
    pub fn transaction(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        add(&self.latency_buckets[latency_bucket(micros)], 1);
        add(&self.latency_sum_micros, micros);
    }

    /// The counts since the previous call, resetting them.
    pub fn take(&self) -> WorkerStats {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        WorkerStats {
            delivered: take(&self.delivered),
            deferred: take(&self.deferred),
            refused: take(&self.refused),
            bytes: take(&self.bytes),
            latency_buckets: std::array::from_fn(|i| take(&self.latency_buckets[i])),
            latency_sum_micros: take(&self.latency_sum_micros),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_count_by_class_and_take_resets() {
        let c = Counters::new();
        for code in [250, 250, 452, 451, 550, 354] {
            c.recipient(code);
        }
        c.stored(1000);
        c.stored(500);
        c.transaction(Duration::from_micros(1500));
        c.transaction(Duration::from_secs(60));
        let s = c.take();
        assert_eq!(
            (s.delivered, s.deferred, s.refused, s.bytes),
            (2, 2, 1, 1500)
        );
        assert_eq!(s.latency_buckets[1], 1, "1.5 ms is in the 2 ms bucket");
        assert_eq!(
            s.latency_buckets[LATENCY_BUCKETS - 1],
            1,
            "60 s is over every bound"
        );
        assert_eq!(s.latency_count(), 2);
        assert_eq!(s.latency_sum_micros, 60_001_500);
        assert!(c.take().is_empty());
    }

    #[test]
    fn counts_from_many_threads_all_arrive() {
        let c = std::sync::Arc::new(Counters::new());
        let mut total = WorkerStats::default();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.recipient(250);
                    }
                })
            })
            .collect();
        while threads.iter().any(|t| !t.is_finished()) {
            total.add(&c.take());
        }
        for t in threads {
            t.join().expect("thread");
        }
        total.add(&c.take());
        assert_eq!(total.delivered, 40_000);
    }
}
