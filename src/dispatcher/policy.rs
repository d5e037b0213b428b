//! The worker pool of one service in one configuration generation, as a pure state machine:
//! events in, actions out.
//!
//! This is "Creation and Expiration of Server Processes" of the Messaging Server documentation
//! made exact, plus what a production dispatcher needs when its workers misbehave. It decides
//! which worker takes a connection, when to start a worker, when to retire, distrust or kill
//! one, and when to stop reading the listener; the event loop performs the actions and reports
//! what happened. It knows nothing of sockets, processes or clocks: time comes in with every
//! event, in milliseconds from any fixed origin. It is the one place that knows where each
//! accepted connection is: waiting, handed to a worker and not yet confirmed, or held by a
//! worker (the event loop only keeps the sockets, and drops its copy on [`Action::Release`]).
//!
//! Rules (documented ones first; **ours** where the documentation is silent):
//!
//! * A worker is started when fewer than `MIN_PROCS` run, or when every worker is "busy
//!   enough" (at least `MIN_CONNS` connections) and fewer than `MAX_PROCS` run.
//! * A connection goes to a ready worker below `MIN_CONNS`, the fullest of those first (fill a
//!   worker to "busy enough" before spreading, **ours**); else, if no worker can be started
//!   now (`MAX_PROCS` reached, a start held back after failures, a stop or reload under way),
//!   to the least busy worker below `MAX_CONNS`. Connections that arrive while the worker
//!   started for them gets ready wait for it, at most [`START_WAIT`] if a ready worker has room.
//! * No worker ever holds more than `MAX_CONNS` connections. When every worker is full and
//!   `MAX_PROCS` run, the pool asks to stop reading the listener, so further clients wait in
//!   the kernel's listen queue (`BACKLOG`), and asks again to read when a slot frees **(ours:
//!   the documentation's BACKLOG default suggests it)**.
//! * A worker handed `MAX_LIFE_CONNS` connections, older than `MAX_LIFE_TIME`, or (beyond
//!   `MIN_PROCS`) idle for `MAX_IDLE_TIME`, is retired: it takes no new connection and exits
//!   when its last one ends. At most `MAX_SHUTDOWN` workers retire at once **(ours: the
//!   documentation names the option only)**; retiring workers do not count against `MAX_PROCS`.
//! * Recycling costs no client a wait **(ours)**: a worker handed half its `MAX_LIFE_CONNS`,
//!   or due for `MAX_LIFE_TIME`, gets a successor started, which takes its `MAX_PROCS` place.
//!   It keeps taking connections (before the successor, which is preferred only once it is
//!   due) until it is due and its successor is ready, and is retired then; should the
//!   successor be slow, it is retired anyway once handed twice `MAX_LIFE_CONNS`, and should
//!   the successor fail, as before (a new successor waits for the start back-off).
//! * A worker that exits before taking its first connection is a failed start: the next start
//!   waits 1 s, doubling up to 60 s, with one log line each time. A worker that has not said
//!   it is ready [`READY_TIMEOUT`] after its start is killed, which makes it a failed start.
//!   One that was ready and lived [`STABLE_AFTER`] before it died without serving (killed by
//!   an administrator or the OOM killer) is not: it is replaced at once. A start that failed
//!   for lack of descriptors is not the image's fault: retried after [`NO_DESCRIPTOR_RETRY`].
//!
//! Distrust **(ours)**:
//!
//! * A worker that said `READY ACK` confirms each hand-off with `TAKEN`; one that said plain
//!   `READY` has a hand-off confirmed when it was sent. Until then the dispatcher keeps its copy
//!   of the socket, so a connection the worker never took is given to another worker.
//! * A hand-off not confirmed, or a control socket that stays full, for [`UNRESPONSIVE_AFTER`]
//!   makes the worker unresponsive: it is handed nothing more (and no longer counts against
//!   `MAX_PROCS`); still so [`KILL_UNRESPONSIVE_AFTER`] later, it is killed, and the
//!   connections it never took go to other workers. One that recovers before is trusted
//!   again, or retired if a replacement has taken its place.
//! * A message that does not add up (a second `READY`, `TAKEN` or `ENDED` for a connection not
//!   handed to that worker, `TAKEN` from a worker that did not offer it) is a protocol
//!   violation: the worker is killed and replaced; the connections it had not confirmed are
//!   closed, not handed again (what it sent after the violation is not read).
//! * A worker that says `DRAINING` or closes its control socket takes nothing more. One that
//!   closed it keeps its `MAX_PROCS` place until it exits, at most [`CLOSED_PLACE`] (so an
//!   image failing at once is restarted at the back-off's pace), and is killed if still
//!   running [`CLOSED_GRACE`] later.
//! * Once the pool is told to stop or wind down (a reload made a new generation), it starts
//!   nothing, tells every worker to drain, and gives back the connections that still wait.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// Milliseconds from an origin the caller chooses.
pub type Millis = u64;
/// A worker, numbered once for the dispatcher's life (see [`WorkerIds`]).
pub type WorkerId = u64;
/// A connection, numbered by the caller.
pub type ConnId = u64;

/// How long a started worker may take to say it is ready before it counts as a failed start
/// and is killed (an image that does not speak the protocol must not hold connections).
pub const READY_TIMEOUT: Millis = 30_000;

/// A ready worker that dies this long after its start, even without having served, did not
/// fail to start: it is replaced without a back-off.
pub const STABLE_AFTER: Millis = 10_000;

/// First and last delay after failed starts.
pub const BACKOFF_FIRST: Millis = 1_000;
pub const BACKOFF_MAX: Millis = 60_000;

/// A hand-off not confirmed, or a control socket full, this long: the worker is unresponsive.
pub const UNRESPONSIVE_AFTER: Millis = 500;
/// An unresponsive worker still so this much later is killed.
pub const KILL_UNRESPONSIVE_AFTER: Millis = 1_000;
/// A worker that closed its control socket and still runs this long after is killed.
pub const CLOSED_GRACE: Millis = 10_000;
/// A worker that closed its control socket keeps its `MAX_PROCS` place this long (an exiting
/// worker is gone by then; one that is not is replaced).
pub const CLOSED_PLACE: Millis = 1_000;
/// The longest a connection waits for a worker being started while a ready one has room.
pub const START_WAIT: Millis = 1_000;
/// The wait before a start that failed for lack of descriptors is tried again.
pub const NO_DESCRIPTOR_RETRY: Millis = 1_000;

/// The numbers given to workers, shared by every pool of a dispatcher so that a worker id is
/// never reused, across services and reloads.
#[derive(Debug, Clone)]
pub struct WorkerIds(Rc<Cell<WorkerId>>);

impl Default for WorkerIds {
    fn default() -> WorkerIds {
        WorkerIds(Rc::new(Cell::new(1)))
    }
}

impl WorkerIds {
    fn next(&self) -> WorkerId {
        let id = self.0.get();
        self.0.set(id + 1);
        id
    }
}

/// The limits of one service (from `dispatcher.cnf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub min_procs: u64,
    pub max_procs: u64,
    pub min_conns: u64,
    pub max_conns: u64,
    pub max_life_conns: u64,
    /// Milliseconds.
    pub max_life_time: Millis,
    /// Milliseconds.
    pub max_idle_time: Millis,
    pub max_shutdown: u64,
}

impl PoolLimits {
    /// From the checked configuration of a service (times there are seconds).
    pub fn from_config(l: &crate::config::service::Limits) -> PoolLimits {
        PoolLimits {
            min_procs: l.min_procs.value,
            max_procs: l.max_procs.value.max(1),
            min_conns: l.min_conns.value,
            max_conns: l.max_conns.value.max(1),
            max_life_conns: l.max_life_conns.value.max(1),
            max_life_time: l.max_life_time.value.saturating_mul(1000),
            max_idle_time: l.max_idle_time.value.saturating_mul(1000),
            max_shutdown: l.max_shutdown.value.max(1),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was accepted (and PORT_ACCESS let it in), or came back from elsewhere.
    ConnectionArrived(ConnId),
    /// A started worker says it is ready; `acks` when it said `READY ACK`.
    WorkerReady { worker: WorkerId, acks: bool },
    /// The `HANDOFF` of `conn` left for the worker.
    Sent { worker: WorkerId, conn: ConnId },
    /// The `HANDOFF` of `conn` could not be sent: the worker's socket is full (`blocked`) or
    /// broken. The connection is the pool's again.
    SendFailed {
        worker: WorkerId,
        conn: ConnId,
        blocked: bool,
    },
    /// The worker's control socket has room again.
    Writable(WorkerId),
    /// The worker confirms it has the socket of `conn` (`TAKEN`).
    Taken { worker: WorkerId, conn: ConnId },
    /// The worker reports that `conn` has ended (`ENDED`).
    Ended { worker: WorkerId, conn: ConnId },
    /// The worker takes no more connections (`DRAINING`).
    Draining(WorkerId),
    /// The worker closed its control socket: it can neither take nor report anything more.
    ControlClosed(WorkerId),
    /// The event loop found the worker breaking the protocol (what it sent, for the log).
    Violation { worker: WorkerId, what: String },
    /// The worker could not be started; `lack_of_descriptors` when the host, not the image,
    /// is to blame.
    SpawnFailed {
        worker: WorkerId,
        lack_of_descriptors: bool,
    },
    /// A worker process is gone (reaped); `clean` when it exited on its own with status 0.
    WorkerExited { worker: WorkerId, clean: bool },
    /// Time passes; the pool checks lifetimes, idleness, health and MIN_PROCS.
    Tick,
    /// A reload made a new generation: start nothing, drain every worker, give back what waits.
    WindDown,
    /// The dispatcher stops: the same, and what waits or comes back is closed.
    Stop,
}

/// Why a worker is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    LifeConns,
    LifeTime,
    Idle,
    /// A reload made a new generation.
    Reload,
    Stop,
    /// It was unresponsive and has been replaced; it responds again, one too many.
    Replaced,
}

/// Why a worker is killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillReason {
    /// It never said `READY`.
    NotReady,
    /// It has not taken a connection, or read its control socket, for this long.
    Unresponsive { for_ms: Millis },
    /// It broke the protocol: what it sent or did.
    Violation(String),
    /// It closed its control socket and did not exit.
    ClosedControl,
}

/// What the event loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker process with this id.
    Spawn(WorkerId),
    /// Send this connection to that worker (the event loop then reports `Sent` or
    /// `SendFailed`; it keeps its copy of the socket until `Release`).
    HandOff {
        conn: ConnId,
        worker: WorkerId,
    },
    /// The connection is in a worker's hands: close the dispatcher's copy.
    Release(ConnId),
    /// Close the connection unserved (the dispatcher stops).
    Close(ConnId),
    /// The connection waits no longer here: give it to this service's current generation (or
    /// close it when there is none).
    Elsewhere(ConnId),
    /// Tell the worker to take no more connections and exit when its last one ends.
    Retire {
        worker: WorkerId,
        reason: RetireReason,
    },
    /// Kill the worker (its exit is then reported as usual).
    Kill {
        worker: WorkerId,
        reason: KillReason,
    },
    /// Stop / start reading the service's listeners.
    PauseAccepting,
    ResumeAccepting,
    /// Something for the dispatcher log.
    Log(PoolLog),
}

/// Log-worthy decisions, for the event loop to phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolLog {
    /// Every worker is at MAX_CONNS and MAX_PROCS run.
    Saturated { max_procs: u64, max_conns: u64 },
    /// A worker died holding connections.
    WorkerLost { worker: WorkerId, connections: u64 },
    /// A worker failed to start; the next start waits this long.
    StartFailed { worker: WorkerId, retry_in: Millis },
    /// A worker could not be started for lack of descriptors; tried again after this long.
    NoDescriptors { worker: WorkerId, retry_in: Millis },
    /// A worker stopped taking connections (or reading its socket); it gets nothing more.
    Unresponsive { worker: WorkerId, untaken: u64 },
    /// An unresponsive worker took its connections after all.
    Recovered { worker: WorkerId },
    /// Connections a worker never took go to other workers.
    Requeued { worker: WorkerId, connections: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    /// Told to drain, said it drains, or closed its control socket: takes nothing new.
    Retiring,
}

#[derive(Debug, Clone)]
struct Worker {
    state: State,
    /// It said `READY ACK`: hand-offs are confirmed by `TAKEN`.
    acks: bool,
    started: Millis,
    /// Connections it holds or was sent and has not ended, with the time a hand-off still
    /// waiting for its confirmation was made.
    conns: BTreeMap<ConnId, Option<Millis>>,
    /// Connections handed to it in its life.
    served: u64,
    /// When it last held no connection.
    idle_since: Millis,
    /// Due for retirement but waiting for a MAX_SHUTDOWN slot.
    due: Option<RetireReason>,
    /// Since when its control socket has been full.
    blocked_since: Option<Millis>,
    /// Since when it has been unresponsive.
    unresponsive_since: Option<Millis>,
    /// Since when its control socket has been closed.
    closed_since: Option<Millis>,
    /// It has said `READY` (once is all a worker may).
    said_ready: bool,
    /// Asked to be killed; asked once.
    killed: bool,
    /// The worker started to take its place at the end of its life (see [`Worker::expiring`]):
    /// that one holds its `MAX_PROCS` place from its start, as long as it serves; this one
    /// retires once it is due and the successor is ready. Cleared when the successor is gone.
    successor: Option<WorkerId>,
    /// Killed for breaking the protocol: what it sent after is unread, so it may have taken
    /// a connection without our knowing; none of its connections is handed again.
    violated: bool,
}

impl Worker {
    fn active(&self) -> u64 {
        self.conns.len() as u64
    }

    /// Holds one of the `MAX_PROCS` places: not retiring, and not distrusted (an unresponsive
    /// worker is replaced before it is gone). A worker being killed for another reason, or
    /// that closed its control socket, keeps its place until it has exited, so that an image
    /// that fails at once is restarted at the back-off's pace, not as fast as it fails.
    /// One whose successor serves has given its place to it ([`Pool::succeeded`]).
    fn serving(&self) -> bool {
        self.state != State::Retiring && self.unresponsive_since.is_none()
    }

    /// May be handed connections (or will, once ready).
    fn taking(&self) -> bool {
        self.serving() && !self.killed && self.closed_since.is_none()
    }

    /// Handed twice its `MAX_LIFE_CONNS`: it takes nothing more, whatever it waits for (its
    /// successor, a MAX_SHUTDOWN slot).
    fn spent(&self, l: &PoolLimits) -> bool {
        self.served >= l.max_life_conns.saturating_mul(2)
    }

    /// Near the end of its life, so that its successor should be on its way: handed half its
    /// `MAX_LIFE_CONNS` (a start takes milliseconds, in which a busy worker is handed dozens
    /// of connections), or due for `MAX_LIFE_CONNS` or `MAX_LIFE_TIME`. Not one retired for
    /// idleness: the pool shrinks then.
    fn expiring(&self, l: &PoolLimits) -> bool {
        self.state == State::Ready
            && self.taking()
            && match self.due {
                Some(RetireReason::LifeConns | RetireReason::LifeTime) => true,
                Some(_) => false,
                None => self.served >= (l.max_life_conns - l.max_life_conns / 2).max(1),
            }
    }

    /// The next time [`Pool::check_health`] may find something new about this worker: the
    /// bounds it checks, from the same fields.
    fn health_due(&self) -> Option<Millis> {
        if self.killed {
            return None;
        }
        let not_ready = (!self.said_ready).then_some(self.started + READY_TIMEOUT);
        let closed = self.closed_since.map(|c| {
            if self.state == State::Retiring {
                c + CLOSED_GRACE
            } else {
                c + CLOSED_PLACE
            }
        });
        let stuck = match self.unresponsive_since {
            Some(since) => Some(since + KILL_UNRESPONSIVE_AFTER),
            None => [
                self.oldest_unconfirmed().filter(|_| self.acks),
                self.blocked_since,
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t + UNRESPONSIVE_AFTER),
        };
        [not_ready, closed, stuck].into_iter().flatten().min()
    }

    /// The oldest hand-off still waiting for its confirmation.
    fn oldest_unconfirmed(&self) -> Option<Millis> {
        self.conns.values().flatten().copied().min()
    }

    fn unconfirmed(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, t)| t.is_some())
            .map(|(&c, _)| c)
            .collect()
    }
}

/// A snapshot for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub worker: WorkerId,
    pub state: &'static str,
    pub started: Millis,
    pub active: u64,
    pub served: u64,
    /// The worker started to take its place near its end, while that one holds its
    /// `MAX_PROCS` place (it serves).
    pub successor: Option<WorkerId>,
}

/// Whether the pool serves, winds down after a reload, or stops with the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    WindingDown,
    Stopping,
}

/// The pool of one service in one generation.
#[derive(Debug, Clone)]
pub struct Pool {
    limits: PoolLimits,
    workers: BTreeMap<WorkerId, Worker>,
    /// Connections accepted but not yet handed off, with the time they began to wait.
    waiting: VecDeque<(ConnId, Millis)>,
    ids: WorkerIds,
    mode: Mode,
    paused: bool,
    /// Failed starts in a row, and the earliest time the next start may happen.
    failures: u32,
    next_start: Millis,
    /// The earliest time a health bound may be crossed (see [`Pool::next_check`]).
    next_check: Option<Millis>,
}

impl Pool {
    /// A pool numbering its own workers from 1 (tests and a lone pool).
    pub fn new(limits: PoolLimits) -> Pool {
        Pool::with_ids(limits, WorkerIds::default())
    }

    /// A pool whose workers take their numbers from `ids`, shared with the other pools.
    pub fn with_ids(limits: PoolLimits, ids: WorkerIds) -> Pool {
        Pool {
            limits,
            workers: BTreeMap::new(),
            waiting: VecDeque::new(),
            ids,
            mode: Mode::Serving,
            paused: false,
            failures: 0,
            next_start: 0,
            next_check: None,
        }
    }

    /// When the pool wants its next `Tick` to keep the health bounds to the millisecond
    /// (a hand-off unconfirmed for [`UNRESPONSIVE_AFTER`], then [`KILL_UNRESPONSIVE_AFTER`]
    /// more, a start not ready in [`READY_TIMEOUT`], a closed socket's grace), if any bound
    /// is running. Other `Tick` work (lifetimes, MIN_PROCS) keeps the caller's period. It may
    /// be early, never late: a `Tick` computes it again exactly.
    pub fn next_check(&self) -> Option<Millis> {
        self.next_check
    }

    /// Brings [`Pool::next_check`] forward to `at`.
    fn check_by(&mut self, at: Millis) {
        self.next_check = Some(self.next_check.map_or(at, |t| t.min(at)));
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Connections accepted and waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the listeners should be read.
    pub fn accepting(&self) -> bool {
        !self.paused && self.mode == Mode::Serving
    }

    /// Workers still running (in any state).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Whether at least MIN_PROCS workers (at most MAX_PROCS) have said READY and serve: what
    /// a service manager is told the dispatcher is ready on.
    pub fn min_procs_ready(&self) -> bool {
        let ready = self
            .workers
            .values()
            .filter(|w| w.state == State::Ready && w.taking())
            .count() as u64;
        ready >= self.limits.min_procs.min(self.limits.max_procs)
    }

    /// How long the next start is held back after failed starts (milliseconds), if it is.
    pub fn backoff(&self, now: Millis) -> Option<Millis> {
        (self.failures > 0 && self.next_start > now).then(|| self.next_start - now)
    }

    /// Whether `worker` is one of this pool's.
    pub fn has_worker(&self, worker: WorkerId) -> bool {
        self.workers.contains_key(&worker)
    }

    pub fn status(&self) -> Vec<WorkerStatus> {
        self.workers
            .iter()
            .map(|(&id, w)| WorkerStatus {
                worker: id,
                state: match w.state {
                    _ if w.killed => "killed",
                    _ if w.unresponsive_since.is_some() => "unresponsive",
                    State::Starting => "starting",
                    State::Ready if w.due.is_some() => "due",
                    State::Ready => "ready",
                    State::Retiring => "retiring",
                },
                started: w.started,
                active: w.active(),
                served: w.served,
                successor: w.successor.filter(|_| self.succeeded(w)),
            })
            .collect()
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::ConnectionArrived(conn) => match self.mode {
                Mode::Serving => self.waiting.push_back((conn, now)),
                Mode::WindingDown => out.push(Action::Elsewhere(conn)),
                Mode::Stopping => out.push(Action::Close(conn)),
            },
            Event::WorkerReady { worker, acks } => self.ready(worker, acks, now, &mut out),
            Event::Sent { worker, conn } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    if !w.acks && w.conns.get(&conn).is_some_and(Option::is_some) {
                        w.conns.insert(conn, None);
                        out.push(Action::Release(conn));
                    }
                }
            }
            Event::SendFailed {
                worker,
                conn,
                blocked,
            } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    if w.conns.remove(&conn).is_some() {
                        w.served = w.served.saturating_sub(1);
                        self.waiting.push_front((conn, now));
                    }
                    if blocked {
                        let since = *w.blocked_since.get_or_insert(now);
                        self.check_by(since + UNRESPONSIVE_AFTER);
                    } else {
                        self.stops_taking(worker, now, true, &mut out);
                    }
                }
                self.give_back_waiting(&mut out);
            }
            Event::Writable(worker) => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.blocked_since = None;
                }
            }
            Event::Taken { worker, conn } => self.taken(worker, conn, &mut out),
            Event::Ended { worker, conn } => self.ended(worker, conn, now, &mut out),
            Event::Draining(worker) => self.stops_taking(worker, now, false, &mut out),
            Event::ControlClosed(worker) => self.stops_taking(worker, now, true, &mut out),
            Event::Violation { worker, what } => {
                self.kill(worker, KillReason::Violation(what), &mut out)
            }
            Event::SpawnFailed {
                worker,
                lack_of_descriptors,
            } => {
                if lack_of_descriptors && self.workers.remove(&worker).is_some() {
                    self.forget_successor(worker, None);
                    self.next_start = now + NO_DESCRIPTOR_RETRY;
                    out.push(Action::Log(PoolLog::NoDescriptors {
                        worker,
                        retry_in: NO_DESCRIPTOR_RETRY,
                    }));
                } else {
                    self.exited(worker, false, now, &mut out);
                }
            }
            Event::WorkerExited { worker, clean } => self.exited(worker, clean, now, &mut out),
            Event::Tick => {
                self.expire(now);
                self.check_health(now, &mut out);
                self.next_check = self.workers.values().filter_map(Worker::health_due).min();
            }
            Event::WindDown | Event::Stop => {
                let (mode, reason) = if event == Event::Stop {
                    (Mode::Stopping, RetireReason::Stop)
                } else {
                    (Mode::WindingDown, RetireReason::Reload)
                };
                if self.mode != Mode::Stopping {
                    self.mode = mode;
                }
                for (&id, w) in self.workers.iter_mut() {
                    if w.state != State::Retiring {
                        w.state = State::Retiring;
                        out.push(Action::Retire { worker: id, reason });
                    }
                }
                self.give_back_waiting(&mut out);
            }
        }
        self.rebalance(now, &mut out);
        out
    }

    fn ready(&mut self, id: WorkerId, acks: bool, now: Millis, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.said_ready {
            return self.kill(id, KillReason::Violation("a second READY".into()), out);
        }
        w.said_ready = true;
        w.acks = acks;
        w.idle_since = now;
        if w.state == State::Starting {
            w.state = State::Ready;
        }
    }

    fn taken(&mut self, id: WorkerId, conn: ConnId, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        match w.conns.get(&conn) {
            Some(Some(_)) if w.acks => {
                w.conns.insert(conn, None);
                out.push(Action::Release(conn));
            }
            _ => {
                let what = format!("TAKEN {conn} for a connection it was not waiting to take");
                self.kill(id, KillReason::Violation(what), out);
            }
        }
    }

    fn ended(&mut self, id: WorkerId, conn: ConnId, now: Millis, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        match w.conns.remove(&conn) {
            Some(unconfirmed) => {
                // An ENDED before TAKEN confirms the hand-off too: the worker had the socket.
                if unconfirmed.is_some() {
                    out.push(Action::Release(conn));
                }
                if w.conns.is_empty() {
                    w.idle_since = now;
                }
            }
            None => {
                let what = format!("ENDED {conn} for a connection it does not hold");
                self.kill(id, KillReason::Violation(what), out);
            }
        }
    }

    /// `DRAINING` or a closed control socket: nothing more for this worker, and what it never
    /// took goes elsewhere (it took, and confirmed, everything it will ever take). One that
    /// drains is retiring; one whose socket closed keeps its place until it exits.
    fn stops_taking(&mut self, id: WorkerId, now: Millis, closed: bool, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if closed {
            let since = *w.closed_since.get_or_insert(now);
            self.check_by(since + CLOSED_PLACE);
        } else {
            w.state = State::Retiring;
        }
        // A plain-READY worker's hand-offs are confirmed when sent: none is left unconfirmed.
        self.requeue_untaken(id, now, out);
    }

    /// Gives the connections a worker never took back to the waiting queue, in front.
    fn requeue_untaken(&mut self, id: WorkerId, now: Millis, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let untaken = w.unconfirmed();
        for c in &untaken {
            w.conns.remove(c);
        }
        if !untaken.is_empty() {
            out.push(Action::Log(PoolLog::Requeued {
                worker: id,
                connections: untaken.len() as u64,
            }));
        }
        // They have waited already: they go to any worker with room, not to one yet to start.
        let since = now.saturating_sub(START_WAIT);
        for c in untaken.into_iter().rev() {
            self.waiting.push_front((c, since));
        }
        self.give_back_waiting(out);
    }

    /// Outside normal service nothing waits here: it goes to the new generation or is closed.
    fn give_back_waiting(&mut self, out: &mut Vec<Action>) {
        let give = match self.mode {
            Mode::Serving => return,
            Mode::WindingDown => Action::Elsewhere,
            Mode::Stopping => Action::Close,
        };
        out.extend(self.waiting.drain(..).map(|(c, _)| give(c)));
    }

    fn kill(&mut self, id: WorkerId, reason: KillReason, out: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&id) {
            if !w.killed {
                w.killed = true;
                w.violated = matches!(reason, KillReason::Violation(_));
                out.push(Action::Kill { worker: id, reason });
            }
        }
    }

    fn exited(&mut self, id: WorkerId, clean: bool, now: Millis, out: &mut Vec<Action>) {
        if !self.workers.contains_key(&id) {
            return;
        }
        // The process is gone: what it never took cannot be served twice any more. Unless it
        // broke the protocol: its confirmations may have been left unread, so those clients
        // are closed (they try again) rather than risk a second greeting on a live session.
        if self.workers.get(&id).is_some_and(|w| w.violated) {
            if let Some(w) = self.workers.get_mut(&id) {
                for c in w.unconfirmed() {
                    w.conns.remove(&c);
                    out.push(Action::Close(c));
                }
            }
        }
        self.requeue_untaken(id, now, out);
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        self.forget_successor(id, w.successor);
        if w.active() > 0 {
            out.push(Action::Log(PoolLog::WorkerLost {
                worker: id,
                connections: w.active(),
            }));
        }
        let young = now.saturating_sub(w.started) < STABLE_AFTER;
        let failed_start = w.served == 0 && (!w.said_ready || (!clean && young));
        if failed_start {
            let delay = BACKOFF_FIRST
                .saturating_mul(1 << self.failures.min(6))
                .min(BACKOFF_MAX);
            self.failures += 1;
            self.next_start = now + delay;
            out.push(Action::Log(PoolLog::StartFailed {
                worker: id,
                retry_in: delay,
            }));
        } else if w.served > 0 {
            self.failures = 0;
        }
    }

    /// A successor that is gone (failed to start, died) no longer holds its predecessor's
    /// place: its own successor does, if it had one (the place went down the line), else the
    /// predecessor holds it again, and may get a new successor.
    fn forget_successor(&mut self, gone: WorkerId, its_successor: Option<WorkerId>) {
        for w in self.workers.values_mut() {
            if w.successor == Some(gone) {
                w.successor = its_successor;
            }
        }
    }

    /// Marks workers due for retirement by age or idleness.
    fn expire(&mut self, now: Millis) {
        let l = self.limits;
        let mut serving = self.serving_count();
        // A successor waiting for its predecessor's end is idle by design, not for want of
        // clients: it is not retired for that.
        let successors: Vec<WorkerId> = self
            .workers
            .keys()
            .copied()
            .filter(|&id| self.waits_for_predecessor(id))
            .collect();
        for (id, w) in self.workers.iter_mut() {
            if w.state != State::Ready || w.due.is_some() || successors.contains(id) {
                continue;
            }
            if now.saturating_sub(w.started) >= l.max_life_time {
                w.due = Some(RetireReason::LifeTime);
            } else if w.conns.is_empty()
                && serving > l.min_procs
                && now.saturating_sub(w.idle_since) >= l.max_idle_time
            {
                w.due = Some(RetireReason::Idle);
                serving -= 1;
            }
        }
    }

    /// Kills workers that never got ready, stay unresponsive, or closed their socket and live
    /// on; marks and clears unresponsiveness.
    fn check_health(&mut self, now: Millis, out: &mut Vec<Action>) {
        let mut kills = Vec::new();
        let mut recovered = Vec::new();
        for (&id, w) in self.workers.iter_mut() {
            if w.killed {
                continue;
            }
            if !w.said_ready && now.saturating_sub(w.started) >= READY_TIMEOUT {
                kills.push((id, KillReason::NotReady));
                continue;
            }
            if let Some(closed) = w.closed_since {
                let since = now.saturating_sub(closed);
                if since >= CLOSED_GRACE {
                    kills.push((id, KillReason::ClosedControl));
                    continue;
                }
                // Not exiting, as a worker that closes its socket normally does at once: its
                // place goes to a replacement.
                if since >= CLOSED_PLACE && w.state != State::Retiring {
                    w.state = State::Retiring;
                }
            }
            let late = |since: Option<Millis>| {
                since.is_some_and(|t| now.saturating_sub(t) >= UNRESPONSIVE_AFTER)
            };
            let stuck = (w.acks && late(w.oldest_unconfirmed())) || late(w.blocked_since);
            match (stuck, w.unresponsive_since) {
                (true, None) => {
                    w.unresponsive_since = Some(now);
                    out.push(Action::Log(PoolLog::Unresponsive {
                        worker: id,
                        untaken: w.unconfirmed().len() as u64,
                    }));
                }
                (true, Some(since)) if now.saturating_sub(since) >= KILL_UNRESPONSIVE_AFTER => {
                    let first = [w.oldest_unconfirmed(), w.blocked_since]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(since);
                    kills.push((
                        id,
                        KillReason::Unresponsive {
                            for_ms: now.saturating_sub(first),
                        },
                    ));
                }
                (false, Some(_)) => {
                    w.unresponsive_since = None;
                    out.push(Action::Log(PoolLog::Recovered { worker: id }));
                    recovered.push(id);
                }
                _ => {}
            }
        }
        for (id, reason) in kills {
            self.kill(id, reason, out);
        }
        // A replacement was started meanwhile: the one that came back is one too many.
        for id in recovered {
            if self.serving_count() > self.limits.max_procs {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.state = State::Retiring;
                    out.push(Action::Retire {
                        worker: id,
                        reason: RetireReason::Replaced,
                    });
                }
            }
        }
    }

    /// Workers holding one of the `MAX_PROCS` places ([`Worker::serving`]).
    fn serving_count(&self) -> u64 {
        self.workers
            .values()
            .filter(|w| w.serving() && !self.succeeded(w))
            .count() as u64
    }

    /// Whether `w` has given its `MAX_PROCS` place away: its successor, or one down the
    /// line of successors (one that stopped serving passes the place on to its own), serves.
    fn succeeded(&self, w: &Worker) -> bool {
        let mut next = w.successor;
        // Successors are always younger: the line ends; the bound is for the reader.
        for _ in 0..self.workers.len() {
            match next.and_then(|s| self.workers.get(&s)) {
                Some(s) if s.serving() => return true,
                Some(s) => next = s.successor,
                None => return false,
            }
        }
        false
    }

    /// Whether a worker may be started at this moment.
    fn can_start_now(&self, now: Millis) -> bool {
        self.mode == Mode::Serving
            && self.serving_count() < self.limits.max_procs
            && now >= self.next_start
    }

    /// After every event: retire what is due, hand off what waits, start what is needed, and
    /// pause or resume accepting.
    fn rebalance(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.hand_over(now, out);
        while let Some(&(conn, since)) = self.waiting.front() {
            let waited_long = now.saturating_sub(since) >= START_WAIT;
            match self.pick(now, waited_long) {
                Some(id) => {
                    self.waiting.pop_front();
                    self.hand_off(conn, id, now, out);
                    self.hand_over(now, out);
                }
                None => break,
            }
        }
        // Start workers: for MIN_PROCS, for connections no ready worker can take, and
        // ahead of need when every worker is busy enough.
        while self.should_start(now) {
            self.start_worker(now, out);
        }
        if self.mode != Mode::Serving {
            return;
        }
        let full = self.capacity() == 0;
        if full && !self.paused {
            self.paused = true;
            out.push(Action::PauseAccepting);
            if self.serving_count() >= self.limits.max_procs {
                out.push(Action::Log(PoolLog::Saturated {
                    max_procs: self.limits.max_procs,
                    max_conns: self.limits.max_conns,
                }));
            }
        } else if !full && self.paused {
            self.paused = false;
            out.push(Action::ResumeAccepting);
        }
    }

    /// A new worker, starting.
    fn start_worker(&mut self, now: Millis, out: &mut Vec<Action>) -> WorkerId {
        let id = self.ids.next();
        self.check_by(now + READY_TIMEOUT);
        self.workers.insert(
            id,
            Worker {
                state: State::Starting,
                acks: false,
                started: now,
                conns: BTreeMap::new(),
                served: 0,
                idle_since: now,
                due: None,
                blocked_since: None,
                unresponsive_since: None,
                closed_since: None,
                said_ready: false,
                killed: false,
                violated: false,
                successor: None,
            },
        );
        out.push(Action::Spawn(id));
        id
    }

    /// The ready worker a new connection goes to, if any may take one now. Workers due for
    /// retirement (waiting for their successor or a MAX_SHUTDOWN slot) only when no other can.
    fn pick(&self, now: Millis, waited_long: bool) -> Option<WorkerId> {
        let l = self.limits;
        let ready = |due: bool| {
            self.workers.iter().filter(move |(&id, w)| {
                w.state == State::Ready
                    && w.taking()
                    && w.blocked_since.is_none()
                    && w.active() < l.max_conns
                    && !w.spent(&l)
                    && w.due.is_some() == due
                    && !self.waits_for_predecessor(id)
            })
        };
        // Below MIN_CONNS: fill the fullest first (ties: the oldest worker).
        for due in [false, true] {
            if let Some((&id, _)) = ready(due)
                .filter(|(_, w)| w.active() < l.min_conns)
                .max_by_key(|(&id, w)| (w.active(), std::cmp::Reverse(id)))
            {
                return Some(id);
            }
        }
        // Everyone busy enough: a new worker is preferred while one may be started now.
        if self.can_start_now(now) && !waited_long {
            return None;
        }
        [false, true].into_iter().find_map(|due| {
            ready(due)
                .min_by_key(|(&id, w)| (w.active(), id))
                .map(|(&id, _)| id)
        })
    }

    /// Whether `id` is the successor of a worker that still takes connections (ready, not
    /// due): the two share one `MAX_PROCS` place, and one of them takes connections at a
    /// time, so the place never holds more than `MAX_CONNS` new sessions; the successor
    /// takes over once its predecessor is due.
    fn waits_for_predecessor(&self, id: WorkerId) -> bool {
        self.workers.values().any(|p| {
            p.successor == Some(id) && p.state == State::Ready && p.taking() && p.due.is_none()
        })
    }

    fn hand_off(&mut self, conn: ConnId, id: WorkerId, now: Millis, out: &mut Vec<Action>) {
        self.check_by(now + UNRESPONSIVE_AFTER);
        if let Some(w) = self.workers.get_mut(&id) {
            w.conns.insert(conn, Some(now));
            w.served += 1;
            if w.served >= self.limits.max_life_conns && w.due.is_none() {
                w.due = Some(RetireReason::LifeConns);
            }
        }
        out.push(Action::HandOff { conn, worker: id });
    }

    /// Starts the successors of workers near the end of their lives, then retires due
    /// workers whose successor is not on its way (ready, or none) and that have taken every
    /// connection handed to them, while fewer than MAX_SHUTDOWN are retiring.
    fn hand_over(&mut self, now: Millis, out: &mut Vec<Action>) {
        let l = self.limits;
        // A successor takes its predecessor's MAX_PROCS place, so one may start while the
        // predecessor still holds it; the back-off after failed starts holds it back too.
        let heirless: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.expiring(&l) && w.successor.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in heirless {
            let may_start = self.mode == Mode::Serving
                && now >= self.next_start
                && self.serving_count() <= l.max_procs;
            if !may_start {
                break;
            }
            let successor = self.start_worker(now, out);
            if let Some(w) = self.workers.get_mut(&id) {
                w.successor = Some(successor);
            }
        }
        let on_its_way: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == State::Starting && w.taking())
            .map(|(&id, _)| id)
            .collect();
        let mut retiring = self
            .workers
            .values()
            .filter(|w| w.state == State::Retiring)
            .count() as u64;
        for (&id, w) in self.workers.iter_mut() {
            if retiring >= l.max_shutdown {
                break;
            }
            let Some(reason) = w.due.filter(|_| w.state == State::Ready) else {
                continue;
            };
            // Not while a hand-off to it waits for its TAKEN: a DRAIN right behind a HANDOFF
            // may be read first by another of its threads, and the connection would go to a
            // second worker for nothing. Its TAKEN comes within microseconds (or the health
            // bounds deal with it).
            if w.acks && w.oldest_unconfirmed().is_some() {
                continue;
            }
            let waits = w.successor.is_some_and(|s| on_its_way.contains(&s)) && !w.spent(&l);
            if !waits {
                w.state = State::Retiring;
                retiring += 1;
                out.push(Action::Retire { worker: id, reason });
            }
        }
    }

    fn should_start(&self, now: Millis) -> bool {
        let l = self.limits;
        if !self.can_start_now(now) {
            return false;
        }
        let serving = self.serving_count();
        if serving < l.min_procs {
            return true;
        }
        let starting = self
            .workers
            .values()
            .filter(|w| w.state == State::Starting && w.taking())
            .count() as u64;
        // Connections waiting beyond what the starting workers will take.
        if self.waiting.len() as u64 > starting * l.max_conns {
            return true;
        }
        // Ahead of need: every worker taking connections busy enough, none on its way.
        // A successor waiting for its predecessor counts: it is a ready process, the one to
        // take the place's connections next.
        let mut takers = self
            .workers
            .values()
            .filter(|w| w.state == State::Ready && w.taking())
            .peekable();
        starting == 0 && takers.peek().is_some() && takers.all(|w| w.active() >= l.min_conns)
    }

    /// Connections the pool could still take: free slots on serving workers, slots of workers
    /// it may still start, less the connections already waiting.
    fn capacity(&self) -> u64 {
        let l = self.limits;
        let free: u64 = self
            .workers
            .iter()
            .filter(|(&id, w)| w.taking() && !w.spent(&l) && !self.waits_for_predecessor(id))
            .map(|(_, w)| l.max_conns.saturating_sub(w.active()))
            .sum();
        let startable = l.max_procs.saturating_sub(self.serving_count()) * l.max_conns;
        (free + startable).saturating_sub(self.waiting.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PoolLimits {
        PoolLimits {
            min_procs: 0,
            max_procs: 2,
            min_conns: 2,
            max_conns: 3,
            max_life_conns: 100,
            max_life_time: 86_400_000,
            max_idle_time: 600_000,
            max_shutdown: 2,
        }
    }

    fn spawned(actions: &[Action]) -> Vec<WorkerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn(w) => Some(*w),
                _ => None,
            })
            .collect()
    }

    fn handed(actions: &[Action]) -> Vec<(ConnId, WorkerId)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::HandOff { conn, worker } => Some((*conn, *worker)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn min_procs_ready_only_once_min_procs_workers_said_ready() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 2,
            ..limits()
        });
        assert!(!p.min_procs_ready());
        p.handle(Event::Tick, 0);
        assert!(!p.min_procs_ready(), "started is not ready");
        ready_acking(&mut p, 1, 10);
        assert!(!p.min_procs_ready(), "one of two");
        ready_acking(&mut p, 2, 20);
        assert!(p.min_procs_ready());
        let none = Pool::new(PoolLimits {
            min_procs: 0,
            ..limits()
        });
        assert!(none.min_procs_ready(), "MIN_PROCS=0 is ready at once");
    }

    #[test]
    fn min_procs_workers_start_before_any_connection() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 2,
            ..limits()
        });
        let a = p.handle(Event::Tick, 0);
        assert_eq!(spawned(&a), [1, 2]);
        assert!(spawned(&p.handle(Event::Tick, 10)).is_empty());
    }

    #[test]
    fn first_connection_starts_a_worker_and_waits_for_it() {
        let mut p = Pool::new(limits());
        let a = p.handle(Event::ConnectionArrived(7), 0);
        assert_eq!(spawned(&a), [1]);
        assert!(handed(&a).is_empty());
        assert_eq!(p.waiting(), 1);
        let a = p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            5,
        );
        assert_eq!(handed(&a), [(7, 1)]);
    }

    #[test]
    fn a_worker_is_filled_to_busy_enough_before_another_starts() {
        let mut p = Pool::new(limits());
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        let a = p.handle(Event::ConnectionArrived(2), 1);
        assert_eq!(handed(&a), [(2, 1)], "worker 1 reaches MIN_CONNS=2");
        assert_eq!(
            spawned(&a),
            [2],
            "then everyone is busy enough: start one ahead"
        );
    }

    #[test]
    fn eight_clients_on_two_workers_of_three_six_served_two_wait() {
        let mut p = Pool::new(limits());
        let mut all = Vec::new();
        let mut readied = Vec::new();
        for c in 1..=8 {
            all.extend(p.handle(Event::ConnectionArrived(c), 0));
            for w in spawned(&all) {
                if !readied.contains(&w) {
                    readied.push(w);
                    all.extend(p.handle(
                        Event::WorkerReady {
                            worker: w,
                            acks: false,
                        },
                        0,
                    ));
                }
            }
        }
        let h = handed(&all);
        assert_eq!(h.len(), 6, "{all:?}");
        assert!(spawned(&all).len() <= 2);
        assert_eq!(p.waiting(), 2);
        assert!(!p.accepting());
        assert!(all.contains(&Action::PauseAccepting));
        // One leaves: one waiting connection takes its slot.
        let (c, w) = h[0];
        let a = p.handle(Event::Ended { worker: w, conn: c }, 1);
        assert_eq!(handed(&a), [(7, w)]);
    }

    #[test]
    fn saturation_pauses_and_a_free_slot_resumes() {
        let mut p = Pool::new(PoolLimits {
            max_procs: 1,
            max_conns: 1,
            min_conns: 1,
            ..limits()
        });
        // The one slot there will ever be is taken by the first connection: stop reading.
        let a = p.handle(Event::ConnectionArrived(1), 0);
        assert!(a.contains(&Action::PauseAccepting), "{a:?}");
        assert!(a
            .iter()
            .any(|x| matches!(x, Action::Log(PoolLog::Saturated { .. }))));
        assert_eq!(
            handed(&p.handle(
                Event::WorkerReady {
                    worker: 1,
                    acks: false
                },
                0
            )),
            [(1, 1)]
        );
        p.handle(Event::Sent { worker: 1, conn: 1 }, 0);
        assert!(!p.accepting());
        let a = p.handle(Event::Ended { worker: 1, conn: 1 }, 5);
        assert_eq!(a, [Action::ResumeAccepting]);
    }

    #[test]
    fn a_successor_starts_at_half_life_and_the_worker_retires_once_it_is_ready() {
        let mut p = one_worker_serving(4);
        let a = p.handle(Event::ConnectionArrived(2), 1);
        assert_eq!(handed(&a), [(2, 1)]);
        assert_eq!(
            spawned(&a),
            [2],
            "handed half its MAX_LIFE_CONNS: its successor starts, beyond MAX_PROCS=1"
        );
        assert_eq!(p.status()[0].successor, Some(2));
        assert_eq!(p.status()[0].state, "ready");
        for c in 3..=4 {
            let a = p.handle(Event::ConnectionArrived(c), 2);
            assert_eq!(handed(&a), [(c, 1)], "the old one serves out its life");
            assert!(
                spawned(&a).is_empty() && !a.iter().any(|x| matches!(x, Action::Retire { .. }))
            );
        }
        assert_eq!(p.status()[0].state, "due");
        let a = ready_plain(&mut p, 2, 3);
        assert_eq!(
            a,
            [Action::Retire {
                worker: 1,
                reason: RetireReason::LifeConns
            }]
        );
        let a = p.handle(Event::ConnectionArrived(5), 4);
        assert_eq!(handed(&a), [(5, 2)]);
        assert!(
            spawned(&a).is_empty(),
            "no start beyond the successor: {a:?}"
        );
    }

    #[test]
    fn a_due_worker_is_told_drain_only_once_it_has_taken_its_last_hand_off() {
        let mut p = Pool::new(PoolLimits {
            max_life_conns: 4,
            max_procs: 1,
            max_conns: 10,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::Taken { worker: 1, conn: 1 }, 0);
        let a = p.handle(Event::ConnectionArrived(2), 1);
        assert_eq!(spawned(&a), [2], "its successor at half its life");
        p.handle(Event::Taken { worker: 1, conn: 2 }, 1);
        ready_acking(&mut p, 2, 2);
        p.handle(Event::ConnectionArrived(3), 3);
        p.handle(Event::Taken { worker: 1, conn: 3 }, 3);
        // The hand-off that makes it due: its DRAIN waits for this TAKEN, or another of its
        // threads could read the DRAIN first and the client would go to the successor.
        let a = p.handle(Event::ConnectionArrived(4), 4);
        assert_eq!(handed(&a), [(4, 1)]);
        assert!(
            !a.iter().any(|x| matches!(x, Action::Retire { .. })),
            "retired with a hand-off unconfirmed: {a:?}"
        );
        assert_eq!(p.status()[0].state, "due");
        let a = p.handle(Event::ConnectionArrived(5), 4);
        assert_eq!(handed(&a), [(5, 2)], "the successor takes the next: {a:?}");
        let a = p.handle(Event::Taken { worker: 1, conn: 4 }, 5);
        assert!(
            a.contains(&Action::Retire {
                worker: 1,
                reason: RetireReason::LifeConns
            }),
            "{a:?}"
        );
    }

    #[test]
    fn a_due_worker_serves_while_its_successor_starts_no_client_waits() {
        let mut p = one_worker_serving(2);
        assert_eq!(
            p.status().len(),
            2,
            "successor started after the first hand-off"
        );
        // Handed its MAX_LIFE_CONNS, but its successor is not ready: it takes more, up to
        // twice MAX_LIFE_CONNS, rather than make clients wait for a start.
        for c in 2..=3 {
            let a = p.handle(Event::ConnectionArrived(c), 1);
            assert_eq!(handed(&a), [(c, 1)], "{a:?}");
            assert!(!a.iter().any(|x| matches!(x, Action::Retire { .. })));
        }
        let a = p.handle(Event::ConnectionArrived(4), 2);
        assert_eq!(handed(&a), [(4, 1)]);
        assert!(
            a.contains(&Action::Retire {
                worker: 1,
                reason: RetireReason::LifeConns
            }),
            "handed twice MAX_LIFE_CONNS: retired even though its successor is slow: {a:?}"
        );
        let a = p.handle(Event::ConnectionArrived(5), 3);
        assert!(handed(&a).is_empty(), "never to the retiring worker: {a:?}");
        let a = ready_plain(&mut p, 2, 4);
        assert_eq!(handed(&a), [(5, 2)]);
    }

    #[test]
    fn a_failed_successor_leaves_its_predecessor_retired_as_before() {
        let mut p = one_worker_serving(2);
        p.handle(Event::ConnectionArrived(2), 1);
        let a = p.handle(
            Event::WorkerExited {
                worker: 2,
                clean: false,
            },
            2,
        );
        assert!(
            a.contains(&Action::Retire {
                worker: 1,
                reason: RetireReason::LifeConns
            }),
            "no successor on its way (the next start waits for the back-off): {a:?}"
        );
        assert!(
            spawned(&a).is_empty(),
            "the back-off holds the next start: {a:?}"
        );
        let a = p.handle(Event::ConnectionArrived(3), 2 + BACKOFF_FIRST);
        assert_eq!(spawned(&a), [3], "a replacement after the back-off");
    }

    #[test]
    fn max_life_time_retires_on_a_tick_without_killing() {
        let mut p = Pool::new(PoolLimits {
            max_life_time: 1_000,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        let a = p.handle(Event::Tick, 1_000);
        assert_eq!(spawned(&a), [2], "its successor first");
        assert!(!a.iter().any(|x| matches!(x, Action::Retire { .. })));
        let a = ready_plain(&mut p, 2, 1_001);
        assert!(a.contains(&Action::Retire {
            worker: 1,
            reason: RetireReason::LifeTime
        }));
        assert_eq!(
            p.status()[0].active,
            1,
            "its session is still counted, not cut"
        );
    }

    #[test]
    fn idle_workers_above_min_procs_retire() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            max_idle_time: 100,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        let a = p.handle(Event::Tick, 500);
        assert!(
            !a.iter().any(|x| matches!(x, Action::Retire { .. })),
            "the MIN_PROCS one stays"
        );
    }

    #[test]
    fn max_shutdown_bounds_retiring_workers() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 3,
            max_procs: 3,
            max_life_time: 10,
            max_shutdown: 1,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        for w in 1..=3 {
            p.handle(
                Event::WorkerReady {
                    worker: w,
                    acks: false,
                },
                0,
            );
            p.handle(Event::ConnectionArrived(w), 0);
        }
        let a = p.handle(Event::Tick, 20);
        assert_eq!(spawned(&a), [4, 5, 6], "each due worker gets its successor");
        let mut a = Vec::new();
        for w in 4..=6 {
            a.extend(ready_plain(&mut p, w, 21));
        }
        let retired: Vec<_> = a
            .iter()
            .filter(|x| matches!(x, Action::Retire { .. }))
            .collect();
        assert_eq!(retired.len(), 1, "{a:?}");
        let states: Vec<&str> = p.status().iter().map(|s| s.state).collect();
        assert_eq!(states.iter().filter(|s| **s == "retiring").count(), 1);
        assert_eq!(states.iter().filter(|s| **s == "due").count(), 2);
    }

    #[test]
    fn a_worker_that_dies_frees_its_slots_and_is_logged() {
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        p.handle(Event::Sent { worker: 1, conn: 1 }, 0);
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            5,
        );
        assert!(a.contains(&Action::Log(PoolLog::WorkerLost {
            worker: 1,
            connections: 1
        })));
        let a = p.handle(Event::ConnectionArrived(2), 6);
        assert_eq!(spawned(&a), [2], "replaced at once: it had served");
    }

    #[test]
    fn a_ready_worker_that_dies_young_unserved_is_a_failed_start_an_older_one_is_not() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            100,
        );
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            2_000,
        );
        assert!(a
            .iter()
            .any(|x| matches!(x, Action::Log(PoolLog::StartFailed { worker: 1, .. }))));
        assert!(spawned(&a).is_empty(), "backs off");
        assert_eq!(spawned(&p.handle(Event::Tick, 3_000)), [2]);
        p.handle(
            Event::WorkerReady {
                worker: 2,
                acks: false,
            },
            3_100,
        );
        // Killed a minute later, never having had a connection: replaced at once.
        let a = p.handle(
            Event::WorkerExited {
                worker: 2,
                clean: false,
            },
            3_000 + 60_000,
        );
        assert!(!a
            .iter()
            .any(|x| matches!(x, Action::Log(PoolLog::StartFailed { .. }))));
        assert_eq!(spawned(&a), [3]);
    }

    #[test]
    fn a_worker_that_never_gets_ready_is_killed_and_counts_as_a_failed_start() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        assert!(!p
            .handle(Event::Tick, READY_TIMEOUT - 1)
            .contains(&Action::Kill {
                worker: 1,
                reason: KillReason::NotReady
            }));
        assert!(p
            .handle(Event::Tick, READY_TIMEOUT)
            .contains(&Action::Kill {
                worker: 1,
                reason: KillReason::NotReady
            }));
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            READY_TIMEOUT + 5,
        );
        assert!(a
            .iter()
            .any(|x| matches!(x, Action::Log(PoolLog::StartFailed { worker: 1, .. }))));
    }

    #[test]
    fn failed_starts_back_off_exponentially_not_a_fork_storm() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            10,
        );
        assert!(a.contains(&Action::Log(PoolLog::StartFailed {
            worker: 1,
            retry_in: 1_000
        })));
        assert!(spawned(&a).is_empty());
        assert!(spawned(&p.handle(Event::Tick, 500)).is_empty());
        assert_eq!(spawned(&p.handle(Event::Tick, 1_010)), [2]);
        let a = p.handle(
            Event::WorkerExited {
                worker: 2,
                clean: false,
            },
            1_020,
        );
        assert!(a.contains(&Action::Log(PoolLog::StartFailed {
            worker: 2,
            retry_in: 2_000
        })));
    }

    /// A pool of `MAX_PROCS=1` whose one worker is ready and holds connection 1.
    fn one_worker_serving(max_life_conns: u64) -> Pool {
        let mut p = Pool::new(PoolLimits {
            max_life_conns,
            max_procs: 1,
            max_conns: 10,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        ready_plain(&mut p, 1, 0);
        p
    }

    /// Worker `w` says `READY` (without `ACK`).
    fn ready_plain(p: &mut Pool, w: WorkerId, now: Millis) -> Vec<Action> {
        p.handle(
            Event::WorkerReady {
                worker: w,
                acks: false,
            },
            now,
        )
    }

    fn ready_acking(p: &mut Pool, w: WorkerId, now: Millis) -> Vec<Action> {
        p.handle(
            Event::WorkerReady {
                worker: w,
                acks: true,
            },
            now,
        )
    }

    fn killed(actions: &[Action]) -> Vec<(WorkerId, KillReason)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Kill { worker, reason } => Some((*worker, reason.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_dispatcher_copy_is_released_only_when_the_worker_confirms() {
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        let a = ready_acking(&mut p, 1, 0);
        assert_eq!(handed(&a), [(1, 1)]);
        let a = p.handle(Event::Sent { worker: 1, conn: 1 }, 1);
        assert!(!a.contains(&Action::Release(1)), "sent is not taken: {a:?}");
        let a = p.handle(Event::Taken { worker: 1, conn: 1 }, 2);
        assert!(a.contains(&Action::Release(1)));
        // A plain-READY worker: confirmed when sent.
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        let a = p.handle(Event::Sent { worker: 1, conn: 1 }, 1);
        assert!(a.contains(&Action::Release(1)));
    }

    #[test]
    fn a_worker_that_does_not_take_its_connection_is_distrusted_then_killed_and_its_connection_goes_elsewhere(
    ) {
        let mut p = Pool::new(PoolLimits {
            min_procs: 2,
            min_conns: 1,
            max_conns: 5,
            max_procs: 3,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        ready_acking(&mut p, 1, 0);
        ready_acking(&mut p, 2, 0);
        let a = p.handle(Event::ConnectionArrived(10), 100);
        let [(10, stuck)] = handed(&a)[..] else {
            panic!("{a:?}")
        };
        p.handle(
            Event::Sent {
                worker: stuck,
                conn: 10,
            },
            100,
        );
        let a = p.handle(Event::Tick, 100 + UNRESPONSIVE_AFTER);
        assert!(a.contains(&Action::Log(PoolLog::Unresponsive {
            worker: stuck,
            untaken: 1
        })));
        // Nothing more for it: the next connection goes to the other worker.
        let other = 3 - stuck;
        let a = p.handle(Event::ConnectionArrived(11), 700);
        assert_eq!(handed(&a), [(11, other)]);
        p.handle(
            Event::Taken {
                worker: other,
                conn: 11,
            },
            701,
        );
        let a = p.handle(
            Event::Tick,
            100 + UNRESPONSIVE_AFTER + KILL_UNRESPONSIVE_AFTER,
        );
        assert_eq!(
            killed(&a),
            [(stuck, KillReason::Unresponsive { for_ms: 1_500 })]
        );
        let a = p.handle(
            Event::WorkerExited {
                worker: stuck,
                clean: false,
            },
            1_700,
        );
        assert!(a.contains(&Action::Log(PoolLog::Requeued {
            worker: stuck,
            connections: 1
        })));
        assert!(handed(&a).contains(&(10, other)), "{a:?}");
        assert!(
            !a.contains(&Action::Release(10)),
            "the copy is kept until taken"
        );
    }

    #[test]
    fn the_pool_asks_for_its_tick_at_each_health_bound_of_a_hand_off_never_taken() {
        let mut p = Pool::new(PoolLimits {
            max_procs: 1,
            ..limits()
        });
        assert_eq!(p.next_check(), None, "nothing is due: {p:?}");
        p.handle(Event::ConnectionArrived(1), 0);
        assert_eq!(p.next_check(), Some(READY_TIMEOUT), "the start's READY");
        // Handed off at once when the worker is ready.
        ready_acking(&mut p, 1, 100);
        assert_eq!(p.next_check(), Some(100 + UNRESPONSIVE_AFTER));
        // A regular tick in between keeps the bound.
        p.handle(Event::Tick, 350);
        assert_eq!(p.next_check(), Some(100 + UNRESPONSIVE_AFTER));
        let a = p.handle(Event::Tick, 100 + UNRESPONSIVE_AFTER);
        assert!(a.contains(&Action::Log(PoolLog::Unresponsive {
            worker: 1,
            untaken: 1
        })));
        let kill_at = 100 + UNRESPONSIVE_AFTER + KILL_UNRESPONSIVE_AFTER;
        assert_eq!(p.next_check(), Some(kill_at));
        let a = p.handle(Event::Tick, kill_at);
        assert_eq!(
            killed(&a),
            [(1, KillReason::Unresponsive { for_ms: 1_500 })]
        );
        assert_eq!(p.next_check(), None, "a killed worker has no bound: {p:?}");
        // Its connection waits again, for a replacement whose READY is due.
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            kill_at + 5,
        );
        assert_eq!(spawned(&a), [2], "{a:?}");
        assert_eq!(p.next_check(), Some(kill_at + 5 + READY_TIMEOUT));
    }

    #[test]
    fn an_unresponsive_worker_that_takes_its_connection_in_time_recovers() {
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::Tick, UNRESPONSIVE_AFTER);
        let a = p.handle(Event::Taken { worker: 1, conn: 1 }, 900);
        assert!(a.contains(&Action::Release(1)));
        let a = p.handle(Event::Tick, 1_000);
        assert!(a.contains(&Action::Log(PoolLog::Recovered { worker: 1 })));
        assert!(killed(&p.handle(Event::Tick, 5_000)).is_empty());
    }

    #[test]
    fn a_full_control_socket_marks_the_worker_unresponsive_and_the_connection_waits_for_another() {
        let mut p = Pool::new(PoolLimits {
            max_procs: 1,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        let a = p.handle(
            Event::SendFailed {
                worker: 1,
                conn: 1,
                blocked: true,
            },
            0,
        );
        assert!(handed(&a).is_empty(), "not again while blocked: {a:?}");
        assert_eq!(p.waiting(), 1);
        let a = p.handle(Event::Writable(1), 10);
        assert_eq!(handed(&a), [(1, 1)]);
    }

    #[test]
    fn messages_that_do_not_add_up_are_violations() {
        let cases: Vec<Event> = vec![
            Event::Ended {
                worker: 1,
                conn: 99,
            },
            Event::Taken {
                worker: 1,
                conn: 99,
            },
            Event::WorkerReady {
                worker: 1,
                acks: true,
            },
        ];
        for ev in cases {
            let mut p = Pool::new(limits());
            p.handle(Event::ConnectionArrived(1), 0);
            ready_acking(&mut p, 1, 0);
            let a = p.handle(ev.clone(), 1);
            assert!(
                matches!(killed(&a)[..], [(1, KillReason::Violation(_))]),
                "{ev:?}: {a:?}"
            );
        }
        // An ENDED twice for the same connection.
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::Taken { worker: 1, conn: 1 }, 1);
        assert!(killed(&p.handle(Event::Ended { worker: 1, conn: 1 }, 2)).is_empty());
        let a = p.handle(Event::Ended { worker: 1, conn: 1 }, 3);
        assert!(matches!(killed(&a)[..], [(1, KillReason::Violation(_))]));
        // TAKEN from a worker that said plain READY.
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(
            Event::WorkerReady {
                worker: 1,
                acks: false,
            },
            0,
        );
        let a = p.handle(Event::Taken { worker: 1, conn: 1 }, 1);
        assert!(matches!(killed(&a)[..], [(1, KillReason::Violation(_))]));
    }

    #[test]
    fn clients_go_to_the_ready_worker_while_the_next_start_is_held_back() {
        // Fault 2 of issue 11: MIN_CONNS=2 MAX_CONNS=20, the second start fails.
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            max_procs: 3,
            min_conns: 2,
            max_conns: 20,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        ready_acking(&mut p, 1, 0);
        let mut all = Vec::new();
        for c in 1..=2 {
            all.extend(p.handle(Event::ConnectionArrived(c), 10));
        }
        // Busy enough: worker 2 is started ahead, and fails.
        assert!(spawned(&all).contains(&2));
        p.handle(
            Event::WorkerExited {
                worker: 2,
                clean: false,
            },
            20,
        );
        for c in 3..=6 {
            all.extend(p.handle(Event::ConnectionArrived(c), 30));
        }
        assert_eq!(handed(&all).len(), 6, "{all:?}");
        assert!(handed(&all).iter().all(|&(_, w)| w == 1));
    }

    #[test]
    fn a_connection_waits_for_a_starting_worker_at_most_start_wait() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            max_procs: 3,
            min_conns: 1,
            max_conns: 5,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::ConnectionArrived(1), 0); // worker 1 busy enough; 2 starts
        p.handle(Event::Taken { worker: 1, conn: 1 }, 0);
        let a = p.handle(Event::ConnectionArrived(2), 10);
        assert!(handed(&a).is_empty(), "waits for worker 2: {a:?}");
        let a = p.handle(Event::Tick, 10 + START_WAIT);
        assert_eq!(handed(&a), [(2, 1)], "worker 2 never got ready: {a:?}");
    }

    #[test]
    fn a_start_without_descriptors_is_not_a_crash() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            ..limits()
        });
        assert_eq!(spawned(&p.handle(Event::Tick, 0)), [1]);
        let a = p.handle(
            Event::SpawnFailed {
                worker: 1,
                lack_of_descriptors: true,
            },
            0,
        );
        assert!(a.contains(&Action::Log(PoolLog::NoDescriptors {
            worker: 1,
            retry_in: NO_DESCRIPTOR_RETRY
        })));
        assert_eq!(spawned(&p.handle(Event::Tick, NO_DESCRIPTOR_RETRY)), [2]);
        // Many in a row never climb to the 60 s back-off.
        let a = p.handle(
            Event::SpawnFailed {
                worker: 2,
                lack_of_descriptors: true,
            },
            NO_DESCRIPTOR_RETRY,
        );
        assert!(!a
            .iter()
            .any(|x| matches!(x, Action::Log(PoolLog::StartFailed { .. }))));
    }

    #[test]
    fn a_stopping_pool_starts_nothing_drains_everyone_and_closes_what_waits() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 2,
            max_procs: 2,
            min_conns: 1,
            max_conns: 1,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        ready_acking(&mut p, 1, 0);
        for c in 1..=3 {
            p.handle(Event::ConnectionArrived(c), 0);
        }
        let a = p.handle(Event::Stop, 5);
        assert!(a.contains(&Action::Retire {
            worker: 1,
            reason: RetireReason::Stop
        }));
        assert!(a.contains(&Action::Retire {
            worker: 2,
            reason: RetireReason::Stop
        }));
        assert!(a.iter().any(|x| matches!(x, Action::Close(_))), "{a:?}");
        assert_eq!(p.waiting(), 0);
        // A worker dies during the stop: not replaced.
        let a = p.handle(
            Event::WorkerExited {
                worker: 2,
                clean: false,
            },
            6,
        );
        assert!(spawned(&a).is_empty());
        assert!(spawned(&p.handle(Event::Tick, 60_000)).is_empty());
        assert!(matches!(
            p.handle(Event::ConnectionArrived(9), 7)[..],
            [Action::Close(9)]
        ));
    }

    #[test]
    fn a_wound_down_generation_gives_what_waits_to_the_next() {
        let mut p = Pool::new(PoolLimits {
            max_procs: 1,
            max_conns: 1,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::ConnectionArrived(2), 0);
        let a = p.handle(Event::WindDown, 1);
        assert!(a.contains(&Action::Elsewhere(2)), "{a:?}");
        assert!(a.contains(&Action::Retire {
            worker: 1,
            reason: RetireReason::Reload
        }));
        // Its worker dies without taking connection 1: that one goes on too.
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            2,
        );
        assert!(a.contains(&Action::Elsewhere(1)), "{a:?}");
        assert!(spawned(&a).is_empty());
    }

    #[test]
    fn draining_on_its_own_gives_back_what_was_not_taken() {
        let mut p = Pool::new(PoolLimits {
            max_procs: 2,
            min_conns: 3,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::ConnectionArrived(2), 0);
        p.handle(Event::Taken { worker: 1, conn: 1 }, 1);
        let a = p.handle(Event::Draining(1), 2);
        assert!(a.contains(&Action::Log(PoolLog::Requeued {
            worker: 1,
            connections: 1
        })));
        assert!(!handed(&a).iter().any(|&(_, w)| w == 1), "{a:?}");
        assert_eq!(spawned(&a), [2]);
    }

    #[test]
    fn a_worker_that_closed_its_control_socket_is_killed_if_it_lingers() {
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::Taken { worker: 1, conn: 1 }, 0);
        p.handle(Event::ControlClosed(1), 10);
        assert!(killed(&p.handle(Event::Tick, 10 + CLOSED_GRACE - 1)).is_empty());
        assert_eq!(
            killed(&p.handle(Event::Tick, 10 + CLOSED_GRACE)),
            [(1, KillReason::ClosedControl)]
        );
    }

    #[test]
    fn an_image_that_fails_at_once_is_restarted_at_the_back_off_pace_not_as_fast_as_it_fails() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            ..limits()
        });
        assert_eq!(spawned(&p.handle(Event::Tick, 0)), [1]);
        // Its control socket closes (it is exiting), then a protocol violation on the next:
        // no replacement until each one is reaped.
        assert!(spawned(&p.handle(Event::ControlClosed(1), 1)).is_empty());
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            2,
        );
        assert!(spawned(&a).is_empty(), "backs off: {a:?}");
        assert_eq!(spawned(&p.handle(Event::Tick, 1_002)), [2]);
        let a = p.handle(
            Event::Violation {
                worker: 2,
                what: "HELLO".into(),
            },
            1_003,
        );
        assert!(spawned(&a).is_empty(), "not before it is gone: {a:?}");
    }

    #[test]
    fn a_worker_that_closed_its_socket_and_lives_on_is_replaced_after_closed_place() {
        let mut p = Pool::new(PoolLimits {
            min_procs: 1,
            max_procs: 1,
            ..limits()
        });
        p.handle(Event::Tick, 0);
        ready_acking(&mut p, 1, 0);
        p.handle(Event::ControlClosed(1), 10);
        assert!(spawned(&p.handle(Event::Tick, 10 + CLOSED_PLACE - 1)).is_empty());
        assert_eq!(spawned(&p.handle(Event::Tick, 10 + CLOSED_PLACE)), [2]);
    }

    #[test]
    fn the_untaken_connections_of_a_violator_are_closed_not_handed_again() {
        let mut p = Pool::new(limits());
        p.handle(Event::ConnectionArrived(1), 0);
        ready_acking(&mut p, 1, 0);
        p.handle(
            Event::Violation {
                worker: 1,
                what: "HELLO".into(),
            },
            1,
        );
        let a = p.handle(
            Event::WorkerExited {
                worker: 1,
                clean: false,
            },
            2,
        );
        assert!(a.contains(&Action::Close(1)), "{a:?}");
        assert!(handed(&a).is_empty(), "{a:?}");
    }
}
