//! The worker pool of one service, as a pure state machine: events in, actions out.
//!
//! This is "Creation and Expiration of Server Processes" of the Messaging Server documentation
//! made exact. It decides which worker takes a connection, when to start a worker, when to
//! retire one, and when to stop reading the listener; the event loop performs the actions and
//! reports what happened. It knows nothing of sockets, processes or clocks: time comes in with
//! every event, in milliseconds from any fixed origin.
//!
//! Rules (documented ones first; **ours** where the documentation is silent):
//!
//! * A worker is started when fewer than `MIN_PROCS` run, or when every worker is "busy
//!   enough" (at least `MIN_CONNS` connections) and fewer than `MAX_PROCS` run.
//! * A connection goes to a ready worker below `MIN_CONNS`, the fullest of those first (fill a
//!   worker to "busy enough" before spreading, **ours**); else, if no worker can be started,
//!   to the least busy worker below `MAX_CONNS`. Connections that arrive while the worker
//!   started for them gets ready wait for it.
//! * No worker ever holds more than `MAX_CONNS` connections. When every worker is full and
//!   `MAX_PROCS` run, the pool asks to stop reading the listener, so further clients wait in
//!   the kernel's listen queue (`BACKLOG`), and asks again to read when a slot frees **(ours:
//!   the documentation's BACKLOG default suggests it)**.
//! * A worker handed `MAX_LIFE_CONNS` connections, older than `MAX_LIFE_TIME`, or (beyond
//!   `MIN_PROCS`) idle for `MAX_IDLE_TIME`, is retired: it takes no new connection and exits
//!   when its last one ends. Nothing is ever killed by the pool.
//! * At most `MAX_SHUTDOWN` workers retire at once **(ours: the documentation names the
//!   option only)**; a worker due beyond that keeps serving until a retiring one is gone.
//!   Retiring workers do not count against `MAX_PROCS`.
//! * A worker that exits before taking its first connection is a failed start: the next start
//!   waits 1 s, doubling up to 60 s, with one log line each time. A worker that has not said
//!   it is ready [`READY_TIMEOUT`] after its start is killed, which makes it a failed start.
//!   One that was ready and lived [`STABLE_AFTER`] before it died without serving (killed by
//!   an administrator or the OOM killer) is not: it is replaced at once.

use std::collections::{BTreeMap, VecDeque};

/// Milliseconds from an origin the caller chooses.
pub type Millis = u64;
/// A worker, numbered by the pool.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection was accepted (and PORT_ACCESS let it in).
    ConnectionArrived(ConnId),
    /// A started worker is ready for connections.
    WorkerReady(WorkerId),
    /// A worker reports that a connection it held has ended.
    ConnectionEnded(WorkerId),
    /// A worker process is gone (reaped); `clean` when it exited on its own with status 0.
    WorkerExited { worker: WorkerId, clean: bool },
    /// Time passes; the pool checks lifetimes, idleness and MIN_PROCS.
    Tick,
}

/// Why a worker is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    LifeConns,
    LifeTime,
    Idle,
}

/// What the event loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker process with this id.
    Spawn(WorkerId),
    /// Pass this connection to that worker.
    HandOff {
        conn: ConnId,
        worker: WorkerId,
    },
    /// Tell the worker to take no more connections and exit when its last one ends.
    Retire {
        worker: WorkerId,
        reason: RetireReason,
    },
    /// Kill the worker: it never said it was ready (its exit is then reported as usual).
    Kill(WorkerId),
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Retiring,
}

#[derive(Debug, Clone)]
struct Worker {
    state: State,
    started: Millis,
    /// Connections it holds now (handed and not yet ended).
    active: u64,
    /// Connections handed to it in its life.
    served: u64,
    /// When `active` last became 0.
    idle_since: Millis,
    /// Due for retirement but waiting for a MAX_SHUTDOWN slot.
    due: Option<RetireReason>,
    /// Asked to be killed (never ready); asked once.
    killed: bool,
}

/// A snapshot for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub worker: WorkerId,
    pub state: &'static str,
    pub started: Millis,
    pub active: u64,
    pub served: u64,
}

/// The pool of one service.
#[derive(Debug, Clone)]
pub struct Pool {
    limits: PoolLimits,
    workers: BTreeMap<WorkerId, Worker>,
    /// Connections accepted but not yet handed off (waiting for a worker to get ready).
    waiting: VecDeque<ConnId>,
    next_worker: WorkerId,
    paused: bool,
    /// Failed starts in a row, and the earliest time the next start may happen.
    failures: u32,
    next_start: Millis,
}

impl Pool {
    pub fn new(limits: PoolLimits) -> Pool {
        Pool::numbering_from(limits, 1)
    }

    /// A pool whose workers are numbered from `first` (after a reload, so that the new pool's
    /// workers are never confused with the old pool's draining ones).
    pub fn numbering_from(limits: PoolLimits, first: WorkerId) -> Pool {
        Pool {
            limits,
            workers: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_worker: first,
            paused: false,
            failures: 0,
            next_start: 0,
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// The number the next worker will get.
    pub fn next_worker_id(&self) -> WorkerId {
        self.next_worker
    }

    /// Takes the connections waiting for a worker (to give them to a new pool after a reload).
    pub fn take_waiting(&mut self) -> Vec<ConnId> {
        self.waiting.drain(..).collect()
    }

    /// Connections accepted and waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the listeners should be read.
    pub fn accepting(&self) -> bool {
        !self.paused
    }

    pub fn status(&self) -> Vec<WorkerStatus> {
        self.workers
            .iter()
            .map(|(&id, w)| WorkerStatus {
                worker: id,
                state: match w.state {
                    State::Starting => "starting",
                    State::Ready if w.due.is_some() => "due",
                    State::Ready => "ready",
                    State::Retiring => "retiring",
                },
                started: w.started,
                active: w.active,
                served: w.served,
            })
            .collect()
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::ConnectionArrived(conn) => self.waiting.push_back(conn),
            Event::WorkerReady(id) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    if w.state == State::Starting {
                        w.state = State::Ready;
                        w.idle_since = now;
                    }
                }
            }
            Event::ConnectionEnded(id) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.active = w.active.saturating_sub(1);
                    if w.active == 0 {
                        w.idle_since = now;
                    }
                }
            }
            Event::WorkerExited { worker, clean } => self.exited(worker, clean, now, &mut out),
            Event::Tick => {
                self.expire(now);
                for (&id, w) in self.workers.iter_mut() {
                    let late = now.saturating_sub(w.started) >= READY_TIMEOUT;
                    if w.state == State::Starting && late && !w.killed {
                        w.killed = true;
                        out.push(Action::Kill(id));
                    }
                }
            }
        }
        self.rebalance(now, &mut out);
        out
    }

    fn exited(&mut self, id: WorkerId, clean: bool, now: Millis, out: &mut Vec<Action>) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        if w.active > 0 {
            out.push(Action::Log(PoolLog::WorkerLost {
                worker: id,
                connections: w.active,
            }));
        }
        let young = now.saturating_sub(w.started) < STABLE_AFTER;
        let failed_start = w.served == 0 && (w.state == State::Starting || (!clean && young));
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

    /// Marks workers due for retirement by age or idleness.
    fn expire(&mut self, now: Millis) {
        let l = self.limits;
        let mut serving = self.serving_count();
        for w in self.workers.values_mut() {
            if w.state != State::Ready || w.due.is_some() {
                continue;
            }
            if now.saturating_sub(w.started) >= l.max_life_time {
                w.due = Some(RetireReason::LifeTime);
            } else if w.active == 0
                && serving > l.min_procs
                && now.saturating_sub(w.idle_since) >= l.max_idle_time
            {
                w.due = Some(RetireReason::Idle);
                serving -= 1;
            }
        }
    }

    /// Workers that take connections now or soon: starting, or ready and not retiring.
    fn serving_count(&self) -> u64 {
        self.workers
            .values()
            .filter(|w| w.state != State::Retiring)
            .count() as u64
    }

    /// After every event: retire what is due, hand off what waits, start what is needed, and
    /// pause or resume accepting.
    fn rebalance(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.start_retirements(out);
        while let Some(&conn) = self.waiting.front() {
            match self.pick() {
                Some(id) => {
                    self.waiting.pop_front();
                    self.hand_off(conn, id, out);
                    self.start_retirements(out);
                }
                None => break,
            }
        }
        // Start workers: for MIN_PROCS, for connections no ready worker can take, and
        // ahead of need when every worker is busy enough.
        while self.should_start(now) {
            let id = self.next_worker;
            self.next_worker += 1;
            self.workers.insert(
                id,
                Worker {
                    state: State::Starting,
                    started: now,
                    active: 0,
                    served: 0,
                    idle_since: now,
                    due: None,
                    killed: false,
                },
            );
            out.push(Action::Spawn(id));
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

    /// The ready worker a new connection goes to, if any may take one now.
    fn pick(&self) -> Option<WorkerId> {
        let l = self.limits;
        let ready = || {
            self.workers
                .iter()
                .filter(|(_, w)| w.state == State::Ready && w.active < l.max_conns)
        };
        // Below MIN_CONNS: fill the fullest first (ties: the oldest worker).
        if let Some((&id, _)) = ready()
            .filter(|(_, w)| w.active < l.min_conns)
            .max_by_key(|(&id, w)| (w.active, std::cmp::Reverse(id)))
        {
            return Some(id);
        }
        // Everyone busy enough: a new worker is preferred while one may be started.
        if self.serving_count() < l.max_procs {
            return None;
        }
        ready()
            .min_by_key(|(&id, w)| (w.active, id))
            .map(|(&id, _)| id)
    }

    fn hand_off(&mut self, conn: ConnId, id: WorkerId, out: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.active += 1;
            w.served += 1;
            if w.served >= self.limits.max_life_conns && w.due.is_none() {
                w.due = Some(RetireReason::LifeConns);
            }
        }
        out.push(Action::HandOff { conn, worker: id });
    }

    /// Retires due workers while fewer than MAX_SHUTDOWN are retiring.
    fn start_retirements(&mut self, out: &mut Vec<Action>) {
        let mut retiring = self
            .workers
            .values()
            .filter(|w| w.state == State::Retiring)
            .count() as u64;
        for (&id, w) in self.workers.iter_mut() {
            if retiring >= self.limits.max_shutdown {
                break;
            }
            if let (State::Ready, Some(reason)) = (w.state, w.due) {
                w.state = State::Retiring;
                retiring += 1;
                out.push(Action::Retire { worker: id, reason });
            }
        }
    }

    fn should_start(&self, now: Millis) -> bool {
        let l = self.limits;
        let serving = self.serving_count();
        if serving >= l.max_procs || now < self.next_start {
            return false;
        }
        if serving < l.min_procs {
            return true;
        }
        let starting = self
            .workers
            .values()
            .filter(|w| w.state == State::Starting)
            .count() as u64;
        // Connections waiting beyond what the starting workers will take.
        if self.waiting.len() as u64 > starting * l.max_conns {
            return true;
        }
        // Ahead of need: every serving worker busy enough, none on its way.
        starting == 0
            && serving > 0
            && self
                .workers
                .values()
                .filter(|w| w.state == State::Ready)
                .all(|w| w.active >= l.min_conns)
    }

    /// Connections the pool could still take: free slots on serving workers, slots of workers
    /// it may still start, less the connections already waiting.
    fn capacity(&self) -> u64 {
        let l = self.limits;
        let free: u64 = self
            .workers
            .values()
            .filter(|w| w.state != State::Retiring)
            .map(|w| l.max_conns.saturating_sub(w.active))
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
        let a = p.handle(Event::WorkerReady(1), 5);
        assert_eq!(handed(&a), [(7, 1)]);
    }

    #[test]
    fn a_worker_is_filled_to_busy_enough_before_another_starts() {
        let mut p = Pool::new(limits());
        p.handle(Event::WorkerReady(1), 0);
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(Event::WorkerReady(1), 0);
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
        for c in 1..=8 {
            all.extend(p.handle(Event::ConnectionArrived(c), 0));
            for w in spawned(&all) {
                all.extend(p.handle(Event::WorkerReady(w), 0));
            }
        }
        let h = handed(&all);
        assert_eq!(h.len(), 6, "{all:?}");
        assert!(spawned(&all).len() <= 2);
        assert_eq!(p.waiting(), 2);
        assert!(!p.accepting());
        assert!(all.contains(&Action::PauseAccepting));
        // One leaves: one waiting connection takes its slot.
        let (_, w) = h[0];
        let a = p.handle(Event::ConnectionEnded(w), 1);
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
        assert_eq!(handed(&p.handle(Event::WorkerReady(1), 0)), [(1, 1)]);
        assert!(!p.accepting());
        let a = p.handle(Event::ConnectionEnded(1), 5);
        assert_eq!(a, [Action::ResumeAccepting]);
    }

    #[test]
    fn max_life_conns_retires_after_the_last_handoff_and_a_replacement_serves() {
        let mut p = Pool::new(PoolLimits {
            max_life_conns: 2,
            max_procs: 1,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(Event::WorkerReady(1), 0);
        let a = p.handle(Event::ConnectionArrived(2), 1);
        assert_eq!(handed(&a), [(2, 1)]);
        assert!(a.contains(&Action::Retire {
            worker: 1,
            reason: RetireReason::LifeConns
        }));
        let a = p.handle(Event::ConnectionArrived(3), 2);
        assert!(handed(&a).is_empty(), "never to the retiring worker: {a:?}");
        assert_eq!(
            spawned(&a),
            [2],
            "the retiring worker does not count against MAX_PROCS"
        );
        let a = p.handle(Event::WorkerReady(2), 3);
        assert_eq!(handed(&a), [(3, 2)]);
    }

    #[test]
    fn max_life_time_retires_on_a_tick_without_killing() {
        let mut p = Pool::new(PoolLimits {
            max_life_time: 1_000,
            ..limits()
        });
        p.handle(Event::ConnectionArrived(1), 0);
        p.handle(Event::WorkerReady(1), 0);
        let a = p.handle(Event::Tick, 1_000);
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
        p.handle(Event::WorkerReady(1), 0);
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
            p.handle(Event::WorkerReady(w), 0);
            p.handle(Event::ConnectionArrived(w), 0);
        }
        let a = p.handle(Event::Tick, 20);
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
        p.handle(Event::WorkerReady(1), 0);
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
        p.handle(Event::WorkerReady(1), 100);
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
        p.handle(Event::WorkerReady(2), 3_100);
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
            .contains(&Action::Kill(1)));
        assert!(p
            .handle(Event::Tick, READY_TIMEOUT)
            .contains(&Action::Kill(1)));
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
}
