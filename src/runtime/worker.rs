//! One worker: a tokio-uring event loop with its accept loops, connection tasks and timer tick.
//!
//! # Buffers at the io_uring boundary
//!
//! io_uring reads into memory the kernel owns until the operation completes, so every
//! read hands its buffer over by value and gets it back with the result
//! (`(res, buf) = stream.read(buf).await`). Each connection starts with a
//! [`READ_BUF`]-byte `Vec`: big enough for any registration request (≈60 bytes) and a
//! handful of pipelined frames, small enough that an idle connection's pending read pins
//! little memory. A frame that does not fit grows the buffer (doubling, never beyond
//! `max_frame_len`, so a hostile length prefix cannot make us allocate more than the limit);
//! once the bytes are consumed the buffer shrinks back. Answers are encoded into one
//! per-connection `Vec` that is written with a single `write_all` per read, so pipelined
//! frames cost one write. The buffer is bounded by the answers to one read's frames; a peer
//! that stops reading stalls only its own task, and the write-timeout deadline in the
//! wheel closes it.
//!
//! # Deadlines
//!
//! No connection owns a timer future. Session deadlines, write stalls, frame deadlines and
//! close lingers live in the worker's [`TimerWheel`]; one tick task advances it and handles
//! everything expired in that tick in one pass.
//!
//! # Closing once written (IXN1.md section 6)
//!
//! Closing a socket that still has unread input makes the kernel send RST, which throws
//! away answers still in our send buffer. So a connection that has ever been answered
//! closes in two steps: once every answer is written, `shutdown(SHUT_WR)` sends our FIN
//! behind them, and the connection *lingers*: its task keeps reading and discarding until
//! the peer closes (end of stream) or `close_linger` passes in the wheel. Only then is the
//! socket closed, with nothing unread, or with the peer gone. A connection never answered
//! (a silent or trickling unregistered one) is closed at once: it has nothing to lose.
//!
//! The worker never cancels a pending read to reach a task. A hard close shuts the socket
//! down both ways, which completes the read with end of stream; a graceful close only
//! shuts down our sending side (the task's pending read then sees the peer's bytes or its
//! FIN, which it now discards). The drain's EventError 11 to an idle registered connection
//! is sent by the worker itself with one non-blocking `send(2)`, then the same linger.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::SockRef;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use tokio_uring::buf::BoundedBuf;

use tokio_uring::net::TcpStream;

use super::conns::{Conn, ConnHandle, Conns, Signal};
use super::Shared;
use crate::admin::Command;
use crate::metrics::WorkerMetrics;
use crate::protocol::{encode_event_error, ErrorCode};
use crate::session::{deadline, CloseReason, IdAllocator, Timer};
use crate::timer_wheel::TimerWheel;
use ixn_proto::connection::{Action, ConnConfig, Env, Notice, Progress, TimerChange};
use ixn_proto::tls::ListenerKind;

/// Initial (and idle) read buffer per connection.
pub const READ_BUF: usize = 128;
/// Slots of the timer wheel: 4096 × 100 ms ticks = one revolution every 409.6 s.
const WHEEL_SLOTS: usize = 4096;
/// Output buffer capacity kept between writes; larger ones are released.
const OUT_KEEP: usize = 4096;
/// Initial output buffer: one answer (EventAck 26 bytes, EventError at most 60); pipelined
/// batches grow it. Small, because an idle registered connection keeps it.
const OUT_BUF: usize = 64;
/// Buffer pairs a worker keeps for reuse; beyond this, closed connections free theirs.
const POOL_MAX: usize = 4096;
/// Idle connection tasks a worker keeps for reuse.
const IDLE_TASKS_MAX: usize = 1024;
/// Refused connections (EventError 10) a worker lets linger at once. Refusals are what a
/// flood produces, and each lingering one holds a descriptor for up to `close_linger`
/// (the descriptor budget reserves them, see `runtime::fd_budget`); beyond this many, a
/// refusal discards the input already there and closes at once.
pub(super) const REFUSALS_LINGERING_MAX: usize = 16;

struct Worker {
    /// This worker's number (the `worker` of its connections' `ConnKey`s).
    index: u32,
    shared: Arc<Shared>,
    conns: RefCell<Conns>,
    wheel: RefCell<TimerWheel<(ConnHandle, Timer)>>,
    /// What every connection of this worker shares.
    cfg: ConnConfig,
    ids: RefCell<IdAllocator>,
    metrics: WorkerMetrics,
    expired: RefCell<Vec<(ConnHandle, Timer)>>,
    pool: RefCell<Vec<Buffers>>,
    /// Accepted connections waiting for a task.
    queue: RefCell<std::collections::VecDeque<(ConnHandle, TcpStream)>>,
    /// Tasks waiting for a connection, and their wake-up.
    idle_tasks: std::cell::Cell<usize>,
    wake: tokio::sync::Notify,
    /// Refused connections lingering now.
    refusing: std::cell::Cell<usize>,
}

/// Entry point of a worker thread.
pub(super) fn thread_main(
    index: usize,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    shared: Arc<Shared>,
) {
    let mut builder = tokio_uring::builder();
    builder
        .entries(1024)
        .uring_builder(&super::ring_builder(shared.config.ring_setup));
    let rt = match tokio_uring::Runtime::new(&builder) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, "cannot create the io_uring runtime: {e}");
            return;
        }
    };
    rt.block_on(run(index, listeners, shared));
}

async fn run(
    index: usize,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    shared: Arc<Shared>,
) {
    let origin = Instant::now();
    let tick = shared.config.timer_tick;
    let w = Rc::new(Worker {
        index: index as u32,
        conns: RefCell::new(Conns::default()),
        wheel: RefCell::new(TimerWheel::new(origin, tick, WHEEL_SLOTS)),
        cfg: shared.config.conn_config(),
        ids: RefCell::new(IdAllocator::with_last(
            index as u32 + 1,
            shared.config.workers as u32,
            super::debug::id_space_last(),
        )),
        metrics: WorkerMetrics::new(),
        expired: RefCell::new(Vec::new()),
        pool: RefCell::new(Vec::new()),
        queue: RefCell::new(std::collections::VecDeque::with_capacity(ACCEPT_BATCH)),
        idle_tasks: std::cell::Cell::new(0),
        wake: tokio::sync::Notify::new(),
        refusing: std::cell::Cell::new(0),
        shared,
    });
    // Duplicates of the listening sockets: shutting one down wakes the pending accept.
    let mut stoppers = Vec::new();
    for (l, kind) in listeners {
        match l.try_clone() {
            Ok(dup) => stoppers.push(dup),
            Err(e) => tracing::warn!("cannot duplicate a listener: {e}"),
        }
        tokio_uring::spawn(accept_loop(w.clone(), l, kind));
    }
    w.shared.health.listening.fetch_add(1, Ordering::AcqRel);

    let mut every = tokio::time::interval_at(tokio::time::Instant::from_std(origin + tick), tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut drain: Option<super::Drain<ConnHandle>> = None;
    loop {
        every.tick().await;
        let now = Instant::now();
        w.expire(now);
        if drain.is_none() && w.shared.health.draining.load(Ordering::Acquire) {
            for s in stoppers.drain(..) {
                let _ = SockRef::from(&s).shutdown(std::net::Shutdown::Both);
            }
            w.shared.health.listening.fetch_sub(1, Ordering::AcqRel);
            drain = Some(super::Drain::new(now, &w.shared.config));
        }
        let stop = drain.as_mut().is_some_and(|d| w.drain_tick(d, now));
        w.commands(now);
        w.metrics
            .bans_active(w.shared.admission.bans_active(Instant::now()));
        w.metrics.names_held(w.shared.names.len());
        w.metrics.flush();
        if stop {
            break;
        }
    }
    w.metrics.flush();
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Most connections accepted per readiness event before other tasks get a turn.
const ACCEPT_BATCH: usize = 64;

/// Accepts with plain non-blocking `accept(2)` whenever the listener is readable (tokio's
/// epoll reactor, which the tokio-uring runtime also runs): one syscall per connection,
/// whole backlogs per wake-up, and no allocation. tokio-uring's accept allocates per call
/// and has no multishot form.
async fn accept_loop(w: Rc<Worker>, listener: std::net::TcpListener, kind: ListenerKind) {
    // SAFETY: the AsyncFd owns the `std::net::TcpListener`, whose descriptor is open from
    // here until that listener is dropped with the AsyncFd, and never changes.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    };
    let listener = match registered {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot watch a listener: {e}");
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    let mut last_warn: Option<Instant> = None;
    loop {
        let Ok(mut ready) = listener.readable().await else {
            return;
        };
        if w.shared.health.draining.load(Ordering::Acquire) {
            return;
        }
        let mut exhausted = None;
        for _ in 0..ACCEPT_BATCH {
            match ready.get_inner().accept() {
                Ok((s, peer)) => {
                    backoff = Duration::from_millis(5);
                    super::debug::maybe_panic("accept");
                    w.admit(TcpStream::from_std(s), peer, kind, &mut last_warn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(e) => {
                    w.metrics.accept_error();
                    if is_fd_exhaustion(&e) {
                        exhausted = Some(e);
                        break;
                    }
                    tracing::debug!("accept failed: {e}");
                }
            }
        }
        drop(ready);
        if let Some(e) = exhausted {
            // Out of descriptors: wait for some to free up instead of spinning.
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                tracing::warn!("accept failed ({e}); backing off until descriptors free up");
                last_warn = Some(Instant::now());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        } else {
            tokio::task::yield_now().await;
        }
    }
}

impl Worker {
    /// Takes an accepted connection: refuses it over the limit, else registers its slot,
    /// arms its registration deadline and spawns its task.
    fn admit(
        self: &Rc<Self>,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        kind: ListenerKind,
        last_warn: &mut Option<Instant>,
    ) {
        let w = self;
        let now = Instant::now();
        let counted = match w.shared.admit(peer, kind.proxy(), now) {
            super::Admission::Untrusted => {
                tracing::debug!(%peer, "refused: not a trusted PROXY protocol peer");
                w.metrics.refused_untrusted(kind);
                return;
            }
            super::Admission::Refused(r) if kind.tls() => {
                // No EventError can go out before a handshake: closed without a byte.
                w.metrics.refused(kind, r, false);
                return;
            }
            super::Admission::Refused(r) => {
                w.refuse_at_accept(stream, r, kind, last_warn);
                return;
            }
            super::Admission::Admitted { counted } => counted,
        };
        let Some((conn, arm)) =
            super::glue::open(&w.shared, &w.metrics, now, peer, kind, &w.cfg, counted)
        else {
            return;
        };
        let mut conns = w.conns.borrow_mut();
        let h = conns.insert(conn, stream.as_raw_fd());
        if let Some(c) = conns.get_mut(h) {
            apply_timer(&mut w.wheel.borrow_mut(), c, h, arm);
        }
        drop(conns);
        w.queue.borrow_mut().push_back((h, stream));
        // Every queued connection claims its own task: an idle one (woken) or a new one. A
        // task serves its connection until it closes, so none may be counted twice.
        let idle = w.idle_tasks.get();
        if idle > 0 {
            w.idle_tasks.set(idle - 1);
            w.wake.notify_one();
        } else {
            tokio_uring::spawn(serve_loop(w.clone()));
        }
    }
}

/// Refuses a connection over the limit: EventError{0, 10}, closed once written. The
/// connection is not in the slab (it is over the limit), so its linger is its own timer.
impl Worker {
    /// A connection refused at accept: counted, warned about at the limit (at most every
    /// 5 s), and answered with its EventError by its own small task.
    fn refuse_at_accept(
        self: &Rc<Self>,
        stream: TcpStream,
        r: crate::admission::Refusal,
        kind: ListenerKind,
        last_warn: &mut Option<Instant>,
    ) {
        self.metrics.refused(kind, r, true);
        if r == crate::admission::Refusal::Limit
            && last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            tracing::warn!(
                limit = self.shared.max_clients.load(Ordering::Relaxed),
                "connection limit reached; refusing with ServerOverloaded"
            );
            *last_warn = Some(Instant::now());
        }
        let linger = self.refusing.get() < REFUSALS_LINGERING_MAX;
        if linger {
            self.refusing.set(self.refusing.get() + 1);
        }
        tokio_uring::spawn(refuse(self.clone(), stream, linger, r.code()));
    }
}

async fn refuse(w: Rc<Worker>, stream: TcpStream, linger: bool, code: ErrorCode) {
    let mut frame = Vec::with_capacity(32);
    encode_event_error(&mut frame, 0, code);
    let frame = &frame;
    // Into an empty send buffer: one send(2) always takes 60 bytes.
    let sent = send_now(&stream, frame).unwrap_or(0);
    w.metrics.bytes_out(sent);
    let fd = stream.as_raw_fd();
    if sent == frame.len() {
        shutdown(fd, std::net::Shutdown::Write);
        if linger {
            let until = tokio::time::sleep(w.shared.config.close_linger);
            tokio::pin!(until);
            let mut buf = Vec::with_capacity(READ_BUF);
            loop {
                tokio::select! {
                    (res, b) = stream.read(buf) => {
                        buf = b;
                        buf.clear();
                        if !matches!(res, Ok(n) if n > 0) {
                            break;
                        }
                    }
                    () = &mut until => {
                        // The read in flight completes once the socket is shut down.
                        shutdown(fd, std::net::Shutdown::Both);
                        break;
                    }
                }
            }
        } else {
            discard_pending(fd);
        }
    }
    if linger {
        w.refusing.set(w.refusing.get() - 1);
    }
}

/// Reads and drops whatever input is already queued, without waiting, so that closing the
/// socket sends FIN rather than RST.
fn discard_pending(fd: RawFd) {
    // SAFETY: `fd` is the descriptor of a stream the caller owns and keeps open for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&fd);
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    for _ in 0..64 {
        match sock.recv_with_flags(&mut scratch, libc::MSG_DONTWAIT) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// shutdown(2) on a connection's socket, to complete the task's pending read or write.
fn shutdown(fd: RawFd, how: std::net::Shutdown) {
    // SAFETY: `fd` comes from a live slab entry; the task that owns the socket removes
    // that entry (`Worker::finish`) before it drops the socket, and this runs on the same
    // thread as that task, so the descriptor is open and still that socket here.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&fd).shutdown(how);
}

/// One non-blocking send(2) on a live slab entry's socket.
fn send_fd(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: as in `shutdown`: the descriptor of a live slab entry, on the owning thread.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Carries out a connection's timer change on the wheel.
fn apply_timer(
    wheel: &mut TimerWheel<(ConnHandle, Timer)>,
    c: &mut Conn,
    h: ConnHandle,
    change: TimerChange,
) {
    match change {
        TimerChange::Keep => {}
        TimerChange::Cancel => {
            if let Some(k) = c.timer.take() {
                wheel.cancel(k);
            }
        }
        TimerChange::Arm(timer, at) => {
            if let Some(k) = c.timer.take() {
                wheel.cancel(k);
            }
            c.timer = Some(wheel.insert(at, (h, timer)));
        }
    }
}

/// What a connection's task does after a read.
enum Step {
    /// Close now.
    Close(CloseReason),
    /// Drop `consumed` input bytes, write what the connection answered; then, if
    /// `close_after`, close once written.
    Write {
        consumed: usize,
        close_after: bool,
        registered: bool,
    },
}

impl Step {
    fn from_progress(p: &Progress) -> Step {
        match p.action {
            Action::CloseNow(r) => Step::Close(r),
            Action::Continue | Action::CloseAfterWrite => Step::Write {
                consumed: p.consumed,
                close_after: p.action == Action::CloseAfterWrite,
                registered: p.registered,
            },
        }
    }
}

impl Worker {
    /// Advances the wheel and hands every expired deadline to its connection, in one pass.
    fn expire(&self, now: Instant) {
        let mut expired = self.expired.borrow_mut();
        self.wheel.borrow_mut().advance(now, |e| expired.push(e));
        if expired.is_empty() {
            return;
        }
        let mut conns = self.conns.borrow_mut();
        let mut wheel = self.wheel.borrow_mut();
        let mut counts = [0u64; Timer::ALL.len()];
        for (h, timer) in expired.drain(..) {
            let Some(c) = conns.get_mut(h) else { continue };
            if timer == Timer::WriteStall {
                c.write_timer = None;
            } else {
                c.timer = None;
            }
            let p = c.conn.on_deadline(timer);
            if p.action != Action::Continue {
                counts[timer.index()] += 1;
            }
            self.carry_out(&mut wheel, c, h, &p, now);
        }
        self.metrics.tick_expired(&counts);
    }

    /// Carries out, from the worker (a tick or the drain), what a connection decided while
    /// its task waits in a read: any answer is in the socket already.
    fn carry_out(
        &self,
        wheel: &mut TimerWheel<(ConnHandle, Timer)>,
        c: &mut Conn,
        h: ConnHandle,
        p: &Progress,
        now: Instant,
    ) {
        apply_timer(wheel, c, h, p.timer);
        match p.action {
            Action::Continue => {}
            Action::CloseNow(r) => close_hard(c, r),
            // With a write in flight the peer is not reading: close at once instead.
            Action::CloseAfterWrite if c.write_timer.is_some() => close_hard(c, c.conn.on_eof()),
            Action::CloseAfterWrite => self.half_close(wheel, c, h, now),
        }
    }

    /// Every answer is written: our FIN goes out behind them and the linger starts (the
    /// task's pending read sees the peer's bytes, now dropped, or its end of stream).
    fn half_close(
        &self,
        wheel: &mut TimerWheel<(ConnHandle, Timer)>,
        c: &mut Conn,
        h: ConnHandle,
        now: Instant,
    ) {
        shutdown(c.fd, std::net::Shutdown::Write);
        let t = c.conn.on_flushed(now, &self.cfg);
        apply_timer(wheel, c, h, t);
    }

    /// The task, once its closing answers are written: close once written.
    fn begin_linger(&self, h: ConnHandle) {
        let mut conns = self.conns.borrow_mut();
        if let Some(c) = conns.get_mut(h) {
            if c.signal.is_none() {
                self.half_close(&mut self.wheel.borrow_mut(), c, h, Instant::now());
            }
        }
    }

    /// One tick of the drain (SIGTERM): when the spread begins, unregistered connections
    /// are told at once and registered ones queue; then the slice due is told. Whether the
    /// worker may stop.
    fn drain_tick(&self, d: &mut super::Drain<ConnHandle>, now: Instant) -> bool {
        let hurry = self.shared.hurry.load(Ordering::Acquire);
        if d.ready(now, hurry) {
            let mut registered = Vec::new();
            let mut others = Vec::new();
            let mut conns = self.conns.borrow_mut();
            for h in conns.handles() {
                let Some(c) = conns.get_mut(h) else { continue };
                if c.conn.session().state() == crate::session::State::Registered {
                    registered.push(h);
                } else {
                    others.push(h);
                }
            }
            drop(conns);
            self.notify(&others, now, Notice::Drain);
            self.metrics.drain_remaining(registered.len() as i64);
            d.begin(registered);
        }
        let due = d.due(now, hurry);
        self.metrics.drain_remaining(-(due.len() as i64));
        self.notify(&due, now, Notice::Drain);
        d.done(
            now,
            self.conns.borrow().is_empty(),
            self.shared.config.drain_timeout,
        )
    }

    /// Tells these connections of the drain or a kick; a registered one's EventError (11
    /// or 15) is sent from here with one non-blocking send(2) while its task waits in a
    /// read.
    fn notify(&self, handles: &[ConnHandle], now: Instant, notice: Notice) {
        let registry = self.shared.registry.load();
        let mut ids = self.ids.borrow_mut();
        let mut conns = self.conns.borrow_mut();
        let mut wheel = self.wheel.borrow_mut();
        let mut answer = Vec::with_capacity(64);
        for &h in handles {
            let Some(c) = conns.get_mut(h) else { continue };
            if c.signal.is_some() || c.conn.is_closing() {
                continue;
            }
            if c.write_timer.is_some() {
                // Its task answers once the write in flight completes.
                c.signal = Some(Signal::Tell(notice));
                continue;
            }
            let mut env = Env {
                registry: &registry,
                ids: &mut ids,
                config: &self.cfg,
                gate: None,
                names: Some(self.shared.claims(h.key(self.index))),
            };
            answer.clear();
            let p = c.conn.on_notice(now, notice, &mut env, &mut answer, |o| {
                self.metrics.output(o)
            });
            if !answer.is_empty() {
                if matches!(send_fd(c.fd, &answer), Ok(n) if n == answer.len()) {
                    self.metrics.bytes_out(answer.len());
                } else {
                    close_hard(c, c.conn.on_eof());
                    continue;
                }
            }
            self.carry_out(&mut wheel, c, h, &p, now);
        }
    }

    /// The admin API's commands (and replaced names' kicks), taken at each tick.
    fn commands(&self, now: Instant) {
        for command in self.shared.inboxes.take(self.index as usize) {
            match command {
                Command::List { query, done } => {
                    let conns = self.conns.borrow();
                    let live = conns
                        .iter()
                        .filter(|(_, c)| c.signal.is_none())
                        .map(|(h, c)| (h.key(self.index), &c.conn));
                    let _ = done.send(crate::admin::list(live, &query, self.shared.origin.0));
                }
                Command::Kick { conn, kick, done } => {
                    let h = ConnHandle::from_key(conn);
                    let live = self.conns.borrow_mut().get_mut(h).is_some_and(|c| {
                        c.signal.is_none()
                            && !c.conn.is_closing()
                            && c.conn.session().state() == crate::session::State::Registered
                    });
                    if live {
                        self.notify(&[h], now, Notice::Kick(kick));
                    }
                    if let Some(done) = done {
                        let _ = done.send(live);
                    }
                }
            }
        }
    }

    /// The signal the worker left for a connection's task, if any.
    fn take_signal(&self, h: ConnHandle) -> Option<Signal> {
        let mut conns = self.conns.borrow_mut();
        match conns.get_mut(h) {
            Some(c) => c.signal.take(),
            None => Some(Signal::Close(CloseReason::Peer)),
        }
    }

    /// The drain or a kick, for a connection whose write was in flight when it came.
    fn tell_step(&self, h: ConnHandle, notice: Notice, out: &mut Vec<u8>) -> Step {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(h) else {
            return Step::Close(CloseReason::Peer);
        };
        let registry = self.shared.registry.load();
        let mut env = Env {
            registry: &registry,
            ids: &mut self.ids.borrow_mut(),
            config: &self.cfg,
            gate: None,
            names: Some(self.shared.claims(h.key(self.index))),
        };
        let p = c
            .conn
            .on_notice(Instant::now(), notice, &mut env, out, |o| {
                self.metrics.output(o)
            });
        apply_timer(&mut self.wheel.borrow_mut(), c, h, p.timer);
        Step::from_progress(&p)
    }

    /// Glue between a read and the connection: a signal from the worker, end of stream, or
    /// bytes for [`Connection::on_bytes`].
    fn step(&self, h: ConnHandle, buf: &[u8], n: usize, out: &mut Vec<u8>) -> Step {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(h) else {
            return Step::Close(CloseReason::Peer);
        };
        match c.signal.take() {
            Some(Signal::Close(r)) => return Step::Close(r),
            Some(Signal::Tell(notice)) => {
                drop(conns);
                return self.tell_step(h, notice, out);
            }
            None => {}
        }
        if n == 0 {
            return Step::Close(c.conn.on_eof());
        }
        super::debug::maybe_panic("connection");
        self.metrics.bytes_in(n);
        let registry = self.shared.registry.load();
        let metrics = &self.metrics;
        let now = Instant::now();
        let gate = |ip| self.shared.gate(ip, now, metrics);
        let mut env = Env {
            registry: &registry,
            ids: &mut self.ids.borrow_mut(),
            config: &self.cfg,
            gate: Some(&gate),
            names: Some(self.shared.claims(h.key(self.index))),
        };
        let peer = c.conn.peer();
        let mut failures = 0;
        let p = c.conn.on_bytes(now, buf, &mut env, out, |o| {
            metrics.output(o);
            if let Some(Err(code)) = o.registration {
                tracing::debug!(%peer, code = code.code(), error = code.name(), "registration rejected");
            }
            if crate::admission::is_failure(o) {
                failures += 1;
            }
        });
        if failures > 0 {
            self.shared
                .failed_registrations(c.conn.peer(), failures, now);
        }
        if p.action == Action::CloseNow(CloseReason::ProxyProtocol) {
            tracing::debug!(%peer, "refused: missing or invalid PROXY protocol header");
        }
        self.metrics.logical_delta(p.logical_delta);
        if let Some(h) = p.handshake {
            self.metrics.handshake(h);
        }
        apply_timer(&mut self.wheel.borrow_mut(), c, h, p.timer);
        Step::from_progress(&p)
    }

    fn arm_write_timer(&self, h: ConnHandle) {
        let mut conns = self.conns.borrow_mut();
        if let Some(c) = conns.get_mut(h) {
            let at = deadline(Instant::now(), self.shared.config.write_timeout);
            c.write_timer = Some(self.wheel.borrow_mut().insert(at, (h, Timer::WriteStall)));
        }
    }

    /// Cancels the write timer; returns the connection's signal if the worker set one.
    fn write_done(&self, h: ConnHandle) -> Option<Signal> {
        let mut conns = self.conns.borrow_mut();
        let c = conns.get_mut(h)?;
        if let Some(k) = c.write_timer.take() {
            self.wheel.borrow_mut().cancel(k);
        }
        c.signal
    }

    fn accepted_at(&self, h: ConnHandle) -> Option<Instant> {
        self.conns
            .borrow_mut()
            .get_mut(h)
            .map(|c| c.conn.accepted_at())
    }

    /// A connection's buffers: from the pool when one is free (no allocation), else new.
    fn buffers(&self) -> Buffers {
        self.pool.borrow_mut().pop().unwrap_or_else(|| Buffers {
            read: Vec::with_capacity(READ_BUF),
            out: Vec::with_capacity(OUT_BUF),
        })
    }

    /// Returns a closed connection's buffers to the pool, at their standard sizes.
    fn recycle(&self, mut b: Buffers) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() >= POOL_MAX {
            return;
        }
        b.read.clear();
        b.out.clear();
        if b.read.capacity() != READ_BUF {
            b.read = Vec::with_capacity(READ_BUF);
        }
        if b.out.capacity() > OUT_KEEP || b.out.capacity() < OUT_BUF {
            b.out = Vec::with_capacity(OUT_BUF);
        }
        pool.push(b);
    }

    /// Frees the slot, disarms its timers, gives back its ProxyClientIds and counts the close.
    fn finish(&self, h: ConnHandle, reason: CloseReason) {
        let Some(mut c) = self.conns.borrow_mut().remove(h) else {
            return;
        };
        let was_registered = c.conn.session().proxy_client_id().is_some();
        let logical = c.conn.session().logical_clients();
        let names = self.shared.claims(h.key(self.index));
        c.conn.release(&mut self.ids.borrow_mut(), Some(names));
        self.shared.release(&c.conn);
        let mut wheel = self.wheel.borrow_mut();
        for k in [c.timer, c.write_timer].into_iter().flatten() {
            wheel.cancel(k);
        }
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.closed(reason, was_registered, logical);
    }
}

/// One non-blocking send(2) of `buf` on the connection's socket.
fn send_now(stream: &TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: the descriptor belongs to `stream`, which is borrowed for this whole call,
    // so it is open and refers to this socket until we return.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Writes all of `buf`. Our own loop rather than `TcpStream::write_all`, whose future is
/// twice the size: this state lives in every connection's task, idle or not.
async fn write_all(stream: &TcpStream, mut buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
    let mut done = 0;
    while done < buf.len() {
        let (res, slice) = stream.write(buf.slice(done..)).submit().await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Err(std::io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => done += n,
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// A connection task: serves queued connections one after another, then waits for more.
/// Tasks are reused, so an accepted connection costs no task allocation once the worker
/// has as many tasks as it has concurrent connections; beyond [`IDLE_TASKS_MAX`] idle
/// tasks, they end.
async fn serve_loop(w: Rc<Worker>) {
    loop {
        let next = w.queue.borrow_mut().pop_front();
        match next {
            Some((h, stream)) => serve(&w, h, stream).await,
            None => {
                if w.idle_tasks.get() >= IDLE_TASKS_MAX {
                    return;
                }
                // Counted as idle until `admit` claims (and wakes) it.
                w.idle_tasks.set(w.idle_tasks.get() + 1);
                w.wake.notified().await;
            }
        }
    }
}

async fn serve(w: &Worker, h: ConnHandle, stream: TcpStream) {
    let mut bufs = w.buffers();
    let reason = connection(w, h, &stream, &mut bufs).await;
    // The slot goes first: once it is gone no tick can reach the socket's descriptor.
    w.finish(h, reason);
    w.recycle(bufs);
    drop(stream);
}

/// A connection's read and write buffers, taken from and returned to the worker's pool.
#[derive(Debug, Default)]
struct Buffers {
    read: Vec<u8>,
    out: Vec<u8>,
}

async fn connection(w: &Worker, h: ConnHandle, stream: &TcpStream, b: &mut Buffers) -> CloseReason {
    let max = w.shared.config.max_frame_len;
    loop {
        let step = match w.take_signal(h) {
            Some(Signal::Close(r)) => return r,
            Some(Signal::Tell(notice)) => w.tell_step(h, notice, &mut b.out),
            None => {
                if b.read.len() == b.read.capacity() {
                    // The decoder asked for more of a frame it knows is at most `max` bytes.
                    let (len, cap) = (b.read.len(), b.read.capacity());
                    let want = (cap * 2).clamp(len + 1, max.max(len + 1));
                    b.read.reserve_exact(want - len);
                }
                let len = b.read.len();
                let (res, slice) = stream.read(std::mem::take(&mut b.read).slice(len..)).await;
                b.read = slice.into_inner();
                let n = res.unwrap_or(0);
                // The bytes are part of the buffer now; `step` sees the whole unconsumed input.
                w.step(h, &b.read, n, &mut b.out)
            }
        };
        let (consumed, close_after, registered) = match step {
            Step::Close(r) => return r,
            Step::Write {
                consumed,
                close_after,
                registered,
            } => (consumed, close_after, registered),
        };
        b.read.drain(..consumed);
        if !b.out.is_empty() {
            let bytes = b.out.len();
            match send_fast(w, h, stream, &mut b.out) {
                Err(r) => return r,
                Ok(true) => {}
                Ok(false) => {
                    // The rest goes through the ring, under the write-stall deadline.
                    // Awaited here rather than in a helper: this state is part of every
                    // connection's task, idle or not.
                    w.arm_write_timer(h);
                    let (res, out) = write_all(stream, std::mem::take(&mut b.out)).await;
                    b.out = out;
                    let signal = w.write_done(h);
                    if res.is_err() {
                        return close_reason_of(signal);
                    }
                }
            }
            w.written(h, bytes, registered, &mut b.out);
        }
        if close_after {
            // Close once written: no frame after the closing one is read or answered.
            b.read.clear();
            w.begin_linger(h);
            continue;
        }
        if b.read.is_empty() && b.read.capacity() > READ_BUF {
            b.read = Vec::with_capacity(READ_BUF);
        }
    }
}

/// Why a connection whose write failed closes: the worker's reason if it shut the socket
/// down, else the peer's.
fn close_reason_of(signal: Option<Signal>) -> CloseReason {
    match signal {
        Some(Signal::Close(r)) => r,
        _ => CloseReason::Peer,
    }
}

/// Fast path: answers are small and the socket's send buffer nearly always has room, so
/// one non-blocking send(2) is tried first; it saves an SQE, a completion and a task
/// wake-up per answer. `Ok(true)`: all sent; `Ok(false)`: the rest is left in `out` for the
/// ring; `Err`: the socket failed.
fn send_fast(
    w: &Worker,
    h: ConnHandle,
    stream: &TcpStream,
    out: &mut Vec<u8>,
) -> Result<bool, CloseReason> {
    let sent = match send_now(stream, out) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(close_reason_of(w.write_done(h))),
    };
    if sent == out.len() {
        return Ok(true);
    }
    out.drain(..sent);
    Ok(false)
}

impl Worker {
    /// Answers written: counted, the registration timed, the buffer kept small.
    fn written(&self, h: ConnHandle, bytes: usize, registered: bool, out: &mut Vec<u8>) {
        out.clear();
        self.metrics.bytes_out(bytes);
        if registered {
            if let Some(t) = self.accepted_at(h) {
                self.metrics.registration_duration(t.elapsed());
            }
        }
        if out.capacity() > OUT_KEEP {
            *out = Vec::with_capacity(OUT_BUF);
        }
    }
}

/// A hard close: the task's pending read completes (end of stream) and it closes.
fn close_hard(c: &mut Conn, reason: CloseReason) {
    c.signal = Some(Signal::Close(reason));
    shutdown(c.fd, std::net::Shutdown::Both);
}
