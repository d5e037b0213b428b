//! The dispatcher's own log, `IMTA_LOG:dispatcher.log-<uniqueid>` (a new version at each start,
//! `dispatcher.log` linking the newest; see [`super::logfiles`]): one line per event, each with
//! the time (UTC), the pid and the level, so an operator can grep it.
//!
//! ```text
//! 2026-11-24T10:39:01Z dispatcher[4242] INFO: [SERVICE=LMTPSS] worker 1 started, pid 4250
//! ```
//!
//! The file is opened for appending. SIGUSR1 reopens it by the name of the version this
//! dispatcher created (never through `dispatcher.log`, which is only a link to it): after
//! logrotate moved the file away a new one of that name is created, and a file that is not
//! ours at that name is refused, the refusal logged, and lines keep going to the file open
//! before ([`super::logfiles::reopen_version`]). With `--foreground` every line also goes
//! to standard error.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::handoff::log_line::format_line;

/// The logger installed with `log::set_boxed_logger`.
pub struct DispatcherLog {
    /// `dispatcher.log`, the link to the newest version.
    base: PathBuf,
    /// The version this dispatcher created and writes.
    path: PathBuf,
    file: Mutex<Option<File>>,
    to_stderr: bool,
    level: log::LevelFilter,
}

impl DispatcherLog {
    /// Creates a new version of `base` (keeping `keep` older ones); `to_stderr` also copies
    /// every line to standard error.
    pub fn open(
        base: &Path,
        keep: u64,
        to_stderr: bool,
        level: log::LevelFilter,
    ) -> std::io::Result<DispatcherLog> {
        let (path, file) = super::logfiles::open_version(base, keep)?;
        Ok(DispatcherLog {
            base: base.to_path_buf(),
            path,
            file: Mutex::new(Some(file)),
            to_stderr,
            level,
        })
    }

    /// Reopens the version at its name (for SIGUSR1 after a rotation); on failure the file
    /// open before stays in use and the error names the path.
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = super::logfiles::reopen_version(&self.base, &self.path).map_err(|e| {
            std::io::Error::other(format!(
                "{}: {e}; still writing to the file open before",
                self.path.display()
            ))
        })?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        Ok(())
    }
}

impl log::Log for DispatcherLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line("dispatcher", record);
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            // One write per line, so lines of concurrent writers do not interleave.
            let _ = f.write_all(line.as_bytes());
        }
        if self.to_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}
