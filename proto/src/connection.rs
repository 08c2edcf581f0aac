//! One connection's whole protocol, sans-IO: the PROXY preamble, the registration
//! [`Session`], the frame deadline and the close-once-written rules of IXN1.md section 6.
//!
//! An engine owns the socket, the clock and a timer wheel; it feeds a [`Connection`] what
//! happened (bytes, end of stream, a deadline, the drain) and carries out the [`Progress`]
//! that comes back: which timer to arm or cancel, what to write, whether to close now or
//! once written. The connection holds at most one timer at a time ([`Connection::armed`]):
//! its registration or error deadline while unregistered or rejected, its frame deadline
//! while registered, its linger while closing. (The engine's write-stall timer is its own:
//! it watches the socket, not the protocol.)
//!
//! # Closing
//!
//! A close is either *now* ([`Action::CloseNow`]: nothing was ever answered, or the linger
//! is over) or *once written* ([`Action::CloseAfterWrite`]): the engine writes what the
//! call produced, shuts down its sending side (FIN) and calls [`Connection::on_flushed`],
//! which arms the linger; input that still arrives is consumed and dropped until the peer's
//! end of stream or the linger deadline. So no answer is ever lost to a reset.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::BufMut;

use crate::registry::Registry;
use crate::session::{
    deadline, Close, CloseReason, Ctx, IdAllocator, Input, Output, Registration, Session,
    SessionConfig, State, Timer, TimerAction, TimerKind,
};

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
#[derive(Debug)]
pub struct Env<'a> {
    /// Who may register.
    pub registry: &'a Registry,
    /// The worker's ProxyClientIds.
    pub ids: &'a mut IdAllocator,
    /// Shared settings.
    pub config: &'a ConnConfig,
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
}

impl Progress {
    const NOTHING: Progress = Progress {
        consumed: 0,
        timer: TimerChange::Keep,
        action: Action::Continue,
        registered: false,
        logical_delta: 0,
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
#[derive(Debug, Clone)]
pub struct Connection {
    session: Session,
    peer: IpAddr,
    accepted_at: Instant,
    awaiting_proxy: bool,
    phase: Phase,
    armed: Option<Timer>,
}

impl Connection {
    /// A freshly accepted connection from `peer`, and its registration deadline. With
    /// `proxy_preamble` a PROXY v1/v2 header must come first; its source address replaces
    /// `peer`.
    pub fn accept(
        now: Instant,
        peer: IpAddr,
        proxy_preamble: bool,
        config: &ConnConfig,
    ) -> (Self, TimerChange) {
        let (session, arm) = Session::accept(now, config.session);
        let mut c = Self {
            session,
            peer,
            accepted_at: now,
            awaiting_proxy: proxy_preamble,
            phase: Phase::Open,
            armed: None,
        };
        let timer = c.timer_change(arm);
        (c, timer)
    }

    /// A connection refused at accept because the server is full: its EventError{0, 10}
    /// goes to `out`, and it closes once that is written (IXN1.md section 6).
    pub fn refuse(
        now: Instant,
        peer: IpAddr,
        config: &ConnConfig,
        out: &mut impl BufMut,
    ) -> (Self, Progress) {
        let (mut c, _) = Self::accept(now, peer, false, config);
        crate::protocol::encode_event_error(out, 0, crate::protocol::ErrorCode::ServerOverloaded);
        let p = c.flush_then_close(CloseReason::Overload);
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

    /// When it was accepted.
    pub fn accepted_at(&self) -> Instant {
        self.accepted_at
    }

    /// The timer the engine should have armed for it, if any.
    pub fn armed(&self) -> Option<Timer> {
        self.armed
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
        mut each: impl FnMut(&Output),
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
                    }
                    skip = header.len;
                }
                Err(_) => return self.close_now(CloseReason::ProxyProtocol),
            }
        }
        let frames = &input[skip..];
        let logical_before = self.session.logical_clients() as i64;
        let mut registered = false;
        let mut ctx = Ctx {
            registry: env.registry,
            peer: self.peer,
            now,
            ids: env.ids,
            config: env.config.session,
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
        let mut progress = Progress {
            consumed: skip + fed.consumed,
            timer: self.timer_change(fed.timer),
            action: Action::Continue,
            registered,
            logical_delta,
        };
        if fed.close != Close::No {
            let reason = self.session.close_reason().unwrap_or(CloseReason::Peer);
            let closing = self.flush_then_close(reason);
            progress.timer = closing.timer;
            progress.action = closing.action;
            return progress;
        }
        if self.session.state() == State::Registered {
            // The frame deadline runs from a frame's first byte to its last.
            let partial = frames.len() > fed.consumed;
            let began_now = fed.consumed > 0 || self.armed != Some(Timer::Frame);
            if partial && began_now {
                progress.timer = self.arm(Timer::Frame, deadline(now, env.config.frame_timeout));
            } else if !partial && self.armed == Some(Timer::Frame) {
                self.armed = None;
                progress.timer = TimerChange::Cancel;
            }
        }
        progress
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

    /// The connection's timer passed. Needs no registry and writes nothing.
    pub fn on_deadline(&mut self, timer: Timer) -> Progress {
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
        }
    }

    /// The server drains: unregistered connections close now; rejected ones once written;
    /// registered ones get EventError 11 and close once written.
    pub fn on_drain(
        &mut self,
        now: Instant,
        env: &mut Env<'_>,
        out: &mut impl BufMut,
        mut each: impl FnMut(&Output),
    ) -> Progress {
        if self.phase != Phase::Open {
            return Progress::NOTHING;
        }
        let was = self.session.state();
        let mut ctx = Ctx {
            registry: env.registry,
            peer: self.peer,
            now,
            ids: env.ids,
            config: env.config.session,
        };
        let o = self.session.handle(Input::Drain, &mut ctx, out);
        each(&o);
        match was {
            State::Registered | State::Rejected => self.flush_then_close(CloseReason::Drain),
            _ => self.close_now(CloseReason::Drain),
        }
    }

    /// Gives back every ProxyClientId the connection holds; call once, when it is gone.
    pub fn release_ids(&mut self, ids: &mut IdAllocator) {
        self.session.release_ids(ids);
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
