//! `make bench` (dispatcher part): connections per second through the dispatcher with the real
//! `tcp_lmtp_server` behind it, against a minimal single-thread epoll server (mio) that sends
//! the same bytes, measured side by side in interleaved rounds of the same run.
//!
//! Every server speaks the same bytes: the greeting the real `tcp_lmtp_server` sends (read
//! from it at the start), then the real reply to `QUIT`, then the close. The peers run in a
//! process of their own (this program started again), so that each server's CPU time is its
//! own process's: a single-thread mio server (the yardstick), a bare accept loop with
//! a thread per connection, and 8 threads accepting on one listener. Ours is the whole product
//! path: the dispatcher accepts, judges PORT_ACCESS, hands the socket over `SCM_RIGHTS` to a
//! `tcp_lmtp_server` worker, which greets, answers `QUIT`, closes and reports `ENDED`. It runs
//! twice side by side, once without recycling (a huge `MAX_LIFE_CONNS`) and once with the
//! default `MAX_LIFE_CONNS=100` (a worker retired and replaced every 100 connections).
//!
//! The same client drives all: 4 threads, each making a fixed number of connections per round
//! (connect, read the greeting, `QUIT`, read the reply, read to the close), bounded in time
//! too. Rounds rotate which server goes first. The bench prints connections/s, the ratio to
//! the mio server, p50/p99 of a connection's whole life as the client sees it, and the CPU
//! time (user + system, `/proc/<pid>/stat`) per connection of every process involved.
//!
//! Last, what one worker's life costs whatever its connections (what `MAX_LIFE_CONNS` spreads
//! over them): whole lives of the real image started as the dispatcher starts one, against
//! starts of `/bin/true`, the floor any program's fork, exec and exit costs on the machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dispatcher::Dispatcher;

const CLIENT_THREADS: usize = 4;
/// Connections each client thread makes per round and server.
const PER_THREAD: usize = 500;
const ROUNDS: usize = 6;
/// A client thread stops a round after this long, whatever it has done (counted as failed).
const ROUND_LIMIT: Duration = Duration::from_secs(60);
/// The pool both dispatchers run (the LMTP bench's); only MAX_LIFE_CONNS differs.
const LIMITS: &str = "MIN_PROCS=2\nMAX_PROCS=4\nMIN_CONNS=5\nMAX_CONNS=20";
const NO_RECYCLING: u64 = 1_000_000_000;
const DEFAULT_LIFE: u64 = 100;
/// The environment variable that makes this program a peer server (its value: the kind).
const PEER_ENV: &str = "HANDOFF_BENCH_PEER";

/// The bytes every server sends: the greeting, and the reply to `QUIT`.
#[derive(Clone)]
struct Script {
    greeting: Vec<u8>,
    bye: Vec<u8>,
}

/// One connection as the client sees it: whether it went as scripted, and how long it took
/// from `connect` to the server's close.
fn one_connection(addr: SocketAddr, script: &Script) -> Option<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).ok()?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).ok()?;
    if line != script.greeting {
        return None;
    }
    reader.get_mut().write_all(b"QUIT\r\n").ok()?;
    line.clear();
    reader.read_until(b'\n', &mut line).ok()?;
    if line != script.bye {
        return None;
    }
    // To the close: the server's teardown is part of a connection's cost.
    let mut rest = [0u8; 64];
    match reader.read(&mut rest) {
        Ok(0) => Some(start.elapsed()),
        _ => None,
    }
}

/// What a round against one server gave.
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    seconds: f64,
    latencies_us: Vec<u32>,
    cpu: Cpu,
}

/// CPU seconds over the measured rounds.
#[derive(Default, Clone, Copy)]
struct Cpu {
    client: f64,
    server: f64,
    /// The workers of a dispatcher (zero for the peers).
    workers: f64,
}

/// `CLIENT_THREADS * PER_THREAD` connections; adds to `tally`.
fn drive(addr: SocketAddr, script: &Script, tally: &mut Tally) {
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let script = script.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + ROUND_LIMIT;
                let mut lat = Vec::with_capacity(PER_THREAD);
                let mut failed = 0;
                for _ in 0..PER_THREAD {
                    if Instant::now() >= deadline {
                        failed += 1;
                        continue;
                    }
                    match one_connection(addr, &script) {
                        Some(d) => lat.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX)),
                        None => failed += 1,
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    for h in handles {
        let (lat, failed) = h.join().unwrap_or((Vec::new(), PER_THREAD));
        tally.ok += lat.len();
        tally.failed += failed;
        tally.latencies_us.extend(lat);
    }
    tally.seconds += start.elapsed().as_secs_f64();
}

/// (own, reaped children's) CPU seconds of a process, from `/proc/<pid>/stat`.
fn cpu_of(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // After the command name (which may hold spaces): state is field 3; utime, stime, cutime
    // and cstime are fields 14 to 17.
    let Some(close) = stat.rfind(')') else {
        return (0.0, 0.0);
    };
    let f: Vec<f64> = stat[close + 2..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match f[..] {
        [u, s, cu, cs] => ((u + s) / hz, (cu + cs) / hz),
        _ => (0.0, 0.0),
    }
}

/// A server under test: where it listens, and the processes whose CPU is its cost.
struct Server {
    label: String,
    addr: SocketAddr,
    pid: u32,
    /// A dispatcher: its workers are its children (counted live, and once reaped in its
    /// children's time, so a worker recycled during a round is counted whole).
    dispatcher: bool,
}

impl Server {
    /// (server process, its workers) CPU seconds so far.
    fn cpu(&self) -> (f64, f64) {
        let (own, reaped) = cpu_of(self.pid);
        if !self.dispatcher {
            return (own, 0.0);
        }
        let live: f64 = common::children(self.pid)
            .into_iter()
            .filter_map(|(p, _)| u32::try_from(p).ok())
            .map(|p| cpu_of(p).0)
            .sum();
        (own, reaped + live)
    }

    fn round(&self, script: &Script, tally: &mut Tally) {
        let me = std::process::id();
        let (c0, (s0, w0)) = (cpu_of(me).0, self.cpu());
        drive(self.addr, script, tally);
        let (c1, (s1, w1)) = (cpu_of(me).0, self.cpu());
        tally.cpu.client += c1 - c0;
        tally.cpu.server += s1 - s0;
        tally.cpu.workers += w1 - w0;
    }
}

/// The peers' process: this program, told by [`PEER_ENV`] which server to be. It prints its
/// port, serves until its standard input closes (the bench ended), then exits.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_peer(kind: &str, script: &Script) -> (Peer, SocketAddr) {
    let exe = std::env::current_exe().expect("this bench's path");
    let mut child = Command::new(exe)
        .env(PEER_ENV, kind)
        .env("HANDOFF_BENCH_GREETING", hex(&script.greeting))
        .env("HANDOFF_BENCH_BYE", hex(&script.bye))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a peer");
    let mut line = String::new();
    let out = child.stdout.take().expect("peer stdout");
    BufReader::new(out).read_line(&mut line).expect("peer port");
    let port: u16 = line.trim().parse().expect("peer port number");
    (Peer(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The peer side: serve as `kind` says.
fn peer_main(kind: &str) {
    let script = Arc::new(Script {
        greeting: unhex(&std::env::var("HANDOFF_BENCH_GREETING").unwrap_or_default()),
        bye: unhex(&std::env::var("HANDOFF_BENCH_BYE").unwrap_or_default()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Gone with the bench: a closed standard input ends this process.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    println!("{port}");
    let _ = std::io::stdout().flush();
    match kind {
        "mio" => mio_server(listener, &script),
        "thread-per-connection" => {
            for stream in listener.incoming().flatten() {
                let script = Arc::clone(&script);
                std::thread::spawn(move || serve_blocking(stream, &script));
            }
        }
        "accepting-threads" => {
            let listener = Arc::new(listener);
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (l, script) = (Arc::clone(&listener), Arc::clone(&script));
                    std::thread::spawn(move || {
                        for stream in l.incoming().flatten() {
                            let _ = serve_blocking(stream, &script);
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
        }
        other => panic!("unknown peer {other}"),
    }
}

/// Greeting, one line, the reply to `QUIT`, close (blocking sockets).
fn serve_blocking(stream: TcpStream, script: &Script) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    out.write_all(&script.greeting)?;
    let mut line = Vec::new();
    BufReader::new(stream).read_until(b'\n', &mut line)?;
    if line.eq_ignore_ascii_case(b"QUIT\r\n") {
        out.write_all(&script.bye)?;
    }
    Ok(())
}

/// The minimal server of issue 15: one thread, epoll (mio), edge-triggered; accepts until
/// the listen queue is empty, greets at once, answers `QUIT` and closes.
fn mio_server(listener: TcpListener, script: &Script) {
    use mio::net::TcpStream as MioStream;
    use mio::{Events, Interest, Poll, Token};
    struct Conn {
        stream: MioStream,
        input: Vec<u8>,
        output: Vec<u8>,
        closing: bool,
    }
    /// Writes what is pending; whether the connection is done (closed or to close).
    fn flush(c: &mut Conn) -> bool {
        while !c.output.is_empty() {
            match c.stream.write(&c.output) {
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        c.closing
    }
    listener.set_nonblocking(true).expect("nonblocking");
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new().expect("poll");
    const LISTENER: Token = Token(0);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register");
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 1;
    let mut events = Events::with_capacity(256);
    loop {
        if poll.poll(&mut events, None).is_err() {
            continue;
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    let mut c = Conn {
                        stream,
                        input: Vec::new(),
                        output: script.greeting.clone(),
                        closing: false,
                    };
                    if flush(&mut c) {
                        continue;
                    }
                    let token = Token(next);
                    next += 1;
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if poll
                        .registry()
                        .register(&mut c.stream, token, interest)
                        .is_ok()
                    {
                        conns.insert(token.0, c);
                    }
                }
                continue;
            }
            let Some(c) = conns.get_mut(&ev.token().0) else {
                continue;
            };
            let mut done = false;
            if ev.is_readable() {
                let mut buf = [0u8; 512];
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            done = true;
                            break;
                        }
                        Ok(n) => c.input.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            done = true;
                            break;
                        }
                    }
                }
                if let Some(end) = c.input.iter().position(|&b| b == b'\n') {
                    if c.input[..=end].eq_ignore_ascii_case(b"QUIT\r\n") {
                        c.output.extend_from_slice(&script.bye);
                    }
                    c.closing = true;
                }
            }
            if done || flush(c) {
                if let Some(mut c) = conns.remove(&ev.token().0) {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
            }
        }
    }
}

/// The real server's greeting and reply to `QUIT`, as it sends them.
fn script_of(addr: SocketAddr) -> Script {
    let stream = TcpStream::connect(addr).expect("connect to tcp_lmtp_server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut greeting = Vec::new();
    reader.read_until(b'\n', &mut greeting).expect("greeting");
    reader.get_mut().write_all(b"QUIT\r\n").expect("QUIT");
    let mut bye = Vec::new();
    reader.read_until(b'\n', &mut bye).expect("reply to QUIT");
    assert!(
        greeting.starts_with(b"220 ") && bye.starts_with(b"221 "),
        "tcp_lmtp_server said {:?} then {:?}",
        String::from_utf8_lossy(&greeting),
        String::from_utf8_lossy(&bye)
    );
    Script { greeting, bye }
}

fn ours(life: u64) -> Dispatcher {
    let d = Dispatcher::start_lmtp(&format!("{LIMITS}\nMAX_LIFE_CONNS={life}"), "");
    d.wait_for_started("LMTPSS", 2);
    d
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn main() {
    if let Ok(kind) = std::env::var(PEER_ENV) {
        return peer_main(&kind);
    }
    let plain = ours(NO_RECYCLING);
    let recycled = ours(DEFAULT_LIFE);
    let script = script_of(plain.addr(0));
    assert_eq!(
        script.greeting,
        script_of(recycled.addr(0)).greeting,
        "both dispatchers' workers greet alike"
    );
    let (_mio, mio_addr) = start_peer("mio", &script);
    let (_tpc, tpc_addr) = start_peer("thread-per-connection", &script);
    let (_acc, acc_addr) = start_peer("accepting-threads", &script);
    let servers = [
        Server {
            label: "minimal server: 1 thread, epoll (mio)".into(),
            addr: mio_addr,
            pid: _mio.0.id(),
            dispatcher: false,
        },
        Server {
            label: "bare accept loop, thread per connection".into(),
            addr: tpc_addr,
            pid: _tpc.0.id(),
            dispatcher: false,
        },
        Server {
            label: "bare, 8 threads accepting on one listener".into(),
            addr: acc_addr,
            pid: _acc.0.id(),
            dispatcher: false,
        },
        Server {
            label: format!("dispatcher + tcp_lmtp_server, MAX_LIFE_CONNS={NO_RECYCLING}"),
            addr: plain.addr(0),
            pid: plain.child.pid(),
            dispatcher: true,
        },
        Server {
            label: format!("dispatcher + tcp_lmtp_server, MAX_LIFE_CONNS={DEFAULT_LIFE}"),
            addr: recycled.addr(0),
            pid: recycled.child.pid(),
            dispatcher: true,
        },
    ];
    // Warm-up: threads, caches, the first recycling.
    for s in &servers {
        s.round(&script, &mut Tally::default());
    }
    let started_before = recycled.started("LMTPSS");
    let mut tallies: Vec<Tally> = servers.iter().map(|_| Tally::default()).collect();
    for round in 0..ROUNDS {
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            servers[i].round(&script, &mut tallies[i]);
        }
    }
    let recycled_starts = recycled.started("LMTPSS") - started_before;
    for t in &mut tallies {
        t.latencies_us.sort_unstable();
    }
    let rate = |t: &Tally| t.ok as f64 / t.seconds;
    let mio_rate = rate(&tallies[0]);
    println!(
        "{CLIENT_THREADS} client threads x {PER_THREAD} connections, {ROUNDS} interleaved rounds per server; greeting {:?}; pool {}",
        String::from_utf8_lossy(&script.greeting).trim_end(),
        LIMITS.replace('\n', " ")
    );
    println!();
    println!("| server | connections | failed | connections/s | ratio to mio | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (s, t) in servers.iter().zip(&tallies) {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            s.label,
            t.ok,
            t.failed,
            rate(t),
            rate(t) / mio_rate,
            percentile(&t.latencies_us, 0.50),
            percentile(&t.latencies_us, 0.99),
        );
    }
    let (plain_t, rec_t) = (&tallies[3], &tallies[4]);
    println!();
    println!("Recycling ({recycled_starts} workers started during the measured rounds with MAX_LIFE_CONNS={DEFAULT_LIFE}):");
    println!();
    println!(
        "| MAX_LIFE_CONNS | connections/s | ratio to no recycling | p99 ms | p99 / no recycling |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (life, t) in [(NO_RECYCLING, plain_t), (DEFAULT_LIFE, rec_t)] {
        println!(
            "| {life} | {:.0} | {:.2} | {:.2} | {:.2} |",
            rate(t),
            rate(t) / rate(plain_t),
            percentile(&t.latencies_us, 0.99),
            percentile(&t.latencies_us, 0.99) / percentile(&plain_t.latencies_us, 0.99),
        );
    }
    println!();
    println!("CPU (user + system, /proc/<pid>/stat, 10 ms ticks) per connection, µs:");
    println!();
    println!("| server | server process | its workers | client (this process) |");
    println!("|---|---:|---:|---:|");
    for (s, t) in servers.iter().zip(&tallies) {
        let per = |secs: f64| secs / t.ok.max(1) as f64 * 1e6;
        let workers = if s.dispatcher {
            format!("{:.0}", per(t.cpu.workers))
        } else {
            "".into()
        };
        println!(
            "| {} | {:.0} | {workers} | {:.0} |",
            s.label,
            per(t.cpu.server),
            per(t.cpu.client)
        );
    }
    let (life, floor) = worker_lives(&recycled.root);
    println!();
    println!("A worker's life ({LIVES} lives: started as the dispatcher starts one, READY, DRAIN, exit; CPU of the children, getrusage):");
    println!();
    println!("| what | CPU µs per life | per connection at MAX_LIFE_CONNS={DEFAULT_LIFE} |");
    println!("|---|---:|---:|");
    println!(
        "| tcp_lmtp_server, whole life | {life:.0} | {:.1} |",
        life / DEFAULT_LIFE as f64
    );
    println!(
        "| /bin/true (fork, exec, exit): the floor of any program here | {floor:.0} | {:.1} |",
        floor / DEFAULT_LIFE as f64
    );
}

/// Lives for the worker-life table.
const LIVES: usize = 200;

/// CPU (user + system of reaped children, `getrusage`) per start, µs.
fn children_cpu_us() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_CHILDREN is valid.
    let r = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut r);
        r
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(r.ru_utime) + us(r.ru_stime)
}

/// What recycling costs per worker, whatever the connections: `LIVES` whole lives of the real
/// `tcp_lmtp_server`, each started as the dispatcher starts one (`spawn_worker`: fork, the
/// account switch and capability drops, exec), with the installation's configuration, told
/// `DRAIN` as soon as it says `READY`, and reaped; beside as many starts of `/bin/true` (fork,
/// exec, exit), the floor any program pays here. CPU of the children (the worker's pre-exec
/// steps included), µs per life.
fn worker_lives(root: &std::path::Path) -> (f64, f64) {
    use msdispatcher::dispatcher::account::RunAs;
    use msdispatcher::dispatcher::spawn::{spawn_worker, WorkerSpec};
    use msdispatcher::handoff::wire::{self, ToWorker};
    use std::os::fd::AsFd;
    let (uid, gid) = common::dispatcher::mail_ids();
    let spec = WorkerSpec {
        image: root.join("lib/tcp_lmtp_server"),
        service: "LMTPSS".into(),
        parameter: "CHANNEL=tcp_lmtpss".into(),
        stack_size: 2_048_000,
        max_conns: 20,
        debug: 0,
        tailor: root.join("config/imta_tailor"),
        import_environment: Vec::new(),
        run_as: Some(RunAs {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            keep_setuid: false,
        }),
    };
    let before = children_cpu_us();
    for _ in 0..LIVES {
        let (ours, theirs) = wire::control_pair().expect("control pair");
        let mut child = spawn_worker(&spec, &theirs, None).expect("start tcp_lmtp_server");
        drop(theirs);
        let said = common::next_message(&ours);
        assert!(said.is_some(), "the worker said READY");
        wire::send_to_worker(ours.as_fd(), &ToWorker::Drain, None).expect("DRAIN");
        let status = child.wait().expect("reap the worker");
        assert!(status.success(), "the worker exited {status}");
    }
    let worker = (children_cpu_us() - before) / LIVES as f64;
    let before = children_cpu_us();
    for _ in 0..LIVES {
        let status = Command::new("/bin/true").status().expect("run /bin/true");
        assert!(status.success());
    }
    let floor = (children_cpu_us() - before) / LIVES as f64;
    (worker, floor)
}
