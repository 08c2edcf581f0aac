//! One load thread: a tokio-uring event loop running scenario tasks, closed or open loop.
//!
//! Over 600 lines on purpose: the event loop and every scenario's task share the same
//! connection and timing helpers.
//!
//! Connections are made with `socket2` (so they can be bound to a chosen source address
//! with `IP_BIND_ADDRESS_NO_PORT`) and connected without blocking; the first io_uring
//! operation on the socket waits for the handshake to finish, so no thread ever blocks.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ixn::protocol::{decode, encode, ErrorCode, Message, RegisterClient, DEFAULT_MAX_FRAME_LEN};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::cli::{Args, Mix, Scenario};
use crate::stats::{classify, record, Shared, Totals};

/// What one thread needs.
pub struct Plan {
    pub args: Args,
    pub index: usize,
    pub threads: usize,
    pub sources: Vec<IpAddr>,
    /// `--tls`: the client config and the name the server's certificate must carry.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub mix: Mix,
    /// Start of measurement (after warm-up).
    pub measure_from: Instant,
    /// End of measurement.
    pub measure_until: Instant,
}

/// One scenario instance's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Churn,
    Hold,
    Silent,
    Invalid(InvalidCase),
    /// A storm client registered again after its drop.
    Storm,
    /// Registered with a keepalive, then silent until the server's EventError 19.
    Lapse,
}

/// The invalid clients the `invalid` scenario rotates through, each declared once with
/// its frames and the ErrorCode each frame must be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidCase {
    /// A ClientName not in the registry: 2.
    UnknownClient,
    /// A ClientType outside 1..=5: 3.
    UndefinedClientType,
    /// The credential client with a wrong Credential: 4.
    WrongCredential,
    /// Another message before registering: 1.
    OtherMessageFirst,
    /// A rejected registration, then another message: 2, then 1.
    FirstOneThenTheOther,
}

impl InvalidCase {
    /// Every case, in the order they rotate.
    pub const ALL: [InvalidCase; 5] = [
        Self::UnknownClient,
        Self::UndefinedClientType,
        Self::WrongCredential,
        Self::OtherMessageFirst,
        Self::FirstOneThenTheOther,
    ];

    /// Its name in the summary and the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnknownClient => "unknown_client",
            Self::UndefinedClientType => "undefined_client_type",
            Self::WrongCredential => "wrong_credential",
            Self::OtherMessageFirst => "other_message_first",
            Self::FirstOneThenTheOther => "first_one_then_the_other",
        }
    }

    /// The case after this one.
    fn next(self) -> Self {
        let i = Self::ALL.iter().position(|c| *c == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    /// The frames to send, each with the ErrorCode that must answer it.
    fn frames(self, rid: i32, a: &Args) -> Vec<(Vec<u8>, ErrorCode)> {
        const UNKNOWN: &str = "ixn-loadgen-unknown-client";
        match self {
            Self::UnknownClient => vec![(rrc(rid, UNKNOWN, 1, None), ErrorCode::UnknownClient)],
            Self::UndefinedClientType => vec![(
                rrc(rid, &a.client_name, 99, None),
                ErrorCode::ClientTypeNotAllowed,
            )],
            Self::WrongCredential => vec![(
                rrc(
                    rid,
                    &a.credential_client,
                    a.credential_client_type,
                    Some("ixn-loadgen-wrong"),
                ),
                ErrorCode::AuthenticationFailed,
            )],
            Self::OtherMessageFirst => vec![(other(rid), ErrorCode::ClientNotRegistered)],
            Self::FirstOneThenTheOther => vec![
                (rrc(rid, UNKNOWN, 1, None), ErrorCode::UnknownClient),
                (other(rid), ErrorCode::ClientNotRegistered),
            ],
        }
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Churn => "churn",
            Kind::Hold => "hold",
            Kind::Silent => "silent",
            Kind::Invalid(_) => "invalid",
            Kind::Storm => "storm",
            Kind::Lapse => "lapse",
        }
    }
}

struct Thread {
    plan: Plan,
    shared: Arc<Shared>,
    totals: RefCell<Totals>,
    rng: Cell<u64>,
    next_source: Cell<usize>,
    invalid_case: Cell<InvalidCase>,
    held: RefCell<Vec<Rc<TcpStream>>>,
    /// Tasks spawned and not yet finished. They are counted instead of kept as join
    /// handles: the open loop used to scan its handles for finished ones, a cost that grew
    /// with the number in flight and, against a stalled server, exceeded the connections'.
    in_flight: Cell<usize>,
    /// Signalled when `in_flight` drops to zero.
    drained: tokio::sync::Notify,
}

/// Error kinds, as reported in the summary and the JSON.
mod err {
    pub const CONNECT: &str = "connect_failed";
    pub const IO: &str = "io_error";
    pub const TIMEOUT: &str = "timeout";
    pub const CLOSED: &str = "closed_before_answer";
    pub const OVERLOADED: &str = "server_overloaded";
    pub const SHUTTING_DOWN: &str = "server_shutting_down";
    pub const REJECTED: &str = "registration_rejected";
    pub const BAD_ANSWER: &str = "unexpected_answer";
    pub const WRONG_CODE: &str = "wrong_error_code";
    pub const DROPPED_EARLY: &str = "dropped_before_deadline";
    pub const DROPPED_LATE: &str = "dropped_after_deadline";
    pub const DATA_ON_SILENT: &str = "data_on_silent_connection";
    pub const HOLD_DROPPED: &str = "held_connection_dropped";
    pub const TLS: &str = "tls_handshake_failed";
    pub const NO_KEEPALIVE: &str = "no_keepalive_in_force";
}

/// Runs one thread to completion and returns what it measured.
pub fn thread_main(plan: Plan, shared: Arc<Shared>) -> Totals {
    if plan.args.pin {
        if let Some(ids) = core_affinity::get_core_ids() {
            if !ids.is_empty() {
                core_affinity::set_for_current(ids[(plan.index + plan.args.first_cpu) % ids.len()]);
            }
        }
    }
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun().setup_taskrun_flag();
    let mut b = tokio_uring::builder();
    b.entries(4096).uring_builder(&ring);
    let rt = match tokio_uring::Runtime::new(&b) {
        Ok(rt) => rt,
        Err(e) => {
            shared.fail(format!("cannot create an io_uring ring: {e}"));
            return Totals::default();
        }
    };
    let seed =
        0x9e37_79b9_7f4a_7c15u64 ^ (plan.index as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let t = Rc::new(Thread {
        plan,
        shared,
        totals: RefCell::new(Totals::default()),
        rng: Cell::new(seed),
        next_source: Cell::new(0),
        invalid_case: Cell::new(InvalidCase::UnknownClient),
        held: RefCell::new(Vec::new()),
        in_flight: Cell::new(0),
        drained: tokio::sync::Notify::new(),
    });
    rt.block_on(run(t.clone()));
    let totals = std::mem::take(&mut *t.totals.borrow_mut());
    totals
}

async fn run(t: Rc<Thread>) {
    let args = &t.plan.args;
    let share = |total: usize| {
        let (n, i) = (t.plan.threads, t.plan.index);
        total / n + usize::from(i < total % n)
    };
    if matches!(args.scenario, Scenario::Hold | Scenario::Storm) {
        // Open connections at this thread's share of --connect-rate, then hold them.
        let n = share(args.connections);
        let per_sec = (args.connect_rate / t.plan.threads as f64).max(0.001);
        let start = Instant::now();
        for k in 0..n {
            if t.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let at = start + Duration::from_secs_f64(k as f64 / per_sec);
            tokio::time::sleep_until(at.into()).await;
            if args.scenario == Scenario::Storm {
                let client = k * t.plan.threads + t.plan.index;
                spawn_counted(&t, storm_client(t.clone(), client));
            } else {
                spawn_counted(&t, one(t.clone(), Kind::Hold, at));
            }
        }
        while !t.shared.stop.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The run is over: wake every held connection's pending read.
        for s in t.held.borrow_mut().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    } else if let Some(stages) = &args.stages {
        // Open loop on a rate profile: this thread takes every `threads`th arrival, each
        // at the exact time the profile's integral reaches it.
        let start = Instant::now();
        let mut n = t.plan.index as f64 + 1.0;
        while let Some(due) = stages.time_of(n) {
            let at = start + due;
            tokio::time::sleep_until(at.into()).await;
            if t.shared.stop.load(Ordering::Acquire) || !t.admit(at) {
                break;
            }
            spawn_counted(&t, one(t.clone(), t.pick(), at));
            n += t.plan.threads as f64;
        }
        t.shared.stop.store(true, Ordering::Release);
    } else if let Some(rate) = args.rate {
        // Open loop: starts at fixed intended times, whatever the server does.
        let per_sec = (rate / t.plan.threads as f64).max(0.001);
        let interval = Duration::from_secs_f64(1.0 / per_sec);
        let mut at = Instant::now() + interval.mul_f64(t.plan.index as f64 / t.plan.threads as f64);
        loop {
            tokio::time::sleep_until(at.into()).await;
            if t.shared.stop.load(Ordering::Acquire) || !t.admit(at) {
                break;
            }
            spawn_counted(&t, one(t.clone(), t.pick(), at));
            at += interval;
        }
    } else {
        // Closed loop: a fixed number of connections in flight.
        for _ in 0..share(args.concurrency) {
            let w = t.clone();
            spawn_counted(&t, async move {
                loop {
                    let at = Instant::now();
                    if w.shared.stop.load(Ordering::Acquire) || !w.admit(at) {
                        break;
                    }
                    one(w.clone(), w.pick(), at).await;
                }
            });
        }
    }
    // `notify_one` keeps a permit when nobody waits, so a task finishing between the check
    // and the wait is not missed.
    while t.in_flight.get() > 0 {
        t.drained.notified().await;
    }
}

/// Starts a detached task (a scenario instance, or a closed-loop worker), counted in
/// `in_flight` so that `run` can wait for all of them.
fn spawn_counted(t: &Rc<Thread>, task: impl std::future::Future<Output = ()> + 'static) {
    t.in_flight.set(t.in_flight.get() + 1);
    let t = t.clone();
    tokio_uring::spawn(async move {
        task.await;
        t.in_flight.set(t.in_flight.get() - 1);
        if t.in_flight.get() == 0 {
            t.drained.notify_one();
        }
    });
}

impl Thread {
    /// Whether a connection intended to start at `at` may start (time and --count).
    fn admit(&self, at: Instant) -> bool {
        if at >= self.plan.measure_until {
            self.shared.stop.store(true, Ordering::Release);
            return false;
        }
        if at < self.plan.measure_from {
            return true;
        }
        let n = self.shared.started.fetch_add(1, Ordering::AcqRel) + 1;
        match self.plan.args.count {
            Some(c) if n > c => {
                self.shared.stop.store(true, Ordering::Release);
                false
            }
            _ => true,
        }
    }

    fn rand(&self) -> u64 {
        // xorshift64*: cheap, deterministic per thread, good enough to pick scenarios.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick(&self) -> Kind {
        let invalid = || {
            let c = self.invalid_case.get();
            self.invalid_case.set(c.next());
            Kind::Invalid(c)
        };
        match self.plan.args.scenario {
            Scenario::Churn => Kind::Churn,
            Scenario::Hold | Scenario::Storm => Kind::Hold,
            Scenario::Silent => Kind::Silent,
            Scenario::Lapse => Kind::Lapse,
            Scenario::Invalid => invalid(),
            Scenario::Mix => {
                let m = self.plan.mix;
                let r = (self.rand() % u64::from(m.churn + m.invalid + m.silent)) as u32;
                if r < m.churn {
                    Kind::Churn
                } else if r < m.churn + m.invalid {
                    invalid()
                } else {
                    Kind::Silent
                }
            }
        }
    }

    fn source(&self) -> Option<IpAddr> {
        let s = &self.plan.sources;
        if s.is_empty() {
            return None;
        }
        let i = self.next_source.get();
        self.next_source.set(i.wrapping_add(1));
        Some(s[(i * self.plan.threads + self.plan.index) % s.len()])
    }

    fn error(&self, measured: bool, kind: &'static str) {
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut w) = self.shared.windows[self.plan.index].lock() {
            w.errors += 1;
        }
        if measured {
            *self.totals.borrow_mut().errors.entry(kind).or_default() += 1;
        }
    }

    fn ok(&self, measured: bool, kind: Kind, latency: Duration) {
        self.shared.ok.fetch_add(1, Ordering::Relaxed);
        // A silent connection has no answer: its drop time is in its own histogram.
        let answered = kind != Kind::Silent;
        if let Ok(mut w) = self.shared.windows[self.plan.index].lock() {
            w.ok += 1;
            if answered {
                record(&mut w.latency, latency);
            }
        }
        if measured {
            let mut t = self.totals.borrow_mut();
            t.ok += 1;
            if answered {
                record(&mut t.latency, latency);
            }
            *t.ok_by_kind.entry(kind.name()).or_default() += 1;
            if let Kind::Invalid(case) = kind {
                *t.invalid_cases.entry(case.name()).or_default() += 1;
            }
        }
    }
}

/// IP_BIND_ADDRESS_NO_PORT: defer the port choice to connect(), so one source address
/// serves ~28k connections *per destination* instead of ~28k in all.
fn bind_address_no_port(s: &Socket) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `s` is an open socket for the duration of the call; the option value is a
    // live c_int whose size is passed alongside it, as setsockopt(2) requires.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Starts a non-blocking connect; the caller's first io_uring operation waits for it.
fn start_connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    reset_close: bool,
) -> std::io::Result<TcpStream> {
    // SOCK_NONBLOCK at creation: no fcntl round trips. No TCP_NODELAY: each frame is
    // written alone, after the previous answer, so Nagle never holds one back.
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if let Some(src) = source {
        if src.is_ipv4() {
            bind_address_no_port(&s)?;
        }
        s.bind(&SocketAddr::new(src, 0).into())?;
    }
    if reset_close {
        // Close with RST: no TIME_WAIT on our side, at the cost of a reset the server sees.
        s.set_linger(Some(Duration::ZERO))?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

fn is_fatal(e: &std::io::Error) -> Option<String> {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => Some(format!(
            "out of file descriptors ({e}); lower --concurrency/--connections or raise `ulimit -n`"
        )),
        Some(libc::EADDRNOTAVAIL) => Some(format!(
            "out of local ports or source addresses ({e}); add addresses with --source (e.g. 127.0.0.2-127.0.0.40)"
        )),
        _ => None,
    }
}

/// A decoded server answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ack {
        rid: i32,
        id: Option<i32>,
        /// The keepalive in force, in seconds, when the EventAck carries one.
        keep_alive: Option<u16>,
    },
    Error {
        rid: i32,
        code: i32,
    },
}

struct Conn {
    s: Rc<TcpStream>,
    /// Plaintext received and not yet decoded.
    buf: Vec<u8>,
    /// With `--tls`: rustls's client side (boxed: plain connections stay small).
    tls: Option<Box<rustls::ClientConnection>>,
}

impl Conn {
    async fn send(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        let bytes = match self.tls.as_deref_mut() {
            None => bytes,
            Some(c) => {
                crate::tls::queue(c, &bytes);
                let mut records = Vec::with_capacity(bytes.len() + 64);
                crate::tls::pending_records(c, &mut records);
                records
            }
        };
        let (res, _) = self.s.write_all(bytes).await;
        res
    }

    /// With `--tls`: runs the handshake to its end (the first write of the handshake
    /// also waits for the TCP connect).
    async fn handshake(&mut self) -> std::io::Result<()> {
        loop {
            let Some(c) = self.tls.as_deref_mut() else {
                return Ok(());
            };
            let mut records = Vec::new();
            crate::tls::pending_records(c, &mut records);
            let handshaking = c.is_handshaking();
            if !records.is_empty() {
                let (res, _) = self.s.write_all(records).await;
                res?;
            }
            if !handshaking {
                return Ok(());
            }
            if self.read_more().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads once from the socket into the plaintext buffer (decrypting with `--tls`);
    /// returns the bytes read from the socket (0: end of stream).
    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.tls.is_none() {
            if self.buf.capacity() - self.buf.len() < 64 {
                self.buf.reserve(256);
            }
            let len = self.buf.len();
            let (res, slice) = self
                .s
                .read(std::mem::take(&mut self.buf).slice(len..))
                .await;
            self.buf = slice.into_inner();
            return res;
        }
        let (res, records) = self.s.read(Vec::with_capacity(4096)).await;
        let n = res?;
        if let Some(c) = self.tls.as_deref_mut() {
            crate::tls::receive(c, &records[..n], &mut self.buf)?;
        }
        Ok(n)
    }

    /// The next answer; `Ok(None)` when the server closed the connection.
    async fn answer(&mut self) -> std::io::Result<Option<Answer>> {
        loop {
            match decode(&self.buf, DEFAULT_MAX_FRAME_LEN) {
                Ok(Some(f)) => {
                    let a = match f.message {
                        Message::EventAck(a) => Answer::Ack {
                            rid: a.reference_id,
                            id: a.proxy_client_id,
                            keep_alive: a.keep_alive,
                        },
                        Message::EventError(e) => Answer::Error {
                            rid: e.reference_id,
                            code: e.error_code,
                        },
                        _ => Answer::Error { rid: 0, code: -1 },
                    };
                    self.buf.drain(..f.frame_len);
                    return Ok(Some(a));
                }
                Ok(None) => {}
                Err(_) => return Ok(Some(Answer::Error { rid: 0, code: -1 })),
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }
}

fn rrc(reference_id: i32, name: &str, ty: i32, credential: Option<&str>) -> Vec<u8> {
    rrc_keep_alive(reference_id, name, ty, credential, None)
}

fn rrc_keep_alive(
    reference_id: i32,
    name: &str,
    ty: i32,
    credential: Option<&str>,
    keep_alive: Option<Duration>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    let _ = encode(
        &Message::RegisterClient(RegisterClient {
            reference_id,
            client_name: name,
            client_type: ty,
            proxy_client_id: None,
            credential,
            extension: None,
            // `--keepalive` is checked to be whole seconds that fit.
            keep_alive: keep_alive.map(|k| k.as_secs() as u16),
        }),
        &mut v,
    );
    v
}

fn keep_alive_request(reference_id: i32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    let _ = encode(
        &Message::KeepAlive(ixn::protocol::KeepAlive { reference_id }),
        &mut v,
    );
    v
}

fn other(reference_id: i32) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    let _ = encode(
        &Message::Other {
            msg_id: 0x0010,
            reference_id: Some(reference_id),
        },
        &mut v,
    );
    v
}

/// hold with --keepalive: a RequestKeepAlive every `every`, each answer timed, until the
/// run ends (the held socket is shut down) or an answer is not its EventAck (returned).
async fn keep_alive_loop(
    t: &Thread,
    c: &mut Conn,
    every: Duration,
    measured: bool,
) -> std::io::Result<Option<Answer>> {
    let mut next = Instant::now() + every;
    loop {
        tokio::time::sleep_until(next.into()).await;
        if t.shared.stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        let rid = (t.rand() & 0x7fff_ffff) as i32;
        let sent = Instant::now();
        c.send(keep_alive_request(rid)).await?;
        match c.answer().await? {
            Some(Answer::Ack { rid: r, .. }) if r == rid => {
                if measured && sent < t.plan.measure_until {
                    record(&mut t.totals.borrow_mut().keepalive, sent.elapsed());
                }
            }
            other => return Ok(other),
        }
        next += every;
    }
}

/// lapse: registered with keepalive `k` (in force) by the frame written at `last`, the
/// client says nothing more; the server must send EventError{0, 19} no earlier than
/// 1.5 × k after that frame and within a tick (+ --slack) after, then close.
async fn lapse(
    t: &Thread,
    c: &mut Conn,
    last: Instant,
    k: u16,
    measured: bool,
) -> Result<Duration, &'static str> {
    let a = &t.plan.args;
    let answer = c.answer().await.map_err(io)?;
    let elapsed = last.elapsed();
    match answer {
        Some(Answer::Error { rid: 0, code: 19 }) => {}
        Some(Answer::Error { code: 11, .. }) => return Err(err::SHUTTING_DOWN),
        Some(_) => return Err(err::WRONG_CODE),
        None => return Err(err::CLOSED),
    }
    // Close once written: nothing follows the EventError but the end of stream.
    if !matches!(c.answer().await, Ok(None)) {
        return Err(err::BAD_ANSWER);
    }
    let deadline = Duration::from_millis(u64::from(k) * 1500);
    let window = a.timer_tick + a.slack;
    if measured {
        let mut tot = t.totals.borrow_mut();
        record(&mut tot.lapsed, elapsed);
        classify(elapsed, deadline, window, &mut tot.lapse_drops);
    }
    if elapsed < deadline {
        return Err(err::DROPPED_EARLY);
    }
    if elapsed > deadline + window {
        return Err(err::DROPPED_LATE);
    }
    Ok(elapsed)
}

/// Runs one scenario instance intended to start at `at` and records its outcome.
async fn one(t: Rc<Thread>, kind: Kind, at: Instant) {
    let measured = at >= t.plan.measure_from;
    let io_timeout = t.plan.args.io_timeout;
    t.shared.active.fetch_add(1, Ordering::Relaxed);
    // A held connection is meant to outlive any I/O timeout: its registration is timed
    // inside the scenario, the holding is not.
    let socket = RefCell::new(None);
    let outcome = if kind == Kind::Hold {
        Ok(scenario(&t, kind, at, measured, &socket).await)
    } else {
        let r = tokio::time::timeout(io_timeout, scenario(&t, kind, at, measured, &socket)).await;
        if r.is_err() {
            // The timed-out operation still holds the socket in the ring, and a connect
            // whose SYNs a full backlog drops would hold it for the kernel's SYN retries
            // (minutes): shut it down so that its descriptor comes back now.
            if let Some(s) = socket.borrow_mut().take() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        r
    };
    t.shared.active.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Ok(Ok(latency)) => t.ok(measured, kind, latency),
        Ok(Err(kind)) => t.error(measured, kind),
        Err(_) => t.error(measured, err::TIMEOUT),
    }
}

async fn scenario(
    t: &Thread,
    kind: Kind,
    at: Instant,
    measured: bool,
    socket: &RefCell<Option<Rc<TcpStream>>>,
) -> Result<Duration, &'static str> {
    let a = &t.plan.args;
    // Before connect(2): the server cannot accept, and start its deadline, any earlier.
    let connect_started = Instant::now();
    let mut c = t
        .connect(a.target, kind != Kind::Silent, measured, socket)
        .await?;
    let rid = (t.rand() & 0x7fff_ffff) as i32;
    match kind {
        // Storm clients run `storm_client`; were one started here it would be a churn.
        Kind::Churn | Kind::Hold | Kind::Storm | Kind::Lapse => {
            let spread;
            let name = if a.client_names > 0 {
                let i = t.shared.names.fetch_add(1, Ordering::Relaxed) % a.client_names;
                spread = format!("{}{i}", a.client_name);
                &spread
            } else {
                &a.client_name
            };
            let keep_alive = a
                .keepalive
                .filter(|_| matches!(kind, Kind::Hold | Kind::Lapse));
            let request = rrc_keep_alive(
                rid,
                name,
                a.client_type,
                a.credential.as_deref(),
                keep_alive,
            );
            let exchange = async {
                // The server may read the request before this task sees its send complete
                // (on a busy loadgen thread, tens of milliseconds before): a lapse is timed
                // from before the write, the earliest the server's clock could start.
                let writing = Instant::now();
                c.send(request).await.map_err(io)?;
                let connected = Instant::now();
                Ok::<_, &'static str>((writing, connected, c.answer().await.map_err(io)?))
            };
            // Other kinds run under `one`'s --io-timeout already; one more timer per
            // connection would only cost (a timer-wheel entry each).
            let (writing, connected, answer) = if kind == Kind::Hold {
                tokio::time::timeout(a.io_timeout, exchange)
                    .await
                    .map_err(|_| err::TIMEOUT)??
            } else {
                exchange.await?
            };
            let done = Instant::now();
            let in_force = match answer {
                Some(Answer::Ack { keep_alive, .. }) => keep_alive,
                _ => None,
            };
            acknowledged(answer, rid)?;
            if measured {
                let mut tot = t.totals.borrow_mut();
                record(&mut tot.connect, connected.saturating_duration_since(at));
                record(&mut tot.register, done - connected);
            }
            if kind == Kind::Lapse {
                let k = in_force.ok_or(err::NO_KEEPALIVE)?;
                return lapse(t, &mut c, writing, k, measured).await;
            }
            if kind == Kind::Hold {
                t.held.borrow_mut().push(c.s.clone());
                // Held until the run ends (shutdown below) or the server drops it.
                let r = match keep_alive {
                    Some(every) => keep_alive_loop(t, &mut c, every, measured).await,
                    None => c.answer().await,
                };
                if !t.shared.stop.load(Ordering::Acquire) {
                    return Err(match r {
                        Ok(Some(Answer::Error { code: 11, .. })) => err::SHUTTING_DOWN,
                        _ => err::HOLD_DROPPED,
                    });
                }
            }
            Ok(done.saturating_duration_since(at))
        }
        Kind::Silent => {
            let r = c.answer().await;
            let elapsed = connect_started.elapsed();
            match r {
                Ok(Some(_)) => return Err(err::DATA_ON_SILENT),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(io(e)),
            }
            let window = a.timer_tick + a.slack;
            if measured {
                let mut tot = t.totals.borrow_mut();
                record(&mut tot.dropped, elapsed);
                classify(elapsed, a.registration_timeout.0, window, &mut tot.drops);
            }
            if elapsed < a.registration_timeout.0 {
                return Err(err::DROPPED_EARLY);
            }
            if elapsed > a.registration_timeout.0 + window {
                return Err(err::DROPPED_LATE);
            }
            Ok(Instant::now().saturating_duration_since(at))
        }
        Kind::Invalid(case) => {
            let mut first_error = None;
            for (f, want) in case.frames(rid, a) {
                c.send(f).await.map_err(io)?;
                match c.answer().await.map_err(io)? {
                    Some(Answer::Error { code, rid: r }) if code == want.code() && r == rid => {}
                    Some(Answer::Error { code, .. })
                        if code == ErrorCode::ServerOverloaded.code() =>
                    {
                        return Err(err::OVERLOADED)
                    }
                    Some(Answer::Error { .. }) => return Err(err::WRONG_CODE),
                    Some(_) => return Err(err::BAD_ANSWER),
                    None => return Err(err::CLOSED),
                }
                first_error.get_or_insert_with(Instant::now);
            }
            let answered = Instant::now();
            let first = first_error.unwrap_or(answered);
            // Then the server closes at its error deadline.
            match c.answer().await {
                Ok(Some(_)) => return Err(err::BAD_ANSWER),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(io(e)),
            }
            let elapsed = first.elapsed();
            let window = a.timer_tick + a.slack;
            if measured {
                let mut tot = t.totals.borrow_mut();
                record(&mut tot.error_close, elapsed);
                classify(
                    elapsed,
                    a.error_disconnect_timeout.0,
                    window,
                    &mut tot.error_drops,
                );
            }
            if elapsed + Duration::from_millis(2) < a.error_disconnect_timeout.0 {
                return Err(err::DROPPED_EARLY);
            }
            if elapsed > a.error_disconnect_timeout.0 + window {
                return Err(err::DROPPED_LATE);
            }
            Ok(answered.saturating_duration_since(at))
        }
    }
}

/// Maps an I/O error to its error kind.
fn io(e: std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        err::CONNECT
    } else {
        err::IO
    }
}

/// Whether `answer` is the EventAck of registration `rid`, else which error it is.
fn acknowledged(answer: Option<Answer>, rid: i32) -> Result<(), &'static str> {
    match answer {
        Some(Answer::Ack {
            rid: r,
            id: Some(id),
            ..
        }) if r == rid && id != 0 => Ok(()),
        Some(Answer::Error { code: 10, .. }) => Err(err::OVERLOADED),
        Some(Answer::Error { code: 11, .. }) => Err(err::SHUTTING_DOWN),
        Some(Answer::Error { .. }) => Err(err::REJECTED),
        Some(_) => Err(err::BAD_ANSWER),
        None => Err(err::CLOSED),
    }
}

impl Thread {
    /// Connects to `target` from the next source and, with `--tls` and `handshake`, runs
    /// the TLS handshake (timed when `measured`).
    async fn connect(
        &self,
        target: SocketAddr,
        handshake: bool,
        measured: bool,
        socket: &RefCell<Option<Rc<TcpStream>>>,
    ) -> Result<Conn, &'static str> {
        let a = &self.plan.args;
        let connect_started = Instant::now();
        let s = match start_connect(target, self.source(), a.reset_close) {
            Ok(s) => {
                let s = Rc::new(s);
                *socket.borrow_mut() = Some(s.clone());
                s
            }
            Err(e) => {
                if let Some(why) = is_fatal(&e) {
                    self.shared.fail(why);
                }
                return Err(err::CONNECT);
            }
        };
        let mut c = Conn {
            s,
            buf: Vec::with_capacity(128),
            tls: match &self.plan.tls {
                None => None,
                Some((cfg, name)) => Some(Box::new(
                    rustls::ClientConnection::new(cfg.clone(), name.clone())
                        .map_err(|_| err::TLS)?,
                )),
            },
        };
        if c.tls.is_some() && handshake {
            c.handshake().await.map_err(|_| err::TLS)?;
            if measured {
                let took = connect_started.elapsed();
                record(&mut self.totals.borrow_mut().handshake, took);
                if let Ok(mut w) = self.shared.windows[self.plan.index].lock() {
                    record(&mut w.handshake, took);
                }
            }
        }
        Ok(c)
    }

    /// Connects to `target` and registers, within --io-timeout.
    async fn register_on(&self, target: SocketAddr) -> Result<Conn, &'static str> {
        let a = &self.plan.args;
        let socket = RefCell::new(None);
        let attempt = async {
            let mut c = self.connect(target, true, true, &socket).await?;
            let rid = (self.rand() & 0x7fff_ffff) as i32;
            c.send(rrc(
                rid,
                &a.client_name,
                a.client_type,
                a.credential.as_deref(),
            ))
            .await
            .map_err(io)?;
            acknowledged(c.answer().await.map_err(io)?, rid)?;
            Ok(c)
        };
        let r = tokio::time::timeout(a.io_timeout, attempt).await;
        if r.is_err() {
            // As in `one`: a timed-out connect gives its descriptor back now.
            if let Some(s) = socket.borrow_mut().take() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        r.map_err(|_| err::TIMEOUT)?
    }

    /// The wait before reconnection attempt `attempt` (0 after the first failure):
    /// uniform below `--backoff` × 2^attempt, capped at `--backoff-max` (full jitter, so
    /// clients dropped together spread out instead of retrying in step).
    fn backoff(&self, attempt: u32) -> Duration {
        let a = &self.plan.args;
        let cap = a
            .backoff
            .saturating_mul(1u32 << attempt.min(20))
            .min(a.backoff_max);
        let unit = (self.rand() >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(unit)
    }
}

/// One client of the storm scenario: registers on --target and holds; once dropped, it
/// reconnects to --reconnect-targets (round robin from its own starting point) with
/// backoff until registered again, and holds again, until the run ends.
async fn storm_client(t: Rc<Thread>, client: usize) {
    let a = &t.plan.args;
    let storm = &t.shared.storm;
    let mut c = match t.register_on(a.target).await {
        Ok(c) => c,
        Err(kind) => return t.error(true, kind),
    };
    storm.registered_initially.fetch_add(1, Ordering::AcqRel);
    storm.registered.fetch_add(1, Ordering::AcqRel);
    let targets: Vec<SocketAddr> = if a.reconnect_targets.is_empty() {
        vec![a.target]
    } else {
        a.reconnect_targets.clone()
    };
    let mut next = client % targets.len();
    let mut first = true;
    loop {
        t.held.borrow_mut().push(c.s.clone());
        // Held until the run ends (its pending read is shut down) or the server drops it.
        let _ = c.answer().await;
        if t.shared.stop.load(Ordering::Acquire) {
            return;
        }
        storm.dropped(std::mem::take(&mut first));
        let dropped_at = Instant::now();
        let mut attempt = 0;
        c = loop {
            if t.shared.stop.load(Ordering::Acquire) {
                return;
            }
            storm.attempts.fetch_add(1, Ordering::AcqRel);
            let target = targets[next];
            next = (next + 1) % targets.len();
            match t.register_on(target).await {
                Ok(c) => break c,
                Err(kind) => {
                    t.error(true, kind);
                    tokio::time::sleep(t.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        };
        storm.back(a.connections as u64);
        t.ok(true, Kind::Storm, dropped_at.elapsed());
    }
}
