//! Versioned log files, named as the original names them: `dispatcher.log-<uniqueid>` and,
//! for each worker, `<LOGFILE>-<uniqueid>`.
//!
//! The original appends a unique id "to avoid overwriting an earlier log created by the same
//! channel", and `imsimta purge` keeps the newest versions. Ours: the unique id is the time
//! in milliseconds and the pid, both in fixed-width base 36, so names sort by creation time;
//! a new version is created each time the dispatcher starts (and for each worker it starts);
//! the newest `HISTORY_TO_RETAIN` older versions are kept and older ones removed, except a
//! version a running worker still writes ([`LiveVersions`]: its lines would go to a removed
//! file, out of an operator's reach), which stays until a start after its worker's exit; the
//! plain name (`dispatcher.log`, the LOGFILE itself) is a symbolic link to the newest
//! version, so `tail -f IMTA_LOG:dispatcher.log` and grep work as before.
//!
//! `IMTA_LOG` is written as root and may be writable by others, so no name here is ever
//! written through: a version is created with `O_EXCL` and `O_NOFOLLOW`, mode `0640`
//! ([`crate::safe_fs::create_new`]); [`reopen_version`] opens only the regular file of ours
//! that is at the version's name, or creates it anew; the link at the plain name is made
//! under a temporary name and renamed over it, which replaces whatever is there (a link
//! someone planted included) without following it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::safe_fs::{self, OpenError};

/// The permissions of every log file: never world-readable (they carry addresses).
pub const MODE: u32 = 0o640;

/// Width of the unique id: 9 base-36 digits of milliseconds (until the year 5188), a dot, 5 of
/// the pid.
const ID_LEN: usize = 15;

/// `<millis>.<pid>`, fixed width, base 36, lower case.
pub fn unique_id(millis: u64, pid: u32) -> String {
    format!("{}.{}", base36(millis, 9), base36(u64::from(pid), 5))
}

fn base36(mut v: u64, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

fn is_unique_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 9 {
                b == b'.'
            } else {
                b.is_ascii_digit() || b.is_ascii_lowercase()
            }
        })
}

/// The log versions running workers write, shared by the event loop and the starting
/// thread: pruning leaves them. Each is held by a [`VersionInUse`], whose drop (the worker
/// reaped, or its start failed) lets it go.
#[derive(Clone, Default)]
pub struct LiveVersions {
    paths: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LiveVersions {
    fn lock(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        // Only inserts and removes run under the lock: a poisoned set is still whole.
        self.paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, path: &Path) -> bool {
        self.lock().contains(path)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A version a worker writes, kept from pruning while this lives.
pub struct VersionInUse {
    path: PathBuf,
    live: LiveVersions,
}

#[cfg(test)]
impl VersionInUse {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for VersionInUse {
    fn drop(&mut self) {
        self.live.lock().remove(&self.path);
    }
}

/// A new version of `base` (`base-<uniqueid>`), created and opened for appending; `base`
/// becomes a link to it, and versions beyond `keep` older ones are removed.
pub fn open_version(base: &Path, keep: u64) -> std::io::Result<(PathBuf, File)> {
    open_version_leaving(base, keep, &LiveVersions::default())
}

/// A new version of `base` for a worker, as [`open_version`], held in `live` by the returned
/// guard; versions held there are not removed.
pub fn open_worker_version(
    base: &Path,
    keep: u64,
    live: &LiveVersions,
) -> std::io::Result<(VersionInUse, File)> {
    let (path, file) = open_version_leaving(base, keep, live)?;
    Ok((
        VersionInUse {
            path,
            live: live.clone(),
        },
        file,
    ))
}

fn open_version_leaving(
    base: &Path,
    keep: u64,
    live: &LiveVersions,
) -> std::io::Result<(PathBuf, File)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut millis = now;
    // Two workers started in the same millisecond by one process: take the next free name.
    let (path, file) = loop {
        let path = version_path(base, &unique_id(millis, std::process::id()));
        match safe_fs::create_new(&path, OpenOptions::new().append(true), MODE) {
            Ok(f) => break (path, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => millis += 1,
            Err(e) => return Err(e),
        }
    };
    // Held before the pruning, so that a start made meanwhile cannot remove it either.
    live.lock().insert(path.clone());
    if let Err(e) = link_newest(base, &path) {
        live.lock().remove(&path);
        return Err(e);
    }
    prune(base, &path, keep, live);
    Ok((path, file))
}

/// Opens `version` (made by [`open_version`] for `base`) again for appending, as SIGUSR1
/// asks after a rotation: the regular file of ours at that name, else (logrotate moved it
/// away) a new empty one created there; `base` is pointed at it again. Whatever else is at
/// the name (a link, a file of someone else's, a hard link) is refused and left as it is.
pub fn reopen_version(base: &Path, version: &Path) -> Result<File, OpenError> {
    let mut options = OpenOptions::new();
    options.append(true);
    let (file, _) =
        safe_fs::open_or_create(version, &options, MODE, Some(safe_fs::effective_uid()))?;
    link_newest(base, version)?;
    Ok(file)
}

fn version_path(base: &Path, id: &str) -> PathBuf {
    let mut name = base.as_os_str().to_os_string();
    name.push("-");
    name.push(id);
    PathBuf::from(name)
}

/// Points `base` at `version` (a relative link, replaced atomically). A regular file already
/// at `base` (an old installation's log) is left alone.
fn link_newest(base: &Path, version: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(base) {
        Ok(m) if !m.file_type().is_symlink() => return Ok(()),
        _ => {}
    }
    let target = version.file_name().map(PathBuf::from).unwrap_or_default();
    let mut tmp = base.as_os_str().to_os_string();
    tmp.push(".new-link");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)?;
    std::fs::rename(&tmp, base)
}

/// The versions of `base`, oldest first.
pub fn versions(base: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = base
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(
        "{}-",
        base.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&prefix).is_some_and(is_unique_id)
        })
        // Named as `version_path` names them (a base without a directory gives `name`, not
        // `./name`), so that the current version and the held ones compare equal.
        .map(|e| base.with_file_name(e.file_name()))
        .collect();
    found.sort();
    Ok(found)
}

/// Keeps `keep` versions older than `current` (the one just created) and removes the rest
/// of the older ones. Only our own regular files are counted or removed: a name planted in
/// `IMTA_LOG` that sorts after ours can never make the current log go, and a directory,
/// link or someone else's file there is left alone, and so is a version held in `live`.
/// Nothing here stops a start: a failure is logged with its path.
fn prune(base: &Path, current: &Path, keep: u64, live: &LiveVersions) {
    let all = match versions(base) {
        Ok(all) => all,
        Err(e) => {
            log::warn!("cannot list the old versions of {}: {e}", base.display());
            return;
        }
    };
    let own = safe_fs::effective_uid();
    let older: Vec<&PathBuf> = all
        .iter()
        .filter(|p| p.as_path() < current)
        // Not counted either: HISTORY_TO_RETAIN old versions are kept besides these.
        .filter(|p| !live.contains(p) && !made_by_another_running_process(p))
        .filter(|p| {
            std::fs::symlink_metadata(p)
                .is_ok_and(|m| safe_fs::check_metadata(&m, Some(own)).is_ok())
        })
        .collect();
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    if older.len() > keep {
        for old in &older[..older.len() - keep] {
            if let Err(e) = std::fs::remove_file(old) {
                log::warn!("cannot remove the old log version {}: {e}", old.display());
            }
        }
    }
}

/// Whether `version`'s unique id names another process that still runs: a dispatcher that is
/// handing over to this one (`--takeover`) and whose workers still write their versions. Its
/// versions are its own to prune; a pid reused since only keeps a file a little longer.
fn made_by_another_running_process(version: &Path) -> bool {
    let Some(pid) = version
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.get(n.len().saturating_sub(5)..))
        .and_then(|digits| u32::from_str_radix(digits, 36).ok())
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|&pid| pid > 0 && pid.unsigned_abs() != std::process::id())
    else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// Creates the delivery log (`IMTA_LOG:mail.log_current`, see `src/lmtp/delivery_log.rs`)
/// when nothing is at `path`, owned by `owner` (the workers' account, which cannot create
/// files in `IMTA_LOG`) with [`MODE`]; `true` when it was created. Whatever is already there
/// is left exactly as it is: never opened, truncated or chowned here (a worker refuses a file
/// that is not its own or root's).
pub fn create_delivery_log(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<bool> {
    let file = match safe_fs::create_new(path, OpenOptions::new().append(true), MODE) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    Ok(true)
}

/// [`create_delivery_log`] at start and at SIGUSR1, saying in the dispatcher's log what it did.
pub fn ensure_delivery_log(path: &Path, owner: Option<(u32, u32)>) {
    match create_delivery_log(path, owner) {
        Ok(true) => log::info!("delivery log {} created", path.display()),
        Ok(false) => {}
        Err(e) => log::error!(
            "cannot create the delivery log {}: {e}; delivery lines stay in the LOGFILEs",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_planted_after_ours_never_remove_the_current_log() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("dispatcher.log");
        for i in 0..5 {
            std::fs::write(
                version_path(&base, &format!("zzzzzzzz{i}.zzzzz")),
                "planted",
            )
            .expect("plant");
        }
        std::fs::create_dir(version_path(&base, "000000000.00000")).expect("plant a dir");
        let (path, _) = open_version(&base, 1).expect("version");
        assert!(path.exists(), "the current version stays");
        let (second, _) = open_version(&base, 1).expect("another version");
        assert!(
            path.exists() && second.exists(),
            "one older version is kept"
        );
        let (third, _) = open_version(&base, 1).expect("a third version");
        assert!(!path.exists() && second.exists() && third.exists());
        assert!(
            version_path(&base, "000000000.00000").is_dir(),
            "a directory is left"
        );
        assert_eq!(
            std::fs::read_to_string(version_path(&base, "zzzzzzzz0.zzzzz")).expect("read"),
            "planted",
            "names after ours are not counted or removed"
        );
    }

    #[test]
    fn unique_ids_have_a_fixed_width_and_sort_by_time() {
        let a = unique_id(1_795_000_000_000, 42);
        let b = unique_id(1_795_000_000_001, 7);
        assert_eq!(a.len(), ID_LEN);
        assert!(is_unique_id(&a) && is_unique_id(&b));
        assert!(a < b);
        assert!(!is_unique_id("12"));
    }

    #[test]
    fn versions_beyond_history_to_retain_are_removed_and_the_name_links_the_newest() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("dispatcher.log");
        let mut made = Vec::new();
        for _ in 0..4 {
            let (path, _) = open_version(&base, 2).expect("version");
            made.push(path);
        }
        let left = versions(&base).expect("list");
        assert_eq!(left, made[1..], "the current one and two older ones");
        let link = std::fs::read_link(&base).expect("a link");
        assert_eq!(Some(link.as_os_str()), made[3].file_name());
    }

    #[test]
    fn versions_running_workers_write_are_left_until_their_workers_are_gone() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("tcp_lmtpss_server.log");
        let live = LiveVersions::default();
        // Three workers running, HISTORY_TO_RETAIN=0.
        let mut workers: Vec<_> = (0..3)
            .map(|_| open_worker_version(&base, 0, &live).expect("version").0)
            .collect();
        assert!(workers.iter().all(|w| w.path().exists()), "all three kept");
        assert_eq!(live.len(), 3);
        let gone = workers[0].path().to_path_buf();
        drop(workers.remove(0));
        assert_eq!(live.len(), 2);
        let (fourth, _) = open_worker_version(&base, 0, &live).expect("version");
        assert!(
            !gone.exists(),
            "the exited worker's version is pruned at the next start"
        );
        assert_eq!(versions(&base).expect("list").len(), 3);
        assert!(fourth.path().exists());
        assert!(
            workers.iter().all(|w| w.path().exists()),
            "the running two stay"
        );
    }

    #[test]
    fn versions_of_another_running_process_are_left_to_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("tcp_lmtpss_server.log");
        // pid 1 runs; 36^5 - 1 is beyond any pid_max.
        let theirs = version_path(&base, "000000001.00001");
        let gone = version_path(&base, "000000002.zzzzz");
        for p in [&theirs, &gone] {
            std::fs::write(p, "").expect("plant");
        }
        let (ours, _) = open_version(&base, 0).expect("version");
        assert!(theirs.exists(), "a running process's version stays");
        assert!(!gone.exists(), "a gone process's version is pruned");
        assert!(ours.exists());
    }

    #[test]
    fn an_existing_plain_log_file_is_not_replaced_by_the_link() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("dispatcher.log");
        std::fs::write(&base, "old\n").expect("write");
        open_version(&base, 5).expect("version");
        assert_eq!(std::fs::read_to_string(&base).expect("read"), "old\n");
    }

    #[test]
    fn a_new_version_is_never_more_than_0640() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let (path, _) = open_version(&d.path().join("dispatcher.log"), 5).expect("version");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & !MODE, 0, "{mode:o}");
    }

    #[test]
    fn reopening_creates_a_moved_version_anew_and_refuses_a_planted_link() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("dispatcher.log");
        let (path, _) = open_version(&base, 5).expect("version");
        // logrotate moved it away: a new file of the same name, and the link points at it.
        std::fs::rename(&path, d.path().join("rotated")).expect("rotate");
        let mut f = reopen_version(&base, &path).expect("reopen");
        std::io::Write::write_all(&mut f, b"after\n").expect("write");
        assert_eq!(std::fs::read_to_string(&base).expect("read"), "after\n");
        // Someone replaced it with a link: refused, the target untouched.
        let target = d.path().join("precious");
        std::fs::write(&target, "keep\n").expect("write");
        std::fs::remove_file(&path).expect("remove");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let e = reopen_version(&base, &path).expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
    }

    #[test]
    fn a_link_planted_at_the_plain_name_is_replaced_never_written_through() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("precious");
        std::fs::write(&target, "keep\n").expect("write");
        let base = d.path().join("dispatcher.log");
        std::os::unix::fs::symlink(&target, &base).expect("symlink");
        let (path, mut f) = open_version(&base, 5).expect("version");
        std::io::Write::write_all(&mut f, b"line\n").expect("write");
        assert_eq!(
            std::fs::read_link(&base).expect("a link").as_os_str(),
            path.file_name().expect("a name")
        );
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
    }
}
