//! What a delivery back end is: the session asks a [`Store`] at `RCPT` time whether a
//! recipient can be delivered to (and where), and after the message data to deliver one
//! message to every accepted mailbox at once.
//!
//! The session owns the protocol; a store owns the disk. A store never sends anything to the
//! client: it answers with [`Reply`] values, which the session sends in RCPT order.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::address::Recipient;
use super::body::Body;
use super::reply::Reply;
use crate::log_text::Throttle;

/// Kept for the callers that open a mailbox file by path; the one implementation is
/// [`crate::safe_fs::open_regular`].
pub use crate::safe_fs::open_regular;

/// A mailbox quota: at most `bytes` octets and `messages` messages in all the user's folders.
/// Zero means "no limit" for that dimension (as `XQUOTA=0,0` does from a relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub bytes: u64,
    pub messages: u64,
}

impl Quota {
    /// Whether a mailbox holding `used_bytes` in `used_messages` messages can take one more
    /// message of `size` octets.
    pub fn admits(&self, used_bytes: u64, used_messages: u64, size: u64) -> bool {
        let bytes_ok = self.bytes == 0 || used_bytes.saturating_add(size) <= self.bytes;
        let count_ok = self.messages == 0 || used_messages < self.messages;
        bytes_ok && count_ok
    }
}

/// Where one recipient's copy goes, as the store resolved it at `RCPT` time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Identifies the mailbox: two recipients with the same key are one delivery (the
    /// message is stored once; both get the same reply).
    pub key: String,
    /// The account (lower case), for the log.
    pub user: String,
    /// The folder the message goes to, as the log shows it (`INBOX`, `Sent`, ...).
    pub folder: String,
    /// The quota to enforce, if any (from `XQUOTA=` or the channel's default).
    pub quota: Option<Quota>,
    /// Deliver even when over quota (`XDFLG` bit 2).
    pub ignore_quota: bool,
}

/// One message as the session received it.
#[derive(Debug)]
pub struct Message<'a> {
    /// The identifier the replies and the log carry.
    pub id: &'a str,
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub sender: &'a str,
    /// The trace header the image adds (`Return-Path:` and `Received:`), CRLF line ends.
    pub trace: &'a [u8],
    /// The message as received, dot-unstuffing undone, CRLF line ends, without the final
    /// `.` line (in memory, or in a temporary file when large).
    pub body: &'a Body,
    /// When the data was complete.
    pub received: SystemTime,
}

impl Message<'_> {
    /// Octets the stored message has in CRLF form (trace header plus body).
    pub fn size(&self) -> u64 {
        self.trace.len() as u64 + self.body.len()
    }
}

/// A delivery back end. Shared by every connection thread of a worker. The texts of the
/// replies it returns do not name the recipient: the session puts the address as the client
/// wrote it in front (`<Alice@example.com> Mailbox is full ...`), so a store need not know it
/// and store paths never reach a client.
pub trait Store: Send + Sync {
    /// Where a large message for `first` (the first accepted recipient) is kept while it
    /// arrives: an unnamed temporary file on the store's own file system, in a directory the
    /// worker can write to.
    fn spill_dir(&self, first: &Target) -> PathBuf;

    /// At `RCPT`: can `recipient` be delivered to? `size` is the message size the client
    /// declared with `MAIL FROM ... SIZE=` (0 when it did not). `Err` is the reply to send
    /// (`550 5.1.1` unknown user, `452 4.2.2` over quota, ...).
    fn resolve(&self, recipient: &Recipient, size: u64) -> Result<Target, Reply>;

    /// After the data: deliver `message` to each target (no two with the same key), and
    /// return one result per target, in order. `Ok(())` only once the copy for that target
    /// is on stable storage (written, fsynced, named in place, directory fsynced).
    fn deliver(&self, message: &Message<'_>, targets: &[&Target]) -> Vec<Result<(), Reply>>;
}

/// The reply for a recipient whose mailbox is over quota: `452 4.2.2` (the relay retries,
/// as the original's `4.2.2`) or, when the channel says over quota is permanent, `552 5.2.2`.
pub fn over_quota(permanent: bool) -> Reply {
    let text = "Mailbox is full (over quota)";
    if permanent {
        Reply::new(552, "5.2.2", text)
    } else {
        Reply::new(452, "4.2.2", text)
    }
}

/// A reply for an I/O failure while storing: `452 4.3.1` when the disk or a quota of the
/// system is full, else `451 4.3.0`; the relay keeps the message and retries.
pub fn io_failure(what: &str, e: &io::Error) -> Reply {
    let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
    let text = format!("Temporary failure: {what}: {e}");
    if full {
        Reply::new(452, "4.3.1", text)
    } else {
        Reply::new(451, "4.3.0", text)
    }
}

/// The reply for a recipient whose mailbox has something in it that must not be written
/// through (a symbolic link, a file where a directory belongs, a file with other links or
/// another owner): a temporary failure, so the relay keeps the message while the
/// administrator looks; the log names the path.
pub fn unsafe_mailbox() -> Reply {
    Reply::new(
        451,
        "4.3.0",
        "Temporary failure: the mailbox is not safe to write to",
    )
}

/// The reply while the store root (`STORE_ROOT`, `MAIL_SPOOL`) is missing or cannot be
/// read: a temporary failure for every recipient, never "user unknown", so a store that is
/// moved or not mounted makes the relays wait instead of bouncing mail. `what` names it for
/// the client: "mail store", "mail spool".
pub fn store_unavailable(what: &str) -> Reply {
    Reply::new(
        451,
        "4.3.0",
        format!("Temporary failure: the {what} is not available"),
    )
}

/// How long one failure of the store root is logged once: every recipient of a burst gets
/// the same `451`, the log gets one line per this much time.
const ROOT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The directory a store delivers under (`STORE_ROOT`, `MAIL_SPOOL`), which the
/// administrator creates and a delivery never does: opened for every recipient, so that
/// "user unknown" is only ever said below a root that is there.
pub struct StoreRoot {
    path: PathBuf,
    /// The option that names it, for the log (`STORE_ROOT`).
    option: &'static str,
    /// What it is called in the reply that defers a recipient ("mail store").
    what: &'static str,
    /// Lets the failure's log line through once per [`ROOT_WARNING_EVERY`].
    warnings: Throttle,
    /// Whether the root failed since it was last opened: read on every recipient, so that
    /// its coming back is logged once.
    failing: AtomicBool,
}

impl StoreRoot {
    pub fn new(path: PathBuf, option: &'static str, what: &'static str) -> StoreRoot {
        StoreRoot {
            path,
            option,
            what,
            warnings: Throttle::new(ROOT_WARNING_EVERY),
            failing: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the root (a link to it is followed: the administrator may link a store root).
    /// Missing, not a directory, unreadable or any other error: [`store_unavailable`], and
    /// a log line with the path at most once per [`ROOT_WARNING_EVERY`].
    pub fn open(&self) -> Result<OwnedFd, Reply> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&self.path, flags, Mode::empty()) {
            Ok(fd) => {
                if self.failing.load(Ordering::Relaxed) {
                    self.recovered();
                }
                Ok(fd)
            }
            Err(e) => {
                self.failed(io::Error::from(e));
                Err(store_unavailable(self.what))
            }
        }
    }

    fn failed(&self, e: io::Error) {
        self.failing.store(true, Ordering::Relaxed);
        if !self.warnings.allows(self.option) {
            return;
        }
        let why = match e.raw_os_error() {
            Some(libc::ENOENT) => "does not exist".to_string(),
            Some(libc::ENOTDIR) => "is not a directory".to_string(),
            _ => e.to_string(),
        };
        log::error!(
            "{}={}: {why}; every recipient gets 451 4.3.0 until it is back (it is never created \
             by a delivery; this is logged at most once a minute)",
            self.option,
            self.path.display()
        );
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            log::info!("{}={}: available again", self.option, self.path.display());
        }
    }
}
