//! The connection's bytes: command lines and message data in, replies out.
//!
//! [`Wire`] keeps one read buffer and one reply buffer. Replies are collected and sent when
//! the client has nothing more buffered, that is just before the server would wait for input:
//! so a pipelined batch of commands (RFC 2920) gets its replies in one packet, and a client
//! that waits for each reply gets it at once.
//!
//! Line terminators follow the channel's keyword: `lmtp`/`lmtp_crlf` end lines only with
//! CRLF (a command ending in a bare LF is answered with an error; a bare LF in message data is
//! kept as data); `lmtp_lf` also ends lines with a bare LF, `lmtp_cr` and `lmtp_crorlf` with
//! a bare LF or a bare CR (all stored as CRLF). A bare CR is taken as a line end the moment it
//! arrives, and an LF that follows it in the next read is dropped, so a client that ends a
//! command with CR alone is answered without the server waiting for a byte that never comes.
//! Message data is read line by line: the `.` line ends it, a leading `.` is removed from
//! other lines (RFC 5321 §4.5.2); data beyond the size limit is read and thrown away so that
//! the replies can still be sent in order.
//!
//! Time limits ([`TimeLimits`], for a wire made with [`Wire::timed`]) are deadlines for a
//! whole command line and for the whole message data, not for each `read()`: a client that
//! trickles a line one byte at a time would otherwise hold its connection, and a worker's
//! connection slot, for ever (the attack Postfix's `smtpd_per_record_deadline` answers). The
//! clock of a command line starts when the server begins waiting for it, after the replies to
//! what came before were sent; the clock of the message data starts when the `354` reply has
//! been sent, and every octet of data (up to the size limit) earns a little more time, at
//! [`TimeLimits::data_rate`] octets a second, as Postfix's `smtpd_min_data_rate` does, so that
//! a large message on a slow link is not cut off while a trickle is. No single wait is longer
//! than the limit itself, so a silent client is timed out as before. Before each read the
//! stream's read timeout is set to the time left; a deadline already passed is a timeout
//! without another read.
//!
//! Memory: a connection that waits for its client holds little, because relays keep many
//! connections open and idle. The read buffer starts at [`SMALL_CHUNK`] octets, enough for
//! command lines; a read that fills all the room it was given doubles it, up to
//! [`READ_CHUNK`], so message data is soon read in large pieces (a 64 KiB message in a
//! handful of reads, not in a thousand small ones); and once the session waits for a command
//! again with (almost) nothing buffered, the buffers go back to their small sizes
//! ([`buffer_size`] decides, without I/O).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::body::Sink;

/// Which line ends the channel accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminators {
    /// CRLF only (`lmtp`, `lmtp_crlf`).
    Crlf,
    /// CRLF or a bare LF (`lmtp_lf`).
    CrlfOrLf,
    /// CRLF, a bare LF or a bare CR (`lmtp_cr`, `lmtp_crorlf`).
    Any,
}

impl Terminators {
    /// Whether a bare LF ends a line.
    fn lf_ends_lines(self) -> bool {
        self != Terminators::Crlf
    }
}

/// A command line, or why it is not one.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(Vec<u8>),
    /// Longer than the limit; the rest of it was read and dropped.
    TooLong,
    /// Ended by a bare LF where only CRLF ends lines.
    BareLf,
}

/// How the message data went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    /// The data went beyond the limit; what was kept is cut short and must not be stored.
    pub too_big: bool,
    /// Octets the message had (CRLF form, after unstuffing), counted also beyond the limit.
    pub size: u64,
    pub lines: u64,
    pub has_nul: bool,
    /// Keeping the data failed (the temporary file of a large message): nothing may be
    /// stored, and the text says why.
    pub keep_failed: Option<String>,
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the client closed the connection")]
    Closed,
    #[error("timed out waiting for the client")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// A socket timeout (reading, or writing to a client that does not read) is a
    /// [`WireError::Timeout`]; other errors stay what they are.
    pub fn from_io(e: io::Error) -> WireError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::Timeout,
            _ => WireError::Io(e),
        }
    }
}

/// The read buffer's size while the session waits for commands.
pub const SMALL_CHUNK: usize = 1024;
/// The most a read asks for once reads keep filling the buffer (message data). A line longer
/// than the buffer still grows it (a command line only up to its limit; message data moves
/// a long line's head to the body beyond this size).
pub const READ_CHUNK: usize = 64 * 1024;
/// The reply buffer's capacity while the session waits (a greeting, an `LHLO` reply).
const OUT_CHUNK: usize = 1024;

/// What the next read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A command line: the session is idle while nothing of it has arrived.
    Command,
    /// Message data.
    Data,
}

/// The read buffer as [`buffer_size`] sees it before a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BufferState {
    /// Its size now.
    len: usize,
    /// Octets read and not yet taken (moved to its front).
    held: usize,
    /// The previous read filled all the room it was given: the client sends faster than
    /// reads of this size take it.
    last_read_filled: bool,
    reading: Reading,
}

/// The size the read buffer should have before the next read: back to [`SMALL_CHUNK`] when
/// the session is idle (it waits for a command, at most half of that is buffered, and the
/// last read did not fill its room, which would mean more is on its way); doubled when there
/// is no room left (a line longer than the buffer); doubled up to [`READ_CHUNK`] when the
/// last read filled the room it had; else unchanged.
fn buffer_size(b: BufferState) -> usize {
    let idle = b.reading == Reading::Command && b.held <= SMALL_CHUNK / 2 && !b.last_read_filled;
    if idle && b.len > SMALL_CHUNK {
        SMALL_CHUNK
    } else if b.held == b.len {
        b.len * 2
    } else if b.last_read_filled && b.len < READ_CHUNK {
        (b.len * 2).min(READ_CHUNK)
    } else {
        b.len
    }
}

/// How long a client may take (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    /// A whole command line, and the longest wait for one (`COMMAND_RECEIVE_TIME`).
    pub command: Duration,
    /// The whole message data before the allowance below, and the longest wait for a piece
    /// of it (`DATA_RECEIVE_TIME`).
    pub data: Duration,
    /// Each this many octets of message data, up to the size limit, give the data one more
    /// second; 0 gives none.
    pub data_rate: u64,
}

/// A stream whose reads and writes can be bounded in time: the connection's socket.
pub trait Timeouts {
    /// Makes a read that waits longer than `limit` fail with a timeout.
    fn set_read_timeout(&self, limit: Duration) -> io::Result<()>;
    /// Makes a write that waits longer than `limit` fail with a timeout.
    fn set_write_timeout(&self, limit: Duration) -> io::Result<()>;
    /// Writes what the stream takes now, without waiting: `WouldBlock` when it takes
    /// nothing. A stream that cannot say so always waits (the default).
    fn write_now(&self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Timeouts for &TcpStream {
    fn set_read_timeout(&self, limit: Duration) -> io::Result<()> {
        TcpStream::set_read_timeout(self, Some(limit))
    }
    fn set_write_timeout(&self, limit: Duration) -> io::Result<()> {
        TcpStream::set_write_timeout(self, Some(limit))
    }
    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: `buf` is valid for `buf.len()` octets for the call; the descriptor is the
        // stream's own, open while `self` is borrowed.
        let n = unsafe {
            libc::send(
                self.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

/// What one line or one message may take; the start of its clock is the first wait.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// The time the whole may take before any allowance is earned; also the longest single
    /// wait.
    limit: Duration,
    /// Octets that may still earn time: the size limit, counted down as data arrives.
    earn: u64,
    /// Octets that earn one second; never 0 while `earn` is not 0.
    rate: u64,
}

/// The time limit of the line or message being read now.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// Nothing is being read, or the wire has no time limits.
    Off,
    /// Reading has begun, but nothing has been waited for yet.
    Armed(Budget),
    /// The clock runs: the whole must be in by `at`.
    Running { at: Instant, budget: Budget },
}

/// Time limits and how to apply them to the stream's reads and writes.
struct Timing<S> {
    limits: TimeLimits,
    set_read_timeout: fn(&S, Duration) -> io::Result<()>,
    set_write_timeout: fn(&S, Duration) -> io::Result<()>,
    write_now: fn(&S, &[u8]) -> io::Result<usize>,
}

/// Buffered reading and reply batching over a stream.
pub struct Wire<S> {
    stream: S,
    /// Input; `buf[start..end]` is what has been read and not yet taken
    /// (`start <= end <= buf.len()`).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled all of `buf[end..]` it was given (see [`buffer_size`]).
    last_read_filled: bool,
    out: Vec<u8>,
    mode: Terminators,
    /// A bare CR ended the last read and was taken as a line end: an LF that comes next is
    /// its second half and is dropped.
    skip_lf: bool,
    /// `None`: reads wait as long as the stream lets them (tests, fuzzing).
    timing: Option<Timing<S>>,
    /// Always [`Deadline::Off`] outside `read_line` and `read_data`.
    deadline: Deadline,
    /// The read timeout last set on the stream (only the wire sets it while it reads).
    read_timeout: Option<Duration>,
}

impl<S: Read + Write + Timeouts> Wire<S> {
    /// A wire whose command lines and message data must arrive within `limits`, and whose
    /// replies must be taken by the client within the command limit.
    pub fn timed(stream: S, mode: Terminators, limits: TimeLimits) -> Wire<S> {
        let mut wire = Wire::new(stream, mode);
        wire.timing = Some(Timing {
            limits,
            set_read_timeout: <S as Timeouts>::set_read_timeout,
            set_write_timeout: <S as Timeouts>::set_write_timeout,
            write_now: <S as Timeouts>::write_now,
        });
        wire
    }
}

impl<S: Read + Write> Wire<S> {
    /// A wire without time limits of its own.
    pub fn new(stream: S, mode: Terminators) -> Wire<S> {
        Wire {
            stream,
            buf: vec![0; SMALL_CHUNK],
            start: 0,
            end: 0,
            last_read_filled: false,
            out: Vec::with_capacity(OUT_CHUNK),
            mode,
            skip_lf: false,
            timing: None,
            deadline: Deadline::Off,
            read_timeout: None,
        }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The reply buffer: replies appended here go out at the next [`Wire::flush`] or before
    /// the next wait for input.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Sends the collected replies. With time limits, all of them must be taken within
    /// `COMMAND_RECEIVE_TIME`, not each write: a client that reads its replies a few octets
    /// at a time (after pipelining many commands) would otherwise hold its slot for ever.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Some(timing) = &self.timing else {
            self.stream.write_all(&self.out)?;
            self.out.clear();
            return Ok(());
        };
        // First without waiting: replies that fit in the socket's send buffer, as nearly all
        // do, need no time limit set (a system call saved per flush).
        let mut sent = match (timing.write_now)(&self.stream, &self.out) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => return Err(e),
        };
        let limit = timing.limits.command;
        let at = Instant::now() + limit;
        while sent < self.out.len() {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not take its replies within COMMAND_RECEIVE_TIME",
                ));
            }
            (timing.set_write_timeout)(&self.stream, left.min(limit))?;
            match self.stream.write(&self.out[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Whether input is buffered that has not been read yet.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Reads more input, sending collected replies first, into a buffer sized for what is
    /// read ([`buffer_size`]). Returns the octets read.
    fn fill(&mut self, reading: Reading) -> Result<usize, WireError> {
        self.flush().map_err(WireError::from_io)?;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let size = buffer_size(BufferState {
            len: self.buf.len(),
            held: self.end,
            last_read_filled: self.last_read_filled,
            reading,
        });
        if size < self.buf.len() {
            // Idle: the memory a message or a long batch of commands needed goes back.
            self.buf.truncate(size);
            self.buf.shrink_to_fit();
        } else if size > self.buf.len() {
            self.buf.resize(size, 0);
        }
        if reading == Reading::Command {
            // Sent and empty: the room many replies to a pipelined batch took goes back too.
            self.out.shrink_to(OUT_CHUNK);
        }
        loop {
            self.limit_the_wait()?;
            let room = self.buf.len() - self.end;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(WireError::Closed),
                Ok(n) => {
                    self.last_read_filled = n == room;
                    self.earn(n);
                    let n = if self.mode == Terminators::Any {
                        self.bare_cr_to_lf(n)
                    } else {
                        n
                    };
                    if n == 0 {
                        // Only the LF of a CRLF cut by the read: read on.
                        continue;
                    }
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::from_io(e)),
            }
        }
    }

    /// Starts the clock at the first wait, and bounds the next read by the time left: a
    /// deadline already passed is a timeout.
    fn limit_the_wait(&mut self) -> Result<(), WireError> {
        let now = Instant::now();
        if let Deadline::Armed(budget) = self.deadline {
            self.deadline = Deadline::Running {
                at: now + budget.limit,
                budget,
            };
        }
        let (Deadline::Running { at, budget }, Some(timing)) = (self.deadline, &self.timing) else {
            return Ok(());
        };
        let left = at.saturating_duration_since(now);
        if left.is_zero() {
            return Err(WireError::Timeout);
        }
        let wait = left.min(budget.limit);
        // The first wait of each line is the whole limit: the socket has it already from
        // the line before (one system call saved per command of a session).
        if self.read_timeout == Some(wait) {
            return Ok(());
        }
        (timing.set_read_timeout)(&self.stream, wait).map_err(WireError::Io)?;
        self.read_timeout = Some(wait);
        Ok(())
    }

    /// Moves the deadline on for `n` octets of message data, while they are within the size
    /// limit.
    fn earn(&mut self, n: usize) {
        if let Deadline::Running { at, budget } = &mut self.deadline {
            let credit = budget.earn.min(n as u64);
            if credit > 0 {
                budget.earn -= credit;
                *at += Duration::from_secs_f64(credit as f64 / budget.rate as f64);
            }
        }
    }

    /// Sets the time limit of what is read next: a command line, or (`data_size_limit` given)
    /// message data of at most that many octets.
    fn arm(&mut self, data_size_limit: Option<u64>) {
        self.deadline = match (&self.timing, data_size_limit) {
            (None, _) => Deadline::Off,
            (Some(t), None) => Deadline::Armed(Budget {
                limit: t.limits.command,
                earn: 0,
                rate: 0,
            }),
            (Some(t), Some(size)) => Deadline::Armed(Budget {
                limit: t.limits.data,
                earn: if t.limits.data_rate == 0 { 0 } else { size },
                rate: t.limits.data_rate,
            }),
        };
    }

    /// In the `n` octets just read (at `end`), turns each bare CR into an LF (a line end),
    /// keeps CRLF, and drops the LF that completes a CR taken as a line end at the end of the
    /// previous read. Returns how many octets remain.
    fn bare_cr_to_lf(&mut self, n: usize) -> usize {
        let (from, to) = (self.end, self.end + n);
        let mut w = from;
        for r in from..to {
            let b = self.buf[r];
            if std::mem::take(&mut self.skip_lf) && b == b'\n' {
                continue;
            }
            self.buf[w] = match b {
                b'\r' if r + 1 < to && self.buf[r + 1] == b'\n' => b'\r',
                b'\r' if r + 1 == to => {
                    self.skip_lf = true;
                    b'\n'
                }
                b'\r' => b'\n',
                other => other,
            };
            w += 1;
        }
        w - from
    }

    /// The next line, without its terminator, at most `max` octets; within the command time
    /// limit.
    pub fn read_line(&mut self, max: usize) -> Result<Line, WireError> {
        self.arm(None);
        let line = self.next_line(max);
        self.deadline = Deadline::Off;
        line
    }

    fn next_line(&mut self, max: usize) -> Result<Line, WireError> {
        let mut scanned = 0;
        let mut too_long = false;
        loop {
            let pending = &self.buf[self.start + scanned..self.end];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let lf = self.start + scanned + i;
                let line_start = self.start;
                self.start = lf + 1;
                if too_long {
                    return Ok(Line::TooLong);
                }
                let cr = lf > line_start && self.buf[lf - 1] == b'\r';
                let text_end = if cr { lf - 1 } else { lf };
                // Length first, as when the line was dropped while scanning: which error a
                // line gets must not depend on how its bytes were split into reads.
                if text_end - line_start > max {
                    return Ok(Line::TooLong);
                }
                if !cr && !self.mode.lf_ends_lines() {
                    return Ok(Line::BareLf);
                }
                return Ok(Line::Text(self.buf[line_start..text_end].to_vec()));
            }
            scanned = self.end - self.start;
            if scanned > max + 1 {
                // Drop what we have of the over-long line and keep looking for its end.
                too_long = true;
                self.start = self.end;
                scanned = 0;
            }
            self.fill(Reading::Command)?;
        }
    }

    /// Reads message data up to and including the `.` line into `body` (CRLF line ends,
    /// unstuffed), keeping at most `limit` octets; within the data time limit.
    pub fn read_data(
        &mut self,
        body: &mut impl Sink,
        limit: u64,
    ) -> Result<DataOutcome, WireError> {
        self.arm(Some(limit));
        let outcome = self.data_lines(body, limit);
        self.deadline = Deadline::Off;
        outcome
    }

    fn data_lines(&mut self, body: &mut impl Sink, limit: u64) -> Result<DataOutcome, WireError> {
        let mut outcome = DataOutcome::default();
        // Offset of the current line's start, relative to self.start, while it is incomplete.
        let mut scanned = 0;
        loop {
            let pending = &self.buf[self.start + scanned..self.end];
            let Some(i) = pending.iter().position(|&b| b == b'\n') else {
                // No complete line. A long line without a line end: move its head to the
                // body now, so the buffer does not grow without bound.
                // A trailing CR stays: it may begin the CRLF that ends the line.
                let have = self.end - self.start;
                if have > READ_CHUNK {
                    let from = if self.buf[self.start] == b'.' {
                        self.start + 1
                    } else {
                        self.start
                    };
                    let upto = if self.buf[self.end - 1] == b'\r' {
                        self.end - 1
                    } else {
                        self.end
                    };
                    keep(body, &mut outcome, limit, &self.buf[from..upto]);
                    self.start = upto;
                    scanned = 0;
                    // The rest of this line is data, even if it begins with a dot.
                    self.continue_line(body, &mut outcome, limit)?;
                    continue;
                }
                scanned = have;
                self.fill(Reading::Data)?;
                continue;
            };
            let lf = self.start + scanned + i;
            let line = &self.buf[self.start..lf + 1];
            let cr = line.len() >= 2 && line[line.len() - 2] == b'\r';
            if !cr && !self.mode.lf_ends_lines() {
                // A bare LF is data here: keep looking for the CRLF that ends the line.
                scanned = lf + 1 - self.start;
                continue;
            }
            let line_start = self.start;
            let text_end = lf + 1 - if cr { 2 } else { 1 };
            if &self.buf[line_start..text_end] == b"." {
                self.start = lf + 1;
                return Ok(outcome);
            }
            let text_start = if self.buf[line_start] == b'.' {
                line_start + 1
            } else {
                line_start
            };
            outcome.lines += 1;
            keep(body, &mut outcome, limit, &self.buf[text_start..text_end]);
            keep(body, &mut outcome, limit, b"\r\n");
            self.start = lf + 1;
            scanned = 0;
        }
    }

    /// After part of a very long line was stored: stores the rest of it, up to and including
    /// its line end, as plain data.
    fn continue_line(
        &mut self,
        body: &mut impl Sink,
        outcome: &mut DataOutcome,
        limit: u64,
    ) -> Result<(), WireError> {
        loop {
            if self.start == self.end {
                self.fill(Reading::Data)?;
            }
            let pending = &self.buf[self.start..self.end];
            let end_at = match self.mode {
                Terminators::Crlf => pending.windows(2).position(|w| w == b"\r\n").map(|i| i + 2),
                Terminators::CrlfOrLf | Terminators::Any => {
                    pending.iter().position(|&b| b == b'\n').map(|i| i + 1)
                }
            };
            match end_at {
                Some(n) => {
                    let text = &pending[..n];
                    let text = text
                        .strip_suffix(b"\r\n")
                        .or_else(|| text.strip_suffix(b"\n"))
                        .unwrap_or(text);
                    let text = text.to_vec();
                    keep(body, outcome, limit, &text);
                    keep(body, outcome, limit, b"\r\n");
                    outcome.lines += 1;
                    self.start += n;
                    return Ok(());
                }
                None => {
                    // Keep a trailing CR back: it may begin the CRLF.
                    let n = if pending.ends_with(b"\r") {
                        pending.len() - 1
                    } else {
                        pending.len()
                    };
                    if n == 0 {
                        // Only a CR is buffered: read on.
                        self.fill(Reading::Data)?;
                        continue;
                    }
                    let text = pending[..n].to_vec();
                    keep(body, outcome, limit, &text);
                    self.start += n;
                }
            }
        }
    }
}

/// Appends `bytes` to the body while it stays within `limit` and keeping works; counts them
/// in any case.
fn keep(body: &mut impl Sink, outcome: &mut DataOutcome, limit: u64, bytes: &[u8]) {
    outcome.size += bytes.len() as u64;
    if bytes.contains(&0) {
        outcome.has_nul = true;
    }
    if outcome.too_big || outcome.size > limit {
        outcome.too_big = true;
        return;
    }
    if outcome.keep_failed.is_some() {
        return;
    }
    if let Err(e) = body.put(bytes) {
        outcome.keep_failed = Some(e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that reads from `input` in pieces of `step` octets and records writes.
    struct Fake {
        input: Cursor<Vec<u8>>,
        step: usize,
        written: Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A stream that yields one octet per read (or, `whole_lines`, up to the end of a line),
    /// `pause` after the last, and records the read timeouts the wire sets (it does not wait
    /// for them: the wire must check its deadline itself before reading again).
    struct Slow {
        input: Cursor<Vec<u8>>,
        pause: Duration,
        whole_lines: bool,
        limits_set: std::cell::RefCell<Vec<Duration>>,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            let rest = &self.input.get_ref()[self.input.position() as usize..];
            let n = if self.whole_lines {
                rest.iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1)
            } else {
                1
            };
            let n = n.min(buf.len());
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Timeouts for Slow {
        fn set_read_timeout(&self, limit: Duration) -> io::Result<()> {
            self.limits_set.borrow_mut().push(limit);
            Ok(())
        }
        fn set_write_timeout(&self, _limit: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    /// A client that takes one octet of the replies per write, `pause` apart.
    struct SlowReader {
        pause: Duration,
        taken: usize,
    }

    impl Read for SlowReader {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    impl Write for SlowReader {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            self.taken += 1;
            Ok(buf.len().min(1))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Timeouts for SlowReader {
        fn set_read_timeout(&self, _limit: Duration) -> io::Result<()> {
            Ok(())
        }
        fn set_write_timeout(&self, _limit: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn replies_taken_an_octet_at_a_time_run_into_the_command_deadline() {
        let limits = TimeLimits {
            command: Duration::from_millis(100),
            data: Duration::from_millis(100),
            data_rate: 0,
        };
        let client = SlowReader {
            pause: Duration::from_millis(10),
            taken: 0,
        };
        let mut wire = Wire::timed(client, Terminators::Crlf, limits);
        wire.out().extend_from_slice(&[b'x'; 1000]);
        let started = Instant::now();
        let e = wire.flush().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(wire.stream().taken < 1000, "every octet was written");
    }

    fn slow(input: &[u8], pause_ms: u64, limits: TimeLimits) -> Wire<Slow> {
        let stream = Slow {
            input: Cursor::new(input.to_vec()),
            pause: Duration::from_millis(pause_ms),
            whole_lines: false,
            limits_set: Default::default(),
        };
        Wire::timed(stream, Terminators::Crlf, limits)
    }

    const MS: Duration = Duration::from_millis(1);

    /// Both limits `ms` milliseconds, and `data_rate`.
    fn limits_of(ms: u32, data_rate: u64) -> TimeLimits {
        TimeLimits {
            command: ms * MS,
            data: ms * MS,
            data_rate,
        }
    }

    #[test]
    fn a_line_trickled_beyond_its_deadline_is_a_timeout() {
        let limits = limits_of(60, 0);
        // 17 octets, 10 ms apart: the line would take 170 ms.
        let mut w = slow(b"MAIL FROM:<a@b>\r\n", 10, limits);
        assert!(matches!(w.read_line(512), Err(WireError::Timeout)));
        let set = w.stream().limits_set.borrow();
        assert!(set.len() < 17, "read on after the deadline: {set:?}");
        assert!(
            set.iter().all(|&d| d > Duration::ZERO && d <= 60 * MS),
            "{set:?}"
        );
        assert!(
            set.windows(2).all(|p| p[1] <= p[0]),
            "the time left grew: {set:?}"
        );
    }

    #[test]
    fn whole_lines_set_the_read_timeout_once_not_per_line() {
        // A client that sends one whole line per read.
        let stream = Slow {
            input: Cursor::new(b"LHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec()),
            pause: Duration::ZERO,
            whole_lines: true,
            limits_set: Default::default(),
        };
        let mut w = Wire::timed(stream, Terminators::Crlf, limits_of(600_000, 0));
        for _ in 0..4 {
            assert!(matches!(w.read_line(512), Ok(Line::Text(_))));
        }
        assert_eq!(
            *w.stream().limits_set.borrow(),
            vec![600_000 * MS],
            "each line's first (and only) wait is the whole limit, set once"
        );
    }

    #[test]
    fn each_command_line_gets_a_clock_of_its_own() {
        let limits = limits_of(2000, 0);
        let mut w = slow(b"NOOP\r\nRSET\r\n", 1, limits);
        assert_eq!(w.read_line(512).unwrap(), Line::Text(b"NOOP".to_vec()));
        let first = w.stream().limits_set.borrow().len();
        assert_eq!(w.read_line(512).unwrap(), Line::Text(b"RSET".to_vec()));
        let set = w.stream().limits_set.borrow();
        // The first wait of the second line may again take the whole limit.
        assert!(set[first] > set[first - 1], "{set:?}");
        assert!(set.iter().all(|&d| d <= 2000 * MS), "{set:?}");
    }

    #[test]
    fn message_data_earns_time_for_the_octets_it_brings() {
        // 60 ms for the data, but every octet earns a second: 20 octets 10 ms apart arrive.
        let limits = limits_of(60, 1);
        let mut w = slow(b"0123456789abcdef\r\n.\r\n", 10, limits);
        let mut body = Vec::new();
        let o = w.read_data(&mut body, 1 << 20).unwrap();
        assert_eq!(body, b"0123456789abcdef\r\n".to_vec());
        assert!(!o.too_big);
        // No single wait was allowed longer than the limit itself.
        let set = w.stream().limits_set.borrow();
        assert!(set.iter().all(|&d| d <= 60 * MS), "{set:?}");
        // Without the allowance, the same data is too slow.
        let limits = TimeLimits {
            data_rate: 0,
            ..limits
        };
        let mut w = slow(b"0123456789abcdef\r\n.\r\n", 10, limits);
        assert!(matches!(
            w.read_data(&mut Vec::new(), 1 << 20),
            Err(WireError::Timeout)
        ));
    }

    #[test]
    fn data_beyond_the_size_limit_earns_no_time() {
        // Each octet earns 100 ms, but only the first one counts under a size limit of 1: the
        // deadline is 160 ms, and 21 octets 10 ms apart take 210 ms.
        let limits = limits_of(60, 10);
        let input = b"0123456789abcdef\r\n.\r\n";
        let mut w = slow(input, 10, limits);
        assert!(matches!(
            w.read_data(&mut Vec::new(), 1),
            Err(WireError::Timeout)
        ));
        let mut w = slow(input, 10, limits);
        assert!(w.read_data(&mut Vec::new(), 1 << 20).is_ok());
    }

    fn wire(input: &[u8], step: usize, mode: Terminators) -> Wire<Fake> {
        Wire::new(
            Fake {
                input: Cursor::new(input.to_vec()),
                step,
                written: Vec::new(),
            },
            mode,
        )
    }

    #[test]
    fn lines_in_any_piece_size() {
        for step in [1, 2, 3, 7, 1000] {
            let mut w = wire(b"LHLO x\r\nNOOP\nQUIT\r\n", step, Terminators::Crlf);
            assert_eq!(w.read_line(512).unwrap(), Line::Text(b"LHLO x".to_vec()));
            assert_eq!(w.read_line(512).unwrap(), Line::BareLf);
            assert_eq!(w.read_line(512).unwrap(), Line::Text(b"QUIT".to_vec()));
            assert!(matches!(w.read_line(512), Err(WireError::Closed)));
            let mut w = wire(b"NOOP\nQUIT\r\n", step, Terminators::CrlfOrLf);
            assert_eq!(w.read_line(512).unwrap(), Line::Text(b"NOOP".to_vec()));
            assert_eq!(w.read_line(512).unwrap(), Line::Text(b"QUIT".to_vec()));
        }
    }

    #[test]
    fn a_bare_cr_ends_lines_under_lmtp_cr_whatever_the_pieces() {
        for step in [1, 2, 3, 5, 1000] {
            let mut w = wire(b"NOOP\rQUIT\r\nRSET\nLHLO\r", step, Terminators::Any);
            for expected in [&b"NOOP"[..], b"QUIT", b"RSET", b"LHLO"] {
                assert_eq!(
                    w.read_line(512).unwrap(),
                    Line::Text(expected.to_vec()),
                    "{step}"
                );
            }
            // Nothing more: the CR that ended LHLO did not make it wait for an LF.
            assert!(matches!(w.read_line(512), Err(WireError::Closed)), "{step}");
            let input = b"a\rb\r\nc\n\r.\rNOOP\r\n";
            let (body, _, next) = data(input, step, Terminators::Any, 1 << 20);
            assert_eq!(body, b"a\r\nb\r\nc\r\n\r\n".to_vec(), "{step}");
            assert_eq!(next, Line::Text(b"NOOP".to_vec()), "{step}");
        }
    }

    #[test]
    fn over_long_lines_are_dropped_whole() {
        let mut input = vec![b'A'; 200_000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut w = wire(&input, 4096, Terminators::Crlf);
        assert_eq!(w.read_line(512).unwrap(), Line::TooLong);
        assert_eq!(w.read_line(512).unwrap(), Line::Text(b"NOOP".to_vec()));
    }

    fn data(
        input: &[u8],
        step: usize,
        mode: Terminators,
        limit: u64,
    ) -> (Vec<u8>, DataOutcome, Line) {
        let mut w = wire(input, step, mode);
        let mut body = Vec::new();
        let o = w.read_data(&mut body, limit).unwrap();
        let next = w.read_line(512).unwrap();
        (body, o, next)
    }

    #[test]
    fn data_is_unstuffed_and_ends_at_the_dot_line() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nbare\nlf\r\n.\r\nQUIT\r\n";
        for step in [1, 2, 5, 64, 100_000] {
            let (body, o, next) = data(input, step, Terminators::Crlf, 1 << 20);
            assert_eq!(
                body,
                b"Subject: x\r\n\r\n.leading dot\r\n".to_vec(),
                "step {step}"
            );
            assert_eq!(o.lines, 3);
            assert!(!o.too_big);
            assert_eq!(next, Line::BareLf);
        }
    }

    #[test]
    fn bare_lf_is_data_under_crlf_and_a_line_end_under_lf() {
        let input = b"a\nb\n.\nc\r\n.\r\nQUIT\r\n";
        let (body, _, next) = data(input, 3, Terminators::Crlf, 1 << 20);
        assert_eq!(body, b"a\nb\n.\nc\r\n".to_vec());
        assert_eq!(next, Line::Text(b"QUIT".to_vec()));
        let (body, _, next) = data(input, 3, Terminators::CrlfOrLf, 1 << 20);
        assert_eq!(body, b"a\r\nb\r\n".to_vec());
        assert_eq!(next, Line::Text(b"c".to_vec()));
    }

    #[test]
    fn limit_nul_and_long_lines() {
        let mut input = b"x\0y\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'L', 300_000));
        input.extend_from_slice(b"\r\n.end\r\n.\r\nQUIT\r\n");
        let (body, o, next) = data(&input, 8192, Terminators::Crlf, 1 << 20);
        assert!(o.has_nul && !o.too_big);
        assert_eq!(o.lines, 3);
        assert_eq!(body.len(), 5 + 300_002 + 5);
        assert!(body.ends_with(b"LL\r\nend\r\n"));
        assert_eq!(o.size, body.len() as u64);
        assert_eq!(next, Line::Text(b"QUIT".to_vec()));
        let (body, o, next) = data(&input, 8192, Terminators::Crlf, 1000);
        assert!(o.too_big && body.len() <= 1000);
        assert_eq!(o.size, 5 + 300_002 + 5);
        assert_eq!(next, Line::Text(b"QUIT".to_vec()));
    }

    #[test]
    fn reads_ending_in_cr_do_not_grow_the_buffer() {
        // One 8 MiB line of bare CRs and text, read in pieces that each end in a CR.
        let piece = [vec![b'A'; 32 * 1024 - 1], vec![b'\r']].concat();
        let mut input = piece.repeat(256);
        input.extend_from_slice(b"\n.\r\nQUIT\r\n");
        let mut w = wire(&input, piece.len(), Terminators::Crlf);
        let mut body = Vec::new();
        let o = w.read_data(&mut body, 1 << 20).unwrap();
        assert!(o.too_big && body.len() <= 1 << 20);
        assert_eq!(o.size, (piece.len() * 256 + 1) as u64);
        assert!(
            w.buf.len() <= 4 * READ_CHUNK,
            "buffer grew to {}",
            w.buf.len()
        );
        assert_eq!(w.read_line(512).unwrap(), Line::Text(b"QUIT".to_vec()));
    }

    fn state(len: usize, held: usize, last_read_filled: bool, reading: Reading) -> BufferState {
        BufferState {
            len,
            held,
            last_read_filled,
            reading,
        }
    }

    #[test]
    fn the_buffer_doubles_while_reads_fill_it_up_to_the_read_chunk() {
        let mut len = SMALL_CHUNK;
        let mut sizes = vec![len];
        while len < READ_CHUNK {
            len = buffer_size(state(len, 10, true, Reading::Data));
            sizes.push(len);
        }
        assert_eq!(len, READ_CHUNK);
        assert_eq!(sizes.len(), 7, "1 KiB to 64 KiB in doublings: {sizes:?}");
        assert_eq!(
            buffer_size(state(READ_CHUNK, 10, true, Reading::Data)),
            READ_CHUNK
        );
        // Reads that leave room do not grow it.
        assert_eq!(buffer_size(state(4096, 10, false, Reading::Data)), 4096);
    }

    #[test]
    fn a_buffer_without_room_doubles_even_beyond_the_read_chunk() {
        assert_eq!(
            buffer_size(state(SMALL_CHUNK, SMALL_CHUNK, false, Reading::Command)),
            2 * SMALL_CHUNK
        );
        assert_eq!(
            buffer_size(state(READ_CHUNK, READ_CHUNK, true, Reading::Data)),
            2 * READ_CHUNK
        );
    }

    #[test]
    fn the_buffer_shrinks_back_only_when_the_session_waits_idle() {
        assert_eq!(
            buffer_size(state(READ_CHUNK, 0, false, Reading::Command)),
            SMALL_CHUNK
        );
        assert_eq!(
            buffer_size(state(READ_CHUNK, SMALL_CHUNK / 2, false, Reading::Command)),
            SMALL_CHUNK
        );
        // Not while message data is read, nor while more is on its way (the last read filled
        // its room), nor while a long command line is being read.
        assert_eq!(
            buffer_size(state(READ_CHUNK, 0, false, Reading::Data)),
            READ_CHUNK
        );
        assert_eq!(buffer_size(state(4096, 0, true, Reading::Command)), 8192);
        assert_eq!(
            buffer_size(state(8192, 3000, false, Reading::Command)),
            8192
        );
    }

    /// A stream that returns its parts one after the other (a read never spans two, as when
    /// the client pauses between them), and records the room each read offered.
    struct Parts {
        parts: std::collections::VecDeque<Vec<u8>>,
        offered: Vec<usize>,
    }

    impl Read for Parts {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.offered.push(buf.len());
            let Some(part) = self.parts.front_mut() else {
                return Ok(0);
            };
            let n = buf.len().min(part.len());
            buf[..n].copy_from_slice(&part[..n]);
            part.drain(..n);
            if part.is_empty() {
                self.parts.pop_front();
            }
            Ok(n)
        }
    }

    impl Write for Parts {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn parts(parts: &[&[u8]]) -> Wire<Parts> {
        Wire::new(
            Parts {
                parts: parts.iter().map(|p| p.to_vec()).collect(),
                offered: Vec::new(),
            },
            Terminators::Crlf,
        )
    }

    /// 64 KiB of message data in 64-octet lines, with the end-of-data line.
    fn message_64k() -> Vec<u8> {
        let mut m = [&[b'x'; 62][..], b"\r\n"].concat().repeat(1024);
        m.extend_from_slice(b".\r\n");
        m
    }

    #[test]
    fn a_connection_waiting_for_its_first_command_holds_a_small_buffer() {
        let mut w = parts(&[b"LHLO relay.example\r\n", b"MAIL FROM:<a@b>\r\n"]);
        assert_eq!(
            w.read_line(512).unwrap(),
            Line::Text(b"LHLO relay.example".to_vec())
        );
        assert_eq!(
            w.read_line(512).unwrap(),
            Line::Text(b"MAIL FROM:<a@b>".to_vec())
        );
        assert_eq!(w.buf.len(), SMALL_CHUNK);
        assert!(w.out.capacity() <= OUT_CHUNK);
    }

    #[test]
    fn a_large_message_is_read_in_growing_pieces_and_the_buffer_shrinks_back_when_idle() {
        let message = message_64k();
        let mut w = parts(&[b"DATA\r\n", &message, b"QUIT\r\n"]);
        assert_eq!(w.read_line(512).unwrap(), Line::Text(b"DATA".to_vec()));
        let mut body = Vec::new();
        let o = w.read_data(&mut body, 1 << 20).unwrap();
        assert_eq!(o.size, 64 * 1024);
        let data_reads = w.stream().offered.len() - 1;
        assert!(
            data_reads <= 10,
            "64 KiB read in {data_reads} reads: {:?}",
            w.stream().offered
        );
        assert_eq!(w.buf.len(), READ_CHUNK, "{:?}", w.stream().offered);
        // Many replies were queued: they go out before the wait, and their room goes too.
        w.out().extend_from_slice(&[b'r'; 16 * 1024]);
        assert_eq!(w.read_line(512).unwrap(), Line::Text(b"QUIT".to_vec()));
        assert_eq!(
            w.buf.len(),
            SMALL_CHUNK,
            "the session waits idle with a large buffer"
        );
        assert!(w.out.capacity() <= OUT_CHUNK, "{}", w.out.capacity());
    }

    #[test]
    fn replies_wait_until_input_runs_dry() {
        let mut w = wire(b"A\r\nB\r\n", 1000, Terminators::Crlf);
        assert_eq!(w.read_line(10).unwrap(), Line::Text(b"A".to_vec()));
        w.out().extend_from_slice(b"reply A\r\n");
        assert!(w.has_buffered());
        assert_eq!(w.read_line(10).unwrap(), Line::Text(b"B".to_vec()));
        assert!(w.stream().written.is_empty());
        w.out().extend_from_slice(b"reply B\r\n");
        assert!(matches!(w.read_line(10), Err(WireError::Closed)));
        assert_eq!(w.stream().written, b"reply A\r\nreply B\r\n".to_vec());
    }
}
