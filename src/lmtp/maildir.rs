//! The message store of `tcp_lmtp_server`: one Maildir per user under a store root, with
//! Maildir++ folders (the layout Dovecot reads with `mail_location = maildir:ROOT/%n`).
//!
//! ```text
//! STORE_ROOT/alice/{tmp,new,cur}           INBOX
//! STORE_ROOT/alice/.Sent/{tmp,new,cur}     folder "Sent" (alice+Sent@domain)
//! ```
//!
//! A user is known when `STORE_ROOT/<user>/new` is a directory (user names in lower case);
//! with `CREATE_MAILBOXES=1` a missing one is created at the first `RCPT`. `user+folder`
//! goes to the folder when it exists, else to the INBOX; folders are never created here.
//!
//! Delivery of one message to several mailboxes writes it once: to `tmp/` of the first
//! mailbox, `fsync`, then `link()` into `new/` of every mailbox (a copy where a mailbox is on
//! another file system), then `fsync` of each `new/` directory, then the `tmp/` name is
//! removed. Only after its directory `fsync` does a recipient get `Ok`: a `250` means the
//! message survives a crash. A crash before that leaves at most a file in `tmp/`, which
//! readers never look at (Dovecot removes such files after 36 hours). File names follow the
//! Maildir rules: `<seconds>.M<microseconds>P<pid>Q<counter>.<host>,S=<size>`.
//!
//! Quota (`XQUOTA=bytes,messages` from the relay, or the channel's `DEFAULT_QUOTA`) is the
//! sum over the user's INBOX and folders (`new/` and `cur/`), sizes read from `,S=` in file
//! names where present; it is counted only for recipients that have a quota, and kept in
//! the Maildir++ cache `maildirsize` ([`maildirsize`]) so it is not recounted each time.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use super::address::Recipient;
use super::maildirsize;
use super::reply::Reply;
use super::store::{io_failure, over_quota, Message, Quota, Store, Target};

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
    /// This host's name as it may appear in a file name (`/` and `:` escaped).
    host: String,
    counter: AtomicU64,
}

impl MaildirStore {
    pub fn new(settings: MaildirSettings) -> MaildirStore {
        let host = super::trace::host_name()
            .replace('/', "\\057")
            .replace(':', "\\072");
        MaildirStore {
            settings,
            host,
            counter: AtomicU64::new(0),
        }
    }

    fn user_dir(&self, user: &str) -> PathBuf {
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

    /// Checks the quota of the user owning `target` for one more message of `size` octets:
    /// the over-quota reply, or a temporary failure when the usage cannot be read.
    fn check_quota(&self, target: &Target, size: u64) -> Result<(), Reply> {
        let admitted = match target.quota {
            Some(q) if !target.ignore_quota => {
                maildirsize::admits(&self.user_dir(&target.user), q, size, usage, message_dirs)
            }
            _ => Ok(true),
        };
        match admitted {
            Ok(true) => Ok(()),
            Ok(false) => Err(over_quota(self.settings.over_quota_permanent)),
            Err(e) => Err(io_failure("cannot read the mailbox size", &e)),
        }
    }
}

/// Creates a user's Maildir (`tmp`, `new`, `cur`, mode 0700) and makes the names durable.
fn create_maildir(dir: &Path) -> io::Result<()> {
    let mut b = DirBuilder::new();
    b.recursive(true).mode(0o700);
    for sub in ["tmp", "new", "cur"] {
        b.create(dir.join(sub))?;
    }
    sync_dir(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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

/// Writes the message (trace header, then body) to a new file at `path` and fsyncs it: one
/// `writev` when the body is in memory, pieces when it is in a temporary file.
fn write_new(path: &Path, message: &Message<'_>) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let written = match message.body.as_slice() {
        Some(body) => write_all_vectored(&mut file, &[message.trace, body]),
        None => file
            .write_all(message.trace)
            .and_then(|()| message.body.chunks(|c| file.write_all(c))),
    };
    if let Err(e) = written.and_then(|()| file.sync_data()) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
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
        let user_dir = self.user_dir(&r.user);
        if !user_dir.join("new").is_dir() {
            if !self.settings.create {
                return Err(Reply::new(550, "5.1.1", "User unknown: no mailbox here"));
            }
            if let Err(e) = create_maildir(&user_dir) {
                log::error!("cannot create the mailbox {}: {e}", user_dir.display());
                return Err(io_failure("cannot create the mailbox", &e));
            }
            log::info!("created the mailbox {}", user_dir.display());
        }
        let (dir, folder) = match &r.folder {
            Some(f) if !f.eq_ignore_ascii_case("INBOX") => {
                let d = user_dir.join(format!(".{f}"));
                if d.join("new").is_dir() {
                    (d, f.clone())
                } else {
                    (user_dir.clone(), "INBOX".to_string())
                }
            }
            _ => (user_dir.clone(), "INBOX".to_string()),
        };
        let target = Target {
            key: dir.to_string_lossy().into_owned(),
            user: r.user.clone(),
            folder,
            quota: r.quota.or(self.settings.default_quota),
            ignore_quota: r.ignores_quota(),
        };
        self.check_quota(&target, size).map(|()| target)
    }

    fn deliver(&self, message: &Message<'_>, targets: &[&Target]) -> Vec<Result<(), Reply>> {
        let size = message.size();
        let name = self.unique_name(size);
        // The one written copy, once some target has it.
        let mut written: Option<PathBuf> = None;
        let mut results: Vec<Result<(), Reply>> = Vec::with_capacity(targets.len());
        for t in targets {
            let dir = Path::new(&t.key);
            let result = self
                .check_quota(t, size)
                .and_then(|()| self.place(dir, &name, message, &mut written));
            if let Err(r) = &result {
                log::error!("message {} to {}: {r}", message.id, dir.display());
            }
            results.push(result);
        }
        for (t, result) in targets.iter().zip(results.iter_mut()) {
            if result.is_ok() {
                let new = Path::new(&t.key).join("new");
                if let Err(e) = sync_dir(&new) {
                    log::error!("message {}: fsync of {}/new failed: {e}", message.id, t.key);
                    // The relay will retry this recipient: the copy must not stay, or the
                    // user would get the message twice.
                    if let Err(e) = fs::remove_file(new.join(&name)) {
                        log::error!("cannot withdraw {}/new/{name}: {e}", t.key);
                    }
                    *result = Err(io_failure("cannot make the delivery durable", &e));
                } else {
                    // Also without a quota now: a cache left from an earlier quota stays
                    // right (recording is nothing when there is no cache).
                    maildirsize::record(&self.user_dir(&t.user), size);
                }
            }
        }
        if let Some(tmp) = written {
            if let Err(e) = fs::remove_file(&tmp) {
                log::warn!("cannot remove {}: {e}", tmp.display());
            }
        }
        results
    }
}

impl MaildirStore {
    /// Puts the message into `dir/new/name`: a hard link to the written copy, or a new copy
    /// when there is none yet or the link crosses file systems.
    fn place(
        &self,
        dir: &Path,
        name: &str,
        message: &Message<'_>,
        written: &mut Option<PathBuf>,
    ) -> Result<(), Reply> {
        let dest = dir.join("new").join(name);
        if let Some(src) = written.as_ref() {
            match fs::hard_link(src, &dest) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                Err(e) => return Err(io_failure("cannot store the message", &e)),
            }
        }
        let tmp = dir.join("tmp").join(name);
        write_new(&tmp, message).map_err(|e| io_failure("cannot write the message", &e))?;
        if let Err(e) = fs::hard_link(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(io_failure("cannot store the message", &e));
        }
        match written {
            None => *written = Some(tmp),
            Some(_) => {
                // A copy on another file system: its tmp name is not needed any more.
                let _ = fs::remove_file(&tmp);
            }
        }
        Ok(())
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
    fn mailboxes_created_on_demand() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), true);
        let t = s.resolve(&rcpt("Carol"), 0).unwrap();
        assert!(root.path().join("carol/cur").is_dir());
        assert!(s.deliver(&msg(b"x\r\n"), &[&t])[0].is_ok());
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
        let a = s.resolve(&rcpt("erin"), 0).unwrap();
        let b = s.resolve(&rcpt("frank"), 0).unwrap();
        // frank's new/ is replaced by a file: links into it fail.
        fs::remove_dir(root.path().join("frank/new")).unwrap();
        fs::write(root.path().join("frank/new"), b"").unwrap();
        let r = s.deliver(&msg(b"x\r\n"), &[&a, &b]);
        assert!(r[0].is_ok());
        let e = r[1].as_ref().unwrap_err();
        assert_eq!((e.code, e.status), (451, "4.3.0"), "{e}");
    }
}
