//! The PORT_ACCESS check at accept: judge a new connection before any worker sees it, and
//! refuse it as the original does (the rejection text and CRLF, then close).
//!
//! Refusals are logged at most [`REFUSALS_PER_MINUTE`] times a minute; the rest are counted
//! and summed up in one line, so a flood cannot fill the disk.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use crate::mapping::port_access::{self, Decision};
use crate::mapping::table::MappingSet;

/// Refusals written to the log in one minute before they are only counted.
pub const REFUSALS_PER_MINUTE: u32 = 60;

/// The decision for a connection from `client` to `server`; no table accepts everything.
pub fn judge(
    table: Option<&MappingSet>,
    server: SocketAddr,
    client: SocketAddr,
) -> (String, Decision) {
    let probe = port_access::probe(server, client);
    let decision = match table {
        Some(t) => port_access::decide(t, &probe),
        None => port_access::decide(&MappingSet::default(), &probe),
    };
    (probe, decision)
}

/// Sends the rejection reply (best effort: the socket is non-blocking and the text short) and
/// closes the connection.
pub fn refuse(mut stream: TcpStream, decision: &Decision) {
    let reply = decision.verdict.reply();
    if !reply.is_empty() {
        let _ = stream.write_all(reply.as_bytes());
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Counts refusals and says which to log.
#[derive(Debug, Default)]
pub struct RefusalLog {
    window_start: u64,
    logged: u32,
    suppressed: u64,
    pub total: u64,
}

impl RefusalLog {
    /// Records one refusal at `now` (milliseconds). Returns whether to log it, and how many
    /// earlier ones were suppressed (to be reported once, when a new minute starts).
    pub fn record(&mut self, now: u64) -> (bool, u64) {
        self.total += 1;
        let mut report = 0;
        if now.saturating_sub(self.window_start) >= 60_000 {
            report = std::mem::take(&mut self.suppressed);
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged < REFUSALS_PER_MINUTE {
            self.logged += 1;
            (true, report)
        } else {
            self.suppressed += 1;
            (false, report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_sixty_times_a_minute_and_then_summed_up() {
        let mut r = RefusalLog::default();
        let logged = (0..1000).filter(|_| r.record(1_000).0).count();
        assert_eq!(logged, 60);
        assert_eq!(r.record(61_000), (true, 940));
        assert_eq!(r.total, 1001);
    }
}
