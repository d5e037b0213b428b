//! Detaching while the terminal waits for the outcome: a takeover commits only once the new
//! dispatcher's workers are ready, long after it has left the terminal, and
//! `dispatcher --takeover` must still say whether it worked and why not. The process forks;
//! the foreground one waits on a pipe for one line from the detached dispatcher
//! (`OK <text>` or `ERR <text>`), prints it and exits 0 or 1; the detached one (a daemon,
//! as `daemon(3)` makes it) writes that line when it knows.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use nix::unistd::ForkResult;

/// Tells the waiting terminal how the start went, once.
pub type Report = Box<dyn FnMut(Result<String, String>)>;

/// Detaches; returns, in the detached process, what tells the waiting terminal the outcome
/// (once). The foreground process never returns from here.
pub fn detach_and_report() -> Result<Report, String> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot detach: {e}"))?;
    // SAFETY: the dispatcher has started no thread yet; the child only goes on to detach.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("cannot detach: {e}"))? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            std::process::exit(wait_for_outcome(read_end));
        }
        ForkResult::Child => {
            drop(read_end);
            nix::unistd::daemon(false, false).map_err(|e| format!("cannot detach: {e}"))?;
            let mut pipe = Some(std::fs::File::from(write_end));
            Ok(Box::new(move |outcome: Result<String, String>| {
                if let Some(mut p) = pipe.take() {
                    let line = match outcome {
                        Ok(t) => format!("OK {}\n", super::notify::one_line(&t)),
                        Err(t) => format!("ERR {}\n", super::notify::one_line(&t)),
                    };
                    let _ = p.write_all(line.as_bytes());
                }
            }))
        }
    }
}

/// The foreground side: prints the outcome; the exit status.
fn wait_for_outcome(read_end: OwnedFd) -> i32 {
    let mut text = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut text);
    let line = text.lines().next().unwrap_or("");
    if let Some(t) = line.strip_prefix("OK ") {
        println!("dispatcher: {t}");
        0
    } else if let Some(t) = line.strip_prefix("ERR ") {
        eprintln!("dispatcher: error: {t}");
        1
    } else {
        eprintln!("dispatcher: error: the detached dispatcher exited before it could say how the takeover went (see dispatcher.log)");
        1
    }
}
