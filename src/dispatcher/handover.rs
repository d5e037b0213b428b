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

use super::control::ConvId;
use super::runtime::Runtime;
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
