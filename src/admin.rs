//! The admin API (IXN1.md section 10): list and close registered clients, list and lift bans.
//!
//! Served by hyper on its own thread (like `/metrics`), never on a worker. The connections
//! live in the workers' slabs, which only their own thread touches, so the API asks: each
//! worker has an [`Inboxes`] slot, and at every timer tick it takes its commands, answers a
//! listing from its slab and carries out kicks like the drain's EventError (through the
//! sans-IO `Connection::on_kick`). A request therefore waits at most about one tick per
//! worker, and a listing of 100,000 connections costs each worker one walk of its slab,
//! with no lock held while clients are served.
//!
//! # Ids and pages
//!
//! A client's `id` is `REGISTERED-WORKER-SLOT-GENERATION`: the milliseconds from the
//! server's start to its registration, then where it lives. Ordering ids orders clients
//! oldest first, so `after=ID` needs no cursor kept on the server and stays valid when
//! the connection it names is gone; the generation keeps an id from reaching a later
//! connection in the same slot.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use ixn_proto::connection::Connection;
use ixn_proto::names::ConnKey;
use ixn_proto::protocol::ClientType;
use ixn_proto::session::Kick;

use crate::runtime::Shared;

/// `limit` when a listing gives none.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` a listing serves (a larger one is served this many).
pub const MAX_LIMIT: usize = 1000;
/// Longest wait for the workers' answers (they answer at their next tick).
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

ixn_proto::label_enum! {
    /// What an admin request did; the label of `ixn_admin_requests_total{action}`.
    pub enum Action {
        /// `GET /v1/clients`.
        ListClients => "list_clients",
        /// `DELETE /v1/clients/ID`.
        Kick => "kick",
        /// `GET /v1/bans`.
        ListBans => "list_bans",
        /// `DELETE /v1/bans/ADDRESS`.
        LiftBan => "lift_ban",
        /// Refused for a missing or wrong token (401).
        Unauthorized => "unauthorized",
        /// Anything else (404, 405, 400).
        Other => "other",
    }
}

/// A registered client's place in the listing order and in the process: see the module
/// doc for its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey {
    /// Milliseconds from the server's start to the registration.
    pub registered_ms: u64,
    /// Where the connection lives.
    pub conn: ConnKey,
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.conn;
        write!(
            f,
            "{}-{}-{}-{}",
            self.registered_ms, c.worker, c.slot, c.generation
        )
    }
}

impl FromStr for ClientKey {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('-');
        let mut next = || parts.next().ok_or(());
        let registered_ms = next()?.parse().map_err(|_| ())?;
        let worker = next()?.parse().map_err(|_| ())?;
        let slot = next()?.parse().map_err(|_| ())?;
        let generation = next()?.parse().map_err(|_| ())?;
        if parts.next().is_some() {
            return Err(());
        }
        Ok(Self {
            registered_ms,
            conn: ConnKey {
                worker,
                slot,
                generation,
            },
        })
    }
}

/// One registered connection as a listing shows it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Its id and order.
    pub key: ClientKey,
    /// The client's address and port (the PROXY header's source behind a balancer).
    pub peer: SocketAddr,
    /// The ClientName it registered under.
    pub name: String,
    /// Its ClientType.
    pub client_type: ClientType,
    /// The ProxyClientId its EventAck carried.
    pub proxy_client_id: i32,
    /// A Proxy's logical clients besides itself.
    pub logical_clients: usize,
    /// Its TLS version and certificate identities, on a TLS listener.
    pub tls: Option<(&'static str, Vec<Box<str>>)>,
}

/// Which registered clients a listing asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this ClientName.
    pub name: Option<String>,
    /// Only clients after this one (the previous page's `next`).
    pub after: Option<ClientKey>,
    /// Page size, 1..=[`MAX_LIMIT`].
    pub limit: usize,
}

/// What the API asks of a worker.
#[derive(Debug)]
pub enum Command {
    /// Answer the registered connections matching the query: oldest first, at most
    /// `limit + 1` of them (the extra one tells the API a next page exists).
    List {
        /// The query.
        query: Query,
        /// Where the answer goes.
        done: tokio::sync::oneshot::Sender<Vec<ClientInfo>>,
    },
    /// Close this connection with EventError 15 if it is registered.
    Kick {
        /// Its slot and generation in the worker.
        conn: ConnKey,
        /// Operator or replaced.
        kick: Kick,
        /// Whether a registered connection was there (operators wait for it; a replace
        /// does not).
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    },
}

#[derive(Debug, Default)]
struct Inbox {
    /// Set when `commands` is not empty: a tick with nothing to do costs one load.
    pending: AtomicBool,
    commands: Mutex<Vec<Command>>,
}

/// One command inbox per worker.
#[derive(Debug)]
pub struct Inboxes {
    boxes: Box<[Inbox]>,
}

impl Inboxes {
    /// Inboxes for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            boxes: (0..workers).map(|_| Inbox::default()).collect(),
        }
    }

    /// Posts `command` to `worker`; `false` if there is no such worker.
    pub fn post(&self, worker: usize, command: Command) -> bool {
        let Some(inbox) = self.boxes.get(worker) else {
            return false;
        };
        inbox
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        inbox.pending.store(true, Ordering::Release);
        true
    }

    /// The commands posted to `worker` since it last looked.
    pub fn take(&self, worker: usize) -> Vec<Command> {
        match self.boxes.get(worker) {
            Some(inbox) if inbox.pending.swap(false, Ordering::AcqRel) => {
                std::mem::take(&mut *inbox.commands.lock().unwrap_or_else(|e| e.into_inner()))
            }
            _ => Vec::new(),
        }
    }

    /// Posts the kick of a connection a newer registration replaced
    /// (`NameTable`'s callback).
    pub fn replaced(&self, conn: ConnKey) {
        self.post(
            conn.worker as usize,
            Command::Kick {
                conn,
                kick: Kick::Replaced,
                done: None,
            },
        );
    }
}

/// How a connection of a worker is shown, if it is registered and not closing.
pub fn describe(conn: &Connection, key: ConnKey, origin: Instant) -> Option<ClientInfo> {
    if conn.is_closing() {
        return None;
    }
    let session = conn.session();
    let (name, client_type) = session.registered_as()?;
    let registered = conn.registered_at()?;
    Some(ClientInfo {
        key: ClientKey {
            registered_ms: registered.saturating_duration_since(origin).as_millis() as u64,
            conn: key,
        },
        peer: conn.peer_addr(),
        name: name.to_string(),
        client_type,
        proxy_client_id: session.proxy_client_id().unwrap_or(0),
        logical_clients: session.logical_clients(),
        tls: conn.tls_peer().map(|t| (t.version, t.identities.clone())),
    })
}

/// One worker's answer to a listing: its matching clients, oldest first, `limit + 1` at
/// most. Only the kept ones are described (a name filter compares before anything is
/// copied).
pub fn list<'a>(
    conns: impl Iterator<Item = (ConnKey, &'a Connection)>,
    query: &Query,
    origin: Instant,
) -> Vec<ClientInfo> {
    let mut found: Vec<ClientInfo> = conns
        .filter(|(_, c)| {
            query.name.as_deref().is_none_or(|want| {
                c.session()
                    .registered_as()
                    .is_some_and(|(name, _)| name == want)
            })
        })
        .filter_map(|(k, c)| describe(c, k, origin))
        .filter(|i| query.after.is_none_or(|a| i.key > a))
        .collect();
    let keep = query.limit.saturating_add(1);
    if found.len() > keep {
        found.select_nth_unstable_by_key(keep - 1, |i| i.key);
        found.truncate(keep);
    }
    found.sort_unstable_by_key(|i| i.key);
    found
}

/// Merges the workers' answers into one page and the `next` cursor.
fn page(mut all: Vec<ClientInfo>, limit: usize) -> (Vec<ClientInfo>, Option<ClientKey>) {
    all.sort_unstable_by_key(|i| i.key);
    if all.len() > limit {
        all.truncate(limit);
        let next = all.last().map(|i| i.key);
        (all, next)
    } else {
        (all, None)
    }
}

/// Parses a listing's query string.
fn query_of(q: Option<&str>) -> Result<Query, String> {
    let mut query = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match &*k {
            "name" => query.name = Some(v.into_owned()),
            "limit" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => query.limit = n.min(MAX_LIMIT),
                _ => return Err(format!("limit must be a number from 1 to {MAX_LIMIT}")),
            },
            "after" => {
                query.after = Some(
                    v.parse()
                        .map_err(|()| format!("after: {v:?} is not a client id"))?,
                )
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(query)
}

/// The wall-clock time of `at`, from the start's pair of clocks.
fn wall(origin: (Instant, SystemTime), at: Instant) -> SystemTime {
    match at.checked_duration_since(origin.0) {
        Some(d) => origin.1 + d,
        None => origin.1 - origin.0.duration_since(at),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string() + "\n")))
        .unwrap_or_default()
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// The API's view of the server.
struct Api {
    shared: Arc<Shared>,
    token: Option<String>,
}

impl Api {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time in the content; the length is not secret.
        bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    }

    async fn handle(&self, req: Request<Incoming>, caller: SocketAddr) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let (action, response) = if !self.authorized(&req) {
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            // Closed once answered: an unauthenticated caller keeps no slot (N8).
            r.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            (Action::Unauthorized, r)
        } else {
            self.route(req).await
        };
        metrics::counter!(crate::metrics::ADMIN_REQUESTS, "action" => action.name()).increment(1);
        tracing::info!(
            caller = %caller,
            status = response.status().as_u16(),
            "admin: {method} {path}"
        );
        response
    }

    async fn route(&self, req: Request<Incoming>) -> (Action, Response<Full<Bytes>>) {
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_owned);
        let method = req.method().clone();
        // A body is neither needed nor read beyond this bound.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            http_body_util::Limited::new(req.into_body(), 4096).collect(),
        )
        .await;
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, parts.as_slice()) {
            (&Method::GET, ["v1", "clients"]) => {
                let query = match query_of(query.as_deref()) {
                    Ok(q) => q,
                    Err(e) => return (Action::Other, error(StatusCode::BAD_REQUEST, &e)),
                };
                (Action::ListClients, self.list(query).await)
            }
            (&Method::DELETE, ["v1", "clients", id]) => (Action::Kick, self.kick(id).await),
            (&Method::GET, ["v1", "bans"]) => (Action::ListBans, self.bans()),
            (&Method::DELETE, ["v1", "bans", address]) => (Action::LiftBan, self.lift(address)),
            (_, ["v1", "clients"] | ["v1", "clients", _] | ["v1", "bans"] | ["v1", "bans", _]) => (
                Action::Other,
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            ),
            _ => (Action::Other, error(StatusCode::NOT_FOUND, "not found")),
        }
    }

    /// Asks every worker, merges their answers into one page.
    async fn list(&self, query: Query) -> Response<Full<Bytes>> {
        let mut waiting = Vec::new();
        for w in 0..self.shared.config.workers {
            let (done, answer) = tokio::sync::oneshot::channel();
            let query = query.clone();
            if self.shared.inboxes.post(w, Command::List { query, done }) {
                waiting.push(answer);
            }
        }
        let mut all = Vec::new();
        for answer in waiting {
            match tokio::time::timeout(WORKER_TIMEOUT, answer).await {
                Ok(Ok(part)) => all.extend(part),
                _ => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a worker did not answer (draining or stopped)",
                    )
                }
            }
        }
        let (clients, next) = page(all, query.limit);
        let origin = self.shared.origin;
        let clients: Vec<serde_json::Value> = clients
            .into_iter()
            .map(|c| {
                let registered = origin.0 + Duration::from_millis(c.key.registered_ms);
                serde_json::json!({
                    "id": c.key.to_string(),
                    "worker": c.key.conn.worker,
                    "peer": c.peer.to_string(),
                    "client_name": &*c.name,
                    "client_type": c.client_type.name(),
                    "proxy_client_id": c.proxy_client_id,
                    "logical_clients": c.logical_clients,
                    "registered_at": rfc3339(wall(origin, registered)),
                    "tls": c.tls.map(|(version, identities)| serde_json::json!({
                        "version": version,
                        "identities": identities.iter().map(|i| &**i).collect::<Vec<_>>(),
                    })),
                })
            })
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "clients": clients,
                "next": next.map(|k| k.to_string()),
            }),
        )
    }

    /// Closes one registered connection with EventError 15: 204, or 404.
    async fn kick(&self, id: &str) -> Response<Full<Bytes>> {
        let Ok(key) = id.parse::<ClientKey>() else {
            return error(StatusCode::NOT_FOUND, "no such client");
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        let command = Command::Kick {
            conn: key.conn,
            kick: Kick::Operator,
            done: Some(done),
        };
        if !self.shared.inboxes.post(key.conn.worker as usize, command) {
            return error(StatusCode::NOT_FOUND, "no such client");
        }
        match tokio::time::timeout(WORKER_TIMEOUT, answer).await {
            Ok(Ok(true)) => {
                tracing::info!(client = %key, "admin: client closed with EventError 15");
                empty(StatusCode::NO_CONTENT)
            }
            Ok(Ok(false)) => error(StatusCode::NOT_FOUND, "no such client"),
            _ => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the worker did not answer (draining or stopped)",
            ),
        }
    }

    fn bans(&self) -> Response<Full<Bytes>> {
        let origin = self.shared.origin;
        let bans: Vec<serde_json::Value> = self
            .shared
            .admission
            .bans(Instant::now())
            .into_iter()
            .map(|b| {
                serde_json::json!({
                    "address": b.address.to_string(),
                    "until": rfc3339(wall(origin, b.until)),
                    "failures": b.failures,
                })
            })
            .collect();
        json(StatusCode::OK, &serde_json::json!({ "bans": bans }))
    }

    fn lift(&self, address: &str) -> Response<Full<Bytes>> {
        let Ok(ip) = address.parse::<IpAddr>() else {
            return error(StatusCode::BAD_REQUEST, "not an IP address");
        };
        if self.shared.admission.lift(ip) {
            tracing::info!(address = %ip, "admin: ban lifted");
            empty(StatusCode::NO_CONTENT)
        } else {
            error(StatusCode::NOT_FOUND, "no ban on that address")
        }
    }
}

/// Binds `--admin-listen` now (a bad address fails start-up) and serves the API on a
/// thread of its own.
pub fn spawn(
    addr: SocketAddr,
    token: Option<String>,
    shared: Arc<Shared>,
) -> std::io::Result<SocketAddr> {
    let api = Arc::new(Api { shared, token });
    let handler: crate::http::Handler = Arc::new(move |req, caller| {
        let api = api.clone();
        Box::pin(async move { api.handle(req, caller).await })
    });
    let what = ("admin", "the admin API's own limit, admin::MAX_CONNECTIONS");
    crate::http::serve(
        addr,
        what,
        || MAX_CONNECTIONS,
        crate::http::WhenFull::Evict,
        handler,
        || {},
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ms: u64, worker: u32, slot: u32) -> ClientKey {
        ClientKey {
            registered_ms: ms,
            conn: ConnKey {
                worker,
                slot,
                generation: 7,
            },
        }
    }

    #[test]
    fn ids_round_trip_and_order_by_registration() {
        let k = key(1234, 1, 56);
        assert_eq!(k.to_string(), "1234-1-56-7");
        assert_eq!("1234-1-56-7".parse(), Ok(k));
        for bad in ["", "1-2-3", "1-2-3-4-5", "a-1-2-3", "-1-2-3-4", "1--2-3"] {
            assert_eq!(bad.parse::<ClientKey>(), Err(()), "{bad:?}");
        }
        assert!(key(10, 1, 0) < key(11, 0, 0));
        assert!(key(10, 0, 5) < key(10, 1, 0));
    }

    #[test]
    fn queries_default_cap_and_refuse() {
        assert_eq!(query_of(None).unwrap().limit, DEFAULT_LIMIT);
        let q = query_of(Some("name=Media%20One&limit=5000&after=1-0-2-3")).unwrap();
        assert_eq!(q.name.as_deref(), Some("Media One"));
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(q.after, Some("1-0-2-3".parse().unwrap()));
        for bad in ["limit=0", "limit=x", "after=zz", "colour=red"] {
            assert!(query_of(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_cut_at_the_limit_and_point_at_the_last() {
        let info = |k: ClientKey| ClientInfo {
            key: k,
            peer: "127.0.0.1:1".parse().unwrap(),
            name: "A".into(),
            client_type: ClientType::MediaServer,
            proxy_client_id: 1,
            logical_clients: 0,
            tls: None,
        };
        let all = vec![info(key(3, 1, 0)), info(key(1, 0, 0)), info(key(2, 1, 1))];
        let (p, next) = page(all.clone(), 2);
        assert_eq!(
            p.iter().map(|i| i.key).collect::<Vec<_>>(),
            [key(1, 0, 0), key(2, 1, 1)]
        );
        assert_eq!(next, Some(key(2, 1, 1)));
        let (p, next) = page(all, 3);
        assert_eq!((p.len(), next), (3, None));
    }

    #[test]
    fn wall_time_follows_the_monotonic_clock() {
        let origin = (
            Instant::now(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
        );
        let later = origin.0 + Duration::from_secs(5);
        assert_eq!(
            wall(origin, later),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_005)
        );
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
