//! The status report written to the log on SIGUSR2: what was accepted, refused and handed
//! off, and for each service and generation its workers, their state and load.

use super::runtime::Runtime;

/// The counts in one line, for the service manager's `STATUS=` (see [`super::notify`]).
pub fn summary(rt: &Runtime) -> String {
    format!(
        "{} accepted, {} refused, {} handed off, {} held, {} worker(s), generation {}",
        rt.acceptor.admitted,
        rt.acceptor.refusals.total,
        rt.handed,
        rt.held(),
        rt.workers.len(),
        rt.services.generation
    )
}

pub fn report(rt: &Runtime) {
    let now = rt.now();
    log::info!(
        "status: {} accepted, {} refused, {} handed off, {} connection(s) held (budget {}, descriptor limit {}), generation {}",
        rt.acceptor.admitted,
        rt.acceptor.refusals.total,
        rt.handed,
        rt.held(),
        rt.budget,
        rt.nofile,
        rt.services.generation
    );
    for s in rt.services.by_id.values() {
        for g in s.pools() {
            let current = s.current.as_ref().map(|c| c.generation) == Some(g.generation);
            let statuses = g.pool.status();
            log::info!(
                "status: [SERVICE={}] generation {}{}: {} worker(s), {} connection(s) waiting, {}",
                s.name,
                g.generation,
                if current { "" } else { " (draining)" },
                statuses.len(),
                g.pool.waiting(),
                if g.pool.accepting() {
                    "accepting"
                } else {
                    "not accepting"
                }
            );
            for st in statuses {
                log::info!(
                    "status: [SERVICE={}] worker {} pid {} {} age {} s, {} active, {} served",
                    s.name,
                    st.worker,
                    rt.workers.pid(st.worker).unwrap_or(0),
                    st.state,
                    now.saturating_sub(st.started) / 1000,
                    st.active,
                    st.served
                );
            }
        }
    }
}
