//! Services and their configuration generations.
//!
//! A service has a [`ServiceId`] that survives reloads (matched by name). Every successful
//! reload makes a new generation: each service of the new configuration gets a fresh
//! [`GenPool`] (its configuration, its account and a new [`Pool`]), and the pools of earlier
//! generations wind down, living on until their last worker has exited, as Dovecot keeps its
//! old service list after a reload and Postfix tags its children with a generation number.
//! A worker belongs to exactly one generation of one service (its [`Owner`]), so whatever it
//! says reaches the pool that started it, however the configuration changed since.
//! A service removed by a reload has no current generation; it is forgotten when its last old
//! generation is.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::account::RunAs;
use super::policy::Pool;
use super::workers::Owner;
use crate::config::service::Service;

pub use super::reload_plan::ServiceId;
pub type Generation = u64;

/// One service's pool in one generation.
pub struct GenPool {
    pub generation: Generation,
    pub config: Rc<Service>,
    /// The account its workers run as.
    pub account: Option<RunAs>,
    pub pool: Pool,
    /// When the "every worker is busy" warning was last logged (milliseconds).
    pub last_saturation_log: Option<u64>,
}

/// What a service did since the dispatcher started, across its generations (and restarts):
/// what `--status` and the metrics endpoint show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    /// Connections admitted by PORT_ACCESS, refused by it, and confirmed in a worker's hands.
    pub accepted: u64,
    pub refused: u64,
    pub handed_off: u64,
    /// Workers started, starts that failed (the image exited before serving, or never said
    /// READY), and workers killed (unresponsive, protocol violation, not ready).
    pub starts: u64,
    pub failed_starts: u64,
    pub kills: u64,
    /// What the workers reported of their deliveries (`STATS`), added up: it outlives them.
    pub lmtp: crate::handoff::stats::WorkerStats,
}

/// A service across generations.
pub struct ServiceRt {
    pub id: ServiceId,
    pub name: String,
    pub counts: ServiceCounts,
    /// The pool of the configuration in force; `None` once a reload removed the service.
    pub current: Option<GenPool>,
    /// Pools of earlier generations whose workers have not all exited.
    pub old: Vec<GenPool>,
}

impl ServiceRt {
    /// The pool a worker of `generation` belongs to.
    pub fn pool_of(&mut self, generation: Generation) -> Option<&mut GenPool> {
        match &mut self.current {
            Some(c) if c.generation == generation => Some(c),
            _ => self.old.iter_mut().find(|g| g.generation == generation),
        }
    }

    /// Forgets old generations with no worker left; whether the whole service can go.
    pub fn forget_finished(&mut self) -> bool {
        self.old.retain(|g| g.pool.workers() > 0);
        self.current.is_none() && self.old.is_empty()
    }

    /// Every pool, current first.
    pub fn pools(&self) -> impl Iterator<Item = &GenPool> {
        self.current.iter().chain(self.old.iter())
    }
}

/// Every service, by id.
#[derive(Default)]
pub struct Services {
    pub by_id: BTreeMap<ServiceId, ServiceRt>,
    next_id: ServiceId,
    /// The generation in force.
    pub generation: Generation,
}

impl Services {
    /// A new service id.
    pub fn new_id(&mut self) -> ServiceId {
        self.next_id += 1;
        self.next_id
    }

    /// A service's name for log lines (empty once it is forgotten).
    pub fn name(&self, id: ServiceId) -> String {
        self.by_id
            .get(&id)
            .map_or_else(String::new, |s| s.name.clone())
    }

    pub fn get_mut(&mut self, id: ServiceId) -> Option<&mut ServiceRt> {
        self.by_id.get_mut(&id)
    }

    /// The pool a worker belongs to.
    pub fn pool_of(&mut self, owner: Owner) -> Option<&mut GenPool> {
        self.by_id
            .get_mut(&owner.service)?
            .pool_of(owner.generation)
    }

    /// Every (service, generation) that has a pool.
    pub fn all_pools(&self) -> Vec<Owner> {
        self.by_id
            .values()
            .flat_map(|s| {
                s.pools().map(move |g| Owner {
                    service: s.id,
                    generation: g.generation,
                })
            })
            .collect()
    }

    /// Drops what has finished.
    pub fn forget_finished(&mut self) {
        self.by_id.retain(|_, s| !s.forget_finished());
    }

    /// Whether every service of the configuration in force has its MIN_PROCS workers ready.
    pub fn min_procs_ready(&self) -> bool {
        self.by_id
            .values()
            .filter_map(|s| s.current.as_ref())
            .all(|g| g.pool.min_procs_ready())
    }

    /// The most workers the configuration in force may run at once, retiring ones aside:
    /// twice the sum of MAX_PROCS.
    pub fn max_workers(&self) -> u64 {
        self.by_id
            .values()
            .filter_map(|s| s.current.as_ref())
            // Each may have a successor started before it retires (`policy`, recycling).
            .map(|g| g.pool.limits().max_procs.saturating_mul(2))
            .sum()
    }
}
