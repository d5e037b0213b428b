//! The environment variables through which the dispatcher gives a worker its service's
//! settings (`docs/worker-protocol.md`, "How a worker is started"). The dispatcher sets them
//! (`src/dispatcher/spawn.rs`); the worker runtime reads them (`src/worker/runtime.rs`).

/// The service name as written in `[SERVICE=name]`.
pub const SERVICE: &str = "IMTA_SERVICE";
/// The service's `PARAMETER` value (`CHANNEL=tcp_lmtpss`).
pub const PARAMETER: &str = "IMTA_PARAMETER";
/// `STACKSIZE`: bytes of stack for each connection thread.
pub const STACKSIZE: &str = "IMTA_STACKSIZE";
/// `MAX_CONNS`: the most connections the worker will be handed at once.
pub const MAX_CONNS: &str = "IMTA_MAX_CONNS";
/// The service's `DEBUG` mask, in decimal.
pub const DEBUG: &str = "IMTA_DEBUG";
/// The tailor file the dispatcher read, so the image finds the same configuration.
pub const TAILOR: &str = "IMTA_TAILOR";
