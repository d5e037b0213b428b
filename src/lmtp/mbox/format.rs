//! The mbox format, as `mail`, `mutt`, Dovecot's `mbox` driver and Postfix's `local` read and
//! write it: the `From sender asctime-date` line that starts a message, LF line ends, mboxrd
//! quoting (`^>*From ` gets one more `>`), the empty line after each message, and what must
//! precede a new message when another program left the file without that empty line.
//!
//! Pure text: this module opens no file and takes no lock (the store does both).

use std::io;
use std::path::Path;

use super::super::body::{Body, Sink};
use super::super::store::Message;

/// The message as it is appended: `From ` line, LF line ends, mboxrd quoting, empty line.
/// Built once per message for all its recipients, in memory or (for a large message) in a
/// temporary file in `spill_dir`.
pub fn mbox_text(message: &Message<'_>, spill_dir: &Path) -> io::Result<Body> {
    let sender = if message.sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        message.sender
    };
    let sender: String = sender
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut out = Body::new(spill_dir);
    out.put(
        format!(
            "From {sender} {}\n",
            super::super::trace::asctime_date(message.received)
        )
        .as_bytes(),
    )?;
    let mut lines = MboxLines::default();
    lines.feed(message.trace, &mut out)?;
    message.body.chunks(|c| lines.feed(c, &mut out))?;
    lines.finish(&mut out)?;
    Ok(out)
}

/// Turns CRLF line ends into LF and quotes `^>*From ` lines (mboxrd), over input that
/// arrives in pieces cut anywhere.
#[derive(Default)]
struct MboxLines {
    /// The start of the current line while it may still turn out to be `>*From `.
    head: Vec<u8>,
    /// The current line is past the point where quoting is decided.
    decided: bool,
    /// A CR was seen and the next octet says whether it ends the line.
    cr: bool,
    out: Vec<u8>,
}

/// A line start of this many `>` is written as it is (no such line is quoted).
const MAX_QUOTE_HEAD: usize = 4096;

impl MboxLines {
    fn feed(&mut self, bytes: &[u8], sink: &mut impl Sink) -> io::Result<()> {
        for &b in bytes {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.end_line();
                    continue;
                }
                self.octet(b'\r');
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => self.end_line(),
                _ => self.octet(b),
            }
        }
        sink.put(&self.out)?;
        self.out.clear();
        Ok(())
    }

    fn octet(&mut self, b: u8) {
        if self.decided {
            self.out.push(b);
            return;
        }
        self.head.push(b);
        let quotes = self.head.iter().take_while(|&&c| c == b'>').count();
        let rest = &self.head[quotes..];
        let undecided = (rest.is_empty() && quotes < MAX_QUOTE_HEAD)
            || (rest.len() < 5 && b"From ".starts_with(rest));
        if undecided {
            return;
        }
        if rest.starts_with(b"From ") {
            self.out.push(b'>');
        }
        self.out.append(&mut self.head);
        self.decided = true;
    }

    fn end_line(&mut self) {
        self.out.append(&mut self.head);
        self.out.push(b'\n');
        self.decided = false;
    }

    /// Ends the text: a last line without its line end gets one, then the empty line.
    fn finish(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        if self.cr {
            self.cr = false;
            self.octet(b'\r');
        }
        if self.decided || !self.head.is_empty() {
            self.end_line();
        }
        self.out.push(b'\n');
        sink.put(&self.out)?;
        self.out.clear();
        Ok(())
    }
}

/// What must precede a new message so that it starts after an empty line, given the last
/// two octets of the mailbox (fewer when it is shorter): an mbox written by other software
/// may lack the final empty line.
pub fn separator_after(tail: &[u8]) -> &'static [u8] {
    match tail {
        [] | [b'\n'] | [b'\n', b'\n'] => b"",
        [.., b'\n'] => b"\n",
        _ => b"\n\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// The mbox text of a message whose body arrives in pieces of `piece` octets (so that
    /// line starts, `From ` and CRLF are cut at every place), spilled when it passes
    /// `spill_at`.
    fn text_of(sender: &str, body: &[u8], piece: usize, spill_at: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Body::with_spill_at(dir.path(), spill_at);
        for c in body.chunks(piece) {
            b.put(c).unwrap();
        }
        let m = Message {
            id: "T.1.1",
            sender,
            trace: b"Return-Path: <s@x>\r\n",
            body: &b,
            received: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        };
        let text = mbox_text(&m, dir.path()).unwrap();
        let mut out = Vec::new();
        text.chunks(|c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn quoting_is_the_same_whatever_the_pieces() {
        let body = b"From a\r\n>From b\r\n>>>>From c\r\nFrom\r\nFro\r\n>>\r\n\rx\r\r\nend";
        let whole = text_of("", body, body.len(), usize::MAX);
        for piece in 1..body.len() {
            for spill_at in [1, 7, usize::MAX] {
                assert_eq!(
                    text_of("", body, piece, spill_at),
                    whole,
                    "{piece} {spill_at}"
                );
            }
        }
        let (_, rest) = whole.split_once('\n').unwrap();
        assert_eq!(
            rest,
            "Return-Path: <s@x>\n>From a\n>>From b\n>>>>>From c\nFrom\nFro\n>>\n\rx\r\nend\n\n"
        );
    }

    #[test]
    fn from_line_lf_and_mboxrd_quoting() {
        let text = text_of(
            "",
            b"Subject: x\r\n\r\nFrom me\r\n>From you\r\n>>From them\r\nFromage\r\n>x\r\nlast",
            1 << 20,
            usize::MAX,
        );
        let (first, rest) = text.split_once('\n').expect("From_ line");
        assert!(first.starts_with("From MAILER-DAEMON "), "{first}");
        assert_eq!(first.len(), "From MAILER-DAEMON ".len() + 24, "{first}");
        assert_eq!(
            rest,
            "Return-Path: <s@x>\nSubject: x\n\n>From me\n>>From you\n>>>From them\nFromage\n>x\nlast\n\n"
        );
        let spaced = text_of("a b@c", b"x\r\n", 1, usize::MAX);
        assert!(spaced.starts_with("From a_b@c "), "{spaced}");
    }

    #[test]
    fn a_message_always_starts_after_an_empty_line() {
        assert_eq!(separator_after(b""), b"");
        assert_eq!(separator_after(b"\n"), b"");
        assert_eq!(separator_after(b"\n\n"), b"");
        assert_eq!(separator_after(b"x\n"), b"\n");
        assert_eq!(separator_after(b"x"), b"\n\n");
        assert_eq!(separator_after(b"xy"), b"\n\n");
    }
}
