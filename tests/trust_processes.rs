//! What a worker process inherits from the dispatcher, tried as an attacker or a careless
//! installer would: the real dispatcher, started as root (as CI runs the tests), with real
//! workers, whose credentials, capabilities, environment and descriptors are read from
//! `/proc`.
//!
//! * No worker runs as root: with neither `USER` nor `IMTA_USER`, or with an account that is
//!   uid 0, the start, a reload and `--check` are refused with the same message.
//! * A worker runs as the account with no capability; the native image (`tcp_lmtpn_server`)
//!   with `CAP_SETUID` alone.
//! * A variable and a descriptor the dispatcher was given do not reach a worker.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::dispatcher::{mail_ids, Dispatcher, Layout, WAIT};

/// These tests are about what root does; as another user there is nothing to drop.
fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: the dispatcher is not started as root");
    }
    root
}

/// The demo layout (the seed's LMTP services and images) on free ports.
fn demo_layout(limits: &str) -> Layout {
    Layout::new(limits, ["tcp_lmtp_server", "tcp_lmtpn_server"], |_| {})
}

/// Removes IMTA_USER from the installation's tailor file.
fn without_imta_user(text: String) -> String {
    text.lines()
        .filter(|l| !l.starts_with("IMTA_USER="))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The message every refusal for a missing account gives, for the first service.
const NO_ACCOUNT: &str = "[SERVICE=LMTPSS]: the dispatcher runs as root and neither the \
     service's USER nor IMTA_USER of the tailor file names an account for its workers, which \
     never run as root";

/// The workers running `image`, once there are `n` of them (after their exec).
fn wait_for_workers(d: &Dispatcher, image: &str, n: usize) -> Vec<i32> {
    let end = Instant::now() + WAIT;
    loop {
        let pids = d.workers(image);
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < end,
            "{n} {image} worker(s) not running: {pids:?}\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A field of `/proc/<pid>/status` (`Uid`, `CapEff`), as written there.
fn status_field(pid: i32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Real, effective, saved and file-system uids of a process.
fn uids(pid: i32) -> Vec<u32> {
    status_field(pid, "Uid")
        .split_whitespace()
        .map(|u| u.parse().expect("a uid"))
        .collect()
}

fn capabilities(pid: i32, set: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, set), 16).expect("a capability mask")
}

#[test]
fn root_with_no_account_for_the_workers_is_refused_at_start_and_by_check() {
    if !root() {
        return;
    }
    let layout = demo_layout("MIN_PROCS=1");
    layout.edit_config("imta_tailor", without_imta_user);
    let (status, stderr) = layout.run_refused();
    assert_eq!(status.code(), Some(78), "EX_CONFIG: {stderr}");
    assert!(stderr.contains(NO_ACCOUNT), "{stderr}");
    let (status, _, stderr) = layout.check();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(NO_ACCOUNT),
        "--check says the same:\n{stderr}"
    );
}

#[test]
fn a_service_whose_user_is_root_is_refused() {
    if !root() {
        return;
    }
    let layout = demo_layout("MIN_PROCS=1\nUSER=root");
    let (status, stderr) = layout.run_refused();
    assert_eq!(status.code(), Some(78), "EX_CONFIG: {stderr}");
    let expected = "[SERVICE=LMTPSS]: its workers are to run as root (its USER), which is uid 0";
    assert!(stderr.contains(expected), "{stderr}");
    let (status, _, stderr) = layout.check();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(expected),
        "--check says the same:\n{stderr}"
    );
}

#[test]
fn a_reload_that_would_run_workers_as_root_is_refused_and_they_stay_as_they_were() {
    if !root() {
        return;
    }
    let d = Dispatcher::start("MIN_PROCS=1");
    let before = wait_for_workers(&d, "echo_image", 2);
    d.edit_config("imta_tailor", without_imta_user);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_for_log("reload refused");
    assert!(d.log().contains(NO_ACCOUNT), "{}", d.log());
    let (uid, _) = mail_ids();
    let mut after = d.workers("echo_image");
    after.sort_unstable();
    let mut before = before;
    before.sort_unstable();
    assert_eq!(
        after, before,
        "the same workers serve on, none started or stopped"
    );
    for pid in after {
        assert_eq!(uids(pid), [uid.as_raw(); 4]);
    }
}

#[test]
fn a_store_worker_runs_as_the_account_with_no_capability() {
    if !root() {
        return;
    }
    let d = Dispatcher::start_lmtp("MIN_PROCS=1", "");
    let (uid, _) = mail_ids();
    let pid = wait_for_workers(&d, "tcp_lmtp_server", 1)[0];
    assert_ne!(uid.as_raw(), 0);
    assert_eq!(uids(pid), [uid.as_raw(); 4], "real, effective, saved, fs");
    // The bounding set too: nothing the image runs can get a capability back.
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(capabilities(pid, set), 0, "{set} of the store worker");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
}

#[test]
fn the_native_worker_runs_as_the_account_with_cap_setuid_alone() {
    if !root() {
        return;
    }
    let d = Dispatcher::start_lmtp("MIN_PROCS=1", "");
    let (uid, _) = mail_ids();
    let pid = wait_for_workers(&d, "tcp_lmtpn_server", 1)[0];
    assert_eq!(uids(pid), [uid.as_raw(); 4], "real, effective, saved, fs");
    const CAP_SETUID: u64 = 1 << 7;
    // Bounding set included: should the image switch to uid 0 and run a program, that
    // program gets no other capability (and uid 0 gains none at an exec: securebits).
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(
            capabilities(pid, set),
            CAP_SETUID,
            "{set} of the native worker: {:#x}",
            capabilities(pid, set)
        );
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
}

/// A file whose descriptor the dispatcher is given; its path is what a leaked descriptor
/// shows in `/proc/<pid>/fd`.
fn secret_file(dir: &Path) -> (PathBuf, std::fs::File) {
    let path = dir.join("secret-descriptor");
    std::fs::write(&path, "secret\n").expect("write");
    let file = std::fs::File::open(&path).expect("open");
    (path, file)
}

/// Starts the dispatcher with `FOO_SECRET=x` (and `more`) in its environment and the
/// secret file open as descriptor 7 without close-on-exec, as a careless init script leaves
/// one.
fn start_with_leaks(layout: Layout, secret: &std::fs::File, more: &[(&str, &str)]) -> Dispatcher {
    let fd = secret.as_raw_fd();
    let more: Vec<(String, String)> = more
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Dispatcher::launch(layout, move |cmd| {
        cmd.env("FOO_SECRET", "x").envs(more);
        // SAFETY: dup2 is async-signal-safe; the new descriptor 7 is inheritable.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 7) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

fn environment(pid: i32) -> Vec<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .expect("/proc environ");
    bytes
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// The descriptors of a process and what each is open on.
fn descriptors(pid: i32) -> Vec<(i32, PathBuf)> {
    let mut fds: Vec<(i32, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().parse().ok()?;
            Some((n, std::fs::read_link(e.path()).ok()?))
        })
        .collect();
    fds.sort();
    fds
}

#[test]
fn a_variable_and_a_descriptor_given_to_the_dispatcher_do_not_reach_a_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (secret_path, secret) = secret_file(dir.path());
    let layout = Layout::new("MIN_PROCS=1", ["echo_image", "echo_image"], |_| {});
    let d = start_with_leaks(layout, &secret, &[]);
    // The dispatcher itself has both: the test gave them.
    let own = descriptors(d.child.pid() as i32);
    assert!(
        own.iter().any(|(n, p)| *n == 7 && *p == secret_path),
        "{own:?}"
    );
    // Looked at once they are ready: while a worker is still being loaded, the dynamic
    // loader holds its libraries open on descriptors of its own (`libc.so.6` on 4, seen in CI).
    d.wait_for_log("ready: every service has its MIN_PROCS workers");
    for pid in wait_for_workers(&d, "echo_image", 2) {
        let env = environment(pid);
        assert!(
            !env.iter().any(|v| v.starts_with("FOO_SECRET=")),
            "worker {pid} has the dispatcher's variable: {env:?}"
        );
        assert!(
            env.iter().any(|v| v.starts_with("IMTA_SERVICE=")),
            "{env:?}"
        );
        let fds = descriptors(pid);
        assert!(
            !fds.iter().any(|(_, p)| *p == secret_path),
            "worker {pid} holds the dispatcher's descriptor: {fds:?}"
        );
        let numbers: Vec<i32> = fds.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0, 1, 2, 3], "worker {pid}: {fds:?}");
    }
}

#[test]
fn import_environment_passes_the_variables_it_names_and_no_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, secret) = secret_file(dir.path());
    let layout = Layout::new(
        "MIN_PROCS=1\nIMPORT_ENVIRONMENT=FOO_PASSED",
        ["echo_image", "echo_image"],
        |_| {},
    );
    let d = start_with_leaks(layout, &secret, &[("FOO_PASSED", "y"), ("TZ", "UTC")]);
    for pid in wait_for_workers(&d, "echo_image", 2) {
        let env = environment(pid);
        assert!(env.contains(&"FOO_PASSED=y".to_string()), "{env:?}");
        assert!(env.contains(&"TZ=UTC".to_string()), "{env:?}");
        assert!(!env.iter().any(|v| v.starts_with("FOO_SECRET=")), "{env:?}");
    }
}
