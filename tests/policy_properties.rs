//! The worker-pool policy under random sequences of events, driven by a model of the world
//! that reacts as real workers would: the limits hold after every step, no connection is lost
//! or handed twice, and nothing is handed to a worker that cannot take it.

use std::collections::{BTreeMap, BTreeSet};

use msdispatcher::dispatcher::policy::{Action, Event, Pool, PoolLimits, WorkerId};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Arrive,
    Ready(usize),
    End(usize),
    Crash(usize),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Arrive),
        3 => (0usize..8).prop_map(Op::Ready),
        3 => (0usize..8).prop_map(Op::End),
        1 => (0usize..8).prop_map(Op::Crash),
        2 => (1u64..120_000).prop_map(Op::Tick),
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

/// What the world knows of the workers, from the actions it was given.
#[derive(Default)]
struct World {
    starting: BTreeSet<WorkerId>,
    ready: BTreeSet<WorkerId>,
    retiring: BTreeSet<WorkerId>,
    active: BTreeMap<WorkerId, u64>,
    handed: BTreeSet<u64>,
    arrived: u64,
}

impl World {
    fn apply(&mut self, actions: &[Action], l: &PoolLimits) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                Action::Spawn(w) => {
                    prop_assert!(self.starting.insert(*w), "worker {w} spawned twice");
                }
                Action::HandOff { conn, worker } => {
                    prop_assert!(
                        self.ready.contains(worker),
                        "handed to a worker not ready: {a:?}"
                    );
                    prop_assert!(
                        !self.retiring.contains(worker),
                        "handed to a retiring worker"
                    );
                    prop_assert!(self.handed.insert(*conn), "connection {conn} handed twice");
                    let n = self.active.entry(*worker).or_default();
                    *n += 1;
                    prop_assert!(*n <= l.max_conns, "MAX_CONNS exceeded on {worker}");
                }
                Action::Retire { worker, .. } => {
                    prop_assert!(self.ready.contains(worker));
                    self.retiring.insert(*worker);
                }
                _ => {}
            }
        }
        let serving = self.starting.len() + self.ready.len() - self.retiring.len();
        prop_assert!(
            serving as u64 <= l.max_procs,
            "MAX_PROCS exceeded: {serving}"
        );
        prop_assert!(
            self.retiring.len() as u64 <= l.max_shutdown,
            "MAX_SHUTDOWN exceeded"
        );
        Ok(())
    }

    fn nth<T: Copy>(set: &BTreeSet<T>, i: usize) -> Option<T> {
        (!set.is_empty()).then(|| *set.iter().nth(i % set.len()).expect("index in range"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn limits_hold_and_no_connection_is_lost(l in limits(), ops in prop::collection::vec(op(), 1..120)) {
        let mut pool = Pool::new(l);
        let mut world = World::default();
        let mut now = 0u64;
        let a = pool.handle(Event::Tick, now);
        world.apply(&a, &l)?;
        for op in ops {
            let event = match op {
                Op::Arrive if pool.accepting() => {
                    world.arrived += 1;
                    Event::ConnectionArrived(world.arrived)
                }
                Op::Arrive => continue,
                Op::Ready(i) => match World::nth(&world.starting, i) {
                    Some(w) => {
                        world.starting.remove(&w);
                        world.ready.insert(w);
                        Event::WorkerReady(w)
                    }
                    None => continue,
                },
                Op::End(i) => {
                    let busy: BTreeSet<WorkerId> =
                        world.active.iter().filter(|(_, n)| **n > 0).map(|(w, _)| *w).collect();
                    match World::nth(&busy, i) {
                        Some(w) => {
                            *world.active.entry(w).or_default() -= 1;
                            Event::ConnectionEnded(w)
                        }
                        None => continue,
                    }
                }
                Op::Crash(i) => {
                    let all: BTreeSet<WorkerId> = world.starting.union(&world.ready).copied().collect();
                    match World::nth(&all, i) {
                        Some(w) => {
                            world.starting.remove(&w);
                            world.ready.remove(&w);
                            world.retiring.remove(&w);
                            world.active.remove(&w);
                            Event::WorkerExited { worker: w, clean: false }
                        }
                        None => continue,
                    }
                }
                Op::Tick(ms) => {
                    now += ms;
                    Event::Tick
                }
            };
            let actions = pool.handle(event, now);
            world.apply(&actions, &l)?;
            // A retiring worker whose last connection ended exits by itself.
            let done: Vec<WorkerId> = world
                .retiring
                .iter()
                .filter(|w| world.active.get(w).copied().unwrap_or(0) == 0)
                .copied()
                .collect();
            for w in done {
                world.ready.remove(&w);
                world.retiring.remove(&w);
                world.active.remove(&w);
                let a = pool.handle(Event::WorkerExited { worker: w, clean: true }, now);
                world.apply(&a, &l)?;
            }
            prop_assert_eq!(
                world.handed.len() as u64 + pool.waiting() as u64,
                world.arrived,
                "every accepted connection is handed off or waiting"
            );
        }
    }
}
