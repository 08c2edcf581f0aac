//! The io_uring engine (`--engine uring`, and `auto` wherever the kernel and the seccomp
//! profile allow what it needs; once "engine v2", beside a retired v1): each worker thread
//! drives its own io_uring on the `io-uring` crate and sleeps in `io_uring_enter`, with no
//! async runtime at all.
//!
//! # Ring and buffers
//!
//! One ring per worker, set up with `SINGLE_ISSUER | DEFER_TASKRUN` (completions run only
//! when this thread enters the kernel to wait for them, in one batch). Each listener has a
//! multishot accept. Each connection has one multishot receive into a provided-buffer ring
//! shared by the worker ([`BUFS`] buffers of [`BUF_LEN`] bytes): an idle connection owns
//! no read buffer and no task, only its slab entry. A received buffer is handed to
//! [`Connection::on_bytes`] in place and given back at once; only the tail of a frame split
//! across receives is copied, into the connection's `pending` bytes. `ENOBUFS` (every
//! buffer in use) ends a multishot receive; it is armed again.
//!
//! Answers go out with one non-blocking `send(2)`; what it cannot take is sent through the
//! ring (`IORING_OP_SEND` from the connection's `out`, which stays untouched until the
//! completion), under the write-stall deadline, and the connection's receive is cancelled
//! meanwhile, so a peer that does not read stops being read from.
//!
//! Answers are encoded into one scratch buffer per worker and sent from it, so a
//! registration allocates nothing; the buffer moves to a connection only while the ring
//! sends for it.
//!
//! # Time
//!
//! The tick is a timeout operation in the ring, so the worker waits in `io_uring_enter`
//! for one completion with no timeout of its own, and deadlines, metrics flushes and the
//! drain flag are served from the same loop. The clock is read once per wake-up. The
//! admin API's commands (and kicks of replaced names) are taken at each tick, so they wait
//! at most one tick.
//!
//! # Completion queue
//!
//! Four times the submission queue ([`CQ_ENTRIES`]); completions beyond the queue wait in the kernel's overflow
//! list and are flushed as the worker reaps; a lost one (the kernel had no memory for the
//! list) is logged as an error.
//!
//! # Closing
//!
//! A descriptor is closed only once no operation on it is in flight: a hard close shuts
//! the socket down (which completes the multishot receive) and closes when that final
//! completion arrives; a close once written shuts down our sending side and keeps
//! receiving (and discarding) until the peer's end of stream or the linger deadline.
//! Closes are operations in the ring; shutdowns are `shutdown(2)` calls, because the ring
//! runs a shutdown late, on another thread, by descriptor number (see `shutdown`).

use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::lifecycle;
use super::Shared;
use crate::metrics::WorkerMetrics;
use crate::session::{deadline, CloseReason, IdAllocator, Timer};
use crate::timer_wheel::{TimerKey, TimerWheel};
use ixn_proto::connection::{Action, ConnConfig, Connection, Notice, Progress, TimerChange};
use ixn_proto::tls::ListenerKind;

/// Provided buffers per worker.
const BUFS: u16 = 1024;
/// Bytes per provided buffer: a registration request is about 60 bytes.
const BUF_LEN: usize = 512;
const BGID: u16 = 0;
/// Completion kinds, in the top two bits of `user_data`.
const RECV: u64 = 0;
const SEND: u64 = 1;
const ACCEPT: u64 = 2;
const IGNORE: u64 = 3;
const WHEEL_SLOTS: usize = 4096;
/// Submission queue entries: a full queue is submitted and pushing goes on, so this only
/// sets how many operations one `io_uring_enter` can carry.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries. Completions that find it full wait in the kernel's overflow
/// list (`IORING_FEAT_NODROP`) and are flushed as the worker reaps; only if the kernel
/// cannot allocate that list's entry is one lost, which the worker reports.
const CQ_ENTRIES: u32 = 16384;
/// The index of the tick's timeout among `IGNORE` completions.
const TICK: usize = 1;

fn ud(kind: u64, index: usize, generation: u32) -> u64 {
    kind << 62 | u64::from(generation & 0x3fff_ffff) << 32 | index as u64
}

fn ud_parts(ud: u64) -> (u64, usize, u32) {
    (
        ud >> 62,
        (ud & 0xffff_ffff) as usize,
        ((ud >> 32) & 0x3fff_ffff) as u32,
    )
}

/// The provided-buffer ring.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    bufs: Box<[u8]>,
    tail: u16,
    /// Buffers in the ring, a power of two.
    count: u16,
}

impl BufRing {
    fn new(ring: &IoUring, count: u16) -> std::io::Result<BufRing> {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(std::io::Error::other)?;
        // SAFETY: the layout has a non-zero size; zeroed memory is a valid array of
        // `BufRingEntry`; it is freed in `Drop` with the same layout.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(std::io::ErrorKind::OutOfMemory.into());
        }
        let mut r = BufRing {
            entries,
            layout,
            bufs: vec![0; usize::from(count) * BUF_LEN].into_boxed_slice(),
            tail: 0,
            count,
        };
        // SAFETY: `entries` holds `count` entries and lives as long as the worker's ring
        // (`Worker` drops the ring before this `BufRing`, see the field order there).
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, count, BGID)?;
        }
        for bid in 0..count {
            r.give_back(bid);
        }
        Ok(r)
    }

    /// Hands buffer `bid` back to the kernel.
    fn give_back(&mut self, bid: u16) {
        let i = usize::from(self.tail & (self.count - 1));
        // SAFETY: `i < count`, inside the allocation; only this thread writes entries.
        let e = unsafe { &mut *self.entries.add(i) };
        e.set_addr(self.bufs[usize::from(bid) * BUF_LEN..].as_ptr() as u64);
        e.set_len(BUF_LEN as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the ring's tail overlays the first entry's reserved field, inside the
        // allocation; the release store publishes the entry written above to the kernel.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries).cast::<std::sync::atomic::AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) }
    }
}

/// One connection: the sans-IO core and what this engine needs to drive it.
#[derive(Debug)]
struct Conn {
    generation: u32,
    conn: Connection,
    fd: RawFd,
    timer: Option<TimerKey>,
    write_timer: Option<TimerKey>,
    /// Input not yet consumed (a frame split across receives).
    pending: Vec<u8>,
    /// Answers being sent through the ring (untouched until the send completes).
    out: Vec<u8>,
    /// How much of `out` is sent.
    sent: usize,
    /// Answers produced while `out` is in flight.
    later: Vec<u8>,
    /// The multishot receive is armed.
    receiving: bool,
    /// A send is in flight.
    sending: bool,
    /// Close once `out` and `later` are written.
    close_after_write: bool,
    /// Our FIN is out (the linger runs).
    half_closed: bool,
    /// Closing hard: close the descriptor once nothing is in flight.
    hard: Option<CloseReason>,
    /// Counted in `Shared::active` (refusals are not).
    counted: bool,
}

struct Worker {
    /// This worker's number (the `worker` of its connections' `ConnKey`s).
    index: u32,
    shared: Arc<Shared>,
    cfg: ConnConfig,
    ids: IdAllocator,
    wheel: TimerWheel<(usize, u32, Timer)>,
    conns: Slab<Conn>,
    generation: u32,
    metrics: WorkerMetrics,
    listeners: Vec<(TcpListener, ListenerKind)>,
    refusing: usize,
    /// Listeners whose accept stopped for lack of descriptors, re-armed at the next tick.
    accept_paused: Vec<usize>,
    /// The drain has stopped the listeners.
    stopped: bool,
    last_warn: Option<Instant>,
    /// The time of the batch of completions being handled: read once per wake-up, not
    /// once per event (clock reads showed in the churn profile).
    now: Instant,
    /// Completions the kernel reported lost so far.
    cq_lost: u32,
    /// The buffer answers are written into (see `feed`).
    scratch: Vec<u8>,
    /// The tick's timeout fired: expire deadlines, flush metrics, look at the drain flag.
    tick_due: bool,
    tick_ts: types::Timespec,
    ring: IoUring,
    bufs: BufRing,
}

/// Runs `f` on the socket `fd` names: the descriptor of a live slab entry (closed only in
/// `Worker::maybe_close`, which removes the entry first) or one accepted just now.
fn with_sock<T>(fd: RawFd, f: impl FnOnce(socket2::SockRef<'_>) -> T) -> T {
    // SAFETY: as documented above, `fd` is open for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&fd))
}

fn send(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    with_sock(fd, |s| {
        s.send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    })
}

/// Shuts a socket down, now, with `shutdown(2)`; an operation in flight on it completes.
///
/// Not through the ring: `IORING_OP_SHUTDOWN` always runs on an io-wq worker thread,
/// which looks the descriptor number up only when it gets to it, possibly after our
/// close of that number and the next accept that reused it, so the shutdown landed on
/// another client's connection (hardening round 3, D2 and N12). The only operations
/// this engine queues on a connection's descriptor are its receive and its send, both
/// issued at submission and both tracked (`receiving`, `sending`): the descriptor is
/// closed only when neither is in flight, so no operation can outlive its number.
fn shutdown(fd: RawFd, how: std::net::Shutdown) {
    let _ = with_sock(fd, |s| s.shutdown(how));
}

/// Gives an emptied answer buffer back to the worker's scratch (if that has none and the
/// buffer is not oversized), leaving the connection none.
fn recycle(scratch: &mut Vec<u8>, used: &mut Vec<u8>) {
    debug_assert!(used.is_empty());
    let used = std::mem::take(used);
    if scratch.capacity() == 0 && used.capacity() <= 4096 {
        *scratch = used;
    }
}

fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and nothing is in flight on it.
    unsafe { libc::close(fd) };
}

/// Whether this kernel gives the ring what engine v2 needs; the reason if not.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .map_err(|e| format!("an io_uring with SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1): {e}"))?;
    if !ring.params().is_feature_nodrop() {
        return Err("IORING_FEAT_NODROP (Linux 5.5)".into());
    }
    BufRing::new(&ring, BUFS)
        .map(drop)
        .map_err(|e| format!("a provided-buffer ring (Linux 5.19): {e}"))
}

/// Entry point of a worker thread on engine v2.
pub(super) fn thread_main(
    index: usize,
    listeners: Vec<(TcpListener, ListenerKind)>,
    shared: Arc<Shared>,
) {
    let ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(worker = index, "cannot create the io_uring: {e}");
            return;
        }
    };
    let bufs = match BufRing::new(&ring, super::debug::recv_buffers(BUFS)) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(worker = index, "cannot register the buffer ring: {e}");
            return;
        }
    };
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
        listeners,
        refusing: 0,
        accept_paused: Vec::new(),
        stopped: false,
        last_warn: None,
        now: origin,
        cq_lost: 0,
        scratch: Vec::with_capacity(256),
        tick_due: false,
        tick_ts: types::Timespec::from(shared.config.timer_tick),
        ring,
        bufs,
        shared,
    };
    for i in 0..w.listeners.len() {
        w.arm_accept(i);
    }
    w.shared.health.listening.fetch_add(1, Ordering::AcqRel);
    w.run();
}

impl Worker {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry refers to memory that outlives its operation: listener and
        // connection descriptors closed only when nothing is in flight on them, `out`
        // buffers left untouched while their send is in flight, the registered buffer ring.
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            let _ = self.ring.submit();
        }
    }

    /// Closes a descriptor through the ring (one syscall fewer per connection); its
    /// number is not reused before the close runs, so nothing can mistake a new one for it.
    fn close_fd(&mut self, fd: RawFd) {
        self.push(
            opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(ud(IGNORE, 0, 0)),
        );
    }

    fn arm_accept(&mut self, i: usize) {
        let fd = self.listeners[i].0.as_raw_fd();
        self.push(
            opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(ACCEPT, i, 0)),
        );
    }

    fn arm_recv(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.receiving || c.sending || c.hard.is_some() {
            return;
        }
        c.receiving = true;
        let e = opcode::RecvMulti::new(types::Fd(c.fd), BGID)
            .build()
            .user_data(ud(RECV, i, c.generation));
        self.push(e);
    }

    /// Arms the next tick: a timeout operation in the ring, so the wait in
    /// `io_uring_enter` needs no timeout of its own (a timed wait arms and cancels a kernel
    /// timer every time the worker sleeps; this arms one per tick).
    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&self.tick_ts)
            .build()
            .user_data(ud(IGNORE, TICK, 0));
        // The kernel copies the timespec when it takes the entry, at the next enter;
        // `tick_ts` is a field of this worker, which does not move while it runs.
        self.push(e);
    }

    fn run(&mut self) {
        let mut drain: Option<super::Drain<(usize, u32)>> = None;
        let mut done = Vec::with_capacity(1024);
        self.arm_tick();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    tracing::error!("io_uring_enter: {e}");
                    return;
                }
            }
            self.now = Instant::now();
            let lost = self.ring.completion().overflow();
            if lost != self.cq_lost {
                tracing::error!(
                    lost = lost.wrapping_sub(self.cq_lost),
                    "io_uring completions lost (completion queue overflow with no memory \
                     for the kernel's overflow list): connections may be left open"
                );
                self.cq_lost = lost;
            }
            done.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (u, res, flags) in done.drain(..) {
                self.complete(u, res, flags);
            }
            if !std::mem::take(&mut self.tick_due) {
                continue;
            }
            self.arm_tick();
            let now = self.now;
            self.expire(now);
            let draining = self.shared.health.draining.load(Ordering::Acquire);
            if !draining {
                for l in std::mem::take(&mut self.accept_paused) {
                    self.arm_accept(l);
                }
            }
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

    fn complete(&mut self, u: u64, res: i32, flags: u32) {
        let (kind, i, generation) = ud_parts(u);
        match kind {
            ACCEPT => {
                let exhausted = matches!(
                    -res,
                    libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
                );
                if res >= 0 && self.stopped {
                    // Accepted just before the drain stopped the listener: closed, as
                    // the ones still in its backlog were.
                    self.close_fd(res);
                } else if res >= 0 {
                    self.accepted(res, self.listeners[i].1);
                } else if res != -libc::ECANCELED && !self.stopped {
                    self.metrics.accept_error();
                }
                if exhausted {
                    // Out of descriptors: accept again at the next tick, not at once.
                    if self
                        .last_warn
                        .is_none_or(|t| self.now.duration_since(t) >= Duration::from_secs(5))
                    {
                        tracing::warn!(
                            "accept failed ({}); backing off until descriptors free up",
                            std::io::Error::from_raw_os_error(-res)
                        );
                        self.last_warn = Some(self.now);
                    }
                    self.accept_paused.push(i);
                } else if !cqueue::more(flags)
                    && !self.shared.health.draining.load(Ordering::Acquire)
                {
                    self.arm_accept(i);
                }
            }
            RECV => {
                let bid = cqueue::buffer_select(flags);
                let live = self
                    .conns
                    .get(i)
                    .is_some_and(|c| c.generation == generation);
                if live {
                    self.received(i, res, bid, cqueue::more(flags));
                }
                if let Some(bid) = bid {
                    self.bufs.give_back(bid);
                }
            }
            SEND if self
                .conns
                .get(i)
                .is_some_and(|c| c.generation == generation) =>
            {
                self.sent(i, res);
            }
            IGNORE if i == TICK => self.tick_due = true,
            _ => {}
        }
    }

    fn accepted(&mut self, fd: RawFd, kind: ListenerKind) {
        super::debug::maybe_panic("accept");
        let peer = with_sock(fd, |s| s.peer_addr())
            .ok()
            .and_then(|a| a.as_socket());
        let Some(peer) = peer else {
            self.close_fd(fd);
            return;
        };
        let now = self.now;
        match self.shared.admit(peer, kind.proxy(), now) {
            super::Admission::Untrusted => {
                tracing::debug!(%peer, "refused: not a trusted PROXY protocol peer");
                self.metrics.refused_untrusted(kind);
                self.close_fd(fd);
            }
            super::Admission::Refused(r) if kind.tls() => {
                // No EventError can go out before a handshake: closed without a byte.
                self.metrics.refused(kind, r, false);
                self.close_fd(fd);
            }
            super::Admission::Refused(r) => self.refuse(fd, peer, now, kind, r),
            super::Admission::Admitted { counted } => {
                let (shared, metrics) = (&self.shared, &self.metrics);
                let opened = lifecycle::open(shared, metrics, now, peer, kind, &self.cfg, counted);
                let Some((conn, t)) = opened else {
                    self.close_fd(fd);
                    return;
                };
                let i = self.insert(conn, fd, true);
                self.apply_timer(i, t);
                self.arm_recv(i);
            }
        }
    }

    /// Refused at accept: its EventError (10 or 16), closed once written (lingering
    /// refusals are capped at `REFUSALS_LINGERING_MAX`; beyond the cap it is sent and the
    /// socket closed).
    fn refuse(
        &mut self,
        fd: RawFd,
        peer: std::net::SocketAddr,
        now: Instant,
        kind: ListenerKind,
        r: crate::admission::Refusal,
    ) {
        self.metrics.refused(kind, r, true);
        let mut out = Vec::with_capacity(64);
        let (conn, p) = Connection::refuse(now, peer.ip(), r.code(), &self.cfg, &mut out);
        if self.refusing >= lifecycle::REFUSALS_LINGERING_MAX {
            let _ = send(fd, &out);
            shutdown(fd, std::net::Shutdown::Write);
            close(fd);
            return;
        }
        self.refusing += 1;
        let i = self.insert(conn, fd, false);
        self.conns[i].later = out;
        self.carry_out(i, p);
    }

    fn insert(&mut self, conn: Connection, fd: RawFd, counted: bool) -> usize {
        self.generation = self.generation.wrapping_add(1) & 0x3fff_ffff;
        self.conns.insert(Conn {
            generation: self.generation,
            conn,
            fd,
            timer: None,
            write_timer: None,
            pending: Vec::new(),
            out: Vec::new(),
            sent: 0,
            later: Vec::new(),
            receiving: false,
            sending: false,
            close_after_write: false,
            half_closed: false,
            hard: None,
            counted,
        })
    }

    fn apply_timer(&mut self, i: usize, change: TimerChange) {
        let c = &mut self.conns[i];
        lifecycle::apply_timer(&mut self.wheel, &mut c.timer, i, c.generation, change);
    }

    fn received(&mut self, i: usize, res: i32, bid: Option<u16>, more: bool) {
        if !more {
            self.conns[i].receiving = false;
        }
        if res > 0 {
            let n = res as usize;
            self.metrics.bytes_in(n);
            let off = usize::from(bid.unwrap_or(0)) * BUF_LEN;
            if let Some(p) = self.feed(i, off, n) {
                self.carry_out(i, p);
            }
            if !more && self.conns.contains(i) {
                self.arm_recv(i);
            }
            return;
        }
        if res == -libc::ENOBUFS {
            self.metrics.recv_no_buffers();
            self.arm_recv(i);
            return;
        }
        if res == -libc::ECANCELED {
            self.maybe_close(i);
            return;
        }
        if !more {
            // End of stream or an error: the receive is over.
            let c = &mut self.conns[i];
            if res == 0 && c.sending && c.hard.is_none() {
                // The peer half-closed while answers are still going out: they finish
                // first (N4). The receive armed once they are written sees the end of
                // stream again, and closes then.
                return;
            }
            let reason = c.hard.unwrap_or_else(|| c.conn.on_eof());
            c.hard = Some(reason);
            self.maybe_close(i);
        }
    }

    /// Hands received bytes (in the provided buffer at `off`) to the connection, in place:
    /// only the tail of a frame split across receives is copied, into `pending`.
    fn feed(&mut self, i: usize, off: usize, n: usize) -> Option<Progress> {
        let c = &mut self.conns[i];
        if c.hard.is_some() {
            return None;
        }
        // Answers go into the worker's scratch buffer unless some already wait for a send
        // in flight: no allocation per registration, and no buffer kept per idle
        // connection (`write` gives it back once sent).
        let mut answers = if c.later.is_empty() {
            std::mem::take(&mut self.scratch)
        } else {
            std::mem::take(&mut c.later)
        };
        let cx = lifecycle::cx!(self);
        let data = &self.bufs.bufs[off..off + n];
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
        c.later = answers;
        Some(p)
    }

    /// Carries out a connection's progress: its timer, its answers (in `later`), a close.
    fn carry_out(&mut self, i: usize, p: Progress) {
        self.apply_timer(i, p.timer);
        match p.action {
            Action::Continue => self.write(i),
            Action::CloseAfterWrite => {
                self.conns[i].close_after_write = true;
                self.conns[i].pending = Vec::new();
                self.write(i);
            }
            Action::CloseNow(r) => self.close_hard(i, r),
        }
    }

    /// Writes what is in `later`: inline first, the rest through the ring.
    fn write(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.sending || c.hard.is_some() {
            return;
        }
        if c.later.is_empty() {
            recycle(&mut self.scratch, &mut c.later);
        } else {
            let n = send(c.fd, &c.later).or_else(|e| {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    Ok(0)
                } else {
                    Err(e)
                }
            });
            match n {
                Ok(n) if n == c.later.len() => {
                    self.metrics.bytes_out(n);
                    c.later.clear();
                    recycle(&mut self.scratch, &mut c.later);
                }
                Ok(n) => {
                    self.metrics.bytes_out(n);
                    c.out = std::mem::take(&mut c.later);
                    c.sent = n;
                    c.sending = true;
                    let at = deadline(self.now, self.shared.config.write_timeout);
                    c.write_timer =
                        Some(self.wheel.insert(at, (i, c.generation, Timer::WriteStall)));
                    let (fd, g) = (c.fd, c.generation);
                    let rest = &c.out[n..];
                    let e = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(ud(SEND, i, g));
                    let receiving = c.receiving;
                    self.push(e);
                    if receiving {
                        // A peer that does not read stops being read from.
                        self.push(
                            opcode::AsyncCancel::new(ud(RECV, i, g))
                                .build()
                                .user_data(ud(IGNORE, 0, 0)),
                        );
                    }
                    return;
                }
                Err(_) => {
                    self.close_hard(i, CloseReason::Peer);
                    return;
                }
            }
        }
        let c = &mut self.conns[i];
        if c.close_after_write && !c.half_closed {
            c.half_closed = true;
            let fd = c.fd;
            let t = c.conn.on_flushed(self.now, &self.cfg);
            shutdown(fd, std::net::Shutdown::Write);
            self.apply_timer(i, t);
        }
        self.arm_recv(i);
    }

    fn sent(&mut self, i: usize, res: i32) {
        let c = &mut self.conns[i];
        c.sending = false;
        if res < 0 || c.hard.is_some() {
            let r = c.hard.unwrap_or(CloseReason::Peer);
            self.close_hard(i, r);
            return;
        }
        let n = res as usize;
        self.metrics.bytes_out(n);
        c.sent += n;
        if c.sent < c.out.len() {
            c.sending = true;
            let rest = &c.out[c.sent..];
            let e = opcode::Send::new(types::Fd(c.fd), rest.as_ptr(), rest.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud(SEND, i, c.generation));
            self.push(e);
            return;
        }
        if let Some(k) = c.write_timer.take() {
            self.wheel.cancel(k);
        }
        c.out = Vec::new();
        c.sent = 0;
        self.write(i);
    }

    /// Closes now: shuts the socket down (completing any operation in flight) and closes
    /// the descriptor once nothing is in flight.
    fn close_hard(&mut self, i: usize, reason: CloseReason) {
        let c = &mut self.conns[i];
        if c.hard.is_none() {
            c.hard = Some(reason);
            let fd = c.fd;
            shutdown(fd, std::net::Shutdown::Both);
        }
        self.maybe_close(i);
    }

    fn maybe_close(&mut self, i: usize) {
        let c = &self.conns[i];
        if c.receiving || c.sending {
            return;
        }
        let Some(reason) = c.hard else {
            // The receive ended without closing (cancelled for a write): arm it again.
            self.arm_recv(i);
            return;
        };
        let mut c = self.conns.remove(i);
        c.later.clear();
        recycle(&mut self.scratch, &mut c.later);
        for k in [c.timer, c.write_timer].into_iter().flatten() {
            self.wheel.cancel(k);
        }
        // Nothing is in flight on the descriptor and the slab entry is gone.
        self.close_fd(c.fd);
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
        self.stopped = true;
        for i in 0..self.listeners.len() {
            self.push(
                opcode::AsyncCancel::new(ud(ACCEPT, i, 0))
                    .build()
                    .user_data(ud(IGNORE, 0, 0)),
            );
            lifecycle::refuse_new_connections(&self.listeners[i].0);
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

    /// Tells one connection of the drain (registered: EventError 11 and close once
    /// written; unregistered: close now) or of a kick (registered: EventError 15 and close
    /// once written).
    fn notify(&mut self, i: usize, now: Instant, notice: Notice) {
        let c = &mut self.conns[i];
        if c.conn.is_closing() || c.hard.is_some() {
            return;
        }
        let mut answers = std::mem::take(&mut c.later);
        let cx = lifecycle::cx!(self);
        let p = lifecycle::tell(cx, i, c.generation, &mut c.conn, now, notice, &mut answers);
        c.later = answers;
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
        self.sending
    }
    fn gone(&self) -> bool {
        self.hard.is_some()
    }
    fn core(&self) -> &Connection {
        &self.conn
    }
}
