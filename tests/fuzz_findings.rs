//! What the fuzz targets found (docs/fuzzing.md, "What fuzzing found"), carried out against
//! the real dispatcher and LMTP image the way a client would meet it. The reproducers
//! themselves are replayed by `tests/fuzz_corpus.rs`; these tests show the effect on the wire.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::dispatcher::Dispatcher;
use common::lmtp::Lmtp;
use msdispatcher::lmtp::settings::MAX_COMMAND_LINE;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=5";

/// Found by `lmtp_input` (fuzz/artifacts/lmtp_input/crash-4ce2dcf5...): a command line over the
/// limit that ends in a bare LF was answered "bare LF" when it came in one read and "too long"
/// when it came in several, so the reply depended on how the network split the bytes.
#[test]
fn an_over_long_line_ending_in_a_bare_lf_is_too_long_however_it_arrives() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    let line = format!("NOOP {}\n", "x".repeat(MAX_COMMAND_LINE));
    c.send(line.as_bytes());
    let whole = c.reply();
    // The first piece alone is over the limit, so the reader drops it while it waits.
    let (head, tail) = line.as_bytes().split_at(MAX_COMMAND_LINE + 2);
    c.send(head);
    std::thread::sleep(Duration::from_millis(300));
    c.send(tail);
    let split = c.reply();
    for (how, r) in [("in one piece", &whole), ("in two pieces", &split)] {
        assert_eq!(r.code, 500, "{how}: {r:?}");
        assert!(r.text().contains("line too long"), "{how}: {r:?}");
    }
    assert_eq!(c.cmd("NOOP").code, 250, "the session goes on");
}
