//! Starting workers off the event loop.
//!
//! A start opens a new version of the service's LOGFILE, starts the child ([`super::child`]:
//! `clone(CLONE_VM | CLONE_VFORK)`), and waits until the child has run its steps and
//! `exec`ed the image, which is how it learns whether the exec worked. On a loaded machine
//! that takes 1 to 3 ms, which the event loop would otherwise spend handing nothing off (only
//! the starting thread waits for the child's exec): with `MAX_LIFE_CONNS=100` a busy
//! service starts a worker every hundred connections, and every client arriving meanwhile
//! waited (`make bench`, the hand-off part, measured it). So the loop sends each start to one
//! thread here, goes on, and is woken ([`mio::Waker`]) when the start is done.
//!
//! Nothing is decided here: the loop has already registered the worker's control socket (a
//! worker may say `READY` before the loop hears that its start is done, which is fine); what
//! comes back is the [`Process`] or the error, which the loop gives to the pool as before.

use super::child::Process;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::logfiles::{open_worker_version, LiveVersions, VersionInUse};
use super::policy::WorkerId;
use super::spawn::{spawn_worker, WorkerSpec};

/// One start to make.
pub struct SpawnJob {
    pub id: WorkerId,
    pub spec: WorkerSpec,
    /// The worker's end of its control socket (a copy; the loop keeps its own until the
    /// start is done, so the socket does not look closed meanwhile).
    pub control: OwnedFd,
    /// The service's LOGFILE and its HISTORY_TO_RETAIN, when it has one, and the versions
    /// running workers write (never pruned).
    pub logfile: Option<(PathBuf, u64, LiveVersions)>,
}

/// How a start went.
pub struct Spawned {
    pub id: WorkerId,
    pub result: std::io::Result<Process>,
    /// The LOGFILE version could not be opened (the worker's output is discarded).
    pub logfile_error: Option<(PathBuf, std::io::Error)>,
    /// The LOGFILE version the worker writes, held from pruning while this lives (in the
    /// worker's entry until it is reaped).
    pub log_version: Option<VersionInUse>,
}

/// Makes one start: the LOGFILE version, then the process. Also what the loop does itself
/// when no thread could be started.
pub fn run(job: SpawnJob) -> Spawned {
    let mut logfile_error = None;
    let mut log_version = None;
    let output = match &job.logfile {
        Some((base, keep, live)) => match open_worker_version(base, *keep, live) {
            Ok((version, f)) => {
                log_version = Some(version);
                Some(f)
            }
            Err(e) => {
                logfile_error = Some((base.clone(), e));
                None
            }
        },
        None => None,
    };
    let result = spawn_worker(&job.spec, &job.control, output);
    Spawned {
        id: job.id,
        result,
        logfile_error,
        log_version,
    }
}

/// The starting thread and the starts it has not reported yet.
pub struct Spawner {
    jobs: Option<Sender<Box<SpawnJob>>>,
    /// Set when the dispatcher lets go of the thread: starts still queued are not made (no
    /// one would reap them).
    cancelled: Arc<AtomicBool>,
    done: Receiver<Spawned>,
    thread: Option<JoinHandle<()>>,
    pending: usize,
}

impl Spawner {
    /// Starts the thread; `waker` wakes the event loop after each start.
    pub fn new(waker: Arc<mio::Waker>) -> std::io::Result<Spawner> {
        let (jobs, inbox) = mpsc::channel::<Box<SpawnJob>>();
        let (report, done) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancelled);
        let thread = std::thread::Builder::new()
            .name("spawner".to_string())
            .spawn(move || {
                for job in inbox {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let id = job.id;
                    // A start that panics is reported as failed, not lost: its worker's place
                    // would otherwise be held for good.
                    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(*job)))
                        .unwrap_or_else(|_| Spawned {
                            id,
                            result: Err(std::io::Error::other("the start failed (panic)")),
                            logfile_error: None,
                            log_version: None,
                        });
                    if report.send(done).is_err() {
                        break;
                    }
                    // A loop that cannot be woken still sees the start on its next tick.
                    let _ = waker.wake();
                }
            })?;
        Ok(Spawner {
            jobs: Some(jobs),
            cancelled,
            done,
            thread: Some(thread),
            pending: 0,
        })
    }

    /// Hands a start to the thread; the job back when the thread is gone (the caller then
    /// makes the start itself).
    pub fn submit(&mut self, job: Box<SpawnJob>) -> Result<(), Box<SpawnJob>> {
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        match jobs.send(job) {
            Ok(()) => {
                self.pending += 1;
                Ok(())
            }
            Err(mpsc::SendError(job)) => {
                self.jobs = None;
                Err(job)
            }
        }
    }

    /// The starts done since the last call.
    pub fn take_done(&mut self) -> Vec<Spawned> {
        let done: Vec<Spawned> = self.done.try_iter().collect();
        self.pending -= done.len().min(self.pending);
        done
    }

    /// Waits for every start not yet reported (the dispatcher is about to kill its workers and
    /// exit: none may be left running unseen).
    pub fn wait_all(&mut self) -> Vec<Spawned> {
        let mut done = Vec::new();
        while self.pending > 0 {
            match self.done.recv() {
                Ok(s) => {
                    self.pending -= 1;
                    done.push(s);
                }
                Err(_) => break,
            }
        }
        done
    }

    /// Starts waiting to be reported.
    pub fn pending(&self) -> usize {
        self.pending
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the start in hand, if any; the queued ones
        // are not made. (A start in hand when the dispatcher exits leaves a worker whose
        // control socket ends with the dispatcher: it finds its end of file and exits.)
        self.cancelled.store(true, Ordering::SeqCst);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn job(id: WorkerId, image: &str, control: OwnedFd) -> Box<SpawnJob> {
        Box::new(SpawnJob {
            id,
            spec: WorkerSpec {
                image: image.into(),
                service: "TEST".into(),
                parameter: String::new(),
                stack_size: 65536,
                max_conns: 1,
                debug: 0,
                tailor: "/nonexistent/imta_tailor".into(),
                import_environment: Vec::new(),
                run_as: None,
            },
            control,
            logfile: None,
        })
    }

    /// Two starts, one of an image that is not there: both come back on the waker, the
    /// first as a process that runs and exits, the second as the error; the caller did not
    /// wait for either.
    #[test]
    fn starts_come_back_through_the_waker_with_their_outcome() {
        let mut poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).expect("waker"));
        let mut spawner = Spawner::new(waker).expect("the thread");
        let (_a, b) = crate::handoff::wire::control_pair().expect("a socket pair");
        let (_c, d) = crate::handoff::wire::control_pair().expect("a socket pair");
        assert!(spawner.submit(job(1, "/bin/true", b)).is_ok());
        assert!(spawner.submit(job(2, "/nonexistent/image", d)).is_ok());
        assert_eq!(spawner.pending(), 2);
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = mio::Events::with_capacity(4);
        while done.len() < 2 {
            assert!(Instant::now() < deadline, "the starts were not reported");
            // A signal that has a handler in this test process (another test's) ends the
            // wait early with EINTR (seen once in `make test`): waited again, as the event
            // loop does.
            match poll.poll(&mut events, Some(Duration::from_secs(10))) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                outcome => outcome.expect("poll"),
            }
            assert!(
                events.iter().any(|e| e.token() == mio::Token(7)),
                "woken by something else, or by the timeout"
            );
            done.extend(spawner.take_done());
        }
        assert_eq!(spawner.pending(), 0);
        done.sort_by_key(|s| s.id);
        let mut first = done.remove(0);
        let child = first.result.as_mut().expect("/bin/true started");
        assert!(child.wait().expect("reaped").success());
        let second = done.remove(0);
        assert_eq!(
            second.result.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn wait_all_returns_every_start_still_being_made() {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).expect("waker"));
        let mut spawner = Spawner::new(waker).expect("the thread");
        for id in 0..3 {
            let (_ours, theirs) = crate::handoff::wire::control_pair().expect("a socket pair");
            assert!(spawner.submit(job(id, "/bin/true", theirs)).is_ok());
        }
        let done = spawner.wait_all();
        assert_eq!(done.len(), 3);
        for mut s in done {
            let child = s.result.as_mut().expect("started");
            assert!(child.wait().expect("reaped").success());
        }
        assert_eq!(spawner.pending(), 0);
    }
}
