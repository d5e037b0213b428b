//! The dispatcher's control socket, both sides: the request/reply protocol ([`protocol`]),
//! the takeover's offer of listening sockets ([`takeover`]), and the client the command-line
//! modes use ([`client`]). The server end, inside the running dispatcher, is
//! `crate::dispatcher::control`. The protocol is written down in `docs/control.md`.
pub mod client;
pub mod protocol;
pub mod takeover;

use std::path::{Path, PathBuf};

/// The control socket of the installation whose log directory is `log_dir` (`IMTA_LOG`).
pub fn socket_path(log_dir: &Path) -> PathBuf {
    log_dir.join(protocol::SOCKET_NAME)
}

/// Whether a peer with this uid may be trusted on the control socket, either end: root, or
/// this process's own account.
pub fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}
