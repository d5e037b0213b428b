//! The seed's architecture on separate hosts (network namespaces on 198.51.100.0/24): a
//! throwaway Postfix on the relay host takes SMTP from `smtp-source` and routes each user by
//! `transport_maps` to store-a or store-b, each running our dispatcher on the seed's
//! `dispatcher.cnf`, `mappings` (the relay's addresses in place of the samples) and
//! `imta.cnf`; a stranger host is refused. Every scenario is judged from both ends: what
//! Postfix logged and what each mailbox holds. The failure scenarios are in
//! `tests/two_tier_faults.rs` (`make stress`). Needs root (namespaces, Postfix).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::dispatcher::Client;
use common::lmtp::received_line;
use common::netns::{v4, Network};
use common::two_tier::{
    self, lmtp_to, message_as_maildir, message_as_mbox, Relay, Store, Tally, RELAY, STORE_A,
    STORE_B, STRANGER,
};

const REFUSAL: &str = "500 Do not connect to this machine\r\n";

/// Both stores laid out, checked with `--check`, and started.
fn stores(net: &Network) -> (Store, Store) {
    let mut a = Store::lay_out(STORE_A, two_tier::relays(), None);
    let mut b = Store::lay_out(STORE_B, two_tier::relays(), None);
    for s in [&a, &b] {
        let (status, out, err) = s.check();
        assert!(status.success(), "{}: --check failed:\n{out}{err}", s.host);
    }
    a.start(net);
    b.start(net);
    (a, b)
}

/// The users of the scenario and where the relay sends them: two per store on the store
/// service (225), one on store-a's native service (226, the local account `alice`).
fn routes() -> Vec<(&'static str, String)> {
    vec![
        ("alice@a.test.example", lmtp_to(v4(21), 225)),
        ("bob@a.test.example", lmtp_to(v4(21), 225)),
        ("carol@b.test.example", lmtp_to(v4(22), 225)),
        ("dave@b.test.example", lmtp_to(v4(22), 225)),
        ("alice@native.test.example", lmtp_to(v4(21), 226)),
    ]
}

/// The first line `addr` sends to a client on `host` (from the host's first address).
fn first_line(net: &Network, host: &str, addr: SocketAddr) -> String {
    let from = net.host(host).ip();
    net.within(host, move || Client::connect(from, addr).line())
}

/// `smtp-source` feeds the relay 300 messages for five users on two stores (one of them
/// native mbox); once Postfix's queue is empty, each user's mailbox on its own store holds
/// every message sent to it exactly once, byte for byte after the trace fields, nothing
/// reached the other store, and Postfix logged `status=sent` once per message.
#[test]
fn the_relay_routes_every_user_to_its_store_and_each_message_arrives_once_intact() {
    const EACH: usize = 60;
    let net = two_tier::network();
    let (a, b) = stores(&net);
    let relay = Relay::start(&net, &routes(), false);
    let file = two_tier::message_file();
    for (to, _) in routes() {
        relay.send(&net, &file, to, EACH, 4, Duration::from_secs(120));
    }
    let drained = relay.drain(Duration::from_secs(120));
    assert!(
        drained.is_some(),
        "Postfix's queue did not empty:\n{}",
        relay.postfix.log()
    );

    let maildir = message_as_maildir(&file);
    let tallies = [
        Tally::of("alice", EACH, &a.maildir("alice"), &maildir),
        Tally::of("bob", EACH, &a.maildir("bob"), &maildir),
        Tally::of("carol", EACH, &b.maildir("carol"), &maildir),
        Tally::of("dave", EACH, &b.maildir("dave"), &maildir),
        Tally::of(
            "alice (mbox)",
            EACH,
            &a.mbox("alice"),
            &message_as_mbox(&file),
        ),
    ];
    eprintln!("queue empty after {drained:?}; {tallies:#?}");
    for t in &tallies {
        assert!(
            t.complete() && t.duplicates == 0,
            "{t:?}; one of alice's messages:\n{}",
            String::from_utf8_lossy(&a.maildir("alice")[0])
        );
    }
    for (store, user) in [(&b, "alice"), (&b, "bob"), (&a, "carol"), (&a, "dave")] {
        assert!(
            store.maildir(user).is_empty(),
            "{user}'s mail reached {}",
            store.host
        );
    }
    assert!(
        b.mbox("alice").is_empty(),
        "alice's mbox mail reached store-b"
    );
    for (to, _) in routes() {
        let statuses = relay.statuses_once_sent(to, EACH);
        assert_eq!(
            statuses.get("sent"),
            Some(&EACH),
            "Postfix's results for {to}: {statuses:?}"
        );
        assert_eq!(
            statuses.len(),
            1,
            "Postfix's results for {to}: {statuses:?}"
        );
    }

    // Our trace field names the relay by the name it gave in LHLO and by its address as
    // RFC 5321 writes an IPv4 literal (not the IPv4-mapped form the listener sees).
    let stored = &a.maildir("alice")[0];
    let text = String::from_utf8_lossy(stored);
    assert_eq!(
        received_line(&text),
        "Received: from relay.test.example ([198.51.100.10])",
        "{text}"
    );
}

/// The stranger host is refused with the seed's text on both ports of both stores, and no
/// worker starts for it; the relay, on the same ports, is served.
#[test]
fn a_stranger_is_refused_with_the_seeds_text_and_the_relay_is_served() {
    let net = two_tier::network();
    let (a, b) = stores(&net);
    let started = |s: &Store| s.started("LMTPSS") + s.started("LMTPSN");
    let before = (started(&a), started(&b));
    for store in [v4(21), v4(22)] {
        for port in [225, 226] {
            let addr = SocketAddr::from((store, port));
            let line = first_line(&net, STRANGER, addr);
            assert_eq!(line, REFUSAL, "the stranger on {addr}");
        }
    }
    // Give a worker that was (wrongly) asked for the time to show in the log.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (started(&a), started(&b)),
        before,
        "workers started for the stranger:\n{}\n{}",
        a.log(),
        b.log()
    );
    for (s, store) in [(&a, v4(21)), (&b, v4(22))] {
        // The probe as the table saw it: the stranger's address as IPv4, not `::ffff:`.
        for port in [225, 226] {
            let probe = format!("PORT_ACCESS refused TCP|{store}|{port}|198.51.100.99|");
            assert!(
                s.log().contains(&probe),
                "{}: no `{probe}` in the log:\n{}",
                s.host,
                s.log()
            );
        }
        for port in [225, 226] {
            let addr = SocketAddr::from((store, port));
            let line = first_line(&net, RELAY, addr);
            assert!(line.starts_with("220 "), "the relay on {addr}: {line:?}");
        }
    }
}

/// PORT_ACCESS on store-a changed under load to admit a third relay address, and `SIGHUP`:
/// the address is refused before and served after, and every message of the load (fed to
/// both stores while the reload happens) is delivered once.
#[test]
fn a_reload_under_load_admits_a_new_relay_address_and_loses_nothing() {
    const EACH: usize = 400;
    let mut net = two_tier::network();
    let third = net.add_address(RELAY, 12);
    let (a, b) = stores(&net);
    let store_a = SocketAddr::from((v4(21), 225));
    let from_third =
        |net: &Network| net.within(RELAY, move || Client::connect(third, store_a).line());
    assert_eq!(
        from_third(&net),
        REFUSAL,
        "the third address before the reload"
    );

    let relay = Relay::start(&net, &routes(), true);
    let file = two_tier::message_file();
    let users = ["alice@a.test.example", "carol@b.test.example"];
    for to in users {
        relay.send(&net, &file, to, EACH, 4, Duration::from_secs(120));
    }
    relay.release();
    let mid_load = relay.postfix.flushing_until(Duration::from_secs(60), || {
        a.maildir("alice").len() >= EACH / 4
    });
    assert!(mid_load, "no delivery to store-a:\n{}", relay.postfix.log());
    a.edit_mappings(|text| {
        text.replacen(
            "  TCP|*|*|*|*",
            &format!("  TCP|*|225|{third}|* $Y\n  TCP|*|226|{third}|* $Y\n  TCP|*|*|*|*"),
            1,
        )
    });
    let reloaded_before = a.log().matches("configuration reloaded").count();
    a.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = common::wait_until(Duration::from_secs(15), || {
        a.log().matches("configuration reloaded").count() > reloaded_before
    });
    assert!(reloaded, "store-a did not reload:\n{}", a.log());
    // The load went on through the reload: store-a had not taken it all when the new
    // configuration was in force.
    let stored_at_reload = a.maildir("alice").len();
    assert!(
        stored_at_reload < EACH,
        "the reload came after the load: {stored_at_reload} of {EACH} already stored"
    );
    let drained = relay.drain(Duration::from_secs(120));
    assert!(
        drained.is_some(),
        "queue not empty:\n{}",
        relay.postfix.log()
    );

    let maildir = message_as_maildir(&file);
    let tallies = [
        Tally::of("alice", EACH, &a.maildir("alice"), &maildir),
        Tally::of("carol", EACH, &b.maildir("carol"), &maildir),
    ];
    eprintln!(
        "reload with {stored_at_reload} of {EACH} stored on store-a; queue empty {drained:?} \
         later; {tallies:#?}"
    );
    for t in &tallies {
        assert!(t.complete() && t.duplicates == 0, "{t:?}");
    }
    for to in users {
        let statuses = relay.statuses_once_sent(to, EACH);
        assert_eq!(statuses.get("sent"), Some(&EACH), "{to}: {statuses:?}");
    }
    let greeting = from_third(&net);
    assert!(
        greeting.starts_with("220 "),
        "the third address after the reload: {greeting:?}"
    );
}

/// The relay reaches store-a over IPv6 (PORT_ACCESS given the relay's IPv6 address): the
/// trace field writes it as an RFC 5321 IPv6 address literal, the delivery log plainly.
#[test]
fn a_relay_over_ipv6_is_written_as_an_ipv6_address_literal() {
    let net = two_tier::network();
    let relay_v6 = net.host(RELAY).v6;
    let mut a = Store::lay_out(STORE_A, two_tier::relays(), None);
    a.edit_mappings(|text| {
        text.replacen(
            "  TCP|*|*|*|*",
            &format!("  TCP|*|225|{relay_v6}|* $Y\n  TCP|*|*|*|*"),
            1,
        )
    });
    let (status, out, err) = a.check();
    assert!(status.success(), "--check failed:\n{out}{err}");
    a.start(&net);
    let store_v6 = net.host(STORE_A).v6;
    let relay = Relay::start(
        &net,
        &[("erin@a.test.example", format!("lmtp:[ipv6:{store_v6}]:225"))],
        false,
    );
    let file = two_tier::message_file();
    relay.send(
        &net,
        &file,
        "erin@a.test.example",
        3,
        1,
        Duration::from_secs(60),
    );
    let drained = relay.drain(Duration::from_secs(60));
    assert!(
        drained.is_some(),
        "queue not empty:\n{}",
        relay.postfix.log()
    );
    let stored = a.maildir("erin");
    let t = Tally::of("erin", 3, &stored, &message_as_maildir(&file));
    assert!(t.complete() && t.duplicates == 0, "{t:?}");
    let text = String::from_utf8_lossy(&stored[0]);
    assert_eq!(
        received_line(&text),
        format!("Received: from relay.test.example ([IPv6:{relay_v6}])"),
        "{text}"
    );
    let log = a.service_log("tcp_lmtpss_server.log");
    assert!(
        log.contains(&format!(" client={relay_v6} ")),
        "the delivery log does not name the client plainly:\n{log}"
    );
}
