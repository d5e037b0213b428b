//! The dispatcher: listeners, the PORT_ACCESS check at accept, worker pools, hand-off,
//! signals and logs.
//!
//! Built so far:
//! * [`policy`]: the worker pool of a service as a pure state machine (which worker takes a
//!   connection, when to start, retire or replace one), tested without sockets or processes.
//! * [`spawn`]: starting a worker process with its control socket on descriptor 3.
//!
//! The event loop that performs its actions is not built yet.
pub mod policy;
pub mod spawn;
