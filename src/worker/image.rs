//! The `main` every worker image shares: `--version`, the allocator's arena cap
//! ([`super::threads::limit_malloc_arenas`]), the worker settings from the environment, the
//! worker log, the control socket on descriptor 3, then the runtime with the image's
//! [`Handler`], or the reason it cannot start.

use std::process::ExitCode;
use std::sync::Arc;

use super::runtime::{self, Handler, WorkerConfig};

/// Runs an image called `program`; `handler` builds its connection handler from the settings.
/// When it cannot (its configuration is wrong), the image logs why and exits with status 2
/// before saying READY; the dispatcher then backs off before starting it again.
pub fn main_for(
    program: &'static str,
    handler: impl FnOnce(&WorkerConfig) -> Result<Arc<dyn Handler>, String>,
) -> ExitCode {
    if std::env::args()
        .skip(1)
        .any(|a| a == "--version" || a == "-V")
    {
        println!("{program} {}", crate::VERSION);
        return ExitCode::SUCCESS;
    }
    // Before any thread exists: a thread per connection, at most one malloc arena per CPU.
    super::threads::limit_malloc_arenas();
    let config = WorkerConfig::from_env();
    runtime::init_logging(program, &config);
    let control = match runtime::control_socket() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let handler = match handler(&config) {
        Ok(h) => h,
        Err(e) => {
            log::error!("[SERVICE={}] cannot start: {e}", config.service);
            return ExitCode::from(2);
        }
    };
    match runtime::run(control, &config, handler) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(
                "[SERVICE={}] worker exiting with an error: {e}",
                config.service
            );
            ExitCode::FAILURE
        }
    }
}
