//! The native image (`tcp_lmtpn_server`) against someone who can write its spool: a `1777`
//! `/var/mail`, where any local account may plant files beside the mailboxes (issue 10).
//! Each test carries out one attack or fault with the real dispatcher and image and checks
//! the guarantee: a forged dot-lock is never believed, a hard-linked or symbolic-linked
//! mailbox or lock is never written through, a missing spool is a temporary failure, and a
//! mailbox is written with its owner's rights, not root's.
//!
//! The spool is made `1777` explicitly (what the image needs: recipients create their own
//! mailboxes), and ownership is asserted about the recipient, never about the worker's uid,
//! so the tests hold whether the worker runs as root or as the mail account.

mod common;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use nix::unistd::{Pid, User};

use common::dispatcher::{Dispatcher, WAIT};
use common::lmtp::Lmtp;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=20";
/// A held lock is waited for at most 2 × 1 s, so a deferral is quick to see.
const SHORT_LOCK_WAIT: &str = "REPEAT_COUNT=2\nSLEEP_TIME=1";
/// The native service's log file (each worker writes its own version).
const LOG: &str = "tcp_lmtpsn_server.log";
/// The line a worker logs once its store is ready (after crash recovery).
const READY: &str = "delivering into mbox files";

fn account(name: &str) -> User {
    User::from_name(name)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no local account {name}: run scripts/install-test-deps.sh"))
}

/// An installation whose spool is `1777`, as a shared `/var/mail` often is, once its native
/// worker is ready.
fn start(options: &str) -> (Dispatcher, PathBuf) {
    let d = Dispatcher::start_lmtp(LIMITS, options);
    let spool = d.root.join("mail");
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o1777)).expect("chmod the spool");
    d.wait_for_service_log(LOG, READY);
    (d, spool)
}

/// The file at `path` still holds exactly `expected`.
fn assert_unchanged(path: &Path, expected: &[u8], what: &str) {
    let now = fs::read(path).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        now == expected,
        "{what} was changed: {} octets, {} before:\n{}",
        now.len(),
        expected.len(),
        String::from_utf8_lossy(&now)
    );
}

/// This host's name as the image writes it into its dot-locks.
fn lock_host() -> String {
    msdispatcher::lmtp::trace::host_name().replace(['/', ' '], "_")
}

/// A dot-lock in our own format that names this host and a pid no process has, owned by
/// the uid `owner`: what a worker that crashed in the middle of an append would leave, had
/// it been written by `owner`. It notes `length` and, as ours do, the mailbox file it was
/// taken for: the one now at the lock's name without `.lock` (a forger can read that off).
fn plant_lock(path: &Path, owner: u32, length: u64) {
    let mailbox = path.with_extension("");
    let (dev, ino) = fs::symlink_metadata(&mailbox).map_or((0, 0), |m| (m.dev(), m.ino()));
    fs::write(
        path,
        format!(
            "tcp_lmtpn_server {} 999999 {length} {dev}:{ino}\n",
            lock_host()
        ),
    )
    .expect("plant a dot-lock");
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(owner)), None)
        .expect("chown the lock");
}

/// Makes `path` (not what it may point to) look older than the five-minute stale age.
fn make_stale(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(600);
    fs::File::options()
        .write(true)
        .open(path)
        .expect("open the lock")
        .set_modified(old)
        .expect("backdate the lock");
}

fn deliver(d: &Dispatcher, to: &str, subject: &str) -> common::lmtp::Reply {
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    let r = c.send_message(
        "sender@relay.example",
        to,
        format!("Subject: {subject}\r\n\r\n{subject}\r\n").as_bytes(),
    );
    c.quit();
    r
}

/// A file outside the spool with known content, owned by `owner`.
fn victim(dir: &Path, name: &str, owner: &User) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let content = format!("precious data of {name}\n").into_bytes();
    fs::write(&path, &content).expect("write the victim");
    nix::unistd::chown(&path, Some(owner.uid), Some(owner.gid)).expect("chown the victim");
    (path, content)
}

/// Kills the one native worker and waits until its replacement has started and finished
/// its crash recovery (its store logged that it is ready).
fn restart_worker(d: &Dispatcher) {
    let before = d.service_log(LOG).matches(READY).count();
    let old = d.only_worker("tcp_lmtpn_server");
    nix::sys::signal::kill(old, Signal::SIGKILL).expect("kill the worker");
    let end = Instant::now() + WAIT;
    loop {
        let fresh = d
            .workers("tcp_lmtpn_server")
            .into_iter()
            .any(|p| Pid::from_raw(p) != old);
        if fresh && d.service_log(LOG).matches(READY).count() > before {
            return;
        }
        assert!(
            Instant::now() < end,
            "no fresh worker:\n{}",
            d.service_log(LOG)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fs uid of every thread of `pid` differs from its effective uid nowhere.
fn threads_with_a_foreign_fsuid(pid: Pid) -> Vec<String> {
    let mut foreign = Vec::new();
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("the worker's threads");
    for task in tasks.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let uids: Vec<&str> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .expect("a Uid: line")
            .split_whitespace()
            .collect();
        // real, effective, saved, file system
        if uids[3] != uids[1] {
            foreign.push(format!(
                "{}: Uid: {}",
                task.path().display(),
                uids.join(" ")
            ));
        }
    }
    foreign
}

#[test]
fn a_dot_lock_forged_by_another_account_never_cuts_the_mailbox() {
    let (alice, nobody) = (account("alice"), account("nobody"));
    let (d, spool) = start(SHORT_LOCK_WAIT);
    assert_eq!(deliver(&d, "alice", "first").code, 250);
    let mailbox = spool.join("alice");
    let first = fs::read(&mailbox).expect("alice's mailbox");

    // Anyone who can write the spool plants a lock that claims a dead worker of ours began
    // an append at length 0.
    let lock = spool.join("alice.lock");
    plant_lock(&lock, nobody.uid.as_raw(), 0);
    let r = deliver(&d, "alice", "second");
    assert_unchanged(
        &mailbox,
        &first,
        &format!("alice's mailbox (a forged lock believed? reply {r:?})"),
    );
    // Someone else's fresh lock is respected: the relay retries later.
    assert_eq!(
        (r.code, r.text().starts_with("4.2.0")),
        (450, true),
        "{r:?}"
    );
    assert!(lock.exists(), "a fresh lock of someone else stays");

    // Once stale, it is removed without being interpreted, and delivery goes on.
    make_stale(&lock);
    assert_eq!(deliver(&d, "alice", "third").code, 250);
    let text = String::from_utf8(fs::read(&mailbox).expect("mailbox")).expect("utf-8");
    assert!(text.starts_with(std::str::from_utf8(&first).expect("utf-8")));
    assert_eq!(text.matches("\nSubject: ").count(), 2, "{text}");
    assert!(text.contains("Subject: first\n") && text.contains("Subject: third\n"));
    assert!(!lock.exists());
    assert_eq!(
        fs::metadata(&mailbox).expect("mailbox").uid(),
        alice.uid.as_raw()
    );
    d.wait_for_service_log(LOG, "removed the stale dot-lock");
}

#[test]
fn a_foreign_dot_lock_dated_in_the_future_does_not_hold_a_mailbox_for_ever() {
    // `touch -d 2099-01-01 /var/mail/alice.lock` by anyone who can write the spool: a lock
    // that never grows old would defer alice's mail until the relay gives up on it.
    let nobody = account("nobody");
    let (d, spool) = start(SHORT_LOCK_WAIT);
    let lock = spool.join("alice.lock");
    fs::write(&lock, "a mail reader's lock\n").expect("plant a lock");
    nix::unistd::chown(&lock, Some(nobody.uid), None).expect("chown the lock");
    let year = Duration::from_secs(365 * 24 * 3600);
    fs::File::options()
        .write(true)
        .open(&lock)
        .expect("open the lock")
        .set_modified(SystemTime::now() + year)
        .expect("date the lock a year ahead");
    let r = deliver(&d, "alice", "despite the lock");
    assert_eq!(r.code, 250, "{r:?}");
    assert!(!lock.exists(), "the lock went as a stale one");
    d.wait_for_service_log(LOG, "removed the stale dot-lock");
}

#[test]
fn crash_recovery_never_truncates_a_file_hard_linked_into_the_spool() {
    let (bob, nobody) = (account("bob"), account("nobody"));
    let root = User::from_uid(nix::unistd::Uid::from_raw(0))
        .ok()
        .flatten()
        .expect("root");
    let (d, spool) = start(SHORT_LOCK_WAIT);
    // Two files outside the spool: one of root's (the attack: a forged lock of
    // another account), and one of bob's, linked as bob's mailbox with a lock that looks
    // like one of ours (owned by the worker's uid): the link count alone must save it.
    let (root_file, root_content) = victim(&d.root, "root-file", &root);
    let (bob_file, bob_content) = victim(&d.root, "bob-file", &bob);
    fs::hard_link(&root_file, spool.join("alice")).expect("link alice's mailbox");
    plant_lock(&spool.join("alice.lock"), nobody.uid.as_raw(), 0);
    fs::hard_link(&bob_file, spool.join("bob")).expect("link bob's mailbox");
    let worker_uid = fs::metadata(format!("/proc/{}", d.only_worker("tcp_lmtpn_server")))
        .expect("the worker")
        .uid();
    plant_lock(&spool.join("bob.lock"), worker_uid, 0);

    // A fresh worker recovers "crashed" deliveries when it starts.
    restart_worker(&d);
    assert_unchanged(
        &root_file,
        &root_content,
        "root's file, linked as alice's mailbox",
    );
    assert_unchanged(
        &bob_file,
        &bob_content,
        "bob's file, linked as bob's mailbox",
    );
    // And deliveries to either do not write into them either.
    for to in ["alice", "bob"] {
        let r = deliver(&d, to, "never");
        assert!((400..500).contains(&r.code), "{to}: {r:?}");
    }
    assert_unchanged(&root_file, &root_content, "root's file after a delivery");
    assert_unchanged(&bob_file, &bob_content, "bob's file after a delivery");
}

#[test]
fn a_live_lock_of_ours_hard_linked_under_another_mailbox_never_cuts_that_mailbox() {
    // Where fs.protected_hardlinks is 0 (the kernel's default), anyone who can write the
    // spool can hard-link a lock of ours while it is held (the test is root, which may
    // always). Once our worker removes its own name, the link is a lock of ours, one link,
    // our mark, under bob's name: a "crash" for bob, with alice's length in it.
    account("alice");
    account("bob");
    let (d, spool) = start(SHORT_LOCK_WAIT);
    assert_eq!(deliver(&d, "bob", "bob's own mail").code, 250);
    let bob_mailbox = spool.join("bob");
    let bob_content = fs::read(&bob_mailbox).expect("bob's mailbox");

    let big: String = (0..400_000)
        .map(|i| format!("line {i} of a message long enough to be caught appending .....\r\n"))
        .collect();
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<mallory@relay.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&common::lmtp::dot_stuff(big.as_bytes()));
    let (alice_lock, bob_lock) = (spool.join("alice.lock"), spool.join("bob.lock"));
    let end = Instant::now() + Duration::from_secs(60);
    let mut linked = false;
    while Instant::now() < end && !linked {
        // The append has started once the lock notes the mailbox's length (a fourth field).
        let noted = fs::read_to_string(&alice_lock).is_ok_and(|t| t.split_whitespace().count() > 3);
        if noted {
            linked = fs::hard_link(&alice_lock, &bob_lock).is_ok();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(linked, "never caught alice's lock during the append");
    assert_eq!(c.reply().code, 250, "alice's message is delivered");
    c.quit();
    let meta = fs::symlink_metadata(&bob_lock).expect("the linked lock stays");
    assert_eq!(
        meta.nlink(),
        1,
        "our worker removed its own name, alice.lock"
    );

    // A fresh worker (the one that wrote the lock is gone) recovers "crashed" deliveries.
    restart_worker(&d);
    assert_unchanged(&bob_mailbox, &bob_content, "bob's mailbox");
    // The lock guards nothing of bob's: it goes, and bob's mail is not held up.
    let end = Instant::now() + WAIT;
    while bob_lock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!bob_lock.exists(), "the linked lock is removed");
    assert_eq!(deliver(&d, "bob", "after").code, 250);
    let text = String::from_utf8(fs::read(&bob_mailbox).expect("mailbox")).expect("utf-8");
    assert!(text.starts_with(std::str::from_utf8(&bob_content).expect("utf-8")));
    assert!(text.contains("Subject: after\n"), "{text}");
}

#[test]
fn a_planted_symbolic_link_is_never_written_through() {
    account("alice");
    account("bob");
    let (d, spool) = start(SHORT_LOCK_WAIT);
    let lock_target = d.root.join("lock-target");
    let mbox_target = d.root.join("mbox-target");
    fs::write(&lock_target, b"not a lock\n").expect("write");
    fs::write(&mbox_target, b"not a mailbox\n").expect("write");
    std::os::unix::fs::symlink(&lock_target, spool.join("alice.lock")).expect("symlink");
    std::os::unix::fs::symlink(&mbox_target, spool.join("bob")).expect("symlink");
    let alice = deliver(&d, "alice", "through the lock link");
    let bob = deliver(&d, "bob", "through the mailbox link");
    assert!((400..500).contains(&alice.code), "{alice:?}");
    assert!((400..500).contains(&bob.code), "{bob:?}");
    assert_eq!(fs::read(&lock_target).expect("read"), b"not a lock\n");
    assert_eq!(fs::read(&mbox_target).expect("read"), b"not a mailbox\n");
    assert!(
        !spool.join("alice").exists(),
        "nothing delivered past the lock"
    );
    let log = d.wait_for_service_log(LOG, &format!("{}", spool.join("bob").display()));
    assert!(
        log.contains(&format!(
            "{}: it is a symbolic link",
            spool.join("alice.lock").display()
        )),
        "the log names the planted lock:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "{}: it is a symbolic link",
            spool.join("bob").display()
        )),
        "the log names the planted mailbox:\n{log}"
    );
}

#[test]
fn a_missing_spool_is_a_temporary_failure_and_is_never_created() {
    account("alice");
    account("bob");
    let (d, spool) = start("");
    let away = d.root.join("mail.away");
    fs::rename(&spool, &away).expect("move the spool away");
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    for to in ["alice", "bob", "no-such-account-here", "alice"] {
        let r = c.cmd(&format!("RCPT TO:<{to}@example.com>"));
        assert_eq!(r.code, 451, "{to}: the relay must retry: {r:?}");
        assert!(r.text().starts_with("4.3.0"), "{r:?}");
    }
    c.quit();
    assert!(!spool.exists(), "a delivery created the spool");
    let log = d.wait_for_service_log(LOG, "MAIL_SPOOL");
    let lines = log
        .lines()
        .filter(|l| l.contains("MAIL_SPOOL") && l.contains(&spool.display().to_string()))
        .count();
    assert_eq!(lines, 1, "logged once for the burst, with the path:\n{log}");

    fs::rename(&away, &spool).expect("put the spool back");
    assert_eq!(deliver(&d, "alice", "after").code, 250);
    assert!(spool.join("alice").exists());
}

#[test]
fn mailboxes_are_written_with_the_recipients_rights_not_roots() {
    let (alice, bob) = (account("alice"), account("bob"));
    let (d, spool) = start("");
    assert_eq!(deliver(&d, "alice", "created").code, 250);
    let meta = fs::metadata(spool.join("alice")).expect("alice's mailbox");
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid()),
        (0o600, alice.uid.as_raw())
    );
    // An existing mailbox its owner made read-only: root could append to it, bob cannot.
    let ro = spool.join("bob");
    fs::write(&ro, b"").expect("bob's mailbox");
    nix::unistd::chown(&ro, Some(bob.uid), Some(bob.gid)).expect("chown");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o400)).expect("chmod");
    let r = deliver(&d, "bob", "read-only");
    assert_eq!(r.code, 451, "written with more than bob's rights: {r:?}");
    assert_eq!(fs::metadata(&ro).expect("bob's mailbox").len(), 0);
    // The superuser's mailbox is never delivered to.
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    let r = c.cmd("RCPT TO:<root@example.com>");
    assert_eq!(r.code, 550, "{r:?}");
    c.quit();
    assert!(!spool.join("root").exists());
    // No thread of the worker is left with a recipient's identity.
    let foreign = threads_with_a_foreign_fsuid(d.only_worker("tcp_lmtpn_server"));
    assert!(foreign.is_empty(), "{foreign:?}");
}
