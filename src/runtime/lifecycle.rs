//! What the two engines (io_uring and epoll) do the same way around a [`Connection`]:
//! feeding it bytes, telling it of the drain or a kick, arming its timer, admitting it,
//! serving the admin API's listings and counting it out when it is gone.
//!
//! The engines differ in how bytes arrive and answers leave (completions and provided
//! buffers, or readiness and `read`/`write`); everything between a socket event and the
//! protocol's answer is here once, so the two cannot drift apart.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ixn_proto::connection::{Action, ConnConfig, Connection, Env, Notice, Progress, TimerChange};
use ixn_proto::names::ConnKey;
use ixn_proto::session::Kick;
use ixn_proto::tls::ListenerKind;

use super::Shared;
use crate::control::Command;
use crate::metrics::WorkerMetrics;
use crate::session::{CloseReason, IdAllocator, Timer};
use crate::timer_wheel::{TimerKey, TimerWheel};

/// A slab engine's timer wheel: slot, generation, timer.
/// Refusals lingering at once per worker (closed once their EventError is written):
/// beyond these, a refusal is sent and its socket closed at once, so a storm of refused
/// connections cannot hold descriptors clients need.
pub(super) const REFUSALS_LINGERING_MAX: usize = 16;

pub(super) type Wheel = TimerWheel<(usize, u32, Timer)>;

/// A slab engine's connection entry, as the shared lifecycle sees it.
pub(super) trait Slot {
    /// The generation the entry was inserted with.
    fn generation(&self) -> u32;
    /// The protocol core.
    fn conn(&mut self) -> &mut Connection;
    /// Its protocol timer's and its write-stall timer's wheel entries.
    fn timers(&mut self) -> (&mut Option<TimerKey>, &mut Option<TimerKey>);
    /// Answers are still being written (a close once written cannot wait for them).
    fn writing(&self) -> bool;
    /// Closing hard already (nothing is to be told or listed).
    fn gone(&self) -> bool;
    /// The core, for reading.
    fn core(&self) -> &Connection;
}

/// Builds a [`Ctx`] from a worker's fields (field by field, so its slab stays borrowable).
macro_rules! cx {
    ($w:expr) => {
        $crate::runtime::lifecycle::Ctx {
            shared: &$w.shared,
            metrics: &$w.metrics,
            ids: &mut $w.ids,
            cfg: &$w.cfg,
            worker: $w.index,
        }
    };
}
pub(super) use cx;

/// The deadlines due at `now`: each is handed to its connection (if the slot still holds
/// the one it was armed for) and the progress returned, for the engine to carry out; a
/// close once written whose answers are not draining becomes a close now (the peer is not
/// reading). Counts what expired in `metrics`.
pub(super) fn expire<C: Slot>(
    wheel: &mut Wheel,
    conns: &mut slab::Slab<C>,
    now: Instant,
    metrics: &WorkerMetrics,
) -> Vec<(usize, Progress)> {
    let mut expired = Vec::new();
    wheel.advance(now, |e| expired.push(e));
    let mut counts = [0u64; Timer::ALL.len()];
    let mut out = Vec::with_capacity(expired.len());
    for (i, generation, timer) in expired {
        let Some(c) = conns.get_mut(i).filter(|c| c.generation() == generation) else {
            continue;
        };
        let (protocol, write) = c.timers();
        if timer == Timer::WriteStall {
            *write = None;
        } else {
            *protocol = None;
        }
        let mut p = c.conn().on_deadline(timer);
        if p.action != Action::Continue {
            counts[timer.index()] += 1;
        }
        if p.action == Action::CloseAfterWrite && c.writing() {
            p.action = Action::CloseNow(c.conn().on_eof());
        }
        out.push((i, p));
    }
    metrics.tick_expired(&counts);
    out
}

/// One tick of the drain: when its spread begins, every connection not registered is to
/// be told at once and the registered ones queue; then the slice due. Returns the slots
/// to tell now.
pub(super) fn drain_tick<C: Slot>(
    d: &mut super::Drain<(usize, u32)>,
    now: Instant,
    hurry: bool,
    conns: &slab::Slab<C>,
    metrics: &WorkerMetrics,
) -> Vec<usize> {
    let mut tell = Vec::new();
    if d.ready(now, hurry) {
        let mut registered = Vec::new();
        for (i, c) in conns.iter() {
            if c.core().session().state() == crate::session::State::Registered {
                registered.push((i, c.generation()));
            } else {
                tell.push(i);
            }
        }
        metrics.drain_remaining(registered.len() as i64);
        d.begin(registered);
    }
    let due = d.due(now, hurry);
    metrics.drain_remaining(-(due.len() as i64));
    tell.extend(
        due.into_iter()
            .filter(|&(i, g)| conns.get(i).is_some_and(|c| c.generation() == g))
            .map(|(i, _)| i),
    );
    tell
}

/// The process-wide key of worker `worker`'s connection in slot `i`.
/// Stops a listener for good at the drain: `shutdown(2)` on a listening socket resets the
/// connections waiting in its backlog and refuses new ones at once (the port no longer
/// listens, on any worker once all have drained), so a client that connects during a
/// drain is refused and retries elsewhere instead of waiting, unanswered, until the
/// process exits (N6).
pub(super) fn refuse_new_connections(listener: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Read);
}

pub(super) fn key(worker: u32, i: usize, generation: u32) -> ConnKey {
    ConnKey {
        worker,
        slot: i as u32,
        generation,
    }
}

/// What a worker lends the shared lifecycle for one call.
pub(super) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub metrics: &'a WorkerMetrics,
    pub ids: &'a mut IdAllocator,
    pub cfg: &'a ConnConfig,
    pub worker: u32,
}

/// Carries a connection's timer change into the wheel (`slot` is its entry).
pub(super) fn apply_timer(
    wheel: &mut Wheel,
    slot: &mut Option<TimerKey>,
    i: usize,
    generation: u32,
    change: TimerChange,
) {
    match change {
        TimerChange::Keep => {}
        TimerChange::Cancel => {
            if let Some(k) = slot.take() {
                wheel.cancel(k);
            }
        }
        TimerChange::Arm(t, at) => {
            if let Some(k) = slot.take() {
                wheel.cancel(k);
            }
            *slot = Some(wheel.insert(at, (i, generation, t)));
        }
    }
}

/// A connection just accepted, past trust and admission: its core (by listener kind),
/// or `None` when it cannot have one (a TLS listener without a config), in which case
/// what admission counted is given back.
pub(super) fn open(
    shared: &Shared,
    metrics: &WorkerMetrics,
    now: Instant,
    peer: SocketAddr,
    kind: ListenerKind,
    cfg: &ConnConfig,
    counted: bool,
) -> Option<(Connection, TimerChange)> {
    let Some((mut conn, t)) = shared.open(now, peer, kind, cfg) else {
        metrics.accept_error();
        shared.active.fetch_sub(1, Ordering::AcqRel);
        if counted {
            shared.admission.released(peer.ip());
        }
        return None;
    };
    if counted {
        conn.mark_admitted();
    }
    metrics.accepted(kind);
    Some((conn, t))
}

/// Hands `data`, bytes just received, to connection `i`: in place when nothing is
/// pending, else behind its `pending` bytes; only the tail of a frame split across
/// receives is kept (in `pending`). Answers go to `answers`; failed registrations count
/// toward a ban; metrics are recorded.
#[allow(clippy::too_many_arguments)]
pub(super) fn feed(
    cx: Ctx<'_>,
    i: usize,
    generation: u32,
    conn: &mut Connection,
    pending: &mut Vec<u8>,
    data: &[u8],
    now: Instant,
    answers: &mut Vec<u8>,
) -> Progress {
    super::debug::maybe_panic("connection");
    let registry = cx.shared.registry.load();
    let metrics = cx.metrics;
    let shared = cx.shared;
    let gate = |ip| shared.gate(ip, now, metrics);
    let mut env = Env {
        registry: &registry,
        ids: cx.ids,
        config: cx.cfg,
        gate: Some(&gate),
        names: Some(shared.claims(key(cx.worker, i, generation))),
    };
    let failures = std::cell::Cell::new(0);
    let each = |o: &crate::session::Output| {
        metrics.output(o);
        if crate::admission::is_failure(o) {
            failures.set(failures.get() + 1);
        }
    };
    let p = if pending.is_empty() {
        let p = conn.on_bytes(now, data, &mut env, answers, each);
        pending.extend_from_slice(&data[p.consumed..]);
        p
    } else {
        pending.extend_from_slice(data);
        let p = conn.on_bytes(now, pending, &mut env, answers, each);
        pending.drain(..p.consumed);
        p
    };
    if failures.get() > 0 {
        shared.failed_registrations(conn.peer(), failures.get(), now);
    }
    if pending.is_empty() && pending.capacity() > 0 {
        *pending = Vec::new();
    }
    metrics.logical_delta(p.logical_delta);
    if let Some(h) = p.handshake {
        metrics.handshake(h);
    }
    if p.registered {
        metrics.registration_duration(now.saturating_duration_since(conn.accepted_at()));
    }
    p
}

/// Tells connection `i` of the drain or a kick; its answer goes to `answers`.
pub(super) fn tell(
    cx: Ctx<'_>,
    i: usize,
    generation: u32,
    conn: &mut Connection,
    now: Instant,
    notice: Notice,
    answers: &mut Vec<u8>,
) -> Progress {
    let registry = cx.shared.registry.load();
    let mut env = Env {
        registry: &registry,
        ids: cx.ids,
        config: cx.cfg,
        gate: None,
        names: Some(cx.shared.claims(key(cx.worker, i, generation))),
    };
    let metrics = cx.metrics;
    conn.on_notice(now, notice, &mut env, answers, |o| metrics.output(o))
}

/// Connection `i` is gone (its slot already freed): gives back what admission counted,
/// its ProxyClientIds and its names, and counts the close (a refusal only leaves the
/// lingering refusals).
#[allow(clippy::too_many_arguments)]
pub(super) fn gone(
    cx: Ctx<'_>,
    i: usize,
    generation: u32,
    conn: &mut Connection,
    counted: bool,
    reason: CloseReason,
    refusing: &mut usize,
) {
    cx.shared.release(conn);
    let was_registered = conn.session().proxy_client_id().is_some();
    let logical = conn.session().logical_clients();
    let names = cx.shared.claims(key(cx.worker, i, generation));
    conn.release(cx.ids, Some(names));
    if counted {
        cx.shared.active.fetch_sub(1, Ordering::AcqRel);
        cx.metrics.closed(reason, was_registered, logical);
    } else {
        *refusing -= 1;
    }
}

/// A kick the admin API or the name table asked of this worker, of a registered
/// connection in `slot`.
pub(super) struct KickOrder {
    pub slot: usize,
    pub kick: Kick,
}

/// Takes this worker's commands: answers the listings from `conns` (every connection
/// not closing hard) and returns the kicks that find a registered connection, for the
/// engine to carry out (each `done` is answered here or by the engine).
pub(super) fn commands<C: Slot>(
    shared: &Shared,
    worker: u32,
    conns: &slab::Slab<C>,
) -> Vec<KickOrder> {
    let mut kicks = Vec::new();
    for command in shared.inboxes.take(worker as usize) {
        match command {
            Command::List { query, done } => {
                let live = conns
                    .iter()
                    .filter(|(_, c)| !c.gone())
                    .map(|(i, c)| (key(worker, i, c.generation()), c.core()));
                let _ = done.send(crate::control::list(live, &query, shared.origin.0));
            }
            Command::Kick { conn, kick, done } => {
                let slot = conn.slot as usize;
                let found = conns.get(slot).is_some_and(|c| {
                    c.generation() == conn.generation && !c.gone() && kickable(c.core())
                });
                if let Some(done) = done {
                    let _ = done.send(found);
                }
                if found {
                    kicks.push(KickOrder { slot, kick });
                }
            }
        }
    }
    kicks
}

/// Whether a kick finds a registered connection that is not closing.
fn kickable(conn: &Connection) -> bool {
    !conn.is_closing() && conn.session().state() == crate::session::State::Registered
}
