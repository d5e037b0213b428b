//! Opening files in directories that someone else may be able to write: the one place that
//! decides how the dispatcher and the images create or open a file for writing.
//!
//! The dispatcher and the native image run with privileges (root, or the right to write any
//! recipient's mailbox); the directories they write (`IMTA_LOG`, `STORE_ROOT`, `MAIL_SPOOL`)
//! may be writable by others through a mistake or by design (a `1777` `/var/mail`). So every
//! open for writing here:
//!
//! * never follows a symbolic link in the last component (`O_NOFOLLOW`), so a planted link
//!   cannot point a write at another file;
//! * creates only with `O_EXCL` ([`create_new`]), so a file planted between a check and the
//!   create is never used; a file written is given further names through its descriptor
//!   ([`link_open_file`]), never through a name someone else could swap meanwhile;
//! * opens an existing file only when it is a regular file (never a FIFO or a device, opened
//!   `O_NONBLOCK` so one cannot block), with one link (a hard link cannot make it another
//!   file) and the expected owner ([`open_existing`]);
//! * says which of these checks failed ([`UnsafeFile`]), for a log line that names the path.
//!
//! Directories: a store root is opened by [`crate::lmtp::store::StoreRoot`], which tells
//! "absent" from "could not be examined" where `Path::is_dir()` would call both "not a
//! directory". Below a directory someone else may write (a user's Maildir), the `*_at`
//! functions work relative to a directory descriptor opened with [`open_dir_at`], one
//! component at a time and never through a link, so a directory swapped for a symbolic link between a check and a write cannot redirect it;
//! [`open_dir_no_links`] opens a whole path that way in one call (`openat2`).
//!
//! This module reads no configuration and logs nothing: callers log a refusal with the path.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// What was wrong with a file that is in the way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeFile {
    #[error("it is a symbolic link")]
    SymbolicLink,
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it is not a directory")]
    NotDirectory,
    #[error("it has {0} hard links")]
    Links(u64),
    #[error("it belongs to uid {found}, not uid {expected}")]
    Owner { found: u32, expected: u32 },
}

/// Why a file could not be opened safely.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Something is at the path that must not be written through.
    #[error("refused: {0}")]
    Unsafe(UnsafeFile),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl OpenError {
    /// The underlying I/O error, for callers that classify `ENOSPC` and the like.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            OpenError::Io(e) => Some(e),
            OpenError::Unsafe(_) => None,
        }
    }
}

impl From<OpenError> for io::Error {
    /// For callers that only report the failure: a refusal becomes an error saying why.
    fn from(e: OpenError) -> io::Error {
        match e {
            OpenError::Io(e) => e,
            OpenError::Unsafe(u) => io::Error::other(format!("refused: {u}")),
        }
    }
}

/// Flags every open here carries.
const BASE_FLAGS: libc::c_int = libc::O_CLOEXEC | libc::O_NOFOLLOW;

/// Creates `path` with `mode` (before the umask); fails with `AlreadyExists` if anything,
/// a link included, is already there.
pub fn create_new(path: &Path, options: &OpenOptions, mode: u32) -> io::Result<File> {
    let mut options = options.clone();
    options
        .create_new(true)
        .mode(mode)
        .custom_flags(BASE_FLAGS)
        .open(path)
}

/// Opens an existing `path` as `options` say, only if it is a regular file with one link
/// owned by `owner` (any owner when `None`). `Ok(None)` when nothing is there.
pub fn open_existing(
    path: &Path,
    options: &OpenOptions,
    owner: Option<u32>,
) -> Result<Option<File>, OpenError> {
    // Look before opening, so a device or a FIFO is never opened at all; the open below
    // checks again what it got, since the path may change in between.
    match std::fs::symlink_metadata(path) {
        Ok(m) => check_metadata(&m, owner).map_err(OpenError::Unsafe)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OpenError::Io(e)),
    }
    let mut options = options.clone();
    options
        .create(false)
        .create_new(false)
        .custom_flags(BASE_FLAGS | libc::O_NONBLOCK);
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(OpenError::Unsafe(UnsafeFile::SymbolicLink))
        }
        // A FIFO without a reader or a socket put there since the look above.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(OpenError::Unsafe(UnsafeFile::NotRegular))
        }
        Err(e) => return Err(OpenError::Io(e)),
    };
    check_file(&file, owner).map_err(OpenError::Unsafe)?;
    Ok(Some(file))
}

/// [`open_existing`] for any owner, a refusal reported as an `io::Error`.
pub fn open_regular(path: &Path, options: OpenOptions) -> io::Result<Option<File>> {
    Ok(open_existing(path, &options, None)?)
}

/// Opens `path` if it is there and safe ([`open_existing`]), else creates it
/// ([`create_new`]); `true` when it was created. A file that appears between the two tries
/// is opened and checked, never truncated.
pub fn open_or_create(
    path: &Path,
    options: &OpenOptions,
    mode: u32,
    owner: Option<u32>,
) -> Result<(File, bool), OpenError> {
    for _ in 0..3 {
        if let Some(f) = open_existing(path, options, owner)? {
            return Ok((f, false));
        }
        match create_new(path, options, mode) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(OpenError::Io(e)),
        }
    }
    Err(OpenError::Io(io::Error::other(
        "the file keeps appearing and disappearing",
    )))
}

/// The checks of [`open_existing`] on a file already open.
pub fn check_file(file: &File, owner: Option<u32>) -> Result<(), UnsafeFile> {
    let meta = file.metadata().map_err(|_| UnsafeFile::NotRegular)?;
    check_metadata(&meta, owner)
}

/// The same checks on metadata read with `symlink_metadata` or `fstat`.
pub fn check_metadata(meta: &std::fs::Metadata, owner: Option<u32>) -> Result<(), UnsafeFile> {
    if meta.file_type().is_symlink() {
        return Err(UnsafeFile::SymbolicLink);
    }
    if !meta.file_type().is_file() {
        return Err(UnsafeFile::NotRegular);
    }
    if meta.nlink() != 1 {
        return Err(UnsafeFile::Links(meta.nlink()));
    }
    match owner {
        Some(expected) if meta.uid() != expected => Err(UnsafeFile::Owner {
            found: meta.uid(),
            expected,
        }),
        _ => Ok(()),
    }
}

/// Opens the directory `name` inside `parent` for the `*_at` functions, never following a
/// symbolic link (`O_NOFOLLOW|O_DIRECTORY`). `Ok(None)` when nothing is there; a link or
/// anything else that is not a directory is [`OpenError::Unsafe`].
pub fn open_dir_at(parent: BorrowedFd<'_>, name: &Path) -> Result<Option<OwnedFd>, OpenError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        // Linux says ENOTDIR for a link with O_NOFOLLOW|O_DIRECTORY: look at what is there.
        Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => match metadata_at(parent, name) {
            Ok(m) if m.file_type().is_symlink() => Err(OpenError::Unsafe(UnsafeFile::SymbolicLink)),
            Ok(_) => Err(OpenError::Unsafe(UnsafeFile::NotDirectory)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OpenError::Io(e)),
        },
        Err(e) => Err(OpenError::Io(e.into())),
    }
}

/// Opens the directory `path` for the `*_at` functions, refusing a symbolic link in any of
/// its components (`openat2` with `RESOLVE_NO_SYMLINKS`): for a directory named by
/// something that someone else may have rearranged. An error also where the kernel has no
/// `openat2`; callers then use a directory they trust instead.
pub fn open_dir_no_links(path: &Path) -> io::Result<OwnedFd> {
    let how = nix::fcntl::OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS);
    Ok(nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how)?)
}

/// [`create_new`] inside the directory `dir`: `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing that
/// is already there (a link included) is ever opened. `access` is `O_WRONLY` or `O_RDWR`,
/// perhaps with `O_APPEND`.
pub fn create_new_at(
    dir: BorrowedFd<'_>,
    name: &Path,
    access: OFlag,
    mode: u32,
) -> io::Result<File> {
    let flags = access | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(mode))?;
    Ok(File::from(fd))
}

/// Gives the open file `file` the name `name` in `dir` (failing with `EEXIST` when the name
/// is taken): the file linked is the one open here, whatever has happened meanwhile to any
/// name it has. The link is made through `/proc/thread-self/fd`, which needs no privilege
/// (`AT_EMPTY_PATH` would need `CAP_DAC_READ_SEARCH`); without `/proc` it fails with `ENOENT`
/// ([`can_link_open_files`]).
///
/// Both paths are made on the heap, not in `nix`'s 1 KiB stack buffers: this runs on a
/// connection's thread, and a stack page it touches once stays resident for as long as the
/// connection is open (`make bench`, memory: 4 KiB more per idle connection with `nix`).
pub fn link_open_file(file: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &Path) -> Result<(), Errno> {
    let by_fd = CString::new(format!("/proc/thread-self/fd/{}", file.as_raw_fd()))
        .map_err(|_| Errno::EINVAL)?;
    let name = CString::new(name.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call; `dir` is a
    // descriptor the caller holds open for the call's length.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            by_fd.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    Errno::result(rc).map(drop)
}

/// Where `/proc` is not mounted, [`link_open_file`] by way of a name: makes `name` in `to`
/// another name for what `name` in `from` names, and keeps it only if that is `file` (the
/// same device and inode). Whoever can write `from` may have put a file of its own under
/// `name` since `file` was created there; the check after the link sees what was linked,
/// which nobody can change once it is linked. `Ok(false)`: it was not `file`, and the name
/// made in `to` is removed again. Between the link and its removal the other file is named
/// in `to`, so `to` should be a directory no reader looks in (the caller links the name into
/// place once it is checked).
pub fn link_name_if_same(
    file: BorrowedFd<'_>,
    from: BorrowedFd<'_>,
    name: &Path,
    to: BorrowedFd<'_>,
) -> Result<bool, Errno> {
    nix::unistd::linkat(from, name, to, name, nix::fcntl::AtFlags::empty())?;
    let linked = nix::sys::stat::fstatat(to, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
    let same = match (nix::sys::stat::fstat(file), linked) {
        (Ok(a), Ok(b)) => Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if same != Ok(true) {
        // Not known to be `file`: the name goes again, or the caller hears why it could not.
        nix::unistd::unlinkat(to, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
    }
    same
}

/// Whether [`link_open_file`] can work here: `/proc` is mounted.
pub fn can_link_open_files() -> bool {
    Path::new("/proc/thread-self/fd").is_dir()
}

/// [`open_existing`] inside the directory `dir`: `access` is `O_RDONLY`, `O_WRONLY` or
/// `O_RDWR`, perhaps with `O_APPEND`.
pub fn open_existing_at(
    dir: BorrowedFd<'_>,
    name: &Path,
    access: OFlag,
    owner: Option<u32>,
) -> Result<Option<File>, OpenError> {
    // As open_existing: look first, so a FIFO or a device is never opened.
    match metadata_at(dir, name) {
        Ok(m) => check_metadata(&m, owner).map_err(OpenError::Unsafe)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OpenError::Io(e)),
    }
    let flags = access | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match nix::fcntl::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(OpenError::Unsafe(UnsafeFile::SymbolicLink)),
        Err(Errno::ENXIO) => return Err(OpenError::Unsafe(UnsafeFile::NotRegular)),
        Err(e) => return Err(OpenError::Io(e.into())),
    };
    check_file(&file, owner).map_err(OpenError::Unsafe)?;
    Ok(Some(file))
}

/// What is at `name` in `dir`, a link not followed: `fstat` of an `O_PATH` descriptor,
/// which opens nothing (a FIFO cannot block it).
fn metadata_at(dir: BorrowedFd<'_>, name: &Path) -> io::Result<std::fs::Metadata> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::empty())?;
    File::from(fd).metadata()
}

/// Removes `path` if it is still the file `(dev, ino)` (one this process created or judged),
/// never a file put at that name since: `true` when it removed it. The window between the
/// look and the unlink is the one every dot-locking program has.
pub fn remove_if_same(path: &Path, dev: u64, ino: u64) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == (dev, ino) => std::fs::remove_file(path).map(|()| true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The effective uid of this process: the owner every file it creates gets.
pub fn effective_uid() -> u32 {
    nix::unistd::Uid::effective().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn append() -> OpenOptions {
        let mut o = OpenOptions::new();
        o.append(true);
        o
    }

    #[test]
    fn creates_with_the_mode_and_refuses_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = create_new(&p, &append(), 0o640).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o640 & !umask());
        let e = create_new(&p, &append(), 0o640).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }

    /// The process's umask, read without changing it (other tests create files meanwhile).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .unwrap();
        u32::from_str_radix(field.trim(), 8).unwrap()
    }

    #[test]
    fn never_writes_through_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            open_existing(&link, &append(), None),
            Err(OpenError::Unsafe(UnsafeFile::SymbolicLink))
        ));
        assert!(create_new(&link, &append(), 0o600).is_err());
        assert!(matches!(
            open_or_create(&link, &append(), 0o600, None),
            Err(OpenError::Unsafe(UnsafeFile::SymbolicLink))
        ));
        let mut s = String::new();
        File::open(&target).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "keep");
    }

    #[test]
    fn refuses_a_hard_link_a_fifo_and_another_owner() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "x").unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        assert!(matches!(
            open_existing(&a, &append(), None),
            Err(OpenError::Unsafe(UnsafeFile::Links(2)))
        ));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            open_existing(&fifo, &append(), None),
            Err(OpenError::Unsafe(UnsafeFile::NotRegular))
        ));
        let c = dir.path().join("c");
        std::fs::write(&c, "x").unwrap();
        let other = effective_uid().wrapping_add(1);
        assert!(matches!(
            open_existing(&c, &append(), Some(other)),
            Err(OpenError::Unsafe(UnsafeFile::Owner { .. }))
        ));
    }

    #[test]
    fn opens_or_creates_a_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let (mut f, created) = open_or_create(&p, &append(), 0o640, Some(effective_uid())).unwrap();
        assert!(created);
        f.write_all(b"one\n").unwrap();
        let (mut f, created) = open_or_create(&p, &append(), 0o640, Some(effective_uid())).unwrap();
        assert!(!created);
        f.write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        assert!(open_existing(&dir.path().join("none"), &append(), None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn below_a_directory_descriptor_no_link_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let base: OwnedFd = File::open(dir.path()).unwrap().into();
        let base = std::os::fd::AsFd::as_fd(&base);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("file"), "keep").unwrap();
        assert!(open_dir_at(base, Path::new("sub")).unwrap().is_some());
        assert!(open_dir_at(base, Path::new("none")).unwrap().is_none());
        assert!(matches!(
            open_dir_at(base, Path::new("link")),
            Err(OpenError::Unsafe(UnsafeFile::SymbolicLink))
        ));
        assert!(matches!(
            open_dir_at(base, Path::new("file")),
            Err(OpenError::Unsafe(UnsafeFile::NotDirectory))
        ));
        std::os::unix::fs::symlink(dir.path().join("file"), dir.path().join("flink")).unwrap();
        let write = OFlag::O_WRONLY | OFlag::O_APPEND;
        assert!(matches!(
            open_existing_at(base, Path::new("flink"), write, None),
            Err(OpenError::Unsafe(UnsafeFile::SymbolicLink))
        ));
        assert!(create_new_at(base, Path::new("flink"), write, 0o600).is_err());
        std::fs::hard_link(dir.path().join("file"), dir.path().join("hard")).unwrap();
        assert!(matches!(
            open_existing_at(base, Path::new("hard"), write, None),
            Err(OpenError::Unsafe(UnsafeFile::Links(2)))
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("file")).unwrap(),
            "keep"
        );
        let mut f = create_new_at(base, Path::new("new"), write, 0o600).unwrap();
        f.write_all(b"x").unwrap();
        let f = open_existing_at(base, Path::new("new"), write, Some(effective_uid()));
        assert!(f.unwrap().is_some());
        assert!(open_existing_at(base, Path::new("none"), write, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_path_with_a_link_anywhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("l")).unwrap();
        assert!(open_dir_no_links(&dir.path().join("a/b")).is_ok());
        assert!(open_dir_no_links(&dir.path().join("l/b")).is_err());
        assert!(open_dir_no_links(&dir.path().join("l")).is_err());
    }

    #[test]
    fn a_name_is_linked_only_while_it_is_the_open_file() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["from", "to"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let open = |sub: &str| File::open(dir.path().join(sub)).unwrap();
        let (from, to) = (open("from"), open("to"));
        let name = Path::new("m");
        let ours = create_new_at(from.as_fd(), name, OFlag::O_WRONLY, 0o600).unwrap();
        assert_eq!(
            link_name_if_same(ours.as_fd(), from.as_fd(), name, to.as_fd()),
            Ok(true)
        );
        let linked = std::fs::metadata(dir.path().join("to/m")).unwrap();
        assert_eq!(linked.ino(), ours.metadata().unwrap().ino());
        // What is under the name now is not linked, and nothing is left in `to`.
        let refused = || {
            assert_eq!(
                link_name_if_same(ours.as_fd(), from.as_fd(), name, to.as_fd()),
                Ok(false)
            );
            assert!(std::fs::read_dir(dir.path().join("to"))
                .unwrap()
                .next()
                .is_none());
        };
        // The name swapped for another file.
        std::fs::remove_file(dir.path().join("to/m")).unwrap();
        std::fs::write(dir.path().join("from/other"), b"planted").unwrap();
        std::fs::rename(dir.path().join("from/other"), dir.path().join("from/m")).unwrap();
        refused();
        // A symbolic link put there is not followed to the file.
        std::fs::remove_file(dir.path().join("from/m")).unwrap();
        std::fs::write(dir.path().join("ours"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path().join("ours"), dir.path().join("from/m")).unwrap();
        refused();
    }
}
