//! `ixn`: the IXN/1 registration server: the io_uring shell around the `ixn-proto` core.
//!
//! The pure core (codec, session, registry, timer wheel, PROXY parsing) lives in the
//! `ixn-proto` crate and is re-exported here; this crate feeds it bytes and time from
//! sockets and clocks, and adds configuration, metrics and the HTTP endpoint.

pub mod admin;
pub mod admin_api;
pub mod admission;
pub mod ban_filter;
pub mod config;
pub mod control;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod tls;

pub mod names;
pub use ixn_proto::{connection, protocol, proxy, registry, session, slot_wheel, timer_wheel};
