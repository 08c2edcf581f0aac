//! The operator's HTTP endpoint: `GET /metrics` (Prometheus text), `GET /live`, `GET /ready`.
//!
//! Served by hyper on its own thread with a small current-thread tokio runtime, away from
//! the io_uring workers, so a slow scraper never touches the client hot path. The same
//! thread runs the exporter's upkeep so histogram memory stays bounded without scrapes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

/// What the endpoint needs to know of the server, shared with the runtime (which sets it).
#[derive(Debug)]
pub struct Health {
    /// Worker threads the server runs.
    pub workers: usize,
    /// Workers whose listeners accept.
    pub listening: std::sync::atomic::AtomicUsize,
    /// Set when the drain begins.
    pub draining: std::sync::atomic::AtomicBool,
    /// A live upgrade handed this process's connections and listeners to a new process:
    /// the service is ready there, whatever this process's drain says.
    pub handed_over: std::sync::atomic::AtomicBool,
    /// Metrics connections served at once (`--metrics-max-connections`, or less when the
    /// descriptor limit leaves less beside the clients).
    pub max_connections: std::sync::atomic::AtomicUsize,
}

impl Health {
    /// A server of `workers` workers, none listening yet.
    pub fn new(workers: usize, max_connections: usize) -> Self {
        Self {
            workers,
            listening: 0.into(),
            draining: false.into(),
            handed_over: false.into(),
            max_connections: max_connections.into(),
        }
    }
}

fn respond(
    method: &Method,
    path: &str,
    handle: Option<&PrometheusHandle>,
    health: &Health,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match path {
        "/metrics" => {
            let Some(handle) = handle else {
                return text(
                    StatusCode::NOT_FOUND,
                    "metrics are disabled (--metrics false)\n".into(),
                );
            };
            let mut r = text(StatusCode::OK, handle.render());
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => {
            let listening = health.listening.load(Ordering::Acquire);
            if health.handed_over.load(Ordering::Acquire) {
                text(
                    StatusCode::OK,
                    "ready (handed over to the new process)\n".into(),
                )
            } else if health.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            } else if listening < health.workers {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "starting: {listening}/{} workers listening\n",
                        health.workers
                    ),
                )
            } else {
                text(StatusCode::OK, "ready\n".into())
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Largest request head (request line and headers) the endpoint reads; a longer one is
/// answered 431 and the connection closed. hyper's own floor is the same 8 KiB.
pub const MAX_HEAD_BYTES: usize = 8192;
/// A request head must arrive within this after the connection opens (or after the
/// previous response on a kept-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest life of one metrics connection, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Shortest interval between two warnings of the same kind.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Logs `msg` at WARN unless it was logged less than [`WARN_EVERY`] ago; counts what it
/// held back and says so the next time.
#[derive(Debug, Default)]
struct RateLimitedWarn {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(suppressed, "{msg}");
        self.last = Some(std::time::Instant::now());
    }
}

/// Binds the listener now (so a bad address fails start-up) and serves it on a thread.
///
/// Bounds (docs/SECURITY.md): at most `Health::max_connections` connections at once (the next
/// is closed as soon as it is accepted), request heads of at most [`MAX_HEAD_BYTES`] arriving
/// within [`HEADER_READ_TIMEOUT`], and [`CONNECTION_LIFETIME`] per connection.
pub fn spawn(
    listener: std::net::TcpListener,
    handle: Option<PrometheusHandle>,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let upkeep = handle.clone();
    let limit = health.clone();
    let handler: Handler = Arc::new(move |req, _peer| {
        let r = respond(req.method(), req.uri().path(), handle.as_ref(), &health);
        Box::pin(async move { r })
    });
    serve(
        listener,
        (
            "metrics",
            "--metrics-max-connections, and the descriptor limit",
        ),
        move || limit.max_connections.load(Ordering::Relaxed),
        WhenFull::Refuse,
        handler,
        move || {
            // The exporter's upkeep keeps histogram memory bounded without scrapes.
            if let Some(upkeep) = upkeep {
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        every.tick().await;
                        upkeep.run_upkeep();
                    }
                });
            }
        },
    )
}

/// An HTTP endpoint's answer to one request from `peer`.
pub type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
            SocketAddr,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// What a listener does with a new connection when it already holds its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Close the new one at once (the metrics listener: its bound is the operator's).
    Refuse,
    /// Close the oldest connection that has not yet sent a whole request, and serve the
    /// new one (the admin API: with a 401 closing its connection, idle or trickling
    /// callers cannot hold every slot and lock the operator out, N8).
    Evict,
}

/// Set once a live upgrade has committed: the new process serves these listeners now.
static STOP_ACCEPTING: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);

/// A live upgrade committed (docs/OPERATIONS.md 7e): every listener [`serve`] runs stops
/// taking connections (the new process takes them from the same socket) and finishes the
/// requests it has, so that none is cut off when this process exits.
pub fn stop_accepting() {
    STOP_ACCEPTING.send_replace(true);
}

/// Binds `addr` now and serves `handler` on a thread of its own (`ixn-{what}`), with the
/// bounds of [`spawn`]: at most `max_connections()` connections (what sets them is named
/// in the warning when they are full), bounded request heads and connection lifetimes.
/// `start` runs once inside the thread's runtime.
pub fn serve(
    std_listener: std::net::TcpListener,
    (what, limit_name): (&'static str, &'static str),
    max_connections: impl Fn() -> usize + Send + 'static,
    full: WhenFull,
    handler: Handler,
    start: impl FnOnce() + Send + 'static,
) -> std::io::Result<SocketAddr> {
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("ixn-{what}"))
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("{what} listener: {e}");
                        return;
                    }
                };
                start();
                let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let untrusted = Arc::new(std::sync::Mutex::new(Untrusted::default()));
                let mut accept_warn = RateLimitedWarn::default();
                let mut full_warn = RateLimitedWarn::default();
                let mut stop = STOP_ACCEPTING.subscribe();
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = stop.wait_for(|stop| *stop) => break,
                    };
                    let (stream, peer) = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            accept_warn.warn(format_args!("{what} accept: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let max = max_connections();
                    if open.load(Ordering::Relaxed) >= max {
                        let evicted = full == WhenFull::Evict && untrusted.lock().unwrap_or_else(|e| e.into_inner()).evict_oldest();
                        if !evicted {
                            // Closed at once: the descriptor is back before the next accept.
                            drop(stream);
                            full_warn.warn(format_args!(
                                "{what} listener: {max} connections open ({limit_name}); refused {peer}"
                            ));
                            continue;
                        }
                    }
                    open.fetch_add(1, Ordering::Relaxed);
                    let guard = OpenGuard(open.clone());
                    let handler = handler.clone();
                    let (id, evict) = untrusted.lock().unwrap_or_else(|e| e.into_inner()).add();
                    let untrusted = untrusted.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let trusted = untrusted.clone();
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            // A whole request arrived: no longer evictable (an
                            // unauthenticated one is answered 401 and closed).
                            trusted.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                            let r = handler(req, peer);
                            async move { Ok::<_, Infallible>(r.await) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .max_buf_size(MAX_HEAD_BYTES)
                            .serve_connection(io, svc);
                        tokio::select! {
                            _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
                            () = evict.notified() => {}
                        }
                        untrusted.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                    });
                }
                // Handed over: the listener goes, the requests in hand are finished.
                drop(listener);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        })?;
    Ok(local)
}

/// Connections that have not yet sent a whole request, oldest first: the ones a full
/// listener with [`WhenFull::Evict`] closes to make room.
#[derive(Default)]
struct Untrusted {
    next: u64,
    queue: std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>,
}

impl Untrusted {
    fn add(&mut self) -> (u64, Arc<tokio::sync::Notify>) {
        self.next += 1;
        let n = Arc::new(tokio::sync::Notify::new());
        self.queue.push_back((self.next, n.clone()));
        (self.next, n)
    }

    fn remove(&mut self, id: u64) {
        self.queue.retain(|(i, _)| *i != id);
    }

    /// Closes the oldest; whether there was one.
    fn evict_oldest(&mut self) -> bool {
        match self.queue.pop_front() {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts one open connection until dropped (also when its task is cancelled).
struct OpenGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_follows_workers_and_drain() {
        let health = Health::new(2, 1);
        let status = |path: &str| respond(&Method::GET, path, None, &health).status();
        assert_eq!(status("/live"), StatusCode::OK);
        assert_eq!(
            status("/ready"),
            StatusCode::SERVICE_UNAVAILABLE,
            "no worker listens"
        );
        health.listening.store(1, Ordering::Release);
        assert_eq!(
            status("/ready"),
            StatusCode::SERVICE_UNAVAILABLE,
            "one of two"
        );
        health.listening.store(2, Ordering::Release);
        assert_eq!(status("/ready"), StatusCode::OK);
        health.draining.store(true, Ordering::Release);
        assert_eq!(status("/ready"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status("/live"), StatusCode::OK);
        assert_eq!(status("/metrics"), StatusCode::NOT_FOUND, "metrics off");
        assert_eq!(status("/nope"), StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&Method::POST, "/live", None, &health).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
