//! A connection's state as a live upgrade hands it to the new process (docs/OPERATIONS.md
//! 7e): everything [`Connection`](crate::connection::Connection) knows, with times made
//! relative (an `Instant` means nothing in another process), in a versioned, serializable
//! form. Only a connection at rest is handed over: reading frames, no answer unsent, no
//! verdict awaited, not closing, and plain TCP (TLS state stays in the old process, which
//! drains those connections).
//!
//! Names and ids travel as values: the new process enters the names in its own table and
//! marks the ProxyClientIds live in its own allocator when it adopts the connection.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The format's version: a new process that reads another refuses the handover.
pub const VERSION: u32 = 1;

/// One connection at rest, handed from the old process to the new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The client's address and port (a PROXY header's, once read).
    pub peer: SocketAddr,
    /// Milliseconds since it was accepted.
    pub age_ms: u64,
    /// A PROXY header is still awaited.
    pub awaiting_proxy: bool,
    /// Counted by admission control (its per-address count moves with it).
    pub admitted: bool,
    /// Milliseconds from accept to its registration.
    pub registered_after_ms: u32,
    /// Milliseconds since its last complete frame.
    pub quiet_ms: u64,
    /// Its protocol deadline: the timer's name and the milliseconds left.
    pub deadline: Option<(String, u64)>,
    /// Its session.
    pub session: SessionState,
    /// The bytes of a frame begun and not yet complete.
    pub pending: Vec<u8>,
}

/// A session's state, as [`Handoff`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// `unregistered`, `registered` or `rejected`.
    pub state: String,
    /// EventErrors sent so far.
    pub errors_sent: u8,
    /// Its ProxyClientId (0 before registration).
    pub own_id: i32,
    /// A Proxy's bound on logical clients.
    pub max_logical: u32,
    /// Its ClientName, once registered.
    pub name: Option<String>,
    /// Its ClientType's wire code (0 before registration).
    pub client_type: u8,
    /// Its name is entered in the name table.
    pub claimed: bool,
    /// The keepalive in force, in seconds (0: none).
    pub keep_alive: u16,
    /// A Proxy's logical clients: (ProxyClientId, the name it claimed, if any).
    pub logical: Vec<(i32, Option<String>)>,
}

/// Why a handed-over connection cannot be adopted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdoptError {
    /// A field holds what this version does not know.
    #[error("unknown {0}")]
    Unknown(String),
    /// One of its ProxyClientIds is live here already.
    #[error("ProxyClientId {0} is already live")]
    IdTaken(i32),
}
