//! Why the server could not start.

use std::net::SocketAddr;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// io_uring is not usable on this host.
    #[error("io_uring is not available: {0} (or run without it: --engine epoll)")]
    IoUring(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Metrics recorder or endpoint.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A TLS certificate, key or CA file.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// A setting read at start (the admin token file).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A live upgrade's takeover from the running server (`--upgrade-from`).
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// Thread creation or signal set-up.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
