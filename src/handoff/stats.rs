//! A worker's delivery counters as they travel to the dispatcher in `STATS` (see
//! [`super::wire`] and `docs/worker-protocol.md`, "Counters").
//!
//! A [`WorkerStats`] holds counts since the worker's previous report (deltas); the dispatcher
//! adds them up per service with [`WorkerStats::add`], so the totals survive a worker's
//! recycling. Every addition saturates: a counter stuck at `u64::MAX` is wrong, one that
//! wrapped to a small number would look like a reset.
//!
//! Delivery latency is measured per transaction whose message data was read whole: from the
//! moment the final `.` of `DATA` has been read to the moment the last per-recipient reply
//! is ready to be sent (every copy stored or refused, so the store's `fsync`s and lock waits
//! are in it). The time the client then takes to read the replies is not: a slow or stalled
//! relay does not make the store look slow.

/// Upper bounds, in milliseconds, of the delivery-latency buckets; one more bucket counts the
/// rest (`+Inf`). From 1 ms (a message stored in the page cache) to 10 s (a store waiting for
/// a lock, `lock_attempts` x `lock_sleep`), in roughly 1-2.5-5 steps, like Prometheus's
/// default buckets.
pub const LATENCY_BOUNDS_MS: [u64; 13] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Number of latency buckets: one per bound and the `+Inf` one.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Counts since the worker's previous report (or, added up by the dispatcher, since its start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Recipients answered 2xx after `DATA` (LMTP gives one reply per recipient).
    pub delivered: u64,
    /// Recipients answered 4xx, at `RCPT` or after `DATA`.
    pub deferred: u64,
    /// Recipients answered 5xx, at `RCPT` or after `DATA`.
    pub refused: u64,
    /// Bytes stored: the message's size times the copies actually stored (one per distinct
    /// mailbox that took it).
    pub bytes: u64,
    /// Transactions per latency bucket, NOT cumulative: `latency_buckets[i]` counts those
    /// that took at most `LATENCY_BOUNDS_MS[i]` and more than the bound before; the last one
    /// those over the last bound.
    pub latency_buckets: [u64; LATENCY_BUCKETS],
    /// The latencies of those transactions added up, in microseconds.
    pub latency_sum_micros: u64,
}

impl WorkerStats {
    /// Nothing counted (a worker sends no `STATS` then).
    pub fn is_empty(&self) -> bool {
        *self == WorkerStats::default()
    }

    /// Adds `other`'s counts to these, saturating.
    pub fn add(&mut self, other: &WorkerStats) {
        self.delivered = self.delivered.saturating_add(other.delivered);
        self.deferred = self.deferred.saturating_add(other.deferred);
        self.refused = self.refused.saturating_add(other.refused);
        self.bytes = self.bytes.saturating_add(other.bytes);
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.latency_sum_micros = self
            .latency_sum_micros
            .saturating_add(other.latency_sum_micros);
    }

    /// Transactions whose latency was measured (all buckets), saturating.
    pub fn latency_count(&self) -> u64 {
        self.latency_buckets
            .iter()
            .fold(0u64, |n, b| n.saturating_add(*b))
    }
}

/// The bucket a latency of `micros` microseconds falls in: the first whose bound it does not
/// exceed, or the last (`+Inf`).
pub fn latency_bucket(micros: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&ms| micros <= ms.saturating_mul(1000))
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_saturates_instead_of_wrapping() {
        let mut total = WorkerStats {
            delivered: u64::MAX - 1,
            latency_buckets: [u64::MAX; LATENCY_BUCKETS],
            ..WorkerStats::default()
        };
        let delta = WorkerStats {
            delivered: 5,
            deferred: 2,
            latency_buckets: [1; LATENCY_BUCKETS],
            ..WorkerStats::default()
        };
        total.add(&delta);
        assert_eq!(total.delivered, u64::MAX);
        assert_eq!(total.deferred, 2);
        assert_eq!(total.latency_buckets, [u64::MAX; LATENCY_BUCKETS]);
        assert_eq!(total.latency_count(), u64::MAX);
    }

    #[test]
    fn empty_means_nothing_counted() {
        assert!(WorkerStats::default().is_empty());
        let mut s = WorkerStats::default();
        s.latency_buckets[LATENCY_BUCKETS - 1] = 1;
        assert!(!s.is_empty());
        assert_eq!(s.latency_count(), 1);
    }

    #[test]
    fn a_latency_on_a_bound_falls_in_that_bucket() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1000), 0);
        assert_eq!(latency_bucket(1001), 1);
        assert_eq!(latency_bucket(10_000_000), LATENCY_BOUNDS_MS.len() - 1);
        assert_eq!(latency_bucket(10_000_001), LATENCY_BOUNDS_MS.len());
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BOUNDS_MS.len());
    }
}
