//! Separate hosts on one machine: network namespaces joined by veth pairs to a bridge, with
//! addresses from the documentation ranges 198.51.100.0/24 and 2001:db8:100::/64 (RFC 5737,
//! RFC 3849) that exist only inside them, so a test's traffic never reaches a real network.
//!
//! Every host is a namespace named `<prefix>-<host>` and reaches the others through its
//! `eth0`, a veth whose peer is enslaved to the bridge of a namespace `<prefix>-lan`. A
//! program is started in a host with [`Network::command`] (its `setns(2)` happens between fork
//! and exec, so the child is the test's own child and its pid is the program's); a piece of the
//! test runs in a host with [`Network::within`] (a thread that enters the namespace).
//!
//! Dropping the [`Network`] kills every process left in its namespaces (by pid, from
//! `ip netns pids`) and deletes the namespaces, which deletes their links: also when the test
//! panics. Namespaces left by a test process that no longer exists (killed before its drop
//! ran) are deleted by the next [`Network::new`]. Needs root and iproute2.
#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The first part of every namespace name these tests create.
const PREFIX: &str = "lmtpt";

/// A host of the test network: its namespace and its addresses.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Ipv6Addr,
}

impl Host {
    /// The host's first IPv4 address.
    pub fn ip(&self) -> Ipv4Addr {
        self.v4[0]
    }
}

/// The IPv4 address `198.51.100.<n>`.
pub fn v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n)
}

/// The IPv6 address `2001:db8:100::<n>` (`n` written in hex digits as decimal ones read:
/// host 21 is `2001:db8:100::21`).
pub fn v6(n: u8) -> Ipv6Addr {
    let digits = u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, digits)
}

/// Namespaces joined on one bridge; torn down on drop.
pub struct Network {
    prefix: String,
    hosts: Vec<Host>,
}

impl Network {
    /// Creates the bridge and one namespace per `(name, last numbers of its IPv4 addresses)`:
    /// host `relay` with `[10, 11]` has 198.51.100.10 and .11, and 2001:db8:100::10.
    pub fn new(hosts: &[(&str, &[u8])]) -> Network {
        assert!(
            nix::unistd::geteuid().is_root(),
            "network namespaces need root (CI runs as root)"
        );
        remove_stale();
        let prefix = format!("{PREFIX}{}x{}", std::process::id(), unique());
        let mut net = Network {
            prefix,
            hosts: Vec::new(),
        };
        let lan = net.lan();
        ip(&["netns", "add", &lan]);
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "dev", "br0", "up"]);
        for (i, (name, numbers)) in hosts.iter().enumerate() {
            let netns = format!("{}-{name}", net.prefix);
            let host = Host {
                name: name.to_string(),
                netns: netns.clone(),
                v4: numbers.iter().map(|&n| v4(n)).collect(),
                v6: v6(numbers[0]),
            };
            // Pushed before the links exist: a failure below still deletes this namespace.
            ip(&["netns", "add", &netns]);
            net.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &netns, "type", "veth", "peer", "name", &port,
                "netns", &lan,
            ]);
            ip(&["-n", &lan, "link", "set", "dev", &port, "master", "br0"]);
            ip(&["-n", &lan, "link", "set", "dev", &port, "up"]);
            ip(&["-n", &netns, "link", "set", "dev", "lo", "up"]);
            for &a in &host.v4 {
                add_v4(&netns, a);
            }
            // No duplicate address detection: the address is usable at once.
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{}/64", host.v6),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&["-n", &netns, "link", "set", "dev", "eth0", "up"]);
        }
        net
    }

    fn lan(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the test network"))
    }

    /// Gives `host` one more IPv4 address (`198.51.100.<n>`).
    pub fn add_address(&mut self, host: &str, n: u8) -> Ipv4Addr {
        let netns = self.host(host).netns.clone();
        let a = v4(n);
        add_v4(&netns, a);
        if let Some(h) = self.hosts.iter_mut().find(|h| h.name == host) {
            h.v4.push(a);
        }
        a
    }

    /// `program` to be run on `host`: the child enters the host's network namespace before it
    /// executes `program` (its standard input is null).
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.host(host).netns, program)
    }

    /// Runs `work` on a thread that has entered `host`'s network namespace (sockets it opens
    /// are the host's); its result.
    pub fn within<T: Send + 'static>(
        &self,
        host: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let ns = netns_file(&self.host(host).netns);
        std::thread::spawn(move || {
            enter(&ns).expect("enter the host's network namespace");
            work()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Pids of every process in `host`'s namespace.
    pub fn pids(&self, host: &str) -> Vec<i32> {
        netns_pids(&self.host(host).netns)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        names.push(self.lan());
        teardown(&names);
    }
}

/// `program` to be run in the network namespace `netns` (a [`Host`]'s `netns`): the child
/// enters it before it executes `program` (its standard input is null).
pub fn command_in(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let ns = netns_file(netns);
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // SAFETY: between fork and exec the closure only calls setns(2), which allocates nothing
    // and takes no lock; the descriptor is owned by the closure and stays open until the
    // Command is dropped.
    unsafe {
        cmd.pre_exec(move || enter(&ns));
    }
    cmd
}

/// Kills what runs in `names` and deletes them (the veth pairs go with their namespaces).
/// What cannot be removed is said on standard error: a namespace a process survived in
/// lives on without a name, where no later run can find it.
fn teardown(names: &[String]) {
    let mut left = Vec::new();
    for _ in 0..50 {
        left = names.iter().flat_map(|n| netns_pids(n)).collect();
        if left.is_empty() {
            break;
        }
        for &pid in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !left.is_empty() {
        eprintln!("netns teardown: processes {left:?} survived SIGKILL in {names:?}");
    }
    for n in names {
        let deleted = Command::new("ip")
            .args(["netns", "del", n])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !deleted {
            eprintln!("netns teardown: `ip netns del {n}` failed");
        }
    }
}

/// Deletes the namespaces of test processes that are gone (a test killed before its drop).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix(PREFIX)
                .and_then(|rest| rest.split('x').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| !super::pid_alive(pid))
        })
        .map(str::to_string)
        .collect();
    if !stale.is_empty() {
        teardown(&stale);
    }
}

/// A number no other [`Network`] of this process has.
fn unique() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Moves the calling thread into the network namespace `ns` (`setns(2)`).
fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a descriptor the caller owns; it changes only the calling
    // thread's namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn netns_file(netns: &str) -> File {
    let path = Path::new("/run/netns").join(netns);
    File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn netns_pids(netns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", netns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Gives the `eth0` of namespace `netns` the address `a` on the test network's /24.
fn add_v4(netns: &str, a: Ipv4Addr) {
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{a}/24"),
        "dev",
        "eth0",
    ]);
}

/// `ip <args>`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
