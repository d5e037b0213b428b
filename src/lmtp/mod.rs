//! The LMTP back-end images (`tcp_lmtp_server`, `tcp_lmtpn_server`): an RFC 2033 server that
//! speaks the Messaging Server relay's dialect and delivers durably.
//!
//! * [`reply`]: replies and their enhanced status codes.
//! * [`command`]: parsing one command line (pure).
//! * [`address`]: recipients: `uid+folder@domain`, what may name a mailbox.
//! * [`input`]: lines and message data from the socket (terminators, dot-unstuffing, limits).
//! * [`body`]: message data in memory, or in an unnamed temporary file when large.
//! * [`session`]: the protocol state machine, one per connection.
//! * [`delivery_log`]: `IMTA_LOG:mail.log_current`, the delivery lines of every worker.
//! * [`settings`]: the channel in `imta.cnf` and its option file, read once at start.
//! * [`store`]: what a delivery back end is ([`store::Store`]).
//! * [`maildir`]: the message store: Maildir++ under a store root.
//! * [`group_flush`]: directory flushes shared by concurrent deliveries (group commit).
//! * [`maildirsize`]: the Maildir++ quota cache, so a quota check does not count a mailbox.
//! * [`mbox`]: native delivery: mbox files in a `/var/mail`-like spool.
//! * [`trace`]: the trace header, the message identifier and dates.
//! * [`server`]: the worker handler that ties these together and logs each delivery.

pub mod address;
pub mod body;
pub mod command;
pub mod delivery_log;
pub mod group_flush;
pub mod input;
pub mod maildir;
pub mod maildirsize;
pub mod mbox;
pub mod reply;
pub mod server;
pub mod session;
pub mod settings;
pub mod store;
pub mod trace;
