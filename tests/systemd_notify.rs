//! The dispatcher under a service manager (systemd `Type=notify`): the test plays systemd,
//! binding the datagram socket `NOTIFY_SOCKET` names, and reads what the dispatcher says and
//! in which order: `READY=1` only once the listeners are open and MIN_PROCS workers are
//! ready, `RELOADING=1` / `STATUS=` / `READY=1` around a reload applied or refused,
//! `STOPPING=1` at a stop, and `STATUS=` lines now and then.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::dispatcher::{Dispatcher, Layout, WAIT};
use nix::sys::signal::Signal;

/// The service manager's side: a datagram socket in a temporary directory.
struct Manager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    /// Every assignment received so far, one a line, in order.
    heard: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Manager {
            socket,
            path,
            heard: Vec::new(),
            _dir: dir,
        }
    }

    /// One datagram within `within`, its assignments appended to `heard`.
    fn receive(&mut self, within: Duration) -> Option<Vec<String>> {
        self.socket
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .expect("read timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let lines: Vec<String> = String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect();
        self.heard.extend(lines.iter().cloned());
        Some(lines)
    }

    /// Reads until an assignment starting with `prefix` arrives (within [`WAIT`]); returns
    /// that datagram.
    fn until(&mut self, prefix: &str) -> Vec<String> {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no `{prefix}` heard; heard: {:#?}",
                self.heard
            );
            if let Some(d) = self.receive(left) {
                if d.iter().any(|l| l.starts_with(prefix)) {
                    return d;
                }
            }
        }
    }

    /// The assignments heard from the `n`th on, in order.
    fn since(&self, n: usize) -> Vec<&str> {
        self.heard[n..].iter().map(String::as_str).collect()
    }
}

/// Starts the dispatcher on `layout` with `NOTIFY_SOCKET` pointing at `manager`.
fn launch(layout: Layout, manager: &Manager) -> Dispatcher {
    let path = manager.path.clone();
    Dispatcher::launch(layout, move |cmd| {
        cmd.env("NOTIFY_SOCKET", &path);
    })
}

/// The position of the first assignment that starts with `prefix`.
fn position(heard: &[&str], prefix: &str) -> Option<usize> {
    heard.iter().position(|l| l.starts_with(prefix))
}

#[test]
fn ready_comes_once_min_procs_workers_of_every_service_are_up() {
    let mut m = Manager::new();
    let d = launch(
        Layout::new("MIN_PROCS=2", ["echo_image", "echo_image"], |_| {}),
        &m,
    );
    let ready = m.until("READY=1");
    // Both services' two workers exist when READY arrives, and the log says each started.
    let workers = d.workers("echo_image");
    assert!(workers.len() >= 4, "4 workers at READY: {workers:?}");
    assert!(
        d.started("LMTPSS") >= 2 && d.started("LMTPSN") >= 2,
        "{}",
        d.log()
    );
    assert!(
        ready.iter().any(|l| l.starts_with("STATUS=ready")),
        "READY=1 comes with a status: {ready:?}"
    );
    // Nothing before it said READY (one READY=1, and it is the last thing heard).
    let heard = m.since(0);
    assert_eq!(
        heard.iter().filter(|l| **l == "READY=1").count(),
        1,
        "{heard:?}"
    );
    // The workers were not given the manager's socket: only the dispatcher speaks to it.
    for pid in workers {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET"),
            "worker {pid} has NOTIFY_SOCKET"
        );
    }
}

#[test]
fn no_ready_while_a_min_procs_worker_has_not_said_ready() {
    let mut m = Manager::new();
    // An image that starts and never says READY (the dispatcher kills it after 30 s).
    let layout = Layout::new("MIN_PROCS=1", ["silent_image", "echo_image"], |root| {
        let image = root.join("lib/silent_image");
        std::fs::write(&image, "#!/bin/sh\nexec sleep 60\n").expect("write the image");
        std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod the image");
    });
    let d = launch(layout, &m);
    d.wait_for_started("LMTPSS", 1);
    d.wait_for_started("LMTPSN", 1);
    // The listeners are open and every worker started; the silent one keeps READY back.
    let end = Instant::now() + Duration::from_secs(3);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if m.receive(left).is_none() {
            break;
        }
    }
    assert_eq!(
        position(&m.since(0), "READY=1"),
        None,
        "READY=1 before MIN_PROCS workers were ready: {:?}\n{}",
        m.heard,
        d.log()
    );
}

#[test]
fn a_reload_says_reloading_then_applied_or_refused_and_why_then_ready() {
    let mut m = Manager::new();
    let d = launch(
        Layout::new("MIN_PROCS=1", ["echo_image", "echo_image"], |_| {}),
        &m,
    );
    m.until("READY=1");

    // A good reload.
    let n = m.heard.len();
    d.signal(Signal::SIGHUP);
    m.until("READY=1");
    let heard = m.since(n);
    let reloading = position(&heard, "RELOADING=1").expect("RELOADING=1");
    let applied = position(&heard, "STATUS=configuration reloaded (generation 1)")
        .unwrap_or_else(|| panic!("STATUS= applied: {heard:?}"));
    let ready = position(&heard, "READY=1").expect("READY=1");
    assert!(reloading < applied && applied < ready, "order: {heard:?}");
    assert!(
        heard.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 says when: {heard:?}"
    );

    // A refused one: the mappings file broken.
    let mappings = d.root.join("config/mappings");
    std::fs::copy(
        common::fixtures().join("trust/mappings_garbage_binary"),
        &mappings,
    )
    .expect("break mappings");
    let n = m.heard.len();
    d.signal(Signal::SIGHUP);
    m.until("READY=1");
    let heard = m.since(n);
    let reloading = position(&heard, "RELOADING=1").expect("RELOADING=1");
    let refused = position(
        &heard,
        "STATUS=reload refused, still running on the previous configuration: ",
    )
    .unwrap_or_else(|| panic!("STATUS= refused: {heard:?}"));
    let ready = position(&heard, "READY=1").expect("READY=1");
    assert!(reloading < refused && refused < ready, "order: {heard:?}");
    let why = heard[refused];
    assert!(
        why.contains(&mappings.display().to_string()),
        "the status names the broken file: {why}\n{}",
        d.log()
    );
    d.wait_for_log("reload refused");
}

#[test]
fn a_stop_says_stopping() {
    let mut m = Manager::new();
    let mut d = launch(
        Layout::new("MIN_PROCS=1", ["echo_image", "echo_image"], |_| {}),
        &m,
    );
    m.until("READY=1");
    d.signal(Signal::SIGTERM);
    let stopping = m.until("STOPPING=1");
    assert!(
        stopping.iter().any(|l| l.starts_with("STATUS=stopping")),
        "{stopping:?}"
    );
    let status = d.child.wait_for(WAIT).expect("the dispatcher stops");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_status_line_with_the_counts_comes_every_ten_seconds() {
    let mut m = Manager::new();
    let _d = launch(
        Layout::new("MIN_PROCS=0", ["echo_image", "echo_image"], |_| {}),
        &m,
    );
    m.until("READY=1");
    let n = m.heard.len();
    let start = Instant::now();
    let end = start + Duration::from_secs(13);
    let mut got = None;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Some(d) = m.receive(left) {
            got = d.into_iter().find(|l| l.starts_with("STATUS="));
            if got.is_some() {
                break;
            }
        }
    }
    let line = got.unwrap_or_else(|| panic!("no STATUS= within 13 s: {:?}", m.since(n)));
    assert!(
        line.contains(" accepted, ") && line.contains(" handed off, "),
        "{line}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(8),
        "not sooner than the period: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_start_refused_for_its_configuration_exits_78_and_tells_the_manager_why() {
    let mut m = Manager::new();
    let layout = Layout::new("MIN_PROCS=0", ["echo_image", "echo_image"], |_| {});
    let mappings = layout.root.join("config/mappings");
    std::fs::copy(
        common::fixtures().join("trust/mappings_garbage_binary"),
        &mappings,
    )
    .expect("break mappings");
    let mut cmd = layout.command();
    cmd.env("NOTIFY_SOCKET", &m.path);
    let mut child = common::ChildGuard(cmd.spawn().expect("start the dispatcher"));
    let status = child.wait_for(WAIT).expect("the dispatcher exits");
    // EX_CONFIG, which the unit's RestartPreventExitStatus= names: no restart loop.
    assert_eq!(status.code(), Some(78), "{status:?}");
    let said = m.until("STATUS=");
    assert!(
        said.iter()
            .any(|l| l.starts_with("STATUS=cannot run: ") && l.contains("mappings")),
        "{said:?}"
    );
}

#[test]
fn a_start_refused_for_the_host_exits_1_so_that_a_restart_may_mend_it() {
    let layout = Layout::new("MIN_PROCS=0", ["echo_image", "echo_image"], |_| {});
    // The first service's port is taken by someone else.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", layout.ports[0])).expect("bind");
    let (status, stderr) = layout.run_refused();
    assert_eq!(status.code(), Some(1), "{stderr}");
}
