//! A worker image that misbehaves on purpose, for the tests of what the dispatcher does when
//! its workers hang, lie or fail (`tests/worker_faults.rs`, `tests/dispatcher_fds.rs`).
//!
//! It speaks the wire protocol by hand instead of linking the worker runtime, so that it can
//! send what the runtime never would: a second `ENDED`, an id it was never handed, an empty
//! packet, descriptors, text that is no message. The behaviour comes from the service's
//! `PARAMETER` (environment `IMTA_PARAMETER`): `MODE=<mode>` or `MODE=<mode>:<dir>`.
//!
//! Every mode greets each connection it serves with `220 faulty <pid> ready`, then echoes each
//! line as `250 <line>` until `QUIT` (`221 bye`), so a test can tell whether a client was
//! served and by which process.
//!
//! | mode | behaviour |
//! |---|---|
//! | `normal-ack` | correct, says `READY ACK` and `TAKEN <id>` for each hand-off |
//! | `normal-plain` | correct, plain `READY` (a third-party image of the written protocol) |
//! | `slow-start` | `normal-ack`, but says `READY` only [`SLOW_START`] after its start |
//! | `fail-after-first:DIR` | the first start of the service is `normal-ack`; every later one exits 1 at once |
//! | `fail-after-first-plain:DIR` | the same with plain `READY` |
//! | `ended-twice` | for each `HANDOFF`, `ENDED <id>` twice at once; keeps serving the socket |
//! | `ended-unknown` | for each `HANDOFF`, `ENDED <id+100000>` |
//! | `empty-packet` | after the first `HANDOFF`, a zero-length packet |
//! | `send-fd` | after the first `HANDOFF`, `READY` with 8 descriptors attached |
//! | `garbage` | after the first `HANDOFF`, text that is no message and forges a log line |
//! | `close-control` | after the first `HANDOFF`, closes descriptor 3 and keeps running |
//! | `ready-twice` | after the first `HANDOFF`, a second `READY` |
//! | `taken-twice` | says `READY ACK`; for each `HANDOFF`, `TAKEN <id>` twice |
//! | `taken-unknown` | says `READY ACK`; for each `HANDOFF`, also `TAKEN <id+100000>` |
//! | `silent-first:DIR` | the first start of the service never says `READY` (it waits, control socket open, until it is killed); later starts are `normal-ack` |
//! | `drain-untaken` | says `READY ACK`; on the first `HANDOFF`, `DRAINING` instead of `TAKEN`, drops the socket unserved and exits |
//!
//! The lying modes (`ended-twice` to `ready-twice`) say plain `READY`, so that their lie is
//! the only thing wrong with them; the last three need `READY ACK` to lie about `TAKEN`.
//! Given `:DIR`, only the first start of the service misbehaves (it leaves a file `started`
//! in DIR); later starts are `normal-plain` (`normal-ack` after an acknowledging mode), so a
//! test can tell the liar from its replacements.
//!
//! Everything it sends is written as text, not through the wire module's message types, so
//! the image builds whether or not that module knows `READY ACK` and `TAKEN`.
//!
//! So that a test that fails cannot leave it behind, the image exits when its parent (the
//! dispatcher) is gone, and in any case after [`LIFETIME`].

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use msdispatcher::handoff::wire::{self, ToWorker, CONTROL_FD};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The longest this process lives, whatever happens (a stopped or orphaned test worker).
const LIFETIME: Duration = Duration::from_secs(180);

/// Added to a handed id by `ended-unknown` and `taken-unknown`.
const UNKNOWN_OFFSET: u64 = 100_000;

/// Text of the `garbage` mode: no message, and a newline that would start a forged line in
/// `dispatcher.log` if the dispatcher logged it verbatim.
const GARBAGE: &str = "HELLO\n2026-12-01T00:00:00Z dispatcher[1] INFO: forged";

/// How long a `slow-start` worker takes to say `READY`: much longer than a real start.
const SLOW_START: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NormalAck,
    NormalPlain,
    EndedTwice,
    EndedUnknown,
    EmptyPacket,
    SendFd,
    Garbage,
    CloseControl,
    ReadyTwice,
    TakenTwice,
    TakenUnknown,
    DrainUntaken,
}

impl Mode {
    fn says_ack(self) -> bool {
        matches!(
            self,
            Mode::NormalAck | Mode::TakenTwice | Mode::TakenUnknown | Mode::DrainUntaken
        )
    }
}

/// What the PARAMETER asks for; `Err` with the reason the image cannot start.
fn mode_from_parameter(parameter: &str) -> Result<Mode, String> {
    let spec = parameter
        .split_whitespace()
        .find_map(|w| w.strip_prefix("MODE="))
        .ok_or_else(|| format!("PARAMETER `{parameter}` names no MODE="))?;
    let (name, dir) = match spec.split_once(':') {
        Some((n, d)) => (n, Some(PathBuf::from(d))),
        None => (spec, None),
    };
    // Whether this is the service's first start, counted by a file in `dir`.
    let first = |dir: &Path| -> Result<bool, String> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join("started"))
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(format!("cannot count starts in {}: {e}", dir.display())),
        }
    };
    let lie = |mode: Mode| -> Result<Mode, String> {
        let replacement = match &dir {
            Some(d) => !first(d)?,
            None => false,
        };
        Ok(match replacement {
            false => mode,
            true if mode.says_ack() => Mode::NormalAck,
            true => Mode::NormalPlain,
        })
    };
    match name {
        "normal-ack" => Ok(Mode::NormalAck),
        "normal-plain" => Ok(Mode::NormalPlain),
        "slow-start" => {
            std::thread::sleep(SLOW_START);
            Ok(Mode::NormalAck)
        }
        "fail-after-first" | "fail-after-first-plain" => {
            let d = dir.ok_or("fail-after-first needs MODE=fail-after-first:DIR")?;
            if !first(&d)? {
                eprintln!(
                    "faulty {}: not the first start; exiting 1",
                    std::process::id()
                );
                std::process::exit(1);
            }
            Ok(if name == "fail-after-first" {
                Mode::NormalAck
            } else {
                Mode::NormalPlain
            })
        }
        "silent-first" => {
            let d = dir.ok_or("silent-first needs MODE=silent-first:DIR")?;
            if first(&d)? {
                // Tests wait for this line, as for `saying READY` (tests/common/faulty.rs).
                eprintln!("faulty {}: never saying READY", std::process::id());
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Ok(Mode::NormalAck)
        }
        "ended-twice" => lie(Mode::EndedTwice),
        "ended-unknown" => lie(Mode::EndedUnknown),
        "empty-packet" => lie(Mode::EmptyPacket),
        "send-fd" => lie(Mode::SendFd),
        "garbage" => lie(Mode::Garbage),
        "close-control" => lie(Mode::CloseControl),
        "ready-twice" => lie(Mode::ReadyTwice),
        "taken-twice" => lie(Mode::TakenTwice),
        "taken-unknown" => lie(Mode::TakenUnknown),
        "drain-untaken" => lie(Mode::DrainUntaken),
        other => Err(format!("unknown MODE {other}")),
    }
}

/// The control socket, descriptor 3, shared by the threads; sending stops once it is closed.
struct Control {
    closed: AtomicBool,
}

impl Control {
    fn fd(&self) -> BorrowedFd<'static> {
        // SAFETY: descriptor 3 is the control socket the dispatcher gave this process. Nothing
        // else in the process owns it; it is closed only by `close`, after which `closed` is
        // set and no caller borrows it any more (the image opens no descriptor after that, so
        // the number is not reused under a racing sender).
        unsafe { BorrowedFd::borrow_raw(CONTROL_FD) }
    }

    /// Sends one packet of `text` with `fds` attached, as no API of the wire module would.
    fn raw(&self, text: &[u8], fds: &[RawFd]) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let iov = [IoSlice::new(text)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        if let Err(e) = sendmsg::<()>(
            self.fd().as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            eprintln!("faulty {}: send failed: {e}", std::process::id());
        }
    }

    /// Sends one message as its text (`READY`, `ENDED 7`).
    fn text(&self, message: &str) {
        self.raw(message.as_bytes(), &[]);
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            // SAFETY: see `fd`: this process owns descriptor 3 and closes it once.
            unsafe { libc::close(CONTROL_FD) };
        }
    }
}

/// Sessions in hand, and a signal when one ends.
#[derive(Default)]
struct Sessions {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Sessions {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn remove(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        self.changed.notify_all();
    }

    fn wait_until_zero(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.changed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Greets, echoes until QUIT or the close; the client's view of this process.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    out.write_all(format!("220 faulty {} ready\r\n", std::process::id()).as_bytes())?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim_end().eq_ignore_ascii_case("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            break;
        }
        out.write_all(format!("250 {}\r\n", line.trim_end()).as_bytes())?;
    }
    Ok(())
}

/// Exits when the parent is gone or the lifetime is over, so no test leaves this behind.
fn watchdog() {
    let parent = nix::unistd::getppid();
    let start = Instant::now();
    std::thread::spawn(move || loop {
        if nix::unistd::getppid() != parent || start.elapsed() > LIFETIME {
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(200));
    });
}

fn main() -> std::process::ExitCode {
    watchdog();
    let parameter = std::env::var("IMTA_PARAMETER").unwrap_or_default();
    let mode = match mode_from_parameter(&parameter) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("faulty: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let pid = std::process::id();
    eprintln!("faulty {pid}: mode {mode:?}");
    let control = Arc::new(Control {
        closed: AtomicBool::new(false),
    });
    let sessions = Arc::new(Sessions::default());
    // Tests wait for this line (tests/common/faulty.rs, `first_faulty_worker`); written
    // before the message, so that it is there even if the dispatcher kills this process for it.
    eprintln!("faulty {pid}: saying READY");
    if mode.says_ack() {
        control.text("READY ACK");
    } else {
        control.text("READY");
    }
    let mut handed = 0u64;
    loop {
        let received = match wire::recv_from_dispatcher(control.fd()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("faulty {pid}: {e}; finishing the sessions in hand");
                break;
            }
        };
        match received {
            None => {
                eprintln!("faulty {pid}: the dispatcher is gone");
                break;
            }
            Some((ToWorker::Drain, _)) => {
                control.text("DRAINING");
                break;
            }
            Some((ToWorker::HandOff { conn, .. }, fd)) => {
                let Some(fd) = fd else { continue };
                handed += 1;
                if mode == Mode::DrainUntaken && handed == 1 {
                    // As if DRAIN had crossed this HANDOFF: the dispatcher still holds its
                    // copy of a connection not taken and must give it to another worker.
                    control.text("DRAINING");
                    drop(fd);
                    break;
                }
                if mode.says_ack() {
                    control.text(&format!("TAKEN {conn}"));
                }
                match mode {
                    Mode::TakenTwice => control.raw(format!("TAKEN {conn}").as_bytes(), &[]),
                    Mode::TakenUnknown => {
                        control.raw(format!("TAKEN {}", conn + UNKNOWN_OFFSET).as_bytes(), &[])
                    }
                    _ => {}
                }
                let report_end = match mode {
                    Mode::EndedTwice => {
                        control.text(&format!("ENDED {conn}"));
                        control.text(&format!("ENDED {conn}"));
                        false
                    }
                    Mode::EndedUnknown => {
                        control.text(&format!("ENDED {}", conn + UNKNOWN_OFFSET));
                        true
                    }
                    _ => true,
                };
                sessions.add();
                let (c, s) = (Arc::clone(&control), Arc::clone(&sessions));
                std::thread::spawn(move || {
                    let _ = serve(TcpStream::from(fd));
                    // Freed before the report, as the protocol asks.
                    s.remove();
                    if report_end {
                        c.text(&format!("ENDED {conn}"));
                    }
                });
                if handed == 1 {
                    misbehave_once(mode, &control);
                }
            }
        }
    }
    sessions.wait_until_zero();
    std::process::ExitCode::SUCCESS
}

/// What the lying modes do after the first hand-off.
fn misbehave_once(mode: Mode, control: &Control) {
    match mode {
        Mode::EmptyPacket => control.raw(b"", &[]),
        Mode::Garbage => control.text(GARBAGE),
        Mode::ReadyTwice => control.text("READY"),
        Mode::SendFd => match std::fs::File::open("/dev/null") {
            // The same descriptor eight times: the kernel installs eight in the receiver.
            Ok(null) => control.raw(b"READY", &[null.as_raw_fd(); 8]),
            Err(e) => eprintln!("faulty: cannot open /dev/null: {e}"),
        },
        Mode::CloseControl => {
            control.close();
            // Keep running, sessions and all, until the dispatcher kills this process (or the
            // watchdog ends it).
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        _ => {}
    }
}
