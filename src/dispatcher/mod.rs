//! The dispatcher: listeners, the PORT_ACCESS check at accept, worker pools, hand-off,
//! signals and logs.
//!
//! * [`policy`]: the worker pool of a service as a pure state machine (which worker takes a
//!   connection, when to start, retire or replace one), tested without sockets or processes.
//! * [`event_loop`]: the loop only: waits, and passes each event to the module below that
//!   handles it.
//! * [`runtime`]: the running state (one owner for each thing) and how the pools' actions are
//!   carried out; [`generation`]: services by stable id and their configuration generations;
//!   [`workers`]: worker processes and their control channels; [`accept`]: listeners, the
//!   PORT_ACCESS judgement and when to stop accepting; [`descriptors`]: the descriptor budget;
//!   [`reload`]: carrying out a SIGHUP, planned by [`reload_plan`]; [`signals`]; [`status`]:
//!   the SIGUSR2 report.
//! * [`listen`]: opening the ports; [`access`]: PORT_ACCESS at accept.
//! * [`account`]: which account a service's workers run as, with which capability.
//! * [`spawn`]: starting a worker process with its control socket on descriptor 3, a clean
//!   environment and no other descriptor.
//! * [`spawner`]: the thread that makes those starts, so the event loop does not wait for them.
//! * [`log`]: `dispatcher.log`; [`logfiles`]: versioned log names; [`pidfile`]: the locked
//!   pid file; [`notify`]: telling a service manager (systemd) how it is doing.
//! * [`control`]: the control socket and the metrics endpoint's connections; [`commands`]:
//!   what each request does, with [`restart`] (`--restart`), [`status`] (`--status`),
//!   [`handover`] (the running side of `--takeover`) and [`takeover`] (the new side); [`metrics`]: the Prometheus exposition,
//!   served by [`http`]'s request parsing and replies.
//! * [`start`]: from the command line to a running event loop.
pub mod accept;
pub mod access;
pub mod account;
pub mod child;
pub mod commands;
pub mod control;
pub mod descriptors;
pub mod detach;
pub mod event_loop;
pub mod generation;
pub mod handover;
pub mod http;
pub mod listen;
pub mod log;
pub mod logfiles;
pub mod metrics;
pub mod notify;
pub mod pidfile;
pub mod policy;
pub mod reload;
pub mod reload_plan;
pub mod restart;
pub mod runtime;
pub mod signals;
pub mod spawn;
pub mod spawner;
pub mod start;
pub mod status;
pub mod takeover;
pub mod workers;
