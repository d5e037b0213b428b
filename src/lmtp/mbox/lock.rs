//! Locking a mailbox, so other local mail software and our other worker processes and
//! threads never see or write a half message: a per-mailbox mutex inside the process (POSIX
//! record locks do not exclude threads of one process), then a dot-lock `<user>.lock` created
//! atomically with `link()`, then an `fcntl` write lock on the mailbox. Each is tried without
//! blocking (the store retries), so no lock order can deadlock against other software.
//!
//! A dot-lock older than five minutes is stale and removed. Our own dot-lock carries a mark
//! (host, pid, the mailbox's length before the append), so that a crash in the middle of an
//! append can be recovered from at once ([`recover_stale`]).
//!
//! This module knows nothing of accounts, quotas or the mbox format.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use super::super::store::open_regular;

/// A dot-lock older than this is left over from a crash and is removed.
const STALE_DOT_LOCK: Duration = Duration::from_secs(300);
/// The mailbox mutex table is swept of unused entries when it grows past this.
const MUTEX_SWEEP_AT: usize = 1024;

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

/// Takes this process's dot-locks in one spool.
pub struct DotLocker {
    /// This host's name as lock marks carry it (no `/` or space).
    pub host: String,
    /// Makes the temporary names of concurrent tries differ.
    counter: AtomicU64,
}

impl DotLocker {
    pub fn new(host: String) -> DotLocker {
        DotLocker {
            host,
            counter: AtomicU64::new(0),
        }
    }

    /// Tries once to create `<path>.lock`; `None` when someone else holds it.
    pub fn try_lock(&self, path: &Path) -> Result<Option<DotLock>, LockError> {
        let lock = lock_path(path);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".lk.{}.{}.{n}", std::process::id(), self.host));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| LockError("cannot create a lock file", e))?;
        let linked = fs::hard_link(&tmp, &lock);
        // A link() that reports an error may still have happened (NFS): then the lock file
        // is our file, which its link count says.
        let ours = linked.is_ok() || fs::symlink_metadata(&tmp).is_ok_and(|m| m.nlink() == 2);
        let _ = fs::remove_file(&tmp);
        if ours {
            return Ok(Some(DotLock(lock)));
        }
        match linked {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                recover_stale(&lock, &self.host, false);
                Ok(None)
            }
            Err(e) => Err(LockError("cannot create the dot-lock", e)),
            Ok(()) => Ok(None),
        }
    }
}

/// A lock that could not be tried: what failed, and why.
pub struct LockError(pub &'static str, pub io::Error);

/// `MAIL_SPOOL/alice` → `MAIL_SPOOL/alice.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// A held dot-lock, removed when dropped (also when a panic unwinds). A crash of the whole
/// process leaves it: it then names this host, the process and the mailbox's length before
/// the append, so the next delivery (or the next worker's start) can tell the holder is dead
/// at once and cut a half-written message back ([`recover_stale`]); a lock without that is
/// stale after five minutes.
pub struct DotLock(PathBuf);

/// What our dot-locks hold: `tcp_lmtpn_server <host> <pid> <mailbox length>`.
pub const LOCK_MARK: &str = "tcp_lmtpn_server";

impl DotLock {
    /// Records, before the append starts, the length to cut the mailbox back to should this
    /// process die in the middle of it.
    pub fn note_length(&self, host: &str, len: u64) {
        let noted = OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.0)
            .and_then(|mut f| {
                f.write_all(format!("{LOCK_MARK} {host} {} {len}\n", std::process::id()).as_bytes())
            });
        if let Err(e) = noted {
            log::warn!(
                "cannot note the mailbox length in {}: {e}",
                self.0.display()
            );
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0) {
            log::warn!("cannot remove the dot-lock {}: {e}", self.0.display());
        }
    }
}

/// Removes the dot-lock `lock` if it is stale: one of ours whose process is gone (same host,
/// no such pid), or any lock older than five minutes (`only_ours`: ours only, as at start).
/// When ours noted the mailbox length, the mailbox is first cut back to it under an `fcntl`
/// lock: an append the crash interrupted leaves no half message behind (it was never
/// acknowledged; the relay sends it again).
pub fn recover_stale(lock: &Path, host: &str, only_ours: bool) {
    let old = |m: &fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_DOT_LOCK)
    };
    let Ok(first) = fs::symlink_metadata(lock) else {
        return;
    };
    let mark = read_lock_mark(lock);
    let holder_gone = mark
        .as_ref()
        .is_some_and(|m| m.host == host && !process_alive(m.pid));
    if !holder_gone && (only_ours || !old(&first)) {
        return;
    }
    // Someone else may have judged it stale too, removed it and taken a fresh lock under the
    // same name: act only on the very file judged stale (same inode). The window left is the
    // one every dot-locking program has.
    let same = fs::symlink_metadata(lock)
        .is_ok_and(|now| now.ino() == first.ino() && now.dev() == first.dev());
    if !same {
        return;
    }
    if let Some(len) = mark.and_then(|m| m.length) {
        let name = lock.as_os_str().as_encoded_bytes();
        let Some(mailbox) = name.strip_suffix(b".lock") else {
            return;
        };
        // SAFETY: the bytes came from an OsStr and only an ASCII suffix was removed.
        let mailbox = Path::new(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(mailbox) });
        if !cut_back(mailbox, len) {
            return;
        }
    }
    if fs::remove_file(lock).is_ok() {
        log::warn!("removed the stale dot-lock {}", lock.display());
    }
}

/// The contents of one of our dot-locks.
struct LockMark {
    host: String,
    pid: i32,
    length: Option<u64>,
}

fn read_lock_mark(lock: &Path) -> Option<LockMark> {
    let mut f = open_regular(lock, OpenOptions::new().read(true).clone()).ok()??;
    let mut text = String::new();
    (&mut f).take(512).read_to_string(&mut text).ok()?;
    let mut fields = text.split_whitespace();
    if fields.next()? != LOCK_MARK {
        return None;
    }
    Some(LockMark {
        host: fields.next()?.to_string(),
        pid: fields.next()?.parse().ok()?,
        length: fields.next().and_then(|l| l.parse().ok()),
    })
}

fn process_alive(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => false,
        _ => pid > 0,
    }
}

/// Cuts `mailbox` back to `len` octets if it is longer; `false` when it cannot be done now
/// (someone holds its `fcntl` lock, or it cannot be opened), so the lock stays.
fn cut_back(mailbox: &Path, len: u64) -> bool {
    let opened = open_regular(mailbox, OpenOptions::new().read(true).write(true).clone());
    let file = match opened {
        Ok(Some(f)) => f,
        Ok(None) => return true,
        Err(e) => {
            log::warn!(
                "cannot check {} after a crashed delivery: {e}",
                mailbox.display()
            );
            return false;
        }
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !matches!(try_fcntl_lock(&file), Ok(true)) {
        return false;
    }
    if meta.len() > len {
        if let Err(e) = file.set_len(len).and_then(|()| file.sync_data()) {
            log::error!("cannot cut {} back to {len} octets: {e}", mailbox.display());
            return false;
        }
        log::warn!(
            "{}: cut back {} octets of a delivery a crash interrupted (never acknowledged)",
            mailbox.display(),
            meta.len() - len
        );
    }
    true
}

/// Opens the mailbox for appending, creating it for the account when missing; `true` when
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
