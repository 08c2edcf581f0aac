//! One connection's registration state machine (docs/PROTOCOL.md §6), sans-IO.
//!
//! Over 600 lines on purpose: the state machine of §6 whole, one `match` per input; its
//! tests are in `session_tests.rs`.
//!
//! [`Session::handle`] takes one input (a decoded frame, a malformed one, a framing error,
//! a deadline or the drain signal), the peer address, the registry and the current time
//! as arguments, writes its answer into the caller's buffer and returns what the caller
//! must do next: which deadline to arm or cancel and whether to close. It never reads a
//! clock or touches a socket, so every row of the spec's table is a plain unit test.
//!
//! A connection holds at most one deadline at a time: the registration deadline from
//! accept until it registers or is rejected, then (if rejected) the error deadline.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::BufMut;

use crate::names::{Claim, Claims, Ticket, Verdict};
use crate::protocol::{
    encode_event_ack, encode_event_error, ClientType, ErrorCode, FramingError, Malformed, Message,
    RegisterClient, UnregisterClient,
};
use crate::registry::{ClientEntry, OnDuplicate, Registry, SharedName};

/// Longest timeout a deadline is ever armed with: the 7 days the settings allow
/// (docs/PROTOCOL.md §8). [`deadline`] clamps to it, so no `Instant + Duration` can overflow
/// whatever configuration reaches the core.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// `timeout` after `now`, with the timeout clamped to [`MAX_TIMEOUT`]: never overflows.
pub fn deadline(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout.min(MAX_TIMEOUT)).unwrap_or(now)
}

/// Most EventErrors a rejected connection receives before it is closed.
pub const MAX_ERRORS_WHEN_REJECTED: u8 = 16;

/// Timeouts a session works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// From accept to a successful registration.
    pub registration_timeout: Duration,
    /// From the first rejection to the close; never extended.
    pub error_disconnect_timeout: Duration,
    /// How a registration's KeepAlive becomes the keepalive in force (§12).
    pub keep_alive: KeepAliveConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            registration_timeout: crate::defaults::REGISTRATION_TIMEOUT,
            error_disconnect_timeout: crate::defaults::ERROR_DISCONNECT_TIMEOUT,
            keep_alive: KeepAliveConfig::default(),
        }
    }
}

/// The keepalive settings, in whole seconds (docs/PROTOCOL.md §12): a client's KeepAlive
/// is clamped into `min..=max`; a registration that asks for none (0 or no KeepAlive) gets
/// `default`, where 0 is none. The server's configuration checks `min <= default <= max`
/// when `default` is not 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveConfig {
    /// `--keepalive-min`.
    pub min: u16,
    /// `--keepalive-max`.
    pub max: u16,
    /// `--keepalive-default`; 0 is off.
    pub default: u16,
}

impl Default for KeepAliveConfig {
    fn default() -> Self {
        let secs = |d: Duration| u16::try_from(d.as_secs()).unwrap_or(u16::MAX);
        Self {
            min: secs(crate::defaults::KEEPALIVE_MIN),
            max: secs(crate::defaults::KEEPALIVE_MAX),
            default: secs(crate::defaults::KEEPALIVE_DEFAULT),
        }
    }
}

impl KeepAliveConfig {
    /// The keepalive in force, in seconds (0: none), for a registration that asked for
    /// `asked` (its KeepAlive attribute).
    pub fn in_force(&self, asked: Option<u16>) -> u16 {
        match asked {
            None | Some(0) => self.default,
            Some(k) => k.clamp(self.min, self.max.max(self.min)),
        }
    }

    /// How long a connection with keepalive `secs` may send no complete frame: 1.5 ×.
    pub fn grace(secs: u16) -> Duration {
        Duration::from_millis(u64::from(secs) * 1500)
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted, not yet registered.
    Unregistered,
    /// Registered; may be a Proxy with logical clients.
    Registered,
    /// Refused; waits for its error deadline.
    Rejected,
    /// A close has been decided; further input is ignored.
    Closing,
}

/// Which deadline a timer entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// `registration_timeout` after accept.
    Registration,
    /// `error_disconnect_timeout` after the first rejection.
    ErrorDisconnect,
}

label_enum! {
    /// Every per-connection deadline the runtime serves from its timer wheel; the label of
    /// `ixn_timer_expired_total{timer}`.
    pub enum Timer {
        /// The session's registration deadline.
        Registration => "registration",
        /// The session's error deadline.
        ErrorDisconnect => "error_disconnect",
        /// Answers that did not drain within `write_timeout`.
        WriteStall => "write_stall",
        /// A registered connection's begun frame not complete within `frame_timeout`.
        Frame => "frame",
        /// A closing connection whose peer did not close within `close_linger`.
        CloseLinger => "close_linger",
        /// A registered connection's keepalive: 1.5 × it after its last complete frame.
        KeepAlive => "keepalive",
    }
}

impl From<TimerKind> for Timer {
    fn from(k: TimerKind) -> Self {
        match k {
            TimerKind::Registration => Self::Registration,
            TimerKind::ErrorDisconnect => Self::ErrorDisconnect,
        }
    }
}

/// One input to the state machine.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A well-formed message.
    Message(Message<'a>),
    /// A well-framed message that breaks the spec.
    Malformed(Malformed),
    /// The stream cannot be resynchronised.
    FramingError(FramingError),
    /// A deadline armed earlier has passed.
    Deadline(TimerKind),
    /// The server is draining (SIGTERM).
    Drain,
    /// The connection is closed by an operator or replaced (EventError 15); only a
    /// registered connection answers to it.
    Kick(Kick),
    /// A registered connection with a keepalive in force sent no complete frame for 1.5 ×
    /// its keepalive (EventError 19, §12); the connection checked its last sign of life.
    KeepAliveExpired,
}

/// Why a registered connection is closed with EventError 15 (docs/PROTOCOL.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Through the admin API (section 10).
    Operator,
    /// A newer connection registered its ClientName under `on_duplicate = "replace"`.
    Replaced,
}

/// What the caller must do about the connection's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Leave it as it is.
    Keep,
    /// Cancel the armed deadline.
    Cancel,
    /// Replace the armed deadline (if any) with this one.
    Arm(TimerKind, Instant),
}

/// Whether, and when, the caller closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Keep it open.
    No,
    /// Close once everything written so far has been sent.
    AfterWrite,
    /// Close now; nothing more is written.
    Now,
}

label_enum! {
    /// Why a connection closed; the label of `ixn_connections_closed_total{reason}`.
    pub enum CloseReason {
        /// The peer closed or reset the connection.
        Peer => "peer",
        /// Not registered by its registration deadline.
        RegistrationTimeout => "registration_timeout",
        /// Rejected, and its error deadline passed.
        ErrorTimeout => "error_timeout",
        /// Rejected, and its 16th EventError was written.
        ErrorLimit => "error_limit",
        /// A framing error.
        FramingError => "framing_error",
        /// Refused at accept: the connection limit was reached.
        Overload => "overload",
        /// RequestUnregisterClient for the connection itself.
        Unregister => "unregister",
        /// The server drained.
        Drain => "drain",
        /// Its answers did not drain within the write timeout.
        WriteStall => "write_stall",
        /// On a PROXY-protocol listener: no valid header, or a peer not trusted to send one.
        ProxyProtocol => "proxy_protocol",
        /// Registered, and a begun frame did not complete within `frame_timeout`.
        FrameTimeout => "frame_timeout",
        /// A TLS handshake or record was refused (the alert is sent, no IXN/1 byte).
        Tls => "tls_error",
        /// Refused at admission because its address is banned (EventError 16).
        Banned => "banned",
        /// Closed by an operator through the admin API (EventError 15).
        Operator => "operator",
        /// Replaced by a newer registration of its ClientName (EventError 15).
        Replaced => "replaced",
        /// Registered with a keepalive in force, and silent for 1.5 × it (EventError 19).
        KeepAlive => "keepalive",
    }
}

/// What the session wrote, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An EventAck.
    Ack,
    /// An EventError with this code.
    Error(ErrorCode),
}

/// A successful registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The id the EventAck carried.
    pub proxy_client_id: i32,
    /// True for a Proxy's logical client, false for the connection itself.
    pub logical: bool,
}

/// The result of one [`Session::handle`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Output {
    /// What was appended to the output buffer, if anything.
    pub answer: Option<Answer>,
    /// For every RequestRegisterClient frame (malformed ones included): its outcome.
    pub registration: Option<Result<Registration, ErrorCode>>,
    /// Deadline change.
    pub timer: TimerAction,
    /// Close decision.
    pub close: Close,
    /// A RequestKeepAlive was answered (for `ixn_keepalives_total`).
    pub keep_alive: bool,
}

impl Output {
    /// An EventError written outside the session (an admission refusal), for metrics.
    pub fn error_written(code: ErrorCode) -> Output {
        Output {
            answer: Some(Answer::Error(code)),
            ..Self::NOTHING
        }
    }

    const NOTHING: Output = Output {
        answer: None,
        registration: None,
        timer: TimerAction::Keep,
        close: Close::No,
        keep_alive: false,
    };
}

/// Hands out ProxyClientIds: never 0, never one that is live on this allocator.
///
/// Each worker owns one, starting at `first` and stepping by `step` (the worker count), so
/// ids are unique across the whole server without any shared counter. The sequence wraps
/// before it leaves the positive i32 range (after about 2^31 / workers ids); ids still held
/// by a live connection or logical client are skipped, so a long-lived client's id is never
/// handed out twice. Holders give their ids back with [`IdAllocator::release`].
#[derive(Debug, Clone)]
pub struct IdAllocator {
    next: u32,
    first: u32,
    step: u32,
    last: u32,
    live: std::collections::HashSet<i32>,
}

impl IdAllocator {
    /// Ids `first`, `first + step`, …, wrapping before they leave the positive i32 range.
    pub fn new(first: u32, step: u32) -> Self {
        Self::with_last(first, step, i32::MAX as u32)
    }

    /// Like [`IdAllocator::new`], wrapping after `last` instead (tests use a small space).
    pub fn with_last(first: u32, step: u32, last: u32) -> Self {
        let first = first.clamp(1, i32::MAX as u32);
        Self {
            next: first,
            first,
            step: step.max(1),
            last: last.clamp(first, i32::MAX as u32),
            live: std::collections::HashSet::new(),
        }
    }

    /// How many ids the sequence holds before it wraps.
    fn space(&self) -> u64 {
        u64::from(self.last - self.first) / u64::from(self.step) + 1
    }

    /// The next id not live, now live; `None` when every id of the space is live.
    pub fn next_id(&mut self) -> Option<i32> {
        if self.live.len() as u64 >= self.space() {
            return None;
        }
        loop {
            let id = self.next as i32;
            self.next = match self.next.checked_add(self.step) {
                Some(n) if n <= self.last => n,
                _ => self.first,
            };
            if self.live.insert(id) {
                return Some(id);
            }
        }
    }

    /// Gives `id` back: it may be handed out again.
    pub fn release(&mut self, id: i32) {
        self.live.remove(&id);
    }

    /// Marks `id` live (a connection adopted in a live upgrade keeps its ids); `false` if
    /// it is live already.
    pub fn take(&mut self, id: i32) -> bool {
        self.live.insert(id)
    }

    /// Ids currently live.
    pub fn live(&self) -> usize {
        self.live.len()
    }
}

impl Default for IdAllocator {
    fn default() -> Self {
        Self::new(1, 1)
    }
}

/// What the session needs from its surroundings for one input.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// Who may register.
    pub registry: &'a Registry,
    /// The peer's address (after any PROXY header), checked against `allow` lists.
    pub peer: IpAddr,
    /// The connection's TLS once its handshake is done, checked against `require_tls`
    /// and `tls_identities`; `None` on plain TCP.
    pub tls: Option<&'a crate::tls::TlsPeer>,
    /// The current time.
    pub now: Instant,
    /// Source of ProxyClientIds.
    pub ids: &'a mut IdAllocator,
    /// Timeouts (kept here, not in every session, to keep sessions small).
    pub config: SessionConfig,
    /// The process's held names, for `on_duplicate` (docs/PROTOCOL.md §7); `None` treats
    /// every entry as `allow`.
    pub names: Option<Claims<'a>>,
}

/// One connection's registration state.
#[derive(Debug, Clone)]
pub struct Session {
    state: State,
    errors_sent: u8,
    own_id: i32,
    max_logical: u32,
    /// The ClientName it registered under (shared with the registry entry: no copy), for
    /// the admin API's listing and to give a claimed name back.
    name: Option<SharedName>,
    /// Its ClientType's wire code once registered, 0 before (one byte: a `ClientType` is
    /// an `i32`, and every idle connection carries this field).
    client_type: u8,
    /// Its own name is entered in the process's name table (`on_duplicate` not `allow`).
    claimed: bool,
    /// The keepalive in force once registered, in seconds; 0 is none (§12).
    keep_alive: u16,
    /// A registration waits for the fleet's verdict on its name (docs/PROTOCOL.md §13):
    /// no further frame is read until it comes.
    awaiting: bool,
    /// A Proxy's logical clients. Boxed: only Proxies have any, and every idle
    /// connection carries this field (8 bytes instead of a `Vec`'s 24: the extra
    /// allocation is paid by Proxies only, and kept idle memory at its 2026-11-24 figure).
    #[allow(clippy::box_collection)]
    logical: Option<Box<Vec<Logical>>>,
    closed_by: Option<CloseReason>,
}

/// One logical client of a Proxy connection.
#[derive(Debug, Clone)]
struct Logical {
    id: i32,
    /// Its name, kept only when it is entered in the name table (to give it back).
    claimed: Option<SharedName>,
}

impl Session {
    /// A freshly accepted connection, and the registration deadline to arm for it.
    pub fn accept(now: Instant, config: SessionConfig) -> (Self, TimerAction) {
        let s = Self {
            state: State::Unregistered,
            errors_sent: 0,
            own_id: 0,
            max_logical: 0,
            name: None,
            client_type: 0,
            claimed: false,
            keep_alive: 0,
            awaiting: false,
            logical: None,
            closed_by: None,
        };
        let at = deadline(now, config.registration_timeout);
        (s, TimerAction::Arm(TimerKind::Registration, at))
    }

    /// The session's state for a live upgrade ([`crate::handoff`]); `None` unless it is
    /// at rest (no verdict awaited, not closing).
    pub fn hand_off(&self) -> Option<crate::handoff::SessionState> {
        let state = match self.state {
            State::Unregistered => "unregistered",
            State::Registered => "registered",
            State::Rejected => "rejected",
            State::Closing => return None,
        };
        if self.awaiting {
            return None;
        }
        Some(crate::handoff::SessionState {
            state: state.into(),
            errors_sent: self.errors_sent,
            own_id: self.own_id,
            max_logical: self.max_logical,
            name: self.name.as_ref().map(|n| n.to_string()),
            client_type: self.client_type,
            claimed: self.claimed,
            keep_alive: self.keep_alive,
            logical: self
                .logical
                .iter()
                .flat_map(|l| l.iter())
                .map(|l| (l.id, l.claimed.as_ref().map(|n| n.to_string())))
                .collect(),
        })
    }

    /// A session handed over by a live upgrade: its ProxyClientIds marked live in `ids`
    /// and its names entered in `names` (under `reject`: none can be held here, since the
    /// new process takes no connection until the handover is done). Names the registry
    /// still has share its entry's; others are kept as they came.
    pub fn adopt(
        h: &crate::handoff::SessionState,
        registry: &Registry,
        ids: &mut IdAllocator,
        names: Claims<'_>,
    ) -> Result<Self, crate::handoff::AdoptError> {
        use crate::handoff::AdoptError;
        let state = match h.state.as_str() {
            "unregistered" => State::Unregistered,
            "registered" => State::Registered,
            "rejected" => State::Rejected,
            other => return Err(AdoptError::Unknown(format!("session state {other:?}"))),
        };
        // What no session of this version can be: refused, not half adopted.
        let registered = state == State::Registered;
        let consistent = if registered {
            h.own_id > 0 && h.name.is_some() && h.logical.iter().all(|(id, _)| *id > 0)
        } else {
            h.own_id == 0 && h.name.is_none() && !h.claimed && h.logical.is_empty()
        };
        if !consistent {
            return Err(AdoptError::Unknown(format!(
                "session: {} with id {}, name {:?}, {} logical clients",
                h.state,
                h.own_id,
                h.name,
                h.logical.len()
            )));
        }
        let shared = |n: &str| -> SharedName {
            registry
                .get(n)
                .map(|e| e.name().clone())
                .unwrap_or_else(|| std::sync::Arc::new(n.into()))
        };
        let all_ids = std::iter::once(h.own_id)
            .filter(|id| *id != 0)
            .chain(h.logical.iter().map(|(id, _)| *id));
        let mut taken = Vec::new();
        for id in all_ids {
            if !ids.take(id) {
                for t in taken {
                    ids.release(t);
                }
                return Err(AdoptError::IdTaken(id));
            }
            taken.push(id);
        }
        let ticket = |id: i32| crate::names::Ticket {
            reference_id: id,
            client_type: h.client_type,
            logical: false,
            keep_alive: h.keep_alive,
        };
        let name = h.name.as_deref().map(shared);
        let claimed = h.claimed
            && name.as_ref().is_some_and(|n| {
                names
                    .claim(n, OnDuplicate::Reject, h.own_id, ticket(h.own_id))
                    .is_ok()
            });
        let logical: Vec<Logical> = h
            .logical
            .iter()
            .map(|(id, claimed)| Logical {
                id: *id,
                claimed: claimed.as_deref().map(shared).filter(|n| {
                    names
                        .claim(n, OnDuplicate::Reject, *id, ticket(*id))
                        .is_ok()
                }),
            })
            .collect();
        Ok(Self {
            state,
            errors_sent: h.errors_sent,
            own_id: h.own_id,
            max_logical: h.max_logical,
            name,
            client_type: h.client_type,
            claimed,
            keep_alive: h.keep_alive,
            awaiting: false,
            logical: (!logical.is_empty()).then(|| Box::new(logical)),
            closed_by: None,
        })
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the session decided to close, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed_by
    }

    fn close(&mut self, why: CloseReason) {
        self.state = State::Closing;
        self.closed_by = Some(why);
    }

    /// The connection's own ProxyClientId once registered.
    pub fn proxy_client_id(&self) -> Option<i32> {
        (self.own_id != 0).then_some(self.own_id)
    }

    /// Logical clients a registered Proxy holds besides itself.
    pub fn logical_clients(&self) -> usize {
        self.logical.as_ref().map_or(0, |l| l.len())
    }

    /// The ClientName and ClientType it registered with, once registered.
    pub fn registered_as(&self) -> Option<(&str, ClientType)> {
        let ty = ClientType::from_i32(self.client_type.into())?;
        self.name.as_deref().map(|n| (&**n, ty))
    }

    /// The keepalive in force, in seconds, once registered with one (§12).
    pub fn keep_alive(&self) -> Option<u16> {
        (self.keep_alive != 0).then_some(self.keep_alive)
    }

    /// Whether a registration waits for an outside verdict on its name
    /// ([`Session::verdict`]); frames behind it wait.
    pub fn awaiting(&self) -> bool {
        self.awaiting
    }

    fn is_proxy(&self) -> bool {
        self.client_type == ClientType::Proxy.code() as u8
    }

    /// Gives back every ProxyClientId the connection holds (its own and its logical
    /// clients') and every name it claimed; the caller does this once, when the
    /// connection is gone.
    pub fn release(&mut self, ids: &mut IdAllocator, names: Option<Claims<'_>>) {
        self.release_names(names);
        if self.own_id != 0 {
            ids.release(self.own_id);
            self.own_id = 0;
        }
        for l in self.logical.take().into_iter().flat_map(|l| *l) {
            ids.release(l.id);
        }
    }

    /// Feeds one input; any answer is appended to `out`.
    pub fn handle(&mut self, input: Input<'_>, ctx: &mut Ctx<'_>, out: &mut impl BufMut) -> Output {
        if self.state == State::Closing {
            return Output::NOTHING;
        }
        let o = self.handle_open(input, ctx, out);
        if self.state == State::Closing {
            // Unregistered, kicked or drained: its names are free from now on, not from
            // when the socket is finally gone (which may be a linger later).
            self.release_names(ctx.names);
        }
        o
    }

    /// Gives back the names it claimed (the ids stay until [`Session::release`]).
    fn release_names(&mut self, names: Option<Claims<'_>>) {
        let Some(names) = names else { return };
        if std::mem::take(&mut self.claimed) {
            if let Some(name) = &self.name {
                names.release(name, self.own_id);
            }
        }
        for l in self.logical.iter_mut().flat_map(|l| l.iter_mut()) {
            if let Some(name) = l.claimed.take() {
                names.release(&name, l.id);
            }
        }
    }

    fn handle_open(
        &mut self,
        input: Input<'_>,
        ctx: &mut Ctx<'_>,
        out: &mut impl BufMut,
    ) -> Output {
        match input {
            Input::FramingError(_) => {
                self.close(CloseReason::FramingError);
                encode_event_error(out, 0, ErrorCode::FrameTooLarge);
                Output {
                    answer: Some(Answer::Error(ErrorCode::FrameTooLarge)),
                    registration: None,
                    timer: TimerAction::Cancel,
                    close: Close::AfterWrite,
                    ..Output::NOTHING
                }
            }
            Input::Drain => self.drain(out),
            Input::Kick(kick) => self.kick(kick, out),
            Input::KeepAliveExpired => self.keep_alive_expired(out),
            Input::Deadline(kind) => self.expire(kind),
            Input::Malformed(m) => {
                let reference_id = m.reference_id.unwrap_or(0);
                let mut o = match self.state {
                    State::Unregistered => {
                        self.reject(ErrorCode::MalformedMessage, reference_id, ctx, out)
                    }
                    State::Rejected => self.error_when_rejected(reference_id, out),
                    _ => answer_error(out, reference_id, ErrorCode::MalformedMessage),
                };
                if m.msg_id == crate::protocol::msg::REQUEST_REGISTER_CLIENT {
                    o.registration = o.answer.and_then(answer_code).map(Err);
                }
                o
            }
            Input::Message(msg) => match (self.state, msg) {
                (State::Rejected, m) => {
                    let mut o = self.error_when_rejected(m.reference_id(), out);
                    if let Message::RegisterClient(_) = m {
                        o.registration = Some(Err(ErrorCode::ClientNotRegistered));
                    }
                    o
                }
                (State::Unregistered, Message::RegisterClient(req)) => self.register(req, ctx, out),
                (State::Unregistered, m) => {
                    self.reject(ErrorCode::ClientNotRegistered, m.reference_id(), ctx, out)
                }
                (_, Message::RegisterClient(req)) => self.register_again(req, ctx, out),
                (_, Message::UnregisterClient(req)) => self.unregister(req, ctx, out),
                (_, Message::KeepAlive(req)) => {
                    encode_event_ack(out, req.reference_id, None, None);
                    Output {
                        answer: Some(Answer::Ack),
                        keep_alive: true,
                        ..Output::NOTHING
                    }
                }
                (_, m) => answer_error(out, m.reference_id(), ErrorCode::UnsupportedRequest),
            },
        }
    }

    /// A deadline armed earlier has passed: the same as `handle(Input::Deadline(kind))`,
    /// without a context or an output buffer (a deadline never writes).
    pub fn expire(&mut self, kind: TimerKind) -> Output {
        if self.state == State::Closing {
            return Output::NOTHING;
        }
        let due = matches!(
            (self.state, kind),
            (State::Unregistered, TimerKind::Registration)
                | (State::Rejected, TimerKind::ErrorDisconnect)
        );
        if !due {
            // A deadline left over from an earlier state: the caller failed to cancel it.
            return Output::NOTHING;
        }
        self.close(match kind {
            TimerKind::Registration => CloseReason::RegistrationTimeout,
            TimerKind::ErrorDisconnect => CloseReason::ErrorTimeout,
        });
        Output {
            close: Close::Now,
            ..Output::NOTHING
        }
    }

    fn drain(&mut self, out: &mut impl BufMut) -> Output {
        let was = self.state;
        self.close(CloseReason::Drain);
        if was == State::Registered {
            encode_event_error(out, 0, ErrorCode::ServerShuttingDown);
            Output {
                answer: Some(Answer::Error(ErrorCode::ServerShuttingDown)),
                registration: None,
                timer: TimerAction::Cancel,
                close: Close::AfterWrite,
                ..Output::NOTHING
            }
        } else {
            Output {
                timer: TimerAction::Cancel,
                close: Close::Now,
                ..Output::NOTHING
            }
        }
    }

    fn kick(&mut self, kick: Kick, out: &mut impl BufMut) -> Output {
        if self.state != State::Registered {
            return Output::NOTHING;
        }
        self.close(match kick {
            Kick::Operator => CloseReason::Operator,
            Kick::Replaced => CloseReason::Replaced,
        });
        encode_event_error(out, 0, ErrorCode::ClientDisconnected);
        Output {
            answer: Some(Answer::Error(ErrorCode::ClientDisconnected)),
            registration: None,
            timer: TimerAction::Cancel,
            close: Close::AfterWrite,
            ..Output::NOTHING
        }
    }

    fn keep_alive_expired(&mut self, out: &mut impl BufMut) -> Output {
        if self.state != State::Registered || self.keep_alive == 0 {
            return Output::NOTHING;
        }
        self.close(CloseReason::KeepAlive);
        encode_event_error(out, 0, ErrorCode::KeepAliveExpired);
        Output {
            answer: Some(Answer::Error(ErrorCode::KeepAliveExpired)),
            timer: TimerAction::Cancel,
            close: Close::AfterWrite,
            ..Output::NOTHING
        }
    }

    fn reject(
        &mut self,
        code: ErrorCode,
        reference_id: i32,
        ctx: &Ctx<'_>,
        out: &mut impl BufMut,
    ) -> Output {
        self.state = State::Rejected;
        self.errors_sent = 1;
        encode_event_error(out, reference_id, code);
        Output {
            answer: Some(Answer::Error(code)),
            registration: None,
            timer: TimerAction::Arm(
                TimerKind::ErrorDisconnect,
                deadline(ctx.now, ctx.config.error_disconnect_timeout),
            ),
            close: Close::No,
            keep_alive: false,
        }
    }

    fn error_when_rejected(&mut self, reference_id: i32, out: &mut impl BufMut) -> Output {
        self.errors_sent += 1;
        let mut o = answer_error(out, reference_id, ErrorCode::ClientNotRegistered);
        if self.errors_sent >= MAX_ERRORS_WHEN_REJECTED {
            self.close(CloseReason::ErrorLimit);
            o.timer = TimerAction::Cancel;
            o.close = Close::AfterWrite;
        }
        o
    }

    fn register(
        &mut self,
        req: RegisterClient<'_>,
        ctx: &mut Ctx<'_>,
        out: &mut impl BufMut,
    ) -> Output {
        match ctx.registry.validate(
            req.client_name,
            req.client_type,
            req.credential,
            ctx.peer,
            ctx.tls,
        ) {
            Ok((entry, ty)) => {
                let Some(id) = ctx.ids.next_id() else {
                    // Every id of this worker is held by a live client.
                    return Output {
                        registration: Some(Err(ErrorCode::ServerOverloaded)),
                        ..self.reject(ErrorCode::ServerOverloaded, req.reference_id, ctx, out)
                    };
                };
                // ClientType codes are 1..=5: the byte holds them.
                let ticket = Ticket {
                    reference_id: req.reference_id,
                    client_type: ty.code() as u8,
                    logical: false,
                    keep_alive: ctx.config.keep_alive.in_force(req.keep_alive),
                };
                let (claimed, pending) = match claim(ctx, entry, id, ticket) {
                    Ok(c) => c,
                    Err(code) => {
                        ctx.ids.release(id);
                        return Output {
                            registration: Some(Err(code)),
                            ..self.reject(code, req.reference_id, ctx, out)
                        };
                    }
                };
                self.own_id = id;
                self.name = Some(entry.name().clone());
                self.claimed = claimed;
                self.max_logical = if ty == ClientType::Proxy {
                    entry.max_logical_clients()
                } else {
                    0
                };
                if pending {
                    // Answered by `verdict`; the registration deadline still runs.
                    self.awaiting = true;
                    return Output::NOTHING;
                }
                self.registered(ticket, out)
            }
            Err(code) => Output {
                registration: Some(Err(code)),
                ..self.reject(code, req.reference_id, ctx, out)
            },
        }
    }

    /// The connection's own registration is decided: Registered, and its EventAck.
    fn registered(&mut self, ticket: Ticket, out: &mut impl BufMut) -> Output {
        self.state = State::Registered;
        self.client_type = ticket.client_type;
        self.keep_alive = ticket.keep_alive;
        encode_event_ack(
            out,
            ticket.reference_id,
            Some(self.own_id),
            self.keep_alive(),
        );
        Output {
            answer: Some(Answer::Ack),
            registration: Some(Ok(Registration {
                proxy_client_id: self.own_id,
                logical: false,
            })),
            timer: TimerAction::Cancel,
            close: Close::No,
            ..Output::NOTHING
        }
    }

    /// The outside verdict on the claim a registration waits for (docs/PROTOCOL.md §13):
    /// its answer goes to `out` (EventAck, or the verdict's EventError, which rejects an
    /// unregistered connection), and frames behind it may be read again. A verdict that
    /// finds no such wait (the connection closed meanwhile) does nothing.
    pub fn verdict(&mut self, v: Verdict, ctx: &mut Ctx<'_>, out: &mut impl BufMut) -> Output {
        if !self.awaiting || self.state == State::Closing {
            return Output::NOTHING;
        }
        let (ticket, id) = (v.ticket, v.holder.id);
        if !ticket.logical {
            if self.own_id != id || self.state != State::Unregistered {
                return Output::NOTHING;
            }
            self.awaiting = false;
            return match v.result {
                Ok(()) => self.registered(ticket, out),
                Err(code) => {
                    self.release_names(ctx.names);
                    ctx.ids.release(id);
                    self.own_id = 0;
                    self.name = None;
                    self.max_logical = 0;
                    Output {
                        registration: Some(Err(code)),
                        ..self.reject(code, ticket.reference_id, ctx, out)
                    }
                }
            };
        }
        let Some(l) = self.logical.as_deref_mut() else {
            return Output::NOTHING;
        };
        let Some(at) = l.iter().position(|x| x.id == id) else {
            return Output::NOTHING;
        };
        self.awaiting = false;
        match v.result {
            Ok(()) => logical_acked(out, ticket.reference_id, id),
            Err(code) => {
                let gone = l.swap_remove(at);
                if let (Some(names), Some(name)) = (ctx.names, &gone.claimed) {
                    names.release(name, id);
                }
                ctx.ids.release(id);
                Output {
                    registration: Some(Err(code)),
                    ..answer_error(out, ticket.reference_id, code)
                }
            }
        }
    }

    /// RequestRegisterClient on a registered connection: a Proxy's logical client, or error 6.
    fn register_again(
        &mut self,
        req: RegisterClient<'_>,
        ctx: &mut Ctx<'_>,
        out: &mut impl BufMut,
    ) -> Output {
        let result = if !self.is_proxy() {
            Err(ErrorCode::AlreadyRegistered)
        } else {
            ctx.registry
                .validate(
                    req.client_name,
                    req.client_type,
                    req.credential,
                    ctx.peer,
                    ctx.tls,
                )
                .and_then(|(entry, ty)| {
                    if self.logical_clients() as u64 >= u64::from(self.max_logical) {
                        Err(ErrorCode::TooManyClients)
                    } else {
                        Ok((entry, ty))
                    }
                })
        };
        let result = result.and_then(|(entry, ty)| {
            let ticket = Ticket {
                reference_id: req.reference_id,
                client_type: ty.code() as u8,
                logical: true,
                keep_alive: 0,
            };
            let id = ctx.ids.next_id().ok_or(ErrorCode::ServerOverloaded)?;
            match claim(ctx, entry, id, ticket) {
                Ok((claimed, pending)) => Ok((id, claimed.then(|| entry.name().clone()), pending)),
                Err(code) => {
                    ctx.ids.release(id);
                    Err(code)
                }
            }
        });
        match result {
            Ok((id, claimed, pending)) => {
                self.logical
                    .get_or_insert_with(Box::default)
                    .push(Logical { id, claimed });
                if pending {
                    // Answered by `verdict`; counted against the limit meanwhile.
                    self.awaiting = true;
                    return Output::NOTHING;
                }
                logical_acked(out, req.reference_id, id)
            }
            Err(code) => Output {
                registration: Some(Err(code)),
                ..answer_error(out, req.reference_id, code)
            },
        }
    }

    fn unregister(
        &mut self,
        req: UnregisterClient,
        ctx: &mut Ctx<'_>,
        out: &mut impl BufMut,
    ) -> Output {
        match req.proxy_client_id {
            None => {}
            Some(id) if id == self.own_id => {}
            Some(id) => {
                let logical = self.logical.as_deref_mut();
                return match logical.and_then(|l| l.iter().position(|x| x.id == id).map(|i| (l, i)))
                {
                    Some((l, i)) => {
                        let gone = l.swap_remove(i);
                        if let (Some(names), Some(name)) = (ctx.names, &gone.claimed) {
                            names.release(name, id);
                        }
                        ctx.ids.release(id);
                        encode_event_ack(out, req.reference_id, None, None);
                        Output {
                            answer: Some(Answer::Ack),
                            ..Output::NOTHING
                        }
                    }
                    None => answer_error(out, req.reference_id, ErrorCode::UnknownProxyClientId),
                };
            }
        }
        self.close(CloseReason::Unregister);
        encode_event_ack(out, req.reference_id, None, None);
        Output {
            answer: Some(Answer::Ack),
            registration: None,
            timer: TimerAction::Cancel,
            close: Close::AfterWrite,
            ..Output::NOTHING
        }
    }
}

/// Aggregate result of [`Session::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Fed {
    /// Input bytes used (whole frames only; the rest waits for more bytes).
    pub consumed: usize,
    /// Net deadline change over all frames handled.
    pub timer: TimerAction,
    /// Close decision after the last frame handled.
    pub close: Close,
}

impl Session {
    /// Decodes and handles every complete frame at the front of `input`, in order, and
    /// reports each frame's [`Output`] to `each` (for metrics). Stops at the first frame
    /// that closes the connection: anything after it is never answered.
    pub fn feed(
        &mut self,
        input: &[u8],
        max_frame_len: usize,
        ctx: &mut Ctx<'_>,
        out: &mut impl BufMut,
        mut each: impl FnMut(&Output),
    ) -> Fed {
        let mut fed = Fed {
            consumed: 0,
            timer: TimerAction::Keep,
            close: Close::No,
        };
        while self.state != State::Closing && !self.awaiting {
            let (input_item, len) =
                match crate::protocol::decode(&input[fed.consumed..], max_frame_len) {
                    Ok(None) => break,
                    Ok(Some(f)) => (Input::Message(f.message), f.frame_len),
                    Err(crate::protocol::DecodeError::Malformed(m)) => {
                        (Input::Malformed(m), m.frame_len)
                    }
                    // Nothing after a framing error can be trusted: consume everything.
                    Err(crate::protocol::DecodeError::Framing(e)) => {
                        (Input::FramingError(e), input.len() - fed.consumed)
                    }
                };
            fed.consumed += len;
            let o = self.handle(input_item, ctx, out);
            each(&o);
            if o.timer != TimerAction::Keep {
                fed.timer = o.timer;
            }
            fed.close = o.close;
        }
        fed
    }
}

/// Enters `entry`'s name for registration `id` under its `on_duplicate` policy: whether
/// it was entered (and must be given back) and whether its answer waits for an outside
/// verdict, or the EventError that refuses it (14).
fn claim(
    ctx: &Ctx<'_>,
    entry: &ClientEntry,
    id: i32,
    ticket: Ticket,
) -> Result<(bool, bool), ErrorCode> {
    match (entry.on_duplicate(), ctx.names) {
        (OnDuplicate::Allow, _) | (_, None) => Ok((false, false)),
        (policy, Some(names)) => names
            .claim(entry.name(), policy, id, ticket)
            .map(|c| (true, c == Claim::Pending)),
    }
}

/// A Proxy's logical client registered as `id`: its EventAck.
fn logical_acked(out: &mut impl BufMut, reference_id: i32, id: i32) -> Output {
    encode_event_ack(out, reference_id, Some(id), None);
    Output {
        answer: Some(Answer::Ack),
        registration: Some(Ok(Registration {
            proxy_client_id: id,
            logical: true,
        })),
        ..Output::NOTHING
    }
}

fn answer_error(out: &mut impl BufMut, reference_id: i32, code: ErrorCode) -> Output {
    encode_event_error(out, reference_id, code);
    Output {
        answer: Some(Answer::Error(code)),
        ..Output::NOTHING
    }
}

fn answer_code(a: Answer) -> Option<ErrorCode> {
    match a {
        Answer::Error(c) => Some(c),
        Answer::Ack => None,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
