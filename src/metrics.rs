//! Prometheus metrics: names, descriptions, buckets, and per-worker cached handles batched per tick.
//!
//! Hot-path cost: each worker resolves every metric handle once at start-up and counts
//! events in plain `Cell`s of its own; once per timer tick it adds the batch to the shared
//! handles. So an event costs an increment of a worker-local integer, with no name lookup,
//! no allocation and no cache line shared with another worker.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

use crate::admission::Refusal;
use crate::protocol::ErrorCode;
use crate::session::{Answer, CloseReason, Output, Timer};
use ixn_proto::tls::{Handshake, HandshakeResult, ListenerKind};

/// `ixn_connections_accepted_total{listener}`
pub const ACCEPTED: &str = "ixn_connections_accepted_total";
/// `ixn_connections_refused_total{reason}`: refused by admission control or the limit.
pub const REFUSED: &str = "ixn_connections_refused_total";
/// `ixn_drain_remaining`: registered connections the lame-duck drain has yet to tell.
pub const DRAIN_REMAINING: &str = "ixn_drain_remaining";
/// `ixn_bans_active`: addresses banned now.
pub const BANS_ACTIVE: &str = "ixn_bans_active";
/// `ixn_admin_requests_total{action}`: admin API requests (docs/PROTOCOL.md §10).
pub const ADMIN_REQUESTS: &str = "ixn_admin_requests_total";
/// `ixn_engine_info{engine}`: 1 for the engine running (`io_uring_v2`,
/// `epoll`).
pub const ENGINE_INFO: &str = "ixn_engine_info";
/// `ixn_names_held`: ClientNames held under `on_duplicate` reject or replace.
pub const NAMES_HELD: &str = "ixn_names_held";
/// `ixn_tls_handshakes_total{result}`
pub const TLS_HANDSHAKES: &str = "ixn_tls_handshakes_total";
/// `ixn_tls_handshake_duration_seconds`: from TCP accept to the handshake's end.
pub const TLS_HANDSHAKE_DURATION: &str = "ixn_tls_handshake_duration_seconds";
/// `ixn_connections_active`
pub const ACTIVE: &str = "ixn_connections_active";
/// `ixn_connections_closed_total{reason}`
pub const CLOSED: &str = "ixn_connections_closed_total";
/// `ixn_registrations_total{result}`
pub const REGISTRATIONS: &str = "ixn_registrations_total";
/// `ixn_errors_sent_total{code,name}`
pub const ERRORS_SENT: &str = "ixn_errors_sent_total";
/// `ixn_registration_duration_seconds`
pub const REGISTRATION_DURATION: &str = "ixn_registration_duration_seconds";
/// `ixn_timer_expired_total{timer}`
pub const TIMER_EXPIRED: &str = "ixn_timer_expired_total";
/// `ixn_timer_bulk_drop_connections`: connections one tick closed together.
pub const BULK_DROP: &str = "ixn_timer_bulk_drop_connections";
/// `ixn_connections_paced_total`: connections held over the rate in `pace` mode
/// (docs/PROTOCOL.md §11).
pub const PACED: &str = "ixn_connections_paced_total";
/// `ixn_keepalives_total`: RequestKeepAlive answered (docs/PROTOCOL.md §12).
pub const KEEPALIVES: &str = "ixn_keepalives_total";
/// `ixn_received_bytes_total`
pub const BYTES_IN: &str = "ixn_received_bytes_total";
/// `ixn_sent_bytes_total`
pub const BYTES_OUT: &str = "ixn_sent_bytes_total";
/// `ixn_accept_errors_total`
pub const ACCEPT_ERRORS: &str = "ixn_accept_errors_total";
/// `ixn_receive_buffers_exhausted_total`: engine v2 receives that found every provided
/// buffer in use (`ENOBUFS`) and were armed again.
pub const RECV_NO_BUFFERS: &str = "ixn_receive_buffers_exhausted_total";
/// `ixn_clients_registered`: registered connections (a Proxy counts once).
pub const REGISTERED: &str = "ixn_clients_registered";
/// `ixn_logical_clients_registered`: logical clients of Proxy connections.
pub const LOGICAL: &str = "ixn_logical_clients_registered";
/// `ixn_build_info{version}`
pub const BUILD_INFO: &str = "ixn_build_info";
/// `ixn_registry_clients`: ClientNames in the registry in force.
pub const REGISTRY_CLIENTS: &str = "ixn_registry_clients";
/// `ixn_registry_loaded_timestamp_seconds`: when the registry in force was read (Unix
/// time), at start or by the last successful reload.
pub const REGISTRY_LOADED: &str = "ixn_registry_loaded_timestamp_seconds";
/// `ixn_upgrade_connections_total{result}`: connections in live upgrades (docs/OPERATIONS.md
/// 7e): `handed` by this process to a new one, `adopted` from an old one, `kept` by this
/// process to drain (TLS, not at rest in time), `taken_back` after a failed upgrade.
pub const UPGRADE_CONNECTIONS: &str = "ixn_upgrade_connections_total";
/// `ixn_upgrades_total{result}`: live upgrades, by how they ended: `done` (counted by the
/// new process at its commit), `failed` (started, and every connection kept by this
/// process), `refused` (could not start: one under way, draining, a fleet).
pub const UPGRADES: &str = "ixn_upgrades_total";

ixn_proto::label_enum! {
    /// What became of connections in a live upgrade: the label of
    /// `ixn_upgrade_connections_total{result}`.
    pub enum UpgradeConns {
        /// Handed by this process to a new one.
        Handed => "handed",
        /// Adopted from an old process.
        Adopted => "adopted",
        /// Kept by the old process to drain (TLS, not at rest in time); reported by the new.
        Kept => "kept",
        /// Handed, then taken back when the upgrade failed.
        TakenBack => "taken_back",
    }
}

ixn_proto::label_enum! {
    /// How a live upgrade ended: the label of `ixn_upgrades_total{result}`.
    pub enum UpgradeEnd {
        /// Committed (counted by the new process).
        Done => "done",
        /// Started and failed; the old process kept every connection.
        Failed => "failed",
        /// Could not start now.
        Refused => "refused",
    }
}
/// `ixn_upgrade_duration_seconds`: the last live upgrade's handover, from the signal to the
/// commit (the old process lets go); reported by both processes, so the new one, which
/// stays, has it.
pub const UPGRADE_DURATION: &str = "ixn_upgrade_duration_seconds";
/// `ixn_workers`: the server's worker threads.
pub const WORKERS: &str = "ixn_workers";
/// `ixn_registry_reloads_total{result}`
pub const REGISTRY_RELOADS: &str = "ixn_registry_reloads_total";

/// `ixn_fleet_up`: 1 while the fleet's Redis answers (docs/PROTOCOL.md §13).
pub const FLEET_UP: &str = "ixn_fleet_up";
/// `ixn_fleet_requests_total{op,result}`: operations on the fleet's Redis.
pub const FLEET_REQUESTS: &str = "ixn_fleet_requests_total";
/// `ixn_fleet_request_duration_seconds`: each operation's time, Redis round trips included.
pub const FLEET_REQUEST_DURATION: &str = "ixn_fleet_request_duration_seconds";
/// `ixn_fleet_names_held`: ClientNames this server holds in the fleet.
pub const FLEET_NAMES_HELD: &str = "ixn_fleet_names_held";
/// `ixn_fleet_conflicts_total`: names found held on two servers after an outage.
pub const FLEET_CONFLICTS: &str = "ixn_fleet_conflicts_total";

/// Buckets of the registration histogram: 50 µs to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Buckets of the bulk-drop histogram (connections per tick).
pub const BULK_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0];

/// Registration results, in label order: "ok" then each error name.
const RESULTS: usize = 1 + ErrorCode::ALL.len();

/// Describes every metric so it carries HELP and TYPE from the first scrape.
pub fn describe() {
    describe_counter!(
        ACCEPTED,
        "Client connections accepted, by listener kind (plain, tls, proxy, proxy_tls)."
    );
    describe_counter!(
        REFUSED,
        "Connections refused at accept, by reason (banned, rate, per_ip, limit)."
    );
    describe_gauge!(BANS_ACTIVE, "Addresses banned now (docs/PROTOCOL.md §11).");
    describe_gauge!(
        DRAIN_REMAINING,
        "Registered connections the drain has not yet sent ServerShuttingDown."
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes ended, by result (full, resumed, failed)."
    );
    describe_histogram!(
        TLS_HANDSHAKE_DURATION,
        Unit::Seconds,
        "From TCP accept to the end of the TLS handshake."
    );
    describe_gauge!(ACTIVE, "Client connections open now.");
    describe_counter!(CLOSED, "Client connections closed, by reason.");
    describe_counter!(
        REGISTRATIONS,
        "RequestRegisterClient frames answered, by result (ok or the error name)."
    );
    describe_counter!(ERRORS_SENT, "EventError messages written, by code.");
    describe_histogram!(
        REGISTRATION_DURATION,
        Unit::Seconds,
        "From accept to the EventAck written, for connections that registered."
    );
    describe_counter!(
        TIMER_EXPIRED,
        "Timer wheel deadlines that closed a connection, by timer."
    );
    describe_histogram!(BULK_DROP, "Connections one timer tick closed together.");
    describe_counter!(
        PACED,
        "Connections over --max-connection-rate held until the next second (pace mode)."
    );
    describe_counter!(
        KEEPALIVES,
        "RequestKeepAlive messages answered (docs/PROTOCOL.md §12)."
    );
    describe_counter!(BYTES_IN, Unit::Bytes, "Bytes read from clients.");
    describe_counter!(BYTES_OUT, Unit::Bytes, "Bytes written to clients.");
    describe_counter!(ACCEPT_ERRORS, "accept() failures (e.g. EMFILE).");
    describe_counter!(
        RECV_NO_BUFFERS,
        "Receives (engine v2) that found every provided buffer in use and were armed again."
    );
    describe_gauge!(REGISTERED, "Registered client connections.");
    describe_gauge!(
        LOGICAL,
        "Logical clients registered through Proxy connections."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
    describe_gauge!(REGISTRY_CLIENTS, "ClientNames in the registry in force.");
    describe_gauge!(
        REGISTRY_LOADED,
        Unit::Seconds,
        "When the registry in force was read (Unix time): at start or by the last reload."
    );
    describe_gauge!(WORKERS, "Worker threads.");
    describe_counter!(
        UPGRADE_CONNECTIONS,
        "Connections in live upgrades, by result (handed, adopted, kept, taken_back)."
    );
    describe_counter!(
        UPGRADES,
        "Live upgrades, by how they ended (done, failed, refused)."
    );
    describe_gauge!(
        UPGRADE_DURATION,
        Unit::Seconds,
        "The last live upgrade's handover, from the signal to the commit (the old process lets go)."
    );
    describe_counter!(REGISTRY_RELOADS, "Registry reloads on SIGHUP, by result.");
    describe_counter!(
        ADMIN_REQUESTS,
        "Admin API requests, by action (list_clients, kick, list_bans, lift_ban, unauthorized, other)."
    );
    describe_gauge!(
        ENGINE_INFO,
        "1 for the engine driving the client sockets (io_uring_v2, epoll)."
    );
    describe_gauge!(
        NAMES_HELD,
        "ClientNames held under on_duplicate reject or replace (docs/PROTOCOL.md §7)."
    );
    describe_gauge!(
        FLEET_UP,
        "1 while the fleet's Redis answers, 0 otherwise (docs/PROTOCOL.md §13)."
    );
    describe_counter!(
        FLEET_REQUESTS,
        "Operations on the fleet's Redis, by op and result (ok, error, timeout, unavailable)."
    );
    describe_histogram!(
        FLEET_REQUEST_DURATION,
        Unit::Seconds,
        "Time of each operation on the fleet's Redis."
    );
    describe_gauge!(
        FLEET_NAMES_HELD,
        "ClientNames this server holds in the fleet."
    );
    describe_counter!(
        FLEET_CONFLICTS,
        "Names found held on two servers after an outage (on_duplicate reject keeps both)."
    );
    for a in crate::control::Action::ALL {
        let _ = counter!(ADMIN_REQUESTS, "action" => a.name());
    }
    // At zero from the start, so that an alert on a failed upgrade sees its first one.
    for e in UpgradeEnd::ALL {
        let _ = counter!(UPGRADES, "result" => e.name());
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let _ = counter!(REGISTRY_RELOADS, "result" => "ok");
    let _ = counter!(REGISTRY_RELOADS, "result" => "error");
}

/// Counts `n` connections of a live upgrade under `result` (rare: no batching).
pub fn upgrade_connections(result: UpgradeConns, n: usize) {
    if n > 0 {
        counter!(UPGRADE_CONNECTIONS, "result" => result.name()).increment(n as u64);
    }
}

/// A live upgrade ended so.
pub fn upgrade_ended(end: UpgradeEnd) {
    counter!(UPGRADES, "result" => end.name()).increment(1);
}

/// The registry in force was read now.
pub fn registry_loaded(clients: usize) {
    gauge!(REGISTRY_CLIENTS).set(clients as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(REGISTRY_LOADED).set(now.as_secs_f64());
}

fn result_index(r: Result<(), ErrorCode>) -> usize {
    match r {
        Ok(()) => 0,
        Err(c) => 1 + c.index(),
    }
}

/// A counter counted locally and added to its shared handle at each flush.
#[derive(Debug)]
struct Local {
    pending: Cell<u64>,
    handle: Counter,
}

impl Local {
    fn new(handle: Counter) -> Self {
        Self {
            pending: Cell::new(0),
            handle,
        }
    }
    #[inline]
    fn add(&self, n: u64) {
        self.pending.set(self.pending.get() + n);
    }
    fn flush(&self) {
        let n = self.pending.replace(0);
        if n != 0 {
            self.handle.increment(n);
        }
    }
}

/// A gauge moved locally and applied as one delta at each flush.
#[derive(Debug)]
struct LocalGauge {
    delta: Cell<i64>,
    handle: Gauge,
}

impl LocalGauge {
    fn new(handle: Gauge) -> Self {
        Self {
            delta: Cell::new(0),
            handle,
        }
    }
    #[inline]
    fn add(&self, n: i64) {
        self.delta.set(self.delta.get() + n);
    }
    fn flush(&self) {
        let d = self.delta.replace(0);
        if d != 0 {
            self.handle.increment(d as f64);
        }
    }
}

/// One worker's metric handles and its unflushed counts.
#[derive(Debug)]
pub struct WorkerMetrics {
    accepted: Vec<Local>,
    refused: Vec<Local>,
    handshakes: Vec<Local>,
    handshake_duration: Histogram,
    bans: Gauge,
    names_held: Gauge,
    drain_remaining: LocalGauge,
    active: LocalGauge,
    registered: LocalGauge,
    logical: LocalGauge,
    closed: Vec<Local>,
    registrations: Vec<Local>,
    errors_sent: Vec<Local>,
    timers: Vec<Local>,
    keep_alives: Local,
    paced: Local,
    bytes_in: Local,
    bytes_out: Local,
    accept_errors: Local,
    recv_no_buffers: Local,
    durations: RefCell<Vec<f64>>,
    duration: Histogram,
    bulk: Histogram,
}

impl WorkerMetrics {
    /// Resolves every handle once; all series exist (at zero) from here on.
    pub fn new() -> Self {
        let closed = CloseReason::ALL
            .iter()
            .map(|r| Local::new(counter!(CLOSED, "reason" => r.name())))
            .collect();
        let mut registrations = vec![Local::new(counter!(REGISTRATIONS, "result" => "ok"))];
        registrations.extend(
            ErrorCode::ALL
                .iter()
                .map(|c| Local::new(counter!(REGISTRATIONS, "result" => c.name()))),
        );
        debug_assert_eq!(registrations.len(), RESULTS);
        let errors_sent = ErrorCode::ALL
            .iter()
            .map(|c| {
                Local::new(
                    counter!(ERRORS_SENT, "code" => c.code().to_string(), "name" => c.name()),
                )
            })
            .collect();
        let timers = Timer::ALL
            .iter()
            .map(|t| Local::new(counter!(TIMER_EXPIRED, "timer" => t.name())))
            .collect();
        Self {
            accepted: ListenerKind::ALL
                .iter()
                .map(|k| Local::new(counter!(ACCEPTED, "listener" => k.name())))
                .collect(),
            refused: Refusal::ALL
                .iter()
                .map(|r| Local::new(counter!(REFUSED, "reason" => r.name())))
                .collect(),
            handshakes: HandshakeResult::ALL
                .iter()
                .map(|r| Local::new(counter!(TLS_HANDSHAKES, "result" => r.name())))
                .collect(),
            handshake_duration: histogram!(TLS_HANDSHAKE_DURATION),
            bans: gauge!(BANS_ACTIVE),
            names_held: gauge!(NAMES_HELD),
            drain_remaining: LocalGauge::new(gauge!(DRAIN_REMAINING)),
            active: LocalGauge::new(gauge!(ACTIVE)),
            registered: LocalGauge::new(gauge!(REGISTERED)),
            logical: LocalGauge::new(gauge!(LOGICAL)),
            closed,
            registrations,
            errors_sent,
            timers,
            keep_alives: Local::new(counter!(KEEPALIVES)),
            paced: Local::new(counter!(PACED)),
            bytes_in: Local::new(counter!(BYTES_IN)),
            bytes_out: Local::new(counter!(BYTES_OUT)),
            accept_errors: Local::new(counter!(ACCEPT_ERRORS)),
            recv_no_buffers: Local::new(counter!(RECV_NO_BUFFERS)),
            durations: RefCell::new(Vec::with_capacity(1024)),
            duration: histogram!(REGISTRATION_DURATION),
            bulk: histogram!(BULK_DROP),
        }
    }

    /// A connection was accepted (and counts as active until [`Self::closed`]).
    #[inline]
    pub fn accepted(&self, kind: ListenerKind) {
        self.accepted[kind.index()].add(1);
        self.active.add(1);
    }

    /// A TLS handshake ended.
    pub fn handshake(&self, h: Handshake) {
        self.handshakes[h.result.index()].add(1);
        self.handshake_duration.record(h.duration.as_secs_f64());
    }

    /// A connection closed.
    #[inline]
    pub fn closed(&self, why: CloseReason, was_registered: bool, logical: usize) {
        self.active.add(-1);
        if was_registered {
            self.registered.add(-1);
        }
        self.logical.add(-(logical as i64));
        self.closed[why.index()].add(1);
    }

    /// A peer refused on a PROXY listener because it is not a trusted balancer (never in
    /// `active`).
    pub fn refused_untrusted(&self, kind: ListenerKind) {
        self.accepted[kind.index()].add(1);
        self.closed[CloseReason::ProxyProtocol.index()].add(1);
    }

    /// A connection refused at accept (counted as accepted and closed, never active);
    /// `answered` when its EventError was written (not on TLS listeners).
    pub fn refused(&self, kind: ListenerKind, r: Refusal, answered: bool) {
        self.accepted[kind.index()].add(1);
        self.closed[r.close_reason().index()].add(1);
        self.refused_by(r);
        if answered {
            self.errors_sent[r.code().index()].add(1);
        }
    }

    /// A connection held over the rate (`pace` mode), counted once.
    pub fn paced(&self) {
        self.paced.add(1);
    }

    /// A refusal by reason (the connection itself is counted where it closes).
    pub fn refused_by(&self, r: Refusal) {
        self.refused[r.index()].add(1);
    }
    /// Connections this worker handed to a new process.
    pub fn handed_over(&self, n: usize) {
        upgrade_connections(UpgradeConns::Handed, n);
    }
    /// Connections this worker adopted from an old process.
    pub fn adopted(&self, n: usize) {
        upgrade_connections(UpgradeConns::Adopted, n);
    }
    /// SYNs of banned addresses the listeners' filters dropped.
    pub fn syns_dropped(&self, n: u64) {
        self.refused[Refusal::BannedSyn.index()].add(n);
    }

    /// The drain's queue of registered connections grew (positive) or was told (negative).
    pub fn drain_remaining(&self, delta: i64) {
        self.drain_remaining.add(delta);
    }

    /// Addresses banned now (any worker may publish it: it is process-wide).
    pub fn bans_active(&self, n: usize) {
        self.bans.set(n as f64);
    }

    /// Names held under `on_duplicate` reject or replace, process-wide (set at a tick).
    pub fn names_held(&self, n: usize) {
        self.names_held.set(n as f64);
    }

    /// One session output.
    #[inline]
    pub fn output(&self, o: &Output) {
        if let Some(Answer::Error(c)) = o.answer {
            self.errors_sent[c.index()].add(1);
        }
        if o.keep_alive {
            self.keep_alives.add(1);
        }
        if let Some(r) = o.registration {
            self.registrations[result_index(r.map(|_| ()))].add(1);
            if let Ok(reg) = r {
                if !reg.logical {
                    self.registered.add(1);
                }
            }
        }
    }

    /// Logical clients added (or removed, negative) on a Proxy connection.
    #[inline]
    pub fn logical_delta(&self, d: i64) {
        self.logical.add(d);
    }

    /// A registration completed: accept to EventAck written.
    pub fn registration_duration(&self, d: Duration) {
        let mut v = self.durations.borrow_mut();
        if v.len() < 65_536 {
            v.push(d.as_secs_f64());
        }
    }

    /// Deadlines that expired on one tick, by timer; and the tick's bulk size.
    pub fn expired(&self, timer: Timer, n: u64) {
        self.timers[timer.index()].add(n);
    }

    /// What one tick's deadlines did, counted by timer: the expiry counters and the bulk-drop
    /// histogram (lingers ending are not drops: those connections were already closing).
    pub fn tick_expired(&self, counts: &[u64; Timer::ALL.len()]) {
        for t in Timer::ALL {
            self.expired(t, counts[t.index()]);
        }
        let dropped: u64 = counts.iter().sum::<u64>() - counts[Timer::CloseLinger.index()];
        self.bulk_drop(dropped as usize);
    }

    /// Connections one tick closed together.
    pub fn bulk_drop(&self, n: usize) {
        if n > 0 {
            self.bulk.record(n as f64);
        }
    }

    /// Bytes read.
    #[inline]
    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.add(n as u64);
    }

    /// Bytes written.
    #[inline]
    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.add(n as u64);
    }

    /// An accept failure.
    pub fn accept_error(&self) {
        self.accept_errors.add(1);
    }

    /// A receive that found no provided buffer free (`ENOBUFS`).
    pub fn recv_no_buffers(&self) {
        self.recv_no_buffers.add(1);
    }

    /// Adds everything counted since the last flush to the shared series.
    pub fn flush(&self) {
        for a in &self.accepted {
            a.flush();
        }
        for h in &self.handshakes {
            h.flush();
        }
        for r in &self.refused {
            r.flush();
        }
        self.drain_remaining.flush();
        self.active.flush();
        self.registered.flush();
        self.logical.flush();
        for c in self
            .closed
            .iter()
            .chain(&self.registrations)
            .chain(&self.errors_sent)
            .chain(&self.timers)
        {
            c.flush();
        }
        self.keep_alives.flush();
        self.paced.flush();
        self.bytes_in.flush();
        self.bytes_out.flush();
        self.accept_errors.flush();
        self.recv_no_buffers.flush();
        for d in self.durations.borrow_mut().drain(..) {
            self.duration.record(d);
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
