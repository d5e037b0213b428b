//! The client end of the control socket: what `dispatcher --status`, `--reload`, `--restart`,
//! `--stop` and `--takeover` use to talk to the running dispatcher.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::protocol::{Reply, Request};
use super::takeover::{HandedOver, ListenerKind};

/// Why a request got no reply, for the administrator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no dispatcher is running here: there is no control socket {0}")]
    NoSocket(PathBuf),
    #[error("no dispatcher answers on {0} (left behind by a dispatcher that was killed?)")]
    Stale(PathBuf),
    #[error("permission denied on {0}: only the dispatcher's account and root may use it")]
    Denied(PathBuf),
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the control socket {path} is served by uid {uid}, neither root nor this account; not trusted")]
    Untrusted { path: PathBuf, uid: u32 },
    #[error("talking to the dispatcher: {0}")]
    Io(#[from] std::io::Error),
    #[error("the dispatcher's reply: {0}")]
    Protocol(String),
}

/// A connection to the dispatcher's control socket.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the socket at `path` and checks that the dispatcher on it runs as root or
    /// as this process's account.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => ClientError::NoSocket(path.to_path_buf()),
            Some(libc::ECONNREFUSED) => ClientError::Stale(path.to_path_buf()),
            Some(libc::EACCES) | Some(libc::EPERM) => ClientError::Denied(path.to_path_buf()),
            _ => ClientError::Connect {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(std::io::Error::from)?;
        if !super::trusted_uid(peer.uid()) {
            return Err(ClientError::Untrusted {
                path: path.to_path_buf(),
                uid: peer.uid(),
            });
        }
        Ok(Client { stream })
    }

    /// Sends one request and reads the whole reply (until the dispatcher closes), waiting at
    /// most `timeout` for each read (`None`: as long as it takes, for `--stop`).
    pub fn request(
        mut self,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<Reply, ClientError> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.write_all(format!("{req}\n").as_bytes())?;
        let mut bytes = Vec::new();
        self.stream.read_to_end(&mut bytes).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                ClientError::Protocol("no reply in time".into())
            } else {
                ClientError::Io(e)
            }
        })?;
        Reply::decode(&bytes).map_err(|e| ClientError::Protocol(e.0))
    }

    /// Asks for the listening sockets (`TAKEOVER`); the old dispatcher goes on serving until
    /// [`Takeover::commit`].
    pub fn takeover(self, timeout: Duration) -> Result<Takeover, ClientError> {
        let mut stream = self.stream;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(format!("{}\n", Request::Takeover).as_bytes())?;
        let mut bytes = Vec::new();
        let mut fds: Vec<OwnedFd> = Vec::new();
        let parsed = loop {
            if let Some(done) =
                super::takeover::parse_offer(&bytes).map_err(ClientError::Protocol)?
            {
                break done;
            }
            let got = recv_with_fds(&stream, &mut fds)?;
            if got.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                return Err(ClientError::Protocol(
                    match Reply::decode(text.as_bytes()) {
                        Ok(r) if !r.ok => r.text,
                        _ => "the dispatcher closed the connection during the takeover".into(),
                    },
                ));
            }
            bytes.extend_from_slice(&got);
        };
        let offer = match parsed {
            Err(refusal) => return Err(ClientError::Protocol(refusal)),
            Ok(offer) => offer,
        };
        if fds.len() != offer.listeners.len() {
            return Err(ClientError::Protocol(format!(
                "{} listener(s) announced, {} descriptor(s) received",
                offer.listeners.len(),
                fds.len()
            )));
        }
        let mut handed = Vec::new();
        for ((kind, address), fd) in offer.listeners.into_iter().zip(fds) {
            use nix::sys::socket::{getsockopt, sockopt};
            let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false)
                && getsockopt(&fd, sockopt::SockType).ok()
                    == Some(nix::sys::socket::SockType::Stream);
            if !listening {
                return Err(ClientError::Protocol(format!(
                    "the descriptor for {address} is not a listening stream socket"
                )));
            }
            let listener = TcpListener::from(fd);
            // What arrived must be a listening TCP socket bound where it is said to be.
            let bound = listener.local_addr().map_err(|e| {
                ClientError::Protocol(format!(
                    "a descriptor for {address} is not a TCP socket: {e}"
                ))
            })?;
            if bound.port() != address.port() {
                return Err(ClientError::Protocol(format!(
                    "the descriptor for {address} is bound to {bound}"
                )));
            }
            listener.set_nonblocking(true)?;
            handed.push(HandedOver {
                kind,
                address,
                listener,
            });
        }
        Ok(Takeover {
            stream,
            old_pid: offer.pid,
            listeners: handed,
        })
    }
}

/// A takeover under way, from the new dispatcher's side.
pub struct Takeover {
    stream: UnixStream,
    /// The running dispatcher's pid.
    pub old_pid: u32,
    /// Its listening sockets, with what they are for.
    pub listeners: Vec<HandedOver>,
}

impl Takeover {
    /// Tells the old dispatcher to stop accepting and let go of the pid file and the control
    /// socket; returns when it has (its pid), or why not. The conversation stays open for
    /// [`Takeover::done`].
    pub fn commit(&mut self, timeout: Duration) -> Result<u32, ClientError> {
        self.stream.set_read_timeout(Some(timeout))?;
        let line = format!(
            "{}\n",
            Request::Commit {
                pid: std::process::id()
            }
        );
        self.stream.write_all(line.as_bytes())?;
        let reply = read_line(&mut self.stream)?;
        let reply = Reply::decode(&reply).map_err(|e| ClientError::Protocol(e.0))?;
        if reply.ok {
            Ok(self.old_pid)
        } else {
            Err(ClientError::Protocol(reply.text))
        }
    }

    /// Tells the old dispatcher this one holds the pid file and the socket and accepts: it
    /// closes its listeners and drains.
    pub fn done(mut self, timeout: Duration) -> Result<(), ClientError> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream
            .write_all(format!("{}\n", Request::Done).as_bytes())?;
        let mut bytes = Vec::new();
        self.stream.read_to_end(&mut bytes)?;
        let reply = Reply::decode(&bytes).map_err(|e| ClientError::Protocol(e.0))?;
        if reply.ok {
            Ok(())
        } else {
            Err(ClientError::Protocol(reply.text))
        }
    }

    /// The old dispatcher's socket for a service's port at `address`, if it had one.
    pub fn take_port(&mut self, address: SocketAddr) -> Option<TcpListener> {
        self.take(|k| matches!(k, ListenerKind::Port { .. }), address)
    }

    /// The old dispatcher's metrics listener at `address`, if it had one.
    pub fn take_metrics(&mut self, address: SocketAddr) -> Option<TcpListener> {
        self.take(|k| *k == ListenerKind::Metrics, address)
    }

    fn take(
        &mut self,
        kind: impl Fn(&ListenerKind) -> bool,
        address: SocketAddr,
    ) -> Option<TcpListener> {
        let i = self
            .listeners
            .iter()
            .position(|h| kind(&h.kind) && h.address == address)?;
        Some(self.listeners.remove(i).listener)
    }
}

/// One reply line (the connection stays open), newline included.
fn read_line(stream: &mut UnixStream) -> Result<Vec<u8>, ClientError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if line.len() > super::protocol::MAX_REQUEST {
            return Err(ClientError::Protocol("a reply line too long".into()));
        }
        match stream.read(&mut byte)? {
            0 => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(line)
}

/// One `recvmsg`: the bytes, with any descriptors that came with them appended to `fds`
/// (close-on-exec). Truncated control data is an error.
fn recv_with_fds(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> Result<Vec<u8>, ClientError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; super::takeover::MAX_LISTENERS]);
    let (n, truncated) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        if !truncated {
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: the kernel just installed these descriptors for us; nothing
                    // else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        (msg.bytes, truncated)
    };
    if truncated {
        return Err(ClientError::Protocol(
            "more descriptors than a takeover may carry".into(),
        ));
    }
    buf.truncate(n);
    Ok(buf)
}
