//! The metrics exposition checked by a parser no one here wrote: Python's `prometheus_client`
//! OpenMetrics parser (`fixtures/metrics/parse_openmetrics.py`; Debian's
//! `python3-prometheus-client`, installed by `scripts/install-test-deps.sh`), which is strict
//! about `# EOF`, `_total`, units, label escaping and histogram buckets. The values it reads
//! back must be the snapshot's. Without the parser the test fails: it does not skip.
//!
//! (`promtool check metrics` from Debian's `prometheus` 2.42 is no help here: it lints the
//! classic Prometheus text format and complains of "no help text" for every OpenMetrics
//! counter, whose `# HELP` names the family without `_total`.)

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use msdispatcher::dispatcher::metrics::{render, ServiceSnapshot, Snapshot};
use msdispatcher::handoff::stats::{WorkerStats, LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// The Debian interpreter, which has the Debian package (a `python3` first on PATH, such as
/// a pyenv one, may not).
const PYTHON: &str = "/usr/bin/python3";

/// What the outside parser understood (its lines), or its complaint.
fn outside_parse(text: &str) -> Result<Vec<String>, String> {
    let script = common::fixtures().join("metrics/parse_openmetrics.py");
    let mut child = Command::new(PYTHON)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {PYTHON} ({e}); run scripts/install-test-deps.sh as root")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("wait for the parser");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the parser is missing ({stderr}); run scripts/install-test-deps.sh as root"
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    } else {
        Err(stderr)
    }
}

/// Every field non-zero, and different, so a value in the wrong place shows.
fn stats(base: u64) -> WorkerStats {
    WorkerStats {
        delivered: base + 1,
        deferred: base + 2,
        refused: base + 3,
        bytes: base * 1000 + 4,
        latency_buckets: std::array::from_fn(|i| base + i as u64 + 1),
        latency_sum_micros: base * 1_000_000 + 2_500_000,
    }
}

fn snapshot() -> Snapshot {
    let service = |name: &str, base: u64| ServiceSnapshot {
        name: name.to_string(),
        accepted: base + 11,
        refused: base + 12,
        handed_off: base + 13,
        waiting: base + 14,
        workers_by_state: vec![
            ("starting", base + 1),
            ("ready", base + 2),
            ("due", base + 3),
            ("retiring", base + 4),
            ("unresponsive", base + 5),
            ("killed", base + 6),
        ],
        starts: base + 15,
        failed_starts: base + 16,
        kills: base + 17,
        lmtp: stats(base),
    };
    Snapshot {
        // A service name cannot hold a quote or a backslash, but the escaping is the crate's
        // and is checked here all the same.
        services: vec![service("tcp_lmtpss", 100), service(r#"odd"na\me"#, 200)],
        reloads_applied: 7,
        reloads_refused: 3,
    }
}

/// `{"k": "v", ...}` as Python's `json.dumps(sort_keys=True)` writes it.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut pairs = pairs.to_vec();
    pairs.sort();
    let json = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {}", json(k), json(v)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// The sample lines the parser must report for `s`.
fn expected_samples(s: &Snapshot) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    let mut add = |name: &str, l: &[(&str, &str)], v: String| {
        want.insert(format!("sample msdispatcher_{name} {} {v}", labels(l)));
    };
    for (result, n) in [
        ("applied", s.reloads_applied),
        ("refused", s.reloads_refused),
    ] {
        add("reloads_total", &[("result", result)], n.to_string());
    }
    for svc in &s.services {
        let name = svc.name.as_str();
        let one = [("service", name)];
        for (metric, n) in [
            ("connections_accepted_total", svc.accepted),
            ("connections_refused_total", svc.refused),
            ("connections_handed_off_total", svc.handed_off),
            ("connections_waiting", svc.waiting),
            ("worker_starts_total", svc.starts),
            ("worker_failed_starts_total", svc.failed_starts),
            ("worker_kills_total", svc.kills),
            ("lmtp_stored_bytes_total", svc.lmtp.bytes),
        ] {
            add(metric, &one, n.to_string());
        }
        for (state, n) in &svc.workers_by_state {
            add(
                "workers",
                &[("service", name), ("state", state)],
                n.to_string(),
            );
        }
        for (result, n) in [
            ("delivered", svc.lmtp.delivered),
            ("deferred", svc.lmtp.deferred),
            ("refused", svc.lmtp.refused),
        ] {
            add(
                "lmtp_recipients_total",
                &[("service", name), ("result", result)],
                n.to_string(),
            );
        }
        let sum = svc.lmtp.latency_sum_micros as f64 / 1e6;
        let sum = if sum.fract() == 0.0 {
            format!("{}", sum as u64)
        } else {
            format!("{sum}")
        };
        add("lmtp_delivery_seconds_sum", &one, sum);
        add(
            "lmtp_delivery_seconds_count",
            &one,
            svc.lmtp.latency_count().to_string(),
        );
        let mut cumulative = 0;
        for i in 0..LATENCY_BUCKETS {
            cumulative += svc.lmtp.latency_buckets[i];
            let le = match LATENCY_BOUNDS_MS.get(i) {
                Some(&ms) => format!("{:?}", ms as f64 / 1000.0),
                None => "+Inf".to_string(),
            };
            add(
                "lmtp_delivery_seconds_bucket",
                &[("service", name), ("le", &le)],
                cumulative.to_string(),
            );
        }
    }
    want
}

#[test]
fn the_exposition_parses_back_to_the_snapshot() {
    let s = snapshot();
    let text = render(&s);
    let lines = outside_parse(&text).unwrap_or_else(|e| panic!("rejected: {e}\n{text}"));
    let samples: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.starts_with("sample "))
        .cloned()
        .collect();
    let want = expected_samples(&s);
    let missing: Vec<_> = want.difference(&samples).collect();
    let extra: Vec<_> = samples.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:#?}\nunexpected {extra:#?}\n{text}"
    );
}

#[test]
fn every_family_has_its_type_unit_and_help() {
    let lines = outside_parse(&render(&snapshot())).expect("parses");
    let families: Vec<(String, String, String, String)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("family "))
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let mut next = || f.next().unwrap_or("").to_string();
            (next(), next(), next(), next())
        })
        .collect();
    let want = [
        ("connections_accepted", "counter", "-"),
        ("connections_refused", "counter", "-"),
        ("connections_handed_off", "counter", "-"),
        ("connections_waiting", "gauge", "-"),
        ("workers", "gauge", "-"),
        ("worker_starts", "counter", "-"),
        ("worker_failed_starts", "counter", "-"),
        ("worker_kills", "counter", "-"),
        ("reloads", "counter", "-"),
        ("lmtp_recipients", "counter", "-"),
        ("lmtp_stored_bytes", "counter", "bytes"),
        ("lmtp_delivery_seconds", "histogram", "seconds"),
    ];
    let got: Vec<(String, String, String)> = families
        .iter()
        .map(|(n, t, u, _)| (n.clone(), t.clone(), u.clone()))
        .collect();
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(n, t, u)| (format!("msdispatcher_{n}"), t.to_string(), u.to_string()))
        .collect();
    assert_eq!(got, want);
    for (name, _, _, help) in &families {
        assert!(
            help.len() > 20,
            "{name}: help text {help:?} says too little"
        );
    }
}

#[test]
fn the_outside_parser_is_strict() {
    // It must notice what a hand-written exposition typically gets wrong, or passing it
    // would prove nothing.
    let text = render(&snapshot());
    let mangled = [
        ("without # EOF", text.replace("# EOF\n", "")),
        (
            "a counter without _total",
            text.replacen("msdispatcher_reloads_total{", "msdispatcher_reloads{", 1),
        ),
        (
            "an unescaped quote in a label",
            text.replace(r#"odd\"na"#, r#"odd"na"#),
        ),
        (
            "buckets that are not cumulative",
            text.lines()
                .map(|l| {
                    let inf = r#"msdispatcher_lmtp_delivery_seconds_bucket{le="+Inf",service="tcp_lmtpss"} "#;
                    if l.starts_with(inf) {
                        format!("{inf}1\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect::<String>(),
        ),
    ];
    for (what, m) in mangled {
        assert_ne!(m, text, "{what}: the mangling changed nothing");
        assert!(outside_parse(&m).is_err(), "{what} was accepted:\n{m}");
    }
}
