//! The installation's delivery log, `IMTA_LOG:mail.log_current` (issue 13, item 5): every
//! worker of every service appends its delivery lines to it, so the record of a message
//! outlives the worker's versioned LOGFILE, which HISTORY_TO_RETAIN prunes. Real dispatcher,
//! real images, real sockets; what was stored is counted on disk.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;

use common::delivery_log::{self, Delivery};
use common::dispatcher::{mail_ids, Dispatcher};
use common::lmtp::{maildir, Lmtp};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Workers recycled after every second connection, and only one old LOGFILE version kept.
const RECYCLED: &str =
    "MIN_PROCS=1\nMAX_PROCS=3\nMIN_CONNS=1\nMAX_CONNS=4\nMAX_LIFE_CONNS=2\nHISTORY_TO_RETAIN=1";

/// `clients` threads, each sending `per_client` connections of one message to `to`;
/// the number of 250 replies.
fn load(d: &Dispatcher, clients: usize, per_client: usize, to: &[&str]) -> usize {
    let addr = d.addr(0);
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
            std::thread::spawn(move || {
                let mut ok = 0;
                for i in 0..per_client {
                    let mut c = Lmtp::connect(RELAY, addr);
                    c.lhlo();
                    assert_eq!(c.cmd("MAIL FROM:<load@relay.example>").code, 250);
                    for r in &to {
                        assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).code, 250);
                    }
                    let msg = format!("Subject: load {t}/{i}\r\n\r\nbody {t}/{i}\r\n");
                    ok += c
                        .data(msg.as_bytes(), to.len())
                        .iter()
                        .filter(|r| r.code == 250)
                        .count();
                    // A recycled worker may end the idle session first (421): either is fine.
                    c.send(b"QUIT\r\n");
                    let _ = c.try_reply();
                }
                ok
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum()
}

fn stored(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("new"))
        .expect("list new/")
        .count()
}

fn delivered(lines: &[Delivery]) -> Vec<&Delivery> {
    lines.iter().filter(|l| l.code == 250).collect()
}

#[test]
fn every_stored_message_has_one_delivery_line_however_often_workers_are_recycled() {
    let d = Dispatcher::start_lmtp(RECYCLED, "");
    let alice = maildir(&d.root, "alice");
    let accepted = load(&d, 4, 60, &["alice"]);
    let files = stored(&alice);
    assert_eq!(accepted, 240);
    assert_eq!(files, accepted, "one stored file per 250");
    let started = d.started("LMTPSS");
    assert!(started > 20, "workers recycled many times: {started}");
    let lines = delivery_log::read(&delivery_log::path(&d.root));
    let ok = delivered(&lines);
    let in_logfiles = d
        .service_log("tcp_lmtpss_server.log")
        .lines()
        .filter(|l| l.contains(" delivery conn="))
        .count();
    assert_eq!(
        ok.len(),
        files,
        "one delivery line per stored message in mail.log_current ({started} workers; the \
         LOGFILE versions HISTORY_TO_RETAIN left hold {in_logfiles})"
    );
    let ids: HashSet<&str> = ok.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), files, "each line names its own message");
    let pids: HashSet<u32> = ok.iter().map(|l| l.pid).collect();
    assert!(pids.len() > 10, "lines of many workers: {}", pids.len());
}

#[test]
fn lines_of_concurrent_workers_of_both_services_are_whole() {
    // Several worker processes at once, each with several sessions, both images, and long
    // lines (many recipients make many lines per message at the same instant).
    let d = Dispatcher::start_lmtp(
        "MIN_PROCS=3\nMAX_PROCS=3\nMIN_CONNS=2\nMAX_CONNS=2\nHISTORY_TO_RETAIN=1",
        "",
    );
    let users: Vec<String> = (0..8)
        .map(|i| format!("u{i}-{}", "x".repeat(120)))
        .collect();
    for u in &users {
        maildir(&d.root, u);
    }
    let to: Vec<&str> = users.iter().map(String::as_str).collect();
    let store = std::thread::scope(|s| {
        let a = s.spawn(|| load(&d, 6, 15, &to));
        // The native image: refusals (no such local account) are lines of their own.
        let native = d.addr(1);
        s.spawn(move || {
            for _ in 0..30 {
                let mut c = Lmtp::connect(RELAY, native);
                c.lhlo();
                assert_eq!(c.cmd("MAIL FROM:<n@relay.example>").code, 250);
                assert_ne!(c.cmd("RCPT TO:<no-such-account-here>").code, 250);
                c.quit();
            }
        });
        a.join().expect("store clients")
    });
    assert_eq!(store, 6 * 15 * users.len());
    // Every line parses (read() fails on a torn one) and none is missing or doubled.
    let lines = delivery_log::read(&delivery_log::path(&d.root));
    assert_eq!(delivered(&lines).len(), store);
    let refused = lines.iter().filter(|l| l.code != 250).count();
    assert_eq!(refused, 30, "one refused line per refused recipient");
}

#[test]
fn the_dispatcher_creates_it_for_the_workers_and_never_as_world_readable() {
    let d = Dispatcher::start_lmtp(RECYCLED, "");
    let meta = std::fs::symlink_metadata(delivery_log::path(&d.root)).expect("mail.log_current");
    let (uid, gid) = mail_ids();
    assert!(meta.file_type().is_file());
    assert_eq!((meta.uid(), meta.gid()), (uid.as_raw(), gid.as_raw()));
    assert_eq!(meta.mode() & 0o777, 0o640);
}

/// Delivers one message to alice; the LOGFILE once it holds the delivery line, which must
/// come with `expect` (said when the worker started, or at the delivery).
fn deliver_one(d: &Dispatcher, expect: &str) -> String {
    maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(
        c.send_message("s@relay.example", "alice", b"x\r\n").code,
        250
    );
    c.quit();
    // The line may come just after the 250: waiting for `expect` alone, said at the start,
    // once read the LOGFILE before it.
    let log = d.wait_for_service_log("tcp_lmtpss_server.log", " delivery conn=");
    assert!(
        log.contains(expect),
        "`{expect}` not in the LOGFILE:\n{log}"
    );
    log
}

#[test]
fn a_file_planted_by_another_account_is_neither_appended_to_nor_truncated() {
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("look up nobody")
        .expect("an account nobody");
    let layout = common::dispatcher::Layout::lmtp(RECYCLED, "");
    let planted = delivery_log::path(&layout.root);
    std::fs::write(&planted, "planted\n").expect("plant");
    nix::unistd::chown(&planted, Some(nobody.uid), Some(nobody.gid)).expect("give it away");
    // World-writable, so only the worker's own check keeps it from appending.
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    let d = Dispatcher::launch(layout, |_| {});
    let log = deliver_one(&d, "is not ours: it belongs to uid");
    assert!(
        log.contains(" delivery conn="),
        "the line is in the LOGFILE:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&planted).expect("read"),
        "planted\n"
    );
}

#[test]
fn a_planted_symbolic_link_is_never_written_through() {
    let layout = common::dispatcher::Layout::lmtp(RECYCLED, "");
    // A file the workers' account may write, which the link must not make a log of.
    let target = layout.root.join("store/precious");
    std::fs::write(&target, "keep\n").expect("write");
    let (uid, gid) = mail_ids();
    nix::unistd::chown(&target, Some(uid), Some(gid)).expect("chown");
    std::os::unix::fs::symlink(&target, delivery_log::path(&layout.root)).expect("symlink");
    let d = Dispatcher::launch(layout, |_| {});
    let log = deliver_one(&d, "refused: it is a symbolic link");
    assert!(
        log.contains(" delivery conn="),
        "the line is in the LOGFILE:\n{log}"
    );
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
}
