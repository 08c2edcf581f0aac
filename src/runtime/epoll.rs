//! The epoll engine (`--engine epoll`, and `auto` where io_uring is refused): each worker
//! thread runs a `mio` poll loop over its own `SO_REUSEPORT` listeners and connections,
//! driving the same sans-IO [`Connection`] through the same lifecycle (`lifecycle.rs`) as
//! the io_uring engine; this backend only moves bytes.
//!
//! It exists for hosts that refuse io_uring: container runtimes whose default seccomp
//! profile blocks it, `kernel.io_uring_disabled`, old kernels. Nothing protocol lives
//! here; every decision comes from `Connection` and the shared lifecycle, and every socket
//! suite runs on it as on io_uring.
//!
//! # Readiness and buffers
//!
//! Sockets are registered edge-triggered. A readable connection is read until the kernel
//! says `WouldBlock` or a read comes back short (the socket is empty then, and later bytes
//! are a new edge: one `read(2)` per request instead of two), into one receive buffer per
//! worker ([`RECV_BUF`] bytes), handed to
//! the connection's core in place; only the tail of a frame split across reads is copied. To stay fair, one connection gets at most
//! [`READS_PER_EVENT`] reads per wake-up; the rest waits in the worker's `again` list.
//! Answers are written with one non-blocking `write(2)`; what the socket cannot take is
//! written on writability, and the peer is not read from meanwhile.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::lifecycle::{self, Backend, Core, SlotKey};
use super::Shared;
use ixn_proto::tls::ListenerKind;

/// Bytes of the worker's receive buffer: a registration request is about 60 bytes; a
/// TLS record at most 16 KiB.
const RECV_BUF: usize = 16 * 1024;
/// Reads one connection gets per wake-up before the others' turn.
const READS_PER_EVENT: usize = 16;
/// Accepts one listener gets per wake-up before the connections' turn.
const ACCEPTS_PER_EVENT: usize = 256;
/// Listener tokens count down from here; connection tokens are `generation << 32 | slot`
/// (generations stay below 2^30, so the two never meet).
const LISTENER_BASE: usize = usize::MAX;
/// The fleet thread's wake-up (above every connection token, below the listeners').
const WAKE: Token = Token(1 << 62);

fn token(key: SlotKey) -> Token {
    Token((key.generation as usize) << 32 | key.slot)
}

fn token_parts(t: Token) -> SlotKey {
    SlotKey {
        slot: t.0 & 0xffff_ffff,
        generation: (t.0 >> 32) as u32,
    }
}

/// A connection's socket as this backend holds it.
#[derive(Debug)]
pub(super) struct Io {
    stream: TcpStream,
    /// Watched for writability too (answers wait for the socket).
    writable: bool,
}

/// The poll, its listeners and the receive buffer: what moves bytes for one worker.
pub(super) struct Epoll {
    poll: Poll,
    listeners: Vec<(TcpListener, ListenerKind)>,
    /// Listeners whose turn ended before they ran dry: accepted from at the next wake-up.
    accept_again: Vec<usize>,
    /// Listeners whose accept failed for lack of descriptors: retried at the next tick.
    accept_paused: Vec<usize>,
    accepting: bool,
    /// Over the connection rate (`pace` mode): the listeners are not read until the next
    /// second (their backlog waits in the kernel).
    pacing: bool,
    last_warn: Option<Instant>,
    /// Connections to read at the next wake-up: their turn ended before their socket ran
    /// dry, or their answers drained and what waited is to be read (`true`: read until
    /// the socket says `WouldBlock`, an end of stream may wait there).
    again: Vec<(SlotKey, bool)>,
    recv: Box<[u8]>,
    /// A wake-up asked for by [`Backend::wake_in`].
    wake_at: Option<Instant>,
}

impl Backend for Epoll {
    type Io = Io;

    fn open(&mut self, key: SlotKey, io: &mut Io) -> std::io::Result<()> {
        // Bytes that came with the handshake are reported by the first wait.
        self.poll
            .registry()
            .register(&mut io.stream, token(key), Interest::READABLE)
    }

    fn send_now(&mut self, io: &mut Io, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match io.stream.write(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                n => return n,
            }
        }
    }

    fn send_later(&mut self, key: SlotKey, io: &mut Io, _buf: &[u8]) -> std::io::Result<()> {
        if !io.writable {
            io.writable = true;
            let both = Interest::READABLE | Interest::WRITABLE;
            self.poll
                .registry()
                .reregister(&mut io.stream, token(key), both)?;
        }
        Ok(())
    }

    fn resume(&mut self, key: SlotKey, io: &mut Io) {
        if io.writable {
            io.writable = false;
            let _ = self
                .poll
                .registry()
                .reregister(&mut io.stream, token(key), Interest::READABLE);
        }
        // What waited is read at the next wake-up, until `WouldBlock`: an end of stream
        // that arrived meanwhile was an edge no read has seen.
        self.again.push((key, true));
    }

    fn pause(&mut self, _key: SlotKey, _io: &mut Io) {
        // Edge-triggered: a connection the core does not read is simply not read; what
        // waits in its socket is read after `resume`.
    }

    fn shutdown_write(&mut self, io: &mut Io) {
        let _ = io.stream.shutdown(Shutdown::Write);
    }

    fn close(&mut self, _key: SlotKey, _io: &mut Io) -> bool {
        // The stream is dropped with its slot: one `close(2)`, which also takes it out of
        // the epoll set.
        true
    }

    fn refuse_now(&mut self, mut io: Io, answer: &[u8]) {
        if !answer.is_empty() {
            let _ = io.stream.write(answer);
            let _ = io.stream.shutdown(Shutdown::Write);
        }
    }

    fn stop_accepting(&mut self, refuse_backlog: bool) {
        self.accepting = false;
        self.accept_again.clear();
        self.accept_paused.clear();
        for (l, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
            if refuse_backlog {
                lifecycle::refuse_new_connections(l);
            }
        }
    }

    fn detachable(&self, _io: &Io) -> bool {
        // Nothing is ever in flight on an epoll socket.
        true
    }

    fn detach(&mut self, mut io: Io) -> std::os::fd::OwnedFd {
        let _ = self.poll.registry().deregister(&mut io.stream);
        io.stream.into()
    }

    fn adopt(&mut self, fd: std::os::fd::OwnedFd) -> Io {
        Io {
            stream: TcpStream::from(fd),
            writable: false,
        }
    }

    fn accept_again(&mut self) {
        self.accept_again.append(&mut self.accept_paused);
    }

    fn pause_accepting(&mut self) {
        self.pacing = true;
    }

    fn resume_accepting(&mut self) {
        self.pacing = false;
        if self.accepting {
            // Edge-triggered: the backlog that waited raised no new event; look at every
            // listener.
            self.accept_again = (0..self.listeners.len()).collect();
        }
    }

    fn listeners(&self) -> Vec<(std::os::fd::BorrowedFd<'_>, ListenerKind)> {
        use std::os::fd::AsFd;
        self.listeners
            .iter()
            .map(|(l, k)| (l.as_fd(), *k))
            .collect()
    }

    fn wake_in(&mut self, after: Duration) {
        let at = Instant::now() + after;
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
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
    let mut w = Worker {
        b: Epoll {
            poll,
            accept_again: (0..mio_listeners.len()).collect(),
            accept_paused: Vec::new(),
            listeners: mio_listeners,
            accepting: true,
            pacing: false,
            last_warn: None,
            again: Vec::new(),
            recv: vec![0; RECV_BUF].into_boxed_slice(),
            wake_at: None,
        },
        core: Core::new(index, shared),
    };
    w.core.adopt_queued(&mut w.b);
    let registry = w.b.poll.registry();
    w.core
        .ready(|| Ok(crate::fleet::Wake::Mio(mio::Waker::new(registry, WAKE)?)));
    w.run();
}

/// One worker: the shared lifecycle and this backend.
struct Worker {
    core: Core<Epoll>,
    b: Epoll,
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let tick = self.core.shared.config.timer_tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let busy = !self.b.again.is_empty() || !self.b.accept_again.is_empty();
            self.core.turn_over(&mut self.b);
            let until = match self.b.wake_at {
                Some(w) if w < next_tick => w,
                _ => next_tick,
            };
            let wait = if busy {
                Duration::ZERO
            } else {
                until.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.b.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("epoll_wait: {e}");
                    return;
                }
            }
            self.core.now = Instant::now();
            if self.b.wake_at.is_some_and(|w| w <= self.core.now) {
                self.b.wake_at = None;
            }
            for l in std::mem::take(&mut self.b.accept_again) {
                self.accept(l);
            }
            for (key, closed) in std::mem::take(&mut self.b.again) {
                if self.core.live(key) {
                    self.readable(key.slot, closed);
                }
            }
            let mut woken = false;
            for e in events.iter() {
                let t = e.token();
                if t == WAKE {
                    woken = true;
                    continue;
                }
                if t.0 > LISTENER_BASE - self.b.listeners.len() {
                    self.accept(LISTENER_BASE - t.0);
                    continue;
                }
                let key = token_parts(t);
                if e.is_writable() && self.core.live(key) {
                    self.core.writable(&mut self.b, key.slot);
                }
                let closed = e.is_read_closed() || e.is_error();
                if (e.is_readable() || closed) && self.core.live(key) {
                    self.readable(key.slot, closed);
                }
            }
            if woken {
                self.core.woken(&mut self.b);
            }
            self.core.unpace(&mut self.b);
            if self.core.now < next_tick {
                continue;
            }
            next_tick = (next_tick + tick).max(self.core.now);
            if self.core.tick(&mut self.b) {
                break;
            }
        }
        self.core.finish();
    }

    /// Accepts from listener `l` until it runs dry (or its turn ends).
    fn accept(&mut self, l: usize) {
        if !self.b.accepting || self.b.pacing {
            return;
        }
        for _ in 0..ACCEPTS_PER_EVENT {
            if self.b.pacing {
                // This accept's connection was paced: the rest wait in the backlog.
                return;
            }
            let (listener, kind) = &self.b.listeners[l];
            let kind = *kind;
            match listener.accept() {
                Ok((stream, peer)) => {
                    // Read again: this accept may come well after the wake-up, and a
                    // deadline must never start before the connection existed.
                    self.core.now = Instant::now();
                    let io = Io {
                        stream,
                        writable: false,
                    };
                    self.core.accepted(&mut self.b, io, peer, kind);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.core.metrics.accept_error();
                    let errno = e.raw_os_error().unwrap_or(0);
                    let now = self.core.now;
                    if lifecycle::out_of_descriptors(errno, &mut self.b.last_warn, now) {
                        self.b.accept_paused.push(l);
                        return;
                    }
                }
            }
        }
        self.b.accept_again.push(l);
    }

    /// Reads connection `i` until its socket runs dry, it closes, or its turn ends.
    /// `closed`: the event also said the peer closed or reset, which no later edge will
    /// repeat, so a short read does not end the turn: the read that sees the end comes.
    fn readable(&mut self, i: usize, closed: bool) {
        let key = SlotKey {
            slot: i,
            generation: self.core.slots[i].generation,
        };
        for _ in 0..READS_PER_EVENT {
            if !self.core.reading(i) {
                // Not reading while its answers wait: read once they drain.
                return;
            }
            match self.core.slots[i].io.stream.read(&mut self.b.recv) {
                Ok(0) => return self.core.eof(&mut self.b, i),
                Ok(n) => {
                    if let Some(p) = self.core.feed(i, &self.b.recv[..n]) {
                        self.core.carry_out(&mut self.b, i, p);
                    }
                    if !self.core.live(key) || (n < RECV_BUF && !closed) {
                        // A short read emptied the socket: what arrives later is a new edge,
                        // so the read that would only say `WouldBlock` is saved.
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.core.reset(&mut self.b, i),
            }
        }
        self.b.again.push((key, closed));
    }
}
