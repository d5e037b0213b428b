//! The seed's two-tier deployment on separate hosts ([`super::netns`]): a relay host running a
//! throwaway Postfix that takes SMTP and routes each user by `transport_maps` to the LMTP
//! service of one of two store hosts, each running our dispatcher on the seed's configuration
//! as printed (ports 225 and 226, no INTERFACE_ADDRESS), and a stranger host that must be
//! refused. What the scenarios are judged by is read from both ends: Postfix's log and queue,
//! and the messages in each store's mailboxes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::netns::{v4, Network};
use super::peers::{run_bounded, Delivery, Postfix};
use super::{fixtures, ChildGuard};

pub const RELAY: &str = "relay";
pub const STORE_A: &str = "store-a";
pub const STORE_B: &str = "store-b";
pub const STRANGER: &str = "stranger";

/// How long a dispatcher may take to stop when told to (its `--shutdown-timeout`).
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);

/// The relay host's two addresses, in place of the seed's two sample relay addresses.
pub fn relays() -> [Ipv4Addr; 2] {
    [v4(10), v4(11)]
}

/// The test network: the relay (198.51.100.10 and .11, the two addresses the seed's
/// PORT_ACCESS admits), store-a (.21), store-b (.22), a stranger (.99).
pub fn network() -> Network {
    Network::new(&[
        (RELAY, &[10, 11]),
        (STORE_A, &[21]),
        (STORE_B, &[22]),
        (STRANGER, &[99]),
    ])
}

/// One store host's installation: the seed's `dispatcher.cnf` and `imta.cnf` byte for byte,
/// the seed's `mappings` with its two sample relay addresses (1.2.3.4, 1.2.3.5) replaced by the
/// relay host's, a tailor with absolute paths into a temporary directory, the Maildir store in
/// `store/` (or a file system mounted there) and the mbox spool in `mail/`.
pub struct Store {
    pub host: String,
    pub root: PathBuf,
    child: Option<ChildGuard>,
    mounted: bool,
    _dir: tempfile::TempDir,
}

impl Store {
    /// Lays out the installation for `host`, with `relays` in place of the seed's two sample
    /// relay addresses; `store_size` mounts a tmpfs of that many bytes as `STORE_ROOT`.
    pub fn lay_out(host: &str, relays: [Ipv4Addr; 2], store_size: Option<u64>) -> Store {
        let dir = super::dispatcher::demo_layout();
        let root = dir.path().to_path_buf();
        let config = root.join("config");
        let seed = fixtures().join("seed");
        for file in ["dispatcher.cnf", "imta.cnf"] {
            std::fs::copy(seed.join(file), config.join(file)).expect("copy the seed's file");
        }
        let mappings = std::fs::read_to_string(seed.join("mappings")).expect("seed mappings");
        let mappings = mappings
            .replace("|1.2.3.4|", &format!("|{}|", relays[0]))
            .replace("|1.2.3.5|", &format!("|{}|", relays[1]));
        std::fs::write(config.join("mappings"), mappings).expect("write mappings");
        let options =
            |key: &str, dir: &str, extra: &str| format!("{key}={}/{dir}/\n{extra}", root.display());
        std::fs::write(
            config.join("tcp_lmtpss_option"),
            options("STORE_ROOT", "store", "CREATE_MAILBOXES=1\n"),
        )
        .expect("option file");
        std::fs::write(
            config.join("tcp_lmtpsn_option"),
            options("MAIL_SPOOL", "mail", "REPEAT_COUNT=5\nSLEEP_TIME=1\n"),
        )
        .expect("option file");
        let mut store = Store {
            host: host.to_string(),
            root,
            child: None,
            mounted: false,
            _dir: dir,
        };
        if let Some(size) = store_size {
            store.mount_store(size);
        }
        store
    }

    /// Mounts a tmpfs of `size` bytes on `store/`, owned by the mail account like the
    /// directory it covers.
    fn mount_store(&mut self, size: u64) {
        let store = self.root.join("store");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(&store)
            .status()
            .expect("mount");
        assert!(status.success(), "mount a tmpfs on {}", store.display());
        self.mounted = true;
        let (uid, gid) = super::dispatcher::mail_ids();
        nix::unistd::chown(&store, Some(uid), Some(gid)).expect("chown the store");
    }

    /// Edits the installation's `mappings` in place with `edit`.
    pub fn edit_mappings(&self, edit: impl FnOnce(String) -> String) {
        let path = self.root.join("config/mappings");
        let text = std::fs::read_to_string(&path).expect("read mappings");
        std::fs::write(&path, edit(text)).expect("write mappings");
    }

    /// `dispatcher --check` of the installation: exit status, standard output and error.
    pub fn check(&self) -> (ExitStatus, String, String) {
        super::dispatcher::check(&self.root)
    }

    /// Starts `dispatcher --foreground` on the store's host (its own process group, as a
    /// service manager starts it) and waits until this process listens on both services.
    pub fn start(&mut self, net: &Network) {
        assert!(self.child.is_none(), "{}: already started", self.host);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("stderr.log"))
            .expect("stderr file");
        let child = net
            .command(&self.host, self.root.join("lib/dispatcher"))
            .arg("--foreground")
            .arg("--shutdown-timeout")
            .arg(SHUTDOWN_BOUND.as_secs().to_string())
            .env_remove("IMTA_TAILOR")
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("start the dispatcher");
        let child = ChildGuard(child);
        let listening = format!(
            "dispatcher[{}] INFO: [SERVICE=LMTPSN] listening on",
            child.pid()
        );
        self.child = Some(child);
        let up = super::wait_until(Duration::from_secs(20), || self.log().contains(&listening));
        assert!(
            up,
            "{}: the dispatcher did not start:\n{}\nstandard error:\n{}",
            self.host,
            self.log(),
            std::fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default()
        );
    }

    /// The running dispatcher's pid.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{}: not started", self.host))
            .pid()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        super::dispatcher::signal(self.pid(), sig)
    }

    /// Waits up to `limit` for the dispatcher to exit, then forgets it (killed if it still
    /// ran); its status if it exited by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{}: not started", self.host));
        child.wait_for(limit)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log/dispatcher.log")).unwrap_or_default()
    }

    /// Every version of a service's LOGFILE (`tcp_lmtpss_server.log`), concatenated.
    pub fn service_log(&self, name: &str) -> String {
        super::dispatcher::service_log(&self.root, name)
    }

    /// How many workers of `service` this installation's log says were started, by every
    /// dispatcher that ran on it.
    pub fn started(&self, service: &str) -> usize {
        super::dispatcher::started(&self.log(), service)
    }

    /// Pids of the running dispatcher's workers running `image`.
    pub fn workers(&self, image: &str) -> Vec<i32> {
        super::children_named(self.pid(), image)
    }

    /// Every message in `user`'s Maildir INBOX (`new/` and `cur/`), whole.
    pub fn maildir(&self, user: &str) -> Vec<Vec<u8>> {
        super::load::message_files(&self.root.join("store").join(user))
            .iter()
            .filter_map(|f| std::fs::read(f).ok())
            .collect()
    }

    /// Every message in `user`'s mbox in the spool, as text with LF line ends (the From_
    /// line left out).
    pub fn mbox(&self, user: &str) -> Vec<Vec<u8>> {
        let Ok(text) = std::fs::read_to_string(self.root.join("mail").join(user)) else {
            return Vec::new();
        };
        super::lmtp::mbox_messages(&text)
            .into_iter()
            .map(|(_, lines)| {
                let mut m = lines.join("\n");
                m.push('\n');
                m.into_bytes()
            })
            .collect()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The workers (in process groups of their own, they outlive a killed dispatcher) and
        // the dispatcher first, so that nothing writes into the store while it goes.
        if let Some(child) = &self.child {
            for (pid, _) in super::children(child.pid()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.child = None;
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.root.join("store"))
                .status();
        }
    }
}

/// Where the relay sends a recipient: `lmtp:[address]:port`.
pub fn lmtp_to(address: Ipv4Addr, port: u16) -> String {
    format!("lmtp:[{address}]:{port}")
}

/// The relay host's throwaway Postfix: SMTP on every address of the relay host (from the
/// test network and the host's own loopback: `mynetworks`), each recipient routed by
/// `transport_maps` (a `texthash:` table, read at start and reload) to a store's LMTP
/// service, everything else refused; short retry times, so that a deferred message is tried
/// again within seconds, and bounded connect and greeting waits; Postfix's LMTP connection
/// caching as it ships (on demand).
pub struct Relay {
    pub postfix: Postfix,
    pub smtp: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// The relay, routing `routes`; `held`: with delivery held from the first message
    /// (`defer_transports = lmtp`) until [`Relay::release`].
    pub fn start(net: &Network, routes: &[(&str, String)], held: bool) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).expect("create Postfix's configuration directory");
        let table: String = routes.iter().map(|(to, t)| format!("{to} {t}\n")).collect();
        let transport = conf.join("transport");
        std::fs::write(&transport, table).expect("write the transport table");
        let transport_maps = format!("texthash:{}", transport.display());
        let relay = net.host(RELAY);
        let netns = relay.netns.clone();
        let interfaces = relay
            .v4
            .iter()
            .map(ToString::to_string)
            .chain(["127.0.0.1".to_string()])
            .collect::<Vec<_>>()
            .join(", ");
        let postfix = Postfix::start_with(
            dir.path(),
            &[
                ("inet_interfaces", &interfaces),
                ("inet_protocols", "all"),
                ("mynetworks", "127.0.0.0/8, 198.51.100.0/24"),
                ("transport_maps", &transport_maps),
                ("default_transport", "error:5.1.2 no store for this address"),
                ("smtpd_peername_lookup", "no"),
                ("queue_run_delay", "1s"),
                ("minimal_backoff_time", "1s"),
                ("maximal_backoff_time", "2s"),
                ("lmtp_connection_cache_on_demand", "yes"),
                // Not left at "no limit" (LMTP's default), so that a store that does not
                // answer shows in the log within the test's bounds instead of holding
                // Postfix's delivery agents.
                ("lmtp_connect_timeout", "5s"),
                ("lmtp_lhlo_timeout", "30s"),
                ("defer_transports", if held { "lmtp" } else { "" }),
            ],
            true,
            move |program| super::netns::command_in(&netns, program),
        );
        let smtp = SocketAddr::from((relay.ip(), 25));
        let up = super::wait_until(Duration::from_secs(20), || {
            net.within(RELAY, move || super::peers::smtp_greets(smtp))
        });
        assert!(
            up,
            "Postfix's smtpd does not answer on {smtp}:\n{}",
            postfix.log()
        );
        Relay {
            postfix,
            smtp,
            _dir: dir,
        }
    }

    /// `smtp-source` on the relay host, into its SMTP server: `messages` copies of the
    /// message in `file` (`-F`) to `to`, over `sessions` parallel sessions; bounded by `limit`.
    pub fn send(
        &self,
        net: &Network,
        file: &Path,
        to: &str,
        messages: usize,
        sessions: usize,
        limit: Duration,
    ) -> Output {
        let mut cmd = net.command(RELAY, "smtp-source");
        cmd.arg("-s")
            .arg(sessions.to_string())
            .arg("-m")
            .arg(messages.to_string())
            .arg("-F")
            .arg(file)
            .args(["-f", SENDER, "-t", to])
            .arg(self.smtp.to_string());
        let out = run_bounded(cmd, "smtp-source", limit);
        assert!(
            out.status.success(),
            "smtp-source to {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Releases delivery held since the start: Postfix starts with its whole backlog for the
    /// stores and keeps its sessions to them busy (it caches connections on demand: when more
    /// mail waits).
    pub fn release(&self) {
        self.postfix.hold_delivery(false);
    }

    /// Flushes the queue every 2 s until `postqueue -p` says it is empty, at most `limit`;
    /// how long that took, or `None` if it never emptied.
    pub fn drain(&self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.postfix
            .flushing_until(limit, || self.postfix.queue_is_empty())
            .then(|| start.elapsed())
    }

    /// Postfix's delivery results for recipient `to`: how many said each `status=` (held
    /// messages left out).
    pub fn statuses(&self, to: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for d in self.deliveries().iter().filter(|d| d.to == to) {
            *out.entry(d.status.clone()).or_insert(0) += 1;
        }
        out
    }

    /// [`Relay::statuses`] once Postfix has logged `sent` results for `to` (its log
    /// is written a moment after the queue empties), at most 10 s.
    pub fn statuses_once_sent(&self, to: &str, sent: usize) -> BTreeMap<String, usize> {
        super::wait_until(Duration::from_secs(10), || {
            self.statuses(to).get("sent").copied().unwrap_or(0) >= sent
        });
        self.statuses(to)
    }

    /// Every delivery result but the held ones (`defer_transports`: the test's doing).
    pub fn deliveries(&self) -> Vec<Delivery> {
        let mut all = self.postfix.deliveries();
        all.retain(|d| !d.held());
        all
    }

    /// Why Postfix deferred deliveries to the stores, each reason with how often (numbers
    /// masked: addresses and counts differ from line to line, the reason does not).
    pub fn deferral_reasons(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for d in self.deliveries().iter().filter(|d| d.status == "deferred") {
            let reason: String = d
                .reason
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            *out.entry(format!("{}: {reason}", d.agent)).or_insert(0) += 1;
        }
        out
    }

    /// The results for recipient `to` with `status=<status>`.
    pub fn results(&self, to: &str, status: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.to == to && d.status == status)
            .collect()
    }
}

/// The envelope sender of every test message.
pub const SENDER: &str = "source@relay.test.example";

/// The message the relay is fed (`smtp-source -F`: each line sent with CRLF, dot-stuffed).
pub fn message_file() -> PathBuf {
    fixtures().join("two_tier/message.txt")
}

/// The test message with `extra` more body lines, written to `dir`: a message whose `DATA`
/// lasts long enough to be cut in the middle.
pub fn big_message_file(dir: &Path, extra: usize) -> PathBuf {
    let mut text = std::fs::read_to_string(message_file()).expect("the test message");
    for i in 0..extra {
        text.push_str(&format!(
            "Bulk {i:07}: a longer message, so that its DATA is still on the wire when a \
             worker dies.\n"
        ));
    }
    let path = dir.join("big-message.txt");
    std::fs::write(&path, text).expect("write the big message");
    path
}

/// The lines `smtp-source -F file` sends: the file's, and an empty line it sends before the
/// final dot.
fn lines_sent(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("the test message {}: {e}", file.display()));
    text.lines()
        .map(str::to_string)
        .chain([String::new()])
        .collect()
}

/// The message of `file` as a Maildir store keeps it: the lines sent, with CRLF line ends.
pub fn message_as_maildir(file: &Path) -> Vec<u8> {
    lines_sent(file)
        .iter()
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        .into_bytes()
}

/// The message of `file` as the native store keeps it in an mbox (LF line ends, `From ` lines quoted
/// with `>`, mboxrd), as [`Store::mbox`] returns it.
pub fn message_as_mbox(file: &Path) -> Vec<u8> {
    lines_sent(file)
        .iter()
        .map(|l| {
            let unquoted = l.trim_start_matches('>');
            if unquoted.starts_with("From ") {
                format!(">{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect::<String>()
        .into_bytes()
}

/// The message after its trace header: every leading `Return-Path:` and `Received:` field
/// (with its continuation lines), ours and Postfix's.
pub fn without_trace(message: &[u8]) -> &[u8] {
    let mut rest = message;
    let mut in_trace = false;
    loop {
        let trace_field = rest.starts_with(b"Return-Path:") || rest.starts_with(b"Received:");
        let continuation = in_trace && (rest.starts_with(b" ") || rest.starts_with(b"\t"));
        if !trace_field && !continuation {
            return rest;
        }
        in_trace = true;
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => rest = &rest[end + 1..],
            None => return &[],
        }
    }
}

/// What a mailbox holds, judged against what was sent to it.
#[derive(Debug)]
pub struct Tally {
    pub user: String,
    pub sent: usize,
    /// Distinct messages (Postfix queue ids).
    pub distinct: usize,
    /// Copies beyond the first, over all messages.
    pub duplicates: usize,
    /// Messages whose content after the trace header is not the message sent.
    pub altered: usize,
    pub without_id: usize,
}

impl Tally {
    pub fn of(user: &str, sent: usize, messages: &[Vec<u8>], expected: &[u8]) -> Tally {
        // Per Postfix queue id (from Postfix's `Received:` line): the same for every copy of
        // one queued message, whoever delivered it.
        let copies = super::load::copies_of(messages, super::load::postfix_queue_id);
        Tally {
            user: user.to_string(),
            sent,
            distinct: copies.keys().filter(|k| !k.is_empty()).count(),
            duplicates: copies
                .iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(_, n)| n - 1)
                .sum(),
            altered: messages
                .iter()
                .filter(|m| without_trace(m) != expected)
                .count(),
            without_id: copies.get("").copied().unwrap_or(0),
        }
    }

    /// Every message sent is there, none altered, none without an id.
    pub fn complete(&self) -> bool {
        self.distinct == self.sent && self.altered == 0 && self.without_id == 0
    }
}
