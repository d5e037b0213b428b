//! The dispatcher killed outright (`SIGKILL`, the OOM killer): its workers see the end of file
//! on their control socket, finish the transaction in hand (the relay gets its 250 and the
//! message is stored), close their sessions and exit; nothing of the dead dispatcher (its pid
//! file lock, its ports) stops a new one from starting on the same installation and serving.
//! Real processes: the dispatcher with the message-store image on free loopback ports.

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dispatcher::{Dispatcher, WAIT};
use common::lmtp::{maildir, Lmtp};
use common::{pid_alive, ChildGuard};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=2\nMIN_CONNS=1\nMAX_CONNS=20";
const MESSAGE: &[u8] = b"From: <a@relay.example>\r\nSubject: orphan\r\n\r\nBody.\r\n";

#[test]
fn a_killed_dispatcher_leaves_its_workers_to_finish_and_a_new_one_starts() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let alice = maildir(&d.root, "alice");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<a@relay.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").code, 250);
    let workers = d.workers("tcp_lmtp_server");
    assert!(!workers.is_empty());

    kill(Pid::from_raw(d.child.pid() as i32), Signal::SIGKILL).expect("kill the dispatcher");
    // The transaction in hand completes on the orphaned worker.
    let replies = c.data(MESSAGE, 1);
    assert_eq!(replies[0].code, 250, "{replies:?}");
    assert_eq!(
        std::fs::read_dir(alice.join("new")).expect("new/").count(),
        1,
        "the message is stored"
    );
    // Then the session is closed (421: the worker drains), and every worker exits.
    let r = c.cmd("MAIL FROM:<a@relay.example>");
    assert_eq!(r.code, 421, "{r:?}");
    let end = Instant::now() + WAIT;
    while workers.iter().any(|&p| pid_alive(p)) {
        assert!(
            Instant::now() < end,
            "workers {workers:?} outlived their dispatcher"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A new dispatcher on the same installation starts and serves.
    let again = Command::new(d.root.join("lib/dispatcher"))
        .args(["--foreground", "--shutdown-timeout", "5"])
        .env_remove("IMTA_TAILOR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a new dispatcher");
    let again = ChildGuard(again);
    let started = format!("starting, pid {}", again.pid());
    let end = Instant::now() + WAIT;
    let listening = format!("listening on 127.0.0.1:{}", d.ports[1]);
    while !(d.log().contains(&started) && d.log().contains(&listening)) {
        assert!(
            Instant::now() < end,
            "the new dispatcher did not start:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    let r = c.send_message("a@relay.example", "alice@example.com", MESSAGE);
    assert_eq!(r.code, 250, "{r:?}");
}
