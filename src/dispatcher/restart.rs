//! `dispatcher --restart SERVICE` (and `'*'` for every service), as the original's
//! `imsimta restart`: the service gets a new generation with the configuration it runs now,
//! whose new workers (reading `imta.cnf` afresh) take the new connections, while the workers of
//! the previous generation drain, finishing their sessions; the connections still waiting go to
//! the new generation. Nothing is read again and no listener changes: the sockets stay, so no
//! client is refused. A reload ([`super::reload`]) does the same for every service, with a
//! configuration read again.

use super::generation::ServiceId;
use super::policy::Event;
use super::runtime::Runtime;
use super::workers::Owner;

/// Restarts the service called `name` (any case), or every service (`None`); the names of the
/// services restarted and the generation they now run, or why nothing was done.
pub fn restart(rt: &mut Runtime, name: Option<&str>) -> Result<(Vec<String>, u64), String> {
    if rt.stopping.is_some() {
        return Err("the dispatcher is stopping".into());
    }
    let running: Vec<(ServiceId, String)> = rt
        .services
        .by_id
        .values()
        .filter(|s| s.current.is_some())
        .map(|s| (s.id, s.name.clone()))
        .collect();
    let chosen: Vec<(ServiceId, String)> = match name {
        None => running.clone(),
        Some(n) => running
            .iter()
            .filter(|(_, s)| s.eq_ignore_ascii_case(n))
            .cloned()
            .collect(),
    };
    if chosen.is_empty() {
        let names: Vec<&str> = running.iter().map(|(_, n)| n.as_str()).collect();
        return Err(match name {
            Some(n) => format!(
                "no service {} in the configuration in force (its services: {})",
                crate::log_text::untrusted(n),
                names.join(", ")
            ),
            None => "no service to restart".into(),
        });
    }
    rt.services.generation += 1;
    let generation = rt.services.generation;
    let mut previous = Vec::new();
    for (sid, name) in &chosen {
        let Some((config, account)) = rt
            .services
            .by_id
            .get(sid)
            .and_then(|s| s.current.as_ref())
            .map(|g| ((*g.config).clone(), g.account))
        else {
            continue;
        };
        let pool = rt.new_pool(config, account);
        if let Some(s) = rt.services.get_mut(*sid) {
            if let Some(prev) = s.current.replace(pool) {
                previous.push(Owner {
                    service: *sid,
                    generation: prev.generation,
                });
                s.old.push(prev);
            }
        }
        log::info!("[SERVICE={name}] restarted: generation {generation} starts its workers, the previous one drains");
    }
    for owner in previous {
        rt.feed(owner, Event::WindDown);
    }
    for (sid, _) in &chosen {
        if let Some(owner) = rt.current_of(*sid) {
            rt.feed(owner, Event::Tick);
        }
    }
    rt.services.forget_finished();
    rt.recompute_budget();
    rt.accept_all();
    Ok((chosen.into_iter().map(|(_, n)| n).collect(), generation))
}
