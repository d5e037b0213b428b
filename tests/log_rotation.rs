//! Rotating the delivery log with the packaged logrotate snippet (issue 13, item 6):
//! `logrotate -s state -f` on `packaging/msdispatcher.logrotate`, its paths moved to a test
//! installation, against a running dispatcher under load. Needs `logrotate`
//! (scripts/install-test-deps.sh). Also: `HISTORY_TO_RETAIN` never removes the LOGFILE
//! version a running worker writes.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::delivery_log;
use common::dispatcher::Dispatcher;
use common::lmtp::{maildir, Lmtp};
use common::wait_until;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LIMITS: &str =
    "MIN_PROCS=2\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=4\nMAX_LIFE_CONNS=50\nHISTORY_TO_RETAIN=2";

/// One message to alice on a connection of its own; its queue id from the 250.
fn deliver(addr: SocketAddr) -> String {
    let mut c = Lmtp::connect(RELAY, addr);
    c.lhlo();
    let r = c.send_message("s@relay.example", "alice", b"Subject: r\r\n\r\nx\r\n");
    assert_eq!(r.code, 250, "{r:?}");
    c.send(b"QUIT\r\n");
    let _ = c.try_reply();
    // `<alice> <id> Saved to INBOX`
    r.text()
        .split_whitespace()
        .nth(2)
        .expect("an id in the 250")
        .to_string()
}

/// The packaged snippet with the seed's IMTA_LOG replaced by the installation's.
fn snippet_for(root: &Path) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/msdispatcher.logrotate"),
    )
    .expect("read the snippet");
    assert!(text.contains("/var/opt/SUNWmsgsr/log/"));
    text.replace(
        "/var/opt/SUNWmsgsr/log/",
        &format!("{}/", root.join("log").display()),
    )
}

#[test]
fn after_logrotate_new_deliveries_go_to_the_new_file_and_none_is_lost() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    let addr = d.addr(0);
    let before: Vec<String> = (0..20).map(|_| deliver(addr)).collect();
    // Deliveries go on while logrotate runs.
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                ids.push(deliver(addr));
            }
            ids
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let current = delivery_log::path(&d.root);
    let old_inode = std::fs::metadata(&current).expect("mail.log_current").ino();
    let work = tempfile::tempdir().expect("tempdir");
    let conf = work.path().join("msdispatcher");
    std::fs::write(&conf, snippet_for(&d.root)).expect("write the snippet");
    let out = Command::new("logrotate")
        .arg("-s")
        .arg(work.path().join("state"))
        .arg("-f")
        .arg(&conf)
        .output()
        .expect("run logrotate (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "logrotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = d.root.join("log/mail.log_current.1");
    assert!(rotated.is_file(), "logrotate moved the file");
    // SIGUSR1 (postrotate): the dispatcher makes the new file.
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::metadata(&current).is_ok_and(|m| m.ino() != old_inode)
        }),
        "no new mail.log_current after SIGUSR1:\n{}",
        d.log()
    );
    let meta = std::fs::metadata(&current).expect("the new file");
    let (uid, _) = common::dispatcher::mail_ids();
    assert_eq!(
        meta.uid(),
        uid.as_raw(),
        "the workers' account's, for them to append"
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let during = during.join().expect("load thread");
    let after: Vec<String> = (0..20).map(|_| deliver(addr)).collect();

    let old = delivery_log::read(&rotated);
    let new = delivery_log::read(&current);
    let old_ids: HashSet<&str> = old.iter().map(|l| l.id.as_str()).collect();
    let new_ids: HashSet<&str> = new.iter().map(|l| l.id.as_str()).collect();
    for id in &before {
        assert!(old_ids.contains(id.as_str()), "{id} before the rotation");
    }
    for id in &after {
        assert!(
            new_ids.contains(id.as_str()),
            "{id} after the rotation: in the new file"
        );
    }
    let stored = std::fs::read_dir(alice.join("new")).expect("new/").count();
    let all = before.len() + during.len() + after.len();
    assert_eq!(stored, all);
    assert_eq!(
        old.len() + new.len(),
        all,
        "one line per message across the two files ({} during the rotation)",
        during.len()
    );
    assert!(old_ids.is_disjoint(&new_ids), "no line in both");
}

/// The LOGFILE version each running worker of LMTPSS writes (its standard error), resolved.
fn logs_written_by_workers(d: &Dispatcher) -> Vec<(i32, std::path::PathBuf)> {
    d.workers("tcp_lmtp_server")
        .into_iter()
        .filter_map(|pid| {
            std::fs::read_link(format!("/proc/{pid}/fd/2"))
                .ok()
                .map(|target| (pid, target))
        })
        .collect()
}

/// `HISTORY_TO_RETAIN` counts the old versions of a LOGFILE, but one a running worker still
/// writes must stay: the worker's lines (a failure to store, a session that ended badly)
/// would go to a removed file that no grep finds. Three workers at once with
/// `HISTORY_TO_RETAIN=0`; then workers recycled every few connections, which must still
/// prune the versions of the workers gone.
#[test]
fn history_to_retain_never_removes_the_log_a_running_worker_writes() {
    let d = Dispatcher::start_lmtp(
        "MIN_PROCS=3\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=4\nMAX_LIFE_CONNS=2\nHISTORY_TO_RETAIN=0",
        "",
    );
    d.wait_for_started("LMTPSS", 3);
    let check = |when: &str| {
        let written = logs_written_by_workers(&d);
        assert!(!written.is_empty(), "{when}: no worker found");
        for (pid, target) in &written {
            let shown = target.to_string_lossy();
            assert!(
                !shown.ends_with(" (deleted)") && target.exists(),
                "{when}: worker {pid} writes to a removed log file: {shown}"
            );
        }
    };
    check("three workers started");
    // A worker waiting for its successor may be handed up to twice MAX_LIFE_CONNS (2 here):
    // 40 connections are served by at least 10 workers, each started.
    const CONNECTIONS: usize = 40;
    for _ in 0..CONNECTIONS {
        Lmtp::connect(RELAY, d.addr(0)).quit();
    }
    let started = d.started("LMTPSS");
    assert!(
        started >= CONNECTIONS / (2 * 2),
        "workers were recycled: {started} started"
    );
    check("after recycling");
    let base = d.root.join("log/tcp_lmtpss_server.log");
    let kept = std::fs::read_dir(d.root.join("log"))
        .expect("IMTA_LOG")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tcp_lmtpss_server.log-")
        })
        .count();
    // The running workers' versions, and at most a few of workers just gone (pruned at the
    // next start), not one per start.
    assert!(
        kept < started && kept <= d.workers("tcp_lmtp_server").len() + 3,
        "{kept} versions of {} left after {started} starts",
        base.display()
    );
}
