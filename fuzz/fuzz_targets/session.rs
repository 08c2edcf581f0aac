//! Fuzz target: the registration state machine fed arbitrary byte streams, cut into reads
//! and interleaved with deadlines and drain, never panics, answers only with frames that
//! decode, never answers after deciding to close, and never writes more than 16
//! EventErrors to a rejected connection.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ixn::protocol::{decode, Message, DEFAULT_MAX_FRAME_LEN};
use ixn::registry::Registry;
use ixn::session::{Close, Ctx, IdAllocator, Input, Session, SessionConfig, State, TimerKind};
use libfuzzer_sys::fuzz_target;

/// Parsed once: parsing per input took most of each run.
static REGISTRY: OnceLock<Registry> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let registry = REGISTRY.get_or_init(Registry::embedded);
    let mut ids = IdAllocator::default();
    let t0 = Instant::now();
    let config = SessionConfig::default();
    let (mut s, _) = Session::accept(t0, config);
    let mut pending = Vec::new();
    let mut errors_when_rejected = 0usize;
    let mut closed = false;
    for (i, chunk) in data.chunks(7).enumerate() {
        let mut out = Vec::new();
        let mut ctx = Ctx {
            registry,
            peer: IpAddr::V4(Ipv4Addr::new(127, 0, 0, (i % 3) as u8 + 1)),
            now: t0 + Duration::from_millis(i as u64),
            ids: &mut ids,
            config,
        };
        let was_rejected = s.state() == State::Rejected;
        let close = match chunk.first() {
            Some(0xfd) => s.handle(Input::Deadline(TimerKind::Registration), &mut ctx, &mut out).close,
            Some(0xfe) => s.handle(Input::Deadline(TimerKind::ErrorDisconnect), &mut ctx, &mut out).close,
            Some(0xff) => s.handle(Input::Drain, &mut ctx, &mut out).close,
            _ => {
                pending.extend_from_slice(chunk);
                let fed = s.feed(&pending, DEFAULT_MAX_FRAME_LEN, &mut ctx, &mut out, |_| {});
                pending.drain(..fed.consumed);
                fed.close
            }
        };
        if closed {
            assert!(out.is_empty(), "answered after closing");
        }
        let mut rest = &out[..];
        while !rest.is_empty() {
            let f = decode(rest, usize::MAX).expect("answers decode").expect("complete answers");
            if matches!(f.message, Message::EventError(_)) && (was_rejected || s.state() != State::Registered) {
                errors_when_rejected += 1;
            }
            rest = &rest[f.frame_len..];
        }
        if close != Close::No {
            closed = true;
        }
    }
    assert!(errors_when_rejected <= 16, "{errors_when_rejected} errors to a rejected connection");
});
