//! Random frame sequences against the registration state machine: invariants that must hold
//! whatever a client sends (the fuzz target `session` explores the same space unguided).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ixn::protocol::{
    decode, encode, Message, RegisterClient, UnregisterClient, DEFAULT_MAX_FRAME_LEN,
};
use ixn::registry::Registry;
use ixn::session::{Close, Ctx, IdAllocator, Input, Session, SessionConfig, State, TimerKind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Register(u8, i32),
    Unregister(Option<i32>),
    Other(u16),
    Garbage(Vec<u8>),
    Deadline(bool),
    Drain,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, 0i32..7).prop_map(|(n, t)| Step::Register(n, t)),
        2 => prop::option::of(0i32..5).prop_map(Step::Unregister),
        2 => (3u16..0x200).prop_map(Step::Other),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Step::Garbage),
        1 => any::<bool>().prop_map(Step::Deadline),
        1 => Just(Step::Drain),
    ]
}

const NAMES: [&str; 6] = [
    "MediaServer_email",
    "Proxy_small",
    "AgentDesktop",
    "Router_local",
    "nobody",
    "Reporting_dc",
];

fn bytes(s: &Step, rid: i32) -> Vec<u8> {
    let mut v = Vec::new();
    let m = match s {
        Step::Register(n, t) => Message::RegisterClient(RegisterClient {
            reference_id: rid,
            client_name: NAMES[usize::from(*n)],
            client_type: *t,
            proxy_client_id: None,
            credential: (*n == 2).then_some("s3cret"),
            extension: None,
            keep_alive: None,
        }),
        Step::Unregister(id) => Message::UnregisterClient(UnregisterClient {
            reference_id: rid,
            proxy_client_id: *id,
        }),
        Step::Other(id) => Message::Other {
            msg_id: *id,
            reference_id: Some(rid),
        },
        Step::Garbage(g) => return g.clone(),
        _ => return v,
    };
    encode(&m, &mut v).unwrap();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn invariants_hold_for_any_sequence(steps in prop::collection::vec(step(), 1..40)) {
        let registry = Registry::embedded();
        let mut ids = IdAllocator::default();
        let t0 = Instant::now();
        let config = SessionConfig::default();
        let (mut s, _) = Session::accept(t0, config);
        let mut closed = false;
        let mut errors_after_rejection = 0;
        let mut ever_rejected = false;
        let mut pending = Vec::new();
        for (i, st) in steps.iter().enumerate() {
            let mut out = Vec::new();
            let mut ctx = Ctx {
                registry: &registry,
                peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
                tls: None,
                now: t0 + Duration::from_millis(i as u64 * 10),
                ids: &mut ids,
                config,
                names: None,
            };
            let before = s.state();
            let close = match st {
                Step::Deadline(reg) => {
                    let k = if *reg { TimerKind::Registration } else { TimerKind::ErrorDisconnect };
                    let o = s.handle(Input::Deadline(k), &mut ctx, &mut out);
                    // A deadline closes only the state it belongs to.
                    let due = matches!((before, k), (State::Unregistered, TimerKind::Registration) | (State::Rejected, TimerKind::ErrorDisconnect));
                    prop_assert_eq!(o.close == Close::Now, due && !closed);
                    o.close
                }
                Step::Drain => s.handle(Input::Drain, &mut ctx, &mut out).close,
                _ => {
                    pending.extend(bytes(st, i as i32));
                    let fed = s.feed(&pending, DEFAULT_MAX_FRAME_LEN, &mut ctx, &mut out, |_| {});
                    pending.drain(..fed.consumed);
                    fed.close
                }
            };
            if closed {
                prop_assert!(out.is_empty(), "answered after the close");
            }
            // Every answer is a well-formed EventAck or EventError.
            let mut rest = &out[..];
            while !rest.is_empty() {
                let f = decode(rest, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
                match f.message {
                    Message::EventAck(_) => prop_assert!(before != State::Rejected, "an ack on a rejected connection"),
                    Message::EventError(_) => {
                        if ever_rejected || s.state() == State::Rejected {
                            errors_after_rejection += 1;
                        }
                    }
                    other => prop_assert!(false, "server wrote {:?}", other),
                }
                rest = &rest[f.frame_len..];
            }
            if s.state() == State::Rejected {
                ever_rejected = true;
            }
            // Once rejected, never registered.
            if ever_rejected {
                prop_assert!(s.state() != State::Registered);
            }
            if close != Close::No {
                closed = true;
            }
        }
        prop_assert!(errors_after_rejection <= 16, "{} EventErrors to a rejected client", errors_after_rejection);
    }
}
