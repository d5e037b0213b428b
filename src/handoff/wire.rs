//! The hand-off protocol between the dispatcher and its worker processes, both sides.
//!
//! Each worker gets one end of a `SOCK_SEQPACKET` Unix socket pair as descriptor
//! [`CONTROL_FD`]. Every message is one packet of ASCII text (at most [`MAX_MESSAGE`] bytes),
//! fields separated by single spaces; accepted TCP sockets travel with their `HANDOFF`
//! message as `SCM_RIGHTS` ancillary data. The full description, for anyone writing an image,
//! is `docs/worker-protocol.md`.
//!
//! Dispatcher → worker: `HANDOFF <conn-id> <client-addr> <server-addr>` (+ one descriptor),
//! `DRAIN`. Worker → dispatcher: `READY` or `READY ACK`, `TAKEN <conn-id>`,
//! `ENDED <conn-id>`, `DRAINING`, `STATS <counts>` (a [`WorkerStats`] delta).
//!
//! Hygiene, as the issue asks: descriptors are received with `MSG_CMSG_CLOEXEC`; a truncated
//! packet or truncated ancillary data (`MSG_TRUNC`, `MSG_CTRUNC`) is an error, and every
//! descriptor the kernel did install with it is closed (the control data is read with our own
//! walk over it, because `nix` refuses to iterate truncated control data and the descriptors
//! in it would leak); a message that must carry exactly one descriptor and does not is an
//! error; the sender's copy of a handed-off socket is the caller's to close (it is borrowed
//! here). Sends on a non-blocking socket return `WouldBlock` instead of waiting, so the
//! dispatcher is never blocked by a slow worker.
//!
//! A receive returns `Ok(None)` only at end of file. On `SOCK_SEQPACKET` an empty packet also
//! reads as 0 bytes; the two are told apart by asking `poll` whether the peer has hung up,
//! and an empty packet is [`WireError::Empty`] (no message is empty, so it is a protocol
//! error, not the end).

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::stats::{WorkerStats, LATENCY_BUCKETS};

use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

/// The descriptor on which a worker finds its end of the control socket.
pub const CONTROL_FD: RawFd = 3;

/// Longest message in bytes (a HANDOFF with two full IPv6 addresses is about 120).
pub const MAX_MESSAGE: usize = 512;

/// The most descriptors one received packet may bring; room for them is made in the control
/// buffer. Protocol messages bring 0 or 1; more is an error (their descriptors are closed).
const MAX_FDS: usize = 4;

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
    /// Started and ready for connections: `READY`, or `READY ACK` (`ack`) from a worker that
    /// confirms every hand-off with [`ToDispatcher::Taken`].
    Ready { ack: bool },
    /// The socket of the `HANDOFF` with this id has been received (sent by `READY ACK`
    /// workers, before the connection is served).
    Taken { conn: u64 },
    /// The connection with this id has ended.
    Ended { conn: u64 },
    /// Taking no more connections (told to drain, or chose to).
    Draining,
    /// Delivery counters since the worker's previous `STATS`: `STATS <delivered> <deferred>
    /// <refused> <bytes> <latency-sum-micros> <bucket 0> ... <bucket N>` (the buckets not
    /// cumulative, one per [`LATENCY_BOUNDS_MS`](super::stats::LATENCY_BOUNDS_MS) and `+Inf`).
    Stats(WorkerStats),
}

/// Fields of `STATS` after the word: five counts and the buckets.
const STATS_FIELDS: usize = 5 + LATENCY_BUCKETS;

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
    #[error("control socket: message or descriptors truncated (flags {0:?})")]
    Truncated(MsgFlags),
    /// A packet of 0 bytes, without descriptors: no message is empty.
    #[error("control socket: an empty packet (no message is empty)")]
    Empty,
    #[error("control socket: `{message}` came with {count} descriptors, expected {expected}")]
    Descriptors {
        message: String,
        count: usize,
        expected: usize,
    },
}

impl WireError {
    /// The socket has nothing to read now, or no room to send now (a non-blocking socket):
    /// not an error of the peer, try again when `poll` says so.
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
            ToDispatcher::Stats(s) => {
                let mut text = format!(
                    "STATS {} {} {} {} {}",
                    s.delivered, s.deferred, s.refused, s.bytes, s.latency_sum_micros
                );
                for b in &s.latency_buckets {
                    text.push(' ');
                    text.push_str(&b.to_string());
                }
                text
            }
        }
    }

    /// `STATS`' fields, strictly: exactly [`STATS_FIELDS`] decimal numbers of digits only
    /// (no sign, no empty field), each fitting a u64.
    fn decode_stats(text: &str, fields: &str) -> Result<ToDispatcher, WireError> {
        let bad = |reason| WireError::Malformed {
            message: text.to_string(),
            reason,
        };
        let mut n = [0u64; STATS_FIELDS];
        let mut given = 0;
        for field in fields.split(' ') {
            let slot = n.get_mut(given).ok_or(bad("too many fields"))?;
            if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("a count that is not a decimal number"));
            }
            *slot = field.parse().map_err(|_| bad("a count over 2^64-1"))?;
            given += 1;
        }
        if given != STATS_FIELDS {
            return Err(bad("too few fields"));
        }
        let [delivered, deferred, refused, bytes, latency_sum_micros, buckets @ ..] = n;
        Ok(ToDispatcher::Stats(WorkerStats {
            delivered,
            deferred,
            refused,
            bytes,
            latency_buckets: buckets,
            latency_sum_micros,
        }))
    }

    pub fn decode(text: &str) -> Result<ToDispatcher, WireError> {
        if let Some(fields) = text.strip_prefix("STATS ") {
            return ToDispatcher::decode_stats(text, fields);
        }
        let mut f = text.split(' ');
        let first = f.next();
        let second = f.next();
        let rest = f.next();
        let conn_id = |id: &str| {
            id.parse().map_err(|_| WireError::Malformed {
                message: text.to_string(),
                reason: "connection id",
            })
        };
        match (first, second, rest) {
            (Some("READY"), None, None) => Ok(ToDispatcher::Ready { ack: false }),
            (Some("READY"), Some("ACK"), None) => Ok(ToDispatcher::Ready { ack: true }),
            (Some("DRAINING"), None, None) => Ok(ToDispatcher::Draining),
            (Some("TAKEN"), Some(id), None) => conn_id(id).map(|conn| ToDispatcher::Taken { conn }),
            (Some("ENDED"), Some(id), None) => conn_id(id).map(|conn| ToDispatcher::Ended { conn }),
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
    set_nonblocking(a.as_fd())?;
    Ok((a, b))
}

/// Makes `fd` non-blocking (the dispatcher's end of a control socket, or a worker's end when
/// it reads what is left before its exit).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
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
    let (bytes, flags, fds) = recv_raw(ctrl, &mut buf)?;
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        // `fds` (what the kernel did install) is dropped here: closed.
        return Err(WireError::Truncated(flags));
    }
    if bytes == 0 && fds.is_empty() {
        return if peer_has_hung_up(ctrl)? {
            Ok(None)
        } else {
            Err(WireError::Empty)
        };
    }
    let text = packet_text(&buf[..bytes]);
    Ok(Some(Packet { text, fds }))
}

/// After a read of 0 bytes: is that end of file? A `SOCK_SEQPACKET` read returns 0 both for an
/// empty packet and when the peer has closed and nothing is queued; only the second sets
/// `POLLHUP`/`POLLRDHUP`. (An empty packet sent just before the peer closed reads as end of
/// file: the peer is gone either way.)
fn peer_has_hung_up(ctrl: BorrowedFd<'_>) -> Result<bool, WireError> {
    // libc, not nix: nix names no POLLRDHUP and reads revents holding it as none at all.
    let hung_up = libc::POLLHUP | libc::POLLRDHUP;
    let mut fd = libc::pollfd {
        fd: ctrl.as_raw_fd(),
        events: libc::POLLIN | hung_up,
        revents: 0,
    };
    // SAFETY: one valid pollfd, ours for the call; timeout 0 never blocks.
    if unsafe { libc::poll(&mut fd, 1, 0) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(fd.revents & hung_up != 0)
}

/// One `recvmsg` with `MSG_CMSG_CLOEXEC`: bytes read, flags, and every descriptor the kernel
/// installed, owned. Done with `libc` rather than `nix::sys::socket::recvmsg` because `nix`
/// will not iterate control data marked `MSG_CTRUNC`, and the descriptors the kernel did
/// install before it ran out of room would then never be closed.
fn recv_raw(
    ctrl: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<(usize, MsgFlags, Vec<OwnedFd>), WireError> {
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    const SPACE: usize = cmsg_space(MAX_FDS);
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null name, no buffers); the fields set below point
    // at `iov` and `control`, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: `msg` describes buffers we own for the duration of the call; the kernel
        // writes at most their lengths.
        let n = unsafe { libc::recvmsg(ctrl.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    };
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by the kernel: `msg_control`/`msg_controllen` describe the
    // control data it wrote (with MSG_CTRUNC: the headers that fit, each `cmsg_len` covering
    // only what it wrote). The CMSG_* macros stay within `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let len = ((*c).cmsg_len as usize).saturating_sub(header);
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    // SAFETY: the kernel installed this descriptor in our table for this
                    // message (SCM_RIGHTS); nothing else refers to it, so it becomes owned
                    // exactly once, here.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let bytes = usize::try_from(n).unwrap_or(0);
    Ok((bytes, MsgFlags::from_bits_truncate(msg.msg_flags), fds))
}

/// Bytes of control buffer for `n` descriptors in one `SCM_RIGHTS` message.
const fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a length from its argument; it touches no memory.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
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
            ToDispatcher::Ready { ack: true },
            ToDispatcher::Taken { conn: 8 },
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
        assert!(ToDispatcher::decode("READY ACK more").is_err());
        assert!(ToDispatcher::decode("TAKEN").is_err());
        let e = ToDispatcher::decode("TAKEN x").expect_err("bad id");
        assert!(e.to_string().contains("connection id"), "{e}");
        assert_eq!(ToDispatcher::Ready { ack: true }.encode(), "READY ACK");
        assert_eq!(ToDispatcher::Taken { conn: 7 }.encode(), "TAKEN 7");
    }

    fn stats_sample() -> WorkerStats {
        let mut s = WorkerStats {
            delivered: 1,
            deferred: 2,
            refused: 3,
            bytes: 4096,
            latency_sum_micros: 123_456,
            ..WorkerStats::default()
        };
        for (i, b) in s.latency_buckets.iter_mut().enumerate() {
            *b = i as u64 * 10;
        }
        s
    }

    #[test]
    fn stats_round_trip() {
        let m = ToDispatcher::Stats(stats_sample());
        let text = m.encode();
        assert!(
            text.starts_with("STATS 1 2 3 4096 123456 0 10 20 "),
            "{text}"
        );
        assert_eq!(text.split(' ').count(), 1 + STATS_FIELDS);
        assert_eq!(ToDispatcher::decode(&text).expect("decodes"), m);
    }

    #[test]
    fn the_longest_stats_fits_one_message() {
        let s = WorkerStats {
            delivered: u64::MAX,
            deferred: u64::MAX,
            refused: u64::MAX,
            bytes: u64::MAX,
            latency_buckets: [u64::MAX; LATENCY_BUCKETS],
            latency_sum_micros: u64::MAX,
        };
        let m = ToDispatcher::Stats(s);
        let text = m.encode();
        assert!(text.len() <= MAX_MESSAGE, "{} bytes", text.len());
        assert_eq!(ToDispatcher::decode(&text).expect("decodes"), m);
    }

    /// `STATS` followed by the sample's fields with field `i` replaced by `with`.
    fn stats_with_field(i: usize, with: &str) -> String {
        let text = ToDispatcher::Stats(stats_sample()).encode();
        let mut f: Vec<&str> = text.split(' ').collect();
        f[1 + i] = with;
        f.join(" ")
    }

    fn assert_malformed(text: &str, reason: &str) {
        match ToDispatcher::decode(text) {
            Err(WireError::Malformed { reason: r, .. }) => assert_eq!(r, reason, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn stats_with_too_few_or_too_many_fields_is_malformed() {
        let text = ToDispatcher::Stats(stats_sample()).encode();
        let shorter = text.rsplit_once(' ').expect("fields").0;
        assert_malformed(shorter, "too few fields");
        assert_malformed(&format!("{text} 7"), "too many fields");
        assert_malformed("STATS 1", "too few fields");
        // `STATS` alone has no fields at all: not a STATS message.
        assert!(matches!(
            ToDispatcher::decode("STATS"),
            Err(WireError::Unknown(_))
        ));
    }

    #[test]
    fn stats_with_a_field_that_is_not_digits_is_malformed() {
        for with in ["x", "+1", "-1", "1.0", "0x10", "", " 1"] {
            assert_malformed(
                &stats_with_field(3, with),
                "a count that is not a decimal number",
            );
        }
        // A trailing space is one field too many (an empty one).
        assert_malformed(
            &format!("{} ", ToDispatcher::Stats(stats_sample()).encode()),
            "too many fields",
        );
    }

    #[test]
    fn stats_with_a_count_over_u64_is_malformed() {
        assert_malformed(
            &stats_with_field(0, "18446744073709551616"),
            "a count over 2^64-1",
        );
        assert!(ToDispatcher::decode(&stats_with_field(0, "18446744073709551615")).is_ok());
    }

    /// Sends one packet with `fds` as SCM_RIGHTS, whatever their number (the protocol's own
    /// send refuses wrong counts, a hostile or broken peer does not).
    fn send_raw(ctrl: BorrowedFd<'_>, text: &[u8], fds: &[RawFd]) {
        let iov = [IoSlice::new(text)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(ctrl.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("sendmsg");
    }

    /// A pipe whose write end is sent around: when every copy of the write end is closed, a
    /// read from the read end says end of file; while one copy is open anywhere in this
    /// process, it says `WouldBlock`. That proves a leak or its absence whatever other tests
    /// running in parallel threads open and close.
    fn pipe_probe() -> (std::fs::File, OwnedFd) {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .expect("pipe");
        (std::fs::File::from(r), w)
    }

    fn all_copies_closed(read_end: &mut std::fs::File) -> bool {
        let mut byte = [0u8; 1];
        match read_end.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => panic!("nothing was written to the probe pipe"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("reading the probe pipe: {e}"),
        }
    }

    #[test]
    fn truncated_control_data_closes_every_descriptor_that_came() {
        let (a, b) = control_pair().expect("pair");
        let (mut probe, w) = pipe_probe();
        // Eight copies; the receiver has room for four: the kernel installs four and sets
        // MSG_CTRUNC. Those four must be closed, not leaked.
        let copies = [w.as_raw_fd(); 8];
        send_raw(a.as_fd(), b"DRAIN", &copies);
        drop(w);
        let e = recv_from_dispatcher(b.as_fd()).expect_err("truncated");
        assert!(
            matches!(e, WireError::Truncated(f) if f.contains(MsgFlags::MSG_CTRUNC)),
            "{e}"
        );
        assert!(
            all_copies_closed(&mut probe),
            "a descriptor received with truncated control data is still open"
        );
    }

    #[test]
    fn descriptors_with_a_message_that_takes_none_are_closed() {
        let (a, b) = control_pair().expect("pair");
        let (mut probe, w) = pipe_probe();
        send_raw(b.as_fd(), b"READY", &[w.as_raw_fd(), w.as_raw_fd()]);
        drop(w);
        let e = recv_from_worker(a.as_fd()).expect_err("descriptors");
        assert!(matches!(e, WireError::Descriptors { count: 2, .. }), "{e}");
        assert!(
            all_copies_closed(&mut probe),
            "a received descriptor leaked"
        );
    }

    #[test]
    fn an_empty_packet_is_an_error_and_not_the_end() {
        let (a, b) = control_pair().expect("pair");
        send_raw(b.as_fd(), b"", &[]);
        send_to_dispatcher(b.as_fd(), &ToDispatcher::Draining).expect("send");
        let e = recv_from_worker(a.as_fd()).expect_err("empty packet");
        assert!(matches!(e, WireError::Empty), "{e}");
        assert_eq!(
            recv_from_worker(a.as_fd()).expect("the next message"),
            Some(ToDispatcher::Draining)
        );
        // The other direction, to a worker's blocking end.
        send_raw(a.as_fd(), b"", &[]);
        let e = recv_from_dispatcher(b.as_fd()).expect_err("empty packet");
        assert!(matches!(e, WireError::Empty), "{e}");
        drop(a);
        assert!(recv_from_dispatcher(b.as_fd()).expect("eof").is_none());
    }

    #[test]
    fn nothing_to_read_on_a_non_blocking_end_is_would_block() {
        let (a, _b) = control_pair().expect("pair");
        let e = recv_from_worker(a.as_fd()).expect_err("nothing sent");
        assert!(e.is_would_block(), "{e}");
        assert!(!WireError::Empty.is_would_block());
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
