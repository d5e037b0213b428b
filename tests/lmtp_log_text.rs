//! What a client writes reaches the LMTP image's log only escaped (docs/lmtp.md, "Logging"):
//! addresses, the LHLO name and whole command lines in a trace cannot end a log line, start a
//! forged one, move the terminal's cursor or reorder what an operator reads. The real
//! dispatcher and `tcp_lmtp_server`; the worker's log file is read back as octets.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::dispatcher::{Dispatcher, WAIT};
use common::lmtp::{maildir, service_log_octets, Lmtp};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=5";
const LOG: &str = "tcp_lmtpss_server.log";

/// Waits until the service log holds every one of `expected`; returns the log. Panics with
/// the log (escaped for the panic message) after WAIT.
fn wait_for_log(d: &Dispatcher, expected: &[&str]) -> Vec<u8> {
    let end = Instant::now() + WAIT;
    loop {
        let log = service_log_octets(&d.root, LOG);
        let text = String::from_utf8_lossy(&log);
        let missing: Vec<&&str> = expected.iter().filter(|e| !text.contains(**e)).collect();
        if missing.is_empty() {
            return log;
        }
        assert!(
            Instant::now() < end,
            "{missing:?} not in {LOG}:\n{}",
            msdispatcher::log_text::escape(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The log is UTF-8, and holds no control character but the newline that ends each line,
/// and none of the invisible characters that change how a line reads.
fn assert_nothing_raw(log: &[u8]) {
    let text = std::str::from_utf8(log).unwrap_or_else(|e| {
        panic!(
            "the log holds octets that are not UTF-8 ({e}):\n{}",
            msdispatcher::log_text::escape(log)
        )
    });
    for (n, line) in text.lines().enumerate() {
        let raw: Vec<char> = line
            .chars()
            .filter(|&c| {
                c.is_control()
                    || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            })
            .collect();
        assert!(
            raw.is_empty(),
            "log line {} holds {raw:?}: {}",
            n + 1,
            msdispatcher::log_text::escape(line)
        );
    }
}

#[test]
fn addresses_in_delivery_and_refusal_lines_are_escaped() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    // A sender with a right-to-left override, a line separator and the 8-bit CSI: none is an
    // ASCII control, so the address is accepted, and logged with the delivery.
    let r = c.cmd("MAIL FROM:<evil\u{202e}gpj.exe\u{2028}forged\u{9b}2J@x>");
    assert_eq!(r.code, 250, "{r:?}");
    // A recipient refused for its syntax is logged always.
    let r = c.cmd("RCPT TO:<bob\u{202e}\u{2029}@x>");
    assert_eq!(r.code, 553, "{r:?}");
    assert_eq!(c.cmd("RCPT TO:<alice@x>").code, 250);
    assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n", 1)[0].code, 250);
    c.quit();
    let log = wait_for_log(
        &d,
        &[
            "to=<bob\\u{202e}\\u{2029}@x>",
            "delivery conn=",
            "from=<evil\\u{202e}gpj.exe\\u{2028}forged\\u{9b}2J@x> to=<alice@x>",
        ],
    );
    assert_nothing_raw(&log);
}

#[test]
fn a_trace_shows_the_control_octets_of_command_lines_escaped() {
    // DEBUG makes the image trace every command and reply.
    let d = Dispatcher::start_lmtp(&format!("{LIMITS}\nDEBUG=1"), "");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    // An LHLO name with an escape sequence (clear screen), an octet that is not UTF-8 and a
    // CR inside the line (only CRLF ends it here); the reply quotes the name.
    c.send(b"LHLO a\x1b[2Jb\xff\rc\r\n");
    assert_eq!(c.reply().code, 250);
    // Control characters in addresses are refused by the parser, but the trace has the line.
    assert_eq!(c.cmd("MAIL FROM:<a\x1b[2Jb@x>").code, 501);
    c.send(b"RCPT TO:<x\x1b]0;owned\x07\xfe@x>\r\n");
    assert_eq!(c.reply().code, 501);
    c.quit();
    let log = wait_for_log(
        &d,
        &[
            ">>> LHLO a\\u{1b}[2Jb\\xff\\rc",
            "<<< 250 ",
            ">>> MAIL FROM:<a\\u{1b}[2Jb@x>",
            ">>> RCPT TO:<x\\u{1b}]0;owned\\u{7}\\xfe@x>",
            ">>> QUIT",
        ],
    );
    assert_nothing_raw(&log);
}
