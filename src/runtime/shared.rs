//! What every worker and the control thread share: settings, the registry in force, the
//! connection count and its bound, admission control, the name table, the admin API's
//! inboxes and the TLS config; and admission at accept, asked by both backends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use ixn_proto::tls::ListenerKind;

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
    pub(super) tls_files: std::sync::Mutex<Option<Vec<u8>>>,
    /// Connection rate, per-address caps and bans (docs/PROTOCOL.md §11).
    pub admission: Arc<crate::admission::Admission>,
    /// A second SIGTERM: finish the lame-duck spread at once.
    pub hurry: std::sync::atomic::AtomicBool,
    /// ClientNames held under `on_duplicate` reject or replace, across workers.
    pub names: crate::names::NameTable,
    /// The admin API's (and the name table's) commands to each worker.
    pub inboxes: Arc<crate::control::Inboxes>,
    /// The start, on both clocks: admin ids count from it, and wall times derive from it.
    pub origin: (Instant, std::time::SystemTime),
    /// The fleet (docs/PROTOCOL.md §13), with `--fleet-redis`.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// A live upgrade is under way (one at a time).
    pub upgrading: std::sync::atomic::AtomicBool,
    /// Duplicates of the metrics and admin listeners, handed to a live upgrade's new
    /// process.
    pub http_fds: std::sync::Mutex<[Option<std::os::fd::OwnedFd>; 2]>,
    /// Connections a live upgrade handed to this (new) process, per worker: each worker
    /// adopts its own before it accepts.
    pub adopt_queue: std::sync::Mutex<Vec<Vec<crate::control::Handed>>>,
}

/// Shards of the name table: enough that two workers registering at once rarely meet.
pub(super) const NAME_SHARDS: usize = 64;

impl Shared {
    /// Shared state for `config`, with `registry` in force and nothing running yet.
    pub fn new(config: Config, registry: Registry, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let now = Instant::now();
        let inboxes = Arc::new(crate::control::Inboxes::new(config.workers));
        let posts = inboxes.clone();
        let tls_files = tls.as_ref().and_then(|_| config.tls.file_bytes());
        let fleet = config
            .fleet
            .clone()
            .map(|f| Arc::new(crate::fleet::Fleet::new(f, config.workers)));
        Self {
            health: Arc::new(Health::new(config.workers, config.metrics_max_connections)),
            max_clients: AtomicUsize::new(config.max_connections),
            admission: Arc::new(crate::admission::Admission::new(config.admission, now)),
            config,
            registry: ArcSwap::from_pointee(registry),
            active: AtomicUsize::new(0),
            tls_files: std::sync::Mutex::new(tls_files),
            tls: ArcSwapOption::new(tls),
            hurry: std::sync::atomic::AtomicBool::new(false),
            names: crate::names::NameTable::new(NAME_SHARDS, move |h| posts.replaced(h.conn))
                .with_fleet(fleet.clone()),
            inboxes,
            origin: (now, std::time::SystemTime::now()),
            fleet,
            upgrading: false.into(),
            http_fds: Default::default(),
            adopt_queue: Default::default(),
        }
    }

    /// What the admin API is given of the server.
    pub fn admin_context(&self) -> crate::admin::Context {
        crate::admin::Context {
            workers: self.config.workers,
            inboxes: self.inboxes.clone(),
            admission: self.admission.clone(),
            origin: self.origin,
            fleet: self.fleet.clone(),
            upgrade: None,
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
    /// Over the connection rate in `pace` mode: held, and offered again once the next
    /// second begins (docs/PROTOCOL.md §11); nothing is written to it.
    Paced,
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
        let paces = self.admission.paces();
        if !proxy {
            match self.admission.check(peer.ip(), now) {
                Err(crate::admission::Refusal::Rate) if paces => return Admission::Paced,
                Err(r) => return Admission::Refused(r),
                Ok(()) => counted = true,
            }
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
            // Paced at accept: the rate counts connections, whoever the header names.
            if paces && !self.admission.take_rate(now) {
                return Admission::Paced;
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
        let rate = !self.admission.paces();
        self.admission.check_counting(ip, now, rate).map_err(|r| {
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
                if let Some(fleet) = self.fleet.as_ref().filter(|f| f.config.bans) {
                    fleet.post(crate::fleet::Op::Ban {
                        address: ban.address,
                        remaining: ban.until.saturating_duration_since(now),
                        failures: ban.failures,
                    });
                }
            }
        }
    }
}
