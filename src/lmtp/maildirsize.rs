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
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::store::{open_regular, Quota};

/// The file's name in the user's Maildir.
pub const FILE_NAME: &str = "maildirsize";
/// A cache longer than this is recalculated (the Maildir++ rule).
const MAX_CACHE_LEN: u64 = 5120;

/// Whether one more message of `size` octets fits `quota` for the Maildir at `user_dir`.
/// `count` counts the mailbox exactly (octets, messages); it is called only when the cache
/// cannot answer or says no. `dirs` lists the directories `count` reads (`new/`, `cur/` of
/// every folder): a delivery that changes one while the count runs makes the new cache
/// doubtful, and it is removed rather than trusted.
pub fn admits(
    user_dir: &Path,
    quota: Quota,
    size: u64,
    count: impl FnOnce(&Path) -> io::Result<(u64, u64)>,
    dirs: impl Fn(&Path) -> io::Result<Vec<PathBuf>>,
) -> io::Result<bool> {
    if let Some((bytes, messages)) = cached(user_dir, quota) {
        if quota.admits(bytes, messages, size) {
            return Ok(true);
        }
    }
    let before = mtimes(&dirs(user_dir)?);
    let (bytes, messages) = count(user_dir)?;
    match rewrite(user_dir, quota, bytes, messages) {
        Ok(()) => {
            let after = dirs(user_dir).map(|d| mtimes(&d));
            if after.ok().as_ref() != Some(&before) {
                // A delivery ran alongside the count and may have appended its line to the
                // file just replaced: the next check counts again.
                let _ = fs::remove_file(user_dir.join(FILE_NAME));
            }
        }
        Err(e) => log::warn!(
            "cannot write {}/{FILE_NAME}: {e}; quota checks count the mailbox every time",
            user_dir.display()
        ),
    }
    Ok(quota.admits(bytes, messages, size))
}

/// The modification times of `dirs` (missing ones as `None`).
fn mtimes(dirs: &[PathBuf]) -> Vec<Option<SystemTime>> {
    dirs.iter()
        .map(|d| fs::metadata(d).and_then(|m| m.modified()).ok())
        .collect()
}

/// Records a delivery of `size` octets, if the user has a cache.
pub fn record(user_dir: &Path, size: u64) {
    let result = open_regular(
        &user_dir.join(FILE_NAME),
        OpenOptions::new().append(true).clone(),
    )
    .and_then(|f| match f {
        Some(mut f) => f.write_all(format!("{size} 1\n").as_bytes()),
        None => Ok(()),
    });
    if let Err(e) = result {
        // The next check that needs it recounts.
        log::warn!("cannot update {}/{FILE_NAME}: {e}", user_dir.display());
    }
}

/// The usage the cache holds, if it is there, short enough, well-formed and for this quota
/// (the first line is the limit other programs read: a changed quota rewrites it).
fn cached(user_dir: &Path, quota: Quota) -> Option<(u64, u64)> {
    let mut file = open_regular(
        &user_dir.join(FILE_NAME),
        OpenOptions::new().read(true).clone(),
    )
    .ok()??;
    if file.metadata().ok()?.len() > MAX_CACHE_LEN {
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    if text.split('\n').next() != Some(quota_line(quota).as_str()) {
        return None;
    }
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

/// Replaces the cache with the exact usage: written under a new name in `tmp/`, renamed
/// into place.
fn rewrite(user_dir: &Path, quota: Quota, bytes: u64, messages: u64) -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = user_dir.join("tmp").join(format!(
        "{FILE_NAME}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let text = format!("{}\n{bytes} {messages}\n", quota_line(quota));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
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

    fn no_dirs(_: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    #[test]
    fn a_changed_quota_rewrites_the_limit_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let count = |_: &Path| Ok((500, 5));
        assert!(admits(dir.path(), quota(1000, 10), 1, count, no_dirs).unwrap());
        assert!(admits(dir.path(), quota(5000, 0), 1, count, no_dirs).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "5000S\n500 5\n"
        );
    }

    #[test]
    fn a_delivery_during_the_count_makes_the_new_cache_go() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["tmp", "new", "cur"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        let dirs = |p: &Path| Ok(vec![p.join("new"), p.join("cur")]);
        let racing = |p: &Path| {
            // Another process links a message into new/ while this one counts.
            std::thread::sleep(std::time::Duration::from_millis(20));
            fs::write(p.join("new").join("1.M1P1Q1.h,S=10"), b"0123456789")?;
            Ok((0, 0))
        };
        assert!(admits(dir.path(), quota(1000, 0), 1, racing, dirs).unwrap());
        assert!(!dir.path().join(FILE_NAME).exists());
        let quiet = |_: &Path| Ok((10, 1));
        assert!(admits(dir.path(), quota(1000, 0), 1, quiet, dirs).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1000S\n10 1\n"
        );
    }

    #[test]
    fn a_fifo_in_its_place_neither_blocks_nor_counts() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join(FILE_NAME),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        record(dir.path(), 10);
        assert_eq!(cached(dir.path(), quota(1000, 0)), None);
        // The exact count decides, and the rename replaces the FIFO with a real cache.
        let count = |_: &Path| Ok((10, 1));
        assert!(admits(dir.path(), quota(1000, 0), 1, count, no_dirs).unwrap());
        assert!(fs::symlink_metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .is_file());
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
        assert!(admits(dir.path(), q, 100, count, no_dirs).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1000S,10C\n500 5\n"
        );
        record(dir.path(), 100);
        assert!(admits(dir.path(), q, 100, count, no_dirs).unwrap());
        assert_eq!(counts.get(), 1, "the second check used the cache");
        // The cache says 600 + 501 does not fit: an exact count decides (500 + 501: right).
        assert!(!admits(dir.path(), q, 501, count, no_dirs).unwrap());
        assert_eq!(counts.get(), 2);
        // Removals the cache did not hear of: the recount finds room.
        let fewer = |_: &Path| Ok((100, 1));
        assert!(admits(dir.path(), q, 501, fewer, no_dirs).unwrap());
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
        admits(dir.path(), quota(1 << 30, 0), 1, count, no_dirs).unwrap();
        counted.set(false);
        for _ in 0..700 {
            record(dir.path(), 12345);
        }
        assert!(fs::metadata(dir.path().join(FILE_NAME)).unwrap().len() > MAX_CACHE_LEN);
        admits(dir.path(), quota(1 << 30, 0), 1, count, no_dirs).unwrap();
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
