//! Unit tests: one or more per row of docs/PROTOCOL.md §6.
//!
//! Over 600 lines on purpose: table-driven, one test or more per row of the table.

use super::*;
use crate::protocol::{decode, encode, EventAck, EventError, Message as M, UnregisterClient as U};
use std::net::Ipv4Addr;
use std::sync::Arc;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MAX: usize = crate::protocol::DEFAULT_MAX_FRAME_LEN;

struct H {
    s: Session,
    reg: Registry,
    ids: IdAllocator,
    t0: Instant,
    now: Instant,
    peer: IpAddr,
    outputs: Vec<Output>,
    /// The process's name table and this session's connection, when a test shares one.
    names: Option<(Arc<TestNames>, crate::names::ConnKey)>,
}

fn cfg() -> SessionConfig {
    SessionConfig::default()
}

impl H {
    fn new() -> Self {
        let t0 = Instant::now();
        let (s, arm) = Session::accept(t0, cfg());
        assert_eq!(
            arm,
            TimerAction::Arm(TimerKind::Registration, t0 + Duration::from_secs(5))
        );
        Self {
            s,
            reg: Registry::embedded(),
            ids: IdAllocator::default(),
            t0,
            now: t0,
            peer: LOOPBACK,
            outputs: Vec::new(),
            names: None,
        }
    }

    fn registered(name: &str, ty: i32, cred: Option<&str>) -> Self {
        let mut h = Self::new();
        let (answers, fed) = h.send(&[rrc(1, name, ty, cred)]);
        assert!(matches!(answers[..], [Answer2::Ack { .. }]), "{answers:?}");
        assert_eq!(fed.timer, TimerAction::Cancel);
        assert_eq!(h.s.state(), State::Registered);
        h
    }

    /// Sends the frames in one write, returns the decoded answers and the aggregate.
    fn send(&mut self, frames: &[Vec<u8>]) -> (Vec<Answer2>, Fed) {
        let bytes: Vec<u8> = frames.concat();
        self.send_bytes(&bytes)
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> (Vec<Answer2>, Fed) {
        let mut outputs = std::mem::take(&mut self.outputs);
        let r = self.with_ctx(|s, ctx, out| s.feed(bytes, MAX, ctx, out, |o| outputs.push(*o)));
        self.outputs = outputs;
        r
    }

    fn event(&mut self, input: Input<'_>) -> (Vec<Answer2>, Output) {
        self.with_ctx(|s, ctx, out| s.handle(input, ctx, out))
    }

    /// Runs `f` on the session with this harness's context; the answers it wrote, decoded.
    fn with_ctx<T>(
        &mut self,
        f: impl FnOnce(&mut Session, &mut Ctx<'_>, &mut Vec<u8>) -> T,
    ) -> (Vec<Answer2>, T) {
        let mut out = Vec::new();
        let mut ctx = Ctx {
            registry: &self.reg,
            peer: self.peer,
            tls: None,
            now: self.now,
            ids: &mut self.ids,
            config: cfg(),
            names: self.names.as_ref().map(|(table, conn)| Claims {
                table: &**table,
                conn: *conn,
            }),
        };
        let r = f(&mut self.s, &mut ctx, &mut out);
        (answers(&out), r)
    }
}

/// A decoded server answer, owned, for easy comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer2 {
    Ack {
        reference_id: i32,
        proxy_client_id: Option<i32>,
    },
    Error {
        reference_id: i32,
        code: i32,
    },
}

fn answers(mut out: &[u8]) -> Vec<Answer2> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let f = decode(out, MAX)
            .expect("server output decodes")
            .expect("complete");
        v.push(match f.message {
            M::EventAck(EventAck {
                reference_id,
                proxy_client_id,
                ..
            }) => Answer2::Ack {
                reference_id,
                proxy_client_id,
            },
            M::EventError(EventError {
                reference_id,
                error_code,
                ..
            }) => Answer2::Error {
                reference_id,
                code: error_code,
            },
            other => panic!("server wrote {other:?}"),
        });
        out = &out[f.frame_len..];
    }
    v
}

fn frame(m: M<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    encode(&m, &mut v).unwrap();
    v
}

fn rrc(reference_id: i32, name: &str, ty: i32, cred: Option<&str>) -> Vec<u8> {
    frame(M::RegisterClient(RegisterClient {
        reference_id,
        client_name: name,
        client_type: ty,
        proxy_client_id: None,
        credential: cred,
        extension: None,
        keep_alive: None,
    }))
}

fn unreg(reference_id: i32, id: Option<i32>) -> Vec<u8> {
    frame(M::UnregisterClient(U {
        reference_id,
        proxy_client_id: id,
    }))
}

fn other(reference_id: i32) -> Vec<u8> {
    frame(M::Other {
        msg_id: 0x0010,
        reference_id: Some(reference_id),
    })
}

/// RequestRegisterClient whose ClientName is not UTF-8 (ReferenceId 1 readable).
fn malformed_rrc() -> Vec<u8> {
    hex::decode("0000001d000100030001010004000000010002020002fffe000301000400000001").unwrap()
}

fn err(reference_id: i32, code: ErrorCode) -> Answer2 {
    Answer2::Error {
        reference_id,
        code: code.code(),
    }
}

fn error_deadline(h: &H) -> TimerAction {
    TimerAction::Arm(TimerKind::ErrorDisconnect, h.now + Duration::from_secs(1))
}

// Row: Unregistered | valid RequestRegisterClient | EventAck{ReferenceId, ProxyClientId != 0}.
#[test]
fn valid_registration_is_acked_with_a_nonzero_id() {
    let mut h = H::new();
    let (a, fed) = h.send(&[rrc(7, "MediaServer_email", 1, None)]);
    assert_eq!(
        a,
        vec![Answer2::Ack {
            reference_id: 7,
            proxy_client_id: Some(1)
        }]
    );
    assert_eq!(fed.timer, TimerAction::Cancel);
    assert_eq!(fed.close, Close::No);
    assert_eq!(h.s.state(), State::Registered);
    assert_eq!(h.s.proxy_client_id(), Some(1));
    assert_eq!(
        h.outputs[0].registration,
        Some(Ok(Registration {
            proxy_client_id: 1,
            logical: false
        }))
    );
}

#[test]
fn credential_and_address_registrations_succeed() {
    H::registered("AgentDesktop", 2, Some("s3cret"));
    H::registered("Router_local", 4, None);
    let mut h = H::new();
    h.peer = "10.9.8.7".parse().unwrap();
    let (a, _) = h.send(&[rrc(3, "Reporting_dc", 5, None)]);
    assert!(matches!(
        a[..],
        [Answer2::Ack {
            reference_id: 3,
            ..
        }]
    ));
}

// Row: Unregistered | RequestRegisterClient failing validation | EventError{2,3,4,5} | Rejected.
#[test]
fn failed_validation_rejects_with_each_code() {
    let cases: [(Vec<u8>, ErrorCode); 6] = [
        (rrc(11, "Nobody", 1, None), ErrorCode::UnknownClient),
        (
            rrc(12, "MediaServer_email", 2, None),
            ErrorCode::ClientTypeNotAllowed,
        ),
        (
            rrc(13, "MediaServer_email", 42, None),
            ErrorCode::ClientTypeNotAllowed,
        ),
        (
            rrc(14, "AgentDesktop", 2, None),
            ErrorCode::AuthenticationFailed,
        ),
        (
            rrc(15, "AgentDesktop", 2, Some("guess")),
            ErrorCode::AuthenticationFailed,
        ),
        (
            rrc(16, "Reporting_dc", 5, None),
            ErrorCode::AddressNotAllowed,
        ),
    ];
    for (f, code) in cases {
        let mut h = H::new();
        h.now = h.t0 + Duration::from_millis(700);
        let (a, fed) = h.send(std::slice::from_ref(&f));
        let rid = i32::from_be_bytes(f[13..17].try_into().unwrap());
        assert_eq!(a, vec![err(rid, code)], "{code:?}");
        assert_eq!(h.s.state(), State::Rejected);
        // The error deadline starts at the rejection, and replaces the registration one.
        assert_eq!(fed.timer, error_deadline(&h));
        assert_eq!(fed.close, Close::No);
        assert_eq!(h.outputs[0].registration, Some(Err(code)));
    }
}

// Row: Unregistered | malformed message | EventError{7} | Rejected.
#[test]
fn malformed_first_message_is_rejected_with_its_reference_id() {
    let mut h = H::new();
    let (a, fed) = h.send(&[malformed_rrc()]);
    assert_eq!(a, vec![err(1, ErrorCode::MalformedMessage)]);
    assert_eq!(h.s.state(), State::Rejected);
    assert_eq!(fed.timer, error_deadline(&h));
    assert_eq!(
        h.outputs[0].registration,
        Some(Err(ErrorCode::MalformedMessage))
    );

    // Unreadable ReferenceId: 0.
    let mut h = H::new();
    let wrong_type =
        hex::decode("0000001900010003000102000137000202000158000301000400000001").unwrap();
    let (a, _) = h.send(&[wrong_type]);
    assert_eq!(a, vec![err(0, ErrorCode::MalformedMessage)]);
}

// Row: Unregistered | any other message | EventError{1} | Rejected.
#[test]
fn any_other_message_first_is_rejected() {
    for f in [
        other(5),
        unreg(6, None),
        frame(M::EventAck(EventAck {
            reference_id: 8,
            proxy_client_id: None,
            extension: None,
            keep_alive: None,
        })),
    ] {
        let mut h = H::new();
        let (a, fed) = h.send(&[f]);
        assert_eq!(a.len(), 1);
        assert!(matches!(a[0], Answer2::Error { code: 1, .. }), "{a:?}");
        assert_eq!(h.s.state(), State::Rejected);
        assert_eq!(fed.timer, error_deadline(&h));
    }
    // An empty message of another type: ReferenceId 0.
    let mut h = H::new();
    let (a, _) = h.send_bytes(&hex::decode("0000000400100000").unwrap());
    assert_eq!(a, vec![err(0, ErrorCode::ClientNotRegistered)]);
}

// The seed's third unsuccessful version: first one, then the other.
#[test]
fn first_one_then_the_other() {
    // Other message first, then a valid registration: both refused, never registered.
    let mut h = H::new();
    let (a, _) = h.send(&[other(1), rrc(2, "MediaServer_email", 1, None)]);
    assert_eq!(
        a,
        vec![
            err(1, ErrorCode::ClientNotRegistered),
            err(2, ErrorCode::ClientNotRegistered)
        ]
    );
    assert_eq!(h.s.state(), State::Rejected);
    // Invalid registration first, then another message and a valid registration.
    let mut h = H::new();
    let (a, fed) = h.send(&[
        rrc(1, "Nobody", 1, None),
        other(2),
        rrc(3, "MediaServer_email", 1, None),
    ]);
    assert_eq!(
        a,
        vec![
            err(1, ErrorCode::UnknownClient),
            err(2, ErrorCode::ClientNotRegistered),
            err(3, ErrorCode::ClientNotRegistered)
        ]
    );
    assert_eq!(h.s.state(), State::Rejected);
    assert_eq!(fed.timer, error_deadline(&h));
}

// Row: Unregistered | registration deadline | nothing; close.
#[test]
fn registration_deadline_closes_silently() {
    let mut h = H::new();
    let (a, o) = h.event(Input::Deadline(TimerKind::Registration));
    assert!(a.is_empty());
    assert_eq!(o.close, Close::Now);
    assert_eq!(h.s.state(), State::Closing);
    assert_eq!(h.s.close_reason(), Some(CloseReason::RegistrationTimeout));
    // Nothing is answered after that.
    let (a, fed) = h.send(&[rrc(1, "MediaServer_email", 1, None)]);
    assert!(a.is_empty());
    assert_eq!(fed.consumed, 0);
}

#[test]
fn trickled_bytes_do_not_move_the_deadline() {
    let mut h = H::new();
    let f = rrc(1, "MediaServer_email", 1, None);
    let (a, fed) = h.send_bytes(&f[..f.len() - 1]);
    assert!(a.is_empty());
    assert_eq!(
        fed,
        Fed {
            consumed: 0,
            timer: TimerAction::Keep,
            close: Close::No
        }
    );
}

// Row: Rejected | any well-framed message | EventError{1} | Rejected (deadline not extended).
#[test]
fn rejected_answers_everything_with_error_1_and_keeps_its_deadline() {
    let mut h = H::new();
    let _ = h.send(&[other(1)]);
    h.now += Duration::from_millis(500);
    let (a, fed) = h.send(&[
        rrc(2, "MediaServer_email", 1, None),
        malformed_rrc(),
        unreg(4, None),
        other(5),
    ]);
    assert_eq!(
        a,
        vec![
            err(2, ErrorCode::ClientNotRegistered),
            err(1, ErrorCode::ClientNotRegistered),
            err(4, ErrorCode::ClientNotRegistered),
            err(5, ErrorCode::ClientNotRegistered),
        ]
    );
    assert_eq!(fed.timer, TimerAction::Keep, "never extended");
    assert_eq!(fed.close, Close::No);
}

// Row: Rejected | error deadline | close.
#[test]
fn error_deadline_closes() {
    let mut h = H::new();
    let _ = h.send(&[other(1)]);
    // A stale registration deadline is ignored in Rejected.
    let (_, o) = h.event(Input::Deadline(TimerKind::Registration));
    assert_eq!(o.close, Close::No);
    let (a, o) = h.event(Input::Deadline(TimerKind::ErrorDisconnect));
    assert!(a.is_empty());
    assert_eq!(o.close, Close::Now);
    assert_eq!(h.s.close_reason(), Some(CloseReason::ErrorTimeout));
}

// Row: Rejected | its 16th EventError written | close.
#[test]
fn sixteenth_error_closes() {
    let mut h = H::new();
    let frames: Vec<Vec<u8>> = (1..=20).map(other).collect();
    let (a, fed) = h.send(&frames);
    assert_eq!(a.len(), 16, "exactly 16 EventErrors");
    assert_eq!(a[15], err(16, ErrorCode::ClientNotRegistered));
    assert_eq!(fed.close, Close::AfterWrite);
    assert_eq!(
        fed.consumed,
        16 * frames[0].len(),
        "frames after the 16th are not read"
    );
    assert_eq!(h.s.state(), State::Closing);
}

// Row: any | framing error | EventError{0, 8}; close once written.
#[test]
fn framing_error_in_every_state() {
    let too_long = hex::decode("00001ffd00010000").unwrap();
    let too_short = hex::decode("00000003000100").unwrap();
    for state in 0..3 {
        for bad in [&too_long, &too_short] {
            let mut h = match state {
                0 => H::new(),
                1 => H::registered("MediaServer_email", 1, None),
                _ => {
                    let mut h = H::new();
                    let _ = h.send(&[other(1)]);
                    h
                }
            };
            // A valid frame ahead of the bad one is still answered, in order.
            let mut bytes = other(9);
            bytes.extend_from_slice(bad);
            bytes.extend_from_slice(&other(10));
            let (a, fed) = h.send_bytes(&bytes);
            assert_eq!(
                a.last(),
                Some(&err(0, ErrorCode::FrameTooLarge)),
                "state {state}"
            );
            assert_eq!(a.len(), 2);
            assert_eq!(fed.close, Close::AfterWrite);
            assert_eq!(h.s.close_reason(), Some(CloseReason::FramingError));
            assert_eq!(fed.consumed, bytes.len());
        }
    }
}

// Row: Registered | RequestRegisterClient, connection not a Proxy | EventError{6}.
#[test]
fn registered_non_proxy_gets_already_registered() {
    let mut h = H::registered("MediaServer_email", 1, None);
    let (a, fed) = h.send(&[
        rrc(2, "MediaServer_email", 1, None),
        rrc(3, "Nobody", 1, None),
    ]);
    assert_eq!(
        a,
        vec![
            err(2, ErrorCode::AlreadyRegistered),
            err(3, ErrorCode::AlreadyRegistered)
        ]
    );
    assert_eq!(fed.close, Close::No);
    assert_eq!(h.s.state(), State::Registered);
}

// Rows: Registered Proxy | valid RRC | EventAck{new id}; over its limit | EventError{13};
// RequestUnregisterClient naming a logical client | EventAck.
#[test]
fn proxy_logical_clients() {
    let mut h = H::registered("Proxy_small", 3, None);
    let own = h.s.proxy_client_id().unwrap();
    let (a, _) = h.send(&[
        rrc(2, "MediaServer_email", 1, None),
        rrc(3, "AgentDesktop", 2, Some("s3cret")),
        rrc(4, "MediaServer_email", 1, None),
        rrc(5, "Nobody", 1, None),
    ]);
    let ids: Vec<i32> = a[..2]
        .iter()
        .map(|x| match x {
            Answer2::Ack {
                proxy_client_id: Some(id),
                ..
            } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(ids.iter().all(|&id| id != 0 && id != own));
    assert_ne!(ids[0], ids[1]);
    assert_eq!(a[2], err(4, ErrorCode::TooManyClients));
    assert_eq!(
        a[3],
        err(5, ErrorCode::UnknownClient),
        "validation still applies"
    );
    assert_eq!(h.s.logical_clients(), 2);
    // Unregister one logical client: acked, stays registered, frees a slot.
    let (a, fed) = h.send(&[unreg(6, Some(ids[0])), rrc(7, "MediaServer_email", 1, None)]);
    assert_eq!(
        a[0],
        Answer2::Ack {
            reference_id: 6,
            proxy_client_id: None
        }
    );
    assert!(matches!(
        a[1],
        Answer2::Ack {
            reference_id: 7,
            proxy_client_id: Some(_)
        }
    ));
    assert_eq!(fed.close, Close::No);
    // The removed id is no longer its own.
    let (a, _) = h.send(&[unreg(8, Some(ids[0]))]);
    assert_eq!(a, vec![err(8, ErrorCode::UnknownProxyClientId)]);
    assert_eq!(h.s.state(), State::Registered);
}

#[test]
fn proxy_default_limit_is_64() {
    let mut h = H::registered("Proxy_main", 3, Some("proxy-secret"));
    let frames: Vec<Vec<u8>> = (0..65)
        .map(|i| rrc(i, "MediaServer_email", 1, None))
        .collect();
    let (a, _) = h.send(&frames);
    assert_eq!(
        a.iter()
            .filter(|x| matches!(x, Answer2::Ack { .. }))
            .count(),
        64
    );
    assert_eq!(a[64], err(64, ErrorCode::TooManyClients));
}

// Row: Registered | RequestUnregisterClient with no ProxyClientId, or its own | EventAck; close.
#[test]
fn unregister_self_closes_after_ack() {
    for with_id in [false, true] {
        let mut h = H::registered("MediaServer_email", 1, None);
        let id = with_id.then(|| h.s.proxy_client_id().unwrap());
        let (a, fed) = h.send(&[unreg(9, id), other(10)]);
        assert_eq!(
            a,
            vec![Answer2::Ack {
                reference_id: 9,
                proxy_client_id: None
            }]
        );
        assert_eq!(fed.close, Close::AfterWrite);
        assert_eq!(h.s.close_reason(), Some(CloseReason::Unregister));
    }
}

// Row: Registered | RequestUnregisterClient naming an id it does not own | EventError{12}.
#[test]
fn unregister_unknown_id() {
    let mut h = H::registered("MediaServer_email", 1, None);
    let (a, fed) = h.send(&[unreg(9, Some(424242))]);
    assert_eq!(a, vec![err(9, ErrorCode::UnknownProxyClientId)]);
    assert_eq!(fed.close, Close::No);
}

// Rows: Registered | malformed message | EventError{7}; any other message | EventError{9}.
#[test]
fn registered_malformed_and_other() {
    let mut h = H::registered("MediaServer_email", 1, None);
    let (a, fed) = h.send(&[malformed_rrc(), other(3)]);
    assert_eq!(
        a,
        vec![
            err(1, ErrorCode::MalformedMessage),
            err(3, ErrorCode::UnsupportedRequest)
        ]
    );
    assert_eq!(fed.close, Close::No);
    assert_eq!(fed.timer, TimerAction::Keep);
    assert_eq!(h.s.state(), State::Registered);
    // Registered clients are not capped at 16 errors.
    let frames: Vec<Vec<u8>> = (0..40).map(other).collect();
    let (a, fed) = h.send(&frames);
    assert_eq!(a.len(), 40);
    assert_eq!(fed.close, Close::No);
}

// Row: any | server draining.
#[test]
fn drain() {
    let mut h = H::new();
    let (a, o) = h.event(Input::Drain);
    assert!(a.is_empty());
    assert_eq!(o.close, Close::Now);

    let mut h = H::new();
    let _ = h.send(&[other(1)]);
    let (a, o) = h.event(Input::Drain);
    assert!(a.is_empty());
    assert_eq!(o.close, Close::Now);

    let mut h = H::registered("MediaServer_email", 1, None);
    let (a, o) = h.event(Input::Drain);
    assert_eq!(a, vec![err(0, ErrorCode::ServerShuttingDown)]);
    assert_eq!(o.close, Close::AfterWrite);
    assert_eq!(h.s.close_reason(), Some(CloseReason::Drain));
}

#[test]
fn pipelined_frames_are_answered_in_order() {
    let mut h = H::registered("Proxy_main", 3, Some("proxy-secret"));
    let frames = vec![
        other(1),
        rrc(2, "MediaServer_email", 1, None),
        unreg(3, Some(1_000_000)),
        malformed_rrc(),
        unreg(5, None),
        other(6),
    ];
    let (a, fed) = h.send(&frames);
    let refs: Vec<i32> = a
        .iter()
        .map(|x| match x {
            Answer2::Ack { reference_id, .. } | Answer2::Error { reference_id, .. } => {
                *reference_id
            }
        })
        .collect();
    assert_eq!(refs, vec![1, 2, 3, 1, 5]);
    assert_eq!(fed.close, Close::AfterWrite);
    let total: usize = frames[..5].iter().map(Vec::len).sum();
    assert_eq!(fed.consumed, total);
}

#[test]
fn stale_deadline_on_registered_is_ignored() {
    let mut h = H::registered("MediaServer_email", 1, None);
    let (_, o) = h.event(Input::Deadline(TimerKind::Registration));
    assert_eq!(o.close, Close::No);
    assert_eq!(h.s.state(), State::Registered);
}

#[test]
fn id_allocator_steps_and_wraps_without_zero() {
    let mut ids = IdAllocator::new(2, 2);
    assert_eq!(ids.next_id(), Some(2));
    assert_eq!(ids.next_id(), Some(4));
    let mut ids = IdAllocator::new(i32::MAX as u32 - 1, 2);
    assert_eq!(ids.next_id(), Some(i32::MAX - 1));
    assert_eq!(ids.next_id(), None, "its only id is live");
    ids.release(i32::MAX - 1);
    assert_eq!(
        ids.next_id(),
        Some(i32::MAX - 1),
        "wraps to its first id, never 0 or negative"
    );
}

#[test]
fn id_allocator_never_hands_out_a_live_id_after_wrapping() {
    // Ids 1, 3, 5, 7 then wrap.
    let mut ids = IdAllocator::with_last(1, 2, 8);
    let long_lived = ids.next_id().unwrap();
    let mut seen = vec![long_lived];
    for _ in 0..100 {
        let id = ids.next_id().unwrap();
        assert_ne!(id, long_lived, "a live id was handed out again");
        assert!(id > 0 && id <= 8 && id % 2 == 1, "{id}");
        seen.push(id);
        ids.release(id);
    }
    assert_eq!(ids.live(), 1);
    // Every id live: the next registration is refused instead of duplicated.
    let rest: Vec<i32> = (0..3).map(|_| ids.next_id().unwrap()).collect();
    assert!(!rest.contains(&long_lived));
    assert_eq!(ids.next_id(), None);
}

#[test]
fn a_full_id_space_answers_server_overloaded() {
    let mut h = H::new();
    h.ids = IdAllocator::with_last(1, 1, 1);
    let (a, _) = h.send(&[rrc(1, "Proxy_small", 3, None)]);
    assert_eq!(
        a,
        vec![Answer2::Ack {
            reference_id: 1,
            proxy_client_id: Some(1)
        }]
    );
    let (a, _) = h.send(&[rrc(2, "MediaServer_email", 1, None)]);
    assert_eq!(
        a,
        vec![err(2, ErrorCode::ServerOverloaded)],
        "logical client: no id left"
    );
    let mut other = H::new();
    other.ids = h.ids.clone();
    let (a, _) = other.send(&[rrc(3, "MediaServer_email", 1, None)]);
    assert_eq!(a, vec![err(3, ErrorCode::ServerOverloaded)]);
    assert_eq!(other.s.state(), State::Rejected);
    h.s.release(&mut h.ids, None);
    assert_eq!(h.ids.live(), 0);
}

#[test]
fn unregistering_a_logical_client_releases_its_id() {
    let mut h = H::registered("Proxy_small", 3, None);
    let (a, _) = h.send(&[rrc(2, "MediaServer_email", 1, None)]);
    let Answer2::Ack {
        proxy_client_id: Some(id),
        ..
    } = a[0]
    else {
        panic!("{a:?}")
    };
    assert_eq!(h.ids.live(), 2);
    let _ = h.send(&[unreg(3, Some(id))]);
    assert_eq!(h.ids.live(), 1, "the logical client's id is free again");
}

#[test]
fn deadlines_never_overflow_whatever_the_config() {
    let t0 = Instant::now();
    let huge = SessionConfig {
        registration_timeout: Duration::MAX,
        error_disconnect_timeout: Duration::from_secs(u64::MAX / 2),
        keep_alive: KeepAliveConfig::default(),
    };
    let (_, arm) = Session::accept(t0, huge);
    assert_eq!(
        arm,
        TimerAction::Arm(TimerKind::Registration, t0 + MAX_TIMEOUT)
    );
    assert_eq!(
        deadline(t0, Duration::from_millis(5)),
        t0 + Duration::from_millis(5)
    );
}

/// A name table for these tests (the server's is `ixn::names::NameTable`, with its own
/// tests): one map, `reject` refusing another connection's holder, `replace` displacing
/// them into `replaced`.
struct TestNames {
    held: std::sync::Mutex<std::collections::HashMap<String, Vec<crate::names::Holder>>>,
    replaced: Arc<std::sync::Mutex<Vec<crate::names::Holder>>>,
    /// As a fleet would: every claim entered waits for a verdict, and is recorded here.
    pending: Option<std::sync::Mutex<Vec<(crate::names::Holder, crate::names::Ticket)>>>,
}

impl crate::names::Names for TestNames {
    fn claim(
        &self,
        name: &crate::registry::SharedName,
        policy: crate::registry::OnDuplicate,
        holder: crate::names::Holder,
        ticket: crate::names::Ticket,
    ) -> Result<crate::names::Claim, ErrorCode> {
        use crate::names::Claim;
        use crate::registry::OnDuplicate;
        if policy == OnDuplicate::Allow {
            return Ok(Claim::Done);
        }
        let mut held = self.held.lock().unwrap();
        let holders = held.entry(name.to_string()).or_default();
        let others: Vec<_> = holders
            .iter()
            .copied()
            .filter(|h| h.conn != holder.conn)
            .collect();
        match policy {
            OnDuplicate::Reject if !holders.is_empty() => return Err(ErrorCode::DuplicateClient),
            OnDuplicate::Replace => {
                holders.retain(|h| h.conn == holder.conn);
                self.replaced.lock().unwrap().extend(others);
            }
            _ => {}
        }
        holders.push(holder);
        match &self.pending {
            Some(asked) => {
                asked.lock().unwrap().push((holder, ticket));
                Ok(Claim::Pending)
            }
            None => Ok(Claim::Done),
        }
    }

    fn release(&self, name: &str, holder: crate::names::Holder) {
        let mut held = self.held.lock().unwrap();
        if let Some(holders) = held.get_mut(name) {
            holders.retain(|h| *h != holder);
            if holders.is_empty() {
                held.remove(name);
            }
        }
    }
}

impl TestNames {
    fn holders(&self, name: &str) -> Vec<crate::names::Holder> {
        self.held
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Two connections of a process sharing one name table, with a registry of policies.
fn pair(replaced: Arc<std::sync::Mutex<Vec<crate::names::Holder>>>) -> (H, H) {
    pair_with(replaced, false)
}

/// Like [`pair`]; with `fleet`, every claim entered waits for a verdict.
fn pair_with(replaced: Arc<std::sync::Mutex<Vec<crate::names::Holder>>>, fleet: bool) -> (H, H) {
    let text = "[[client]]\nname = \"Rej\"\ntypes = [\"MediaServer\", \"Proxy\"]\non_duplicate = \"reject\"\n\
                [[client]]\nname = \"Rep\"\ntypes = [\"MediaServer\", \"Proxy\"]\non_duplicate = \"replace\"\n\
                [[client]]\nname = \"All\"\ntypes = [\"MediaServer\"]\n";
    let table = Arc::new(TestNames {
        held: Default::default(),
        replaced,
        pending: fleet.then(Default::default),
    });
    let mk = |worker| {
        let mut h = H::new();
        h.reg = Registry::parse(text, "dup.toml").unwrap();
        h.ids = IdAllocator::new(worker + 1, 2);
        h.names = Some((
            table.clone(),
            crate::names::ConnKey {
                worker,
                slot: 0,
                generation: 1,
            },
        ));
        h
    };
    (mk(0), mk(1))
}

// Row: Unregistered | valid RRC, ClientName registered elsewhere, reject | EventError{14} | Rejected.
#[test]
fn reject_refuses_a_second_holder_until_the_first_is_gone() {
    let seen = Arc::default();
    let (mut a, mut b) = pair(Arc::clone(&seen));
    let (ans, _) = a.send(&[rrc(1, "Rej", 1, None)]);
    assert!(matches!(ans[..], [Answer2::Ack { .. }]), "{ans:?}");
    let (ans, fed) = b.send(&[rrc(2, "Rej", 1, None)]);
    assert_eq!(ans, vec![err(2, ErrorCode::DuplicateClient)]);
    assert_eq!(b.s.state(), State::Rejected);
    assert_eq!(fed.timer, error_deadline(&b));
    assert_eq!(
        b.outputs.last().and_then(|o| o.registration),
        Some(Err(ErrorCode::DuplicateClient))
    );
    assert_eq!(
        b.ids.live(),
        0,
        "the refused registration's id is given back"
    );
    // `allow` names never enter the table.
    let (ans, _) = a.send(&[rrc(3, "All", 1, None)]);
    assert_eq!(ans, vec![err(3, ErrorCode::AlreadyRegistered)]);
    let table = a.names.as_ref().unwrap().0.clone();
    assert_eq!(table.len(), 1);
    // The holder unregisters: the name is free at once (not when its socket is gone).
    let (ans, _) = a.send(&[unreg(5, None)]);
    assert!(matches!(ans[..], [Answer2::Ack { .. }]), "{ans:?}");
    assert!(table.is_empty());
    a.s.release(
        &mut a.ids,
        a.names.as_ref().map(|(t, c)| Claims {
            table: &**t,
            conn: *c,
        }),
    );
    assert!(table.is_empty());
    let mut c = pair(Arc::clone(&seen)).0;
    c.names = Some((table.clone(), c.names.unwrap().1));
    let (ans, _) = c.send(&[rrc(4, "Rej", 1, None)]);
    assert!(matches!(ans[..], [Answer2::Ack { .. }]), "{ans:?}");
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn replace_acknowledges_the_newer_and_names_the_older() {
    let seen: Arc<std::sync::Mutex<Vec<crate::names::Holder>>> = Arc::default();
    let (mut a, mut b) = pair(Arc::clone(&seen));
    let (ans, _) = a.send(&[rrc(1, "Rep", 1, None)]);
    let Answer2::Ack {
        proxy_client_id: Some(a_id),
        ..
    } = ans[0]
    else {
        panic!("{ans:?}")
    };
    let (ans, _) = b.send(&[rrc(2, "Rep", 1, None)]);
    assert!(matches!(ans[..], [Answer2::Ack { .. }]), "{ans:?}");
    let older = seen.lock().unwrap().clone();
    assert_eq!(older.len(), 1);
    assert_eq!((older[0].conn.worker, older[0].id), (0, a_id));
    // The older one is told: EventError{0, 15}, close once written.
    let (ans, o) = a.event(Input::Kick(Kick::Replaced));
    assert_eq!(ans, vec![err(0, ErrorCode::ClientDisconnected)]);
    assert_eq!(o.close, Close::AfterWrite);
    assert_eq!(a.s.close_reason(), Some(CloseReason::Replaced));
}

#[test]
fn a_proxy_s_logical_clients_follow_the_policy_and_give_their_names_back() {
    let seen = Arc::default();
    let (mut p, mut b) = pair(seen);
    let _ = p.send(&[rrc(1, "Rep", 3, None)]);
    let (ans, _) = p.send(&[rrc(2, "Rej", 1, None)]);
    let Answer2::Ack {
        proxy_client_id: Some(logical),
        ..
    } = ans[0]
    else {
        panic!("{ans:?}")
    };
    let (ans, _) = b.send(&[rrc(3, "Rej", 1, None)]);
    assert_eq!(ans, vec![err(3, ErrorCode::DuplicateClient)]);
    // A second logical client under the same name on the same Proxy: refused too.
    let (ans, _) = p.send(&[rrc(4, "Rej", 1, None)]);
    assert_eq!(ans, vec![err(4, ErrorCode::DuplicateClient)]);
    assert_eq!(p.s.state(), State::Registered);
    let (ans, _) = p.send(&[unreg(5, Some(logical))]);
    assert!(matches!(ans[..], [Answer2::Ack { .. }]), "{ans:?}");
    let table = p.names.as_ref().unwrap().0.clone();
    assert!(
        table.holders("Rej").is_empty(),
        "unregistering gives the name back"
    );
    assert_eq!(table.len(), 1, "the Proxy's own name stays");
}

// Row: Registered | an operator closes it | EventError{0, 15}; close once written.
#[test]
fn only_a_registered_connection_answers_a_kick() {
    let mut h = H::new();
    let (ans, o) = h.event(Input::Kick(Kick::Operator));
    assert!(ans.is_empty());
    assert_eq!((o.close, h.s.state()), (Close::No, State::Unregistered));
    let mut h = H::registered("MediaServer_email", 1, None);
    let (ans, o) = h.event(Input::Kick(Kick::Operator));
    assert_eq!(ans, vec![err(0, ErrorCode::ClientDisconnected)]);
    assert_eq!((o.close, o.timer), (Close::AfterWrite, TimerAction::Cancel));
    assert_eq!(h.s.close_reason(), Some(CloseReason::Operator));
    let (name, ty) = h.s.registered_as().unwrap();
    assert_eq!((name, ty), ("MediaServer_email", ClientType::MediaServer));
}

impl H {
    /// The claims this session's table holds waiting for a verdict, taken.
    fn asked(&self) -> Vec<(crate::names::Holder, crate::names::Ticket)> {
        let table = &self.names.as_ref().unwrap().0;
        std::mem::take(&mut *table.pending.as_ref().unwrap().lock().unwrap())
    }

    fn verdict(&mut self, v: crate::names::Verdict) -> (Vec<Answer2>, Output) {
        self.with_ctx(|s, ctx, out| s.verdict(v, ctx, out))
    }
}

fn decided(
    asked: (crate::names::Holder, crate::names::Ticket),
    result: Result<(), ErrorCode>,
) -> crate::names::Verdict {
    crate::names::Verdict {
        holder: asked.0,
        ticket: asked.1,
        result,
    }
}

// docs/PROTOCOL.md §6, revision 3: a registration that waits for the fleet's name table is
// answered once it has answered; frames behind it wait, and answers stay in order.
#[test]
fn a_waiting_registration_holds_the_frames_behind_it_until_its_verdict() {
    let (mut a, _) = pair_with(Arc::default(), true);
    let frames = [rrc(1, "Rej", 1, None), unreg(2, None)];
    let bytes = frames.concat();
    let (ans, fed) = a.send_bytes(&bytes);
    assert!(
        ans.is_empty(),
        "nothing is answered before the verdict: {ans:?}"
    );
    assert_eq!(fed.consumed, frames[0].len(), "the frame behind waits");
    assert_eq!(
        fed.timer,
        TimerAction::Keep,
        "the registration deadline still runs"
    );
    assert!(a.s.awaiting());
    assert_eq!(a.s.state(), State::Unregistered);
    assert!(
        a.s.registered_as().is_none(),
        "not listed as registered yet"
    );
    // More bytes while waiting: nothing is read.
    let (ans, fed) = a.send_bytes(&bytes[frames[0].len()..]);
    assert_eq!((ans.len(), fed.consumed), (0, 0));
    let asked = a.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].1.reference_id, 1);
    let (ans, o) = a.verdict(decided(asked[0], Ok(())));
    assert!(
        matches!(
            ans[..],
            [Answer2::Ack {
                reference_id: 1,
                ..
            }]
        ),
        "{ans:?}"
    );
    assert_eq!(o.timer, TimerAction::Cancel);
    assert_eq!(a.s.state(), State::Registered);
    assert_eq!(a.s.registered_as(), Some(("Rej", ClientType::MediaServer)));
    // The frame behind it is read now.
    let (ans, fed) = a.send_bytes(&bytes[frames[0].len()..]);
    assert!(
        matches!(
            ans[..],
            [Answer2::Ack {
                reference_id: 2,
                ..
            }]
        ),
        "{ans:?}"
    );
    assert_eq!(fed.close, Close::AfterWrite);
    // A second verdict for it (stale) does nothing.
    let (ans, o) = a.verdict(decided(asked[0], Ok(())));
    assert!(ans.is_empty() && o == Output::NOTHING);
}

// Row (revision 3): Unregistered | … fleet not answering, `fleet_unavailable = "refuse"` |
// EventError{18} | Rejected; and a fleet-wide duplicate under `reject`: EventError{14}.
#[test]
fn a_refusing_verdict_rejects_and_gives_the_name_and_id_back() {
    for code in [ErrorCode::FleetUnavailable, ErrorCode::DuplicateClient] {
        let (mut a, mut b) = pair_with(Arc::default(), true);
        let _ = a.send(&[rrc(7, "Rej", 1, None)]);
        let asked = a.asked();
        assert_eq!(a.ids.live(), 1);
        let (ans, o) = a.verdict(decided(asked[0], Err(code)));
        assert_eq!(ans, vec![err(7, code)]);
        assert_eq!(o.registration, Some(Err(code)));
        assert_eq!(o.timer, error_deadline(&a));
        assert_eq!(a.s.state(), State::Rejected);
        assert_eq!(a.ids.live(), 0, "its id is free");
        assert!(a.names.as_ref().unwrap().0.is_empty(), "its name is free");
        // Another connection may claim the name now.
        let _ = b.send(&[rrc(8, "Rej", 1, None)]);
        assert_eq!(b.asked().len(), 1);
    }
}

#[test]
fn a_waiting_registration_still_meets_its_deadline_and_frees_its_name() {
    let (mut a, _) = pair_with(Arc::default(), true);
    let _ = a.send(&[rrc(1, "Rep", 1, None)]);
    let asked = a.asked();
    let o = a.s.expire(TimerKind::Registration);
    assert_eq!(o.close, Close::Now);
    a.s.release(
        &mut a.ids,
        a.names.as_ref().map(|(t, c)| Claims {
            table: &**t,
            conn: *c,
        }),
    );
    assert!(a.names.as_ref().unwrap().0.is_empty());
    assert_eq!(a.ids.live(), 0);
    // Its verdict arrives late: nothing.
    let (ans, o) = a.verdict(decided(asked[0], Ok(())));
    assert!(ans.is_empty() && o == Output::NOTHING);
}

#[test]
fn a_proxy_s_logical_client_waits_for_its_verdict_too() {
    let (mut p, _) = pair_with(Arc::default(), true);
    let _ = p.send(&[rrc(1, "All", 1, None)]);
    let mut p = {
        // A Proxy under `replace`: its own claim waits, then is granted.
        let (mut p2, _) = pair_with(Arc::default(), true);
        let _ = p2.send(&[rrc(1, "Rep", 3, None)]);
        let asked = p2.asked();
        let (ans, _) = p2.verdict(decided(asked[0], Ok(())));
        assert!(matches!(ans[..], [Answer2::Ack { .. }]), "{ans:?}");
        drop(p);
        p2
    };
    let (ans, _) = p.send(&[rrc(2, "Rej", 1, None), rrc(3, "Rej", 1, None)]);
    assert!(ans.is_empty());
    let asked = p.asked();
    assert!(asked[0].1.logical);
    assert_eq!(
        p.s.logical_clients(),
        1,
        "counted against its limit while waiting"
    );
    let (ans, o) = p.verdict(decided(asked[0], Err(ErrorCode::DuplicateClient)));
    assert_eq!(ans, vec![err(2, ErrorCode::DuplicateClient)]);
    assert_eq!(o.registration, Some(Err(ErrorCode::DuplicateClient)));
    assert_eq!(p.s.state(), State::Registered, "a Proxy stays registered");
    assert_eq!(p.s.logical_clients(), 0);
    // The next frame's claim goes out now.
    let rest = rrc(3, "Rej", 1, None);
    let (_, fed) = p.send_bytes(&rest);
    assert_eq!(fed.consumed, rest.len());
    let asked = p.asked();
    let (ans, _) = p.verdict(decided(asked[0], Ok(())));
    let [Answer2::Ack {
        reference_id: 3,
        proxy_client_id: Some(id),
    }] = ans[..]
    else {
        panic!("{ans:?}")
    };
    assert_eq!(p.s.logical_clients(), 1);
    assert_ne!(Some(id), p.s.proxy_client_id());
}
