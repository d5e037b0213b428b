//! What every worker image links: receive connections from the dispatcher and serve each on a
//! thread of its own.
//!
//! The runtime reads its settings from the environment the dispatcher gives it (see
//! [`WorkerConfig::from_env`] and `docs/worker-protocol.md`), says `READY ACK`, then handles
//! `HANDOFF` and `DRAIN` from the control socket on descriptor 3. Every idle thread waits in
//! `recvmsg` on that socket, and the thread that receives a connection serves it (see
//! [`super::threads`]); its stack is the service's `STACKSIZE`. Each handed socket is
//! confirmed with `TAKEN` as soon as it has arrived, before anything else is done with it, so
//! the dispatcher knows it may close its copy; when the connection ends, the runtime says
//! `ENDED`. `TAKEN` and `DRAINING` are said under one lock ([`Stopping`]), so `DRAINING`
//! follows every `TAKEN` and none comes after it: the dispatcher reads it as "all it will take
//! is confirmed", and a `HANDOFF` read after the stop is closed untaken for it to hand on.
//! It never holds more than `MAX_CONNS` connections: one beyond that (the dispatcher's
//! policy should never send it) is taken, closed at once and reported ended.
//!
//! The runtime drains (takes nothing new, tells every session through the [`DrainSignal`]
//! in its [`Connection`], returns once the last connection has ended) after `DRAIN`, when the
//! dispatcher goes away (end of file on the control socket), and also when receiving fails
//! (a malformed message, a descriptor that could not be received at the worker's own
//! descriptor limit): connections in hand are finished, never dropped with the process. In
//! that last case it says `DRAINING` on its own and returns the error once the sessions are
//! done, so the image exits non-zero and the dispatcher replaces it.
//!
//! What a connection means is the image's business: it passes a [`Handler`].

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

pub use super::counters::Counters;
pub use super::drain::DrainSignal;
use super::threads::{Next, Pool, Source, IDLE_EXIT};
use crate::handoff::env;
use crate::handoff::log_line::WorkerLog;
use crate::handoff::wire::{self, ToDispatcher, ToWorker, WireError, CONTROL_FD};
use crate::net_address;

/// A worker's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    pub service: String,
    pub parameter: String,
    pub stack_size: usize,
    pub max_conns: usize,
    pub debug: u32,
}

impl WorkerConfig {
    /// Reads the settings from the environment; missing numbers take safe defaults
    /// (a 2 MiB stack, 20 connections, no debugging).
    pub fn from_env() -> WorkerConfig {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let num = |k: &str, default: u64| var(k).trim().parse::<u64>().unwrap_or(default);
        WorkerConfig {
            service: var(env::SERVICE),
            parameter: var(env::PARAMETER),
            stack_size: usize::try_from(num(env::STACKSIZE, 2 << 20)).unwrap_or(2 << 20),
            max_conns: usize::try_from(num(env::MAX_CONNS, 20))
                .unwrap_or(20)
                .max(1),
            debug: u32::try_from(num(env::DEBUG, 0)).unwrap_or(0),
        }
    }
}

/// A connection as the handler receives it.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    /// The client's and the local end's address, [canonical](net_address::canonical): an
    /// IPv4 peer of the dual-stack listener is an IPv4 address here.
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub stream: TcpStream,
    /// The worker's drain state: a handler that serves many requests on one connection
    /// looks at it between requests and marks itself idle while it waits (see
    /// [`DrainSignal`]); one that ignores it is simply waited for.
    pub drain: DrainSignal,
    /// The worker's delivery counters, shared by all its connections; the runtime reports
    /// what they gathered to the dispatcher (`STATS`) before each `ENDED`. A handler that
    /// counts nothing leaves them alone, and the worker sends no `STATS`.
    pub counters: Arc<Counters>,
}

/// What an image does with a connection. Called on the connection's own thread.
pub trait Handler: Send + Sync + 'static {
    fn serve(&self, connection: Connection);
}

/// Why the runtime stopped other than by draining.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("cannot start a thread to receive connections: {0}")]
    Thread(std::io::Error),
    #[error("descriptor 3 is not a control socket from the dispatcher ({0}); images are started by the dispatcher")]
    NoControlSocket(std::io::Error),
}

/// Connections in hand, and a signal when that number drops to what the runtime waits for.
#[derive(Default)]
struct Active {
    state: Mutex<ActiveState>,
    changed: Condvar,
}

#[derive(Default)]
struct ActiveState {
    count: usize,
    /// The runtime waits for the count to drop (only while draining): each drop wakes it.
    /// Otherwise a connection's end wakes nobody, and costs no system call.
    watched: bool,
}

impl Active {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) -> usize {
        let mut s = self.lock();
        s.count += 1;
        s.count
    }

    /// Frees a slot and runs `report` (telling the dispatcher) under the same lock, so that
    /// the next connection the dispatcher sends on the strength of that report finds the
    /// slot free, and a drain does not finish before the report is out.
    fn remove_and(&self, report: impl FnOnce()) {
        let mut s = self.lock();
        s.count = s.count.saturating_sub(1);
        report();
        if s.watched {
            self.changed.notify_all();
        }
    }

    fn get(&self) -> usize {
        self.lock().count
    }

    fn wait_until_zero(&self) {
        let mut s = self.lock();
        s.watched = true;
        while s.count > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits at most `limit` for the count to reach zero; whether it did.
    fn wait_until_zero_for(&self, limit: std::time::Duration) -> bool {
        let mut s = self.lock();
        s.watched = true;
        let (s, _) = self
            .changed
            .wait_timeout_while(s, limit, |s| s.count > 0)
            .unwrap_or_else(|p| p.into_inner());
        s.count == 0
    }
}

/// Installs the worker log: lines with time, program name and pid on standard error (the
/// service's LOGFILE); debug lines when the service's DEBUG mask is not zero.
pub fn init_logging(program: &'static str, config: &WorkerConfig) {
    let level = if config.debug != 0 {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    if log::set_boxed_logger(Box::new(WorkerLog { program, level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Takes descriptor 3 as the control socket.
pub fn control_socket() -> Result<OwnedFd, WorkerError> {
    // Check that descriptor 3 is a socket before owning it, so a mistaken start says so.
    let stat = nix::sys::stat::fstat(
        // SAFETY: only inspected; ownership is taken below, after the check.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(CONTROL_FD) },
    )
    .map_err(|e| WorkerError::NoControlSocket(e.into()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(WorkerError::NoControlSocket(std::io::Error::other(
            "it is not a socket",
        )));
    }
    // SAFETY: the dispatcher placed our end of the control socket on descriptor 3 for this
    // process; nothing else in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(CONTROL_FD) })
}

/// Why the worker stops taking connections.
enum Stop {
    /// The dispatcher said `DRAIN`.
    Drained,
    /// End of file on the control socket: the dispatcher is gone.
    Gone,
    /// Receiving failed.
    Failed(WireError),
}

#[derive(Default)]
struct StopState {
    /// Set by the first thread that sees a stop; nothing is taken after it.
    stopped: bool,
    /// That stop, until the runtime takes it.
    why: Option<Stop>,
}

/// The stop, and the order of what is said around it. Taking a connection (`TAKEN` and its
/// count in [`Active`]) and stopping (`DRAINING`) happen under one lock, so every `TAKEN`
/// goes out before `DRAINING` and none after it (the dispatcher reads `DRAINING` as "all it
/// will take is confirmed" and gives what was not taken to other workers), and no connection
/// taken is missing from the count the runtime waits on. A `HANDOFF` read after the stop
/// (another thread read the `DRAIN` first, or the dispatcher sent it before it read our
/// `DRAINING`) is closed untaken: the dispatcher still holds the socket and hands it on.
#[derive(Default)]
struct Stopping {
    state: Mutex<StopState>,
    changed: Condvar,
}

impl Stopping {
    fn lock(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Runs `take` unless stopped; its result, or `None` when stopped.
    fn unless_stopped<T>(&self, take: impl FnOnce() -> T) -> Option<T> {
        let s = self.lock();
        (!s.stopped).then(take)
    }

    /// Records `why` and runs `announce` under the same lock, unless a stop came first.
    fn stop(&self, why: Stop, announce: impl FnOnce(&Stop)) {
        let mut s = self.lock();
        if s.stopped {
            return;
        }
        announce(&why);
        s.stopped = true;
        s.why = Some(why);
        self.changed.notify_all();
    }

    /// Waits for the stop; the stop.
    fn wait(&self) -> Stop {
        let mut s = self.lock();
        loop {
            if let Some(why) = s.why.take() {
                return why;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Where the worker's threads wait for connections: `recvmsg` on the control socket, on all
/// idle threads at once (the kernel hands each message to one of them).
struct Receiver {
    control: Arc<OwnedFd>,
    max_conns: usize,
    handler: Arc<dyn Handler>,
    active: Arc<Active>,
    drain: DrainSignal,
    counters: Arc<Counters>,
    stopping: Stopping,
}

impl Source for Receiver {
    fn next(&self) -> Next {
        if self.stopping.is_stopped() {
            return Next::Stop;
        }
        self.receive()
    }
}

impl Receiver {
    /// One message that gives this thread something to do: a connection, the idle time
    /// passed, or a stop. A connection beyond `MAX_CONNS` is refused here and the thread
    /// receives on.
    fn receive(&self) -> Next {
        loop {
            let received = match wire::recv_from_dispatcher(self.control.as_fd()) {
                Ok(r) => r,
                // The receive timeout (IDLE_EXIT): this thread may exit.
                Err(e) if e.is_would_block() => return Next::Idle,
                Err(e) => return self.stop(Stop::Failed(e)),
            };
            let (conn, client, server, fd) = match received {
                None => return self.stop(Stop::Gone),
                Some((ToWorker::Drain, _)) => return self.stop(Stop::Drained),
                Some((
                    ToWorker::HandOff {
                        conn,
                        client,
                        server,
                    },
                    Some(fd),
                )) => (conn, client, server, fd),
                Some((ToWorker::HandOff { conn, .. }, None)) => {
                    // recv_from_dispatcher already refuses this; kept for completeness.
                    return self.stop(Stop::Failed(WireError::Descriptors {
                        message: format!("HANDOFF {conn}"),
                        count: 0,
                        expected: 1,
                    }));
                }
            };
            // First of all: the dispatcher holds its copy of the socket until it reads this.
            let taken = self.stopping.unless_stopped(|| {
                if let Err(e) =
                    wire::send_to_dispatcher(self.control.as_fd(), &ToDispatcher::Taken { conn })
                {
                    log::warn!("cannot say TAKEN {conn}: {e}");
                }
                self.active.add()
            });
            let Some(in_hand) = taken else {
                drop(fd);
                log_untaken(conn);
                return Next::Stop;
            };
            let stream = TcpStream::from(fd);
            // Once, here, for everything that shows the addresses later (the handler's
            // replies, trace headers, logs): an IPv4 client of the dual-stack listener is
            // written as IPv4, not as `::ffff:a.b.c.d`.
            let (client, server) = (
                net_address::canonical(client),
                net_address::canonical(server),
            );
            if in_hand > self.max_conns {
                log::warn!(
                    "connection {conn} from {client} refused: already {} connections (MAX_CONNS)",
                    self.max_conns
                );
                drop(stream);
                end(&self.control, &self.active, &self.counters, conn);
                continue;
            }
            return self.task(Connection {
                id: conn,
                client,
                server,
                stream,
                drain: self.drain.clone(),
                counters: Arc::clone(&self.counters),
            });
        }
    }

    /// The first thread to see a stop records it; after `DRAIN`, or a receive error (the
    /// worker drains, and the dispatcher must send nothing more), it says `DRAINING` at once,
    /// under the lock that orders it after every `TAKEN`. Threads still waiting in `recvmsg`
    /// stay there (the process exits once the sessions in hand are done): one that reads a
    /// `HANDOFF` closes it untaken.
    fn stop(&self, why: Stop) -> Next {
        self.stopping.stop(why, |why| {
            if matches!(why, Stop::Drained | Stop::Failed(_)) {
                if let Err(e) =
                    wire::send_to_dispatcher(self.control.as_fd(), &ToDispatcher::Draining)
                {
                    log::warn!("cannot say DRAINING: {e}");
                }
            }
        });
        Next::Stop
    }

    /// The session of `connection`, served on the thread that received it, and the report
    /// of its end.
    fn task(&self, connection: Connection) -> Next {
        let id = connection.id;
        let client = connection.client;
        let handler = Arc::clone(&self.handler);
        let (control, active, counters) = (
            Arc::clone(&self.control),
            Arc::clone(&self.active),
            Arc::clone(&self.counters),
        );
        Next::Serve(
            Box::new(move || {
                log::debug!("connection {id} from {client}");
                handler.serve(connection);
                log::debug!("connection {id} ended");
            }),
            // Also after a panic (the thread survives it): the slot must not stay counted.
            Box::new(move |panicked| {
                if panicked {
                    log::error!(
                        "connection {id}: the handler failed (panic, above); connection closed"
                    );
                }
                end(&control, &active, &counters, id);
            }),
        )
    }
}

/// Serves connections from the dispatcher until told to drain (or the dispatcher is gone, or
/// the control socket fails) and the last connection has ended. An error is returned only
/// after the sessions in hand have finished.
pub fn run(
    control: OwnedFd,
    config: &WorkerConfig,
    handler: Arc<dyn Handler>,
) -> Result<(), WorkerError> {
    let control = Arc::new(control);
    let active = Arc::new(Active::default());
    let drain = DrainSignal::new();
    let counters = Arc::new(Counters::new());
    // A thread that waited this long for a connection exits, unless it is the last one.
    if let Err(e) = socket2::SockRef::from(&*control).set_read_timeout(Some(IDLE_EXIT)) {
        log::warn!("cannot set the control socket's receive timeout ({e}); idle threads stay");
    }
    let receiver = Arc::new(Receiver {
        control: Arc::clone(&control),
        max_conns: config.max_conns,
        handler,
        active: Arc::clone(&active),
        drain: drain.clone(),
        counters: Arc::clone(&counters),
        stopping: Stopping::default(),
    });
    let _pool = Pool::start(Arc::clone(&receiver) as Arc<dyn Source>, config.stack_size)
        .map_err(WorkerError::Thread)?;
    wire::send_to_dispatcher(control.as_fd(), &ToDispatcher::Ready { ack: true })?;
    log::info!(
        "[SERVICE={}] worker ready ({}, up to {} connections)",
        config.service,
        config.parameter,
        config.max_conns
    );
    let stop = receiver.stopping.wait();
    drain.start();
    let failure = match stop {
        Stop::Gone => {
            log::info!(
                "the dispatcher has gone away; finishing {} connection(s)",
                active.get()
            );
            None
        }
        Stop::Drained => {
            log::info!("draining: {} connection(s) left", active.get());
            None
        }
        Stop::Failed(e) => {
            // Connections in hand are finished, not dropped with the process; the dispatcher
            // sends nothing more once it reads the DRAINING said at the stop, and replaces
            // this worker when it exits.
            log::error!(
                "[SERVICE={}] {e}; draining: finishing {} connection(s), then exiting",
                config.service,
                active.get()
            );
            Some(e)
        }
    };
    if !active.wait_until_zero_for(super::drain::OWED_GRACE) {
        drain.end_grace();
        active.wait_until_zero();
    }
    // Each ENDED took the counts with it; whatever a handler counted outside a connection's
    // life (none of ours does) goes now.
    report_stats(&control, &counters);
    discard_unread(&control);
    log::info!(
        "[SERVICE={}] worker exiting: no connections left",
        config.service
    );
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Most messages read and dropped before the exit.
const UNREAD_LIMIT: usize = 1024;

/// Reads and drops what is still queued on the control socket (hand-offs the dispatcher sent
/// before it read `DRAINING`; their sockets are closed untaken, and the dispatcher hands them
/// on). A socket closed with unread messages is reset for the dispatcher, and a reset is
/// reported before the messages queued for it: the last `ENDED` and `STATS` would be lost.
fn discard_unread(control: &OwnedFd) {
    if wire::set_nonblocking(control.as_fd()).is_err() {
        return;
    }
    for _ in 0..UNREAD_LIMIT {
        match wire::recv_from_dispatcher(control.as_fd()) {
            Ok(Some((ToWorker::HandOff { conn, .. }, socket))) => {
                drop(socket);
                log_untaken(conn);
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) if e.is_would_block() => return,
            // A packet that cannot be read is dropped like the others.
            Err(_) => {}
        }
    }
}

/// A `HANDOFF` read after the stop, its socket closed untaken.
fn log_untaken(conn: u64) {
    log::info!(
        "connection {conn} came after the stop: closed untaken, the dispatcher gives it to another worker"
    );
}

/// Reports a connection ended and frees its slot; first the counters gathered since the last
/// report, under the same lock, so that a drain does not finish (and the worker exit) before
/// they are out.
fn end(control: &OwnedFd, active: &Active, counters: &Counters, conn: u64) {
    active.remove_and(|| {
        report_stats(control, counters);
        if let Err(e) = wire::send_to_dispatcher(control.as_fd(), &ToDispatcher::Ended { conn }) {
            log::warn!("cannot report connection {conn} ended: {e}");
        }
    });
}

/// Sends `STATS` with the counts since the last report, when there are any.
fn report_stats(control: &OwnedFd, counters: &Counters) {
    let stats = counters.take();
    if stats.is_empty() {
        return;
    }
    if let Err(e) = wire::send_to_dispatcher(control.as_fd(), &ToDispatcher::Stats(stats)) {
        // Those counts are lost, as the ENDED that may fail next would be.
        log::warn!("cannot report delivery counters: {e}");
    }
}
