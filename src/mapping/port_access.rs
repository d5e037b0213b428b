//! PORT_ACCESS: the decision the dispatcher makes for every connection it accepts.
//!
//! The probe is `TCP|server-address|server-port|client-address|client-port` (the local end
//! first). IPv6 addresses are written in their usual compressed form without brackets; an
//! IPv4 client reaching an IPv6 socket (`::ffff:a.b.c.d`) is written as plain IPv4, so tables
//! written for IPv4 keep working on dual-stack listeners.
//!
//! The result rejects when it carries `$N` or `$F`; anything else, including no matching entry,
//! accepts. Flags that take a text argument read them from the output string, split at `|`
//! in this order (PMDF Table 11-1, with Sun's `$>` after `$<`): `$<`, `$>`, `$N`/`$F`; the last
//! flag present takes the rest of the string, so its text may contain `|`. Text after `||` is
//! for the connection log. In the reject text, `$ ` has already become a space and `~`
//! separates the lines of a multi-line reply (Messaging Server 8.0.1.3); each line is sent
//! followed by CRLF.
//!
//! Logging (Sun 6 semantics): `$<text` is logged whenever the entry applies, `$>text` only when
//! the connection is rejected, and `$T` asks for the rejection to be written to the connection
//! log. The decision is a pure function of the table and the probe.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::table::{InputFlags, MappingSet, Notes, Table, Walk};
use super::template::Flags;

/// The table the dispatcher consults.
pub const TABLE: &str = "PORT_ACCESS";

/// What to do with a connection, and what to log about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// `$<` text: log it.
    pub log_match: Option<String>,
    /// `$>` text: log it (set only on rejection).
    pub log_reject: Option<String>,
    /// `$T` with a rejection: write a connection-log record.
    pub connection_log: bool,
    /// Text after `||`, for the connection log.
    pub connection_text: Option<String>,
    /// What the mapping met that deserves a warning in the log.
    pub notes: Notes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Send [`Verdict::reply`] (the text's lines, each ending in CRLF), then close.
    Reject {
        text: String,
    },
}

impl Verdict {
    /// Whether the connection is let in.
    pub fn accepts(&self) -> bool {
        matches!(self, Verdict::Accept)
    }

    /// What the client receives before the close: `~` separates lines, each line ends in
    /// CRLF; an empty text sends nothing.
    pub fn reply(&self) -> String {
        match self {
            Verdict::Accept => String::new(),
            Verdict::Reject { text } => reply_lines(text),
        }
    }
}

/// The probe string for a connection from `client` to `server`.
pub fn probe(server: SocketAddr, client: SocketAddr) -> String {
    format!(
        "TCP|{}|{}|{}|{}",
        address_text(server.ip()),
        server.port(),
        address_text(client.ip()),
        client.port()
    )
}

/// An address as the probe writes it: IPv6 compressed without brackets, an IPv4 client of a
/// dual-stack socket as plain IPv4.
fn address_text(ip: IpAddr) -> String {
    crate::net_address::unmapped(ip).to_string()
}

/// Decides on a probe string.
pub fn decide(set: &MappingSet, probe: &str) -> Decision {
    decide_with(set, probe, Walk::Auto)
}

/// [`decide`] with a chosen walk of the table (the linear one is the index's oracle).
pub fn decide_with(set: &MappingSet, probe: &str, walk: Walk) -> Decision {
    let mut notes = Notes::default();
    let mapped = set.map_with(TABLE, probe, &InputFlags::new(), &mut notes, walk);
    let mut decision = Decision {
        verdict: Verdict::Accept,
        log_match: None,
        log_reject: None,
        connection_log: false,
        connection_text: None,
        notes,
    };
    let Some(m) = mapped else {
        return decision;
    };
    let (args_text, connection_text) = match m.output.split_once("||") {
        Some((a, c)) => (a.to_string(), Some(c.to_string())),
        None => (m.output.clone(), None),
    };
    decision.connection_text = connection_text;
    let reject = m.flags.contains(&'N') || m.flags.contains(&'F');
    let mut args = Arguments::new(&m.flags, &args_text);
    let log_match = args.take(m.flags.contains(&'<'));
    let log_reject = args.take(m.flags.contains(&'>'));
    let reject_text = args.take(reject);
    decision.log_match = log_match;
    if reject {
        decision.log_reject = log_reject;
        decision.connection_log = m.flags.contains(&'T');
        decision.verdict = Verdict::Reject {
            text: reject_text.unwrap_or_default(),
        };
    }
    decision
}

/// The arguments of the flags present, in reading order, from the `|`-separated output.
struct Arguments {
    parts: std::collections::VecDeque<String>,
}

impl Arguments {
    fn new(flags: &Flags, text: &str) -> Arguments {
        let wanted = ['<', '>'].iter().filter(|f| flags.contains(f)).count()
            + usize::from(flags.contains(&'N') || flags.contains(&'F'));
        let parts = if wanted == 0 {
            Default::default()
        } else {
            text.splitn(wanted, '|').map(str::to_string).collect()
        };
        Arguments { parts }
    }

    /// The next argument, for a flag that is `present` (in reading order).
    fn take(&mut self, present: bool) -> Option<String> {
        present.then(|| self.parts.pop_front().unwrap_or_default())
    }
}

/// `a~b` → `a\r\nb\r\n`; an empty text sends nothing.
fn reply_lines(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    text.split('~').map(|l| format!("{l}\r\n")).collect()
}

/// The PORT_ACCESS table of `set` if it can refuse anything (it has an entry). A table with
/// no entries accepts every connection, as no table does, so it counts as none.
pub fn judging_table(set: Option<&MappingSet>) -> Option<&Table> {
    set.and_then(|s| s.table(TABLE))
        .filter(|t| !t.entries().is_empty())
}

/// Why the configuration read from `mappings` (`set`: `None` when the file is absent) accepts
/// every connection; `None` when a PORT_ACCESS table judges them.
pub fn missing_table(mappings: &Path, set: Option<&MappingSet>) -> Option<String> {
    if judging_table(set).is_some() {
        return None;
    }
    let path = mappings.display();
    Some(match set {
        None => format!("there is no mappings file {path}"),
        Some(s) if s.table(TABLE).is_some() => {
            format!("the PORT_ACCESS table of {path} has no entries")
        }
        Some(_) => format!("{path} has no PORT_ACCESS table"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::Diagnostics;
    use crate::config::mappings;
    use std::path::Path;
    use std::sync::Arc;

    /// The PORT_ACCESS table of `fixtures/test_mapping/logging`, compiled.
    fn logging_table() -> MappingSet {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/test_mapping/logging");
        let text = std::fs::read_to_string(&path).expect("fixture");
        let file: Arc<Path> = Arc::from(path.as_path());
        let mut d = Diagnostics::default();
        let m = mappings::parse_str(&file, &text, &mut d).expect("parses");
        MappingSet::compile(&m, &mut d).expect("compiles")
    }

    #[test]
    fn log_match_text_and_reject_text_split_at_the_bar() {
        let d = decide(&logging_table(), "TCP|10.0.0.1|25|192.0.2.66|3333");
        assert_eq!(d.log_match.as_deref(), Some("Blocked smtp from 192.0.2.66"));
        assert_eq!(d.verdict.reply(), "550 go away\r\n");
        assert!(!d.connection_log);
    }

    #[test]
    fn log_reject_text_multi_line_reply_and_connection_log_flag() {
        let d = decide(&logging_table(), "TCP|10.0.0.1|25|192.0.2.67|3333");
        assert_eq!(d.log_reject.as_deref(), Some("refused 192.0.2.67"));
        assert_eq!(d.verdict.reply(), "421-busy\r\n421 try later\r\n");
        assert!(d.connection_log);
        assert_eq!(d.log_match, None);
    }

    #[test]
    fn accept_with_connection_log_text() {
        let d = decide(&logging_table(), "TCP|10.0.0.1|25|192.0.2.68|3333");
        assert_eq!(d.verdict, Verdict::Accept);
        assert_eq!(d.connection_text.as_deref(), Some("relay 68"));
    }

    #[test]
    fn f_rejects_like_n_and_no_table_accepts() {
        let d = decide(&logging_table(), "TCP|10.0.0.1|587|192.0.2.1|3333");
        assert_eq!(d.verdict, Verdict::Reject { text: "no".into() });
        let d = decide(&MappingSet::default(), "TCP|10.0.0.1|587|192.0.2.1|3333");
        assert_eq!(d.verdict, Verdict::Accept);
    }

    #[test]
    fn probe_puts_the_server_first_and_unmaps_ipv4() {
        let server: SocketAddr = "[::ffff:10.0.0.1]:225".parse().expect("addr");
        let client: SocketAddr = "127.0.0.9:4000".parse().expect("addr");
        assert_eq!(probe(server, client), "TCP|10.0.0.1|225|127.0.0.9|4000");
        let v6: SocketAddr = "[2001:db8::1]:226".parse().expect("addr");
        assert_eq!(probe(v6, v6), "TCP|2001:db8::1|226|2001:db8::1|226");
    }

    #[test]
    fn multi_line_text_becomes_crlf_lines() {
        assert_eq!(reply_lines("421-a~421 b"), "421-a\r\n421 b\r\n");
        assert_eq!(reply_lines(""), "");
    }
}
