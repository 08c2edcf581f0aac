//! The io_uring shell around the sans-IO core: start-up, listeners, worker threads, signals.
//!
//! One worker thread per core, each driving its client sockets with one of two backends
//! (io_uring, [`uring`], or epoll, [`epoll`]), with its own
//! `SO_REUSEPORT` listening socket per `--listen` address (the kernel spreads connections
//! between them), its own connection slab and its own timer wheel. Workers share only the
//! registry (an `ArcSwap`, swapped whole on SIGHUP), the connection count (one atomic,
//! touched at accept and close) and the drain flag.

mod bans;
mod debug;
mod descriptors;
mod drain;
mod epoll;
mod error;
mod lifecycle;
mod listeners;
mod probe;
mod reload;
mod shared;
mod upgrade;
mod uring;

pub use descriptors::FdBudget;
use descriptors::{raise_nofile_limit, share_descriptors};
pub use error::StartError;
use listeners::{bind_all, Listener};
use probe::kernel_release;
pub use probe::{io_uring_allowed, probe_io_uring};
use reload::{on_signals, watch_registry};
pub use shared::{Admission, Shared};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ixn_proto::tls::ListenerKind;

use crate::config::Config;
use crate::registry::Registry;

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
    upgrade::remember_executable();
    // A live upgrade's new process: everything comes from the running server.
    let mut inherited = match &config.upgrade_from {
        Some(path) => Some(
            upgrade::take_over(path, config.workers)
                .map_err(|e| StartError::Upgrade(e.to_string()))?,
        ),
        None => None,
    };
    let nofile = raise_nofile_limit();
    let (listeners, bound) = match inherited.as_mut() {
        Some(i) => {
            let listeners = std::mem::take(&mut i.listeners);
            listeners::check_inherited(&config, listeners.first().map_or(&[], Vec::as_slice))
                .map_err(StartError::Upgrade)?;
            let bound = listeners
                .first()
                .into_iter()
                .flatten()
                .filter_map(|(l, k)| l.local_addr().ok().map(|a| (a, *k)))
                .collect();
            (listeners, bound)
        }
        None => bind_all(&config)?,
    };
    let admin_token = config.admin_token()?;
    let shared = Arc::new(Shared::new(config, registry, tls));
    // A live upgrade's new process serves HTTP only once its workers listen: until then
    // the old process answers on the same listeners, and `/ready` stays 200.
    let mut http = None;
    let mut http_later = None;
    match inherited.as_mut() {
        None => {
            let l = http_listeners(&shared.config, None, None)?;
            http = Some(serve_http(&shared, handle, admin_token, l)?);
        }
        // Bound (where the addresses changed) before the commit: a failure still leaves
        // every connection with the running server.
        Some(i) => {
            let l = http_listeners(&shared.config, i.admin.take(), i.metrics.take())?;
            http_later = Some((handle, admin_token, l));
        }
    }
    // A live upgrade's connections are clients', not the server's own descriptors.
    let mut handed_over = 0;
    if let Some(i) = inherited.as_mut() {
        handed_over = i.conns.iter().map(Vec::len).sum();
        let now = std::time::Instant::now();
        for (ip, left, failures) in std::mem::take(&mut i.bans) {
            shared
                .admission
                .ban(ip, now + Duration::from_millis(left), failures);
        }
        *shared.adopt_queue.lock().unwrap_or_else(|e| e.into_inner()) =
            std::mem::take(&mut i.conns);
    }
    // Signals are blocked from here on and read by this thread only.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR2,
    ])?;
    if let Some(i) = inherited {
        // The commit: once the running server has let go, these connections are this
        // process's alone (nothing here has read them yet; the workers adopt them as they
        // start). Until then it may take them back, and this process must not serve them.
        i.commit(handed_over)
            .map_err(|e| StartError::Upgrade(e.to_string()))?;
        tracing::info!(handed_over, "upgrade: took over from the running server");
    }
    let threads = start_workers(&shared, listeners)?;
    let (admin_addr, metrics_addr) = match (http, http_later) {
        (Some(addrs), _) => addrs,
        (None, Some((handle, token, l))) => serve_http(&shared, handle, token, l)?,
        (None, None) => unreachable!("HTTP is served now or after the workers start"),
    };
    if let Some(fleet) = &shared.fleet {
        let counted = shared.clone();
        // With pinned workers the fleet thread shares the last worker's core: the server's
        // cores are the ones it was given, and a fleet thread left to float lands beside
        // Redis or the clients (measured: 1.8x the CPU per fleet registration there).
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let core = (shared.config.pin_workers && !cores.is_empty())
            .then(|| cores[(shared.config.workers - 1) % cores.len()]);
        crate::fleet::spawn(crate::fleet::Context {
            core,
            fleet: fleet.clone(),
            inboxes: shared.inboxes.clone(),
            admission: shared.admission.clone(),
            admin: admin_addr,
            started: crate::admin::rfc3339(shared.origin.1),
            clients: Box::new(move || {
                counted.active.load(std::sync::atomic::Ordering::Relaxed) as u64
            }),
        })?;
    }
    if shared.config.registry_watch {
        watch_registry(shared.clone());
    }
    // Every descriptor the server needs for itself is open now: the limit is shared out.
    if let Some(limit) = nofile {
        share_descriptors(&shared, limit, handed_over);
    }
    log_started(&shared, &features, &bound, metrics_addr, admin_addr);
    // systemd Type=notify: ready once every worker listens (a no-op outside systemd).
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!("sd_notify READY: {e}");
    }
    supervise(&shared, signals, threads)
}

/// The admin API's (with `--admin-listen`) and the metrics' listeners: `admin` and
/// `metrics` as a live upgrade handed them over where the configuration still names their
/// addresses, else bound here.
fn http_listeners(
    config: &Config,
    admin: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
) -> Result<(Option<std::net::TcpListener>, std::net::TcpListener), StartError> {
    let bind = |inherited: Option<std::net::TcpListener>, addr: SocketAddr| match inherited {
        Some(l) if l.local_addr().is_ok_and(|a| listeners::serves(addr, a)) => Ok(l),
        _ => std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source }),
    };
    let admin = match config.admin_listen {
        Some(addr) => Some(bind(admin, addr)?),
        None => None,
    };
    Ok((admin, bind(metrics, config.metrics_listen)?))
}

/// Serves the admin API and the metrics on their listeners; their addresses.
fn serve_http(
    shared: &Arc<Shared>,
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    admin_token: Option<String>,
    (admin, metrics): (Option<std::net::TcpListener>, std::net::TcpListener),
) -> Result<(Option<SocketAddr>, SocketAddr), StartError> {
    // Kept for a later live upgrade.
    let keep = |l: &std::net::TcpListener| l.try_clone().ok().map(std::os::fd::OwnedFd::from);
    let admin_addr = match (admin, shared.config.admin_listen) {
        (Some(l), Some(addr)) => {
            shared.http_fds.lock().unwrap_or_else(|e| e.into_inner())[1] = keep(&l);
            Some(
                crate::admin::spawn(l, admin_token, admin_context(shared))
                    .map_err(|source| StartError::Bind { addr, source })?,
            )
        }
        _ => None,
    };
    let addr = shared.config.metrics_listen;
    shared.http_fds.lock().unwrap_or_else(|e| e.into_inner())[0] = keep(&metrics);
    let metrics_addr = crate::http::spawn(metrics, handle, shared.health.clone())
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((admin_addr, metrics_addr))
}

/// What the admin API needs, with live upgrades started as SIGUSR2 starts them.
fn admin_context(shared: &Arc<Shared>) -> crate::admin::Context {
    let mut context = shared.admin_context();
    let upgrading = shared.clone();
    context.upgrade = Some(crate::control::Upgrader(Arc::new(move |done| {
        upgrade::start(upgrading.clone(), Some(done))
    })));
    context
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
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(crate::metrics::FLEET_REQUEST_DURATION.into()),
                crate::metrics::DURATION_BUCKETS,
            )
        })
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    crate::metrics::describe();
    metrics::gauge!(crate::metrics::ENGINE_INFO, "engine" => engine_name(config)).set(1.0);
    metrics::gauge!(crate::metrics::WORKERS).set(config.workers as f64);
    crate::metrics::registry_loaded(registry.len());
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
                        _ => uring::thread_main(index, l, shared),
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
    if let Some(fleet) = &shared.fleet {
        // The names the drain gave back reach Redis, and the lease goes, before the exit.
        let (done, finished) = tokio::sync::oneshot::channel();
        fleet.post(crate::fleet::Op::Leave { done });
        let wait = (fleet.config.timeout * 2).max(Duration::from_secs(1));
        let deadline = std::time::Instant::now() + wait;
        let mut finished = finished;
        while std::time::Instant::now() < deadline {
            match finished.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => break,
            }
        }
    }
    tracing::info!("drained; exiting");
    Ok(())
}
