//! `ixn-client`: the client library for IXN/1 servers (docs/PROTOCOL.md), for the
//! programs that register with them: media servers, agent desktops, routers and Proxies.
//!
//! A [`Client`] holds one registered connection to one of a list of servers, over plain
//! TCP or TLS ([`Tls`], with a client certificate for mutual TLS), and keeps it:
//!
//! - it registers ([`Registration`]: ClientName, ClientType, Credential, Extension,
//!   KeepAlive) and reports the ProxyClientId and the keepalive in force
//!   ([`Registered`]), or the server's refusal as a typed [`Error::Refused`];
//! - with a keepalive in force it sends RequestKeepAlive on its own, every half of it,
//!   and declares the server dead ([`Lost::ServerSilent`]) when an answer is late, so a
//!   server that stops answering is noticed within the keepalive;
//! - it reconnects with exponential backoff and full jitter ([`Backoff`]) across its
//!   servers ([`Selection`]): on EventError 11 (a drain) it moves to another server at
//!   once, spread by jitter; on 15 (kicked or replaced) it stops and says so
//!   ([`Stop::Kicked`]); on 14 and 16 it does what [`RefusalPolicy`] says; its
//!   registration, and a Proxy's logical clients, are made again after every reconnection;
//! - a program watches it through [`Client::status`], [`Client::registered`] and
//!   [`Client::events`], and `tracing` spans (`ixn_client`, `connection`).
//!
//! ```no_run
//! use std::time::Duration;
//! use ixn_client::{Client, ClientConfig, ClientType, Event, Registration};
//!
//! # async fn run() -> Result<(), ixn_client::Error> {
//! let reg = Registration::new("MediaServer_email", ClientType::MediaServer)
//!     .keep_alive(Duration::from_secs(30));
//! let config = ClientConfig::new(["ixn-a:7400", "ixn-b:7400"], reg);
//! let client = Client::start(config)?;
//! let mut events = client.events();
//! let registered = client.registered().await?;
//! println!("ProxyClientId {}", registered.proxy_client_id);
//! while let Ok(e) = events.recv().await {
//!     if let Event::Lost { server, reason } = e {
//!         eprintln!("lost {server}: {reason:?}; reconnecting");
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The examples (`client/examples/`): `minimal` registers and keeps alive, `tls` does it
//! with a client certificate, `proxy` registers logical clients.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod config;
mod conn;

pub use client::{Client, Event, LogicalId, Lost, Registered, Status, Stop};
pub use config::{Backoff, ClientConfig, RefusalPolicy, Registration, Selection, Tls};
pub use ixn_proto::protocol::{ClientType, ErrorCode};

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused, with this code (docs/PROTOCOL.md §5).
    #[error("refused by the server: {} ({})", .0.name(), .0.code())]
    Refused(ErrorCode),
    /// The client stopped: kicked, or closed.
    #[error("the client stopped: {0:?}")]
    Stopped(Stop),
    /// The configuration cannot work (no server, a bad file, a bad keepalive).
    #[error("configuration: {0}")]
    Config(String),
    /// The server said something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No such logical client.
    #[error("no such logical client")]
    UnknownLogical,
    /// The client's task is gone.
    #[error("the client's task is gone")]
    Gone,
}

impl From<Stop> for Error {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Refused(Ok(c)) => Error::Refused(c),
            Stop::Refused(Err(raw)) => Error::Protocol(format!("EventError {raw}")),
            other => Error::Stopped(other),
        }
    }
}

impl Error {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Refused(c) => Some(*c),
            _ => None,
        }
    }
}
