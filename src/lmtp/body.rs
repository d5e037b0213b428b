//! Message data while it is received and stored: in memory while small, in an unnamed
//! temporary file once it passes [`SPILL_AT`] octets, so a connection never holds a large
//! message in memory (`MAX_CONNS` connections with 100 MiB messages each would otherwise
//! take gigabytes). The file is created with `O_TMPFILE` in a directory the store names (on
//! its own file system: the first recipient's Maildir `tmp/`, the mail spool), else in the
//! system's temporary directory, so it has no name, no reader ever sees it and a crash
//! leaves nothing behind; where the file system has no `O_TMPFILE` a named file is created
//! (`O_EXCL`) and unlinked at once. The store's directory is opened refusing a symbolic
//! link in any part of its path ([`safe_fs::open_dir_no_links`]): whoever can write a
//! user's Maildir must not be able to send the data somewhere else by replacing `tmp/` (or
//! the Maildir) with a link. Where that open fails for any reason, the data goes to the
//! system's temporary directory, which the administrator chose.
//!
//! [`Sink`] is what receiving writes to; [`Body::chunks`] is how a store reads it back, in
//! order, without loading it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::safe_fs;

/// Octets kept in memory before the data goes to a temporary file.
pub const SPILL_AT: usize = 1 << 20;
/// Size of the pieces a spilled body is read back in.
const READ_BACK: usize = 256 * 1024;

/// Where received octets go.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()>;
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// A message body, in memory or spilled to an unnamed file.
#[derive(Debug)]
pub struct Body {
    /// All of it while not spilled; afterwards the tail not yet written to the file.
    mem: Vec<u8>,
    file: Option<File>,
    /// Octets in the file.
    in_file: u64,
    spill_dir: PathBuf,
    spill_at: usize,
}

impl Body {
    pub fn new(spill_dir: &Path) -> Body {
        Body::with_spill_at(spill_dir, SPILL_AT)
    }

    pub fn with_spill_at(spill_dir: &Path, spill_at: usize) -> Body {
        Body {
            mem: Vec::new(),
            file: None,
            in_file: 0,
            spill_dir: spill_dir.to_path_buf(),
            spill_at: spill_at.max(1),
        }
    }

    /// A body holding `bytes` in memory (for tests and small built texts).
    pub fn from_bytes(bytes: &[u8]) -> Body {
        let mut b = Body::with_spill_at(Path::new("."), usize::MAX);
        b.mem.extend_from_slice(bytes);
        b
    }

    /// Where a large body goes from now on (for the next message).
    pub fn set_spill_dir(&mut self, dir: PathBuf) {
        self.spill_dir = dir;
    }

    /// Empties it for the next message and gives back its memory, so a connection waiting
    /// between messages holds none (the next message grows it again, doubling); the file, if
    /// any, goes away.
    pub fn clear(&mut self) {
        self.file = None;
        self.in_file = 0;
        self.mem = Vec::new();
    }

    pub fn len(&self) -> u64 {
        self.in_file + self.mem.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body as one slice, when it is in memory.
    pub fn as_slice(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(self.mem.as_slice())
    }

    /// Whether it went to a temporary file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Calls `f` with the body's content in order, in pieces.
    pub fn chunks(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if let Some(file) = &self.file {
            let mut buf = vec![0u8; READ_BACK];
            let mut at = 0u64;
            while at < self.in_file {
                let want = (self.in_file - at).min(READ_BACK as u64) as usize;
                file.read_exact_at(&mut buf[..want], at)?;
                f(&buf[..want])?;
                at += want as u64;
            }
        }
        if self.mem.is_empty() {
            return Ok(());
        }
        f(&self.mem)
    }

    fn spill(&mut self) -> io::Result<()> {
        let file = match self.file.take() {
            Some(f) => f,
            // The store's directory, else the system's temporary directory (a store root
            // the workers may not write to, say).
            None => unnamed_file(&self.spill_dir)
                .or_else(|first| unnamed_temp_file().map_err(|_| first))?,
        };
        let mut writer = &file;
        let written = writer.write_all(&self.mem);
        self.file = Some(file);
        written?;
        self.in_file += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }
}

impl Sink for Body {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.mem.extend_from_slice(bytes);
        if self.mem.len() >= self.spill_at {
            self.spill()?;
        }
        Ok(())
    }
}

/// A file with no name in the store's directory `dir`, which is opened refusing any link
/// on the way.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    let dir = safe_fs::open_dir_no_links(dir)?;
    unnamed_file_at(dir.as_fd())
}

/// A file with no name in the system's temporary directory (`TMPDIR`, `/tmp`).
fn unnamed_temp_file() -> io::Result<File> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = nix::fcntl::open(&std::env::temp_dir(), flags, Mode::empty())?;
    unnamed_file_at(dir.as_fd())
}

/// A file with no name in the directory `dir`: `O_TMPFILE`, else a named one unlinked at
/// once.
fn unnamed_file_at(dir: BorrowedFd<'_>) -> io::Result<File> {
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(dir, ".", flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::EOPNOTSUPP) | Err(Errno::EISDIR) | Err(Errno::EINVAL) => {
            static N: AtomicU64 = AtomicU64::new(0);
            let name = format!(
                ".lmtp-spill.{}.{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let f = safe_fs::create_new_at(dir, Path::new(&name), OFlag::O_RDWR, 0o600)?;
            nix::unistd::unlinkat(dir, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)?;
            Ok(f)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(b: &Body) -> Vec<u8> {
        let mut out = Vec::new();
        b.chunks(|c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn small_stays_in_memory_large_goes_to_an_unnamed_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Body::with_spill_at(dir.path(), 1000);
        b.put(b"hello ").unwrap();
        assert_eq!(b.as_slice(), Some(&b"hello "[..]));
        let mut expected = b"hello ".to_vec();
        for i in 0..5000u32 {
            let piece = format!("line {i}\r\n");
            b.put(piece.as_bytes()).unwrap();
            expected.extend_from_slice(piece.as_bytes());
        }
        assert!(b.spilled() && b.as_slice().is_none());
        assert_eq!(b.len(), expected.len() as u64);
        assert_eq!(read_back(&b), expected);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the spill file has no name"
        );
        b.clear();
        assert!(!b.spilled() && b.is_empty());
        b.put(b"next").unwrap();
        assert_eq!(read_back(&b), b"next");
    }

    #[test]
    fn a_cleared_body_holds_no_memory_for_the_idle_connection() {
        let mut b = Body::new(Path::new("."));
        b.put(&[b'x'; 200 * 1024]).unwrap();
        assert!(!b.spilled());
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.mem.capacity(), 0, "the message's memory was kept");
    }

    #[test]
    fn a_spill_directory_behind_a_link_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = dir.path().join("tmp");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        for spill_dir in [link.clone(), link.join(".")] {
            let mut b = Body::with_spill_at(&spill_dir, 4);
            b.put(b"0123456789").unwrap();
            assert!(b.spilled());
            // An unnamed file still shows its directory in /proc.
            let fd = std::os::fd::AsRawFd::as_raw_fd(b.file.as_ref().unwrap());
            let shown = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            assert!(!shown.starts_with(&elsewhere), "{}", shown.display());
            assert!(!shown.starts_with(dir.path()), "{}", shown.display());
        }
    }

    #[test]
    fn a_spill_directory_that_cannot_be_used_falls_back_to_the_temporary_directory() {
        let mut b = Body::with_spill_at(Path::new("/nonexistent/spill"), 4);
        b.put(b"0123456789").unwrap();
        assert!(b.spilled());
        assert_eq!(read_back(&b), b"0123456789");
    }
}
