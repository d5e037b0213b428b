//! The signals the dispatcher obeys, as flags set by async-signal-safe handlers and read by
//! the event loop, plus a socket the handlers write to so that a signal wakes the loop.
//!
//! SIGTERM and SIGINT stop gracefully; SIGCHLD says a worker exited; SIGUSR1 reopens the log
//! file; SIGUSR2 asks for a status report; SIGHUP reloads the configuration. Nothing here acts
//! on a signal: [`Signals::take`] says which arrived, the loop decides.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which signals arrived since the last [`Signals::take`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrived {
    pub stop: bool,
    pub child: bool,
    pub reopen: bool,
    pub status: bool,
    pub reload: bool,
}

pub struct Signals {
    /// Readable when a signal arrived: register it with the loop's poll.
    pub wake: UnixStream,
    /// The end the handlers write to; kept open for the dispatcher's life.
    _ping: UnixStream,
    stop: Arc<AtomicBool>,
    child: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    status: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let (wake, ping) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        ping.set_nonblocking(true)?;
        // One descriptor written by every handler (not a copy per signal: a dispatcher near
        // its descriptor limit needs each one).
        let ping_fd = ping.as_raw_fd();
        let flag = |sigs: &[i32]| -> std::io::Result<Arc<AtomicBool>> {
            let f = Arc::new(AtomicBool::new(false));
            for &s in sigs {
                signal_hook::flag::register(s, Arc::clone(&f))?;
                signal_hook::low_level::pipe::register_raw(s, ping_fd)?;
            }
            Ok(f)
        };
        use signal_hook::consts::*;
        Ok(Signals {
            stop: flag(&[SIGTERM, SIGINT])?,
            child: flag(&[SIGCHLD])?,
            reopen: flag(&[SIGUSR1])?,
            status: flag(&[SIGUSR2])?,
            reload: flag(&[SIGHUP])?,
            wake,
            _ping: ping,
        })
    }

    /// Empties the wake-up socket (after poll said it is readable).
    pub fn drain_wakeups(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = std::io::Read::read(&mut &self.wake, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// Which signals arrived, clearing them.
    pub fn take(&self) -> Arrived {
        let t = |f: &AtomicBool| f.swap(false, Ordering::SeqCst);
        Arrived {
            stop: t(&self.stop),
            child: t(&self.child),
            reopen: t(&self.reopen),
            status: t(&self.status),
            reload: t(&self.reload),
        }
    }
}
