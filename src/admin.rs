//! The admin API (docs/PROTOCOL.md §10): list and close registered clients, list and lift bans.
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
//! connection in the same slot. In a fleet (docs/PROTOCOL.md §13) the id ends in
//! `@INSTANCE`, the server holding it: a `DELETE` with another server's id is passed to
//! that server through the fleet's Redis.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use ixn_proto::session::Kick;

use crate::admin_api as api;
use crate::admission::Admission;
use crate::control::{page, Action, ClientKey, Command, Inboxes, Query};

/// What the admin API needs of the server, and no more (so it does not depend on the
/// runtime that starts it): the workers' command inboxes, the bans, and the start's pair
/// of clocks that ids and times are measured from.
#[derive(Debug, Clone)]
pub struct Context {
    /// Worker threads.
    pub workers: usize,
    /// One command inbox per worker.
    pub inboxes: Arc<Inboxes>,
    /// Admission control (the bans).
    pub admission: Arc<Admission>,
    /// The monotonic and the wall-clock time at start.
    pub origin: (Instant, SystemTime),
    /// The fleet, with `--fleet-redis`.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Starts a live upgrade (`POST /v1/upgrade`); `None` where none can run.
    pub upgrade: Option<crate::control::Upgrader>,
}

/// `limit` when a listing gives none.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` a listing serves (a larger one is served this many).
pub const MAX_LIMIT: usize = 1000;
/// Longest wait for the workers' answers (they answer at their next tick).
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

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

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let text = serde_json::to_string(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text + "\n")))
        .unwrap_or_default()
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &api::ApiError {
            error: message.to_string(),
        },
    )
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// The API's view of the server.
struct Api {
    server: Context,
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
            (&Method::GET, ["v1", "names", name]) => (Action::Names, self.holder(name).await),
            (&Method::GET, ["v1", "instances"]) => (Action::Instances, self.instances().await),
            (&Method::POST, ["v1", "upgrade"]) => (Action::Upgrade, self.upgrade().await),
            (
                _,
                ["v1", "clients"]
                | ["v1", "clients", _]
                | ["v1", "bans"]
                | ["v1", "bans", _]
                | ["v1", "names", _]
                | ["v1", "instances"]
                | ["v1", "upgrade"],
            ) => (
                Action::Other,
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            ),
            _ => (Action::Other, error(StatusCode::NOT_FOUND, "not found")),
        }
    }

    /// A live upgrade, answered once it is over: 200 with its figures, 409 if it cannot
    /// start now, 500 if it failed (this process kept every connection).
    async fn upgrade(&self) -> Response<Full<Bytes>> {
        use crate::control::UpgradeRefused;
        let Some(upgrade) = &self.server.upgrade else {
            return error(StatusCode::CONFLICT, "live upgrades are not available here");
        };
        let (done, ended) = tokio::sync::oneshot::channel();
        (upgrade.0)(done);
        match ended.await {
            Ok(Ok(report)) => json(StatusCode::OK, &report),
            Ok(Err(UpgradeRefused::Now(why))) => error(StatusCode::CONFLICT, &why),
            Ok(Err(UpgradeRefused::Failed(why))) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the upgrade failed, this process keeps serving: {why}"),
            ),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the upgrade did not say how it ended",
            ),
        }
    }

    /// Asks every worker, merges their answers into one page.
    async fn list(&self, query: Query) -> Response<Full<Bytes>> {
        let mut waiting = Vec::new();
        for w in 0..self.server.workers {
            let (done, answer) = tokio::sync::oneshot::channel();
            let query = query.clone();
            if self.server.inboxes.post(w, Command::List { query, done }) {
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
        let origin = self.server.origin;
        let clients = clients
            .into_iter()
            .map(|c| {
                let registered = origin.0 + Duration::from_millis(c.key.registered_ms);
                api::Client {
                    id: self.id_text(c.key),
                    worker: c.key.conn.worker,
                    peer: c.peer.to_string(),
                    client_name: c.name.to_string(),
                    client_type: c.client_type.name().to_string(),
                    proxy_client_id: c.proxy_client_id,
                    logical_clients: c.logical_clients,
                    registered_at: rfc3339(wall(origin, registered)),
                    tls: c.tls.map(|(version, identities)| api::Tls {
                        version: version.to_string(),
                        identities: identities.iter().map(|i| i.to_string()).collect(),
                    }),
                }
            })
            .collect();
        json(
            StatusCode::OK,
            &api::ClientPage {
                clients,
                next: next.map(|k| self.id_text(k)),
            },
        )
    }

    /// A client's id as the API shows it: in a fleet, with `@INSTANCE`.
    fn id_text(&self, key: ClientKey) -> String {
        match &self.server.fleet {
            Some(f) => format!("{key}@{}", f.keys.instance),
            None => key.to_string(),
        }
    }

    /// Closes one registered connection with EventError 15: 204, or 404. In a fleet, an
    /// id of another server is passed to it.
    async fn kick(&self, id: &str) -> Response<Full<Bytes>> {
        let (local, instance) = match id.split_once('@') {
            Some((l, i)) => (l, Some(i)),
            None => (id, None),
        };
        let Ok(key) = local.parse::<ClientKey>() else {
            return error(StatusCode::NOT_FOUND, "no such client");
        };
        if let (Some(instance), Some(fleet)) = (instance, &self.server.fleet) {
            if instance != fleet.keys.instance {
                let (done, answer) = tokio::sync::oneshot::channel();
                fleet.post(crate::fleet::Op::Kick {
                    instance: instance.to_string(),
                    conn: key.conn,
                    done,
                });
                let wait = (fleet.config.timeout * 4).max(Duration::from_secs(2));
                return match tokio::time::timeout(wait, answer).await {
                    Ok(Ok(Some(true))) => {
                        tracing::info!(client = %id, "admin: client of another server closed with EventError 15");
                        empty(StatusCode::NO_CONTENT)
                    }
                    _ => error(StatusCode::NOT_FOUND, "no live server has such a client"),
                };
            }
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let command = Command::Kick {
            conn: key.conn,
            kick: Kick::Operator,
            done: Some(done),
        };
        if !self.server.inboxes.post(key.conn.worker as usize, command) {
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
        let origin = self.server.origin;
        let bans = self
            .server
            .admission
            .bans(Instant::now())
            .into_iter()
            .map(|b| api::Ban {
                address: b.address.to_string(),
                until: rfc3339(wall(origin, b.until)),
                failures: b.failures,
            })
            .collect();
        json(StatusCode::OK, &api::BanList { bans })
    }

    fn lift(&self, address: &str) -> Response<Full<Bytes>> {
        let Ok(ip) = address.parse::<IpAddr>() else {
            return error(StatusCode::BAD_REQUEST, "not an IP address");
        };
        // Lifted here first: the fleet's own message comes back to this server too, and
        // must not make this answer a 404.
        let had = self.server.admission.lift(ip);
        if let Some(f) = self.server.fleet.as_ref().filter(|f| f.config.bans) {
            // Lifted everywhere, whether or not this server had it.
            f.post(crate::fleet::Op::Unban { address: ip });
        }
        if had {
            tracing::info!(address = %ip, "admin: ban lifted");
            empty(StatusCode::NO_CONTENT)
        } else {
            error(StatusCode::NOT_FOUND, "no ban on that address")
        }
    }
}

impl Api {
    /// `GET /v1/names/NAME`: the name's holder on whichever server of the fleet.
    async fn holder(&self, name: &str) -> Response<Full<Bytes>> {
        let Some(fleet) = &self.server.fleet else {
            return error(StatusCode::NOT_FOUND, "not in a fleet (--fleet-redis)");
        };
        let name = percent_decode(name);
        let (done, answer) = tokio::sync::oneshot::channel();
        fleet.post(crate::fleet::Op::WhoHolds {
            name: name.clone(),
            done,
        });
        match tokio::time::timeout(fleet.config.timeout * 4, answer).await {
            Ok(Ok(Ok(Some((instance, id))))) => {
                json(StatusCode::OK, &api::NameHolder { name, instance, id })
            }
            Ok(Ok(Ok(None))) => error(StatusCode::NOT_FOUND, "no live holder of that name"),
            Ok(Ok(Err(e))) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
            _ => error(StatusCode::SERVICE_UNAVAILABLE, "the fleet did not answer"),
        }
    }

    /// `GET /v1/instances`: the fleet's live servers.
    async fn instances(&self) -> Response<Full<Bytes>> {
        let Some(fleet) = &self.server.fleet else {
            return error(StatusCode::NOT_FOUND, "not in a fleet (--fleet-redis)");
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        fleet.post(crate::fleet::Op::Instances { done });
        match tokio::time::timeout(fleet.config.timeout * 4, answer).await {
            Ok(Ok(Ok(all))) => {
                // The fleet keeps each server's description as JSON in Redis; one that
                // does not read as an instance (another version's) is left out.
                let instances = all
                    .into_iter()
                    .filter_map(|v| serde_json::from_value(v).ok())
                    .collect();
                json(StatusCode::OK, &api::InstanceList { instances })
            }
            Ok(Ok(Err(e))) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
            _ => error(StatusCode::SERVICE_UNAVAILABLE, "the fleet did not answer"),
        }
    }
}

/// A path segment with its %-escapes decoded (a ClientName may hold any UTF-8).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Binds `--admin-listen` now (a bad address fails start-up) and serves the API on a
/// thread of its own.
pub fn spawn(
    listener: std::net::TcpListener,
    token: Option<String>,
    server: Context,
) -> std::io::Result<SocketAddr> {
    let api = Arc::new(Api { server, token });
    let handler: crate::http::Handler = Arc::new(move |req, caller| {
        let api = api.clone();
        Box::pin(async move { api.handle(req, caller).await })
    });
    let what = ("admin", "the admin API's own limit, admin::MAX_CONNECTIONS");
    crate::http::serve(
        listener,
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
