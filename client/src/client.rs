//! The client's task: connect, register, keep alive, replay after a reconnection, and the
//! handle a program holds ([`Client`]).
//!
//! One task per client owns the connection. The program talks to it through a command
//! channel (logical clients, close) and hears from it through a `watch` of its
//! [`Status`] and a broadcast of [`Event`]s. Between connections it waits the backoff
//! ([`crate::Backoff`]) and keeps taking commands, so a logical client registered while
//! the server is away is registered on the next connection.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ixn_proto::protocol::ErrorCode;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{ClientConfig, RefusalPolicy, Registration, Selection};
use crate::conn::{Answer, Conn};
use crate::Error;

/// Where the client stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not registered: connecting, or waiting its backoff.
    Connecting,
    /// Registered on a server.
    Registered(Registered),
    /// Stopped for good; the task has ended.
    Stopped(Stop),
}

/// A registration in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The server (`host:port`, as given).
    pub server: String,
    /// The connection's ProxyClientId.
    pub proxy_client_id: i32,
    /// The keepalive in force, when there is one.
    pub keep_alive: Option<Duration>,
}

/// Why a connection ended; the client connects again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The connection could not be made.
    Connect(String),
    /// The server closed it (or reset it) without a word.
    Closed,
    /// Reading or writing failed.
    Io(String),
    /// The server drains (EventError 11): the client moves to another server.
    Draining,
    /// The server found this client silent past its keepalive (EventError 19).
    KeepAliveExpired,
    /// The server did not answer in time: a registration, or a RequestKeepAlive.
    ServerSilent,
    /// The registration was refused with a code the client retries (10, 18; 14 and 16
    /// under [`RefusalPolicy::Retry`]).
    Refused(ErrorCode),
}

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// [`Client::close`], or every handle dropped.
    Closed,
    /// An operator closed it, or a newer registration of its name replaced it
    /// (EventError 15): reconnecting would only fight over the name.
    Kicked,
    /// The registration was refused with a code retrying cannot change (2, 3, 4, 5, 6, 7,
    /// 17; 14 and 16 under [`RefusalPolicy::Stop`]), or one this client does not know
    /// (its raw value).
    Refused(Result<ErrorCode, i32>),
}

/// A Proxy's logical client, as this client knows it across reconnections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogicalId(u64);

/// What a program can watch happen ([`Client::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection to `server` is open (not yet registered).
    Connected {
        /// `host:port`.
        server: String,
    },
    /// Registered (again).
    Registered(Registered),
    /// A logical client is registered (again, after a reconnection) under this id.
    LogicalRegistered {
        /// Which.
        logical: LogicalId,
        /// Its ProxyClientId on the current connection.
        proxy_client_id: i32,
    },
    /// A logical client was refused (on a replay after a reconnection, too) and dropped.
    LogicalRefused {
        /// Which.
        logical: LogicalId,
        /// The server's code (raw when unknown to this client).
        code: Result<ErrorCode, i32>,
    },
    /// The connection to `server` ended; the client connects again.
    Lost {
        /// `host:port`.
        server: String,
        /// Why.
        reason: Lost,
    },
    /// The client stopped.
    Stopped(Stop),
}

enum Command {
    RegisterLogical {
        id: LogicalId,
        registration: Registration,
        reply: oneshot::Sender<Result<i32, Error>>,
    },
    UnregisterLogical {
        id: LogicalId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A client of a list of IXN/1 servers: registered, kept alive and registered again after
/// every reconnection, by a task of its own on the current tokio runtime.
///
/// ```no_run
/// use ixn_client::{Client, ClientConfig, ClientType, Registration};
///
/// # async fn run() -> Result<(), ixn_client::Error> {
/// let reg = Registration::new("MediaServer_email", ClientType::MediaServer)
///     .keep_alive(std::time::Duration::from_secs(30));
/// let client = Client::connect(ClientConfig::new(["127.0.0.1:7400"], reg)).await?;
/// println!("registered: {:?}", client.status());
/// client.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<Event>,
    status: watch::Receiver<Status>,
    next_logical: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Starts the client's task and returns at once; see [`Client::registered`] and
    /// [`Client::events`]. Must be called within a tokio runtime.
    pub fn start(config: ClientConfig) -> Result<Client, Error> {
        config.check()?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let (status_tx, status) = watch::channel(Status::Connecting);
        let span = tracing::info_span!("ixn_client", name = %config.registration.name);
        let task = Task {
            config,
            commands: rx,
            events: events.clone(),
            status: status_tx,
            logical: BTreeMap::new(),
        };
        tokio::spawn(task.run().instrument(span));
        Ok(Client {
            commands,
            events,
            status,
            next_logical: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Starts the client and waits for its first registration; a refusal that stops it
    /// is the error.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let c = Client::start(config)?;
        c.registered().await?;
        Ok(c)
    }

    /// Waits until the client is registered (now, or after its reconnection), or fails
    /// when it has stopped.
    pub async fn registered(&self) -> Result<Registered, Error> {
        let mut status = self.status.clone();
        let s = status
            .wait_for(|s| !matches!(s, Status::Connecting))
            .await
            .map_err(|_| Error::Gone)?;
        match &*s {
            Status::Registered(r) => Ok(r.clone()),
            Status::Stopped(stop) => Err(Error::from(stop.clone())),
            Status::Connecting => Err(Error::Gone),
        }
    }

    /// Where it stands now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Events from now on. The status changes before its event is sent, so a receiver
    /// made after [`Client::registered`] returns may still see that registration's
    /// [`Event::Registered`]: subscribe before, from [`Client::start`], to see each once.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A Proxy registers a logical client: its ProxyClientId on the current connection
    /// once the server acknowledges it (after the next registration when disconnected).
    /// The client registers it again after every reconnection
    /// ([`Event::LogicalRegistered`]) until [`Client::unregister_logical`].
    pub async fn register_logical(
        &self,
        registration: Registration,
    ) -> Result<(LogicalId, i32), Error> {
        let id = LogicalId(
            self.next_logical
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::RegisterLogical {
                id,
                registration,
                reply,
            })
            .map_err(|_| Error::Gone)?;
        let pid = rx.await.map_err(|_| Error::Gone)??;
        Ok((id, pid))
    }

    /// Unregisters a logical client, and stops registering it again.
    pub async fn unregister_logical(&self, id: LogicalId) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::UnregisterLogical { id, reply })
            .map_err(|_| Error::Gone)?;
        rx.await.map_err(|_| Error::Gone)?
    }

    /// Unregisters the connection (RequestUnregisterClient, when registered) and stops.
    pub async fn close(self) {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// How one connection ended.
enum Ended {
    Lost { reason: Lost, registered: bool },
    Stopped(Stop),
}

/// An answer the connection waits for, by ReferenceId.
enum Pending {
    KeepAlive,
    Logical(LogicalId),
    Unregister(oneshot::Sender<Result<(), Error>>),
    Close,
}

struct Logical {
    registration: Registration,
    /// On the current connection, once acknowledged.
    proxy_client_id: Option<i32>,
    /// The program waiting for its first acknowledgement.
    reply: Option<oneshot::Sender<Result<i32, Error>>>,
}

struct Task {
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: broadcast::Sender<Event>,
    status: watch::Sender<Status>,
    logical: BTreeMap<LogicalId, Logical>,
}

impl Task {
    fn emit(&self, e: Event) {
        tracing::debug!(event = ?e);
        let _ = self.events.send(e);
    }

    async fn run(mut self) {
        let n = self.config.servers.len();
        let first = match self.config.selection {
            Selection::PrimaryBackup => 0,
            Selection::Spread => fastrand::usize(..n),
        };
        let mut i = first;
        let mut failures = 0u32;
        let stop = loop {
            let server = self.config.servers[i].clone();
            let span = tracing::info_span!("connection", server = %server);
            let ended = self.session(&server).instrument(span).await;
            let (reason, registered) = match ended {
                Ended::Stopped(stop) => break stop,
                Ended::Lost { reason, registered } => (reason, registered),
            };
            tracing::info!(%server, ?reason, "connection lost");
            self.status.send_replace(Status::Connecting);
            let draining = reason == Lost::Draining;
            self.emit(Event::Lost { server, reason });
            if registered {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            i = match self.config.selection {
                // Back to the primary after a registration was lost, unless it drains.
                Selection::PrimaryBackup if registered && !draining => 0,
                _ => (i + 1) % n,
            };
            // A drain drops its clients together: they spread by jitter, not by count.
            let wait = if draining {
                self.config.backoff.delay(1)
            } else {
                self.config.backoff.delay(failures)
            };
            if let Some(stop) = self.wait(wait).await {
                break stop;
            }
        };
        for (_, l) in std::mem::take(&mut self.logical) {
            if let Some(r) = l.reply {
                let _ = r.send(Err(Error::from(stop.clone())));
            }
        }
        self.status.send_replace(Status::Stopped(stop.clone()));
        self.emit(Event::Stopped(stop));
    }

    /// Waits `d` between connections, taking commands meanwhile; a close ends it.
    async fn wait(&mut self, d: Duration) -> Option<Stop> {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return None,
                c = self.commands.recv() => match c {
                    None => return Some(Stop::Closed),
                    Some(Command::Close { reply }) => {
                        let _ = reply.send(());
                        return Some(Stop::Closed);
                    }
                    Some(Command::RegisterLogical { id, registration, reply }) => {
                        self.logical.insert(id, Logical { registration, proxy_client_id: None, reply: Some(reply) });
                    }
                    Some(Command::UnregisterLogical { id, reply }) => {
                        let found = self.logical.remove(&id).is_some();
                        let _ = reply.send(if found { Ok(()) } else { Err(Error::UnknownLogical) });
                    }
                },
            }
        }
    }

    /// One connection: open it, register, replay the logical clients, then serve
    /// commands, keepalives and answers until it ends.
    async fn session(&mut self, server: &str) -> Ended {
        let lost = |reason| Ended::Lost {
            reason,
            registered: false,
        };
        let cfg = &self.config;
        let mut conn = match Conn::open(server, cfg.tls.as_ref(), cfg.connect_timeout).await {
            Ok(c) => c,
            Err(e) => return lost(Lost::Connect(e.to_string())),
        };
        self.emit(Event::Connected {
            server: server.to_string(),
        });
        let rid = conn.rid();
        if let Err(e) = conn.register(rid, &self.config.registration, true).await {
            return lost(Lost::Io(e.to_string()));
        }
        let answer = match tokio::time::timeout(self.config.answer_timeout, conn.answer()).await {
            Err(_) => return lost(Lost::ServerSilent),
            Ok(Err(e)) => return lost(Lost::Io(e.to_string())),
            Ok(Ok(None)) => return lost(Lost::Closed),
            Ok(Ok(Some(a))) => a,
        };
        let registered = match answer {
            Answer::Ack {
                rid: r,
                proxy_client_id: Some(pid),
                keep_alive,
            } if r == rid => Registered {
                server: server.to_string(),
                proxy_client_id: pid,
                keep_alive: keep_alive.map(|k| Duration::from_secs(k.into())),
            },
            Answer::Error { code, .. } => return self.refused(code),
            Answer::Ack { .. } => return lost(Lost::Io("an EventAck for another request".into())),
        };
        tracing::info!(proxy_client_id = registered.proxy_client_id, keep_alive = ?registered.keep_alive, "registered");
        // The status first: a program told of an event finds the status it describes.
        self.status
            .send_replace(Status::Registered(registered.clone()));
        self.emit(Event::Registered(registered.clone()));
        let ended = self.serve(&mut conn, &registered).await;
        // Whatever was acknowledged on this connection must be registered again.
        for l in self.logical.values_mut() {
            l.proxy_client_id = None;
        }
        match ended {
            Ended::Lost { reason, .. } => Ended::Lost {
                reason,
                registered: true,
            },
            stopped => stopped,
        }
    }

    /// What a refused registration does.
    fn refused(&self, code: i32) -> Ended {
        let lost = |reason| Ended::Lost {
            reason,
            registered: false,
        };
        let Some(c) = ErrorCode::from_i32(code) else {
            return Ended::Stopped(Stop::Refused(Err(code)));
        };
        let policy = match c {
            ErrorCode::ServerShuttingDown => return lost(Lost::Draining),
            ErrorCode::ServerOverloaded | ErrorCode::FleetUnavailable => RefusalPolicy::Retry,
            ErrorCode::DuplicateClient => self.config.on_duplicate,
            ErrorCode::AddressTemporarilyRefused => self.config.on_banned,
            _ => RefusalPolicy::Stop,
        };
        match policy {
            RefusalPolicy::Retry => lost(Lost::Refused(c)),
            RefusalPolicy::Stop => Ended::Stopped(Stop::Refused(Ok(c))),
        }
    }

    /// A registered connection: logical clients replayed, then commands, keepalives and
    /// answers until it ends.
    async fn serve(&mut self, conn: &mut Conn, registered: &Registered) -> Ended {
        let lost = |reason| Ended::Lost {
            reason,
            registered: true,
        };
        let mut pending: HashMap<i32, Pending> = HashMap::new();
        let ids: Vec<LogicalId> = self.logical.keys().copied().collect();
        for id in ids {
            let rid = conn.rid();
            if let Err(e) = conn
                .register(rid, &self.logical[&id].registration, false)
                .await
            {
                return lost(Lost::Io(e.to_string()));
            }
            pending.insert(rid, Pending::Logical(id));
        }
        // A RequestKeepAlive every k / 2, its answer awaited at most k / 2: a server that
        // stops answering is noticed within k.
        let keep_alive = registered.keep_alive.map(|k| {
            let every = k / 2;
            (every, every.min(self.config.answer_timeout))
        });
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut next_ping = keep_alive.map_or(far, |(every, _)| Instant::now() + every);
        let mut ping_due: Option<Instant> = None;
        loop {
            tokio::select! {
                a = conn.answer() => {
                    let a = match a {
                        Err(e) => return lost(Lost::Io(e.to_string())),
                        Ok(None) => {
                            if pending.values().any(|p| matches!(p, Pending::Close)) {
                                return Ended::Stopped(Stop::Closed);
                            }
                            return lost(Lost::Closed);
                        }
                        Ok(Some(a)) => a,
                    };
                    if let Some(ended) = self.answered(a, &mut pending, &mut ping_due) {
                        return ended;
                    }
                }
                c = self.commands.recv() => {
                    let rid = conn.rid();
                    let sent = match c {
                        None => {
                            pending.insert(rid, Pending::Close);
                            conn.unregister(rid, None).await
                        }
                        Some(Command::Close { reply }) => {
                            let _ = reply.send(());
                            pending.insert(rid, Pending::Close);
                            conn.unregister(rid, None).await
                        }
                        Some(Command::RegisterLogical { id, registration, reply }) => {
                            let r = conn.register(rid, &registration, false).await;
                            self.logical.insert(id, Logical { registration, proxy_client_id: None, reply: Some(reply) });
                            pending.insert(rid, Pending::Logical(id));
                            r
                        }
                        Some(Command::UnregisterLogical { id, reply }) => {
                            match self.logical.remove(&id) {
                                Some(Logical { proxy_client_id: Some(pid), .. }) => {
                                    pending.insert(rid, Pending::Unregister(reply));
                                    conn.unregister(rid, Some(pid)).await
                                }
                                // Not acknowledged yet: its answer finds it gone.
                                Some(_) => {
                                    let _ = reply.send(Ok(()));
                                    Ok(())
                                }
                                None => {
                                    let _ = reply.send(Err(Error::UnknownLogical));
                                    Ok(())
                                }
                            }
                        }
                    };
                    if let Err(e) = sent {
                        return lost(Lost::Io(e.to_string()));
                    }
                    if pending.values().any(|p| matches!(p, Pending::Close)) {
                        let _ = conn.shutdown().await;
                        return self.closing(conn).await;
                    }
                }
                _ = tokio::time::sleep_until(next_ping), if ping_due.is_none() && keep_alive.is_some() => {
                    let (every, wait) = keep_alive.unwrap_or_default();
                    let rid = conn.rid();
                    if let Err(e) = conn.keep_alive(rid).await {
                        return lost(Lost::Io(e.to_string()));
                    }
                    pending.insert(rid, Pending::KeepAlive);
                    let now = Instant::now();
                    ping_due = Some(now + wait);
                    next_ping = now + every;
                }
                _ = tokio::time::sleep_until(ping_due.unwrap_or(far)), if ping_due.is_some() => {
                    return lost(Lost::ServerSilent);
                }
            }
        }
    }

    /// After RequestUnregisterClient: the server's EventAck and end of stream (bounded by
    /// the answer timeout), then stopped.
    async fn closing(&mut self, conn: &mut Conn) -> Ended {
        let _ = tokio::time::timeout(self.config.answer_timeout, async {
            while let Ok(Some(_)) = conn.answer().await {}
        })
        .await;
        Ended::Stopped(Stop::Closed)
    }

    /// One answer on a registered connection; `Some` when it ends the connection.
    fn answered(
        &mut self,
        a: Answer,
        pending: &mut HashMap<i32, Pending>,
        ping_due: &mut Option<Instant>,
    ) -> Option<Ended> {
        let lost = |reason| {
            Some(Ended::Lost {
                reason,
                registered: true,
            })
        };
        let (rid, code) = match a {
            Answer::Ack { rid, .. } => (rid, None),
            Answer::Error { rid, code } => (rid, Some(code)),
        };
        if rid == 0 {
            // Told from the server's side: a drain, a kick, an expired keepalive.
            return match code.and_then(ErrorCode::from_i32) {
                Some(ErrorCode::ServerShuttingDown) => lost(Lost::Draining),
                Some(ErrorCode::ClientDisconnected) => Some(Ended::Stopped(Stop::Kicked)),
                Some(ErrorCode::KeepAliveExpired) => lost(Lost::KeepAliveExpired),
                Some(c) => lost(Lost::Refused(c)),
                None => lost(Lost::Io(format!("EventError {code:?}"))),
            };
        }
        match pending.remove(&rid) {
            Some(Pending::KeepAlive) => *ping_due = None,
            Some(Pending::Logical(id)) => {
                let l = self.logical.get_mut(&id)?;
                match a {
                    Answer::Ack {
                        proxy_client_id: Some(pid),
                        ..
                    } => {
                        l.proxy_client_id = Some(pid);
                        if let Some(r) = l.reply.take() {
                            let _ = r.send(Ok(pid));
                        }
                        self.emit(Event::LogicalRegistered {
                            logical: id,
                            proxy_client_id: pid,
                        });
                    }
                    _ => {
                        let code = code.unwrap_or(0);
                        let known = ErrorCode::from_i32(code).ok_or(code);
                        if let Some(l) = self.logical.remove(&id) {
                            if let Some(r) = l.reply {
                                let _ = r.send(Err(match known {
                                    Ok(c) => Error::Refused(c),
                                    Err(raw) => Error::Protocol(format!("EventError {raw}")),
                                }));
                            }
                        }
                        self.emit(Event::LogicalRefused {
                            logical: id,
                            code: known,
                        });
                    }
                }
            }
            Some(Pending::Unregister(reply)) => {
                let _ = reply.send(match code.map(ErrorCode::from_i32) {
                    None => Ok(()),
                    Some(Some(c)) => Err(Error::Refused(c)),
                    Some(None) => Err(Error::Protocol(format!("EventError {code:?}"))),
                });
            }
            Some(Pending::Close) => return Some(Ended::Stopped(Stop::Closed)),
            None => {}
        }
        None
    }
}
