//! The hand-off between the dispatcher and its workers, and everything else both sides share
//! (and nothing more): control messages and the accepted sockets that travel with them
//! ([`wire`], `SCM_RIGHTS` over a `SOCK_SEQPACKET` pair), the environment a worker is started
//! with ([`env`]), the log line format ([`log_line`]) and the delivery counters a worker
//! reports ([`stats`]). The protocol is written down in
//! `docs/worker-protocol.md`. The dispatcher (`src/dispatcher/`) and the worker runtime
//! (`src/worker/`) meet here and import nothing from each other.
pub mod env;
pub mod log_line;
pub mod stats;
pub mod wire;
