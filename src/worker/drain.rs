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
//!
//! A session that has not yet served a request is *owed* one: the drain may have come just
//! after its connection was handed (the last connection of a worker recycled by
//! `MAX_LIFE_CONNS` always is), or while its client was between the greeting and its first
//! request. Such a session may still begin its request within [`OWED_GRACE`] of the start of
//! the drain; an owed session still idle when the grace ends ([`DrainSignal::end_grace`]) is
//! woken like the others.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long after the start of the drain a session that has served no request yet may still
/// begin one: a few round trips of a relay that connected just before the drain.
pub const OWED_GRACE: Duration = Duration::from_secs(1);

/// The drain state of one worker process; clones share it.
#[derive(Clone, Default)]
pub struct DrainSignal {
    shared: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Set once, never cleared: a worker that drains does not come back.
    draining: bool,
    /// The [`OWED_GRACE`] is over: owed sessions are refused too. Only set while draining.
    grace_over: bool,
    /// The sockets of the sessions idle now, and whether each is owed a request, by the key
    /// of their [`Idle`] mark. Each descriptor is open while it is here: it is borrowed by the
    /// live `Idle`, which removes it (under this lock) before the borrow ends.
    idle: HashMap<u64, (RawFd, bool)>,
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

    /// Whether a session with no request in progress must end now instead of beginning one:
    /// when the worker drains, unless the session is `owed` a request and the grace is not
    /// over.
    pub fn refuses(&self, owed: bool) -> bool {
        self.lock().refuses(owed)
    }

    /// Marks the session on `socket` idle until the returned mark is dropped; `owed`: it has
    /// served no request yet. `None` when the session should end now rather than wait
    /// ([`DrainSignal::refuses`]).
    pub fn idle<'a>(&'a self, socket: BorrowedFd<'a>, owed: bool) -> Option<Idle<'a>> {
        let mut state = self.lock();
        if state.refuses(owed) {
            return None;
        }
        let key = state.next_key;
        state.next_key += 1;
        state.idle.insert(key, (socket.as_raw_fd(), owed));
        Some(Idle {
            signal: self,
            key,
            _socket: socket,
        })
    }

    /// Starts the drain and wakes every idle session that is owed nothing; `true` the first
    /// time. The caller ends the grace with [`DrainSignal::end_grace`] [`OWED_GRACE`] later.
    pub fn start(&self) -> bool {
        let mut state = self.lock();
        if state.draining {
            return false;
        }
        state.draining = true;
        state.wake_refused();
        true
    }

    /// Ends the grace of owed sessions (starting the drain if it was not): every idle
    /// session is woken, every session refused its next request.
    pub fn end_grace(&self) {
        let mut state = self.lock();
        state.draining = true;
        state.grace_over = true;
        state.wake_refused();
    }
}

impl State {
    fn refuses(&self, owed: bool) -> bool {
        self.draining && (!owed || self.grace_over)
    }

    /// Shuts the reading side of every idle session's socket that [`State::refuses`].
    fn wake_refused(&self) {
        for &(fd, owed) in self.idle.values() {
            if !self.refuses(owed) {
                continue;
            }
            // SAFETY: the descriptor is registered only while its `Idle` mark lives, and the
            // mark borrows the socket and unregisters it under this lock before the borrow
            // ends: it is open and is the session's socket.
            let socket = unsafe { BorrowedFd::borrow_raw(fd) };
            // Fails only for a socket that is no longer connected; its session's read ends
            // by itself then.
            let _ =
                nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
    }
}

impl std::fmt::Debug for DrainSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("DrainSignal")
            .field("draining", &state.draining)
            .field("grace_over", &state.grace_over)
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
            let idle = d.idle(server.as_fd(), false).expect("not draining yet");
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
        drop(drain.idle(server.as_fd(), false).expect("idle"));
        drain.start();
        assert!(drain.is_draining());
        client.write_all(b"still read\r\n").expect("write");
        let mut buf = [0u8; 12];
        (&server)
            .read_exact(&mut buf)
            .expect("the busy session reads on");
        assert_eq!(&buf, b"still read\r\n");
        assert!(drain.idle(server.as_fd(), false).is_none());
    }

    #[test]
    fn an_owed_session_is_woken_only_when_the_grace_ends() {
        let (mut client, server) = pair();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let drain = DrainSignal::new();
        let idle = drain.idle(server.as_fd(), true).expect("idle");
        drain.start();
        assert!(!drain.refuses(true) && drain.refuses(false));
        client.write_all(b"x").expect("write");
        let mut byte = [0u8; 1];
        assert_eq!(
            (&server).read(&mut byte).expect("read"),
            1,
            "not shut by the start"
        );
        drain.end_grace();
        assert_eq!(
            (&server).read(&mut byte).expect("read"),
            0,
            "shut when the grace ended"
        );
        drop(idle);
        assert!(drain.refuses(true));
        assert!(drain.idle(server.as_fd(), true).is_none());
    }
}
