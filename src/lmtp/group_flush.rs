//! Directory flushes shared by concurrent deliveries (group commit).
//!
//! A delivery is durable once the directory entry that names it is: after the `link()` into
//! `new/`, that directory must be flushed (`fsync`) before the `250` goes out. Sixteen sessions
//! delivering into one Maildir would each flush it, one after the other, although one flush
//! that starts after all sixteen links covers them all. [`DirFlushes::sync`] does that: the
//! callers wanting a directory flushed form a batch; one of them (the leader) flushes, the
//! others wait for that flush and share its result. A caller whose change was made while a
//! flush was already running joins the next batch, whose leader starts only after the running
//! flush ends, so every caller returns only after a flush that *started after its change*: the
//! guarantee a `fsync` of its own would give. A failed flush fails every caller of its batch
//! (each withdraws its own delivery), never a caller of another batch.
//!
//! Directories are told apart by device and inode, not by path, so two paths to one directory
//! share, and a directory replaced under the same name does not. An entry lives only while a
//! caller uses it: a store that sees a new mailbox for every message does not grow a table.
//!
//! The flush itself is a parameter of [`Group`] so the batching is tested with a recording
//! flush and many threads, without a disk.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;

/// At most this many directories of one message are flushed at the same time.
pub const PARALLEL_FLUSHES: usize = 8;
/// A flushing thread only waits in `fsync`.
const FLUSH_STACK: usize = 64 * 1024;

/// The outcome of one flush, shared by its batch.
type Outcome = Result<(), Errno>;

/// The flushes of one directory: at most one running, at most one batch gathering.
#[derive(Default)]
pub struct Group {
    state: Mutex<GroupState>,
    changed: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// A flush is running (its batch has left `gathering`).
    running: bool,
    /// The batch new callers join; it starts when no flush is running.
    gathering: Option<Arc<OnceLock<Outcome>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is consistent at every unlock (a flush runs outside the lock, and
    // [`Running`] clears its mark even if it panics).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running mark of a flush: cleared, and the waiters woken, when the leader is done, also
/// if its flush panicked (the waiters then lead the next one).
struct Running<'a>(&'a Group);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).running = false;
        self.0.changed.notify_all();
    }
}

impl Group {
    /// Returns once a call of `flush` that began after this call began has ended, with that
    /// call's result; `flush` runs on one of the waiting threads (this one, or another caller's).
    pub fn sync(&self, flush: impl FnOnce() -> Outcome) -> Outcome {
        let mut state = lock(&self.state);
        let mut batch = Arc::clone(
            state
                .gathering
                .get_or_insert_with(|| Arc::new(OnceLock::new())),
        );
        loop {
            if let Some(outcome) = batch.get() {
                return *outcome;
            }
            if !state.running {
                // Not done and nothing running: this caller leads the gathering batch, which
                // is its own, or, should its own leader have given up without an outcome (a
                // panic), the one gathering now, which begins after this caller's change too.
                let gathering = state
                    .gathering
                    .take()
                    .unwrap_or_else(|| Arc::new(OnceLock::new()));
                if !Arc::ptr_eq(&gathering, &batch) {
                    batch = gathering;
                }
                state.running = true;
                drop(state);
                let running = Running(self);
                let outcome = flush();
                let _ = batch.set(outcome);
                drop(running);
                return outcome;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Every directory some delivery of this process is flushing, by device and inode.
#[derive(Default)]
pub struct DirFlushes {
    dirs: Mutex<HashMap<(u64, u64), Arc<Group>>>,
}

impl DirFlushes {
    pub fn new() -> DirFlushes {
        DirFlushes::default()
    }

    /// Makes durable every change made in `dir` before this call (`fsync` of the directory),
    /// sharing the flush with concurrent callers for the same directory.
    pub fn sync(&self, dir: BorrowedFd<'_>) -> Outcome {
        let st = nix::sys::stat::fstat(dir)?;
        let key = (st.st_dev, st.st_ino);
        let group = Arc::clone(lock(&self.dirs).entry(key).or_default());
        let outcome = group.sync(|| nix::unistd::fsync(dir));
        let mut dirs = lock(&self.dirs);
        // Clones are made and dropped under this lock: once this one is dropped, the table's
        // being the only one left means nobody else is using the entry.
        drop(group);
        if dirs.get(&key).is_some_and(|g| Arc::strong_count(g) == 1) {
            dirs.remove(&key);
        }
        outcome
    }

    /// [`DirFlushes::sync`] for every directory of `dirs`, the flushes running side by side
    /// (on up to [`PARALLEL_FLUSHES`] threads): a message for several mailboxes waits for
    /// about one flush, not one per mailbox. The outcomes are in the order of `dirs`.
    pub fn sync_all(&self, dirs: &[BorrowedFd<'_>]) -> Vec<Outcome> {
        if dirs.len() < 2 {
            return dirs.iter().map(|d| self.sync(*d)).collect();
        }
        let next = AtomicUsize::new(0);
        let outcomes: Vec<OnceLock<Outcome>> = dirs.iter().map(|_| OnceLock::new()).collect();
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(dir) = dirs.get(i) else { break };
            let _ = outcomes[i].set(self.sync(*dir));
        };
        std::thread::scope(|scope| {
            for _ in 1..dirs.len().min(PARALLEL_FLUSHES) {
                let spawned = std::thread::Builder::new()
                    .stack_size(FLUSH_STACK)
                    .spawn_scoped(scope, work);
                if spawned.is_err() {
                    // No thread to spare: this one flushes the rest by itself.
                    break;
                }
            }
            work();
        });
        outcomes
            .into_iter()
            .map(|o| o.into_inner().unwrap_or(Err(Errno::EIO)))
            .collect()
    }

    /// Directories currently being flushed or waited for (for tests).
    pub fn in_use(&self) -> usize {
        lock(&self.dirs).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// A logical clock: every event takes the next tick.
    struct Clock(AtomicU64);
    impl Clock {
        fn tick(&self) -> u64 {
            self.0.fetch_add(1, Ordering::SeqCst)
        }
    }

    /// Many threads each "change" then sync; every caller must return after a flush that
    /// began after its change, with that flush's result; and flushes must be fewer than callers.
    #[test]
    fn every_caller_is_covered_by_a_flush_that_began_after_its_change() {
        let group = Arc::new(Group::default());
        let clock = Arc::new(Clock(AtomicU64::new(0)));
        let flushes = Arc::new(Mutex::new(Vec::<(u64, u64, Outcome)>::new()));
        let serial = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (group, clock, flushes, serial) = (
                    Arc::clone(&group),
                    Arc::clone(&clock),
                    Arc::clone(&flushes),
                    Arc::clone(&serial),
                );
                std::thread::spawn(move || {
                    let mut calls = Vec::new();
                    for i in 0..200u64 {
                        let changed = clock.tick();
                        let outcome = group.sync(|| {
                            let begun = clock.tick();
                            let n = serial.fetch_add(1, Ordering::SeqCst);
                            // Two flushes of one directory never overlap.
                            assert_eq!(n % 2, 0, "flushes overlapped");
                            std::thread::sleep(Duration::from_micros(50 + (i * 7 + t) % 100));
                            // Every seventh flush fails.
                            let outcome = if begun % 7 == 0 {
                                Err(Errno::EIO)
                            } else {
                                Ok(())
                            };
                            serial.fetch_add(1, Ordering::SeqCst);
                            let ended = clock.tick();
                            lock(&flushes).push((begun, ended, outcome));
                            outcome
                        });
                        let returned = clock.tick();
                        calls.push((changed, returned, outcome));
                    }
                    calls
                })
            })
            .collect();
        let calls: Vec<_> = threads
            .into_iter()
            .flat_map(|h| h.join().expect("a caller"))
            .collect();
        let flushes = lock(&flushes).clone();
        for (changed, returned, outcome) in &calls {
            // The latest flush that ended before this caller returned and began after its
            // change: its outcome is what the caller got.
            let covering: Vec<_> = flushes
                .iter()
                .filter(|(b, e, _)| b > changed && e < returned)
                .collect();
            assert!(
                !covering.is_empty(),
                "a caller changed at {changed} returned at {returned} with no flush begun after its change"
            );
            assert!(
                covering.iter().any(|(_, _, o)| o == outcome),
                "a caller got {outcome:?}, no covering flush had that outcome"
            );
        }
        assert!(calls.iter().any(|c| c.2.is_err()), "no failure was shared");
        assert!(
            flushes.len() < calls.len() / 2,
            "{} flushes for {} callers: nothing was shared",
            flushes.len(),
            calls.len()
        );
    }

    #[test]
    fn a_directory_is_flushed_and_forgotten_after_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = std::fs::File::open(dir.path()).expect("open the directory");
        let flushes = DirFlushes::new();
        use std::os::fd::AsFd;
        assert_eq!(flushes.sync(fd.as_fd()), Ok(()));
        assert_eq!(flushes.in_use(), 0);
    }

    #[test]
    fn concurrent_callers_leave_no_entry_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flushes = Arc::new(DirFlushes::new());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (flushes, path) = (Arc::clone(&flushes), dir.path().to_path_buf());
                std::thread::spawn(move || {
                    let fd = std::fs::File::open(path).expect("open the directory");
                    use std::os::fd::AsFd;
                    for _ in 0..50 {
                        assert_eq!(flushes.sync(fd.as_fd()), Ok(()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a caller");
        }
        assert_eq!(flushes.in_use(), 0, "an entry was left in the table");
    }

    #[test]
    fn a_flush_that_panics_does_not_stop_the_others() {
        let group = Arc::new(Group::default());
        let started = Arc::new(std::sync::Barrier::new(2));
        let (g, b) = (Arc::clone(&group), Arc::clone(&started));
        let leader = std::thread::spawn(move || {
            g.sync(|| {
                b.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("a flush that panics");
            })
        });
        started.wait();
        // Joins the batch after the running one, whose leader then panics.
        let follower = {
            let g = Arc::clone(&group);
            std::thread::spawn(move || g.sync(|| Ok(())))
        };
        assert!(leader.join().is_err(), "the leader's flush panicked");
        assert_eq!(follower.join().expect("the follower"), Ok(()));
        assert_eq!(
            group.sync(|| Err(Errno::EIO)),
            Err(Errno::EIO),
            "later callers still flush"
        );
    }

    #[test]
    fn several_directories_are_flushed_with_an_outcome_each_in_order() {
        let dirs: Vec<_> = (0..11)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let fds: Vec<_> = dirs
            .iter()
            .map(|d| std::fs::File::open(d.path()).expect("open the directory"))
            .collect();
        // A descriptor that is not a directory of ours but a pipe: fsync fails with EINVAL.
        let (pipe, _w) = nix::unistd::pipe().expect("pipe");
        use std::os::fd::AsFd;
        let mut borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        borrowed.insert(5, pipe.as_fd());
        let flushes = DirFlushes::new();
        let outcomes = flushes.sync_all(&borrowed);
        assert_eq!(outcomes.len(), 12);
        for (i, o) in outcomes.iter().enumerate() {
            if i == 5 {
                assert_eq!(*o, Err(Errno::EINVAL), "the pipe");
            } else {
                assert_eq!(*o, Ok(()), "directory {i}");
            }
        }
        assert_eq!(flushes.in_use(), 0);
    }
}
