//! The smallest honest HTTP/1.x responder for the metrics endpoint, as pure functions:
//! [`parse`] a request from the bytes read so far, [`reply`] to decide the answer, and
//! [`response`] to write it. No sockets here; whoever serves the port reads until [`parse`]
//! says the request is whole (or bad, or too large), writes the response and closes.
//!
//! What it serves: `GET` and `HEAD` of `/metrics` (a query string is ignored). Everything is
//! answered with `Connection: close` and a `Content-Length`, so no chunking, keep-alive or
//! pipelining is needed. Header fields are read past, not interpreted (RFC 9112 section 2.2:
//! the request ends at the first empty line; a request with a body is not one we serve).

/// The longest request (request line and header fields) read; beyond it, `431`.
pub const MAX_REQUEST: usize = 8192;

/// The path the metrics are served at.
pub const METRICS_PATH: &str = "/metrics";

/// A request as far as it has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Not whole yet: read more.
    Incomplete,
    Get {
        path: String,
    },
    Head {
        path: String,
    },
    /// Another method (its name, for the `405`).
    Other {
        method: String,
    },
    /// Not an HTTP/1.x request; why.
    Bad(&'static str),
    /// No end of the header within [`MAX_REQUEST`] octets.
    TooLarge,
}

/// Reads a request from `buf` (everything received so far on the connection).
pub fn parse(buf: &[u8]) -> Request {
    let Some(end) = find(buf, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| find(buf, b"\n\n").map(|i| i + 2))
    else {
        return if buf.len() >= MAX_REQUEST {
            Request::TooLarge
        } else {
            Request::Incomplete
        };
    };
    if end > MAX_REQUEST {
        return Request::TooLarge;
    }
    let head = &buf[..end];
    let line_end = find(head, b"\n").unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Bad("the request line is not ASCII");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad("the request line is not `METHOD target HTTP/1.x`");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Request::Bad("not HTTP/1.0 or HTTP/1.1");
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Request::Bad("the method is not a word");
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Request::Bad("the target is not an absolute path");
    }
    // The query does not choose anything here.
    let path = target.split('?').next().unwrap_or(target).to_string();
    match method {
        "GET" => Request::Get { path },
        "HEAD" => Request::Head { path },
        other => Request::Other {
            method: other.to_string(),
        },
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The response to a whole request (not [`Request::Incomplete`]); `metrics` renders the body
/// of a `200` (called only then).
pub fn reply(request: &Request, metrics: impl FnOnce() -> String) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (head_only, path) = match request {
        Request::Get { path } => (false, path),
        Request::Head { path } => (true, path),
        Request::Other { .. } => {
            return with_header(
                response(
                    405,
                    "Method Not Allowed",
                    TEXT,
                    b"GET or HEAD only\n",
                    false,
                ),
                "Allow: GET, HEAD",
            )
        }
        Request::Bad(why) => {
            let body = format!("bad request: {why}\n");
            return response(400, "Bad Request", TEXT, body.as_bytes(), false);
        }
        Request::TooLarge => {
            let body = format!("request header over {MAX_REQUEST} octets\n");
            return response(
                431,
                "Request Header Fields Too Large",
                TEXT,
                body.as_bytes(),
                false,
            );
        }
        Request::Incomplete => {
            return response(400, "Bad Request", TEXT, b"incomplete request\n", false)
        }
    };
    if path != METRICS_PATH {
        let body = format!("not found; the metrics are at {METRICS_PATH}\n");
        return response(404, "Not Found", TEXT, body.as_bytes(), head_only);
    }
    let body = metrics();
    response(
        200,
        "OK",
        super::metrics::CONTENT_TYPE,
        body.as_bytes(),
        head_only,
    )
}

/// A whole response: status line, `Content-Type`, `Content-Length` (of `body`, also for
/// `HEAD`, whose body is left out), `Connection: close`, and the body.
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// `response` with one more header field, placed before the empty line.
fn with_header(mut response: Vec<u8>, field: &str) -> Vec<u8> {
    if let Some(i) = find(&response, b"\r\n\r\n") {
        let insert = format!("\r\n{field}");
        response.splice(i..i, insert.into_bytes());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &[u8]) -> String {
        String::from_utf8_lossy(r).into_owned()
    }

    #[test]
    fn a_get_of_metrics_is_whole_at_the_empty_line() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        assert_eq!(parse(&req[..req.len() - 2]), Request::Incomplete);
        assert_eq!(
            parse(req),
            Request::Get {
                path: "/metrics".into()
            }
        );
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Request::Head {
                path: "/metrics".into()
            }
        );
    }

    #[test]
    fn get_metrics_is_200_with_the_openmetrics_type_and_length() {
        let r = text(&reply(
            &Request::Get {
                path: "/metrics".into(),
            },
            || "# EOF\n".into(),
        ));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: application/openmetrics-text; version=1.0.0"));
        assert!(r.contains("Content-Length: 6\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n# EOF\n"), "{r}");
    }

    #[test]
    fn head_has_the_length_but_no_body() {
        let r = text(&reply(
            &Request::Head {
                path: "/metrics".into(),
            },
            || "# EOF\n".into(),
        ));
        assert!(r.contains("Content-Length: 6\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "{r}");
    }

    #[test]
    fn another_path_is_404_and_renders_nothing() {
        let r = text(&reply(&Request::Get { path: "/".into() }, || {
            panic!("rendered for a 404")
        }));
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
    }

    #[test]
    fn another_method_is_405_with_allow() {
        let req = parse(b"POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(
            req,
            Request::Other {
                method: "POST".into()
            }
        );
        let r = text(&reply(&req, String::new));
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n\r\n"), "{r}");
    }

    #[test]
    fn what_is_not_an_http_request_is_400() {
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"G3T /metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /m\xff HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let req = parse(bad);
            assert!(matches!(req, Request::Bad(_)), "{:?}: {req:?}", text(bad));
            assert!(text(&reply(&req, String::new)).starts_with("HTTP/1.1 400 "));
        }
    }

    #[test]
    fn a_header_over_the_limit_is_431() {
        let mut req = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        req.resize(MAX_REQUEST, b'a');
        assert_eq!(parse(&req), Request::TooLarge);
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&req), Request::TooLarge);
        let r = text(&reply(&Request::TooLarge, String::new));
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );
    }
}
