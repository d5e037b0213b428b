//! The dispatcher's event loop, and nothing else: wait (mio) on the listeners, the workers'
//! control sockets and the signal socket, and pass what happened to the module that handles
//! it. The state and the carrying out of the pools' decisions are [`super::runtime`]'s;
//! accepting is [`super::accept`]'s, the workers' channels [`super::workers`]', a reload
//! [`super::reload`]'s, the status report [`super::status`]'s, signals [`super::signals`]';
//! control clients and metrics scrapers are [`super::control`]'s to read and write and
//! [`super::commands`]' to answer; the two sides of a takeover are [`super::handover`] (this
//! dispatcher is taken over) and [`super::takeover`] (it takes over).
//!
//! Every [`TICK`] the pools hear the time (lifetimes, health, MIN_PROCS), exited workers are
//! reaped (a SIGCHLD may come between two polls) and listeners that may hold queued clients
//! are read again; a pool whose health bound falls between two ticks (a hand-off about to be
//! late, an unresponsive worker about to be killed) hears it at that bound instead. A stop
//! ends when every worker has exited, or at the shutdown bound, when what is left is killed.
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

use super::control::{ControlSocket, ConvEvent, ConvId, Conversations, Speaks};
use super::handover::Giving;
use super::notify::{self, Notifier};
use super::pidfile::PidFile;
use super::policy::Event;
use super::runtime::{service_account, Runtime, Source};
use super::signals::{Arrived, Signals};
use crate::config::service::Service;
use crate::control::client::Takeover;
use crate::control::protocol::Reply;
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
    /// The control socket's name (`IMTA_LOG/dispatcher.socket`).
    pub control_path: PathBuf,
    /// The control socket, bound (`None` in a takeover: bound once the old one has let go).
    pub control: Option<ControlSocket>,
    /// The pid file, locked (`None` in a takeover: taken at the commit).
    pub pidfile: Option<PidFile>,
    /// Where the pid file is.
    pub pidfile_path: PathBuf,
    /// A takeover under way: the connection to the old dispatcher, and how long to wait for
    /// the workers before giving up.
    pub takeover: Option<(Takeover, Duration)>,
    /// The metrics endpoint's listener (`METRICS_PORT`), open, and where it was configured.
    pub metrics: Option<TcpListener>,
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Told once whether the start (a takeover's commit) succeeded: to the waiting terminal.
    pub started: super::detach::Report,
}

/// Runs until SIGTERM, SIGINT, `--stop` or a takeover has stopped every worker; an error if
/// the event loop failed or a takeover did not complete.
pub fn run(mut setup: Setup) -> Result<(), String> {
    let nofile = super::descriptors::raise_limit().map_err(|e| e.to_string())?;
    let signals = Signals::install().map_err(|e| e.to_string())?;
    let poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(
            &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&signals.wake)),
            Source::Signals.token(),
            Interest::READABLE,
        )
        .map_err(|e| e.to_string())?;
    let mut rt = Runtime::new(poll, setup.tailor.clone(), setup.port_access.take(), nofile);
    rt.shutdown_bound = setup.shutdown_bound;
    let mut lp = Loop {
        convs: Conversations::default(),
        stop_waiters: Vec::new(),
        giving: None,
        handing_off_until: None,
        ready: false,
        next_status: Instant::now() + STATUS_EVERY,
        takeover_deadline: None,
        failed: None,
        rt,
        setup,
    };
    lp.start().map_err(|e| e.to_string())?;
    let result = lp.run(&signals);
    lp.finish();
    result
}

/// The loop and everything it owns.
pub(super) struct Loop {
    pub(super) rt: Runtime,
    pub(super) setup: Setup,
    pub(super) convs: Conversations,
    /// `--stop` clients waiting for the end.
    pub(super) stop_waiters: Vec<ConvId>,
    /// A takeover of this dispatcher under way.
    pub(super) giving: Option<Giving>,
    /// Taken over (`DONE`): the connections still held go to the workers until then, and the
    /// stop begins.
    pub(super) handing_off_until: Option<Instant>,
    pub(super) ready: bool,
    pub(super) next_status: Instant,
    /// When a takeover by this dispatcher gives up waiting for its workers.
    pub(super) takeover_deadline: Option<Instant>,
    /// Why this dispatcher stops in error (a takeover that did not complete).
    pub(super) failed: Option<String>,
}

impl Loop {
    fn start(&mut self) -> std::io::Result<()> {
        let rt = &mut self.rt;
        let services = std::mem::take(&mut self.setup.services);
        let listeners = std::mem::take(&mut self.setup.listeners);
        for (config, listeners) in services.into_iter().zip(listeners) {
            let account = service_account(&config, self.setup.mail_user.as_deref())
                .map_err(std::io::Error::other)?;
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
        if let Some(c) = &self.setup.control {
            register_control(&rt.poll, c)?;
            // Bound before the log was open: said now.
            if let Some(note) = &c.replaced {
                log::warn!("{note}");
            }
        }
        if let Some(m) = &self.setup.metrics {
            rt.poll.registry().register(
                &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(m)),
                Source::Metrics.token(),
                Interest::READABLE,
            )?;
            if let Ok(a) = m.local_addr() {
                log::info!("metrics on http://{a}/metrics");
            }
        }
        if let Some((t, wait)) = &self.setup.takeover {
            rt.accept_held = true;
            self.takeover_deadline = Some(Instant::now() + *wait);
            log::info!(
                "taking over from pid {}: not accepting until every service has its MIN_PROCS workers (at most {} s)",
                t.old_pid,
                wait.as_secs()
            );
        }
        rt.recompute_budget();
        log::info!(
            "descriptor limit {}: at most {} accepted connection(s) wait in the dispatcher",
            rt.nofile,
            rt.budget
        );
        rt.feed_all(&Event::Tick);
        Ok(())
    }

    fn run(&mut self, signals: &Signals) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
        loop {
            // A health bound due before the regular tick brings the tick forward to it.
            let wake = self.rt.next_check().map_or(next_tick, |t| t.min(next_tick));
            let timeout = wake.saturating_duration_since(Instant::now());
            if let Err(e) = self.rt.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("event loop: {e}"));
                }
            }
            for ev in events.iter() {
                match Source::of(ev.token()) {
                    Some(Source::Listener(id)) => self.rt.accept_on(id),
                    Some(Source::Worker(id)) => {
                        if ev.is_writable() {
                            self.rt.worker_writable(id);
                        }
                        if ev.is_readable() || ev.is_read_closed() {
                            self.rt.read_worker(id);
                        }
                    }
                    Some(Source::Signals) => signals.drain_wakeups(),
                    Some(Source::Spawned) => self.rt.take_spawned(),
                    Some(Source::Metrics) => {
                        // Before a takeover's commit the other dispatcher answers.
                        if let Some(m) =
                            self.setup.metrics.as_ref().filter(|_| !self.rt.accept_held)
                        {
                            self.convs.accept_http(self.rt.poll.registry(), m, |id| {
                                Source::Conversation(id).token()
                            });
                        }
                    }
                    Some(Source::Control) => {
                        if let Some(c) = &self.setup.control {
                            self.convs.accept_control(self.rt.poll.registry(), c, |id| {
                                Source::Conversation(id).token()
                            });
                        }
                    }
                    Some(Source::Conversation(id)) => {
                        if ev.is_writable() {
                            self.convs.flush(self.rt.poll.registry(), id);
                        }
                        if ev.is_readable() || ev.is_read_closed() {
                            let got = self.convs.read(
                                self.rt.poll.registry(),
                                id,
                                request_end,
                                |speaks| match speaks {
                                    Speaks::Control => crate::control::protocol::MAX_REQUEST,
                                    Speaks::Http => super::http::MAX_REQUEST,
                                },
                            );
                            for e in got {
                                self.on_conversation(e);
                            }
                        }
                    }
                    None => {}
                }
            }
            let arrived = signals.take();
            self.on_signals(arrived);
            if Instant::now() >= wake {
                next_tick = Instant::now() + TICK;
                // Also heard without the waker (one that failed to wake).
                self.rt.take_spawned();
                self.rt.reap();
                self.rt.feed_all(&Event::Tick);
                self.rt.accept_again = true;
                for id in self.convs.expire(self.rt.poll.registry(), Instant::now()) {
                    self.on_conversation(ConvEvent::Closed(id));
                }
                // Clients an accept error or a held takeover left queued (edge-triggered).
                if let Some(c) = &self.setup.control {
                    self.convs.accept_control(self.rt.poll.registry(), c, |id| {
                        Source::Conversation(id).token()
                    });
                }
                if let Some(m) = self.setup.metrics.as_ref().filter(|_| !self.rt.accept_held) {
                    self.convs.accept_http(self.rt.poll.registry(), m, |id| {
                        Source::Conversation(id).token()
                    });
                }
            }
            if self.rt.accept_again {
                self.rt.accept_all();
            }
            self.takeover_progress();
            self.giving_progress();
            self.tell_manager();
            if let Some(deadline) = self.rt.stopping {
                if self.rt.workers.is_empty() {
                    log::info!("all workers have exited; dispatcher stopped");
                    return self.failed.take().map_or(Ok(()), Err);
                }
                if Instant::now() >= deadline {
                    self.rt.kill_all();
                    log::info!("dispatcher stopped");
                    return self.failed.take().map_or(Ok(()), Err);
                }
            }
        }
    }

    fn on_signals(&mut self, arrived: Arrived) {
        if arrived.child {
            self.rt.reap();
        }
        if arrived.reopen {
            match (self.setup.reopen_log)() {
                Ok(()) => log::info!("log file reopened (SIGUSR1)"),
                Err(e) => log::error!("cannot reopen the log file: {e}"),
            }
        }
        if arrived.status {
            super::status::report(&self.rt);
        }
        if arrived.reload && self.rt.stopping.is_none() {
            log::info!("SIGHUP: reloading the configuration");
            let _ = self.reload();
        }
        if arrived.stop && self.rt.stopping.is_none() {
            self.stop();
        }
    }

    /// Reads the configuration again and switches to it, or says why not (both logged and told
    /// to the service manager).
    pub(super) fn reload(&mut self) -> Result<u64, String> {
        if self.ready {
            self.setup.notify.send(&notify::reloading_message());
        }
        let outcome = match (self.setup.reload)() {
            Ok(new) => {
                if new.metrics != self.setup.metrics_address {
                    log::warn!(
                        "METRICS_PORT/METRICS_INTERFACE_ADDRESS changed: a reload does not move the metrics endpoint; a restart or a takeover does"
                    );
                    // Said once for each change.
                    self.setup.metrics_address = new.metrics;
                }
                super::reload::apply(&mut self.rt, new)
            }
            Err(e) => Err(super::reload::refuse(e)),
        };
        let status = match &outcome {
            Ok(generation) => {
                self.rt.reloads_applied += 1;
                format!("configuration reloaded (generation {generation})")
            }
            Err(e) => {
                self.rt.reloads_refused += 1;
                format!("reload refused, still running on the previous configuration: {e}")
            }
        };
        // Ready again only if it was: a reload before the first READY=1 does not make one.
        let then = if self.ready { "\nREADY=1" } else { "" };
        self.setup
            .notify
            .send(&format!("STATUS={}{then}", notify::one_line(&status)));
        // The outcome stays the STATUS= line for a whole period before the counts return.
        self.next_status = Instant::now() + STATUS_EVERY;
        outcome
    }

    /// The graceful stop (SIGTERM, `--stop`, the end of a takeover).
    pub(super) fn stop(&mut self) {
        self.setup
            .notify
            .send("STOPPING=1\nSTATUS=stopping: listeners closed, workers draining");
        self.rt.begin_stop();
        if let Some(g) = self.giving.take() {
            log::warn!(
                "takeover by pid {} refused: the dispatcher is stopping",
                g.pid
            );
            let reply = Reply::err("the dispatcher is stopping").encode();
            self.convs
                .reply(self.rt.poll.registry(), g.conv, reply, false);
        }
        // A takeover by this dispatcher that has not committed gives up with it.
        if self.setup.takeover.take().is_some() {
            self.give_up_takeover("stopped before its workers were ready".into());
        }
    }

    fn tell_manager(&mut self) {
        let rt = &self.rt;
        if !self.ready && rt.stopping.is_none() && !rt.accept_held && rt.services.min_procs_ready()
        {
            self.ready = true;
            let summary = super::status::summary(rt);
            log::info!("ready: every service has its MIN_PROCS workers; {summary}");
            self.setup
                .notify
                .send(&format!("READY=1\nSTATUS=ready; {summary}"));
        } else if self.ready && rt.stopping.is_none() && Instant::now() >= self.next_status {
            self.next_status = Instant::now() + STATUS_EVERY;
            self.setup.notify.status(&super::status::summary(rt));
        }
    }

    fn on_conversation(&mut self, event: ConvEvent) {
        match event {
            ConvEvent::Closed(id) => {
                if self.giving.is_some_and(|g| g.conv == id) {
                    self.takeover_abandoned("the new dispatcher closed the connection");
                }
                self.stop_waiters.retain(|&w| w != id);
            }
            ConvEvent::Request { id, text } => self.on_request(id, &text),
        }
    }

    /// At the end: the `--stop` clients hear it is done; the pid file goes (unless handed over).
    /// Locks the pid file and writes this pid, then binds and watches the control socket (both
    /// sides of a takeover, once the other has let go). What fails is logged with `context`;
    /// serving matters more than either, so nothing here stops the dispatcher.
    pub(super) fn take_pid_file_and_socket(&mut self, context: &str) {
        match PidFile::lock(&self.setup.pidfile_path).and_then(|mut p| {
            p.write_pid()?;
            Ok(p)
        }) {
            Ok(p) => self.setup.pidfile = Some(p),
            Err(e) => log::error!("{context}: {e}; serving without the pid file"),
        }
        match ControlSocket::bind(&self.setup.control_path) {
            Ok(c) => {
                if let Some(note) = &c.replaced {
                    log::warn!("{note}");
                }
                match register_control(&self.rt.poll, &c) {
                    Ok(()) => self.setup.control = Some(c),
                    Err(e) => log::error!("{context}: cannot watch the control socket: {e}"),
                }
            }
            Err(e) => log::error!(
                "{context}: {e}; --status and the other commands will not reach this dispatcher"
            ),
        }
    }

    pub(super) fn finish(&mut self) {
        // Gone before the `--stop` clients hear it: the next start finds neither.
        if let Some(p) = self.setup.pidfile.take() {
            p.remove();
        }
        self.setup.control = None;
        for id in std::mem::take(&mut self.stop_waiters) {
            let reply = Reply::ok("stopped").encode();
            self.convs.finish(self.rt.poll.registry(), id, &reply);
        }
    }
}

pub(super) fn register_control(poll: &Poll, c: &ControlSocket) -> std::io::Result<()> {
    poll.registry().register(
        &mut SourceFd(&c.raw_fd()),
        Source::Control.token(),
        Interest::READABLE,
    )
}

/// Where a request ends in what a client sent: a control line.
fn request_end(speaks: Speaks, input: &[u8]) -> Option<usize> {
    match speaks {
        Speaks::Control => input.iter().position(|&b| b == b'\n').map(|i| i + 1),
        Speaks::Http => match super::http::parse(input) {
            super::http::Request::Incomplete => None,
            _ => Some(input.len()),
        },
    }
}
