//! Server settings (docs/PROTOCOL.md §8): command line, `IXN_…` environment and TOML `--config`, merged.
//!
//! Over 600 lines on purpose: every setting's flag, environment variable, file key,
//! default and validation is declared once, here.
//!
//! Precedence: command line, then environment (both handled by clap), then the config file,
//! then the defaults of section 8.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::admission::RateMode;
use crate::protocol::{MAX_FRAME_LEN_LIMIT, MIN_FRAME_LEN};
use crate::session::{KeepAliveConfig, SessionConfig};

/// Every setting's default (docs/PROTOCOL.md §8), one typed constant each: the resolver
/// below uses them, the core's own defaults come from `ixn_proto::defaults`, and
/// `tests/docs.rs` checks them against `--help` and the README's flag table.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    pub use ixn_proto::defaults::*;

    /// `--proxy-protocol-trusted`: loopback only.
    pub const PROXY_PROTOCOL_TRUSTED: [&str; 2] = ["127.0.0.0/8", "::1/128"];
    /// `--timer-tick`.
    pub const TIMER_TICK: Duration = Duration::from_millis(100);
    /// `--max-connections`.
    pub const MAX_CONNECTIONS: usize = 100_000;
    /// `--metrics-listen`.
    pub const METRICS_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9464));
    /// `--backlog`.
    pub const BACKLOG: u32 = 4096;
    /// `--tcp-keepalive`.
    pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
    /// `--write-timeout`.
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `--drain-timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    /// `--pin-workers`.
    pub const PIN_WORKERS: bool = true;
    /// `--metrics`.
    pub const METRICS: bool = true;
    /// `--socket-send-buffer`.
    pub const SOCKET_SEND_BUFFER: usize = 65_536;
    /// `--metrics-max-connections`.
    pub const METRICS_MAX_CONNECTIONS: usize = 64;
    /// `--tls-require-client-cert`.
    pub const TLS_REQUIRE_CLIENT_CERT: bool = false;
    /// `--max-connection-rate` (off).
    pub const MAX_CONNECTION_RATE: u32 = 0;
    /// `--max-connections-per-ip` (off).
    pub const MAX_CONNECTIONS_PER_IP: u32 = 0;
    /// `--ban-failures` (off).
    pub const BAN_FAILURES: u32 = 0;
    /// `--registry-watch`.
    pub const REGISTRY_WATCH: bool = true;
    /// `--ban-window`.
    pub const BAN_WINDOW: Duration = Duration::from_secs(60);
    /// `--ban-duration`.
    pub const BAN_DURATION: Duration = Duration::from_secs(300);
    /// `--ban-filter`.
    pub const BAN_FILTER: bool = true;
    /// `--lame-duck-duration` (off: all at once).
    pub const LAME_DUCK_DURATION: Duration = Duration::ZERO;
    /// `--lame-duck-grace`.
    pub const LAME_DUCK_GRACE: Duration = Duration::ZERO;
    /// `--fleet-name`: the key prefix shared by one fleet's servers.
    pub const FLEET_NAME: &str = "ixn";
    /// `--fleet-lease`.
    pub const FLEET_LEASE: Duration = Duration::from_secs(10);
    /// `--fleet-timeout`.
    pub const FLEET_TIMEOUT: Duration = Duration::from_millis(500);
    /// `--fleet-bans`.
    pub const FLEET_BANS: bool = true;
}

/// What a registration under `reject`/`replace` gets when the fleet's name table does
/// not answer in time (docs/PROTOCOL.md §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FleetUnavailable {
    /// Registered on this server's word alone (logged, counted).
    #[default]
    Allow,
    /// EventError 18.
    Refuse,
}

/// A duration written as `250ms`, `5s`, `1m` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim()).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e}")))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which kind of engine drives the client sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// io_uring where it is allowed, else epoll with a warning.
    #[default]
    Auto,
    /// io_uring; refuses to start where it is not allowed.
    Uring,
    /// epoll (mio): for hosts and containers that refuse io_uring.
    Epoll,
}

/// Command line; every flag also reads `IXN_<FLAG>` and the `--config` file.
#[derive(Debug, Clone, Default, Parser, Deserialize)]
#[command(name = "ixn-server", version, about = "IXN/1 registration server")]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "IXN_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Client listener, repeatable [default: 127.0.0.1:7400].
    #[arg(
        long,
        env = "IXN_LISTEN",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Client listener that requires a PROXY protocol v1/v2 header first, for use behind
    /// HAProxy (`send-proxy-v2`) or another L4 balancer; repeatable.
    #[arg(
        long,
        env = "IXN_PROXY_LISTEN",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub proxy_listen: Vec<SocketAddr>,
    /// Peers allowed to send a PROXY header (the balancers), repeatable
    /// [default: 127.0.0.0/8, ::1/128].
    #[arg(
        long,
        env = "IXN_PROXY_PROTOCOL_TRUSTED",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub proxy_protocol_trusted: Vec<ipnet::IpNet>,
    /// TLS client listener (TLS 1.3 and 1.2), repeatable; needs --tls-cert and --tls-key.
    #[arg(
        long,
        env = "IXN_TLS_LISTEN",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// Client listener with a PROXY header, then TLS (HAProxy TCP passthrough with
    /// send-proxy-v2), repeatable.
    #[arg(
        long,
        env = "IXN_PROXY_TLS_LISTEN",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub proxy_tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain of the TLS listeners (reloaded on SIGHUP).
    #[arg(long, env = "IXN_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1: RSA, ECDSA or Ed25519; reloaded on SIGHUP).
    #[arg(long, env = "IXN_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: client certificates that are offered must verify against it
    /// (reloaded on SIGHUP).
    #[arg(long, env = "IXN_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse a TLS handshake without a verified client certificate [default: false].
    #[arg(long, env = "IXN_TLS_REQUIRE_CLIENT_CERT", value_name = "BOOL")]
    pub tls_require_client_cert: Option<bool>,
    /// New connections per second, all workers together; the next get EventError 10
    /// (0: off) [default: 0].
    #[arg(long, env = "IXN_MAX_CONNECTION_RATE", value_name = "N")]
    pub max_connection_rate: Option<u32>,
    /// Over --max-connection-rate: pace (stop taking connections off the listeners until
    /// the next second; they wait in the kernel's backlog) or refuse (EventError 10)
    /// [default: pace].
    #[arg(long, env = "IXN_CONNECTION_RATE_MODE", value_enum)]
    pub connection_rate_mode: Option<RateMode>,
    /// Concurrent connections from one address; the next get EventError 10 (0: off)
    /// [default: 0].
    #[arg(long, env = "IXN_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// Failed registrations from one address within --ban-window that ban it for
    /// --ban-duration (EventError 16 at accept; 0: off) [default: 0].
    #[arg(long, env = "IXN_BAN_FAILURES", value_name = "N")]
    pub ban_failures: Option<u32>,
    /// The window failed registrations are counted in [default: 60s].
    #[arg(long, env = "IXN_BAN_WINDOW", value_name = "DUR")]
    pub ban_window: Option<Dur>,
    /// How long a ban lasts [default: 300s].
    #[arg(long, env = "IXN_BAN_DURATION", value_name = "DUR")]
    pub ban_duration: Option<Dur>,
    /// Drop banned addresses' SYNs with a filter on the listeners, below accept (beyond
    /// what it holds, and behind PROXY listeners: EventError 16 at accept) [default: true].
    #[arg(long, env = "IXN_BAN_FILTER", value_name = "BOOL")]
    pub ban_filter: Option<bool>,
    /// Drain as a lame duck: send registered clients EventError 11 spread evenly over this
    /// (0s: all at once) [default: 0s].
    #[arg(long, env = "IXN_LAME_DUCK_DURATION", value_name = "DUR")]
    pub lame_duck_duration: Option<Dur>,
    /// Drain: wait this long (not accepting, /ready 503) before the spread starts
    /// [default: 0s].
    #[arg(long, env = "IXN_LAME_DUCK_GRACE", value_name = "DUR")]
    pub lame_duck_grace: Option<Dur>,
    /// Admin API (docs/PROTOCOL.md §10): list and close clients, list and lift bans.
    #[arg(long, env = "IXN_ADMIN_LISTEN", value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token of the admin API (the file's content without its trailing newline);
    /// required when --admin-listen is not loopback.
    #[arg(long, env = "IXN_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Reload the registry file when it changes (a Kubernetes ConfigMap's symlink swap
    /// included), debounced, with the same refuse-and-keep rules as SIGHUP; only when
    /// --registry is a file [default: true].
    #[arg(long, env = "IXN_REGISTRY_WATCH", value_name = "BOOL")]
    pub registry_watch: Option<bool>,
    /// Worker threads, one io_uring event loop each [default: number of CPUs].
    #[arg(long, env = "IXN_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Client registry (TOML) [default: embedded].
    #[arg(long, env = "IXN_REGISTRY", value_name = "FILE")]
    pub registry: Option<PathBuf>,
    /// From accept to registration [default: 5s].
    #[arg(long, env = "IXN_REGISTRATION_TIMEOUT", value_name = "DUR")]
    pub registration_timeout: Option<Dur>,
    /// From the first rejection to the close [default: 1s].
    #[arg(long, env = "IXN_ERROR_DISCONNECT_TIMEOUT", value_name = "DUR")]
    pub error_disconnect_timeout: Option<Dur>,
    /// Timer wheel granularity [default: 100ms].
    #[arg(long, env = "IXN_TIMER_TICK", value_name = "DUR")]
    pub timer_tick: Option<Dur>,
    /// Concurrent connections, all workers together [default: 100000].
    #[arg(long, env = "IXN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest frame, length field included, 8..=1048576 [default: 8192].
    #[arg(long, env = "IXN_MAX_FRAME_LEN", value_name = "BYTES")]
    pub max_frame_len: Option<usize>,
    /// Prometheus text format at GET /metrics, plus /live and /ready [default: 127.0.0.1:9464].
    #[arg(long, env = "IXN_METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Listen backlog of each worker's socket [default: 4096].
    #[arg(long, env = "IXN_BACKLOG", value_name = "N")]
    pub backlog: Option<u32>,
    /// TCP keepalive idle time of client connections (set on the listeners, so every
    /// accepted connection has it); `0s` turns it off [default: 60s].
    #[arg(long, env = "IXN_TCP_KEEPALIVE", value_name = "DUR")]
    pub tcp_keepalive: Option<Dur>,
    /// Close a connection whose answers have not drained for this long [default: 10s].
    #[arg(long, env = "IXN_WRITE_TIMEOUT", value_name = "DUR")]
    pub write_timeout: Option<Dur>,
    /// Longest wait for registered clients to receive EventError{11} on drain [default: 5s].
    #[arg(long, env = "IXN_DRAIN_TIMEOUT", value_name = "DUR")]
    pub drain_timeout: Option<Dur>,
    /// Retired with engine v1: refused, with what to say instead.
    #[arg(long, env = "IXN_RING_SETUP", hide = true)]
    pub ring_setup: Option<String>,
    /// Pin each worker thread to one CPU [default: true].
    #[arg(long, env = "IXN_PIN_WORKERS", value_name = "BOOL")]
    pub pin_workers: Option<bool>,
    /// Record and export metrics; `false` serves only /live and /ready [default: true].
    #[arg(long, env = "IXN_METRICS", value_name = "BOOL")]
    pub metrics: Option<bool>,
    /// Log format [default: text]; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "IXN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// On a registered connection, a frame begun must be complete within this [default: 5s].
    #[arg(long, env = "IXN_FRAME_TIMEOUT", value_name = "DUR")]
    pub frame_timeout: Option<Dur>,
    /// Longest wait for the peer's close after the last answer of a closing connection
    /// [default: 1s].
    #[arg(long, env = "IXN_CLOSE_LINGER", value_name = "DUR")]
    pub close_linger: Option<Dur>,
    /// SO_SNDBUF of client sockets: what a client that does not read can pin in the
    /// kernel [default: 65536].
    #[arg(long, env = "IXN_SOCKET_SEND_BUFFER", value_name = "BYTES")]
    pub socket_send_buffer: Option<usize>,
    /// Concurrent connections on the metrics listener; the next is closed at once
    /// [default: 64].
    #[arg(long, env = "IXN_METRICS_MAX_CONNECTIONS", value_name = "N")]
    pub metrics_max_connections: Option<usize>,
    /// io_uring or epoll for the client sockets; auto: io_uring where it is allowed, else
    /// epoll with a warning [default: auto].
    #[arg(long, env = "IXN_ENGINE", value_enum)]
    pub engine: Option<Engine>,
    /// Retired with engine v1: refused, with what to say instead.
    #[arg(long, env = "IXN_IO_ENGINE", hide = true)]
    pub io_engine: Option<String>,
    /// A client's KeepAlive is clamped to at least this, whole seconds (docs/PROTOCOL.md
    /// §12) [default: 5s].
    #[arg(long, env = "IXN_KEEPALIVE_MIN", value_name = "DUR")]
    pub keepalive_min: Option<Dur>,
    /// A client's KeepAlive is clamped to at most this, whole seconds [default: 3600s].
    #[arg(long, env = "IXN_KEEPALIVE_MAX", value_name = "DUR")]
    pub keepalive_max: Option<Dur>,
    /// The keepalive of a registration that carries no KeepAlive (or 0), whole seconds;
    /// 0s is none [default: 0s].
    #[arg(long, env = "IXN_KEEPALIVE_DEFAULT", value_name = "DUR")]
    pub keepalive_default: Option<Dur>,
    /// Redis of the fleet (docs/PROTOCOL.md §13), repeatable: one URL a single primary,
    /// several the seed nodes of a Redis Cluster; redis:// or rediss:// (TLS).
    #[arg(
        long,
        env = "IXN_FLEET_REDIS",
        value_name = "URL",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub fleet_redis: Vec<String>,
    /// Redis AUTH password (the file's content without its trailing newline).
    #[arg(long, env = "IXN_FLEET_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub fleet_redis_password_file: Option<PathBuf>,
    /// Key prefix shared by the servers of one fleet [default: ixn].
    #[arg(long, env = "IXN_FLEET_NAME", value_name = "NAME")]
    pub fleet_name: Option<String>,
    /// This server's id in the fleet, unique among live servers [default: host name, -,
    /// process id].
    #[arg(long, env = "IXN_FLEET_INSTANCE", value_name = "ID")]
    pub fleet_instance: Option<String>,
    /// A server whose lease is not renewed for this long is dead to the fleet
    /// [default: 10s].
    #[arg(long, env = "IXN_FLEET_LEASE", value_name = "DUR")]
    pub fleet_lease: Option<Dur>,
    /// Longest wait for the fleet's name table before --fleet-unavailable applies
    /// [default: 500ms].
    #[arg(long, env = "IXN_FLEET_TIMEOUT", value_name = "DUR")]
    pub fleet_timeout: Option<Dur>,
    /// What a registration under reject/replace gets when the fleet's name table does not
    /// answer in time: allow (registered on this server's word) or refuse (EventError 18)
    /// [default: allow].
    #[arg(long, env = "IXN_FLEET_UNAVAILABLE", value_enum)]
    pub fleet_unavailable: Option<FleetUnavailable>,
    /// With --fleet-redis: a ban made by any server applies on every server [default: true].
    #[arg(long, env = "IXN_FLEET_BANS", value_name = "BOOL")]
    pub fleet_bans: Option<bool>,
    /// Validate the configuration and the registry, then exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// Start the drain of the server with this PID (SIGTERM) and wait until it has
    /// exited, then exit: a Kubernetes preStop hook (`--signal-drain 1`) that holds the
    /// kubelet's own SIGTERM back until the lame duck is over.
    #[arg(long, value_name = "PID")]
    #[serde(skip)]
    pub signal_drain: Option<i32>,
    /// Set by a running server on the new binary it starts for a live upgrade (SIGUSR2):
    /// the Unix socket to take its listeners and connections from.
    #[arg(long, value_name = "SOCKET")]
    #[serde(skip)]
    pub upgrade_from: Option<PathBuf>,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// Path.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("{file}: {message}")]
    Parse {
        /// Path.
        file: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The registry file is not a valid registry (the message names file, line and key).
    #[error(transparent)]
    Registry(#[from] ixn_proto::registry::RegistryError),
}

/// The registry a configuration names: its file read and parsed, or the embedded one.
/// `ixn-server` (at start and for `--check-config`) and `ixnctl check-config` both come
/// here, so both accept and refuse alike.
pub fn registry(config: &Config) -> Result<ixn_proto::registry::Registry, ConfigError> {
    match &config.registry {
        None => Ok(ixn_proto::registry::Registry::embedded()),
        Some(path) => load_registry(path),
    }
}

/// Reads and parses a registry file: the core parses text, reading it is the server's job.
pub fn load_registry(path: &Path) -> Result<ixn_proto::registry::Registry, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: file.clone(),
        source,
    })?;
    Ok(ixn_proto::registry::Registry::parse(&text, &file)?)
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listeners.
    pub listen: Vec<SocketAddr>,
    /// Client listeners that require a PROXY header.
    pub proxy_listen: Vec<SocketAddr>,
    /// Peers trusted to send PROXY headers.
    pub proxy_protocol_trusted: Vec<ipnet::IpNet>,
    /// TLS client listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// PROXY header, then TLS.
    pub proxy_tls_listen: Vec<SocketAddr>,
    /// Certificate, key and client-certificate settings of the TLS listeners.
    pub tls: crate::tls::TlsFiles,
    /// Admission control (docs/PROTOCOL.md §11).
    pub admission: crate::admission::Limits,
    /// Drain: the spread of EventError 11 over registered clients (zero: at once).
    pub lame_duck_duration: Duration,
    /// Drain: the wait before the spread.
    pub lame_duck_grace: Duration,
    /// Admin API listener.
    pub admin_listen: Option<SocketAddr>,
    /// The admin API's bearer token file.
    pub admin_token_file: Option<PathBuf>,
    /// Reload the registry file when it changes.
    pub registry_watch: bool,
    /// `--upgrade-from`: this process is a live upgrade's new binary.
    pub upgrade_from: Option<PathBuf>,
    /// Worker threads.
    pub workers: usize,
    /// Registry file, or `None` for the embedded one.
    pub registry: Option<PathBuf>,
    /// Session timeouts.
    pub session: SessionConfig,
    /// Timer wheel tick.
    pub timer_tick: Duration,
    /// Connection limit across workers.
    pub max_connections: usize,
    /// Frame size limit.
    pub max_frame_len: usize,
    /// Metrics and health listener.
    pub metrics_listen: SocketAddr,
    /// Listen backlog.
    pub backlog: u32,
    /// Keepalive idle time, `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// Write stall limit.
    pub write_timeout: Duration,
    /// Drain limit.
    pub drain_timeout: Duration,
    /// CPU pinning.
    pub pin_workers: bool,
    /// Metrics on or off.
    pub metrics: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Frame deadline on registered connections.
    pub frame_timeout: Duration,
    /// Longest wait for the peer's close once the last answer is written.
    pub close_linger: Duration,
    /// SO_SNDBUF of client sockets.
    pub socket_send_buffer: usize,
    /// Concurrent metrics-listener connections.
    pub metrics_max_connections: usize,
    /// io_uring or epoll.
    pub engine: Engine,
    /// The fleet (docs/PROTOCOL.md §13); `None` without `--fleet-redis`.
    pub fleet: Option<FleetConfig>,
}

/// A fleet's settings (docs/PROTOCOL.md §13).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Redis URLs: one a primary, several a Redis Cluster's seed nodes.
    pub redis: Vec<String>,
    /// AUTH password file.
    pub password_file: Option<PathBuf>,
    /// Key prefix.
    pub name: String,
    /// This server's id.
    pub instance: String,
    /// Lease.
    pub lease: Duration,
    /// Longest wait for the name table.
    pub timeout: Duration,
    /// What a registration gets when the table does not answer.
    pub unavailable: FleetUnavailable,
    /// Bans shared.
    pub bans: bool,
}

/// The keepalive settings (docs/PROTOCOL.md §12) as the session takes them: whole seconds
/// a KeepAlive can carry (1..=65535 s; the default may be 0s, off), and min ≤ default ≤ max
/// when the default is on; anything else is refused, naming the flag.
fn keep_alive_config(
    min: Duration,
    max: Duration,
    default: Duration,
) -> Result<KeepAliveConfig, ConfigError> {
    for (flag, d, zero_ok) in [
        ("--keepalive-min", min, false),
        ("--keepalive-max", max, false),
        ("--keepalive-default", default, true),
    ] {
        let whole = d.subsec_nanos() == 0;
        let in_range = (1..=u64::from(u16::MAX)).contains(&d.as_secs());
        if !(whole && (in_range || (zero_ok && d.is_zero()))) {
            let off = if zero_ok { " (0s turns it off)" } else { "" };
            return Err(ConfigError::Invalid(format!(
                "{flag} {} is not a whole number of seconds in 1s..=65535s{off}",
                fmt_dur(d)
            )));
        }
    }
    if min > max {
        return Err(ConfigError::Invalid(format!(
            "--keepalive-min {} is longer than --keepalive-max {}",
            fmt_dur(min),
            fmt_dur(max)
        )));
    }
    if !default.is_zero() && !(min..=max).contains(&default) {
        return Err(ConfigError::Invalid(format!(
            "--keepalive-default {} is outside --keepalive-min {} ..= --keepalive-max {}",
            fmt_dur(default),
            fmt_dur(min),
            fmt_dur(max)
        )));
    }
    // Each fits a u16: checked above.
    let secs = |d: Duration| d.as_secs() as u16;
    Ok(KeepAliveConfig {
        min: secs(min),
        max: secs(max),
        default: secs(default),
    })
}

impl FleetConfig {
    /// The AUTH password, if a file gives one.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.display().to_string(),
            source,
        })?;
        Ok(Some(
            text.strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_string(),
        ))
    }
}

/// The default `--fleet-instance`: the host name, `-`, the process id.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ixn".into());
    format!("{host}-{}", std::process::id())
}

impl Args {
    /// Fills what the command line and environment left unset from `file`. The
    /// destructuring is exhaustive: a new setting that is not merged here does not compile.
    fn merge(self, file: Args) -> Args {
        let Args {
            config: _,
            listen,
            proxy_listen,
            proxy_protocol_trusted,
            tls_listen,
            proxy_tls_listen,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_require_client_cert,
            max_connection_rate,
            connection_rate_mode,
            max_connections_per_ip,
            ban_failures,
            ban_window,
            ban_duration,
            ban_filter,
            lame_duck_duration,
            lame_duck_grace,
            admin_listen,
            admin_token_file,
            registry_watch,
            workers,
            registry,
            registration_timeout,
            error_disconnect_timeout,
            timer_tick,
            max_connections,
            max_frame_len,
            metrics_listen,
            backlog,
            tcp_keepalive,
            write_timeout,
            drain_timeout,
            ring_setup,
            pin_workers,
            metrics,
            log_format,
            frame_timeout,
            close_linger,
            socket_send_buffer,
            metrics_max_connections,
            engine,
            io_engine,
            keepalive_min,
            keepalive_max,
            keepalive_default,
            fleet_redis,
            fleet_redis_password_file,
            fleet_name,
            fleet_instance,
            fleet_lease,
            fleet_timeout,
            fleet_unavailable,
            fleet_bans,
            check_config: _,
            signal_drain: _,
            upgrade_from: _,
        } = file;
        fn list<T>(mine: Vec<T>, theirs: Vec<T>) -> Vec<T> {
            if mine.is_empty() {
                theirs
            } else {
                mine
            }
        }
        Args {
            listen: list(self.listen, listen),
            proxy_listen: list(self.proxy_listen, proxy_listen),
            proxy_protocol_trusted: list(self.proxy_protocol_trusted, proxy_protocol_trusted),
            tls_listen: list(self.tls_listen, tls_listen),
            proxy_tls_listen: list(self.proxy_tls_listen, proxy_tls_listen),
            tls_cert: self.tls_cert.or(tls_cert),
            tls_key: self.tls_key.or(tls_key),
            tls_client_ca: self.tls_client_ca.or(tls_client_ca),
            tls_require_client_cert: self.tls_require_client_cert.or(tls_require_client_cert),
            max_connection_rate: self.max_connection_rate.or(max_connection_rate),
            connection_rate_mode: self.connection_rate_mode.or(connection_rate_mode),
            max_connections_per_ip: self.max_connections_per_ip.or(max_connections_per_ip),
            ban_failures: self.ban_failures.or(ban_failures),
            ban_window: self.ban_window.or(ban_window),
            ban_duration: self.ban_duration.or(ban_duration),
            ban_filter: self.ban_filter.or(ban_filter),
            lame_duck_duration: self.lame_duck_duration.or(lame_duck_duration),
            lame_duck_grace: self.lame_duck_grace.or(lame_duck_grace),
            admin_listen: self.admin_listen.or(admin_listen),
            admin_token_file: self.admin_token_file.or(admin_token_file),
            registry_watch: self.registry_watch.or(registry_watch),
            workers: self.workers.or(workers),
            registry: self.registry.or(registry),
            registration_timeout: self.registration_timeout.or(registration_timeout),
            error_disconnect_timeout: self.error_disconnect_timeout.or(error_disconnect_timeout),
            timer_tick: self.timer_tick.or(timer_tick),
            max_connections: self.max_connections.or(max_connections),
            max_frame_len: self.max_frame_len.or(max_frame_len),
            metrics_listen: self.metrics_listen.or(metrics_listen),
            backlog: self.backlog.or(backlog),
            tcp_keepalive: self.tcp_keepalive.or(tcp_keepalive),
            write_timeout: self.write_timeout.or(write_timeout),
            drain_timeout: self.drain_timeout.or(drain_timeout),
            ring_setup: self.ring_setup.or(ring_setup),
            pin_workers: self.pin_workers.or(pin_workers),
            metrics: self.metrics.or(metrics),
            log_format: self.log_format.or(log_format),
            frame_timeout: self.frame_timeout.or(frame_timeout),
            close_linger: self.close_linger.or(close_linger),
            socket_send_buffer: self.socket_send_buffer.or(socket_send_buffer),
            metrics_max_connections: self.metrics_max_connections.or(metrics_max_connections),
            engine: self.engine.or(engine),
            io_engine: self.io_engine.or(io_engine),
            keepalive_min: self.keepalive_min.or(keepalive_min),
            keepalive_max: self.keepalive_max.or(keepalive_max),
            keepalive_default: self.keepalive_default.or(keepalive_default),
            fleet_redis: list(self.fleet_redis, fleet_redis),
            fleet_redis_password_file: self.fleet_redis_password_file.or(fleet_redis_password_file),
            fleet_name: self.fleet_name.or(fleet_name),
            fleet_instance: self.fleet_instance.or(fleet_instance),
            fleet_lease: self.fleet_lease.or(fleet_lease),
            fleet_timeout: self.fleet_timeout.or(fleet_timeout),
            fleet_unavailable: self.fleet_unavailable.or(fleet_unavailable),
            fleet_bans: self.fleet_bans.or(fleet_bans),
            config: self.config,
            check_config: self.check_config,
            signal_drain: self.signal_drain,
            upgrade_from: self.upgrade_from,
        }
    }

    /// Reads the `--config` file if any, merges and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let args = match self.config.clone() {
            Some(path) => {
                let file = load_file(&path)?;
                self.merge(file)
            }
            None => self,
        };
        retired(&args)?;
        use defaults as def;
        let d = |v: Option<Dur>, default: Duration| v.map_or(default, |d| d.0);
        let cfg = Config {
            listen: if args.listen.is_empty()
                && args.proxy_listen.is_empty()
                && args.tls_listen.is_empty()
                && args.proxy_tls_listen.is_empty()
            {
                vec![def::LISTEN]
            } else {
                args.listen
            },
            proxy_listen: args.proxy_listen,
            tls_listen: args.tls_listen,
            proxy_tls_listen: args.proxy_tls_listen,
            tls: crate::tls::TlsFiles {
                cert: args.tls_cert,
                key: args.tls_key,
                client_ca: args.tls_client_ca,
                require_client_cert: args
                    .tls_require_client_cert
                    .unwrap_or(def::TLS_REQUIRE_CLIENT_CERT),
            },
            admission: crate::admission::Limits {
                rate: args.max_connection_rate.unwrap_or(def::MAX_CONNECTION_RATE),
                rate_mode: args.connection_rate_mode.unwrap_or_default(),
                per_ip: args
                    .max_connections_per_ip
                    .unwrap_or(def::MAX_CONNECTIONS_PER_IP),
                ban_failures: args.ban_failures.unwrap_or(def::BAN_FAILURES),
                ban_window: d(args.ban_window, def::BAN_WINDOW),
                ban_duration: d(args.ban_duration, def::BAN_DURATION),
                ban_filter: args.ban_filter.unwrap_or(def::BAN_FILTER),
            },
            lame_duck_duration: d(args.lame_duck_duration, def::LAME_DUCK_DURATION),
            lame_duck_grace: d(args.lame_duck_grace, def::LAME_DUCK_GRACE),
            admin_listen: args.admin_listen,
            admin_token_file: args.admin_token_file,
            registry_watch: args.registry_watch.unwrap_or(def::REGISTRY_WATCH),
            upgrade_from: args.upgrade_from,
            proxy_protocol_trusted: if args.proxy_protocol_trusted.is_empty() {
                def::PROXY_PROTOCOL_TRUSTED
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            } else {
                args.proxy_protocol_trusted
            },
            workers: args.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            registry: args.registry,
            session: SessionConfig {
                registration_timeout: d(args.registration_timeout, def::REGISTRATION_TIMEOUT),
                error_disconnect_timeout: d(
                    args.error_disconnect_timeout,
                    def::ERROR_DISCONNECT_TIMEOUT,
                ),
                keep_alive: keep_alive_config(
                    d(args.keepalive_min, def::KEEPALIVE_MIN),
                    d(args.keepalive_max, def::KEEPALIVE_MAX),
                    d(args.keepalive_default, def::KEEPALIVE_DEFAULT),
                )?,
            },
            timer_tick: d(args.timer_tick, def::TIMER_TICK),
            max_connections: args.max_connections.unwrap_or(def::MAX_CONNECTIONS),
            max_frame_len: args.max_frame_len.unwrap_or(def::MAX_FRAME_LEN),
            metrics_listen: args.metrics_listen.unwrap_or(def::METRICS_LISTEN),
            backlog: args.backlog.unwrap_or(def::BACKLOG),
            tcp_keepalive: Some(d(args.tcp_keepalive, def::TCP_KEEPALIVE)).filter(|d| !d.is_zero()),
            write_timeout: d(args.write_timeout, def::WRITE_TIMEOUT),
            drain_timeout: d(args.drain_timeout, def::DRAIN_TIMEOUT),
            pin_workers: args.pin_workers.unwrap_or(def::PIN_WORKERS),
            metrics: args.metrics.unwrap_or(def::METRICS),
            log_format: args.log_format.unwrap_or_default(),
            frame_timeout: d(args.frame_timeout, def::FRAME_TIMEOUT),
            close_linger: d(args.close_linger, def::CLOSE_LINGER),
            socket_send_buffer: args.socket_send_buffer.unwrap_or(def::SOCKET_SEND_BUFFER),
            metrics_max_connections: args
                .metrics_max_connections
                .unwrap_or(def::METRICS_MAX_CONNECTIONS),
            engine: args.engine.unwrap_or_default(),
            fleet: (!args.fleet_redis.is_empty()).then(|| FleetConfig {
                redis: args.fleet_redis,
                password_file: args.fleet_redis_password_file,
                name: args.fleet_name.unwrap_or_else(|| def::FLEET_NAME.into()),
                instance: args.fleet_instance.unwrap_or_else(default_instance),
                lease: d(args.fleet_lease, def::FLEET_LEASE),
                timeout: d(args.fleet_timeout, def::FLEET_TIMEOUT),
                unavailable: args.fleet_unavailable.unwrap_or_default(),
                bans: args.fleet_bans.unwrap_or(def::FLEET_BANS),
            }),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Refuses the flags engine v1 took with it, saying what to use instead: a flag that
/// quietly did nothing would leave an operator believing it did.
fn retired(args: &Args) -> Result<(), ConfigError> {
    if let Some(v) = &args.io_engine {
        let instead = match v.as_str() {
            "v1" => "--engine epoll",
            "v2" => "--engine uring",
            _ => "--engine auto",
        };
        return Err(ConfigError::Invalid(format!(
            "--io-engine (IXN_IO_ENGINE, io_engine) is gone with engine v1: use `{instead}`"
        )));
    }
    if args.ring_setup.is_some() {
        return Err(ConfigError::Invalid(
            "--ring-setup (IXN_RING_SETUP, ring_setup) is gone with engine v1: the io_uring \
             engine always sets up its ring with SINGLE_ISSUER | DEFER_TASKRUN; remove it"
                .into(),
        ));
    }
    Ok(())
}

fn load_file(path: &Path) -> Result<Args, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: file.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let (line, column) = crate::registry::line_col(&text, e.span().map_or(0, |s| s.start));
        ConfigError::Parse {
            file: format!("{file}:{line}:{column}"),
            message: e.message().trim().to_string(),
        }
    })
}

/// Shortest duration any setting accepts (docs/PROTOCOL.md §8).
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// Longest duration any setting accepts: 7 days. Bounding every duration keeps all deadline
/// arithmetic (`Instant + Duration`, ticks of the timer wheel) far from overflow.
pub const MAX_DURATION: Duration = crate::session::MAX_TIMEOUT;
/// Longest TCP keepalive idle time the kernel accepts (`TCP_KEEPIDLE` ≤ 32,767 s).
pub const MAX_TCP_KEEPALIVE: Duration = Duration::from_secs(32_767);
/// Longest timer tick.
pub const MAX_TIMER_TICK: Duration = Duration::from_secs(1);
/// Smallest and largest `--socket-send-buffer` (the kernel's minimum; far below i32 overflow).
pub const SOCKET_SEND_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=(1 << 30);

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Config {
    /// What every connection shares, for the sans-IO core.
    pub fn conn_config(&self) -> ixn_proto::connection::ConnConfig {
        ixn_proto::connection::ConnConfig {
            session: self.session,
            max_frame_len: self.max_frame_len,
            frame_timeout: self.frame_timeout,
            close_linger: self.close_linger,
        }
    }

    /// The admin API's bearer token: the `--admin-token-file`'s content without its
    /// trailing newline; a file that cannot be read or holds no token is refused.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.display().to_string(),
            source,
        })?;
        let token = text.strip_suffix('\n').unwrap_or(&text);
        let token = token.strip_suffix('\r').unwrap_or(token);
        if token.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "--admin-token-file {}: the file holds no token",
                path.display()
            )));
        }
        Ok(Some(token.to_string()))
    }

    /// The durations served by the timer wheel, by flag name: each must lie in
    /// [`MIN_DURATION`]`..=`[`MAX_DURATION`] and be at least one timer tick.
    fn wheel_timeouts(&self) -> [(&'static str, Duration); 5] {
        [
            ("--registration-timeout", self.session.registration_timeout),
            (
                "--error-disconnect-timeout",
                self.session.error_disconnect_timeout,
            ),
            ("--frame-timeout", self.frame_timeout),
            ("--close-linger", self.close_linger),
            ("--write-timeout", self.write_timeout),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN_LIMIT).contains(&self.max_frame_len) {
            return bad(format!(
                "--max-frame-len {} is outside {MIN_FRAME_LEN}..={MAX_FRAME_LEN_LIMIT}",
                self.max_frame_len
            ));
        }
        if self.workers == 0 || self.workers > 1024 {
            return bad(format!("--workers {} is outside 1..=1024", self.workers));
        }
        let timeouts = self.wheel_timeouts();
        let all = timeouts.iter().copied().chain([
            ("--drain-timeout", self.drain_timeout),
            ("--ban-window", self.admission.ban_window),
            ("--ban-duration", self.admission.ban_duration),
        ]);
        for (flag, d) in all {
            if !(MIN_DURATION..=MAX_DURATION).contains(&d) {
                return bad(format!("{flag} {} is outside 1ms..=7days", fmt_dur(d)));
            }
        }
        for (flag, d) in [
            ("--lame-duck-duration", self.lame_duck_duration),
            ("--lame-duck-grace", self.lame_duck_grace),
        ] {
            if !d.is_zero() && !(MIN_DURATION..=MAX_DURATION).contains(&d) {
                return bad(format!(
                    "{flag} {} is outside 1ms..=7days (0s turns it off)",
                    fmt_dur(d)
                ));
            }
        }
        if !(MIN_DURATION..=MAX_TIMER_TICK).contains(&self.timer_tick) {
            return bad(format!(
                "--timer-tick {} is outside 1ms..=1s",
                fmt_dur(self.timer_tick)
            ));
        }
        if let Some((flag, d)) = timeouts.iter().min_by_key(|(_, d)| *d) {
            if self.timer_tick > *d {
                return bad(format!(
                    "--timer-tick {} is longer than {flag} {}: deadlines would be served late",
                    fmt_dur(self.timer_tick),
                    fmt_dur(*d)
                ));
            }
        }
        if let Some(k) = self.tcp_keepalive {
            if !(Duration::from_secs(1)..=MAX_TCP_KEEPALIVE).contains(&k) {
                return bad(format!(
                    "--tcp-keepalive {} is outside 1s..=32767s (0s turns it off)",
                    fmt_dur(k)
                ));
            }
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1".into());
        }
        let tls_listeners = !self.tls_listen.is_empty() || !self.proxy_tls_listen.is_empty();
        if tls_listeners && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return bad("--tls-listen and --proxy-tls-listen need --tls-cert and --tls-key".into());
        }
        if self.tls.require_client_cert && self.tls.client_ca.is_none() {
            return bad("--tls-require-client-cert true needs --tls-client-ca".into());
        }
        if let Some(addr) = self.admin_listen {
            if self.admin_token()?.is_none() && !addr.ip().is_loopback() {
                return bad(format!(
                    "--admin-listen {addr} is not loopback: it needs --admin-token-file"
                ));
            }
        }
        if self.backlog == 0 {
            return bad("--backlog must be at least 1".into());
        }
        if !SOCKET_SEND_BUFFER_RANGE.contains(&self.socket_send_buffer) {
            return bad(format!(
                "--socket-send-buffer {} is outside {}..={}",
                self.socket_send_buffer,
                SOCKET_SEND_BUFFER_RANGE.start(),
                SOCKET_SEND_BUFFER_RANGE.end()
            ));
        }
        if let Some(f) = &self.fleet {
            f.validate()?;
        }
        if !(1..=65_536).contains(&self.metrics_max_connections) {
            return bad(format!(
                "--metrics-max-connections {} is outside 1..=65536",
                self.metrics_max_connections
            ));
        }
        Ok(())
    }
}

impl FleetConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for url in &self.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return bad(format!(
                    "--fleet-redis {url}: a redis:// or rediss:// URL is needed"
                ));
            }
        }
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !id_ok(&self.name) {
            return bad(format!(
                "--fleet-name {:?}: 1 to 128 characters of A-Z a-z 0-9 . _ -",
                self.name
            ));
        }
        if !id_ok(&self.instance) {
            return bad(format!(
                "--fleet-instance {:?}: 1 to 128 characters of A-Z a-z 0-9 . _ -",
                self.instance
            ));
        }
        for (flag, d) in [
            ("--fleet-lease", self.lease),
            ("--fleet-timeout", self.timeout),
        ] {
            if !(MIN_DURATION..=MAX_DURATION).contains(&d) {
                return bad(format!("{flag} {} is outside 1ms..=7days", fmt_dur(d)));
            }
        }
        if self.lease < Duration::from_millis(300) {
            return bad(format!(
                "--fleet-lease {} is shorter than 300ms: it is renewed three times per lease",
                fmt_dur(self.lease)
            ));
        }
        self.password()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["ixn-server"];
        v.extend_from_slice(args);
        Args::try_parse_from(v).unwrap().resolve()
    }

    #[test]
    fn defaults_are_section_8() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:7400".parse().unwrap()]);
        assert_eq!(c.session, SessionConfig::default());
        assert_eq!(c.timer_tick, Duration::from_millis(100));
        assert_eq!(c.max_connections, 100_000);
        assert_eq!(c.max_frame_len, 8192);
        assert_eq!(c.metrics_listen, "127.0.0.1:9464".parse().unwrap());
        assert!(c.registry.is_none());
    }

    #[test]
    fn flags_and_durations() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--registration-timeout",
            "250ms",
            "--error-disconnect-timeout",
            "2s",
            "--timer-tick",
            "10ms",
            "--max-frame-len",
            "1048576",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.session.registration_timeout, Duration::from_millis(250));
        assert_eq!(c.session.error_disconnect_timeout, Duration::from_secs(2));
        assert_eq!(c.timer_tick, Duration::from_millis(10));
        assert!(parse(&["--max-frame-len", "1048577"]).is_err());
        assert!(parse(&["--max-frame-len", "7"]).is_err());
    }

    #[test]
    fn file_fills_what_flags_leave() {
        let dir = std::env::temp_dir().join(format!("ixn-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "listen = [\"127.0.0.1:9\"]\nmax_connections = 7\ntimer_tick = \"20ms\"\n",
        )
        .unwrap();
        let c = parse(&["--config", f.to_str().unwrap(), "--max-connections", "8"]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:9".parse().unwrap()]);
        assert_eq!(c.max_connections, 8, "command line wins");
        assert_eq!(c.timer_tick, Duration::from_millis(20));
        std::fs::write(&f, "max_connections = 7\n\nmax_conections = 7\n").unwrap();
        let e = parse(&["--config", f.to_str().unwrap()]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("max_conections"), "{e}");
        assert!(e.contains("c.toml:3:"), "names file and line: {e}");
    }

    #[test]
    fn a_missing_registry_file_is_an_error_naming_it() {
        let e = load_registry(Path::new("/nonexistent/reg.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/reg.toml"), "{e}");
    }

    #[test]
    fn durations_are_bounded_and_named() {
        for (flag, value) in [
            ("--registration-timeout", "300000000000years"),
            ("--registration-timeout", "8days"),
            ("--error-disconnect-timeout", "0s"),
            ("--frame-timeout", "500us"),
            ("--close-linger", "8days"),
            ("--write-timeout", "0s"),
            ("--drain-timeout", "8days"),
            ("--timer-tick", "2s"),
            ("--timer-tick", "0s"),
            ("--tcp-keepalive", "32768s"),
            ("--tcp-keepalive", "500ms"),
        ] {
            let e = parse(&[flag, value]).expect_err(value).to_string();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
        // The tick may not exceed the smallest wheel timeout.
        let e = parse(&["--timer-tick", "200ms", "--close-linger", "100ms"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--timer-tick") && e.contains("--close-linger"),
            "{e}"
        );
        // The bounds themselves are accepted.
        let c = parse(&[
            "--registration-timeout",
            "7days",
            "--error-disconnect-timeout",
            "1ms",
            "--timer-tick",
            "1ms",
            "--tcp-keepalive",
            "32767s",
        ])
        .unwrap();
        assert_eq!(c.session.registration_timeout, MAX_DURATION);
        assert_eq!(c.tcp_keepalive, Some(MAX_TCP_KEEPALIVE));
        assert_eq!(
            parse(&["--tcp-keepalive", "0s"]).unwrap().tcp_keepalive,
            None
        );
    }

    #[test]
    fn revision_2_flags() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.frame_timeout, Duration::from_secs(5));
        assert_eq!(c.close_linger, Duration::from_secs(1));
        assert_eq!(c.socket_send_buffer, 65_536);
        assert_eq!(c.metrics_max_connections, 64);
        let e = parse(&["--socket-send-buffer", "100"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--socket-send-buffer"), "{e}");
        let e = parse(&["--metrics-max-connections", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--metrics-max-connections"), "{e}");
    }
}
