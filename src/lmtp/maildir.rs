//! The message store of `tcp_lmtp_server`: one Maildir per user under a store root, with
//! Maildir++ folders (the layout Dovecot reads with `mail_location = maildir:ROOT/%n`).
//!
//! ```text
//! STORE_ROOT/alice/{tmp,new,cur}           INBOX
//! STORE_ROOT/alice/.Sent/{tmp,new,cur}     folder "Sent" (alice+Sent@domain)
//! ```
//!
//! A user is known when `STORE_ROOT/<user>/new` is a directory (user names in lower case).
//! "User unknown" is said only below a root that is there: the root itself missing or
//! unreadable is a temporary failure for everyone ([`StoreRoot`]), and the root is never
//! created here. With `CREATE_MAILBOXES=1` an unknown user is accepted at `RCPT` and the
//! Maildir is created when a message is delivered into it, never before (a transaction that
//! is reset leaves nothing). `user+folder` goes to the folder when it exists, else to the
//! INBOX; folders are never created here.
//!
//! Whoever can write a user's Maildir must not be able to make a delivery write elsewhere.
//! So below the store root every directory is opened one component at a time without
//! following a link (`O_NOFOLLOW|O_DIRECTORY`, [`safe_fs::open_dir_at`]), and every file is
//! created, linked and removed relative to those descriptors (`openat` with `O_EXCL`,
//! `linkat`, `unlinkat`): a user directory, folder, `tmp/` or `new/` that is a symbolic link
//! or not a directory makes that recipient `451 4.3.0` and a log line naming the path.
//!
//! Delivery of one message to several mailboxes writes it once: to `tmp/` of the first mailbox,
//! `fsync`, then `link()` into `new/` of every mailbox (a copy where a mailbox is on another file
//! system), then `fsync` of each `new/` directory (side by side), then the `tmp/` name is removed.
//! The links are made through the open file ([`Copy`]), so whoever can write the first mailbox
//! cannot swap its `tmp/` file for the other recipients' (without `/proc`, through its name, and
//! each link is kept only once it is checked to be the open file). Only after its directory `fsync`
//! does a recipient get `Ok`: a `250` means the message survives a crash. Concurrent deliveries
//! into one directory share that `fsync` ([`super::group_flush`]): each waits for a flush that
//! began after its own link, so the promise is the same with one flush for many messages. A crash
//! before the link into `new/` leaves at most a file in `tmp/`, which readers never look at
//! (Dovecot removes such files after 36 hours); one after the link but before the client read the
//! `250` leaves the message delivered while the client will send it again: a duplicate, never a
//! loss (docs/lmtp.md, "Durability"). File names follow the Maildir rules:
//! `<seconds>.M<microseconds>P<pid>Q<counter>.<host>,S=<size>`.
//!
//! Quota (`XQUOTA=bytes,messages` from the relay, or the channel's `DEFAULT_QUOTA`) is the
//! sum over the user's INBOX and folders (`new/` and `cur/`), sizes read from `,S=` in file
//! names where present; it is counted only for recipients that have a quota, and kept in
//! the Maildir++ cache `maildirsize` ([`maildirsize`]) so it is not recounted each time.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use super::address::Recipient;
use super::group_flush::DirFlushes;
use super::maildirsize::{self, UserDir};
use super::reply::Reply;
use super::store::{
    io_failure, over_quota, unsafe_mailbox, Message, Quota, Store, StoreRoot, Target,
};
use crate::log_text;
use crate::safe_fs::{self, OpenError, UnsafeFile};

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct MaildirSettings {
    pub root: PathBuf,
    pub create: bool,
    pub default_quota: Option<Quota>,
    pub over_quota_permanent: bool,
}

/// The Maildir store.
pub struct MaildirStore {
    settings: MaildirSettings,
    root: StoreRoot,
    /// This host's name as it may appear in a file name (`/` and `:` escaped).
    host: String,
    counter: AtomicU64,
    /// Flushes of `new/` (and of directories a delivery creates) shared by concurrent
    /// deliveries.
    flushes: DirFlushes,
}

/// Why one mailbox cannot take a message; the text names the path (escaped: it holds a
/// user and a folder name a client chose).
#[derive(Debug, thiserror::Error)]
enum MailboxError {
    /// Something is in the mailbox that must not be written through.
    #[error("refused {path}: {why}")]
    Unsafe { path: String, why: UnsafeFile },
    #[error("{path}: {doing}: {source}")]
    Io {
        path: String,
        doing: &'static str,
        source: io::Error,
    },
    #[error("{path}: {reply}")]
    OverQuota { path: String, reply: Reply },
}

impl MailboxError {
    fn io(path: &Path, doing: &'static str, source: io::Error) -> MailboxError {
        MailboxError::Io {
            path: shown(path),
            doing,
            source,
        }
    }

    /// The reply for the recipient (without the path).
    fn reply(&self) -> Reply {
        match self {
            MailboxError::Unsafe { .. } => unsafe_mailbox(),
            MailboxError::Io { doing, source, .. } => io_failure(doing, source),
            MailboxError::OverQuota { reply, .. } => reply.clone(),
        }
    }
}

/// A path as a log line shows it.
fn shown(path: &Path) -> String {
    log_text::untrusted_path(path).to_string()
}

/// The directory `name` inside `parent` (whose path is `path`'s parent), opened without
/// following a link; `None` when absent.
fn subdir(parent: BorrowedFd<'_>, path: &Path) -> Result<Option<OwnedFd>, MailboxError> {
    let name = path.file_name().unwrap_or(OsStr::new("."));
    safe_fs::open_dir_at(parent, Path::new(name)).map_err(|e| match e {
        OpenError::Unsafe(why) => MailboxError::Unsafe {
            path: shown(path),
            why,
        },
        OpenError::Io(e) => MailboxError::io(path, "cannot open the mailbox", e),
    })
}

/// [`subdir`] for a directory that must be there.
fn required_subdir(parent: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, MailboxError> {
    subdir(parent, path)?.ok_or_else(|| {
        MailboxError::io(
            path,
            "the mailbox is incomplete",
            io::Error::from(io::ErrorKind::NotFound),
        )
    })
}

/// One mailbox (the INBOX or a folder) opened for delivery: every directory below the
/// store root opened without following a link. The descriptors, not the paths, are what
/// is written through; the paths are for the log.
struct Mailbox {
    /// The user's directory (which holds `maildirsize`).
    user: OwnedFd,
    user_path: PathBuf,
    /// The INBOX's or the folder's directory.
    path: PathBuf,
    tmp: OwnedFd,
    new: OwnedFd,
    /// `INBOX`, or the folder as the client wrote it.
    folder: String,
}

impl Mailbox {
    fn user_dir(&self) -> UserDir<'_> {
        UserDir {
            fd: self.user.as_fd(),
            path: &self.user_path,
        }
    }
}

impl MaildirStore {
    pub fn new(settings: MaildirSettings) -> MaildirStore {
        let host = super::trace::host_name()
            .replace('/', "\\057")
            .replace(':', "\\072");
        MaildirStore {
            root: StoreRoot::new(settings.root.clone(), "STORE_ROOT", "mail store"),
            settings,
            host,
            counter: AtomicU64::new(0),
            flushes: DirFlushes::new(),
        }
    }

    fn user_path(&self, user: &str) -> PathBuf {
        self.settings.root.join(user)
    }

    /// A name no other delivery on this host uses.
    fn unique_name(&self, size: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{n}.{},S={size}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.host
        )
    }

    /// Opens `user`'s mailbox below `root`: `folder` when it is given and exists, else the
    /// INBOX. `None` when the user has no Maildir (no directory, or one without `new/`).
    fn open_mailbox(
        &self,
        root: BorrowedFd<'_>,
        user: &str,
        folder: Option<&str>,
    ) -> Result<Option<Mailbox>, MailboxError> {
        let user_path = self.user_path(user);
        let Some(user_fd) = subdir(root, &user_path)? else {
            return Ok(None);
        };
        let Some(inbox_new) = subdir(user_fd.as_fd(), &user_path.join("new"))? else {
            return Ok(None);
        };
        if let Some(f) = folder.filter(|f| !f.eq_ignore_ascii_case("INBOX")) {
            let path = user_path.join(format!(".{f}"));
            if let Some(dir) = subdir(user_fd.as_fd(), &path)? {
                if let Some(new) = subdir(dir.as_fd(), &path.join("new"))? {
                    let tmp = required_subdir(dir.as_fd(), &path.join("tmp"))?;
                    return Ok(Some(Mailbox {
                        user: user_fd,
                        user_path,
                        path,
                        tmp,
                        new,
                        folder: f.to_string(),
                    }));
                }
            }
        }
        let tmp = required_subdir(user_fd.as_fd(), &user_path.join("tmp"))?;
        Ok(Some(Mailbox {
            user: user_fd,
            path: user_path.clone(),
            user_path,
            tmp,
            new: inbox_new,
            folder: "INBOX".to_string(),
        }))
    }

    /// Creates `user`'s Maildir below `root` (`tmp`, `new`, `cur`, mode 0700; what already
    /// exists is kept) and makes the names durable. The root itself is never created.
    fn create_maildir(&self, root: BorrowedFd<'_>, user: &str) -> Result<(), MailboxError> {
        let path = self.user_path(user);
        let failed = |e: Errno| MailboxError::io(&path, "cannot create the mailbox", e.into());
        let made_user = make_dir(root, Path::new(user)).map_err(failed)?;
        // Opened without following a link: one planted since the mkdir is refused.
        let dir = required_subdir(root, &path)?;
        for sub in ["tmp", "new", "cur"] {
            make_dir(dir.as_fd(), Path::new(sub)).map_err(failed)?;
        }
        self.flushes.sync(dir.as_fd()).map_err(failed)?;
        if made_user {
            self.flushes.sync(root).map_err(failed)?;
        }
        log::info!("created the mailbox {}", shown(&path));
        Ok(())
    }

    /// Checks the quota of the user owning `target` for one more message of `size` octets;
    /// `user` is `None` for a mailbox not created yet (nothing in it to count).
    fn check_quota(
        &self,
        target: &Target,
        user: Option<UserDir<'_>>,
        size: u64,
    ) -> Result<(), MailboxError> {
        let user_path = self.user_path(&target.user);
        let admitted = match target.quota {
            Some(q) if !target.ignore_quota => match user {
                Some(u) => maildirsize::admits(u, q, size, usage, message_dirs),
                None => Ok(q.admits(0, 0, size)),
            },
            _ => Ok(true),
        };
        match admitted {
            Ok(true) => Ok(()),
            Ok(false) => Err(MailboxError::OverQuota {
                path: shown(&user_path),
                reply: over_quota(self.settings.over_quota_permanent),
            }),
            Err(e) => Err(MailboxError::io(
                &user_path,
                "cannot read the mailbox size",
                e,
            )),
        }
    }

    /// The mailbox `target` names, opened for a delivery of `size` octets and within its
    /// quota; created first when it is not there and `CREATE_MAILBOXES=1`.
    fn open_for_delivery(
        &self,
        root: BorrowedFd<'_>,
        target: &Target,
        size: u64,
    ) -> Result<Mailbox, MailboxError> {
        let folder = Some(target.folder.as_str());
        if let Some(m) = self.open_mailbox(root, &target.user, folder)? {
            self.check_quota(target, Some(m.user_dir()), size)?;
            return Ok(m);
        }
        let path = self.user_path(&target.user);
        let gone = || {
            MailboxError::io(
                &path,
                "the mailbox is gone",
                io::Error::from(io::ErrorKind::NotFound),
            )
        };
        if !self.settings.create {
            return Err(gone());
        }
        // Quota first: a message that does not fit creates nothing.
        self.check_quota(target, None, size)?;
        self.create_maildir(root, &target.user)?;
        self.open_mailbox(root, &target.user, None)?
            .ok_or_else(gone)
    }

    /// Puts the message into `m`'s `new/` under `name`: another name for `copy`, the copy
    /// already written (in `from`), or a new copy written for `m` when there is none yet or
    /// the link crosses file systems. `Some` when a copy was written for `m`.
    fn place(
        &self,
        m: &Mailbox,
        name: &str,
        message: &Message<'_>,
        copy: Option<(&Mailbox, &Copy)>,
    ) -> Result<Option<Copy>, MailboxError> {
        let stored =
            |e: Errno| MailboxError::io(&m.path.join("new"), "cannot store the message", e.into());
        if let Some((from, copy)) = copy {
            match copy.link(from, m, name) {
                Ok(()) => return Ok(None),
                Err(Errno::EXDEV) => {}
                Err(e) => return Err(stored(e)),
            }
        }
        let written = write_copy(m, name, message)
            .map_err(|e| MailboxError::io(&m.path.join("tmp"), "cannot write the message", e))?;
        match written.link(m, m, name) {
            Ok(()) => Ok(Some(written)),
            // The file lost its only name: whoever can write the mailbox replaced or removed it.
            Err(Errno::ENOENT) => Err(MailboxError::io(
                &m.path.join("tmp").join(name),
                "the mailbox was changed during the delivery (tmp/ or new/ replaced)",
                Errno::ENOENT.into(),
            )),
            Err(e) => {
                written.discard(m, name);
                Err(stored(e))
            }
        }
    }
}

/// Writes the message to `tmp/<name>` of `m` and flushes it.
fn write_copy(m: &Mailbox, name: &str, message: &Message<'_>) -> io::Result<Copy> {
    let mut file = safe_fs::create_new_at(m.tmp.as_fd(), Path::new(name), OFlag::O_WRONLY, 0o600)?;
    if let Err(e) = write_message(&mut file, message).and_then(|()| file.sync_data()) {
        remove(m.tmp.as_fd(), name);
        return Err(e);
    }
    Ok(Copy { file })
}

/// A copy of the message, written and flushed as `tmp/<name>` of the mailbox it was written
/// for, that the names in `new/` are made for. Every name is made through the open file, not
/// through `tmp/<name>`: whoever can write that mailbox cannot swap the file for one of its
/// own before the links into the other recipients' mailboxes are made.
struct Copy {
    file: File,
}

impl Copy {
    /// Makes `name` in `to`'s `new/` another name for this copy, written for `from`.
    /// `ENOENT` for `from` itself when its `tmp/<name>` is no longer this copy; `EXDEV`, as
    /// for a mailbox on another file system, when another mailbox cannot be given this copy
    /// safely, so that the caller writes that one a copy of its own.
    fn link(&self, from: &Mailbox, to: &Mailbox, name: &str) -> Result<(), Errno> {
        match safe_fs::link_open_file(self.file.as_fd(), to.new.as_fd(), Path::new(name)) {
            Err(Errno::ENOENT) if !safe_fs::can_link_open_files() => {
                self.link_by_name(from, to, name)
            }
            linked => linked,
        }
    }

    /// Without `/proc`: the link is made through the copy's name in `from`'s `tmp/`, which
    /// whoever can write `from` may have replaced, so what it linked is checked before it is
    /// kept. For another mailbox the name is made in its `tmp/`, checked there, and only then
    /// linked into its `new/`, so no reader there sees another file. For `from` itself it is
    /// made in `new/` and taken back at once when it is not the copy: `from`'s own mail is
    /// all that whoever can write `from` can touch.
    fn link_by_name(&self, from: &Mailbox, to: &Mailbox, name: &str) -> Result<(), Errno> {
        let own = std::ptr::eq(from, to);
        let first = if own { &to.new } else { &to.tmp };
        let file = self.file.as_fd();
        let same =
            safe_fs::link_name_if_same(file, from.tmp.as_fd(), Path::new(name), first.as_fd())?;
        if !same {
            let then = if own {
                "its own delivery fails".to_string()
            } else {
                format!("{} is given a copy of its own", shown(&to.path))
            };
            log::warn!(
                "{}/tmp/{name} was replaced during the delivery (not the copy made): {then}",
                shown(&from.path)
            );
            return Err(if own { Errno::ENOENT } else { Errno::EXDEV });
        }
        if own {
            return Ok(());
        }
        // Another link, not a rename: it fails on a name already taken, on any file system.
        let placed =
            nix::unistd::linkat(to.tmp.as_fd(), name, to.new.as_fd(), name, AtFlags::empty());
        if !remove(to.tmp.as_fd(), name) {
            log::warn!("cannot remove {}/tmp/{name}", shown(&to.path));
        }
        placed
    }

    /// Removes the name in `tmp/` of `m`, which this copy was written for, once `new/` holds
    /// the names the message needs (or a failure means it needs none).
    fn discard(&self, m: &Mailbox, name: &str) {
        if !remove(m.tmp.as_fd(), name) {
            log::warn!("cannot remove {}/tmp/{name}", shown(&m.path));
        }
    }
}

/// `mkdirat` with mode 0700; `false` when something is already there (what it is, the open
/// that follows finds out).
fn make_dir(parent: BorrowedFd<'_>, name: &Path) -> Result<bool, Errno> {
    match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the file `name` from `dir`; `false` when that failed (the caller says whether
/// that matters).
fn remove(dir: BorrowedFd<'_>, name: &str) -> bool {
    nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).is_ok()
}

/// The message directories of a user: `new/` and `cur/` of the INBOX and of every folder.
pub fn message_dirs(user_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut folders = vec![user_dir.to_path_buf()];
    for entry in fs::read_dir(user_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let b = name.as_encoded_bytes();
        if b.len() > 1 && b[0] == b'.' && b != b".." && entry.file_type()?.is_dir() {
            folders.push(entry.path());
        }
    }
    Ok(folders
        .iter()
        .flat_map(|f| [f.join("new"), f.join("cur")])
        .collect())
}

/// Octets and messages in the user's INBOX and folders.
pub fn usage(user_dir: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut messages) = (0u64, 0u64);
    for dir in message_dirs(user_dir)? {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            messages += 1;
            bytes += match size_from_name(&name) {
                Some(s) => s,
                None => entry.metadata().map(|m| m.len()).unwrap_or(0),
            };
        }
    }
    Ok((bytes, messages))
}

/// The `S=` size in a Maildir file name (`...,S=1234` or `...,S=1234,W=1260:2,S`).
fn size_from_name(name: &OsStr) -> Option<u64> {
    let s = name.to_str()?;
    let base = s.split(':').next()?;
    base.split(',')
        .find_map(|part| part.strip_prefix("S="))
        .and_then(|n| n.parse().ok())
}

/// Writes the message (trace header, then body) to `file`: one `writev` when the body is
/// in memory, pieces when it is in a temporary file.
fn write_message(file: &mut File, message: &Message<'_>) -> io::Result<()> {
    match message.body.as_slice() {
        Some(body) => write_all_vectored(file, &[message.trace, body]),
        None => file
            .write_all(message.trace)
            .and_then(|()| message.body.chunks(|c| file.write_all(c))),
    }
}

fn write_all_vectored(file: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Store for MaildirStore {
    fn spill_dir(&self, first: &Target) -> PathBuf {
        Path::new(&first.key).join("tmp")
    }

    fn resolve(&self, r: &Recipient, size: u64) -> Result<Target, Reply> {
        let root = self.root.open()?;
        let opened = self.open_mailbox(root.as_fd(), &r.user, r.folder.as_deref());
        let mailbox = match opened {
            Ok(Some(m)) => Some(m),
            Ok(None) if self.settings.create => None,
            Ok(None) => return Err(Reply::new(550, "5.1.1", "User unknown: no mailbox here")),
            Err(e) => {
                log::error!("{e}");
                return Err(e.reply());
            }
        };
        let (key, folder) = match &mailbox {
            Some(m) => (m.path.to_string_lossy().into_owned(), m.folder.clone()),
            // Created when a message is delivered into it; folders never are.
            None => (
                self.user_path(&r.user).to_string_lossy().into_owned(),
                "INBOX".to_string(),
            ),
        };
        let target = Target {
            key,
            user: r.user.clone(),
            folder,
            quota: r.quota.or(self.settings.default_quota),
            ignore_quota: r.ignores_quota(),
        };
        match self.check_quota(&target, mailbox.as_ref().map(Mailbox::user_dir), size) {
            Ok(()) => Ok(target),
            Err(e @ MailboxError::OverQuota { .. }) => Err(e.reply()),
            Err(e) => {
                log::error!("{e}");
                Err(e.reply())
            }
        }
    }

    fn deliver(&self, message: &Message<'_>, targets: &[&Target]) -> Vec<Result<(), Reply>> {
        let root = match self.root.open() {
            Ok(fd) => fd,
            Err(reply) => return vec![Err(reply); targets.len()],
        };
        let size = message.size();
        let name = self.unique_name(size);
        // One entry per target: its opened mailbox once the message is in its new/.
        let mut placed: Vec<Option<Mailbox>> = Vec::with_capacity(targets.len());
        let mut results: Vec<Result<(), Reply>> = Vec::with_capacity(targets.len());
        // The one copy written (and which entry of `placed` it was written for).
        let mut written: Option<(usize, Copy)> = None;
        for t in targets {
            let outcome = self.open_for_delivery(root.as_fd(), t, size).and_then(|m| {
                let copy = written
                    .as_ref()
                    .and_then(|(w, c)| placed[*w].as_ref().map(|from| (from, c)));
                let copied = self.place(&m, &name, message, copy)?;
                Ok((m, copied))
            });
            match outcome {
                Ok((m, copied)) => {
                    match copied {
                        // A copy on another file system: its tmp name is not needed.
                        Some(c) if written.is_some() => c.discard(&m, &name),
                        Some(c) => written = Some((placed.len(), c)),
                        None => {}
                    }
                    placed.push(Some(m));
                    results.push(Ok(()));
                }
                Err(e) => {
                    log::error!("message {}: {e}", message.id);
                    placed.push(None);
                    results.push(Err(e.reply()));
                }
            }
        }
        // Every new/ that got the message, flushed side by side.
        let news: Vec<BorrowedFd<'_>> = placed.iter().flatten().map(|m| m.new.as_fd()).collect();
        let mut flushed = self.flushes.sync_all(&news).into_iter();
        for (m, result) in placed.iter().zip(results.iter_mut()) {
            let Some(m) = m else { continue };
            if let Err(e) = flushed.next().unwrap_or(Err(Errno::EIO)) {
                let new = m.path.join("new");
                log::error!(
                    "message {}: fsync of {} failed: {e}",
                    message.id,
                    shown(&new)
                );
                // The relay will retry this recipient: the copy must not stay, or the
                // user would get the message twice.
                if !remove(m.new.as_fd(), &name) {
                    log::error!("cannot withdraw {}/{name}", shown(&new));
                }
                *result = Err(io_failure("cannot make the delivery durable", &e.into()));
            } else {
                // Also without a quota now: a cache left from an earlier quota stays
                // right (recording is nothing when there is no cache).
                maildirsize::record(m.user_dir(), size);
            }
        }
        if let Some((w, copy)) = &written {
            if let Some(m) = placed[*w].as_ref() {
                copy.discard(m, &name);
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::SystemTime;

    fn store(root: &Path, create: bool) -> MaildirStore {
        MaildirStore::new(MaildirSettings {
            root: root.to_path_buf(),
            create,
            default_quota: None,
            over_quota_permanent: false,
        })
    }

    fn rcpt(s: &str) -> Recipient {
        Recipient::parse(s).expect("valid")
    }

    fn msg(body: &[u8]) -> Message<'static> {
        Message {
            id: "T.1.1",
            sender: "s@x",
            trace: b"Return-Path: <s@x>\r\n",
            // Leaked: a test's few bodies live as long as the test process.
            body: Box::leak(Box::new(crate::lmtp::body::Body::from_bytes(body))),
            received: SystemTime::now(),
        }
    }

    /// A Maildir as an administrator provisions one.
    fn create_maildir(dir: &Path) -> io::Result<()> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(())
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn one_copy_hard_linked_into_every_mailbox() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), false);
        create_maildir(&root.path().join("alice")).unwrap();
        create_maildir(&root.path().join("bob")).unwrap();
        create_maildir(&root.path().join("bob/.Sent")).unwrap();
        let e = s.resolve(&rcpt("nobody"), 0).unwrap_err();
        assert_eq!((e.code, e.status), (550, "5.1.1"));
        let a = s.resolve(&rcpt("Alice@x"), 0).unwrap();
        let b = s.resolve(&rcpt("bob+Sent@x"), 0).unwrap();
        let c = s.resolve(&rcpt("alice+nofolder@x"), 0).unwrap();
        assert_eq!((b.folder.as_str(), c.folder.as_str()), ("Sent", "INBOX"));
        assert_eq!(a.key, c.key);
        let results = s.deliver(&msg(b"Subject: t\r\n\r\nhi\r\n"), &[&a, &b]);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let fa = files(&root.path().join("alice/new"));
        let fb = files(&root.path().join("bob/.Sent/new"));
        assert_eq!((fa.len(), fb.len()), (1, 1));
        assert_eq!(
            fs::read(&fa[0]).unwrap(),
            b"Return-Path: <s@x>\r\nSubject: t\r\n\r\nhi\r\n"
        );
        let (ma, mb) = (fs::metadata(&fa[0]).unwrap(), fs::metadata(&fb[0]).unwrap());
        assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2));
        assert_eq!(ma.mode() & 0o777, 0o600);
        assert!(files(&root.path().join("alice/tmp")).is_empty());
        let name = fa[0].file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with(",S=38") && !name.starts_with('.'), "{name}");
        assert_eq!(usage(&root.path().join("bob")).unwrap(), (38, 1));
    }

    #[test]
    fn mailboxes_created_by_a_delivery_not_by_rcpt() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), true);
        let t = s.resolve(&rcpt("Carol+Sent"), 0).unwrap();
        assert_eq!(t.folder, "INBOX", "folders are never created");
        assert!(!root.path().join("carol").exists());
        assert!(s.deliver(&msg(b"x\r\n"), &[&t])[0].is_ok());
        assert!(root.path().join("carol/cur").is_dir());
        assert_eq!(files(&root.path().join("carol/new")).len(), 1);
    }

    #[test]
    fn a_missing_root_is_a_temporary_failure_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        for create in [false, true] {
            let s = store(&root, create);
            let e = s.resolve(&rcpt("alice"), 0).unwrap_err();
            assert_eq!((e.code, e.status), (451, "4.3.0"), "{e}");
            assert!(!root.exists());
        }
        fs::write(&root, b"").unwrap();
        let e = store(&root, true).resolve(&rcpt("alice"), 0).unwrap_err();
        assert_eq!(
            (e.code, e.status),
            (451, "4.3.0"),
            "a file in its place: {e}"
        );
    }

    #[test]
    fn links_below_the_root_are_refused_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        create_maildir(elsewhere.path()).unwrap();
        let s = store(root.path(), true);
        // A user directory, a new/ and a folder that are links to a Maildir elsewhere.
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("linked")).unwrap();
        create_maildir(&root.path().join("erin")).unwrap();
        fs::remove_dir(root.path().join("erin/new")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("new"), root.path().join("erin/new"))
            .unwrap();
        create_maildir(&root.path().join("fay")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("fay/.Sent")).unwrap();
        for who in ["linked", "erin", "fay+Sent"] {
            let e = s.resolve(&rcpt(who), 0).unwrap_err();
            assert_eq!((e.code, e.status), (451, "4.3.0"), "{who}: {e}");
        }
        // One swapped after RCPT: the delivery refuses it too.
        let t = s.resolve(&rcpt("fay"), 0).unwrap();
        fs::remove_dir(root.path().join("fay/tmp")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("tmp"), root.path().join("fay/tmp"))
            .unwrap();
        let e = s.deliver(&msg(b"x\r\n"), &[&t]).remove(0).unwrap_err();
        assert_eq!((e.code, e.status), (451, "4.3.0"), "{e}");
        for sub in ["tmp", "new", "cur"] {
            assert!(files(&elsewhere.path().join(sub)).is_empty(), "{sub}");
        }
    }

    #[test]
    fn quota_at_rcpt_and_at_delivery() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), true);
        let mut r = rcpt("dave");
        r.quota = Some(Quota {
            bytes: 100,
            messages: 2,
        });
        let t = s.resolve(&r, 10).unwrap();
        assert!(s.deliver(&msg(b"0123456789\r\n"), &[&t])[0].is_ok());
        let e = s.resolve(&r, 90).unwrap_err();
        assert_eq!((e.code, e.status), (452, "4.2.2"));
        assert!(s.deliver(&msg(b"0123456789\r\n"), &[&t])[0].is_ok());
        let e = s.resolve(&r, 0).unwrap_err();
        assert_eq!(e.code, 452, "message count limit");
        r.flags = crate::lmtp::address::XDFLG_IGNORE_QUOTA;
        let t = s.resolve(&r, 0).unwrap();
        assert!(s.deliver(&msg(b"x\r\n"), &[&t])[0].is_ok());
        assert_eq!(usage(&root.path().join("dave")).unwrap().1, 3);
    }

    #[test]
    fn unwritable_mailbox_is_a_temporary_failure_for_it_alone() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), true);
        create_maildir(&root.path().join("erin")).unwrap();
        create_maildir(&root.path().join("frank")).unwrap();
        let a = s.resolve(&rcpt("erin"), 0).unwrap();
        let b = s.resolve(&rcpt("frank"), 0).unwrap();
        // frank's new/ is replaced by a file after RCPT: it is refused, not recreated.
        fs::remove_dir(root.path().join("frank/new")).unwrap();
        fs::write(root.path().join("frank/new"), b"").unwrap();
        let r = s.deliver(&msg(b"x\r\n"), &[&a, &b]);
        assert!(r[0].is_ok());
        let e = r[1].as_ref().unwrap_err();
        assert_eq!((e.code, e.status), (451, "4.3.0"), "{e}");
    }

    /// Without `/proc`, a link made by name: the other mailbox gets the copy only while the
    /// name in the first one's `tmp/` is the copy written there, and nothing at all (not in
    /// its `new/`, not in its `tmp/`) when that name was swapped, so the caller writes it a
    /// copy of its own (`EXDEV`).
    #[test]
    fn a_link_by_name_gives_another_mailbox_only_the_copy_written() {
        let dir = tempfile::tempdir().unwrap();
        for user in ["alice", "bob"] {
            create_maildir(&dir.path().join(user)).unwrap();
        }
        let s = store(dir.path(), false);
        let root = File::open(dir.path()).unwrap();
        let open = |user: &str| s.open_mailbox(root.as_fd(), user, None).unwrap().unwrap();
        let (alice, bob) = (open("alice"), open("bob"));
        let m = msg(b"Subject: genuine\r\n\r\nhi\r\n");
        let copy = write_copy(&alice, "one", &m).unwrap();
        assert_eq!(copy.link_by_name(&alice, &alice, "one"), Ok(()));
        assert_eq!(copy.link_by_name(&alice, &bob, "one"), Ok(()));
        let ino = copy.file.metadata().unwrap().ino();
        let linked = fs::metadata(dir.path().join("bob/new/one")).unwrap();
        assert_eq!(linked.ino(), ino);
        assert!(files(&dir.path().join("bob/tmp")).is_empty());

        let copy = write_copy(&alice, "two", &m).unwrap();
        let planted = dir.path().join("alice/tmp/planted");
        fs::write(&planted, b"Subject: forged\r\n\r\n").unwrap();
        fs::rename(&planted, dir.path().join("alice/tmp/two")).unwrap();
        assert_eq!(copy.link_by_name(&alice, &bob, "two"), Err(Errno::EXDEV));
        assert_eq!(copy.link_by_name(&alice, &alice, "two"), Err(Errno::ENOENT));
        assert_eq!(
            files(&dir.path().join("bob/new")),
            [dir.path().join("bob/new/one")]
        );
        assert!(files(&dir.path().join("bob/tmp")).is_empty());
        assert_eq!(
            files(&dir.path().join("alice/new")),
            [dir.path().join("alice/new/one")]
        );
    }
}
