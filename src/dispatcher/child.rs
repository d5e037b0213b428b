//! Starting a program without copying the dispatcher: `clone(CLONE_VM | CLONE_VFORK)`, as
//! `posix_spawn` does, then the caller's set-up steps and `execve` in the child; and the
//! started process, to signal and reap ([`Process`]).
//!
//! Why not `fork` (what `std::process::Command` does once it is given a `pre_exec` step): a
//! fork copies the dispatcher's page tables and marks its memory copy-on-write, holding the
//! memory map's lock while it does. The dispatcher's event loop, on its own thread, then waits
//! for that lock at its next page fault and pays a fault at each page it writes afterwards.
//! Measured on the development machine (a single client, one connection at a time, workers
//! recycled every 10 connections): the connection in flight during each start took 1.0 to
//! 1.4 ms instead of 0.17. With `CLONE_VM` nothing is copied: the child runs in the
//! dispatcher's memory, on a stack of its own, until its `execve`, and only the starting
//! thread waits for that (`CLONE_VFORK`). It did not make the start free: the same probe still
//! finds one slow connection (1.2 to 2.0 ms) in up to a third of the lives, the one in flight
//! while the successor starts, which is the start's CPU (the exec, the loader, the
//! configuration), not the copy (`docs/performance.md`, fourth stop).
//!
//! What that asks of the child's steps (the caller's `setup`): system calls only. No
//! allocation, no lock, nothing of the C library that keeps state for the process: its
//! `setuid` and `setgroups` wrappers would signal every thread of the dispatcher to change
//! credentials too, so the raw system calls are used ([`raw`]). A signal arriving before the
//! exec must not run a handler of the dispatcher's in the child: every signal is blocked
//! around the clone, and the child resets each caught one to its default before unblocking.
//! A failed step or exec is written to memory both sides share (the child's exit code says
//! nothing more), read once the child has gone, and the child reaped.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

/// The child's stack until its exec: its steps are a few system calls.
const CHILD_STACK: usize = 64 * 1024;

/// A program to run: its path (not searched for in `PATH`), and its environment.
pub struct Program {
    path: CString,
    env: Vec<CString>,
}

impl Program {
    /// `None` when the path or a variable holds a NUL byte, which no exec can be given.
    pub fn new<'a>(
        path: &OsStr,
        env: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
    ) -> Option<Program> {
        let path = CString::new(path.as_bytes()).ok()?;
        let env = env
            .into_iter()
            .map(|(name, value)| {
                let mut pair = name.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                CString::new(pair).ok()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Program { path, env })
    }
}

/// A started process, reaped once ([`Process::wait`], [`Process::try_wait`]); signalled only
/// while it has not been, so that a pid the system gave to another process since is never
/// killed.
#[derive(Debug)]
pub struct Process {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
}

impl Process {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Sends SIGKILL; an error once the process has been reaped.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.status.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the process has already been reaped",
            ));
        }
        // SAFETY: a signal to a child not reaped yet, whose pid therefore is still its own.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    /// Waits for it to exit; its status.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            match self.reap(0) {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: waitpid writes the status into the integer it is given.
        match unsafe { libc::waitpid(self.pid, &mut raw, flags) } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => Ok(None),
            _ => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                Ok(Some(status))
            }
        }
    }
}

/// What the child reads, and where it leaves the error of a failed step or exec.
struct Start<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    setup: &'a dyn Fn() -> std::io::Result<()>,
    error: AtomicI32,
}

/// Starts `program` (its only argument its own path), running `setup` in the child first.
///
/// # Safety
/// `setup` runs in a child that shares this process's memory: it may make system calls only
/// (see the module comment), must not panic, and must not use the C library's credential
/// wrappers.
pub unsafe fn spawn(
    program: &Program,
    setup: &dyn Fn() -> std::io::Result<()>,
) -> std::io::Result<Process> {
    let argv = [program.path.as_ptr(), std::ptr::null()];
    let envp: Vec<*const libc::c_char> = program
        .env
        .iter()
        .map(|v| v.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let start = Start {
        path: program.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        setup,
        error: AtomicI32::new(0),
    };
    let stack = Stack::new()?;
    // SAFETY: every signal blocked on this thread only, restored below; the sets live on this
    // frame.
    let mut old = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    unsafe {
        let mut all = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs `child_main` on `stack` (which outlives it: CLONE_VFORK returns
    // here only once the child has exec'd or exited) with `start`, which lives on this frame.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &start as *const Start as *mut libc::c_void,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid == -1 {
        return Err(clone_error);
    }
    let mut process = Process { pid, status: None };
    match start.error.load(Ordering::SeqCst) {
        0 => Ok(process),
        errno => {
            let _ = process.wait();
            Err(std::io::Error::from_raw_os_error(errno))
        }
    }
}

/// The child, until its exec: signals back to their defaults and unblocked, the caller's
/// steps, the exec; on a failure the error for the parent and exit code 127.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Start`, alive while the parent waits for this child.
    let start = unsafe { &*(arg as *const Start) };
    let fail = |errno: i32| -> ! {
        start.error.store(errno.max(1), Ordering::SeqCst);
        // SAFETY: ends the child without running anything of the parent's (no atexit).
        unsafe { libc::_exit(127) }
    };
    // SAFETY: system calls on this (child) process's own signal state.
    unsafe {
        reset_signals();
        let mut none = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    if let Err(e) = (start.setup)() {
        fail(e.raw_os_error().unwrap_or(libc::EINVAL));
    }
    // SAFETY: the pointers are the parent's NUL-terminated strings and arrays.
    unsafe { libc::execve(start.path, start.argv, start.envp) };
    fail(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL),
    )
}

/// Every signal with a handler back to its default (the handlers are the dispatcher's, and
/// this child shares its memory), and `SIGPIPE` too, which the dispatcher ignores and a
/// program expects at its default. An ignored one stays ignored, as across any exec.
///
/// # Safety
/// System calls only.
unsafe fn reset_signals() {
    for signal in 1..libc::SIGRTMAX() {
        let mut current = unsafe { std::mem::zeroed::<libc::sigaction>() };
        // SAFETY: reads the disposition into the struct on this frame.
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } == -1 {
            continue; // one the C library keeps for itself
        }
        let handled =
            current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
        if handled || signal == libc::SIGPIPE {
            let mut default = unsafe { std::mem::zeroed::<libc::sigaction>() };
            default.sa_sigaction = libc::SIG_DFL;
            // SAFETY: sets this process's disposition from the struct on this frame.
            unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
    }
}

/// The child's stack: a mapping of its own with an inaccessible page below it, so that a
/// child that ran out of stack faults instead of writing into the dispatcher's memory.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> std::io::Result<Stack> {
        let page = 4096;
        let len = CHILD_STACK + page;
        // SAFETY: a fresh anonymous mapping, owned by the returned value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Where the stack starts (it grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which the stack grows down from.
        unsafe { (self.base as *mut u8).add(self.len) as *mut libc::c_void }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (the child has exec'd or exited).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The credential system calls without the C library's wrappers, which in a child sharing
/// the dispatcher's memory would change the credentials of every dispatcher thread as well.
pub mod raw {
    /// `setgroups(2)`.
    ///
    /// # Safety
    /// A system call reading `groups`.
    pub unsafe fn setgroups(groups: &[libc::gid_t]) -> libc::c_long {
        unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }
    }

    /// `setgid(2)`.
    ///
    /// # Safety
    /// A system call.
    pub unsafe fn setgid(gid: libc::gid_t) -> libc::c_long {
        unsafe { libc::syscall(libc::SYS_setgid, gid) }
    }

    /// `setuid(2)`.
    ///
    /// # Safety
    /// A system call.
    pub unsafe fn setuid(uid: libc::uid_t) -> libc::c_long {
        unsafe { libc::syscall(libc::SYS_setuid, uid) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(path: &str) -> Program {
        Program::new(OsStr::new(path), [(OsStr::new("X"), OsStr::new("1"))]).expect("program")
    }

    #[test]
    fn a_program_runs_with_the_environment_given_and_is_reaped() {
        let p = Program::new(
            OsStr::new("/bin/sh"),
            [(OsStr::new("WANT"), OsStr::new("7"))],
        )
        .expect("program");
        // /bin/sh with no arguments reads its commands from standard input: give it none.
        let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
        use std::os::fd::AsRawFd;
        let fd = devnull.as_raw_fd();
        let setup = move || {
            // SAFETY: dup2 of a descriptor this process holds.
            if unsafe { libc::dup2(fd, 0) } == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        let mut child = unsafe { spawn(&p, &setup) }.expect("spawn");
        let status = child.wait().expect("reap");
        assert!(status.success(), "{status}");
        assert!(child.kill().is_err(), "no signal once reaped");
        assert_eq!(
            child.try_wait().expect("again").map(|s| s.success()),
            Some(true)
        );
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let p = program("/nonexistent/image");
        let e = unsafe { spawn(&p, &|| Ok(())) }.expect_err("no such program");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // The child was reaped: no child is left to wait for.
        assert_eq!(
            unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) },
            -1
        );
    }

    #[test]
    fn a_failed_step_is_its_error_and_the_program_does_not_run() {
        let p = program("/bin/true");
        let e = unsafe { spawn(&p, &|| Err(std::io::Error::from_raw_os_error(libc::EPERM))) }
            .expect_err("the step failed");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn a_null_byte_cannot_make_a_program() {
        assert!(Program::new(OsStr::new("/bin/a\0b"), []).is_none());
        assert!(Program::new(
            OsStr::new("/bin/true"),
            [(OsStr::new("A"), OsStr::new("\0"))]
        )
        .is_none());
    }
}
