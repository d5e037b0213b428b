//! `make bench` (dispatcher part): connections per second through the dispatcher, against
//! bare accept loops measured side by side in the same run.
//!
//! All servers speak the same tiny protocol: a greeting line, then `221 bye` to `QUIT`. The
//! peers are, in one process, a bare accept loop with a thread per connection, and 8 threads
//! that each accept on the shared listener and serve (no thread created per connection: the
//! strictest simple server). Ours is the whole product path: the dispatcher accepts, judges
//! PORT_ACCESS, hands the socket to a pre-started worker process (the echo test image) over
//! SCM_RIGHTS, and the worker serves it on a reused thread and reports `ENDED`. The same
//! client (4 threads, a fixed number of connections each, so the run always ends) drives all
//! three; each process's CPU time per connection is printed too.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT_THREADS: usize = 4;
const PER_THREAD: usize = 1_500;

/// Connects, reads the greeting line, says QUIT when the server waits for it, closes.
fn one_connection(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.starts_with("220") {
        return false;
    }
    let _ = reader.get_mut().write_all(b"QUIT\r\n");
    line.clear();
    let _ = reader.read_line(&mut line);
    true
}

/// Connections per second and failures for `CLIENT_THREADS * PER_THREAD` connections.
fn drive(addr: SocketAddr) -> (f64, usize) {
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            std::thread::spawn(move || (0..PER_THREAD).filter(|_| !one_connection(addr)).count())
        })
        .collect();
    let failed: usize = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(PER_THREAD))
        .sum();
    let total = CLIENT_THREADS * PER_THREAD;
    (total as f64 / start.elapsed().as_secs_f64(), failed)
}

/// The peer: a bare accept loop, a thread per connection, the same greeting and QUIT.
fn bare_accept_loop() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_bare(stream));
        }
    });
    addr
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A stricter peer: the same service from 8 threads that each accept on the shared listener
/// and serve what they accepted (no thread created per connection).
fn bare_accepting_threads() -> SocketAddr {
    let listener = std::sync::Arc::new(TcpListener::bind("127.0.0.1:0").expect("bind"));
    let addr = listener.local_addr().expect("addr");
    for _ in 0..8 {
        let l = std::sync::Arc::clone(&listener);
        std::thread::spawn(move || {
            for stream in l.incoming().flatten() {
                let _ = serve_bare(stream);
            }
        });
    }
    addr
}

fn serve_bare(stream: TcpStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    out.write_all(b"220 bare\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    out.write_all(b"221 bye\r\n")
}

/// The dispatcher on a temporary installation, with 2 pre-started echo workers.
fn dispatcher(root: &Path) -> (Running, SocketAddr) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = here.join("target/release");
    let ok = Command::new("bash")
        .arg(here.join("scripts/demo-layout.sh"))
        .arg(root)
        .arg(&bin)
        .stdout(Stdio::null())
        .status()
        .expect("demo-layout.sh");
    assert!(ok.success(), "demo-layout.sh failed");
    std::fs::copy(bin.join("examples/echo_image"), root.join("lib/echo_image"))
        .expect("echo image (make bench builds it)");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    std::fs::write(
        root.join("config/dispatcher.cnf"),
        format!(
            "MIN_PROCS=2\nMAX_PROCS=2\nMIN_CONNS=20\nMAX_CONNS=50\nMAX_LIFE_CONNS=1000000\n\
             [SERVICE=BENCH]\nPORT={port}\nINTERFACE_ADDRESS=127.0.0.1\nIMAGE=IMTA_BIN:echo_image\n\
             PARAMETER=CHANNEL=tcp_lmtpss\n"
        ),
    )
    .expect("dispatcher.cnf");
    std::fs::write(
        root.join("config/mappings"),
        format!(
            "PORT_ACCESS\n\n  TCP|*|{port}|$(127.0.0.0/8)|*  $Y\n  TCP|*|*|*|*  $N500$ Do$ not$ connect$ to$ this$ machine\n"
        ),
    )
    .expect("mappings");
    let child = Command::new(root.join("lib/dispatcher"))
        .arg("--foreground")
        .env_remove("IMTA_TAILOR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the dispatcher");
    let running = Running(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = root.join("log/dispatcher.log");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("worker 2 started") && one_connection(addr) {
            return (running, addr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the dispatcher did not come up:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may contain spaces): state is field 3,
    // utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

fn main() {
    let dir: PathBuf = std::env::temp_dir().join(format!("handoff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let bare = bare_accept_loop();
    let pooled = bare_accepting_threads();
    let (_running, ours) = dispatcher(&dir);
    // Warm both up, then measure them one after the other in the same run.
    drive(bare);
    drive(pooled);
    drive(ours);
    let dispatcher_pid = _running.0.id();
    let workers: Vec<u32> = common::children_named(dispatcher_pid, "echo_image")
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect();
    let me = std::process::id();
    let n = CLIENT_THREADS * PER_THREAD;
    // CPU seconds of (this process: the client and the bare loop, the dispatcher, its workers).
    let cpu = || {
        (
            cpu_seconds(me),
            cpu_seconds(dispatcher_pid),
            workers.iter().map(|&w| cpu_seconds(w)).sum::<f64>(),
        )
    };
    let c0 = cpu();
    let (bare_rate, bare_failed) = drive(bare);
    let c1 = cpu();
    let (pooled_rate, pooled_failed) = drive(pooled);
    let c1p = cpu();
    let (our_rate, our_failed) = drive(ours);
    let c2 = cpu();
    let per = |seconds: f64| seconds / n as f64 * 1e6;
    let client = per(c2.0 - c1p.0);
    let bare_server = per(c1.0 - c0.0) - client;
    let pooled_server = per(c1p.0 - c1.0) - client;
    let dispatcher = per(c2.1 - c1p.1);
    let worker = per(c2.2 - c1p.2);
    println!("| server | connections | failed | connections/s |");
    println!("|---|---:|---:|---:|");
    println!("| bare accept loop, thread per connection | {n} | {bare_failed} | {bare_rate:.0} |");
    println!(
        "| bare, 8 threads accepting on one listener | {n} | {pooled_failed} | {pooled_rate:.0} |"
    );
    println!(
        "| dispatcher + PORT_ACCESS + hand-off to 2 workers | {n} | {our_failed} | {our_rate:.0} |"
    );
    println!(
        "| ratio dispatcher / bare accept loop | | | {:.2} |",
        our_rate / bare_rate
    );
    println!(
        "| ratio dispatcher / 8 accepting threads | | | {:.2} |",
        our_rate / pooled_rate
    );
    println!();
    println!("CPU (user + system, /proc/<pid>/stat) per connection, µs:");
    println!();
    println!("| part | µs per connection |");
    println!("|---|---:|");
    println!("| client (4 threads, the same for both) | {client:.0} |");
    println!("| bare accept loop (its run minus the client) | {bare_server:.0} |");
    println!("| 8 accepting threads (their run minus the client) | {pooled_server:.0} |");
    println!("| dispatcher process | {dispatcher:.0} |");
    println!("| worker processes ({}) | {worker:.0} |", workers.len());
    drop(_running);
    let _ = std::fs::remove_dir_all(&dir);
}
