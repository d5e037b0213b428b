//! What every worker image links: receive connections from the dispatcher and serve each on a
//! thread of its own.
//!
//! The runtime reads its settings from the environment the dispatcher gives it (see
//! [`WorkerConfig::from_env`] and `docs/worker-protocol.md`), says `READY ACK`, then handles
//! `HANDOFF` and `DRAIN` from the control socket on descriptor 3. Each handed socket is
//! confirmed with `TAKEN` as soon as it has arrived, before anything else is done with it, so
//! the dispatcher knows it may close its copy. Each connection runs on a thread of its own
//! whose stack is the service's `STACKSIZE` (threads are reused, see [`super::threads`]);
//! when it ends, the runtime says `ENDED`.
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
use super::threads::Threads;
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
    #[error("descriptor 3 is not a control socket from the dispatcher ({0}); images are started by the dispatcher")]
    NoControlSocket(std::io::Error),
}

/// Connections in hand, and a signal when that number drops.
#[derive(Default)]
struct Active {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Active {
    fn add(&self) -> usize {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        *n
    }

    /// Frees a slot and runs `report` (telling the dispatcher) under the same lock, so that
    /// the next connection the dispatcher sends on the strength of that report finds the
    /// slot free, and a drain does not finish before the report is out.
    fn remove_and(&self, report: impl FnOnce()) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        report();
        self.changed.notify_all();
    }

    fn get(&self) -> usize {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_until_zero(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.changed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits at most `limit` for the count to reach zero; whether it did.
    fn wait_until_zero_for(&self, limit: std::time::Duration) -> bool {
        let n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (n, _) = self
            .changed
            .wait_timeout_while(n, limit, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *n == 0
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
    let threads = Threads::new(config.stack_size);
    wire::send_to_dispatcher(control.as_fd(), &ToDispatcher::Ready { ack: true })?;
    log::info!(
        "[SERVICE={}] worker ready ({}, up to {} connections)",
        config.service,
        config.parameter,
        config.max_conns
    );
    let failure = loop {
        let received = match wire::recv_from_dispatcher(control.as_fd()) {
            Ok(r) => r,
            Err(e) => break Some(e),
        };
        match received {
            None => {
                log::info!(
                    "the dispatcher has gone away; finishing {} connection(s)",
                    active.get()
                );
                break None;
            }
            Some((ToWorker::Drain, _)) => {
                if let Err(e) = wire::send_to_dispatcher(control.as_fd(), &ToDispatcher::Draining) {
                    log::warn!("cannot say DRAINING: {e}");
                }
                log::info!("draining: {} connection(s) left", active.get());
                break None;
            }
            Some((
                ToWorker::HandOff {
                    conn,
                    client,
                    server,
                },
                Some(fd),
            )) => {
                // First of all: the dispatcher holds its copy of the socket until it reads this.
                if let Err(e) =
                    wire::send_to_dispatcher(control.as_fd(), &ToDispatcher::Taken { conn })
                {
                    log::warn!("cannot say TAKEN {conn}: {e}");
                }
                let stream = TcpStream::from(fd);
                // Once, here, for everything that shows the addresses later (the handler's
                // replies, trace headers, logs): an IPv4 client of the dual-stack listener is
                // written as IPv4, not as `::ffff:a.b.c.d`.
                let (client, server) = (
                    net_address::canonical(client),
                    net_address::canonical(server),
                );
                if active.add() > config.max_conns {
                    log::warn!(
                        "connection {conn} from {client} refused: already {} connections (MAX_CONNS)",
                        config.max_conns
                    );
                    drop(stream);
                    end(&control, &active, &counters, conn);
                    continue;
                }
                let connection = Connection {
                    id: conn,
                    client,
                    server,
                    stream,
                    drain: drain.clone(),
                    counters: Arc::clone(&counters),
                };
                spawn_connection(&threads, &handler, &control, &active, connection);
            }
            Some((ToWorker::HandOff { conn, .. }, None)) => {
                // recv_from_dispatcher already refuses this; kept for completeness.
                break Some(WireError::Descriptors {
                    message: format!("HANDOFF {conn}"),
                    count: 0,
                    expected: 1,
                });
            }
        }
    };
    drain.start();
    if let Some(e) = &failure {
        // Connections in hand are finished, not dropped with the process; the dispatcher
        // sends nothing more once it reads DRAINING, and replaces this worker when it exits.
        log::error!(
            "[SERVICE={}] {e}; draining: finishing {} connection(s), then exiting",
            config.service,
            active.get()
        );
        if let Err(e) = wire::send_to_dispatcher(control.as_fd(), &ToDispatcher::Draining) {
            log::warn!("cannot say DRAINING: {e}");
        }
    }
    if !active.wait_until_zero_for(super::drain::OWED_GRACE) {
        drain.end_grace();
        active.wait_until_zero();
    }
    // Each ENDED took the counts with it; whatever a handler counted outside a connection's
    // life (none of ours does) goes now.
    report_stats(&control, &counters);
    log::info!(
        "[SERVICE={}] worker exiting: no connections left",
        config.service
    );
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn spawn_connection(
    threads: &Threads,
    handler: &Arc<dyn Handler>,
    control: &Arc<OwnedFd>,
    active: &Arc<Active>,
    connection: Connection,
) {
    let id = connection.id;
    let counters = Arc::clone(&connection.counters);
    let (h, c, a, n) = (
        Arc::clone(handler),
        Arc::clone(control),
        Arc::clone(active),
        Arc::clone(&counters),
    );
    let client = connection.client;
    let spawned = threads.run(
        move || {
            log::debug!("connection {id} from {client}");
            h.serve(connection);
            log::debug!("connection {id} ended");
        },
        // Also after a panic (the thread survives it): the slot must not stay counted.
        move |panicked| {
            if panicked {
                log::error!(
                    "connection {id}: the handler failed (panic, above); connection closed"
                );
            }
            end(&c, &a, &n, id);
        },
    );
    if let Err(e) = spawned {
        // The job (and with it the socket) was dropped: the client sees the close.
        log::error!("connection {id}: cannot start a thread ({e}); closed");
        end(control, active, &counters, id);
    }
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
