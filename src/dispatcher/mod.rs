//! The dispatcher: listeners, the PORT_ACCESS check at accept, worker pools, hand-off,
//! signals and logs.
//!
//! * [`policy`]: the worker pool of a service as a pure state machine (which worker takes a
//!   connection, when to start, retire or replace one), tested without sockets or processes.
//! * [`event_loop`]: performs the policy's actions; knows no limits.
//! * [`reload_plan`]: what a reload changes (services kept, added, removed; sockets kept,
//!   opened, closed), computed without sockets from the old and new configuration.
//! * [`listen`]: opening the ports; [`access`]: PORT_ACCESS at accept.
//! * [`account`]: which account a service's workers run as, with which capability.
//! * [`spawn`]: starting a worker process with its control socket on descriptor 3, a clean
//!   environment and no other descriptor.
//! * [`log`]: `dispatcher.log`; [`logfiles`]: versioned log names; [`pidfile`]: the locked
//!   pid file.
//! * [`start`]: from the command line to a running event loop.
pub mod access;
pub mod account;
pub mod event_loop;
pub mod listen;
pub mod log;
pub mod logfiles;
pub mod pidfile;
pub mod policy;
pub mod reload_plan;
pub mod spawn;
pub mod start;
