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

/// One log line: `time program[pid] LEVEL: message` and a newline.
pub fn format_line(program: &str, record: &log::Record) -> String {
    format!(
        "{} {program}[{}] {}: {}\n",
        utc_timestamp(std::time::SystemTime::now()),
        std::process::id(),
        record.level(),
        record.args()
    )
}

/// The log of a worker image: the same lines on standard error, which the dispatcher has
/// pointed at the service's LOGFILE.
pub struct WorkerLog {
    pub program: &'static str,
    pub level: log::LevelFilter,
}

impl log::Log for WorkerLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let _ = std::io::stderr().write_all(format_line(self.program, record).as_bytes());
        }
    }

    fn flush(&self) {}
}

/// A time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661); // 2000-02-29 01:01:01
        assert_eq!(utc_timestamp(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(utc_timestamp(t), "2026-11-18T11:06:40Z");
    }
}
