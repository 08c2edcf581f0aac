//! `ixn`: the IXN/1 registration server's library: a sans-IO protocol core and its io_uring shell.
//!
//! The pure core (`protocol`, `session`, `registry`, `timer_wheel`) holds all protocol
//! logic and never touches a socket or a clock; the runtime feeds it bytes and time.

pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod session;
pub mod timer_wheel;
