//! One connection's whole protocol, sans-IO: the PROXY preamble, the registration
//! [`Session`], the frame deadline and the close-once-written rules of docs/PROTOCOL.md §6.
//!
//! Over 600 lines on purpose: everything one socket's protocol does, and the contract an
//! engine relies on, is in one place; split, the close rules would be read in pieces.
//!
//! An engine owns the socket, the clock and a timer wheel; it feeds a [`Connection`] what
//! happened (bytes, end of stream, a deadline, the drain) and carries out the [`Progress`]
//! that comes back: which timer to arm or cancel, what to write, whether to close now or
//! once written. The connection holds at most one timer at a time ([`Connection::armed`]):
//! its registration or error deadline while unregistered or rejected, its frame deadline
//! or its keepalive deadline (whichever comes first) while registered, its linger while
//! closing. (The engine's write-stall timer is its own:
//! it watches the socket, not the protocol.)
//!
//! # Closing
//!
//! A close is either *now* ([`Action::CloseNow`]: nothing was ever answered, or the linger
//! is over) or *once written* ([`Action::CloseAfterWrite`]): the engine writes what the
//! call produced, shuts down its sending side (FIN) and calls [`Connection::on_flushed`],
//! which arms the linger; input that still arrives is consumed and dropped until the peer's
//! end of stream or the linger deadline. So no answer is ever lost to a reset.
//!
//! # Keepalive
//!
//! A registered connection with a keepalive k in force (docs/PROTOCOL.md §12) must send a
//! complete frame at least every 1.5 × k. A frame costs no wheel operation: it only records
//! the moment (`alive_ms`, milliseconds since accept, rounded up so a deadline is never
//! early), and when the keepalive deadline comes the connection compares it with that
//! moment and either re-arms for the rest or expires (EventError 19, close once written).
//! A frame begun and not complete arms whichever of its frame deadline and the keepalive
//! deadline comes first; the wheel sees one operation per partial frame, as it did before.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BufMut;

use crate::names::{Claims, Verdict};
use crate::protocol::ErrorCode;
use crate::registry::Registry;
use crate::session::{
    deadline, Close, CloseReason, Ctx, IdAllocator, Input, KeepAliveConfig, Kick, Output,
    Registration, Session, SessionConfig, State, Timer, TimerAction, TimerKind,
};
use crate::tls::{Handshake, HandshakeResult, ServerTls, TlsError, TlsPeer};

/// Settings every connection of a worker shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Registration and error deadlines.
    pub session: SessionConfig,
    /// Largest frame, length field included.
    pub max_frame_len: usize,
    /// A frame begun on a registered connection must complete within this.
    pub frame_timeout: Duration,
    /// Longest wait for the peer's close once the last answer is written.
    pub close_linger: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            max_frame_len: crate::defaults::MAX_FRAME_LEN,
            frame_timeout: crate::defaults::FRAME_TIMEOUT,
            close_linger: crate::defaults::CLOSE_LINGER,
        }
    }
}

/// What a connection needs from its worker for one call.
pub struct Env<'a> {
    /// Who may register.
    pub registry: &'a Registry,
    /// The worker's ProxyClientIds.
    pub ids: &'a mut IdAllocator,
    /// Shared settings.
    pub config: &'a ConnConfig,
    /// Admission of the address a PROXY header carries (docs/PROTOCOL.md §11), asked once
    /// the header has arrived: `Err` is the EventError to refuse with (the connection then
    /// closes once it is written; on TLS, at once and without a byte). `None` admits.
    pub gate: Option<&'a dyn Fn(IpAddr) -> Result<(), ErrorCode>>,
    /// The process's held names as this connection sees them (`on_duplicate`, docs/PROTOCOL.md
    /// §7); `None` treats every entry as `allow`.
    pub names: Option<Claims<'a>>,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("registry", &self.registry.len())
            .field("config", self.config)
            .field("gate", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

/// What an engine tells a connection from outside its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The server drains ([`Connection::on_drain`]).
    Drain,
    /// An operator or a newer registration closes it ([`Connection::on_kick`]).
    Kick(Kick),
}

/// What the engine does with the connection's one timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerChange {
    /// Leave it.
    Keep,
    /// Cancel it.
    Cancel,
    /// Replace it (if any) with this one.
    Arm(Timer, Instant),
}

/// What the engine does after writing what the call produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep reading.
    Continue,
    /// Write the output, shut down the sending side, then call [`Connection::on_flushed`].
    CloseAfterWrite,
    /// Close now, with this reason; nothing is written.
    CloseNow(CloseReason),
}

/// The result of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Progress {
    /// Input bytes used; the rest is kept and offered again with more.
    pub consumed: usize,
    /// Timer change.
    pub timer: TimerChange,
    /// What to do once the output is written.
    pub action: Action,
    /// The connection itself registered in this call (its EventAck is in the output).
    pub registered: bool,
    /// Logical clients added (positive) or removed (negative) on a Proxy connection.
    pub logical_delta: i64,
    /// A TLS handshake ended in this call.
    pub handshake: Option<Handshake>,
}

impl Progress {
    const NOTHING: Progress = Progress {
        consumed: 0,
        timer: TimerChange::Keep,
        action: Action::Continue,
        registered: false,
        logical_delta: 0,
        handshake: None,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading frames.
    Open,
    /// A close once written is decided; the engine is writing the last answers.
    Flushing(CloseReason),
    /// Our FIN is out; input is dropped until the peer closes or the linger passes.
    Lingering(CloseReason),
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    session: Session,
    peer: IpAddr,
    /// The peer's port (kept apart from `peer` for size: a `SocketAddr` is 32 bytes).
    peer_port: u16,
    accepted_at: Instant,
    awaiting_proxy: bool,
    phase: Phase,
    armed: Option<Timer>,
    /// On a TLS listener: rustls and the plaintext (boxed: plain connections stay small).
    tls: Option<Box<ServerTls>>,
    /// Counted by the engine's admission control (which must release it at close).
    admitted: bool,
    /// Milliseconds from accept to its registration (saturating), for the admin API.
    registered_after_ms: u32,
    /// Milliseconds from accept to its last complete frame, rounded up and wrapping: only
    /// differences are taken (as `i32`), and a keepalive deadline (at most 1.5 × 65,535 s)
    /// is far inside the 24 days an `i32` of milliseconds spans.
    alive_ms: u32,
}

impl Connection {
    /// A freshly accepted connection from `peer`, and its registration deadline. With
    /// `proxy_preamble` a PROXY v1/v2 header must come first; its source address replaces
    /// `peer`.
    pub fn accept(
        now: Instant,
        peer: SocketAddr,
        proxy_preamble: bool,
        config: &ConnConfig,
    ) -> (Self, TimerChange) {
        let (session, arm) = Session::accept(now, config.session);
        let mut c = Self {
            session,
            peer: peer.ip(),
            peer_port: peer.port(),
            accepted_at: now,
            awaiting_proxy: proxy_preamble,
            phase: Phase::Open,
            armed: None,
            tls: None,
            admitted: false,
            registered_after_ms: 0,
            alive_ms: 0,
        };
        let timer = c.timer_change(arm);
        (c, timer)
    }

    /// Like [`Connection::accept`], on a TLS listener: after any PROXY header, the bytes
    /// are TLS records, and the registration deadline covers the handshake.
    pub fn accept_tls(
        now: Instant,
        peer: SocketAddr,
        proxy_preamble: bool,
        tls: std::sync::Arc<rustls::ServerConfig>,
        config: &ConnConfig,
    ) -> Result<(Self, TimerChange), TlsError> {
        let tls = Box::new(ServerTls::new(tls)?);
        let (mut c, timer) = Self::accept(now, peer, proxy_preamble, config);
        c.tls = Some(tls);
        Ok((c, timer))
    }

    /// What the connection's TLS says about the peer, once its handshake is done.
    pub fn tls_peer(&self) -> Option<&TlsPeer> {
        self.tls.as_deref().and_then(ServerTls::peer)
    }

    /// Whether the connection came through a TLS listener.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Records that admission control counted this connection's address.
    pub fn mark_admitted(&mut self) {
        self.admitted = true;
    }

    /// Whether admission control counted this connection's address (at accept, or by
    /// [`Env::gate`] once its PROXY header arrived): the engine releases it at close.
    pub fn admitted(&self) -> bool {
        self.admitted
    }

    /// A connection refused at accept (the limit, admission control): its
    /// EventError{0, `code`} goes to `out`, and it closes once that is written (docs/PROTOCOL.md
    /// §6 and §11).
    pub fn refuse(
        now: Instant,
        peer: IpAddr,
        code: ErrorCode,
        config: &ConnConfig,
        out: &mut impl BufMut,
    ) -> (Self, Progress) {
        let (mut c, _) = Self::accept(now, SocketAddr::new(peer, 0), false, config);
        crate::protocol::encode_event_error(out, 0, code);
        let reason = if code == ErrorCode::AddressTemporarilyRefused {
            CloseReason::Banned
        } else {
            CloseReason::Overload
        };
        let p = c.flush_then_close(reason);
        (c, p)
    }

    /// The registration state machine.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The client's address (the PROXY header's source once it has arrived).
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The client's address and port (the PROXY header's source once it has arrived).
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.peer, self.peer_port)
    }

    /// When it was accepted.
    pub fn accepted_at(&self) -> Instant {
        self.accepted_at
    }

    /// When it registered (to the millisecond), once it has.
    pub fn registered_at(&self) -> Option<Instant> {
        self.session
            .registered_as()
            .map(|_| self.accepted_at + Duration::from_millis(self.registered_after_ms.into()))
    }

    /// The timer the engine should have armed for it, if any.
    pub fn armed(&self) -> Option<Timer> {
        self.armed
    }

    /// Whether a registration waits for an outside verdict on its name (docs/PROTOCOL.md
    /// §13): frames behind it are not read until [`Connection::on_verdict`].
    pub fn awaiting(&self) -> bool {
        self.phase == Phase::Open && self.session.awaiting()
    }

    /// Whether a close has been decided (flushing or lingering).
    pub fn is_closing(&self) -> bool {
        self.phase != Phase::Open
    }

    /// Records a session timer action as the connection's timer change.
    fn timer_change(&mut self, action: TimerAction) -> TimerChange {
        match action {
            TimerAction::Keep => TimerChange::Keep,
            TimerAction::Cancel => {
                self.armed = None;
                TimerChange::Cancel
            }
            TimerAction::Arm(kind, at) => {
                self.armed = Some(kind.into());
                TimerChange::Arm(kind.into(), at)
            }
        }
    }

    fn arm(&mut self, timer: Timer, at: Instant) -> TimerChange {
        self.armed = Some(timer);
        TimerChange::Arm(timer, at)
    }

    /// Decides a close now for `reason`: its timer goes with it.
    fn close_now(&mut self, reason: CloseReason) -> Progress {
        self.armed = None;
        Progress {
            timer: TimerChange::Cancel,
            action: Action::CloseNow(reason),
            ..Progress::NOTHING
        }
    }

    /// Decides a close once written for `reason`.
    fn flush_then_close(&mut self, reason: CloseReason) -> Progress {
        self.phase = Phase::Flushing(reason);
        self.armed = None;
        Progress {
            timer: TimerChange::Cancel,
            action: Action::CloseAfterWrite,
            ..Progress::NOTHING
        }
    }

    /// Bytes arrived: `input` is everything unconsumed so far. Answers go to `out`; every
    /// session output is shown to `each` (for metrics).
    pub fn on_bytes(
        &mut self,
        now: Instant,
        input: &[u8],
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        each: impl FnMut(&Output),
    ) -> Progress {
        if self.phase != Phase::Open {
            // Closing: nothing after the closing frame is read or answered.
            return Progress {
                consumed: input.len(),
                ..Progress::NOTHING
            };
        }
        let mut skip = 0;
        if self.awaiting_proxy {
            match crate::proxy::parse(input) {
                Ok(None) => return Progress::NOTHING,
                Ok(Some(header)) => {
                    self.awaiting_proxy = false;
                    if let Some(src) = header.source {
                        self.peer = src.ip();
                        self.peer_port = src.port();
                    }
                    skip = header.len;
                    if let Some(gate) = env.gate {
                        match gate(self.peer) {
                            Ok(()) => self.admitted = true,
                            Err(code) => {
                                return self.refuse_admission(code, input.len(), out, each)
                            }
                        }
                    }
                }
                Err(_) => return self.close_now(CloseReason::ProxyProtocol),
            }
        }
        let Some(mut tls) = self.tls.take() else {
            let mut p = self.frames(now, &input[skip..], None, false, env, out, each);
            p.consumed += skip;
            return p;
        };
        let (mut taken, received) = tls.receive(&input[skip..], self.accepted_at, now);
        let handshake = match received {
            Ok(h) => h,
            Err(_) => {
                // The alert rustls queued goes out; no IXN/1 byte does.
                tls.flush(out);
                let failed = tls.peer().is_none().then(|| Handshake {
                    result: HandshakeResult::Failed,
                    duration: now.saturating_duration_since(self.accepted_at),
                });
                self.tls = Some(tls);
                let mut p = self.flush_then_close(CloseReason::Tls);
                p.consumed = input.len();
                p.handshake = failed;
                return p;
            }
        };
        let mut answers = Vec::new();
        let mid_record = tls.mid_record();
        let (plain, peer) = (tls.plaintext(), tls.peer());
        let mut p = self.frames(now, plain, peer, mid_record, env, &mut answers, each);
        tls.consume(p.consumed);
        tls.send(&answers, out);
        if tls.peer_closed() {
            // The peer's close_notify: it sends nothing more (rustls reads nothing after
            // it, so nothing is kept), and the answers to what came before still go out;
            // a registration waiting for the fleet's verdict is answered first (the engine
            // offers the input again after the verdict, and the close comes then).
            if p.action == Action::Continue && !self.session.awaiting() {
                let closing = self.flush_then_close(CloseReason::Peer);
                (p.timer, p.action) = (closing.timer, closing.action);
            }
            taken = input.len() - skip;
        }
        if p.action == Action::CloseAfterWrite {
            // After the last answers: rustls drops plaintext written after close_notify.
            tls.close_notify();
            tls.flush(out);
        }
        self.tls = Some(tls);
        p.consumed = skip + taken;
        p.handshake = handshake;
        p
    }

    /// Refused by admission once the PROXY header arrived: EventError{0, `code`} and close
    /// once written; on TLS no IXN/1 byte can go before a handshake, so close now.
    fn refuse_admission(
        &mut self,
        code: ErrorCode,
        input_len: usize,
        out: &mut impl BufMut,
        mut each: impl FnMut(&Output),
    ) -> Progress {
        let reason = if code == ErrorCode::AddressTemporarilyRefused {
            CloseReason::Banned
        } else {
            CloseReason::Overload
        };
        let mut p = if self.tls.is_some() {
            self.close_now(reason)
        } else {
            crate::protocol::encode_event_error(out, 0, code);
            each(&Output::error_written(code));
            self.flush_then_close(reason)
        };
        p.consumed = input_len;
        p
    }

    /// Frames (plaintext) arrived: runs the session over them. `consumed` in the result is
    /// relative to `frames`. `mid_record`: a TLS record has begun and not ended, so a
    /// frame may have begun inside it (the frame deadline covers it).
    #[allow(clippy::too_many_arguments)]
    fn frames(
        &mut self,
        now: Instant,
        frames: &[u8],
        tls: Option<&TlsPeer>,
        mid_record: bool,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        mut each: impl FnMut(&Output),
    ) -> Progress {
        let logical_before = self.session.logical_clients() as i64;
        let mut registered = false;
        let mut ctx = Ctx {
            registry: env.registry,
            peer: self.peer,
            tls,
            now,
            ids: env.ids,
            config: env.config.session,
            names: env.names,
        };
        let fed = self
            .session
            .feed(frames, env.config.max_frame_len, &mut ctx, out, |o| {
                if let Some(Ok(Registration { logical: false, .. })) = o.registration {
                    registered = true;
                }
                each(o);
            });
        let logical_delta = self.session.logical_clients() as i64 - logical_before;
        if fed.consumed > 0 {
            self.alive_ms = self.ms_since_accept(now, true);
        }
        if registered {
            self.note_registered(now);
        }
        let mut progress = Progress {
            consumed: fed.consumed,
            timer: self.timer_change(fed.timer),
            action: Action::Continue,
            registered,
            logical_delta,
            handshake: None,
        };
        if fed.close != Close::No {
            let reason = self.session.close_reason().unwrap_or(CloseReason::Peer);
            let closing = self.flush_then_close(reason);
            progress.timer = closing.timer;
            progress.action = closing.action;
            return progress;
        }
        if self.session.state() == State::Registered && !self.session.awaiting() {
            // The frame deadline runs from a frame's first byte to its last (not while
            // whole frames wait behind a registration's verdict).
            let partial = frames.len() > fed.consumed || mid_record;
            let began_now = fed.consumed > 0 || self.armed != Some(Timer::Frame);
            let keep_alive = self.keep_alive_left(now).map(|left| deadline(now, left));
            if partial && began_now {
                let frame = deadline(now, env.config.frame_timeout);
                progress.timer = match keep_alive {
                    Some(at) if at < frame => self.arm(Timer::KeepAlive, at),
                    _ => self.arm(Timer::Frame, frame),
                };
            } else if !partial {
                match (keep_alive, self.armed) {
                    // A complete frame while the keepalive deadline is armed: nothing to
                    // do now, the deadline re-checks.
                    (Some(_), Some(Timer::KeepAlive)) => {}
                    (Some(at), _) => progress.timer = self.arm(Timer::KeepAlive, at),
                    (None, Some(Timer::Frame)) => {
                        self.armed = None;
                        progress.timer = TimerChange::Cancel;
                    }
                    (None, _) => {}
                }
            }
        }
        progress
    }

    /// The connection's state for a live upgrade ([`crate::handoff`]), with `pending` (the
    /// bytes of a frame begun) and `deadline` (when its protocol deadline fires, as the
    /// engine's wheel has it); `None` unless it is at rest: reading frames, plain TCP, and
    /// its session neither closing nor awaiting a verdict. The engine makes sure no answer
    /// is unsent.
    pub fn hand_off(
        &self,
        now: Instant,
        pending: &[u8],
        deadline: Option<Instant>,
    ) -> Option<crate::handoff::Handoff> {
        if self.phase != Phase::Open || self.tls.is_some() {
            return None;
        }
        let session = self.session.hand_off()?;
        let age = self.ms_since_accept(now, false);
        Some(crate::handoff::Handoff {
            peer: self.peer_addr(),
            age_ms: now.saturating_duration_since(self.accepted_at).as_millis() as u64,
            awaiting_proxy: self.awaiting_proxy,
            admitted: self.admitted,
            registered_after_ms: self.registered_after_ms,
            // Signed, as in `keep_alive_left`: -1 within the same millisecond is no silence.
            quiet_ms: (age.wrapping_sub(self.alive_ms) as i32).max(0) as u64,
            deadline: self.armed.zip(deadline).map(|(t, at)| {
                (
                    t.name().to_string(),
                    at.saturating_duration_since(now).as_millis() as u64,
                )
            }),
            session,
            pending: pending.to_vec(),
        })
    }

    /// A connection handed over by a live upgrade, and its deadline to arm: accepted
    /// `age_ms` ago, its ProxyClientIds live in `ids` and its names in `names`.
    pub fn adopt(
        h: &crate::handoff::Handoff,
        now: Instant,
        registry: &Registry,
        ids: &mut IdAllocator,
        names: Claims<'_>,
    ) -> Result<(Self, TimerChange), crate::handoff::AdoptError> {
        use crate::handoff::AdoptError;
        let timer = match &h.deadline {
            None => None,
            Some((name, left)) => {
                let t = Timer::ALL
                    .into_iter()
                    .find(|t| t.name() == name)
                    .ok_or_else(|| AdoptError::Unknown(format!("timer {name:?}")))?;
                // No setting reaches beyond 7 days (docs/PROTOCOL.md §8).
                if *left > 7 * 24 * 3600 * 1000 {
                    return Err(AdoptError::Unknown(format!(
                        "{name} deadline {left} ms away"
                    )));
                }
                Some((t, now + Duration::from_millis(*left)))
            }
        };
        let session = Session::adopt(&h.session, registry, ids, names)?;
        let accepted_at = now
            .checked_sub(Duration::from_millis(h.age_ms))
            .unwrap_or(now);
        let mut c = Self {
            session,
            peer: h.peer.ip(),
            peer_port: h.peer.port(),
            accepted_at,
            awaiting_proxy: h.awaiting_proxy,
            phase: Phase::Open,
            armed: None,
            tls: None,
            admitted: h.admitted,
            registered_after_ms: h.registered_after_ms,
            alive_ms: 0,
        };
        let age = c.ms_since_accept(now, false);
        c.alive_ms = age.wrapping_sub(h.quiet_ms.min(u64::from(u32::MAX)) as u32);
        let change = match timer {
            Some((t, at)) => {
                c.armed = Some(t);
                TimerChange::Arm(t, at)
            }
            None => TimerChange::Keep,
        };
        Ok((c, change))
    }

    /// Milliseconds from accept to `now`, wrapping (see `alive_ms`): rounded up for a
    /// frame's moment, down for the present, so a silence is never overestimated.
    fn ms_since_accept(&self, now: Instant, round_up: bool) -> u32 {
        let d = now.saturating_duration_since(self.accepted_at);
        let ms = d.as_millis() + u128::from(round_up && d.subsec_nanos() % 1_000_000 != 0);
        ms as u32
    }

    /// How long, at `now`, until the keepalive in force expires (zero once it has): 1.5 ×
    /// it after the last complete frame.
    fn keep_alive_left(&self, now: Instant) -> Option<Duration> {
        let secs = self.session.keep_alive()?;
        // Signed: the last frame's moment is rounded up and the present down, so within
        // the same millisecond the difference is -1, which is no silence at all.
        let silent = self.ms_since_accept(now, false).wrapping_sub(self.alive_ms) as i32;
        let silent = Duration::from_millis(silent.max(0) as u64);
        Some(KeepAliveConfig::grace(secs).saturating_sub(silent))
    }

    /// The engine wrote the last answers and shut down its sending side: the linger starts.
    pub fn on_flushed(&mut self, now: Instant, config: &ConnConfig) -> TimerChange {
        match self.phase {
            Phase::Flushing(reason) => {
                self.phase = Phase::Lingering(reason);
                self.arm(Timer::CloseLinger, deadline(now, config.close_linger))
            }
            _ => TimerChange::Keep,
        }
    }

    /// The peer closed (end of stream) or reset: why the connection ends.
    pub fn on_eof(&self) -> CloseReason {
        match self.phase {
            Phase::Open => CloseReason::Peer,
            Phase::Flushing(r) | Phase::Lingering(r) => r,
        }
    }

    /// The connection's timer passed at `now`. A keepalive deadline re-checks the last
    /// sign of life: re-armed for the rest, or EventError{0, 19} to `out` and a close once
    /// written (its names given back at once). Otherwise the only bytes it may write are a
    /// TLS connection's close_notify, when it closes once written (a TLS peer then sees a
    /// clean close, not a truncated stream).
    pub fn on_deadline(
        &mut self,
        now: Instant,
        timer: Timer,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        each: impl FnMut(&Output),
    ) -> Progress {
        if timer == Timer::KeepAlive {
            if self.armed != Some(Timer::KeepAlive) || self.phase != Phase::Open {
                return Progress::NOTHING;
            }
            return match self.keep_alive_left(now) {
                Some(left) if !left.is_zero() => Progress {
                    timer: self.arm(Timer::KeepAlive, deadline(now, left)),
                    ..Progress::NOTHING
                },
                Some(_) => self.tell(now, Input::KeepAliveExpired, env, out, each),
                None => {
                    self.armed = None;
                    Progress::NOTHING
                }
            };
        }
        let p = self.deadline_passed(timer);
        if p.action == Action::CloseAfterWrite {
            if let Some(tls) = self.tls.as_deref_mut() {
                tls.close_notify();
                tls.flush(out);
            }
        }
        p
    }

    fn deadline_passed(&mut self, timer: Timer) -> Progress {
        if self.armed != Some(timer) && timer != Timer::WriteStall {
            // Cancelled or replaced after the wheel handed it out.
            return Progress::NOTHING;
        }
        self.armed = None;
        match timer {
            Timer::Registration | Timer::ErrorDisconnect => {
                let kind = if timer == Timer::Registration {
                    TimerKind::Registration
                } else {
                    TimerKind::ErrorDisconnect
                };
                if self.session.expire(kind).close != Close::Now {
                    return Progress::NOTHING;
                }
                let reason = self.session.close_reason().unwrap_or(CloseReason::Peer);
                if kind == TimerKind::Registration {
                    // Never answered: nothing to lose.
                    self.close_now(reason)
                } else {
                    // Its EventErrors must reach it.
                    self.flush_then_close(reason)
                }
            }
            Timer::Frame => self.flush_then_close(CloseReason::FrameTimeout),
            Timer::CloseLinger => {
                let reason = self.on_eof();
                self.close_now(reason)
            }
            Timer::WriteStall => self.close_now(CloseReason::WriteStall),
            // Served by `on_deadline`, which needs the time.
            Timer::KeepAlive => Progress::NOTHING,
        }
    }

    /// The server drains: unregistered connections close now; rejected ones once written;
    /// registered ones get EventError 11 and close once written.
    pub fn on_drain(
        &mut self,
        now: Instant,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        each: impl FnMut(&Output),
    ) -> Progress {
        self.tell(now, Input::Drain, env, out, each)
    }

    /// An operator closes it, or a newer registration of its name replaces it: a
    /// registered connection gets EventError{0, 15} and closes once written (docs/PROTOCOL.md
    /// §6); any other is left alone.
    pub fn on_kick(
        &mut self,
        now: Instant,
        kick: Kick,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        each: impl FnMut(&Output),
    ) -> Progress {
        if self.session.state() != State::Registered {
            return Progress::NOTHING;
        }
        self.tell(now, Input::Kick(kick), env, out, each)
    }

    /// The drain or a kick, whichever `notice` says.
    pub fn on_notice(
        &mut self,
        now: Instant,
        notice: Notice,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        each: impl FnMut(&Output),
    ) -> Progress {
        match notice {
            Notice::Drain => self.on_drain(now, env, out, each),
            Notice::Kick(k) => self.on_kick(now, k, env, out, each),
        }
    }

    /// The drain, a kick or an expired keepalive, told while no frame is being read.
    fn tell(
        &mut self,
        now: Instant,
        input: Input<'_>,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        mut each: impl FnMut(&Output),
    ) -> Progress {
        if self.phase != Phase::Open {
            return Progress::NOTHING;
        }
        let was = self.session.state();
        let o = self.outside(now, env, out, |session, ctx, answers| {
            session.handle(input, ctx, answers)
        });
        if let (Some(t), State::Registered) = (self.tls.as_deref_mut(), was) {
            // A registered TLS client also gets close_notify after its EventError.
            t.close_notify();
            t.flush(out);
        }
        each(&o);
        let reason = self.session.close_reason().unwrap_or(CloseReason::Drain);
        match was {
            State::Registered | State::Rejected => self.flush_then_close(reason),
            _ => self.close_now(reason),
        }
    }

    /// Runs `f` on the session for something told from outside the socket (the drain, a
    /// kick, the fleet's verdict); its answers go to `out`, encrypted on TLS.
    fn outside(
        &mut self,
        now: Instant,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        f: impl FnOnce(&mut Session, &mut Ctx<'_>, &mut Vec<u8>) -> Output,
    ) -> Output {
        let mut answers = Vec::new();
        let mut ctx = Ctx {
            registry: env.registry,
            peer: self.peer,
            tls: self.tls.as_deref().and_then(ServerTls::peer),
            now,
            ids: env.ids,
            config: env.config.session,
            names: env.names,
        };
        let o = f(&mut self.session, &mut ctx, &mut answers);
        match self.tls.as_deref_mut() {
            Some(t) => t.send(&answers, out),
            None => out.put_slice(&answers),
        }
        o
    }

    /// Records the moment the connection itself registered (for the admin API).
    fn note_registered(&mut self, now: Instant) {
        let after = now.saturating_duration_since(self.accepted_at).as_millis();
        self.registered_after_ms = u32::try_from(after).unwrap_or(u32::MAX);
    }

    /// The fleet's verdict on the name a registration waits for: its answer (EventAck, or
    /// EventError 14 or 18, docs/PROTOCOL.md §13) goes to `out`. The engine then offers the
    /// input that waited behind it again ([`Connection::on_bytes`] with what it kept).
    /// A verdict nobody waits for (a stale one) does nothing.
    pub fn on_verdict(
        &mut self,
        now: Instant,
        verdict: Verdict,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        mut each: impl FnMut(&Output),
    ) -> Progress {
        if !self.awaiting() {
            return Progress::NOTHING;
        }
        let logical_before = self.session.logical_clients() as i64;
        let o = self.outside(now, env, out, |session, ctx, answers| {
            session.verdict(verdict, ctx, answers)
        });
        each(&o);
        let registered = matches!(
            o.registration,
            Some(Ok(Registration { logical: false, .. }))
        );
        let mut timer = self.timer_change(o.timer);
        if registered {
            self.note_registered(now);
            if let Some(left) = self.keep_alive_left(now) {
                timer = self.arm(Timer::KeepAlive, deadline(now, left));
            }
        }
        Progress {
            timer,
            registered,
            logical_delta: self.session.logical_clients() as i64 - logical_before,
            ..Progress::NOTHING
        }
    }

    /// Gives back every ProxyClientId and claimed name the connection holds; call once,
    /// when it is gone.
    pub fn release(&mut self, ids: &mut IdAllocator, names: Option<Claims<'_>>) {
        self.session.release(ids, names);
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
