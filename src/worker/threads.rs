//! The threads a worker serves its connections on. A thread that has served a connection
//! waits for the next one (up to [`IDLE_EXIT`]) instead of exiting, so a busy worker does not
//! create and destroy a thread, with its stack mapping, for every connection. A thread
//! counts as idle before the end of its connection is reported (the `after` of a job), so
//! the connection the dispatcher sends on that report finds it: the threads are at most the
//! dispatcher's `MAX_CONNS`. A panicking job does not end its thread. With a thread per
//! connection, [`limit_malloc_arenas`] keeps glibc from giving those threads a heap each.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread with nothing to do waits for a connection before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send + 'static>;
/// Runs after its job, told whether the job panicked.
type After = Box<dyn FnOnce(bool) + Send + 'static>;

#[derive(Default)]
struct State {
    queue: VecDeque<(Job, After)>,
    idle: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock: a panic in one cannot leave the state half changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Caps glibc malloc at one arena per CPU; called once at the start of an image, before its
/// threads exist. By default glibc gives threads that allocate at the same time arenas of
/// their own, up to 8 per CPU; with a thread per connection that is many heaps, none reusing
/// the space freed in another, so the memory each message needed stays resident in whichever
/// arena served it. Measured with `benches/idle_memory.rs` (1,000 connections idle after one
/// 64 KiB message each, 2 CPUs): 43 KiB per connection with glibc's 16 arenas, 28 KiB with 2.
/// More arenas than CPUs gain little, since no more threads than CPUs allocate at once. An
/// administrator's `MALLOC_ARENA_MAX` (or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`), passed
/// with the service's IMPORT_ENVIRONMENT, is left to rule.
pub fn limit_malloc_arenas() {
    let Some(cap) = arena_cap(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        &std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ) else {
        return;
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; called before any thread of
    // this process but the main one exists. A refusal (0) leaves glibc's default, which is
    // only more memory.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, i32::try_from(cap).unwrap_or(i32::MAX));
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = cap;
}

/// The arena cap [`limit_malloc_arenas`] sets: one per CPU, none when the administrator chose
/// one.
fn arena_cap(arena_max_in_env: bool, glibc_tunables: &str, cpus: usize) -> Option<usize> {
    (!arena_max_in_env && !glibc_tunables.contains("malloc.arena_max")).then_some(cpus.max(1))
}

/// Runs jobs on reused threads of a fixed stack size.
pub struct Threads {
    shared: Arc<Shared>,
    stack_size: usize,
    idle_exit: Duration,
}

impl Threads {
    pub fn new(stack_size: usize) -> Threads {
        Threads::with_idle_exit(stack_size, IDLE_EXIT)
    }

    pub fn with_idle_exit(stack_size: usize, idle_exit: Duration) -> Threads {
        Threads {
            shared: Arc::new(Shared::default()),
            stack_size,
            idle_exit,
        }
    }

    /// Runs `job` on an idle thread, or on a new one when none is idle; then `after`, told
    /// whether the job panicked (the thread survives a panic). The thread counts as idle
    /// again before `after` runs, so whatever `after` announces (a free connection slot)
    /// finds a thread ready. An error means no thread could be created; `job` and `after`
    /// (and what they own) have been dropped without running.
    pub fn run(
        &self,
        job: impl FnOnce() + Send + 'static,
        after: impl FnOnce(bool) + Send + 'static,
    ) -> std::io::Result<()> {
        let task: (Job, After) = (Box::new(job), Box::new(after));
        {
            let mut state = self.shared.lock();
            if state.idle > state.queue.len() {
                state.queue.push_back(task);
                self.shared.work.notify_one();
                return Ok(());
            }
        }
        let shared = Arc::clone(&self.shared);
        let idle_exit = self.idle_exit;
        std::thread::Builder::new()
            .name("conn".into())
            .stack_size(self.stack_size)
            .spawn(move || serve(&shared, task, idle_exit))
            .map(|_| ())
    }

    /// Threads waiting for a job now.
    pub fn idle(&self) -> usize {
        self.shared.lock().idle
    }
}

/// A thread's life: its first task, then queued ones until none comes for `idle_exit`.
fn serve(shared: &Shared, first: (Job, After), idle_exit: Duration) {
    let mut task = first;
    loop {
        let (job, after) = task;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err();
        shared.lock().idle += 1;
        after(panicked);
        let mut state = shared.lock();
        task = loop {
            if let Some(next) = state.queue.pop_front() {
                state.idle -= 1;
                break next;
            }
            let (next, timeout) = shared
                .work
                .wait_timeout(state, idle_exit)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if timeout.timed_out() && state.queue.is_empty() {
                state.idle -= 1;
                return;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn malloc_arenas_are_one_per_cpu_unless_the_administrator_chose() {
        assert_eq!(arena_cap(false, "", 2), Some(2));
        assert_eq!(arena_cap(false, "glibc.malloc.tcache_count=0", 8), Some(8));
        assert_eq!(arena_cap(true, "", 2), None);
        assert_eq!(arena_cap(false, "glibc.malloc.arena_max=4", 2), None);
    }

    #[test]
    fn threads_are_reused_and_exit_when_idle() {
        let t = Threads::with_idle_exit(64 * 1024, Duration::from_millis(300));
        let (tx, rx) = mpsc::channel();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..50 {
            let tx = tx.clone();
            // The job's `after` says when the thread is free, as ENDED does.
            t.run(
                || {},
                move |_| {
                    let _ = tx.send(std::thread::current().id());
                },
            )
            .expect("run");
            // One at a time: each job, sent as soon as `after` ran, finds the previous
            // thread idle already.
            ids.insert(rx.recv().expect("job ran"));
        }
        assert_eq!(ids.len(), 1, "one thread served all 50 jobs");
        assert_eq!(t.idle(), 1);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(t.idle(), 0, "the idle thread exited");
        t.run(
            move || {
                let _ = tx.send(std::thread::current().id());
            },
            |_| {},
        )
        .expect("a new thread after the idle one left");
        rx.recv().expect("job ran");
    }

    #[test]
    fn concurrent_jobs_get_their_own_threads() {
        let t = Threads::new(64 * 1024);
        let barrier = Arc::new(std::sync::Barrier::new(9));
        for _ in 0..8 {
            let b = Arc::clone(&barrier);
            t.run(
                move || {
                    b.wait();
                },
                |_| {},
            )
            .expect("run");
        }
        // All eight jobs block until all have started: they cannot share threads.
        barrier.wait();
    }

    #[test]
    fn a_panicking_job_is_reported_and_its_thread_serves_on() {
        let t = Threads::new(64 * 1024);
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        t.run(
            || panic!("a job that fails"),
            move |panicked| {
                let _ = tx2.send((panicked, std::thread::current().id()));
            },
        )
        .expect("run");
        let (panicked, first) = rx.recv_timeout(Duration::from_secs(5)).expect("after ran");
        assert!(panicked);
        t.run(
            || {},
            move |panicked| {
                let _ = tx.send((panicked, std::thread::current().id()));
            },
        )
        .expect("run");
        let (panicked, second) = rx.recv_timeout(Duration::from_secs(5)).expect("after ran");
        assert!(!panicked);
        assert_eq!(
            first, second,
            "the thread survived the panic and was reused"
        );
    }
}
