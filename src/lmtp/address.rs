//! Recipients as the relays write them, and what may name a mailbox.
//!
//! A Messaging Server relay writes `RCPT TO:` as `uid+folder@domain`, with or without angle
//! brackets, and without `@domain` for users of the primary domain; other LMTP clients write
//! `<user@domain>`. Either way the local part is split at the first `+` into the user (case
//! does not matter: it is kept in lower case) and the folder (kept as written).
//!
//! Because the user and the folder become directory and file names, anything that could
//! leave the store is refused here with `550 5.1.3`: empty names, `.` at the start, `/`, `\`,
//! NUL and other control characters, and quoted local parts. The Sun relay's `+/path` form
//! for native delivery to a file is refused the same way (nothing is ever written to a file a
//! client names).

use super::reply::Reply;
use super::store::Quota;

/// Longest user or folder name accepted (a file name component on every file system).
pub const MAX_NAME: usize = 255;

/// One `RCPT TO:` recipient, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The path as the client wrote it, without angle brackets; replies quote it.
    pub written: String,
    /// The user: local part before any `+`, lower case.
    pub user: String,
    /// The folder after `+`, as written; `None` without a `+` (or with an empty one).
    pub folder: Option<String>,
    /// The domain, lower case; `None` when the relay left it out (primary domain).
    pub domain: Option<String>,
    /// `XQUOTA=bytes,messages` from the relay.
    pub quota: Option<Quota>,
    /// `XDFLG=n` from the relay (bit value 2: deliver even when over quota).
    pub flags: u32,
}

/// `XDFLG` bit: deliver even if the mailbox is over quota.
pub const XDFLG_IGNORE_QUOTA: u32 = 2;

impl Recipient {
    /// Parses the path of `RCPT TO:` (brackets already removed). Parameters are added by the
    /// caller.
    pub fn parse(path: &str) -> Result<Recipient, Reply> {
        // SMTPUTF8 is not offered: an address is ASCII (RFC 5321 4.1.2, RFC 6531 3.5). This
        // also refuses octets that were not UTF-8 at all (shown as U+FFFD), which would
        // otherwise make different addresses look alike.
        if !path.is_ascii() {
            return Err(Reply::new(
                553,
                "5.6.7",
                format!(
                    "<{}> Non-ASCII address: this server does not offer SMTPUTF8",
                    printable(path)
                ),
            ));
        }
        let (local, domain) = match path.rfind('@') {
            Some(at) => (&path[..at], Some(&path[at + 1..])),
            None => (path, None),
        };
        if local.starts_with('"') {
            return Err(bad(path, "quoted local parts do not name a mailbox here"));
        }
        if let Some(d) = domain {
            if d.is_empty() || d.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(bad(path, "the domain is empty or malformed"));
            }
        }
        let (user, folder) = match local.find('+') {
            Some(plus) => (&local[..plus], Some(&local[plus + 1..])),
            None => (local, None),
        };
        check_name(path, "user", user)?;
        let folder = match folder {
            None | Some("") => None,
            Some(f) => {
                check_name(path, "folder", f)?;
                Some(f.to_string())
            }
        };
        Ok(Recipient {
            written: path.to_string(),
            user: user.to_ascii_lowercase(),
            folder,
            domain: domain.map(str::to_ascii_lowercase),
            quota: None,
            flags: 0,
        })
    }

    /// Whether the relay asked for delivery even over quota.
    pub fn ignores_quota(&self) -> bool {
        self.flags & XDFLG_IGNORE_QUOTA != 0
    }
}

/// Refuses names that could leave the store or that no file system takes.
fn check_name(path: &str, what: &str, name: &str) -> Result<(), Reply> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('.') {
        Some("starts with `.`")
    } else if name.contains("..") {
        Some("contains `..`")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a slash")
    } else if name.chars().any(|c| c.is_control()) {
        Some("contains a control character")
    } else if name.len() > MAX_NAME {
        Some("is too long")
    } else {
        None
    };
    match why {
        Some(why) => Err(bad(path, &format!("the {what} name {why}"))),
        None => Ok(()),
    }
}

fn bad(path: &str, why: &str) -> Reply {
    Reply::new(
        550,
        "5.1.3",
        format!("<{}> Bad recipient address syntax: {why}", printable(path)),
    )
}

/// `s` with control characters shown as `?`, for replies and logs.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_a_sun_relay_sends() {
        let r = Recipient::parse("Alice+Sent@Example.COM").unwrap();
        assert_eq!(r.user, "alice");
        assert_eq!(r.folder.as_deref(), Some("Sent"));
        assert_eq!(r.domain.as_deref(), Some("example.com"));
        assert_eq!(r.written, "Alice+Sent@Example.COM");
        let r = Recipient::parse("bob").unwrap();
        assert_eq!((r.user.as_str(), r.folder, r.domain), ("bob", None, None));
        let r = Recipient::parse("bob+@x").unwrap();
        assert_eq!(r.folder, None);
    }

    #[test]
    fn non_ascii_addresses_are_refused_not_merged() {
        for path in [
            "jos\u{e9}@x",
            "jos\u{fffd}@x",
            "alice+F\u{f6}lder@x",
            "a@b\u{e9}",
        ] {
            let e = Recipient::parse(path).unwrap_err();
            assert_eq!((e.code, e.status), (553, "5.6.7"), "{path}");
        }
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "../etc@x",
            "..@x",
            "a/b@x",
            "+/etc/passwd",
            ".hidden@x",
            "a\u{0}b@x",
            "a\u{1}b@x",
            "alice+../x@x",
            "alice+a/b@x",
            "\"a b\"@x",
            "@x",
            "a@",
            "a\\b",
        ] {
            let e = Recipient::parse(bad).unwrap_err();
            assert_eq!((e.code, e.status), (550, "5.1.3"), "{bad:?}: {e}");
        }
    }
}
