//! Taking a recipient's file-system identity for one delivery, as Postfix's `local(8)`
//! delivers to a mailbox as its owner: the worker never writes a mailbox with more rights
//! than the mailbox's owner has.
//!
//! Linux checks file access against the *file-system* uid, which is per thread and which a
//! process may set to any uid when it has `CAP_SETUID` (root has it) and to its own uids
//! without it. So the delivering thread calls `setfsuid(recipient)`, opens, creates, appends
//! to, `fsync`s or cuts back the mailbox, and switches back; the other threads keep the
//! worker's identity all along. glibc's `setfsuid` is the bare system call (unlike
//! `setuid`, it is not broadcast to every thread), and it reports no failure, so each
//! switch is verified with a second call that changes nothing. The fs gid stays the
//! worker's own (the mail group in a `2775 root:mail` spool).
//!
//! A switch is undone when its [`AsUser`] guard is dropped, on every path: return, error,
//! panic. The guard cannot leave its thread. Switching back to the worker's own uid needs no
//! privilege, so it cannot fail; if the kernel ever said otherwise the process stops rather
//! than write anything more with someone else's identity.
//!
//! This module decides nothing about who may be delivered to: the store does.

use std::marker::PhantomData;

/// `CAP_SETUID`, bit 7 of the capability sets (`linux/capability.h`).
const CAP_SETUID: u32 = 7;

/// The thread's fs uid could not be set to `uid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot take the file-system identity of uid {uid} (still uid {now}): the worker needs \
     root or CAP_SETUID to write another account's mailbox"
)]
pub struct SwitchFailed {
    pub uid: u32,
    pub now: u32,
}

/// While it lives, this thread's file accesses are checked as those of the uid it was made
/// for; dropping it restores the identity the thread had before.
#[must_use = "the identity is switched back when the guard is dropped"]
pub struct AsUser {
    /// The fs uid to restore: the thread's before the switch.
    previous: u32,
    /// The fs uid is per thread: the guard must be dropped by the thread that made it.
    _this_thread: PhantomData<*const ()>,
}

/// Sets this thread's fs uid; returns the one it had (whether or not the change happened).
fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes a plain integer and changes only this thread's fs uid.
    unsafe { libc::setfsuid(uid as libc::uid_t) as u32 }
}

/// This thread's fs uid: `setfsuid(-1)` is never a valid uid, so it changes nothing and
/// returns the current one.
pub fn current_fsuid() -> u32 {
    set_fsuid(u32::MAX)
}

/// Makes this thread access files as `uid` until the guard is dropped.
pub fn become_user(uid: u32) -> Result<AsUser, SwitchFailed> {
    let previous = set_fsuid(uid);
    let now = current_fsuid();
    if now != uid {
        // Nothing changed, but leave no doubt about it.
        set_fsuid(previous);
        return Err(SwitchFailed { uid, now });
    }
    Ok(AsUser {
        previous,
        _this_thread: PhantomData,
    })
}

impl Drop for AsUser {
    fn drop(&mut self) {
        set_fsuid(self.previous);
        let now = current_fsuid();
        if now != self.previous {
            // Impossible: returning to an identity this thread had needs no privilege.
            // Going on would let the next file access use a recipient's rights.
            log::error!(
                "cannot switch the file-system identity back from uid {now} to uid {}: \
                 stopping",
                self.previous
            );
            std::process::abort();
        }
    }
}

/// Whether this process may take another uid's file-system identity: `CAP_SETUID` in its
/// effective set (root has it, unless capabilities were dropped).
pub fn can_take_other_identities() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    match effective {
        Some(caps) => caps & (1 << CAP_SETUID) != 0,
        // No /proc: root is the best guess.
        None => nix::unistd::Uid::effective().is_root(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::mpsc;

    /// A uid no account needs to have: the fs uid is only a number to the kernel.
    const OTHER: u32 = 4242;

    /// The fs uid `/proc` shows for the calling thread (the fourth field of `Uid:`).
    fn proc_fsuid() -> u32 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        uids.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    #[test]
    fn a_switch_holds_for_one_thread_and_is_undone_on_every_path() {
        let me = nix::unistd::Uid::effective().as_raw();
        if !can_take_other_identities() {
            // Unprivileged: another identity is refused and nothing changes.
            let e = become_user(OTHER)
                .err()
                .expect("refused without CAP_SETUID");
            assert_eq!(
                e,
                SwitchFailed {
                    uid: OTHER,
                    now: me
                }
            );
            assert_eq!(proc_fsuid(), me);
            let _same = become_user(me).expect("one's own uid is always allowed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        let (switched_tx, switched_rx) = mpsc::channel();
        let (checked_tx, checked_rx) = mpsc::channel::<()>();
        let file = dir.path().join("made-as-other");
        let worker = std::thread::spawn({
            let file = file.clone();
            move || {
                let guard = become_user(OTHER).unwrap();
                assert_eq!((current_fsuid(), proc_fsuid()), (OTHER, OTHER));
                std::fs::write(&file, b"x").unwrap();
                switched_tx.send(()).unwrap();
                checked_rx.recv().unwrap();
                drop(guard);
                assert_eq!((current_fsuid(), proc_fsuid()), (me, me));
                // A panic unwinding through a guard undoes the switch too.
                let unwound = std::panic::catch_unwind(|| {
                    let _g = become_user(OTHER).unwrap();
                    panic!("a delivery that panics");
                });
                assert!(unwound.is_err());
                assert_eq!(proc_fsuid(), me);
            }
        });
        switched_rx.recv().unwrap();
        // The other thread is switched; this one is not.
        assert_eq!(proc_fsuid(), me);
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), OTHER);
        checked_tx.send(()).unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn without_the_recipients_rights_a_file_it_cannot_write_stays_closed() {
        if !can_take_other_identities() {
            return; // covered by the test above: no switch is possible at all
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("root-only");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::thread::spawn(move || {
            let _g = become_user(OTHER).unwrap();
            let e = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        })
        .join()
        .unwrap();
    }
}
