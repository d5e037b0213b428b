//! The dispatcher's metrics in the OpenMetrics text format (what a Prometheus server
//! scrapes), rendered from a [`Snapshot`] of counts. Pure: no sockets, no clocks; whoever
//! owns the counts builds the snapshot, and [`super::http`] serves the text.
//!
//! The format's details (label escaping, the `_total` suffix of counters, `# UNIT`, the
//! cumulative `_bucket{le=...}` lines of a histogram, the closing `# EOF`) are left to the
//! `prometheus-client` crate (`docs/dependencies.md` says why). Everything is written from
//! the snapshot as it is, through the crate's [`Collector`] interface, so nothing here keeps
//! counts of its own.
//!
//! Families (every per-service one has the label `service`): `msdispatcher_connections_accepted`,
//! `_connections_refused`, `_connections_handed_off`, `_connections_waiting` (gauge),
//! `_workers{state}` (gauge), `_worker_starts`, `_worker_failed_starts`, `_worker_kills`,
//! `_reloads{result}` (no service), `_lmtp_recipients{result}`, `_lmtp_stored_bytes`,
//! `_lmtp_delivery_seconds` (histogram). The LMTP ones are what the services' workers reported
//! (`STATS`, `docs/worker-protocol.md`), added up over every worker the service has had.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::handoff::stats::{WorkerStats, LATENCY_BOUNDS_MS};

/// What the metrics are rendered from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: Vec<ServiceSnapshot>,
    /// Reloads (SIGHUP) carried out, and refused (the new configuration was unusable).
    pub reloads_applied: u64,
    pub reloads_refused: u64,
}

/// One service's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSnapshot {
    /// As written in `[SERVICE=name]`.
    pub name: String,
    /// Connections accepted on the service's port, refused (PORT_ACCESS, or no room), and
    /// handed to a worker. Counters.
    pub accepted: u64,
    pub refused: u64,
    pub handed_off: u64,
    /// Connections accepted and waiting for a worker now. A gauge.
    pub waiting: u64,
    /// Workers now in each state (`starting`, `ready`, `due`, `retiring`, `unresponsive`,
    /// `killed`). Gauges.
    pub workers_by_state: Vec<(&'static str, u64)>,
    /// Workers started, starts that failed, workers killed. Counters.
    pub starts: u64,
    pub failed_starts: u64,
    pub kills: u64,
    /// What the service's workers reported, added up.
    pub lmtp: WorkerStats,
}

/// Every state a worker can be in, as the pool names it: each is a `workers` sample, 0 or not.
pub const WORKER_STATES: [&str; 6] = [
    "starting",
    "ready",
    "due",
    "retiring",
    "unresponsive",
    "killed",
];

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics as OpenMetrics text, ending in `# EOF`.
pub fn render(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("msdispatcher");
    registry.register_collector(Box::new(Exposition(s.clone())));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => text,
        Err(_) => {
            // Writing to a String does not fail, and every value here is encodable; should
            // the crate refuse one all the same, a scrape gets no numbers rather than a
            // truncated exposition that would parse as counters gone back to zero.
            log::error!("metrics: the exposition could not be encoded; served empty");
            "# EOF\n".to_string()
        }
    }
}

/// The snapshot, as the crate's registry asks for it.
#[derive(Debug)]
struct Exposition(Snapshot);

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let services = &self.0.services;
        let per_service = |e: &mut DescriptorEncoder,
                           name: &str,
                           help: &str,
                           unit: Option<&Unit>,
                           kind: MetricType,
                           value: &dyn Fn(&ServiceSnapshot) -> u64|
         -> Result<(), std::fmt::Error> {
            let mut m = e.encode_descriptor(name, help, unit, kind)?;
            for s in services {
                let labels = [("service", s.name.as_str())];
                let v = value(s);
                match kind {
                    MetricType::Gauge => ConstGauge::new(v).encode(m.encode_family(&labels)?)?,
                    _ => ConstCounter::new(v).encode(m.encode_family(&labels)?)?,
                }
            }
            Ok(())
        };
        use MetricType::{Counter, Gauge};
        per_service(
            &mut e,
            "connections_accepted",
            "Connections accepted on the service's port (before PORT_ACCESS and admission).",
            None,
            Counter,
            &|s| s.accepted,
        )?;
        per_service(
            &mut e,
            "connections_refused",
            "Connections closed without being handed to a worker: refused by PORT_ACCESS, or no worker could take them.",
            None,
            Counter,
            &|s| s.refused,
        )?;
        per_service(
            &mut e,
            "connections_handed_off",
            "Connections handed to a worker process.",
            None,
            Counter,
            &|s| s.handed_off,
        )?;
        per_service(
            &mut e,
            "connections_waiting",
            "Connections accepted and waiting for a worker now; growing means too few workers (MAX_PROCS, MAX_CONNS).",
            None,
            Gauge,
            &|s| s.waiting,
        )?;
        {
            let mut m = e.encode_descriptor(
                "workers",
                "Worker processes now, by state (starting, ready, due to retire, retiring, unresponsive, killed).",
                None,
                Gauge,
            )?;
            for s in services {
                for (state, n) in &s.workers_by_state {
                    let labels = [("service", s.name.as_str()), ("state", state)];
                    ConstGauge::new(*n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        per_service(
            &mut e,
            "worker_starts",
            "Worker processes started (first starts, replacements and recycled workers).",
            None,
            Counter,
            &|s| s.starts,
        )?;
        per_service(
            &mut e,
            "worker_failed_starts",
            "Worker starts that failed: the IMAGE could not be run, or exited or was killed before saying READY; the next start is delayed.",
            None,
            Counter,
            &|s| s.failed_starts,
        )?;
        per_service(
            &mut e,
            "worker_kills",
            "Workers killed by the dispatcher (unresponsive, protocol violation, or still running at the end of a stop).",
            None,
            Counter,
            &|s| s.kills,
        )?;
        {
            let mut m = e.encode_descriptor(
                "reloads",
                "Configuration reloads (SIGHUP): applied, or refused because the new configuration is unusable (the old one stays).",
                None,
                Counter,
            )?;
            for (result, n) in [
                ("applied", self.0.reloads_applied),
                ("refused", self.0.reloads_refused),
            ] {
                ConstCounter::new(n).encode(m.encode_family(&[("result", result)])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "lmtp_recipients",
                "LMTP recipients by their final reply: delivered (2xx after DATA), deferred (4xx: the relay tries again) or refused (5xx: bounced), at RCPT or after DATA.",
                None,
                Counter,
            )?;
            for s in services {
                for (result, n) in [
                    ("delivered", s.lmtp.delivered),
                    ("deferred", s.lmtp.deferred),
                    ("refused", s.lmtp.refused),
                ] {
                    let labels = [("service", s.name.as_str()), ("result", result)];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        per_service(
            &mut e,
            "lmtp_stored",
            "Bytes of message data stored: each message's size once per mailbox that took a copy.",
            Some(&Unit::Bytes),
            Counter,
            &|s| s.lmtp.bytes,
        )?;
        {
            let mut m = e.encode_descriptor(
                "lmtp_delivery",
                "LMTP delivery latency: from the end of a message's data to its last per-recipient reply (storing every copy, fsync included).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in services {
                let labels = [("service", s.name.as_str())];
                Latency(&s.lmtp).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A histogram from counts already bucketed by the workers (the crate's own `Histogram`
/// only observes values one by one).
struct Latency<'a>(&'a WorkerStats);

impl EncodeMetric for Latency<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder makes the counts cumulative itself; ours are per bucket.
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
            .iter()
            .map(|&ms| ms as f64 / 1000.0)
            .chain([f64::INFINITY])
            .zip(self.0.latency_buckets.iter().copied())
            .collect();
        let sum = self.0.latency_sum_micros as f64 / 1_000_000.0;
        encoder.encode_histogram::<NoLabelSet>(sum, self.0.latency_count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_service() -> Snapshot {
        let mut lmtp = WorkerStats {
            delivered: 4,
            latency_sum_micros: 1_500,
            ..WorkerStats::default()
        };
        lmtp.latency_buckets[0] = 2;
        lmtp.latency_buckets[2] = 1;
        Snapshot {
            services: vec![ServiceSnapshot {
                name: "LMTP".into(),
                accepted: 9,
                workers_by_state: vec![("ready", 2)],
                lmtp,
                ..ServiceSnapshot::default()
            }],
            reloads_applied: 1,
            reloads_refused: 0,
        }
    }

    #[test]
    fn counters_end_in_total_and_the_text_in_eof() {
        let text = render(&one_service());
        assert!(text.contains("# TYPE msdispatcher_connections_accepted counter\n"));
        assert!(text.contains("msdispatcher_connections_accepted_total{service=\"LMTP\"} 9\n"));
        assert!(text.contains("msdispatcher_workers{service=\"LMTP\",state=\"ready\"} 2\n"));
        assert!(text.contains("msdispatcher_reloads_total{result=\"applied\"} 1\n"));
        assert!(text.contains("# UNIT msdispatcher_lmtp_stored_bytes bytes\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn latency_buckets_are_written_cumulative_in_seconds() {
        let text = render(&one_service());
        let bucket = |le: &str| {
            let prefix = format!(
                "msdispatcher_lmtp_delivery_seconds_bucket{{le=\"{le}\",service=\"LMTP\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket le={le}:\n{text}"))
                .to_string()
        };
        assert_eq!(bucket("0.001"), "2");
        assert_eq!(bucket("0.002"), "2");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("+Inf"), "3");
        assert!(text.contains("msdispatcher_lmtp_delivery_seconds_count{service=\"LMTP\"} 3\n"));
        assert!(text.contains("msdispatcher_lmtp_delivery_seconds_sum{service=\"LMTP\"} 0.0015\n"));
    }

    #[test]
    fn no_services_still_renders_every_family_and_eof() {
        let text = render(&Snapshot::default());
        assert_eq!(text.matches("# TYPE ").count(), 12, "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
