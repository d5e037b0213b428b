//! The metrics endpoint of a running dispatcher (`METRICS_PORT` in `[SERVICE=DISPATCHER]`),
//! scraped over HTTP and read with Python's prometheus_client OpenMetrics parser (not ours):
//! the counters move as swaks delivers, they survive the workers that counted them (a
//! `--restart` recycles them), and a takeover serves the endpoint on without a gap.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dispatcher::{free_ports, Dispatcher, Layout, WAIT};
use common::peers;

const PYTHON: &str = "/usr/bin/python3";

/// One HTTP request; the status line and the body.
fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("read the reply");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Every sample of a scrape as the outside parser read it: `name{labels}` → value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let mut cmd = Command::new(PYTHON);
    cmd.arg(common::fixtures().join("metrics/parse_openmetrics.py"));
    let out = peers::run_bounded_with_input(
        cmd,
        "the OpenMetrics parser",
        Duration::from_secs(20),
        Some(body.as_bytes()),
    );
    assert!(
        out.status.success(),
        "the parser rejected the scrape: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("sample "))
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((format!("{name}{labels}"), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{labels}");
    *m.get(&key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

const SS: &str = r#"{"service": "LMTPSS"}"#;

fn recipients(result: &str) -> String {
    format!(r#"{{"result": "{result}", "service": "LMTPSS"}}"#)
}

fn ctl(d: &Dispatcher, args: &[&str]) -> String {
    let mut cmd = Command::new(d.root.join("lib/dispatcher"));
    cmd.args(args)
        .env_remove("IMTA_TAILOR")
        .stdin(Stdio::null());
    let out = peers::run_bounded(cmd, "dispatcher", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "dispatcher {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until a scrape satisfies `ok` (workers report at the end of each connection).
fn scrape_until(
    addr: SocketAddr,
    ok: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let end = Instant::now() + WAIT;
    loop {
        let m = scrape(addr);
        if ok(&m) || Instant::now() >= end {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The LMTP installation with a metrics endpoint, started; the endpoint's port.
fn start_with_metrics() -> (Dispatcher, u16) {
    let [port] = free_ports::<1>();
    let layout = Layout::lmtp("MIN_PROCS=1", "");
    let cnf = layout.root.join("config/dispatcher.cnf");
    let text = std::fs::read_to_string(&cnf).expect("read");
    std::fs::write(
        &cnf,
        format!("{text}[SERVICE=DISPATCHER]\nMETRICS_PORT={port}\n"),
    )
    .expect("write");
    let d = Dispatcher::launch(layout, |_| {});
    d.wait_for_log(&format!("metrics on http://127.0.0.1:{port}/metrics"));
    (d, port)
}

#[test]
fn scrapers_that_say_nothing_cannot_crowd_the_administrator_out() {
    let (d, port) = start_with_metrics();
    let metrics = SocketAddr::from(([127, 0, 0, 1], port));
    // More silent scrapers than the endpoint talks to at once.
    let silent: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect_timeout(&metrics, Duration::from_secs(5)).expect("connect"))
        .collect();
    // Within the scrapers' request wait (5 s), the control socket still answers: scrapers
    // are counted apart.
    let asked = Instant::now();
    let table = ctl(&d, &["--status"]);
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "asked while they were all held"
    );
    assert!(table.contains(&format!("pid {}", d.child.pid())), "{table}");
    let mut busy = 0;
    for s in &silent {
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        if let Ok(n) = (&*s).read(&mut buf) {
            busy += usize::from(buf[..n].starts_with(b"HTTP/1.0 503"));
        }
    }
    assert_eq!(busy, 8, "the scrapers beyond 32 are answered 503");
    drop(silent);
}

#[test]
fn counters_move_with_deliveries_and_outlive_the_workers_that_counted_them() {
    let (d, port) = start_with_metrics();
    d.wait_for_started("LMTPSS", 1);
    let metrics = SocketAddr::from(([127, 0, 0, 1], port));
    common::lmtp::maildir(&d.root, "alice");

    let before = scrape(metrics);
    assert_eq!(
        get(
            &before,
            "msdispatcher_lmtp_recipients_total",
            &recipients("delivered")
        ),
        0.0
    );
    assert_eq!(
        get(
            &before,
            "msdispatcher_workers",
            r#"{"service": "LMTPSS", "state": "ready"}"#
        ),
        1.0
    );

    // One message for a mailbox that exists and one that does not.
    let body = "metrics line\r\n";
    let (ok, out) = peers::swaks(
        d.addr(0),
        "source@relay.example",
        &["alice@example.com", "nobody-here@example.com"],
        &["--body", body],
    );
    assert!(!out.is_empty(), "{out}");
    let _ = ok; // swaks fails the run when a recipient is refused; the counts tell.
    let m = scrape_until(metrics, |m| {
        m.get(&format!(
            "msdispatcher_lmtp_recipients_total{}",
            recipients("delivered")
        )) == Some(&1.0)
    });
    assert_eq!(
        get(
            &m,
            "msdispatcher_lmtp_recipients_total",
            &recipients("delivered")
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "msdispatcher_lmtp_recipients_total",
            &recipients("refused")
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "msdispatcher_lmtp_recipients_total",
            &recipients("deferred")
        ),
        0.0
    );
    let stored = get(&m, "msdispatcher_lmtp_stored_bytes_total", SS);
    // The message as received (the size= of its delivery line; the trace header is ours).
    let logged: u64 = std::fs::read_to_string(common::delivery_log::path(&d.root))
        .expect("the delivery log")
        .lines()
        .filter(|l| l.contains(": delivery ") && l.contains(" result=250"))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("size="))?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(logged > 0);
    assert_eq!(
        stored, logged as f64,
        "bytes stored = the size= of the delivery"
    );
    assert_eq!(get(&m, "msdispatcher_lmtp_delivery_seconds_count", SS), 1.0);
    assert_eq!(
        get(
            &m,
            "msdispatcher_lmtp_delivery_seconds_bucket",
            r#"{"le": "+Inf", "service": "LMTPSS"}"#
        ),
        1.0
    );
    assert!(get(&m, "msdispatcher_connections_accepted_total", SS) >= 1.0);
    assert!(get(&m, "msdispatcher_connections_handed_off_total", SS) >= 1.0);

    // The worker that counted it is replaced; the counts stay, and go on from there.
    let old_worker = d.only_worker("tcp_lmtp_server");
    ctl(&d, &["--restart", "LMTPSS"]);
    let end = Instant::now() + WAIT;
    while common::pid_alive(old_worker.as_raw()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !common::pid_alive(old_worker.as_raw()),
        "the old worker exited"
    );
    // A start is counted once it is done (starts are made off the event loop), which may
    // be just after the old worker has gone.
    let m = scrape_until(metrics, |m| {
        m.get(&format!("msdispatcher_worker_starts_total{SS}"))
            .is_some_and(|v| *v >= 2.0)
    });
    assert_eq!(
        get(
            &m,
            "msdispatcher_lmtp_recipients_total",
            &recipients("delivered")
        ),
        1.0,
        "kept"
    );
    assert_eq!(get(&m, "msdispatcher_worker_starts_total", SS), 2.0);
    let (ok, out) = peers::swaks(
        d.addr(0),
        "source@relay.example",
        &["alice@example.com"],
        &["--body", body],
    );
    assert!(ok, "{out}");
    let m = scrape_until(metrics, |m| {
        m.get(&format!(
            "msdispatcher_lmtp_recipients_total{}",
            recipients("delivered")
        )) == Some(&2.0)
    });
    assert_eq!(
        get(
            &m,
            "msdispatcher_lmtp_recipients_total",
            &recipients("delivered")
        ),
        2.0
    );
    assert_eq!(get(&m, "msdispatcher_lmtp_delivery_seconds_count", SS), 2.0);

    // Reloads are counted; a refused one too.
    ctl(&d, &["--reload"]);
    d.edit_config("dispatcher.cnf", |t| format!("{t}MAX_CONNS=abc\n"));
    let mut cmd = Command::new(d.root.join("lib/dispatcher"));
    cmd.arg("--reload").env_remove("IMTA_TAILOR");
    assert!(
        !peers::run_bounded(cmd, "dispatcher", Duration::from_secs(60))
            .status
            .success()
    );
    let m = scrape(metrics);
    assert_eq!(
        get(&m, "msdispatcher_reloads_total", r#"{"result": "applied"}"#),
        1.0
    );
    assert_eq!(
        get(&m, "msdispatcher_reloads_total", r#"{"result": "refused"}"#),
        1.0
    );

    // What is not the metrics is answered as HTTP says.
    assert_eq!(
        http(metrics, "GET / HTTP/1.0\r\n\r\n").0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        http(metrics, "POST /metrics HTTP/1.0\r\n\r\n").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(http(metrics, "hello\r\n\r\n").0, "HTTP/1.1 400 Bad Request");
}
