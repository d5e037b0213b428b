//! The threads a worker serves its connections on; each of them also receives them. Every
//! idle thread waits in the [`Source`] (the runtime's: `recvmsg` on the control socket, where
//! the kernel wakes one waiting thread per message), and the thread that receives a
//! connection serves it itself: a connection costs no hop from a receiving thread to a
//! serving one (a wake-up and a switch each). Before it serves, a thread that was the last
//! idle one starts another, so that one always waits for the next connection (when none can
//! be started, it closes that connection instead and waits on); a thread that has served one
//! goes back to waiting, and one that waited in vain for the source's idle time exits, unless
//! it is the last. So the threads are at most the connections in hand plus one. A thread
//! counts as idle again before the end of its connection is announced (the `after` of a
//! task), so the connection the dispatcher sends on that announcement finds a thread. A panic
//! (in a session, the source or the announcement) does not end its thread. With a thread per
//! connection, [`limit_malloc_arenas`] keeps glibc from giving those threads a heap each.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread waits in the source for a connection before it exits (when it is not
/// the last one waiting): the runtime's receive timeout on the control socket.
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

/// A session to run on the thread that received it.
pub type Job = Box<dyn FnOnce() + Send + 'static>;
/// Runs after its job, told whether the job panicked.
pub type After = Box<dyn FnOnce(bool) + Send + 'static>;

/// What a thread waiting in the source got.
pub enum Next {
    /// A connection: its session, then what announces its end.
    Serve(Job, After),
    /// Nothing within the source's idle time: the thread may exit.
    Idle,
    /// Nothing more will come: the thread exits.
    Stop,
}

/// Where the threads wait for connections. Called on many threads at once.
pub trait Source: Send + Sync + 'static {
    fn next(&self) -> Next;
}

#[derive(Default)]
struct Counts {
    /// Threads waiting in the source, or on their way to it.
    idle: usize,
    /// Threads alive.
    threads: usize,
}

struct Shared {
    source: Arc<dyn Source>,
    stack_size: usize,
    counts: Mutex<Counts>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Nothing runs under the lock but counting: a poisoned lock still holds whole counts.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Counts {
    /// A waiting thread is gone (it exited, or never started).
    fn leave(&mut self) {
        self.idle -= 1;
        self.threads -= 1;
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
        cpus_to_run_on(),
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

/// The CPUs the calling thread may run on (its affinity mask; called from the main thread at
/// start, the process's): how many of its threads can allocate at the same moment. One system
/// call, where `available_parallelism` also reads the cgroup's files (about twenty calls at
/// every worker start); a CPU quota limits time, not how many threads run at once. Where the
/// mask does not fit a `cpu_set_t` (over 1,024 CPUs) or cannot be read, what
/// `available_parallelism` says. At least 1.
fn cpus_to_run_on() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data, zeroed is an empty set; sched_getaffinity writes at
        // most the size it is given into it, and CPU_COUNT only reads it.
        let count = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                usize::try_from(libc::CPU_COUNT(&set)).ok()
            } else {
                None
            }
        };
        match count {
            Some(n) if n > 0 => n,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The arena cap [`limit_malloc_arenas`] sets: one per CPU, none when the administrator chose
/// one.
fn arena_cap(arena_max_in_env: bool, glibc_tunables: &str, cpus: usize) -> Option<usize> {
    (!arena_max_in_env && !glibc_tunables.contains("malloc.arena_max")).then_some(cpus.max(1))
}

/// The threads of one worker, receiving from one source.
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Starts the first thread, with stacks of `stack_size` bytes for it and all that follow.
    pub fn start(source: Arc<dyn Source>, stack_size: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            source,
            stack_size,
            counts: Mutex::new(Counts::default()),
        });
        start_thread(&shared)?;
        Ok(Pool { shared })
    }

    /// Threads waiting for a connection now.
    pub fn idle(&self) -> usize {
        self.shared.lock().idle
    }

    /// Threads alive now.
    pub fn threads(&self) -> usize {
        self.shared.lock().threads
    }
}

/// Starts a thread that waits in the source; counted idle from before it exists, so that two
/// threads taking connections at once do not both start one.
fn start_thread(shared: &Arc<Shared>) -> std::io::Result<()> {
    {
        let mut c = shared.lock();
        c.idle += 1;
        c.threads += 1;
    }
    let s = Arc::clone(shared);
    let started = std::thread::Builder::new()
        .name("conn".into())
        .stack_size(shared.stack_size)
        .spawn(move || serve(&s));
    if started.is_err() {
        shared.lock().leave();
    }
    started.map(|_| ())
}

/// A thread's life: wait in the source, serve what it gives, until it says stop or its idle
/// time passes while another thread waits too.
fn serve(shared: &Arc<Shared>) {
    loop {
        // A panic in the source (it logs and sends) must not lose this thread's count.
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.source.next()));
        let next = next.unwrap_or_else(|_| {
            log::error!("receiving a connection failed (panic, above); waiting for the next");
            Next::Idle
        });
        match next {
            Next::Stop => break,
            Next::Idle => {
                let mut c = shared.lock();
                if c.idle > 1 {
                    c.leave();
                    return;
                }
            }
            Next::Serve(job, after) => {
                let last = {
                    let mut c = shared.lock();
                    c.idle -= 1;
                    c.idle == 0
                };
                let served = if last {
                    start_thread(shared).map_err(|e| {
                        // No thread would wait for the next connection (nor a DRAIN) while
                        // this one is served, and the dispatcher would find the worker
                        // unresponsive: this connection is closed instead, as it was when a
                        // connection could not get a thread, and this thread waits on.
                        log::error!(
                            "cannot start a thread to wait for the next connection ({e}); this connection is closed"
                        );
                    })
                } else {
                    Ok(())
                };
                let panicked = match served {
                    Ok(()) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err(),
                    Err(()) => {
                        drop(job);
                        false
                    }
                };
                shared.lock().idle += 1;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| after(panicked)))
                    .is_err()
                {
                    log::error!("announcing the end of a connection failed (panic, above)");
                }
            }
        }
    }
    shared.lock().leave();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_cpus_to_run_on_are_those_of_the_affinity_mask() {
        assert!(cpus_to_run_on() >= 1);
        // Pinned to the first CPU it may use (on a thread of its own, so that the test's others
        // are not), one is what it says.
        let one = std::thread::spawn(|| {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            // SAFETY: as in cpus_to_run_on; CPU_ISSET reads and CPU_SET writes one bit of a
            // set of this size, at an index below CPU_SETSIZE.
            unsafe {
                let mut mask: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, size, &mut mask), 0);
                let first = (0..libc::CPU_SETSIZE as usize)
                    .find(|&c| libc::CPU_ISSET(c, &mask))
                    .expect("a CPU to run on");
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(first, &mut set);
                assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
            }
            cpus_to_run_on()
        })
        .join()
        .expect("the pinned thread");
        assert_eq!(one, 1);
    }

    #[test]
    fn malloc_arenas_are_one_per_cpu_unless_the_administrator_chose() {
        assert_eq!(arena_cap(false, "", 2), Some(2));
        assert_eq!(arena_cap(false, "glibc.malloc.tcache_count=0", 8), Some(8));
        assert_eq!(arena_cap(true, "", 2), None);
        assert_eq!(arena_cap(false, "glibc.malloc.arena_max=4", 2), None);
    }

    /// A source fed by a channel: `None` says stop; one thread waits in it at a time, as the
    /// kernel wakes one `recvmsg` per message.
    struct Channel {
        rx: Mutex<mpsc::Receiver<Option<(Job, After)>>>,
        idle_time: Duration,
    }

    impl Source for Channel {
        fn next(&self) -> Next {
            let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv_timeout(self.idle_time) {
                Ok(Some((job, after))) => Next::Serve(job, after),
                Err(mpsc::RecvTimeoutError::Timeout) => Next::Idle,
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => Next::Stop,
            }
        }
    }

    type Feed = mpsc::Sender<Option<(Job, After)>>;

    fn pool(idle_time: Duration) -> (Pool, Feed) {
        let (tx, rx) = mpsc::channel();
        let source = Channel {
            rx: Mutex::new(rx),
            idle_time,
        };
        let pool = Pool::start(Arc::new(source), 64 * 1024).expect("first thread");
        (pool, tx)
    }

    fn task(
        job: impl FnOnce() + Send + 'static,
        after: impl FnOnce(bool) + Send + 'static,
    ) -> Option<(Job, After)> {
        Some((Box::new(job), Box::new(after)))
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(std::time::Instant::now() < end, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn one_thread_waits_while_another_serves_and_the_spare_exits_when_idle() {
        let (pool, feed) = pool(Duration::from_millis(300));
        assert_eq!(pool.threads(), 1);
        let (tx, rx) = mpsc::channel();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..50 {
            let tx = tx.clone();
            // The task's `after` says when the thread is free, as ENDED does.
            feed.send(task(
                || {},
                move |_| {
                    let _ = tx.send(std::thread::current().id());
                },
            ))
            .expect("send");
            ids.insert(rx.recv_timeout(Duration::from_secs(5)).expect("task ran"));
        }
        // The first thread, taking the first connection as the last one waiting, started a
        // second; one at a time, no more were needed (which of the two serves is the
        // scheduler's choice).
        assert!(
            ids.len() <= 2,
            "at most two threads served all 50: {}",
            ids.len()
        );
        assert_eq!(pool.threads(), 2);
        wait_for("the spare thread exits", || pool.threads() == 1);
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(pool.threads(), 1, "the last thread stays to wait");
        assert_eq!(pool.idle(), 1);
        feed.send(task(
            || {},
            move |_| {
                let _ = tx.send(std::thread::current().id());
            },
        ))
        .expect("send");
        rx.recv_timeout(Duration::from_secs(5))
            .expect("served after the idle time");
    }

    #[test]
    fn concurrent_connections_get_their_own_threads_and_one_more_waits() {
        let (pool, feed) = pool(Duration::from_secs(60));
        let barrier = Arc::new(std::sync::Barrier::new(9));
        for _ in 0..8 {
            let b = Arc::clone(&barrier);
            feed.send(task(
                move || {
                    b.wait();
                },
                |_| {},
            ))
            .expect("send");
        }
        // All eight sessions block until all have started: they cannot share threads.
        barrier.wait();
        wait_for("all served", || pool.idle() == 9);
        assert_eq!(
            pool.threads(),
            9,
            "eight served, and one waited for the next"
        );
    }

    #[test]
    fn a_panicking_session_is_reported_and_its_thread_serves_on() {
        let (pool, feed) = pool(Duration::from_secs(60));
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        feed.send(task(
            || panic!("a session that fails"),
            move |panicked| {
                let _ = tx2.send((panicked, std::thread::current().id()));
            },
        ))
        .expect("send");
        let (panicked, first) = rx.recv_timeout(Duration::from_secs(5)).expect("after ran");
        assert!(panicked);
        wait_for("both threads wait again", || pool.idle() == 2);
        assert_eq!(pool.threads(), 2, "no thread was lost to the panic");
        // Two sessions at once, each holding its thread until both run: the two threads
        // waiting serve one each, so the one that served the panic serves again.
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let (ids_tx, ids) = mpsc::channel();
        for _ in 0..2 {
            let (b, ids_tx) = (Arc::clone(&barrier), ids_tx.clone());
            feed.send(task(
                move || {
                    let _ = ids_tx.send(std::thread::current().id());
                    b.wait();
                },
                |_| {},
            ))
            .expect("send");
        }
        barrier.wait();
        let later: Vec<_> = ids.try_iter().collect();
        assert_eq!(later.len(), 2);
        assert!(
            later.contains(&first),
            "the thread survived the panic and served again"
        );
    }

    #[test]
    fn the_last_waiting_thread_that_cannot_start_another_closes_the_connection_and_waits_on() {
        let (tx, rx) = mpsc::channel();
        // Stacks no system gives: every start fails. The one thread runs on the test's own.
        let shared = Arc::new(Shared {
            source: Arc::new(Channel {
                rx: Mutex::new(rx),
                idle_time: Duration::from_secs(60),
            }),
            stack_size: usize::MAX / 4,
            counts: Mutex::new(Counts {
                idle: 1,
                threads: 1,
            }),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::spawn(move || serve(&s));
        let (done_tx, done) = mpsc::channel();
        for _ in 0..2 {
            let done_tx = done_tx.clone();
            tx.send(task(
                || panic!("served without a thread waiting for the next connection"),
                move |panicked| {
                    let _ = done_tx.send(panicked);
                },
            ))
            .expect("send");
            // Its end is announced (ENDED), not as a failure, and the thread takes the next.
            assert_eq!(done.recv_timeout(Duration::from_secs(5)), Ok(false));
        }
        tx.send(None).expect("stop");
        thread.join().expect("the thread ends at the stop");
        assert_eq!(shared.lock().threads, 0);
    }

    #[test]
    fn stop_ends_every_thread_once_its_session_is_done() {
        let (pool, feed) = pool(Duration::from_secs(60));
        let (release, held) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        feed.send(task(
            move || {
                let _ = held.recv();
            },
            move |_| {
                let _ = tx.send(());
            },
        ))
        .expect("send");
        wait_for("a second thread waits", || {
            pool.threads() == 2 && pool.idle() == 1
        });
        feed.send(None).expect("stop");
        wait_for("the waiting thread stops", || pool.threads() == 1);
        release.send(()).expect("release the session");
        rx.recv_timeout(Duration::from_secs(5))
            .expect("its end announced");
        // The channel's sender lives: the serving thread stops because the source says so
        // (a disconnected channel would say it too).
        feed.send(None).expect("stop");
        wait_for("the last thread stops", || pool.threads() == 0);
        drop(feed);
    }
}
