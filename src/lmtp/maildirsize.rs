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
//!
//! Someone else may be able to write the Maildir, so the file is opened relative to the
//! user's directory descriptor and only when it is a regular file with one link owned by
//! this process's user ([`crate::safe_fs::open_existing_at`]): a link planted in its place
//! is never read or appended through. Such a file counts as no cache; the next count
//! replaces it (a rename replaces the link itself, never its target).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use nix::fcntl::OFlag;

use super::store::Quota;
use crate::log_text::untrusted_path;
use crate::safe_fs::{self, OpenError};

/// The file's name in the user's Maildir.
pub const FILE_NAME: &str = "maildirsize";
/// A cache longer than this is recalculated (the Maildir++ rule).
const MAX_CACHE_LEN: u64 = 5120;

/// A user's Maildir: its directory, opened without following links, and its path (for the
/// log, and for `count`).
#[derive(Clone, Copy)]
pub struct UserDir<'a> {
    pub fd: BorrowedFd<'a>,
    pub path: &'a Path,
}

impl UserDir<'_> {
    /// The cache, if it is there and safe to use; a refusal is logged with its path.
    fn open_cache(&self, access: OFlag) -> Option<File> {
        let owner = Some(safe_fs::effective_uid());
        match safe_fs::open_existing_at(self.fd, Path::new(FILE_NAME), access, owner) {
            Ok(f) => f,
            Err(OpenError::Unsafe(why)) => {
                log::warn!(
                    "refused {}/{FILE_NAME}: {why}; not used, replaced at the next count",
                    untrusted_path(self.path)
                );
                None
            }
            Err(OpenError::Io(e)) => {
                log::warn!("cannot open {}/{FILE_NAME}: {e}", untrusted_path(self.path));
                None
            }
        }
    }
}

/// Whether one more message of `size` octets fits `quota` for the Maildir `user`.
/// `count` counts the mailbox exactly (octets, messages); it is called only when the cache
/// cannot answer or says no. `dirs` lists the directories `count` reads (`new/`, `cur/` of
/// every folder): a delivery that changes one while the count runs makes the new cache
/// doubtful, and it is removed rather than trusted.
pub fn admits(
    user: UserDir<'_>,
    quota: Quota,
    size: u64,
    count: impl FnOnce(&Path) -> io::Result<(u64, u64)>,
    dirs: impl Fn(&Path) -> io::Result<Vec<PathBuf>>,
) -> io::Result<bool> {
    if let Some((bytes, messages)) = cached(user, quota) {
        if quota.admits(bytes, messages, size) {
            return Ok(true);
        }
    }
    let before = mtimes(&dirs(user.path)?);
    let (bytes, messages) = count(user.path)?;
    match rewrite(user, quota, bytes, messages) {
        Ok(()) => {
            let after = dirs(user.path).map(|d| mtimes(&d));
            if after.ok().as_ref() != Some(&before) {
                // A delivery ran alongside the count and may have appended its line to the
                // file just replaced: the next check counts again.
                let _ = nix::unistd::unlinkat(
                    user.fd,
                    FILE_NAME,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
        }
        Err(e) => log::warn!(
            "cannot write {}/{FILE_NAME}: {e}; quota checks count the mailbox every time",
            untrusted_path(user.path)
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
pub fn record(user: UserDir<'_>, size: u64) {
    if let Some(mut f) = user.open_cache(OFlag::O_WRONLY | OFlag::O_APPEND) {
        if let Err(e) = f.write_all(format!("{size} 1\n").as_bytes()) {
            // The next check that needs it recounts.
            log::warn!(
                "cannot update {}/{FILE_NAME}: {e}",
                untrusted_path(user.path)
            );
        }
    }
}

/// The usage the cache holds, if it is there, short enough, well-formed and for this quota
/// (the first line is the limit other programs read: a changed quota rewrites it).
fn cached(user: UserDir<'_>, quota: Quota) -> Option<(u64, u64)> {
    let mut file = user.open_cache(OFlag::O_RDONLY)?;
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

/// Replaces the cache with the exact usage: written under a new name in the Maildir's
/// `tmp/` (opened without following a link), renamed into place.
fn rewrite(user: UserDir<'_>, quota: Quota, bytes: u64, messages: u64) -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = safe_fs::open_dir_at(user.fd, Path::new("tmp"))?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let name = format!(
        "{FILE_NAME}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let text = format!("{}\n{bytes} {messages}\n", quota_line(quota));
    let written = safe_fs::create_new_at(tmp.as_fd(), Path::new(&name), OFlag::O_WRONLY, 0o600)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    let renamed = written.and_then(|()| {
        Ok(nix::fcntl::renameat(
            tmp.as_fd(),
            name.as_str(),
            user.fd,
            FILE_NAME,
        )?)
    });
    if renamed.is_err() {
        let _ = nix::unistd::unlinkat(
            tmp.as_fd(),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::os::fd::OwnedFd;

    fn quota(bytes: u64, messages: u64) -> Quota {
        Quota { bytes, messages }
    }

    fn no_dirs(_: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    /// The Maildir at `path`, opened as the store opens it.
    fn opened(path: &Path) -> OwnedFd {
        File::open(path).unwrap().into()
    }

    fn user<'a>(fd: &'a OwnedFd, path: &'a Path) -> UserDir<'a> {
        UserDir {
            fd: fd.as_fd(),
            path,
        }
    }

    #[test]
    fn a_changed_quota_rewrites_the_limit_line() {
        let dir = tempfile::tempdir().unwrap();
        let fd = opened(dir.path());
        let u = user(&fd, dir.path());
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let count = |_: &Path| Ok((500, 5));
        assert!(admits(u, quota(1000, 10), 1, count, no_dirs).unwrap());
        assert!(admits(u, quota(5000, 0), 1, count, no_dirs).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "5000S\n500 5\n"
        );
    }

    #[test]
    fn a_delivery_during_the_count_makes_the_new_cache_go() {
        let dir = tempfile::tempdir().unwrap();
        let fd = opened(dir.path());
        let u = user(&fd, dir.path());
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
        assert!(admits(u, quota(1000, 0), 1, racing, dirs).unwrap());
        assert!(!dir.path().join(FILE_NAME).exists());
        let quiet = |_: &Path| Ok((10, 1));
        assert!(admits(u, quota(1000, 0), 1, quiet, dirs).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1000S\n10 1\n"
        );
    }

    #[test]
    fn a_fifo_in_its_place_neither_blocks_nor_counts() {
        let dir = tempfile::tempdir().unwrap();
        let fd = opened(dir.path());
        let u = user(&fd, dir.path());
        fs::create_dir(dir.path().join("tmp")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join(FILE_NAME),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        record(u, 10);
        assert_eq!(cached(u, quota(1000, 0)), None);
        // The exact count decides, and the rename replaces the FIFO with a real cache.
        let count = |_: &Path| Ok((10, 1));
        assert!(admits(u, quota(1000, 0), 1, count, no_dirs).unwrap());
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
        let fd = opened(dir.path());
        let u = user(&fd, dir.path());
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let counts = Cell::new(0);
        let count = |_: &Path| {
            counts.set(counts.get() + 1);
            Ok((500, 5))
        };
        let q = quota(1000, 10);
        assert!(admits(u, q, 100, count, no_dirs).unwrap());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1000S,10C\n500 5\n"
        );
        record(u, 100);
        assert!(admits(u, q, 100, count, no_dirs).unwrap());
        assert_eq!(counts.get(), 1, "the second check used the cache");
        // The cache says 600 + 501 does not fit: an exact count decides (500 + 501: right).
        assert!(!admits(u, q, 501, count, no_dirs).unwrap());
        assert_eq!(counts.get(), 2);
        // Removals the cache did not hear of: the recount finds room.
        let fewer = |_: &Path| Ok((100, 1));
        assert!(admits(u, q, 501, fewer, no_dirs).unwrap());
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
        let fd = opened(dir.path());
        let u = user(&fd, dir.path());
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let counted = Cell::new(false);
        let count = |_: &Path| {
            counted.set(true);
            Ok((10, 1))
        };
        admits(u, quota(1 << 30, 0), 1, count, no_dirs).unwrap();
        counted.set(false);
        for _ in 0..700 {
            record(u, 12345);
        }
        assert!(fs::metadata(dir.path().join(FILE_NAME)).unwrap().len() > MAX_CACHE_LEN);
        admits(u, quota(1 << 30, 0), 1, count, no_dirs).unwrap();
        assert!(counted.get());
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "1073741824S\n10 1\n"
        );
    }

    #[test]
    fn without_a_cache_a_delivery_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fd = opened(dir.path());
        let u = user(&fd, dir.path());
        record(u, 10);
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn a_planted_link_is_neither_read_nor_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let fd = opened(dir.path());
        let u = user(&fd, dir.path());
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let victim = dir.path().join("victim");
        for plant in [
            |v: &Path, at: &Path| std::os::unix::fs::symlink(v, at),
            |v: &Path, at: &Path| fs::hard_link(v, at),
        ] {
            fs::write(&victim, "1000S\n0 0\n").unwrap();
            let _ = fs::remove_file(dir.path().join(FILE_NAME));
            plant(&victim, &dir.path().join(FILE_NAME)).unwrap();
            record(u, 10);
            assert_eq!(cached(u, quota(1000, 0)), None);
            let count = |_: &Path| Ok((900, 1));
            assert!(!admits(u, quota(1000, 0), 200, count, no_dirs).unwrap());
            assert_eq!(fs::read_to_string(&victim).unwrap(), "1000S\n0 0\n");
            // The count replaced the planted name with a cache of our own.
            let m = fs::symlink_metadata(dir.path().join(FILE_NAME)).unwrap();
            assert!(m.is_file() && std::os::unix::fs::MetadataExt::nlink(&m) == 1);
        }
    }
}
