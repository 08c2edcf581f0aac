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
//! What happens to a connection is not here but in the shared lifecycle
//! (`lifecycle.rs`); this backend only moves bytes. Answers go out with one non-blocking
//! `send(2)`; what it cannot take is sent through the ring (`IORING_OP_SEND` from the
//! connection's `out`, which the lifecycle leaves untouched until the completion), and the
//! connection's receive is cancelled meanwhile.
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
//! No operation outlives its descriptor's number. A hard close with only the receive in
//! flight (a deadline drop, a reset: nearly all) cancels it and closes in one linked pair
//! of operations whose own completions are skipped, and frees the slot at once: no
//! syscall and one completion per drop. With a send in flight, the socket is shut down
//! (completing the send) and closed when that completion arrives, since the send reads
//! the connection's `out` until then. A close once written shuts down our sending side
//! and keeps receiving (and discarding) until the peer's end of stream or the linger
//! deadline. Shutdowns are `shutdown(2)` calls, because the ring runs a shutdown late, on
//! another thread, by descriptor number (see `shutdown`).

use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use ixn_proto::tls::ListenerKind;

use super::lifecycle::{self, Backend, Core, SlotKey};
use super::Shared;

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
/// Submission queue entries: a full queue is submitted and pushing goes on, so this only
/// sets how many operations one `io_uring_enter` can carry.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries. Completions that find it full wait in the kernel's overflow
/// list (`IORING_FEAT_NODROP`) and are flushed as the worker reaps; only if the kernel
/// cannot allocate that list's entry is one lost, which the worker reports.
const CQ_ENTRIES: u32 = 16384;
/// The index of the tick's timeout among `IGNORE` completions.
const TICK: usize = 1;
/// The index of the fleet's wake-up (a read of the worker's eventfd) among them.
const WAKE: usize = 2;

/// An operation's `user_data`: its kind, and the connection (slot and generation) it is
/// for, checked on every completion.
fn ud(kind: u64, key: SlotKey) -> u64 {
    kind << 62 | u64::from(key.generation & 0x3fff_ffff) << 32 | key.slot as u64
}

fn ud_parts(ud: u64) -> (u64, SlotKey) {
    let key = SlotKey {
        slot: (ud & 0xffff_ffff) as usize,
        generation: ((ud >> 32) & 0x3fff_ffff) as u32,
    };
    (ud >> 62, key)
}

/// `user_data` of an operation with no connection (listeners, the tick, closes).
fn other(kind: u64, index: usize) -> u64 {
    ud(
        kind,
        SlotKey {
            slot: index,
            generation: 0,
        },
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

/// A connection's socket as this backend holds it: its descriptor and the operations in
/// flight on it (the only ring operations that name it; it is closed once none is).
#[derive(Debug)]
pub(super) struct Io {
    fd: RawFd,
    /// The multishot receive is armed.
    receiving: bool,
    /// A send is in flight.
    sending: bool,
    /// Shut down for a hard close.
    closing: bool,
}

/// Runs `f` on the socket `fd` names: the descriptor of a live connection (closed only
/// once nothing is in flight on it, after its last use here) or one accepted just now.
fn with_sock<T>(fd: RawFd, f: impl FnOnce(socket2::SockRef<'_>) -> T) -> T {
    // SAFETY: as documented above, `fd` is open for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&fd))
}

/// Shuts a socket down, now, with `shutdown(2)`; an operation in flight on it completes.
///
/// Not through the ring: `IORING_OP_SHUTDOWN` always runs on an io-wq worker thread,
/// which looks the descriptor number up only when it gets to it, possibly after our
/// close of that number and the next accept that reused it, so the shutdown landed on
/// another client's connection (hardening round 3, D2 and N12). The only operations
/// this engine queues on a connection's descriptor are its receive and its send, both
/// issued at submission and both tracked (`Io::receiving`, `Io::sending`): the descriptor
/// is closed only when neither is in flight, so no operation can outlive its number.
fn shutdown(fd: RawFd, how: std::net::Shutdown) {
    let _ = with_sock(fd, |s| s.shutdown(how));
}

/// The ring, its buffers and its listeners: what moves bytes for one worker.
pub(super) struct Uring {
    listeners: Vec<(TcpListener, ListenerKind)>,
    /// Listeners whose accept stopped for lack of descriptors, re-armed at the next tick.
    accept_paused: Vec<usize>,
    /// The drain has stopped the listeners.
    stopped: bool,
    /// Over the connection rate (`pace` mode): accepts are cancelled, and not re-armed
    /// until the next second.
    pacing: bool,
    /// Listeners whose accept pacing cancelled, re-armed when it ends.
    pace_paused: Vec<usize>,
    last_warn: Option<Instant>,
    /// Completions the kernel reported lost so far.
    cq_lost: u32,
    /// The tick's timeout fired.
    tick_due: bool,
    tick_ts: types::Timespec,
    /// With a fleet: the eventfd the fleet thread writes to wake this worker, and the
    /// buffer its armed read fills.
    wake: Option<(RawFd, Box<[u8; 8]>)>,
    /// The fleet woke the worker.
    wake_due: bool,
    /// The timeout of [`Backend::wake_in`] (copied by the kernel when it takes the entry).
    wake_ts: types::Timespec,
    ring: IoUring,
    bufs: BufRing,
}

impl Uring {
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
        let e = opcode::Close::new(types::Fd(fd)).build();
        self.push(e.user_data(other(IGNORE, 0)));
    }

    fn arm_accept(&mut self, i: usize) {
        let fd = self.listeners[i].0.as_raw_fd();
        self.push(
            opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(other(ACCEPT, i)),
        );
    }

    fn arm_recv(&mut self, key: SlotKey, io: &mut Io) {
        if io.receiving || io.sending || io.closing {
            return;
        }
        io.receiving = true;
        let e = opcode::RecvMulti::new(types::Fd(io.fd), BGID).build();
        self.push(e.user_data(ud(RECV, key)));
    }

    /// Arms the read of the fleet's eventfd: its completion wakes the worker.
    fn arm_wake(&mut self) {
        let Some((fd, buf)) = &mut self.wake else {
            return;
        };
        let e = opcode::Read::new(types::Fd(*fd), buf.as_mut_ptr(), 8)
            .build()
            .user_data(other(IGNORE, WAKE));
        // The buffer is boxed in this backend and the eventfd is owned by the fleet,
        // which lives as long as the process: both outlive the read.
        self.push(e);
    }

    /// Arms the next tick: a timeout operation in the ring, so the wait in
    /// `io_uring_enter` needs no timeout of its own (a timed wait arms and cancels a kernel
    /// timer every time the worker sleeps; this arms one per tick).
    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&self.tick_ts)
            .build()
            .user_data(other(IGNORE, TICK));
        // The kernel copies the timespec when it takes the entry, at the next enter;
        // `tick_ts` is a field of this backend, which does not move while it runs.
        self.push(e);
    }
}

impl Backend for Uring {
    type Io = Io;

    fn open(&mut self, key: SlotKey, io: &mut Io) -> std::io::Result<()> {
        self.arm_recv(key, io);
        Ok(())
    }

    fn send_now(&mut self, io: &mut Io, buf: &[u8]) -> std::io::Result<usize> {
        let n = with_sock(io.fd, |s| {
            s.send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        });
        match n {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            n => n,
        }
    }

    fn send_later(&mut self, key: SlotKey, io: &mut Io, buf: &[u8]) -> std::io::Result<()> {
        io.sending = true;
        let e = opcode::Send::new(types::Fd(io.fd), buf.as_ptr(), buf.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.push(e.user_data(ud(SEND, key)));
        if io.receiving {
            // A peer that does not read stops being read from.
            let cancel = opcode::AsyncCancel::new(ud(RECV, key)).build();
            self.push(cancel.user_data(other(IGNORE, 0)));
        }
        Ok(())
    }

    fn resume(&mut self, key: SlotKey, io: &mut Io) {
        self.arm_recv(key, io);
    }

    fn pause(&mut self, key: SlotKey, io: &mut Io) {
        if io.receiving {
            // Its completion (ECANCELED) is not armed again while the core is not reading.
            let cancel = opcode::AsyncCancel::new(ud(RECV, key)).build();
            self.push(cancel.user_data(other(IGNORE, 0)));
        }
    }

    fn shutdown_write(&mut self, io: &mut Io) {
        shutdown(io.fd, std::net::Shutdown::Write);
    }

    fn close(&mut self, key: SlotKey, io: &mut Io) -> bool {
        if io.sending {
            // The send reads `out` until it completes: shut down (which completes it) and
            // wait for its completion before the slot, and `out`, go.
            if !io.closing {
                io.closing = true;
                shutdown(io.fd, std::net::Shutdown::Both);
            }
            return false;
        }
        // At most the receive is in flight (a deadline drop, a reset): cancel it and close
        // in one linked pair, their own completions skipped. The close runs only once the
        // cancel has run, so no operation outlives the descriptor's number; the receive's
        // last completion, if any, carries this slot's generation and is ignored once the
        // slot is free, which it is at once (nothing of the slot is in the kernel's hands).
        if io.receiving {
            io.receiving = false;
            let cancel = opcode::AsyncCancel::new(ud(RECV, key))
                .build()
                .flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS);
            self.push(cancel.user_data(other(IGNORE, 0)));
        }
        let close = opcode::Close::new(types::Fd(io.fd))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(close.user_data(other(IGNORE, 0)));
        true
    }

    fn refuse_now(&mut self, io: Io, answer: &[u8]) {
        if !answer.is_empty() {
            let mut io = io;
            let _ = self.send_now(&mut io, answer);
            shutdown(io.fd, std::net::Shutdown::Write);
            self.close_fd(io.fd);
            return;
        }
        self.close_fd(io.fd);
    }

    fn stop_accepting(&mut self, refuse_backlog: bool) {
        self.stopped = true;
        for i in 0..self.listeners.len() {
            let cancel = opcode::AsyncCancel::new(other(ACCEPT, i)).build();
            self.push(cancel.user_data(other(IGNORE, 0)));
            if refuse_backlog {
                lifecycle::refuse_new_connections(&self.listeners[i].0);
            }
        }
    }

    fn detachable(&self, io: &Io) -> bool {
        !io.receiving && !io.sending && !io.closing
    }

    fn detach(&mut self, io: Io) -> OwnedFd {
        // SAFETY: `io.fd` is this connection's socket, owned by its `Io` alone and open
        // (the backend closes it only through `close`, which a detached connection never
        // reaches); nothing is in flight on it (`detachable`), so the ring holds no use
        // of the number.
        unsafe { OwnedFd::from_raw_fd(io.fd) }
    }

    fn adopt(&mut self, fd: OwnedFd) -> Io {
        Io {
            fd: fd.into_raw_fd(),
            receiving: false,
            sending: false,
            closing: false,
        }
    }

    fn listeners(&self) -> Vec<(BorrowedFd<'_>, ListenerKind)> {
        self.listeners
            .iter()
            .map(|(l, k)| (l.as_fd(), *k))
            .collect()
    }

    fn wake_in(&mut self, after: Duration) {
        self.wake_ts = types::Timespec::from(after);
        // Its completion needs nothing done: the loop's next turn looks at what is due.
        let e = opcode::Timeout::new(&self.wake_ts)
            .build()
            .user_data(other(IGNORE, 0));
        // Submitted by the wait that follows (the core asks at most once per turn, just
        // before it), when the kernel copies `wake_ts`.
        self.push(e);
    }

    fn accept_again(&mut self) {
        for l in std::mem::take(&mut self.accept_paused) {
            self.arm_accept(l);
        }
    }

    fn pause_accepting(&mut self) {
        if self.pacing || self.stopped {
            return;
        }
        self.pacing = true;
        // Each multishot accept ends with -ECANCELED; `accept_done` then leaves it for
        // `resume_accepting`. What completes before that is held by the core like the rest.
        for i in 0..self.listeners.len() {
            let cancel = opcode::AsyncCancel::new(other(ACCEPT, i)).build();
            self.push(cancel.user_data(other(IGNORE, 0)));
        }
    }

    fn resume_accepting(&mut self) {
        self.pacing = false;
        if self.stopped {
            return;
        }
        for l in std::mem::take(&mut self.pace_paused) {
            self.arm_accept(l);
        }
    }
}

/// Whether this kernel gives the ring what the io_uring engine needs; the reason if not.
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

/// Entry point of a worker thread on the io_uring engine.
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
    let mut w = Worker {
        b: Uring {
            listeners,
            accept_paused: Vec::new(),
            stopped: false,
            pacing: false,
            pace_paused: Vec::new(),
            last_warn: None,
            cq_lost: 0,
            tick_due: false,
            tick_ts: types::Timespec::from(shared.config.timer_tick),
            wake: None,
            wake_due: false,
            wake_ts: types::Timespec::new(),
            ring,
            bufs,
        },
        core: Core::new(index, shared),
    };
    w.core.adopt_queued(&mut w.b);
    for i in 0..w.b.listeners.len() {
        w.b.arm_accept(i);
    }
    let b = &mut w.b;
    w.core.ready(|| {
        let file = eventfd()?;
        b.wake = Some((file.as_raw_fd(), Box::new([0; 8])));
        b.arm_wake();
        Ok(crate::fleet::Wake::EventFd(file))
    });
    w.run();
}

/// One worker: the shared lifecycle and this backend.
struct Worker {
    core: Core<Uring>,
    b: Uring,
}

impl Worker {
    fn run(&mut self) {
        let mut done = Vec::with_capacity(1024);
        self.b.arm_tick();
        loop {
            self.core.turn_over(&mut self.b);
            match self.b.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    tracing::error!("io_uring_enter: {e}");
                    return;
                }
            }
            self.core.now = Instant::now();
            let lost = self.b.ring.completion().overflow();
            if lost != self.b.cq_lost {
                tracing::error!(
                    lost = lost.wrapping_sub(self.b.cq_lost),
                    "io_uring completions lost (completion queue overflow with no memory \
                     for the kernel's overflow list): connections may be left open"
                );
                self.b.cq_lost = lost;
            }
            done.extend(
                self.b
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (u, res, flags) in done.drain(..) {
                self.complete(u, res, flags);
            }
            self.core.unpace(&mut self.b);
            if std::mem::take(&mut self.b.wake_due) {
                self.b.arm_wake();
                self.core.woken(&mut self.b);
            }
            if !std::mem::take(&mut self.b.tick_due) {
                continue;
            }
            self.b.arm_tick();
            if self.core.tick(&mut self.b) {
                break;
            }
        }
        self.core.finish();
    }

    fn complete(&mut self, u: u64, res: i32, flags: u32) {
        let (kind, key) = ud_parts(u);
        match kind {
            ACCEPT => self.accept_done(key.slot, res, cqueue::more(flags)),
            RECV => {
                let bid = cqueue::buffer_select(flags);
                if self.core.exists(key) {
                    self.received(key.slot, res, bid, cqueue::more(flags));
                }
                if let Some(bid) = bid {
                    self.b.bufs.give_back(bid);
                }
            }
            SEND if self.core.exists(key) => {
                let i = key.slot;
                self.core.slots[i].io.sending = false;
                if self.core.slots[i].closing() {
                    self.core.released(&mut self.b, i);
                } else if res < 0 {
                    self.core.send_failed(&mut self.b, i);
                } else {
                    self.core.sent(&mut self.b, i, res as usize);
                }
            }
            IGNORE if key.slot == TICK => self.b.tick_due = true,
            IGNORE if key.slot == WAKE => self.b.wake_due = true,
            _ => {}
        }
    }

    fn accept_done(&mut self, l: usize, res: i32, more: bool) {
        if res >= 0 && self.b.stopped {
            // Accepted just before the drain stopped the listener: closed, as the ones
            // still in its backlog were.
            self.b.close_fd(res);
            return;
        }
        if res >= 0 {
            let fd = res;
            let peer = with_sock(fd, |s| s.peer_addr())
                .ok()
                .and_then(|a| a.as_socket());
            let io = Io {
                fd,
                receiving: false,
                sending: false,
                closing: false,
            };
            match peer {
                Some(peer) => {
                    let kind = self.b.listeners[l].1;
                    self.core.accepted(&mut self.b, io, peer, kind);
                }
                None => self.b.close_fd(fd),
            }
        } else if res != -libc::ECANCELED && !self.b.stopped {
            self.core.metrics.accept_error();
        }
        if res < 0 && lifecycle::out_of_descriptors(-res, &mut self.b.last_warn, self.core.now) {
            self.b.accept_paused.push(l);
        } else if !more && self.b.pacing {
            self.b.pace_paused.push(l);
        } else if !more && !self.b.stopped {
            self.b.arm_accept(l);
        }
    }

    fn received(&mut self, i: usize, res: i32, bid: Option<u16>, more: bool) {
        let key = SlotKey {
            slot: i,
            generation: self.core.slots[i].generation,
        };
        if !more {
            self.core.slots[i].io.receiving = false;
        }
        if self.core.slots[i].closing() {
            if !more {
                self.core.released(&mut self.b, i);
            }
            return;
        }
        if res > 0 {
            let off = usize::from(bid.unwrap_or(0)) * BUF_LEN;
            let data = &self.b.bufs.bufs[off..off + res as usize];
            if let Some(p) = self.core.feed(i, data) {
                self.core.carry_out(&mut self.b, i, p);
            }
            if !more && self.core.exists(key) && self.core.reading(i) {
                self.b.arm_recv(key, &mut self.core.slots[i].io);
            }
            return;
        }
        if res == -libc::ENOBUFS {
            self.core.metrics.recv_no_buffers();
        }
        if res == -libc::ENOBUFS || res == -libc::ECANCELED {
            // Ended without a close: armed again, unless answers wait for the socket (the
            // receive was cancelled for them; it is armed once they are written).
            if self.core.reading(i) {
                self.b.arm_recv(key, &mut self.core.slots[i].io);
            }
            return;
        }
        if !more {
            if res == 0 {
                self.core.eof(&mut self.b, i);
            } else {
                self.core.reset(&mut self.b, i);
            }
        }
    }
}

/// A non-blocking eventfd, for the fleet thread to wake a worker through its ring.
fn eventfd() -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd(2) takes no pointers; its result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}
