//! The pid file, `IMTA_LOG:dispatcher.pid`: holds the running dispatcher's pid and is locked
//! (`flock`) for its whole life, so a second dispatcher of the same installation refuses to
//! start instead of fighting over the ports. Removed at a clean stop.
//!
//! The dispatcher opens it as root in a directory others may be able to write, so it is
//! opened as [`crate::safe_fs`] opens every file it writes: never through a symbolic link,
//! created `0640` with `O_EXCL`, and an existing one only when it is a regular file with one
//! link owned by the dispatcher's user. Anything else there refuses the start, naming the
//! path; the file in the way is not touched.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::safe_fs::{self, OpenError};

/// The pid file's permissions: never world-readable.
pub const MODE: u32 = 0o640;

/// A locked pid file; the lock lasts as long as this value (and survives a fork).
pub struct PidFile {
    path: PathBuf,
    file: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("cannot open the pid file {path}: {source}")]
    Open { path: PathBuf, source: OpenError },
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
    /// Opens (or creates) and locks the pid file; fails at once if another process holds
    /// it, or if what is at `path` is not a plain file of ours.
    pub fn lock(path: &Path) -> Result<PidFile, PidFileError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        let open_error = |source| PidFileError::Open {
            path: path.to_path_buf(),
            source,
        };
        let (file, created) =
            safe_fs::open_or_create(path, &options, MODE, Some(safe_fs::effective_uid()))
                .map_err(open_error)?;
        if !created {
            // An older version created it world-readable; it is ours, so tighten it.
            file.set_permissions(std::fs::Permissions::from_mode(MODE))
                .map_err(|e| open_error(OpenError::Io(e)))?;
        }
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(PidFile {
                path: path.to_path_buf(),
                file,
            }),
            Err((_, errno)) if errno != nix::errno::Errno::EWOULDBLOCK => {
                // Not held by anyone: the lock itself failed (ENOLCK on some network file
                // systems, say). Say so, rather than blame another dispatcher.
                Err(open_error(OpenError::Io(std::io::Error::from(errno))))
            }
            Err((mut file, _)) => {
                // Read the holder's pid from the file we opened, not by name again.
                let mut text = String::new();
                let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
                let holder = Some(text.trim())
                    .filter(|s| !s.is_empty())
                    .map(|pid| format!(" by pid {}", crate::log_text::untrusted(pid)))
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
        f.rewind().map_err(fail)?;
        f.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(fail)
    }

    /// Removes the file (the lock goes with the value), if the name still is the file we
    /// locked: one put there since is not ours to remove.
    pub fn remove(self) {
        if let Ok(ours) = self.file.metadata() {
            let _ = safe_fs::remove_if_same(&self.path, ours.dev(), ours.ino());
        }
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

    #[test]
    fn a_link_at_the_pid_file_is_refused_and_its_target_untouched() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("precious");
        std::fs::write(&target, "keep me\n").expect("write");
        let p = d.path().join("dispatcher.pid");
        std::os::unix::fs::symlink(&target, &p).expect("symlink");
        let err = PidFile::lock(&p).err().expect("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.to_string().contains("dispatcher.pid"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me\n");
    }

    #[test]
    fn the_pid_file_is_created_0640_and_an_old_one_is_tightened() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("dispatcher.pid");
        std::fs::write(&p, "123\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut f = PidFile::lock(&p).expect("lock");
        f.write_pid().expect("write");
        let mode = std::fs::metadata(&p).expect("stat").mode() & 0o777;
        assert_eq!(mode, MODE);
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("{}\n", std::process::id())
        );
    }
}
