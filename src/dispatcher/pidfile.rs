//! The pid file, `IMTA_LOG:dispatcher.pid`: holds the running dispatcher's pid and is locked
//! (`flock`) for its whole life, so a second dispatcher of the same installation refuses to
//! start instead of fighting over the ports. Removed at a clean stop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A locked pid file; the lock lasts as long as this value (and survives a fork).
pub struct PidFile {
    path: PathBuf,
    file: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("cannot open the pid file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another dispatcher of this installation is running (pid file {path} is locked{holder})"
    )]
    Running { path: PathBuf, holder: String },
    #[error("cannot write the pid file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PidFile {
    /// Opens and locks the pid file; fails at once if another process holds it.
    pub fn lock(path: &Path) -> Result<PidFile, PidFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| PidFileError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(PidFile {
                path: path.to_path_buf(),
                file,
            }),
            Err((_, _)) => {
                let holder = std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .map(|pid| format!(" by pid {pid}"))
                    .unwrap_or_default();
                Err(PidFileError::Running {
                    path: path.to_path_buf(),
                    holder,
                })
            }
        }
    }

    /// Writes the current process's pid (after detaching, the daemon's).
    pub fn write_pid(&mut self) -> Result<(), PidFileError> {
        let fail = |source| PidFileError::Write {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(fail)?;
        let mut f: &File = &self.file;
        f.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(fail)
    }

    /// Removes the file (the lock goes with the value).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_holder() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("dispatcher.pid");
        let mut first = PidFile::lock(&p).expect("first");
        first.write_pid().expect("write");
        let err = PidFile::lock(&p).err().expect("second is refused");
        assert!(
            err.to_string()
                .contains(&format!("by pid {}", std::process::id())),
            "{err}"
        );
        first.remove();
        assert!(!p.exists());
        assert!(PidFile::lock(&p).is_ok(), "free again");
    }
}
