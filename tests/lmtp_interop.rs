//! The LMTP images against software no one here wrote: `swaks --protocol LMTP` and Postfix's
//! `smtp-source -L` deliver through the real dispatcher, and Dovecot's `doveadm` (with a
//! throwaway configuration, no Dovecot server running) reads what the store holds.

mod common;

use std::path::Path;
use std::time::Duration;

use common::dispatcher::Dispatcher;
use common::lmtp::maildir;
use common::peers;

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
