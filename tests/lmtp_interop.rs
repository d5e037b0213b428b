//! The LMTP images against software no one here wrote: `swaks --protocol LMTP`, Postfix's
//! `smtp-source -L` and a real Postfix relay (its `lmtp` delivery agent) deliver through the
//! real dispatcher, and Dovecot's `doveadm` (with a throwaway configuration) reads what the
//! store holds.

mod common;

use std::path::Path;
use std::time::Duration;

use common::dispatcher::Dispatcher;
use common::lmtp::{maildir, Lmtp};
use common::peers;

const RELAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);
const LIMITS: &str = "MIN_PROCS=1\nMAX_PROCS=4\nMIN_CONNS=4\nMAX_CONNS=20";

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .count()
}

#[test]
fn swaks_smtp_source_and_doveadm() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    for user in ["alice", "bob", "alice/.Sent", "carol", "2carol", "3carol"] {
        maildir(&d.root, user);
    }
    let store = d.addr(0);

    // swaks: several recipients, each reply after DATA printed by swaks.
    let body = "Interop line one.\r\n.Leading dot, stuffed by swaks.\r\nLast line.";
    let (ok, out) = peers::swaks(
        store,
        "swaks@relay.example",
        &[
            "alice@example.com",
            "bob@example.com",
            "alice+Sent@example.com",
        ],
        &["--header", "Subject: from swaks", "--body", body],
    );
    assert!(ok, "swaks failed:\n{out}");
    let saved = out
        .lines()
        .filter(|l| l.contains("<- ") && l.contains(" 2.0.0 ") && l.contains("Saved"))
        .count();
    assert_eq!(saved, 3, "one 250 per recipient after DATA:\n{out}");
    assert_eq!(count(&d.root.join("store/alice/new")), 1);
    assert_eq!(count(&d.root.join("store/alice/.Sent/new")), 1);

    // smtp-source: 2000 messages, 3 recipients each (carol, 2carol, 3carol), 8 sessions.
    let out = peers::smtp_source(
        store,
        &[
            "-s",
            "8",
            "-m",
            "2000",
            "-r",
            "3",
            "-l",
            "1024",
            "-f",
            "source@relay.example",
            "-t",
            "carol@example.com",
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for user in ["carol", "2carol", "3carol"] {
        assert_eq!(
            count(&d.root.join("store").join(user).join("new")),
            2000,
            "{user}"
        );
        assert_eq!(
            count(&d.root.join("store").join(user).join("tmp")),
            0,
            "{user}"
        );
    }

    // Dovecot reads every message, with the right content.
    let dv_dir = tempfile::tempdir().expect("tempdir");
    let dovecot = peers::Dovecot::start(dv_dir.path(), &d.root.join("store"), None);
    let conf = dovecot.config_path();
    for user in ["carol", "2carol", "3carol"] {
        assert_eq!(peers::message_count(conf, user, "INBOX"), 2000, "{user}");
    }
    assert_eq!(peers::message_count(conf, "alice", "INBOX"), 1);
    assert_eq!(peers::message_count(conf, "alice", "Sent"), 1);
    for (user, mailbox) in [("alice", "INBOX"), ("bob", "INBOX"), ("alice", "Sent")] {
        let texts = peers::fetch_texts(conf, user, mailbox);
        assert_eq!(texts.len(), 1, "{user} {mailbox}");
        let text = String::from_utf8_lossy(&texts[0]).replace("\r\n", "\n");
        assert!(
            text.starts_with("Return-Path: <swaks@relay.example>\n"),
            "{text}"
        );
        assert!(text.contains("\nSubject: from swaks\n"), "{text}");
        assert!(
            text.contains("\nInterop line one.\n.Leading dot, stuffed by swaks.\nLast line.\n"),
            "{text}"
        );
    }
    // smtp-source's 2000 messages, each once: its own Message-Id, our trace header first.
    let carol = peers::fetch_texts(conf, "2carol", "INBOX");
    assert_eq!(carol.len(), 2000);
    let mut ids = std::collections::HashSet::new();
    for t in &carol {
        let text = String::from_utf8_lossy(t);
        assert!(
            text.starts_with("Return-Path: <source@relay.example>\r\nReceived: from "),
            "{text}"
        );
        assert!(
            text.contains("\r\nFrom: <source@relay.example>\r\n"),
            "{text}"
        );
        let id = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Message-Id: "))
            .unwrap_or_else(|| panic!("no Message-Id: {text}"));
        assert!(ids.insert(id.to_string()), "{id} stored twice");
    }
}

/// The relay's `XQUOTA=` kept in a Maildir++ `maildirsize`: our refusal at the limit, and
/// Dovecot's quota plugin reading the same figures from the file we wrote.
#[test]
fn xquota_usage_is_kept_where_dovecot_reads_it() {
    let d = Dispatcher::start_lmtp(LIMITS, "");
    let dora = maildir(&d.root, "dora");
    let mut c = Lmtp::connect(RELAY, d.addr(0));
    c.lhlo();
    let body = format!("Subject: q\r\n\r\n{}\r\n", "x".repeat(900));
    let mut delivered = 0;
    let refusal = loop {
        assert_eq!(c.cmd("MAIL FROM:<a@relay.example> SIZE=1000").code, 250);
        let r = c.cmd("RCPT TO:dora XQUOTA=100000,3 XDFLG=0");
        if r.code != 250 {
            break r;
        }
        assert_eq!(c.data(body.as_bytes(), 1)[0].code, 250);
        delivered += 1;
        assert!(delivered <= 3, "the message limit of 3 was not enforced");
    };
    assert_eq!((refusal.code, delivered), (452, 3), "{refusal:?}");
    assert!(refusal.lines[0].starts_with("4.2.2 "), "{refusal:?}");
    c.cmd("RSET");
    c.quit();
    let bytes: u64 = std::fs::read_dir(dora.join("new"))
        .expect("dora/new")
        .map(|e| e.expect("entry").metadata().expect("size").len())
        .sum();
    let cache = std::fs::read_to_string(dora.join("maildirsize")).expect("maildirsize");
    // The refusal recounted the mailbox exactly and rewrote the cache with it.
    assert_eq!(cache, format!("100000S,3C\n{bytes} 3\n"));

    let dv_dir = tempfile::tempdir().expect("tempdir");
    let dovecot = peers::Dovecot::start(dv_dir.path(), &d.root.join("store"), None);
    let quota = peers::quota_get(dovecot.config_path(), "dora");
    assert_eq!(
        quota,
        [
            (
                "STORAGE".to_string(),
                bytes.div_ceil(1024),
                100000u64.div_ceil(1024)
            ),
            ("MESSAGE".to_string(), 3, 3)
        ],
        "maildirsize:\n{cache}"
    );
}

/// A real relay: Postfix's own `lmtp` delivery agent, through the dispatcher, one message
/// to three recipients; Postfix records each recipient's own result.
#[test]
fn postfix_delivers_through_the_dispatcher_with_one_result_per_recipient() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test starts a Postfix instance, which needs root (as make test runs in CI)");
    }
    let d = Dispatcher::start_lmtp(LIMITS, "");
    for user in ["alice", "bob"] {
        maildir(&d.root, user);
    }
    let pf_dir = tempfile::tempdir().expect("tempdir");
    let postfix = peers::Postfix::start(pf_dir.path(), d.addr(0));
    let id = postfix.submit(
        "sender@relay.test.example",
        &[
            "alice@example.com",
            "bob@example.com",
            "nobody-here@example.com",
        ],
        b"Subject: through postfix\n\nHello from a real MTA.\n.A line with a leading dot.\n",
    );
    let results = postfix.results(&id, 3);
    let status = |rcpt: &str| {
        results
            .iter()
            .find(|l| l.contains(&format!("to=<{rcpt}>")))
            .unwrap_or_else(|| panic!("no result for {rcpt}: {results:#?}"))
            .clone()
    };
    for rcpt in ["alice@example.com", "bob@example.com"] {
        let line = status(rcpt);
        assert!(
            line.contains("status=sent (250 2.0.0 <") && line.contains("Saved to INBOX"),
            "{line}"
        );
    }
    let line = status("nobody-here@example.com");
    assert!(
        line.contains("status=bounced") && line.contains("550 5.1.1"),
        "{line}"
    );
    for user in ["alice", "bob"] {
        let dir = d.root.join("store").join(user).join("new");
        let files: Vec<_> = std::fs::read_dir(&dir).expect("new/").collect();
        assert_eq!(files.len(), 1, "{user}");
        let path = files
            .into_iter()
            .next()
            .expect("one")
            .expect("entry")
            .path();
        let text = std::fs::read_to_string(path).expect("read");
        assert!(text.contains("\r\nSubject: through postfix\r\n"), "{text}");
        assert!(
            text.ends_with("\r\nHello from a real MTA.\r\n.A line with a leading dot.\r\n"),
            "{text}"
        );
    }
}
