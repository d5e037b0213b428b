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

use super::control::{ControlSocket, ConvEvent, ConvId, Conversations, Speaks};
use super::handover::Giving;
use super::notify::{self, Notifier};
use super::pidfile::PidFile;
use super::policy::Event;
use super::runtime::{service_account, Runtime, Source};
use super::signals::{Arrived, Signals};
use crate::config::service::Service;
use crate::control::client::Takeover;
use crate::control::protocol::{Reply, Request};
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
struct Loop {
    rt: Runtime,
    setup: Setup,
    convs: Conversations,
    /// `--stop` clients waiting for the end.
    stop_waiters: Vec<ConvId>,
    /// A takeover of this dispatcher under way.
    giving: Option<Giving>,
    /// Taken over (`DONE`): the connections still held go to the workers until then, and the
    /// stop begins.
    handing_off_until: Option<Instant>,
    ready: bool,
    next_status: Instant,
    /// When a takeover by this dispatcher gives up waiting for its workers.
    takeover_deadline: Option<Instant>,
    /// Why this dispatcher stops in error (a takeover that did not complete).
    failed: Option<String>,
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
            let timeout = next_tick.saturating_duration_since(Instant::now());
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
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
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
    fn reload(&mut self) -> Result<u64, String> {
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
    fn stop(&mut self) {
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

    fn on_request(&mut self, id: ConvId, text: &[u8]) {
        let Some((speaks, peer)) = self.convs.who(id) else {
            return;
        };
        if speaks == Speaks::Http {
            let request = super::http::parse(text);
            let rt = &self.rt;
            let bytes = super::http::reply(&request, || {
                super::metrics::render(&super::status::metrics(rt))
            });
            return self.convs.reply(self.rt.poll.registry(), id, bytes, false);
        }
        let line = String::from_utf8_lossy(text);
        let line = line.trim_end_matches('\n');
        let request = match Request::parse(line) {
            Ok(r) => r,
            Err(e) => return self.answer(id, Reply::err(e.0)),
        };
        let pid = peer.map_or(0, |(pid, _)| pid);
        if !matches!(request, Request::Status { .. }) {
            log::info!("control: {request} from pid {pid}");
        }
        match request {
            Request::Status { json } => {
                let snapshot = super::status::snapshot(&self.rt);
                let body = if json {
                    super::status::json(&snapshot)
                } else {
                    super::status::text(&snapshot)
                };
                self.answer(id, Reply::ok("status").with_body(body));
            }
            Request::Reload if self.rt.stopping.is_some() => {
                self.answer(id, Reply::err("the dispatcher is stopping"))
            }
            Request::Reload => {
                let reply = match self.reload() {
                    Ok(g) => Reply::ok(format!("applied: configuration reloaded (generation {g})")),
                    Err(e) => Reply::err(format!(
                        "reload refused, still running on the previous configuration: {e}"
                    )),
                };
                self.answer(id, reply);
            }
            Request::Restart { service } => {
                let reply = match super::restart::restart(&mut self.rt, service.as_deref()) {
                    Ok((names, g)) => Reply::ok(format!(
                        "restarted {} (generation {g}): new workers take new connections, the previous ones drain",
                        names.join(", ")
                    )),
                    Err(e) => Reply::err(e),
                };
                self.answer(id, reply);
            }
            Request::Stop => {
                self.convs.hold(id);
                self.stop_waiters.push(id);
                if self.rt.stopping.is_none() {
                    self.stop();
                }
            }
            Request::Takeover => {
                if let Some(why) = super::handover::refusal(&self.rt, self.giving) {
                    log::warn!("control: takeover by pid {pid} refused: {why}");
                    return self.answer(id, Reply::err(why));
                }
                match super::handover::offer(&self.rt, self.setup.metrics.as_ref()) {
                    Ok((text, fds)) => {
                        log::info!(
                            "takeover by pid {pid}: listening sockets handed over; still serving until it commits"
                        );
                        self.giving = Some(Giving {
                            conv: id,
                            pid,
                            committed: None,
                        });
                        self.convs.reply_with_fds(
                            self.rt.poll.registry(),
                            id,
                            text.into_bytes(),
                            fds,
                            true,
                        );
                    }
                    Err(e) => self.answer(id, Reply::err(e)),
                }
            }
            Request::Commit { pid: new } => match self.giving {
                Some(g) if g.conv == id && g.committed.is_none() => self.commit(id, new),
                _ => self.answer(id, Reply::err("COMMIT outside a takeover")),
            },
            Request::Done => match self.giving {
                Some(g) if g.conv == id && g.committed.is_some() => self.hand_over(id),
                _ => self.answer(id, Reply::err("DONE outside a committed takeover")),
            },
        }
    }

    fn answer(&mut self, id: ConvId, reply: Reply) {
        self.convs
            .reply(self.rt.poll.registry(), id, reply.encode(), false);
    }

    /// The new dispatcher committed: stop accepting, let go of the pid file and the control
    /// socket's name, and wait for its `DONE`.
    fn commit(&mut self, id: ConvId, pid: u32) {
        self.rt.accept_held = true;
        if let Some(c) = &mut self.setup.control {
            c.release_name();
        }
        // Closing the file releases the lock; the file stays for the new dispatcher.
        drop(self.setup.pidfile.take());
        if let Some(g) = &mut self.giving {
            g.pid = i32::try_from(pid).unwrap_or(g.pid);
            g.committed = Some(Instant::now());
        }
        log::info!(
            "takeover by pid {pid} committed: not accepting; pid file and control socket let go; waiting for it to say it serves"
        );
        let reply = Reply::ok(format!(
            "committed; pid {} no longer accepts",
            std::process::id()
        ));
        self.convs
            .reply(self.rt.poll.registry(), id, reply.encode(), true);
    }

    /// The new dispatcher serves (`DONE`): close the listeners, let the workers take what is
    /// still held, then drain.
    fn hand_over(&mut self, id: ConvId) {
        let pid = self.giving.take().map_or(0, |g| g.pid);
        self.rt.acceptor.close_all(self.rt.poll.registry());
        if let Some(m) = self.setup.metrics.take() {
            let _ = self
                .rt
                .poll
                .registry()
                .deregister(&mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&m)));
        }
        log::info!(
            "taken over by pid {pid}: listeners closed; {} connection(s) still held go to the workers, then they drain",
            self.rt.held()
        );
        self.answer(
            id,
            Reply::ok(format!("handed over by pid {}", std::process::id())),
        );
        self.handing_off_until = Some(Instant::now() + self.rt.shutdown_bound);
    }

    /// The new dispatcher went away or fell silent during a takeover: serve on as before,
    /// taking back what a commit let go of.
    fn takeover_abandoned(&mut self, why: &str) {
        let Some(g) = self.giving.take() else {
            return;
        };
        if g.committed.is_some() {
            self.rt.accept_held = false;
            self.rt.accept_again = true;
            match PidFile::lock(&self.setup.pidfile_path).and_then(|mut p| {
                p.write_pid()?;
                Ok(p)
            }) {
                Ok(p) => self.setup.pidfile = Some(p),
                Err(e) => log::error!("after an unfinished takeover: {e}"),
            }
            self.setup.control = None;
            match ControlSocket::bind(&self.setup.control_path) {
                Ok(c) => match register_control(&self.rt.poll, &c) {
                    Ok(()) => self.setup.control = Some(c),
                    Err(e) => log::error!("after an unfinished takeover: control socket: {e}"),
                },
                Err(e) => log::error!("after an unfinished takeover: {e}"),
            }
        }
        self.convs.close_now(self.rt.poll.registry(), g.conv);
        // dispatcher.log points at the new one's file: at ours again.
        let relinked = (self.setup.reopen_log)();
        log::warn!(
            "takeover by pid {} abandoned ({why}){}; still serving",
            g.pid,
            if g.committed.is_some() {
                " after its commit: accepting again, pid file and control socket taken back"
            } else {
                ""
            }
        );
        if let Err(e) = relinked {
            log::error!("cannot reopen the log file: {e}");
        }
    }

    /// Every round: a takeover whose conversation is gone or silent too long is abandoned;
    /// once taken over, the stop begins when nothing is held any more.
    fn giving_progress(&mut self) {
        if let Some(g) = self.giving {
            if !self.convs.contains(g.conv) {
                self.takeover_abandoned("its connection ended");
            } else if g
                .committed
                .is_some_and(|t| t.elapsed() >= super::handover::DONE_WAIT)
            {
                self.takeover_abandoned("no DONE after its commit");
            }
        }
        if let Some(until) = self.handing_off_until {
            if self.rt.held() == 0 || Instant::now() >= until {
                self.handing_off_until = None;
                self.stop();
            }
        }
    }

    /// A takeover by this dispatcher: commit once every service has its MIN_PROCS workers,
    /// give up at the deadline.
    fn takeover_progress(&mut self) {
        if self.setup.takeover.is_none() || self.rt.stopping.is_some() {
            return;
        }
        if self.rt.services.min_procs_ready() {
            let Some((t, _)) = self.setup.takeover.take() else {
                return;
            };
            let mut t = t;
            match t.commit(Duration::from_secs(10)) {
                Ok(old) => {
                    // Past the commit the old one no longer accepts: this one serves, whatever
                    // else fails.
                    self.take_place();
                    self.rt.accept_held = false;
                    self.rt.accept_again = true;
                    if let Err(e) = t.done(Duration::from_secs(10)) {
                        log::warn!("takeover: the old dispatcher did not confirm DONE: {e}");
                    }
                    let text = format!(
                        "took over from pid {old}; this dispatcher is pid {}",
                        std::process::id()
                    );
                    log::info!("{text}");
                    (self.setup.started)(Ok(text));
                }
                Err(e) => {
                    self.give_up_takeover(format!("the running dispatcher refused the commit: {e}"))
                }
            }
        } else if self.takeover_deadline.is_some_and(|d| Instant::now() >= d) {
            self.setup.takeover = None;
            self.give_up_takeover("its workers were not ready in time".into());
        }
    }

    /// After the commit: the pid file and the control socket become this dispatcher's. What
    /// fails is logged; serving goes on (the old dispatcher no longer accepts).
    fn take_place(&mut self) {
        match PidFile::lock(&self.setup.pidfile_path).and_then(|mut p| {
            p.write_pid()?;
            Ok(p)
        }) {
            Ok(p) => self.setup.pidfile = Some(p),
            Err(e) => log::error!("takeover: {e}; serving without the pid file"),
        }
        match ControlSocket::bind(&self.setup.control_path) {
            Ok(c) => {
                if let Some(note) = &c.replaced {
                    log::warn!("{note}");
                }
                match register_control(&self.rt.poll, &c) {
                    Ok(()) => self.setup.control = Some(c),
                    Err(e) => log::error!("takeover: cannot watch the control socket: {e}"),
                }
            }
            // Serving matters more than being controllable: said, not fatal.
            Err(e) => {
                log::error!("{e}; --status and the other commands will not reach this dispatcher")
            }
        }
    }

    fn give_up_takeover(&mut self, why: String) {
        let text = format!("takeover failed: {why}; the running dispatcher goes on serving");
        log::error!("{text}");
        (self.setup.started)(Err(text.clone()));
        self.failed = Some(text);
        if self.rt.stopping.is_none() {
            self.stop();
        }
    }

    /// At the end: the `--stop` clients hear it is done; the pid file goes (unless handed over).
    fn finish(&mut self) {
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

fn register_control(poll: &Poll, c: &ControlSocket) -> std::io::Result<()> {
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
