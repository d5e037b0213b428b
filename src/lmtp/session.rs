//! One LMTP session (RFC 2033): greeting, `LHLO`, transactions, `QUIT`.
//!
//! The session decides every reply; the [`Store`] decides where mail goes. After `DATA` the
//! session sends exactly one reply per accepted `RCPT`, in `RCPT` order, duplicates
//! included, each one that recipient's own result; a recipient named twice is stored once.
//! Replies are batched by [`Wire`] so pipelined commands are answered in one write.
//!
//! A message larger than the size its `MAIL FROM ... SIZE=` declared is refused for every
//! recipient and the connection is then closed, as the original server does; a message over
//! the channel's limit, over its `linelimit`, or with NUL characters is refused for every
//! recipient and the session goes on. Nothing is stored unless the whole message arrived.
//!
//! A command line that is not whole within `COMMAND_RECEIVE_TIME`, or message data that does
//! not arrive within `DATA_RECEIVE_TIME` and its allowance (the deadlines are the
//! [`Wire`]'s), gets `421 4.4.2` and the connection is closed.
//!
//! When the worker drains (the dispatcher stops or reloads, or recycles the worker), a
//! session finishes the transaction in progress, then ends: the next command that would
//! start another transaction, and any command but `QUIT` while none is open, is answered
//! `421 4.3.2` and the connection closed; a session waiting idle for its client with no
//! transaction open is answered at once (it marks itself idle on the worker's
//! [`DrainSignal`], which wakes it). Relays cache LMTP connections and send transaction after
//! transaction on one session, so without this a draining worker would never finish. One
//! exception: a session that has completed no transaction yet (handed just before `DRAIN`, as
//! the last connection of a worker recycled by `MAX_LIFE_CONNS` is, or a relay's session
//! between its `LHLO` and its `MAIL`) is owed one: it may still open it within the drain's
//! grace ([`OWED_GRACE`]) and complete it, bounded by the command deadlines like any other.
//!
//! Everything a client wrote that reaches a log line (addresses, arguments, whole command
//! lines in a trace, replies that quote them) goes through [`untrusted`], so a client cannot
//! forge log lines or hide text in them.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Instant, SystemTime};

use crate::log_text::untrusted;
use crate::net_address::address_literal;
use crate::worker::counters::Counters;
use crate::worker::drain::DrainSignal;
#[cfg(doc)]
use crate::worker::drain::OWED_GRACE;

use super::address::{printable, Recipient};
use super::body::Body;
use super::command::{self, Command, Param};
use super::delivery_log::DeliveryLog;
use super::input::{Line, Wire, WireError};
use super::reply::Reply;
use super::settings::{parse_quota, Settings, MAX_COMMAND_LINE, MIN_DATA_RATE};
use super::store::{Message, Store, Target};
use super::trace::{self, TraceInfo};

/// What a session needs besides its socket.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub store: &'a dyn Store,
    pub conn: u64,
    /// The client, its address as the worker runtime canonicalized it (an IPv4 client of the
    /// dual-stack listener as IPv4), so log lines can show it as it is.
    pub client: SocketAddr,
    /// The worker's drain state (see the module comment).
    pub drain: &'a DrainSignal,
    /// The installation's delivery log, which gets every delivery and refusal line too.
    pub delivery_log: Option<&'a DeliveryLog>,
    /// The worker's delivery counters (reported to the dispatcher): every recipient's final
    /// reply class (a refused or deferred `RCPT`, or its reply after `DATA`), the bytes
    /// stored, and each transaction's latency (`src/handoff/stats.rs` says which time).
    pub counters: &'a Counters,
}

/// Logs a delivery or refusal line in the LOGFILE and appends it to the delivery log; when
/// that fails the LOGFILE line is the record, and a warning there says why.
fn record(ctx: &Context<'_>, level: log::Level, text: String) {
    log::log!(level, "{text}");
    if let Some(d) = ctx.delivery_log {
        if let Err(e) = d.write(level, &text) {
            log::warn!("{e}; the line above is only in this LOGFILE");
        }
    }
}

/// A mail transaction in progress.
struct Transaction {
    sender: String,
    declared: Option<u64>,
    recipients: Vec<(Recipient, Target)>,
}

/// What the session was waiting for when its input stopped.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    Command,
    Data,
}

impl Waiting {
    fn doing(self) -> &'static str {
        match self {
            Waiting::Command => "waiting for a command",
            Waiting::Data => "receiving message data",
        }
    }

    /// The limit that ran out, for the log: an operator sees which option to look at.
    fn rule(self, settings: &Settings) -> String {
        match self {
            Waiting::Command => format!(
                "a command line must arrive whole within COMMAND_RECEIVE_TIME ({:.1} s)",
                settings.command_timeout.as_secs_f64()
            ),
            Waiting::Data => format!(
                "message data must arrive within DATA_RECEIVE_TIME ({:.1} s) plus 1 s per {MIN_DATA_RATE} octets received",
                settings.data_timeout.as_secs_f64()
            ),
        }
    }
}

/// How a session ended, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Quit,
    Closed,
    Timeout,
    /// Closed by us after a message exceeded its declared size.
    Oversize,
    /// Closed by us after [`JUNK_COMMAND_LIMIT`] commands that delivered nothing.
    Junk,
    /// Closed by us with `421 4.3.2` because the worker is draining.
    Draining,
    Error(String),
}

/// Commands that deliver nothing (`NOOP`, `RSET`, `VRFY`, `HELP`, `LHLO`, refused and
/// malformed ones) answered between two messages before the connection is closed: each may come just inside
/// `COMMAND_RECEIVE_TIME`, so without a bound a client could hold its slot for ever with them.
/// Postfix's `smtpd_junk_command_limit` has the same default. The count starts again after
/// every message's data.
pub const JUNK_COMMAND_LIMIT: u32 = 100;

struct Session<'a> {
    ctx: &'a Context<'a>,
    /// The socket `wire` reads, for marking the session idle on the drain signal.
    stream: &'a TcpStream,
    wire: Wire<&'a TcpStream>,
    lhlo: Option<String>,
    tx: Option<Transaction>,
    /// Transactions whose message data was read (delivered or refused).
    transactions: u64,
    /// Commands since the last message data that delivered nothing; at most
    /// [`JUNK_COMMAND_LIMIT`].
    junk: u32,
    /// Reused for every message's data (a large one goes to a temporary file).
    body: Body,
}

/// Serves one connection until `QUIT`, end of input, a timeout or an error.
pub fn run(stream: &TcpStream, ctx: &Context<'_>) -> End {
    let settings = ctx.settings;
    // No timeouts are set here: the wire sets the read timeout before each read and the
    // write timeout before each write, from its deadlines (a client that stops reading our
    // replies is timed out like one that stops writing).
    let _ = stream.set_nodelay(true);
    let mut s = Session {
        ctx,
        stream,
        wire: Wire::timed(stream, settings.terminators, settings.time_limits()),
        lhlo: None,
        tx: None,
        transactions: 0,
        junk: 0,
        body: Body::new(&std::env::temp_dir()),
    };
    s.reply(Reply::new(
        220,
        "",
        format!(
            "{} LMTP {} {} ready",
            settings.host,
            settings.kind.program(),
            crate::VERSION
        ),
    ));
    let end = s.serve();
    let flushed = s.wire.flush();
    if end == End::Draining && flushed.is_ok() {
        linger(stream);
    }
    if let Err(e) = flushed {
        if end == End::Quit {
            return End::Error(e.to_string());
        }
    }
    end
}

/// How long a session closed by the drain waits for its client to take the last replies.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes a session ended by us while its client may still be sending (a `QUIT` pipelined
/// behind the end of a message, the rest of a pipelined transaction after a refused `MAIL`):
/// closing with unread input makes the kernel reset the connection and drop the replies not
/// yet delivered, among them the 250 of the message just stored, and the relay would send it
/// again. So: our side is shut for writing (the replies are followed by a clean end of file),
/// and what the client still sends is read and dropped until it closes too, at most
/// [`LINGER`].
fn linger(stream: &TcpStream) {
    use std::io::Read;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let end = std::time::Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

impl Session<'_> {
    fn reply(&mut self, r: Reply) {
        if self.ctx.settings.trace {
            log::info!(
                "trace conn={} <<< {}",
                self.ctx.conn,
                untrusted(&r.to_string())
            );
        }
        r.write_to(self.wire.out());
    }

    fn serve(&mut self) -> End {
        loop {
            if self.junk >= JUNK_COMMAND_LIMIT {
                return self.too_much_junk();
            }
            // Every command counts but an accepted MAIL or RCPT, and DATA that reads a message.
            self.junk += 1;
            // With no transaction open the session is idle while it waits, and a drain ends
            // it (waking it if need be); within a transaction it is never disturbed.
            let (drain, stream) = (self.ctx.drain, self.stream);
            let idle = if self.tx.is_none() {
                match drain.idle(stream.as_fd(), self.owed()) {
                    Some(mark) => Some(mark),
                    None => return self.shutting_down(),
                }
            } else {
                None
            };
            let read = self.wire.read_line(MAX_COMMAND_LINE);
            let was_idle = idle.is_some();
            drop(idle);
            let line = match read {
                Ok(l) => l,
                // Woken by the drain (or the client left just then: the 421 is harmless).
                Err(WireError::Closed) if was_idle && drain.refuses(self.owed()) => {
                    return self.shutting_down()
                }
                Err(e) => return self.stopped(e, Waiting::Command),
            };
            if self.tx.is_none() && drain.refuses(self.owed()) && !is_quit(&line) {
                return self.shutting_down();
            }
            let text = match line {
                Line::TooLong => {
                    self.reply(Reply::new(
                        500,
                        "5.5.2",
                        format!("Syntax error: line too long (at most {MAX_COMMAND_LINE} octets)"),
                    ));
                    continue;
                }
                Line::BareLf => {
                    self.reply(Reply::new(
                        500,
                        "5.5.2",
                        "Syntax error: the line ends in a bare LF; end lines with CRLF",
                    ));
                    continue;
                }
                Line::Text(t) => t,
            };
            if self.ctx.settings.trace {
                // The octets as they came, before any decoding: the trace shows what was sent.
                log::info!("trace conn={} >>> {}", self.ctx.conn, untrusted(&text));
            }
            if text.contains(&0) {
                self.reply(Reply::new(
                    500,
                    "5.5.2",
                    "Syntax error: NUL in a command line",
                ));
                continue;
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            let cmd = match command::parse(&text) {
                Ok(c) => c,
                Err(r) => {
                    self.reply(r);
                    continue;
                }
            };
            match cmd {
                Command::Quit => {
                    let host = self.ctx.settings.host.clone();
                    self.reply(Reply::new(
                        221,
                        "2.0.0",
                        format!("{host} closing connection"),
                    ));
                    return End::Quit;
                }
                Command::Data => {
                    let messages = self.transactions;
                    let end = self.data();
                    if self.transactions > messages {
                        // Message data was read: the count starts again. A refused DATA counts.
                        self.junk = 0;
                    }
                    if let Some(end) = end {
                        return end;
                    }
                }
                other => {
                    let moves_on = matches!(other, Command::Mail { .. } | Command::Rcpt { .. });
                    let is_rcpt = matches!(other, Command::Rcpt { .. });
                    let r = self.command(other);
                    if moves_on && r.code < 400 {
                        self.junk -= 1;
                    }
                    if is_rcpt && r.code >= 400 {
                        // That recipient's final answer; an accepted one is counted after DATA.
                        self.ctx.counters.recipient(r.code);
                    }
                    self.reply(r);
                }
            }
        }
    }

    /// Whether the session is owed a transaction when the worker drains: it has completed
    /// none yet, so that a connection handed just before `DRAIN` is served.
    fn owed(&self) -> bool {
        self.transactions == 0
    }

    /// Ends a session of a draining worker (RFC 5321 4.2.3 and 3.8: 421 may answer any
    /// command; the client tries again later, on a new connection to another worker).
    fn shutting_down(&mut self) -> End {
        let host = self.ctx.settings.host.clone();
        self.reply(Reply::new(
            421,
            "4.3.2",
            format!("{host} Service shutting down, try again later; closing connection"),
        ));
        log::info!(
            "connection {} from {}: the worker is draining: answered 421 after {} \
             transaction(s); closing the connection",
            self.ctx.conn,
            self.ctx.client,
            self.transactions
        );
        End::Draining
    }

    /// Ends a session that sent [`JUNK_COMMAND_LIMIT`] commands that delivered nothing.
    fn too_much_junk(&mut self) -> End {
        let host = self.ctx.settings.host.clone();
        self.reply(Reply::new(
            421,
            "4.7.0",
            format!("{host} Too many commands without a message; closing connection"),
        ));
        log::info!(
            "connection {} from {}: {JUNK_COMMAND_LIMIT} commands without a message (NOOP, \
             RSET, VRFY, HELP, LHLO, refused or malformed); closing the connection",
            self.ctx.conn,
            self.ctx.client
        );
        End::Junk
    }

    /// Ends the session on a read failure, telling the client when it is still there.
    fn stopped(&mut self, e: WireError, waiting: Waiting) -> End {
        match e {
            WireError::Closed => End::Closed,
            WireError::Timeout if !self.wire.out().is_empty() => {
                // Replies are still unsent: the client has stopped reading them.
                self.wire.out().clear();
                log::info!(
                    "connection {} from {}: timed out: the client does not read its replies",
                    self.ctx.conn,
                    self.ctx.client
                );
                End::Timeout
            }
            WireError::Timeout => {
                let host = self.ctx.settings.host.clone();
                let doing = waiting.doing();
                self.reply(Reply::new(
                    421,
                    "4.4.2",
                    format!("{host} Timeout {doing}; closing connection"),
                ));
                log::info!(
                    "connection {} from {}: timed out {doing} ({}); closing the connection",
                    self.ctx.conn,
                    self.ctx.client,
                    waiting.rule(self.ctx.settings)
                );
                End::Timeout
            }
            WireError::Io(e) => End::Error(e.to_string()),
        }
    }

    /// Every command but `DATA` and `QUIT`: one reply.
    fn command(&mut self, cmd: Command) -> Reply {
        let settings = self.ctx.settings;
        match cmd {
            Command::Lhlo(name) => {
                self.tx = None;
                // The client as an RFC 5321 address literal, as the trace header writes it.
                let text = format!(
                    "{} Hello {} {}\nPIPELINING\nENHANCEDSTATUSCODES\n8BITMIME\nSIZE {}",
                    settings.host,
                    printable(&name),
                    address_literal(self.ctx.client.ip()),
                    settings.max_message
                );
                self.lhlo = Some(name);
                Reply::new(250, "", text)
            }
            Command::HeloOrEhlo(verb) => Reply::new(
                500,
                "5.5.1",
                format!("{verb} is not accepted by an LMTP server; use LHLO (RFC 2033)"),
            ),
            Command::Mail { path, params } => self.mail(path, &params),
            Command::Rcpt { path, params } => self.rcpt(&path, &params),
            Command::Rset => {
                self.tx = None;
                Reply::new(250, "2.0.0", "OK")
            }
            Command::Noop => Reply::new(250, "2.0.0", "OK"),
            Command::Vrfy => Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept the message and attempt delivery",
            ),
            Command::Help => Reply::new(
                214,
                "2.0.0",
                "Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            ),
            Command::Bdat => Reply::new(502, "5.5.1", "BDAT is not offered here; use DATA"),
            Command::Expn => Reply::new(502, "5.5.1", "EXPN is not offered here"),
            Command::StartTls => Reply::new(502, "5.5.1", "STARTTLS is not offered here"),
            Command::Auth => Reply::new(502, "5.5.1", "AUTH is not offered here"),
            Command::Data | Command::Quit => Reply::new(503, "5.5.1", "Bad sequence of commands"),
        }
    }

    fn mail(&mut self, path: String, params: &[Param]) -> Reply {
        let settings = self.ctx.settings;
        if self.lhlo.is_none() {
            return Reply::new(503, "5.5.1", "Send LHLO first");
        }
        if self.tx.is_some() {
            return Reply::new(503, "5.5.1", "Sender already given; send RSET first");
        }
        if settings.max_transactions != 0 && self.transactions >= settings.max_transactions {
            return Reply::new(
                452,
                "4.5.3",
                format!(
                    "Too many transactions in this session (at most {}); start a new session",
                    settings.max_transactions
                ),
            );
        }
        let mut declared = None;
        for (key, value) in params {
            match (key.as_str(), value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > settings.max_message => return over_limit(settings.max_message),
                    Ok(n) => declared = Some(n),
                    Err(_) => return Reply::new(501, "5.5.4", "Syntax error in SIZE= (a number)"),
                },
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                ("BODY", _) => {
                    return Reply::new(555, "5.5.4", "BODY= must be 7BIT or 8BITMIME here")
                }
                _ => {
                    return Reply::new(
                        555,
                        "5.5.4",
                        format!("MAIL parameter {} is not supported", printable(key)),
                    )
                }
            }
        }
        let reply = Reply::new(250, "2.1.0", format!("<{}> Sender OK", printable(&path)));
        self.tx = Some(Transaction {
            sender: path,
            declared,
            recipients: Vec::new(),
        });
        reply
    }

    fn rcpt(&mut self, path: &str, params: &[Param]) -> Reply {
        let settings = self.ctx.settings;
        let Some(tx) = self.tx.as_mut() else {
            return Reply::new(503, "5.5.1", "Need MAIL before RCPT");
        };
        if tx.recipients.len() >= settings.max_recipients {
            return Reply::new(
                452,
                "4.5.3",
                format!("Too many recipients (at most {})", settings.max_recipients),
            );
        }
        let mut r = match Recipient::parse(path) {
            Ok(r) => r,
            Err(reply) => {
                record(
                    self.ctx,
                    log::Level::Warn,
                    format!(
                        "refused conn={} client={} to=<{}> result={}",
                        self.ctx.conn,
                        self.ctx.client.ip(),
                        untrusted(path),
                        untrusted(&reply.to_string())
                    ),
                );
                return reply;
            }
        };
        for (key, value) in params {
            match (key.as_str(), value.as_deref()) {
                ("XQUOTA", Some(v)) => match parse_quota(v) {
                    Some(q) => r.quota = Some(q),
                    None => {
                        return Reply::new(501, "5.5.4", "Syntax error in XQUOTA= (bytes,messages)")
                    }
                },
                ("XDFLG", Some(v)) => match v.parse::<u32>() {
                    Ok(f) => r.flags = f,
                    Err(_) => return Reply::new(501, "5.5.4", "Syntax error in XDFLG= (a number)"),
                },
                _ => {
                    return Reply::new(
                        555,
                        "5.5.4",
                        format!("RCPT parameter {} is not supported", printable(key)),
                    )
                }
            }
        }
        match self.ctx.store.resolve(&r, tx.declared.unwrap_or(0)) {
            Ok(target) => {
                let reply = Reply::new(250, "2.1.5", format!("<{}> Recipient OK", printable(path)));
                tx.recipients.push((r, target));
                reply
            }
            Err(reply) => {
                let reply = addressed(reply, path);
                if settings.logging {
                    record(
                        self.ctx,
                        log::Level::Info,
                        format!(
                            "refused conn={} client={} from=<{}> to=<{}> result={}",
                            self.ctx.conn,
                            self.ctx.client.ip(),
                            untrusted(&tx.sender),
                            untrusted(path),
                            untrusted(&reply.to_string())
                        ),
                    );
                }
                reply
            }
        }
    }

    /// `DATA`: the message, then one reply per accepted recipient. `Some` ends the session.
    fn data(&mut self) -> Option<End> {
        let settings = self.ctx.settings;
        let refusal = match (&self.lhlo, &self.tx) {
            (None, _) => Some("Send LHLO first"),
            (_, None) => Some("Need MAIL and RCPT before DATA"),
            (_, Some(tx)) if tx.recipients.is_empty() => Some("No valid recipients"),
            _ => None,
        };
        if let Some(why) = refusal {
            self.reply(Reply::new(503, "5.5.1", why));
            return None;
        }
        self.reply(Reply::new(
            354,
            "",
            "Start mail input; end with <CRLF>.<CRLF>",
        ));
        self.body.clear();
        if let Some((_, first)) = self.tx.as_ref().and_then(|tx| tx.recipients.first()) {
            self.body.set_spill_dir(self.ctx.store.spill_dir(first));
        }
        let outcome = self.wire.read_data(&mut self.body, settings.max_message);
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let tx = self.tx.take();
                log::warn!(
                    "connection {} from {}: message data incomplete ({e}); nothing delivered to {} recipient(s)",
                    self.ctx.conn,
                    self.ctx.client,
                    tx.map_or(0, |t| t.recipients.len())
                );
                return Some(self.stopped(e, Waiting::Data));
            }
        };
        // The final `.` has been read: the delivery latency starts.
        let started = Instant::now();
        let tx = self.tx.take()?;
        self.transactions += 1;
        let oversize = tx.declared.filter(|&d| outcome.size > d);
        let refusal = if let Some(d) = oversize {
            Some(Reply::new(
                552,
                "5.3.4",
                format!("Message too big: larger than its declared SIZE={d}"),
            ))
        } else if outcome.too_big {
            Some(over_limit(settings.max_message))
        } else if settings.max_lines.is_some_and(|m| outcome.lines > m) {
            Some(Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message has more than {} lines (channel linelimit)",
                    settings.max_lines.unwrap_or(0)
                ),
            ))
        } else if outcome.has_nul {
            Some(Reply::new(554, "5.6.0", "Message contains NUL characters"))
        } else if let Some(why) = &outcome.keep_failed {
            log::error!(
                "connection {}: cannot keep the message data: {why}",
                self.ctx.conn
            );
            Some(Reply::new(
                451,
                "4.3.0",
                format!("Temporary failure: cannot keep the message data: {why}"),
            ))
        } else {
            None
        };
        let id = trace::new_id(SystemTime::now());
        let results = match refusal {
            Some(r) => vec![Err(r); tx.recipients.len()],
            None => self.deliver(&tx, &id, &self.body, outcome.size),
        };
        for ((r, target), result) in tx.recipients.iter().zip(results) {
            let reply = match result {
                Ok(()) => Reply::new(
                    250,
                    "2.0.0",
                    format!(
                        "<{}> {id} Saved to {}",
                        printable(&r.written),
                        target.folder
                    ),
                ),
                Err(reply) => reply,
            };
            if settings.logging {
                record(
                    self.ctx,
                    log::Level::Info,
                    format!(
                        "delivery conn={} client={} id={id} from=<{}> to=<{}> mailbox={}/{} size={} result={}",
                        self.ctx.conn,
                        self.ctx.client.ip(),
                        untrusted(&tx.sender),
                        untrusted(&r.written),
                        untrusted(&target.user),
                        untrusted(&target.folder),
                        outcome.size,
                        untrusted(&reply.to_string()),
                    ),
                );
            }
            self.ctx.counters.recipient(reply.code);
            self.reply(reply);
        }
        self.ctx.counters.transaction(started.elapsed());
        // A large message's memory or file goes; the next message starts small again (the
        // wire's read buffer shrinks back by itself when the session next waits idle).
        self.body.clear();
        if oversize.is_some() {
            log::warn!(
                "connection {} from {}: message larger than its declared SIZE; closing the connection",
                self.ctx.conn,
                self.ctx.client
            );
            return Some(End::Oversize);
        }
        None
    }

    /// Stores the message (`size` octets) once per distinct mailbox, counting the bytes of the
    /// copies stored; one result per recipient.
    fn deliver(
        &self,
        tx: &Transaction,
        id: &str,
        body: &Body,
        size: u64,
    ) -> Vec<Result<(), Reply>> {
        let received = SystemTime::now();
        let lhlo = self.lhlo.as_deref().unwrap_or("unknown");
        let trace = trace::header(&TraceInfo {
            sender: &tx.sender,
            lhlo,
            client: self.ctx.client.ip(),
            host: &self.ctx.settings.host,
            program: self.ctx.settings.kind.program(),
            id,
            received,
        });
        let message = Message {
            id,
            sender: &tx.sender,
            trace: &trace,
            body,
            received,
        };
        // Distinct mailboxes, and for each recipient the index of its mailbox.
        let mut distinct: Vec<&Target> = Vec::new();
        let mut which = Vec::with_capacity(tx.recipients.len());
        for (_, t) in &tx.recipients {
            let i = match distinct.iter().position(|d| d.key == t.key) {
                Some(i) => i,
                None => {
                    distinct.push(t);
                    distinct.len() - 1
                }
            };
            which.push(i);
        }
        let results = self.ctx.store.deliver(&message, &distinct);
        let copies = results.iter().filter(|r| r.is_ok()).count();
        self.ctx
            .counters
            .stored(size.saturating_mul(u64::try_from(copies).unwrap_or(u64::MAX)));
        which
            .into_iter()
            .zip(&tx.recipients)
            .map(|(i, (r, _))| match results.get(i) {
                Some(result) => result.clone().map_err(|e| addressed(e, &r.written)),
                None => Err(Reply::new(
                    451,
                    "4.3.0",
                    "Internal error: no delivery result",
                )),
            })
            .collect()
    }
}

/// Whether a command line is `QUIT` (which a draining session still answers 221).
fn is_quit(line: &Line) -> bool {
    match line {
        Line::Text(t) => matches!(
            command::parse(&String::from_utf8_lossy(t)),
            Ok(Command::Quit)
        ),
        Line::TooLong | Line::BareLf => false,
    }
}

/// A message larger than the channel allows (declared with `SIZE=`, or as received).
fn over_limit(max: u64) -> Reply {
    Reply::new(
        552,
        "5.3.4",
        format!("Message size exceeds the fixed maximum message size ({max} octets)"),
    )
}

/// A store's reply for one recipient, with the address as the client wrote it in front (a
/// store's texts do not name the recipient).
fn addressed(mut reply: Reply, written: &str) -> Reply {
    reply.text = format!("<{}> {}", printable(written), reply.text);
    reply
}
