//! The hand-off protocol between the dispatcher and its worker processes, both sides.
//!
//! Each worker gets one end of a `SOCK_SEQPACKET` Unix socket pair as descriptor
//! [`CONTROL_FD`]. Every message is one packet of ASCII text (at most [`MAX_MESSAGE`] bytes),
//! fields separated by single spaces; accepted TCP sockets travel with their `HANDOFF`
//! message as `SCM_RIGHTS` ancillary data. The full description, for anyone writing an image,
//! is `docs/worker-protocol.md`.
//!
//! Dispatcher → worker: `HANDOFF <conn-id> <client-addr> <server-addr>` (+ one descriptor),
//! `DRAIN`. Worker → dispatcher: `READY`, `ENDED <conn-id>`, `DRAINING`.
//!
//! Hygiene, as the issue asks: descriptors are received with `MSG_CMSG_CLOEXEC`; a truncated
//! packet or truncated ancillary data (`MSG_TRUNC`, `MSG_CTRUNC`) is an error, and any
//! descriptor that arrived with it is closed; a message that must carry exactly one descriptor
//! and does not is an error; the sender's copy of a handed-off socket is the caller's to close
//! (it is borrowed here). Sends on a non-blocking socket return `WouldBlock` instead of
//! waiting, so the dispatcher is never blocked by a slow worker.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// The descriptor on which a worker finds its end of the control socket.
pub const CONTROL_FD: RawFd = 3;

/// Longest message in bytes (a HANDOFF with two full IPv6 addresses is about 120).
pub const MAX_MESSAGE: usize = 512;

/// From the dispatcher to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// A connection: its id, the client's and the server's address; the socket comes with it.
    HandOff {
        conn: u64,
        client: SocketAddr,
        server: SocketAddr,
    },
    /// Take no more connections; exit when the last one has ended.
    Drain,
}

/// From a worker to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDispatcher {
    /// Started and ready for connections; `ack`: it confirms each hand-off with `TAKEN`.
    Ready { ack: bool },
    /// It has the socket of this connection.
    Taken { conn: u64 },
    /// The connection with this id has ended.
    Ended { conn: u64 },
    /// Taking no more connections (told to drain, or chose to).
    Draining,
}

/// What can go wrong on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: message `{0}` is not part of the protocol")]
    Unknown(String),
    #[error("control socket: malformed `{message}`: {reason}")]
    Malformed {
        message: String,
        reason: &'static str,
    },
    #[error("control socket: an empty packet")]
    Empty,
    #[error("control socket: message or descriptors truncated (flags {0:?})")]
    Truncated(MsgFlags),
    #[error("control socket: `{message}` came with {count} descriptors, expected {expected}")]
    Descriptors {
        message: String,
        count: usize,
        expected: usize,
    },
}

impl WireError {
    /// The socket has nothing to read, or no room to write, now.
    pub fn is_would_block(&self) -> bool {
        matches!(self, WireError::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl ToWorker {
    pub fn encode(&self) -> String {
        match self {
            ToWorker::HandOff {
                conn,
                client,
                server,
            } => format!("HANDOFF {conn} {client} {server}"),
            ToWorker::Drain => "DRAIN".to_string(),
        }
    }

    pub fn decode(text: &str) -> Result<ToWorker, WireError> {
        let mut f = text.split(' ');
        match f.next() {
            Some("HANDOFF") => {
                let bad = |reason| WireError::Malformed {
                    message: text.to_string(),
                    reason,
                };
                let conn = f
                    .next()
                    .and_then(|c| c.parse().ok())
                    .ok_or(bad("connection id"))?;
                let client = f
                    .next()
                    .and_then(|a| a.parse().ok())
                    .ok_or(bad("client address"))?;
                let server = f
                    .next()
                    .and_then(|a| a.parse().ok())
                    .ok_or(bad("server address"))?;
                if f.next().is_some() {
                    return Err(bad("extra fields"));
                }
                Ok(ToWorker::HandOff {
                    conn,
                    client,
                    server,
                })
            }
            Some("DRAIN") if f.next().is_none() => Ok(ToWorker::Drain),
            _ => Err(WireError::Unknown(text.to_string())),
        }
    }

    /// How many descriptors travel with this message.
    fn descriptors(&self) -> usize {
        usize::from(matches!(self, ToWorker::HandOff { .. }))
    }
}

impl ToDispatcher {
    pub fn encode(&self) -> String {
        match self {
            ToDispatcher::Ready { ack: false } => "READY".to_string(),
            ToDispatcher::Ready { ack: true } => "READY ACK".to_string(),
            ToDispatcher::Taken { conn } => format!("TAKEN {conn}"),
            ToDispatcher::Ended { conn } => format!("ENDED {conn}"),
            ToDispatcher::Draining => "DRAINING".to_string(),
        }
    }

    pub fn decode(text: &str) -> Result<ToDispatcher, WireError> {
        let mut f = text.split(' ');
        let first = f.next();
        let second = f.next();
        let rest = f.next();
        match (first, second, rest) {
            (Some("READY"), None, None) => Ok(ToDispatcher::Ready { ack: false }),
            (Some("READY"), Some("ACK"), None) => Ok(ToDispatcher::Ready { ack: true }),
            (Some("TAKEN"), Some(id), None) => id
                .parse()
                .map(|conn| ToDispatcher::Taken { conn })
                .map_err(|_| WireError::Malformed {
                    message: text.to_string(),
                    reason: "connection id",
                }),
            (Some("DRAINING"), None, None) => Ok(ToDispatcher::Draining),
            (Some("ENDED"), Some(id), None) => id
                .parse()
                .map(|conn| ToDispatcher::Ended { conn })
                .map_err(|_| WireError::Malformed {
                    message: text.to_string(),
                    reason: "connection id",
                }),
            _ => Err(WireError::Unknown(text.to_string())),
        }
    }
}

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec; the first end non-blocking
/// (the dispatcher's), the second blocking (the worker's, made inheritable by the spawner).
pub fn control_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    set_nonblocking(a.as_raw_fd())?;
    Ok((a, b))
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: `fd` is an open descriptor owned by the caller for the duration of this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(borrowed, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(borrowed, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

fn send_packet(ctrl: BorrowedFd<'_>, text: &str, fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    // MSG_NOSIGNAL: a worker that died must give EPIPE here, not kill the dispatcher.
    sendmsg::<()>(ctrl.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// Sends a message to a worker; a `HandOff` must come with `socket`, other messages without.
/// `socket` stays the caller's: close it after a successful send.
pub fn send_to_worker(
    ctrl: BorrowedFd<'_>,
    message: &ToWorker,
    socket: Option<BorrowedFd<'_>>,
) -> Result<(), WireError> {
    let fds: Vec<RawFd> = socket.iter().map(|s| s.as_raw_fd()).collect();
    if fds.len() != message.descriptors() {
        return Err(WireError::Descriptors {
            message: message.encode(),
            count: fds.len(),
            expected: message.descriptors(),
        });
    }
    Ok(send_packet(ctrl, &message.encode(), &fds)?)
}

/// Sends a message to the dispatcher.
pub fn send_to_dispatcher(ctrl: BorrowedFd<'_>, message: &ToDispatcher) -> Result<(), WireError> {
    Ok(send_packet(ctrl, &message.encode(), &[])?)
}

/// One received packet: its text and the descriptors that came with it (owned, close-on-exec).
struct Packet {
    text: String,
    fds: Vec<OwnedFd>,
}

/// Receives one packet; `None` at end of file (the other side is gone).
fn recv_packet(ctrl: BorrowedFd<'_>) -> Result<Option<Packet>, WireError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (bytes, flags, raw_fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            ctrl.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut raw = Vec::new();
        if let Ok(iter) = msg.cmsgs() {
            for c in iter {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    raw.extend(fds);
                }
            }
        }
        (msg.bytes, msg.flags, raw)
    };
    // SAFETY: the kernel just installed these descriptors in our table for us (SCM_RIGHTS);
    // nothing else refers to them, so each becomes owned exactly once here.
    let fds: Vec<OwnedFd> = raw_fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(WireError::Truncated(flags));
    }
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let text = packet_text(&buf[..bytes]);
    Ok(Some(Packet { text, fds }))
}

/// A packet's bytes as the text the decoders read. The protocol is ASCII: a byte that is not
/// UTF-8 becomes U+FFFD, which no message contains, so such a packet decodes to an error.
/// Pure, so that what a worker can send is fuzzed without a socket (`src/fuzzing.rs`).
pub fn packet_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Receives one message from the dispatcher, with the socket of a `HandOff`; `None` when the
/// dispatcher has gone away.
pub fn recv_from_dispatcher(
    ctrl: BorrowedFd<'_>,
) -> Result<Option<(ToWorker, Option<OwnedFd>)>, WireError> {
    let Some(mut packet) = recv_packet(ctrl)? else {
        return Ok(None);
    };
    let message = ToWorker::decode(&packet.text)?;
    if packet.fds.len() != message.descriptors() {
        return Err(WireError::Descriptors {
            message: packet.text,
            count: packet.fds.len(),
            expected: message.descriptors(),
        });
    }
    Ok(Some((message, packet.fds.pop())))
}

/// Receives one message from a worker; `None` when the worker has gone away.
pub fn recv_from_worker(ctrl: BorrowedFd<'_>) -> Result<Option<ToDispatcher>, WireError> {
    let Some(packet) = recv_packet(ctrl)? else {
        return Ok(None);
    };
    if !packet.fds.is_empty() {
        return Err(WireError::Descriptors {
            message: packet.text,
            count: packet.fds.len(),
            expected: 0,
        });
    }
    ToDispatcher::decode(&packet.text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn messages_round_trip_as_text() {
        let h = ToWorker::HandOff {
            conn: 17,
            client: "127.0.0.2:40000".parse().expect("addr"),
            server: "[::1]:2225".parse().expect("addr"),
        };
        assert_eq!(h.encode(), "HANDOFF 17 127.0.0.2:40000 [::1]:2225");
        assert_eq!(ToWorker::decode(&h.encode()).expect("decodes"), h);
        assert_eq!(ToWorker::decode("DRAIN").expect("decodes"), ToWorker::Drain);
        for m in [
            ToDispatcher::Ready { ack: false },
            ToDispatcher::Ended { conn: 9 },
            ToDispatcher::Draining,
        ] {
            assert_eq!(ToDispatcher::decode(&m.encode()).expect("decodes"), m);
        }
    }

    #[test]
    fn malformed_messages_are_errors_naming_the_text() {
        let e = ToWorker::decode("HANDOFF x 1.2.3.4:5 1.2.3.4:6").expect_err("bad id");
        assert!(e.to_string().contains("connection id"), "{e}");
        assert!(ToWorker::decode("HANDOFF 1 1.2.3.4:5 1.2.3.4:6 extra").is_err());
        assert!(ToWorker::decode("HELLO").is_err());
        assert!(ToDispatcher::decode("ENDED").is_err());
        assert!(ToDispatcher::decode("READY now").is_err());
    }

    #[test]
    fn an_accepted_tcp_socket_crosses_the_pair_and_still_works() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let (dispatcher_end, worker_end) = control_pair().expect("pair");
        let msg = ToWorker::HandOff {
            conn: 1,
            client: peer,
            server: addr,
        };
        send_to_worker(dispatcher_end.as_fd(), &msg, Some(accepted.as_fd())).expect("send");
        drop(accepted); // the dispatcher's copy is closed after the hand-off
        let (got, fd) = recv_from_dispatcher(worker_end.as_fd())
            .expect("receive")
            .expect("a message");
        assert_eq!(got, msg);
        let mut stream = TcpStream::from(fd.expect("the socket"));
        stream.write_all(b"220 hello\r\n").expect("write");
        drop(stream);
        let mut greeting = String::new();
        client.read_to_string(&mut greeting).expect("read");
        assert_eq!(greeting, "220 hello\r\n");
    }

    #[test]
    fn received_descriptors_are_close_on_exec() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (a, b) = control_pair().expect("pair");
        let msg = ToWorker::HandOff {
            conn: 2,
            client: "127.0.0.1:1".parse().expect("addr"),
            server: "127.0.0.1:2".parse().expect("addr"),
        };
        send_to_worker(a.as_fd(), &msg, Some(listener.as_fd())).expect("send");
        let (_, fd) = recv_from_dispatcher(b.as_fd())
            .expect("recv")
            .expect("message");
        let fd = fd.expect("descriptor");
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("getfd");
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn handoff_without_socket_is_refused_before_sending() {
        let (a, _b) = control_pair().expect("pair");
        let msg = ToWorker::HandOff {
            conn: 3,
            client: "127.0.0.1:1".parse().expect("addr"),
            server: "127.0.0.1:2".parse().expect("addr"),
        };
        let e = send_to_worker(a.as_fd(), &msg, None).expect_err("no fd");
        assert!(matches!(
            e,
            WireError::Descriptors {
                expected: 1,
                count: 0,
                ..
            }
        ));
    }

    #[test]
    fn worker_reports_and_end_of_file() {
        let (a, b) = control_pair().expect("pair");
        send_to_dispatcher(b.as_fd(), &ToDispatcher::Ended { conn: 5 }).expect("send");
        assert_eq!(
            recv_from_worker(a.as_fd()).expect("recv"),
            Some(ToDispatcher::Ended { conn: 5 })
        );
        drop(b);
        assert_eq!(recv_from_worker(a.as_fd()).expect("eof"), None);
    }

    #[test]
    fn a_full_worker_socket_says_would_block_instead_of_waiting() {
        let (a, _b) = control_pair().expect("pair");
        let mut sent = 0;
        let err = loop {
            match send_to_worker(a.as_fd(), &ToWorker::Drain, None) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "the kernel buffer never filled");
        };
        match err {
            WireError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
            other => panic!("{other}"),
        }
    }
}
