//! Software no one here wrote, driven from the tests and the benchmark: `swaks` and Postfix's
//! `smtp-source` as LMTP clients, a throwaway Postfix whose own `lmtp` delivery agent relays
//! through our dispatcher, and a throwaway Dovecot (its own configuration, base and state
//! directories in a temporary directory, loopback only) whose `doveadm` reads what our store
//! holds and whose LMTP server is the speed reference. Installed by
//! `scripts/install-test-deps.sh`; a missing tool fails the test with that hint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::ChildGuard;

/// The account Dovecot reads the store as (it refuses uid 0).
const DOVECOT_UID: u32 = 65534;
const DOVECOT_GID: u32 = 65534;

fn missing(tool: &str, e: std::io::Error) -> ! {
    panic!("cannot run {tool}: {e}; run scripts/install-test-deps.sh as root")
}

/// Runs `cmd`, killing it after `limit`; the output once it has ended.
pub fn run_bounded(cmd: Command, tool: &str, limit: Duration) -> Output {
    run_bounded_with_input(cmd, tool, limit, None)
}

/// The same, with `input` on its standard input (then closed).
pub fn run_bounded_with_input(
    mut cmd: Command,
    tool: &str,
    limit: Duration,
    input: Option<&[u8]>,
) -> Output {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| missing(tool, e));
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{tool}: writing its input: {e}"));
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{tool}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped (the
            // waiting thread is still blocked in wait).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{tool} did not finish within {limit:?}; killed pid {pid}")
        }
    }
}

/// Whether an SMTP server on `addr` greets a new connection with `220` (within 5 s).
pub fn smtp_greets(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut greeting = [0u8; 3];
    s.read_exact(&mut greeting).is_ok() && &greeting == b"220"
}

/// One `swaks --protocol LMTP` transaction to several recipients: whether it succeeded, and
/// its transcript (`<-` lines are the server's replies).
pub fn swaks(addr: SocketAddr, from: &str, to: &[&str], extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("swaks");
    cmd.args(["--protocol", "LMTP", "--server"])
        .arg(addr.ip().to_string())
        .args(["--port", &addr.port().to_string()])
        .args(["--from", from, "--to", &to.join(",")])
        .args(["--helo", "relay.example", "--timeout", "30"])
        .args(extra);
    let out = run_bounded(cmd, "swaks", Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Postfix's `smtp-source -L <args> host:port`, bounded by `limit`.
pub fn smtp_source(addr: SocketAddr, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new("smtp-source");
    cmd.arg("-L").args(args).arg(addr.to_string());
    run_bounded(cmd, "smtp-source", limit)
}

/// A throwaway Dovecot master (killed by pid when dropped). With an LMTP port it delivers
/// into `mail_root` like our store (`maildir:ROOT/%n`); without one it only serves `doveadm`
/// (its user look-ups, and the Maildir++ quota plugin, so `doveadm quota get` reads the
/// `maildirsize` files).
pub struct Dovecot {
    config: PathBuf,
    _master: ChildGuard,
}

impl Dovecot {
    pub fn start(dir: &Path, mail_root: &Path, lmtp_port: Option<u16>) -> Dovecot {
        Dovecot::start_with(dir, mail_root, lmtp_port, "always")
    }

    /// As [`Dovecot::start`], with `mail_fsync` set to `fsync` (`optimized` is Dovecot's
    /// default, `always` syncs before every reply as ours does).
    pub fn start_with(
        dir: &Path,
        mail_root: &Path,
        lmtp_port: Option<u16>,
        fsync: &str,
    ) -> Dovecot {
        for sub in ["run", "state", "home"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create Dovecot's directories");
        }
        // Dovecot refuses to read or write mail as root: the store is handed to `nobody`.
        let chown = Command::new("chown")
            .arg("-R")
            .arg(format!("{DOVECOT_UID}:{DOVECOT_GID}"))
            .arg(mail_root)
            .arg(dir.join("home"))
            .status()
            .expect("chown");
        assert!(chown.success(), "chown -R of {}", mail_root.display());
        let (protocols, service) = match lmtp_port {
            Some(port) => (
                "lmtp",
                format!(
                    "service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    \
                     port = {port}\n  }}\n}}\n"
                ),
            ),
            // doveadm only: with the Maildir++ quota plugin, which reads `maildirsize`.
            None => (
                "",
                "mail_plugins = quota\nplugin {\n  quota = maildir:User quota\n}\n".to_string(),
            ),
        };
        let d = dir.display();
        let config = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = {protocols}\nlisten = 127.0.0.1\nssl = no\n\
             mail_location = maildir:{root}/%n\nmail_fsync = {fsync}\n\
             first_valid_uid = 1\nlmtp_save_to_detail_mailbox = yes\n\
             recipient_delimiter = +\n\
             passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
             userdb {{\n  driver = static\n  \
             args = uid={DOVECOT_UID} gid={DOVECOT_GID} home={d}/home/%n\n}}\n{service}",
            root = mail_root.display()
        );
        let path = dir.join("dovecot.conf");
        std::fs::write(&path, config).expect("write dovecot.conf");
        let master = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| missing("dovecot", e));
        let master = ChildGuard(master);
        let ready = dir.join("run/auth-userdb");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() || lmtp_port.is_some_and(|p| !listening(p)) {
            assert!(
                Instant::now() < deadline,
                "Dovecot did not start; its log:\n{}",
                std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dovecot {
            config: path,
            _master: master,
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn doveadm(conf: &Path, args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("doveadm");
    cmd.arg("-c").arg(conf).args(args);
    let out = run_bounded(cmd, "doveadm", Duration::from_secs(120));
    assert!(
        out.status.success(),
        "doveadm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// How many messages Dovecot sees in `user`'s `mailbox`.
pub fn message_count(conf: &Path, user: &str, mailbox: &str) -> usize {
    let out = doveadm(
        conf,
        &[
            "-f", "flow", "mailbox", "status", "-u", user, "messages", mailbox,
        ],
    );
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .find_map(|field| field.strip_prefix("messages="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("doveadm mailbox status said {text:?}"))
}

/// Every message of `user`'s `mailbox`, whole (header and body), as Dovecot reads it.
pub fn fetch_texts(conf: &Path, user: &str, mailbox: &str) -> Vec<Vec<u8>> {
    // The JSON formatter is the one whose record boundaries cannot be confused with message
    // content: `[{"text":"..."},{"text":"..."}]`.
    let out = doveadm(
        conf,
        &[
            "-f", "json", "fetch", "-u", user, "text", "mailbox", mailbox,
        ],
    );
    let text = String::from_utf8(out).expect("doveadm's JSON is UTF-8");
    let mut texts = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\"text\":\"") {
        let (value, after) = json_string(&rest[at + 8..]);
        texts.push(value.into_bytes());
        rest = after;
    }
    texts
}

/// Decodes the JSON string starting just after its opening quote; returns it and the text
/// after its closing quote.
fn json_string(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &s[i + 1..]),
            '\\' => {
                let (_, e) = chars.next().expect("escape in doveadm JSON");
                match e {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = (0..4)
                            .filter_map(|_| chars.next().map(|(_, h)| h))
                            .collect();
                        let n = u32::from_str_radix(&hex, 16).expect("\\u escape");
                        out.push(char::from_u32(n).unwrap_or('\u{fffd}'));
                    }
                    other => out.push(other),
                }
            }
            c => out.push(c),
        }
    }
    panic!("unterminated string in doveadm JSON")
}

/// `doveadm quota get`: (type, value, limit) per quota type (`STORAGE` in KiB, `MESSAGE`).
pub fn quota_get(conf: &Path, user: &str) -> Vec<(String, u64, u64)> {
    let out = doveadm(conf, &["-f", "flow", "quota", "get", "-u", user]);
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .map(|line| {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(key))
                    .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                    .to_string()
            };
            let number = |key: &str| {
                field(key)
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
            };
            (field("Type="), number("Value="), number("Limit="))
        })
        .collect()
}

/// A throwaway Postfix (its own configuration, queue and log in a temporary directory; no
/// listening port: its SMTP server is left out of master.cf) whose `lmtp` client delivers all
/// mail to `lmtp`, as a real relay in front of a store would. Needs root (Postfix's master
/// runs as root and its daemons as `postfix`). The master is killed by pid when dropped.
pub struct Postfix {
    dir: PathBuf,
    master_pid: i32,
    /// Makes the command that runs a Postfix program (on the relay's host).
    command: Box<dyn Fn(&str) -> Command + Send + Sync>,
}

impl Postfix {
    pub fn start(dir: &Path, lmtp: SocketAddr) -> Postfix {
        let transport = format!("lmtp:inet:{lmtp}");
        Postfix::start_with(
            dir,
            &[("default_transport", transport.as_str())],
            false,
            |program| Command::new(program),
        )
    }

    /// A throwaway Postfix with `settings` replacing (or adding to) the defaults of
    /// [`Postfix::start`] in `main.cf`, its SMTP server kept in `master.cf` when `smtpd` (it
    /// listens on `inet_interfaces`), started by the `postfix start` that `command` makes
    /// (`command("postfix")`: on another host, a command that enters the host's network
    /// namespace). No service is chrooted: the queue directory is a temporary one.
    pub fn start_with(
        dir: &Path,
        settings: &[(&str, &str)],
        smtpd: bool,
        command: impl Fn(&str) -> Command + Send + Sync + 'static,
    ) -> Postfix {
        let conf = dir.join("conf");
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create Postfix's directories");
        }
        let master = std::fs::read_to_string("/etc/postfix/master.cf")
            .unwrap_or_else(|e| missing("postfix (/etc/postfix/master.cf)", e));
        // Definitions only, the SMTP server only when asked for, chroot (column 5) off.
        let services: String = master
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.trim().is_empty())
            .filter(|l| smtpd || !l.starts_with("smtp ") || !l.contains(" inet "))
            .map(|l| {
                let mut fields: Vec<&str> = l.split_whitespace().collect();
                if fields.len() > 4 {
                    fields[4] = "n";
                }
                format!("{}\n", fields.join(" "))
            })
            .collect();
        std::fs::write(conf.join("master.cf"), services).expect("write master.cf");
        let d = dir.display().to_string();
        let mut main: Vec<(String, String)> = [
            ("compatibility_level", "3.6"),
            ("queue_directory", &format!("{d}/queue")),
            ("data_directory", &format!("{d}/data")),
            ("mail_owner", "postfix"),
            ("setgid_group", "postdrop"),
            ("myhostname", "relay.test.example"),
            ("mydomain", "test.example"),
            ("myorigin", "relay.test.example"),
            ("mydestination", ""),
            ("inet_interfaces", "loopback-only"),
            ("inet_protocols", "ipv4"),
            ("relayhost", ""),
            ("local_transport", "error:no local delivery"),
            ("maillog_file", &format!("{d}/maillog")),
            ("maillog_file_prefixes", &d),
            ("smtputf8_enable", "no"),
            ("alias_maps", ""),
            ("alias_database", ""),
            ("notify_classes", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (key, value) in settings {
            match main.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value.to_string(),
                None => main.push((key.to_string(), value.to_string())),
            }
        }
        let text: String = main.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        std::fs::write(conf.join("main.cf"), text).expect("write main.cf");
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .expect("chown");
        assert!(
            chown.success(),
            "chown postfix {}",
            dir.join("data").display()
        );
        let mut cmd = command("postfix");
        cmd.arg("-c").arg(&conf).arg("start");
        let out = run_bounded(cmd, "postfix", Duration::from_secs(60));
        let pid_file = dir.join("queue/pid/master.pid");
        let deadline = Instant::now() + Duration::from_secs(20);
        let master_pid = loop {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "Postfix did not start: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Postfix {
            dir: dir.to_path_buf(),
            master_pid,
            command: Box::new(command),
        }
    }

    /// Submits `message` with Postfix's `sendmail`; returns the queue id Postfix gave it.
    pub fn submit(&self, from: &str, to: &[&str], message: &[u8]) -> String {
        use std::io::Write;
        let mut child = (self.command)("sendmail")
            .arg("-C")
            .arg(self.dir.join("conf"))
            .args(["-f", from, "--"])
            .args(to)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| missing("sendmail (postfix)", e));
        child
            .stdin
            .take()
            .expect("sendmail's stdin")
            .write_all(message)
            .expect("write to sendmail");
        assert!(child.wait().expect("sendmail").success(), "sendmail failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let id = log.lines().find_map(|l| {
                l.contains(&format!("from=<{from}>"))
                    .then(|| l.split("]: ").nth(1)?.split(':').next())
                    .flatten()
                    .map(str::to_string)
            });
            if let Some(id) = id {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "Postfix never picked the message up:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `to=<...> ... status=...` lines of queue id `id`, waiting (bounded) for `n`.
    pub fn results(&self, id: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(&format!("{id}: to=<")) && l.contains(" status="))
                .map(str::to_string)
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} results:\n{}",
                lines.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The configuration directory (`postfix -c`).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("conf")
    }

    /// `<tool> -c <conf> <args>` (postfix, postconf, postqueue), which must succeed; its
    /// output.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Output {
        let mut cmd = (self.command)(tool);
        cmd.arg("-c").arg(self.conf()).args(args);
        let out = run_bounded(cmd, tool, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// How many messages wait in the queue (`postqueue -j`: one JSON line each).
    pub fn queued(&self) -> usize {
        let out = self.tool("postqueue", &["-j"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .count()
    }

    /// Whether `postqueue -p` says the queue is empty.
    pub fn queue_is_empty(&self) -> bool {
        let out = self.tool("postqueue", &["-p"]);
        String::from_utf8_lossy(&out.stdout).contains("Mail queue is empty")
    }

    /// `postqueue -f`: every deferred message is tried again now.
    pub fn flush(&self) {
        self.tool("postqueue", &["-f"]);
    }

    /// Waits until `done` (asked every 100 ms), at most `limit`, flushing the queue every 2 s
    /// meanwhile: a deferred message is tried again at once instead of at its next retry, and
    /// a queue manager a reload left idle is woken. Once (a CI run, 2026-12-06) the reload of
    /// [`Postfix::hold_delivery`]`(false)` was followed by nothing tried and nothing logged for
    /// 60 s, with 1,000 messages deferred by the hold. A flush fails loudly ("mail system is
    /// down") if the master itself is gone. Whether `done` came.
    pub fn flushing_until(&self, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        let mut flushed = start;
        loop {
            if done() {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            if flushed.elapsed() >= Duration::from_secs(2) {
                self.flush();
                flushed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Holds or releases delivery (`defer_transports = lmtp`): held, what is submitted waits
    /// in the queue, so that released, Postfix has a backlog for its LMTP destinations at
    /// once and keeps its sessions to them cached and busy (it caches on demand: when more
    /// mail waits for the destination). A hold set this way takes effect once the reload has
    /// reached the queue manager; a relay that must hold from its first message is started
    /// with the setting in `main.cf`.
    pub fn hold_delivery(&self, hold: bool) {
        let setting = if hold {
            "defer_transports = lmtp"
        } else {
            "defer_transports ="
        };
        self.tool("postconf", &["-e", setting]);
        self.tool("postfix", &["reload"]);
        if !hold {
            self.flush();
        }
    }

    /// Every delivery result in the log (`<queue id>: to=<...>, ... status=...`), in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log().lines().filter_map(Delivery::parse).collect()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.master_pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        // The master is not our child (postfix-script started it): wait for it to be gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One delivery result of Postfix's log: `<agent>[pid]: <queue id>: to=<rcpt>, ...,
/// status=<status> (<reason>)`.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The program that logged it: `lmtp` for an attempt, `qmgr` or `error` for a message
    /// deferred without one (a destination marked down, a held transport).
    pub agent: String,
    pub queue_id: String,
    pub to: String,
    pub status: String,
    pub reason: String,
}

impl Delivery {
    fn parse(line: &str) -> Option<Delivery> {
        let (head, rest) = line.split_once("]: ")?;
        let agent = head.rsplit_once('[')?.0.rsplit('/').next()?.to_string();
        let (queue_id, rest) = rest.split_once(": to=<")?;
        let (to, rest) = rest.split_once(">,")?;
        let after = rest.split_once(" status=")?.1;
        let (status, reason) = after.split_once(' ').unwrap_or((after, ""));
        let reason = reason.trim();
        let reason = reason
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(reason);
        Some(Delivery {
            agent,
            queue_id: queue_id.to_string(),
            to: to.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
        })
    }

    /// A delivery the LMTP client tried and lost the connection in.
    pub fn cut(&self) -> bool {
        self.agent == "lmtp"
            && self.status == "deferred"
            && self.reason.starts_with("lost connection")
    }

    /// A cut after the message data was sent, before its replies were read: the only moment
    /// a store may have kept a message the relay will send again.
    pub fn cut_after_data(&self) -> bool {
        self.cut() && self.reason.contains("may be sent more than once")
    }

    /// A message deferred because delivery is held (`defer_transports`): the test's doing.
    pub fn held(&self) -> bool {
        self.reason == "deferred transport"
    }
}
