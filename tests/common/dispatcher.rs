//! A dispatcher installation in a temporary directory, started in the foreground on free
//! loopback ports, and the client side of the echo test image.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{example, fixtures, ChildGuard};

pub const WAIT: Duration = Duration::from_secs(15);

/// A running dispatcher and its layout.
pub struct Dispatcher {
    pub child: ChildGuard,
    pub root: PathBuf,
    pub ports: [u16; 2],
    _dir: tempfile::TempDir,
}

/// Different ports no socket uses now on any IPv4 address (all held while choosing, so they
/// differ). Chosen by binding the wildcard address, never listening: a port merely free on
/// 127.0.0.1 may be a client's ephemeral port on 127.0.0.2, where a test then listens.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<socket2::Socket> = (0..N)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
                .expect("a free port");
            s
        })
        .collect();
    std::array::from_fn(|i| {
        held[i]
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("port")
    })
}

/// The account the test installation's workers run as (its tailor's `IMTA_USER`): as root,
/// `mailsrv`, a dedicated account as the seed's tailor names one (scripts/install-test-deps.sh
/// creates it), so that `nobody` and the recipients stay *other* accounts an attack test can
/// plant files as; not as root, the user running the tests.
pub fn mail_account() -> String {
    if nix::unistd::geteuid().is_root() {
        "mailsrv".to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name)
    }
}

/// The uid and gid of [`mail_account`].
pub fn mail_ids() -> (nix::unistd::Uid, nix::unistd::Gid) {
    let name = mail_account();
    let user = nix::unistd::User::from_name(&name)
        .expect("look up the mail account")
        .unwrap_or_else(|| panic!("no account {name}: run scripts/install-test-deps.sh"));
    (user.uid, user.gid)
}

/// An installation laid out in a temporary directory, not yet started.
pub struct Layout {
    pub root: PathBuf,
    pub ports: [u16; 2],
    dir: tempfile::TempDir,
}

impl Layout {
    /// The installation [`Dispatcher::start_lmtp`] runs, laid out but not started (for a
    /// caller that chooses the dispatcher's command line).
    pub fn lmtp(limits: &str, options: &str) -> Layout {
        Layout::new(limits, ["tcp_lmtp_server", "tcp_lmtpn_server"], |root| {
            let mappings = root.join("config/mappings");
            let text = std::fs::read_to_string(&mappings).expect("read mappings");
            let text = text.replacen(
                "  TCP|*|*|*|*",
                "  TCP|*|*|127.0.0.1|* $Y\n  TCP|*|*|*|*",
                1,
            );
            std::fs::write(&mappings, text).expect("write mappings");
            std::fs::copy(
                fixtures().join("seed/imta.cnf"),
                root.join("config/imta.cnf"),
            )
            .expect("copy the seed imta.cnf");
            // demo-layout.sh made both: the store the mail account's, the spool 1777.
            let store = format!("STORE_ROOT={}/store/\n{options}\n", root.display());
            let spool = format!("MAIL_SPOOL={}/mail/\n{options}\n", root.display());
            std::fs::write(root.join("config/tcp_lmtpss_option"), store).expect("option file");
            std::fs::write(root.join("config/tcp_lmtpsn_option"), spool).expect("option file");
        })
    }

    /// Lays out an installation with scripts/demo-layout.sh (the workers' account:
    /// [`mail_account`]), the seed's services on free ports with `limits` as global options
    /// and `images` as the two services' IMAGE (the echo test image copied into `lib/`),
    /// then lets `prepare` adjust it.
    pub fn new(limits: &str, images: [&str; 2], prepare: impl FnOnce(&Path)) -> Layout {
        let dir = demo_layout();
        let root = dir.path().to_path_buf();
        std::fs::copy(example("echo_image"), root.join("lib/echo_image")).expect("copy image");
        let ports = free_ports();
        let fill = |name: &str| {
            let text =
                std::fs::read_to_string(fixtures().join("runtime").join(name)).expect("fixture");
            text.replace("@LIMITS@", limits)
                .replace("@PORT1@", &ports[0].to_string())
                .replace("@PORT2@", &ports[1].to_string())
                .replace("@IMAGE1@", images[0])
                .replace("@IMAGE2@", images[1])
        };
        std::fs::write(
            root.join("config/dispatcher.cnf"),
            fill("dispatcher.cnf.in"),
        )
        .expect("write dispatcher.cnf");
        std::fs::write(root.join("config/mappings"), fill("mappings.in")).expect("write mappings");
        prepare(&root);
        Layout { root, ports, dir }
    }

    /// `dispatcher --foreground` of this installation, standard error to `stderr.log`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.root.join("lib/dispatcher"));
        cmd.args(["--foreground", "--shutdown-timeout", "5"])
            .env_remove("IMTA_TAILOR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.root.join("stderr.log")).expect("stderr file"));
        cmd
    }

    /// Runs the dispatcher, which must exit within [`WAIT`] (a refused start); its exit
    /// status and standard error.
    pub fn run_refused(&self) -> (std::process::ExitStatus, String) {
        let mut child = ChildGuard(self.command().spawn().expect("start dispatcher"));
        let status = child
            .wait_for(WAIT)
            .expect("the dispatcher exits instead of starting");
        let stderr = std::fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default();
        (status, stderr)
    }

    /// `dispatcher --check` of this installation: exit status, standard output and error.
    pub fn check(&self) -> (std::process::ExitStatus, String, String) {
        check(&self.root)
    }

    /// Edits `config/<file>` in place with `edit`.
    pub fn edit_config(&self, file: &str, edit: impl FnOnce(String) -> String) {
        edit_config(&self.root, file, edit)
    }
}

/// A temporary directory laid out as an installation by scripts/demo-layout.sh (the programs
/// of this build in `lib/`, the demo configuration, the workers' account [`mail_account`]).
/// The programs are cargo's of this build, or with `MSD_BINDIR` set (`make stress`, `make
/// bench`) those of that directory: `make build`'s target/dist, the ones shipped (Makefile).
pub fn demo_layout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let bindir = match std::env::var_os("MSD_BINDIR") {
        Some(shipped) => PathBuf::from(shipped),
        None => Path::new(env!("CARGO_BIN_EXE_dispatcher"))
            .parent()
            .expect("bin dir")
            .to_path_buf(),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo-layout.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .arg(&bindir)
        .arg(mail_account())
        .output()
        .expect("demo-layout.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// `dispatcher --check` of the installation at `root`: exit status, standard output and
/// error.
pub fn check(root: &Path) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(root.join("lib/dispatcher"))
        .arg("--check")
        .env_remove("IMTA_TAILOR")
        .output()
        .expect("run dispatcher --check");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every version of a service's LOGFILE in `<root>/log` (`name`, such as
/// `tcp_lmtpss_server.log`; each worker writes its own), concatenated in order.
pub fn service_log(root: &Path, name: &str) -> String {
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("log"))
        .expect("log directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}-")))
        })
        .collect();
    versions.sort();
    versions
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// How many workers of `service` a dispatcher log says were started (worker ids are the
/// dispatcher's, shared by every service, so they are not counted by number).
pub fn started(log: &str, service: &str) -> usize {
    let head = format!("[SERVICE={service}] worker ");
    log.lines()
        .filter(|l| l.contains(&head) && l.contains(" started, pid "))
        .count()
}

/// Sends `sig` to process `pid`, which must exist.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, sig).expect("signal the dispatcher");
}

/// Edits `<root>/config/<file>` in place with `edit`.
fn edit_config(root: &Path, file: &str, edit: impl FnOnce(String) -> String) {
    let path = root.join("config").join(file);
    let text = std::fs::read_to_string(&path).expect("read the configuration file");
    std::fs::write(&path, edit(text)).expect("write the configuration file");
}

impl Dispatcher {
    /// Lays out an installation with the seed's services on free ports, `limits` as global
    /// options, and the echo test image as both services' IMAGE; starts
    /// `dispatcher --foreground` and returns once both ports listen.
    pub fn start(limits: &str) -> Dispatcher {
        Dispatcher::start_with(limits, ["echo_image", "echo_image"], |_| {})
    }

    /// The same with the real LMTP images (`tcp_lmtp_server` on the first port,
    /// `tcp_lmtpn_server` on the second), the seed's `imta.cnf`, and channel option files
    /// that put the Maildir store in `<root>/store/` and the mbox spool in `<root>/mail/`
    /// (both created, empty; the store owned by [`mail_account`], the spool `1777`). `options` is added to both option files. PORT_ACCESS also
    /// admits 127.0.0.1, because the interoperability tools (`smtp-source`) cannot choose
    /// their source address.
    pub fn start_lmtp(limits: &str, options: &str) -> Dispatcher {
        Dispatcher::launch(Layout::lmtp(limits, options), |_| {})
    }

    /// Lays out the installation with `images` as the two services' IMAGE, lets `prepare`
    /// adjust it, and starts the dispatcher.
    pub fn start_with(limits: &str, images: [&str; 2], prepare: impl FnOnce(&Path)) -> Dispatcher {
        Dispatcher::launch(Layout::new(limits, images, prepare), |_| {})
    }

    /// Starts `dispatcher --foreground` on `layout`, letting `configure` adjust the command
    /// (its environment, descriptors), and returns once both ports listen.
    pub fn launch(layout: Layout, configure: impl FnOnce(&mut Command)) -> Dispatcher {
        Dispatcher::launch_on(layout, IpAddr::V4(Ipv4Addr::LOCALHOST), configure)
    }

    /// The same for an installation whose services listen on `interface` (their
    /// INTERFACE_ADDRESS) instead of 127.0.0.1: returns once the log says it listens there.
    pub fn launch_on(
        layout: Layout,
        interface: IpAddr,
        configure: impl FnOnce(&mut Command),
    ) -> Dispatcher {
        let mut cmd = layout.command();
        configure(&mut cmd);
        let child = cmd.spawn().expect("start dispatcher");
        let d = Dispatcher {
            child: ChildGuard(child),
            root: layout.root,
            ports: layout.ports,
            _dir: layout.dir,
        };
        let listening = SocketAddr::new(interface, d.ports[1]);
        d.wait_for_log(&format!("listening on {listening}"));
        d
    }

    /// Edits `config/<file>` in place with `edit`.
    pub fn edit_config(&self, file: &str, edit: impl FnOnce(String) -> String) {
        edit_config(&self.root, file, edit)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log/dispatcher.log")).unwrap_or_default()
    }

    /// Waits until the dispatcher log contains `text`; panics with the log after WAIT.
    pub fn wait_for_log(&self, text: &str) {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if self.log().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = std::fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default();
        panic!(
            "`{text}` not in the dispatcher log:\n{}\nstandard error:\n{stderr}",
            self.log()
        );
    }

    /// Pids of the dispatcher's children running `image` (names as `/proc` shows them: the
    /// first 15 characters).
    pub fn workers(&self, image: &str) -> Vec<i32> {
        super::children_named(self.child.pid(), image)
    }

    /// The one worker running `image`; panics if there is not exactly one.
    pub fn only_worker(&self, image: &str) -> nix::unistd::Pid {
        let pids = self.workers(image);
        assert_eq!(pids.len(), 1, "one {image} worker: {pids:?}");
        nix::unistd::Pid::from_raw(pids[0])
    }

    /// Every version of a service's LOGFILE, concatenated ([`service_log`]).
    pub fn service_log(&self, name: &str) -> String {
        service_log(&self.root, name)
    }

    /// Waits until the service's log contains `text` and returns it; panics with the log
    /// after WAIT.
    pub fn wait_for_service_log(&self, name: &str, text: &str) -> String {
        let end = Instant::now() + WAIT;
        loop {
            let log = self.service_log(name);
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < end, "`{text}` not in {name}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many workers of `service` the log says were started ([`started`]).
    pub fn started(&self, service: &str) -> usize {
        started(&self.log(), service)
    }

    /// Waits until `n` workers of `service` were started; panics with the log after WAIT.
    pub fn wait_for_started(&self, service: &str, n: usize) {
        let end = Instant::now() + WAIT;
        while self.started(service) < n {
            assert!(
                Instant::now() < end,
                "{n} workers of {service} not started:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many lines of the log contain `text`.
    pub fn count_in_log(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal(self.child.pid(), sig)
    }

    pub fn addr(&self, which: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports[which]))
    }
}

/// A TCP connection from the loopback address `from` (the client address PORT_ACCESS sees),
/// with reads bounded by [`WAIT`].
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .expect("bind the client address");
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
}

/// A client of the echo image, connecting from a chosen loopback address.
pub struct Client {
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(from: Ipv4Addr, to: SocketAddr) -> Client {
        Client {
            reader: BufReader::new(connect_from(from, to)),
        }
    }

    /// The next line, or "" at end of file.
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        match self.reader.read_line(&mut s) {
            Ok(_) => s,
            Err(e) => panic!("reading from the server: {e}"),
        }
    }

    pub fn say(&mut self, text: &str) {
        self.reader
            .get_mut()
            .write_all(format!("{text}\r\n").as_bytes())
            .expect("write");
    }

    /// Sends QUIT and reads the reply.
    pub fn quit(mut self) -> String {
        self.say("QUIT");
        self.line()
    }
}

/// A field `key=value` of an echo greeting.
pub fn field(greeting: &str, key: &str) -> String {
    greeting
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}
