//! The threads a worker serves its connections on. A thread that has served a connection
//! waits for the next one (up to [`IDLE_EXIT`]) instead of exiting, so a busy worker does not
//! create and destroy a thread, with its stack mapping, for every connection. There are never
//! more threads than connections in hand plus the idle ones, so the dispatcher's `MAX_CONNS`
//! also bounds them; idle ones exit after [`IDLE_EXIT`].

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread with nothing to do waits for a connection before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    idle: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job runs outside the lock: a panic in one cannot leave the state half changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
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

    /// Runs `job` on an idle thread, or on a new one when none is idle. An error means no
    /// thread could be created; the job (and what it owns) has been dropped.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let job: Job = Box::new(job);
        {
            let mut state = self.shared.lock();
            if state.idle > state.queue.len() {
                state.queue.push_back(job);
                self.shared.work.notify_one();
                return Ok(());
            }
        }
        let shared = Arc::clone(&self.shared);
        let idle_exit = self.idle_exit;
        std::thread::Builder::new()
            .name("conn".into())
            .stack_size(self.stack_size)
            .spawn(move || {
                job();
                serve_queue(&shared, idle_exit);
            })
            .map(|_| ())
    }

    /// Threads waiting for a job now.
    pub fn idle(&self) -> usize {
        self.shared.lock().idle
    }
}

/// After its first job: takes queued jobs until none comes for `idle_exit`.
fn serve_queue(shared: &Shared, idle_exit: Duration) {
    let mut state = shared.lock();
    state.idle += 1;
    loop {
        if let Some(job) = state.queue.pop_front() {
            state.idle -= 1;
            drop(state);
            job();
            state = shared.lock();
            state.idle += 1;
            continue;
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn threads_are_reused_and_exit_when_idle() {
        let t = Threads::with_idle_exit(64 * 1024, Duration::from_millis(300));
        let (tx, rx) = mpsc::channel();
        for _ in 0..50 {
            let tx = tx.clone();
            t.run(move || {
                let _ = tx.send(std::thread::current().id());
            })
            .expect("run");
            // One at a time: each job finds the previous thread idle.
            rx.recv().expect("job ran");
            while t.idle() == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(t.idle(), 1, "one thread served all 50 jobs");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(t.idle(), 0, "the idle thread exited");
        t.run(move || {
            let _ = tx.send(std::thread::current().id());
        })
        .expect("a new thread after the idle one left");
        rx.recv().expect("job ran");
    }

    #[test]
    fn concurrent_jobs_get_their_own_threads() {
        let t = Threads::new(64 * 1024);
        let barrier = Arc::new(std::sync::Barrier::new(9));
        for _ in 0..8 {
            let b = Arc::clone(&barrier);
            t.run(move || {
                b.wait();
            })
            .expect("run");
        }
        // All eight jobs block until all have started: they cannot share threads.
        barrier.wait();
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_others() {
        let t = Threads::new(64 * 1024);
        t.run(|| panic!("a job that fails")).expect("run");
        let (tx, rx) = mpsc::channel();
        t.run(move || {
            let _ = tx.send(1);
        })
        .expect("run");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
    }
}
