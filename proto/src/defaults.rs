//! The protocol's default settings (docs/PROTOCOL.md §8), one typed constant each. The
//! server's configuration, [`crate::session::SessionConfig::default`],
//! [`crate::connection::ConnConfig::default`] and the load generator all take them from
//! here; a test checks them against the README's flag table and `--help`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// `--listen`: the client listener.
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7400));
/// `--registration-timeout`: from accept to registration.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// `--error-disconnect-timeout`: from the first rejection to the close.
pub const ERROR_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `--frame-timeout`: a frame begun on a registered connection must complete within this.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// `--close-linger`: longest wait for the peer's close after the last answer.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// `--max-frame-len`: largest frame, length field included.
pub const MAX_FRAME_LEN: usize = crate::protocol::DEFAULT_MAX_FRAME_LEN;
/// `--keepalive-min`: the shortest keepalive a client's KeepAlive is clamped to (§12).
pub const KEEPALIVE_MIN: Duration = Duration::from_secs(5);
/// `--keepalive-max`: the longest keepalive a client's KeepAlive is clamped to (§12).
pub const KEEPALIVE_MAX: Duration = Duration::from_secs(3600);
/// `--keepalive-default`: the keepalive of a registration that asks for none; off.
pub const KEEPALIVE_DEFAULT: Duration = Duration::ZERO;
