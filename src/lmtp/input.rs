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
//! command with CR alone is answered without the server waiting for a byte that never comes. Message data is read line by line: the `.` line ends it, a leading `.` is
//! removed from other lines (RFC 5321 §4.5.2); data beyond the size limit is read and thrown
//! away so that the replies can still be sent in order.

use std::io::{self, Read, Write};

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

const READ_CHUNK: usize = 64 * 1024;

/// Buffered reading and reply batching over a stream.
pub struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    mode: Terminators,
    /// A bare CR ended the last read and was taken as a line end: an LF that comes next is
    /// its second half and is dropped.
    skip_lf: bool,
}

impl<S: Read + Write> Wire<S> {
    pub fn new(stream: S, mode: Terminators) -> Wire<S> {
        Wire {
            stream,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            out: Vec::with_capacity(1024),
            mode,
            skip_lf: false,
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

    /// Sends the collected replies.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Gives back memory a large message made the read buffer take, keeping what is
    /// buffered.
    pub fn shrink(&mut self) {
        if self.buf.len() > 2 * READ_CHUNK && self.end - self.start <= READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
        }
    }

    /// Whether input is buffered that has not been read yet.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Reads more input, sending collected replies first. Returns the octets read.
    fn fill(&mut self) -> Result<usize, WireError> {
        self.flush().map_err(WireError::from_io)?;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(WireError::Closed),
                Ok(n) => {
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

    /// The next line, without its terminator, at most `max` octets.
    pub fn read_line(&mut self, max: usize) -> Result<Line, WireError> {
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
            self.fill()?;
        }
    }

    /// Reads message data up to and including the `.` line into `body` (CRLF line ends,
    /// unstuffed), keeping at most `limit` octets.
    pub fn read_data(
        &mut self,
        body: &mut impl Sink,
        limit: u64,
    ) -> Result<DataOutcome, WireError> {
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
                self.fill()?;
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
                self.fill()?;
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
                        self.fill()?;
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
        w.shrink();
        assert!(w.buf.len() <= 2 * READ_CHUNK);
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
