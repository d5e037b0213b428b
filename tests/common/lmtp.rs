//! A small LMTP client for the tests: replies read whole (multi-line), data dot-stuffed, and
//! after DATA one reply per accepted recipient read explicitly (unlike Python's
//! `smtplib.LMTP`, which reads only one).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use super::dispatcher::connect_from;

/// One reply: its code and its lines (text after `NNN-`/`NNN `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

pub struct Lmtp {
    reader: BufReader<TcpStream>,
}

impl Lmtp {
    /// Connects from `from` (a loopback address) and reads the greeting, which must be 220.
    pub fn connect(from: Ipv4Addr, to: SocketAddr) -> Lmtp {
        Lmtp::over(connect_from(from, to))
    }

    /// Speaks over a connection the caller made (from an IPv6 address, say) and reads the
    /// greeting, which must be 220.
    pub fn over(stream: TcpStream) -> Lmtp {
        let mut c = Lmtp {
            reader: BufReader::new(stream),
        };
        let greeting = c.reply();
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        c
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write to the server");
    }

    /// Reads one reply; panics at end of file.
    pub fn reply(&mut self) -> Reply {
        self.try_reply().expect("the server closed the connection")
    }

    /// Reads one reply, `None` at end of file.
    pub fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => panic!("reading a reply: {e}"),
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("not a reply line: {line:?}"));
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Sends a command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// LHLO, which must succeed.
    pub fn lhlo(&mut self) -> Reply {
        let r = self.cmd("LHLO test.example");
        assert_eq!(r.code, 250, "{r:?}");
        r
    }

    /// DATA, then `message` dot-stuffed and terminated, then one reply per accepted recipient.
    pub fn data(&mut self, message: &[u8], accepted: usize) -> Vec<Reply> {
        let r = self.cmd("DATA");
        assert_eq!(r.code, 354, "DATA: {r:?}");
        self.send(&dot_stuff(message));
        (0..accepted).map(|_| self.reply()).collect()
    }

    /// One transaction to one recipient, each step required to succeed up to DATA; the reply
    /// after the data.
    pub fn send_message(&mut self, from: &str, to: &str, message: &[u8]) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!(r.code, 250, "MAIL: {r:?}");
        let r = self.cmd(&format!("RCPT TO:<{to}>"));
        assert_eq!(r.code, 250, "RCPT: {r:?}");
        self.data(message, 1).remove(0)
    }

    /// QUIT, which must be answered 221.
    pub fn quit(mut self) {
        let r = self.cmd("QUIT");
        assert_eq!(r.code, 221, "{r:?}");
    }
}

/// `message` (CRLF lines) with leading dots doubled and the end-of-data line added.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Provisions `user`'s Maildir (`cur`, `new`, `tmp`) in the store of the installation at
/// `root`; `user` may name a folder (`alice/.Sent`). Every directory made is given to the
/// account the workers run as, as a provisioning tool run by the administrator would.
pub fn maildir(root: &std::path::Path, user: &str) -> std::path::PathBuf {
    let store = root.join("store");
    let dir = store.join(user);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create a Maildir");
    }
    let (uid, gid) = super::dispatcher::mail_ids();
    let mut path = store.clone();
    let below: Vec<_> = std::path::Path::new(user).components().collect();
    for c in below {
        path.push(c);
        nix::unistd::chown(&path, Some(uid), Some(gid)).expect("give the Maildir away");
    }
    for sub in ["cur", "new", "tmp"] {
        nix::unistd::chown(&dir.join(sub), Some(uid), Some(gid)).expect("give the Maildir away");
    }
    dir
}

/// The owner the layout gave the store `<root>/store` (uid, gid): the account the workers
/// run as. Whatever a test puts into the store must belong to it, as provisioning does.
pub fn store_owner(root: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(root.join("store")).expect("the store directory");
    (m.uid(), m.gid())
}

/// Gives `path` and everything below it (links themselves, not their targets) to `owner`.
pub fn give_to(path: &std::path::Path, owner: (u32, u32)) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("list a directory") {
            give_to(&entry.expect("a directory entry").path(), owner);
        }
    }
}

/// Every version of a service's LOGFILE (`name`, such as `tcp_lmtpss_server.log`) in the
/// installation at `root`, concatenated as octets: what a client may have smuggled into a log
/// must be seen as it is, not as text decoding would show it.
pub fn service_log_octets(root: &std::path::Path, name: &str) -> Vec<u8> {
    let prefix = format!("{name}-");
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("log"))
        .expect("log directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    versions.sort();
    versions
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}

/// Splits an mbox into its messages: (From_ line, content lines with the trailing empty
/// separator line removed).
pub fn mbox_messages(mbox: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut previous_blank = true;
    for line in mbox.split('\n') {
        if line.starts_with("From ") && previous_blank {
            if let Some((_, body)) = out.last_mut() {
                body.pop(); // the separator
            }
            out.push((line.to_string(), Vec::new()));
        } else {
            let (_, body) = out.last_mut().expect("an mbox starts with a From_ line");
            body.push(line.to_string());
        }
        previous_blank = line.is_empty();
    }
    if let Some((_, body)) = out.last_mut() {
        // The text ends with "\n\n": the split leaves the separator and an empty tail.
        assert_eq!(
            body.pop().as_deref(),
            Some(""),
            "mbox does not end in a newline"
        );
        assert_eq!(
            body.pop().as_deref(),
            Some(""),
            "last message lacks its separator"
        );
    }
    out
}

/// The first `Received:` line of a stored message (ours: it is the first trace field after
/// `Return-Path:`; its first line only), without its CRLF.
pub fn received_line(message: &str) -> &str {
    message
        .lines()
        .find(|l| l.starts_with("Received:"))
        .unwrap_or_else(|| panic!("no Received: line in {message:?}"))
}
