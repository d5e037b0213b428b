//! The Maildir store image (`tcp_lmtp_server`) against its surroundings, each test playing
//! the attacker or the fault it names: the store root moved away or replaced, transactions
//! that are reset, and links planted inside a user's Maildir by whoever can write there.
//! The real dispatcher and image run; what the store and the planted targets hold
//! afterwards is read back from disk.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::dispatcher::{Dispatcher, WAIT};
use common::lmtp::{give_to, maildir, store_owner, Lmtp};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=20";
const LOG: &str = "tcp_lmtpss_server.log";
const MESSAGE: &[u8] = b"Subject: trust\r\n\r\nhello\r\n";

/// Entries of `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("a directory entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("list {}: {e}", dir.display()),
    };
    v.sort();
    v
}

/// Provisions `user` (`alice`, `alice/.Sent`) in the store as the workers' account's.
fn provision(d: &Dispatcher, user: &str) -> PathBuf {
    let dir = maildir(&d.root, user);
    give_to(&d.root.join("store"), store_owner(&d.root));
    dir
}

/// A directory outside the store that a planted link points to, with a Maildir's
/// subdirectories, owned by the workers' account (so only the link keeps mail out).
fn elsewhere(d: &Dispatcher) -> PathBuf {
    let dir = d.root.join("elsewhere");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create the link's target");
    }
    give_to(&dir, store_owner(&d.root));
    dir
}

/// Every file below `dir` (links are not followed, and are not files).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in entries(dir) {
        let kind = std::fs::symlink_metadata(&p).expect("stat").file_type();
        if kind.is_dir() {
            out.extend(files_below(&p));
        } else if !kind.is_symlink() {
            out.push(p);
        }
    }
    out
}

/// Replaces the directory `dir` with a symbolic link to `target`.
fn replace_with_link(dir: &Path, target: &Path) {
    std::fs::remove_dir_all(dir).expect("remove the directory");
    std::os::unix::fs::symlink(target, dir).expect("plant the link");
}

/// A session after LHLO and `MAIL FROM`.
fn transaction(d: &Dispatcher) -> Lmtp {
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    c
}

/// The reply's code and enhanced status.
fn status(r: &common::lmtp::Reply) -> (u16, String) {
    let s = r.lines[0].split_whitespace().next().unwrap_or("");
    (r.code, s.to_string())
}

fn deferred() -> (u16, String) {
    (451, "4.3.0".to_string())
}

/// Waits until the service's log has `n` lines containing `text` (and checks there are not
/// more), returning the log.
fn wait_for_lines(d: &Dispatcher, text: &str, n: usize) -> String {
    let end = Instant::now() + WAIT;
    loop {
        let log = d.service_log(LOG);
        let count = log.lines().filter(|l| l.contains(text)).count();
        if count >= n || Instant::now() > end {
            assert_eq!(count, n, "lines with `{text}` in the log:\n{log}");
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_store_root_moved_away_defers_mail_instead_of_bouncing_it() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = provision(&d, "alice");
    let store = d.root.join("store");
    let away = d.root.join("store.away");
    std::fs::rename(&store, &away).expect("move the store away");

    let mut c = transaction(&d);
    for i in 0..20 {
        let who = ["alice", "bob", "nobody-here"][i % 3];
        let r = c.cmd(&format!("RCPT TO:<{who}@example.com>"));
        assert_eq!(status(&r), deferred(), "RCPT {i} to {who}: {r:?}");
    }
    assert_eq!(c.cmd("RSET").code, 250);
    assert!(!store.exists(), "a delivery created the store root");
    // Once for the burst, with the path.
    wait_for_lines(
        &d,
        &format!("STORE_ROOT={}/: does not exist", store.display()),
        1,
    );

    std::fs::rename(&away, &store).expect("put the store back");
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    let r = c.cmd("RCPT TO:<alice@example.com>");
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.data(MESSAGE, 1)[0].code, 250);
    c.quit();
    assert_eq!(entries(&alice.join("new")).len(), 1);
}

#[test]
fn with_create_mailboxes_a_missing_store_root_is_not_recreated() {
    let d = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
    let store = d.root.join("store");
    let owner = store_owner(&d.root);
    std::fs::remove_dir(&store).expect("remove the (empty) store");

    let mut c = transaction(&d);
    let r = c.cmd("RCPT TO:<carol@example.com>");
    assert_eq!(status(&r), deferred(), "{r:?}");
    assert_eq!(c.cmd("RSET").code, 250);
    assert!(
        !store.exists(),
        "an empty tree appeared where the store belongs"
    );

    // The store is mounted again: the mailbox is created there, with the message.
    std::fs::create_dir(&store).expect("recreate the store");
    give_to(&store, owner);
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<carol@example.com>").code, 250);
    assert_eq!(c.data(MESSAGE, 1)[0].code, 250);
    c.quit();
    assert_eq!(entries(&store.join("carol/new")).len(), 1);
}

/// The effective uid a process runs with.
fn euid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("the Uid line")
}

/// What takes the place of the store root.
#[derive(Debug, Clone, Copy)]
enum RootFault {
    File,
    LinkToItself,
    Unreadable,
}

impl RootFault {
    /// Puts the fault at `store`, the real store being at `away`.
    fn apply(self, store: &Path, away: &Path) {
        use std::os::unix::fs::PermissionsExt;
        match self {
            RootFault::File => std::fs::write(store, b"not a store").expect("write a file"),
            RootFault::LinkToItself => {
                std::os::unix::fs::symlink(store, store).expect("plant a loop")
            }
            RootFault::Unreadable => {
                std::fs::rename(away, store).expect("put the store back");
                std::fs::set_permissions(store, PermissionsExt::from_mode(0o000)).expect("chmod");
            }
        }
    }
}

#[test]
fn a_store_root_that_is_no_directory_or_cannot_be_read_defers_mail() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    provision(&d, "alice");
    let store = d.root.join("store");
    let away = d.root.join("store.away");
    std::fs::rename(&store, &away).expect("move the store away");
    d.wait_for_service_log(LOG, "worker ready");
    let worker = d.only_worker("tcp_lmtp_server").as_raw();

    let mut faults = vec![RootFault::File, RootFault::LinkToItself];
    // Root reads anything: only a worker that is not root can meet an unreadable root.
    if euid_of(worker) != 0 {
        faults.push(RootFault::Unreadable);
    }
    for fault in faults {
        fault.apply(&store, &away);
        let mut c = transaction(&d);
        let r = c.cmd("RCPT TO:<alice@example.com>");
        assert_eq!(status(&r), deferred(), "store root {fault:?}: {r:?}");
        c.quit();
        if std::fs::symlink_metadata(&store).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&store).expect("remove the fault");
        }
    }
}

#[test]
fn rcpt_and_rset_create_no_mailbox() {
    let d = Dispatcher::start_lmtp(LIMITS, "CREATE_MAILBOXES=1");
    let store = d.root.join("store");
    let mut c = transaction(&d);
    for i in 0..20 {
        let r = c.cmd(&format!("RCPT TO:<new{i}@example.com>"));
        assert_eq!(r.code, 250, "{r:?}");
    }
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    for i in 0..20 {
        assert_eq!(c.cmd(&format!("RCPT TO:<new{i}@example.com>")).code, 250);
    }
    c.quit();
    assert_eq!(
        entries(&store),
        Vec::<PathBuf>::new(),
        "RCPT created mailboxes"
    );

    // A real delivery creates exactly the one mailbox it delivers into.
    let mut c = transaction(&d);
    assert_eq!(c.cmd("RCPT TO:<new7@example.com>").code, 250);
    assert_eq!(c.data(MESSAGE, 1)[0].code, 250);
    c.quit();
    assert_eq!(entries(&store), [store.join("new7")]);
    let subdirs: Vec<PathBuf> = entries(&store.join("new7"));
    assert_eq!(
        subdirs,
        ["cur", "new", "tmp"].map(|s| store.join("new7").join(s))
    );
    assert_eq!(entries(&store.join("new7/new")).len(), 1);
}

/// A well-formed quota cache for the quota the relay sends below, so that a store that
/// trusts it reads it and appends to it.
const CACHE: &str = "1000000S\n0 0\n";

/// Plants `plant(victim, maildirsize)` in alice's Maildir, where `victim` is a file outside
/// the store holding [`CACHE`], owned by the workers' account; delivers to alice with a
/// quota (which reads the cache; the delivery appends to it) and checks that the message
/// arrived and the victim is untouched.
fn planted_maildirsize_is_not_written(
    plant: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
) -> (Dispatcher, PathBuf) {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = provision(&d, "alice");
    let victim = d.root.join("victim");
    std::fs::write(&victim, CACHE).expect("write the victim file");
    give_to(&victim, store_owner(&d.root));
    plant(&victim, &alice.join("maildirsize")).expect("plant the file");

    let mut c = transaction(&d);
    let r = c.cmd("RCPT TO:<alice@example.com> XQUOTA=1000000,0");
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.data(MESSAGE, 1)[0].code, 250);
    c.quit();
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read the victim"),
        CACHE
    );
    assert_eq!(entries(&alice.join("new")).len(), 1);
    (d, alice)
}

#[test]
fn a_symbolic_link_planted_as_maildirsize_is_never_followed() {
    planted_maildirsize_is_not_written(|victim, at| std::os::unix::fs::symlink(victim, at));
}

#[test]
fn a_maildirsize_hard_linked_to_another_file_is_not_written() {
    let (d, alice) =
        planted_maildirsize_is_not_written(|victim, at| std::fs::hard_link(victim, at));
    let log = d.wait_for_service_log(LOG, "maildirsize: it has 2 hard links");
    assert!(
        log.contains(&format!("refused {}/maildirsize", alice.display())),
        "{log}"
    );
}

/// Plants `link` (in alice's Maildir) as a link to a directory elsewhere; RCPT to `rcpt`
/// must be deferred, logged with the link's path, and nothing may arrive elsewhere.
fn planted_directory_link_defers(link: &str, rcpt: &str) {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = provision(&d, "alice");
    provision(&d, "alice/.Sent");
    let elsewhere = elsewhere(&d);
    let target = match link {
        ".Sent" => elsewhere.clone(),
        sub => elsewhere.join(sub),
    };
    replace_with_link(&alice.join(link), &target);

    let mut c = transaction(&d);
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert_eq!(status(&r), deferred(), "{link} is a link: {r:?}");
    assert!(r.text().contains(&format!("<{rcpt}>")), "{r:?}");
    c.quit();
    d.wait_for_service_log(
        LOG,
        &format!(
            "refused {}: it is a symbolic link",
            alice.join(link).display()
        ),
    );
    assert_eq!(files_below(&elsewhere), Vec::<PathBuf>::new());
    assert_eq!(files_below(&alice), Vec::<PathBuf>::new());
}

#[test]
fn a_users_new_replaced_by_a_link_defers_and_nothing_is_written_there() {
    planted_directory_link_defers("new", "alice@example.com");
}

#[test]
fn a_users_tmp_replaced_by_a_link_defers_and_nothing_is_written_there() {
    planted_directory_link_defers("tmp", "alice@example.com");
}

#[test]
fn a_folder_replaced_by_a_link_defers_and_nothing_is_written_there() {
    planted_directory_link_defers(".Sent", "alice+Sent@example.com");
}

/// Where the worker's open descriptors point.
fn open_files(pid: i32) -> Vec<PathBuf> {
    entries(Path::new(&format!("/proc/{pid}/fd")))
        .iter()
        .filter_map(|fd| std::fs::read_link(fd).ok())
        .collect()
}

#[test]
fn a_tmp_swapped_for_a_link_during_data_gets_neither_the_spill_nor_the_message() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = provision(&d, "alice");
    let elsewhere = elsewhere(&d);
    d.wait_for_service_log(LOG, "worker ready");
    let worker = d.only_worker("tcp_lmtp_server").as_raw();

    let mut c = transaction(&d);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").code, 250);
    // Accepted; now whoever can write the Maildir swaps tmp/ for a link.
    replace_with_link(&alice.join("tmp"), &elsewhere.join("tmp"));
    assert_eq!(c.cmd("DATA").code, 354);
    // More than the 1 MiB kept in memory: the worker spills it to an unnamed file.
    let mut body = b"Subject: large\r\n\r\n".to_vec();
    while body.len() < 3 << 20 {
        body.extend_from_slice(&[b'x'; 998]);
        body.extend_from_slice(b"\r\n");
    }
    c.send(&body);
    let end = Instant::now() + WAIT;
    let spill = loop {
        let open = open_files(worker);
        if let Some(f) = open
            .iter()
            .find(|p| p.to_string_lossy().ends_with("(deleted)"))
        {
            break f.clone();
        }
        assert!(Instant::now() < end, "no spill file among {open:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        !spill.starts_with(&elsewhere),
        "the spill file went through the link: {}",
        spill.display()
    );
    c.send(b".\r\n");
    let r = c.reply();
    assert_eq!(status(&r), deferred(), "{r:?}");
    c.quit();
    assert_eq!(files_below(&elsewhere), Vec::<PathBuf>::new());
    assert_eq!(entries(&alice.join("new")), Vec::<PathBuf>::new());
}

/// The copy of a message several recipients share is the file the worker wrote. Alice's
/// `tmp/` is writable by another account (`nobody`, standing for a user who owns her
/// Maildir), which swaps any file that appears there for one of its own (mode 0666, which
/// the worker may hard-link), in a busy loop, while messages for alice and bob are
/// delivered. Neither gets the forged text; a `250` is given only for a message that is in
/// the mailbox, and bob gets every message.
#[test]
fn the_first_recipients_account_cannot_swap_the_copy_the_others_are_given() {
    swap_the_first_recipients_copy(Dispatcher::start_lmtp(LIMITS, ""));
}

/// The same where `/proc` is not mounted (a container that hides it): the worker cannot link
/// through its open copy and links the copy's name instead, which must come to the same.
/// The dispatcher and its workers run in a mount namespace of their own with an empty
/// `tmpfs` over `/proc`.
#[test]
fn without_proc_the_first_recipients_account_cannot_swap_the_copy_the_others_are_given() {
    use std::os::unix::process::CommandExt;
    let layout = common::dispatcher::Layout::lmtp(LIMITS, "");
    // Without /proc/self/exe the dispatcher cannot find the tailor file beside itself.
    let tailor = layout.root.join("config/imta_tailor");
    let d = Dispatcher::launch(layout, |cmd| {
        cmd.env("IMTA_TAILOR", &tailor);
        // SAFETY: between fork and exec only system calls, no allocation or lock.
        unsafe {
            cmd.pre_exec(|| {
                // Mounts made private first, so the tmpfs stays in this namespace.
                let ok = libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0
                    && libc::mount(
                        c"tmpfs".as_ptr(),
                        c"/proc".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    ) == 0;
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    d.wait_for_service_log(LOG, "worker ready");
    let worker = d.only_worker("tcp_lmtp_server");
    let proc_of_worker = std::fs::read_link(format!("/proc/{worker}/root/proc/self"));
    assert!(
        proc_of_worker.is_err(),
        "the worker sees /proc ({proc_of_worker:?}): the test would not test the fallback"
    );
    swap_the_first_recipients_copy(d);
}

/// Delivers messages for alice and bob while another account swaps every file in alice's
/// `tmp/` for a forged one; see the two tests above.
fn swap_the_first_recipients_copy(d: Dispatcher) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const FORGED: &[u8] = b"Subject: forged\r\n\r\nnot what the relay sent\r\n";
    const MESSAGES: usize = 30;
    let alice = provision(&d, "alice");
    let bob = provision(&d, "bob");
    let other = nix::unistd::User::from_name("nobody")
        .expect("look up nobody")
        .expect("the account nobody");
    let tmp = alice.join("tmp");
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("make alice's tmp/ writable by another account");
    d.wait_for_service_log(LOG, "worker ready");

    let stop = Arc::new(AtomicBool::new(false));
    let swapped = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, swapped) = (Arc::clone(&stop), Arc::clone(&swapped));
        std::thread::spawn(move || {
            let end = Instant::now() + WAIT;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                for entry in std::fs::read_dir(&tmp).expect("list alice's tmp/") {
                    let name = entry.expect("a directory entry").file_name();
                    if name.to_string_lossy().starts_with('.') {
                        continue;
                    }
                    let forged = tmp.join(".forged");
                    std::fs::write(&forged, FORGED).expect("write the forged copy");
                    std::os::unix::fs::chown(&forged, Some(other.uid.as_raw()), None)
                        .expect("give the forged copy to the other account");
                    std::fs::set_permissions(
                        &forged,
                        std::os::unix::fs::PermissionsExt::from_mode(0o666),
                    )
                    .expect("let anyone read and write the forged copy");
                    if std::fs::rename(&forged, tmp.join(&name)).is_ok() {
                        swapped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // 250s per recipient: alice's, bob's.
    let mut accepted = [0usize; 2];
    for i in 0..MESSAGES {
        let mut c = transaction(&d);
        assert_eq!(c.cmd("RCPT TO:<alice@example.com>").code, 250);
        assert_eq!(c.cmd("RCPT TO:<bob@example.com>").code, 250);
        let message = format!("Subject: genuine {i}\r\n\r\nsent by the relay\r\n");
        let replies = c.data(message.as_bytes(), 2);
        for (n, r) in accepted.iter_mut().zip(&replies) {
            match r.code {
                250 => *n += 1,
                // Alice's copy swapped before its link: her account deferred her own mail.
                code => assert_eq!(status(r), deferred(), "{code}: {replies:?}"),
            }
        }
        c.quit();
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("the attacker thread");
    let swaps = swapped.load(Ordering::Relaxed);
    for (user, n) in [(&bob, accepted[1]), (&alice, accepted[0])] {
        let files = entries(&user.join("new"));
        for f in &files {
            let text =
                String::from_utf8_lossy(&std::fs::read(f).expect("read a message")).into_owned();
            assert!(
                text.contains("sent by the relay") && !text.contains("forged"),
                "{} holds what another account planted in alice's tmp/ ({swaps} swaps):\n{text}",
                f.display()
            );
        }
        assert_eq!(
            files.len(),
            n,
            "{}: one message for each 250",
            user.display()
        );
    }
    assert_eq!(
        accepted[1], MESSAGES,
        "bob got every message ({swaps} swaps)"
    );
    assert!(
        swaps > 0,
        "the attacker never found a file to swap: the test did not test"
    );
    let log = d.service_log(LOG);
    eprintln!(
        "{swaps} swaps; alice {} of {MESSAGES}, bob {}; copies found replaced before a link: {} \
         (before bob's: {})",
        accepted[0],
        accepted[1],
        log.matches("was replaced during the delivery").count(),
        log.matches("is given a copy of its own").count()
    );
}
