//! Keepalive (docs/PROTOCOL.md §12) over real sockets against the real binary, on both
//! engines: the value in force in EventAck (the spec's vectors byte for byte),
//! RequestKeepAlive answered, EventError 19 no earlier than 1.5 × k after the last complete
//! frame and no later than a tick after it, then a close once written; the name it held is
//! free again; the metrics say so.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use ixn::protocol::Message;

const TICK_MS: u64 = 20;
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(400);

/// The spec's vectors (tests/data/vectors.txt).
const REGISTER_KEEPALIVE: &str = "0000002e0001000400010100040000000b000202000a4167656e745f31303031\
                                  00030100040000000200090100040000001e";
const KEEPALIVE_REQUEST: &str = "0000000d0003000100010100040000000c";
const EVENT_ERROR_KEEPALIVE: &str = "0000002c0081000300010100040000000000070100040000001300080200\
                                     116b656570616c6976652065787069726564";

fn server(dir: &std::path::Path, extra: &[&str]) -> Server {
    let reg = dir.join("registry.toml");
    std::fs::write(
        &reg,
        "[[client]]\nname = \"Agent_1001\"\ntypes = [\"AgentApplication\"]\n\
         on_duplicate = \"reject\"\n\
         [[client]]\nname = \"MediaServer_email\"\ntypes = [\"MediaServer\"]\n\
         [[client]]\nname = \"Gateway\"\ntypes = [\"Proxy\"]\n",
    )
    .unwrap();
    let mut args = vec![
        "--workers",
        "1",
        "--timer-tick",
        "20ms",
        "--registry",
        reg.to_str().unwrap(),
    ];
    if !extra.contains(&"--keepalive-min") {
        args.extend(["--keepalive-min", "1s"]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn register(rid: i32, name: &str, ty: i32, keep_alive: Option<u16>) -> Vec<u8> {
    rrc_keep_alive(rid, name, ty, None, keep_alive)
}

/// The KeepAlive attribute of an EventAck.
fn acked_keep_alive(raw: &[u8]) -> Option<u16> {
    match ixn::protocol::decode(raw, usize::MAX)
        .unwrap()
        .unwrap()
        .message
    {
        Message::EventAck(a) => a.keep_alive,
        m => panic!("not an EventAck: {m:?}"),
    }
}

each_engine! {
    fn the_vectors_then_silence_then_error_19() {
        let dir = test_dir("keepalive-vectors");
        let s = server(&dir, &["--keepalive-max", "30s"]);
        let base = s.fds();
        let mut c = s.connect();
        // KeepAlive = 30 asked, 30 allowed: EventAck ReferenceId=11 ProxyClientId=1 KeepAlive=30
        // (the vector event_ack_keepalive with this worker's first id).
        c.send(&hex(REGISTER_KEEPALIVE));
        assert_eq!(
            c.read_raw().unwrap(),
            hex("0000001f0080000300010100040000000b00040100040000000100090100040000001e")
        );
        c.send(&hex(KEEPALIVE_REQUEST));
        assert_eq!(c.answer(), Some(ack(12, None)), "RequestKeepAlive answered");
        drop(c);
        s.assert_clean(base);

        // KeepAlive 1 s: alive while it sends every 500 ms, for twice its grace.
        let mut c = s.connect();
        c.send(&register(1, "MediaServer_email", 1, Some(1)));
        assert_eq!(acked_keep_alive(&c.read_raw().unwrap()), Some(1));
        for rid in 2..8 {
            std::thread::sleep(Duration::from_millis(500));
            c.send(&keep_alive(rid));
            assert_eq!(c.answer(), Some(ack(rid, None)));
        }
        // Then silent: EventError{0, 19} 1.5 s after its last frame, byte for byte, then
        // the end of stream (close once written).
        let last = Instant::now();
        assert_eq!(c.read_raw().unwrap(), hex(EVENT_ERROR_KEEPALIVE));
        let after = last.elapsed();
        assert!(after >= Duration::from_millis(1500) - Duration::from_millis(5), "early: {after:?}");
        assert!(
            after <= Duration::from_millis(1500 + TICK_MS) + SLACK,
            "late: {after:?}"
        );
        assert_eq!(c.read_raw(), None, "closed once written");
        s.assert_clean(base);
        assert_eq!(s.metric("ixn_keepalives_total"), 7.0);
        assert_eq!(s.metric(r#"ixn_connections_closed_total{reason="keepalive"}"#), 1.0);
        assert_eq!(s.metric(r#"ixn_timer_expired_total{timer="keepalive"}"#), 1.0);
        assert_eq!(s.metric(r#"ixn_errors_sent_total{code="19",name="KeepAliveExpired"}"#), 1.0);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn the_value_in_force_is_clamped_or_the_default() {
        let dir = test_dir("keepalive-clamp");
        let s = server(&dir, &["--keepalive-min", "2s", "--keepalive-max", "40s", "--keepalive-default", "9s"]);
        for (asked, want) in [(Some(1), 2), (Some(41), 40), (Some(7), 7), (Some(0), 9), (None, 9)] {
            let mut c = s.connect();
            c.send(&register(1, "MediaServer_email", 1, asked));
            assert_eq!(acked_keep_alive(&c.read_raw().unwrap()), Some(want), "asked {asked:?}");
        }
        // Without a default, no KeepAlive and none in force: the plain EventAck.
        let t = server(&dir, &[]);
        let mut c = t.connect();
        c.send(&register(1, "MediaServer_email", 1, None));
        assert_eq!(acked_keep_alive(&c.read_raw().unwrap()), None);
        // Out of range on the wire is malformed (7).
        let mut c = t.connect();
        let mut f = register(2, "MediaServer_email", 1, Some(0));
        let n = f.len();
        f[n - 4..].copy_from_slice(&(-5i32).to_be_bytes());
        c.send(&f);
        assert_eq!(c.answer(), Some(err(2, 7)));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn a_frame_begun_is_no_sign_of_life_and_the_name_is_freed() {
        let dir = test_dir("keepalive-partial");
        let s = server(&dir, &["--frame-timeout", "10s"]);
        let base = s.fds();
        let mut c = s.connect();
        c.send(&register(1, "Agent_1001", 2, Some(1)));
        assert_eq!(acked_keep_alive(&c.read_raw().unwrap()), Some(1));
        // Its name is held (on_duplicate = "reject").
        let mut d = s.connect();
        d.send(&register(2, "Agent_1001", 2, None));
        assert_eq!(d.answer(), Some(err(2, 14)));
        // Half a frame, then nothing: the frame deadline is 10 s away, the keepalive's
        // 1.5 s after the registration.
        let registered = Instant::now();
        let f = keep_alive(3);
        c.send(&f[..5]);
        assert_eq!(c.answer(), Some(err(0, 19)));
        let after = registered.elapsed();
        assert!(after <= Duration::from_millis(1500 + TICK_MS) + SLACK, "late: {after:?}");
        assert_eq!(c.read_raw(), None);
        // The name is free again.
        let mut e = s.connect();
        e.send(&register(4, "Agent_1001", 2, None));
        assert_eq!(e.answer(), Some(ack(4, Some(3))));
        drop((c, d, e));
        s.assert_clean(base);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn a_proxys_logical_clients_keep_its_keepalive_and_unregistered_it_is_error_1() {
        let dir = test_dir("keepalive-proxy");
        let s = server(&dir, &[]);
        let mut c = s.connect();
        c.send(&keep_alive(1));
        assert_eq!(c.answer(), Some(err(1, 1)), "any other message before registration");
        let mut p = s.connect();
        p.send(&register(1, "Gateway", 3, Some(1)));
        assert_eq!(acked_keep_alive(&p.read_raw().unwrap()), Some(1));
        p.send(&register(2, "MediaServer_email", 1, Some(60)));
        assert_eq!(acked_keep_alive(&p.read_raw().unwrap()), None, "a logical client's EventAck");
        // Still 1 s: silent, it gets 19 within 1.5 s of that last frame.
        let last = Instant::now();
        assert_eq!(p.answer(), Some(err(0, 19)));
        assert!(last.elapsed() <= Duration::from_millis(1500 + TICK_MS) + SLACK);
        let _ = std::fs::remove_dir_all(dir);
    }
}

each_engine! {
    /// 1,000 registered clients with KeepAlive 2 that go silent are all closed with 19 no
    /// earlier than 3.0 s after their last frame and within a tick (+ slack) after it,
    /// while 300 others that send a RequestKeepAlive every 2 s (KeepAlive 2 too: a second
    /// of room for a loaded machine) are never closed.
    fn a_thousand_silent_clients_lapse_on_time_and_busy_ones_stay() {
        let dir = test_dir("keepalive-lapse");
        let s = server(&dir, &[]);
        let base = s.fds();
        let (hold_json, lapse_json) = (dir.join("hold.json"), dir.join("lapse.json"));
        let mut hold = loadgen(
            s.addr,
            &hold_json,
            &["--scenario", "hold", "--keepalive", "2s", "--connections", "300", "--duration", "6s"],
        );
        let lapse = loadgen(
            s.addr,
            &lapse_json,
            &[
                "--scenario", "lapse", "--keepalive", "2s", "--concurrency", "1000", "--count",
                "1000", "--timer-tick", "20ms", "--slack", "400ms",
            ],
        )
        .wait_with_output()
        .unwrap();
        assert!(lapse.status.success(), "{}", String::from_utf8_lossy(&lapse.stderr));
        assert!(hold.wait().unwrap().success());
        let l = loadgen_report(&lapse_json);
        assert_eq!(l["ok"], 1000, "{l}");
        assert_eq!(l["error_total"], 0, "{l}");
        assert_eq!(l["lapse"]["deadline_ms"], 3000);
        assert_eq!(l["lapse"]["before"], 0, "none early: {l}");
        assert_eq!(l["lapse"]["within"], 1000, "all within a tick: {l}");
        let h = loadgen_report(&hold_json);
        assert_eq!(h["error_total"], 0, "no busy client closed: {h}");
        assert!(h["keepalive_rtt_us"]["count"].as_u64().unwrap() >= 300 * 2, "{h}");
        assert_eq!(s.metric(r#"ixn_connections_closed_total{reason="keepalive"}"#), 1000.0);
        assert!(s.metric("ixn_keepalives_total") >= 600.0);
        s.assert_clean(base);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn bad_keepalive_settings_are_refused_at_start() {
    for args in [
        ["--keepalive-min", "1500ms"],
        ["--keepalive-max", "65536s"],
        ["--keepalive-default", "4s"],
        ["--keepalive-min", "0s"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ixn-server"))
            .args(args)
            .arg("--check-config")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains("--keepalive-"), "{args:?}: {msg}");
    }
}
