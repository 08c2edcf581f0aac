//! A connection's life on a worker, from accept to the last close, written once for both
//! backends (io_uring, `uring.rs`; epoll, `epoll.rs`): admission at accept, opening the
//! sans-IO [`Connection`], feeding it bytes, carrying out its [`Progress`] (answers,
//! timers, close once written, the FIN and the linger), the write-stall deadline, the
//! drain and its lame-duck slices, kicks and replaced names, the tick's expiries, metrics,
//! and the close's accounting (per-address counts, ProxyClientIds, names).
//!
//! Over 600 lines on purpose: this file is the one place where what happens at an accept,
//! a close, a kick or a deadline is written, for both backends.
//!
//! A backend only moves bytes ([`Backend`]): it sends inline what the socket takes now,
//! holds the rest until the socket takes it, shuts down, closes, and watches for input.
//! Its event loop feeds what happened into [`Core`] ([`Core::accepted`], [`Core::feed`]
//! then [`Core::carry_out`], [`Core::eof`], [`Core::sent`], [`Core::released`],
//! [`Core::tick`]) and waits until the next tick. Calls are generic over the backend:
//! no dynamic dispatch on the hot path.
//!
//! # Answers
//!
//! Answers are encoded into one scratch buffer per worker and offered to the socket at
//! once; what it does not take moves to the connection's `out`, which the backend sends
//! from (and which stays untouched while it does: io_uring's send points into it). Answers
//! produced meanwhile wait in the worker's `later` map (kept out of the slot: only a
//! client that pipelines without reading has any, and an idle slot stays small). While `out` is being sent the connection is not
//! read: a peer that does not read stops being read from, and the write-stall deadline
//! runs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ixn_proto::connection::{Action, ConnConfig, Connection, Env, Notice, Progress, TimerChange};
use ixn_proto::names::ConnKey;
use ixn_proto::tls::ListenerKind;
use slab::Slab;

#[path = "handover.rs"]
mod handover;

use super::drain::Drain;
use super::shared::{Admission, Shared};
use crate::control::Command;
use crate::metrics::WorkerMetrics;
use crate::session::{deadline, CloseReason, IdAllocator, Timer};
use crate::slot_wheel::SlotWheel;
use crate::timer_wheel::{TimerKey, TimerWheel};

/// Refusals lingering at once per worker (closed once their EventError is written):
/// beyond these, a refusal is sent and its socket closed at once, so a storm of refused
/// connections cannot hold descriptors clients need.
pub(super) const REFUSALS_LINGERING_MAX: usize = 16;

/// Slots of each worker's timer wheel.
const WHEEL_SLOTS: usize = 4096;

/// Input kept behind a registration that waits for the fleet's verdict (docs/PROTOCOL.md
/// §13) before the connection stops being read: a client that pipelines while it waits
/// pins at most this much (plus one receive).
const AWAITING_INPUT_MAX: usize = 64 * 1024;

/// A worker hands the fleet thread its claims and releases at most this often. Each
/// hand-over wakes that thread and becomes one pipeline to Redis: a send whose loopback or
/// network work, plus the wake-up its answer brings, costs about 15 µs of server CPU
/// however many registrations it carries. Under load, the turns of this span share one
/// hand-over; the first after a quiet spell goes at once, so no latency is added at low
/// load. Measured in docs/BENCHMARKS.md ("Fleet"): the fleet thread spends 4.5-5.0 µs per
/// registration at 250 µs and 3.2-3.5 µs at 1 ms. The registration p99 stays within
/// 1.0-1.2× of a server without a fleet either way.
const FLEET_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(1);
/// ... or as soon as this many wait.
const FLEET_FLUSH_BATCH: usize = 64;

/// A connection's place: its slab slot and the generation it was inserted with (a slot is
/// reused; the generation tells a late event for its former tenant apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotKey {
    pub slot: usize,
    pub generation: u32,
}

/// What a backend does with sockets. Everything else is [`Core`]'s.
pub(super) trait Backend {
    /// A connection's socket as this backend holds it.
    type Io;

    /// Starts watching a new connection for input; an error closes it at once.
    fn open(&mut self, key: SlotKey, io: &mut Self::Io) -> std::io::Result<()>;
    /// Sends what the socket takes of `buf` now, without waiting (0 if nothing).
    fn send_now(&mut self, io: &mut Self::Io, buf: &[u8]) -> std::io::Result<usize>;
    /// Sends `buf` as the socket takes it, and reports what it took with [`Core::sent`]
    /// (io_uring) or lets [`Core::writable`] be called when it can take more (epoll).
    /// `buf` is the connection's `out` and stays untouched until then. Input is not
    /// watched meanwhile.
    fn send_later(&mut self, key: SlotKey, io: &mut Self::Io, buf: &[u8]) -> std::io::Result<()>;
    /// Everything is sent: watch for input again (and read what waited).
    fn resume(&mut self, key: SlotKey, io: &mut Self::Io);
    /// Stop watching for input until [`Backend::resume`] (a registration waits for the
    /// fleet with enough input behind it).
    fn pause(&mut self, key: SlotKey, io: &mut Self::Io);
    /// Sends our FIN.
    fn shutdown_write(&mut self, io: &mut Self::Io);
    /// Closes the socket: `true` if it is closed now; `false` if an operation is still in
    /// flight on it, in which case the backend calls [`Core::released`] once none is.
    fn close(&mut self, key: SlotKey, io: &mut Self::Io) -> bool;
    /// A refusal over the lingering cap: `answer` sent as far as it goes, FIN, closed.
    fn refuse_now(&mut self, io: Self::Io, answer: &[u8]);
    /// The drain: stop accepting for good; with `refuse_backlog`, the connections waiting
    /// in the listeners' backlog are refused too (not after a live upgrade, whose new
    /// process now accepts from the same listeners).
    fn stop_accepting(&mut self, refuse_backlog: bool);
    /// A tick outside the drain: accept again where descriptors ran out.
    fn accept_again(&mut self);
    /// Over the connection rate in `pace` mode: take nothing more off the listeners
    /// (their backlog waits in the kernel) until [`Backend::resume_accepting`].
    fn pause_accepting(&mut self);
    /// The next second has begun: take connections off the listeners again.
    fn resume_accepting(&mut self);
    /// Wake the worker's loop after `after` (once), even if nothing else happens.
    fn wake_in(&mut self, after: std::time::Duration);
    /// This worker's listeners, for their ban filters.
    fn listeners(&self) -> Vec<(std::os::fd::BorrowedFd<'_>, ListenerKind)>;
    /// A live upgrade: nothing is in flight on the socket of a connection not read any
    /// more (its receive's cancellation has completed).
    fn detachable(&self, io: &Self::Io) -> bool;
    /// Gives up a detachable connection's socket without closing it.
    fn detach(&mut self, io: Self::Io) -> std::os::fd::OwnedFd;
    /// Takes a socket handed over by a live upgrade (watched once [`Backend::open`]).
    fn adopt(&mut self, fd: std::os::fd::OwnedFd) -> Self::Io;
}

/// One connection: the protocol core and the lifecycle's state around the backend's socket.
#[derive(Debug)]
pub(super) struct Slot<Io> {
    pub generation: u32,
    pub conn: Connection,
    pub io: Io,
    /// Its write-stall deadline (its protocol deadline is in `Core::timers`, at its index).
    write_timer: Option<TimerKey>,
    /// Input not yet consumed (a frame split across receives).
    pending: Vec<u8>,
    /// Answers the backend is sending (untouched until it is done).
    out: Vec<u8>,
    /// How much of `out` is sent.
    sent: u32,
    /// The backend holds `out`.
    sending: bool,
    /// Close once every answer is written.
    close_after_write: bool,
    /// Our FIN is out (the linger runs).
    half_closed: bool,
    /// Closing hard: the socket is being closed, nothing more is read or told.
    hard: Option<CloseReason>,
    /// Counted in `Shared::active` (refusals are not).
    counted: bool,
    /// Not read while its registration waits for the fleet's verdict with
    /// [`AWAITING_INPUT_MAX`] bytes behind it.
    paused: bool,
    /// The peer's end of stream came while a registration waited for its verdict.
    eof_seen: bool,
}

impl<Io> Slot<Io> {
    /// Closing hard: events for it only wait for the backend's release.
    pub fn closing(&self) -> bool {
        self.hard.is_some()
    }
}

/// A worker's connections and everything it does with them, over backend `B`.
pub(super) struct Core<B: Backend> {
    /// This worker's number (the `worker` of its connections' `ConnKey`s).
    index: u32,
    pub shared: Arc<Shared>,
    cfg: ConnConfig,
    ids: IdAllocator,
    /// Write-stall deadlines (a second deadline a connection may hold while its answers
    /// wait for the socket).
    wheel: TimerWheel<(usize, u32, Timer)>,
    /// Each connection's one protocol deadline (registration, error, frame, keepalive,
    /// linger), at its slot's index: no allocation per deadline, and a keepalive held for
    /// a connection's life costs no memory beyond its node.
    timers: SlotWheel<Timer>,
    pub slots: Slab<Slot<B::Io>>,
    generation: u32,
    pub metrics: WorkerMetrics,
    /// Refusals lingering now.
    refusing: usize,
    /// The time of the events being handled: read once per wake-up.
    pub now: Instant,
    /// The buffer answers are written into: no allocation per registration, and no buffer
    /// kept per idle connection.
    scratch: Vec<u8>,
    /// Answers produced while a connection's `out` is being sent, by slot.
    later: std::collections::HashMap<usize, Vec<u8>>,
    drain: Option<Drain<(usize, u32)>>,
    /// Connections `feed` just paused: the backend is told by `carry_out`'s caller.
    paused: Vec<SlotKey>,
    /// When the fleet was last handed this worker's claims and releases, and whether a
    /// wake-up for the next hand-over is armed.
    fleet_flushed: Instant,
    fleet_due: bool,
    /// Connections taken off a listener over the rate in `pace` mode (docs/PROTOCOL.md
    /// §11), in arrival order: offered to admission again when the next second begins.
    /// While any waits, or until then, the listeners are not read (`pacing`).
    held: std::collections::VecDeque<(B::Io, SocketAddr, ListenerKind)>,
    /// The listeners are paused until this second begins.
    pacing: Option<Instant>,
    /// The ban filters on this worker's listeners.
    ban_filters: super::bans::BanFilters,
    /// A live upgrade's handover in progress.
    handover: Option<handover::HandOver>,
    /// Names of connections handed over, still held here under their old keys until the
    /// upgrade ends, by the socket handed (see `handover.rs`).
    handed_names: std::collections::HashMap<std::os::fd::RawFd, Vec<(ConnKey, String, i32)>>,
    /// In a live upgrade: the listeners are not read again (until it fails).
    upgrading: bool,
}

impl<B: Backend> Core<B> {
    /// Worker `index`'s core.
    pub fn new(index: usize, shared: Arc<Shared>) -> Self {
        let origin = Instant::now();
        Self {
            index: index as u32,
            cfg: shared.config.conn_config(),
            ids: IdAllocator::with_last(
                index as u32 + 1,
                shared.config.workers as u32,
                super::debug::id_space_last(),
            ),
            wheel: TimerWheel::new(origin, shared.config.timer_tick, WHEEL_SLOTS),
            timers: SlotWheel::new(origin, shared.config.timer_tick, WHEEL_SLOTS),
            slots: Slab::new(),
            generation: 0,
            metrics: WorkerMetrics::new(),
            refusing: 0,
            now: origin,
            scratch: Vec::with_capacity(256),
            later: std::collections::HashMap::new(),
            drain: None,
            paused: Vec::new(),
            fleet_flushed: origin,
            fleet_due: false,
            held: std::collections::VecDeque::new(),
            pacing: None,
            ban_filters: Default::default(),
            handover: None,
            handed_names: Default::default(),
            upgrading: false,
            shared,
        }
    }

    /// The worker listens: with a fleet, it is handed `wake` (made here, only then), the
    /// way its thread wakes this worker; then the worker counts as listening.
    pub fn ready(&self, wake: impl FnOnce() -> std::io::Result<crate::fleet::Wake>) {
        if let Some(fleet) = &self.shared.fleet {
            match wake() {
                Ok(w) => fleet.set_wake(self.index as usize, w),
                Err(e) => tracing::warn!(
                    worker = self.index,
                    "no way to wake the worker for the fleet ({e}): its verdicts wait for the tick"
                ),
            }
        }
        self.shared.health.listening.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether `key` still names a live (not hard-closing) connection.
    pub fn live(&self, key: SlotKey) -> bool {
        self.slots
            .get(key.slot)
            .is_some_and(|s| s.generation == key.generation && s.hard.is_none())
    }

    /// Whether connection `i` reads now: not closing hard, and no answers waiting for the
    /// socket (a peer that does not read stops being read from).
    pub fn reading(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.hard.is_none() && !s.sending && !s.paused
    }

    /// Whether `key` still names a connection, closing or not.
    pub fn exists(&self, key: SlotKey) -> bool {
        self.slots
            .get(key.slot)
            .is_some_and(|s| s.generation == key.generation)
    }

    /// A connection accepted from a listener of `kind`: trust, admission, then its core.
    pub fn accepted(&mut self, b: &mut B, io: B::Io, peer: SocketAddr, kind: ListenerKind) {
        super::debug::maybe_panic("accept");
        self.admit(b, io, peer, kind, false);
    }

    /// Admission of a connection taken off a listener, or (`held`) one paced earlier.
    fn admit(&mut self, b: &mut B, io: B::Io, peer: SocketAddr, kind: ListenerKind, held: bool) {
        let now = self.now;
        match self.shared.admit(peer, kind.proxy(), now) {
            Admission::Paced => {
                if !held {
                    self.metrics.paced();
                }
                self.held.push_back((io, peer, kind));
                if self.pacing.is_none() {
                    // The listeners wait (their backlog with them) until the next second.
                    let next = self.shared.admission.next_second(now);
                    self.pacing = Some(next);
                    b.pause_accepting();
                    b.wake_in(next.saturating_duration_since(now));
                }
            }
            Admission::Untrusted => {
                tracing::debug!(%peer, "refused: not a trusted PROXY protocol peer");
                self.metrics.refused_untrusted(kind);
                b.refuse_now(io, &[]);
            }
            Admission::Refused(r) if kind.tls() => {
                // No EventError can go out before a handshake: closed without a byte.
                self.metrics.refused(kind, r, false);
                b.refuse_now(io, &[]);
            }
            Admission::Refused(r) => {
                self.metrics.refused(kind, r, true);
                // The answer goes straight into the worker's answer buffer: nothing is
                // allocated for a refusal beyond its slab entry.
                self.scratch.clear();
                let (conn, p) =
                    Connection::refuse(now, peer.ip(), r.code(), &self.cfg, &mut self.scratch);
                if self.refusing >= REFUSALS_LINGERING_MAX {
                    b.refuse_now(io, &self.scratch);
                    return;
                }
                self.refusing += 1;
                if let Some(i) = self.insert(b, conn, io, false) {
                    self.carry_out(b, i, p);
                }
            }
            Admission::Admitted { counted } => {
                let Some((mut conn, t)) = self.shared.open(now, peer, kind, &self.cfg) else {
                    self.metrics.accept_error();
                    self.shared.active.fetch_sub(1, Ordering::AcqRel);
                    if counted {
                        self.shared.admission.released(peer.ip());
                    }
                    b.refuse_now(io, &[]);
                    return;
                };
                if counted {
                    conn.mark_admitted();
                }
                self.metrics.accepted(kind);
                if let Some(i) = self.insert(b, conn, io, true) {
                    self.apply_timer(i, t);
                }
            }
        }
    }

    fn next_generation(&mut self) -> u32 {
        // Below 2^30: the backends keep the top bits of their event keys for themselves.
        self.generation = self.generation.wrapping_add(1) & 0x3fff_ffff;
        self.generation
    }

    fn insert(&mut self, b: &mut B, conn: Connection, io: B::Io, counted: bool) -> Option<usize> {
        let generation = self.next_generation();
        self.insert_as(b, conn, io, counted, generation)
    }

    fn insert_as(
        &mut self,
        b: &mut B,
        conn: Connection,
        io: B::Io,
        counted: bool,
        generation: u32,
    ) -> Option<usize> {
        let i = self.slots.insert(Slot {
            generation,
            conn,
            io,
            write_timer: None,
            pending: Vec::new(),
            out: Vec::new(),
            sent: 0,
            sending: false,
            close_after_write: false,
            half_closed: false,
            hard: None,
            counted,
            paused: false,
            eof_seen: false,
        });
        let key = SlotKey {
            slot: i,
            generation,
        };
        if let Err(e) = b.open(key, &mut self.slots[i].io) {
            tracing::warn!("cannot watch a connection: {e}");
            self.close_now(b, i, CloseReason::Peer);
            return None;
        }
        Some(i)
    }

    fn apply_timer(&mut self, i: usize, change: TimerChange) {
        match change {
            TimerChange::Keep => {}
            TimerChange::Cancel => {
                self.timers.disarm(i);
            }
            TimerChange::Arm(t, at) => self.timers.arm(i, at, t),
        }
    }

    /// Bytes received for connection `i`: handed to its core in place when nothing is
    /// pending, else behind its `pending` bytes (only the tail of a frame split across
    /// receives is kept). Answers go to the scratch buffer (or behind answers being
    /// sent); failed registrations count toward a ban. `None` if it is closing hard.
    pub fn feed(&mut self, i: usize, data: &[u8]) -> Option<Progress> {
        super::debug::maybe_panic("connection");
        self.metrics.bytes_in(data.len());
        let s = &mut self.slots[i];
        if s.hard.is_some() {
            return None;
        }
        let now = self.now;
        let mut answers = if s.sending {
            self.later.remove(&i).unwrap_or_default()
        } else {
            self.scratch.clear();
            std::mem::take(&mut self.scratch)
        };
        let registry = self.shared.registry.load();
        let (metrics, shared) = (&self.metrics, &*self.shared);
        let gate = |ip| shared.gate(ip, now, metrics);
        let mut env = Env {
            registry: &registry,
            ids: &mut self.ids,
            config: &self.cfg,
            gate: Some(&gate),
            names: Some(shared.claims(key(self.index, i, s.generation))),
        };
        let failures = std::cell::Cell::new(0);
        let each = |o: &crate::session::Output| {
            metrics.output(o);
            if crate::admission::is_failure(o) {
                failures.set(failures.get() + 1);
            }
        };
        let conn = &mut s.conn;
        let p = if s.pending.is_empty() {
            let p = conn.on_bytes(now, data, &mut env, &mut answers, each);
            s.pending.extend_from_slice(&data[p.consumed..]);
            p
        } else {
            s.pending.extend_from_slice(data);
            let p = conn.on_bytes(now, &s.pending, &mut env, &mut answers, each);
            s.pending.drain(..p.consumed);
            p
        };
        if !s.sending {
            self.scratch = answers;
        } else if !answers.is_empty() {
            self.later.insert(i, answers);
        }
        if failures.get() > 0 {
            shared.failed_registrations(conn.peer(), failures.get(), now);
        }
        if s.pending.is_empty() && s.pending.capacity() > 0 {
            s.pending = Vec::new();
        }
        if conn.awaiting() && s.pending.len() >= AWAITING_INPUT_MAX && !s.paused {
            s.paused = true;
            let key = SlotKey {
                slot: i,
                generation: s.generation,
            };
            self.paused.push(key);
        }
        metrics.logical_delta(p.logical_delta);
        if let Some(h) = p.handshake {
            metrics.handshake(h);
        }
        if p.registered {
            metrics.registration_duration(now.saturating_duration_since(conn.accepted_at()));
        }
        Some(p)
    }

    /// Carries out a connection's progress: its timer, its answers (in the scratch buffer,
    /// or already behind answers being sent), a close.
    pub fn carry_out(&mut self, b: &mut B, i: usize, p: Progress) {
        for key in std::mem::take(&mut self.paused) {
            if let Some(s) = self
                .slots
                .get_mut(key.slot)
                .filter(|s| s.generation == key.generation)
            {
                b.pause(key, &mut s.io);
            }
        }
        self.apply_timer(i, p.timer);
        match p.action {
            Action::Continue => self.write(b, i),
            Action::CloseAfterWrite => {
                let s = &mut self.slots[i];
                s.close_after_write = true;
                s.pending = Vec::new();
                self.write(b, i);
            }
            Action::CloseNow(r) => {
                self.scratch.clear();
                self.close_now(b, i, r);
            }
        }
    }

    /// Offers the answers in the scratch buffer to the socket: inline first, the rest
    /// handed to the backend under the write-stall deadline. Behind answers being sent,
    /// they wait (in `later`) for their turn.
    fn write(&mut self, b: &mut B, i: usize) {
        let s = &mut self.slots[i];
        if s.sending || s.hard.is_some() {
            self.scratch.clear();
            return;
        }
        if !self.scratch.is_empty() {
            let n = match b.send_now(&mut s.io, &self.scratch) {
                Ok(n) => n,
                Err(_) => {
                    self.scratch.clear();
                    return self.close_now(b, i, CloseReason::Peer);
                }
            };
            self.metrics.bytes_out(n);
            if n < self.scratch.len() {
                s.out.clear();
                s.out.extend_from_slice(&self.scratch[n..]);
                self.scratch.clear();
                return self.send_out(b, i);
            }
            self.scratch.clear();
        }
        self.flushed(b, i);
    }

    /// Hands `out` to the backend, under the write-stall deadline.
    fn send_out(&mut self, b: &mut B, i: usize) {
        let s = &mut self.slots[i];
        s.sending = true;
        s.sent = 0;
        let at = deadline(self.now, self.shared.config.write_timeout);
        s.write_timer = Some(self.wheel.insert(at, (i, s.generation, Timer::WriteStall)));
        let key = SlotKey {
            slot: i,
            generation: s.generation,
        };
        if b.send_later(key, &mut s.io, &s.out).is_err() {
            self.close_now(b, i, CloseReason::Peer);
        }
    }

    /// Every answer is written: a close once written sends its FIN and starts the linger.
    fn flushed(&mut self, b: &mut B, i: usize) {
        let s = &mut self.slots[i];
        if s.close_after_write && !s.half_closed {
            s.half_closed = true;
            b.shutdown_write(&mut s.io);
            let t = s.conn.on_flushed(self.now, &self.cfg);
            self.apply_timer(i, t);
        }
    }

    /// The backend sent `n` more bytes of `out`: what remains goes on; once all is sent,
    /// the answers produced meanwhile go out, and input is watched again.
    pub fn sent(&mut self, b: &mut B, i: usize, n: usize) {
        let s = &mut self.slots[i];
        if s.hard.is_some() || !s.sending {
            return;
        }
        self.metrics.bytes_out(n);
        s.sent += n as u32;
        let key = SlotKey {
            slot: i,
            generation: s.generation,
        };
        if (s.sent as usize) < s.out.len() {
            if b.send_later(key, &mut s.io, &s.out[s.sent as usize..])
                .is_err()
            {
                self.close_now(b, i, CloseReason::Peer);
            }
            return;
        }
        s.sending = false;
        s.out = Vec::new();
        s.sent = 0;
        if let Some(k) = s.write_timer.take() {
            self.wheel.cancel(k);
        }
        // Answers produced meanwhile go out now (copied: the scratch buffer keeps its
        // capacity, and an idle connection keeps none).
        self.scratch.clear();
        if let Some(later) = self.later.remove(&i) {
            self.scratch.extend_from_slice(&later);
        }
        self.write(b, i);
        if let Some(s) = self
            .slots
            .get_mut(i)
            .filter(|s| !s.sending && s.hard.is_none())
        {
            b.resume(key, &mut s.io);
        }
    }

    /// The socket takes more (a readiness backend): sends what waits in `out` as far as
    /// it goes.
    pub fn writable(&mut self, b: &mut B, i: usize) {
        loop {
            let s = &mut self.slots[i];
            if !s.sending || s.hard.is_some() {
                return;
            }
            match b.send_now(&mut s.io, &s.out[s.sent as usize..]) {
                Ok(0) => return,
                Ok(n) => self.sent(b, i, n),
                Err(_) => return self.close_now(b, i, CloseReason::Peer),
            }
            if !self.slots.contains(i) {
                return;
            }
        }
    }

    /// A send failed (the peer reset): the connection closes.
    pub fn send_failed(&mut self, b: &mut B, i: usize) {
        let s = &mut self.slots[i];
        s.sending = false;
        let r = s.hard.unwrap_or(CloseReason::Peer);
        self.close_now(b, i, r);
    }

    /// The peer's end of stream. With answers still being sent (a client that sent its
    /// last frames and half-closed) they finish first: the backend resumes reading once
    /// they are written, and sees the end of stream again then.
    pub fn eof(&mut self, b: &mut B, i: usize) {
        let s = &mut self.slots[i];
        if s.hard.is_none() && s.sending {
            return;
        }
        if s.hard.is_none() && s.conn.awaiting() {
            // A client that half-closed behind its registration still gets the answer:
            // once the verdict is in, the backend reads again and sees the end again.
            s.eof_seen = true;
            return;
        }
        let r = s.hard.unwrap_or_else(|| s.conn.on_eof());
        self.close_now(b, i, r);
    }

    /// A receive failed (a reset): the connection closes now.
    pub fn reset(&mut self, b: &mut B, i: usize) {
        let s = &self.slots[i];
        let r = s.hard.unwrap_or_else(|| s.conn.on_eof());
        self.close_now(b, i, r);
    }

    /// Closes connection `i` now: its timers go, and its socket; once the backend has
    /// released the socket, its slot.
    fn close_now(&mut self, b: &mut B, i: usize, reason: CloseReason) {
        let s = &mut self.slots[i];
        if s.hard.is_none() {
            s.hard = Some(reason);
            self.timers.disarm(i);
            if let Some(k) = s.write_timer.take() {
                self.wheel.cancel(k);
            }
        }
        let key = SlotKey {
            slot: i,
            generation: s.generation,
        };
        if b.close(key, &mut s.io) {
            self.free(i);
        }
    }

    /// The backend has nothing in flight any more on a hard-closing connection's socket:
    /// it closes it now, and the slot is freed.
    pub fn released(&mut self, b: &mut B, i: usize) {
        if self.slots[i].hard.is_some() {
            let r = self.slots[i].hard.unwrap_or(CloseReason::Peer);
            self.close_now(b, i, r);
        }
    }

    /// Connection `i`'s socket is closed: gives back what admission counted, its
    /// ProxyClientIds and its names, and counts the close (a refusal only leaves the
    /// lingering refusals).
    fn free(&mut self, i: usize) {
        let mut s = self.slots.remove(i);
        self.later.remove(&i);
        let reason = s.hard.unwrap_or(CloseReason::Peer);
        self.shared.release(&s.conn);
        let was_registered = s.conn.session().proxy_client_id().is_some();
        let logical = s.conn.session().logical_clients();
        let names = self.shared.claims(key(self.index, i, s.generation));
        s.conn.release(&mut self.ids, Some(names));
        if s.counted {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            self.metrics.closed(reason, was_registered, logical);
        } else {
            self.refusing -= 1;
        }
    }

    /// The tick: deadlines, the drain, the admin API's commands, metrics. Whether the
    /// worker may stop (its drain is over).
    pub fn tick(&mut self, b: &mut B) -> bool {
        let now = self.now;
        self.expire(b, now);
        self.unpace(b);
        let draining = self.shared.health.draining.load(Ordering::Acquire);
        if !draining && !self.upgrading {
            b.accept_again();
        }
        if self.drain.is_none() && draining {
            b.stop_accepting(!self.upgrading);
            // Held connections go the way of the backlog: closed.
            for (io, _, _) in std::mem::take(&mut self.held) {
                b.refuse_now(io, &[]);
            }
            self.pacing = None;
            self.shared.health.listening.fetch_sub(1, Ordering::AcqRel);
            self.drain = Some(Drain::new(now, &self.shared.config));
        }
        let mut done = false;
        if let Some(mut d) = self.drain.take() {
            done = self.drain_step(b, &mut d, now);
            self.drain = Some(d);
        }
        self.verdicts(b, now);
        self.commands(b, now);
        self.hand_over_step(b, now);
        self.metrics
            .bans_active(self.shared.admission.bans_active(now));
        self.ban_filters
            .tick(&self.shared.admission, now, &b.listeners(), &self.metrics);
        self.metrics.names_held(self.shared.names.len());
        self.metrics.flush();
        done
    }

    /// The deadlines due at `now`, each handed to its connection (if the slot still holds
    /// the one it was armed for); a close once written whose answers are not draining
    /// becomes a close now (the peer is not reading).
    fn expire(&mut self, b: &mut B, now: Instant) {
        // Write stalls carry their connection's generation; a protocol deadline is at its
        // connection's own index, disarmed when that connection closes.
        let mut expired = Vec::new();
        self.wheel
            .advance(now, |(i, g, t)| expired.push((i, Some(g), t)));
        self.timers.advance(now, |i, t| expired.push((i, None, t)));
        let mut counts = [0u64; Timer::ALL.len()];
        for (i, generation, timer) in expired {
            let Some(s) = self
                .slots
                .get_mut(i)
                .filter(|s| generation.is_none_or(|g| s.generation == g) && s.hard.is_none())
            else {
                continue;
            };
            if timer == Timer::WriteStall {
                s.write_timer = None;
            }
            let sending = s.sending;
            let mut p = self.tell(i, |conn, env, answers, metrics| {
                conn.on_deadline(now, timer, env, answers, |o| metrics.output(o))
            });
            if p.action != Action::Continue {
                counts[timer.index()] += 1;
            }
            // A deadline that closes once written while earlier answers are still not
            // taken: the peer is not reading, so close now. Not so for an expired
            // keepalive, whose EventError 19 queues behind them and the write-stall
            // deadline bounds the wait (docs/PROTOCOL.md §12).
            if p.action == Action::CloseAfterWrite && sending && timer != Timer::KeepAlive {
                p.action = Action::CloseNow(self.slots[i].conn.on_eof());
            }
            self.carry_out(b, i, p);
        }
        self.metrics.tick_expired(&counts);
    }

    /// One tick of the drain: when its spread begins, every connection not registered is
    /// told at once (closed) and the registered ones queue; then the slice due gets
    /// EventError 11. Whether the worker may stop.
    fn drain_step(&mut self, b: &mut B, d: &mut Drain<(usize, u32)>, now: Instant) -> bool {
        let hurry = self.shared.hurry.load(Ordering::Acquire);
        let mut tell = Vec::new();
        if d.ready(now, hurry) {
            let mut registered = Vec::new();
            for (i, s) in self.slots.iter() {
                if s.conn.session().state() == crate::session::State::Registered {
                    registered.push((i, s.generation));
                } else {
                    tell.push(i);
                }
            }
            self.metrics.drain_remaining(registered.len() as i64);
            d.begin(registered);
        }
        let due = d.due(now, hurry);
        self.metrics.drain_remaining(-(due.len() as i64));
        let slots = &self.slots;
        tell.extend(
            due.into_iter()
                .filter(|&(i, g)| slots.get(i).is_some_and(|s| s.generation == g))
                .map(|(i, _)| i),
        );
        for i in tell {
            self.notify(b, i, now, Notice::Drain);
        }
        d.done(now, self.slots.is_empty(), self.shared.config.drain_timeout)
    }

    /// Tells one connection of the drain (registered: EventError 11 and close once
    /// written; unregistered: close now) or of a kick (registered: EventError 15 and close
    /// once written).
    fn notify(&mut self, b: &mut B, i: usize, now: Instant, notice: Notice) {
        let s = &mut self.slots[i];
        if s.conn.is_closing() || s.hard.is_some() {
            return;
        }
        let p = self.tell(i, |conn, env, answers, metrics| {
            conn.on_notice(now, notice, env, answers, |o| metrics.output(o))
        });
        self.carry_out(b, i, p);
    }

    /// Tells connection `i` something from outside its socket (the drain, a kick, the
    /// fleet's verdict) through `f`: its answers go where a receive's would (the scratch
    /// buffer, or behind answers being sent), with the worker's ids, names and metrics.
    fn tell(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Connection, &mut Env<'_>, &mut Vec<u8>, &WorkerMetrics) -> Progress,
    ) -> Progress {
        let s = &mut self.slots[i];
        let mut answers = if s.sending {
            self.later.remove(&i).unwrap_or_default()
        } else {
            self.scratch.clear();
            std::mem::take(&mut self.scratch)
        };
        let registry = self.shared.registry.load();
        let mut env = Env {
            registry: &registry,
            ids: &mut self.ids,
            config: &self.cfg,
            gate: None,
            names: Some(self.shared.claims(key(self.index, i, s.generation))),
        };
        let p = f(&mut s.conn, &mut env, &mut answers, &self.metrics);
        if !s.sending {
            self.scratch = answers;
        } else if !answers.is_empty() {
            self.later.insert(i, answers);
        }
        p
    }

    /// The admin API's commands (and replaced names' kicks), taken at each tick: listings
    /// are answered from the slab; kicks that find a registered connection are told.
    fn commands(&mut self, b: &mut B, now: Instant) {
        let mut kicks = Vec::new();
        for command in self.shared.inboxes.take(self.index as usize) {
            match command {
                Command::List { query, done } => {
                    let live = self
                        .slots
                        .iter()
                        .filter(|(_, s)| s.hard.is_none())
                        .map(|(i, s)| (key(self.index, i, s.generation), &s.conn));
                    let _ = done.send(crate::control::list(live, &query, self.shared.origin.0));
                }
                Command::Kick { conn, kick, done } => {
                    let slot = conn.slot as usize;
                    let found = self.slots.get(slot).is_some_and(|s| {
                        s.generation == conn.generation && s.hard.is_none() && kickable(&s.conn)
                    });
                    if let Some(done) = done {
                        let _ = done.send(found);
                    }
                    if found {
                        kicks.push((slot, kick));
                    }
                }
                Command::HandOver { parts, until } => {
                    self.hand_over(b, handover::HandOver::new(parts, until));
                }
                Command::TakeBack { conns } => self.take_back(b, conns),
                Command::Upgraded => {
                    // The rest drain as a lame duck; the listeners are the new process's.
                    self.shared.health.draining.store(true, Ordering::Release);
                }
            }
        }
        for (slot, kick) in kicks {
            self.notify(b, slot, now, Notice::Kick(kick));
        }
    }

    /// Pacing (docs/PROTOCOL.md §11): once the next second has begun, the held
    /// connections are offered to admission again, in order; when none is left over the
    /// listeners are read again, else they wait for the second after.
    pub fn unpace(&mut self, b: &mut B) {
        let Some(until) = self.pacing else { return };
        if self.now < until || self.drain.is_some() {
            return;
        }
        self.pacing = None;
        for (io, peer, kind) in std::mem::take(&mut self.held) {
            if self.pacing.is_some() {
                // Paced again: the rest keep their place behind it.
                self.held.push_back((io, peer, kind));
            } else {
                self.admit(b, io, peer, kind, true);
            }
        }
        if self.pacing.is_none() && !self.upgrading {
            b.resume_accepting();
        }
    }

    /// The fleet thread woke the worker: the verdicts it posted, and the kicks (replaced
    /// names, operators on other servers) it put in the inbox.
    pub fn woken(&mut self, b: &mut B) {
        let now = self.now;
        self.verdicts(b, now);
        self.commands(b, now);
    }

    /// The fleet's verdicts on the names registrations wait for (docs/PROTOCOL.md §13):
    /// each is answered, then the input that waited behind it is read.
    fn verdicts(&mut self, b: &mut B, now: Instant) {
        let Some(fleet) = self.shared.fleet.clone() else {
            return;
        };
        for v in fleet.take(self.index as usize) {
            let key = SlotKey {
                slot: v.holder.conn.slot as usize,
                generation: v.holder.conn.generation,
            };
            if !self.live(key) {
                // Closed meanwhile: its close released the name (the fleet thread runs
                // the release after this claim).
                continue;
            }
            let i = key.slot;
            let p = self.tell(i, |conn, env, answers, metrics| {
                let p = conn.on_verdict(now, v, env, answers, |o| metrics.output(o));
                metrics.logical_delta(p.logical_delta);
                if p.registered {
                    metrics
                        .registration_duration(now.saturating_duration_since(conn.accepted_at()));
                }
                p
            });
            self.carry_out(b, i, p);
            // The input that waited is read now (which may pause it again behind the next
            // claim), and a paused socket is watched again.
            if self.live(key) && !self.slots[i].conn.awaiting() {
                let was_paused = std::mem::take(&mut self.slots[i].paused)
                    | std::mem::take(&mut self.slots[i].eof_seen);
                if let Some(p) = self.feed(i, &[]) {
                    self.carry_out(b, i, p);
                }
                if let Some(s) = self
                    .slots
                    .get_mut(i)
                    .filter(|s| s.generation == key.generation && s.hard.is_none())
                {
                    if was_paused && !s.paused && !s.sending {
                        b.resume(key, &mut s.io);
                    }
                }
            }
        }
    }

    /// The turn of the worker's loop is over: what its connections asked of the fleet
    /// goes to the fleet thread together, at most once per [`FLEET_FLUSH_EVERY`] (the first
    /// after a quiet spell at once; under load, the turns of that span in one batch, and
    /// the backend is asked to wake the worker when it is due). Called before it waits.
    pub fn turn_over(&mut self, b: &mut B) {
        let Some(f) = &self.shared.fleet else {
            return;
        };
        let queued = f.queued();
        if queued == 0 {
            return;
        }
        let now = Instant::now();
        let due = self.fleet_flushed + FLEET_FLUSH_EVERY;
        if now >= due || queued >= FLEET_FLUSH_BATCH {
            f.flush();
            self.fleet_flushed = now;
            self.fleet_due = false;
        } else if !self.fleet_due {
            self.fleet_due = true;
            b.wake_in(due - now);
        }
    }

    /// The worker is done: its last metrics go out, and its last releases to the fleet.
    pub fn finish(&mut self) {
        if let Some(f) = &self.shared.fleet {
            f.flush();
        }
        self.metrics.flush();
    }
}

/// Whether a kick finds a registered connection that is not closing.
fn kickable(conn: &Connection) -> bool {
    !conn.is_closing() && conn.session().state() == crate::session::State::Registered
}

/// The process-wide key of worker `worker`'s connection in slot `i`.
fn key(worker: u32, i: usize, generation: u32) -> ConnKey {
    ConnKey {
        worker,
        slot: i as u32,
        generation,
    }
}

/// Stops a listener for good at the drain: `shutdown(2)` on a listening socket resets the
/// connections waiting in its backlog and refuses new ones at once (the port no longer
/// listens, on any worker once all have drained), so a client that connects during a
/// drain is refused and retries elsewhere instead of waiting, unanswered, until the
/// process exits (N6).
pub(super) fn refuse_new_connections(listener: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Read);
}

/// Accept errors that mean the process is out of descriptors (or memory): the backend
/// accepts again at the next tick, not at once, and says so at most every 5 s.
pub(super) fn out_of_descriptors(
    errno: i32,
    last_warn: &mut Option<Instant>,
    now: Instant,
) -> bool {
    if !matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
    ) {
        return false;
    }
    if last_warn.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(5)) {
        tracing::warn!(
            "accept failed ({}); backing off until descriptors free up",
            std::io::Error::from_raw_os_error(errno)
        );
        *last_warn = Some(now);
    }
    true
}
