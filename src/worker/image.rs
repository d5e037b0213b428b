//! The `main` every worker image shares: `--version`, the worker settings from the
//! environment, the worker log, the control socket on descriptor 3, then the runtime with the
//! image's [`Handler`].

use std::process::ExitCode;
use std::sync::Arc;

use super::runtime::{self, Handler, WorkerConfig};

/// Runs an image called `program`; `handler` builds its connection handler from the settings.
pub fn main_for(
    program: &'static str,
    handler: impl FnOnce(&WorkerConfig) -> Arc<dyn Handler>,
) -> ExitCode {
    if std::env::args()
        .skip(1)
        .any(|a| a == "--version" || a == "-V")
    {
        println!("{program} {}", crate::VERSION);
        return ExitCode::SUCCESS;
    }
    let config = WorkerConfig::from_env();
    runtime::init_logging(program, &config);
    let control = match runtime::control_socket() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime::run(control, &config, handler(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A handler for an image whose service is not built yet: every client gets a `421`
/// (service not available, try again later, RFC 5321 §3.8), so a relay keeps its mail queued
/// instead of losing it, and the dispatcher path can be seen working end to end.
pub struct NotAvailable {
    pub program: &'static str,
}

impl Handler for NotAvailable {
    fn serve(&self, c: runtime::Connection) {
        use std::io::Write;
        let mut s = c.stream;
        let _ = write!(
            s,
            "421 4.3.2 {} {}: LMTP delivery is not available in this version; try again later\r\n",
            self.program,
            crate::VERSION
        );
        log::info!(
            "connection {} from {}: answered 421 (delivery not available yet)",
            c.id,
            c.client
        );
    }
}
