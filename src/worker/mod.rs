//! The worker side: what every image (`tcp_lmtp_server`, `tcp_lmtpn_server`, the test echo
//! image) links to receive connections from the dispatcher: [`runtime`] serves the handed
//! connections on the reused threads of [`threads`], [`image`] is the `main` they share.
pub mod image;
pub mod runtime;
pub mod threads;
