//! The epoll engine (`--engine epoll`, and `auto` where io_uring is refused): each worker
//! thread runs a `mio` poll loop over its own `SO_REUSEPORT` listeners and connections,
//! driving the same sans-IO [`Connection`] as the io_uring engines.
//!
//! It exists for hosts that refuse io_uring: container runtimes whose default seccomp
//! profile blocks it, `kernel.io_uring_disabled`, old kernels. Nothing protocol lives
//! here; every decision comes from `Connection`, so the integration suite runs on it
//! unchanged (`scripts/test` runs the socket suites once per engine).
//!
//! # Readiness and buffers
//!
//! Sockets are registered edge-triggered. A readable connection is read until the kernel
//! says `WouldBlock` or a read comes back short (the socket is empty then, and later bytes
//! are a new edge: one `read(2)` per request instead of two), into one receive buffer per
//! worker ([`RECV_BUF`] bytes), handed to
//! [`Connection::on_bytes`] in place; only the tail of a frame split across reads is
//! copied, into the connection's `pending`. To stay fair, one connection gets at most
//! [`READS_PER_EVENT`] reads per wake-up; the rest waits in the worker's `again` list.
//! Answers are encoded into one scratch buffer per worker and written with one
//! non-blocking `write(2)`; what the socket cannot take moves to the connection's `out`,
//! the socket is watched for writability under the write-stall deadline, and the peer is
//! not read from until `out` drains (a peer that does not read stops being read from).
//!
//! # Time
//!
//! The poll waits at most until the next timer tick, when deadlines expire, the drain
//! advances, the admin API's commands are served and metrics are flushed. The clock is
//! read once per wake-up.
//!
//! # Closing
//!
//! Close once written shuts down the sending side after the last answer and keeps
//! reading (and discarding) until the peer's end of stream or the linger deadline; a hard
//! close drops the socket. A closed descriptor leaves the epoll set by itself, so a close
//! is one `close(2)`.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::Shared;
use crate::admin::Command;
use crate::metrics::WorkerMetrics;
use crate::session::{deadline, CloseReason, IdAllocator, Timer};
use crate::timer_wheel::{TimerKey, TimerWheel};
use ixn_proto::connection::{Action, ConnConfig, Connection, Env, Notice, Progress, TimerChange};
use ixn_proto::tls::ListenerKind;

/// Bytes of the worker's receive buffer: a registration request is about 60 bytes; a
/// TLS record at most 16 KiB.
const RECV_BUF: usize = 16 * 1024;
/// Reads one connection gets per wake-up before the others' turn.
const READS_PER_EVENT: usize = 16;
/// Accepts one listener gets per wake-up before the connections' turn.
const ACCEPTS_PER_EVENT: usize = 256;
const WHEEL_SLOTS: usize = 4096;
/// Listener tokens count down from here; connection tokens are `generation << 32 | slot`.
const LISTENER_BASE: usize = usize::MAX;

/// Generations wrap below 2^31, so a connection's token never reaches the listeners'.
const GENERATION_MASK: u32 = 0x7fff_ffff;

fn token(i: usize, generation: u32) -> Token {
    Token((generation as usize) << 32 | i)
}

fn token_parts(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

/// One connection: the sans-IO core and what this engine needs to drive it.
#[derive(Debug)]
struct Conn {
    generation: u32,
    conn: Connection,
    stream: TcpStream,
    timer: Option<TimerKey>,
    write_timer: Option<TimerKey>,
    /// Input not yet consumed (a frame split across reads).
    pending: Vec<u8>,
    /// Answers the socket has not taken yet.
    out: Vec<u8>,
    /// Close once `out` is written.
    close_after_write: bool,
    /// Our FIN is out (the linger runs).
    half_closed: bool,
    /// Counted in `Shared::active` (refusals are not).
    counted: bool,
}

struct Worker {
    index: u32,
    shared: Arc<Shared>,
    cfg: ConnConfig,
    ids: IdAllocator,
    wheel: TimerWheel<(usize, u32, Timer)>,
    conns: Slab<Conn>,
    generation: u32,
    metrics: WorkerMetrics,
    listeners: Vec<(TcpListener, ListenerKind)>,
    /// Listeners whose turn ended before they ran dry: accepted from at the next wake-up.
    accept_again: Vec<usize>,
    /// Listeners whose accept failed for lack of descriptors: retried at the next tick.
    accept_paused: Vec<usize>,
    accepting: bool,
    refusing: usize,
    last_warn: Option<Instant>,
    now: Instant,
    /// Connections whose turn ended before their socket ran dry: read at the next wake-up.
    again: Vec<(usize, u32)>,
    recv: Box<[u8]>,
    /// The buffer answers are written into.
    scratch: Vec<u8>,
    poll: Poll,
}

/// Runs one worker until its drain ends.
pub(super) fn thread_main(
    index: usize,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    shared: Arc<Shared>,
    core: Option<core_affinity::CoreId>,
) {
    if let Some(core) = core {
        let _ = core_affinity::set_for_current(core);
    }
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(worker = index, "cannot create the epoll instance: {e}");
            return;
        }
    };
    let mut mio_listeners = Vec::with_capacity(listeners.len());
    for (i, (l, kind)) in listeners.into_iter().enumerate() {
        let mut l = TcpListener::from_std(l);
        if let Err(e) =
            poll.registry()
                .register(&mut l, Token(LISTENER_BASE - i), Interest::READABLE)
        {
            tracing::error!(worker = index, "cannot watch a listener: {e}");
            return;
        }
        mio_listeners.push((l, kind));
    }
    let origin = Instant::now();
    let mut w = Worker {
        index: index as u32,
        cfg: shared.config.conn_config(),
        ids: IdAllocator::with_last(
            index as u32 + 1,
            shared.config.workers as u32,
            super::debug::id_space_last(),
        ),
        wheel: TimerWheel::new(origin, shared.config.timer_tick, WHEEL_SLOTS),
        conns: Slab::new(),
        generation: 0,
        metrics: WorkerMetrics::new(),
        accept_again: (0..mio_listeners.len()).collect(),
        accept_paused: Vec::new(),
        listeners: mio_listeners,
        accepting: true,
        refusing: 0,
        last_warn: None,
        now: origin,
        again: Vec::new(),
        recv: vec![0; RECV_BUF].into_boxed_slice(),
        scratch: Vec::with_capacity(256),
        poll,
        shared,
    };
    w.shared.health.listening.fetch_add(1, Ordering::AcqRel);
    w.run();
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let tick = self.shared.config.timer_tick;
        let mut next_tick = Instant::now() + tick;
        let mut drain: Option<super::Drain<(usize, u32)>> = None;
        loop {
            let busy = !self.again.is_empty() || !self.accept_again.is_empty();
            let wait = if busy {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("epoll_wait: {e}");
                    return;
                }
            }
            self.now = Instant::now();
            for l in std::mem::take(&mut self.accept_again) {
                self.accept(l);
            }
            for (i, generation) in std::mem::take(&mut self.again) {
                if self.live(i, generation) {
                    self.readable(i);
                }
            }
            for e in events.iter() {
                let t = e.token();
                if t.0 > LISTENER_BASE - self.listeners.len() {
                    self.accept(LISTENER_BASE - t.0);
                    continue;
                }
                let (i, generation) = token_parts(t);
                if e.is_writable() && self.live(i, generation) {
                    self.writable(i);
                }
                if (e.is_readable() || e.is_read_closed() || e.is_error())
                    && self.live(i, generation)
                {
                    self.readable(i);
                }
            }
            if self.now < next_tick {
                continue;
            }
            next_tick = (next_tick + tick).max(self.now);
            let now = self.now;
            self.expire(now);
            self.accept_again.append(&mut self.accept_paused);
            let draining = self.shared.health.draining.load(Ordering::Acquire);
            if drain.is_none() && draining {
                self.stop_accepting();
                drain = Some(super::Drain::new(now, &self.shared.config));
            }
            if let Some(d) = drain.as_mut() {
                if self.drain_step(d, now) {
                    break;
                }
            }
            self.commands(now);
            self.metrics
                .bans_active(self.shared.admission.bans_active());
            self.metrics.names_held(self.shared.names.len());
            self.metrics.flush();
        }
        self.metrics.flush();
    }

    fn live(&self, i: usize, generation: u32) -> bool {
        self.conns
            .get(i)
            .is_some_and(|c| c.generation == generation)
    }

    /// Accepts from listener `l` until it runs dry (or its turn ends).
    fn accept(&mut self, l: usize) {
        if !self.accepting {
            return;
        }
        for _ in 0..ACCEPTS_PER_EVENT {
            let (listener, kind) = &self.listeners[l];
            let kind = *kind;
            match listener.accept() {
                Ok((stream, peer)) => {
                    // Read again: this accept may come well after the wake-up, and a
                    // deadline must never start before the connection existed.
                    self.now = Instant::now();
                    self.accepted(stream, peer, kind);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.metrics.accept_error();
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        // Out of descriptors: accept again at the next tick, not at once.
                        if self
                            .last_warn
                            .is_none_or(|t| self.now.duration_since(t) >= Duration::from_secs(5))
                        {
                            tracing::warn!(
                                "accept failed ({e}); backing off until descriptors free up"
                            );
                            self.last_warn = Some(self.now);
                        }
                        self.accept_paused.push(l);
                        return;
                    }
                }
            }
        }
        self.accept_again.push(l);
    }

    fn accepted(&mut self, stream: TcpStream, peer: std::net::SocketAddr, kind: ListenerKind) {
        super::debug::maybe_panic("accept");
        let now = self.now;
        match self.shared.admit(peer, kind.proxy(), now) {
            super::Admission::Untrusted => {
                tracing::debug!(%peer, "refused: not a trusted PROXY protocol peer");
                self.metrics.refused_untrusted(kind);
            }
            super::Admission::Refused(r) if kind.tls() => {
                // No EventError can go out before a handshake: closed without a byte.
                self.metrics.refused(kind, r, false);
            }
            super::Admission::Refused(r) => self.refuse(stream, peer, now, kind, r),
            super::Admission::Admitted { counted } => {
                let Some((mut conn, t)) = self.shared.open(now, peer, kind, &self.cfg) else {
                    self.metrics.accept_error();
                    self.shared.active.fetch_sub(1, Ordering::AcqRel);
                    if counted {
                        self.shared.admission.released(peer.ip());
                    }
                    return;
                };
                if counted {
                    conn.mark_admitted();
                }
                self.metrics.accepted(kind);
                // Bytes that came with the handshake are reported by the first wait.
                if let Some(i) = self.insert(conn, stream, true) {
                    self.apply_timer(i, t);
                }
            }
        }
    }

    /// Refused at accept: its EventError (10 or 16), closed once written (lingering
    /// refusals are capped as in the other engines; beyond the cap it is sent and the
    /// socket closed).
    fn refuse(
        &mut self,
        mut stream: TcpStream,
        peer: std::net::SocketAddr,
        now: Instant,
        kind: ListenerKind,
        r: crate::admission::Refusal,
    ) {
        self.metrics.refused(kind, r, true);
        let mut out = Vec::with_capacity(64);
        let (conn, p) = Connection::refuse(now, peer.ip(), r.code(), &self.cfg, &mut out);
        if self.refusing >= super::worker::REFUSALS_LINGERING_MAX {
            let _ = stream.write(&out);
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        self.refusing += 1;
        if let Some(i) = self.insert(conn, stream, false) {
            self.scratch.clear();
            self.scratch.extend_from_slice(&out);
            self.carry_out(i, p);
        } else {
            self.refusing -= 1;
        }
    }

    fn insert(&mut self, conn: Connection, mut stream: TcpStream, counted: bool) -> Option<usize> {
        self.generation = self.generation.wrapping_add(1) & GENERATION_MASK;
        let entry = self.conns.vacant_entry();
        let i = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token(i, self.generation),
            Interest::READABLE,
        ) {
            tracing::warn!("cannot watch a connection: {e}");
            if counted {
                self.shared.active.fetch_sub(1, Ordering::AcqRel);
                self.shared.release(&conn);
            }
            return None;
        }
        entry.insert(Conn {
            generation: self.generation,
            conn,
            stream,
            timer: None,
            write_timer: None,
            pending: Vec::new(),
            out: Vec::new(),
            close_after_write: false,
            half_closed: false,
            counted,
        });
        Some(i)
    }

    fn apply_timer(&mut self, i: usize, change: TimerChange) {
        let c = &mut self.conns[i];
        match change {
            TimerChange::Keep => {}
            TimerChange::Cancel => {
                if let Some(k) = c.timer.take() {
                    self.wheel.cancel(k);
                }
            }
            TimerChange::Arm(t, at) => {
                if let Some(k) = c.timer.take() {
                    self.wheel.cancel(k);
                }
                c.timer = Some(self.wheel.insert(at, (i, c.generation, t)));
            }
        }
    }

    /// Reads connection `i` until its socket runs dry, it closes, or its turn ends.
    fn readable(&mut self, i: usize) {
        let generation = self.conns[i].generation;
        for _ in 0..READS_PER_EVENT {
            let c = &mut self.conns[i];
            if !c.out.is_empty() {
                // Not reading while its answers wait: `writable` reads once they drain.
                return;
            }
            match c.stream.read(&mut self.recv) {
                Ok(0) => {
                    let r = c.conn.on_eof();
                    return self.close(i, r);
                }
                Ok(n) => {
                    self.metrics.bytes_in(n);
                    if let Some(p) = self.feed(i, n) {
                        self.carry_out(i, p);
                    }
                    if !self.live(i, generation) || n < RECV_BUF {
                        // A short read emptied the socket: what arrives later is a new edge,
                        // so the read that would only say `WouldBlock` is saved.
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    let r = c.conn.on_eof();
                    return self.close(i, r);
                }
            }
        }
        self.again.push((i, generation));
    }

    /// Hands `n` received bytes (in the receive buffer) to the connection, in place: only
    /// the tail of a frame split across reads is copied, into `pending`.
    fn feed(&mut self, i: usize, n: usize) -> Option<Progress> {
        let data = &self.recv[..n];
        let registry = self.shared.registry.load();
        let now = self.now;
        let c = &mut self.conns[i];
        super::debug::maybe_panic("connection");
        let mut answers = std::mem::take(&mut self.scratch);
        answers.clear();
        let metrics = &self.metrics;
        let shared = &self.shared;
        let gate = |ip| shared.gate(ip, now, metrics);
        let mut env = Env {
            registry: &registry,
            ids: &mut self.ids,
            config: &self.cfg,
            gate: Some(&gate),
            names: Some(shared.claims(key(self.index, i, c.generation))),
        };
        let failures = std::cell::Cell::new(0);
        let each = |o: &crate::session::Output| {
            metrics.output(o);
            if crate::admission::is_failure(o) {
                failures.set(failures.get() + 1);
            }
        };
        let p = if c.pending.is_empty() {
            let p = c.conn.on_bytes(now, data, &mut env, &mut answers, each);
            c.pending.extend_from_slice(&data[p.consumed..]);
            p
        } else {
            c.pending.extend_from_slice(data);
            let p = c
                .conn
                .on_bytes(now, &c.pending, &mut env, &mut answers, each);
            c.pending.drain(..p.consumed);
            p
        };
        if failures.get() > 0 {
            shared.failed_registrations(c.conn.peer(), failures.get(), now);
        }
        if c.pending.is_empty() && c.pending.capacity() > 0 {
            c.pending = Vec::new();
        }
        self.scratch = answers;
        self.metrics.logical_delta(p.logical_delta);
        if let Some(h) = p.handshake {
            self.metrics.handshake(h);
        }
        if p.registered {
            self.metrics
                .registration_duration(now.saturating_duration_since(c.conn.accepted_at()));
        }
        Some(p)
    }

    /// Carries out a connection's progress: its timer, its answers (in `scratch`), a
    /// close.
    fn carry_out(&mut self, i: usize, p: Progress) {
        self.apply_timer(i, p.timer);
        match p.action {
            Action::Continue => self.write(i),
            Action::CloseAfterWrite => {
                self.conns[i].close_after_write = true;
                self.conns[i].pending = Vec::new();
                self.write(i);
            }
            Action::CloseNow(r) => self.close(i, r),
        }
    }

    /// Writes the answers in `scratch` (behind any the socket has not taken yet).
    fn write(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.out.is_empty() {
            // Waiting for writability: the new answers queue behind.
            c.out.extend_from_slice(&self.scratch);
            self.scratch.clear();
            return;
        }
        if !self.scratch.is_empty() {
            let written = match c.stream.write(&self.scratch) {
                Ok(n) => Some(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Some(0),
                Err(_) => None,
            };
            let Some(n) = written else {
                self.scratch.clear();
                return self.close(i, CloseReason::Peer);
            };
            self.metrics.bytes_out(n);
            if n < self.scratch.len() {
                c.out.extend_from_slice(&self.scratch[n..]);
                self.scratch.clear();
                let at = deadline(self.now, self.shared.config.write_timeout);
                c.write_timer = Some(self.wheel.insert(at, (i, c.generation, Timer::WriteStall)));
                let t = token(i, c.generation);
                let both = Interest::READABLE | Interest::WRITABLE;
                if self
                    .poll
                    .registry()
                    .reregister(&mut c.stream, t, both)
                    .is_err()
                {
                    self.close(i, CloseReason::Peer);
                }
                return;
            }
            self.scratch.clear();
        }
        self.flushed(i);
    }

    /// Everything is written: a close once written sends its FIN and starts the linger.
    fn flushed(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.close_after_write && !c.half_closed {
            c.half_closed = true;
            let _ = c.stream.shutdown(Shutdown::Write);
            let t = c.conn.on_flushed(self.now, &self.cfg);
            self.apply_timer(i, t);
        }
    }

    /// The socket takes more: writes the rest of `out`, then reads what waited.
    fn writable(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let mut failed = false;
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(n) => {
                    self.metrics.bytes_out(n);
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            c.out = Vec::new();
            if let Some(k) = c.write_timer.take() {
                self.wheel.cancel(k);
            }
            let t = token(i, c.generation);
            failed = self
                .poll
                .registry()
                .reregister(&mut c.stream, t, Interest::READABLE)
                .is_err();
        }
        if failed {
            return self.close(i, CloseReason::Peer);
        }
        self.flushed(i);
        self.readable(i);
    }

    /// Closes connection `i` now: frees its slot, its timers, its ids and names, and its
    /// descriptor (which leaves the epoll set with it).
    fn close(&mut self, i: usize, reason: CloseReason) {
        let mut c = self.conns.remove(i);
        self.shared.release(&c.conn);
        for k in [c.timer, c.write_timer].into_iter().flatten() {
            self.wheel.cancel(k);
        }
        let was_registered = c.conn.session().proxy_client_id().is_some();
        let logical = c.conn.session().logical_clients();
        let names = self.shared.claims(key(self.index, i, c.generation));
        c.conn.release(&mut self.ids, Some(names));
        if c.counted {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            self.metrics.closed(reason, was_registered, logical);
        } else {
            self.refusing -= 1;
        }
    }

    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.wheel.advance(now, |e| expired.push(e));
        let mut counts = [0u64; Timer::ALL.len()];
        for (i, generation, timer) in expired {
            let Some(c) = self.conns.get_mut(i).filter(|c| c.generation == generation) else {
                continue;
            };
            if timer == Timer::WriteStall {
                c.write_timer = None;
            } else {
                c.timer = None;
            }
            let p = c.conn.on_deadline(timer);
            if p.action != Action::Continue {
                counts[timer.index()] += 1;
            }
            if p.action == Action::CloseAfterWrite && !c.out.is_empty() {
                // Its answers are not draining: the peer is not reading.
                let r = c.conn.on_eof();
                self.close(i, r);
                continue;
            }
            self.carry_out(i, p);
        }
        self.metrics.tick_expired(&counts);
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
        self.accept_again.clear();
        self.accept_paused.clear();
        for (l, _) in &mut self.listeners {
            // Connections that arrive now wait in the backlog and are reset at exit.
            let _ = self.poll.registry().deregister(l);
        }
        self.shared.health.listening.fetch_sub(1, Ordering::AcqRel);
    }

    /// One tick of the drain: when the spread begins, unregistered connections close and
    /// registered ones queue; then the slice due gets EventError 11. Whether the worker
    /// may stop.
    fn drain_step(&mut self, d: &mut super::Drain<(usize, u32)>, now: Instant) -> bool {
        let hurry = self.shared.hurry.load(Ordering::Acquire);
        if d.ready(now, hurry) {
            let mut registered = Vec::new();
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for i in keys {
                let c = &self.conns[i];
                if c.conn.session().state() == crate::session::State::Registered {
                    registered.push((i, c.generation));
                } else {
                    self.notify(i, now, Notice::Drain);
                }
            }
            self.metrics.drain_remaining(registered.len() as i64);
            d.begin(registered);
        }
        let due = d.due(now, hurry);
        self.metrics.drain_remaining(-(due.len() as i64));
        for (i, generation) in due {
            if self.live(i, generation) {
                self.notify(i, now, Notice::Drain);
            }
        }
        d.done(now, self.conns.is_empty(), self.shared.config.drain_timeout)
    }

    /// Tells one connection of the drain or a kick.
    fn notify(&mut self, i: usize, now: Instant, notice: Notice) {
        let registry = self.shared.registry.load();
        let c = &mut self.conns[i];
        if c.conn.is_closing() {
            return;
        }
        let mut answers = std::mem::take(&mut self.scratch);
        answers.clear();
        let mut env = Env {
            registry: &registry,
            ids: &mut self.ids,
            config: &self.cfg,
            gate: None,
            names: Some(self.shared.claims(key(self.index, i, c.generation))),
        };
        let metrics = &self.metrics;
        let p = c
            .conn
            .on_notice(now, notice, &mut env, &mut answers, |o| metrics.output(o));
        self.scratch = answers;
        self.carry_out(i, p);
    }

    /// The admin API's commands (and replaced names' kicks), taken at each tick.
    fn commands(&mut self, now: Instant) {
        for command in self.shared.inboxes.take(self.index as usize) {
            match command {
                Command::List { query, done } => {
                    let w = self.index;
                    let conns = self
                        .conns
                        .iter()
                        .map(|(i, c)| (key(w, i, c.generation), &c.conn));
                    let _ = done.send(crate::admin::list(conns, &query, self.shared.origin.0));
                }
                Command::Kick { conn, kick, done } => {
                    let i = conn.slot as usize;
                    let live = self.conns.get(i).is_some_and(|c| {
                        c.generation == conn.generation
                            && !c.conn.is_closing()
                            && c.conn.session().state() == crate::session::State::Registered
                    });
                    if live {
                        self.notify(i, now, Notice::Kick(kick));
                    }
                    if let Some(done) = done {
                        let _ = done.send(live);
                    }
                }
            }
        }
    }
}

/// The process-wide key of this worker's connection in slot `i`.
fn key(worker: u32, i: usize, generation: u32) -> ixn_proto::names::ConnKey {
    ixn_proto::names::ConnKey {
        worker,
        slot: i as u32,
        generation,
    }
}
