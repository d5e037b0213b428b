//! Starting the dispatcher: read and check the configuration, open every port, lock the pid
//! file, detach (unless `--foreground`), open `dispatcher.log`, and run the event loop.
//!
//! Everything that can fail because of the configuration or the host fails before detaching,
//! so the administrator sees the error on the terminal. The exit status tells the two apart
//! ([`StartError::exit_code`]): [`EX_CONFIG`] (78) for a configuration that cannot be used,
//! which restarting will not mend (systemd's `RestartPreventExitStatus=`), 1 for the rest (a
//! port taken, the pid file locked, the log directory), which a later try may find gone.
//!
//! Under a service manager (`NOTIFY_SOCKET` set, see [`super::notify`]) the dispatcher stays
//! in the foreground even without `--foreground`: a detached child would not be the main
//! process the manager hears from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::control::ControlSocket;
use super::event_loop::{self, Reloaded, Setup};
use super::listen;
use super::log::DispatcherLog;
use super::notify::Notifier;
use super::pidfile::PidFile;
use crate::check;
use crate::config::error::Diagnostics;
use crate::config::installation;
use crate::config::tailor::TailorOrigin;
use crate::control::client::Client;

/// How the dispatcher was asked to run.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub tailor: PathBuf,
    pub tailor_origin: TailorOrigin,
    pub foreground: bool,
    pub shutdown_bound: Duration,
    /// `--takeover`: take the listeners of the running dispatcher, waiting at most this long
    /// for the workers before giving up.
    pub takeover: Option<Duration>,
}

/// The exit status of a start refused for its configuration (`EX_CONFIG` of sysexits.h).
pub const EX_CONFIG: u8 = 78;

/// Why the dispatcher did not start or stopped in error, with a message for the administrator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot be loaded or names accounts workers may not run as.
    #[error("{0}")]
    Config(String),
    /// Anything else: the host, a port, the pid file, the log, the event loop.
    #[error("{0}")]
    Other(String),
}

impl StartError {
    /// [`EX_CONFIG`] for the configuration, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => EX_CONFIG,
            StartError::Other(_) => 1,
        }
    }
}

/// Runs the dispatcher until it is stopped; why, when it cannot start (the service manager,
/// if any, hears it as its `STATUS=`).
pub fn start(opts: &StartOptions) -> Result<(), StartError> {
    let notify = Notifier::from_env();
    let result = run(opts, notify.clone());
    if let Err(e) = &result {
        notify.status(&format!("cannot run: {e}"));
    }
    result
}

fn run(opts: &StartOptions, notify: Notifier) -> Result<(), StartError> {
    let mut diags = Diagnostics::default();
    let inst = installation::load(&opts.tailor, opts.tailor_origin, &mut diags)
        .map_err(|e| StartError::Config(e.to_string()))?;
    check::check_accounts(&inst, &mut diags, true).map_err(StartError::Config)?;
    start_loaded(opts, inst, diags, notify).map_err(StartError::Other)
}

/// The rest of a start once the configuration is known to be usable.
fn start_loaded(
    opts: &StartOptions,
    inst: installation::Installation,
    diags: Diagnostics,
    notify: Notifier,
) -> Result<(), String> {
    let foreground = opts.foreground || notify.active();
    let log_dir = inst.tailor.log_dir();
    let control_path = crate::control::socket_path(&log_dir);
    let pidfile_path = log_dir.join("dispatcher.pid");
    // A takeover first: the running dispatcher's sockets, which it goes on serving meanwhile.
    let mut takeover = match opts.takeover {
        Some(wait) => {
            let t = Client::connect(&control_path)
                .and_then(|c| c.takeover(Duration::from_secs(10)))
                .map_err(|e| format!("takeover: {e}"))?;
            Some((t, wait))
        }
        None => None,
    };
    let mut listeners = Vec::new();
    for s in &inst.dispatcher.services {
        let mut own = Vec::new();
        for &port in &s.ports.value {
            let handed =
                (takeover.as_mut()).and_then(|(t, _)| t.take_port(listen::address(s, port)));
            own.push(match handed {
                Some(l) => l,
                None => listen::open_port(s, port).map_err(|e| e.to_string())?,
            });
        }
        listeners.push(own);
    }
    let metrics = match inst.dispatcher.metrics {
        None => None,
        Some(address) => match (takeover.as_mut()).and_then(|(t, _)| t.take_metrics(address)) {
            Some(l) => Some(l),
            None => Some(listen::open_metrics(address).map_err(|e| e.to_string())?),
        },
    };
    let mut control_failed = None;
    let (pidfile, control) = if takeover.is_some() {
        (None, None)
    } else {
        let pid = PidFile::lock(&pidfile_path).map_err(|e| e.to_string())?;
        // Any socket left at the name is a dead dispatcher's: the pid file is ours.
        let control = match ControlSocket::bind(&control_path) {
            Ok(c) => Some(c),
            Err(e) => {
                let text =
                    format!("{e}; --status and the other commands will not reach this dispatcher");
                eprintln!("dispatcher: warning: {text}");
                control_failed = Some(text);
                None
            }
        };
        (Some(pid), control)
    };
    let log_path = log_dir.join("dispatcher.log");
    let level = if inst.dispatcher.debug.value != 0 {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let logger = Arc::new(
        DispatcherLog::open(
            &log_path,
            inst.dispatcher.history_to_retain.value,
            foreground,
            level,
        )
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?,
    );
    let started: super::detach::Report = if foreground {
        // A failure is what the start returns, and is printed as such.
        Box::new(|r: Result<String, String>| {
            if let Ok(text) = r {
                eprintln!("dispatcher: {text}");
            }
        })
    } else if takeover.is_some() {
        // The terminal waits for the takeover's outcome, which comes after detaching.
        super::detach::detach_and_report()?
    } else {
        // chdir to / and standard streams to /dev/null, as a daemon does.
        nix::unistd::daemon(false, false).map_err(|e| format!("cannot detach: {e}"))?;
        Box::new(|_| {})
    };
    let mut pidfile = pidfile;
    if let Some(pid) = &mut pidfile {
        pid.write_pid().map_err(|e| e.to_string())?;
    }
    log::set_boxed_logger(Box::new(SharedLog(Arc::clone(&logger))))
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    log::set_max_level(level);
    log::info!(
        "dispatcher {} starting, pid {}, tailor {}",
        crate::VERSION,
        std::process::id(),
        opts.tailor.display()
    );
    for w in &diags.warnings {
        log::warn!("configuration: {w}");
    }
    if let Some(text) = control_failed {
        log::error!("{text}");
    }
    let (tailor, origin) = (opts.tailor.clone(), opts.tailor_origin);
    let mail_user = inst.tailor.user();
    // The workers' delivery log, made here as they cannot create files in IMTA_LOG.
    let delivery_log = log_dir.join(crate::lmtp::delivery_log::FILE_NAME);
    let owner = (inst.dispatcher.services.first())
        .and_then(|s| super::runtime::service_account(s, mail_user.as_deref()).ok()?)
        .map(|a| (a.uid, a.gid));
    super::logfiles::ensure_delivery_log(&delivery_log, owner);
    if let Some((t, _)) = &takeover {
        for h in &t.listeners {
            log::info!(
                "takeover: {} is not in this configuration; the running dispatcher closes it when it hands over",
                h.address
            );
        }
    }
    let setup = Setup {
        metrics_address: inst.dispatcher.metrics,
        metrics,
        control_path,
        control,
        pidfile,
        pidfile_path,
        takeover,
        started,
        mail_user,
        notify,
        services: inst.dispatcher.services,
        listeners,
        port_access: inst.mapping_set,
        tailor: opts.tailor.clone(),
        shutdown_bound: opts.shutdown_bound,
        reopen_log: Box::new(move || {
            super::logfiles::ensure_delivery_log(&delivery_log, owner);
            logger.reopen()
        }),
        reload: Box::new(move || {
            let mut diags = Diagnostics::default();
            let inst =
                installation::load(&tailor, origin, &mut diags).map_err(|e| e.to_string())?;
            for w in &diags.warnings {
                log::warn!("configuration: {w}");
            }
            Ok(Reloaded {
                mail_user: inst.tailor.user(),
                services: inst.dispatcher.services,
                port_access: inst.mapping_set,
                mappings_path: inst.mappings_path,
                metrics: inst.dispatcher.metrics,
            })
        }),
    };
    let result = event_loop::run(setup);
    if let Err(e) = &result {
        log::error!("{e}");
    }
    result
}

/// The logger shared between `log` and the SIGUSR1 reopen.
struct SharedLog(Arc<DispatcherLog>);

impl log::Log for SharedLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.0.enabled(m)
    }
    fn log(&self, r: &log::Record) {
        self.0.log(r)
    }
    fn flush(&self) {}
}
