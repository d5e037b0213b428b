//! Starting a worker process: the service's IMAGE, with its end of the control socket on
//! descriptor 3, its settings in the environment, and its output in the service's LOGFILE.
//!
//! What a worker inherits from the dispatcher is decided here and nowhere else:
//!
//! * **Environment:** none of the dispatcher's own, except the names in
//!   [`PASSED_ENVIRONMENT`] and the service's `IMPORT_ENVIRONMENT`; then the `IMTA_*`
//!   settings of `docs/worker-protocol.md`. A variable set by whoever started the dispatcher
//!   (a secret, `LD_PRELOAD`) does not reach the images.
//! * **Descriptors:** 0 (`/dev/null`), 1 and 2 (the LOGFILE) and 3 (the control socket);
//!   every other one is closed at the exec, also one the dispatcher inherited without
//!   close-on-exec.
//! * **Process group:** its own, so signals meant for the dispatcher's group do not cut its
//!   sessions (the dispatcher drains it instead).
//! * **Account:** started as root, the worker runs as the account [`super::account`] chose,
//!   with no capability, or with `CAP_SETUID` alone for the native image.
//!
//! Nothing here decides whether to start a worker ([`super::policy`] does) or which account
//! it runs as ([`super::account`] does), and nothing waits for one: the caller keeps the
//! [`Process`] and reaps it. How the process is made without copying the dispatcher is
//! [`super::child`]'s.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use super::child::{self, raw, Process, Program};

use super::account::RunAs;
use crate::handoff::env;
use crate::handoff::wire::CONTROL_FD;

/// Variables of the dispatcher's environment every worker gets (when set): the search path,
/// the time zone and the locale, which the C library reads. Anything else must be named in
/// `IMPORT_ENVIRONMENT`.
pub const PASSED_ENVIRONMENT: &[&str] = &["PATH", "TZ", "LANG", "LC_ALL"];

/// Everything a worker is started with (owned: a start may run on another thread,
/// [`super::spawner`]).
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub image: PathBuf,
    pub service: String,
    pub parameter: String,
    pub stack_size: u64,
    pub max_conns: u64,
    pub debug: u32,
    pub tailor: PathBuf,
    /// The service's `IMPORT_ENVIRONMENT`: more names passed on from the dispatcher's
    /// environment.
    pub import_environment: Vec<String>,
    /// Switch to this account before running the image (the dispatcher must be root).
    pub run_as: Option<RunAs>,
}

/// Starts one worker. `control` is the worker's end of the control socket (it stays open in
/// the caller; close it after this returns). `output` receives the worker's standard output
/// and error (taken, not copied: a start costs as few descriptors as it can, for a dispatcher
/// near its limit); without it they go to /dev/null.
pub fn spawn_worker(
    spec: &WorkerSpec,
    control: &OwnedFd,
    output: Option<File>,
) -> std::io::Result<Process> {
    // Standard error is made a copy of standard output in the child (below), so one
    // descriptor serves both.
    let null_in = File::open("/dev/null")?;
    let out = match output {
        Some(f) => f,
        None => OpenOptions::new().write(true).open("/dev/null")?,
    };
    let program = worker_program(spec)?;
    let (stdin_fd, stdout_fd, fd) = (null_in.as_raw_fd(), out.as_raw_fd(), control.as_raw_fd());
    let run_as = spec.run_as;
    let highest_fd = highest_descriptor();
    let setup = move || -> std::io::Result<()> {
        // SAFETY: system calls on this (child) process's descriptors and credentials only.
        unsafe {
            inherit_as(stdin_fd, 0)?;
            inherit_as(stdout_fd, 1)?;
            inherit_as(1, 2)?;
            // A group of its own: a terminal's Ctrl-C, or a service manager signalling the
            // dispatcher's group, reaches only the dispatcher, which then drains its workers.
            if libc::setpgid(0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            inherit_as(fd, CONTROL_FD)?;
        }
        close_above_control_at_exec(highest_fd);
        match run_as {
            Some(run_as) => become_account(run_as),
            None => drop_capabilities(),
        }
    };
    // SAFETY: `setup` makes system calls only (dup2, fcntl, setpgid, close_range, prctl,
    // capset, and the raw setgroups, setgid and setuid), allocates nothing and reads only
    // what it copied before the start (`child::spawn`'s conditions).
    unsafe { child::spawn(&program, &setup) }
}

/// The image and the environment it runs with: of the dispatcher's own variables only the
/// passed ones, then the `IMTA_*` settings (a later value for a name replaces an earlier).
fn worker_program(spec: &WorkerSpec) -> std::io::Result<Program> {
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    let passed = PASSED_ENVIRONMENT
        .iter()
        .copied()
        .chain(spec.import_environment.iter().map(String::as_str));
    for name in passed {
        if let Some(value) = std::env::var_os(name) {
            env.insert(name.into(), value);
        }
    }
    let settings = [
        (env::SERVICE, spec.service.clone()),
        (env::PARAMETER, spec.parameter.clone()),
        (env::STACKSIZE, spec.stack_size.to_string()),
        (env::MAX_CONNS, spec.max_conns.to_string()),
        (env::DEBUG, spec.debug.to_string()),
    ];
    for (name, value) in settings {
        env.insert(name.into(), value.into());
    }
    env.insert(env::TAILOR.into(), spec.tailor.clone().into_os_string());
    Program::new(
        spec.image.as_os_str(),
        env.iter().map(|(n, v)| (n.as_os_str(), v.as_os_str())),
    )
    .ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: a NUL byte in the image's path or environment",
                spec.image.display()
            ),
        )
    })
}

/// Puts descriptor `from` at `to`, inheritable across the exec (`dup2` leaves the copy so;
/// one already in place only loses close-on-exec).
///
/// # Safety
/// System calls on this process's descriptors only.
unsafe fn inherit_as(from: libc::c_int, to: libc::c_int) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on descriptor numbers, nothing else.
    let done = unsafe {
        if from == to {
            libc::fcntl(from, libc::F_SETFD, 0)
        } else {
            libc::dup2(from, to)
        }
    };
    if done == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The highest descriptor number this process can have, for the fallback of
/// [`close_above_control_at_exec`]; read before the start, where reading it is allowed.
fn highest_descriptor() -> libc::c_int {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == -1 {
        return 1024;
    }
    // An unlimited or huge limit would make the fallback loop for minutes at every start:
    // past a million, descriptors are not something a dispatcher inherits by accident.
    libc::c_int::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20)
}

/// Marks every descriptor above 3 close-on-exec, so that the image starts with 0 to 3 only.
///
/// Marked, not closed: after the exec the effect is the same (none of those descriptors
/// exists in the image), and one system call does it.
///
/// System calls only (runs in the child before its exec, [`super::child`]).
fn close_above_control_at_exec(highest_fd: libc::c_int) {
    let first = (CONTROL_FD + 1) as libc::c_uint;
    // SAFETY: close_range only changes flags of this process's descriptors.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // Kernels before 5.11 have no close_range with CLOSE_RANGE_CLOEXEC: one at a time.
        for fd in CONTROL_FD + 1..highest_fd {
            // SAFETY: fcntl on a descriptor number that may not be open (EBADF) is harmless.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// `CAP_SETUID` from `<linux/capability.h>`.
const CAP_SETUID: u32 = 7;
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets, two `CapData` words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `SECBIT_NOROOT` and `SECBIT_NOROOT_LOCKED` from `<linux/securebits.h>`: uid 0 gains no
/// capability at an exec, for good (inherited by every descendant).
const SECBITS_NOROOT_LOCKED: libc::c_ulong = 0x1 | 0x2;
/// Capabilities are numbered below this (`CAP_LAST_CAP` is 40 on Linux 6.x); asking to drop
/// a number the kernel does not know is `EINVAL`, which ends the loop.
const CAPABILITY_NUMBERS: u32 = 64;

/// Switches this (child) process to `run_as` for good: groups, then the group, then the
/// user. Every capability goes, from every set including the bounding set, so that nothing
/// the image later runs can get one back; uid 0 is made to gain nothing at an exec
/// (securebits, locked) and no exec may add privileges (`PR_SET_NO_NEW_PRIVS`). For the
/// native image, `CAP_SETUID` alone is kept across the switch and made ambient, so it
/// survives the exec of an ordinary program: should the image be taken over and switch to
/// uid 0, it owns root's files but holds no other capability, and neither does anything it
/// runs.
///
/// System calls only (runs in the child before its exec, [`super::child`]).
fn become_account(run_as: RunAs) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: each call is a system call on this process's own credentials, with arguments
    // that live on this stack frame for the duration of the call.
    unsafe {
        // While still root (CAP_SETPCAP): empty the bounding set but for what stays.
        for cap in 0..CAPABILITY_NUMBERS {
            if run_as.keep_setuid && cap == CAP_SETUID {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) == -1 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                    break; // past the kernel's last capability
                }
                return fail();
            }
        }
        if libc::prctl(libc::PR_SET_SECUREBITS, SECBITS_NOROOT_LOCKED, 0, 0, 0) == -1 {
            return fail();
        }
        // Keep the permitted set through setuid (it is otherwise cleared) only when one
        // capability is to stay; the capset below then cuts it down to that one.
        let keep = libc::c_ulong::from(run_as.keep_setuid);
        if libc::prctl(libc::PR_SET_KEEPCAPS, keep, 0, 0, 0) == -1 {
            return fail();
        }
        // Groups first, while still root; then the user, which drops root for good.
        let groups = [run_as.gid as libc::gid_t];
        if raw::setgroups(&groups) == -1
            || raw::setgid(run_as.gid as libc::gid_t) == -1
            || raw::setuid(run_as.uid as libc::uid_t) == -1
        {
            return fail();
        }
        let bit = if run_as.keep_setuid {
            1u32 << CAP_SETUID
        } else {
            0
        };
        // Also the inheritable set, which setuid leaves as it was.
        if set_capabilities(bit) == -1 || clear_ambient() == -1 {
            return fail();
        }
        if run_as.keep_setuid {
            // Ambient: kept by the exec of a program without file capabilities.
            let (ambient, raise) = (
                libc::PR_CAP_AMBIENT as libc::c_int,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            );
            if libc::prctl(ambient, raise, libc::c_ulong::from(CAP_SETUID), 0, 0) == -1 {
                return fail();
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0 as libc::c_ulong, 0, 0, 0) == -1
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) == -1
        {
            return fail();
        }
    }
    Ok(())
}

/// A dispatcher that is not root runs its workers as itself; whatever capabilities it was
/// given (a service manager's ambient `CAP_NET_BIND_SERVICE`, say) are not passed on, and no
/// exec may add privileges. Dropping needs no privilege.
///
/// System calls only (runs in the child before its exec, [`super::child`]).
fn drop_capabilities() -> std::io::Result<()> {
    // SAFETY: system calls on this process's own credentials, with arguments that live on
    // this stack frame for the duration of the call.
    unsafe {
        if set_capabilities(0) == -1
            || clear_ambient() == -1
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) == -1
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets to `bits` (capabilities 0 to 31; the
/// upper word is emptied). `-1` on failure, as the system call says.
///
/// # Safety
/// A system call only; async-signal-safe.
unsafe fn set_capabilities(bits: u32) -> libc::c_long {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: bits,
            permitted: bits,
            inheritable: bits,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are valid for the call and outlive it.
    unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }
}

/// Empties the ambient set. `-1` on failure.
///
/// # Safety
/// A system call only; async-signal-safe.
unsafe fn clear_ambient() -> libc::c_int {
    let (ambient, clear) = (
        libc::PR_CAP_AMBIENT as libc::c_int,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    );
    // SAFETY: a prctl on this process's own credentials.
    unsafe { libc::prctl(ambient, clear, 0, 0, 0) }
}
