//! What the admin API asks of the workers, and what they answer: the request kinds (the
//! `action` label), one command inbox per worker (taken at each tick), and the listing
//! of a worker's registered clients. The workers' side of the admin API, kept apart from
//! its HTTP side (`admin.rs`) so that neither the runtime nor the metrics depend on the
//! HTTP server, nor it on them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ixn_proto::connection::Connection;
use ixn_proto::names::ConnKey;
use ixn_proto::protocol::ClientType;
use ixn_proto::session::Kick;

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
        /// `GET /v1/names/NAME` (a fleet's name holder).
        Names => "names",
        /// `GET /v1/instances` (a fleet's live servers).
        Instances => "instances",
        /// `POST /v1/upgrade` (a live upgrade, docs/OPERATIONS.md 7e).
        Upgrade => "upgrade",
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
    /// A live upgrade (docs/OPERATIONS.md 7e): stop accepting, and hand every connection
    /// at rest to `parts`, a batch per tick, until none is left to wait for.
    HandOver {
        /// Where the batches go.
        parts: std::sync::mpsc::Sender<Part>,
        /// How long connections not yet at rest are waited for.
        until: std::time::Instant,
    },
    /// The upgrade failed: adopt these again (handed earlier, never adopted), and accept
    /// again.
    TakeBack {
        /// The connections and their sockets.
        conns: Vec<Handed>,
    },
    /// The new process has adopted everything handed: drain what is left as a lame duck,
    /// leaving the listeners (now the new process's) open.
    Upgraded,
}

/// Starts a live upgrade (as SIGUSR2 does) for the admin API's `POST /v1/upgrade`, and
/// says how it ended: the handover's figures, or why there was none (refused at once, or
/// failed with every connection kept).
#[derive(Clone)]
pub struct Upgrader(pub std::sync::Arc<dyn Fn(UpgradeDone) + Send + Sync>);

/// Where an upgrade's end is told.
pub type UpgradeDone =
    tokio::sync::oneshot::Sender<Result<crate::admin_api::Upgrade, UpgradeRefused>>;

/// Why a live upgrade did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeRefused {
    /// It cannot start now (one under way, draining, a fleet).
    Now(String),
    /// It started and failed; this process kept every connection.
    Failed(String),
}

impl std::fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upgrader")
    }
}

/// A connection handed over: its state and its socket.
pub type Handed = (ixn_proto::handoff::Handoff, std::os::fd::OwnedFd);

/// One worker's batch of a live upgrade.
#[derive(Debug)]
pub struct Part {
    /// The worker.
    pub worker: usize,
    /// Connections at rest, detached from the worker.
    pub conns: Vec<Handed>,
    /// The worker's last batch: its listeners (duplicates of its descriptors) come with
    /// it, and the connections it keeps (TLS, closing) are counted.
    pub last: Option<LastPart>,
}

/// What a worker's last batch carries besides connections.
#[derive(Debug)]
pub struct LastPart {
    /// Its listeners.
    pub listeners: Vec<(std::os::fd::OwnedFd, ixn_proto::tls::ListenerKind)>,
    /// Connections it keeps and will drain (TLS, closing, not at rest in time).
    pub kept: usize,
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
pub fn page(mut all: Vec<ClientInfo>, limit: usize) -> (Vec<ClientInfo>, Option<ClientKey>) {
    all.sort_unstable_by_key(|i| i.key);
    if all.len() > limit {
        all.truncate(limit);
        let next = all.last().map(|i| i.key);
        (all, next)
    } else {
        (all, None)
    }
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
}
