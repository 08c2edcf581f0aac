//! A fleet of servers sharing names and bans through Redis (docs/PROTOCOL.md §13).
//!
//! The Redis client runs on its own thread, with its own single-threaded tokio runtime
//! (`client.rs`); workers never wait for it. A worker's registration under `reject` or
//! `replace` enters the name in the process's table (`crate::names`), which posts a
//! [`Op::Claim`] here and answers the core [`Claim::Pending`](ixn_proto::names::Claim);
//! the fleet thread decides, puts the [`Verdict`] in that worker's inbox and wakes the
//! worker (an eventfd read armed in its ring on io_uring, a `mio::Waker` on epoll). Claims
//! that arrive together are sent together: the multiplexed Redis connection writes every
//! command queued at that moment in one write, so under load a round trip is shared by
//! many registrations.
//!
//! Everything else the fleet does (the lease, re-asserting names after an outage,
//! replaced holders on other servers, bans, the admin API's fleet calls) is the fleet
//! thread's alone.

pub mod keys;

mod calls;
mod client;
mod conn;
mod handle;
mod names;

pub use client::{spawn, Context};
pub use handle::{unix_ms, Fleet, Op, Wake};
