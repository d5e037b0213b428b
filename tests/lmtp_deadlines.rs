//! The LMTP images' time limits are deadlines for a whole command line and for the whole
//! message data, not for each read (docs/lmtp.md, "Time limits"): a client that trickles its
//! input a byte at a time, each well within the per-read limit, is answered `421 4.4.2` and
//! closed once the deadline has passed, and its connection slot is freed; a slow client that
//! keeps within the deadlines is served. The real dispatcher and `tcp_lmtp_server`, on free
//! loopback ports, with 3-second limits.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;
use common::lmtp::{maildir, Lmtp};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// One worker with one connection slot: a client that holds it holds the service.
const ONE_SLOT: &str = "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=1";
/// `COMMAND_RECEIVE_TIME` and `DATA_RECEIVE_TIME` of 0.05 minutes.
const LIMIT: Duration = Duration::from_secs(3);
const THREE_SECONDS: &str = "COMMAND_RECEIVE_TIME=0.05\nDATA_RECEIVE_TIME=0.05";
const LOG: &str = "tcp_lmtpss_server.log";

/// What a client that sent its input in pieces saw.
struct Seen {
    /// Everything the server sent after the pieces began.
    text: String,
    /// The server closed the connection.
    closed: bool,
    /// From the first piece to the close (or to the end of watching).
    elapsed: Duration,
    /// Pieces sent before the server closed.
    sent: usize,
}

/// Sends `pieces` `pause` apart, reading what the server says in between, and stops at the
/// server's close; after the last piece it watches up to `linger` for a whole reply, or the
/// close. Bounded: at most `pieces.len()` pauses and one `linger`.
fn trickle(stream: &TcpStream, pieces: &[&[u8]], pause: Duration, linger: Duration) -> Seen {
    let started = Instant::now();
    let mut text = Vec::new();
    let mut sent = 0;
    let mut buf = [0u8; 4096];
    // Reads until `until` (or, `to_reply`, until a reply is whole); true when the server
    // closed.
    let mut watch = |until: Instant, to_reply: bool, text: &mut Vec<u8>| -> bool {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || (to_reply && ends_a_reply(text)) {
                return false;
            }
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            match (&*stream).read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(e) => panic!("reading from the server: {e}"),
            }
        }
    };
    let mut closed = false;
    for piece in pieces {
        if (&*stream).write_all(piece).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        if watch(Instant::now() + pause, false, &mut text) {
            closed = true;
            break;
        }
    }
    if !closed {
        closed = watch(Instant::now() + linger, true, &mut text);
    }
    Seen {
        text: String::from_utf8_lossy(&text).into_owned(),
        closed,
        elapsed: started.elapsed(),
        sent,
    }
}

/// Whether `text` ends with the last line of a reply (`NNN text` CRLF).
fn ends_a_reply(text: &[u8]) -> bool {
    let Some(body) = text.strip_suffix(b"\r\n") else {
        return false;
    };
    let last = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    last.len() >= 4 && last[..3].iter().all(u8::is_ascii_digit) && last[3] == b' '
}

/// `text` cut into one-octet pieces.
fn octets(text: &[u8]) -> Vec<&[u8]> {
    text.chunks(1).collect()
}

/// The files of a Maildir's `new/` and `tmp/`.
fn stored(maildir: &Path) -> Vec<std::path::PathBuf> {
    ["new", "tmp"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(maildir.join(sub)).expect("list the Maildir"))
        .map(|e| e.expect("dir entry").path())
        .collect()
}

/// The server answered `421 4.4.2 ... <timeout>` and closed the connection about when the
/// 3 s deadline passed: not before it, well before 3 times it, and before the client had sent
/// all of its `pieces`.
fn assert_cut_off_at_the_deadline(seen: &Seen, pieces: usize, timeout: &str) {
    assert!(
        seen.text.starts_with("421 4.4.2 ") && seen.text.contains(timeout),
        "no 421 `{timeout}` after {} of {pieces} pieces in {:?}: {:?}",
        seen.sent,
        seen.elapsed,
        seen.text
    );
    assert!(seen.closed, "the connection stayed open: {:?}", seen.text);
    assert!(
        seen.elapsed < 3 * LIMIT && seen.sent < pieces,
        "cut off after {:?} and {} of {pieces} pieces: not at the 3 s deadline",
        seen.elapsed,
        seen.sent
    );
    assert!(
        seen.elapsed >= LIMIT - Duration::from_millis(500),
        "cut off early, after {:?}",
        seen.elapsed
    );
}

/// The slot the trickling client held serves the next client.
fn the_slot_is_free(d: &Dispatcher) {
    let mut next = Lmtp::connect(RELAY, d.addr(0));
    next.lhlo();
    next.quit();
}

#[test]
fn a_command_line_trickled_one_octet_a_second_is_cut_off_at_its_deadline() {
    let d = Dispatcher::start_lmtp(ONE_SLOT, THREE_SECONDS);
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    // 17 octets a second apart: each read waits 1 s (well within 3 s), the line would take 17.
    let line = b"MAIL FROM:<a@b>\r\n";
    let seen = trickle(
        c.stream(),
        &octets(line),
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    assert_cut_off_at_the_deadline(&seen, line.len(), "Timeout waiting for a command");
    d.wait_for_service_log(
        LOG,
        "timed out waiting for a command (a command line must arrive whole within COMMAND_RECEIVE_TIME (3.0 s))",
    );
    the_slot_is_free(&d);
}

#[test]
fn message_data_trickled_within_each_wait_but_beyond_its_deadline_is_not_stored() {
    let d = Dispatcher::start_lmtp(ONE_SLOT, THREE_SECONDS);
    let alice = maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@x>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    // Ten short lines a second apart, then the end of the data: 10 s in all, each wait 1 s.
    let mut pieces: Vec<&[u8]> = vec![b"Subject: slow\r\n\r\n"];
    pieces.extend(std::iter::repeat_n(&b"line\r\n"[..], 9));
    pieces.push(b".\r\n");
    let seen = trickle(
        c.stream(),
        &pieces,
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    assert!(
        !seen.text.contains("250"),
        "the trickled message was accepted: {:?}",
        seen.text
    );
    assert_cut_off_at_the_deadline(&seen, pieces.len(), "Timeout receiving message data");
    d.wait_for_service_log(LOG, "message data incomplete");
    d.wait_for_service_log(LOG, "timed out receiving message data (message data must arrive within DATA_RECEIVE_TIME (3.0 s)");
    assert_eq!(stored(&alice), Vec::<std::path::PathBuf>::new());
    the_slot_is_free(&d);
}

#[test]
fn a_slow_client_that_keeps_within_the_deadlines_is_served() {
    let d = Dispatcher::start_lmtp(ONE_SLOT, THREE_SECONDS);
    let alice = maildir(&d.root, "alice");
    let c = Lmtp::connect(RELAY, d.addr(0));
    let started = Instant::now();
    // Each command line in three pieces over a second, after a second's pause: well within
    // 3 s each, 8 s for the session.
    for line in [
        "LHLO slow.example",
        "MAIL FROM:<a@b>",
        "RCPT TO:<alice@x>",
        "DATA",
    ] {
        std::thread::sleep(Duration::from_secs(1));
        let wire = format!("{line}\r\n");
        let (a, rest) = wire.as_bytes().split_at(3);
        let (b, rest) = rest.split_at(3);
        let seen = trickle(
            c.stream(),
            &[a, b, rest],
            Duration::from_millis(500),
            Duration::from_secs(2),
        );
        assert!(!seen.closed, "closed at {line}: {:?}", seen.text);
        // The reply (multi-line for LHLO) arrived in the last pause.
        let last = seen.text.lines().last().unwrap_or("");
        let code = if line == "DATA" { "354 " } else { "250 " };
        assert!(last.starts_with(code), "{line}: {:?}", seen.text);
    }
    // Message data for 5 s, longer than DATA_RECEIVE_TIME, but 8 KiB each half second:
    // far faster than 500 octets a second, so each piece earns more time than it takes.
    let chunk = format!("{}\r\n", "x".repeat(8 * 1024 - 2));
    let mut pieces: Vec<&[u8]> = vec![b"Subject: slow but steady\r\n\r\n"];
    pieces.extend(std::iter::repeat_n(chunk.as_bytes(), 10));
    pieces.push(b".\r\n");
    let seen = trickle(
        c.stream(),
        &pieces,
        Duration::from_millis(500),
        Duration::from_secs(2),
    );
    assert!(!seen.closed && seen.sent == pieces.len(), "{:?}", seen.text);
    assert!(seen.text.starts_with("250 2.0.0"), "{:?}", seen.text);
    assert!(started.elapsed() > 2 * LIMIT, "the session was not slow");
    c.quit();
    assert_eq!(stored(&alice).len(), 1);
}

#[test]
fn a_client_that_takes_its_replies_a_little_at_a_time_is_cut_off() {
    // Pipelined commands whose replies (80 octets for each 8-octet VRFY; 98 of them between
    // two messages, within the junk command limit) fill every buffer between the server and
    // a client with a small receive buffer, which then takes a few KiB every second: each of
    // the server's writes makes progress within the 3 s limit, so only a deadline for taking
    // all the replies ends the session.
    let d = Dispatcher::start_lmtp(ONE_SLOT, THREE_SECONDS);
    maildir(&d.root, "alice");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .bind(&std::net::SocketAddr::from((RELAY, 0)).into())
        .expect("bind the relay's address");
    socket.connect(&d.addr(0).into()).expect("connect");
    let stream: TcpStream = socket.into();
    let writer = stream.try_clone().expect("clone the stream");
    writer
        .set_write_timeout(Some(Duration::from_secs(60)))
        .expect("write timeout");
    const ROUNDS: usize = 1000;
    let pipeline = std::thread::spawn(move || {
        let mut w = &writer;
        let mut round = b"VRFY x\r\n".repeat(98);
        round.extend_from_slice(
            b"MAIL FROM:<a@b>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: r\r\n\r\nr\r\n.\r\n",
        );
        let mut sent = 0;
        if w.write_all(b"LHLO relay.example\r\n").is_err() {
            return sent;
        }
        for _ in 0..ROUNDS {
            if w.write_all(&round).is_err() {
                break; // the server closed: what it did not read is not ours to count
            }
            sent += 98;
        }
        sent
    });
    let started = Instant::now();
    let mut got = 0usize;
    let mut closed = false;
    let mut buf = [0u8; 4096];
    // At most 40 s of reading a few KiB every second; the replies in full are about 8 MB.
    while started.elapsed() < Duration::from_secs(40) {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        match (&stream).read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let elapsed = started.elapsed();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let sent = pipeline.join().expect("the pipelining thread");
    // Cut off within the replies' deadline (3 s) and a 421's (3 s more) of the buffers
    // filling, with a margin for a loaded machine; a per-write limit lets it go on for ever.
    assert!(
        closed && elapsed < Duration::from_secs(15),
        "still served after {elapsed:?} (closed: {closed}): {got} octets of replies taken, \
         {sent} commands sent"
    );
    assert!(
        got < sent * 80,
        "cut off before all replies were taken: {got} octets"
    );
    d.wait_for_service_log(LOG, "timed out: the client does not read its replies");
    the_slot_is_free(&d);
}

#[test]
fn a_hundred_commands_that_deliver_nothing_end_the_session() {
    // Each NOOP may come just inside COMMAND_RECEIVE_TIME; without a bound on them a client
    // holds its slot for ever (Postfix's smtpd_junk_command_limit, 100).
    let d = Dispatcher::start_lmtp(ONE_SLOT, THREE_SECONDS);
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo(); // counts: 99 NOOPs are left
    c.send(&b"NOOP\r\n".repeat(120));
    for i in 0..99 {
        let r = c.reply();
        assert_eq!(r.code, 250, "NOOP {i}: {r:?}");
    }
    let r = c.reply();
    assert_eq!(
        (r.code, r.text().starts_with("4.7.0")),
        (421, true),
        "{r:?}"
    );
    assert_eq!(c.try_reply(), None, "closed after the 421");
    d.wait_for_service_log(LOG, "100 commands without a message");
    the_slot_is_free(&d);
}

#[test]
fn commands_that_deliver_nothing_are_counted_afresh_after_each_message() {
    let d = Dispatcher::start_lmtp(ONE_SLOT, THREE_SECONDS);
    maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    for round in 0..3 {
        for i in 0..80 {
            assert_eq!(c.cmd("NOOP").code, 250, "round {round}, NOOP {i}");
        }
        let r = c.send_message("a@b", "alice", b"Subject: between\r\n\r\nx\r\n");
        assert_eq!(r.code, 250, "round {round}: {r:?}");
        assert_eq!(c.cmd("RSET").code, 250);
    }
    c.quit();
    assert_eq!(stored(&d.root.join("store/alice")).len(), 3);
}
