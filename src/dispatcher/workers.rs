//! The worker processes and their control channels: starting one, sending it `HANDOFF` and
//! `DRAIN`, reading what it says, killing and reaping it.
//!
//! What a worker says is turned into the policy's [`Event`]s and nothing else: whether a
//! message adds up (an `ENDED` for a connection it holds) is the policy's to judge; what
//! cannot even be read (an unknown message, an empty packet, descriptors sent to the
//! dispatcher, truncated data) is reported here as a [`Event::Violation`], with its text as
//! the worker wrote it (whoever logs it escapes it, `crate::log_text::untrusted`). Sends never block: a full socket is reported
//! (`SendFailed { blocked: true }`) and watched for room; a `DRAIN` that does not fit waits
//! for room here, the only message this module holds back. This module decides nothing and
//! keeps no connection: the caller owns the accepted sockets and lends them for a send.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitStatus;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::child::Process;
use super::logfiles::VersionInUse;
use super::policy::{ConnId, Event, WorkerId};
use crate::handoff::stats::WorkerStats;
use crate::handoff::wire::{self, ToDispatcher, ToWorker, WireError};

/// The service and configuration generation a worker belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub service: u64,
    pub generation: u64,
}

struct WorkerProc {
    owner: Owner,
    /// `None` while its start is being made ([`super::spawner`]).
    child: Option<Process>,
    /// The worker's end of the control socket, kept until the start is done, so that the
    /// socket does not look closed meanwhile.
    their_end: Option<OwnedFd>,
    /// Asked to be killed before its start was done: killed as soon as it is.
    kill_when_started: bool,
    ctrl: OwnedFd,
    token: Token,
    /// Watched for room: a hand-off or a `DRAIN` did not fit.
    want_write: bool,
    /// A `DRAIN` that did not fit yet.
    drain_pending: bool,
    /// End of file or a broken socket: nothing more is read from it.
    closed: bool,
    /// The LOGFILE version it writes, kept from pruning until the worker is forgotten.
    _log_version: Option<VersionInUse>,
}

/// Why a worker could not be started.
#[derive(Debug)]
pub struct StartError {
    pub error: std::io::Error,
    /// Out of descriptors: the host's fault, not the image's.
    pub lack_of_descriptors: bool,
}

impl From<std::io::Error> for StartError {
    fn from(error: std::io::Error) -> StartError {
        StartError {
            lack_of_descriptors: super::descriptors::is_exhaustion(&error),
            error,
        }
    }
}

/// Every running worker, of every service and generation, by its id.
#[derive(Default)]
pub struct Workers {
    procs: HashMap<WorkerId, WorkerProc>,
}

impl Workers {
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn owner(&self, id: WorkerId) -> Option<Owner> {
        self.procs.get(&id).map(|w| w.owner)
    }

    pub fn pid(&self, id: WorkerId) -> Option<u32> {
        self.procs.get(&id)?.child.as_ref().map(Process::id)
    }

    /// Makes the control socket of a worker about to be started and watches it with
    /// `token`; a copy of the worker's end, for the start ([`super::spawner::SpawnJob`]),
    /// which [`Workers::started`] or [`Workers::not_started`] then reports.
    pub fn prepare(
        &mut self,
        registry: &Registry,
        id: WorkerId,
        token: Token,
        owner: Owner,
    ) -> Result<OwnedFd, StartError> {
        let (ctrl, theirs) = wire::control_pair().map_err(StartError::from)?;
        let copy = theirs.try_clone().map_err(StartError::from)?;
        registry
            .register(&mut SourceFd(&ctrl.as_raw_fd()), token, Interest::READABLE)
            .map_err(StartError::from)?;
        self.procs.insert(
            id,
            WorkerProc {
                owner,
                child: None,
                their_end: Some(theirs),
                kill_when_started: false,
                ctrl,
                token,
                want_write: false,
                drain_pending: false,
                closed: false,
                _log_version: None,
            },
        );
        Ok(copy)
    }

    /// The start of a prepared worker is done: its pid. The child back when the worker is no
    /// longer known (the caller kills and reaps it).
    pub fn started(
        &mut self,
        id: WorkerId,
        child: Process,
        log_version: Option<VersionInUse>,
    ) -> Result<u32, Process> {
        let Some(w) = self.procs.get_mut(&id) else {
            return Err(child);
        };
        let pid = child.id();
        w.their_end = None;
        w._log_version = log_version;
        let child = w.child.insert(child);
        if w.kill_when_started {
            let _ = child.kill();
        }
        Ok(pid)
    }

    /// The start of a prepared worker failed: it is forgotten.
    pub fn not_started(&mut self, registry: &Registry, id: WorkerId) {
        if let Some(w) = self.procs.remove(&id) {
            let _ = registry.deregister(&mut SourceFd(&w.ctrl.as_raw_fd()));
        }
    }

    /// Sends `conn` to the worker, lending it the socket; says how it went.
    pub fn hand_off(
        &mut self,
        registry: &Registry,
        id: WorkerId,
        conn: ConnId,
        stream: &TcpStream,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Event {
        let failed = |blocked| Event::SendFailed {
            worker: id,
            conn,
            blocked,
        };
        let Some(w) = self.procs.get_mut(&id) else {
            return failed(false);
        };
        if w.closed {
            return failed(false);
        }
        let msg = ToWorker::HandOff {
            conn,
            client,
            server,
        };
        match wire::send_to_worker(w.ctrl.as_fd(), &msg, Some(stream.as_fd())) {
            Ok(()) => Event::Sent { worker: id, conn },
            Err(e) if e.is_would_block() => {
                watch_for_room(registry, w);
                failed(true)
            }
            Err(e) => {
                let pid = w.child.as_ref().map_or(0, Process::id);
                log::warn!("worker {id} (pid {pid}): {e}");
                failed(false)
            }
        }
    }

    /// Tells the worker to drain, now or as soon as its socket has room.
    pub fn drain(&mut self, registry: &Registry, id: WorkerId) {
        let Some(w) = self.procs.get_mut(&id) else {
            return;
        };
        w.drain_pending = true;
        send_drain(registry, w);
    }

    /// The worker's socket has room: sends a pending `DRAIN`; returns whether the worker
    /// should now be told it is writable (nothing of ours is waiting any more).
    pub fn on_writable(&mut self, registry: &Registry, id: WorkerId) -> bool {
        let Some(w) = self.procs.get_mut(&id) else {
            return false;
        };
        send_drain(registry, w);
        if w.drain_pending || w.closed {
            return false;
        }
        if w.want_write {
            w.want_write = false;
            let _ = registry.reregister(
                &mut SourceFd(&w.ctrl.as_raw_fd()),
                w.token,
                Interest::READABLE,
            );
        }
        true
    }

    /// Reads everything the worker has sent, as events.
    /// The delivery counters a worker reports (`STATS`) are added to `stats`: they are not
    /// the policy's business.
    pub fn read(
        &mut self,
        registry: &Registry,
        id: WorkerId,
        stats: &mut WorkerStats,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(w) = self.procs.get_mut(&id) else {
            return events;
        };
        while !w.closed {
            match wire::recv_from_worker(w.ctrl.as_fd()) {
                Ok(Some(message)) => events.push(match message {
                    ToDispatcher::Ready { ack } => Event::WorkerReady {
                        worker: id,
                        acks: ack,
                    },
                    ToDispatcher::Taken { conn } => Event::Taken { worker: id, conn },
                    ToDispatcher::Ended { conn } => Event::Ended { worker: id, conn },
                    ToDispatcher::Draining => Event::Draining(id),
                    ToDispatcher::Stats(s) => {
                        stats.add(&s);
                        continue;
                    }
                }),
                Ok(None) => {
                    stop_reading(registry, w);
                    events.push(Event::ControlClosed(id));
                }
                Err(e) if e.is_would_block() => break,
                Err(e) => {
                    // Nothing more it sends is believed; the policy has it killed.
                    stop_reading(registry, w);
                    events.push(Event::Violation {
                        worker: id,
                        // Raw: escaped where it is logged.
                        what: violation_text(&e),
                    });
                }
            }
        }
        events
    }

    /// Sends SIGKILL (the exit is reaped as usual); one whose start is not done yet is
    /// killed once it is.
    pub fn kill(&mut self, id: WorkerId) {
        if let Some(w) = self.procs.get_mut(&id) {
            match &mut w.child {
                Some(child) => {
                    let _ = child.kill();
                }
                None => w.kill_when_started = true,
            }
        }
    }

    /// The workers that have exited (not forgotten yet: what they sent before exiting may
    /// still be unread, see [`Workers::forget`]).
    pub fn exited(&mut self) -> Vec<(WorkerId, ExitStatus)> {
        self.procs
            .iter_mut()
            .filter_map(|(&id, w)| {
                let child = w.child.as_mut()?;
                child.try_wait().ok().flatten().map(|st| (id, st))
            })
            .collect()
    }

    /// Forgets an exited worker; its owner and pid.
    pub fn forget(&mut self, registry: &Registry, id: WorkerId) -> Option<(Owner, u32)> {
        let w = self.procs.remove(&id)?;
        let _ = registry.deregister(&mut SourceFd(&w.ctrl.as_raw_fd()));
        Some((w.owner, w.child.as_ref().map_or(0, Process::id)))
    }

    /// Kills and reaps every worker (the shutdown bound has passed); returns their ids and
    /// pids. Starts still being made must have been reported first
    /// ([`super::spawner::Spawner::wait_all`]): a worker without its process is only forgotten.
    pub fn kill_all(&mut self) -> Vec<(WorkerId, Owner, u32)> {
        self.procs
            .drain()
            .filter_map(|(id, w)| {
                let mut child = w.child?;
                let _ = child.kill();
                let _ = child.wait();
                Some((id, w.owner, child.id()))
            })
            .collect()
    }
}

/// What a worker sent that cannot be read, for the log: the protocol error, named as one.
fn violation_text(e: &WireError) -> String {
    match e {
        WireError::Io(io) => format!("its control socket failed: {io}"),
        other => other.to_string(),
    }
}

fn watch_for_room(registry: &Registry, w: &mut WorkerProc) {
    if !w.want_write {
        w.want_write = true;
        let _ = registry.reregister(
            &mut SourceFd(&w.ctrl.as_raw_fd()),
            w.token,
            Interest::READABLE | Interest::WRITABLE,
        );
    }
}

fn send_drain(registry: &Registry, w: &mut WorkerProc) {
    if !w.drain_pending || w.closed {
        return;
    }
    match wire::send_to_worker(w.ctrl.as_fd(), &ToWorker::Drain, None) {
        Ok(()) => w.drain_pending = false,
        Err(e) if e.is_would_block() => watch_for_room(registry, w),
        // Gone or going: its exit is reaped as usual.
        Err(_) => w.drain_pending = false,
    }
}

fn stop_reading(registry: &Registry, w: &mut WorkerProc) {
    w.closed = true;
    let _ = registry.deregister(&mut SourceFd(&w.ctrl.as_raw_fd()));
}
