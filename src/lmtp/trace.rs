//! The trace header the images add to every message, the message identifier, and dates.
//!
//! Every stored copy starts with the same two lines, the same for all recipients so that one
//! copy serves them all:
//!
//! ```text
//! Return-Path: <sender>
//! Received: from LHLO-NAME ([198.51.100.10])
//!         by HOST (tcp_lmtp_server VERSION) with LMTP id ID;
//!         Tue, 24 Nov 2026 10:15:02 +0000
//! ```
//!
//! The client is written as the RFC 5321 section 4.4 `TCP-info` asks, an address literal
//! (section 4.1.3, [`address_literal`]): `[198.51.100.10]` for IPv4, also for an IPv4 client
//! of the dual-stack listener, `[IPv6:2001:db8::1]` for IPv6.
//!
//! The identifier (`ID`) is what the replies after DATA and the delivery log carry: the time,
//! the worker's pid and a counter, so it is unique on the host without coordination.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::net_address::address_literal;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new message identifier, such as `6743A1F2.1A2B.3`.
pub fn new_id(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{secs:X}.{:X}.{n:X}", std::process::id())
}

/// This host's name, as `gethostname` gives it (`localhost` if it cannot be read).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(s) if rc == 0 && !s.is_empty() => s.to_string(),
        _ => "localhost".to_string(),
    }
}

/// The parts of a local time the formats below need.
struct LocalTime {
    tm: libc::tm,
}

fn local_time(t: SystemTime) -> LocalTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: an all-zero tm is a valid value; localtime_r fills it from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    LocalTime { tm }
}

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl LocalTime {
    fn day(&self) -> &'static str {
        DAYS[self.tm.tm_wday.rem_euclid(7) as usize]
    }
    fn month(&self) -> &'static str {
        MONTHS[self.tm.tm_mon.rem_euclid(12) as usize]
    }
}

/// RFC 5322 date in local time: `Tue, 24 Nov 2026 10:15:02 +0100`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let lt = local_time(t);
    let tm = &lt.tm;
    let off = tm.tm_gmtoff / 60;
    let sign = if off < 0 { '-' } else { '+' };
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        lt.day(),
        tm.tm_mday,
        lt.month(),
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        off.abs() / 60,
        off.abs() % 60
    )
}

/// The 24-character `asctime` date of an mbox `From ` line: `Tue Nov 24 10:15:02 2026`.
pub fn asctime_date(t: SystemTime) -> String {
    let lt = local_time(t);
    let tm = &lt.tm;
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        lt.day(),
        lt.month(),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_year + 1900
    )
}

/// What the trace header says about the session.
pub struct TraceInfo<'a> {
    pub sender: &'a str,
    pub lhlo: &'a str,
    pub client: IpAddr,
    pub host: &'a str,
    pub program: &'a str,
    pub id: &'a str,
    pub received: SystemTime,
}

/// The `Return-Path:` and `Received:` lines, CRLF line ends.
pub fn header(t: &TraceInfo<'_>) -> Vec<u8> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() || c == '>' { '?' } else { c })
            .collect()
    };
    format!(
        "Return-Path: <{}>\r\nReceived: from {} ({})\r\n\tby {} ({} {}) with LMTP id {};\r\n\t{}\r\n",
        clean(t.sender),
        clean(t.lhlo),
        address_literal(t.client),
        t.host,
        t.program,
        crate::VERSION,
        t.id,
        rfc5322_date(t.received)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_have_their_fixed_shapes() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let a = asctime_date(t);
        assert_eq!(a.len(), 24, "{a}");
        let r = rfc5322_date(t);
        assert!(r.contains(" 2026 ") || r.contains(" 2026"), "{r}");
        assert!(r.ends_with("00") || r.len() > 25, "{r}");
    }

    #[test]
    fn ids_differ() {
        let now = SystemTime::now();
        assert_ne!(new_id(now), new_id(now));
    }

    /// The header for a session from `client`, as text.
    fn header_from(client: &str) -> String {
        let h = header(&TraceInfo {
            sender: "a@b",
            lhlo: "relay.example",
            client: client.parse().expect("a test address"),
            host: "store",
            program: "tcp_lmtp_server",
            id: "X.1.2",
            received: SystemTime::now(),
        });
        String::from_utf8(h).expect("the header is text")
    }

    /// The `Received:` line of the header (its first physical line), without its CRLF.
    fn received_line(h: &str) -> &str {
        h.lines().nth(1).expect("a Received: line")
    }

    #[test]
    fn header_shape() {
        let h = header_from("127.0.0.2");
        assert!(h.starts_with("Return-Path: <a@b>\r\nReceived: from relay.example ([127.0.0.2])\r\n\tby store (tcp_lmtp_server "));
        assert!(h.ends_with("\r\n") && h.contains("with LMTP id X.1.2;\r\n\t"));
    }

    #[test]
    fn header_writes_an_ipv4_client_of_the_dual_stack_listener_as_ipv4() {
        let h = header_from("::ffff:198.51.100.10");
        assert_eq!(
            received_line(&h),
            "Received: from relay.example ([198.51.100.10])"
        );
    }

    #[test]
    fn header_writes_an_ipv6_client_as_an_ipv6_address_literal() {
        let h = header_from("2001:db8::1");
        assert_eq!(
            received_line(&h),
            "Received: from relay.example ([IPv6:2001:db8::1])"
        );
        let h = header_from("::1");
        assert_eq!(
            received_line(&h),
            "Received: from relay.example ([IPv6:::1])"
        );
    }
}
