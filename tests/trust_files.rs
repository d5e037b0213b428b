//! The files the dispatcher writes in `IMTA_LOG`, attacked by someone who can write that
//! directory: the real dispatcher (as root, as CI runs the tests), a link planted where it
//! writes, and the file the link points at checked byte for byte afterwards.
//!
//! * A link at `dispatcher.pid` refuses the start, naming the path; the target is untouched.
//! * SIGUSR1 reopens the dispatcher's own version of the log by name and never writes
//!   through a link planted there; the refusal is logged.
//! * The pid file and every log file are created `0640`, whatever the umask.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::dispatcher::{Dispatcher, Layout, WAIT};

/// A file outside the installation that a planted link points at, with known contents.
fn precious(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("precious");
    let contents = b"root:x:0:0:root:/root:/bin/bash\nnot the dispatcher's\n".to_vec();
    std::fs::write(&path, &contents).expect("write the target");
    (path, contents)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The version `dispatcher.log` links to.
fn current_version(d: &Dispatcher) -> PathBuf {
    let log = d.root.join("log");
    log.join(std::fs::read_link(log.join("dispatcher.log")).expect("dispatcher.log is a link"))
}

/// Waits until the file at `path` contains `text`; its contents.
fn wait_for_text(path: &Path, text: &str) -> String {
    let end = Instant::now() + WAIT;
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.contains(text) {
            return got;
        }
        assert!(
            Instant::now() < end,
            "`{text}` not in {}:\n{got}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_link_at_the_pid_file_refuses_the_start_and_leaves_its_target_untouched() {
    let outside = tempfile::tempdir().expect("tempdir");
    let (target, contents) = precious(outside.path());
    let layout = Layout::new("", ["echo_image", "echo_image"], |_| {});
    let pid_file = layout.root.join("log/dispatcher.pid");
    std::os::unix::fs::symlink(&target, &pid_file).expect("plant the link");
    let (status, stderr) = layout.run_refused();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&pid_file.display().to_string()) && stderr.contains("symbolic link"),
        "the refusal names the path and why:\n{stderr}"
    );
    assert_eq!(std::fs::read(&target).expect("read the target"), contents);
    assert!(
        std::fs::symlink_metadata(&pid_file)
            .expect("still there")
            .file_type()
            .is_symlink(),
        "the link is left for the administrator to see"
    );
}

#[test]
fn sigusr1_never_writes_through_a_link_planted_at_the_log_it_reopens() {
    let outside = tempfile::tempdir().expect("tempdir");
    let (target, contents) = precious(outside.path());
    let d = Dispatcher::start("");
    let version = current_version(&d);
    // As logrotate would: the version moved away; then a link planted at its name.
    let rotated = PathBuf::from(format!("{}.1", version.display()));
    std::fs::rename(&version, &rotated).expect("rotate");
    std::os::unix::fs::symlink(&target, &version).expect("plant the link");
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    // The dispatcher still writes to the file it had open: the rotated one says why.
    let log = wait_for_text(&rotated, "cannot reopen the log file");
    let line = log
        .lines()
        .find(|l| l.contains("cannot reopen the log file"))
        .unwrap_or_default();
    assert!(
        line.contains(&version.display().to_string()) && line.contains("symbolic link"),
        "{line}"
    );
    // The dispatcher is still running and logging, and never wrote through the link.
    d.signal(nix::sys::signal::Signal::SIGUSR2);
    wait_for_text(&rotated, "status:");
    assert_eq!(std::fs::read(&target).expect("read the target"), contents);
}

#[test]
fn sigusr1_after_logrotate_moved_the_log_starts_a_new_0640_file_of_the_same_name() {
    let d = Dispatcher::start("");
    let version = current_version(&d);
    let rotated = PathBuf::from(format!("{}.1", version.display()));
    std::fs::rename(&version, &rotated).expect("rotate");
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    wait_for_text(&version, "log file reopened (SIGUSR1)");
    assert_eq!(mode(&version), 0o640);
    assert_eq!(current_version(&d), version, "dispatcher.log links it");
    assert!(!std::fs::read_to_string(&rotated)
        .expect("rotated")
        .contains("reopened"));
}

#[test]
fn the_pid_file_and_every_log_file_are_created_0640_whatever_the_umask() {
    let layout = Layout::new("MIN_PROCS=1", ["echo_image", "echo_image"], |_| {});
    let d = Dispatcher::launch(layout, |cmd| {
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    });
    d.wait_for_started("LMTPSN", 1);
    d.wait_for_started("LMTPSS", 1);
    let log = d.root.join("log");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&log).expect("log directory").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let versioned = [
            "dispatcher.log-",
            "tcp_lmtpss_server.log-",
            "tcp_lmtpsn_server.log-",
        ]
        .iter()
        .any(|p| name.starts_with(p));
        if versioned || name == "dispatcher.pid" {
            assert_eq!(mode(&entry.path()), 0o640, "{name}");
            checked.push(name);
        }
    }
    checked.sort();
    assert_eq!(
        checked.len(),
        4,
        "pid file, dispatcher log, two worker logs: {checked:?}"
    );
}

#[test]
fn names_planted_among_the_log_versions_never_remove_the_log_or_stop_the_start() {
    // Someone who can write IMTA_LOG plants version names that sort after every real one
    // (owned by nobody) and a directory that sorts first: pruning the old versions must
    // neither delete the log just created nor fail the start.
    let d = Dispatcher::start_with("", ["echo_image", "echo_image"], |root| {
        let log = root.join("log");
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("look up nobody")
            .expect("the account nobody exists");
        for i in 0..10 {
            let planted = log.join(format!("dispatcher.log-zzzzzzzz{i}.zzzzz"));
            std::fs::write(&planted, "planted\n").expect("plant a version name");
            nix::unistd::chown(&planted, Some(nobody.uid), Some(nobody.gid)).expect("chown");
        }
        std::fs::create_dir(log.join("dispatcher.log-000000000.00000")).expect("plant a dir");
    });
    let current = current_version(&d);
    assert!(
        current.is_file(),
        "dispatcher.log links a version that exists"
    );
    wait_for_text(&current, "listening on");
    for i in 0..10 {
        let planted = d.root.join(format!("log/dispatcher.log-zzzzzzzz{i}.zzzzz"));
        assert_eq!(
            std::fs::read_to_string(&planted).expect("still there"),
            "planted\n",
            "someone else's file is neither counted nor removed"
        );
    }
}
