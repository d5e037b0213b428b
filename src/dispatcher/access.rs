//! The PORT_ACCESS check at accept: judge a new connection before any worker sees it, and
//! refuse it as the original does (the rejection text and CRLF, then close).
//!
//! Refusals are logged at most [`REFUSALS_PER_MINUTE`] times a minute; the rest are counted
//! and summed up in one line, so a flood cannot fill the disk.
//!
//! It also decides whether a configuration has a table in force at all ([`missing_table`]),
//! which `--check` and every start warn about, and whether a reload may replace the running
//! table ([`check_reload`]): a reload never goes from a table that judges connections to
//! none, nor to one that admits a stranger the table in force refuses, so a `mappings` file
//! removed, emptied, half-written or cut before its final refusal cannot open the service to
//! everyone. Any other change (a relay added or removed) is the administrator's business and
//! applies.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;

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

/// The clients and servers of the probes that stand for "a stranger": documentation
/// addresses (RFC 5737, RFC 3849), which no installation admits on purpose.
const STRANGER_PROBES: [(IpAddr, IpAddr); 2] = [
    (
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    ),
    (
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
    ),
];

/// Whether a reload may replace the `running` tables by `new` (read from `mappings`), for
/// services listening on `ports`: not when a PORT_ACCESS table is in force and the new
/// configuration has none, nor when the new table admits a stranger (a client at a
/// documentation address) on one of those ports that the table in force refuses. The error
/// is the reason, for `reload refused`.
pub fn check_reload(
    running: Option<&MappingSet>,
    mappings: &Path,
    new: Option<&MappingSet>,
    ports: &[u16],
) -> Result<(), String> {
    let Some(running) = running.filter(|r| port_access::judging_table(Some(r)).is_some()) else {
        return Ok(());
    };
    const HOW: &str = "(if the file is being rewritten, replace it in one rename; to open the \
                       service wider, restart the dispatcher)";
    if let Some(reason) = port_access::missing_table(mappings, new) {
        return Err(format!(
            "{reason}, but a PORT_ACCESS table is in force: a reload never removes it {HOW}"
        ));
    }
    let Some(new) = new else {
        return Ok(()); // missing_table said there is a table
    };
    for &port in ports {
        for (server, client) in STRANGER_PROBES {
            let probe =
                port_access::probe(SocketAddr::new(server, port), SocketAddr::new(client, 1024));
            let refused_now = !port_access::decide(running, &probe).verdict.accepts();
            if refused_now && port_access::decide(new, &probe).verdict.accepts() {
                return Err(format!(
                    "the PORT_ACCESS table of {} would admit a stranger that the table in \
                     force refuses (probe {probe}): a reload never weakens it {HOW}",
                    mappings.display()
                ));
            }
        }
    }
    Ok(())
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
    use crate::config::error::Diagnostics;
    use crate::config::mappings;
    use std::sync::Arc;

    fn set(text: &str) -> MappingSet {
        let file: Arc<Path> = Arc::from(Path::new("mappings"));
        let mut d = Diagnostics::default();
        let parsed = mappings::parse_str(&file, text, &mut d).expect("parses");
        MappingSet::compile(&parsed, &mut d).expect("compiles")
    }

    const TABLE: &str = "PORT_ACCESS\n\n  TCP|*|*|*|*  $N500\n";

    #[test]
    fn a_reload_may_change_the_table_but_never_remove_it() {
        let path = Path::new("/etc/mappings");
        let running = set(TABLE);
        let changed = set("PORT_ACCESS\n\n  TCP|*|*|127.0.0.2|*  $Y\n  TCP|*|*|*|*  $N\n");
        assert_eq!(
            check_reload(Some(&running), path, Some(&changed), &[225]),
            Ok(())
        );
        for (new, reason) in [
            (None, "there is no mappings file /etc/mappings"),
            (Some(set("")), "/etc/mappings has no PORT_ACCESS table"),
            (
                Some(set("OTHER\n\n  a  b\n")),
                "/etc/mappings has no PORT_ACCESS table",
            ),
            (
                Some(set("PORT_ACCESS\n\n")),
                "the PORT_ACCESS table of /etc/mappings has no entries",
            ),
        ] {
            let err = check_reload(Some(&running), path, new.as_ref(), &[225]).expect_err(reason);
            assert!(err.starts_with(reason), "{err}");
        }
    }

    #[test]
    fn without_a_table_in_force_any_reload_applies() {
        let path = Path::new("/etc/mappings");
        assert_eq!(check_reload(None, path, None, &[225]), Ok(()));
        assert_eq!(check_reload(Some(&set("")), path, None, &[225]), Ok(()));
        assert_eq!(check_reload(None, path, Some(&set(TABLE)), &[225]), Ok(()));
    }

    #[test]
    fn a_reload_never_lets_in_a_stranger_the_table_in_force_refuses() {
        let path = Path::new("/etc/mappings");
        let seed = "PORT_ACCESS\n\n  TCP|*|225|1.2.3.4|* $Y\n  TCP|*|*|*|*  $N500\n";
        let running = set(seed);
        // Cut before its final refusal: everyone else is let in.
        let cut = set("PORT_ACCESS\n\n  TCP|*|225|1.2.3.4|* $Y\n");
        let err = check_reload(Some(&running), path, Some(&cut), &[225, 226]).unwrap_err();
        assert!(err.contains("would admit a stranger"), "{err}");
        // A relay added, or one removed: applies.
        let added = set(
            "PORT_ACCESS\n\n  TCP|*|225|1.2.3.4|* $Y\n  TCP|*|225|1.2.3.9|* $Y\n  TCP|*|*|*|* $N\n",
        );
        assert_eq!(
            check_reload(Some(&running), path, Some(&added), &[225, 226]),
            Ok(())
        );
        assert_eq!(
            check_reload(Some(&running), path, Some(&set(TABLE)), &[225]),
            Ok(())
        );
        // Opened on one port only: still a stranger let in there.
        let one_port = set("PORT_ACCESS\n\n  TCP|*|226|*|* $Y\n  TCP|*|*|*|* $N\n");
        assert!(check_reload(Some(&running), path, Some(&one_port), &[225, 226]).is_err());
        assert_eq!(
            check_reload(Some(&running), path, Some(&one_port), &[225]),
            Ok(())
        );
    }

    #[test]
    fn a_flood_is_logged_sixty_times_a_minute_and_then_summed_up() {
        let mut r = RefusalLog::default();
        let logged = (0..1000).filter(|_| r.record(1_000).0).count();
        assert_eq!(logged, 60);
        assert_eq!(r.record(61_000), (true, 940));
        assert_eq!(r.total, 1001);
    }
}
