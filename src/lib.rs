//! A configuration-compatible replacement for the Messaging Server `dispatcher` and its LMTP
//! back-end images.
//!
//! The crate is laid out the way the product works:
//!
//! * [`config`]: reading the files an installation already has — `imta_tailor`,
//!   `dispatcher.cnf`, `mappings`, `imta.cnf` and the channel option files — with pest grammars
//!   kept in `parsers/`, into typed models with the original's defaults applied.
//! * [`dispatcher`]: the running dispatcher: listeners, PORT_ACCESS, worker pools, signals.
//! * [`control`]: the control socket's protocol and client (`--status`, `--reload`, ...).
//! * [`handoff`]: the dispatcher↔worker protocol, with socket passing.
//! * [`mapping`]: the mapping engine (patterns, templates, tables) and the PORT_ACCESS decision.
//! * [`worker`]: the runtime every worker image links.
//! * [`net_address`]: client and server addresses as probes, logs and trace headers write
//!   them (IPv4-mapped IPv6 as IPv4; RFC 5321 address literals).
//! * [`safe_fs`]: opening files for writing without following planted links or files.
//! * [`log_text`]: untrusted text in log lines, escaped.
//! * [`fuzzing`]: the fuzz targets' entry points, which `make fuzz` runs and `make test` replays.
//! * [`check`]: `dispatcher --check`, the effective configuration as an administrator reads it.
//! * [`test_mapping`]: `dispatcher --test-mapping`, probes through a table.
//!
//! The binaries in `src/bin/` carry the legacy program names (`dispatcher`,
//! `tcp_lmtp_server`, `tcp_lmtpn_server`) and are thin wrappers over this library.

pub mod check;
pub mod config;
pub mod control;
pub mod dispatcher;
pub mod fuzzing;
pub mod handoff;
pub mod lmtp;
pub mod log_text;
pub mod mapping;
pub mod net_address;
pub mod safe_fs;
pub mod test_mapping;
pub mod worker;

/// The version every binary prints with `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
