//! Accepting connections and admitting them: the listening sockets, the PORT_ACCESS judgement
//! of each new connection ([`super::access`]), and when to stop accepting.
//!
//! A listener has a stable [`ListenerId`] and belongs to one service (a reload may move it to
//! another without closing it). Accepting stops, leaving clients in the kernel's listen queue,
//! when the service's pool says it has no room, when the dispatcher holds as many connections
//! as its descriptor budget allows ([`super::descriptors`]), or for a moment after `accept`
//! failed for lack of descriptors (`EMFILE`, `ENFILE`), logged at most once a minute. Other
//! accept errors (a client that reset before we took it) are skipped, and the same listener is
//! read again, so its backlog is not left waiting for a new connection to raise an event.
//! Refused connections get the table's text and are closed here; no worker ever sees them.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::access::{self, RefusalLog};
use crate::log_text::untrusted;
use crate::mapping::port_access::Verdict;
use crate::mapping::table::MappingSet;
use crate::net_address;

/// A listening socket, numbered once for the dispatcher's life.
pub type ListenerId = u64;

/// How long accepting pauses after `EMFILE`/`ENFILE`.
pub const EXHAUSTION_PAUSE: Duration = Duration::from_millis(100);

/// Accept errors in a row on one listener before it is left until the next round.
const ERRORS_IN_A_ROW: u32 = 64;

pub struct Listener {
    pub service: u64,
    /// Where the configuration says it listens (what a reload compares).
    pub address: SocketAddr,
    socket: TcpListener,
    /// Where it is bound, when that is one address (not a wildcard): the local end of every
    /// connection accepted on it, so no `getsockname` is made per connection.
    bound: Option<SocketAddr>,
}

/// A connection let in by PORT_ACCESS.
pub struct Admitted {
    pub stream: TcpStream,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// What a round of accepting on one listener ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing more is queued.
    Empty,
    /// The caller said stop (no room); clients may still be queued.
    NoRoom,
    /// Out of descriptors: accepting pauses.
    Exhausted,
    /// Too many errors in a row; try again later.
    Errors,
}

/// The listeners, the refusal log and the exhaustion pause.
#[derive(Default)]
pub struct Acceptor {
    listeners: BTreeMap<ListenerId, Listener>,
    next_id: ListenerId,
    pub refusals: RefusalLog,
    paused_until: Option<Instant>,
    last_exhaustion_log: Option<Instant>,
    /// Connections accepted and admitted.
    pub admitted: u64,
    /// Refused since the last [`Acceptor::take_refused`] (the caller books them by service).
    refused_since: u64,
}

impl Acceptor {
    /// Adds an open listener of `service`, watched with the token `token(id)` gives.
    pub fn add(
        &mut self,
        registry: &Registry,
        service: u64,
        address: SocketAddr,
        socket: TcpListener,
        token: impl Fn(ListenerId) -> Token,
    ) -> std::io::Result<ListenerId> {
        self.next_id += 1;
        let id = self.next_id;
        registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            token(id),
            Interest::READABLE,
        )?;
        let bound = socket
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified());
        self.listeners.insert(
            id,
            Listener {
                service,
                address,
                socket,
                bound,
            },
        );
        Ok(id)
    }

    /// Closes a listener.
    pub fn remove(&mut self, registry: &Registry, id: ListenerId) -> Option<Listener> {
        let l = self.listeners.remove(&id)?;
        let _ = registry.deregister(&mut SourceFd(&l.socket.as_raw_fd()));
        Some(l)
    }

    /// Closes every listener (the dispatcher stops).
    pub fn close_all(&mut self, registry: &Registry) {
        let ids: Vec<ListenerId> = self.listeners.keys().copied().collect();
        for id in ids {
            self.remove(registry, id);
        }
    }

    /// A copy of a listener's socket (for a takeover).
    pub fn duplicate(&self, id: ListenerId) -> std::io::Result<std::os::fd::OwnedFd> {
        let l = self
            .listeners
            .get(&id)
            .ok_or_else(|| std::io::Error::other("no such listener"))?;
        Ok(std::os::fd::OwnedFd::from(l.socket.try_clone()?))
    }

    /// Gives a kept listener to another service (a reload moved its address).
    pub fn move_to(&mut self, id: ListenerId, service: u64) {
        if let Some(l) = self.listeners.get_mut(&id) {
            l.service = service;
        }
    }

    pub fn get(&self, id: ListenerId) -> Option<&Listener> {
        self.listeners.get(&id)
    }

    /// (id, service, address) of every listener.
    pub fn list(&self) -> Vec<(ListenerId, u64, SocketAddr)> {
        self.listeners
            .iter()
            .map(|(&id, l)| (id, l.service, l.address))
            .collect()
    }

    /// The listeners of `service`.
    pub fn of_service(&self, service: u64) -> Vec<ListenerId> {
        self.listeners
            .iter()
            .filter(|(_, l)| l.service == service)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether accepting is paused after descriptor exhaustion.
    pub fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| now < t)
    }

    /// Connections refused by PORT_ACCESS since the last call.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused_since)
    }

    /// Accepts on one listener while `room()` says there is room, handing each admitted
    /// connection to `admit`. `service_name` is for log lines.
    pub fn accept_from(
        &mut self,
        id: ListenerId,
        service_name: &str,
        port_access: Option<&MappingSet>,
        now_ms: u64,
        mut room: impl FnMut() -> bool,
        mut admit: impl FnMut(Admitted),
    ) -> Stopped {
        let mut errors = 0;
        loop {
            if self.paused(Instant::now()) {
                return Stopped::Exhausted;
            }
            if !room() {
                return Stopped::NoRoom;
            }
            let Some(l) = self.listeners.get(&id) else {
                return Stopped::Empty;
            };
            let bound = l.bound;
            match l.socket.accept() {
                Ok((stream, client)) => {
                    errors = 0;
                    let server = match bound {
                        Some(a) => Some(a),
                        None => stream.local_addr().ok(),
                    };
                    let Some(server) = server else {
                        continue;
                    };
                    let judged =
                        self.judge(stream, client, server, service_name, port_access, now_ms);
                    if let Some(a) = judged {
                        self.admitted += 1;
                        admit(a);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Stopped::Empty,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if super::descriptors::is_exhaustion(&e) => {
                    let now = Instant::now();
                    self.paused_until = Some(now + EXHAUSTION_PAUSE);
                    if self
                        .last_exhaustion_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                    {
                        self.last_exhaustion_log = Some(now);
                        log::error!(
                            "[SERVICE={service_name}] cannot accept: {e}; accepting paused for {} ms (raise the descriptor limit, or lower MAX_PROCS x MAX_CONNS); logged once a minute",
                            EXHAUSTION_PAUSE.as_millis()
                        );
                    }
                    return Stopped::Exhausted;
                }
                Err(e) => {
                    // ECONNABORTED and the like: that client is gone, the next one may wait.
                    log::debug!("[SERVICE={service_name}] accept: {e}");
                    errors += 1;
                    if errors >= ERRORS_IN_A_ROW {
                        log::warn!("[SERVICE={service_name}] accept: {e} ({errors} in a row)");
                        return Stopped::Errors;
                    }
                }
            }
        }
    }

    /// PORT_ACCESS on one accepted connection: refused ones are answered and closed here.
    fn judge(
        &mut self,
        stream: TcpStream,
        client: SocketAddr,
        server: SocketAddr,
        name: &str,
        port_access: Option<&MappingSet>,
        now_ms: u64,
    ) -> Option<Admitted> {
        let (probe, decision) = access::judge(port_access, server, client);
        // The probe and what the templates made of it carry the client's address: logged
        // through `untrusted`, like everything a client or a worker controls.
        let shown = untrusted(&probe);
        if let Some(text) = &decision.log_match {
            log::info!("PORT_ACCESS {shown}: {}", untrusted(text));
        }
        for u in &decision.notes.unsupported {
            log::warn!("PORT_ACCESS {shown}: {u} is not supported; counted as no answer");
        }
        if let Verdict::Reject { text } = &decision.verdict {
            self.refused_since += 1;
            let (log_it, suppressed) = self.refusals.record(now_ms);
            if suppressed > 0 {
                log::warn!(
                    "PORT_ACCESS: {suppressed} more refusals in the last minute were not logged"
                );
            }
            if log_it {
                log::info!(
                    "[SERVICE={name}] PORT_ACCESS refused {shown}: \"{}\"",
                    untrusted(text)
                );
            }
            if let Some(t) = &decision.log_reject {
                log::info!("PORT_ACCESS {shown}: {}", untrusted(t));
            }
            let _ = stream.set_nonblocking(true);
            access::refuse(stream, &decision);
            return None;
        }
        // Admitted with the addresses as every later log line (and the HANDOFF) shows them:
        // an IPv4 client of the dual-stack listener as IPv4 (the probe above already is).
        Some(Admitted {
            stream,
            client: net_address::canonical(client),
            server: net_address::canonical(server),
        })
    }
}
