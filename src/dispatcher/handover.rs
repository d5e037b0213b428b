//! The running dispatcher's side of a takeover (`dispatcher --takeover`, see `docs/control.md`):
//! offering copies of its listening sockets to the new dispatcher; when that one says `COMMIT`
//! (its workers are ready), no longer accepting and letting go of the pid file and the control
//! socket's name; when it says `DONE` (it holds both and accepts), closing its listeners,
//! handing the connections still waiting to its workers, and draining them before it exits.
//! Until `DONE` nothing is lost: if the new dispatcher fails or gives up (closes the
//! connection, or is silent for [`DONE_WAIT`] after `COMMIT`), this one takes back what it let
//! go of and serves on. One takeover at a time.

use std::net::TcpListener;
use std::os::fd::OwnedFd;

use std::time::Instant;

use mio::unix::SourceFd;

use super::control::ConvId;
use super::event_loop::Loop;
use super::runtime::Runtime;
use crate::control::protocol::Reply;
use crate::control::takeover::{encode_offer, ListenerKind, MAX_LISTENERS};

/// How long, after `COMMIT`, the new dispatcher has to say `DONE` (it has taken the pid file
/// and the control socket) before this one takes them back and serves on.
pub const DONE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A takeover under way: the new dispatcher's conversation and pid, and since when it has
/// committed (this dispatcher no longer accepts and waits for `DONE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Giving {
    pub conv: ConvId,
    pub pid: i32,
    pub committed: Option<std::time::Instant>,
}

/// Why a takeover request is refused, if it is.
pub fn refusal(rt: &Runtime, giving: Option<Giving>) -> Option<String> {
    if rt.stopping.is_some() {
        return Some("the dispatcher is stopping".into());
    }
    giving.map(|g| format!("a takeover is already under way (by pid {})", g.pid))
}

/// The offer (text and descriptors, in the same order) of every listener.
pub fn offer(
    rt: &Runtime,
    metrics: Option<&TcpListener>,
) -> Result<(String, Vec<OwnedFd>), String> {
    let mut described = Vec::new();
    let mut fds = Vec::new();
    for (id, service, address) in rt.acceptor.list() {
        let fd = rt
            .acceptor
            .duplicate(id)
            .map_err(|e| format!("cannot copy the listener on {address}: {e}"))?;
        described.push((
            ListenerKind::Port {
                service: rt.services.name(service),
            },
            address,
        ));
        fds.push(fd);
    }
    if let Some(m) = metrics {
        let address = m
            .local_addr()
            .map_err(|e| format!("the metrics listener: {e}"))?;
        let fd = m
            .try_clone()
            .map_err(|e| format!("cannot copy the metrics listener: {e}"))?;
        described.push((ListenerKind::Metrics, address));
        fds.push(OwnedFd::from(fd));
    }
    if fds.len() > MAX_LISTENERS {
        return Err(format!(
            "{} listeners, more than the {MAX_LISTENERS} a takeover carries",
            fds.len()
        ));
    }
    Ok((encode_offer(std::process::id(), &described), fds))
}

impl Loop {
    /// The new dispatcher committed: stop accepting, let go of the pid file and the control
    /// socket's name, and wait for its `DONE`.
    pub(super) fn commit(&mut self, id: ConvId, pid: u32) {
        self.rt.accept_held = true;
        if let Some(c) = &mut self.setup.control {
            c.release_name();
        }
        // Closing the file releases the lock; the file stays for the new dispatcher.
        drop(self.setup.pidfile.take());
        if let Some(g) = &mut self.giving {
            g.pid = i32::try_from(pid).unwrap_or(g.pid);
            g.committed = Some(Instant::now());
        }
        log::info!(
            "takeover by pid {pid} committed: not accepting; pid file and control socket let go; waiting for it to say it serves"
        );
        let reply = Reply::ok(format!(
            "committed; pid {} no longer accepts",
            std::process::id()
        ));
        self.convs
            .reply(self.rt.poll.registry(), id, reply.encode(), true);
    }

    /// The new dispatcher serves (`DONE`): close the listeners, let the workers take what is
    /// still held, then drain.
    pub(super) fn hand_over(&mut self, id: ConvId) {
        let pid = self.giving.take().map_or(0, |g| g.pid);
        self.rt.acceptor.close_all(self.rt.poll.registry());
        if let Some(m) = self.setup.metrics.take() {
            let _ = self
                .rt
                .poll
                .registry()
                .deregister(&mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&m)));
        }
        log::info!(
            "taken over by pid {pid}: listeners closed; {} connection(s) still held go to the workers, then they drain",
            self.rt.held()
        );
        self.answer(
            id,
            Reply::ok(format!("handed over by pid {}", std::process::id())),
        );
        self.handing_off_until = Some(Instant::now() + self.rt.shutdown_bound);
    }

    /// The new dispatcher went away or fell silent during a takeover: serve on as before,
    /// taking back what a commit let go of.
    pub(super) fn takeover_abandoned(&mut self, why: &str) {
        let Some(g) = self.giving.take() else {
            return;
        };
        if g.committed.is_some() {
            self.rt.accept_held = false;
            self.rt.accept_again = true;
            self.setup.control = None;
            self.take_pid_file_and_socket("after an unfinished takeover");
        }
        self.convs.close_now(self.rt.poll.registry(), g.conv);
        // dispatcher.log points at the new one's file: at ours again.
        let relinked = (self.setup.reopen_log)();
        log::warn!(
            "takeover by pid {} abandoned ({why}){}; still serving",
            g.pid,
            if g.committed.is_some() {
                " after its commit: accepting again, pid file and control socket taken back"
            } else {
                ""
            }
        );
        if let Err(e) = relinked {
            log::error!("cannot reopen the log file: {e}");
        }
    }

    /// Every round: a takeover whose conversation is gone or silent too long is abandoned;
    /// once taken over, the stop begins when nothing is held any more.
    pub(super) fn giving_progress(&mut self) {
        if let Some(g) = self.giving {
            if !self.convs.contains(g.conv) {
                self.takeover_abandoned("its connection ended");
            } else if g
                .committed
                .is_some_and(|t| t.elapsed() >= super::handover::DONE_WAIT)
            {
                self.takeover_abandoned("no DONE after its commit");
            }
        }
        if let Some(until) = self.handing_off_until {
            if self.rt.held() == 0 || Instant::now() >= until {
                self.handing_off_until = None;
                self.stop();
            }
        }
    }
}
