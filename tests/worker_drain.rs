//! Draining LMTP sessions, with the real dispatcher and the message-store image: a worker
//! told to drain (the dispatcher stops, reloads, or recycles the worker) finishes the
//! transaction in progress on each session, then answers `421 4.3.2` and closes, instead of
//! serving a relay's cached connection for ever; an idle session is answered at once; a
//! session that has completed no transaction yet (handed just before the drain, or between
//! its LHLO and its MAIL) may still open one within the drain's grace (1 s) and deliver it.

mod common;

use std::io::{ErrorKind, Read};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;
use common::lmtp::{dot_stuff, maildir, Lmtp};
use nix::sys::signal::Signal;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const OTHER_RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=2\nMIN_CONNS=1\nMAX_CONNS=20";
const STORE_LOG: &str = "tcp_lmtpss_server.log";
/// What the runtime logs when it starts to drain (old and new code alike).
const DRAINING: &str = "draining: ";
/// The worker's line for a session it closed because it drains.
const CLOSED_FOR_DRAIN: &str = "the worker is draining: answered 421";

const MESSAGE: &[u8] =
    b"From: <sender@relay.example>\r\nTo: <alice@example.com>\r\nSubject: drain\r\n\r\nBody.\r\n";

fn messages_in(maildir: &Path) -> usize {
    std::fs::read_dir(maildir.join("new"))
        .expect("list new/")
        .count()
}

/// The reply a draining worker ends a session with, then the close: end of file, or a reset
/// when the client's command reached the socket after the worker had closed it (the 421 was
/// on its way first; it was read above).
fn assert_shutting_down_then_closed(c: &mut Lmtp, r: common::lmtp::Reply) {
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.3.2 "), "{r:?}");
    let mut rest = Vec::new();
    match c.stream().read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after 421: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn a_cached_session_is_refused_its_next_mail_and_the_dispatcher_stops_promptly() {
    let mut d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    let r = c.send_message("sender@relay.example", "alice@example.com", MESSAGE);
    assert_eq!(r.code, 250, "{r:?}");
    d.signal(Signal::SIGTERM);
    let stopping = Instant::now();
    d.wait_for_service_log(STORE_LOG, DRAINING);
    let r = c.cmd("MAIL FROM:<sender@relay.example>");
    assert_shutting_down_then_closed(&mut c, r);
    let status = d.child.wait_for(Duration::from_secs(4));
    assert!(
        status.is_some(),
        "the dispatcher still runs 4 s after SIGTERM (its shutdown bound is 5 s): a session \
         kept its worker alive\n{}",
        d.log()
    );
    assert!(stopping.elapsed() < Duration::from_secs(4));
    assert_eq!(messages_in(&alice), 1, "the first message is stored");
    assert!(d.service_log(STORE_LOG).contains(CLOSED_FOR_DRAIN));
}

#[test]
fn idle_sessions_are_answered_421_at_once_when_the_worker_drains() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    maildir(&d.root, "alice");
    // One idle after LHLO, one idle after a transaction.
    let mut greeted = Lmtp::connect(RELAY, d.addr(0));
    greeted.lhlo();
    let mut cached = Lmtp::connect(OTHER_RELAY, d.addr(0));
    cached.lhlo();
    let r = cached.send_message("sender@relay.example", "alice@example.com", MESSAGE);
    assert_eq!(r.code, 250, "{r:?}");
    for c in [&greeted, &cached] {
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("read timeout");
    }
    // A reload drains every worker of the configuration it replaces.
    d.signal(Signal::SIGHUP);
    let reload = Instant::now();
    // Nothing is sent: the 421 comes unsolicited. At once after a transaction; after LHLO
    // alone (a session owed a transaction) when the 1 s grace has passed.
    for (c, bound) in [(&mut cached, 1000), (&mut greeted, 2500)] {
        let r = c.reply();
        assert!(
            reload.elapsed() < Duration::from_millis(bound),
            "421 came {:?} after SIGHUP",
            reload.elapsed()
        );
        assert_shutting_down_then_closed(c, r);
    }
    let log = d.wait_for_service_log(STORE_LOG, CLOSED_FOR_DRAIN);
    assert_eq!(log.matches(CLOSED_FOR_DRAIN).count(), 2, "{log}");
}

#[test]
fn a_transaction_in_its_data_when_the_worker_drains_is_completed() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    let bob = maildir(&d.root, "bob");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@example.com>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let data = dot_stuff(MESSAGE);
    let (first, rest) = data.split_at(data.len() / 2);
    c.send(first);
    d.signal(Signal::SIGTERM);
    d.wait_for_service_log(STORE_LOG, DRAINING);
    c.send(rest);
    for who in ["alice", "bob"] {
        let r = c.reply();
        assert_eq!(r.code, 250, "{who}: {r:?}");
    }
    let r = c.cmd("MAIL FROM:<sender@relay.example>");
    assert_shutting_down_then_closed(&mut c, r);
    assert_eq!(messages_in(&alice), 1);
    assert_eq!(messages_in(&bob), 1);
}

#[test]
fn a_session_handed_just_before_the_drain_delivers_one_message() {
    // MAX_LIFE_CONNS=1: the worker is told to drain right after its one hand-off, before
    // the client has said anything.
    let limits = format!("{LIMITS}\nMAX_LIFE_CONNS=1");
    let d = Dispatcher::start_lmtp(&limits, "");
    let alice = maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    d.wait_for_service_log(STORE_LOG, DRAINING);
    c.lhlo();
    let r = c.send_message("sender@relay.example", "alice@example.com", MESSAGE);
    assert_eq!(
        r.code, 250,
        "the connection handed before DRAIN is served: {r:?}"
    );
    let r = c.cmd("MAIL FROM:<sender@relay.example>");
    assert_shutting_down_then_closed(&mut c, r);
    assert_eq!(messages_in(&alice), 1);
}

#[test]
fn a_session_between_lhlo_and_its_first_mail_still_delivers_one_message() {
    // A relay's sessions on a worker recycled by MAX_LIFE_CONNS (Postfix's smtp-source with
    // several sessions meets this every hundred connections): greeted, about to send MAIL.
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    d.signal(Signal::SIGTERM);
    d.wait_for_service_log(STORE_LOG, DRAINING);
    let r = c.send_message("sender@relay.example", "alice@example.com", MESSAGE);
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd("MAIL FROM:<sender@relay.example>");
    assert_shutting_down_then_closed(&mut c, r);
    assert_eq!(messages_in(&alice), 1);
}

#[test]
fn quit_is_still_answered_221_by_a_draining_worker() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    d.signal(Signal::SIGTERM);
    d.wait_for_service_log(STORE_LOG, DRAINING);
    // The open transaction keeps the session; the client gives up on it.
    c.quit();
}
