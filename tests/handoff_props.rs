//! A live upgrade's handover of one `Connection` (docs/OPERATIONS.md 7e), as a property: a
//! connection handed off at rest (through its serialized form, as the upgrade socket
//! carries it) and adopted in a fresh process answers whatever comes next exactly as the
//! same connection would have had it stayed: the same answers in the same order, the same
//! actions, the same timers at the same moments (to the millisecond the handoff keeps),
//! the same state; and the names it held are held in the new process's table.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ixn::connection::{Action, ConnConfig, Connection, Env, Progress, TimerChange};
use ixn::names::NameTable;
use ixn::protocol::{decode, encode, KeepAlive, Message, RegisterClient, UnregisterClient};
use ixn::registry::Registry;
use ixn::session::{IdAllocator, KeepAliveConfig};
use ixn_proto::handoff::Handoff;
use ixn_proto::names::{Claims, ConnKey};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    Bytes(Piece),
    Deadline,
    Drain,
    /// Whole milliseconds pass (the handoff keeps times to the millisecond).
    Later(u32),
}

#[derive(Debug, Clone)]
enum Piece {
    /// A name (index into NAMES), a ClientType, and a keepalive asked for.
    Register(u8, i32, Option<u16>),
    Unregister(Option<i32>),
    KeepAlive,
    Other(u16),
    /// The first `n` bytes of a RequestKeepAlive (a frame begun).
    Half(u8),
    Garbage(Vec<u8>),
}

const NAMES: [&str; 4] = ["Held", "Gateway", "Agent", "nobody"];

const REGISTRY: &str =
    "[[client]]\nname = \"Held\"\ntypes = [\"MediaServer\"]\non_duplicate = \"reject\"\n\
    [[client]]\nname = \"Gateway\"\ntypes = [\"Proxy\"]\nmax_logical_clients = 2\n\
    [[client]]\nname = \"Agent\"\ntypes = [\"AgentApplication\"]\non_duplicate = \"replace\"\n";

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u8..4, 0i32..4, prop::option::of(0u16..5))
            .prop_map(|(n, t, k)| Event::Bytes(Piece::Register(n, t, k))),
        2 => prop::option::of(0i32..4).prop_map(|i| Event::Bytes(Piece::Unregister(i))),
        2 => Just(Event::Bytes(Piece::KeepAlive)),
        1 => (3u16..0x200).prop_map(|m| Event::Bytes(Piece::Other(m))),
        2 => (1u8..16).prop_map(|n| Event::Bytes(Piece::Half(n))),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(|g| Event::Bytes(Piece::Garbage(g))),
        1 => Just(Event::Deadline),
        1 => Just(Event::Drain),
        3 => (0u32..4_000).prop_map(Event::Later),
    ]
}

fn encode_piece(p: &Piece, rid: i32) -> Vec<u8> {
    let m = match p {
        Piece::Register(n, t, k) => Message::RegisterClient(RegisterClient {
            reference_id: rid,
            client_name: NAMES[usize::from(*n)],
            client_type: *t,
            proxy_client_id: None,
            credential: None,
            extension: None,
            keep_alive: *k,
        }),
        Piece::Unregister(id) => Message::UnregisterClient(UnregisterClient {
            reference_id: rid,
            proxy_client_id: *id,
        }),
        Piece::KeepAlive => Message::KeepAlive(KeepAlive { reference_id: rid }),
        Piece::Half(n) => {
            let mut v = Vec::new();
            encode(&Message::KeepAlive(KeepAlive { reference_id: rid }), &mut v).unwrap();
            v.truncate(usize::from(*n));
            return v;
        }
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

/// One process's world: its id allocator and name table.
struct World {
    ids: IdAllocator,
    names: NameTable,
}

impl World {
    fn new() -> World {
        World {
            ids: IdAllocator::default(),
            names: NameTable::new(1, |_| {}),
        }
    }
}

const KEY: ConnKey = ConnKey {
    worker: 0,
    slot: 0,
    generation: 1,
};

/// A connection as an engine drives it: its unread bytes and its deadline.
struct Driven {
    c: Connection,
    pending: Vec<u8>,
    deadline: Option<Instant>,
    closed: bool,
}

/// What one event produced, comparable across processes: the answers (ProxyClientIds
/// masked: each process allocates its own), the action, the timer, the state.
#[derive(Debug, PartialEq)]
struct Seen {
    answers: Vec<String>,
    action: String,
    armed: Option<ixn::session::Timer>,
    deadline_ms: Option<u128>,
    state: ixn::session::State,
}

fn describe(out: &[u8]) -> Vec<String> {
    let mut rest = out;
    let mut seen = Vec::new();
    while !rest.is_empty() {
        let f = decode(rest, usize::MAX).unwrap().unwrap();
        seen.push(match f.message {
            Message::EventAck(a) => format!("ack {} {:?}", a.reference_id, a.keep_alive),
            Message::EventError(e) => format!("error {} {}", e.reference_id, e.error_code),
            m => format!("{m:?}"),
        });
        rest = &rest[f.frame_len..];
    }
    seen
}

impl Driven {
    fn step(
        &mut self,
        ev: &Event,
        rid: i32,
        now: Instant,
        w: &mut World,
        config: &ConnConfig,
        registry: &Registry,
    ) -> Option<Seen> {
        if self.closed {
            return None;
        }
        let mut out = Vec::new();
        let mut env = Env {
            registry,
            ids: &mut w.ids,
            config,
            gate: None,
            names: Some(Claims {
                table: &w.names,
                conn: KEY,
            }),
        };
        let p: Progress = match ev {
            Event::Later(_) => return None,
            Event::Deadline => match self.c.armed() {
                Some(t) if self.deadline.is_some_and(|d| d <= now) => {
                    self.c.on_deadline(now, t, &mut env, &mut out, |_| {})
                }
                _ => return None,
            },
            Event::Drain => self.c.on_drain(now, &mut env, &mut out, |_| {}),
            Event::Bytes(piece) => {
                self.pending.extend(encode_piece(piece, rid));
                let p = self
                    .c
                    .on_bytes(now, &self.pending, &mut env, &mut out, |_| {});
                self.pending.drain(..p.consumed);
                p
            }
        };
        match p.timer {
            TimerChange::Arm(_, at) => self.deadline = Some(at),
            TimerChange::Cancel => self.deadline = None,
            TimerChange::Keep => {}
        }
        let action = match p.action {
            Action::Continue => "continue".to_string(),
            Action::CloseNow(r) => {
                self.closed = true;
                format!("close now {r:?}")
            }
            Action::CloseAfterWrite => {
                self.closed = true;
                "close after write".to_string()
            }
        };
        Some(Seen {
            answers: describe(&out),
            action,
            armed: self.c.armed(),
            deadline_ms: self
                .deadline
                .map(|d| d.saturating_duration_since(now).as_millis()),
            state: self.c.session().state(),
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, max_global_rejects: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn a_connection_handed_over_answers_as_if_it_had_stayed(
        prefix in prop::collection::vec(event(), 0..16),
        suffix in prop::collection::vec(event(), 1..16),
    ) {
        let registry = Registry::parse(REGISTRY, "registry.toml").unwrap();
        let mut config = ConnConfig::default();
        config.session.keep_alive = KeepAliveConfig { min: 1, max: 3600, default: 0 };
        let t0 = Instant::now();
        let peer = (IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 40000).into();
        // The same history twice: `stays` keeps its process, `leaves` is handed over.
        let (mut stays_w, mut leaves_w) = (World::new(), World::new());
        let accept = || {
            let (c, first) = Connection::accept(t0, peer, false, &config);
            let TimerChange::Arm(_, at) = first else { panic!("no deadline at accept") };
            Driven { c, pending: Vec::new(), deadline: Some(at), closed: false }
        };
        let (mut stays, mut leaves) = (accept(), accept());
        let mut now = t0;
        for (i, ev) in prefix.iter().enumerate() {
            if let Event::Later(ms) = ev {
                now += Duration::from_millis(u64::from(*ms));
            }
            let a = stays.step(ev, i as i32, now, &mut stays_w, &config, &registry);
            let b = leaves.step(ev, i as i32, now, &mut leaves_w, &config, &registry);
            prop_assert_eq!(a, b);
        }
        // Handed over only at rest (open, no verdict awaited); through its wire form.
        let handed = leaves.c.hand_off(now, &leaves.pending, leaves.deadline);
        prop_assume!(!leaves.closed && handed.is_some());
        let handed: Handoff = serde_json::from_str(&serde_json::to_string(&handed.unwrap()).unwrap()).unwrap();
        // The old process lets go of its ids and names; the new one takes them.
        leaves.c.release(&mut leaves_w.ids, Some(Claims { table: &leaves_w.names, conn: KEY }));
        prop_assert_eq!(leaves_w.names.len(), 0);
        prop_assert_eq!(leaves_w.ids.live(), 0);
        let mut new_w = World::new();
        let (c, change) = Connection::adopt(
            &handed,
            now,
            &registry,
            &mut new_w.ids,
            Claims { table: &new_w.names, conn: KEY },
        ).unwrap();
        prop_assert_eq!(new_w.names.len(), stays_w.names.len(), "names held");
        prop_assert_eq!(new_w.ids.live(), stays_w.ids.live(), "ids live");
        let deadline = match change {
            TimerChange::Arm(_, at) => Some(at),
            _ => None,
        };
        prop_assert_eq!(c.armed(), stays.c.armed());
        prop_assert_eq!(deadline.is_some(), stays.deadline.is_some());
        if let (Some(a), Some(b)) = (deadline, stays.deadline) {
            // The same moment (to the millisecond); one already overdue is due at once.
            let due = b.max(now);
            prop_assert!(a <= due && due - a < Duration::from_millis(1), "deadline {:?} vs {:?}", a, due);
        }
        prop_assert_eq!(c.session().state(), stays.c.session().state());
        prop_assert_eq!(c.peer(), stays.c.peer());
        let mut adopted = Driven { c, pending: handed.pending.clone(), deadline: stays.deadline, closed: false };
        for (i, ev) in suffix.iter().enumerate() {
            if let Event::Later(ms) = ev {
                now += Duration::from_millis(u64::from(*ms));
            }
            let rid = (prefix.len() + i) as i32;
            let a = stays.step(ev, rid, now, &mut stays_w, &config, &registry);
            let b = adopted.step(ev, rid, now, &mut new_w, &config, &registry);
            prop_assert_eq!(a, b, "after {:?}", ev);
            prop_assert_eq!(new_w.names.len(), stays_w.names.len());
        }
    }
}

/// Any handoff, well-formed or not (another version's, a corrupted one): adoption answers
/// `Ok` or `Err`, never panics; an adopted connection takes any input; its release gives
/// back every id and name it took.
fn any_handoff() -> impl Strategy<Value = Handoff> {
    let session = (
        prop_oneof![
            Just("unregistered".to_string()),
            Just("registered".to_string()),
            Just("rejected".to_string()),
            "[a-z]{0,12}",
        ],
        any::<u8>(),
        any::<i32>(),
        any::<u32>(),
        prop::option::of(prop_oneof![
            Just("Held".to_string()),
            Just("Agent".to_string()),
            ".{0,8}"
        ]),
        any::<u8>(),
        any::<bool>(),
        any::<u16>(),
        prop::collection::vec(
            (
                any::<i32>(),
                prop::option::of(prop_oneof![Just("Held".to_string()), ".{0,4}"]),
            ),
            0..4,
        ),
    )
        .prop_map(
            |(
                state,
                errors_sent,
                own_id,
                max_logical,
                name,
                client_type,
                claimed,
                keep_alive,
                logical,
            )| {
                ixn_proto::handoff::SessionState {
                    state,
                    errors_sent,
                    own_id,
                    max_logical,
                    name,
                    client_type,
                    claimed,
                    keep_alive,
                    logical,
                }
            },
        );
    let deadline = prop::option::of((
        prop_oneof![
            Just("registration".to_string()),
            Just("error_disconnect".to_string()),
            Just("keepalive".to_string()),
            Just("frame".to_string()),
            "[a-z_]{0,16}",
        ],
        prop_oneof![0u64..10_000, any::<u64>()],
    ));
    (
        any::<bool>(),
        prop_oneof![0u64..100_000, any::<u64>()],
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        prop_oneof![0u64..100_000, any::<u64>()],
        deadline,
        session,
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |(
                v6,
                age_ms,
                awaiting_proxy,
                admitted,
                registered_after_ms,
                quiet_ms,
                deadline,
                session,
                pending,
            )| {
                let peer = if v6 { "[::1]:4000" } else { "10.1.2.3:4000" };
                Handoff {
                    peer: peer.parse().unwrap(),
                    age_ms,
                    awaiting_proxy,
                    admitted,
                    registered_after_ms,
                    quiet_ms,
                    deadline,
                    session,
                    pending,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_handoff_is_adopted_or_refused_never_a_panic(
        h in any_handoff(),
        later in prop::collection::vec(event(), 0..8),
    ) {
        let registry = Registry::parse(REGISTRY, "registry.toml").unwrap();
        let config = ConnConfig::default();
        let mut w = World::new();
        let now = Instant::now();
        let Ok((c, change)) = Connection::adopt(&h, now, &registry, &mut w.ids, Claims { table: &w.names, conn: KEY }) else {
            // Refused: nothing taken.
            prop_assert_eq!(w.ids.live(), 0);
            prop_assert_eq!(w.names.len(), 0);
            return Ok(());
        };
        let deadline = match change {
            TimerChange::Arm(_, at) => Some(at),
            _ => None,
        };
        let mut d = Driven { c, pending: h.pending.clone(), deadline, closed: false };
        let mut t = now;
        for (i, ev) in later.iter().enumerate() {
            if let Event::Later(ms) = ev {
                t += Duration::from_millis(u64::from(*ms));
            }
            let _ = d.step(ev, i as i32, t, &mut w, &config, &registry);
        }
        d.c.release(&mut w.ids, Some(Claims { table: &w.names, conn: KEY }));
        prop_assert_eq!(w.ids.live(), 0, "ids given back");
        prop_assert_eq!(w.names.len(), 0, "names given back");
    }
}
