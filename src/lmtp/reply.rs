//! LMTP replies: a three-digit code, an RFC 3463 enhanced status code and text.
//!
//! Every reply but the greeting and the LHLO reply carries an enhanced code (RFC 2034), whose
//! class digit agrees with the reply code. A reply renders as one line, or several with `-`
//! continuation when its text has several lines.

use std::fmt;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `"2.1.5"`; empty for the greeting and the LHLO reply.
    pub status: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    /// Appends the reply, CRLF-terminated, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    /// The reply on one line, as the delivery log shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
        } else {
            write!(
                f,
                "{} {} {}",
                self.code,
                self.status,
                self.text.replace('\n', " / ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let mut out = Vec::new();
        Reply::new(250, "2.1.5", "ok").write_to(&mut out);
        Reply::new(250, "", "host\nPIPELINING\nSIZE 10").write_to(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "250 2.1.5 ok\r\n250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn one_line_for_the_log() {
        assert_eq!(
            Reply::new(550, "5.1.1", "a\nb").to_string(),
            "550 5.1.1 a / b"
        );
    }
}
