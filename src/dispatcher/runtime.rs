//! The dispatcher's running state, and how the pools' actions are carried out.
//!
//! One owner for each thing: the services and their generations ([`super::generation`]), the
//! worker processes ([`super::workers`]), the listeners ([`super::accept`]), and here the
//! accepted connections, each held (its socket, its addresses) until a pool says it is in a
//! worker's hands ([`Action::Release`]) or is to be closed. Where a connection *is* (waiting,
//! handed, taken) only the pool knows. Event-loop tokens are derived from stable ids and never
//! reassigned: nothing is renumbered when the configuration changes.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::{Poll, Token};

use super::accept::{Acceptor, Admitted, ListenerId, Stopped};
use super::account::{self, RunAs};
use super::generation::{GenPool, ServiceCounts, ServiceId, ServiceRt, Services};
use super::logfiles::LiveVersions;
use super::policy::{
    Action, ConnId, Event, KillReason, Pool, PoolLimits, PoolLog, WorkerId, WorkerIds,
};
use super::spawn::WorkerSpec;
use super::spawner::{self, SpawnJob, Spawned, Spawner};
use super::workers::{Owner, StartError, Workers};
use crate::config::service::Service;
use crate::log_text::{untrusted, Throttle};
use crate::mapping::table::MappingSet;

/// What an event-loop token stands for. The kind is in the low bits, the stable id above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Signals,
    /// The starting thread has made a start ([`super::spawner`]).
    Spawned,
    Listener(ListenerId),
    Worker(WorkerId),
    /// The control socket.
    Control,
    /// The metrics endpoint's listener.
    Metrics,
    /// A control client or a metrics scraper.
    Conversation(u64),
}

impl Source {
    pub fn token(self) -> Token {
        let (id, kind) = match self {
            Source::Signals => (0, 0),
            Source::Spawned => (1, 0),
            Source::Listener(id) => (id, 1),
            Source::Worker(id) => (id, 2),
            Source::Control => (0, 3),
            Source::Metrics => (1, 3),
            Source::Conversation(id) => (id.saturating_add(2), 3),
        };
        Token(usize::try_from(id).unwrap_or(usize::MAX >> 2) << 2 | kind)
    }

    pub fn of(token: Token) -> Option<Source> {
        let id = (token.0 >> 2) as u64;
        match token.0 & 3 {
            0 => match id {
                0 => Some(Source::Signals),
                1 => Some(Source::Spawned),
                _ => None,
            },
            1 => Some(Source::Listener(id)),
            2 => Some(Source::Worker(id)),
            _ => Some(match id {
                0 => Source::Control,
                1 => Source::Metrics,
                n => Source::Conversation(n - 2),
            }),
        }
    }
}

/// Kills and reaps a worker process no entry of [`Workers`] stands for: none may run unseen.
fn stop_unseen(mut child: super::child::Process) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A connection the dispatcher holds.
struct Held {
    stream: TcpStream,
    client: SocketAddr,
    server: SocketAddr,
    service: ServiceId,
}

/// The account a service's workers run as ([`super::account`] decides), or why they cannot
/// be started.
pub fn service_account(
    service: &Service,
    mail_user: Option<&str>,
) -> Result<Option<RunAs>, String> {
    account::decide(
        service,
        mail_user,
        account::running_as_root(),
        account::lookup,
    )
    .map_err(|e| e.to_string())
}

pub struct Runtime {
    pub poll: Poll,
    pub services: Services,
    pub workers: Workers,
    pub acceptor: Acceptor,
    conns: HashMap<ConnId, Held>,
    next_conn: ConnId,
    pub ids: WorkerIds,
    pub port_access: Option<MappingSet>,
    pub tailor: PathBuf,
    /// Connections handed off and confirmed.
    pub handed: u64,
    /// Reloads (SIGHUP or `--reload`) applied and refused.
    pub reloads_applied: u64,
    pub reloads_refused: u64,
    /// The listeners are not read: a takeover waits for its workers before it may accept.
    pub accept_held: bool,
    origin: Instant,
    /// When the stop began and its bound.
    pub stopping: Option<Instant>,
    pub shutdown_bound: Duration,
    /// The soft descriptor limit, and how many connections may be held (recomputed on reload).
    pub nofile: u64,
    pub budget: u64,
    /// Some listener was left with clients possibly queued: try again on the next round.
    pub accept_again: bool,
    /// Starts failing for lack of descriptors are retried every second: logged once a minute.
    no_descriptors_log: Throttle,
    /// Makes the starts off the event loop; `None` when its thread could not be started
    /// (starts are then made in the loop).
    spawner: Option<Spawner>,
    /// The LOGFILE versions running workers write: a start's pruning leaves them.
    log_versions: LiveVersions,
}

impl Runtime {
    pub fn new(poll: Poll, tailor: PathBuf, port_access: Option<MappingSet>, nofile: u64) -> Self {
        let spawner = mio::Waker::new(poll.registry(), Source::Spawned.token())
            .and_then(|waker| Spawner::new(std::sync::Arc::new(waker)));
        let spawner = match spawner {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("no thread to start workers ({e}): they are started in the event loop");
                None
            }
        };
        Runtime {
            spawner,
            poll,
            services: Services::default(),
            workers: Workers::default(),
            acceptor: Acceptor::default(),
            conns: HashMap::new(),
            next_conn: 1,
            ids: WorkerIds::default(),
            port_access,
            tailor,
            handed: 0,
            reloads_applied: 0,
            reloads_refused: 0,
            accept_held: false,
            origin: Instant::now(),
            stopping: None,
            shutdown_bound: Duration::from_secs(30),
            nofile,
            budget: 1,
            accept_again: false,
            no_descriptors_log: Throttle::new(Duration::from_secs(60)),
            log_versions: LiveVersions::default(),
        }
    }

    /// How long the dispatcher has run.
    pub fn uptime(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Milliseconds since the dispatcher started: the pools' clock.
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the first pool wants a `Tick` before the regular one (a health bound is due
    /// then), on the clock of [`Runtime::now`] turned into an instant.
    pub fn next_check(&self) -> Option<Instant> {
        let due = self
            .services
            .by_id
            .values()
            .flat_map(|s| s.pools())
            .filter_map(|g| g.pool.next_check())
            .min()?;
        Some(self.origin + Duration::from_millis(due))
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.conns.len()
    }

    /// Recomputes how many connections may be held (at start and after a reload).
    pub fn recompute_budget(&mut self) {
        let open = super::descriptors::open_now().unwrap_or(self.nofile);
        self.budget = super::descriptors::budget(
            self.nofile,
            open,
            self.conns.len() as u64,
            self.workers.len() as u64,
            self.services.max_workers(),
        );
    }

    /// A new generation's pool for `config`.
    pub fn new_pool(&self, config: Service, account: Option<RunAs>) -> GenPool {
        GenPool {
            generation: self.services.generation,
            account,
            pool: Pool::with_ids(PoolLimits::from_config(&config.limits), self.ids.clone()),
            config: Rc::new(config),
            last_saturation_log: None,
        }
    }

    /// Adds a service with its pool (at start, or new in a reload); returns its id.
    pub fn add_service(&mut self, config: Service, account: Option<RunAs>) -> ServiceId {
        let id = self.services.new_id();
        let name = config.name.clone();
        let pool = self.new_pool(config, account);
        self.services.by_id.insert(
            id,
            ServiceRt {
                id,
                name,
                counts: Default::default(),
                current: Some(pool),
                old: Vec::new(),
            },
        );
        id
    }

    /// Feeds one event to a pool and performs its actions (and those they lead to).
    pub fn feed(&mut self, owner: Owner, event: Event) {
        let mut queue = VecDeque::from([(owner, event)]);
        while let Some((owner, ev)) = queue.pop_front() {
            let now = self.now();
            let Some(gp) = self.services.pool_of(owner) else {
                continue;
            };
            let actions = gp.pool.handle(ev, now);
            for a in actions {
                for follow_up in self.perform(owner, a) {
                    queue.push_back(follow_up);
                }
            }
        }
    }

    /// Feeds an event to every pool (a tick, a stop).
    pub fn feed_all(&mut self, event: &Event) {
        for owner in self.services.all_pools() {
            self.feed(owner, event.clone());
        }
    }

    /// The current generation of a service, as an owner.
    pub fn current_of(&self, service: ServiceId) -> Option<Owner> {
        let s = self.services.by_id.get(&service)?;
        s.current.as_ref().map(|g| Owner {
            service,
            generation: g.generation,
        })
    }

    fn perform(&mut self, owner: Owner, action: Action) -> Vec<(Owner, Event)> {
        let name = self.services.name(owner.service);
        let mut follow = Vec::new();
        match action {
            Action::Spawn(id) => {
                if let Some(ev) = self.spawn(owner, id) {
                    follow.push((owner, ev));
                }
            }
            Action::HandOff { conn, worker } => {
                let ev = match self.conns.get(&conn) {
                    Some(h) => self.workers.hand_off(
                        self.poll.registry(),
                        worker,
                        conn,
                        &h.stream,
                        h.client,
                        h.server,
                    ),
                    None => {
                        log::error!("[SERVICE={name}] connection {conn} to hand off is not held (a bug); skipped");
                        return follow;
                    }
                };
                follow.push((owner, ev));
            }
            // A listener left unread for want of room (the descriptor budget) is read again on
            // the next round already (`accept_on` asks for it): nothing to ask here, which
            // spares an `accept` that finds nothing after every hand-off.
            Action::Release(conn) => {
                if self.conns.remove(&conn).is_some() {
                    self.handed += 1;
                    self.count(owner.service, |c| c.handed_off += 1);
                }
            }
            Action::Close(conn) => {
                self.conns.remove(&conn);
            }
            Action::Elsewhere(conn) => {
                let service = self.conns.get(&conn).map(|h| h.service);
                match service.and_then(|s| self.current_of(s)) {
                    Some(current) if current != owner && self.stopping.is_none() => {
                        follow.push((current, Event::ConnectionArrived(conn)));
                    }
                    _ => {
                        log::debug!(
                            "[SERVICE={name}] connection {conn} closed: no generation serves it"
                        );
                        self.conns.remove(&conn);
                    }
                }
            }
            Action::Retire { worker, reason } => {
                log::info!("[SERVICE={name}] worker {worker} retires ({reason:?}); it exits when its connections end");
                self.workers.drain(self.poll.registry(), worker);
            }
            Action::Kill { worker, reason } => {
                let pid = self.workers.pid(worker).unwrap_or(0);
                match &reason {
                    KillReason::NotReady => log::error!(
                        "[SERVICE={name}] worker {worker} (pid {pid}) did not say READY within {} s; killed",
                        super::policy::READY_TIMEOUT / 1000
                    ),
                    KillReason::Unresponsive { for_ms } => log::error!(
                        "[SERVICE={name}] worker {worker} (pid {pid}) unresponsive for {for_ms} ms; killed, its untaken connections go to other workers"
                    ),
                    KillReason::Violation(what) => log::error!(
                        "[SERVICE={name}] worker {worker} (pid {pid}): protocol violation: {}; killed",
                        untrusted(what)
                    ),
                    KillReason::ClosedControl => log::error!(
                        "[SERVICE={name}] worker {worker} (pid {pid}) closed its control socket {} s ago and still runs; killed",
                        super::policy::CLOSED_GRACE / 1000
                    ),
                }
                self.count(owner.service, |c| c.kills += 1);
                self.workers.kill(worker);
            }
            Action::PauseAccepting => {
                log::debug!("[SERVICE={name}] not accepting: no worker capacity");
            }
            Action::ResumeAccepting => {
                // The listeners are edge-triggered: clients already queued raise no new event.
                self.accept_again = true;
            }
            Action::Log(log) => self.phrase(owner, &name, log),
        }
        follow
    }

    fn phrase(&mut self, owner: Owner, name: &str, entry: PoolLog) {
        match entry {
            PoolLog::Saturated {
                max_procs,
                max_conns,
            } => {
                let now = self.now();
                let Some(gp) = self.services.pool_of(owner) else {
                    return;
                };
                if gp
                    .last_saturation_log
                    .is_none_or(|t| now.saturating_sub(t) >= 60_000)
                {
                    gp.last_saturation_log = Some(now);
                    log::warn!(
                        "[SERVICE={name}] MAX_PROCS={max_procs} workers with MAX_CONNS={max_conns} connections each are busy; new clients wait in the listen queue (raise MAX_PROCS or MAX_CONNS)"
                    );
                }
            }
            PoolLog::WorkerLost {
                worker,
                connections,
            } => log::error!(
                "[SERVICE={name}] worker {worker} died with {connections} connection(s) open"
            ),
            PoolLog::StartFailed { worker, retry_in } => {
                self.count(owner.service, |c| c.failed_starts += 1);
                log::error!(
                    "[SERVICE={name}] worker {worker} failed to start; next start in {} s",
                    retry_in / 1000
                )
            }
            PoolLog::NoDescriptors { worker, retry_in } => {
                if self.no_descriptors_log.allows(name) {
                    log::error!(
                        "[SERVICE={name}] worker {worker} could not be started for lack of descriptors; tried again every {} s (not counted as a failed start; logged once a minute)",
                        retry_in / 1000
                    );
                }
            }
            PoolLog::Unresponsive { worker, untaken } => log::warn!(
                "[SERVICE={name}] worker {worker} (pid {}) unresponsive: {untaken} connection(s) not taken within {} ms; it gets no more",
                self.workers.pid(worker).unwrap_or(0),
                super::policy::UNRESPONSIVE_AFTER
            ),
            PoolLog::Recovered { worker } => {
                log::info!("[SERVICE={name}] worker {worker} responds again")
            }
            PoolLog::Requeued {
                worker,
                connections,
            } => log::info!(
                "[SERVICE={name}] {connections} connection(s) worker {worker} never took go to other workers"
            ),
        }
    }

    fn spawn(&mut self, owner: Owner, id: WorkerId) -> Option<Event> {
        let gp = self.services.pool_of(owner)?;
        let config = Rc::clone(&gp.config);
        let spec = WorkerSpec {
            image: config.image.value.clone(),
            service: config.name.clone(),
            parameter: config.parameter.value.clone().unwrap_or_default(),
            stack_size: config.limits.stacksize.value,
            max_conns: config.limits.max_conns.value,
            debug: config.debug.value,
            tailor: self.tailor.clone(),
            import_environment: config.import_environment.value.clone(),
            run_as: gp.account,
        };
        let token = Source::Worker(id).token();
        let control = match self.workers.prepare(self.poll.registry(), id, token, owner) {
            Ok(fd) => fd,
            Err(e) => return Some(self.start_failed(owner, id, e)),
        };
        // Each worker writes its own version of the service's LOGFILE, as the original does.
        let job = SpawnJob {
            id,
            spec,
            control,
            logfile: config.logfile.value.clone().map(|base| {
                (
                    base,
                    config.limits.history_to_retain.value,
                    self.log_versions.clone(),
                )
            }),
        };
        let job = match &mut self.spawner {
            Some(spawner) => match spawner.submit(Box::new(job)) {
                Ok(()) => return None,
                Err(job) => *job,
            },
            None => job,
        };
        // No starting thread: made here, the loop waiting for it.
        let done = spawner::run(job);
        self.on_spawned(done)
    }

    /// Every start the starting thread has made since the last call.
    pub fn take_spawned(&mut self) {
        let done = self
            .spawner
            .as_mut()
            .map(Spawner::take_done)
            .unwrap_or_default();
        self.spawned(done);
    }

    /// Gives each finished start to the pool that asked for it.
    fn spawned(&mut self, done: Vec<Spawned>) {
        for s in done {
            // Taken before: a failed start forgets the worker.
            let owner = self.workers.owner(s.id);
            if let (Some(ev), Some(owner)) = (self.on_spawned(s), owner) {
                self.feed(owner, ev);
            }
        }
    }

    /// A start is done: the worker runs, or its failure for the pool.
    fn on_spawned(&mut self, s: Spawned) -> Option<Event> {
        let Some(owner) = self.workers.owner(s.id) else {
            // Forgotten meanwhile (cannot happen while starts are waited for before the
            // workers are killed): none may run unseen.
            if let Ok(child) = s.result {
                stop_unseen(child);
            }
            return None;
        };
        let name = self.services.name(owner.service).to_string();
        if let Some((base, e)) = &s.logfile_error {
            log::error!(
                "[SERVICE={name}] cannot open LOGFILE {}: {e}; worker output is discarded",
                base.display()
            );
        }
        match s.result {
            Ok(child) => match self.workers.started(s.id, child, s.log_version) {
                Ok(pid) => {
                    self.count(owner.service, |c| c.starts += 1);
                    log::info!("[SERVICE={name}] worker {} started, pid {pid}", s.id);
                    None
                }
                Err(child) => {
                    stop_unseen(child);
                    None
                }
            },
            Err(e) => {
                self.workers.not_started(self.poll.registry(), s.id);
                Some(self.start_failed(owner, s.id, StartError::from(e)))
            }
        }
    }

    /// A worker that could not be started, for the pool (and the log unless the host is out
    /// of descriptors, which the pool's NoDescriptors line says once a minute).
    fn start_failed(&mut self, owner: Owner, id: WorkerId, e: StartError) -> Event {
        if !e.lack_of_descriptors {
            let image = self
                .services
                .pool_of(owner)
                .map(|gp| gp.config.image.value.display().to_string())
                .unwrap_or_default();
            log::error!(
                "[SERVICE={}] cannot start {image}: {}",
                self.services.name(owner.service),
                e.error
            );
        }
        Event::SpawnFailed {
            worker: id,
            lack_of_descriptors: e.lack_of_descriptors,
        }
    }

    pub fn accept_all(&mut self) {
        self.accept_again = false;
        for (id, _, _) in self.acceptor.list() {
            self.accept_on(id);
        }
    }

    /// Accepts on one listener (its poll event, or a retry).
    pub fn accept_on(&mut self, id: ListenerId) {
        if self.stopping.is_some() || self.accept_held {
            return;
        }
        let Some(service) = self.acceptor.get(id).map(|l| l.service) else {
            return;
        };
        let Some(owner) = self.current_of(service) else {
            return;
        };
        let name = self.services.name(service);
        let now = self.now();
        let mut admitted: Vec<Admitted> = Vec::new();
        loop {
            let budget = self.budget as usize;
            let held = self.conns.len();
            let accepting = self
                .services
                .pool_of(owner)
                .is_some_and(|g| g.pool.accepting());
            // Accept in small batches, so that each connection is booked (and the pool's room
            // re-read) before the next is taken.
            let mut room_left = if accepting {
                budget.saturating_sub(held).min(16)
            } else {
                0
            };
            let stopped = self.acceptor.accept_from(
                id,
                &name,
                self.port_access.as_ref(),
                now,
                || {
                    let ok = room_left > 0;
                    room_left = room_left.saturating_sub(1);
                    ok
                },
                |a| admitted.push(a),
            );
            let refused = self.acceptor.take_refused();
            if refused > 0 {
                self.count(service, |c| c.refused += refused);
            }
            let got = !admitted.is_empty();
            for a in admitted.drain(..) {
                self.book(owner, a);
            }
            match stopped {
                Stopped::Empty => return,
                Stopped::NoRoom if got => continue,
                Stopped::NoRoom | Stopped::Exhausted | Stopped::Errors => {
                    // Clients may still be queued: the edge-triggered listener will not say so.
                    self.accept_again = true;
                    return;
                }
            }
        }
    }

    /// Adds to a service's counts.
    pub fn count(&mut self, service: ServiceId, add: impl FnOnce(&mut ServiceCounts)) {
        if let Some(s) = self.services.get_mut(service) {
            add(&mut s.counts);
        }
    }

    /// Books an admitted connection and gives it to the pool.
    fn book(&mut self, owner: Owner, a: Admitted) {
        self.count(owner.service, |c| c.accepted += 1);
        let conn = self.next_conn;
        self.next_conn += 1;
        log::debug!(
            "connection {conn} from {} accepted",
            untrusted(&a.client.to_string())
        );
        self.conns.insert(
            conn,
            Held {
                stream: a.stream,
                client: a.client,
                server: a.server,
                service: owner.service,
            },
        );
        self.feed(owner, Event::ConnectionArrived(conn));
    }

    /// Reads what a worker sent and gives it to its pool.
    pub fn read_worker(&mut self, id: WorkerId) {
        let Some(owner) = self.workers.owner(id) else {
            return;
        };
        let mut stats = crate::handoff::stats::WorkerStats::default();
        let events = self.workers.read(self.poll.registry(), id, &mut stats);
        if !stats.is_empty() {
            self.count(owner.service, |c| c.lmtp.add(&stats));
        }
        for ev in events {
            self.feed(owner, ev);
        }
    }

    /// A worker's control socket has room again.
    pub fn worker_writable(&mut self, id: WorkerId) {
        let Some(owner) = self.workers.owner(id) else {
            return;
        };
        if self.workers.on_writable(self.poll.registry(), id) {
            self.feed(owner, Event::Writable(id));
        }
    }

    /// Reaps every worker that has exited.
    pub fn reap(&mut self) {
        for (id, status) in self.workers.exited() {
            // What it said before it exited (its last ENDED) is read first: the loop may see
            // the exit before the socket's last packets.
            self.read_worker(id);
            let Some((owner, pid)) = self.workers.forget(self.poll.registry(), id) else {
                continue;
            };
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => "unknown status".to_string(),
            };
            let name = self.services.name(owner.service);
            log::info!("[SERVICE={name}] worker {id} (pid {pid}) exited: {how}");
            self.feed(
                owner,
                Event::WorkerExited {
                    worker: id,
                    clean: status.success(),
                },
            );
        }
        self.services.forget_finished();
    }

    /// SIGTERM or SIGINT: listeners closed, nothing started any more, every worker drains.
    pub fn begin_stop(&mut self) {
        log::info!(
            "stopping: listeners closed, workers draining (at most {} s)",
            self.shutdown_bound.as_secs()
        );
        self.stopping = Some(Instant::now() + self.shutdown_bound);
        self.acceptor.close_all(self.poll.registry());
        self.feed_all(&Event::Stop);
        // Anything still held has no worker to go to.
        self.conns.clear();
    }

    /// The shutdown bound has passed: whatever still runs is killed.
    pub fn kill_all(&mut self) {
        // Starts still being made first: their workers are killed with the others.
        let waited = self
            .spawner
            .as_mut()
            .map(Spawner::wait_all)
            .unwrap_or_default();
        self.spawned(waited);
        for (id, owner, pid) in self.workers.kill_all() {
            let name = self.services.name(owner.service);
            log::warn!(
                "[SERVICE={name}] worker {id} (pid {pid}) still running after the shutdown bound; killed"
            );
        }
    }
}
