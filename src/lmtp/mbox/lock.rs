//! Locking a mailbox, so other local mail software and our other worker processes and
//! threads never see or write a half message: a per-mailbox mutex inside the process (POSIX
//! record locks do not exclude threads of one process), then a dot-lock `<user>.lock` created
//! atomically with `link()`, then an `fcntl` write lock on the mailbox. Each is tried without
//! blocking (the store retries), so no lock order can deadlock against other software.
//!
//! Our dot-lock carries a mark, `tcp_lmtpn_server <host> <pid>` and, once the append is
//! about to start, the mailbox's length before it and the mailbox file it was written for
//! (`<length> <device>:<inode>`): a lock of ours hard-linked under another mailbox's lock
//! name (possible where `fs.protected_hardlinks` is 0) then still names the file it was
//! taken for, and recovery never cuts any other. A lock is *ours* only when every one of
//! these holds, since anyone who can write the spool (a `1777` `/var/mail`) can plant a file
//! with any text: a regular file with one link, owned by the uid this process creates its
//! dot-locks with (its own: only it or root can make a file owned by it), holding exactly
//! our mark, naming this host. Then, and only then, a dead pid means a crash, and the length
//! says where a half-written message starts ([`Existing::Crashed`]); the store cuts it back.
//! Any other lock is never interpreted: it is respected until it is five minutes old, and
//! then removed ([`Existing::Stale`]).
//!
//! This module knows nothing of accounts, identities, quotas or the mbox format: it opens no
//! mailbox, and it removes a lock only when the store asks it to.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::log_text::untrusted_path;
use crate::safe_fs::{self, OpenError};

/// A dot-lock older than this is left over from a crash and is removed.
pub const STALE_DOT_LOCK: Duration = Duration::from_secs(300);
/// The mailbox mutex table is swept of unused entries when it grows past this.
const MUTEX_SWEEP_AT: usize = 1024;
/// What our dot-locks start with.
pub const LOCK_MARK: &str = "tcp_lmtpn_server";
/// No mark of ours is longer than this (name, host, two numbers).
const LONGEST_MARK: u64 = 512;

/// One mutex per mailbox in use, so threads of this process queue for a mailbox instead of
/// polling its dot-lock, and unrelated mailboxes never wait for each other.
#[derive(Default)]
pub struct MailboxMutexes(Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>);

impl MailboxMutexes {
    /// The mutex of the mailbox at `path`, shared by every thread delivering to it now.
    pub fn of(&self, path: &Path) -> Arc<Mutex<()>> {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = table.get(path).and_then(Weak::upgrade) {
            return m;
        }
        if table.len() >= MUTEX_SWEEP_AT {
            table.retain(|_, w| w.strong_count() > 0);
        }
        let m = Arc::new(Mutex::new(()));
        table.insert(path.to_path_buf(), Arc::downgrade(&m));
        m
    }
}

/// Takes this process's dot-locks.
pub struct DotLocker {
    /// This host's name as lock marks carry it (no `/` or space).
    pub host: String,
    /// The uid our dot-locks are owned by: this process's own, with which it creates them.
    pub uid: u32,
    /// Makes the temporary names of concurrent tries differ.
    counter: AtomicU64,
}

/// A lock that could not be tried: what failed, and why.
pub struct LockError(pub &'static str, pub io::Error);

/// The outcome of one try at a dot-lock.
pub enum Attempt {
    Locked(DotLock),
    /// Someone has the lock; what is known of it.
    Busy(Existing),
}

/// What is at a dot-lock's name that we did not just create.
#[derive(Debug)]
pub enum Existing {
    /// Nothing any more: try again.
    Gone,
    /// A holder has it (a live one, or one not yet known to be gone): wait. `odd` says why
    /// it is not a plain lock when it is something to tell the operator about (a symbolic
    /// link, a forged mark).
    Held { odd: Option<String> },
    /// Older than [`STALE_DOT_LOCK`] and not provably ours with a dead holder: to be
    /// removed, never interpreted.
    Stale(StaleLock),
    /// Provably ours, its holder gone: a crash, perhaps in the middle of an append.
    Crashed(CrashedLock),
}

/// A stale lock of unknown origin: the file judged stale, by identity.
#[derive(Debug)]
pub struct StaleLock {
    pub path: PathBuf,
    /// Its owner, for removing it with an identity that may in a sticky spool.
    pub owner: u32,
    pub age: Duration,
    dev: u64,
    ino: u64,
}

/// Our lock, left by a process of ours that is gone.
#[derive(Debug)]
pub struct CrashedLock {
    pub path: PathBuf,
    /// The mailbox it locks (the lock's name without `.lock`).
    pub mailbox: PathBuf,
    pub mark: LockMark,
    dev: u64,
    ino: u64,
}

/// The contents of one of our dot-locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockMark {
    pub host: String,
    pub pid: u32,
    /// What the append was about to do; none before the append started.
    pub length: Option<Noted>,
}

/// What a lock of ours notes just before its append starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noted {
    /// The mailbox's length before the append: where a half message would start.
    pub len: u64,
    /// The mailbox file appended to (`st_dev`, `st_ino`): the only file a recovery from
    /// this lock may cut back.
    pub dev: u64,
    pub ino: u64,
}

impl LockMark {
    /// The exact text of the mark: the only text a lock of ours can hold.
    fn text(&self) -> String {
        match self.length {
            Some(Noted { len, dev, ino }) => {
                format!("{LOCK_MARK} {} {} {len} {dev}:{ino}\n", self.host, self.pid)
            }
            None => format!("{LOCK_MARK} {} {}\n", self.host, self.pid),
        }
    }

    /// Reads a mark; `None` unless `text` is exactly what [`LockMark::text`] writes.
    pub fn parse(text: &str) -> Option<LockMark> {
        let line = text.strip_suffix('\n')?;
        let mut fields = line.split(' ');
        if fields.next()? != LOCK_MARK {
            return None;
        }
        let host = fields.next()?.to_string();
        let pid = fields.next()?.parse().ok()?;
        let length = match (fields.next(), fields.next()) {
            (None, _) => None,
            (Some(len), Some(file)) => {
                let (dev, ino) = file.split_once(':')?;
                Some(Noted {
                    len: len.parse().ok()?,
                    dev: dev.parse().ok()?,
                    ino: ino.parse().ok()?,
                })
            }
            (Some(_), None) => return None,
        };
        let mark = LockMark { host, pid, length };
        // No sign, leading zero, empty field, extra field or other byte: the one spelling.
        (fields.next().is_none() && mark.text() == text).then_some(mark)
    }
}

impl DotLocker {
    pub fn new(host: String) -> DotLocker {
        DotLocker {
            host,
            uid: safe_fs::effective_uid(),
            counter: AtomicU64::new(0),
        }
    }

    /// Tries once to create `<path>.lock`, with this process's own identity.
    pub fn try_lock(&self, path: &Path) -> Result<Attempt, LockError> {
        let lock = lock_path(path);
        let dir = path.parent().unwrap_or(Path::new("."));
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Unpredictable, so nobody can plant links at the names we will use.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(
            ".lk.{}.{}.{n}.{nanos}",
            std::process::id(),
            self.host
        ));
        let file = safe_fs::create_new(&tmp, OpenOptions::new().read(true).write(true), 0o600)
            .map_err(|e| LockError("cannot create a lock file", e))?;
        let mark = LockMark {
            host: self.host.clone(),
            pid: std::process::id(),
            length: None,
        };
        if let Err(e) = file.write_all_at(mark.text().as_bytes(), 0) {
            let _ = fs::remove_file(&tmp);
            return Err(LockError("cannot write a lock file", e));
        }
        let linked = fs::hard_link(&tmp, &lock);
        // A link() that reports an error may still have happened (NFS): then the lock file
        // is our file, which the link count of the file we hold open says.
        let ours = linked.is_ok() || file.metadata().is_ok_and(|m| m.nlink() == 2);
        let _ = fs::remove_file(&tmp);
        if ours {
            return match file.metadata() {
                Ok(m) => Ok(Attempt::Locked(DotLock {
                    path: lock,
                    file,
                    mark,
                    dev: m.dev(),
                    ino: m.ino(),
                })),
                Err(e) => Err(LockError("cannot examine our dot-lock", e)),
            };
        }
        match linked {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok(Attempt::Busy(self.examine(&lock)))
            }
            Err(e) => Err(LockError("cannot create the dot-lock", e)),
            Ok(()) => Ok(Attempt::Busy(Existing::Gone)),
        }
    }

    /// What the dot-lock at `lock` is (see [`Existing`]).
    pub fn examine(&self, lock: &Path) -> Existing {
        let meta = match fs::symlink_metadata(lock) {
            Ok(m) => m,
            Err(_) => return Existing::Gone,
        };
        let age = lock_age(&meta);
        let odd = match self.proof(lock, &meta) {
            Proof::Ours(mark) if !process_alive(mark.pid) => {
                return Existing::Crashed(CrashedLock {
                    path: lock.to_path_buf(),
                    mailbox: mailbox_of(lock),
                    mark,
                    dev: meta.dev(),
                    ino: meta.ino(),
                });
            }
            Proof::Ours(_) | Proof::Foreign => None,
            Proof::Gone => return Existing::Gone,
            Proof::Odd(why) => Some(why),
        };
        if age > STALE_DOT_LOCK {
            return Existing::Stale(StaleLock {
                path: lock.to_path_buf(),
                owner: meta.uid(),
                age,
                dev: meta.dev(),
                ino: meta.ino(),
            });
        }
        Existing::Held { odd }
    }

    /// Whether the file at `lock`, which `meta` describes, is provably one of ours.
    fn proof(&self, lock: &Path, meta: &fs::Metadata) -> Proof {
        if let Err(why) = safe_fs::check_metadata(meta, None) {
            // A planted link or a device is not a lock anyone would make.
            return Proof::Odd(why.to_string());
        }
        if meta.uid() != self.uid {
            // Other software's lock (a mail reader's), or a forgery: never read it.
            return Proof::Foreign;
        }
        let file = match safe_fs::open_existing(lock, OpenOptions::new().read(true), Some(self.uid))
        {
            Ok(Some(f)) => f,
            Ok(None) => return Proof::Gone,
            Err(OpenError::Unsafe(why)) => return Proof::Odd(why.to_string()),
            Err(OpenError::Io(_)) => return Proof::Foreign,
        };
        // The file read must be the one examined.
        if !file
            .metadata()
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        {
            return Proof::Gone;
        }
        let mut text = String::new();
        if (&file)
            .take(LONGEST_MARK)
            .read_to_string(&mut text)
            .is_err()
        {
            return Proof::Foreign;
        }
        match LockMark::parse(&text) {
            Some(mark) if mark.host == self.host => Proof::Ours(mark),
            // Another host's lock on a shared spool: its pid means nothing here.
            Some(_) => Proof::Foreign,
            // Ours by owner, not by content: a crash while the mark was being written (or
            // an empty file someone with our uid left).
            None => Proof::Foreign,
        }
    }

    /// Whether `crashed` is still the very lock judged crashed (same file, same mark):
    /// asked again once the mailbox's `fcntl` lock is held, so a lock another worker took
    /// since then is never mistaken for it.
    pub fn still_crashed(&self, crashed: &CrashedLock) -> bool {
        let Ok(meta) = fs::symlink_metadata(&crashed.path) else {
            return false;
        };
        (meta.dev(), meta.ino()) == (crashed.dev, crashed.ino)
            && matches!(self.proof(&crashed.path, &meta), Proof::Ours(m) if m == crashed.mark)
    }
}

/// How old a lock is, by its modification time. A time in the future (beyond a minute of
/// clock skew between hosts sharing a spool) counts as older than any stale age: whoever can
/// write the spool could otherwise `touch -d 2099-01-01` a lock and hold a mailbox for ever.
fn lock_age(meta: &fs::Metadata) -> Duration {
    const SKEW: Duration = Duration::from_secs(60);
    let Ok(modified) = meta.modified() else {
        return Duration::ZERO;
    };
    let now = SystemTime::now();
    match now.duration_since(modified) {
        Ok(age) => age,
        Err(ahead) if ahead.duration() <= SKEW => Duration::ZERO,
        Err(_) => Duration::MAX,
    }
}

/// What [`DotLocker::proof`] found.
enum Proof {
    Ours(LockMark),
    /// Someone else's, or not provably ours.
    Foreign,
    /// Not a plain file with one link: worth a line in the log.
    Odd(String),
    Gone,
}

impl StaleLock {
    /// Removes it, if it is still there; `false` when someone else removed or replaced it.
    pub fn remove(&self) -> io::Result<bool> {
        safe_fs::remove_if_same(&self.path, self.dev, self.ino)
    }
}

impl CrashedLock {
    /// Removes it, once whatever it guarded has been dealt with.
    pub fn remove(&self) -> io::Result<bool> {
        safe_fs::remove_if_same(&self.path, self.dev, self.ino)
    }
}

/// `MAIL_SPOOL/alice` → `MAIL_SPOOL/alice.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// `MAIL_SPOOL/alice.lock` → `MAIL_SPOOL/alice`.
fn mailbox_of(lock: &Path) -> PathBuf {
    let name = lock.as_os_str().as_encoded_bytes();
    let stem = name.strip_suffix(b".lock").unwrap_or(name);
    // SAFETY: the bytes came from an OsStr and at most an ASCII suffix was removed.
    PathBuf::from(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(stem) })
}

/// A held dot-lock, removed when dropped (also when a panic unwinds). A crash of the whole
/// process leaves it, naming this host and process and, once the append started, the
/// mailbox's length before it: the next delivery, or the next worker's start, can then tell
/// the holder is dead and cut a half-written message back.
pub struct DotLock {
    path: PathBuf,
    /// The lock file itself, so the mark is written into it and not into whatever may be at
    /// its name by then.
    file: File,
    mark: LockMark,
    dev: u64,
    ino: u64,
}

impl DotLock {
    /// Records, before the append starts, the mailbox file and the length to cut it back
    /// to should this process die in the middle of it. The new mark is longer than the old
    /// one, so it covers it whole. An error means the append must not start: a crash in it
    /// could not be cut back, and the relay's retry would store the half message again.
    pub fn note_length(&mut self, noted: Noted) -> io::Result<()> {
        self.mark.length = Some(noted);
        self.file.write_all_at(self.mark.text().as_bytes(), 0)
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        match safe_fs::remove_if_same(&self.path, self.dev, self.ino) {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "our dot-lock {} was removed or replaced by someone else",
                untrusted_path(&self.path)
            ),
            Err(e) => log::warn!(
                "cannot remove the dot-lock {}: {e}",
                untrusted_path(&self.path)
            ),
        }
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => false,
        _ => pid > 0,
    }
}

/// One try at an `fcntl` write lock on the whole file; `false` when another process has it.
pub fn try_fcntl_lock(file: &File) -> io::Result<bool> {
    // SAFETY: a zeroed flock is a valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: the descriptor is open for the duration of the call and `fl` outlives it.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
        _ => Err(e),
    }
}

/// For tests: makes the file at `path` older than the stale age.
#[cfg(test)]
pub fn make_stale(path: &Path) {
    let old = SystemTime::now() - STALE_DOT_LOCK * 2;
    let file = File::options()
        .write(true)
        .open(path)
        .expect("open the lock");
    file.set_modified(old).expect("backdate the lock");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locker() -> DotLocker {
        DotLocker::new("testhost".into())
    }

    /// A pid no process has (a child that has been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_mark_is_read_only_in_its_one_spelling() {
        let m = LockMark::parse("tcp_lmtpn_server h 12 34 5:6\n").unwrap();
        let noted = Noted {
            len: 34,
            dev: 5,
            ino: 6,
        };
        assert_eq!((m.host.as_str(), m.pid, m.length), ("h", 12, Some(noted)));
        assert_eq!(
            LockMark::parse("tcp_lmtpn_server h 12\n").unwrap().length,
            None
        );
        for forged in [
            "tcp_lmtpn_server h 12 34 5:6",
            "tcp_lmtpn_server h 12 34 5:6\n\n",
            "tcp_lmtpn_server h 012 34 5:6\n",
            "tcp_lmtpn_server h +12 34 5:6\n",
            "tcp_lmtpn_server h 12 34\n",
            "tcp_lmtpn_server h 12 34 5\n",
            "tcp_lmtpn_server h 12 34 5:6 7\n",
            "tcp_lmtpn_server h 12 34 05:6\n",
            "tcp_lmtpn_server  h 12 34 5:6\n",
            "tcp_lmtpn_server h 12 -1 5:6\n",
            "tcp_lmtpn_server h\n",
            "other h 12 34\n",
            "",
        ] {
            assert_eq!(LockMark::parse(forged), None, "{forged:?}");
        }
    }

    #[test]
    fn only_our_own_file_with_our_mark_and_a_dead_holder_is_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let l = locker();
        let lock = dir.path().join("alice.lock");
        let mark = format!("{LOCK_MARK} testhost {} 0 1:2\n", dead_pid());
        fs::write(&lock, &mark).unwrap();
        match l.examine(&lock) {
            Existing::Crashed(c) => {
                assert_eq!(c.mailbox, dir.path().join("alice"));
                let noted = Noted {
                    len: 0,
                    dev: 1,
                    ino: 2,
                };
                assert_eq!(c.mark.length, Some(noted));
                assert!(l.still_crashed(&c));
                // Replaced by another file with the same text: no longer the one judged.
                fs::remove_file(&lock).unwrap();
                fs::write(dir.path().join("spacer"), "").unwrap();
                fs::write(&lock, &mark).unwrap();
                let same_inode = fs::metadata(&lock).unwrap().ino() == c.ino;
                assert!(same_inode || !l.still_crashed(&c));
            }
            other => panic!("{other:?}"),
        }
        // Another host's, a live holder's, or a mark in another spelling: held.
        for text in [
            format!("{LOCK_MARK} otherhost {} 0 1:2\n", dead_pid()),
            format!("{LOCK_MARK} testhost {} 0 1:2\n", std::process::id()),
            format!("{LOCK_MARK} testhost {} 0 1:2 \n", dead_pid()),
            format!("{LOCK_MARK} testhost {} 0\n", dead_pid()),
        ] {
            fs::remove_file(&lock).unwrap();
            fs::write(&lock, &text).unwrap();
            assert!(
                matches!(l.examine(&lock), Existing::Held { odd: None }),
                "{text:?}"
            );
        }
        // A second link makes it not ours.
        fs::write(&lock, &mark).unwrap();
        fs::hard_link(&lock, dir.path().join("second")).unwrap();
        assert!(matches!(l.examine(&lock), Existing::Held { odd: Some(_) }));
        // A symbolic link to a file of ours with our mark is not a lock either.
        fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink(dir.path().join("second"), &lock).unwrap();
        match l.examine(&lock) {
            Existing::Held { odd: Some(why) } => assert!(why.contains("symbolic link"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lock_dated_in_the_future_is_stale_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let l = locker();
        let lock = dir.path().join("alice.lock");
        fs::write(&lock, "a mail reader's lock\n").unwrap();
        let year = Duration::from_secs(365 * 24 * 3600);
        fs::File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(SystemTime::now() + year)
            .unwrap();
        assert!(matches!(l.examine(&lock), Existing::Stale(_)));
    }

    #[test]
    fn a_lock_of_another_owner_is_never_read_and_goes_when_stale() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // only root can give a file to another owner
        }
        let dir = tempfile::tempdir().unwrap();
        let l = locker();
        let lock = dir.path().join("alice.lock");
        fs::write(
            &lock,
            format!("{LOCK_MARK} testhost {} 0 1:2\n", dead_pid()),
        )
        .unwrap();
        nix::unistd::chown(&lock, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        assert!(matches!(l.examine(&lock), Existing::Held { odd: None }));
        make_stale(&lock);
        match l.examine(&lock) {
            Existing::Stale(s) => {
                assert_eq!(s.owner, 4242);
                assert!(s.remove().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert!(!lock.exists());
    }

    #[test]
    fn our_lock_carries_our_mark_and_goes_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let l = locker();
        let mailbox = dir.path().join("bob");
        let Ok(Attempt::Locked(mut held)) = l.try_lock(&mailbox) else {
            panic!("the lock is free");
        };
        let lock = lock_path(&mailbox);
        let pid = std::process::id();
        assert_eq!(
            fs::read_to_string(&lock).unwrap(),
            format!("{LOCK_MARK} testhost {pid}\n")
        );
        held.note_length(Noted {
            len: 1234,
            dev: 7,
            ino: 8,
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(&lock).unwrap(),
            format!("{LOCK_MARK} testhost {pid} 1234 7:8\n")
        );
        assert!(matches!(
            l.try_lock(&mailbox),
            Ok(Attempt::Busy(Existing::Held { .. }))
        ));
        drop(held);
        assert!(!lock.exists());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
    }
}
