//! A tiny worker image for the dispatcher's tests: greets each client with its connection id,
//! the client address, how many connections this process holds, its pid and uid, then echoes
//! lines until `QUIT` (`PANIC` makes the handler panic). Proves the hand-off path end to end without the LMTP images.

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

fn main() -> std::process::ExitCode {
    main_for("echo_image", |config| {
        Ok(Arc::new(Echo {
            service: config.service.clone(),
            active: AtomicUsize::new(0),
        }))
    })
}
