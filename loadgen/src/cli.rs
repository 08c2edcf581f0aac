//! Command line of `ixn-loadgen` (every flag is documented in docs/LOADGEN.md).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// connect → RequestRegisterClient → EventAck → close, repeated.
    Churn,
    /// Open connections, register them and keep them open for the run.
    Hold,
    /// Connect, send nothing, and time the server's drop against its deadline.
    Silent,
    /// Invalid clients of every kind, checking error codes and disconnect timing.
    Invalid,
    /// A weighted mix of churn, invalid and silent (`--mix`).
    Mix,
    /// A reconnection storm: hold --connections registered clients on --target, wait for
    /// its drain (or start it with --drain-pid), then reconnect each to
    /// --reconnect-targets with exponential backoff and full jitter until all are
    /// registered again.
    Storm,
    /// Register with --keepalive, then go silent: time the server's EventError 19 and
    /// close against 1.5 × the keepalive in force (docs/PROTOCOL.md §12).
    Lapse,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// `--keepalive`: whole seconds a KeepAlive attribute can carry (1..=65535).
fn keep_alive(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.subsec_nanos() != 0 || !(1..=u64::from(u16::MAX)).contains(&d.as_secs()) {
        return Err(format!("{s}: whole seconds in 1s..=65535s"));
    }
    Ok(d)
}

/// A duration that clap can show as a default (`5s`), so that defaults taken from the
/// server's typed constants (`ixn::defaults`) need not be written again as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        duration(s).map(Dur)
    }
}

/// A load generator for IXN/1 registration traffic.
#[derive(Debug, Clone, Parser)]
#[command(name = "ixn-loadgen", version)]
pub struct Args {
    /// Scenario to run.
    #[arg(long, value_enum, default_value = "churn")]
    pub scenario: Scenario,
    /// Server address.
    #[arg(long, default_value_t = ixn::defaults::LISTEN)]
    pub target: SocketAddr,
    /// Closed loop: connections in flight at once (ignored with --rate).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: connections started per second, latency measured from each one's
    /// intended start (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop with a rate profile instead of --rate and --duration, as k6's stages:
    /// `10s:1000/s,30s:5000/s` ramps linearly from 0 to 1,000/s over 10 s, then to
    /// 5,000/s over 30 s; the run (warm-up included) ends with the last stage.
    #[arg(long, value_parser = Stages::parse)]
    pub stages: Option<Stages>,
    /// Run time (measurement, after the warm-up).
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many connections instead (warm-up not included).
    #[arg(long)]
    pub count: Option<u64>,
    /// Excluded from every statistic.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub warmup: Duration,
    /// hold: connections to open and register.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// hold: connections opened per second while ramping up.
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Source addresses: ranges `127.0.0.2-127.0.0.40` and/or comma-separated addresses
    /// [default: 127.0.0.2-127.0.0.17 for a loopback IPv4 target, else the kernel's choice].
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<String>,
    /// Threads, one io_uring event loop each [default: CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin thread i to CPU (i + --first-cpu) mod CPUs.
    #[arg(long, default_value_t = false)]
    pub pin: bool,
    /// First CPU for --pin.
    #[arg(long, default_value_t = 0)]
    pub first_cpu: usize,
    /// ClientName that registers successfully.
    #[arg(long, default_value = "MediaServer_email")]
    pub client_name: String,
    /// Spread registrations over this many ClientNames, `<client-name><i>` for i in
    /// 0..N, each taking the next (0: every one uses --client-name): for names under
    /// `on_duplicate = "reject"`, with N well above the connections in flight, so that a
    /// name is free again before it comes round.
    #[arg(long, default_value_t = 0)]
    pub client_names: u64,
    /// Its ClientType (1..=5).
    #[arg(long, default_value_t = 1)]
    pub client_type: i32,
    /// Its Credential, if the registry requires one.
    #[arg(long)]
    pub credential: Option<String>,
    /// Ask for this keepalive (whole seconds, docs/PROTOCOL.md §12) when registering.
    /// hold: each held client then sends RequestKeepAlive at this interval and times its
    /// answer; lapse: the clients go silent and time the server's EventError 19.
    #[arg(long, value_parser = keep_alive)]
    pub keepalive: Option<Duration>,
    /// invalid: a ClientName that requires a Credential (sent with a wrong one).
    #[arg(long, default_value = "AgentDesktop")]
    pub credential_client: String,
    /// invalid: that client's ClientType.
    #[arg(long, default_value_t = 2)]
    pub credential_client_type: i32,
    /// mix weights, e.g. `churn=90,invalid=5,silent=5`.
    #[arg(long, default_value = "churn=90,invalid=5,silent=5")]
    pub mix: String,
    /// The server's registration timeout (silent: the deadline to check against).
    #[arg(long, default_value_t = Dur(ixn::defaults::REGISTRATION_TIMEOUT))]
    pub registration_timeout: Dur,
    /// The server's error disconnect timeout (invalid: the deadline to check against).
    #[arg(long, default_value_t = Dur(ixn::defaults::ERROR_DISCONNECT_TIMEOUT))]
    pub error_disconnect_timeout: Dur,
    /// The server's timer tick: a drop is "within" its window if it comes between the
    /// deadline and deadline + tick + --slack.
    #[arg(long, value_parser = duration, default_value = "100ms")]
    pub timer_tick: Duration,
    /// Extra tolerance for the network and scheduling.
    #[arg(long, value_parser = duration, default_value = "50ms")]
    pub slack: Duration,
    /// Give up on an answer (or a drop) after this long.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub io_timeout: Duration,
    /// Close connections with a reset (SO_LINGER 0) so this side keeps no TIME_WAIT
    /// sockets; needed for long churn runs against a remote server.
    #[arg(long)]
    pub reset_close: bool,
    /// Speak TLS (docs/PROTOCOL.md §9): the handshake is timed as its own phase.
    #[arg(long)]
    pub tls: bool,
    /// PEM CA bundle that signed the server's certificate (with --tls).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS (with --tls-key).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Resume sessions with the server's tickets instead of a full handshake each time.
    #[arg(long)]
    pub tls_resume: bool,
    /// Name the server's certificate must carry [default: the target's address].
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// storm: where dropped clients reconnect, round robin from each client's own
    /// starting point (e.g. a second instance, or HAProxy) [default: --target].
    #[arg(long, value_delimiter = ',')]
    pub reconnect_targets: Vec<SocketAddr>,
    /// storm: send SIGTERM to this process (the server behind --target) once every client
    /// is registered; without it the storm waits for the drain to come from elsewhere.
    #[arg(long)]
    pub drain_pid: Option<i32>,
    /// storm: first backoff after a failed reconnection; it doubles with each failure,
    /// and each wait is drawn uniformly below it (full jitter).
    #[arg(long, value_parser = duration, default_value = "100ms")]
    pub backoff: Duration,
    /// storm: the backoff's ceiling.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub backoff_max: Duration,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm text).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Draw throughput and latency percentiles over time as an SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Exit 1 if errors / connections exceeds this fraction (e.g. 0.01).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Exit 1 if the p99 latency exceeds this (e.g. 5ms).
    #[arg(long, value_parser = duration)]
    pub max_p99: Option<Duration>,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Weights of `--mix`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    pub churn: u32,
    pub invalid: u32,
    pub silent: u32,
}

impl Mix {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut m = Mix::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("--mix entry {part:?} is not name=weight"))?;
            let v: u32 = v
                .trim()
                .parse()
                .with_context(|| format!("--mix weight {v:?}"))?;
            match k.trim() {
                "churn" => m.churn = v,
                "invalid" => m.invalid = v,
                "silent" => m.silent = v,
                other => bail!("--mix: unknown scenario {other:?} (churn, invalid, silent)"),
            }
        }
        if m.churn + m.invalid + m.silent == 0 {
            bail!("--mix: all weights are zero");
        }
        Ok(m)
    }
}

/// Source addresses used when `--source` is not given and the target is on IPv4
/// loopback: 127.0.0.2 and the next ones. With a single source, every connection to the
/// one target draws from the same ~28k ports, and once a few churn runs have filled the
/// TIME_WAIT table connect(2)'s port search doubles its CPU cost; sixteen sources give it
/// sixteen times the room.
pub const LOOPBACK_SOURCES: usize = 16;

/// The sources to use: `--source` as given, else [`LOOPBACK_SOURCES`] loopback addresses
/// for a loopback IPv4 target, else none (the kernel chooses).
pub fn default_sources(target: std::net::SocketAddr) -> Vec<IpAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (0..LOOPBACK_SOURCES as u32)
            .map(|i| IpAddr::V4((u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2)) + i).into()))
            .collect(),
        _ => Vec::new(),
    }
}

/// What the kernel says about ports and TIME_WAIT, for a warning before a churn run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPressure {
    /// Sockets in TIME_WAIT now (`/proc/net/sockstat`, `tw`).
    pub time_wait: u64,
    /// Most TIME_WAIT sockets the kernel keeps (`net.ipv4.tcp_max_tw_buckets`).
    pub max_time_wait: u64,
    /// Ephemeral ports per source address (`net.ipv4.ip_local_port_range`).
    pub ports: u64,
}

impl PortPressure {
    /// Reads it from /proc; `None` where a file is missing (not Linux, a restricted /proc).
    pub fn read() -> Option<Self> {
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
        let max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets").ok()?;
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        Self::parse(&sockstat, &max, &range)
    }

    /// Parses the three files' contents.
    pub fn parse(sockstat: &str, max_tw: &str, port_range: &str) -> Option<Self> {
        let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
        let mut words = tcp.split_whitespace();
        let time_wait = loop {
            if words.next()? == "tw" {
                break words.next()?.parse().ok()?;
            }
        };
        let mut r = port_range.split_whitespace().map(|v| v.parse::<u64>());
        let (lo, hi) = (r.next()?.ok()?, r.next()?.ok()?);
        Some(Self {
            time_wait,
            max_time_wait: max_tw.trim().parse().ok()?,
            ports: hi.saturating_sub(lo) + 1,
        })
    }

    /// A warning when connects from `sources` addresses (0: the kernel's one) are about to
    /// search hard for a free port: TIME_WAIT holds half the ports those sources have. A
    /// full TIME_WAIT table alone is no trap: with 16 sources and the table full
    /// (131,072 entries) the loadgen spends what a minimal client does (docs/BENCHMARKS.md).
    pub fn warning(&self, sources: usize) -> Option<String> {
        let room = self.ports * sources.max(1) as u64;
        (self.time_wait * 2 >= room).then(|| {
            format!(
                "{} sockets in TIME_WAIT (net.ipv4.tcp_max_tw_buckets {}) against {} ports ({} source address(es) × {}): connect(2) searches long for free ports and costs more CPU; give more --source addresses or let it drain",
                self.time_wait, self.max_time_wait, room, sources.max(1), self.ports
            )
        })
    }
}

/// Expands `--source` into addresses.
pub fn sources(specs: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = spec.split_once('-') {
            let a: std::net::Ipv4Addr = a.parse().with_context(|| format!("--source {spec}"))?;
            let b: std::net::Ipv4Addr = b.parse().with_context(|| format!("--source {spec}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("--source {spec}: empty or too large a range");
            }
            out.extend((a..=b).map(|v| IpAddr::V4(v.into())));
        } else {
            out.push(spec.parse().with_context(|| format!("--source {spec}"))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_get_sixteen_sources() {
        let s = default_sources("127.0.0.1:7400".parse().unwrap());
        assert_eq!(s.len(), LOOPBACK_SOURCES);
        assert_eq!(s[0], IpAddr::from([127, 0, 0, 2]));
        assert_eq!(s[15], IpAddr::from([127, 0, 0, 17]));
        assert!(default_sources("10.0.0.1:7400".parse().unwrap()).is_empty());
        assert!(default_sources("[::1]:7400".parse().unwrap()).is_empty());
    }

    #[test]
    fn port_pressure_warns_before_the_trap() {
        let sockstat = "sockets: used 300\nTCP: inuse 20 orphan 0 tw 120000 alloc 25 mem 3\nUDP: inuse 1 mem 0\n";
        let p = PortPressure::parse(sockstat, "131072\n", "32768\t60999\n").unwrap();
        assert_eq!(p.time_wait, 120_000);
        assert_eq!(p.ports, 28_232);
        assert_eq!(p.warning(16), None, "a full table, but room in 16 sources");
        assert!(p
            .warning(1)
            .unwrap()
            .contains("120000 sockets in TIME_WAIT"));
        let calm = PortPressure {
            time_wait: 1000,
            ..p
        };
        assert_eq!(calm.warning(1), None);
        let busy = PortPressure {
            time_wait: 20_000,
            ..p
        };
        assert!(busy.warning(1).unwrap().contains("source address"));
        assert_eq!(busy.warning(16), None, "sixteen sources leave room");
    }

    #[test]
    fn stages_parse_and_place_arrivals_on_the_profile() {
        let s = Stages::parse("1s:200/s, 1s:400/s").unwrap();
        assert_eq!(s.total(), Duration::from_secs(2));
        assert_eq!(s.peak(), 400.0);
        // A ramp from 0 to 200/s over 1 s brings 100 arrivals, the next 300 more.
        let at = |n: f64| s.time_of(n).unwrap().as_secs_f64();
        assert!((at(100.0) - 1.0).abs() < 1e-9);
        assert!(
            (at(25.0) - 0.5).abs() < 1e-9,
            "a quarter of the ramp's arrivals at half time"
        );
        assert!((at(400.0) - 2.0).abs() < 1e-9);
        assert_eq!(s.time_of(401.0), None);
        let flat = Stages::parse("2s:0/s,1s:10/s").unwrap();
        assert!(
            flat.time_of(1.0).unwrap() > Duration::from_secs(2),
            "nothing while at 0/s"
        );
        for bad in ["", "10s", "0s:5/s", "1s:-3/s", "1s:x/s"] {
            assert!(Stages::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_sources_and_mix() {
        let s = sources(&["127.0.0.2-127.0.0.4".into(), "::1".into()]).unwrap();
        assert_eq!(s.len(), 4);
        assert!(sources(&["127.0.0.9-127.0.0.1".into()]).is_err());
        let m = Mix::parse("churn=90,invalid=5,silent=5").unwrap();
        assert_eq!((m.churn, m.invalid, m.silent), (90, 5, 5));
        assert!(Mix::parse("hold=1").is_err());
        assert!(Mix::parse("churn=0").is_err());
    }
}

/// `--stages`: a piecewise-linear rate profile, from 0 connections per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Stages(pub Vec<(Duration, f64)>);

impl Stages {
    /// Parses `DUR:RATE/s[,DUR:RATE/s…]`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (d, r) = part
                .split_once(':')
                .with_context(|| format!("--stages: {part:?} is not DURATION:RATE/s"))?;
            let d = duration(d).map_err(|e| anyhow::anyhow!("--stages: {part:?}: {e}"))?;
            let r: f64 = r
                .trim()
                .trim_end_matches("/s")
                .parse()
                .with_context(|| format!("--stages: {part:?}: the rate is not a number"))?;
            if d.is_zero() || !r.is_finite() || r < 0.0 {
                bail!("--stages: {part:?}: a stage needs a duration and a rate of at least 0");
            }
            v.push((d, r));
        }
        if v.is_empty() {
            bail!("--stages: no stage");
        }
        Ok(Self(v))
    }

    /// The whole profile's length.
    pub fn total(&self) -> Duration {
        self.0.iter().map(|(d, _)| *d).sum()
    }

    /// The highest rate.
    pub fn peak(&self) -> f64 {
        self.0.iter().map(|(_, r)| *r).fold(0.0, f64::max)
    }

    /// When the `n`th connection (counted from 1) is due, from the profile's start; `None`
    /// past its end. The arrivals so far are the integral of the rate, a quadratic in each
    /// stage, so this solves for the time exactly rather than stepping.
    pub fn time_of(&self, n: f64) -> Option<Duration> {
        let (mut t, mut done, mut from) = (0.0f64, 0.0f64, 0.0f64);
        for &(d, to) in &self.0 {
            let len = d.as_secs_f64();
            let here = (from + to) / 2.0 * len;
            if here > 0.0 && n <= done + here {
                let need = n - done;
                let a = (to - from) / (2.0 * len);
                let tau = if a.abs() < 1e-12 {
                    need / from
                } else {
                    (-from + (from * from + 4.0 * a * need).sqrt()) / (2.0 * a)
                };
                return Some(Duration::from_secs_f64(t + tau.clamp(0.0, len)));
            }
            done += here;
            t += len;
            from = to;
        }
        None
    }
}
