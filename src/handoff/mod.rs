//! The hand-off between the dispatcher and its workers: control messages and the accepted
//! sockets that travel with them (`SCM_RIGHTS` over a `SOCK_SEQPACKET` pair). Both sides use
//! [`wire`]; the protocol is written down in `docs/worker-protocol.md`.
pub mod wire;
