//! The control protocol's messages, both sides, as text (no sockets): what `docs/control.md`
//! describes.
//!
//! A client connects to the dispatcher's control socket, writes one request line, and reads
//! the reply until the dispatcher closes the connection. The reply's first line is `OK <text>`
//! or `ERR <text>`; what follows (the status table, the JSON document) is the body. Only a
//! takeover goes on after its first reply: the new dispatcher answers with `COMMIT` once its
//! workers are ready, or closes the connection to give up.

use std::fmt;

/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 1024;

/// The name of the control socket in `IMTA_LOG`.
pub const SOCKET_NAME: &str = "dispatcher.socket";

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The status table, or (`json`) the same as one JSON document.
    Status { json: bool },
    /// Read the configuration again and say whether it was applied.
    Reload,
    /// New workers for these services (`None`: every service); the old ones drain.
    Restart { service: Option<String> },
    /// The graceful stop of SIGTERM; the reply comes when it is done.
    Stop,
    /// A new dispatcher asks for the listening sockets.
    Takeover,
    /// The new dispatcher (this pid: not always the one that connected, which may have
    /// detached since) is ready: the old one stops accepting and hands over.
    Commit { pid: u32 },
    /// The new dispatcher holds the pid file and the control socket and accepts: the old one
    /// closes its listeners and drains.
    Done,
}

/// A request line that is not one of the above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl Request {
    /// Reads one request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, BadRequest> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut words = line.split(' ');
        let verb = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        let none = |r: Request| {
            if rest.is_empty() {
                Ok(r)
            } else {
                Err(BadRequest(format!("{verb} takes no argument")))
            }
        };
        match verb {
            "STATUS" => match rest.as_slice() {
                [] => Ok(Request::Status { json: false }),
                ["JSON"] => Ok(Request::Status { json: true }),
                _ => Err(BadRequest("STATUS takes only JSON".into())),
            },
            "RELOAD" => none(Request::Reload),
            "RESTART" => match rest.as_slice() {
                ["*"] => Ok(Request::Restart { service: None }),
                [name] if !name.is_empty() => Ok(Request::Restart {
                    service: Some(name.to_string()),
                }),
                _ => Err(BadRequest("RESTART takes one service name, or *".into())),
            },
            "STOP" => none(Request::Stop),
            "DONE" => none(Request::Done),
            "TAKEOVER" => none(Request::Takeover),
            "COMMIT" => match rest.as_slice() {
                [pid] if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => pid
                    .parse()
                    .map(|pid| Request::Commit { pid })
                    .map_err(|_| BadRequest("COMMIT takes a pid".into())),
                _ => Err(BadRequest("COMMIT takes a pid".into())),
            },
            "" => Err(BadRequest("empty request".into())),
            _ => Err(BadRequest(format!(
                "unknown request `{}`",
                crate::log_text::untrusted(verb)
            ))),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Status { json: false } => write!(f, "STATUS"),
            Request::Status { json: true } => write!(f, "STATUS JSON"),
            Request::Reload => write!(f, "RELOAD"),
            Request::Restart { service: None } => write!(f, "RESTART *"),
            Request::Restart { service: Some(s) } => write!(f, "RESTART {s}"),
            Request::Stop => write!(f, "STOP"),
            Request::Takeover => write!(f, "TAKEOVER"),
            Request::Commit { pid } => write!(f, "COMMIT {pid}"),
            Request::Done => write!(f, "DONE"),
        }
    }
}

/// A reply: whether it succeeded, its first line's text, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub text: String,
    pub body: String,
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply {
            ok: true,
            text: text.into(),
            body: String::new(),
        }
    }

    pub fn err(text: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            text: text.into(),
            body: String::new(),
        }
    }

    pub fn with_body(mut self, body: String) -> Reply {
        self.body = body;
        self
    }

    /// The reply as sent: the first line (its text on one line), then the body.
    pub fn encode(&self) -> Vec<u8> {
        let text = self.text.replace(['\n', '\r'], " ");
        let mut out = format!("{} {text}\n", if self.ok { "OK" } else { "ERR" }).into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }

    /// Reads a whole reply as received.
    pub fn decode(bytes: &[u8]) -> Result<Reply, BadRequest> {
        let text = String::from_utf8_lossy(bytes);
        let (first, body) = text.split_once('\n').unwrap_or((&text, ""));
        let (ok, rest) = if let Some(r) = first.strip_prefix("OK") {
            (true, r)
        } else if let Some(r) = first.strip_prefix("ERR") {
            (false, r)
        } else if first.is_empty() {
            return Err(BadRequest(
                "the dispatcher closed the connection without a reply".into(),
            ));
        } else {
            return Err(BadRequest(format!(
                "not a reply: `{}`",
                crate::log_text::untrusted(first)
            )));
        };
        Ok(Reply {
            ok,
            text: rest.strip_prefix(' ').unwrap_or(rest).to_string(),
            body: body.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_reads_back_as_written() {
        for r in [
            Request::Status { json: false },
            Request::Status { json: true },
            Request::Reload,
            Request::Restart { service: None },
            Request::Restart {
                service: Some("LMTP".into()),
            },
            Request::Stop,
            Request::Takeover,
            Request::Commit { pid: 42 },
            Request::Done,
        ] {
            assert_eq!(Request::parse(&r.to_string()), Ok(r.clone()), "{r}");
        }
        assert_eq!(Request::parse("RELOAD\r"), Ok(Request::Reload));
    }

    #[test]
    fn bad_requests_are_named() {
        for (line, why) in [
            ("", "empty"),
            ("reload", "unknown request `reload`"),
            ("RELOAD now", "RELOAD takes no argument"),
            ("RESTART", "one service name"),
            ("RESTART A B", "one service name"),
            ("STATUS XML", "only JSON"),
            ("COMMIT", "takes a pid"),
            ("COMMIT +1", "takes a pid"),
            ("HELLO\u{1b}[2J", "unknown request `HELLO\\u{1b}[2J`"),
        ] {
            let e = Request::parse(line).expect_err(line);
            assert!(e.0.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn replies_round_trip_and_keep_their_first_line_one_line() {
        let r = Reply::err("line 3\ncolumn 4").with_body("a\nb\n".into());
        let bytes = r.encode();
        assert!(bytes.starts_with(b"ERR line 3"), "{bytes:?}");
        let back = Reply::decode(&bytes).expect("decodes");
        assert!(!back.ok);
        assert_eq!(back.body, "a\nb\n");
        assert!(!back.text.contains('\n'));
        assert!(Reply::decode(b"").is_err());
        assert!(Reply::decode(b"HTTP/1.1 200 OK\r\n").is_err());
        assert_eq!(Reply::decode(b"OK\n").expect("bare OK").text, "");
    }
}
