//! The worker side: what every image (`tcp_lmtp_server`, `tcp_lmtpn_server`, the test echo
//! image) links to receive connections from the dispatcher: [`runtime`] serves the handed
//! connections on the reused threads of [`threads`] and tells them when the worker drains
//! ([`drain`]) and gathers their delivery counters for the dispatcher ([`counters`]);
//! [`image`] is the `main` they share. It meets the dispatcher only in
//! `src/handoff/`.
pub mod counters;
pub mod drain;
pub mod image;
pub mod runtime;
pub mod threads;
