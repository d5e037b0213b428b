//! A worker's drain state, shared by the runtime and every connection it serves.
//!
//! The runtime [starts](DrainSignal::start) the drain when the dispatcher says `DRAIN`, when
//! the dispatcher is gone (end of file on the control socket) or when the control socket
//! fails; from then on [`DrainSignal::is_draining`] is true for every session. A session
//! decides for itself what draining means for it (an LMTP session finishes the transaction in
//! progress, then refuses to start another: `src/lmtp/session.rs`).
//!
//! A session that waits for its client with nothing in progress would not look at the drain
//! state until the client speaks, which a relay that caches connections may not do for a long
//! time. Such a session marks itself [idle](DrainSignal::idle) while it waits: starting the
//! drain shuts the reading side of every idle session's socket (`shutdown(SHUT_RD)`), so its
//! blocked read returns at once (data already received is still read first). Marking and
//! shutting happen under one lock, so a session that is busy (has not marked itself idle, or
//! has dropped its [`Idle`] mark) is never disturbed, and a socket is never shut after its
//! session let go of it.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// The drain state of one worker process; clones share it.
#[derive(Clone, Default)]
pub struct DrainSignal {
    shared: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Set once, never cleared: a worker that drains does not come back.
    draining: bool,
    /// The sockets of the sessions idle now, by the key of their [`Idle`] mark. Each
    /// descriptor is open while it is here: it is borrowed by the live `Idle`, which removes
    /// it (under this lock) before the borrow ends.
    idle: HashMap<u64, RawFd>,
    /// The key of the next [`Idle`] mark; never reused.
    next_key: u64,
}

/// A session's mark "idle, waiting for my client": while it lives, starting the drain shuts
/// the reading side of the session's socket. Dropping it makes the session busy again.
pub struct Idle<'a> {
    signal: &'a DrainSignal,
    key: u64,
    /// The socket stays borrowed (so open) for as long as its descriptor is registered.
    _socket: BorrowedFd<'a>,
}

impl DrainSignal {
    pub fn new() -> DrainSignal {
        DrainSignal::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned lock still holds a whole state.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the worker is draining (told to, its dispatcher gone, or its control socket
    /// broken).
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Marks the session on `socket` idle until the returned mark is dropped; `None` when the
    /// worker is draining already (the session should end now rather than wait).
    pub fn idle<'a>(&'a self, socket: BorrowedFd<'a>) -> Option<Idle<'a>> {
        let mut state = self.lock();
        if state.draining {
            return None;
        }
        let key = state.next_key;
        state.next_key += 1;
        state.idle.insert(key, socket.as_raw_fd());
        Some(Idle {
            signal: self,
            key,
            _socket: socket,
        })
    }

    /// Starts the drain and wakes every idle session; `true` the first time.
    pub fn start(&self) -> bool {
        let mut state = self.lock();
        if state.draining {
            return false;
        }
        state.draining = true;
        for fd in state.idle.values() {
            // SAFETY: the descriptor is registered only while its `Idle` mark lives, and the
            // mark borrows the socket and unregisters it under this lock before the borrow
            // ends: it is open and is the session's socket.
            let socket = unsafe { BorrowedFd::borrow_raw(*fd) };
            // Fails only for a socket that is no longer connected; its session's read ends
            // by itself then.
            let _ =
                nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
        true
    }
}

impl std::fmt::Debug for DrainSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("DrainSignal")
            .field("draining", &state.draining)
            .field("idle_sessions", &state.idle.len())
            .finish()
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.signal.lock().idle.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (server, _) = l.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn an_idle_session_blocked_in_read_is_woken_by_the_drain() {
        let (_client, server) = pair();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let drain = DrainSignal::new();
        let d = drain.clone();
        let reader = std::thread::spawn(move || {
            let idle = d.idle(server.as_fd()).expect("not draining yet");
            let started = std::time::Instant::now();
            let n = (&server).read(&mut [0u8; 16]).expect("read");
            drop(idle);
            (n, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(drain.start());
        let (n, waited) = reader.join().expect("reader thread");
        assert_eq!(n, 0, "the read side was shut");
        assert!(
            waited < Duration::from_secs(5),
            "woken at once, not by the timeout"
        );
        assert!(!drain.start(), "started once");
    }

    #[test]
    fn a_busy_session_is_not_disturbed_and_marking_idle_when_draining_fails() {
        let (mut client, server) = pair();
        let drain = DrainSignal::new();
        drop(drain.idle(server.as_fd()).expect("idle"));
        drain.start();
        assert!(drain.is_draining());
        client.write_all(b"still read\r\n").expect("write");
        let mut buf = [0u8; 12];
        (&server)
            .read_exact(&mut buf)
            .expect("the busy session reads on");
        assert_eq!(&buf, b"still read\r\n");
        assert!(drain.idle(server.as_fd()).is_none());
    }
}
