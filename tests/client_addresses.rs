//! How the LMTP images write their client's address, end to end, on the dual-stack listener a
//! production store has (`INTERFACE_ADDRESS` unset: `[::]` taking IPv4 too): the trace header
//! and the `LHLO` reply write the RFC 5321 address literal (`[127.0.0.1]`, `[IPv6:::1]`),
//! the delivery log the plain address (`client=127.0.0.1`, `client=::1`), never the
//! IPv4-mapped form `::ffff:127.0.0.1` the kernel reports for an IPv4 client.
//!
//! A wildcard listener would also listen on the host's other addresses, so each test runs in
//! a network namespace of its own (made with `unshare` on the test's own thread, which the
//! dispatcher and its workers inherit): only its loopback exists there, and the namespace
//! goes away with the last process in it, nothing to tear down.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use common::dispatcher::{Dispatcher, Layout, WAIT};
use common::lmtp::{maildir, Lmtp};

const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=5";
const STORE_LOG: &str = "tcp_lmtpss_server.log";
const MESSAGE: &[u8] = b"From: <sender@relay.example>\r\nSubject: addresses\r\n\r\nHello.\r\n";

/// Runs `body` on a thread of its own in a new network namespace whose loopback is up.
fn in_own_network(body: impl FnOnce() + Send + 'static) {
    let joined = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET affects only this thread (and the
        // processes it starts), not the rest of the test binary.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (the test runs as root)",
            std::io::Error::last_os_error()
        );
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip (iproute2)");
        assert!(up.success(), "ip link set lo up: {up}");
        body();
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

/// The seed's services with the store (`LMTPSS`, the first port) on every address, as the
/// seed leaves `INTERFACE_ADDRESS`, and PORT_ACCESS admitting `::1` besides 127.0.0.1.
fn dual_stack_store() -> Dispatcher {
    let layout = Layout::lmtp(LIMITS, "");
    layout.edit_config("dispatcher.cnf", |text| {
        // The first service's line only: the second stays on 127.0.0.1, which `launch`
        // waits for.
        text.replacen("INTERFACE_ADDRESS=127.0.0.1\n", "", 1)
    });
    layout.edit_config("mappings", |text| {
        text.replacen("  TCP|*|*|*|*", "  TCP|*|*|::1|* $Y\n  TCP|*|*|*|*", 1)
    });
    let d = Dispatcher::launch(layout, |_| {});
    d.wait_for_log(&format!(
        "[SERVICE=LMTPSS] listening on [::]:{}",
        d.ports[0]
    ));
    d
}

/// Delivers one message to alice over `stream` and returns the first line of the `LHLO`
/// reply and the stored message as text.
fn deliver_one(d: &Dispatcher, stream: TcpStream) -> (String, String) {
    let inbox = maildir(&d.root, "alice").join("new");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut c = Lmtp::over(stream);
    let hello = c.lhlo().lines[0].clone();
    let r = c.send_message("sender@relay.example", "alice@example.com", MESSAGE);
    assert_eq!(r.code, 250, "{r:?}");
    c.quit();
    let files: Vec<_> = std::fs::read_dir(&inbox)
        .expect("alice's new/")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one message in alice's new/: {files:?}");
    (hello, stored(&files[0]))
}

fn stored(path: &Path) -> String {
    let octets = std::fs::read(path).expect("read the stored message");
    String::from_utf8(octets).expect("the stored message is text")
}

#[test]
fn an_ipv4_client_of_the_dual_stack_listener_is_written_as_ipv4() {
    in_own_network(|| {
        let d = dual_stack_store();
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), d.ports[0]);
        let stream = common::dispatcher::connect_from(Ipv4Addr::LOCALHOST, to);
        let (hello, message) = deliver_one(&d, stream);
        assert!(
            hello.ends_with(" Hello test.example [127.0.0.1]"),
            "LHLO reply: {hello:?}"
        );
        assert_eq!(
            common::lmtp::received_line(&message),
            "Received: from test.example ([127.0.0.1])"
        );
        let log = d.wait_for_service_log(STORE_LOG, "delivery conn=");
        assert!(
            log.lines()
                .any(|l| l.contains("delivery conn=") && l.contains(" client=127.0.0.1 ")),
            "delivery line with client=127.0.0.1:\n{log}"
        );
        assert!(
            !log.contains("::ffff:"),
            "a mapped address in the log:\n{log}"
        );
    });
}

#[test]
fn an_ipv6_client_is_written_as_an_ipv6_address_literal() {
    in_own_network(|| {
        let d = dual_stack_store();
        let to = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), d.ports[0]);
        let stream = TcpStream::connect_timeout(&to, WAIT).expect("connect to [::1]");
        let (hello, message) = deliver_one(&d, stream);
        assert!(
            hello.ends_with(" Hello test.example [IPv6:::1]"),
            "LHLO reply: {hello:?}"
        );
        assert_eq!(
            common::lmtp::received_line(&message),
            "Received: from test.example ([IPv6:::1])"
        );
        let log = d.wait_for_service_log(STORE_LOG, "delivery conn=");
        assert!(
            log.lines()
                .any(|l| l.contains("delivery conn=") && l.contains(" client=::1 ")),
            "delivery line with client=::1:\n{log}"
        );
    });
}
