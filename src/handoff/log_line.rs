//! The log line format the dispatcher and its workers share, so that one `grep` reads both
//! `dispatcher.log` and a service's LOGFILE:
//!
//! ```text
//! 2026-11-24T10:42:24Z tcp_lmtp_server[4250] INFO: [SERVICE=LMTPSS] worker ready
//! ```
//!
//! [`format_line`] makes one line; the dispatcher's logger (`src/dispatcher/log.rs`) writes it
//! to its own file, [`WorkerLog`] (a worker image's logger) to standard error, which the
//! dispatcher points at the service's LOGFILE. This module writes no file.

use std::io::Write;

/// One log line: `time program[pid] LEVEL: message` and a newline.
pub fn format_line(program: &str, record: &log::Record) -> String {
    format_text(program, record.level(), record.args())
}

/// The same line for text that is not a `log` record (the delivery log's lines).
pub fn format_text(program: &str, level: log::Level, text: impl std::fmt::Display) -> String {
    format!(
        "{} {program}[{}] {level}: {text}\n",
        utc_timestamp(std::time::SystemTime::now()),
        std::process::id(),
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
