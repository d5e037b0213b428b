//! The installation's delivery log, `IMTA_LOG:mail.log_current` (the name of the original's
//! message log): one line per delivery and per refused recipient, from every worker of every
//! service, so the record of a message does not go with a worker's versioned LOGFILE when
//! `HISTORY_TO_RETAIN` prunes it (docs/admin-guide.md, "Log files").
//!
//! * Each line is written with one `write(2)` on a descriptor opened `O_APPEND`: the kernel
//!   appends a write to a regular file whole, so lines of concurrent workers never interleave.
//!   A short write is reported, never completed by a second write that could land elsewhere.
//! * The dispatcher creates the file, owned by the workers' account (it runs as root; the
//!   workers cannot create files in `IMTA_LOG`). A worker opens only what it can trust there:
//!   a regular file with one link, owned by itself or by root, never through a symbolic link
//!   ([`crate::safe_fs::open_existing`]), never truncated. A file planted by another account
//!   is refused and the refusal logged in the LOGFILE.
//! * Rotation: before each line the worker compares the file at the name with the one it has
//!   open (device and inode) and opens the new one when they differ, so after logrotate moves
//!   the file and the dispatcher creates a new one (SIGUSR1), the next line goes to the new
//!   file. While nothing usable is at the name the lines go on into the file open before,
//!   so none is lost. A worker opens the file when it starts, so it has one to go on with;
//!   one that started between logrotate's move and the dispatcher's new file has none, and
//!   waits up to [`CREATION_WAIT`] for the new file before it gives the line up (it is then
//!   in the LOGFILE only, and the error says so). It waits once: while the file stays
//!   absent the next lines are given up at once (a dispatcher that could not create the
//!   file must not slow every delivery), until a file is there again.
//!
//! Whoever calls [`DeliveryLog::write`] also logs the line in the LOGFILE; when the delivery
//! log cannot take it, the LOGFILE line is the record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::handoff::log_line::format_text;
use crate::safe_fs::{self, OpenError, UnsafeFile};

/// The file's name in `IMTA_LOG`.
pub const FILE_NAME: &str = "mail.log_current";

/// How long a worker with no file open waits for the dispatcher to make one at the name
/// (after a rotation logrotate's `postrotate` sends `SIGUSR1` at once: milliseconds).
pub const CREATION_WAIT: Duration = Duration::from_secs(2);

/// Why a line did not reach the delivery log.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryLogError {
    #[error("cannot open the delivery log {path}: {error}")]
    Open { path: PathBuf, error: OpenError },
    #[error("the delivery log {path} is not ours: {why}")]
    NotOurs { path: PathBuf, why: UnsafeFile },
    #[error(
        "the delivery log {path} is absent (the dispatcher creates it at start and on SIGUSR1)"
    )]
    Absent { path: PathBuf },
    #[error("cannot write to the delivery log {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The delivery log of one worker process, shared by its connection threads.
pub struct DeliveryLog {
    path: PathBuf,
    program: &'static str,
    open: Mutex<Option<Open>>,
    /// A wait for the file ended with none: no line waits again until one is there.
    waited_in_vain: AtomicBool,
}

/// The file in hand and which file it is.
struct Open {
    file: File,
    dev: u64,
    ino: u64,
}

impl DeliveryLog {
    /// The log at `path`, written by `program`; nothing is opened before the first line.
    pub fn new(path: PathBuf, program: &'static str) -> DeliveryLog {
        DeliveryLog {
            path,
            program,
            open: Mutex::new(None),
            waited_in_vain: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file now (a worker does at start), so that a rotation before its first line
    /// finds it with a file to go on with. A failure is returned; the first line tries again.
    pub fn open_now(&self) -> Result<(), DeliveryLogError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        self.follow(&mut open)
    }

    /// Appends `text` as one line (time, program, pid and level first). An error says why
    /// it went nowhere or where it went instead (the file open before, after a refusal).
    pub fn write(&self, level: log::Level, text: &str) -> Result<(), DeliveryLogError> {
        let line = format_text(self.program, level, text);
        let waited = Instant::now();
        loop {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            // A failure to follow a rotation is reported, and the line still goes to the file
            // open before (the one logrotate moved away): late there is better than nowhere.
            let follow = self.follow(&mut open);
            if let Some(current) = open.as_mut() {
                self.waited_in_vain.store(false, Ordering::Relaxed);
                return Self::append(current, &line, &self.path).and(follow);
            }
            match follow {
                // Nothing open, nothing at the name: a rotation's gap, unless it lasts.
                Err(DeliveryLogError::Absent { .. })
                    if waited.elapsed() < CREATION_WAIT
                        && !self.waited_in_vain.load(Ordering::Relaxed) =>
                {
                    drop(open);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e @ DeliveryLogError::Absent { .. }) => {
                    self.waited_in_vain.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// One `write(2)` of the whole line.
    fn append(current: &mut Open, line: &str, path: &Path) -> Result<(), DeliveryLogError> {
        match current.file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => Err(DeliveryLogError::Write {
                path: path.to_path_buf(),
                error: std::io::Error::other(format!("only {n} of {} bytes written", line.len())),
            }),
            Err(error) => Err(DeliveryLogError::Write {
                path: path.to_path_buf(),
                error,
            }),
        }
    }

    /// Makes `open` the file now at the name, if that is a file we may append to.
    fn follow(&self, open: &mut Option<Open>) -> Result<(), DeliveryLogError> {
        let there = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match open {
                    Some(_) => Ok(()),
                    None => Err(DeliveryLogError::Absent {
                        path: self.path.clone(),
                    }),
                }
            }
            Err(e) => {
                return Err(DeliveryLogError::Open {
                    path: self.path.clone(),
                    error: OpenError::Io(e),
                })
            }
        };
        if open
            .as_ref()
            .is_some_and(|o| o.dev == there.dev() && o.ino == there.ino())
        {
            return Ok(());
        }
        let mut options = OpenOptions::new();
        options.append(true);
        let file = match safe_fs::open_existing(&self.path, &options, None) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(error) => {
                return Err(DeliveryLogError::Open {
                    path: self.path.clone(),
                    error,
                })
            }
        };
        let meta = file.metadata().map_err(|e| DeliveryLogError::Open {
            path: self.path.clone(),
            error: OpenError::Io(e),
        })?;
        let own = safe_fs::effective_uid();
        if meta.uid() != own && meta.uid() != 0 {
            return Err(DeliveryLogError::NotOurs {
                path: self.path.clone(),
                why: UnsafeFile::Owner {
                    found: meta.uid(),
                    expected: own,
                },
            });
        }
        *open = Some(Open {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_follows_the_file_to_its_new_inode_after_a_rename() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join(FILE_NAME);
        std::fs::write(&path, "").expect("create");
        let log = DeliveryLog::new(path.clone(), "test");
        log.write(log::Level::Info, "one").expect("write");
        std::fs::rename(&path, d.path().join("rotated")).expect("rotate");
        // Nothing at the name yet: the line goes on into the moved file.
        log.write(log::Level::Info, "two").expect("write");
        std::fs::write(&path, "").expect("a new file");
        log.write(log::Level::Info, "three").expect("write");
        let old = std::fs::read_to_string(d.path().join("rotated")).expect("read");
        let new = std::fs::read_to_string(&path).expect("read");
        assert!(
            old.contains("INFO: one\n") && old.contains("INFO: two\n"),
            "{old}"
        );
        assert!(
            new.ends_with("INFO: three\n") && new.lines().count() == 1,
            "{new}"
        );
    }

    #[test]
    fn a_worker_with_no_file_open_waits_for_the_new_one_after_a_rotation() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join(FILE_NAME);
        // A worker that started after logrotate's move: nothing open, nothing at the name,
        // until the dispatcher makes the new file a little later.
        let log = DeliveryLog::new(path.clone(), "test");
        let maker = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                std::fs::write(&path, "").expect("the new file");
            })
        };
        log.write(log::Level::Info, "in the gap")
            .expect("waited for it");
        maker.join().expect("maker");
        let new = std::fs::read_to_string(&path).expect("read");
        assert!(new.ends_with("INFO: in the gap\n"), "{new}");
    }

    #[test]
    fn with_no_file_at_all_a_line_is_given_up_after_the_wait() {
        let d = tempfile::tempdir().expect("tempdir");
        let log = DeliveryLog::new(d.path().join(FILE_NAME), "test");
        let started = Instant::now();
        let e = log.write(log::Level::Info, "x").expect_err("absent");
        assert!(matches!(e, DeliveryLogError::Absent { .. }), "{e}");
        assert!(started.elapsed() >= CREATION_WAIT, "it waited");
    }

    #[test]
    fn after_a_wait_in_vain_lines_do_not_wait_again_until_the_file_is_back() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join(FILE_NAME);
        let log = DeliveryLog::new(path.clone(), "test");
        log.write(log::Level::Info, "first")
            .expect_err("absent, after the wait");
        // The dispatcher could not make the file: every further delivery must not pay 2 s.
        let started = Instant::now();
        for _ in 0..3 {
            log.write(log::Level::Info, "next").expect_err("absent");
        }
        assert!(started.elapsed() < CREATION_WAIT, "{:?}", started.elapsed());
        // Once a file is there again, lines go to it.
        std::fs::write(&path, "").expect("the file");
        log.write(log::Level::Info, "back").expect("written");
        assert!(std::fs::read_to_string(&path)
            .expect("read")
            .ends_with("INFO: back\n"));
    }

    #[test]
    fn a_file_opened_at_start_takes_the_lines_of_a_rotation_gap() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join(FILE_NAME);
        std::fs::write(&path, "").expect("create");
        let log = DeliveryLog::new(path.clone(), "test");
        log.open_now().expect("open at start");
        std::fs::rename(&path, d.path().join("rotated")).expect("rotate");
        let started = Instant::now();
        log.write(log::Level::Info, "first line")
            .expect("into the moved file");
        assert!(started.elapsed() < CREATION_WAIT, "no wait: it had a file");
        let old = std::fs::read_to_string(d.path().join("rotated")).expect("read");
        assert!(old.ends_with("INFO: first line\n"), "{old}");
    }

    #[test]
    fn a_planted_link_is_never_written_through() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("precious");
        std::fs::write(&target, "keep\n").expect("write");
        let path = d.path().join(FILE_NAME);
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let log = DeliveryLog::new(path, "test");
        let e = log.write(log::Level::Info, "x").expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
    }
}
