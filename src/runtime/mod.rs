//! The io_uring shell around the sans-IO core: start-up, listeners, worker threads, signals.
//!
//! One worker thread per core, each driving its client sockets with one of two backends
//! (io_uring, [`uring_v2`], or epoll, [`epoll`]), with its own
//! `SO_REUSEPORT` listening socket per `--listen` address (the kernel spreads connections
//! between them), its own connection slab and its own timer wheel. Workers share only the
//! registry (an `ArcSwap`, swapped whole on SIGHUP), the connection count (one atomic,
//! touched at accept and close) and the drain flag.

mod debug;
mod epoll;
mod glue;
mod uring_v2;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use ixn_proto::tls::ListenerKind;
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::config::Config;
use crate::http::Health;
use crate::registry::Registry;

/// State every worker and the control thread share.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// The registry in force; replaced whole on reload.
    pub registry: ArcSwap<Registry>,
    /// Open client connections, all workers together.
    pub active: AtomicUsize,
    /// Client connections admitted at once: `max_connections`, or less when the
    /// descriptor limit leaves less room (see [`FdBudget`]).
    pub max_clients: AtomicUsize,
    /// Listening workers and the drain flag, which the HTTP endpoint reports.
    pub health: Arc<Health>,
    /// The TLS listeners' config (certificate, key, client CAs); replaced whole on
    /// reload. `None` without `--tls-cert`.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// The TLS files' bytes when `tls` was loaded: a SIGHUP that changes none of them
    /// keeps `tls`, and with it the session-ticket key (tickets stay valid).
    tls_files: std::sync::Mutex<Option<Vec<u8>>>,
    /// Connection rate, per-address caps and bans (IXN1.md section 11).
    pub admission: crate::admission::Admission,
    /// A second SIGTERM: finish the lame-duck spread at once.
    pub hurry: std::sync::atomic::AtomicBool,
    /// ClientNames held under `on_duplicate` reject or replace, across workers.
    pub names: ixn_proto::names::NameTable,
    /// The admin API's (and the name table's) commands to each worker.
    pub inboxes: Arc<crate::admin::Inboxes>,
    /// The start, on both clocks: admin ids count from it, and wall times derive from it.
    pub origin: (Instant, std::time::SystemTime),
}

/// Shards of the name table: enough that two workers registering at once rarely meet.
const NAME_SHARDS: usize = 64;

impl Shared {
    /// Shared state for `config`, with `registry` in force and nothing running yet.
    pub fn new(config: Config, registry: Registry, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let now = Instant::now();
        let inboxes = Arc::new(crate::admin::Inboxes::new(config.workers));
        let posts = inboxes.clone();
        let tls_files = tls.as_ref().and_then(|_| config.tls.file_bytes());
        Self {
            health: Arc::new(Health::new(config.workers, config.metrics_max_connections)),
            max_clients: AtomicUsize::new(config.max_connections),
            admission: crate::admission::Admission::new(config.admission, now),
            config,
            registry: ArcSwap::from_pointee(registry),
            active: AtomicUsize::new(0),
            tls_files: std::sync::Mutex::new(tls_files),
            tls: ArcSwapOption::new(tls),
            hurry: std::sync::atomic::AtomicBool::new(false),
            names: ixn_proto::names::NameTable::new(NAME_SHARDS, move |h| posts.replaced(h.conn)),
            inboxes,
            origin: (now, std::time::SystemTime::now()),
        }
    }

    /// The name table as connection `conn` sees it.
    pub fn claims(&self, conn: ixn_proto::names::ConnKey) -> ixn_proto::names::Claims<'_> {
        ixn_proto::names::Claims {
            table: &self.names,
            conn,
        }
    }
}

impl Shared {
    /// A new connection's core, by listener kind: a TLS listener's gets the TLS config in
    /// force now (so a reload applies to new connections only). `None` if there is none.
    pub fn open(
        &self,
        now: Instant,
        peer: SocketAddr,
        kind: ListenerKind,
        cfg: &ixn_proto::connection::ConnConfig,
    ) -> Option<(
        ixn_proto::connection::Connection,
        ixn_proto::connection::TimerChange,
    )> {
        use ixn_proto::connection::Connection;
        if !kind.tls() {
            return Some(Connection::accept(now, peer, kind.proxy(), cfg));
        }
        let tls = self.tls.load_full()?;
        Connection::accept_tls(now, peer, kind.proxy(), tls, cfg).ok()
    }
}

/// What to do with a connection just accepted; decided the same way by every engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// On a PROXY listener, from a peer not trusted to send the header: close it without
    /// a byte. Checked first, so such a peer never gets IXN/1 bytes, not even a refusal.
    Untrusted,
    /// Refused (section 11's order: ban, rate, per address, then the limit): answer its
    /// EventError (none on TLS listeners) and close once written.
    Refused(crate::admission::Refusal),
    /// Admitted and counted in `active`; `counted` when admission control counted its
    /// address (to be released at close, see `Connection::mark_admitted`).
    Admitted {
        /// Its address is counted by admission control.
        counted: bool,
    },
}

impl Shared {
    /// Trust (PROXY listeners), admission control by address (other listeners; behind a
    /// PROXY header it runs once the header arrives, see [`Shared::gate`]), then the
    /// connection limit; counts the connection in `active` when it is admitted.
    pub fn admit(&self, peer: SocketAddr, proxy: bool, now: Instant) -> Admission {
        let mut counted = false;
        if !proxy {
            if let Err(r) = self.admission.check(peer.ip(), now) {
                return Admission::Refused(r);
            }
            counted = true;
        }
        if proxy {
            let ip = peer.ip().to_canonical();
            if !self
                .config
                .proxy_protocol_trusted
                .iter()
                .any(|n| n.contains(&ip))
            {
                return Admission::Untrusted;
            }
        }
        let limit = self.max_clients.load(Ordering::Relaxed);
        if self.active.fetch_add(1, Ordering::AcqRel) >= limit {
            self.active.fetch_sub(1, Ordering::AcqRel);
            if counted {
                self.admission.released(peer.ip());
            }
            return Admission::Refused(crate::admission::Refusal::Limit);
        }
        Admission::Admitted { counted }
    }

    /// Admission of the address a PROXY header carries, for `Env::gate`: the refusal's
    /// EventError, counted in `metrics`.
    pub fn gate(
        &self,
        ip: std::net::IpAddr,
        now: Instant,
        metrics: &crate::metrics::WorkerMetrics,
    ) -> Result<(), ixn_proto::protocol::ErrorCode> {
        self.admission.check(ip, now).map_err(|r| {
            metrics.refused_by(r);
            r.code()
        })
    }

    /// A connection closed: releases its address if admission control counted it.
    pub fn release(&self, conn: &ixn_proto::connection::Connection) {
        if conn.admitted() {
            self.admission.released(conn.peer());
        }
    }

    /// Registrations that failed (EventError 2, 3, 4, 5, 17) from `ip`: counted toward a
    /// ban (section 11), which is logged when it falls.
    pub fn failed_registrations(&self, ip: std::net::IpAddr, n: usize, now: Instant) {
        for _ in 0..n {
            if let Some(ban) = self.admission.failed(ip, now) {
                tracing::warn!(
                    address = %ban.address,
                    failures = ban.failures,
                    "address banned for {}",
                    humantime::format_duration(self.config.admission.ban_duration)
                );
            }
        }
    }
}

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
    /// Thread creation or signal set-up.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// io_uring features the kernel reports, for the start-up log.
fn ring_features(p: &io_uring::Parameters) -> String {
    let all = [
        ("fast_poll", p.is_feature_fast_poll()),
        ("nodrop", p.is_feature_nodrop()),
        ("submit_stable", p.is_feature_submit_stable()),
        ("ext_arg", p.is_feature_ext_arg()),
        ("native_workers", p.is_feature_native_workers()),
        ("skip_cqe_on_success", p.is_feature_skip_cqe_on_success()),
        ("linked_file", p.is_feature_linked_file()),
    ];
    all.iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks that the io_uring engine can run here: first that a ring can be created at all
/// (explaining why not in operator terms: a seccomp profile, a sysctl, the memlock limit),
/// then that the kernel offers what the engine needs. Returns the kernel's io_uring
/// features, for the start-up log.
pub fn probe_io_uring() -> Result<String, StartError> {
    match io_uring::IoUring::new(8) {
        Ok(ring) => {
            let features = ring_features(ring.params());
            uring_v2::probe().map_err(|why| StartError::IoUring(format!("it needs {why}")))?;
            Ok(features)
        }
        Err(e) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(0);
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) if kernel_has_io_uring() => "io_uring_setup returned ENOSYS on a kernel that has io_uring: a seccomp profile blocks it (the default profiles of Docker, containerd and Podman do); run with deploy/seccomp/ixn-server.json, which allows io_uring_setup, io_uring_enter and io_uring_register".to_string(),
                Some(libc::ENOSYS) => "the kernel has no io_uring (needs Linux 5.11 or later, built with CONFIG_IO_URING)".to_string(),
                Some(libc::EPERM) if disabled > 0 => format!(
                    "kernel.io_uring_disabled = {disabled}; set it to 0 (or 1 and run as a member of kernel.io_uring_group): sysctl -w kernel.io_uring_disabled=0"
                ),
                Some(libc::EPERM) => "io_uring_setup was refused (EPERM): a seccomp profile (container runtime or systemd SystemCallFilter) blocks it; allow io_uring_setup, io_uring_enter and io_uring_register".to_string(),
                Some(libc::ENOMEM) => "not enough locked memory for the ring (raise RLIMIT_MEMLOCK, LimitMEMLOCK= in systemd)".to_string(),
                _ => e.to_string(),
            };
            Err(StartError::IoUring(why))
        }
    }
}

/// Whether the io_uring engine can run here (the kernel, its settings and the seccomp
/// profile allow everything it needs); the reason in operator terms if not. The test
/// harness asks this to run every socket suite on each engine this machine allows.
pub fn io_uring_allowed() -> Result<(), String> {
    probe_io_uring().map(drop).map_err(|e| e.to_string())
}

/// Whether this kernel is new enough to have io_uring (5.11, the oldest the engines
/// support), so an ENOSYS from `io_uring_setup` means a filter, not a missing feature.
fn kernel_has_io_uring() -> bool {
    let release = kernel_release();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (5, 11)
}

/// One listening socket with `SO_REUSEPORT`, so each worker can have its own.
fn listener(addr: SocketAddr, config: &Config) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Accepted sockets inherit these from the listener: no per-connection syscalls.
    s.set_nodelay(true)?;
    // Bounds what a client that never reads pins in the kernel (autotuning would let a
    // send buffer grow to net.ipv4.tcp_wmem's maximum, 4 MiB by default). The kernel
    // doubles the value set to leave room for its bookkeeping, so half is set: the socket
    // then reports the flag's value (getsockopt SO_SNDBUF), and the memory it may pin,
    // payload and overhead together, stays within it.
    s.set_send_buffer_size(config.socket_send_buffer / 2)?;
    if let Some(idle) = config.tcp_keepalive {
        s.set_keepalive(true)?;
        s.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10))
                .with_retries(3),
        )?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(config.backlog.min(i32::MAX as u32) as i32)?;
    Ok(s.into())
}

/// One worker's listening socket and whether it requires a PROXY header.
type Listener = (std::net::TcpListener, ListenerKind);
/// Every worker's listeners, and the addresses bound (with their PROXY flag).
type Bound = (Vec<Vec<Listener>>, Vec<(SocketAddr, ListenerKind)>);

/// Binds every listener for every worker; port 0 is resolved once and shared. Returns the
/// bound addresses, the PROXY-protocol ones last.
/// How long start-up waits for a predecessor's listener to leave a port.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(2);

/// Waits until no socket listens on `addr` (a fixed port), for at most
/// [`PREDECESSOR_WAIT`]. A predecessor killed on this port (SIGKILL, a crash) can hold its
/// listener for some milliseconds after its process is gone: the kernel tears an io_uring
/// down asynchronously, and the listener its multishot accept refers to lives until then.
/// Joining the port's `SO_REUSEPORT` group meanwhile would share new connections with a
/// socket nobody accepts from, and they would be reset when it goes (hardening round 3,
/// D2, the start-up case). A listener that stays is a live process sharing the port on
/// purpose: the server says so and joins it.
fn await_free_port(addr: SocketAddr) {
    if addr.port() == 0 {
        return;
    }
    let started = Instant::now();
    loop {
        // SO_REUSEADDR lets the probe bind beside connections in TIME_WAIT, never beside
        // a listener; without SO_REUSEPORT it cannot join a listener's group.
        let free = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|s| {
                s.set_reuse_address(true)?;
                s.bind(&addr.into())
            });
        match free {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            // Free, or an error the real bind will report.
            _ => return,
        }
        if started.elapsed() >= PREDECESSOR_WAIT {
            tracing::warn!(
                "another socket listens on {addr}: new connections are shared with it \
                 (SO_REUSEPORT) while it does"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn bind_all(config: &Config) -> Result<Bound, StartError> {
    let mut per_worker: Vec<Vec<Listener>> = (0..config.workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let kinds = [
        (&config.listen, ListenerKind::Plain),
        (&config.proxy_listen, ListenerKind::Proxy),
        (&config.tls_listen, ListenerKind::Tls),
        (&config.proxy_tls_listen, ListenerKind::ProxyTls),
    ];
    let all = kinds
        .into_iter()
        .flat_map(|(addrs, kind)| addrs.iter().map(move |a| (*a, kind)));
    for (addr, proxy) in all {
        await_free_port(addr);
        let first = listener(addr, config).map_err(|source| StartError::Bind { addr, source })?;
        let actual = first.local_addr()?;
        per_worker[0].push((first, proxy));
        for w in per_worker.iter_mut().skip(1) {
            let l = listener(actual, config).map_err(|source| StartError::Bind {
                addr: actual,
                source,
            })?;
            w.push((l, proxy));
        }
        bound.push((actual, proxy));
    }
    Ok((per_worker, bound))
}

#[cfg(test)]
mod tests {
    use super::FdBudget;

    #[test]
    fn the_descriptor_limit_goes_to_metrics_and_admin_before_clients() {
        // Plenty: every listener gets its maximum.
        let b = FdBudget::new(20_000, 50, 1000, 64, 16);
        assert_eq!((b.clients, b.metrics), (1000, 64));
        assert_eq!(b.wanted, 50 + 64 + 16 + 1000);
        // This machine's 20,000 against the default 100,000 clients: the metrics
        // listener keeps its 64 (it kept 1 before revision 3).
        let b = FdBudget::new(20_000, 100, 100_000, 64, 0);
        assert_eq!((b.clients, b.metrics), (20_000 - 100 - 64, 64));
        // Too little for the clients: metrics and admin first, clients the rest.
        let b = FdBudget::new(200, 52, 100, 64, 16);
        assert_eq!((b.clients, b.metrics), (68, 64));
        // Nothing left at all: one of each, and accept(2) failures are backed off.
        let b = FdBudget::new(40, 52, 100, 64, 16);
        assert_eq!((b.clients, b.metrics), (1, 1));
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `ixn_engine_info{engine}` of each engine (the io_uring label kept from when there were
/// two io_uring engines, so dashboards and alerts keep working).
const EPOLL: &str = "epoll";
const URING: &str = "io_uring_v2";

/// The engine a resolved configuration runs, by its metric label.
pub fn engine_name(config: &Config) -> &'static str {
    match config.engine {
        crate::config::Engine::Epoll => EPOLL,
        _ => URING,
    }
}

/// Runs the server until SIGTERM/SIGINT has drained it. Logs `listening on ADDR` for every
/// client listener and `metrics on ADDR` once they accept.
pub fn run(mut config: Config, registry: Registry) -> Result<(), StartError> {
    use crate::config::Engine;
    let features = match config.engine {
        Engine::Epoll => String::new(),
        asked => match probe_io_uring() {
            Ok(features) => {
                config.engine = Engine::Uring;
                features
            }
            Err(StartError::IoUring(why)) if asked == Engine::Auto => {
                tracing::warn!(
                    "io_uring is not available: {why}; running the epoll engine instead \
                     (say --engine epoll to silence this, or allow io_uring)"
                );
                config.engine = Engine::Epoll;
                String::new()
            }
            Err(e) => return Err(e),
        },
    };
    let tls = config.tls.load()?;
    let handle = install_metrics(&config, &registry)?;
    let nofile = raise_nofile_limit();
    let (listeners, bound) = bind_all(&config)?;
    let admin_token = config.admin_token()?;
    let shared = Arc::new(Shared::new(config, registry, tls));
    let admin_addr = match shared.config.admin_listen {
        Some(addr) => Some(
            crate::admin::spawn(addr, admin_token, shared.clone())
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let metrics_addr =
        crate::http::spawn(shared.config.metrics_listen, handle, shared.health.clone()).map_err(
            |source| StartError::Bind {
                addr: shared.config.metrics_listen,
                source,
            },
        )?;
    // Signals are blocked from here on and read by this thread only.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let threads = start_workers(&shared, listeners)?;
    if shared.config.registry_watch {
        watch_registry(shared.clone());
    }
    // Every descriptor the server needs for itself is open now: the limit is shared out.
    if let Some(limit) = nofile {
        share_descriptors(&shared, limit);
    }
    log_started(&shared, &features, &bound, metrics_addr, admin_addr);
    // systemd Type=notify: ready once every worker listens (a no-op outside systemd).
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!("sd_notify READY: {e}");
    }
    supervise(&shared, signals, threads)
}

/// Installs the Prometheus recorder (unless `--metrics false`) and returns its handle.
fn install_metrics(
    config: &Config,
    registry: &Registry,
) -> Result<Option<metrics_exporter_prometheus::PrometheusHandle>, StartError> {
    use metrics_exporter_prometheus::Matcher;
    if !config.metrics {
        // No recorder: every metric call lands in the `metrics` crate's no-op recorder.
        return Ok(None);
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(crate::metrics::REGISTRATION_DURATION.into()),
            crate::metrics::DURATION_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(crate::metrics::BULK_DROP.into()),
                crate::metrics::BULK_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(crate::metrics::TLS_HANDSHAKE_DURATION.into()),
                crate::metrics::DURATION_BUCKETS,
            )
        })
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    crate::metrics::describe();
    metrics::gauge!(crate::metrics::ENGINE_INFO, "engine" => engine_name(config)).set(1.0);
    metrics::gauge!(crate::metrics::REGISTRY_CLIENTS).set(registry.len() as f64);
    Ok(Some(handle))
}

/// Starts one pinned thread per worker and waits until every one listens.
fn start_workers(
    shared: &Arc<Shared>,
    listeners: Vec<Vec<Listener>>,
) -> Result<Vec<std::thread::JoinHandle<()>>, StartError> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::with_capacity(listeners.len());
    for (index, l) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let core = shared
            .config
            .pin_workers
            .then(|| cores.get(index % cores.len().max(1)).copied())
            .flatten();
        let engine = engine_name(&shared.config);
        threads.push(
            std::thread::Builder::new()
                .name(format!("ixn-worker-{index}"))
                .spawn(move || {
                    // Pinned here, once for every engine.
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(worker = index, "could not pin to core {}", core.id);
                        }
                    }
                    match engine {
                        EPOLL => epoll::thread_main(index, l, shared),
                        _ => uring_v2::thread_main(index, l, shared),
                    }
                })?,
        );
    }
    while shared.health.listening.load(Ordering::Acquire) < shared.config.workers {
        if threads.iter().any(std::thread::JoinHandle::is_finished) {
            return Err(StartError::IoUring(
                "a worker failed to start its ring".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(threads)
}

/// Shares the descriptor limit out: the server's own, the metrics and admin listeners'
/// bounds, then clients; and says so when it is too low for every client.
fn share_descriptors(shared: &Shared, limit: usize) {
    let config = &shared.config;
    let reserve = open_descriptors() + FD_HEADROOM + glue::REFUSALS_LINGERING_MAX * config.workers;
    let admin = if config.admin_listen.is_some() {
        crate::admin::MAX_CONNECTIONS
    } else {
        0
    };
    let b = FdBudget::new(
        limit,
        reserve,
        config.max_connections,
        config.metrics_max_connections,
        admin,
    );
    if b.clients < config.max_connections {
        tracing::warn!(
            max_connections = config.max_connections,
            nofile = limit,
            "the descriptor limit leaves room for {} client connections, after {} for the server itself, {} for the metrics listener and {} for the admin API (the rest get ServerOverloaded); raise it to at least {} (LimitNOFILE=)",
            b.clients,
            reserve,
            b.metrics,
            admin,
            b.wanted
        );
    }
    if b.metrics < config.metrics_max_connections {
        tracing::warn!(
            metrics_max_connections = config.metrics_max_connections,
            nofile = limit,
            "the descriptor limit leaves room for only {} metrics connections; raise it to at least {} (LimitNOFILE=)",
            b.metrics,
            b.wanted
        );
    }
    shared.max_clients.store(b.clients, Ordering::Relaxed);
    shared
        .health
        .max_connections
        .store(b.metrics, Ordering::Relaxed);
}

/// The start-up lines operators and tests read (`listening on`, `metrics on`).
fn log_started(
    shared: &Shared,
    features: &str,
    bound: &[(SocketAddr, ListenerKind)],
    metrics_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
) {
    let config = &shared.config;
    tracing::info!(
        workers = config.workers,
        kernel = %kernel_release(),
        engine = engine_name(config),
        io_uring_features = %features,
        listeners = bound.len(),
        registry_clients = shared.registry.load().len(),
        registry = %config.registry.as_ref().map_or("<embedded>".into(), |p| p.display().to_string()),
        "ixn-server {} started",
        env!("CARGO_PKG_VERSION")
    );
    for (a, kind) in bound {
        match kind {
            ListenerKind::Plain => tracing::info!("listening on {a}"),
            ListenerKind::Tls => tracing::info!("listening with TLS on {a}"),
            ListenerKind::Proxy => tracing::info!(
                trusted = ?config.proxy_protocol_trusted,
                "listening with PROXY protocol on {a}"
            ),
            ListenerKind::ProxyTls => tracing::info!(
                trusted = ?config.proxy_protocol_trusted,
                "listening with PROXY protocol and TLS on {a}"
            ),
        }
    }
    if let Some(a) = admin_addr {
        tracing::info!(
            token = config.admin_token_file.is_some(),
            "admin API on {a}"
        );
    }
    tracing::info!("metrics on {metrics_addr}");
}

/// The control thread: a signal thread reloads on SIGHUP and starts the drain on
/// SIGTERM/SIGINT the moment they arrive (so `/ready` turns 503 at once); this one waits
/// for the workers to finish. A worker that stops on its own is an error.
fn supervise(
    shared: &Arc<Shared>,
    signals: signal_hook::iterator::Signals,
    threads: Vec<std::thread::JoinHandle<()>>,
) -> Result<(), StartError> {
    let s = shared.clone();
    std::thread::Builder::new()
        .name("ixn-signals".into())
        .spawn(move || on_signals(&s, signals))?;
    loop {
        if shared.health.draining.load(Ordering::Acquire)
            && threads.iter().all(std::thread::JoinHandle::is_finished)
        {
            break;
        }
        if !shared.health.draining.load(Ordering::Acquire)
            && threads.iter().any(std::thread::JoinHandle::is_finished)
        {
            return Err(StartError::IoUring("a worker stopped unexpectedly".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// Handles each signal as it arrives (blocking; the process exits around this thread).
fn on_signals(shared: &Shared, mut signals: signal_hook::iterator::Signals) {
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            reload(shared);
        } else if !shared.health.draining.swap(true, Ordering::AcqRel) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            tracing::info!(
                active = shared.active.load(Ordering::Relaxed),
                grace = %humantime::format_duration(shared.config.lame_duck_grace),
                spread = %humantime::format_duration(shared.config.lame_duck_duration),
                "draining: no new connections; registered clients get ServerShuttingDown"
            );
        } else if !shared.hurry.swap(true, Ordering::AcqRel) {
            tracing::info!("second signal: the rest get ServerShuttingDown at once");
        }
    }
}

/// Descriptors kept free beyond the server's own, the metrics listener's and the lingering
/// refusals': a refusal (EventError 10) that does not linger still needs one, briefly.
const FD_HEADROOM: usize = 16;

/// Raises the soft descriptor limit to the hard one (as nginx's `worker_rlimit_nofile` or
/// Go's runtime do) and returns it; `None` if it is unlimited or unreadable.
fn raise_nofile_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we pass and keeps no pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass and keeps no pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// Descriptors the process has open now.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// How the descriptor limit is shared out (the spec's descriptor budget): the server's own
/// descriptors first, then the metrics listener's bound (`--metrics-max-connections`) and
/// the admin API's, then clients, up to `--max-connections`. Clients never starve the
/// listeners operators and their probes depend on (a second scrape, `/live` during a
/// scrape); a client over the budget is answered ServerOverloaded rather than left in the
/// backlog by a failing accept(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// Client connections admitted at once.
    pub clients: usize,
    /// Metrics connections served at once.
    pub metrics: usize,
    /// The limit that would give every listener its configured maximum.
    pub wanted: usize,
}

impl FdBudget {
    /// Shares `limit` descriptors, `reserve` of which the server keeps for itself and
    /// `admin` for the admin API.
    pub fn new(
        limit: usize,
        reserve: usize,
        max_clients: usize,
        max_metrics: usize,
        admin: usize,
    ) -> Self {
        let room = limit.saturating_sub(reserve);
        let metrics = max_metrics.clamp(1, room.max(1));
        let clients = room
            .saturating_sub(metrics + admin)
            .clamp(1, max_clients.max(1));
        Self {
            clients,
            metrics,
            wanted: reserve + max_metrics + admin + max_clients,
        }
    }
}

fn reload(shared: &Shared) {
    reload_tls(shared);
    if shared.config.registry.is_none() {
        tracing::info!("SIGHUP: the embedded registry is in use; nothing to reload");
        return;
    }
    reload_registry(shared, "SIGHUP");
}

/// Re-reads the registry file (on SIGHUP, or when `--registry-watch` saw it change): a
/// file that fails is refused and the registry in force kept.
fn reload_registry(shared: &Shared, why: &str) {
    let Some(path) = &shared.config.registry else {
        return;
    };
    match crate::config::load_registry(path) {
        Ok(r) => {
            let n = r.len();
            shared.registry.store(Arc::new(r));
            metrics::gauge!(crate::metrics::REGISTRY_CLIENTS).set(n as f64);
            metrics::counter!(crate::metrics::REGISTRY_RELOADS, "result" => "ok").increment(1);
            tracing::info!(
                clients = n,
                "{why}: registry reloaded from {}",
                path.display()
            );
        }
        Err(e) => {
            metrics::counter!(crate::metrics::REGISTRY_RELOADS, "result" => "error").increment(1);
            tracing::error!("{why}: registry reload refused, keeping the old one: {e}");
        }
    }
}

/// Quiet time after a change before the registry is read: an editor's or a ConfigMap's
/// update is several events (write, rename, symlink swap) that end as one reload.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(250);
/// The longest a change waits for its directory to be quiet.
const WATCH_MAX_DELAY: Duration = Duration::from_secs(1);

/// `--registry-watch`: watches the registry file's directory (and, if the file is a
/// symlink, its target's), and reloads once a burst of changes is over and the file's
/// content differs from what was last read. A Kubernetes ConfigMap updates by swapping a
/// `..data` symlink in the directory, which a watch on the file itself would miss.
fn watch_registry(shared: Arc<Shared>) {
    let Some(path) = shared.config.registry.clone() else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = match notify::recommended_watcher(tx) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("--registry-watch: cannot watch: {e}; reload with SIGHUP");
            return;
        }
    };
    let mut watched = Vec::new();
    if let Err(e) = watch_dirs(&mut watcher, &path, &mut watched) {
        tracing::warn!("--registry-watch: {e}; reload with SIGHUP");
        return;
    }
    let shown = path.display().to_string();
    let spawned = std::thread::Builder::new()
        .name("ixn-registry-watch".into())
        .spawn(move || {
            // Kept alive by this thread: dropping it ends the watch.
            let mut watcher = watcher;
            let mut last = std::fs::read(&path).ok();
            // A change between the load at start and the watch's first look is not
            // missed: what the file says now is compared with what is in force.
            if let Ok(r) = crate::config::load_registry(&path) {
                if r != **shared.registry.load() {
                    reload_registry(&shared, "registry file changed since start");
                }
            }
            while rx.recv().is_ok() {
                // Debounced: until the directory is quiet for WATCH_DEBOUNCE, but never
                // longer than WATCH_MAX_DELAY, so another file that changes all the time
                // in the same directory cannot hold a reload off for ever (N7).
                let first = Instant::now();
                while first.elapsed() < WATCH_MAX_DELAY && rx.recv_timeout(WATCH_DEBOUNCE).is_ok() {
                }
                // A symlink re-pointed to another directory: watch where it leads now
                // (N10).
                if let Err(e) = watch_dirs(&mut watcher, &path, &mut watched) {
                    tracing::warn!("--registry-watch: {e}");
                }
                let now = std::fs::read(&path).ok();
                if now.is_some() && now != last {
                    reload_registry(&shared, "registry file changed");
                    last = now;
                }
            }
        });
    match spawned {
        Ok(_) => tracing::info!("watching {shown} for changes"),
        Err(e) => tracing::warn!("--registry-watch: {e}; reload with SIGHUP"),
    }
}

/// Watches the directories the registry's path names and leads to (the directory of the
/// path itself, and of every link on the way to the file: a Kubernetes ConfigMap swaps a
/// symlink in the first, the file lives in the last); directories no longer on the way
/// are unwatched.
fn watch_dirs(
    watcher: &mut impl notify::Watcher,
    path: &std::path::Path,
    watched: &mut Vec<std::path::PathBuf>,
) -> Result<(), String> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    let mut at = path.to_path_buf();
    for _ in 0..16 {
        let dir = match at.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => ".".into(),
        };
        dirs.push(std::fs::canonicalize(&dir).unwrap_or(dir.clone()));
        match std::fs::read_link(&at) {
            Ok(next) => at = dir.join(next),
            Err(_) => break,
        }
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        if let Some(d) = real.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in watched.iter().filter(|d| !dirs.contains(d)) {
        let _ = watcher.unwatch(d);
    }
    for d in dirs.iter().filter(|d| !watched.contains(d)) {
        watcher
            .watch(d, notify::RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
    }
    *watched = dirs;
    Ok(())
}

/// Re-reads the TLS files: new connections use the new config, live ones keep theirs; a
/// file that fails keeps the old config.
fn reload_tls(shared: &Shared) {
    if shared.config.tls.cert.is_none() {
        return;
    }
    let bytes = shared.config.tls.file_bytes();
    let mut last = shared.tls_files.lock().unwrap_or_else(|e| e.into_inner());
    if bytes.is_some() && *last == bytes {
        // A registry-only SIGHUP: the TLS config, and its session-ticket key, stay.
        tracing::info!("TLS files unchanged; TLS config kept (session tickets stay valid)");
        return;
    }
    match shared.config.tls.load() {
        Ok(tls) => {
            shared.tls.store(tls);
            *last = bytes;
            tracing::info!("TLS certificate, key and client CAs reloaded");
        }
        Err(e) => tracing::error!("TLS reload refused, keeping the old config: {e}"),
    }
}

/// One worker's drain (IXN1.md section 8): at once, or as a lame duck — after
/// `--lame-duck-grace`, its registered connections get EventError 11 spread evenly over
/// `--lame-duck-duration`, a slice each timer tick (no timer or task per client). A second
/// SIGTERM (`Shared::hurry`) sends the rest at once.
#[derive(Debug)]
pub(super) struct Drain<H> {
    /// When the spread begins (the grace is over).
    begins: Instant,
    duration: Duration,
    /// Registered connections not yet sent EventError 11, oldest first; `None` until the
    /// spread begins.
    queue: Option<std::collections::VecDeque<H>>,
    total: usize,
    /// When the last one was sent.
    pub finished: Option<Instant>,
}

impl<H> Drain<H> {
    /// A drain that starts at `now`.
    pub fn new(now: Instant, config: &Config) -> Self {
        Self {
            begins: now + config.lame_duck_grace,
            duration: config.lame_duck_duration,
            queue: None,
            total: 0,
            finished: None,
        }
    }

    /// Whether the spread should begin now: the engine then closes its unregistered
    /// connections and hands the registered ones to [`Drain::begin`].
    pub fn ready(&self, now: Instant, hurry: bool) -> bool {
        self.queue.is_none() && (hurry || now >= self.begins)
    }

    /// The spread begins with these registered connections.
    pub fn begin(&mut self, registered: Vec<H>) {
        self.total = registered.len();
        self.queue = Some(registered.into());
    }

    /// The connections due now: as many as keep the spread even (all when `hurry` or the
    /// duration is 0).
    pub fn due(&mut self, now: Instant, hurry: bool) -> Vec<H> {
        let Some(q) = self.queue.as_mut() else {
            return Vec::new();
        };
        let sent = self.total - q.len();
        let target = if hurry || self.duration.is_zero() {
            self.total
        } else {
            let f = now.saturating_duration_since(self.begins).as_secs_f64()
                / self.duration.as_secs_f64();
            ((self.total as f64 * f.min(1.0)).ceil() as usize).min(self.total)
        };
        let n = target.saturating_sub(sent).min(q.len());
        let out: Vec<H> = q.drain(..n).collect();
        if q.is_empty() && self.finished.is_none() {
            self.finished = Some(now);
        }
        out
    }

    /// Whether the worker may stop: every one sent EventError 11 and either all are gone
    /// or `drain_timeout` has passed since.
    pub fn done(&self, now: Instant, empty: bool, drain_timeout: Duration) -> bool {
        self.finished
            .is_some_and(|t| empty || now.saturating_duration_since(t) >= drain_timeout)
    }
}
