//! The fleet's Redis connection (a `ConnectionManager` for one primary, a cluster
//! connection for seed nodes; both multiplexed, both over RESP3 so that channel messages
//! arrive on the same connection), and how every operation on it is bounded and counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::handle::unix_ms;
use super::keys::Keys;

/// The Redis connection: a primary or a cluster, used alike.
#[derive(Clone)]
pub(super) enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channels).await,
            Conn::Cluster(c) => c.subscribe(channels).await,
        }
    }
}

/// Connects (RESP3, so channel messages arrive as pushes on this connection) and
/// subscribes to this server's channel and the bans channel.
pub(super) async fn connect(
    cfg: &crate::config::FleetConfig,
    keys: &Keys,
    push: UnboundedSender<redis::PushInfo>,
) -> RedisResult<Conn> {
    use redis::IntoConnectionInfo;
    let password = cfg.password().map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "password file", e.to_string()))
    })?;
    let timeout = cfg.timeout.max(Duration::from_millis(100));
    let mut conn = if cfg.redis.len() == 1 {
        let info = cfg.redis[0].as_str().into_connection_info()?;
        let mut settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        if let Some(p) = &password {
            settings = settings.set_password(p);
        }
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_push_sender(push)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        Conn::Single(client.get_connection_manager_with_config(config).await?)
    } else {
        let mut b = redis::cluster::ClusterClient::builder(cfg.redis.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .connection_timeout(timeout)
            .response_timeout(cfg.timeout)
            .retries(1);
        if let Some(p) = &password {
            b = b.password(p.clone());
        }
        Conn::Cluster(b.build()?.get_async_connection().await?)
    };
    conn.subscribe(&[keys.to(&keys.instance), keys.ban_channel()])
        .await?;
    Ok(conn)
}

/// A delay drawn uniformly from zero to `d` (full jitter).
pub(super) fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_ms());
    let r = (h.finish() % 1_000_000) as f64 / 1_000_000.0;
    d.mul_f64(r).max(Duration::from_millis(10))
}

/// Counts one Redis operation.
pub(super) fn count(op: &'static str, result: &'static str, took: Duration) {
    count_many(op, result, took, 1);
}

/// Counts `n` Redis operations that took `took` each (a pipeline's: its handles are looked
/// up once for the lot).
pub(super) fn count_many(op: &'static str, result: &'static str, took: Duration, n: u64) {
    if n == 0 {
        return;
    }
    // The handles are resolved once per (op, result) on this thread (the fleet thread):
    // a registry lookup per operation cost more than the operation's own bookkeeping.
    type Handles = (
        HashMap<(&'static str, &'static str), metrics::Counter>,
        Option<metrics::Histogram>,
    );
    thread_local! {
        static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::new((HashMap::new(), None));
    }
    HANDLES.with(|h| {
        let (counters, histogram) = &mut *h.borrow_mut();
        counters
            .entry((op, result))
            .or_insert_with(|| {
                metrics::counter!(crate::metrics::FLEET_REQUESTS, "op" => op, "result" => result)
            })
            .increment(n);
        histogram
            .get_or_insert_with(|| metrics::histogram!(crate::metrics::FLEET_REQUEST_DURATION))
            .record_many(took.as_secs_f64(), n as usize);
    });
}

/// Runs `f` under `timeout`, counted as `op`.
pub(super) async fn timed<T>(
    op: &'static str,
    timeout: Duration,
    f: impl std::future::Future<Output = RedisResult<T>>,
) -> Option<T> {
    let t0 = Instant::now();
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => {
            count(op, "ok", t0.elapsed());
            Some(v)
        }
        Ok(Err(e)) => {
            tracing::debug!("fleet: {op}: {e}");
            count(op, "error", t0.elapsed());
            None
        }
        Err(_) => {
            count(op, "timeout", t0.elapsed());
            None
        }
    }
}
