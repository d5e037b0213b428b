//! What travels in a takeover: the running dispatcher's offer of its listening sockets, as
//! text (the descriptors go with it as `SCM_RIGHTS`, in the same order).
//!
//! The offer is `OK <count> <pid>` and then one line per socket: `PORT <service> <address>`
//! for a service's port, `METRICS <address>` for the metrics endpoint. A refusal is the usual
//! `ERR <why>`.

use std::net::{SocketAddr, TcpListener};

/// The most sockets one takeover carries (what fits in one message's control data).
pub const MAX_LISTENERS: usize = 250;

/// What a handed-over socket is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// A port of the service of this name.
    Port { service: String },
    /// The metrics endpoint.
    Metrics,
}

/// A listening socket received from the old dispatcher.
#[derive(Debug)]
pub struct HandedOver {
    pub kind: ListenerKind,
    /// Where the old configuration said it listens.
    pub address: SocketAddr,
    pub listener: TcpListener,
}

/// The offer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub pid: u32,
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
}

/// The offer's text for these sockets.
pub fn encode_offer(pid: u32, listeners: &[(ListenerKind, SocketAddr)]) -> String {
    let mut out = format!("OK {} {pid}\n", listeners.len());
    for (kind, address) in listeners {
        match kind {
            ListenerKind::Port { service } => out.push_str(&format!("PORT {service} {address}\n")),
            ListenerKind::Metrics => out.push_str(&format!("METRICS {address}\n")),
        }
    }
    out
}

/// Reads an offer from what has arrived so far: `None` while it is incomplete, the refusal's
/// text for an `ERR`, or an error for anything else.
pub fn parse_offer(bytes: &[u8]) -> Result<Option<Result<Offer, String>>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the offer is not text".to_string())?;
    let mut lines = text.split_inclusive('\n');
    let Some(first) = lines.next().filter(|l| l.ends_with('\n')) else {
        return Ok(None);
    };
    let first = first.trim_end_matches('\n');
    if let Some(why) = first.strip_prefix("ERR ") {
        return Ok(Some(Err(why.to_string())));
    }
    let bad = || {
        format!(
            "not a takeover offer: `{}`",
            crate::log_text::untrusted(first)
        )
    };
    let mut head = first.strip_prefix("OK ").ok_or_else(bad)?.split(' ');
    let (Some(n), Some(pid), None) = (head.next(), head.next(), head.next()) else {
        return Err(bad());
    };
    let n: usize = n.parse().map_err(|_| bad())?;
    let pid: u32 = pid.parse().map_err(|_| bad())?;
    if n > MAX_LISTENERS {
        return Err(format!(
            "{n} listeners offered, at most {MAX_LISTENERS} are taken"
        ));
    }
    let mut listeners = Vec::new();
    for line in lines {
        let Some(line) = line.strip_suffix('\n') else {
            return Ok(None);
        };
        let bad = || format!("not a listener: `{}`", crate::log_text::untrusted(line));
        let words: Vec<&str> = line.split(' ').collect();
        let (kind, address) = match words.as_slice() {
            ["PORT", service, address] => (
                ListenerKind::Port {
                    service: service.to_string(),
                },
                address,
            ),
            ["METRICS", address] => (ListenerKind::Metrics, address),
            _ => return Err(bad()),
        };
        listeners.push((kind, address.parse().map_err(|_| bad())?));
    }
    match listeners.len() {
        k if k < n => Ok(None),
        k if k == n => Ok(Some(Ok(Offer { pid, listeners }))),
        k => Err(format!("{k} listeners described, {n} announced")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_reads_back_line_by_line() {
        let ls = vec![
            (
                ListenerKind::Port {
                    service: "LMTP".into(),
                },
                "[::]:225".parse().expect("addr"),
            ),
            (
                ListenerKind::Metrics,
                "127.0.0.1:9187".parse().expect("addr"),
            ),
        ];
        let text = encode_offer(42, &ls);
        for cut in 0..text.len() {
            assert_eq!(
                parse_offer(&text.as_bytes()[..cut]),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse_offer(text.as_bytes()),
            Ok(Some(Ok(Offer {
                pid: 42,
                listeners: ls
            })))
        );
    }

    #[test]
    fn refusals_and_garbage() {
        assert_eq!(
            parse_offer(b"ERR a takeover is already under way\n"),
            Ok(Some(Err("a takeover is already under way".into())))
        );
        for bad in [
            &b"HELLO\n"[..],
            b"OK x 1\n",
            b"OK 1 1 1\n",
            b"OK 1 7\nPORT A\n",
            b"OK 1 7\nPORT A nowhere\n",
            b"OK 0 7\nMETRICS 127.0.0.1:1\n",
            b"OK 999 7\n",
            b"\xff\n",
        ] {
            assert!(
                parse_offer(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
