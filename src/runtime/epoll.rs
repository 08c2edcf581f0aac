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

use super::lifecycle;
use super::Shared;
use crate::metrics::WorkerMetrics;
use crate::session::{deadline, CloseReason, IdAllocator, Timer};
use crate::timer_wheel::{TimerKey, TimerWheel};
use ixn_proto::connection::{Action, ConnConfig, Connection, Notice, Progress, TimerChange};
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
    again: Vec<(usize, u32, bool)>,
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
) {
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
            for (i, generation, closed) in std::mem::take(&mut self.again) {
                if self.live(i, generation) {
                    self.readable(i, closed);
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
                let closed = e.is_read_closed() || e.is_error();
                if (e.is_readable() || closed) && self.live(i, generation) {
                    self.readable(i, closed);
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
                .bans_active(self.shared.admission.bans_active(now));
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
                let (shared, metrics) = (&self.shared, &self.metrics);
                let opened = lifecycle::open(shared, metrics, now, peer, kind, &self.cfg, counted);
                let Some((conn, t)) = opened else {
                    return;
                };
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
        if self.refusing >= lifecycle::REFUSALS_LINGERING_MAX {
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
        lifecycle::apply_timer(&mut self.wheel, &mut c.timer, i, c.generation, change);
    }

    /// Reads connection `i` until its socket runs dry, it closes, or its turn ends.
    /// `closed`: the event also said the peer closed or reset, which no later edge will
    /// repeat, so a short read does not end the turn: the read that sees the end comes.
    fn readable(&mut self, i: usize, closed: bool) {
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
                    if !self.live(i, generation) || (n < RECV_BUF && !closed) {
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
        self.again.push((i, generation, closed));
    }

    /// Hands `n` received bytes (in the receive buffer) to the connection; its answers go
    /// to `scratch`.
    fn feed(&mut self, i: usize, n: usize) -> Option<Progress> {
        let c = &mut self.conns[i];
        let mut answers = std::mem::take(&mut self.scratch);
        answers.clear();
        let cx = lifecycle::cx!(self);
        let data = &self.recv[..n];
        let p = lifecycle::feed(
            cx,
            i,
            c.generation,
            &mut c.conn,
            &mut c.pending,
            data,
            self.now,
            &mut answers,
        );
        self.scratch = answers;
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
        // Until the socket says `WouldBlock`: an end of stream that arrived while the
        // answers waited was an edge this read has not seen.
        self.readable(i, true);
    }

    /// Closes connection `i` now: frees its slot, its timers, its ids and names, and its
    /// descriptor (which leaves the epoll set with it).
    fn close(&mut self, i: usize, reason: CloseReason) {
        let mut c = self.conns.remove(i);
        for k in [c.timer, c.write_timer].into_iter().flatten() {
            self.wheel.cancel(k);
        }
        let cx = lifecycle::cx!(self);
        let refusing = &mut self.refusing;
        lifecycle::gone(
            cx,
            i,
            c.generation,
            &mut c.conn,
            c.counted,
            reason,
            refusing,
        );
    }

    fn expire(&mut self, now: Instant) {
        for (i, p) in lifecycle::expire(&mut self.wheel, &mut self.conns, now, &self.metrics) {
            self.carry_out(i, p);
        }
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
        self.accept_again.clear();
        self.accept_paused.clear();
        for (l, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
            lifecycle::refuse_new_connections(l);
        }
        self.shared.health.listening.fetch_sub(1, Ordering::AcqRel);
    }

    /// One tick of the drain: when the spread begins, unregistered connections close and
    /// registered ones queue; then the slice due gets EventError 11. Whether the worker
    /// may stop.
    fn drain_step(&mut self, d: &mut super::Drain<(usize, u32)>, now: Instant) -> bool {
        let hurry = self.shared.hurry.load(Ordering::Acquire);
        for i in lifecycle::drain_tick(d, now, hurry, &self.conns, &self.metrics) {
            self.notify(i, now, Notice::Drain);
        }
        d.done(now, self.conns.is_empty(), self.shared.config.drain_timeout)
    }

    /// Tells one connection of the drain or a kick.
    fn notify(&mut self, i: usize, now: Instant, notice: Notice) {
        let c = &mut self.conns[i];
        if c.conn.is_closing() {
            return;
        }
        let mut answers = std::mem::take(&mut self.scratch);
        answers.clear();
        let cx = lifecycle::cx!(self);
        let p = lifecycle::tell(cx, i, c.generation, &mut c.conn, now, notice, &mut answers);
        self.scratch = answers;
        self.carry_out(i, p);
    }

    /// The admin API's commands (and replaced names' kicks), taken at each tick.
    fn commands(&mut self, now: Instant) {
        for k in lifecycle::commands(&self.shared, self.index, &self.conns) {
            self.notify(k.slot, now, Notice::Kick(k.kick));
        }
    }
}

impl lifecycle::Slot for Conn {
    fn generation(&self) -> u32 {
        self.generation
    }
    fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }
    fn timers(&mut self) -> (&mut Option<TimerKey>, &mut Option<TimerKey>) {
        (&mut self.timer, &mut self.write_timer)
    }
    fn writing(&self) -> bool {
        !self.out.is_empty()
    }
    fn gone(&self) -> bool {
        false
    }
    fn core(&self) -> &Connection {
        &self.conn
    }
}
