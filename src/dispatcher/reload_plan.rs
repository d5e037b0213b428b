//! What a reload (SIGHUP) changes, decided without sockets: from the services in force and
//! the services of the configuration read again, which services stay (and keep their id),
//! which are new and which go; which listening sockets stay open, which are opened and which
//! are closed. The event loop carries the plan out; this module opens nothing, closes nothing
//! and knows no process, so every rule below is a unit test here and a property in
//! `tests/reload_plan_properties.rs`.
//!
//! * A service stays when the new configuration has one of the same name, ignoring ASCII case
//!   (`[SERVICE=lmtpss]` is `[SERVICE=LMTPSS]`, as `dispatcher.cnf` reads them); it keeps its
//!   [`ServiceId`]. A service no longer named is removed; a name not seen before is added.
//! * A listening socket is known by its address, [`super::listen::address`]: the service's
//!   `INTERFACE_ADDRESS` (or `[::]`, every address) and the port. An address open now and
//!   configured again stays open, whichever service lists it now: the clients waiting in its
//!   backlog are not lost, and no second socket is bound beside it, which the kernel would
//!   refuse (`EADDRINUSE`). An address configured and not open is opened; one open and no
//!   longer configured is closed.
//! * No address is both opened and kept or closed, so the event loop may open every new
//!   address first (and, if one fails, close what it opened and change nothing), then close.
//! * Equal [`SocketAddr`], same socket; nothing more clever. `[::]:25` and `0.0.0.0:25` (or
//!   `192.0.2.1:25`) are different addresses here although the kernel will not bind both: a
//!   change from one to the other is planned as open + close, the open fails while the old
//!   socket is there, and the reload is refused, as it was before this module.
//! * The plan is total. The configuration checker refuses a port listed twice (see
//!   `config::service`), but the plan does not rely on it: when the new configuration lists an
//!   address again, the first listing (in configuration order) has the socket and the others
//!   are in [`ReloadPlan::duplicate_listeners`]; when two new services have the same name, the
//!   first takes the old service's id and the second is added. The old side is the caller's
//!   state, whose addresses are distinct (each is a bound socket); were one listed twice, the
//!   first would be the one kept and the other closed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::config::service::Service;

/// A service's identity across reloads, assigned by the caller; never reused.
pub type ServiceId = u64;

/// What of a service matters to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceShape {
    /// As written in `[SERVICE=name]`; compared ignoring ASCII case.
    pub name: String,
    /// One address per `PORT`, in the order of `PORT`: the configured address
    /// ([`super::listen::address`]), not the socket's `local_addr()`, which differs on a host
    /// without IPv6 (the socket for `[::]:p` is bound to `0.0.0.0:p` there) and would make
    /// an unchanged configuration look changed.
    pub listen: Vec<SocketAddr>,
}

/// What a reload changes. Each list is in a fixed order (old services and their addresses in
/// the order given, new ones likewise), so the same inputs give the same plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Old service -> index in the new list (same name, case-insensitive): it keeps its id.
    /// In the order of the new list.
    pub keep_services: Vec<(ServiceId, usize)>,
    /// Indices in the new list of services that are new (caller gives them fresh ids).
    pub add_services: Vec<usize>,
    /// Old services no longer configured (their workers drain, their listeners close).
    pub remove_services: Vec<ServiceId>,
    /// A listening socket that stays open: (old owner, address, index of the new owner).
    /// The owner may change (an address moved from one service to another): the socket moves.
    pub keep_listeners: Vec<(ServiceId, SocketAddr, usize)>,
    /// Addresses to open, for the new service at that index. None of them is open now.
    pub open_listeners: Vec<(usize, SocketAddr)>,
    /// Sockets to close: (old owner, address). None of these addresses is opened or kept,
    /// except by the caller's own duplicate (see the module comment).
    pub close_listeners: Vec<(ServiceId, SocketAddr)>,
    /// Addresses the new configuration lists again after an earlier listing, by the same
    /// service or another: (index of the service listing it again, address). The earlier
    /// listing has the socket; these get none. Empty for any configuration the checker
    /// accepts.
    pub duplicate_listeners: Vec<(usize, SocketAddr)>,
}

/// The shape of a configured service: its name and where each of its ports listens.
pub fn shape(service: &Service) -> ServiceShape {
    ServiceShape {
        name: service.name.clone(),
        listen: service
            .ports
            .value
            .iter()
            .map(|&port| super::listen::address(service, port))
            .collect(),
    }
}

/// The plan that takes the services in force, `old` (with the addresses of their open
/// sockets; not services left draining by an earlier reload, which own nothing any more), to
/// the services `new` of the configuration read again.
pub fn plan(old: &[(ServiceId, ServiceShape)], new: &[ServiceShape]) -> ReloadPlan {
    let mut p = ReloadPlan::default();

    // Services: each new one takes the first old one of the same name not taken yet.
    let mut taken = vec![false; old.len()];
    for (n, ns) in new.iter().enumerate() {
        let same = old
            .iter()
            .enumerate()
            .position(|(o, (_, os))| !taken[o] && os.name.eq_ignore_ascii_case(&ns.name));
        match same {
            Some(o) => {
                taken[o] = true;
                p.keep_services.push((old[o].0, n));
            }
            None => p.add_services.push(n),
        }
    }
    p.remove_services = old
        .iter()
        .zip(&taken)
        .filter(|(_, &t)| !t)
        .map(|((id, _), _)| *id)
        .collect();

    // Listeners: the owner of each address in the new configuration is its first listing.
    let mut owner: HashMap<SocketAddr, usize> = HashMap::new();
    let mut wanted: Vec<(usize, SocketAddr)> = Vec::new();
    for (n, ns) in new.iter().enumerate() {
        for &address in &ns.listen {
            match owner.entry(address) {
                Entry::Occupied(_) => p.duplicate_listeners.push((n, address)),
                Entry::Vacant(first) => {
                    first.insert(n);
                    wanted.push((n, address));
                }
            }
        }
    }
    // An open socket whose address is wanted stays (once); any other closes.
    let mut kept: HashSet<SocketAddr> = HashSet::new();
    for (id, os) in old {
        for &address in &os.listen {
            match owner.get(&address) {
                Some(&n) if kept.insert(address) => p.keep_listeners.push((*id, address, n)),
                _ => p.close_listeners.push((*id, address)),
            }
        }
    }
    // What is wanted and not kept is not open anywhere: open it.
    p.open_listeners = wanted
        .into_iter()
        .filter(|(_, address)| !kept.contains(address))
        .collect();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// `[::]:port`, the address of a port on every address.
    fn any(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    }

    fn v4(a: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, a)), port)
    }

    fn svc(name: &str, listen: &[SocketAddr]) -> ServiceShape {
        ServiceShape {
            name: name.to_string(),
            listen: listen.to_vec(),
        }
    }

    #[test]
    fn the_same_configuration_keeps_everything_and_opens_and_closes_nothing() {
        let old = [
            (7, svc("LMTPSS", &[any(225), any(1225)])),
            (9, svc("LMTPSN", &[v4(1, 226)])),
        ];
        let new: Vec<ServiceShape> = old.iter().map(|(_, s)| s.clone()).collect();
        let p = plan(&old, &new);
        assert_eq!(p.keep_services, vec![(7, 0), (9, 1)]);
        assert_eq!(
            p.keep_listeners,
            vec![(7, any(225), 0), (7, any(1225), 0), (9, v4(1, 226), 1)]
        );
        assert!(p.add_services.is_empty() && p.remove_services.is_empty());
        assert!(p.open_listeners.is_empty() && p.close_listeners.is_empty());
        assert!(p.duplicate_listeners.is_empty());
    }

    #[test]
    fn a_service_keeps_its_id_when_only_the_case_of_its_name_changes() {
        let p = plan(
            &[(3, svc("LMTPSS", &[any(225)]))],
            &[svc("lmtpss", &[any(225)])],
        );
        assert_eq!(p.keep_services, vec![(3, 0)]);
        assert_eq!(p.keep_listeners, vec![(3, any(225), 0)]);
    }

    #[test]
    fn services_are_matched_by_name_not_by_position() {
        let old = [(1, svc("A", &[any(1)])), (2, svc("B", &[any(2)]))];
        let p = plan(&old, &[svc("B", &[any(2)]), svc("A", &[any(1)])]);
        assert_eq!(p.keep_services, vec![(2, 0), (1, 1)]);
        assert_eq!(p.keep_listeners, vec![(1, any(1), 1), (2, any(2), 0)]);
    }

    #[test]
    fn a_new_name_is_added_and_its_ports_opened() {
        let p = plan(
            &[(1, svc("A", &[any(1)]))],
            &[svc("A", &[any(1)]), svc("B", &[any(2), any(3)])],
        );
        assert_eq!(p.add_services, vec![1]);
        assert_eq!(p.open_listeners, vec![(1, any(2)), (1, any(3))]);
        assert!(p.close_listeners.is_empty());
    }

    #[test]
    fn a_name_no_longer_configured_is_removed_and_its_ports_closed() {
        let p = plan(
            &[(1, svc("A", &[any(1)])), (2, svc("B", &[any(2)]))],
            &[svc("A", &[any(1)])],
        );
        assert_eq!(p.remove_services, vec![2]);
        assert_eq!(p.close_listeners, vec![(2, any(2))]);
        assert!(p.open_listeners.is_empty());
    }

    #[test]
    fn a_port_added_to_a_service_is_opened_and_one_taken_away_is_closed() {
        let p = plan(
            &[(1, svc("A", &[any(1), any(2)]))],
            &[svc("A", &[any(2), any(3)])],
        );
        assert_eq!(p.keep_listeners, vec![(1, any(2), 0)]);
        assert_eq!(p.open_listeners, vec![(0, any(3))]);
        assert_eq!(p.close_listeners, vec![(1, any(1))]);
    }

    #[test]
    fn a_new_interface_address_closes_the_old_socket_and_opens_another() {
        let p = plan(&[(1, svc("A", &[any(25)]))], &[svc("A", &[v4(1, 25)])]);
        assert_eq!(p.keep_services, vec![(1, 0)]);
        assert_eq!(p.open_listeners, vec![(0, v4(1, 25))]);
        assert_eq!(p.close_listeners, vec![(1, any(25))]);
    }

    #[test]
    fn ipv4_and_ipv6_every_address_are_different_addresses() {
        let ipv4_any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 25);
        let p = plan(&[(1, svc("A", &[any(25)]))], &[svc("A", &[ipv4_any])]);
        assert_eq!(p.open_listeners, vec![(0, ipv4_any)]);
        assert_eq!(p.close_listeners, vec![(1, any(25))]);
    }

    #[test]
    fn an_address_moved_to_another_service_keeps_its_socket_with_the_new_owner() {
        let old = [(1, svc("A", &[any(1), any(2)])), (2, svc("B", &[any(3)]))];
        let p = plan(&old, &[svc("A", &[any(1)]), svc("B", &[any(3), any(2)])]);
        assert_eq!(
            p.keep_listeners,
            vec![(1, any(1), 0), (1, any(2), 1), (2, any(3), 1)]
        );
        assert!(p.open_listeners.is_empty() && p.close_listeners.is_empty());
    }

    #[test]
    fn an_address_of_a_removed_service_moves_to_a_new_one() {
        let p = plan(&[(1, svc("OLD", &[any(225)]))], &[svc("NEW", &[any(225)])]);
        assert_eq!(p.remove_services, vec![1]);
        assert_eq!(p.add_services, vec![0]);
        assert_eq!(p.keep_listeners, vec![(1, any(225), 0)]);
        assert!(p.open_listeners.is_empty() && p.close_listeners.is_empty());
    }

    #[test]
    fn an_address_listed_twice_is_opened_once_for_its_first_listing() {
        let p = plan(&[], &[svc("A", &[any(1), any(1)]), svc("B", &[any(1)])]);
        assert_eq!(p.open_listeners, vec![(0, any(1))]);
        assert_eq!(p.duplicate_listeners, vec![(0, any(1)), (1, any(1))]);
    }

    #[test]
    fn an_address_listed_twice_and_open_now_is_kept_once_and_never_opened() {
        let p = plan(
            &[(1, svc("B", &[any(1)]))],
            &[svc("A", &[any(1)]), svc("B", &[any(1)])],
        );
        assert_eq!(p.keep_listeners, vec![(1, any(1), 0)]);
        assert_eq!(p.duplicate_listeners, vec![(1, any(1))]);
        assert!(p.open_listeners.is_empty() && p.close_listeners.is_empty());
    }

    #[test]
    fn of_two_new_services_with_one_name_the_first_keeps_the_id() {
        let p = plan(&[(4, svc("A", &[]))], &[svc("a", &[]), svc("A", &[])]);
        assert_eq!(p.keep_services, vec![(4, 0)]);
        assert_eq!(p.add_services, vec![1]);
    }

    #[test]
    fn an_old_address_held_twice_is_kept_once_and_the_other_closed() {
        let old = [(1, svc("A", &[any(1)])), (2, svc("B", &[any(1)]))];
        let p = plan(&old, &[svc("A", &[any(1)])]);
        assert_eq!(p.keep_listeners, vec![(1, any(1), 0)]);
        assert_eq!(p.close_listeners, vec![(2, any(1))]);
        assert!(p.open_listeners.is_empty());
    }

    #[test]
    fn shape_has_one_address_per_port_on_the_interface_address_or_every_address() {
        use crate::config::dispatcher_cnf::parse_str;
        use crate::config::error::Diagnostics;
        use crate::config::service::build;
        use crate::config::source::PlainPaths;
        use std::path::Path;
        use std::sync::Arc;

        let file: Arc<Path> = Arc::from(Path::new("dispatcher.cnf"));
        let mut d = Diagnostics::default();
        let text = "[SERVICE=LMTPSS]\nPORT=225,1225\nIMAGE=/bin/x\n\
                    [SERVICE=LMTPSN]\nPORT=226\nINTERFACE_ADDRESS=192.0.2.7\nIMAGE=/bin/x\n";
        let cnf = parse_str(&file, text, &mut d).expect("parses");
        let config = build(&cnf, &PlainPaths, &mut d).expect("valid");
        let shapes: Vec<ServiceShape> = config.services.iter().map(shape).collect();
        assert_eq!(
            shapes,
            vec![
                svc("LMTPSS", &[any(225), any(1225)]),
                svc("LMTPSN", &[v4(7, 226)]),
            ]
        );
    }
}
