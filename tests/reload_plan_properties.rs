//! The reload plan under random old and new configurations, drawn from small alphabets of
//! names (differing in case) and addresses so that services and ports overlap often: the
//! services and the sockets partition, carrying the plan out on the sockets open now gives
//! exactly the sockets the new configuration wants, nothing is opened where a socket is
//! (no `EADDRINUSE`), and a configuration reloaded unchanged changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use msdispatcher::dispatcher::reload_plan::{plan, ReloadPlan, ServiceId, ServiceShape};
use proptest::prelude::*;

/// Names that collide often, and collide ignoring case more often still.
const NAMES: &[&str] = &["lmtpss", "LMTPSS", "LmtpSs", "lmtpsn", "LMTPSN", "smtp"];

/// Every address (both families) and one interface address, on a few ports.
fn address() -> impl Strategy<Value = SocketAddr> {
    let ips = [
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    ];
    (0usize..ips.len(), 1u16..5).prop_map(move |(i, port)| SocketAddr::new(ips[i], port))
}

fn service() -> impl Strategy<Value = ServiceShape> {
    (
        proptest::sample::select(NAMES),
        proptest::collection::vec(address(), 0..4),
    )
        .prop_map(|(name, listen)| ServiceShape {
            name: name.to_string(),
            listen,
        })
}

/// A new configuration as read: anything, an address listed twice included.
fn new_config() -> impl Strategy<Value = Vec<ServiceShape>> {
    proptest::collection::vec(service(), 0..5)
}

/// Services with distinct ids, which are not their positions (a plan that confused the two
/// would show).
fn with_ids(services: Vec<ServiceShape>) -> Vec<(ServiceId, ServiceShape)> {
    (0..).map(|i: u64| 1000 - 7 * i).zip(services).collect()
}

/// The services in force as the event loop holds them: distinct ids, and each address open
/// once (a second bind of one address fails, so no running state has one twice).
fn old_state() -> impl Strategy<Value = Vec<(ServiceId, ServiceShape)>> {
    new_config().prop_map(|services| {
        let mut seen = BTreeSet::new();
        let services = services
            .into_iter()
            .map(|mut s| {
                s.listen.retain(|a| seen.insert(*a));
                s
            })
            .collect();
        with_ids(services)
    })
}

/// Who owns a socket in the model of the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Old(ServiceId),
    New(usize),
}

/// The sockets the new configuration wants: each address once, owned by its first listing.
fn wanted(new: &[ServiceShape]) -> BTreeSet<(Owner, SocketAddr)> {
    let mut seen = BTreeSet::new();
    let mut out = BTreeSet::new();
    for (n, s) in new.iter().enumerate() {
        for a in &s.listen {
            if seen.insert(*a) {
                out.insert((Owner::New(n), *a));
            }
        }
    }
    out
}

/// A multiset, as counts.
fn counts<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// Carries `p` out on the sockets open now, as the event loop does (open first, then move
/// and close), refusing anything the kernel or the bookkeeping would refuse.
fn apply(
    old: &[(ServiceId, ServiceShape)],
    p: &ReloadPlan,
) -> Result<BTreeSet<(Owner, SocketAddr)>, TestCaseError> {
    let mut open: BTreeMap<SocketAddr, Vec<Owner>> = BTreeMap::new();
    for (id, s) in old {
        for a in &s.listen {
            open.entry(*a).or_default().push(Owner::Old(*id));
        }
    }
    for (n, a) in &p.open_listeners {
        prop_assert!(
            !open.contains_key(a),
            "opens {a} for new service {n} while a socket is bound there: {p:?}"
        );
        open.entry(*a).or_default().push(Owner::New(*n));
    }
    let mut take = |id: ServiceId, a: &SocketAddr| -> Result<(), TestCaseError> {
        let holders = open.get_mut(a);
        let at = holders
            .as_ref()
            .and_then(|h| h.iter().position(|o| *o == Owner::Old(id)));
        match (holders, at) {
            (Some(h), Some(i)) => {
                h.remove(i);
                Ok(())
            }
            _ => Err(TestCaseError::fail(format!(
                "service {id} has no socket on {a} to keep or close: {p:?}"
            ))),
        }
    };
    for (id, a, _) in &p.keep_listeners {
        take(*id, a)?;
    }
    for (id, a) in &p.close_listeners {
        take(*id, a)?;
    }
    for (_, a, n) in &p.keep_listeners {
        open.entry(*a).or_default().push(Owner::New(*n));
    }
    let mut after = BTreeSet::new();
    for (a, owners) in open {
        prop_assert!(
            owners.len() <= 1,
            "{a} is bound twice after the plan: {p:?}"
        );
        for o in owners {
            prop_assert!(
                matches!(o, Owner::New(_)),
                "{a} is still owned by old {o:?}: {p:?}"
            );
            after.insert((o, a));
        }
    }
    Ok(after)
}

fn check_services(
    old: &[(ServiceId, ServiceShape)],
    new: &[ServiceShape],
    p: &ReloadPlan,
) -> Result<(), TestCaseError> {
    let old_ids: Vec<ServiceId> = old.iter().map(|(id, _)| *id).collect();
    let planned_old = counts(
        p.keep_services
            .iter()
            .map(|(id, _)| *id)
            .chain(p.remove_services.iter().copied()),
    );
    prop_assert_eq!(
        planned_old,
        counts(old_ids.iter().copied()),
        "each old service is kept or removed exactly once"
    );
    let planned_new = counts(
        p.keep_services
            .iter()
            .map(|(_, n)| *n)
            .chain(p.add_services.iter().copied()),
    );
    prop_assert_eq!(
        planned_new,
        counts(0..new.len()),
        "each new service is kept or added exactly once"
    );
    let by_id: BTreeMap<ServiceId, &ServiceShape> = old.iter().map(|(id, s)| (*id, s)).collect();
    for (id, n) in &p.keep_services {
        prop_assert!(
            by_id[id].name.eq_ignore_ascii_case(&new[*n].name),
            "kept {} as {}",
            by_id[id].name,
            new[*n].name
        );
    }
    // No pairing missed: a removed service and an added one never share a name.
    for id in &p.remove_services {
        for n in &p.add_services {
            prop_assert!(
                !by_id[id].name.eq_ignore_ascii_case(&new[*n].name),
                "removed {} and added {}",
                by_id[id].name,
                new[*n].name
            );
        }
    }
    Ok(())
}

fn check_listeners(
    old: &[(ServiceId, ServiceShape)],
    new: &[ServiceShape],
    p: &ReloadPlan,
) -> Result<(), TestCaseError> {
    // Every old socket is kept or closed exactly once.
    let old_sockets = counts(
        old.iter()
            .flat_map(|(id, s)| s.listen.iter().map(move |a| (*id, *a))),
    );
    let planned_old = counts(
        p.keep_listeners
            .iter()
            .map(|(id, a, _)| (*id, *a))
            .chain(p.close_listeners.iter().copied()),
    );
    prop_assert_eq!(
        planned_old,
        old_sockets,
        "each old socket is kept or closed once"
    );
    // Every address of the new configuration is kept or opened exactly once.
    let new_addresses: BTreeSet<SocketAddr> =
        new.iter().flat_map(|s| s.listen.iter().copied()).collect();
    let planned_new = counts(
        p.keep_listeners
            .iter()
            .map(|(_, a, _)| *a)
            .chain(p.open_listeners.iter().map(|(_, a)| *a)),
    );
    prop_assert_eq!(
        planned_new,
        counts(new_addresses.iter().copied()),
        "each new address is kept or opened once"
    );
    // Every listing in the new configuration is accounted for once: it has the socket (kept
    // or opened), or it repeats an earlier listing.
    let listings = counts(
        new.iter()
            .enumerate()
            .flat_map(|(n, s)| s.listen.iter().map(move |a| (n, *a))),
    );
    let planned_listings = counts(
        p.keep_listeners
            .iter()
            .map(|(_, a, n)| (*n, *a))
            .chain(p.open_listeners.iter().copied())
            .chain(p.duplicate_listeners.iter().copied()),
    );
    prop_assert_eq!(
        planned_listings,
        listings,
        "each new listing is kept, opened or a duplicate"
    );
    // Nothing opened where a socket is kept or closed.
    let opened: BTreeSet<SocketAddr> = p.open_listeners.iter().map(|(_, a)| *a).collect();
    for (_, a, _) in &p.keep_listeners {
        prop_assert!(!opened.contains(a), "{a} both kept and opened: {p:?}");
    }
    for (_, a) in &p.close_listeners {
        prop_assert!(!opened.contains(a), "{a} both closed and opened: {p:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The services partition: kept (same name ignoring case), added or removed, each once.
    #[test]
    fn services_are_kept_added_or_removed_exactly_once(old in old_state(), new in new_config()) {
        let p = plan(&old, &new);
        check_services(&old, &new, &p)?;
    }

    /// The sockets partition, and nothing is opened where one is bound.
    #[test]
    fn sockets_are_kept_opened_or_closed_exactly_once(old in old_state(), new in new_config()) {
        let p = plan(&old, &new);
        check_listeners(&old, &new, &p)?;
    }

    /// Carrying the plan out on the sockets open now gives the new configuration's sockets,
    /// each owned by the service that lists it first.
    #[test]
    fn carrying_the_plan_out_gives_the_new_sockets(old in old_state(), new in new_config()) {
        let p = plan(&old, &new);
        let after = apply(&old, &p)?;
        prop_assert_eq!(after, wanted(&new), "plan: {:?}", p);
    }

    /// Reloading an unchanged configuration keeps every service and socket where it is.
    #[test]
    fn an_unchanged_configuration_changes_nothing(old in old_state()) {
        let same: Vec<ServiceShape> = old.iter().map(|(_, s)| s.clone()).collect();
        let p = plan(&old, &same);
        let kept: Vec<(ServiceId, usize)> =
            old.iter().enumerate().map(|(n, (id, _))| (*id, n)).collect();
        prop_assert_eq!(&p.keep_services, &kept);
        let sockets: Vec<(ServiceId, SocketAddr, usize)> = old
            .iter()
            .enumerate()
            .flat_map(|(n, (id, s))| s.listen.iter().map(move |a| (*id, *a, n)))
            .collect();
        prop_assert_eq!(&p.keep_listeners, &sockets);
        prop_assert!(p.add_services.is_empty() && p.remove_services.is_empty(), "{:?}", p);
        prop_assert!(p.open_listeners.is_empty() && p.close_listeners.is_empty(), "{:?}", p);
        prop_assert!(p.duplicate_listeners.is_empty(), "{:?}", p);
    }

    /// The plan is total even on an old state no running dispatcher has (an address held
    /// twice): the partitions still hold and nothing is opened where a socket is bound.
    #[test]
    fn the_plan_is_total_on_any_old_state(old in new_config().prop_map(with_ids), new in new_config()) {
        let p = plan(&old, &new);
        check_services(&old, &new, &p)?;
        check_listeners(&old, &new, &p)?;
    }
}
