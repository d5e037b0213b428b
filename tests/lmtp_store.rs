//! The message-store image (`tcp_lmtp_server`) end to end: the seed's services on free
//! loopback ports, the real dispatcher, real sockets, a Maildir store in a temporary
//! directory. What the store holds afterwards is read back from disk.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;
use common::lmtp::{maildir, Lmtp};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=2\nMIN_CONNS=1\nMAX_CONNS=20";

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    v.sort();
    v
}

/// Splits a stored message into its trace header (Return-Path and Received with its
/// continuation lines) and the rest, which must be what was sent.
fn split_trace(stored: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(stored);
    assert!(
        text.starts_with("Return-Path: <"),
        "no trace header: {text:?}"
    );
    let mut end = 0;
    let mut seen_received = false;
    for line in text.split_inclusive("\r\n") {
        let is_trace = line.starts_with("Return-Path:")
            || (!seen_received && line.starts_with("Received:"))
            || (seen_received && line.starts_with('\t'));
        if !is_trace {
            break;
        }
        seen_received |= line.starts_with("Received:");
        end += line.len();
    }
    (text[..end].to_string(), stored[end..].to_vec())
}

const MESSAGE: &[u8] = b"From: relay test <sender@relay.example>\r\nTo: alice@example.com\r\nSubject: acceptance\r\n\r\nFirst line.\r\n.A line that begins with a dot.\r\nFrom here on, an mbox would quote this.\r\n\r\nLast line.\r\n";

#[test]
fn per_recipient_replies_and_one_copy_per_mailbox() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    let bob = maildir(&d.root, "bob");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    let lhlo = c.lhlo();
    for ext in ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE"] {
        assert!(lhlo.lines.iter().any(|l| l.starts_with(ext)), "{lhlo:?}");
    }
    let r = c.cmd(&format!(
        "MAIL FROM:<sender@relay.example> SIZE={}",
        MESSAGE.len()
    ));
    assert_eq!(r.code, 250, "{r:?}");
    let codes: Vec<(u16, String)> = [
        "alice@example.com",
        "bob@example.com",
        "nobody-here@example.com",
        "alice@example.com",
    ]
    .iter()
    .map(|a| {
        let r = c.cmd(&format!("RCPT TO:<{a}>"));
        (r.code, r.text())
    })
    .collect();
    assert_eq!(
        codes.iter().map(|c| c.0).collect::<Vec<_>>(),
        [250, 250, 550, 250],
        "{codes:?}"
    );
    assert!(
        codes[2].1.starts_with("5.1.1 <nobody-here@example.com>"),
        "{codes:?}"
    );
    let replies = c.data(MESSAGE, 3);
    for (r, who) in replies.iter().zip(["alice", "bob", "alice"]) {
        assert_eq!(r.code, 250, "{replies:?}");
        assert!(
            r.text().starts_with(&format!("2.0.0 <{who}@example.com> ")),
            "{r:?}"
        );
    }
    // The reply carries the message id; both copies and the log name it.
    let id = replies[0].lines[0]
        .split_whitespace()
        .nth(2)
        .expect("an id")
        .to_string();
    c.quit();

    let (a, b) = (files(&alice.join("new")), files(&bob.join("new")));
    assert_eq!(
        (a.len(), b.len()),
        (1, 1),
        "one copy per mailbox, alice named twice"
    );
    assert!(files(&alice.join("tmp")).is_empty());
    let stored = std::fs::read(&a[0]).expect("read alice's copy");
    assert_eq!(std::fs::read(&b[0]).expect("read bob's copy"), stored);
    let (trace, rest) = split_trace(&stored);
    assert_eq!(rest, MESSAGE, "byte-identical apart from the trace header");
    assert!(
        trace.starts_with(
            "Return-Path: <sender@relay.example>\r\nReceived: from test.example ([127.0.0.2])\r\n"
        ),
        "{trace}"
    );
    assert!(trace.contains(&format!("with LMTP id {id};")), "{trace}");
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (
        std::fs::metadata(&a[0]).unwrap(),
        std::fs::metadata(&b[0]).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino(), "written once, hard-linked");

    let end = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = d.service_log("tcp_lmtpss_server.log");
        if log.matches(&format!("id={id}")).count() >= 3 || Instant::now() > end {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("delivery ")).collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[0].contains("client=127.0.0.2")
            && lines[0].contains("from=<sender@relay.example>")
            && lines[0].contains("to=<alice@example.com>")
            && lines[0].contains("mailbox=alice/INBOX")
            && lines[0].contains(&format!("size={}", MESSAGE.len()))
            && lines[0].contains("result=250 2.0.0"),
        "{log}"
    );
    assert!(
        log.contains("refused") && log.contains("to=<nobody-here@example.com> result=550 5.1.1"),
        "{log}"
    );
}

#[test]
fn the_sun_relay_dialect() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    let sent = maildir(&d.root, "alice/.Sent");
    let bob = maildir(&d.root, "bob");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    let size = MESSAGE.len();
    assert_eq!(
        c.cmd(&format!("MAIL FROM: sender@relay.example size={size}"))
            .code,
        250
    );
    // No brackets, no domain, +folder, xquota and xdflg.
    let r = c.cmd("RCPT TO: alice+Sent xquota=1000000,100 xdflg=0");
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd("RCPT TO: Bob xquota=10,10");
    assert_eq!(
        (r.code, r.lines[0].get(..5)),
        (452, Some("4.2.2")),
        "over quota: {r:?}"
    );
    let r = c.cmd("RCPT TO: bob xquota=10,10 xdflg=2");
    assert_eq!(r.code, 250, "XDFLG 2 delivers over quota: {r:?}");
    let r = c.cmd("RCPT TO: alice+NoSuchFolder");
    assert_eq!(r.code, 250, "{r:?}");
    let replies = c.data(MESSAGE, 3);
    assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
    assert!(
        replies[0].text().ends_with("Saved to Sent")
            && replies[2].text().ends_with("Saved to INBOX"),
        "{replies:?}"
    );
    assert_eq!(files(&sent.join("new")).len(), 1);
    assert_eq!(files(&alice.join("new")).len(), 1);
    assert_eq!(files(&bob.join("new")).len(), 1);

    // A message larger than its declared SIZE: refused for each recipient, then the
    // connection is closed, as the original does. Nothing is stored.
    assert_eq!(c.cmd("MAIL FROM: sender@relay.example size=10").code, 250);
    assert_eq!(c.cmd("RCPT TO: alice").code, 250);
    assert_eq!(c.cmd("RCPT TO: bob").code, 250);
    let replies = c.data(MESSAGE, 2);
    for r in &replies {
        assert_eq!(
            (r.code, r.lines[0].get(..5)),
            (552, Some("5.3.4")),
            "{replies:?}"
        );
    }
    assert_eq!(
        c.try_reply(),
        None,
        "the connection is closed after an oversize message"
    );
    assert_eq!(files(&alice.join("new")).len(), 1);
    assert_eq!(files(&bob.join("new")).len(), 1);
}

#[test]
fn protocol_rules_pipelining_and_bad_input() {
    let d = Dispatcher::start_lmtp(LIMITS, "COMMAND_RECEIVE_TIME=0.03");
    let alice = maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    assert_eq!(c.cmd("HELO relay").code, 500);
    assert_eq!(c.cmd("EHLO relay").code, 500);
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 503, "LHLO first");
    c.lhlo();
    assert_eq!(c.cmd("DATA").code, 503, "DATA without a transaction");
    assert_eq!(c.cmd("FROB").code, 500);
    let r = c.cmd("VRFY alice");
    assert_eq!(r.code, 252, "{r:?}");
    assert_eq!(c.cmd("NOOP").code, 250);
    c.send(b"NOOP\n");
    let r = c.reply();
    assert_eq!(
        (r.code, r.lines[0].get(..5)),
        (500, Some("5.5.2")),
        "bare LF: {r:?}"
    );
    c.send(format!("NOOP {}\r\n", "x".repeat(10_000)).as_bytes());
    assert_eq!(c.reply().code, 500, "an over-long line");
    assert_eq!(c.cmd("MAIL FROM:<a@b> SIZE=999999999999").code, 552);
    assert_eq!(c.cmd("MAIL FROM:<a@b> FROB=1").code, 555);
    // Escapes and nonsense in local parts: 550 5.1.3, nothing written anywhere.
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
    for bad in [
        "../../etc@x",
        "a/b@x",
        "+/etc/passwd",
        ".hidden",
        "alice+../../x",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{bad}>"));
        assert_eq!(
            (r.code, r.lines[0].get(..5)),
            (550, Some("5.1.3")),
            "{bad}: {r:?}"
        );
    }
    assert_eq!(c.cmd("DATA").code, 503, "no valid recipients");
    assert_eq!(c.cmd("RSET").code, 250);

    // A pipelined transaction in one write: every reply, in order.
    let mut batch = b"MAIL FROM:<a@b>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<nobody@x>\r\nRCPT TO:<ALICE@x>\r\nDATA\r\n".to_vec();
    batch.extend_from_slice(&common::lmtp::dot_stuff(
        b"Subject: pipelined\r\n\r\nbody\r\n",
    ));
    batch.extend_from_slice(b"NOOP\r\n");
    c.send(&batch);
    let codes: Vec<u16> = (0..8).map(|_| c.reply().code).collect();
    assert_eq!(codes, [250, 250, 550, 250, 354, 250, 250, 250]);
    assert_eq!(files(&alice.join("new")).len(), 1);

    // NUL in the data: refused per recipient, the session goes on.
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@x>").code, 250);
    let r = c.data(b"Subject: nul\r\n\r\na\0b\r\n", 1);
    assert_eq!(
        (r[0].code, r[0].lines[0].get(..5)),
        (554, Some("5.6.0")),
        "{r:?}"
    );
    assert_eq!(files(&alice.join("new")).len(), 1);

    // Idle past COMMAND_RECEIVE_TIME (1.8 s): 421 and the connection closes.
    let started = Instant::now();
    let r = c.reply();
    assert_eq!((r.code, r.lines[0].get(..5)), (421, Some("4.4.2")), "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.try_reply(), None);
}

#[test]
fn sigkill_of_the_image_loses_nothing_acknowledged_and_leaves_no_partial_message() {
    let d = Dispatcher::start_lmtp("MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=20", "");
    let alice = maildir(&d.root, "alice");
    let bob = maildir(&d.root, "bob");
    let addr = d.addr(0);
    let body_of = |tag: &str| -> Vec<u8> {
        let mut b = format!("Subject: {tag}\r\n\r\n").into_bytes();
        for i in 0..200 {
            b.extend_from_slice(
                format!("{tag} line {i} ........................................\r\n").as_bytes(),
            );
        }
        b
    };
    // One client stops in the middle of DATA and waits there.
    let mut stuck = Lmtp::connect(RELAY, addr);
    stuck.lhlo();
    assert_eq!(stuck.cmd("MAIL FROM:<a@b>").code, 250);
    assert_eq!(stuck.cmd("RCPT TO:<alice@x>").code, 250);
    assert_eq!(stuck.cmd("DATA").code, 354);
    let partial = body_of("partial");
    stuck.send(&partial[..partial.len() / 2]);

    // Four clients deliver as fast as they can until the image dies.
    let stop_at = Instant::now() + Duration::from_secs(20);
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|n| {
            let acks = std::sync::Arc::clone(&acks);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let Some(mut c) = std::panic::catch_unwind(|| Lmtp::connect(RELAY, addr)).ok()
                else {
                    return acked;
                };
                if c.cmd("LHLO t").code != 250 {
                    return acked;
                }
                for i in 0..10_000 {
                    if Instant::now() > stop_at {
                        break;
                    }
                    let tag = format!("c{n}m{i}");
                    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut codes = vec![
                            c.cmd("MAIL FROM:<a@b>").code,
                            c.cmd("RCPT TO:<alice@x>").code,
                            c.cmd("RCPT TO:<bob@x>").code,
                        ];
                        if codes != [250, 250, 250] {
                            return None;
                        }
                        codes = c.data(&body_of(&tag), 2).iter().map(|r| r.code).collect();
                        Some(codes)
                    }));
                    match step {
                        Ok(Some(codes)) if codes == [250, 250] => {
                            acked.push(tag);
                            acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    // Let some messages through (acknowledged to the clients, not only on disk), then kill
    // the image.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks.load(std::sync::atomic::Ordering::SeqCst) < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = d.only_worker("tcp_lmtp_server");
    nix::sys::signal::kill(killed, nix::sys::signal::Signal::SIGKILL).expect("kill -9 the image");
    let acked: Vec<String> = senders
        .into_iter()
        .flat_map(|h| h.join().expect("sender thread"))
        .collect();
    assert!(acked.len() >= 50, "{} acknowledged", acked.len());
    assert_eq!(
        stuck.try_reply(),
        None,
        "the stuck client sees the connection close"
    );

    // Every acknowledged message is in both mailboxes, complete; nothing partial anywhere.
    for mailbox in [&alice, &bob] {
        let mut seen = std::collections::HashMap::new();
        for f in files(&mailbox.join("new")) {
            let stored = std::fs::read(&f).expect("read a message");
            let (_, rest) = split_trace(&stored);
            let subject = String::from_utf8_lossy(&rest)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let tag = subject.strip_prefix("Subject: ").unwrap_or("?").to_string();
            assert_ne!(
                tag, "partial",
                "the message cut short by the kill was stored"
            );
            assert_eq!(
                rest,
                body_of(&tag),
                "{} is not a complete message",
                f.display()
            );
            *seen.entry(tag).or_insert(0) += 1;
        }
        for tag in &acked {
            assert_eq!(
                seen.get(tag),
                Some(&1),
                "acknowledged {tag} missing or doubled in {}",
                mailbox.display()
            );
        }
    }

    // The dispatcher starts a new worker and delivery goes on.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let w = d.workers("tcp_lmtp_server");
        if w.len() == 1 && w[0] != killed.as_raw() {
            break;
        }
        assert!(Instant::now() < end, "no new worker");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = files(&alice.join("new")).len();
    let mut c = Lmtp::connect(RELAY, addr);
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@x>").code, 250);
    assert_eq!(c.data(&body_of("after"), 1)[0].code, 250);
    c.quit();
    assert_eq!(files(&alice.join("new")).len(), before + 1);
}

/// The body of the message tagged `tag`: a few KiB, or every fourth one 1.5 MiB (kept in a
/// temporary file by the image and written in pieces).
fn tagged_body(tag: &str, big: bool) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\r\n\r\n").into_bytes();
    let lines = if big { 24_000 } else { 40 };
    for i in 0..lines {
        b.extend_from_slice(
            format!("{tag} line {i} ..................................\r\n").as_bytes(),
        );
    }
    b
}

/// What one mailbox's `new/` holds, by tag: every file must be a whole message.
fn stored_tags(mailbox: &Path) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for f in files(&mailbox.join("new")) {
        let stored = std::fs::read(&f).expect("read a message");
        let (_, rest) = split_trace(&stored);
        let first = String::from_utf8_lossy(&rest[..rest.len().min(200)]).to_string();
        let tag = first
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("Subject: "))
            .unwrap_or("?")
            .to_string();
        let big = tag.ends_with('B');
        assert_eq!(
            rest,
            tagged_body(&tag, big),
            "{} is not a whole message",
            f.display()
        );
        *seen.entry(tag).or_insert(0) += 1;
    }
    seen
}

/// Group commit under concurrency: sixteen sessions deliver into one Maildir, so their
/// flushes of `new/` are shared, and the image is killed five times while they do. Every
/// message a client got `250` for is in `new/`, whole, once; nothing partial is anywhere in
/// `new/`; and the kill found deliveries between their write and their flush (files written
/// but not yet acknowledged), so the window the guarantee is about was hit.
#[test]
fn sigkill_between_write_and_flush_under_concurrency_loses_nothing_acknowledged() {
    let d = Dispatcher::start_lmtp("MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=20", "");
    let alice = maildir(&d.root, "alice");
    let addr = d.addr(0);
    let mut acked_all: Vec<String> = Vec::new();
    let mut in_flight_seen = 0;
    let mut killed_pids = Vec::new();
    for round in 0..5 {
        // A worker that is not one already killed serves this round.
        let end = Instant::now() + Duration::from_secs(15);
        let worker = loop {
            let w = d.workers("tcp_lmtp_server");
            if w.len() == 1 && !killed_pids.contains(&w[0]) {
                break w[0];
            }
            assert!(Instant::now() < end, "no new worker for round {round}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stop_at = Instant::now() + Duration::from_secs(20);
        let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let senders: Vec<_> = (0..16)
            .map(|n| {
                let acks = std::sync::Arc::clone(&acks);
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let Ok(mut c) = std::panic::catch_unwind(|| {
                        let mut c = Lmtp::connect(RELAY, addr);
                        c.lhlo();
                        c
                    }) else {
                        return acked;
                    };
                    for i in 0..100_000 {
                        if Instant::now() > stop_at {
                            break;
                        }
                        let big = i % 4 == 3;
                        let tag = format!("k{round}c{n}m{i}{}", if big { "B" } else { "s" });
                        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            c.send_message("a@b", "alice@x", &tagged_body(&tag, big))
                                .code
                        }));
                        match step {
                            Ok(250) => {
                                acked.push(tag);
                                acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            _ => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        while acks.load(std::sync::atomic::Ordering::SeqCst) < 80 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 the image");
        killed_pids.push(worker);
        let acked: Vec<String> = senders
            .into_iter()
            .flat_map(|h| h.join().expect("sender thread"))
            .collect();
        assert!(
            acked.len() >= 80,
            "round {round}: {} acknowledged",
            acked.len()
        );
        acked_all.extend(acked);

        let seen = stored_tags(&alice);
        for tag in &acked_all {
            assert_eq!(
                seen.get(tag),
                Some(&1),
                "acknowledged {tag} missing or doubled after round {round}"
            );
        }
        // Written but not acknowledged: in new/ without its 250, or still in tmp/.
        let unacked_in_new = seen.keys().filter(|t| !acked_all.contains(t)).count();
        let in_tmp = files(&alice.join("tmp")).len();
        in_flight_seen += unacked_in_new + in_tmp;
        eprintln!(
            "round {round}: {} acknowledged in all, {unacked_in_new} in new/ unacknowledged, {in_tmp} in tmp/",
            acked_all.len()
        );
        // Counted once: the next round's check must not see them as new.
        acked_all.extend(
            seen.keys()
                .filter(|t| !acked_all.contains(t))
                .cloned()
                .collect::<Vec<_>>(),
        );
        for f in files(&alice.join("tmp")) {
            std::fs::remove_file(f).expect("clear tmp/ for the next round");
        }
    }
    assert!(
        in_flight_seen > 0,
        "no kill landed between a write and its acknowledgement: the test did not test"
    );
}

#[test]
fn a_channel_without_the_lmtp_keyword_is_refused_and_delivery_goes_on() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    maildir(&d.root, "alice");
    // The running worker must have read the channel before it is broken.
    d.wait_for_service_log("tcp_lmtpss_server.log", "worker ready");
    // The administrator breaks the store's channel and asks for a reload.
    d.edit_config("imta.cnf", |t| {
        t.replacen("tcp_lmtpss lmtp", "tcp_lmtpss smtp", 1)
    });
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_for_log("reload refused, still running on the previous configuration");
    let log = d.log();
    assert!(
        log.contains("imta.cnf:2:1) has no `lmtp` keyword, which the LMTP image"),
        "{log}"
    );
    // The running workers keep the configuration they started with: delivery goes on.
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    let r = c.send_message("a@b", "alice", b"Subject: x\r\n\r\nstill here\r\n");
    assert_eq!(r.code, 250);
    c.quit();
    assert_eq!(files(&d.root.join("store/alice/new")).len(), 1);
}

#[test]
fn a_replacement_worker_refuses_a_channel_broken_since_the_last_reload() {
    let d = Dispatcher::start_lmtp("MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=20", "");
    d.wait_for_service_log("tcp_lmtpss_server.log", "worker ready");
    // imta.cnf is edited without a reload, then the store's worker dies: its replacement
    // reads the broken channel, says why in the service's log and is retried with back-off.
    d.edit_config("imta.cnf", |t| {
        t.replacen("tcp_lmtpss lmtp", "tcp_lmtpss smtp", 1)
    });
    nix::sys::signal::kill(
        d.only_worker("tcp_lmtp_server"),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    // The killed worker, young and unserved, counts as a failed start too; the replacement
    // is the one that finds the broken channel.
    let log = d.wait_for_service_log(
        "tcp_lmtpss_server.log",
        "channel tcp_lmtpss has no `lmtp` keyword",
    );
    let end = std::time::Instant::now() + common::dispatcher::WAIT;
    while d.count_in_log("failed to start; next start in") < 2 {
        assert!(std::time::Instant::now() < end, "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        log.contains("[SERVICE=LMTPSS] cannot start: ")
            && log.contains("channel tcp_lmtpss has no `lmtp` keyword"),
        "{log}"
    );
}

#[test]
fn a_client_that_does_not_read_its_replies_is_timed_out() {
    use std::io::{Read, Write};
    let d = Dispatcher::start_lmtp(LIMITS, "COMMAND_RECEIVE_TIME=0.02");
    maildir(&d.root, "alice");
    let mut c = common::dispatcher::connect_from(RELAY, d.addr(0));
    // Pipelined commands, never reading a reply, until both sides' buffers are full: rounds
    // of 98 NOOPs and a message, which keep within the limit on commands that deliver nothing.
    // A write blocked this long means both sides' buffers are full and the server is stuck
    // writing (its own bound is 1.2 s); a shorter one, on a loaded machine, may only mean the
    // server was slow to read, and then it ends the session for another reason.
    c.set_write_timeout(Some(Duration::from_secs(3)))
        .expect("write timeout");
    let mut rounds = b"LHLO relay.example\r\n".to_vec();
    for _ in 0..100 {
        rounds.extend_from_slice(&b"NOOP\r\n".repeat(98));
        rounds.extend_from_slice(
            b"MAIL FROM:<a@b>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: r\r\n\r\nr\r\n.\r\n",
        );
    }
    let mut sent = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        match c.write(&rounds[sent % rounds.len()..]) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent > 0);
    // COMMAND_RECEIVE_TIME is 1.2 s: the server gives up on the writes and closes.
    d.wait_for_service_log(
        "tcp_lmtpss_server.log",
        "the client does not read its replies",
    );
    // What was sent before is readable, then the connection is closed (end of file, or a
    // reset for the commands the server never read).
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("the connection is still open: {e}"),
        }
    };
    assert!(closed);
}

#[test]
fn octets_that_are_not_utf8_or_ascii_get_replies_not_a_crash() {
    let d = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
    // "RCPT TO" cut inside a two-octet character; Latin-1 octets in a local part.
    c.send(b"RCPT TO\xc3\xa9\r\nRCPT TO:<jos\xe9@x>\r\nRCPT TO:<jos\xe8@x>\r\nRCPT TO:<Jos\xc3\xa9@x>\r\n");
    let codes: Vec<(u16, String)> = (0..4)
        .map(|_| {
            let r = c.reply();
            (r.code, r.lines[0].get(..5).unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(
        codes,
        [
            (501, "5.1.3".to_string()),
            (553, "5.6.7".to_string()),
            (553, "5.6.7".to_string()),
            (553, "5.6.7".to_string())
        ]
    );
    // The session goes on, and nothing was created for those addresses.
    assert_eq!(c.cmd("RCPT TO:<jose@x>").code, 250);
    assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n", 1)[0].code, 250);
    c.quit();
    let store: Vec<PathBuf> = files(&d.root.join("store"));
    assert_eq!(store, [d.root.join("store/jose")], "{store:?}");
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_large_message_is_stored_whole_without_being_held_in_memory() {
    let d = Dispatcher::start_lmtp("MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=20", "");
    maildir(&d.root, "alice");
    maildir(&d.root, "bob");
    // 40 MiB: lines of every length up to 9000 octets, some starting with a dot or "From ".
    let mut message = b"Subject: large\r\n\r\n".to_vec();
    let mut n = 0u64;
    while message.len() < 40 << 20 {
        let len = (n * 7919) % 9000;
        match n % 5 {
            0 => message.extend_from_slice(b".dot "),
            1 => message.extend_from_slice(b"From "),
            _ => {}
        }
        message.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, len as usize));
        message.extend_from_slice(b"\r\n");
        n += 1;
    }
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<big@relay.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob>").code, 250);
    let replies = c.data(&message, 2);
    assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
    // A second, small message on the same connection: the large one's file is gone.
    assert_eq!(c.cmd("MAIL FROM:<small@relay.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice>").code, 250);
    assert_eq!(c.data(b"Subject: small\r\n\r\nx\r\n", 1)[0].code, 250);
    let peak = peak_rss_kib(d.only_worker("tcp_lmtp_server").as_raw());
    c.quit();
    for user in ["alice", "bob"] {
        let stored: Vec<Vec<u8>> = files(&d.root.join("store").join(user).join("new"))
            .iter()
            .map(|p| std::fs::read(p).expect("read"))
            .filter(|m| m.len() > 1 << 20)
            .collect();
        assert_eq!(stored.len(), 1, "{user}");
        let (_, body) = split_trace(&stored[0]);
        assert!(
            body == message,
            "{user}: the stored message differs from what was sent"
        );
    }
    assert!(
        peak < 24 * 1024,
        "the worker's peak memory was {peak} KiB for a 40 MiB message"
    );
}

#[test]
fn store_replies_name_the_address_the_client_wrote() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    maildir(&d.root, "dora");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    // No SIZE declared: the quota lets it pass at RCPT, the data then does not fit.
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
    let r = c.cmd("RCPT TO:<Nobody-Here@x>");
    assert_eq!(
        r.lines[0],
        "5.1.1 <Nobody-Here@x> User unknown: no mailbox here"
    );
    assert_eq!(c.cmd("RCPT TO:<Dora@Example.COM> XQUOTA=100,0").code, 250);
    let body = format!("Subject: q\r\n\r\n{}\r\n", "x".repeat(500));
    let r = c.data(body.as_bytes(), 1).remove(0);
    assert_eq!(r.code, 452, "{r:?}");
    assert!(
        r.lines[0].starts_with("4.2.2 <Dora@Example.COM> Mailbox is full"),
        "{r:?}"
    );
    c.quit();
}

#[test]
fn random_command_soup_never_crashes_a_worker() {
    use std::io::{Read, Write};
    let d = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
    let pieces: [&[u8]; 15] = [
        b"LHLO x\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"RCPT TO:<alice>\r\n",
        b"RCPT TO:<bob+F@x> XQUOTA=10,1\r\n",
        b"DATA\r\n",
        b".\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"BDAT 10\r\n",
        b"MAIL FROM:<> SIZE=5 BODY=8BITMIME\r\n",
        b"RCPT TO:<..>\r\n",
        b"\r\n",
        b"\n",
        b"\x00\r\n",
        b"QUIT\r\n",
    ];
    // A fixed-seed generator: the same soup every run, 300 connections.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut soup = Vec::new();
        for _ in 0..(next() % 30 + 1) {
            if next() % 10 < 7 {
                soup.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            } else {
                soup.extend((0..next() % 300).map(|_| next() as u8));
            }
        }
        let mut s = common::dispatcher::connect_from(RELAY, d.addr(0));
        let _ = s.write_all(&soup);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let log = d.service_log("tcp_lmtpss_server.log");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(d.count_in_log("failed to start"), 0, "{}", d.log());
    // Still serving.
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(
        c.send_message("a@b", "alice", b"Subject: after\r\n\r\nx\r\n")
            .code,
        250
    );
}

#[test]
fn lmtp_cr_takes_a_bare_cr_as_a_line_end() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    d.edit_config("imta.cnf", |t| {
        t.replacen("tcp_lmtpss lmtp", "tcp_lmtpss lmtp_cr", 1)
    });
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_for_log("configuration reloaded");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    // Every line ends in a bare CR; the client waits for each reply.
    c.send(b"LHLO cr.example\r");
    assert_eq!(c.reply().code, 250);
    c.send(b"MAIL FROM:<a@b>\r");
    assert_eq!(c.reply().code, 250);
    c.send(b"RCPT TO:<alice>\r");
    assert_eq!(c.reply().code, 250);
    c.send(b"DATA\r");
    assert_eq!(c.reply().code, 354);
    c.send(b"Subject: cr\rfirst\r..dot\r.\r");
    assert_eq!(c.reply().code, 250);
    c.send(b"QUIT\r");
    assert_eq!(c.reply().code, 221);
    let stored = files(&alice.join("new"));
    assert_eq!(stored.len(), 1);
    let (_, body) = split_trace(&std::fs::read(&stored[0]).expect("read"));
    assert_eq!(body, b"Subject: cr\r\nfirst\r\n.dot\r\n");
}
