//! Untrusted text in log lines: the one way anything a client, a worker or a file supplies
//! is written into a log.
//!
//! A log line is one line an operator greps and a log reader splits on newlines; text that
//! someone else controls (a worker's control message, a PORT_ACCESS probe, an address, an
//! LMTP argument) must not be able to end the line and start a forged one, hide itself with
//! terminal escapes or reorder what is shown with bidirectional controls. [`untrusted`] wraps
//! such text so that `{}` shows it on one line, escaped:
//!
//! * `\` as `\\`; newline, carriage return and tab as `\n`, `\r`, `\t`;
//! * every other control character (C0, DEL, C1) and the invisible format characters that
//!   change how a line reads (line and paragraph separators, bidirectional overrides and
//!   isolates, zero-width characters, the byte-order mark) as `\u{…}`;
//! * each byte that is not part of valid UTF-8 as `\xNN`.
//!
//! Everything else, non-ASCII letters included, is shown as it is, so `jörg@example.com` stays
//! readable. The escaping is reversible: no two inputs show the same.
//!
//! [`Throttle`] keeps a warning that every recipient would meet to one line per burst.

use std::fmt;

/// Bytes someone else controls, shown escaped by `Display` (see the module comment).
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(&'a [u8]);

/// Wraps `text` for a log line: `log::info!("from {}", untrusted(addr))`.
pub fn untrusted<T: AsRef<[u8]> + ?Sized>(text: &T) -> Untrusted<'_> {
    Untrusted(text.as_ref())
}

/// A path for a log line: it may hold names a client chose (a user, a folder) or that
/// someone planted, so it is shown as [`untrusted`] shows text, byte for byte.
pub fn untrusted_path(path: &std::path::Path) -> Untrusted<'_> {
    Untrusted(path.as_os_str().as_encoded_bytes())
}

/// `text` escaped as [`untrusted`] shows it, as a `String`.
pub fn escape<T: AsRef<[u8]> + ?Sized>(text: &T) -> String {
    untrusted(text).to_string()
}

/// Characters that are not controls but change how a line reads or hide text.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{2028}' | '\u{2029}'          // line and paragraph separators
        | '\u{061c}'                     // Arabic letter mark (a bidirectional control)
        | '\u{180e}'                     // Mongolian vowel separator (zero width)
        | '\u{200b}'..='\u{200d}'        // zero-width space, non-joiner, joiner
        | '\u{200e}' | '\u{200f}'        // left-to-right and right-to-left marks
        | '\u{202a}'..='\u{202e}'        // embeddings and overrides
        | '\u{2060}'..='\u{2064}'        // word joiner and invisible operators
        | '\u{2066}'..='\u{2069}'        // isolates
        | '\u{feff}') // byte-order mark
}

fn write_char(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if c.is_control() || is_invisible_format(c) => write!(f, "\\u{{{:x}}}", c as u32),
        c => write!(f, "{c}"),
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            let valid = chunk.valid();
            // Fast path: a run with nothing to escape is written whole.
            if valid
                .chars()
                .all(|c| c != '\\' && !c.is_control() && !is_invisible_format(c))
            {
                f.write_str(valid)?;
            } else {
                for c in valid.chars() {
                    write_char(f, c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Lets a recurring warning through once per `every` for each key (a path, say), so that a
/// fault every recipient meets (a spool gone, a lock planted) is logged once per burst, not
/// once per recipient, and yet again while it lasts.
pub struct Throttle {
    every: std::time::Duration,
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Throttle {
    /// Keys remembered at most; the table is forgotten past this (a warning may repeat).
    const KEYS: usize = 1024;

    pub fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            last: Default::default(),
        }
    }

    /// Whether the warning for `key` should be logged now.
    pub fn allows(&self, key: &str) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = last.get(key) {
            if now.duration_since(*at) < self.every {
                return false;
            }
        }
        if last.len() >= Self::KEYS {
            last.clear();
        }
        last.insert(key.to_string(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_non_ascii_letters_are_shown_as_they_are() {
        assert_eq!(escape("alice@example.com"), "alice@example.com");
        assert_eq!(escape("jörg@exämple.de"), "jörg@exämple.de");
    }

    #[test]
    fn a_newline_cannot_start_a_forged_line() {
        let forged = "ENDED 1\n2026-12-01 dispatcher: [LMTPSS] accepted from 10.0.0.1";
        let shown = escape(forged);
        assert!(!shown.contains('\n'));
        assert_eq!(
            shown,
            "ENDED 1\\n2026-12-01 dispatcher: [LMTPSS] accepted from 10.0.0.1"
        );
        assert_eq!(escape("a\r\n\tb"), "a\\r\\n\\tb");
    }

    #[test]
    fn controls_escapes_and_bidi_overrides_are_escaped() {
        assert_eq!(escape("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(escape("\0\x7f"), "\\u{0}\\u{7f}");
        assert_eq!(escape("\u{85}"), "\\u{85}");
        assert_eq!(escape("a\u{202e}b\u{2028}c"), "a\\u{202e}b\\u{2028}c");
        assert_eq!(escape("a\u{200b}b\u{61c}c"), "a\\u{200b}b\\u{61c}c");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(escape(b"caf\xe9 \xff"), "caf\\xe9 \\xff");
    }

    #[test]
    fn the_escaping_is_unambiguous() {
        assert_ne!(escape("\\n"), escape("\n"));
        assert_eq!(escape("\\n"), "\\\\n");
        assert_ne!(escape(b"\\x41"), escape(b"A"));
    }

    #[test]
    fn a_throttle_lets_one_warning_through_per_key_and_period() {
        let t = Throttle::new(std::time::Duration::from_secs(3600));
        assert!(t.allows("/var/mail"));
        assert!(!t.allows("/var/mail"));
        assert!(t.allows("/var/mail/alice.lock"));
        let t = Throttle::new(std::time::Duration::ZERO);
        assert!(t.allows("k") && t.allows("k"));
    }

    #[test]
    fn nothing_shown_holds_a_line_break_or_a_control() {
        let all: Vec<u8> = (0..=255u8).collect();
        let shown = escape(&all);
        assert!(shown.chars().all(|c| !c.is_control()));
    }
}
