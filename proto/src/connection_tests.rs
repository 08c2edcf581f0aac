//! Unit tests of [`Connection`]: the PROXY preamble, the frame deadline, closing once
//! written, deadlines and the drain, at the level an engine sees them.

use super::*;
use crate::protocol::{decode, encode, Message, RegisterClient};
use std::net::Ipv4Addr;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct H {
    c: Connection,
    reg: Registry,
    ids: IdAllocator,
    config: ConnConfig,
    now: Instant,
    out: Vec<u8>,
    pending: Vec<u8>,
}

impl H {
    fn new(proxy: bool) -> (Self, TimerChange) {
        let now = Instant::now();
        let config = ConnConfig::default();
        let (c, t) = Connection::accept(now, SocketAddr::new(LOOPBACK, 40000), proxy, &config);
        (
            Self {
                c,
                reg: Registry::embedded(),
                ids: IdAllocator::default(),
                config,
                now,
                out: Vec::new(),
                pending: Vec::new(),
            },
            t,
        )
    }

    /// Feeds `bytes` as one read, keeping what was not consumed, like an engine.
    fn read(&mut self, bytes: &[u8]) -> Progress {
        self.pending.extend_from_slice(bytes);
        let mut env = Env {
            registry: &self.reg,
            ids: &mut self.ids,
            config: &self.config,
            gate: None,
            names: None,
        };
        let p = self
            .c
            .on_bytes(self.now, &self.pending, &mut env, &mut self.out, |_| {});
        self.pending.drain(..p.consumed);
        p
    }

    /// The connection's timer `timer` passed, now.
    fn deadline(&mut self, timer: Timer) -> Progress {
        let mut env = Env {
            registry: &self.reg,
            ids: &mut self.ids,
            config: &self.config,
            gate: None,
            names: None,
        };
        self.c
            .on_deadline(self.now, timer, &mut env, &mut self.out, |_| {})
    }

    fn drain(&mut self) -> Progress {
        let mut env = Env {
            registry: &self.reg,
            ids: &mut self.ids,
            config: &self.config,
            gate: None,
            names: None,
        };
        self.c.on_drain(self.now, &mut env, &mut self.out, |_| {})
    }

    /// The answers written so far, as (ReferenceId, error code or 0 for an EventAck).
    fn answers(&mut self) -> Vec<(i32, i32)> {
        let mut v = Vec::new();
        let mut rest = &self.out[..];
        while !rest.is_empty() {
            let f = decode(rest, usize::MAX).unwrap().unwrap();
            v.push(match f.message {
                Message::EventAck(a) => (a.reference_id, 0),
                Message::EventError(e) => (e.reference_id, e.error_code),
                m => panic!("{m:?}"),
            });
            rest = &rest[f.frame_len..];
        }
        self.out.clear();
        v
    }

    fn later(&mut self, d: Duration) {
        self.now += d;
    }
}

fn rrc(rid: i32, name: &str, ty: i32) -> Vec<u8> {
    rrc_with(rid, name, ty, None, None)
}

/// RequestRegisterClient with an optional Credential and KeepAlive.
fn rrc_with(rid: i32, name: &str, ty: i32, cred: Option<&str>, keep_alive: Option<u16>) -> Vec<u8> {
    let mut v = Vec::new();
    encode(
        &Message::RegisterClient(RegisterClient {
            reference_id: rid,
            client_name: name,
            client_type: ty,
            proxy_client_id: None,
            credential: cred,
            extension: None,
            keep_alive,
        }),
        &mut v,
    )
    .unwrap();
    v
}

fn other(rid: i32) -> Vec<u8> {
    let mut v = Vec::new();
    encode(
        &Message::Other {
            msg_id: 0x10,
            reference_id: Some(rid),
        },
        &mut v,
    )
    .unwrap();
    v
}

fn unreg(rid: i32) -> Vec<u8> {
    let mut v = Vec::new();
    encode(
        &Message::UnregisterClient(crate::protocol::UnregisterClient {
            reference_id: rid,
            proxy_client_id: None,
        }),
        &mut v,
    )
    .unwrap();
    v
}

#[test]
fn accept_arms_the_registration_deadline() {
    let (h, t) = H::new(false);
    assert_eq!(
        t,
        TimerChange::Arm(Timer::Registration, h.now + Duration::from_secs(5))
    );
    assert_eq!(h.c.armed(), Some(Timer::Registration));
}

#[test]
fn registration_deadline_closes_now_and_a_stale_one_is_ignored() {
    let (mut h, _) = H::new(false);
    assert_eq!(h.deadline(Timer::Frame), Progress::NOTHING, "not armed");
    let p = h.deadline(Timer::Registration);
    assert_eq!(p.action, Action::CloseNow(CloseReason::RegistrationTimeout));
}

#[test]
fn proxy_header_split_anywhere_then_frames_use_its_address() {
    let header = b"PROXY TCP4 10.1.2.3 127.0.0.1 51000 7400\r\n";
    for cut in 0..header.len() {
        let (mut h, _) = H::new(true);
        let p = h.read(&header[..cut]);
        assert_eq!(p.consumed, 0, "cut {cut}");
        assert_eq!(p.action, Action::Continue);
        let mut rest = header[cut..].to_vec();
        rest.extend(rrc(1, "Reporting_dc", 5));
        let p = h.read(&rest);
        assert!(p.registered, "cut {cut}");
        assert_eq!(h.c.peer(), IpAddr::from([10, 1, 2, 3]));
        assert_eq!(h.answers()[0], (1, 0), "allowed from 10.0.0.0/8 only");
    }
    let (mut h, _) = H::new(true);
    let p = h.read(&rrc(1, "MediaServer_email", 1));
    assert_eq!(p.action, Action::CloseNow(CloseReason::ProxyProtocol));
    assert_eq!(p.timer, TimerChange::Cancel);
    assert_eq!(
        h.c.armed(),
        None,
        "the timer goes with the close (found by fuzzing)"
    );
    assert!(h.answers().is_empty(), "no IXN/1 bytes without a header");
}

#[test]
fn frame_deadline_runs_from_a_frames_first_byte() {
    let (mut h, _) = H::new(false);
    let p = h.read(&rrc(1, "MediaServer_email", 1));
    assert!(p.registered);
    assert_eq!(p.timer, TimerChange::Cancel, "registration deadline gone");
    let f = other(2);
    let p = h.read(&f[..3]);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::Frame, h.now + Duration::from_secs(5))
    );
    h.later(Duration::from_secs(1));
    let p = h.read(&f[3..5]);
    assert_eq!(p.timer, TimerChange::Keep, "more bytes do not move it");
    // The frame completes and the next begins in the same read: the clock restarts.
    let mut rest = f[5..].to_vec();
    rest.extend_from_slice(&f[..2]);
    let p = h.read(&rest);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::Frame, h.now + Duration::from_secs(5))
    );
    let p = h.read(&f[2..]);
    assert_eq!(p.timer, TimerChange::Cancel, "nothing partial left");
    assert_eq!(h.c.armed(), None);
    let _ = h.read(&f[..1]);
    let p = h.deadline(Timer::Frame);
    assert_eq!(p.action, Action::CloseAfterWrite);
    assert_eq!(h.c.on_eof(), CloseReason::FrameTimeout);
}

#[test]
fn unregister_closes_once_written_then_lingers_and_discards() {
    let (mut h, _) = H::new(false);
    let mut bytes = rrc(1, "MediaServer_email", 1);
    bytes.extend(unreg(2));
    bytes.extend(other(3));
    let p = h.read(&bytes);
    assert_eq!(p.action, Action::CloseAfterWrite);
    assert_eq!(h.answers().len(), 2, "nothing after the closing frame");
    let t = h.c.on_flushed(h.now, &h.config);
    assert_eq!(
        t,
        TimerChange::Arm(Timer::CloseLinger, h.now + Duration::from_secs(1))
    );
    // Input that still arrives is consumed and dropped.
    let p = h.read(&other(4));
    assert_eq!(p.action, Action::Continue);
    assert!(h.pending.is_empty(), "consumed, not kept");
    assert!(h.answers().is_empty());
    assert_eq!(h.c.on_eof(), CloseReason::Unregister);
    let p = h.deadline(Timer::CloseLinger);
    assert_eq!(p.action, Action::CloseNow(CloseReason::Unregister));
}

#[test]
fn error_deadline_closes_once_written_and_registration_deadline_now() {
    let (mut h, _) = H::new(false);
    let p = h.read(&other(1));
    assert!(matches!(
        p.timer,
        TimerChange::Arm(Timer::ErrorDisconnect, _)
    ));
    assert_eq!(h.answers(), vec![(1, 1)]);
    let p = h.deadline(Timer::ErrorDisconnect);
    assert_eq!(
        p.action,
        Action::CloseAfterWrite,
        "its EventError must arrive"
    );
    assert_eq!(h.c.on_eof(), CloseReason::ErrorTimeout);
}

#[test]
fn drain_per_state() {
    let (mut h, _) = H::new(false);
    assert_eq!(h.drain().action, Action::CloseNow(CloseReason::Drain));
    let (mut h, _) = H::new(false);
    let _ = h.read(&other(1));
    h.answers();
    assert_eq!(h.drain().action, Action::CloseAfterWrite, "rejected");
    assert!(h.answers().is_empty());
    let (mut h, _) = H::new(false);
    let _ = h.read(&rrc(1, "MediaServer_email", 1));
    h.answers();
    assert_eq!(h.drain().action, Action::CloseAfterWrite);
    assert_eq!(h.answers(), vec![(0, 11)]);
    assert_eq!(h.drain(), Progress::NOTHING, "already closing");
}

#[test]
fn eof_while_open_is_the_peers_close() {
    let (h, _) = H::new(false);
    assert_eq!(h.c.on_eof(), CloseReason::Peer);
}

/// RequestRegisterClient whose ClientName is not UTF-8 (ReferenceId 1 readable).
fn malformed() -> Vec<u8> {
    hex_bytes("0000001d000100030001010004000000010002020002fffe000301000400000001")
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn unreg_id(rid: i32, id: i32) -> Vec<u8> {
    let mut v = Vec::new();
    encode(
        &Message::UnregisterClient(crate::protocol::UnregisterClient {
            reference_id: rid,
            proxy_client_id: Some(id),
        }),
        &mut v,
    )
    .unwrap();
    v
}

fn rrc_cred(rid: i32, name: &str, ty: i32, cred: &str) -> Vec<u8> {
    rrc_with(rid, name, ty, Some(cred), None)
}

/// One row of docs/PROTOCOL.md §6: the frames that bring the connection to its state
/// (`setup`), the input, the answers it must write (ReferenceId, code; 0 for an EventAck),
/// and what the engine must do.
struct Row {
    name: &'static str,
    setup: Vec<Vec<u8>>,
    input: Vec<u8>,
    answers: Vec<(i32, i32)>,
    action: Action,
    state: State,
}

#[test]
fn every_frame_row_of_section_6() {
    let reg = |rid| rrc(rid, "MediaServer_email", 1);
    let proxy = |rid| rrc(rid, "Proxy_small", 3);
    let rows = vec![
        Row {
            name: "Unregistered | valid RequestRegisterClient | EventAck",
            setup: vec![],
            input: reg(7),
            answers: vec![(7, 0)],
            action: Action::Continue,
            state: State::Registered,
        },
        Row {
            name: "Unregistered | unknown ClientName | 2",
            setup: vec![],
            input: rrc(7, "nobody", 1),
            answers: vec![(7, 2)],
            action: Action::Continue,
            state: State::Rejected,
        },
        Row {
            name: "Unregistered | ClientType not allowed | 3",
            setup: vec![],
            input: rrc(7, "MediaServer_email", 3),
            answers: vec![(7, 3)],
            action: Action::Continue,
            state: State::Rejected,
        },
        Row {
            name: "Unregistered | wrong credential | 4",
            setup: vec![],
            input: rrc_cred(7, "AgentDesktop", 2, "wrong"),
            answers: vec![(7, 4)],
            action: Action::Continue,
            state: State::Rejected,
        },
        Row {
            name: "Unregistered | address not allowed | 5",
            setup: vec![],
            input: rrc(7, "Reporting_dc", 5),
            answers: vec![(7, 5)],
            action: Action::Continue,
            state: State::Rejected,
        },
        Row {
            name: "Unregistered | malformed | 7",
            setup: vec![],
            input: malformed(),
            answers: vec![(1, 7)],
            action: Action::Continue,
            state: State::Rejected,
        },
        Row {
            name: "Unregistered | any other message | 1",
            setup: vec![],
            input: other(7),
            answers: vec![(7, 1)],
            action: Action::Continue,
            state: State::Rejected,
        },
        Row {
            name: "Rejected | any well-framed message | 1",
            setup: vec![other(1)],
            input: reg(7),
            answers: vec![(7, 1)],
            action: Action::Continue,
            state: State::Rejected,
        },
        Row {
            name: "Rejected | its 16th EventError | close once written",
            setup: (1..=14).map(other).collect(),
            input: [other(15), other(16), other(17)].concat(),
            answers: vec![(15, 1), (16, 1)],
            action: Action::CloseAfterWrite,
            state: State::Closing,
        },
        Row {
            name: "any | framing error | 8, close once written",
            setup: vec![reg(1)],
            input: hex_bytes("00000003"),
            answers: vec![(0, 8)],
            action: Action::CloseAfterWrite,
            state: State::Closing,
        },
        Row {
            name: "Registered | RequestRegisterClient, not a Proxy | 6",
            setup: vec![reg(1)],
            input: reg(7),
            answers: vec![(7, 6)],
            action: Action::Continue,
            state: State::Registered,
        },
        Row {
            name: "Registered Proxy | valid RequestRegisterClient | EventAck",
            setup: vec![proxy(1)],
            input: reg(7),
            answers: vec![(7, 0)],
            action: Action::Continue,
            state: State::Registered,
        },
        Row {
            name: "Registered Proxy | over its client limit | 13",
            setup: vec![proxy(1), reg(2), reg(3)],
            input: reg(7),
            answers: vec![(7, 13)],
            action: Action::Continue,
            state: State::Registered,
        },
        Row {
            name: "Registered | RequestUnregisterClient, no id | EventAck, close once written",
            setup: vec![reg(1)],
            input: [unreg(7), other(8)].concat(),
            answers: vec![(7, 0)],
            action: Action::CloseAfterWrite,
            state: State::Closing,
        },
        Row {
            name: "Registered | RequestUnregisterClient, an id it does not own | 12",
            setup: vec![reg(1)],
            input: unreg_id(7, 999),
            answers: vec![(7, 12)],
            action: Action::Continue,
            state: State::Registered,
        },
        Row {
            name: "Registered | malformed | 7",
            setup: vec![reg(1)],
            input: malformed(),
            answers: vec![(1, 7)],
            action: Action::Continue,
            state: State::Registered,
        },
        Row {
            name: "Registered | any other message | 9",
            setup: vec![reg(1)],
            input: other(7),
            answers: vec![(7, 9)],
            action: Action::Continue,
            state: State::Registered,
        },
    ];
    for row in rows {
        let (mut h, _) = H::new(false);
        for f in &row.setup {
            let _ = h.read(f);
        }
        h.answers();
        let p = h.read(&row.input);
        assert_eq!(h.answers(), row.answers, "{}", row.name);
        assert_eq!(p.action, row.action, "{}", row.name);
        assert_eq!(h.c.session().state(), row.state, "{}", row.name);
    }
}

#[test]
fn a_proxy_unregisters_one_of_its_logical_clients() {
    // The logical client's id is the second EventAck's ProxyClientId.
    let (mut g, _) = H::new(false);
    let _ = g.read(&rrc(1, "Proxy_small", 3));
    g.out.clear();
    let p = g.read(&rrc(2, "MediaServer_email", 1));
    assert_eq!(p.logical_delta, 1);
    let out = std::mem::take(&mut g.out);
    let f = decode(&out, usize::MAX).unwrap().unwrap();
    let Message::EventAck(a) = f.message else {
        panic!()
    };
    let p = g.read(&unreg_id(3, a.proxy_client_id.unwrap()));
    assert_eq!(p.logical_delta, -1);
    assert_eq!(p.action, Action::Continue);
    assert_eq!(g.answers(), vec![(3, 0)]);
    assert_eq!(g.c.session().state(), State::Registered);
}

#[test]
fn a_refusal_answers_10_and_closes_once_written() {
    let config = ConnConfig::default();
    let mut out = Vec::new();
    let now = Instant::now();
    let (mut c, p) = Connection::refuse(
        now,
        LOOPBACK,
        crate::protocol::ErrorCode::ServerOverloaded,
        &config,
        &mut out,
    );
    assert_eq!(p.action, Action::CloseAfterWrite);
    assert_eq!(c.armed(), None);
    let f = decode(&out, usize::MAX).unwrap().unwrap();
    assert!(
        matches!(f.message, Message::EventError(e) if e.error_code == 10 && e.reference_id == 0)
    );
    assert!(matches!(
        c.on_flushed(now, &config),
        TimerChange::Arm(Timer::CloseLinger, _)
    ));
    assert_eq!(c.on_eof(), CloseReason::Overload);
}

#[test]
fn a_refused_proxy_address_gets_the_gates_error_then_closes_once_written() {
    let reg = Registry::embedded();
    let mut ids = IdAllocator::default();
    let config = ConnConfig::default();
    let now = Instant::now();
    let seen = std::cell::Cell::new(None);
    let gate = |ip: IpAddr| {
        seen.set(Some(ip));
        Err(crate::protocol::ErrorCode::AddressTemporarilyRefused)
    };
    let (mut c, _) = Connection::accept(now, SocketAddr::new(LOOPBACK, 40000), true, &config);
    let mut input = b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 7400\r\n".to_vec();
    input.extend(rrc(1, "MediaServer_email", 1));
    let mut out = Vec::new();
    let mut env = Env {
        registry: &reg,
        ids: &mut ids,
        config: &config,
        gate: Some(&gate),
        names: None,
    };
    let p = c.on_bytes(now, &input, &mut env, &mut out, |_| {});
    assert_eq!(
        seen.get(),
        Some("192.0.2.7".parse().unwrap()),
        "the header's address"
    );
    assert_eq!(p.action, Action::CloseAfterWrite);
    assert_eq!(p.consumed, input.len());
    let f = decode(&out, 8192).unwrap().unwrap();
    assert!(
        matches!(f.message, Message::EventError(e) if e.error_code == 16 && e.reference_id == 0)
    );
    assert_eq!(f.frame_len, out.len(), "nothing answered after the refusal");
    assert!(!c.admitted());
    assert_eq!(c.on_eof(), CloseReason::Banned);
    // Admitted: counted, and the request behind the header is served.
    let ok = |_: IpAddr| Ok(());
    let (mut c, _) = Connection::accept(now, SocketAddr::new(LOOPBACK, 40000), true, &config);
    let mut out = Vec::new();
    let mut env = Env {
        registry: &reg,
        ids: &mut ids,
        config: &config,
        gate: Some(&ok),
        names: None,
    };
    let _ = c.on_bytes(now, &input, &mut env, &mut out, |_| {});
    assert!(c.admitted());
    assert!(matches!(
        decode(&out, 8192).unwrap().unwrap().message,
        Message::EventAck(_)
    ));
}

/// The core's size is part of every idle connection's cost (docs/ENGINE.md, "Memory"):
/// growing it should be a decision, so the figure the docs state is checked here.
#[test]
fn a_connection_is_88_bytes() {
    assert_eq!(std::mem::size_of::<Connection>(), 88);
}

#[path = "connection_keepalive_tests.rs"]
mod keepalive;
