//! The native image (`tcp_lmtpn_server`) end to end through the dispatcher: mbox files in a
//! spool directory of a temporary installation, for the local accounts `alice` and `bob`
//! (created by `scripts/install-test-deps.sh`). The spool is `1777`: the image creates each
//! mailbox with its recipient's identity (tests/trust_mbox.rs checks that and the attacks).

mod common;

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::dispatcher::Dispatcher;
use common::lmtp::{mbox_messages, Lmtp};

const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=2\nMIN_CONNS=1\nMAX_CONNS=20";

/// An installation with the native service, its spool made `1777` as `/var/mail` may be.
fn start(limits: &str) -> Dispatcher {
    let d = Dispatcher::start_lmtp(limits, "");
    std::fs::set_permissions(
        d.root.join("mail"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod the spool");
    d
}

fn account(name: &str) -> nix::unistd::User {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!("no local account {name}: run scripts/install-test-deps.sh as root")
        })
}

/// The content after the trace header (Return-Path, Received and its continuation lines).
fn without_trace(lines: &[String]) -> Vec<String> {
    let mut i = 0;
    assert!(lines[0].starts_with("Return-Path: <"), "{lines:?}");
    i += 1;
    assert!(lines[i].starts_with("Received: "), "{lines:?}");
    i += 1;
    while lines[i].starts_with('\t') {
        i += 1;
    }
    lines[i..].to_vec()
}

const MESSAGE: &str = "Subject: native\r\n\r\nFrom the start of a line.\r\n>From already quoted.\r\n.dot line\r\nend\r\n";

#[test]
fn per_recipient_replies_into_mbox_files() {
    let (alice, bob) = (account("alice"), account("bob"));
    let d = start(LIMITS);
    let spool = d.root.join("mail");
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@relay.example>").code, 250);
    let codes: Vec<u16> = ["alice", "bob", "nobody-here", "alice"]
        .iter()
        .map(|a| c.cmd(&format!("RCPT TO:<{a}@example.com>")).code)
        .collect();
    assert_eq!(codes, [250, 250, 550, 250]);
    let replies = c.data(MESSAGE.as_bytes(), 3);
    assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
    c.quit();

    for (user, account) in [("alice", &alice), ("bob", &bob)] {
        let path = spool.join(user);
        let meta = std::fs::metadata(&path).expect("the mailbox exists");
        assert_eq!(meta.mode() & 0o777, 0o600, "{user}");
        // The recipient's; the group is the worker's (or the spool's, when it is setgid).
        assert_eq!(meta.uid(), account.uid.as_raw(), "{user}");
        let text = std::fs::read_to_string(&path).expect("read the mailbox");
        let msgs = mbox_messages(&text);
        assert_eq!(msgs.len(), 1, "{user} got the message once: {text}");
        assert!(
            msgs[0].0.starts_with("From sender@relay.example "),
            "{}",
            msgs[0].0
        );
        let expected: Vec<String> = MESSAGE
            .replace("\r\n", "\n")
            .replace("\nFrom the", "\n>From the")
            .replace("\n>From already", "\n>>From already")
            .trim_end_matches('\n')
            .split('\n')
            .map(str::to_string)
            .collect();
        assert_eq!(without_trace(&msgs[0].1), expected, "{user}");
    }
    assert!(!spool.join("nobody-here").exists());
    assert!(
        !Path::new(&spool.join("alice.lock")).exists(),
        "dot-lock left behind"
    );
}

#[test]
fn concurrent_deliveries_to_one_mailbox_do_not_interleave() {
    account("alice");
    let d = start(LIMITS);
    let addr = d.addr(1);
    const CLIENTS: usize = 4;
    const EACH: usize = 25;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            std::thread::spawn(move || {
                let mut c = Lmtp::connect(RELAY, addr);
                c.lhlo();
                for i in 0..EACH {
                    let tag = format!("c{n}m{i}");
                    let mut body = format!("Subject: {tag}\r\n\r\n");
                    for l in 0..300 {
                        body.push_str(&format!(
                            "{tag} line {l} ...............................................\r\n"
                        ));
                    }
                    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
                    assert_eq!(c.cmd("RCPT TO:<alice>").code, 250);
                    let r = c.data(body.as_bytes(), 1);
                    assert_eq!(r[0].code, 250, "{r:?}");
                }
                c.quit();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let text = std::fs::read_to_string(d.root.join("mail/alice")).expect("alice's mailbox");
    let msgs = mbox_messages(&text);
    assert_eq!(msgs.len(), CLIENTS * EACH);
    let mut tags = std::collections::HashSet::new();
    for (_, lines) in &msgs {
        let content = without_trace(lines);
        let tag = content[0]
            .strip_prefix("Subject: ")
            .expect("subject")
            .to_string();
        assert_eq!(content.len(), 302, "{tag} is whole");
        for (l, line) in content[2..].iter().enumerate() {
            assert!(
                line.starts_with(&format!("{tag} line {l} ")),
                "{tag}: line {l} is {line:?}: interleaved"
            );
        }
        assert!(tags.insert(tag), "a message stored twice");
    }
}

#[test]
fn a_large_message_reaches_the_mbox_whole() {
    account("alice");
    let d = start(LIMITS);
    // 12 MiB of lines, some of them "From " lines that mbox must quote.
    let mut message = String::from("Subject: large native\r\n\r\n");
    let mut n = 0usize;
    while message.len() < 12 << 20 {
        if n.is_multiple_of(3) {
            message.push_str("From the line ");
        }
        message.push_str(&"z".repeat((n * 31) % 2000));
        message.push_str("\r\n");
        n += 1;
    }
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    assert_eq!(c.cmd("MAIL FROM:<big@relay.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice>").code, 250);
    let r = c.data(message.as_bytes(), 1);
    assert_eq!(r[0].code, 250, "{r:?}");
    c.quit();
    let text = std::fs::read_to_string(d.root.join("mail/alice")).expect("alice's mailbox");
    let msgs = mbox_messages(&text);
    assert_eq!(msgs.len(), 1);
    let expected: Vec<String> = message
        .trim_end_matches("\r\n")
        .split("\r\n")
        .map(|l| {
            if l.starts_with("From ") {
                format!(">{l}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(
        without_trace(&msgs[0].1) == expected,
        "the stored message differs"
    );
    let leftovers: Vec<_> = std::fs::read_dir(d.root.join("mail"))
        .expect("spool")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["alice"], "nothing else in the spool");
}

#[test]
fn sigkill_in_the_middle_of_an_append_leaves_no_half_message() {
    account("alice");
    let d = start("MIN_PROCS=1\nMAX_PROCS=1\nMIN_CONNS=1\nMAX_CONNS=20");
    let mailbox = d.root.join("mail/alice");
    // One whole message first.
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    let r = c.send_message("a@b", "alice", b"Subject: whole\r\n\r\nkept\r\n");
    assert_eq!(r.code, 250);
    let whole = std::fs::read(&mailbox).expect("the mailbox");
    // Then a large one, killed while its append is under way.
    let big: String = (0..400_000)
        .map(|i| format!("line {i} of a message that will be cut ................\r\n"))
        .collect();
    assert_eq!(c.cmd("MAIL FROM:<a@b>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    // Looked up now: the kill below must not wait for a scan of /proc.
    let worker = d.only_worker("tcp_lmtpn_server");
    c.send(&common::lmtp::dot_stuff(big.as_bytes()));
    let end = Instant::now() + Duration::from_secs(60);
    let mut killed = false;
    while Instant::now() < end {
        let len = std::fs::metadata(&mailbox).map(|m| m.len()).unwrap_or(0);
        if len > whole.len() as u64 {
            nix::sys::signal::kill(worker, Signal::SIGKILL).expect("kill the worker");
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(killed, "the append never started");
    assert_eq!(c.try_reply(), None, "no reply: the worker died before it");
    let cut = std::fs::metadata(&mailbox).expect("mailbox").len();
    assert!(
        cut > whole.len() as u64 && cut < (whole.len() + big.len()) as u64,
        "killed in the middle of the append ({cut} octets)"
    );
    // The replacement worker cuts the half message back when it starts, then removes the
    // lock: wait for both.
    let lock = d.root.join("mail/alice.lock");
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end
        && (std::fs::read(&mailbox).expect("mailbox") != whole || lock.exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = std::fs::read(&mailbox).expect("mailbox");
    assert!(
        after == whole,
        "the half message is gone: {} octets, {} expected",
        after.len(),
        whole.len()
    );
    assert!(!lock.exists(), "the dead worker's lock is gone");
    // And delivery goes on.
    let mut c = Lmtp::connect(RELAY, d.addr(1));
    c.lhlo();
    let r = c.send_message("a@b", "alice", b"Subject: after\r\n\r\nafter\r\n");
    assert_eq!(r.code, 250);
    let msgs = mbox_messages(&std::fs::read_to_string(&mailbox).expect("mailbox"));
    assert_eq!(msgs.len(), 2);
}
