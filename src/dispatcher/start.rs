//! Starting the dispatcher: read and check the configuration, open every port, lock the pid
//! file, detach (unless `--foreground`), open `dispatcher.log`, and run the event loop.
//!
//! Everything that can fail because of the configuration or the host fails before detaching,
//! so the administrator sees the error on the terminal and the exit status is 1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::event_loop::{self, Reloaded, Setup};
use super::listen;
use super::log::DispatcherLog;
use super::pidfile::PidFile;
use crate::check;
use crate::config::error::Diagnostics;
use crate::config::installation;
use crate::config::tailor::TailorOrigin;

/// How the dispatcher was asked to run.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub tailor: PathBuf,
    pub tailor_origin: TailorOrigin,
    pub foreground: bool,
    pub shutdown_bound: Duration,
}

/// Runs the dispatcher until it is stopped; `Err` with a message for the administrator when
/// it cannot start.
pub fn start(opts: &StartOptions) -> Result<(), String> {
    let mut diags = Diagnostics::default();
    let inst = installation::load(&opts.tailor, opts.tailor_origin, &mut diags)
        .map_err(|e| e.to_string())?;
    check::check_accounts(&inst, &mut diags, true)?;
    let mut listeners = Vec::new();
    for s in &inst.dispatcher.services {
        listeners.push(listen::open(s).map_err(|e| e.to_string())?);
    }
    let log_dir = inst.tailor.log_dir();
    let mut pid = PidFile::lock(&log_dir.join("dispatcher.pid")).map_err(|e| e.to_string())?;
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
            opts.foreground,
            level,
        )
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?,
    );
    if !opts.foreground {
        // chdir to / and standard streams to /dev/null, as a daemon does.
        nix::unistd::daemon(false, false).map_err(|e| format!("cannot detach: {e}"))?;
    }
    pid.write_pid().map_err(|e| e.to_string())?;
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
    let (tailor, origin) = (opts.tailor.clone(), opts.tailor_origin);
    let mail_user = inst.tailor.user();
    // The workers' delivery log, made here as they cannot create files in IMTA_LOG.
    let delivery_log = log_dir.join(crate::lmtp::delivery_log::FILE_NAME);
    let owner = (inst.dispatcher.services.first())
        .and_then(|s| super::runtime::service_account(s, mail_user.as_deref()).ok()?)
        .map(|a| (a.uid, a.gid));
    super::logfiles::ensure_delivery_log(&delivery_log, owner);
    let setup = Setup {
        mail_user,
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
            })
        }),
    };
    let result = event_loop::run(setup).map_err(|e| format!("event loop: {e}"));
    if let Err(e) = &result {
        log::error!("{e}");
    }
    pid.remove();
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
