//! `ixn-proto`: the IXN/1 registration protocol as pure values, with no I/O.
//!
//! Codec ([`protocol`]), one connection's state machine ([`session`]) and its whole
//! per-socket protocol ([`connection`]), the client registry
//! ([`registry`]), the hashed timer wheel ([`timer_wheel`]) and PROXY header parsing
//! ([`proxy`]). Nothing here opens a socket, reads a clock or a file, logs, or records a
//! metric: time, bytes and registry text are arguments, answers and decisions are return
//! values. Engines (`ixn-server`'s io_uring workers) and tools (`ixn-loadgen`) build on it;
//! the crate's dependencies are the wall that keeps it that way.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod connection;
pub mod defaults;
pub mod protocol;
pub mod proxy;
pub mod registry;
pub mod session;
pub mod timer_wheel;
