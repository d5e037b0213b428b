//! The Maildir++ quota cache (`maildirsize` in a user's Maildir), so that checking a quota
//! does not read every file name of every folder for every recipient. Sun relays send
//! `XQUOTA=` with every `RCPT`, so without it a large mailbox would make every delivery to it
//! slow. The format is the one Courier, maildrop, Exim and Dovecot's `quota = maildir`
//! backend share (<https://www.courier-mta.org/imap/README.maildirquota.html>):
//!
//! ```text
//! 1000000S,1000C        the quota: octets (S) and messages (C); a part may be missing
//! 520312 87             the usage when the file was written: octets and messages
//! 1204 1                one line appended per delivery (negative for removals)
//! ```
//!
//! The usage is the sum of all lines after the first. The cache is recalculated (every
//! folder counted, a new file written in `tmp/` and renamed into place) when it is missing,
//! unreadable, longer than 5120 octets, or says the message does not fit: a refusal is
//! always based on an exact count, so removals the cache was not told about (a reader that
//! does not keep `maildirsize`) never refuse mail wrongly. After a delivery, `<size> 1` is
//! appended in one write (`O_APPEND`, so concurrent deliveries do not mix). The file is a
//! cache: it is not fsynced, and it is only kept for users who have a quota.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::store::Quota;

/// The file's name in the user's Maildir.
pub const FILE_NAME: &str = "maildirsize";
/// A cache longer than this is recalculated (the Maildir++ rule).
const MAX_CACHE_LEN: u64 = 5120;

/// Whether one more message of `size` octets fits `quota` for the Maildir at `user_dir`.
/// `count` counts the mailbox exactly (octets, messages); it is called only when the cache
/// cannot answer or says no.
pub fn admits(
    user_dir: &Path,
    quota: Quota,
    size: u64,
    count: impl FnOnce(&Path) -> io::Result<(u64, u64)>,
) -> io::Result<bool> {
    if let Some((bytes, messages)) = cached(user_dir) {
        if quota.admits(bytes, messages, size) {
            return Ok(true);
        }
    }
    let (bytes, messages) = count(user_dir)?;
    if let Err(e) = rewrite(user_dir, quota, bytes, messages) {
        log::warn!(
            "cannot write {}/{FILE_NAME}: {e}; quota checks count the mailbox every time",
            user_dir.display()
        );
    }
    Ok(quota.admits(bytes, messages, size))
}

/// Records a delivery of `size` octets, if the user has a cache.
pub fn record(user_dir: &Path, size: u64) {
    let opened = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(user_dir.join(FILE_NAME));
    let result = match opened {
        Ok(mut f) => f.write_all(format!("{size} 1\n").as_bytes()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        // The next check that needs it recounts.
        log::warn!("cannot update {}/{FILE_NAME}: {e}", user_dir.display());
    }
}

/// The usage the cache holds, if it is there, short enough and well-formed.
fn cached(user_dir: &Path) -> Option<(u64, u64)> {
    let path = user_dir.join(FILE_NAME);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MAX_CACHE_LEN {
        return None;
    }
    let text = fs::read_to_string(&path).ok()?;
    parse_usage(&text)
}

/// Sums the lines after the quota line; `None` when a line is malformed (also a last line
/// without its newline: a write in progress) or the sum is negative.
fn parse_usage(text: &str) -> Option<(u64, u64)> {
    let body = text.split_once('\n')?.1;
    if !body.is_empty() && !body.ends_with('\n') {
        return None;
    }
    let (mut bytes, mut messages) = (0i64, 0i64);
    for line in body.lines() {
        let mut fields = line.split_whitespace();
        let b: i64 = fields.next()?.parse().ok()?;
        let m: i64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() {
            return None;
        }
        bytes = bytes.checked_add(b)?;
        messages = messages.checked_add(m)?;
    }
    Some((u64::try_from(bytes).ok()?, u64::try_from(messages).ok()?))
}

/// The quota line: `1000S,10C`, a part left out when it is 0 (no limit).
fn quota_line(q: Quota) -> String {
    let mut parts = Vec::new();
    if q.bytes > 0 {
        parts.push(format!("{}S", q.bytes));
    }
    if q.messages > 0 {
        parts.push(format!("{}C", q.messages));
    }
    parts.join(",")
}

/// Replaces the cache with the exact usage: written in `tmp/`, renamed into place.
fn rewrite(user_dir: &Path, quota: Quota, bytes: u64, messages: u64) -> io::Result<()> {
    let tmp = user_dir.join("tmp").join(format!(
        "{FILE_NAME}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let text = format!("{}\n{bytes} {messages}\n", quota_line(quota));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f: File| f.write_all(text.as_bytes()));
    let renamed = written.and_then(|()| fs::rename(&tmp, user_dir.join(FILE_NAME)));
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn quota(bytes: u64, messages: u64) -> Quota {
        Quota { bytes, messages }
    }

    #[test]
    fn usage_lines_add_up_and_bad_files_are_not_trusted() {
        assert_eq!(parse_usage("100S,5C\n40 2\n10 1\n-5 -1\n"), Some((45, 2)));
        assert_eq!(parse_usage("100S\n"), Some((0, 0)));
        assert_eq!(parse_usage("100S\n40 2\n10"), None, "a write in progress");
        assert_eq!(parse_usage("100S\n40 x\n"), None);
        assert_eq!(parse_usage("100S\n-40 -2\n"), None, "negative usage");
        assert_eq!(parse_usage(""), None);
        assert_eq!(quota_line(quota(100, 0)), "100S");
        assert_eq!(quota_line(quota(0, 7)), "7C");
        assert_eq!(quota_line(quota(100, 7)), "100S,7C");
    }

    #[test]
    fn counted_once_then_answered_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let counts = Cell::new(0);
        let count = |_: &Path| {
            counts.set(counts.get() + 1);
            Ok((500, 5))
        };
        let q = quota(1000, 10);
        assert!(admits(dir.path(), q, 100, count).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1000S,10C\n500 5\n"
        );
        record(dir.path(), 100);
        assert!(admits(dir.path(), q, 100, count).unwrap());
        assert_eq!(counts.get(), 1, "the second check used the cache");
        // The cache says 600 + 501 does not fit: an exact count decides (500 + 501: right).
        assert!(!admits(dir.path(), q, 501, count).unwrap());
        assert_eq!(counts.get(), 2);
        // Removals the cache did not hear of: the recount finds room.
        let fewer = |_: &Path| Ok((100, 1));
        assert!(admits(dir.path(), q, 501, fewer).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1000S,10C\n100 1\n"
        );
        assert!(fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn a_long_cache_is_recounted() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let counted = Cell::new(false);
        let count = |_: &Path| {
            counted.set(true);
            Ok((10, 1))
        };
        admits(dir.path(), quota(1 << 30, 0), 1, count).unwrap();
        counted.set(false);
        for _ in 0..700 {
            record(dir.path(), 12345);
        }
        assert!(fs::metadata(dir.path().join(FILE_NAME)).unwrap().len() > MAX_CACHE_LEN);
        admits(dir.path(), quota(1 << 30, 0), 1, count).unwrap();
        assert!(counted.get());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1073741824S\n10 1\n"
        );
    }

    #[test]
    fn without_a_cache_a_delivery_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), 10);
        assert!(!dir.path().join(FILE_NAME).exists());
    }
}
