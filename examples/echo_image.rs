//! A tiny worker image for the dispatcher's tests: greets each client with its connection id,
//! the client address, how many connections this process holds, its pid and uid, then echoes
//! lines until `QUIT` (`PANIC` makes the handler panic). Proves the hand-off path end to end without the LMTP images.
//!
//! With `PARAMETER=FORGE_CONTROL_MESSAGE` it plays a hostile image instead: before its first
//! `READY` it sends [`FORGED_MESSAGE`] on its control socket, a message whose newline would
//! start a line of its choosing in `dispatcher.log` if the dispatcher logged it verbatim.

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use msdispatcher::worker::image::main_for;
use msdispatcher::worker::runtime::{Connection, Handler};

struct Echo {
    service: String,
    active: AtomicUsize,
}

impl Handler for Echo {
    fn serve(&self, c: Connection) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = serve(&self.service, now, c);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(service: &str, active: usize, c: Connection) -> std::io::Result<()> {
    let mut out = c.stream.try_clone()?;
    // Each line in one write (write! on a socket would send every piece separately).
    let greeting = format!(
        "220 {service} echo conn={} client={} active={active} pid={} uid={}\r\n",
        c.id,
        c.client,
        std::process::id(),
        nix::unistd::getuid()
    );
    out.write_all(greeting.as_bytes())?;
    for line in BufReader::new(c.stream).lines() {
        let line = line?;
        if line.trim_end() == "PANIC" {
            // For the test that a handler's panic frees its connection slot.
            panic!("connection {}: asked to panic", c.id);
        }
        if line.trim_end().eq_ignore_ascii_case("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            break;
        }
        out.write_all(format!("250 {}\r\n", line.trim_end()).as_bytes())?;
    }
    Ok(())
}

/// The PARAMETER that makes this image send [`FORGED_MESSAGE`].
const FORGE: &str = "FORGE_CONTROL_MESSAGE";

/// Not a protocol message: `READY`, a newline, and what would pass for a dispatcher log line.
const FORGED_MESSAGE: &str = "READY\n2000-01-01T00:00:00Z dispatcher[1] INFO: FORGED by a worker";

/// Sends [`FORGED_MESSAGE`] as one packet on the control socket.
fn forge() -> std::io::Result<()> {
    // SAFETY: descriptor 3 is the control socket the dispatcher gave this process; `main_for`
    // owns it and keeps it open while the handler is built, which is when this runs.
    let ctrl =
        unsafe { std::os::fd::BorrowedFd::borrow_raw(msdispatcher::handoff::wire::CONTROL_FD) };
    nix::unistd::write(ctrl, FORGED_MESSAGE.as_bytes())?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_for("echo_image", |config| {
        if config.parameter == FORGE {
            forge().map_err(|e| format!("cannot send the forged message: {e}"))?;
        }
        Ok(Arc::new(Echo {
            service: config.service.clone(),
            active: AtomicUsize::new(0),
        }))
    })
}
