//! A real LMTP image (`tcp_lmtp_server`) reports its delivery counters to the dispatcher's
//! end of its control socket: `STATS` with the counts of a connection just before that
//! connection's `ENDED`, and none for a connection that counted nothing
//! (`docs/worker-protocol.md`, "Counters"). The worker is started as the dispatcher starts
//! it, and the test plays the dispatcher.

mod common;

use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};

use common::dispatcher::{mail_ids, Layout};
use common::lmtp::{maildir, Lmtp};
use common::ChildGuard;
use msdispatcher::dispatcher::account::RunAs;
use msdispatcher::dispatcher::child::Process;
use msdispatcher::dispatcher::spawn::{spawn_worker, WorkerSpec};
use msdispatcher::handoff::wire::{self, ToDispatcher, ToWorker};

const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=2\nMIN_CONNS=1\nMAX_CONNS=20";
const MESSAGE: &[u8] =
    b"From: <sender@relay.example>\r\nSubject: counted\r\n\r\nOne line of text.\r\n";

/// The Maildir image of `layout` as a worker of its store service, as the dispatcher would
/// start it (as the mail account when the test runs as root); the dispatcher's end.
fn start_store_worker(layout: &Layout) -> (ChildGuard<Process>, OwnedFd) {
    let (dispatcher_end, worker_end) = wire::control_pair().expect("control pair");
    let image = layout.root.join("lib/tcp_lmtp_server");
    let tailor = layout.root.join("config/imta_tailor");
    let run_as = nix::unistd::geteuid().is_root().then(|| {
        let (uid, gid) = mail_ids();
        RunAs {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            keep_setuid: false,
        }
    });
    let log = std::fs::File::create(layout.root.join("worker.log")).expect("log file");
    let spec = WorkerSpec {
        image: image.clone(),
        service: "tcp_lmtp".into(),
        parameter: "CHANNEL=tcp_lmtpss".into(),
        stack_size: 512 * 1024,
        max_conns: 5,
        debug: 0,
        tailor: tailor.clone(),
        import_environment: Vec::new(),
        run_as,
    };
    let child = spawn_worker(&spec, &worker_end, Some(log)).expect("spawn the LMTP image");
    drop(worker_end);
    (ChildGuard(child), dispatcher_end)
}

/// Hands a new connection to the worker (which says TAKEN); the client's LMTP session, past
/// its greeting.
fn hand_off(ctrl: &OwnedFd, listener: &TcpListener, conn: u64) -> Lmtp {
    let client = common::send_hand_off(ctrl, listener, conn);
    assert_eq!(
        common::next_message(ctrl),
        Some(ToDispatcher::Taken { conn })
    );
    // Reads the greeting, which must be 220.
    Lmtp::over(client)
}

#[test]
fn a_connection_s_counts_arrive_just_before_its_end() {
    let layout = Layout::lmtp(LIMITS, "");
    // Their mailboxes exist; nobody-here has none.
    maildir(&layout.root, "alice");
    maildir(&layout.root, "bob");
    let (mut worker, ctrl) = start_store_worker(&layout);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ready { ack: true })
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");

    let mut c = hand_off(&ctrl, &listener, 1);
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    let codes: Vec<u16> = [
        "alice@example.com",
        "nobody-here@example.com",
        "bob@example.com",
    ]
    .iter()
    .map(|a| c.cmd(&format!("RCPT TO:<{a}>")).code)
    .collect();
    assert_eq!(codes, [250, 550, 250]);
    let replies = c.data(MESSAGE, 2);
    assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
    c.quit();

    let Some(ToDispatcher::Stats(s)) = common::next_message(&ctrl) else {
        panic!("no STATS before ENDED");
    };
    assert_eq!((s.delivered, s.deferred, s.refused), (2, 0, 1), "{s:?}");
    assert_eq!(
        s.bytes,
        2 * MESSAGE.len() as u64,
        "two copies stored: {s:?}"
    );
    assert_eq!(s.latency_count(), 1, "one transaction: {s:?}");
    assert!(s.latency_sum_micros > 0, "{s:?}");
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 1 })
    );

    // A connection that delivers nothing is followed by ENDED alone.
    let c = hand_off(&ctrl, &listener, 2);
    c.quit();
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 2 })
    );

    wire::send_to_worker(ctrl.as_fd(), &ToWorker::Drain, None).expect("drain");
    assert_eq!(common::next_message(&ctrl), Some(ToDispatcher::Draining));
    let status = worker
        .wait_for(std::time::Duration::from_secs(10))
        .expect("the worker exits after DRAIN");
    assert!(status.success(), "{status:?}");
    // Nothing was left to report at exit.
    assert_eq!(common::next_message(&ctrl), None);
}
