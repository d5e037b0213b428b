//! The native mailboxes of `tcp_lmtpn_server`: one mbox file per local account in a spool
//! directory (`MAIL_SPOOL`, `/var/mail/` by default), as `mail`, `mutt`, Dovecot's `mbox`
//! driver and Postfix's `local` read and write them.
//!
//! A recipient is known when `getpwnam()` finds the account (never one with uid 0) and the
//! spool is there: a spool that is missing or cannot be examined defers every recipient
//! (`451 4.3.0`), and is never created. A delivery appends, in one `write`, the message in
//! mbox form ([`format`]), then `fsync`s the file (and the spool directory when the file is
//! new) before the recipient's `Ok`, all under the mailbox's locks ([`lock`]).
//!
//! Who does what: the worker creates and removes its dot-locks with its own identity (the
//! mail account, or root), which is what makes a lock provably ours; everything done to a
//! mailbox (open, create, append, `fsync`, cut back) is done with the recipient's
//! file-system identity ([`identity`]), so it never has more rights than its owner. A new
//! mailbox is created `0600` with `O_EXCL | O_NOFOLLOW` as the recipient, hence owned by
//! them; an existing one must be a regular file of the recipient with one link, opened
//! without following a link ([`crate::safe_fs`]). A failed append is cut back to the old
//! length. Crash recovery cuts a mailbox back only behind a lock that is provably ours and
//! only when the mailbox passes those same checks.

mod format;
mod identity;
mod lock;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::User;

use super::address::Recipient;
use super::body::Body;
use super::reply::Reply;
use super::store::{
    io_failure, over_quota, unsafe_mailbox, Message, Quota, Store, StoreRoot, Target,
};
use crate::log_text::{untrusted, untrusted_path, Throttle};
use crate::safe_fs::{self, OpenError};

pub use format::mbox_text;
use lock::{
    try_fcntl_lock, Attempt, CrashedLock, DotLocker, Existing, MailboxMutexes, Noted, StaleLock,
};

/// First pause between lock tries; it doubles up to the configured `SLEEP_TIME`.
const FIRST_LOCK_PAUSE: Duration = Duration::from_millis(5);
/// A fault that every recipient meets (the spool gone, a planted file) is logged once per
/// this long for each path.
const WARN_EVERY: Duration = Duration::from_secs(60);

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
    /// `MAIL_SPOOL`, checked for every recipient as the Maildir store checks `STORE_ROOT`.
    spool: StoreRoot,
    mutexes: MailboxMutexes,
    locker: DotLocker,
    /// Keeps repeated warnings to one per burst (keys: paths).
    warnings: Throttle,
}

/// Why one append failed.
enum AppendError {
    /// The mailbox is a symlink, not a regular file, has other links or another owner.
    Unsafe(String),
    Io(&'static str, io::Error),
}

impl From<OpenError> for AppendError {
    fn from(e: OpenError) -> AppendError {
        match e {
            OpenError::Unsafe(why) => AppendError::Unsafe(why.to_string()),
            OpenError::Io(e) => AppendError::Io("cannot open the mailbox", e),
        }
    }
}

impl MboxStore {
    pub fn new(settings: MboxSettings) -> MboxStore {
        if !identity::can_take_other_identities() {
            log::warn!(
                "tcp_lmtpn_server has neither root nor CAP_SETUID: it can deliver only to \
                 mailboxes owned by uid {} (see docs/lmtp.md)",
                safe_fs::effective_uid()
            );
        }
        let store = MboxStore {
            spool: StoreRoot::new(settings.spool.clone(), "MAIL_SPOOL", "mail spool"),
            settings,
            mutexes: MailboxMutexes::default(),
            locker: DotLocker::new(super::trace::host_name().replace(['/', ' '], "_")),
            warnings: Throttle::new(WARN_EVERY),
        };
        store.recover_crashed_deliveries();
        store
    }

    /// At start, before any delivery: our dot-locks left by a worker that died (this host,
    /// its pid gone) are dealt with, a half-written message behind one cut back. Every other
    /// lock is left for the delivery that meets it.
    fn recover_crashed_deliveries(&self) {
        if self.spool.open().is_err() {
            return; // logged; the deliveries defer until it is back
        }
        let entries = match fs::read_dir(&self.settings.spool) {
            Ok(entries) => entries,
            Err(e) => {
                self.warn_once(&self.settings.spool, &format!("cannot be listed: {e}"));
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(user) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            if let Existing::Crashed(crashed) = self.locker.examine(&entry.path()) {
                match User::from_name(user) {
                    Ok(Some(account)) => {
                        self.recover(&crashed, &account);
                    }
                    _ => self.warn_once(
                        &crashed.path,
                        "a lock of a crashed delivery, for no local account: left alone",
                    ),
                }
            }
        }
    }

    /// Logs `what` about `path`, unless it was logged in the last [`WARN_EVERY`].
    fn warn_once(&self, path: &Path, what: &str) {
        if self.warnings.allows(&path.to_string_lossy()) {
            log::warn!("{}: {what}", untrusted_path(path));
        }
    }

    /// The spool is there (a directory); else the reply that defers the recipient, logged
    /// once per burst ([`StoreRoot`]).
    fn spool_present(&self) -> Result<(), Reply> {
        self.spool.open().map(drop)
    }

    /// One try at appending `text` to the mailbox of `account` under all its locks: `false`
    /// when another holder has a lock (nothing written). The in-process mutex is held only
    /// for the try, never while waiting between tries.
    fn try_append(&self, path: &Path, account: &User, text: &Body) -> Result<bool, AppendError> {
        let mutex = self.mutexes.of(path);
        // A thread that panicked while holding it left no state behind: the file is
        // consistent or truncated back; carry on.
        let _in_process = mutex.lock().unwrap_or_else(|p| p.into_inner());
        let attempt = self
            .locker
            .try_lock(path)
            .map_err(|lock::LockError(what, e)| AppendError::Io(what, e))?;
        let mut dot = match attempt {
            Attempt::Locked(dot) => dot,
            Attempt::Busy(existing) => {
                self.deal_with(existing, path, account);
                return Ok(false);
            }
        };
        // The recipient's identity for the mailbox only; the dot-lock is removed (when `dot`
        // drops, after this) with ours.
        let as_recipient = identity::become_user(account.uid.as_raw()).map_err(|e| {
            AppendError::Io("cannot take the recipient's identity", io::Error::other(e))
        })?;
        let (file, created) = open_mailbox(path, account)?;
        let appended = match try_fcntl_lock(&file) {
            Ok(true) => write_locked(&file, created, path, text, |noted| dot.note_length(noted))
                .map(|()| true),
            Ok(false) => Ok(false),
            Err(e) => Err(AppendError::Io("cannot lock the mailbox", e)),
        };
        // The file closes here, which releases the fcntl lock.
        drop(file);
        drop(as_recipient);
        appended
    }

    /// A dot-lock someone has: a crash of ours is recovered from, a stale lock removed, and
    /// anything odd logged; the caller tries again later.
    fn deal_with(&self, existing: Existing, path: &Path, account: &User) {
        match existing {
            Existing::Gone => {}
            Existing::Held { odd: None } => {}
            Existing::Held { odd: Some(why) } => {
                self.warn_once(
                    &lock::lock_path(path),
                    &format!(
                        "{why}: not a dot-lock, never written through; removed once it is \
                         stale"
                    ),
                );
            }
            Existing::Stale(stale) => self.remove_stale(&stale, account),
            Existing::Crashed(crashed) => {
                self.recover(&crashed, account);
            }
        }
    }

    /// Removes a stale lock of unknown origin without reading it, with an identity that may
    /// remove it from a sticky spool: its owner's (unless that is root), else ours.
    fn remove_stale(&self, stale: &StaleLock, account: &User) {
        let own = safe_fs::effective_uid();
        let removed = if stale.owner != own && stale.owner != 0 {
            identity::become_user(stale.owner)
                .map_err(io::Error::other)
                .and_then(|_as_owner| stale.remove())
        } else {
            stale.remove()
        };
        match removed {
            Ok(true) => log::warn!(
                "removed the stale dot-lock {} (uid {}, {} s old) to deliver to {}",
                untrusted_path(&stale.path),
                stale.owner,
                stale.age.as_secs(),
                account.name
            ),
            Ok(false) => {}
            Err(e) => self.warn_once(
                &stale.path,
                &format!("cannot remove this stale dot-lock: {e}"),
            ),
        }
    }

    /// After a crash of ours: cuts the mailbox back to the length our lock noted, then
    /// removes the lock; `false` when that cannot be done now (the lock stays). The mailbox
    /// is cut only when it passes every check a delivery makes, as the recipient, under its
    /// `fcntl` lock, and after the lock has been found again to be the very one judged.
    fn recover(&self, crashed: &CrashedLock, account: &User) -> bool {
        // The mailbox stays fcntl-locked until the lock is gone, so that no other program
        // appends to it in between.
        let _held = match crashed.mark.length {
            Some(noted) => match self.cut_back(crashed, account, noted) {
                Ok(held) => held,
                Err(Later) => return false,
            },
            // The holder died before its append began: nothing to cut.
            None => None,
        };
        if !self.locker.still_crashed(crashed) {
            return false;
        }
        match crashed.remove() {
            Ok(removed) => {
                if removed {
                    log::warn!(
                        "removed the stale dot-lock {}",
                        untrusted_path(&crashed.path)
                    );
                }
                removed
            }
            Err(e) => {
                self.warn_once(&crashed.path, &format!("cannot remove this dot-lock: {e}"));
                false
            }
        }
    }

    /// The cut-back of [`MboxStore::recover`], as the recipient: the mailbox, cut and still
    /// `fcntl`-locked (`None` when there is no mailbox), or [`Later`].
    fn cut_back(
        &self,
        crashed: &CrashedLock,
        account: &User,
        noted: Noted,
    ) -> Result<Option<File>, Later> {
        let len = noted.len;
        let mailbox = &crashed.mailbox;
        let refuse = |why: String| {
            self.warn_once(
                mailbox,
                &format!(
                    "not cut back after a crashed delivery: {why}; its lock stays (deliveries \
                     to it are deferred) until the mailbox is put right"
                ),
            );
            Later
        };
        if account.uid.is_root() {
            // Never written with the superuser's identity, as no delivery is.
            return Err(refuse("it is the mailbox of an account with uid 0".into()));
        }
        let as_recipient =
            identity::become_user(account.uid.as_raw()).map_err(|e| refuse(e.to_string()))?;
        let options = OpenOptions::new().read(true).write(true).clone();
        let file = match safe_fs::open_existing(mailbox, &options, Some(account.uid.as_raw())) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(refuse(e.to_string())),
        };
        // Only the very file the crashed append wrote is cut: a lock of ours linked under
        // this mailbox's lock name (where fs.protected_hardlinks is 0), or a mailbox
        // replaced since, leaves this file alone, and the lock, which guards nothing here,
        // is removed.
        match file.metadata() {
            Ok(m) if (m.dev(), m.ino()) == (noted.dev, noted.ino) => {}
            Ok(_) => {
                log::warn!(
                    "{}: not cut back: the crashed lock in front of it was written for another \
                     file (device {} inode {}), linked here or replaced since",
                    untrusted_path(mailbox),
                    noted.dev,
                    noted.ino
                );
                return Ok(None);
            }
            Err(e) => return Err(refuse(format!("cannot examine it: {e}"))),
        }
        match try_fcntl_lock(&file) {
            Ok(true) => {}
            Ok(false) => return Err(Later), // someone reads or writes it now
            Err(e) => return Err(refuse(format!("cannot lock it: {e}"))),
        }
        // Our lock is read with our identity (it is 0600), the mailbox cut with theirs.
        drop(as_recipient);
        if !self.locker.still_crashed(crashed) {
            return Err(Later);
        }
        let _as_recipient =
            identity::become_user(account.uid.as_raw()).map_err(|e| refuse(e.to_string()))?;
        let now = file
            .metadata()
            .map_err(|e| refuse(format!("cannot examine it: {e}")))?
            .len();
        if now > len {
            if let Err(e) = file.set_len(len).and_then(|()| file.sync_data()) {
                log::error!(
                    "{}: cannot cut back to {len} octets: {e}",
                    untrusted_path(mailbox)
                );
                return Err(Later);
            }
            log::warn!(
                "{}: cut back {} octets of a delivery a crash interrupted (never acknowledged)",
                untrusted_path(mailbox),
                now - len
            );
        }
        Ok(Some(file))
    }
}

/// A recovery that cannot be done now: the lock stays, to be looked at again.
struct Later;

/// Opens the mailbox for appending, creating it when missing (`true`), with the identity
/// of the thread, which is the recipient's: refuses anything but a regular file of the
/// account with one link, and never follows a link.
fn open_mailbox(path: &Path, account: &User) -> Result<(File, bool), AppendError> {
    let options = OpenOptions::new().read(true).append(true).clone();
    Ok(safe_fs::open_or_create(
        path,
        &options,
        0o600,
        Some(account.uid.as_raw()),
    )?)
}

/// Appends `text` to the locked mailbox and makes it durable; on failure the mailbox is cut
/// back to its old length (or removed, when this delivery created it).
fn write_locked(
    file: &File,
    created: bool,
    path: &Path,
    text: &Body,
    note_length: impl FnOnce(Noted) -> io::Result<()>,
) -> Result<(), AppendError> {
    let meta = file
        .metadata()
        .map_err(|e| AppendError::Io("cannot examine the mailbox", e))?;
    let old_len = meta.len();
    note_length(Noted {
        len: old_len,
        dev: meta.dev(),
        ino: meta.ino(),
    })
    .map_err(|e| AppendError::Io("cannot note the mailbox length in its dot-lock", e))?;
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

/// What must precede a new message in the mailbox of length `len` (see
/// [`format::separator_after`]).
fn missing_separator(file: &File, len: u64) -> io::Result<&'static [u8]> {
    use std::os::unix::fs::FileExt;
    let mut tail = [0u8; 2];
    let n = len.min(2) as usize;
    file.read_exact_at(&mut tail[..n], len - n as u64)?;
    Ok(format::separator_after(&tail[..n]))
}

impl Store for MboxStore {
    fn spill_dir(&self, _first: &Target) -> PathBuf {
        self.settings.spool.clone()
    }

    fn resolve(&self, r: &Recipient, size: u64) -> Result<Target, Reply> {
        // A spool that is not there says nothing about the account: defer, never bounce.
        self.spool_present()?;
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
        if within_quota(&target, size)? {
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
                    log::error!(
                        "message {} to {}: {reply}",
                        message.id,
                        untrusted(t.key.as_bytes())
                    );
                }
                r
            })
            .collect()
    }
}

impl MboxStore {
    /// Before the first try: the spool and the account are still there and the quota
    /// admits the message.
    fn prepare(&self, t: &Target, size: u64) -> Result<User, Reply> {
        self.spool_present()?;
        let account = local_account(&t.user, || {
            Reply::new(
                451,
                "4.3.0",
                "The account disappeared during the transaction",
            )
        })?;
        if !within_quota(t, size)? {
            return Err(over_quota(self.settings.over_quota_permanent));
        }
        Ok(account)
    }
}

/// The reply for an append that failed.
fn failure_reply(t: &Target, e: AppendError) -> Reply {
    match e {
        AppendError::Unsafe(why) => {
            log::error!(
                "refusing to deliver to {}: {why}",
                untrusted(t.key.as_bytes())
            );
            // The details (owners, link counts) are for the log, not for the client.
            unsafe_mailbox()
        }
        AppendError::Io(what, e) => io_failure(what, &e),
    }
}

/// The account `name` from the password database, if mail may be delivered to it:
/// `unknown()` is the reply when there is none, a failing look-up is a temporary failure,
/// and an account with uid 0 is refused (`550 5.7.1`): its mailbox would be written with
/// the superuser's identity, which this image never uses.
fn local_account(name: &str, unknown: impl FnOnce() -> Reply) -> Result<User, Reply> {
    match User::from_name(name) {
        Ok(Some(u)) if u.uid.is_root() => Err(Reply::new(
            550,
            "5.7.1",
            "Not delivered to an account with uid 0: alias it to a person",
        )),
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(unknown()),
        Err(e) => Err(io_failure("cannot look up the account", &e.into())),
    }
}

/// The byte quota against the mailbox file's length (the message count is not kept for
/// mbox files; see docs/lmtp.md). A mailbox not there yet uses nothing; one that cannot be
/// measured is a temporary failure.
fn within_quota(t: &Target, size: u64) -> Result<bool, Reply> {
    match t.quota {
        Some(q) if !t.ignore_quota && q.bytes > 0 => {
            let used = match fs::symlink_metadata(&t.key) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => return Err(io_failure("cannot measure the mailbox", &e)),
            };
            Ok(q.admits(used, 0, size))
        }
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock::{lock_path, LOCK_MARK};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::time::SystemTime;

    /// Whom the tests deliver to: `alice` when they run as root (an account with uid 0 is
    /// never delivered to; scripts/install-test-deps.sh creates her), else the test's own
    /// account, the only one an unprivileged image can deliver to.
    fn me() -> User {
        let uid = nix::unistd::Uid::effective();
        let user = if uid.is_root() {
            User::from_name("alice").ok().flatten()
        } else {
            User::from_uid(uid).ok().flatten()
        };
        user.expect("the recipient account (run scripts/install-test-deps.sh as root)")
    }

    /// A spool that recipients can create their mailboxes in, as a `1777` `/var/mail`.
    fn spool() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        dir
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

    #[test]
    fn appends_create_a_private_file_and_keep_messages_apart() {
        let spool = spool();
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
        let spool = spool();
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
        // The reason goes to the log; the client learns only that the mailbox is unsafe.
        assert_eq!((e.code, e.status), (451, "4.3.0"), "{e}");
        assert!(e.text.contains("not safe"), "{e}");
        assert!(!e.text.contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_file(&path).unwrap();
        fs::hard_link(&victim, &path).unwrap();
        let e = s
            .deliver(&msg("a@b", b"x\r\n"), &[&t])
            .remove(0)
            .unwrap_err();
        assert_eq!((e.code, e.status), (451, "4.3.0"), "{e}");
        assert!(!e.text.contains("hard links"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_held_dot_lock_defers_and_a_stale_one_is_removed() {
        let spool = spool();
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
        lock::make_stale(&lock);
        assert!(s.deliver(&msg("a@b", b"x\r\n"), &[&t])[0].is_ok());
        assert!(!lock.exists());
    }

    #[test]
    fn a_locked_mailbox_does_not_hold_up_the_others() {
        let spool = spool();
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
            format!(
                "{LOCK_MARK} {} {} {} {}:{}\n",
                s.locker.host,
                dead_pid(),
                whole.len(),
                f.metadata().unwrap().dev(),
                f.metadata().unwrap().ino()
            ),
        )
        .unwrap();
        // As private as the image makes its own: read back with the worker's identity only.
        fs::set_permissions(
            lock_path(&path),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        (path, whole)
    }

    #[test]
    fn a_delivery_cut_by_a_crash_is_cut_back_at_the_next_delivery() {
        let spool = spool();
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
        let spool = spool();
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
        let spool = spool();
        let s = store(spool.path(), 2, 10);
        let t = target(&s);
        let path = spool.path().join(me().name);
        // Held by this very process (alive), on this host: not stale, whatever it says.
        fs::write(
            lock_path(&path),
            format!(
                "{LOCK_MARK} {} {} 0 0:0\n",
                s.locker.host,
                std::process::id()
            ),
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
        let spool = spool();
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
        let spool = spool();
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
