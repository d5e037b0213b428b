//! The native mailboxes of `tcp_lmtpn_server`: one mbox file per local account in a spool
//! directory (`MAIL_SPOOL`, `/var/mail/` by default), as `mail`, `mutt`, Dovecot's `mbox`
//! driver and Postfix's `local` read and write them.
//!
//! A recipient is known when `getpwnam()` finds the account. A delivery appends, in one
//! `write`, a `From sender asctime-date` line, the message with CRLF turned into LF and
//! mboxrd quoting (`^>*From ` gets one more `>`), and an empty line; then `fsync`s the file
//! (and the spool directory when the file is new) before the recipient's `Ok`.
//!
//! Locking, so other local mail software and our other worker processes and threads never
//! see or write a half message: a per-mailbox mutex inside the process (POSIX record locks do
//! not exclude threads of one process), then a dot-lock `<user>.lock` created atomically with
//! `link()` and an `fcntl` write lock on the mailbox. Both are taken without blocking and
//! retried, so no lock order can deadlock against other software; a dot-lock older than five
//! minutes is stale and removed.
//!
//! Safety: the mailbox is opened with `O_NOFOLLOW`; an existing one must be a regular file
//! owned by the account with one link; a new one is created `0600` (`O_EXCL`) and given to
//! the account. A failed append is truncated back to the old length.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::{Uid, User};

use super::address::Recipient;
use super::body::{Body, Sink};
use super::reply::Reply;
use super::store::{io_failure, open_regular, over_quota, Message, Quota, Store, Target};

/// A dot-lock older than this is left over from a crash and is removed.
const STALE_DOT_LOCK: Duration = Duration::from_secs(300);
/// First pause between lock tries; it doubles up to the configured `SLEEP_TIME`.
const FIRST_LOCK_PAUSE: Duration = Duration::from_millis(5);
/// The mailbox mutex table is swept of unused entries when it grows past this.
const MUTEX_SWEEP_AT: usize = 1024;

/// How the spool is set up.
#[derive(Debug, Clone)]
pub struct MboxSettings {
    pub spool: PathBuf,
    /// `REPEAT_COUNT`: tries to lock a mailbox.
    pub lock_attempts: u32,
    /// `SLEEP_TIME`: the longest pause between two tries.
    pub lock_sleep: Duration,
    pub default_quota: Option<Quota>,
    pub over_quota_permanent: bool,
}

/// The mbox spool.
pub struct MboxStore {
    settings: MboxSettings,
    /// One mutex per mailbox in use, so threads of this process queue for a mailbox
    /// instead of polling its dot-lock, and unrelated mailboxes never wait for each other.
    mailboxes: Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>,
    counter: AtomicU64,
    host: String,
}

/// Why one append failed.
enum AppendError {
    /// The mailbox is a symlink, not a regular file, has other links or another owner.
    Unsafe(String),
    Io(&'static str, io::Error),
}

impl MboxStore {
    pub fn new(settings: MboxSettings) -> MboxStore {
        if !Uid::effective().is_root() {
            log::warn!(
                "tcp_lmtpn_server is not running as root: it can deliver only to mailboxes \
                 owned by uid {} (see docs/lmtp.md)",
                Uid::effective()
            );
        }
        let store = MboxStore {
            settings,
            mailboxes: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            host: super::trace::host_name().replace(['/', ' '], "_"),
        };
        store.recover_crashed_deliveries();
        store
    }

    /// At start: our dot-locks left by a worker that died (this host, its pid gone) are
    /// removed, and a half-written message behind one is cut back, before any delivery.
    fn recover_crashed_deliveries(&self) {
        let Ok(entries) = fs::read_dir(&self.settings.spool) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().as_encoded_bytes().ends_with(b".lock") {
                recover_stale(&entry.path(), &self.host, true);
            }
        }
    }

    /// The mutex of the mailbox at `path`, shared by every thread delivering to it now.
    fn mailbox_mutex(&self, path: &Path) -> Arc<Mutex<()>> {
        let mut table = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
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

    /// One try at appending `text` to the mailbox of `account` under both locks: `false`
    /// when another holder has a lock (nothing written). The in-process mutex is held only
    /// for the try, never while waiting between tries.
    fn try_append(&self, path: &Path, account: &User, text: &Body) -> Result<bool, AppendError> {
        let mutex = self.mailbox_mutex(path);
        // A thread that panicked while holding it left no state behind: the file is
        // consistent or truncated back; carry on.
        let _in_process = mutex.lock().unwrap_or_else(|p| p.into_inner());
        let Some(dot) = self.try_dot_lock(path)? else {
            return Ok(false);
        };
        let attempt = open_mailbox(path, account).and_then(|(file, created)| {
            match try_fcntl_lock(&file) {
                Ok(true) => write_locked(&file, created, path, text, |len| {
                    dot.note_length(&self.host, len)
                })
                .map(|()| true),
                Ok(false) => Ok(false),
                Err(e) => Err(AppendError::Io("cannot lock the mailbox", e)),
            }
            // The file closes here, which releases the fcntl lock.
        });
        drop(dot);
        attempt
    }

    /// Tries once to create `<path>.lock`; `None` when someone else holds it.
    fn try_dot_lock(&self, path: &Path) -> Result<Option<DotLock>, AppendError> {
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
            .map_err(|e| AppendError::Io("cannot create a lock file", e))?;
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
            Err(e) => Err(AppendError::Io("cannot create the dot-lock", e)),
            Ok(()) => Ok(None),
        }
    }
}

/// `MAIL_SPOOL/alice` → `MAIL_SPOOL/alice.lock`.
fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// A held dot-lock, removed when dropped (also when a panic unwinds). A crash of the whole
/// process leaves it: it then names this host, the process and the mailbox's length before
/// the append, so the next delivery (or the next worker's start) can tell the holder is dead
/// at once and cut a half-written message back ([`recover_stale`]); a lock without that is
/// stale after five minutes.
struct DotLock(PathBuf);

/// What our dot-locks hold: `tcp_lmtpn_server <host> <pid> <mailbox length>`.
const LOCK_MARK: &str = "tcp_lmtpn_server";

impl DotLock {
    /// Records, before the append starts, the length to cut the mailbox back to should this
    /// process die in the middle of it.
    fn note_length(&self, host: &str, len: u64) {
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
fn recover_stale(lock: &Path, host: &str, only_ours: bool) {
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
/// it was created. Refuses anything but a regular file of the account with one link.
fn open_mailbox(path: &Path, account: &User) -> Result<(File, bool), AppendError> {
    let flags = libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let existing = OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(flags | libc::O_NONBLOCK)
        .open(path);
    let (file, created) = match existing {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let f = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(flags)
                .open(path)
                .map_err(|e| AppendError::Io("cannot create the mailbox", e))?;
            if let Err(e) = nix::unistd::fchown(&f, Some(account.uid), Some(account.gid)) {
                let _ = fs::remove_file(path);
                return Err(AppendError::Io(
                    "cannot give the new mailbox to its owner",
                    io::Error::from(e),
                ));
            }
            (f, true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(AppendError::Unsafe("the mailbox is a symbolic link".into()))
        }
        Err(e) => return Err(AppendError::Io("cannot open the mailbox", e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| AppendError::Io("cannot examine the mailbox", e))?;
    if !meta.file_type().is_file() {
        return Err(AppendError::Unsafe(
            "the mailbox is not a regular file".into(),
        ));
    }
    if meta.nlink() != 1 {
        return Err(AppendError::Unsafe(format!(
            "the mailbox has {} hard links",
            meta.nlink()
        )));
    }
    if meta.uid() != account.uid.as_raw() {
        return Err(AppendError::Unsafe(format!(
            "the mailbox belongs to uid {}, not to {} (uid {})",
            meta.uid(),
            account.name,
            account.uid
        )));
    }
    Ok((file, created))
}

/// One try at an `fcntl` write lock on the whole file; `false` when another process has it.
fn try_fcntl_lock(file: &File) -> io::Result<bool> {
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

/// Appends `text` to the locked mailbox and makes it durable; on failure the mailbox is cut
/// back to its old length (or removed, when this delivery created it).
fn write_locked(
    file: &File,
    created: bool,
    path: &Path,
    text: &Body,
    note_length: impl FnOnce(u64),
) -> Result<(), AppendError> {
    let old_len = file
        .metadata()
        .map_err(|e| AppendError::Io("cannot examine the mailbox", e))?
        .len();
    note_length(old_len);
    let separator = missing_separator(file, old_len)
        .map_err(|e| AppendError::Io("cannot read the mailbox end", e))?;
    let mut out = file;
    // One write for a message in memory; a large one goes in pieces (under the same locks).
    let result = match (text.as_slice(), separator.is_empty()) {
        (Some(t), true) => out.write_all(t),
        (Some(t), false) => out.write_all(&[separator, t].concat()),
        (None, _) => out
            .write_all(separator)
            .and_then(|()| text.chunks(|c| out.write_all(c))),
    }
    // A new file's owner and mode must survive a crash too: sync_all.
    .and_then(|()| {
        if created {
            file.sync_all()
        } else {
            file.sync_data()
        }
    });
    let result = result.and_then(|()| match (created, path.parent()) {
        (true, Some(dir)) => File::open(dir)?.sync_all(),
        _ => Ok(()),
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            if created {
                let _ = fs::remove_file(path);
            } else if let Err(t) = file.set_len(old_len).and_then(|()| file.sync_data()) {
                log::error!(
                    "{}: cannot cut a failed append back to {old_len} octets: {t}",
                    path.display()
                );
            }
            Err(AppendError::Io("cannot append to the mailbox", e))
        }
    }
}

/// What must precede a new message so that it starts after an empty line: an mbox written
/// by other software may lack the final one.
fn missing_separator(file: &File, len: u64) -> io::Result<&'static [u8]> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(b"");
    }
    let mut tail = [0u8; 2];
    let n = len.min(2) as usize;
    file.read_exact_at(&mut tail[..n], len - n as u64)?;
    Ok(match &tail[..n] {
        [b'\n', b'\n'] => b"",
        [b'\n'] if len == 1 => b"",
        [.., b'\n'] => b"\n",
        _ => b"\n\n",
    })
}

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
            super::trace::asctime_date(message.received)
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

impl Store for MboxStore {
    fn spill_dir(&self, _first: &Target) -> PathBuf {
        self.settings.spool.clone()
    }

    fn resolve(&self, r: &Recipient, size: u64) -> Result<Target, Reply> {
        let account = local_account(&r.user, || {
            Reply::new(550, "5.1.1", "User unknown: no such local account")
        })?;
        let path = self.settings.spool.join(&account.name);
        let target = Target {
            key: path.to_string_lossy().into_owned(),
            user: account.name.clone(),
            folder: "INBOX".to_string(),
            quota: r.quota.or(self.settings.default_quota),
            ignore_quota: r.ignores_quota(),
        };
        if within_quota(&target, size) {
            Ok(target)
        } else {
            Err(over_quota(self.settings.over_quota_permanent))
        }
    }

    /// Appends to every target's mailbox. A locked mailbox does not hold up the others: all
    /// are tried in turn, and those still locked are tried again, the pause doubling from
    /// 5 ms up to `SLEEP_TIME`, until `REPEAT_COUNT` × `SLEEP_TIME` has passed for the whole
    /// message; what is still locked then gets `450 4.2.0`.
    fn deliver(&self, message: &Message<'_>, targets: &[&Target]) -> Vec<Result<(), Reply>> {
        let text = match mbox_text(message, &self.settings.spool) {
            Ok(t) => t,
            Err(e) => {
                log::error!("message {}: cannot prepare it for mbox: {e}", message.id);
                return vec![Err(io_failure("cannot prepare the message", &e)); targets.len()];
            }
        };
        let mut results: Vec<Option<Result<(), Reply>>> = vec![None; targets.len()];
        let mut pending: Vec<(usize, User)> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            match self.prepare(t, message.size()) {
                Ok(account) => pending.push((i, account)),
                Err(r) => results[i] = Some(Err(r)),
            }
        }
        let budget = self
            .settings
            .lock_sleep
            .saturating_mul(self.settings.lock_attempts.max(1));
        let longest_pause = self.settings.lock_sleep.max(FIRST_LOCK_PAUSE);
        let started = Instant::now();
        let mut pause = FIRST_LOCK_PAUSE;
        loop {
            pending.retain(|(i, account)| {
                let t = targets[*i];
                match self.try_append(Path::new(&t.key), account, &text) {
                    Ok(false) => true,
                    Ok(true) => {
                        results[*i] = Some(Ok(()));
                        false
                    }
                    Err(e) => {
                        results[*i] = Some(Err(failure_reply(t, e)));
                        false
                    }
                }
            });
            let waited = started.elapsed();
            if pending.is_empty() || waited >= budget {
                break;
            }
            std::thread::sleep(pause.min(budget - waited));
            pause = pause.saturating_mul(2).min(longest_pause);
        }
        for (i, _) in pending {
            results[i] = Some(Err(Reply::new(
                450,
                "4.2.0",
                "Mailbox is locked; try again later",
            )));
        }
        results
            .into_iter()
            .zip(targets)
            .map(|(r, t)| {
                let r = r.unwrap_or_else(|| Err(Reply::new(451, "4.3.0", "not delivered")));
                if let Err(reply) = &r {
                    log::error!("message {} to {}: {reply}", message.id, t.key);
                }
                r
            })
            .collect()
    }
}

impl MboxStore {
    /// Before the first try: the account still exists and the quota admits the message.
    fn prepare(&self, t: &Target, size: u64) -> Result<User, Reply> {
        let account = local_account(&t.user, || {
            Reply::new(
                451,
                "4.3.0",
                "The account disappeared during the transaction",
            )
        })?;
        if !within_quota(t, size) {
            return Err(over_quota(self.settings.over_quota_permanent));
        }
        Ok(account)
    }
}

/// The reply for an append that failed.
fn failure_reply(t: &Target, e: AppendError) -> Reply {
    match e {
        AppendError::Unsafe(why) => {
            log::error!("refusing to deliver to {}: {why}", t.key);
            Reply::new(
                451,
                "4.3.0",
                format!("Mailbox is unsafe to deliver to: {why}"),
            )
        }
        AppendError::Io(what, e) => io_failure(what, &e),
    }
}

/// The account `name` from the password database; `unknown()` is the reply when there is
/// none, and a failing look-up is a temporary failure.
fn local_account(name: &str, unknown: impl FnOnce() -> Reply) -> Result<User, Reply> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(unknown()),
        Err(e) => Err(io_failure("cannot look up the account", &e.into())),
    }
}

/// The byte quota against the mailbox file's length (the message count is not kept for
/// mbox files; see docs/lmtp.md).
fn within_quota(t: &Target, size: u64) -> bool {
    match t.quota {
        Some(q) if !t.ignore_quota && q.bytes > 0 => {
            let used = fs::symlink_metadata(&t.key).map(|m| m.len()).unwrap_or(0);
            q.admits(used, 0, size)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> User {
        User::from_uid(Uid::effective())
            .ok()
            .flatten()
            .expect("the test's own account")
    }

    fn store(spool: &Path, attempts: u32, sleep_ms: u64) -> MboxStore {
        MboxStore::new(MboxSettings {
            spool: spool.to_path_buf(),
            lock_attempts: attempts,
            lock_sleep: Duration::from_millis(sleep_ms),
            default_quota: None,
            over_quota_permanent: false,
        })
    }

    fn msg<'a>(sender: &'a str, body: &[u8]) -> Message<'a> {
        Message {
            id: "T.1.1",
            sender,
            trace: b"Return-Path: <s@x>\r\n",
            // Leaked: a test's few bodies live as long as the test process.
            body: Box::leak(Box::new(Body::from_bytes(body))),
            received: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn target(s: &MboxStore) -> Target {
        s.resolve(&Recipient::parse(&me().name).expect("valid"), 0)
            .expect("own account")
    }

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
            body: &b,
            ..msg(sender, b"")
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
    fn appends_create_a_private_file_and_keep_messages_apart() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 3, 10);
        let e = s
            .resolve(&Recipient::parse("no-such-account-here").unwrap(), 0)
            .unwrap_err();
        assert_eq!((e.code, e.status), (550, "5.1.1"));
        let t = target(&s);
        assert!(s.deliver(&msg("a@b", b"one\r\n"), &[&t])[0].is_ok());
        let path = spool.path().join(me().name);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.mode() & 0o777, meta.uid()),
            (0o600, me().uid.as_raw())
        );
        // Another program left the file without its final empty line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"From x@y Thu Jan  1 00:00:00 1970\nno separator")
            .unwrap();
        let r = s.deliver(&msg("a@b", b"two\r\n"), &[&t]);
        assert!(r[0].is_ok(), "{r:?}");
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\n\nFrom ").count(), 2, "{text}");
        assert!(text.ends_with("two\n\n") && text.contains("no separator\n\nFrom a@b "));
        assert!(!lock_path(&path).exists());
        let leftovers: Vec<_> = fs::read_dir(spool.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary lock files removed");
    }

    #[test]
    fn a_symlink_or_a_shared_file_is_refused() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 1, 10);
        let t = target(&s);
        let path = spool.path().join(me().name);
        let victim = spool.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = s
            .deliver(&msg("a@b", b"x\r\n"), &[&t])
            .remove(0)
            .unwrap_err();
        assert_eq!((e.code, e.status), (451, "4.3.0"), "{e}");
        assert!(e.text.contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_file(&path).unwrap();
        fs::hard_link(&victim, &path).unwrap();
        let e = s
            .deliver(&msg("a@b", b"x\r\n"), &[&t])
            .remove(0)
            .unwrap_err();
        assert!(e.text.contains("hard links"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_held_dot_lock_defers_and_a_stale_one_is_removed() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 3, 20);
        let t = target(&s);
        let lock = lock_path(&spool.path().join(me().name));
        fs::write(&lock, b"").unwrap();
        let started = Instant::now();
        let e = s
            .deliver(&msg("a@b", b"x\r\n"), &[&t])
            .remove(0)
            .unwrap_err();
        assert_eq!((e.code, e.status), (450, "4.2.0"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(lock.exists(), "someone else's lock is left alone");
        let old = SystemTime::now() - Duration::from_secs(600);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(s.deliver(&msg("a@b", b"x\r\n"), &[&t])[0].is_ok());
        assert!(!lock.exists());
    }

    #[test]
    fn a_locked_mailbox_does_not_hold_up_the_others() {
        let spool = tempfile::tempdir().unwrap();
        // 4 tries 100 ms apart: 400 ms for the whole message, not per mailbox.
        let s = store(spool.path(), 4, 100);
        let first = target(&s);
        let mut others: Vec<Target> = (0..3)
            .map(|n| Target {
                key: spool
                    .path()
                    .join(format!("other{n}"))
                    .to_string_lossy()
                    .into_owned(),
                ..first.clone()
            })
            .collect();
        others.push(first);
        for t in &others[..2] {
            fs::write(lock_path(Path::new(&t.key)), b"").unwrap();
        }
        let refs: Vec<&Target> = others.iter().collect();
        let started = Instant::now();
        let results = s.deliver(&msg("a@b", b"x\r\n"), &refs);
        let took = started.elapsed();
        let codes: Vec<u16> = results
            .iter()
            .map(|r| r.as_ref().map_or_else(|e| e.code, |()| 250))
            .collect();
        assert_eq!(codes, [450, 450, 250, 250]);
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(
            took < Duration::from_millis(700),
            "one wait, not one per mailbox: {took:?}"
        );
    }

    /// A pid no process has (a child that has been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap");
        pid
    }

    /// A mailbox with one whole message, then half of another and our dot-lock, as a worker
    /// killed in the middle of its append leaves them; returns the mailbox and its whole part.
    fn crashed_append(s: &MboxStore, spool: &Path) -> (PathBuf, Vec<u8>) {
        let t = target(s);
        assert!(s.deliver(&msg("a@b", b"whole\r\n"), &[&t])[0].is_ok());
        let path = spool.join(me().name);
        let whole = fs::read(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"From x@y Thu Jan  1 00:00:00 1970\nSubject: half\n\nhalf of")
            .unwrap();
        fs::write(
            lock_path(&path),
            format!("{LOCK_MARK} {} {} {}\n", s.host, dead_pid(), whole.len()),
        )
        .unwrap();
        (path, whole)
    }

    #[test]
    fn a_delivery_cut_by_a_crash_is_cut_back_at_the_next_delivery() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 3, 10);
        let (path, whole) = crashed_append(&s, spool.path());
        let t = target(&s);
        assert!(s.deliver(&msg("a@b", b"next\r\n"), &[&t])[0].is_ok());
        let text = fs::read(&path).unwrap();
        assert!(text.starts_with(&whole), "the whole message stays");
        let rest = String::from_utf8_lossy(&text[whole.len()..]).into_owned();
        assert!(!rest.contains("half"), "the half message is gone: {rest}");
        assert!(
            rest.starts_with("From a@b ") && rest.ends_with("next\n\n"),
            "{rest}"
        );
        assert!(!lock_path(&path).exists());
    }

    #[test]
    fn a_delivery_cut_by_a_crash_is_cut_back_when_the_next_worker_starts() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 3, 10);
        let (path, whole) = crashed_append(&s, spool.path());
        // Someone else's fresh lock on another mailbox is left alone.
        fs::write(spool.path().join("other.lock"), b"").unwrap();
        drop(store(spool.path(), 3, 10));
        assert_eq!(fs::read(&path).unwrap(), whole);
        assert!(!lock_path(&path).exists());
        assert!(spool.path().join("other.lock").exists());
    }

    #[test]
    fn a_lock_of_a_live_process_is_respected() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 2, 10);
        let t = target(&s);
        let path = spool.path().join(me().name);
        // Held by this very process (alive), on this host: not stale, whatever it says.
        fs::write(
            lock_path(&path),
            format!("{LOCK_MARK} {} {} 0\n", s.host, std::process::id()),
        )
        .unwrap();
        let e = s
            .deliver(&msg("a@b", b"x\r\n"), &[&t])
            .remove(0)
            .unwrap_err();
        assert_eq!(e.code, 450);
        assert!(lock_path(&path).exists());
    }

    #[test]
    fn an_fcntl_lock_of_another_process_defers() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 2, 50);
        let t = target(&s);
        assert!(s.deliver(&msg("a@b", b"first\r\n"), &[&t])[0].is_ok());
        let path = spool.path().join(me().name);
        let before = fs::read(&path).unwrap();
        // A child process (another mail program) holds the fcntl lock for a while.
        let (rx, tx) = nix::unistd::pipe().unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        // SAFETY: the child calls only async-signal-safe functions and then _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let ok = try_fcntl_lock(&file).unwrap_or(false);
                libc::write(tx.as_raw_fd(), [ok as u8].as_ptr().cast(), 1);
                libc::sleep(2);
                libc::_exit(0);
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop(tx);
                let mut b = [0u8; 1];
                nix::unistd::read(&rx, &mut b).unwrap();
                assert_eq!(b[0], 1, "the child got the lock");
                let e = s
                    .deliver(&msg("a@b", b"x\r\n"), &[&t])
                    .remove(0)
                    .unwrap_err();
                assert_eq!(e.code, 450, "{e}");
                assert_eq!(fs::read(&path).unwrap(), before, "nothing appended");
                nix::sys::signal::kill(child, nix::sys::signal::SIGKILL).unwrap();
                nix::sys::wait::waitpid(child, None).unwrap();
                assert!(s.deliver(&msg("a@b", b"x\r\n"), &[&t])[0].is_ok());
            }
        }
    }

    #[test]
    fn byte_quota_against_the_file_length() {
        let spool = tempfile::tempdir().unwrap();
        let s = store(spool.path(), 1, 10);
        let mut r = Recipient::parse(&me().name).unwrap();
        r.quota = Some(Quota {
            bytes: 200,
            messages: 0,
        });
        let t = s.resolve(&r, 10).unwrap();
        assert!(s.deliver(&msg("a@b", &[b'x'; 100]), &[&t])[0].is_ok());
        let e = s.resolve(&r, 100).unwrap_err();
        assert_eq!((e.code, e.status), (452, "4.2.2"));
        let e = s
            .deliver(&msg("a@b", &[b'x'; 100]), &[&t])
            .remove(0)
            .unwrap_err();
        assert_eq!(e.code, 452);
    }
}
