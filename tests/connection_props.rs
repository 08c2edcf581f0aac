//! Random byte streams against a whole `Connection` (PROXY preamble, session, frame
//! deadline, closing once written), cut into random reads and interleaved with deadlines,
//! drain and the engine's flush: invariants that must hold whatever a peer sends. The fuzz
//! target `session` explores the same space unguided.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ixn::connection::{Action, ConnConfig, Connection, Env, TimerChange};
use ixn::protocol::{decode, encode, Message, RegisterClient, UnregisterClient};
use ixn::registry::Registry;
use ixn::session::{IdAllocator, State};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    Bytes(Piece),
    Deadline,
    Drain,
    /// Microseconds pass (not whole milliseconds: the core rounds times it keeps).
    Later(u32),
}

#[derive(Debug, Clone)]
enum Piece {
    Register(u8, i32),
    Unregister(Option<i32>),
    Other(u16),
    Garbage(Vec<u8>),
}

const NAMES: [&str; 5] = [
    "MediaServer_email",
    "Proxy_small",
    "AgentDesktop",
    "nobody",
    "Reporting_dc",
];

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u8..5, 0i32..7).prop_map(|(n, t)| Event::Bytes(Piece::Register(n, t))),
        2 => prop::option::of(0i32..5).prop_map(|i| Event::Bytes(Piece::Unregister(i))),
        2 => (3u16..0x200).prop_map(|m| Event::Bytes(Piece::Other(m))),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(|g| Event::Bytes(Piece::Garbage(g))),
        1 => Just(Event::Deadline),
        1 => Just(Event::Drain),
        1 => (0u32..2_000_000).prop_map(Event::Later),
    ]
}

fn encode_piece(p: &Piece, rid: i32) -> Vec<u8> {
    let m = match p {
        Piece::Register(n, t) => Message::RegisterClient(RegisterClient {
            reference_id: rid,
            client_name: NAMES[usize::from(*n)],
            client_type: *t,
            proxy_client_id: None,
            credential: (*n == 2).then_some("s3cret"),
            extension: None,
            keep_alive: None,
        }),
        Piece::Unregister(id) => Message::UnregisterClient(UnregisterClient {
            reference_id: rid,
            proxy_client_id: *id,
        }),
        Piece::Other(id) => Message::Other {
            msg_id: *id,
            reference_id: Some(rid),
        },
        Piece::Garbage(g) => return g.clone(),
    };
    let mut v = Vec::new();
    encode(&m, &mut v).unwrap();
    v
}

fn proxy_header(v2: bool) -> Vec<u8> {
    let src: SocketAddr = "10.1.2.3:4000".parse().unwrap();
    let dst: SocketAddr = "127.0.0.1:7400".parse().unwrap();
    if v2 {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .unwrap()
    } else {
        b"PROXY TCP4 10.1.2.3 127.0.0.1 4000 7400\r\n".to_vec()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn connection_invariants_hold_for_any_stream(
        preamble in prop::option::of(any::<bool>()),
        header_cut in 0usize..64,
        events in prop::collection::vec(event(), 1..40),
        cuts in prop::collection::vec(1usize..32, 1..40),
    ) {
        let registry = Registry::embedded();
        let mut ids = IdAllocator::default();
        // Every registration gets a keepalive of 1 s (silent for 1.5 s at most).
        let mut config = ConnConfig::default();
        config.session.keep_alive = ixn::session::KeepAliveConfig { min: 1, max: 3600, default: 1 };
        let mut now = Instant::now();
        let mut last_frame = now;
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (mut c, first) = Connection::accept(now, (peer, 40000).into(), preamble.is_some(), &config);
        prop_assert!(matches!(first, TimerChange::Arm(_, _)));
        // The header, split at `header_cut`, goes first.
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        if let Some(v2) = preamble {
            let h = proxy_header(v2);
            let cut = header_cut.min(h.len());
            chunks.push(h[..cut].to_vec());
            chunks.push(h[cut..].to_vec());
        }
        let mut pending = Vec::new();
        let mut closed_now = false;
        let mut flushing = false;
        let mut lingering = false;
        let mut errors_when_rejected = 0;
        let mut ever_rejected = false;
        let mut cut_i = 0;
        for (i, ev) in events.iter().enumerate() {
            if closed_now {
                break;
            }
            let mut out = Vec::new();
            let mut env = Env { registry: &registry, ids: &mut ids, config: &config, gate: None, names: None };
            let before = c.session().state();
            let p = match ev {
                Event::Later(us) => {
                    now += Duration::from_micros(u64::from(*us));
                    continue;
                }
                Event::Deadline => match c.armed() {
                    Some(t) => c.on_deadline(now, t, &mut env, &mut out, |_| {}),
                    None => continue,
                },
                Event::Drain => c.on_drain(now, &mut env, &mut out, |_| {}),
                Event::Bytes(piece) => {
                    chunks.push(encode_piece(piece, i as i32));
                    let bytes: Vec<u8> = chunks.drain(..).flatten().collect();
                    // Delivered in reads of random sizes.
                    let mut last = None;
                    for part in bytes.chunks(cuts[cut_i % cuts.len()]) {
                        cut_i += 1;
                        pending.extend_from_slice(part);
                        let p = c.on_bytes(now, &pending, &mut env, &mut out, |_| {});
                        prop_assert!(p.consumed <= pending.len());
                        if p.consumed > 0 {
                            last_frame = now;
                        }
                        pending.drain(..p.consumed);
                        if matches!(p.action, Action::CloseNow(_)) {
                            last = Some(p);
                            break;
                        }
                        last = Some(p);
                    }
                    match last {
                        Some(p) => p,
                        None => continue,
                    }
                }
            };
            // The armed timer is what the last change said.
            match p.timer {
                TimerChange::Arm(t, at) => {
                    prop_assert_eq!(c.armed(), Some(t));
                    prop_assert!(at >= now);
                }
                TimerChange::Cancel => prop_assert_eq!(c.armed(), None),
                TimerChange::Keep => {}
            }
            if flushing || lingering {
                prop_assert!(out.is_empty(), "answered after the close was decided");
            }
            let mut rest = &out[..];
            while !rest.is_empty() {
                let f = decode(rest, usize::MAX).unwrap().unwrap();
                match f.message {
                    Message::EventAck(_) => prop_assert!(before != State::Rejected),
                    Message::EventError(e) => {
                        if ever_rejected || c.session().state() == State::Rejected {
                            errors_when_rejected += 1;
                        }
                        if e.error_code == 19 {
                            prop_assert!(
                                now.duration_since(last_frame) >= Duration::from_millis(1500),
                                "keepalive expired {:?} after the last frame",
                                now.duration_since(last_frame)
                            );
                        }
                    }
                    m => prop_assert!(false, "wrote {:?}", m),
                }
                rest = &rest[f.frame_len..];
            }
            if c.session().state() == State::Rejected {
                ever_rejected = true;
            }
            if ever_rejected {
                prop_assert!(c.session().state() != State::Registered);
            }
            if c.session().state() == State::Registered && !c.is_closing() {
                prop_assert!(c.armed().is_some(), "a keepalive in force always has a deadline");
            }
            match p.action {
                Action::Continue => {}
                Action::CloseNow(_) => closed_now = true,
                Action::CloseAfterWrite => {
                    prop_assert!(c.is_closing());
                    flushing = true;
                }
            }
            if flushing && !lingering {
                // The engine writes, shuts down its side and reports it: the linger starts.
                let t = c.on_flushed(now, &config);
                prop_assert!(matches!(t, TimerChange::Arm(ixn::session::Timer::CloseLinger, _)));
                lingering = true;
                flushing = false;
            }
        }
        prop_assert!(errors_when_rejected <= 16, "{} EventErrors when rejected", errors_when_rejected);
        if preamble.is_some() && c.session().state() == State::Registered {
            prop_assert_eq!(c.peer(), IpAddr::from([10, 1, 2, 3]), "the header's address");
        }
    }
}
