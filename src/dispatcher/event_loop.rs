//! The dispatcher's event loop: performs what the pools decide.
//!
//! It waits (mio) on the listeners, the workers' control sockets and a signal pipe, and
//! turns what happens into [`Event`]s for each service's [`Pool`]; the pool's [`Action`]s
//! are carried out here: start a worker, hand a connection over, tell a worker to drain,
//! stop or resume reading a listener. Every connection is judged by PORT_ACCESS
//! ([`super::access`]) as it is accepted, before any worker sees it. This module knows no
//! limits: those are the pool's.
//!
//! What a client or a worker controls (probes, addresses, the text of a control message) is
//! logged only through [`crate::log_text::untrusted`], so it cannot end a log line and forge
//! the next one.
//!
//! Signals: SIGTERM and SIGINT stop gracefully (close the listeners, drain every worker, wait
//! up to the shutdown bound, then kill what is left, by pid); SIGCHLD reaps workers; SIGUSR1
//! reopens the log file; SIGUSR2 writes a status report to the log; SIGHUP reloads.
//!
//! Reload: every file is read again. If the new configuration is not usable, or it would take
//! away the PORT_ACCESS table in force ([`access::check_reload`]), the reason is logged (with
//! its file, line and column) and nothing changes. Otherwise ports that stay are
//! kept open (no connection waiting on them is lost), new ports are opened (if one cannot be,
//! nothing changes), removed ports are closed; every running worker is told to drain and new
//! workers are started on the new configuration, so open sessions finish where they are.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::access::{self, RefusalLog};
use super::account::{self, RunAs};
use super::policy::{Action, ConnId, Event, Pool, PoolLimits, PoolLog, WorkerId};
use super::spawn::{spawn_worker, WorkerSpec};
use crate::config::service::Service;
use crate::handoff::wire::{self, ToDispatcher, ToWorker, WireError};
use crate::log_text::untrusted;
use crate::mapping::port_access::Verdict;
use crate::mapping::table::MappingSet;

/// How often the pools get a `Tick`.
const TICK: Duration = Duration::from_secs(1);

/// What a running dispatcher is given.
pub struct Setup {
    pub services: Vec<Service>,
    /// The listeners of each service, already open (in `services` order).
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
}

/// A configuration read again on SIGHUP.
pub struct Reloaded {
    pub services: Vec<Service>,
    pub port_access: Option<MappingSet>,
    /// Where `port_access` was read from, for the reason a reload is refused.
    pub mappings_path: PathBuf,
    pub mail_user: Option<String>,
}

/// The account a service's workers run as ([`super::account`] decides), or why they cannot
/// be started.
fn service_account(service: &Service, mail_user: Option<&str>) -> Result<Option<RunAs>, String> {
    account::decide(
        service,
        mail_user,
        account::running_as_root(),
        account::lookup,
    )
    .map_err(|e| e.to_string())
}

/// Signals, as flags set by the handlers and read by the loop.
struct Signals {
    wake: UnixStream,
    stop: Arc<AtomicBool>,
    child: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    status: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        let (wake, ping) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        ping.set_nonblocking(true)?;
        let flag = |sigs: &[i32]| -> std::io::Result<Arc<AtomicBool>> {
            let f = Arc::new(AtomicBool::new(false));
            for &s in sigs {
                signal_hook::flag::register(s, Arc::clone(&f))?;
                signal_hook::low_level::pipe::register(s, ping.try_clone()?)?;
            }
            Ok(f)
        };
        use signal_hook::consts::*;
        Ok(Signals {
            stop: flag(&[SIGTERM, SIGINT])?,
            child: flag(&[SIGCHLD])?,
            reopen: flag(&[SIGUSR1])?,
            status: flag(&[SIGUSR2])?,
            reload: flag(&[SIGHUP])?,
            wake,
        })
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = std::io::Read::read(&mut &self.wake, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

struct WorkerProc {
    child: Child,
    ctrl: OwnedFd,
    token: Token,
    outbox: VecDeque<(ToWorker, Option<TcpStream>)>,
    /// The worker closed its control socket; it is exiting.
    closed: bool,
    /// Started on a configuration since replaced by a reload: draining, unknown to the pool.
    old: bool,
    /// Registered for writability (its outbox is waiting for room).
    want_write: bool,
}

/// The worker's control socket is closed or broken: read no more from it (the worker is
/// reaped when its process exits).
fn stop_watching(registry: &mio::Registry, w: &mut WorkerProc) {
    w.closed = true;
    let _ = registry.deregister(&mut SourceFd(&w.ctrl.as_raw_fd()));
}

struct ServiceRt {
    config: Service,
    pool: Pool,
    /// Listening sockets, their tokens and ports.
    listeners: Vec<(TcpListener, Token, u16)>,
    /// Removed from the configuration by a reload: no listeners, workers draining.
    removed: bool,
    workers: HashMap<WorkerId, WorkerProc>,
    /// Accepted connections waiting for the pool to hand them off.
    waiting: HashMap<ConnId, (TcpStream, SocketAddr, SocketAddr)>,
    last_saturation_log: Option<u64>,
    /// The account its workers run as.
    account: Option<RunAs>,
}

#[derive(Clone, Copy)]
enum Source {
    Listener(usize),
    Control(usize, WorkerId),
    Signals,
}

struct Runtime {
    poll: Poll,
    services: Vec<ServiceRt>,
    port_access: Option<MappingSet>,
    tailor: PathBuf,
    sources: HashMap<Token, Source>,
    next_token: usize,
    next_conn: ConnId,
    refusals: RefusalLog,
    accepted: u64,
    handed: u64,
    origin: Instant,
    stopping: Option<Instant>,
    shutdown_bound: Duration,
}

/// Runs until SIGTERM or SIGINT has stopped every worker.
pub fn run(setup: Setup) -> std::io::Result<()> {
    let signals = Signals::install()?;
    let poll = Poll::new()?;
    let mut rt = Runtime {
        poll,
        services: Vec::new(),
        port_access: setup.port_access,
        tailor: setup.tailor,
        sources: HashMap::new(),
        next_token: 1,
        next_conn: 1,
        refusals: RefusalLog::default(),
        accepted: 0,
        handed: 0,
        origin: Instant::now(),
        stopping: None,
        shutdown_bound: setup.shutdown_bound,
    };
    let signal_token = rt.token(Source::Signals);
    rt.poll.registry().register(
        &mut SourceFd(&signals.wake.as_raw_fd()),
        signal_token,
        Interest::READABLE,
    )?;
    for (config, listeners) in setup.services.into_iter().zip(setup.listeners) {
        let index = rt.services.len();
        let account =
            service_account(&config, setup.mail_user.as_deref()).map_err(std::io::Error::other)?;
        let mut rs = ServiceRt {
            account,
            pool: Pool::new(PoolLimits::from_config(&config.limits)),
            config,
            listeners: Vec::new(),
            removed: false,
            workers: HashMap::new(),
            waiting: HashMap::new(),
            last_saturation_log: None,
        };
        for l in listeners {
            let token = rt.token(Source::Listener(index));
            rt.poll.registry().register(
                &mut SourceFd(&l.as_raw_fd()),
                token,
                Interest::READABLE,
            )?;
            log::info!(
                "[SERVICE={}] listening on {}",
                rs.config.name,
                l.local_addr().map_or("?".into(), |a| a.to_string())
            );
            let port = l.local_addr().map_or(0, |a| a.port());
            rs.listeners.push((l, token, port));
        }
        rt.services.push(rs);
    }
    for s in 0..rt.services.len() {
        rt.feed(s, Event::Tick);
    }

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
            match rt.sources.get(&ev.token()).copied() {
                Some(Source::Listener(s)) => rt.accept(s),
                Some(Source::Control(s, w)) => {
                    if ev.is_writable() {
                        rt.flush(s, w);
                    }
                    if ev.is_readable() || ev.is_read_closed() {
                        rt.read_worker(s, w);
                    }
                }
                Some(Source::Signals) => signals.drain(),
                None => {}
            }
        }
        if signals.child.swap(false, Ordering::SeqCst) {
            rt.reap();
        }
        if signals.reopen.swap(false, Ordering::SeqCst) {
            match (setup.reopen_log)() {
                Ok(()) => log::info!("log file reopened (SIGUSR1)"),
                Err(e) => log::error!("cannot reopen the log file: {e}"),
            }
        }
        if signals.status.swap(false, Ordering::SeqCst) {
            rt.status_report();
        }
        if signals.reload.swap(false, Ordering::SeqCst) && rt.stopping.is_none() {
            log::info!("SIGHUP: reloading the configuration");
            match (setup.reload)() {
                Ok(new) => rt.apply_reload(new),
                Err(e) => {
                    log::error!("reload refused, still running on the previous configuration: {e}")
                }
            }
        }
        if signals.stop.swap(false, Ordering::SeqCst) && rt.stopping.is_none() {
            rt.begin_stop();
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            // Reap here too: a SIGCHLD may have arrived between two polls.
            rt.reap();
            if rt.stopping.is_none() {
                for s in 0..rt.services.len() {
                    rt.feed(s, Event::Tick);
                }
            }
        }
        if let Some(deadline) = rt.stopping {
            if rt.services.iter().all(|s| s.workers.is_empty()) {
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

impl Runtime {
    fn token(&mut self, source: Source) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        self.sources.insert(t, source);
        t
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Feeds one event to a pool and performs its actions (and those they lead to).
    fn feed(&mut self, s: usize, event: Event) {
        if self.services[s].removed {
            return;
        }
        let mut queue = VecDeque::from([event]);
        while let Some(ev) = queue.pop_front() {
            let now = self.now();
            let actions = self.services[s].pool.handle(ev, now);
            for a in actions {
                if let Some(follow_up) = self.perform(s, a) {
                    queue.push_back(follow_up);
                }
            }
        }
    }

    fn perform(&mut self, s: usize, action: Action) -> Option<Event> {
        let name = self.services[s].config.name.clone();
        match action {
            Action::Spawn(id) => return self.spawn(s, id),
            Action::HandOff { conn, worker } => {
                let rs = &mut self.services[s];
                if let Some((stream, client, server)) = rs.waiting.remove(&conn) {
                    if let Some(w) = rs.workers.get_mut(&worker) {
                        w.outbox.push_back((
                            ToWorker::HandOff {
                                conn,
                                client,
                                server,
                            },
                            Some(stream),
                        ));
                    }
                    self.flush(s, worker);
                }
            }
            Action::Retire { worker, reason } => {
                log::info!("[SERVICE={name}] worker {worker} retires ({reason:?}); it exits when its connections end");
                if let Some(w) = self.services[s].workers.get_mut(&worker) {
                    w.outbox.push_back((ToWorker::Drain, None));
                }
                self.flush(s, worker);
            }
            Action::Kill(worker) => {
                if let Some(w) = self.services[s].workers.get_mut(&worker) {
                    log::error!(
                        "[SERVICE={name}] worker {worker} (pid {}) did not say READY within {} s; killed",
                        w.child.id(),
                        super::policy::READY_TIMEOUT / 1000
                    );
                    let _ = w.child.kill();
                }
            }
            Action::PauseAccepting => {
                log::debug!("[SERVICE={name}] not accepting: no worker capacity");
            }
            Action::ResumeAccepting => {
                // The listeners are edge-triggered: clients already queued raise no new event.
                self.accept(s);
            }
            Action::Log(PoolLog::Saturated {
                max_procs,
                max_conns,
            }) => {
                let now = self.now();
                let rs = &mut self.services[s];
                if rs
                    .last_saturation_log
                    .is_none_or(|t| now.saturating_sub(t) >= 60_000)
                {
                    rs.last_saturation_log = Some(now);
                    log::warn!(
                        "[SERVICE={name}] MAX_PROCS={max_procs} workers with MAX_CONNS={max_conns} connections each are busy; new clients wait in the listen queue (raise MAX_PROCS or MAX_CONNS)"
                    );
                }
            }
            Action::Log(PoolLog::WorkerLost {
                worker,
                connections,
            }) => log::error!(
                "[SERVICE={name}] worker {worker} died with {connections} connection(s) open"
            ),
            Action::Log(PoolLog::StartFailed { worker, retry_in }) => log::error!(
                "[SERVICE={name}] worker {worker} failed to start; next start in {} s",
                retry_in / 1000
            ),
        }
        None
    }

    fn spawn(&mut self, s: usize, id: WorkerId) -> Option<Event> {
        let rs = &self.services[s];
        let spec = WorkerSpec {
            image: &rs.config.image.value,
            service: &rs.config.name,
            parameter: rs.config.parameter.value.as_deref().unwrap_or(""),
            stack_size: rs.config.limits.stacksize.value,
            max_conns: rs.config.limits.max_conns.value,
            debug: rs.config.debug.value,
            tailor: &self.tailor,
            import_environment: &rs.config.import_environment.value,
            run_as: rs.account,
        };
        // Each worker writes its own version of the service's LOGFILE, as the original does.
        let keep = rs.config.limits.history_to_retain.value;
        let output = match &rs.config.logfile.value {
            Some(base) => match super::logfiles::open_version(base, keep) {
                Ok((_, f)) => Some(f),
                Err(e) => {
                    log::error!(
                        "[SERVICE={}] cannot open LOGFILE {}: {e}; worker output is discarded",
                        rs.config.name,
                        base.display()
                    );
                    None
                }
            },
            None => None,
        };
        let started = wire::control_pair().and_then(|(mine, theirs)| {
            let child = spawn_worker(&spec, &theirs, output.as_ref())?;
            Ok((mine, child))
        });
        let name = rs.config.name.clone();
        match started {
            Ok((ctrl, child)) => {
                log::info!("[SERVICE={name}] worker {id} started, pid {}", child.id());
                let token = self.token(Source::Control(s, id));
                if let Err(e) = self.poll.registry().register(
                    &mut SourceFd(&ctrl.as_raw_fd()),
                    token,
                    Interest::READABLE,
                ) {
                    log::error!("[SERVICE={name}] cannot watch worker {id}: {e}");
                }
                self.services[s].workers.insert(
                    id,
                    WorkerProc {
                        child,
                        ctrl,
                        token,
                        outbox: VecDeque::new(),
                        closed: false,
                        old: false,
                        want_write: false,
                    },
                );
                None
            }
            Err(e) => {
                log::error!(
                    "[SERVICE={name}] cannot start {}: {e}",
                    self.services[s].config.image.value.display()
                );
                Some(Event::WorkerExited {
                    worker: id,
                    clean: false,
                })
            }
        }
    }

    /// Sends what waits for a worker, as far as its socket takes it.
    fn flush(&mut self, s: usize, id: WorkerId) {
        let name = self.services[s].config.name.clone();
        let Some(w) = self.services[s].workers.get_mut(&id) else {
            return;
        };
        while let Some((msg, stream)) = w.outbox.front() {
            match wire::send_to_worker(w.ctrl.as_fd(), msg, stream.as_ref().map(|t| t.as_fd())) {
                Ok(()) => {
                    if matches!(msg, ToWorker::HandOff { .. }) {
                        self.handed += 1;
                    }
                    // Dropping the stream closes the dispatcher's copy.
                    w.outbox.pop_front();
                }
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !w.want_write {
                        w.want_write = true;
                        let _ = self.poll.registry().reregister(
                            &mut SourceFd(&w.ctrl.as_raw_fd()),
                            w.token,
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                    return;
                }
                Err(e) => {
                    log::error!(
                        "[SERVICE={name}] worker {id}: {e}; its queued connections are closed"
                    );
                    w.outbox.clear();
                    return;
                }
            }
        }
        // Only a change of interest costs a system call; most hand-offs need none.
        if w.want_write {
            w.want_write = false;
            let _ = self.poll.registry().reregister(
                &mut SourceFd(&w.ctrl.as_raw_fd()),
                w.token,
                Interest::READABLE,
            );
        }
    }

    fn read_worker(&mut self, s: usize, id: WorkerId) {
        let name = self.services[s].config.name.clone();
        loop {
            let Some(w) = self.services[s].workers.get_mut(&id) else {
                return;
            };
            if w.closed {
                return;
            }
            let old = w.old;
            match wire::recv_from_worker(w.ctrl.as_fd()) {
                Ok(Some(_)) if old => {}
                Ok(Some(ToDispatcher::Ready { .. })) => self.feed(s, Event::WorkerReady(id)),
                // Bridge until the lead's event loop acts on hand-off acknowledgements.
                Ok(Some(ToDispatcher::Taken { .. })) => {}
                Ok(Some(ToDispatcher::Ended { .. })) => self.feed(s, Event::ConnectionEnded(id)),
                Ok(Some(ToDispatcher::Draining)) => {}
                Ok(None) => {
                    stop_watching(self.poll.registry(), w);
                    return;
                }
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // The error quotes what the worker sent: its text is the worker's.
                    log::error!(
                        "[SERVICE={name}] worker {id} (pid {}): {}; killing it",
                        w.child.id(),
                        untrusted(&e.to_string())
                    );
                    let _ = w.child.kill();
                    stop_watching(self.poll.registry(), w);
                    return;
                }
            }
        }
    }

    /// Accepts and judges connections while the pool can take them.
    fn accept(&mut self, s: usize) {
        if self.stopping.is_some() {
            return;
        }
        let mut i = 0;
        while i < self.services[s].listeners.len() {
            if !self.services[s].pool.accepting() {
                return;
            }
            let accepted = self.services[s].listeners[i].0.accept();
            match accepted {
                Ok((stream, client)) => self.admit(s, stream, client),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => i += 1,
                Err(e) => {
                    log::warn!("[SERVICE={}] accept: {e}", self.services[s].config.name);
                    i += 1;
                }
            }
        }
    }

    fn admit(&mut self, s: usize, stream: TcpStream, client: SocketAddr) {
        let name = self.services[s].config.name.clone();
        let Ok(server) = stream.local_addr() else {
            return;
        };
        let (probe, decision) = access::judge(self.port_access.as_ref(), server, client);
        // The probe and what the templates made of it carry the client's address: logged
        // through `untrusted`, like everything a client or a worker controls.
        let shown = untrusted(&probe);
        if let Some(text) = &decision.log_match {
            log::info!("PORT_ACCESS {shown}: {}", untrusted(text));
        }
        for u in &decision.notes.unsupported {
            log::warn!("PORT_ACCESS {shown}: {u} is not supported; counted as no answer");
        }
        if let Verdict::Reject { text } = &decision.verdict {
            let (log_it, suppressed) = self.refusals.record(self.now());
            if suppressed > 0 {
                log::warn!(
                    "PORT_ACCESS: {suppressed} more refusals in the last minute were not logged"
                );
            }
            if log_it {
                log::info!(
                    "[SERVICE={name}] PORT_ACCESS refused {shown}: \"{}\"",
                    untrusted(text)
                );
            }
            if let Some(t) = &decision.log_reject {
                log::info!("PORT_ACCESS {shown}: {}", untrusted(t));
            }
            let _ = stream.set_nonblocking(true);
            access::refuse(stream, &decision);
            return;
        }
        self.accepted += 1;
        let conn = self.next_conn;
        self.next_conn += 1;
        log::debug!(
            "[SERVICE={name}] connection {conn} from {} accepted",
            untrusted(&client.to_string())
        );
        self.services[s]
            .waiting
            .insert(conn, (stream, client, server));
        self.feed(s, Event::ConnectionArrived(conn));
    }

    /// Reaps every worker that has exited.
    fn reap(&mut self) {
        for s in 0..self.services.len() {
            let exited: Vec<(WorkerId, std::process::ExitStatus)> = self.services[s]
                .workers
                .iter_mut()
                .filter_map(|(&id, w)| w.child.try_wait().ok().flatten().map(|st| (id, st)))
                .collect();
            for (id, status) in exited {
                if let Some(w) = self.services[s].workers.remove(&id) {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&w.ctrl.as_raw_fd()));
                    self.sources.remove(&w.token);
                    let how = match (status.code(), status.signal()) {
                        (Some(c), _) => format!("exit status {c}"),
                        (None, Some(sig)) => format!("signal {sig}"),
                        _ => "unknown status".to_string(),
                    };
                    log::info!(
                        "[SERVICE={}] worker {id} (pid {}) exited: {how}",
                        self.services[s].config.name,
                        w.child.id()
                    );
                    if self.stopping.is_none() && !w.old {
                        self.feed(
                            s,
                            Event::WorkerExited {
                                worker: id,
                                clean: status.success(),
                            },
                        );
                    }
                }
            }
        }
    }

    fn begin_stop(&mut self) {
        log::info!(
            "stopping: listeners closed, workers draining (at most {} s)",
            self.shutdown_bound.as_secs()
        );
        self.stopping = Some(Instant::now() + self.shutdown_bound);
        for s in 0..self.services.len() {
            for (l, token, _) in self.services[s].listeners.drain(..) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&l.as_raw_fd()));
                self.sources.remove(&token);
            }
            self.services[s].waiting.clear();
            let ids: Vec<WorkerId> = self.services[s].workers.keys().copied().collect();
            for id in ids {
                if let Some(w) = self.services[s].workers.get_mut(&id) {
                    w.outbox.push_back((ToWorker::Drain, None));
                }
                self.flush(s, id);
            }
        }
    }

    fn kill_all(&mut self) {
        for rs in &mut self.services {
            for (id, w) in rs.workers.iter_mut() {
                log::warn!(
                    "[SERVICE={}] worker {id} (pid {}) still running after the shutdown bound; killed",
                    rs.config.name,
                    w.child.id()
                );
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
            rs.workers.clear();
        }
    }

    /// Switches to a configuration read again (see the module comment).
    fn apply_reload(&mut self, new: Reloaded) {
        let ports: Vec<u16> = new
            .services
            .iter()
            .flat_map(|s| s.ports.value.iter().copied())
            .collect();
        if let Err(e) = access::check_reload(
            self.port_access.as_ref(),
            &new.mappings_path,
            new.port_access.as_ref(),
            &ports,
        ) {
            log::error!("reload refused, still running on the previous configuration: {e}");
            return;
        }
        let mut accounts = Vec::new();
        for ns in &new.services {
            match service_account(ns, new.mail_user.as_deref()) {
                Ok(a) => accounts.push(a),
                Err(e) => {
                    log::error!("reload refused, still running on the previous configuration: {e}");
                    return;
                }
            }
        }
        // Phase 1: open every port that is not open yet; any failure changes nothing.
        let mut opened: Vec<(usize, u16, TcpListener)> = Vec::new();
        for (n, ns) in new.services.iter().enumerate() {
            let old = self.find_service(&ns.name);
            for &port in &ns.ports.value {
                let kept = old.is_some_and(|o| {
                    let rs = &self.services[o];
                    rs.listeners.iter().any(|(_, _, p)| *p == port)
                        && super::listen::address(&rs.config, port)
                            == super::listen::address(ns, port)
                });
                if kept {
                    continue;
                }
                match super::listen::open_port(ns, port) {
                    Ok(l) => opened.push((n, port, l)),
                    Err(e) => {
                        log::error!(
                            "reload refused, still running on the previous configuration: {e}"
                        );
                        return;
                    }
                }
            }
        }
        // Phase 2: build the new services, keeping what stays.
        let mut old_services: Vec<Option<ServiceRt>> = std::mem::take(&mut self.services)
            .into_iter()
            .map(Some)
            .collect();
        let mut services = Vec::new();
        let mut resubmit: Vec<(usize, ConnId)> = Vec::new();
        for (n, ns) in new.services.into_iter().enumerate() {
            let previous = old_services
                .iter_mut()
                .find(|o| {
                    o.as_ref()
                        .is_some_and(|o| !o.removed && o.config.name.eq_ignore_ascii_case(&ns.name))
                })
                .and_then(Option::take);
            let limits = PoolLimits::from_config(&ns.limits);
            let rs = match previous {
                Some(mut prev) => {
                    let first = prev.pool.next_worker_id();
                    for conn in prev.pool.take_waiting() {
                        resubmit.push((n, conn));
                    }
                    // Ports that stay keep their socket; the others close.
                    let (keep, close): (Vec<_>, Vec<_>) =
                        prev.listeners.drain(..).partition(|(_, _, p)| {
                            ns.ports.value.contains(p)
                                && super::listen::address(&prev.config, *p)
                                    == super::listen::address(&ns, *p)
                        });
                    for (l, _, p) in close {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut SourceFd(&l.as_raw_fd()));
                        log::info!(
                            "[SERVICE={}] no longer listening on port {p}",
                            prev.config.name
                        );
                    }
                    for w in prev.workers.values_mut() {
                        if !w.old {
                            w.old = true;
                            w.outbox.push_back((ToWorker::Drain, None));
                        }
                    }
                    ServiceRt {
                        account: accounts[n],
                        pool: Pool::numbering_from(limits, first),
                        config: ns,
                        listeners: keep,
                        removed: false,
                        workers: prev.workers,
                        waiting: prev.waiting,
                        last_saturation_log: None,
                    }
                }
                None => ServiceRt {
                    account: accounts[n],
                    pool: Pool::new(limits),
                    config: ns,
                    listeners: Vec::new(),
                    removed: false,
                    workers: HashMap::new(),
                    waiting: HashMap::new(),
                    last_saturation_log: None,
                },
            };
            services.push(rs);
        }
        // Opened listeners join their service.
        for (n, port, l) in opened {
            log::info!(
                "[SERVICE={}] listening on port {port}",
                services[n].config.name
            );
            services[n].listeners.push((l, Token(0), port));
        }
        // Services no longer configured: listeners closed, workers draining until they exit.
        for mut prev in old_services.into_iter().flatten() {
            for (l, _, _) in prev.listeners.drain(..) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&l.as_raw_fd()));
            }
            for w in prev.workers.values_mut() {
                if !w.old {
                    w.old = true;
                    w.outbox.push_back((ToWorker::Drain, None));
                }
            }
            if !prev.workers.is_empty() {
                log::info!(
                    "[SERVICE={}] removed from the configuration; its workers drain",
                    prev.config.name
                );
                prev.removed = true;
                prev.waiting.clear();
                services.push(prev);
            }
        }
        self.services = services;
        self.port_access = new.port_access;
        self.rebuild_sources();
        for s in 0..self.services.len() {
            let ids: Vec<WorkerId> = self.services[s].workers.keys().copied().collect();
            for id in ids {
                self.flush(s, id);
            }
        }
        for (s, conn) in resubmit {
            self.feed(s, Event::ConnectionArrived(conn));
        }
        for s in 0..self.services.len() {
            self.feed(s, Event::Tick);
            self.accept(s);
        }
        log::info!("configuration reloaded");
    }

    /// Gives every listener and worker socket a token again after the services changed
    /// places, registering the listeners that have none yet.
    fn rebuild_sources(&mut self) {
        self.sources.retain(|_, src| matches!(src, Source::Signals));
        for s in 0..self.services.len() {
            for i in 0..self.services[s].listeners.len() {
                let token = Token(self.next_token);
                self.next_token += 1;
                let (l, t, _) = &mut self.services[s].listeners[i];
                let fd = l.as_raw_fd();
                let registered = if t.0 == 0 {
                    self.poll
                        .registry()
                        .register(&mut SourceFd(&fd), token, Interest::READABLE)
                } else {
                    self.poll
                        .registry()
                        .reregister(&mut SourceFd(&fd), token, Interest::READABLE)
                };
                if let Err(e) = registered {
                    log::error!("cannot watch a listener: {e}");
                }
                *t = token;
                self.sources.insert(token, Source::Listener(s));
            }
            let ids: Vec<WorkerId> = self.services[s].workers.keys().copied().collect();
            for id in ids {
                if let Some(w) = self.services[s].workers.get(&id) {
                    self.sources.insert(w.token, Source::Control(s, id));
                }
            }
        }
    }

    fn find_service(&self, name: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|s| !s.removed && s.config.name.eq_ignore_ascii_case(name))
    }

    fn status_report(&self) {
        let now = self.now();
        log::info!(
            "status: {} accepted, {} refused, {} handed off",
            self.accepted,
            self.refusals.total,
            self.handed
        );
        for rs in &self.services {
            let statuses = rs.pool.status();
            log::info!(
                "status: [SERVICE={}] {} worker(s), {} connection(s) waiting, {}",
                rs.config.name,
                statuses.len(),
                rs.waiting.len(),
                if rs.pool.accepting() {
                    "accepting"
                } else {
                    "not accepting"
                }
            );
            let old = rs.workers.values().filter(|w| w.old).count();
            if old > 0 {
                log::info!(
                    "status: [SERVICE={}] {old} worker(s) from before the last reload, draining",
                    rs.config.name
                );
            }
            for st in statuses {
                let pid = rs.workers.get(&st.worker).map_or(0, |w| w.child.id());
                log::info!(
                    "status: [SERVICE={}] worker {} pid {pid} {} age {} s, {} active, {} served",
                    rs.config.name,
                    st.worker,
                    st.state,
                    now.saturating_sub(st.started) / 1000,
                    st.active,
                    st.served
                );
            }
        }
    }
}
