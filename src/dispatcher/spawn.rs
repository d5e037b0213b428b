//! Starting a worker process: the service's IMAGE, with its end of the control socket on
//! descriptor 3, its settings in the environment, and its output in the service's LOGFILE.
//!
//! Started as root, the dispatcher runs each worker as the service's `USER`, else the tailor's
//! `IMTA_USER` ([`run_as`] looks the account up once, not per worker).
//!
//! Nothing here decides whether to start a worker ([`super::policy`] does), and nothing waits
//! for one: the caller keeps the `Child` and reaps it.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::handoff::wire::CONTROL_FD;
use crate::worker::runtime::env;

/// The account a worker runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Why an account cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    #[error("user {0} does not exist")]
    NoSuchUser(String),
    #[error("cannot look up user {0}: {1}")]
    Lookup(String, nix::Error),
}

/// Looks up the account `name` (or a numeric uid) once, before any worker starts.
pub fn run_as(name: &str) -> Result<RunAs, RunAsError> {
    let user = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    }
    .map_err(|e| RunAsError::Lookup(name.to_string(), e))?
    .ok_or_else(|| RunAsError::NoSuchUser(name.to_string()))?;
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// Everything a worker is started with.
#[derive(Debug, Clone)]
pub struct WorkerSpec<'a> {
    pub image: &'a Path,
    pub service: &'a str,
    pub parameter: &'a str,
    pub stack_size: u64,
    pub max_conns: u64,
    pub debug: u32,
    pub tailor: &'a Path,
    /// Switch to this account before running the image (the dispatcher must be root).
    pub run_as: Option<RunAs>,
}

/// Starts one worker. `control` is the worker's end of the control socket (it stays open in
/// the caller; close it after this returns). `output` receives the worker's standard output
/// and error; without it they go to /dev/null.
pub fn spawn_worker(
    spec: &WorkerSpec<'_>,
    control: &OwnedFd,
    output: Option<&File>,
) -> std::io::Result<Child> {
    let (stdout, stderr) = match output {
        Some(f) => (Stdio::from(f.try_clone()?), Stdio::from(f.try_clone()?)),
        None => (Stdio::null(), Stdio::null()),
    };
    let fd = control.as_raw_fd();
    let run_as = spec.run_as;
    let mut cmd = Command::new(spec.image);
    cmd.env(env::SERVICE, spec.service)
        .env(env::PARAMETER, spec.parameter)
        .env(env::STACKSIZE, spec.stack_size.to_string())
        .env(env::MAX_CONNS, spec.max_conns.to_string())
        .env(env::DEBUG, spec.debug.to_string())
        .env(env::TAILOR, spec.tailor)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the closure runs in the child between fork and exec and calls only dup2, fcntl,
    // setgroups, setgid and setuid, which are async-signal-safe; it touches no memory shared
    // with other threads.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(RunAs { uid, gid }) = run_as {
                // Groups first, while still root; then the user, which drops root for good.
                let groups = [gid as libc::gid_t];
                if libc::setgroups(1, groups.as_ptr()) == -1
                    || libc::setgid(gid as libc::gid_t) == -1
                    || libc::setuid(uid as libc::uid_t) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if fd == CONTROL_FD {
                // Already in place: only clear close-on-exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, CONTROL_FD) == -1 {
                // dup2 leaves the new descriptor inheritable.
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}
