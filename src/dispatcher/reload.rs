//! Carrying out a reload (SIGHUP): every file was read again; this module checks that the
//! result may replace what runs, computes the [`ReloadPlan`] and performs it.
//!
//! If the new configuration is not usable, would take away or weaken the PORT_ACCESS table in
//! force ([`access::check_reload`]), names an account workers may not run as, or needs a port
//! that cannot be opened, the reason is logged and nothing changes. Otherwise a new generation
//! begins: every service of the new configuration gets a new pool (and keeps its id if it ran
//! before), ports that stay keep their socket (no client queued on them is lost, even when the
//! port moved to another service), new ports are opened, removed ones closed; the pools of the
//! previous generation wind down: their workers drain and finish their sessions where they
//! are, and the connections still waiting go to the new generation.

use std::collections::HashMap;

use super::access;
use super::generation::ServiceId;
use super::policy::Event;
use super::reload_plan::{self, ServiceShape};
use super::runtime::{service_account, Runtime, Source};
use super::workers::Owner;
use crate::config::service::Service;
use crate::mapping::table::MappingSet;

/// A configuration read again on SIGHUP.
pub struct Reloaded {
    pub services: Vec<Service>,
    pub port_access: Option<MappingSet>,
    /// Where `port_access` was read from, for the reason a reload is refused.
    pub mappings_path: std::path::PathBuf,
    pub mail_user: Option<String>,
    /// The metrics endpoint's address now configured (not moved by a reload).
    pub metrics: Option<std::net::SocketAddr>,
}

/// Logs why a reload is refused, and returns it (for the service manager's status line).
pub fn refuse(why: impl std::fmt::Display) -> String {
    log::error!("reload refused, still running on the previous configuration: {why}");
    why.to_string()
}

/// Switches to a configuration read again (see the module comment); the generation now in
/// force, or why nothing changed (already logged).
pub fn apply(rt: &mut Runtime, new: Reloaded) -> Result<u64, String> {
    let ports: Vec<u16> = new
        .services
        .iter()
        .flat_map(|s| s.ports.value.iter().copied())
        .collect();
    if let Err(e) = access::check_reload(
        rt.port_access.as_ref(),
        &new.mappings_path,
        new.port_access.as_ref(),
        &ports,
    ) {
        return Err(refuse(e));
    }
    let mut accounts = Vec::new();
    for ns in &new.services {
        match service_account(ns, new.mail_user.as_deref()) {
            Ok(a) => accounts.push(a),
            Err(e) => return Err(refuse(e)),
        }
    }
    // The plan, from the services in force and the sockets they listen on.
    let listeners = rt.acceptor.list();
    let old: Vec<(ServiceId, ServiceShape)> = rt
        .services
        .by_id
        .values()
        .filter(|s| s.current.is_some())
        .map(|s| {
            let listen = listeners
                .iter()
                .filter(|(_, owner, _)| *owner == s.id)
                .map(|&(_, _, address)| address)
                .collect();
            (
                s.id,
                ServiceShape {
                    name: s.name.clone(),
                    listen,
                },
            )
        })
        .collect();
    let shapes: Vec<ServiceShape> = new.services.iter().map(reload_plan::shape).collect();
    let plan = reload_plan::plan(&old, &shapes);
    for (n, address) in &plan.duplicate_listeners {
        log::warn!(
            "[SERVICE={}] {address} is listed by an earlier service too; the first one has it",
            new.services[*n].name
        );
    }
    // Open every new port first; any failure changes nothing (what was opened closes).
    let mut opened = Vec::new();
    for &(n, address) in &plan.open_listeners {
        match super::listen::open_port(&new.services[n], address.port()) {
            Ok(l) => opened.push((n, address, l)),
            Err(e) => return Err(refuse(e)),
        }
    }

    // From here on nothing can fail: a new generation.
    let previous: Vec<Owner> = rt
        .services
        .by_id
        .values()
        .filter_map(|s| {
            s.current.as_ref().map(|g| Owner {
                service: s.id,
                generation: g.generation,
            })
        })
        .collect();
    rt.services.generation += 1;
    let mut id_of: HashMap<usize, ServiceId> = HashMap::new();
    let mut configs: Vec<Option<Service>> = new.services.into_iter().map(Some).collect();
    for &(sid, n) in &plan.keep_services {
        let Some(config) = configs[n].take() else {
            continue;
        };
        let pool = rt.new_pool(config, accounts[n]);
        if let Some(s) = rt.services.get_mut(sid) {
            s.name = pool.config.name.clone();
            if let Some(prev) = s.current.replace(pool) {
                s.old.push(prev);
            }
        }
        id_of.insert(n, sid);
    }
    for &n in &plan.add_services {
        if let Some(config) = configs[n].take() {
            id_of.insert(n, rt.add_service(config, accounts[n]));
        }
    }
    for &sid in &plan.remove_services {
        if let Some(s) = rt.services.get_mut(sid) {
            log::info!(
                "[SERVICE={}] removed from the configuration; its workers drain",
                s.name
            );
            if let Some(prev) = s.current.take() {
                s.old.push(prev);
            }
        }
    }
    // Listeners: kept ones (perhaps moving to another service), closed ones, new ones.
    for &(owner, address, n) in &plan.keep_listeners {
        let found = listeners
            .iter()
            .find(|&&(_, o, a)| o == owner && a == address);
        if let (Some(&(lid, _, _)), Some(&sid)) = (found, id_of.get(&n)) {
            rt.acceptor.move_to(lid, sid);
        }
    }
    for &(owner, address) in &plan.close_listeners {
        let found = listeners
            .iter()
            .find(|&&(_, o, a)| o == owner && a == address);
        if let Some(&(lid, _, _)) = found {
            rt.acceptor.remove(rt.poll.registry(), lid);
            log::info!("no longer listening on {address}");
        }
    }
    for (n, address, socket) in opened {
        let Some(&sid) = id_of.get(&n) else { continue };
        let name = rt.services.name(sid);
        match rt
            .acceptor
            .add(rt.poll.registry(), sid, address, socket, |id| {
                Source::Listener(id).token()
            }) {
            Ok(_) => log::info!("[SERVICE={name}] listening on {address}"),
            Err(e) => log::error!("[SERVICE={name}] cannot watch the listener on {address}: {e}"),
        }
    }
    rt.port_access = new.port_access;
    // The previous generation winds down; what waited there moves to the new one.
    for owner in previous {
        rt.feed(owner, Event::WindDown);
    }
    for sid in id_of.values() {
        if let Some(owner) = rt.current_of(*sid) {
            rt.feed(owner, Event::Tick);
        }
    }
    rt.services.forget_finished();
    rt.recompute_budget();
    rt.accept_all();
    log::info!(
        "configuration reloaded (generation {})",
        rt.services.generation
    );
    Ok(rt.services.generation)
}
