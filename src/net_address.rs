//! How a connection's addresses are written: for PORT_ACCESS probes, log lines, the `LHLO`
//! reply and the trace header.
//!
//! The dispatcher listens on one dual-stack socket (`[::]` with `IPV6_V6ONLY` off, see
//! `src/dispatcher/listen.rs`), so the kernel reports an IPv4 client as the IPv4-mapped IPv6
//! address `::ffff:198.51.100.10`. That is the same host as `198.51.100.10`, and nobody
//! (administrator, relay, reader of a trace header) should see it written otherwise, so
//! [`unmapped`] turns it back into IPv4, and [`canonical`] does the same for a socket
//! address. Only the mapped form (`::ffff:0:0/96`, RFC 4291 section 2.5.5.2) is turned back:
//! the deprecated IPv4-compatible form (`::a.b.c.d`) would also make `::1` read as `0.0.0.1`,
//! so `Ipv6Addr::to_ipv4` is not used.
//!
//! [`address_literal`] writes the RFC 5321 section 4.1.3 address literal of a client:
//! `[198.51.100.10]` for IPv4, `[IPv6:2001:db8::1]` for IPv6; logs use the plain address.
//!
//! This module sits at the top of the crate, not in `src/handoff/`, because the mapping
//! engine's PORT_ACCESS probe needs it as much as the dispatcher and the workers do, and the
//! hand-off module is only what those two share. It knows nothing of sockets or logs.

use std::net::{IpAddr, SocketAddr};

/// The address as its own family writes it: an IPv4-mapped IPv6 address becomes the IPv4
/// address; everything else is returned unchanged.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The socket address with its address [`unmapped`] and its port kept.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(unmapped(addr.ip()), addr.port())
}

/// The RFC 5321 section 4.1.3 address literal, brackets included: `[198.51.100.10]`,
/// `[IPv6:2001:db8::1]` (an IPv4-mapped address is written as IPv4).
pub fn address_literal(ip: IpAddr) -> String {
    match unmapped(ip) {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("a test address")
    }

    #[test]
    fn mapped_ipv4_becomes_ipv4() {
        assert_eq!(unmapped(ip("::ffff:198.51.100.10")), ip("198.51.100.10"));
        assert_eq!(unmapped(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
    }

    #[test]
    fn plain_ipv4_and_ipv6_are_unchanged() {
        for a in ["198.51.100.10", "127.0.0.1", "2001:db8::1", "::", "fe80::1"] {
            assert_eq!(unmapped(ip(a)), ip(a), "{a}");
        }
    }

    #[test]
    fn loopback_and_compatible_forms_stay_ipv6() {
        // `to_ipv4` would make these 0.0.0.1 and 198.51.100.10.
        assert_eq!(unmapped(ip("::1")), ip("::1"));
        assert_eq!(unmapped(ip("::198.51.100.10")), ip("::198.51.100.10"));
        // RFC 6052/2765 translated forms are not mapped addresses either.
        assert_eq!(
            unmapped(ip("::ffff:0:198.51.100.10")),
            ip("::ffff:0:198.51.100.10")
        );
        assert_eq!(
            unmapped(ip("64:ff9b::198.51.100.10")),
            ip("64:ff9b::198.51.100.10")
        );
    }

    #[test]
    fn edges_of_the_mapped_range_are_ipv4() {
        assert_eq!(unmapped(ip("::ffff:0:0")), ip("0.0.0.0"));
        assert_eq!(unmapped(ip("::ffff:ffff:ffff")), ip("255.255.255.255"));
    }

    #[test]
    fn canonical_keeps_the_port() {
        let a: SocketAddr = "[::ffff:198.51.100.10]:40000".parse().expect("addr");
        assert_eq!(canonical(a).to_string(), "198.51.100.10:40000");
        let b: SocketAddr = "[2001:db8::1]:25".parse().expect("addr");
        assert_eq!(canonical(b), b);
    }

    #[test]
    fn address_literals_follow_rfc_5321() {
        assert_eq!(address_literal(ip("198.51.100.10")), "[198.51.100.10]");
        assert_eq!(
            address_literal(ip("::ffff:198.51.100.10")),
            "[198.51.100.10]"
        );
        assert_eq!(address_literal(ip("2001:db8::1")), "[IPv6:2001:db8::1]");
        assert_eq!(address_literal(ip("::1")), "[IPv6:::1]");
        assert_eq!(address_literal(ip("::")), "[IPv6:::]");
    }
}
