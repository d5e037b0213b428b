//! The worker runtime with a real process: the echo test image started the way the
//! dispatcher starts workers, driven over its control socket with real TCP connections.
//! The runtime says `READY ACK`, so every hand-off is confirmed with `TAKEN` before anything
//! else is said about that connection.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use common::ChildGuard;
use msdispatcher::dispatcher::child::Process;
use msdispatcher::dispatcher::spawn::{spawn_worker, WorkerSpec};
use msdispatcher::handoff::wire::{self, ToDispatcher, ToWorker};

const WAIT: Duration = Duration::from_secs(10);

/// Starts the echo image as a worker of service ECHO; returns the dispatcher's end.
fn start(max_conns: u64) -> (ChildGuard<Process>, OwnedFd) {
    let (dispatcher_end, worker_end) = wire::control_pair().expect("control pair");
    let image = common::example("echo_image");
    let spec = WorkerSpec {
        image: image.clone(),
        service: "ECHO".into(),
        parameter: "CHANNEL=none".into(),
        stack_size: 256 * 1024,
        max_conns,
        debug: 0,
        tailor: "/nonexistent/imta_tailor".into(),
        import_environment: Vec::new(),
        run_as: None,
    };
    let child = spawn_worker(&spec, &worker_end, None).expect("spawn echo image");
    drop(worker_end);
    (ChildGuard(child), dispatcher_end)
}

/// Accepts a client connection and hands it to the worker, which must confirm it with
/// `TAKEN`; returns the client's stream.
fn hand_off(ctrl: &OwnedFd, listener: &TcpListener, conn: u64) -> BufReader<TcpStream> {
    let client = send_hand_off(ctrl, listener, conn);
    assert_eq!(
        common::next_message(ctrl),
        Some(ToDispatcher::Taken { conn })
    );
    client
}

/// Accepts a client connection and sends it to the worker; returns the client's stream.
fn send_hand_off(ctrl: &OwnedFd, listener: &TcpListener, conn: u64) -> BufReader<TcpStream> {
    let client = common::send_hand_off(ctrl, listener, conn);
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    BufReader::new(client)
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).expect("read line");
    s
}

fn say(r: &mut BufReader<TcpStream>, text: &str) {
    r.get_mut()
        .write_all(format!("{text}\r\n").as_bytes())
        .expect("write");
}

#[test]
fn handed_connection_is_served_and_its_end_reported() {
    let (mut child, ctrl) = start(20);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ready { ack: true })
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = hand_off(&ctrl, &listener, 41);
    let greeting = line(&mut c);
    assert!(
        greeting.starts_with("220 ECHO echo conn=41 client=127.0.0.1:"),
        "{greeting}"
    );
    assert!(
        greeting.contains(&format!("pid={}", child.pid())),
        "{greeting}"
    );
    say(&mut c, "hello");
    assert_eq!(line(&mut c), "250 hello\r\n");
    say(&mut c, "QUIT");
    assert_eq!(line(&mut c), "221 bye\r\n");
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 41 })
    );
    wire::send_to_worker(ctrl.as_fd(), &ToWorker::Drain, None).expect("drain");
    assert_eq!(common::next_message(&ctrl), Some(ToDispatcher::Draining));
    let status = child.wait_for(WAIT).expect("exits after draining");
    assert!(status.success(), "{status:?}");
}

#[test]
fn draining_worker_finishes_an_open_session_before_exiting() {
    let (mut child, ctrl) = start(20);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ready { ack: true })
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = hand_off(&ctrl, &listener, 1);
    line(&mut c);
    wire::send_to_worker(ctrl.as_fd(), &ToWorker::Drain, None).expect("drain");
    assert_eq!(common::next_message(&ctrl), Some(ToDispatcher::Draining));
    assert!(
        child.wait_for(Duration::from_millis(300)).is_none(),
        "must not exit mid-session"
    );
    say(&mut c, "still here");
    assert_eq!(line(&mut c), "250 still here\r\n");
    say(&mut c, "QUIT");
    line(&mut c);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 1 })
    );
    assert!(child.wait_for(WAIT).expect("exits").success());
}

#[test]
fn worker_whose_dispatcher_is_gone_exits_after_its_sessions() {
    let (mut child, ctrl) = start(20);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ready { ack: true })
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = hand_off(&ctrl, &listener, 1);
    line(&mut c);
    drop(ctrl);
    assert!(
        child.wait_for(Duration::from_millis(300)).is_none(),
        "session still open"
    );
    say(&mut c, "QUIT");
    assert_eq!(line(&mut c), "221 bye\r\n");
    assert!(child.wait_for(WAIT).expect("exits").success());
}

#[test]
fn worker_enforces_max_conns_on_its_side() {
    let (_child, ctrl) = start(1);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ready { ack: true })
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut first = hand_off(&ctrl, &listener, 1);
    assert!(line(&mut first).contains("active=1"));
    // Taken (the dispatcher may close its copy), then closed and ended at once.
    let mut second = hand_off(&ctrl, &listener, 2);
    assert_eq!(line(&mut second), "", "closed without a greeting");
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 2 })
    );
    say(&mut first, "QUIT");
    line(&mut first);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 1 })
    );
}

#[test]
fn the_socket_is_taken_before_the_connection_is_served() {
    let (_child, ctrl) = start(20);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ready { ack: true })
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = send_hand_off(&ctrl, &listener, 7);
    // The client closes at once: the worker's first word on this connection is still TAKEN.
    c.get_ref()
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Taken { conn: 7 })
    );
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 7 })
    );
}

/// Sends `packet` to the worker as it is, with no descriptor (what a broken dispatcher
/// could send).
fn send_raw(ctrl: &OwnedFd, packet: &[u8]) {
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(ctrl),
        packet,
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("send");
}

/// A receive error ends taking connections, not the connections in hand.
fn receive_error_drains_and_exits_non_zero(packet: &[u8]) {
    let (mut child, ctrl) = start(20);
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ready { ack: true })
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = hand_off(&ctrl, &listener, 3);
    line(&mut c);
    send_raw(&ctrl, packet);
    assert_eq!(common::next_message(&ctrl), Some(ToDispatcher::Draining));
    // A dispatcher that has not read DRAINING yet may still hand over a connection: the
    // send must go through (a worker that shut its end would make it fail, and the
    // dispatcher take the worker for gone and hand its untaken connections out twice), and
    // the worker must not say TAKEN for it, so the dispatcher gives it to another worker.
    let late = send_hand_off(&ctrl, &listener, 4);
    assert!(
        child.wait_for(Duration::from_millis(300)).is_none(),
        "the worker exited with a connection in hand"
    );
    say(&mut c, "still served");
    assert_eq!(line(&mut c), "250 still served\r\n");
    say(&mut c, "QUIT");
    assert_eq!(line(&mut c), "221 bye\r\n");
    assert_eq!(
        common::next_message(&ctrl),
        Some(ToDispatcher::Ended { conn: 3 })
    );
    let status = child.wait_for(WAIT).expect("exits after its last session");
    assert_eq!(status.code(), Some(1), "{status:?}");
    // End of file, not a reset (which a socket closed with the late hand-off unread would
    // be, and which the kernel reports before the messages still queued: the ENDED above
    // could have been lost), and nothing said of the late connection.
    match wire::recv_from_worker(ctrl.as_fd()) {
        Ok(None) => {}
        other => panic!("after the exit: {other:?}"),
    }
    drop(late);
}

#[test]
fn an_unknown_message_drains_the_worker_instead_of_dropping_its_sessions() {
    receive_error_drains_and_exits_non_zero(b"HELLO");
}

#[test]
fn an_empty_packet_drains_the_worker_instead_of_dropping_its_sessions() {
    receive_error_drains_and_exits_non_zero(b"");
}

#[test]
fn image_started_by_hand_says_it_needs_the_dispatcher() {
    let out = std::process::Command::new(common::example("echo_image"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by the dispatcher"));
}

/// The worker's threads all wait in `recvmsg`, so a `HANDOFF` just ahead of `DRAIN` may be in
/// one thread's hands when another thread reads the `DRAIN`. The dispatcher reads `DRAINING`
/// as "everything it will take is confirmed" and gives the rest to other workers: a `TAKEN`
/// after it is a protocol violation (the worker is killed) and the connection is handed
/// twice. So: on workers with several threads waiting, a hand-off and then a drain a few
/// microseconds later, the gap varied so that the two threads run side by side at some point;
/// the hand-off is either taken before `DRAINING` or never, and nothing is said after it but
/// the end of a connection taken before.
#[test]
fn no_taken_comes_after_draining_when_a_drain_follows_a_hand_off_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut taken_first = 0;
    for round in 0..60u64 {
        let (mut child, ctrl) = start(20);
        assert_eq!(
            common::next_message(&ctrl),
            Some(ToDispatcher::Ready { ack: true })
        );
        // Two connections at once leave three threads waiting once they have ended.
        let warm_up: Vec<_> = (1..=2)
            .map(|conn| hand_off(&ctrl, &listener, conn))
            .collect();
        drop(warm_up);
        for _ in 1..=2 {
            assert!(matches!(
                common::next_message(&ctrl),
                Some(ToDispatcher::Ended { .. })
            ));
        }
        let client = send_hand_off(&ctrl, &listener, 3);
        let gap = Duration::from_micros(round % 30);
        let sent = std::time::Instant::now();
        while sent.elapsed() < gap {
            std::hint::spin_loop();
        }
        wire::send_to_worker(ctrl.as_fd(), &ToWorker::Drain, None).expect("drain");
        let mut said = vec![common::next_message(&ctrl)];
        if said[0] == Some(ToDispatcher::Taken { conn: 3 }) {
            taken_first += 1;
            said.push(common::next_message(&ctrl));
        }
        assert_eq!(
            said.last(),
            Some(&Some(ToDispatcher::Draining)),
            "round {round} (gap {gap:?}): {said:?}"
        );
        drop(client);
        assert!(child.wait_for(WAIT).expect("exits").success());
        loop {
            match common::next_message(&ctrl) {
                None => break,
                Some(ToDispatcher::Ended { conn: 3 }) if said.len() == 2 => {}
                other => panic!("round {round}: {other:?} after DRAINING"),
            }
        }
    }
    assert!(taken_first > 0, "the hand-off was never taken in 60 rounds");
}
