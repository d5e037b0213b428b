//! `dispatcher --takeover` under load: a new dispatcher takes the running one's listening
//! sockets, and the old one drains and exits, while a client loop (connect, greeting, QUIT)
//! and Postfix's `smtp-source -L` keep coming. Not one connection may be refused or reset,
//! and every message must be stored. Done twice in a row (the new one is taken over too).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dispatcher::{Dispatcher, WAIT};
use common::{peers, pid_alive};

/// Messages smtp-source sends; enough to span both takeovers.
const MESSAGES: usize = 4000;
/// The client loop's bound.
const LOOP_LIMIT: Duration = Duration::from_secs(90);

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn pid_in(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Stops the detached dispatchers the test made (by the pid they wrote), when dropped.
struct Detached(PathBuf);

impl Drop for Detached {
    fn drop(&mut self) {
        let pid = pid_in(&self.0);
        if pid > 0 {
            common::dispatcher::signal(pid as u32, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + WAIT;
            while pid_alive(pid) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One client round: connect, the greeting, QUIT, its reply; what went wrong, if anything.
fn round(addr: SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("greeting: {e}"))?;
    if !line.starts_with("220 ") {
        return Err(format!("greeting: {line:?}"));
    }
    r.get_mut()
        .write_all(b"QUIT\r\n")
        .map_err(|e| format!("QUIT: {e}"))?;
    line.clear();
    r.read_line(&mut line)
        .map_err(|e| format!("QUIT reply: {e}"))?;
    if !line.starts_with("221 ") {
        return Err(format!("QUIT reply: {line:?}"));
    }
    Ok(())
}

fn takeover(root: &Path) -> String {
    let mut cmd = Command::new(root.join("lib/dispatcher"));
    cmd.args(["--takeover", "--takeover-timeout", "20"])
        .env_remove("IMTA_TAILOR")
        .stdin(Stdio::null());
    let out = peers::run_bounded(cmd, "dispatcher --takeover", Duration::from_secs(40));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "--takeover failed: {said}");
    said
}

#[test]
fn two_takeovers_under_a_client_loop_and_smtp_source_lose_nothing() {
    // With a metrics endpoint, which is handed over too.
    let [metrics_port] = common::dispatcher::free_ports::<1>();
    let layout = common::dispatcher::Layout::lmtp("MIN_PROCS=2\nMAX_PROCS=4", "");
    let cnf = layout.root.join("config/dispatcher.cnf");
    let text = std::fs::read_to_string(&cnf).expect("read");
    std::fs::write(
        &cnf,
        format!("{text}[SERVICE=DISPATCHER]\nMETRICS_PORT={metrics_port}\n"),
    )
    .expect("write");
    let d = Dispatcher::launch(layout, |_| {});
    d.wait_for_started("LMTPSS", 2);
    common::lmtp::maildir(&d.root, "carol");
    let store = d.addr(0);
    let pid_file = d.root.join("log/dispatcher.pid");
    let _cleanup = Detached(pid_file.clone());
    let first = d.child.pid() as i32;

    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let end = Instant::now() + LOOP_LIMIT;
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                match round(store) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    let source = std::thread::spawn(move || {
        peers::smtp_source(
            store,
            &[
                "-s",
                "4",
                "-m",
                &MESSAGES.to_string(),
                "-l",
                "1024",
                "-f",
                "source@relay.example",
                "-t",
                "carol@example.com",
            ],
            Duration::from_secs(120),
        )
    });
    let inbox = d.root.join("store/carol/new");
    let wait_for_mail = |n: usize| {
        let end = Instant::now() + Duration::from_secs(60);
        while count(&inbox) < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        count(&inbox)
    };
    let at_first = wait_for_mail(MESSAGES / 10);
    let said = takeover(&d.root);
    let second = pid_in(&pid_file);
    assert!(
        said.contains(&format!("took over from pid {first}")),
        "{said}"
    );
    assert_ne!(second, first, "the pid file is the new dispatcher's");
    let at_second = wait_for_mail(count(&inbox) + MESSAGES / 10);
    let said = takeover(&d.root);
    assert!(
        said.contains(&format!("took over from pid {second}")),
        "{said}"
    );
    let third = pid_in(&pid_file);
    let at_end_of_takeovers = count(&inbox);

    let sent = source.join().expect("smtp-source thread");
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = looping.join().expect("client loop");
    assert!(
        sent.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        at_end_of_takeovers < MESSAGES,
        "both takeovers happened while smtp-source ran ({at_first}, {at_second}, {at_end_of_takeovers} of {MESSAGES} stored)"
    );
    assert!(
        failed.is_empty(),
        "{} of {} client rounds failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "the client loop ran ({ok} rounds)");
    assert_eq!(count(&inbox), MESSAGES, "every message stored");
    assert_eq!(
        count(&d.root.join("store/carol/tmp")),
        0,
        "nothing half-written"
    );

    // The old dispatchers drained and exited; the third serves, controllable.
    let end = Instant::now() + WAIT;
    while (pid_alive(first) || pid_alive(second)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pid_alive(second),
        "the second dispatcher exited after handing over"
    );
    let mut cmd = Command::new(d.root.join("lib/dispatcher"));
    cmd.arg("--status").env_remove("IMTA_TAILOR");
    let out = peers::run_bounded(cmd, "dispatcher --status", Duration::from_secs(20));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("pid {third}")), "{table}");
    let mut m = TcpStream::connect(("127.0.0.1", metrics_port)).expect("the metrics endpoint");
    m.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    m.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut m, &mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(
        reply.contains("msdispatcher_worker_starts_total"),
        "{reply}"
    );
    eprintln!(
        "takeovers at {at_first} and {at_second} of {MESSAGES} messages; {ok} client rounds, none failed"
    );
}
