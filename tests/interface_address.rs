//! INTERFACE_ADDRESS as the seed's HA note means it: one host, two dispatchers, each its own
//! installation (its own IMTA_LOG, pid file, store) bound to its own address, on the SAME
//! port numbers, the way a cluster runs one dispatcher per floating address. Each must start
//! although the other already holds the ports, serve only the connections made to its own
//! address, and leave every other address of the host unserved.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};

use common::dispatcher::{field, Client, Dispatcher, Layout};

/// Installation A's address and B's (both on loopback, so the test needs no interface).
const ADDRESS_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ADDRESS_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The client: one of the relays the runtime fixture's PORT_ACCESS admits.
const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Workers from the start, so that a connection is handed off at once.
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=1";

/// An installation of the runtime fixture (the echo image on both services) whose two
/// services listen on `address` instead of 127.0.0.1; on `ports` if given (its own free
/// ports otherwise), with its PORT_ACCESS table moved to them too.
fn installation(address: Ipv4Addr, ports: Option<[u16; 2]>) -> Layout {
    let mut layout = Layout::new(LIMITS, ["echo_image", "echo_image"], |_| {});
    let own = layout.ports;
    let ports = ports.unwrap_or(own);
    layout.edit_config("dispatcher.cnf", |text| {
        let mut text = text.replace(
            "INTERFACE_ADDRESS=127.0.0.1\n",
            &format!("INTERFACE_ADDRESS={address}\n"),
        );
        for (from, to) in own.iter().zip(ports) {
            text = text.replace(&format!("PORT={from}\n"), &format!("PORT={to}\n"));
        }
        assert_eq!(
            text.matches(&format!("INTERFACE_ADDRESS={address}\n"))
                .count(),
            2,
            "both services of the fixture name an interface:\n{text}"
        );
        text
    });
    layout.edit_config("mappings", |mut text| {
        for (from, to) in own.iter().zip(ports) {
            text = text.replace(&format!("|{from}|"), &format!("|{to}|"));
        }
        text
    });
    layout.ports = ports;
    layout
}

/// A `--check`ed and started installation on `address`.
fn start(layout: Layout, address: Ipv4Addr) -> Dispatcher {
    let (status, stdout, stderr) = layout.check();
    assert!(
        status.success(),
        "--check of the installation on {address} fails:\n{stdout}\n{stderr}"
    );
    let shown: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("INTERFACE_ADDRESS "))
        .collect();
    assert!(
        shown.len() == 2
            && shown
                .iter()
                .all(|l| l.split_whitespace().nth(1) == Some(&address.to_string())),
        "--check shows both services on {address}:\n{stdout}"
    );
    Dispatcher::launch_on(layout, IpAddr::V4(address), |_| {})
}

/// A on 127.0.0.2, then B on 127.0.0.3 with A's port numbers.
fn two_installations() -> (Dispatcher, Dispatcher) {
    let a = start(installation(ADDRESS_A, None), ADDRESS_A);
    let b = start(installation(ADDRESS_B, Some(a.ports)), ADDRESS_B);
    assert_eq!(a.ports, b.ports, "both installations use the same ports");
    (a, b)
}

/// Connects from the relay to `address:port` and returns the pid of the worker that greets.
fn greeting_worker(address: Ipv4Addr, port: u16) -> i32 {
    let mut client = Client::connect(RELAY, SocketAddr::from((address, port)));
    let greeting = client.line();
    assert!(
        greeting.starts_with("220 ") && greeting.contains(" echo "),
        "an echo greeting from {address}:{port}: {greeting:?}"
    );
    assert_eq!(client.quit(), "221 bye\r\n");
    field(&greeting, "pid")
        .parse()
        .unwrap_or_else(|e| panic!("a pid in {greeting:?}: {e}"))
}

#[test]
fn second_installation_on_another_address_starts_on_the_same_ports() {
    let (a, b) = two_installations();
    for port in b.ports {
        b.wait_for_log(&format!("listening on {ADDRESS_B}:{port}"));
        a.wait_for_log(&format!("listening on {ADDRESS_A}:{port}"));
    }
    let stderr = std::fs::read_to_string(b.root.join("stderr.log")).unwrap_or_default();
    assert!(
        !stderr.contains("cannot listen"),
        "B was refused a port:\n{stderr}"
    );
    assert_ne!(a.root, b.root, "two installations");
}

/// The echo image's pid on `address:port` must be a worker of `own`, not of `other`.
fn assert_served_by(address: Ipv4Addr, port: u16, own: &Dispatcher, other: &Dispatcher) {
    let pid = greeting_worker(address, port);
    let (own_workers, other_workers) = (own.workers("echo_image"), other.workers("echo_image"));
    assert!(
        own_workers.contains(&pid) && !other_workers.contains(&pid),
        "{address}:{port} greeted by pid {pid}; workers of its own installation {own_workers:?}, \
         of the other {other_workers:?}"
    );
}

#[test]
fn each_address_reaches_only_its_own_installation() {
    let (a, b) = two_installations();
    for port in a.ports {
        assert_served_by(ADDRESS_A, port, &a, &b);
        assert_served_by(ADDRESS_B, port, &b, &a);
    }
}

#[test]
fn an_address_neither_names_is_refused_at_connect() {
    let (a, _b) = two_installations();
    for port in a.ports {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match TcpStream::connect(to) {
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "connecting to {to}: {e}"
            ),
            Ok(_) => panic!("something listens on {to}, which neither installation names"),
        }
    }
}
