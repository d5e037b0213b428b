//! The server end of the control socket (`IMTA_LOG/dispatcher.socket`) and of the metrics
//! endpoint: binding the socket safely, accepting clients, reading their requests and writing
//! the replies, never blocking the event loop. What a request *does* is
//! [`super::commands`]'; the protocol is [`crate::control::protocol`].
//!
//! The socket is created with mode `0600` (umask `0177` around `bind`), so only the
//! dispatcher's account (and root) can connect; each client's credentials are checked again
//! (`SO_PEERCRED`): another uid is answered `ERR` and closed. Whatever is found at the
//! socket's name before binding is removed only if it is a socket no one answers on (left by
//! a killed dispatcher) or not a directory: `unlink` does not follow a planted symbolic link,
//! and `bind` refuses to create through one. At exit the socket is removed if it is still the
//! one this dispatcher made.
//!
//! A client has [`REQUEST_WAIT`] to send its request line; at most [`MAX_CLIENTS`] talk at
//! once (more are answered "busy"). Replies are buffered and written as the socket takes them.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{sendmsg, ControlMessage};

/// How long a client may take to send its request.
pub const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Clients talked to at once.
pub const MAX_CLIENTS: usize = 32;
/// A reply that the client does not read within this long is dropped with the connection.
pub const REPLY_WAIT: Duration = Duration::from_secs(30);

/// Why the control socket cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot make the control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the control socket {0}: a dispatcher already answers on it")]
    InUse(PathBuf),
    #[error("cannot make the control socket {0}: a directory is in the way")]
    Directory(PathBuf),
}

/// The bound control socket.
pub struct ControlSocket {
    pub path: PathBuf,
    listener: UnixListener,
    dev: u64,
    ino: u64,
    /// The name is no longer ours (handed over in a takeover): not removed at exit.
    released: bool,
    /// What was found at the name and removed, for the log (bound before the log is open).
    pub replaced: Option<String>,
}

impl ControlSocket {
    /// Binds the socket at `path` (see the module comment).
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut replaced = None;
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
            Ok(m) if m.is_dir() => return Err(ControlError::Directory(path.to_path_buf())),
            Ok(m) => {
                if m.file_type().is_socket() {
                    // Stale only when no one listens; any other answer is not proof.
                    match UnixStream::connect(path) {
                        Ok(_) => return Err(ControlError::InUse(path.to_path_buf())),
                        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                        Err(e) => return Err(io(e)),
                    }
                }
                let what = if m.file_type().is_socket() {
                    "a stale control socket"
                } else if m.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "a file"
                };
                replaced = Some(format!(
                    "{} was {what} (uid {}); removed and made again",
                    path.display(),
                    m.uid()
                ));
                std::fs::remove_file(path).map_err(io)?;
            }
        }
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let m = std::fs::symlink_metadata(path).map_err(io)?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener,
            dev: m.dev(),
            ino: m.ino(),
            released: false,
            replaced,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Removes the name so that the next dispatcher can bind it (a takeover); clients already
    /// connected are still served.
    pub fn release_name(&mut self) {
        if !self.released {
            self.released = true;
            let _ = crate::safe_fs::remove_if_same(&self.path, self.dev, self.ino);
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.release_name();
    }
}

/// A client's id among the conversations.
pub type ConvId = u64;

/// What a conversation speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    Control,
    Http,
}

/// A connected client: a control client or a metrics scraper.
struct Conv {
    stream: Box<dyn Stream>,
    speaks: Speaks,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Descriptors to send with the first byte of `output`.
    fds: Vec<OwnedFd>,
    /// The client has closed its side: close once the reply is out.
    peer_closed: bool,
    /// A request was read: no more is expected unless `keep`.
    answered: bool,
    /// Stays open after its reply (a takeover waits for COMMIT, a stop for its end).
    keep: bool,
    deadline: Instant,
    token: Token,
    writable_watched: bool,
    /// The client's pid and uid (control clients).
    pub peer: Option<(i32, u32)>,
}

/// The socket of a conversation: a Unix or a TCP stream.
trait Stream: Read + Write {
    fn fd(&self) -> RawFd;
    fn nonblocking(&self, on: bool) -> std::io::Result<()>;
    fn write_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl<S: Read + Write + AsFd> Stream for S {
    fn fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
    fn nonblocking(&self, on: bool) -> std::io::Result<()> {
        socket2::SockRef::from(self).set_nonblocking(on)
    }
    fn write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        socket2::SockRef::from(self).set_write_timeout(t)
    }
}

/// One client from a listener's queue, or `None` when the queue is empty or accepting failed
/// (said at `level`; the tick tries again). An interrupted call is retried.
fn accept_one<S, A>(
    accept: impl Fn() -> std::io::Result<(S, A)>,
    what: &str,
    level: log::Level,
) -> Option<S> {
    loop {
        match accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::log!(level, "{what}: accept: {e}");
                return None;
            }
        }
    }
}

/// What happened on a conversation.
#[derive(Debug, PartialEq, Eq)]
pub enum ConvEvent {
    /// A whole request (a control line, or an HTTP head) arrived.
    Request { id: ConvId, text: Vec<u8> },
    /// A conversation that was kept open has ended (the client closed or the wait passed).
    Closed(ConvId),
}

/// Every client being talked to.
#[derive(Default)]
pub struct Conversations {
    convs: HashMap<ConvId, Conv>,
    next: ConvId,
}

impl Conversations {
    /// Accepts every waiting control client on `socket`; `token(id)` is the new one's token.
    pub fn accept_control(
        &mut self,
        registry: &Registry,
        socket: &ControlSocket,
        token: impl Fn(ConvId) -> Token,
    ) {
        while let Some(stream) = accept_one(
            || socket.listener.accept(),
            "control socket",
            log::Level::Warn,
        ) {
            let cred =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
            let me = nix::unistd::geteuid().as_raw();
            let peer = match cred {
                Ok(c) if crate::control::trusted_uid(c.uid()) => (c.pid(), c.uid()),
                Ok(c) => {
                    log::warn!(
                        "control socket: refused a client with uid {} (pid {}): only uid {me} and root may use it",
                        c.uid(),
                        c.pid()
                    );
                    let _ = stream.set_nonblocking(true);
                    let _ = (&stream).write_all(
                        &crate::control::protocol::Reply::err(format!(
                            "permission denied: uid {} is neither the dispatcher's ({me}) nor root",
                            c.uid()
                        ))
                        .encode(),
                    );
                    continue;
                }
                Err(e) => {
                    log::warn!("control socket: cannot read a client's credentials: {e}; refused");
                    continue;
                }
            };
            self.add(
                registry,
                Box::new(stream),
                Speaks::Control,
                Some(peer),
                &token,
            );
        }
    }

    /// Accepts every waiting metrics scraper on `listener`.
    pub fn accept_http(
        &mut self,
        registry: &Registry,
        listener: &std::net::TcpListener,
        token: impl Fn(ConvId) -> Token,
    ) {
        while let Some(s) = accept_one(|| listener.accept(), "metrics endpoint", log::Level::Debug)
        {
            self.add(registry, Box::new(s), Speaks::Http, None, &token);
        }
    }

    fn add(
        &mut self,
        registry: &Registry,
        stream: Box<dyn Stream>,
        speaks: Speaks,
        peer: Option<(i32, u32)>,
        token: &impl Fn(ConvId) -> Token,
    ) {
        // Counted apart: scrapers cannot crowd out the administrator.
        let busy = self.convs.values().filter(|c| c.speaks == speaks).count() >= MAX_CLIENTS;
        let mut stream = stream;
        let fd = stream.fd();
        if stream.nonblocking(true).is_err() {
            return;
        }
        if busy {
            let _ = stream.write_all(match speaks {
                Speaks::Control => b"ERR busy: too many control clients at once\n",
                Speaks::Http => b"HTTP/1.0 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            });
            return;
        }
        self.next += 1;
        let id = self.next;
        let tok = token(id);
        if let Err(e) = registry.register(&mut SourceFd(&fd), tok, Interest::READABLE) {
            log::warn!("control: cannot watch a client: {e}");
            return;
        }
        self.convs.insert(
            id,
            Conv {
                stream,
                speaks,
                input: Vec::new(),
                output: Vec::new(),
                fds: Vec::new(),
                peer_closed: false,
                answered: false,
                keep: false,
                deadline: Instant::now() + REQUEST_WAIT,
                token: tok,
                writable_watched: false,
                peer,
            },
        );
    }

    /// What the client is (control or HTTP), and its pid and uid.
    pub fn who(&self, id: ConvId) -> Option<(Speaks, Option<(i32, u32)>)> {
        self.convs.get(&id).map(|c| (c.speaks, c.peer))
    }

    /// Reads what a client sent; a whole request, or the end of a kept conversation.
    pub fn read(
        &mut self,
        registry: &Registry,
        id: ConvId,
        complete: impl Fn(Speaks, &[u8]) -> Option<usize>,
        max: impl Fn(Speaks) -> usize,
    ) -> Vec<ConvEvent> {
        let mut out = Vec::new();
        let Some(c) = self.convs.get_mut(&id) else {
            return out;
        };
        let max = max(c.speaks);
        let mut buf = [0u8; 4096];
        let mut eof = false;
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
            if c.answered && !c.keep {
                // Nothing more is expected: what comes is dropped, not kept.
                c.input.clear();
            }
            if c.input.len() > max {
                break;
            }
        }
        // One request at a time; a kept conversation (a takeover) may send one more once its
        // reply is out.
        if !c.answered {
            let end = complete(c.speaks, &c.input)
                .or_else(|| (c.input.len() > max).then_some(c.input.len()));
            if let Some(end) = end {
                let text: Vec<u8> = c.input.drain(..end).collect();
                c.answered = true;
                out.push(ConvEvent::Request { id, text });
            }
        }
        if eof {
            if !out.is_empty() && !c.keep {
                // A request, then the client's half-close: the reply still goes out.
                c.peer_closed = true;
                let _ =
                    registry.reregister(&mut SourceFd(&c.stream.fd()), c.token, Interest::WRITABLE);
                c.writable_watched = true;
                return out;
            }
            self.close(registry, id);
            out.push(ConvEvent::Closed(id));
        }
        out
    }

    /// Queues a reply; the conversation closes once it is written, unless `keep`.
    pub fn reply(&mut self, registry: &Registry, id: ConvId, bytes: Vec<u8>, keep: bool) {
        self.reply_with_fds(registry, id, bytes, Vec::new(), keep);
    }

    /// Queues a reply that carries descriptors (`SCM_RIGHTS` with its first byte).
    pub fn reply_with_fds(
        &mut self,
        registry: &Registry,
        id: ConvId,
        bytes: Vec<u8>,
        fds: Vec<OwnedFd>,
        keep: bool,
    ) {
        let Some(c) = self.convs.get_mut(&id) else {
            return;
        };
        if keep && c.peer_closed {
            // Nothing more can come from a client that closed its side.
            self.close(registry, id);
            return;
        }
        c.output.extend_from_slice(&bytes);
        c.fds = fds;
        c.keep = keep;
        c.answered = !keep;
        c.deadline = Instant::now() + REPLY_WAIT;
        self.flush(registry, id);
    }

    /// Keeps a conversation open without a reply yet (a stop answers when it is done).
    pub fn hold(&mut self, id: ConvId) {
        if let Some(c) = self.convs.get_mut(&id) {
            c.keep = true;
            c.answered = true;
        }
    }

    /// Writes what the socket takes; closes the conversation when its reply is out.
    pub fn flush(&mut self, registry: &Registry, id: ConvId) {
        let Some(c) = self.convs.get_mut(&id) else {
            return;
        };
        while !c.output.is_empty() {
            let written = if c.fds.is_empty() {
                c.stream.write(&c.output)
            } else {
                let raw: Vec<RawFd> = c.fds.iter().map(AsRawFd::as_raw_fd).collect();
                let cmsg = [ControlMessage::ScmRights(&raw)];
                sendmsg::<()>(
                    c.stream.fd(),
                    &[std::io::IoSlice::new(&c.output)],
                    &cmsg,
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
                .inspect(|_| c.fds.clear())
            };
            match written {
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !c.writable_watched {
                        c.writable_watched = true;
                        let _ = registry.reregister(
                            &mut SourceFd(&c.stream.fd()),
                            c.token,
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.output.clear();
                    c.keep = false;
                    break;
                }
            }
        }
        if c.answered && !c.keep {
            self.close(registry, id);
        }
    }

    /// Ends a kept conversation after writing `bytes` as best it can, now (at exit).
    pub fn finish(&mut self, registry: &Registry, id: ConvId, bytes: &[u8]) {
        if let Some(c) = self.convs.get_mut(&id) {
            // At exit, briefly blocking (at most a second): the client asked for this line.
            let _ = c.stream.nonblocking(false);
            let _ = c.stream.write_timeout(Some(Duration::from_secs(1)));
            let _ = c.stream.write_all(&c.output);
            let _ = c.stream.write_all(bytes);
        }
        self.close(registry, id);
    }

    /// Whether the conversation is still open.
    pub fn contains(&self, id: ConvId) -> bool {
        self.convs.contains_key(&id)
    }

    /// Closes a conversation now.
    pub fn close_now(&mut self, registry: &Registry, id: ConvId) {
        self.close(registry, id);
    }

    /// Closes conversations whose time is up; returns the kept ones that ended so.
    pub fn expire(&mut self, registry: &Registry, now: Instant) -> Vec<ConvId> {
        let late: Vec<(ConvId, bool)> = self
            .convs
            .iter()
            .filter(|(_, c)| now >= c.deadline && !(c.keep && c.output.is_empty()))
            .map(|(&id, c)| (id, c.keep))
            .collect();
        let mut ended = Vec::new();
        for (id, kept) in late {
            self.close(registry, id);
            if kept {
                ended.push(id);
            }
        }
        ended
    }

    fn close(&mut self, registry: &Registry, id: ConvId) {
        if let Some(c) = self.convs.remove(&id) {
            let _ = registry.deregister(&mut SourceFd(&c.stream.fd()));
        }
    }
}
