//! How many descriptors the dispatcher may spend on connections waiting for a worker.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (as Postfix's master and most
//! daemons do). The dispatcher then keeps a reserve for what it must always be able to open (a
//! worker start: its socket pair, its LOGFILE, the exec pipe; a reload: the configuration
//! files; the log on SIGUSR1) and one control socket per worker that may run, and holds at most
//! [`budget`] accepted connections; past that it stops accepting, so further clients wait in
//! the kernel's listen queue instead of making `accept` fail with `EMFILE` and every worker
//! start fail with it. The arithmetic is pure; [`raise_limit`] and [`open_now`] ask the OS.

/// Descriptors a worker start needs at once, beyond the control socket it keeps.
pub const SPAWN_FDS: u64 = 8;
/// Descriptors for the dispatcher's own files at any moment (configuration read on a reload,
/// the log reopened, the pid file).
pub const OWN_FILES: u64 = 8;

/// Accepted connections the dispatcher may hold (never less than one, so a service with a
/// tiny limit still works, one client at a time).
///
/// `limit`: the soft RLIMIT_NOFILE; `open`: descriptors open now; `held`: connections held now
/// and `workers`: worker control sockets open now (both included in `open`); `max_workers`:
/// workers the current configuration may start (the sum of MAX_PROCS).
pub fn budget(limit: u64, open: u64, held: u64, workers: u64, max_workers: u64) -> u64 {
    let own = open.saturating_sub(held + workers);
    let reserve = own + SPAWN_FDS + OWN_FILES + workers + max_workers;
    limit.saturating_sub(reserve).max(1)
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit in force.
pub fn raise_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// Descriptors open in this process now.
pub fn open_now() -> std::io::Result<u64> {
    // One entry per descriptor, plus the one reading the directory itself.
    let n = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok(n.saturating_sub(1))
}

/// Whether an error means the process or the system is out of descriptors.
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_covers_a_start_own_files_and_every_worker() {
        // 1024 descriptors, 10 of our own, nothing held, 3 workers may run.
        assert_eq!(budget(1024, 10, 0, 0, 3), 1024 - 10 - 8 - 8 - 3);
        // Held connections and running workers are not "our own": the budget stays put as
        // connections come and go.
        assert_eq!(
            budget(1024, 10 + 50 + 2, 50, 2, 3),
            1024 - 10 - 8 - 8 - 2 - 3
        );
    }

    #[test]
    fn a_tiny_limit_still_lets_one_connection_wait() {
        assert_eq!(budget(24, 12, 0, 0, 3), 1);
        assert_eq!(budget(0, 100, 0, 0, 100), 1);
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile_only() {
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
