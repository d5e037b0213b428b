//! The dispatcher's event loop, and nothing else: wait (mio) on the listeners, the workers'
//! control sockets and the signal socket, and pass what happened to the module that handles
//! it. The state and the carrying out of the pools' decisions are [`super::runtime`]'s;
//! accepting is [`super::accept`]'s, the workers' channels [`super::workers`]', a reload
//! [`super::reload`]'s, the status report [`super::status`]'s, signals [`super::signals`]'.
//!
//! Every [`TICK`] the pools hear the time (lifetimes, health, MIN_PROCS), exited workers are
//! reaped (a SIGCHLD may come between two polls) and listeners that may hold queued clients
//! are read again. A stop ends when every worker has exited, or at the shutdown bound, when
//! what is left is killed.
//!
//! A service manager ([`super::notify`]) hears `READY=1` once the listeners are open and
//! every service has its MIN_PROCS workers ready, `RELOADING=1` then `STATUS=` (applied or
//! refused, and why) and `READY=1` around a reload, `STOPPING=1` at a stop, and every
//! [`STATUS_EVERY`] a `STATUS=` line with the connection counts.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use super::notify::{self, Notifier};
use super::policy::Event;
use super::runtime::{service_account, Runtime, Source};
use super::signals::Signals;
use crate::config::service::Service;
use crate::mapping::table::MappingSet;

pub use super::reload::Reloaded;

/// How often the pools get a `Tick`: fine enough for the health bounds of [`super::policy`].
pub const TICK: Duration = Duration::from_millis(250);

/// How often a service manager gets a `STATUS=` line with the counts.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What a running dispatcher is given.
pub struct Setup {
    pub services: Vec<Service>,
    /// The listeners of each service, already open (in `services` order, one per `PORT`).
    pub listeners: Vec<Vec<TcpListener>>,
    pub port_access: Option<MappingSet>,
    pub tailor: PathBuf,
    /// Longest wait for draining workers at shutdown before they are killed.
    pub shutdown_bound: Duration,
    /// Called on SIGUSR1 to reopen the log file.
    pub reopen_log: Box<dyn Fn() -> std::io::Result<()>>,
    /// Called on SIGHUP: the configuration read again, or why it cannot be used.
    pub reload: Box<dyn Fn() -> Result<Reloaded, String>>,
    /// The tailor's IMTA_USER: the account of workers whose service sets no USER.
    pub mail_user: Option<String>,
    /// The service manager to tell how the dispatcher is doing (a no-op without one).
    pub notify: Notifier,
}

/// Runs until SIGTERM or SIGINT has stopped every worker.
pub fn run(setup: Setup) -> std::io::Result<()> {
    let nofile = super::descriptors::raise_limit()?;
    let signals = Signals::install()?;
    let poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&signals.wake)),
        Source::Signals.token(),
        Interest::READABLE,
    )?;
    let mut rt = Runtime::new(poll, setup.tailor, setup.port_access, nofile);
    rt.shutdown_bound = setup.shutdown_bound;
    for (config, listeners) in setup.services.into_iter().zip(setup.listeners) {
        let account =
            service_account(&config, setup.mail_user.as_deref()).map_err(std::io::Error::other)?;
        let addresses: Vec<_> = config
            .ports
            .value
            .iter()
            .map(|&p| super::listen::address(&config, p))
            .collect();
        let name = config.name.clone();
        let sid = rt.add_service(config, account);
        for (l, address) in listeners.into_iter().zip(addresses) {
            let shown = l
                .local_addr()
                .map_or(address.to_string(), |a| a.to_string());
            rt.acceptor.add(rt.poll.registry(), sid, address, l, |id| {
                Source::Listener(id).token()
            })?;
            log::info!("[SERVICE={name}] listening on {shown}");
        }
    }
    rt.recompute_budget();
    log::info!(
        "descriptor limit {nofile}: at most {} accepted connection(s) wait in the dispatcher",
        rt.budget
    );
    rt.feed_all(&Event::Tick);

    let notify = setup.notify;
    let mut ready = false;
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut events = Events::with_capacity(256);
    let mut next_tick = Instant::now() + TICK;
    loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        if let Err(e) = rt.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for ev in events.iter() {
            match Source::of(ev.token()) {
                Some(Source::Listener(id)) => rt.accept_on(id),
                Some(Source::Worker(id)) => {
                    if ev.is_writable() {
                        rt.worker_writable(id);
                    }
                    if ev.is_readable() || ev.is_read_closed() {
                        rt.read_worker(id);
                    }
                }
                Some(Source::Signals) => signals.drain_wakeups(),
                None => {}
            }
        }
        let arrived = signals.take();
        if arrived.child {
            rt.reap();
        }
        if arrived.reopen {
            match (setup.reopen_log)() {
                Ok(()) => log::info!("log file reopened (SIGUSR1)"),
                Err(e) => log::error!("cannot reopen the log file: {e}"),
            }
        }
        if arrived.status {
            super::status::report(&rt);
        }
        if arrived.reload && rt.stopping.is_none() {
            log::info!("SIGHUP: reloading the configuration");
            if ready {
                notify.send(&notify::reloading_message());
            }
            let outcome = match (setup.reload)() {
                Ok(new) => super::reload::apply(&mut rt, new),
                Err(e) => Err(super::reload::refuse(e)),
            };
            let status = match outcome {
                Ok(generation) => format!("configuration reloaded (generation {generation})"),
                Err(e) => {
                    format!("reload refused, still running on the previous configuration: {e}")
                }
            };
            // Ready again only if it was: a reload before the first READY=1 does not make one.
            let then = if ready { "\nREADY=1" } else { "" };
            notify.send(&format!("STATUS={}{then}", notify::one_line(&status)));
            // The outcome stays the STATUS= line for a whole period before the counts return.
            next_status = Instant::now() + STATUS_EVERY;
        }
        if arrived.stop && rt.stopping.is_none() {
            notify.send("STOPPING=1\nSTATUS=stopping: listeners closed, workers draining");
            rt.begin_stop();
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            rt.reap();
            rt.feed_all(&Event::Tick);
            rt.accept_again = true;
        }
        if rt.accept_again {
            rt.accept_all();
        }
        if !ready && rt.stopping.is_none() && rt.services.min_procs_ready() {
            ready = true;
            let summary = super::status::summary(&rt);
            log::info!("ready: every service has its MIN_PROCS workers; {summary}");
            notify.send(&format!("READY=1\nSTATUS=ready; {summary}"));
        } else if ready && rt.stopping.is_none() && Instant::now() >= next_status {
            next_status = Instant::now() + STATUS_EVERY;
            notify.status(&super::status::summary(&rt));
        }
        if let Some(deadline) = rt.stopping {
            if rt.workers.is_empty() {
                log::info!("all workers have exited; dispatcher stopped");
                return Ok(());
            }
            if Instant::now() >= deadline {
                rt.kill_all();
                log::info!("dispatcher stopped");
                return Ok(());
            }
        }
    }
}
