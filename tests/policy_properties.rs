//! The worker-pool policy under random sequences of events, driven by a model of the world
//! that reacts as real workers (good and bad: they crash, block, drain, close their control
//! socket) and the event loop would: the limits hold after
//! every step, no connection is lost, handed twice or handed to a worker that cannot take it,
//! the dispatcher's copy of a socket is released only once a worker has it, nothing is
//! started once a stop has begun, and the pool's `next_check` is never later than a health
//! bound.

use std::collections::{BTreeMap, BTreeSet};

use msdispatcher::dispatcher::policy::{
    Action, ConnId, Event, KillReason, Pool, PoolLimits, PoolLog, RetireReason, WorkerId,
};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Arrive,
    Ready(usize, bool),
    Take(usize),
    End(usize),
    Crash(usize),
    Block(usize),
    Unblock(usize),
    Drains(usize),
    /// A worker closes its control socket (it may go on running).
    Close(usize),
    Tick(u64),
    Stop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Arrive),
        3 => (0usize..8, any::<bool>()).prop_map(|(i, a)| Op::Ready(i, a)),
        4 => (0usize..16).prop_map(Op::Take),
        4 => (0usize..16).prop_map(Op::End),
        1 => (0usize..8).prop_map(Op::Crash),
        1 => (0usize..8).prop_map(Op::Block),
        1 => (0usize..8).prop_map(Op::Unblock),
        1 => (0usize..8).prop_map(Op::Drains),
        1 => (0usize..8).prop_map(Op::Close),
        3 => prop_oneof![1u64..400, 400u64..3_000, 3_000u64..120_000].prop_map(Op::Tick),
        1 => Just(Op::Stop),
    ]
}

fn limits() -> impl Strategy<Value = PoolLimits> {
    (0u64..3, 1u64..4, 0u64..4, 1u64..4, 1u64..6, 1u64..4).prop_map(
        |(min_procs, max_procs, min_conns, max_conns, max_life_conns, max_shutdown)| PoolLimits {
            min_procs,
            max_procs,
            min_conns,
            max_conns,
            max_life_conns,
            max_life_time: 300_000,
            max_idle_time: 60_000,
            max_shutdown,
        },
    )
}

/// Where a connection is, as the world sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Waiting,
    /// Sent to the worker, not yet confirmed (the dispatcher holds its copy).
    Unconfirmed(WorkerId),
    /// In the worker's hands.
    Held(WorkerId),
    Done,
}

#[derive(Debug, Default)]
struct W {
    ready: bool,
    acks: bool,
    retiring: bool,
    /// Retired by the pool (not of its own accord).
    retired: bool,
    killed: bool,
    unresponsive: bool,
    /// Was unresponsive once: its place was given to another then (by design), and it keeps
    /// its sessions when it recovers.
    was_unresponsive: bool,
    /// Its socket is full.
    blocked: bool,
    /// The pool was told so (a send failed) and not yet that it has room.
    told_blocked: bool,
    /// Connections handed to it in its life.
    handed: u64,
    /// Its control socket is closed: it can say nothing more, and must be handed nothing.
    closed: bool,
}

/// What the world knows, from the actions it was given.
#[derive(Default)]
struct World {
    workers: BTreeMap<WorkerId, W>,
    conns: BTreeMap<ConnId, Fate>,
    arrived: u64,
    stopped: bool,
    /// Events the world owes the pool (reports of sends), fed before the next operation.
    pending: Vec<Event>,
}

impl World {
    /// `handing_over`: the workers the pool says have a successor started, which holds their
    /// `MAX_PROCS` place; `due`: those it says are due for retirement.
    fn apply(
        &mut self,
        actions: &[Action],
        l: &PoolLimits,
        handing_over: &[WorkerId],
        due: &[WorkerId],
    ) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                Action::Spawn(w) => {
                    prop_assert!(!self.stopped, "worker {w} spawned after the stop");
                    prop_assert!(
                        self.workers.insert(*w, W::default()).is_none(),
                        "worker {w} spawned twice"
                    );
                }
                Action::HandOff { conn, worker } => {
                    let w = self.workers.get(worker);
                    prop_assert!(
                        w.is_some_and(|w| w.ready
                            && !w.retiring
                            && !w.killed
                            && !w.unresponsive
                            && !w.told_blocked
                            && !w.closed),
                        "handed to a worker that cannot take it: {a:?} {w:?}"
                    );
                    prop_assert_eq!(
                        self.conns.get(conn).copied(),
                        Some(Fate::Waiting),
                        "connection {} handed while not waiting",
                        conn
                    );
                    let on = self.on(*worker) + 1;
                    prop_assert!(on <= l.max_conns, "MAX_CONNS exceeded on {}", worker);
                    if let Some(w) = self.workers.get_mut(worker) {
                        w.handed += 1;
                        // Waiting for a slow successor stretches a life, to twice at most.
                        prop_assert!(
                            w.handed <= 2 * l.max_life_conns,
                            "worker {} handed {} connections, MAX_LIFE_CONNS={}",
                            worker,
                            w.handed,
                            l.max_life_conns
                        );
                    }
                    self.conns.insert(*conn, Fate::Unconfirmed(*worker));
                    // The event loop sends it at once; a blocked socket refuses it.
                    let blocked = self.workers.get(worker).is_some_and(|w| w.blocked);
                    if blocked {
                        self.conns.insert(*conn, Fate::Waiting);
                        // Not handed after all: the worker never had it.
                        if let Some(w) = self.workers.get_mut(worker) {
                            w.handed -= 1;
                        }
                    }
                    self.pending.push(if blocked {
                        Event::SendFailed {
                            worker: *worker,
                            conn: *conn,
                            blocked: true,
                        }
                    } else {
                        Event::Sent {
                            worker: *worker,
                            conn: *conn,
                        }
                    });
                }
                Action::Release(conn) => {
                    let fate = self.conns.get(conn).copied();
                    let Some(Fate::Unconfirmed(w)) = fate else {
                        return Err(TestCaseError::fail(format!(
                            "released {conn} in state {fate:?}"
                        )));
                    };
                    self.conns.insert(*conn, Fate::Held(w));
                }
                Action::Close(conn) | Action::Elsewhere(conn) => {
                    let fate = self.conns.get(conn).copied();
                    prop_assert_eq!(fate, Some(Fate::Waiting), "closed {} not waiting", conn);
                    self.conns.insert(*conn, Fate::Done);
                }
                Action::Retire { worker, reason } => {
                    let w = self.workers.get_mut(worker);
                    prop_assert!(w.is_some(), "retired unknown worker {}", worker);
                    if let Some(w) = w {
                        w.retiring = true;
                        w.retired = matches!(
                            reason,
                            RetireReason::LifeConns | RetireReason::LifeTime | RetireReason::Idle
                        );
                    }
                }
                Action::Kill { worker, .. } => {
                    if let Some(w) = self.workers.get_mut(worker) {
                        prop_assert!(!w.killed, "worker {} killed twice", worker);
                        w.killed = true;
                    }
                }
                Action::Log(PoolLog::Unresponsive { worker, .. }) => {
                    if let Some(w) = self.workers.get_mut(worker) {
                        w.unresponsive = true;
                        w.was_unresponsive = true;
                    }
                }
                Action::Log(PoolLog::Recovered { worker }) => {
                    if let Some(w) = self.workers.get_mut(worker) {
                        w.unresponsive = false;
                    }
                }
                _ => {}
            }
        }
        let serving = self
            .workers
            .iter()
            .filter(|(id, w)| !w.retiring && !w.unresponsive && !handing_over.contains(id))
            .count() as u64;
        prop_assert!(serving <= l.max_procs, "MAX_PROCS exceeded: {}", serving);
        // A worker and its successor share one place: the sessions on workers that take
        // connections (not retiring, and not due: a due one is replaced and finishing, as a
        // retiring one is; not one that was unresponsive, whose place was given away) never
        // exceed what MAX_PROCS places of MAX_CONNS hold. Nor one that closed its control
        // socket: it takes nothing more, as a retiring one, and its successor may serve.
        let sessions: u64 = self
            .workers
            .iter()
            .filter(|(id, w)| {
                !w.retiring && !w.was_unresponsive && !w.killed && !w.closed && !due.contains(id)
            })
            .map(|(&id, _)| self.on(id))
            .sum();
        prop_assert!(
            sessions <= l.max_procs * l.max_conns,
            "{} sessions on serving workers, MAX_PROCS x MAX_CONNS = {}",
            sessions,
            l.max_procs * l.max_conns
        );
        let retiring = self
            .workers
            .values()
            .filter(|w| w.retired && w.ready && !w.killed)
            .count() as u64;
        // Stop and reload retire everyone at once; MAX_SHUTDOWN bounds ordinary retirements.
        if !self.stopped {
            prop_assert!(retiring <= l.max_shutdown, "MAX_SHUTDOWN exceeded");
        }
        Ok(())
    }

    /// Connections a worker has (sent or held).
    fn on(&self, w: WorkerId) -> u64 {
        self.conns
            .values()
            .filter(|f| matches!(f, Fate::Unconfirmed(x) | Fate::Held(x) if *x == w))
            .count() as u64
    }

    fn nth<T: Copy>(items: &[T], i: usize) -> Option<T> {
        (!items.is_empty()).then(|| items[i % items.len()])
    }

    /// A worker's process is gone: what it held is lost, what it never took waits again.
    fn gone(&mut self, w: WorkerId) {
        self.workers.remove(&w);
        for f in self.conns.values_mut() {
            match *f {
                Fate::Held(x) if x == w => *f = Fate::Done,
                Fate::Unconfirmed(x) if x == w => *f = Fate::Waiting,
                _ => {}
            }
        }
    }
}

fn step(
    pool: &mut Pool,
    world: &mut World,
    event: Event,
    now: u64,
    l: &PoolLimits,
) -> Result<(), TestCaseError> {
    let mut queue = vec![event];
    while let Some(ev) = queue.pop() {
        if let Event::SendFailed {
            worker,
            blocked: true,
            ..
        } = ev
        {
            if let Some(w) = world.workers.get_mut(&worker) {
                w.told_blocked = true;
            }
        }
        let actions = pool.handle(ev, now);
        let status = pool.status();
        let handing_over: Vec<WorkerId> = status
            .iter()
            .filter(|s| s.successor.is_some())
            .map(|s| s.worker)
            .collect();
        let mut successors: Vec<WorkerId> = status.iter().filter_map(|s| s.successor).collect();
        for s in &successors {
            prop_assert!(
                status.iter().any(|w| w.worker == *s),
                "successor {} is not a worker of the pool",
                s
            );
        }
        let n = successors.len();
        successors.sort_unstable();
        successors.dedup();
        prop_assert_eq!(n, successors.len(), "one successor for two workers");
        let due: Vec<WorkerId> = status
            .iter()
            .filter(|s| s.state == "due")
            .map(|s| s.worker)
            .collect();
        // A worker that closed its control socket and did not exit gives its place away after
        // CLOSED_PLACE, by design, with no action to say so: the world learns it from the
        // pool's status, as an operator would.
        for s in status.iter().filter(|s| s.state == "retiring") {
            if let Some(w) = world.workers.get_mut(&s.worker).filter(|w| w.closed) {
                w.retiring = true;
            }
        }
        world.apply(&actions, l, &handing_over, &due)?;
        queue.extend(world.pending.drain(..).rev());
    }
    Ok(())
}

/// The health verdicts (unresponsive, killed for a bound) a `Tick` at `at` would give.
fn health_verdicts(mut pool: Pool, at: u64) -> BTreeSet<(WorkerId, &'static str)> {
    pool.handle(Event::Tick, at)
        .into_iter()
        .filter_map(|a| match a {
            Action::Kill { worker, reason } if !matches!(reason, KillReason::Violation(_)) => {
                Some((worker, "killed"))
            }
            Action::Log(PoolLog::Unresponsive { worker, .. }) => Some((worker, "unresponsive")),
            _ => None,
        })
        .collect()
}

/// The event loop sleeps until the pool's `next_check` (or its regular tick): no health bound
/// may be crossed before it. A `Tick` just before it finds nothing a `Tick` now would not.
/// Right after a `Tick` it lies ahead (or the event loop would wake at once, again and again).
fn next_check_is_never_late(pool: &Pool, now: u64, ticked: bool) -> Result<(), TestCaseError> {
    if ticked {
        prop_assert!(
            pool.next_check().is_none_or(|t| t > now),
            "next_check {:?} is not ahead of the Tick at {}",
            pool.next_check(),
            now
        );
    }
    let before = match pool.next_check() {
        Some(t) if t <= now => return Ok(()),
        Some(t) => t - 1,
        None => now + 200_000,
    };
    let at_once = health_verdicts(pool.clone(), now);
    let later = health_verdicts(pool.clone(), before);
    prop_assert!(
        later.is_subset(&at_once),
        "a Tick at {} (next_check {:?}) finds {:?}; at {} only {:?}",
        before,
        pool.next_check(),
        later,
        now,
        at_once
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn limits_hold_and_no_connection_is_lost(l in limits(), ops in prop::collection::vec(op(), 1..150)) {
        let mut pool = Pool::new(l);
        let mut world = World::default();
        let mut now = 0u64;
        step(&mut pool, &mut world, Event::Tick, now, &l)?;
        for op in ops {
            let ids: Vec<WorkerId> = world.workers.keys().copied().collect();
            let event = match op {
                Op::Arrive if pool.accepting() || world.stopped => {
                    world.arrived += 1;
                    world.conns.insert(world.arrived, Fate::Waiting);
                    Event::ConnectionArrived(world.arrived)
                }
                Op::Arrive => continue,
                Op::Ready(i, acks) => {
                    let starting: Vec<WorkerId> = ids
                        .iter()
                        .copied()
                        .filter(|w| !world.workers[w].ready && !world.workers[w].closed)
                        .collect();
                    match World::nth(&starting, i) {
                        Some(w) => {
                            if let Some(x) = world.workers.get_mut(&w) {
                                x.ready = true;
                                x.acks = acks;
                            }
                            Event::WorkerReady { worker: w, acks }
                        }
                        None => continue,
                    }
                }
                Op::Take(i) => {
                    let untaken: Vec<(ConnId, WorkerId)> = world
                        .conns
                        .iter()
                        .filter_map(|(&c, f)| match f {
                            Fate::Unconfirmed(w) if world.workers[w].acks && !world.workers[w].closed => {
                                Some((c, *w))
                            }
                            _ => None,
                        })
                        .collect();
                    match World::nth(&untaken, i) {
                        Some((conn, worker)) => Event::Taken { worker, conn },
                        None => continue,
                    }
                }
                Op::End(i) => {
                    let held: Vec<(ConnId, WorkerId)> = world
                        .conns
                        .iter()
                        .filter_map(|(&c, f)| match f {
                            Fate::Held(w) if !world.workers[w].closed => Some((c, *w)),
                            _ => None,
                        })
                        .collect();
                    match World::nth(&held, i) {
                        Some((conn, worker)) => {
                            world.conns.insert(conn, Fate::Done);
                            Event::Ended { worker, conn }
                        }
                        None => continue,
                    }
                }
                Op::Crash(i) => match World::nth(&ids, i) {
                    Some(w) => {
                        world.gone(w);
                        Event::WorkerExited { worker: w, clean: false }
                    }
                    None => continue,
                },
                Op::Block(i) => match World::nth(&ids, i) {
                    Some(w) => {
                        if let Some(x) = world.workers.get_mut(&w) {
                            x.blocked = true;
                        }
                        continue;
                    }
                    None => continue,
                },
                Op::Unblock(i) => match World::nth(&ids, i) {
                    Some(w) if world.workers[&w].blocked && !world.workers[&w].closed => {
                        if let Some(x) = world.workers.get_mut(&w) {
                            x.blocked = false;
                            x.told_blocked = false;
                        }
                        Event::Writable(w)
                    }
                    _ => continue,
                },
                Op::Drains(i) => {
                    let ready: Vec<WorkerId> = ids
                        .iter()
                        .copied()
                        .filter(|w| world.workers[w].ready && !world.workers[w].closed)
                        .collect();
                    match World::nth(&ready, i) {
                        Some(w) => {
                            if let Some(x) = world.workers.get_mut(&w) {
                                x.retiring = true;
                            }
                            // An ACK worker that says DRAINING took everything it will take.
                            if world.workers[&w].acks {
                                for f in world.conns.values_mut() {
                                    if *f == Fate::Unconfirmed(w) {
                                        *f = Fate::Waiting;
                                    }
                                }
                            }
                            Event::Draining(w)
                        }
                        None => continue,
                    }
                }
                Op::Close(i) => {
                    let open: Vec<WorkerId> =
                        ids.iter().copied().filter(|w| !world.workers[w].closed).collect();
                    match World::nth(&open, i) {
                        Some(w) => {
                            if let Some(x) = world.workers.get_mut(&w) {
                                x.closed = true;
                            }
                            // What it was sent and never took is not in its hands: it waits
                            // again (a plain-READY worker has none, its sends are confirmed).
                            for f in world.conns.values_mut() {
                                if *f == Fate::Unconfirmed(w) {
                                    *f = Fate::Waiting;
                                }
                            }
                            Event::ControlClosed(w)
                        }
                        None => continue,
                    }
                }
                Op::Tick(ms) => {
                    now += ms;
                    Event::Tick
                }
                Op::Stop => {
                    world.stopped = true;
                    Event::Stop
                }
            };
            let ticked = event == Event::Tick;
            step(&mut pool, &mut world, event, now, &l)?;
            next_check_is_never_late(&pool, now, ticked)?;
            // Killed workers die; retiring workers whose last connection ended exit.
            let leaving: Vec<(WorkerId, bool)> = world
                .workers
                .iter()
                .filter(|(w, x)| x.killed || (x.retiring && world.on(**w) == 0))
                .map(|(w, x)| (*w, !x.killed))
                .collect();
            for (w, clean) in leaving {
                world.gone(w);
                step(&mut pool, &mut world, Event::WorkerExited { worker: w, clean }, now, &l)?;
                next_check_is_never_late(&pool, now, false)?;
            }
            let waiting = world.conns.values().filter(|f| **f == Fate::Waiting).count();
            prop_assert_eq!(
                waiting,
                pool.waiting(),
                "every accepted connection is waiting, at a worker, or done"
            );
            if world.stopped {
                prop_assert_eq!(pool.waiting(), 0, "nothing waits once stopping");
            }
        }
    }

    #[test]
    fn a_worker_that_never_takes_is_killed_and_its_connections_are_served_elsewhere(
        extra in 1u64..5,
    ) {
        let l = PoolLimits {
            min_procs: 2,
            max_procs: 3,
            min_conns: 1,
            max_conns: 5,
            max_life_conns: 100,
            max_life_time: 300_000,
            max_idle_time: 60_000,
            max_shutdown: 2,
        };
        let mut pool = Pool::new(l);
        let mut world = World::default();
        step(&mut pool, &mut world, Event::Tick, 0, &l)?;
        let ids: Vec<WorkerId> = world.workers.keys().copied().collect();
        for &w in &ids {
            if let Some(x) = world.workers.get_mut(&w) {
                x.ready = true;
                x.acks = true;
            }
            step(&mut pool, &mut world, Event::WorkerReady { worker: w, acks: true }, 0, &l)?;
        }
        // The first worker never takes anything; the others take everything at once.
        let stuck = ids[0];
        let mut now = 0;
        for c in 1..=extra + 3 {
            world.arrived += 1;
            world.conns.insert(c, Fate::Waiting);
            step(&mut pool, &mut world, Event::ConnectionArrived(c), now, &l)?;
            now += 100;
            let good: Vec<(ConnId, WorkerId)> = world.conns.iter().filter_map(|(&c, f)| match f {
                Fate::Unconfirmed(w) if *w != stuck => Some((c, *w)),
                _ => None,
            }).collect();
            for (conn, worker) in good {
                step(&mut pool, &mut world, Event::Taken { worker, conn }, now, &l)?;
            }
        }
        for _ in 0..40 {
            now += 250;
            step(&mut pool, &mut world, Event::Tick, now, &l)?;
            let killed: Vec<WorkerId> = world.workers.iter().filter(|(_, x)| x.killed).map(|(w, _)| *w).collect();
            for w in killed {
                world.gone(w);
                step(&mut pool, &mut world, Event::WorkerExited { worker: w, clean: false }, now, &l)?;
            }
            let untaken: Vec<(ConnId, WorkerId)> = world.conns.iter().filter_map(|(&c, f)| match f {
                Fate::Unconfirmed(w) if *w != stuck => Some((c, *w)),
                _ => None,
            }).collect();
            for (conn, worker) in untaken {
                step(&mut pool, &mut world, Event::Taken { worker, conn }, now, &l)?;
            }
            let starting: Vec<WorkerId> = world.workers.iter().filter(|(_, x)| !x.ready).map(|(w, _)| *w).collect();
            for w in starting {
                if let Some(x) = world.workers.get_mut(&w) {
                x.ready = true;
                x.acks = true;
            }
                step(&mut pool, &mut world, Event::WorkerReady { worker: w, acks: true }, now, &l)?;
            }
        }
        prop_assert!(!world.workers.contains_key(&stuck), "the stuck worker is gone");
        prop_assert!(
            world.conns.values().all(|f| matches!(f, Fate::Held(w) if *w != stuck)),
            "every connection is in a working worker's hands: {:?}", world.conns
        );
    }
}
