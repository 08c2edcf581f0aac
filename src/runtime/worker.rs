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
//! No connection owns a timer future. Session deadlines and write stalls live in the
//! worker's [`TimerWheel`]; one tick task advances it, and for every connection that
//! expired it updates the session, marks the connection and shuts its socket down, which
//! completes the connection's pending read so its task cleans up. Everything expired in a
//! tick is handled in that one pass.

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
use crate::metrics::WorkerMetrics;
use crate::protocol::{encode_event_error, ErrorCode};
use crate::session::{
    Close, CloseReason, Ctx, IdAllocator, Input, Registration, Session, TimerAction, TimerKind,
};
use crate::timer_wheel::TimerWheel;

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

#[derive(Debug, Clone, Copy)]
enum Deadline {
    Session(TimerKind),
    WriteStall,
}

struct Worker {
    shared: Arc<Shared>,
    conns: RefCell<Conns>,
    wheel: RefCell<TimerWheel<(ConnHandle, Deadline)>>,
    ids: RefCell<IdAllocator>,
    metrics: WorkerMetrics,
    expired: RefCell<Vec<(ConnHandle, Deadline)>>,
    overload_frame: Rc<[u8]>,
    pool: RefCell<Vec<Buffers>>,
    /// Accepted connections waiting for a task.
    queue: RefCell<std::collections::VecDeque<(ConnHandle, TcpStream)>>,
    /// Tasks waiting for a connection, and their wake-up.
    idle_tasks: std::cell::Cell<usize>,
    wake: tokio::sync::Notify,
}

/// Entry point of a worker thread.
pub(super) fn thread_main(
    index: usize,
    listeners: Vec<(std::net::TcpListener, bool)>,
    shared: Arc<Shared>,
    core: Option<core_affinity::CoreId>,
) {
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(worker = index, "could not pin to core {}", core.id);
        }
    }
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

async fn run(index: usize, listeners: Vec<(std::net::TcpListener, bool)>, shared: Arc<Shared>) {
    let origin = Instant::now();
    let tick = shared.config.timer_tick;
    let mut overload = Vec::new();
    encode_event_error(&mut overload, 0, ErrorCode::ServerOverloaded);
    let w = Rc::new(Worker {
        conns: RefCell::new(Conns::default()),
        wheel: RefCell::new(TimerWheel::new(origin, tick, WHEEL_SLOTS)),
        ids: RefCell::new(IdAllocator::new(
            index as u32 + 1,
            shared.config.workers as u32,
        )),
        metrics: WorkerMetrics::new(),
        expired: RefCell::new(Vec::new()),
        overload_frame: overload.into(),
        pool: RefCell::new(Vec::new()),
        queue: RefCell::new(std::collections::VecDeque::with_capacity(ACCEPT_BATCH)),
        idle_tasks: std::cell::Cell::new(0),
        wake: tokio::sync::Notify::new(),
        shared,
    });
    // Duplicates of the listening sockets: shutting one down wakes the pending accept.
    let mut stoppers = Vec::new();
    for (l, proxy) in listeners {
        match l.try_clone() {
            Ok(dup) => stoppers.push(dup),
            Err(e) => tracing::warn!("cannot duplicate a listener: {e}"),
        }
        tokio_uring::spawn(accept_loop(w.clone(), l, proxy));
    }
    w.shared.listening_workers.fetch_add(1, Ordering::AcqRel);

    let mut every = tokio::time::interval_at(tokio::time::Instant::from_std(origin + tick), tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut drain_started: Option<Instant> = None;
    loop {
        every.tick().await;
        let now = Instant::now();
        w.expire(now);
        if drain_started.is_none() && w.shared.draining.load(Ordering::Acquire) {
            for s in stoppers.drain(..) {
                let _ = SockRef::from(&s).shutdown(std::net::Shutdown::Both);
            }
            w.shared.listening_workers.fetch_sub(1, Ordering::AcqRel);
            w.start_drain();
            drain_started = Some(now);
        }
        w.metrics.flush();
        if let Some(t) = drain_started {
            if w.conns.borrow().is_empty() || now.duration_since(t) >= w.shared.config.drain_timeout
            {
                break;
            }
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
async fn accept_loop(w: Rc<Worker>, listener: std::net::TcpListener, proxy: bool) {
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
        if w.shared.draining.load(Ordering::Acquire) {
            return;
        }
        let mut exhausted = None;
        for _ in 0..ACCEPT_BATCH {
            match ready.get_inner().accept() {
                Ok((s, peer)) => {
                    backoff = Duration::from_millis(5);
                    w.admit(TcpStream::from_std(s), peer, proxy, &mut last_warn);
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
        proxy: bool,
        last_warn: &mut Option<Instant>,
    ) {
        let w = self;
        let limit = w.shared.config.max_connections;
        if w.shared.active.fetch_add(1, Ordering::AcqRel) >= limit {
            w.shared.active.fetch_sub(1, Ordering::AcqRel);
            w.metrics.overloaded();
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                tracing::warn!(
                    limit,
                    "connection limit reached; refusing with ServerOverloaded"
                );
                *last_warn = Some(Instant::now());
            }
            tokio_uring::spawn(refuse(stream, w.overload_frame.clone()));
            return;
        }
        w.metrics.accepted();
        if proxy {
            let ip = peer.ip().to_canonical();
            if !w
                .shared
                .config
                .proxy_protocol_trusted
                .iter()
                .any(|n| n.contains(&ip))
            {
                // Only the balancers may speak first with a PROXY header.
                tracing::debug!(%peer, "refused: not a trusted PROXY protocol peer");
                w.shared.active.fetch_sub(1, Ordering::AcqRel);
                w.metrics.closed(CloseReason::ProxyProtocol, false, 0);
                return;
            }
        }
        let now = Instant::now();
        let (session, arm) = Session::accept(now, w.shared.config.session);
        let mut conns = w.conns.borrow_mut();
        let h = conns.insert(session, stream.as_raw_fd(), peer.ip(), now);
        if let Some(c) = conns.get_mut(h) {
            c.awaiting_proxy = proxy;
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

async fn refuse(stream: TcpStream, frame: Rc<[u8]>) {
    let (_res, _buf) = stream.write_all(frame.to_vec()).await;
}

/// shutdown(2) on a connection's socket, to complete the task's pending read or write.
fn shutdown(fd: RawFd, how: std::net::Shutdown) {
    // SAFETY: `fd` comes from a live slab entry; the task that owns the socket removes
    // that entry (`Worker::finish`) before it drops the socket, and this runs on the same
    // thread as that task, so the descriptor is open and still that socket here.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&fd).shutdown(how);
}

fn apply_timer(
    wheel: &mut TimerWheel<(ConnHandle, Deadline)>,
    c: &mut Conn,
    h: ConnHandle,
    action: TimerAction,
) {
    match action {
        TimerAction::Keep => {}
        TimerAction::Cancel => {
            if let Some(k) = c.timer.take() {
                wheel.cancel(k);
            }
        }
        TimerAction::Arm(kind, at) => {
            if let Some(k) = c.timer.take() {
                wheel.cancel(k);
            }
            c.timer = Some(wheel.insert(at, (h, Deadline::Session(kind))));
        }
    }
}

/// What a connection's task does after a read.
enum Step {
    Close(CloseReason),
    Write {
        consumed: usize,
        close_after: Option<CloseReason>,
        registered: bool,
    },
}

impl Worker {
    /// Advances the wheel and closes every connection whose deadline passed, in one pass.
    fn expire(&self, now: Instant) {
        let mut expired = self.expired.borrow_mut();
        self.wheel.borrow_mut().advance(now, |e| expired.push(e));
        if expired.is_empty() {
            return;
        }
        let registry = self.shared.registry.load();
        let mut ids = self.ids.borrow_mut();
        let mut conns = self.conns.borrow_mut();
        let (mut n_reg, mut n_err, mut n_stall) = (0u64, 0u64, 0u64);
        for (h, d) in expired.drain(..) {
            let Some(c) = conns.get_mut(h) else { continue };
            let reason = match d {
                Deadline::Session(kind) => {
                    c.timer = None;
                    let mut ctx = Ctx {
                        registry: &registry,
                        peer: c.peer,
                        now,
                        ids: &mut ids,
                        config: self.shared.config.session,
                    };
                    let mut none = Vec::new();
                    let o = c.session.handle(Input::Deadline(kind), &mut ctx, &mut none);
                    if o.close != Close::Now {
                        continue;
                    }
                    match kind {
                        TimerKind::Registration => n_reg += 1,
                        TimerKind::ErrorDisconnect => n_err += 1,
                    }
                    c.session
                        .close_reason()
                        .unwrap_or(CloseReason::RegistrationTimeout)
                }
                Deadline::WriteStall => {
                    c.write_timer = None;
                    n_stall += 1;
                    CloseReason::WriteStall
                }
            };
            c.signal = Some(Signal::Close(reason));
            // Completes the task's pending read or write; the task then frees the slot.
            shutdown(c.fd, std::net::Shutdown::Both);
        }
        self.metrics.expired(Some(TimerKind::Registration), n_reg);
        self.metrics
            .expired(Some(TimerKind::ErrorDisconnect), n_err);
        self.metrics.expired(None, n_stall);
        self.metrics.bulk_drop((n_reg + n_err + n_stall) as usize);
    }

    /// Marks every connection for drain and wakes its task.
    fn start_drain(&self) {
        let mut conns = self.conns.borrow_mut();
        for h in conns.handles() {
            if let Some(c) = conns.get_mut(h) {
                if c.signal.is_none() {
                    c.signal = Some(Signal::Drain);
                    shutdown(c.fd, std::net::Shutdown::Read);
                }
            }
        }
    }

    /// Handles what one read brought: a signal from the worker, end of stream, or bytes.
    fn step(&self, h: ConnHandle, buf: &[u8], n: usize, out: &mut Vec<u8>) -> Step {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(h) else {
            return Step::Close(CloseReason::Peer);
        };
        let registry = self.shared.registry.load();
        let mut ids = self.ids.borrow_mut();
        let mut wheel = self.wheel.borrow_mut();
        let now = Instant::now();
        let mut ctx = Ctx {
            registry: &registry,
            peer: c.peer,
            now,
            ids: &mut ids,
            config: self.shared.config.session,
        };
        match c.signal.take() {
            Some(Signal::Close(r)) => return Step::Close(r),
            Some(Signal::Drain) => {
                let o = c.session.handle(Input::Drain, &mut ctx, out);
                self.metrics.output(&o);
                apply_timer(&mut wheel, c, h, o.timer);
                return if o.close == Close::AfterWrite {
                    Step::Write {
                        consumed: 0,
                        close_after: Some(CloseReason::Drain),
                        registered: false,
                    }
                } else {
                    Step::Close(CloseReason::Drain)
                };
            }
            None => {}
        }
        if n == 0 {
            return Step::Close(CloseReason::Peer);
        }
        self.metrics.bytes_in(n);
        let mut skip = 0;
        if c.awaiting_proxy {
            match crate::proxy::parse(buf) {
                Ok(None) => {
                    return Step::Write {
                        consumed: 0,
                        close_after: None,
                        registered: false,
                    }
                }
                Ok(Some(header)) => {
                    c.awaiting_proxy = false;
                    if let Some(src) = header.source {
                        c.peer = src.ip();
                        ctx.peer = src.ip();
                    }
                    skip = header.len;
                }
                Err(e) => {
                    tracing::debug!(peer = %c.peer, "refused: {e}");
                    return Step::Close(CloseReason::ProxyProtocol);
                }
            }
        }
        let buf = &buf[skip..];
        let logical_before = c.session.logical_clients();
        let mut registered = false;
        let metrics = &self.metrics;
        let peer = c.peer;
        let fed = c
            .session
            .feed(buf, self.shared.config.max_frame_len, &mut ctx, out, |o| {
                metrics.output(o);
                match o.registration {
                    Some(Ok(Registration { logical: false, .. })) => registered = true,
                    Some(Err(code)) => {
                        tracing::debug!(%peer, code = code.code(), error = code.name(), "registration rejected");
                    }
                    _ => {}
                }
            });
        self.metrics
            .logical_delta(c.session.logical_clients() as i64 - logical_before as i64);
        apply_timer(&mut wheel, c, h, fed.timer);
        Step::Write {
            consumed: skip + fed.consumed,
            close_after: (fed.close != Close::No)
                .then(|| c.session.close_reason().unwrap_or(CloseReason::Peer)),
            registered,
        }
    }

    fn arm_write_timer(&self, h: ConnHandle) {
        let mut conns = self.conns.borrow_mut();
        if let Some(c) = conns.get_mut(h) {
            let at = Instant::now() + self.shared.config.write_timeout;
            c.write_timer = Some(
                self.wheel
                    .borrow_mut()
                    .insert(at, (h, Deadline::WriteStall)),
            );
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
        self.conns.borrow_mut().get_mut(h).map(|c| c.accepted_at)
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

    /// Frees the slot, disarms its timers and counts the close.
    fn finish(&self, h: ConnHandle, reason: CloseReason) {
        let Some(c) = self.conns.borrow_mut().remove(h) else {
            return;
        };
        let mut wheel = self.wheel.borrow_mut();
        for k in [c.timer, c.write_timer].into_iter().flatten() {
            wheel.cancel(k);
        }
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.closed(
            reason,
            c.session.proxy_client_id().is_some(),
            c.session.logical_clients(),
        );
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
        let (consumed, close_after, registered) = match w.step(h, &b.read, n, &mut b.out) {
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
            // Fast path: answers are small and the socket's send buffer nearly always has
            // room, so try one non-blocking send(2) first; it saves an SQE, a completion and
            // a task wake-up per answer. Only what it could not take goes through the ring,
            // under the write-stall deadline.
            let sent = match send_now(stream, &b.out) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    return match w.write_done(h) {
                        Some(Signal::Close(r)) => r,
                        _ => CloseReason::Peer,
                    }
                }
            };
            if sent < bytes {
                b.out.drain(..sent);
                w.arm_write_timer(h);
                let (res, out) = write_all(stream, std::mem::take(&mut b.out)).await;
                b.out = out;
                let signal = w.write_done(h);
                if res.is_err() {
                    return match signal {
                        Some(Signal::Close(r)) => r,
                        _ => CloseReason::Peer,
                    };
                }
            }
            b.out.clear();
            w.metrics.bytes_out(bytes);
            if registered {
                if let Some(t) = w.accepted_at(h) {
                    w.metrics.registration_duration(t.elapsed());
                }
            }
            if b.out.capacity() > OUT_KEEP {
                b.out = Vec::with_capacity(OUT_BUF);
            }
        }
        if let Some(r) = close_after {
            return r;
        }
        if b.read.is_empty() && b.read.capacity() > READ_BUF {
            b.read = Vec::with_capacity(READ_BUF);
        }
    }
}
