//! Every row of docs/PROTOCOL.md §6 over real loopback sockets against the real binary,
//! with short timeouts; after each scenario the server's slab is empty and its
//! descriptors are back to their baseline.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

const REG_MS: u64 = 600;
const ERR_MS: u64 = 400;
const TICK_MS: u64 = 20;
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(400);

/// Starts a one-worker server with short timeouts; `extra` flag/value pairs override them.
fn server(extra: &[&str]) -> Server {
    let mut args: Vec<(&str, &str)> = vec![
        ("--workers", "1"),
        ("--registration-timeout", "600ms"),
        ("--error-disconnect-timeout", "400ms"),
        ("--timer-tick", "20ms"),
    ];
    for pair in extra.chunks(2) {
        args.retain(|(k, _)| *k != pair[0]);
        args.push((pair[0], pair[1]));
    }
    let flat: Vec<&str> = args.iter().flat_map(|(k, v)| [*k, *v]).collect();
    Server::start(&flat)
}

fn assert_window(elapsed: Duration, deadline_ms: u64) {
    let d = Duration::from_millis(deadline_ms);
    assert!(elapsed >= d, "closed early: {elapsed:?} < {d:?}");
    assert!(
        elapsed <= d + Duration::from_millis(TICK_MS) + SLACK,
        "closed late: {elapsed:?}"
    );
}

// Unregistered | valid RequestRegisterClient | EventAck{ReferenceId, ProxyClientId != 0}:
// byte-exact against the spec vectors.
each_engine! {
    fn valid_registration_byte_exact() {
        let s = server(&[]);
        let base = s.fds();
        let mut c = s.connect();
        c.send(&hex("0000002c0001000300010100040000000700020200114d656469615365727665725f656d61696c000301000400000001"));
        assert_eq!(
            c.read_raw().unwrap(),
            hex("0000001600800002000101000400000007000401000400000001"),
            "vector event_ack"
        );
        // Registered connections stay open past the registration deadline.
        std::thread::sleep(Duration::from_millis(REG_MS + 200));
        c.send(&other(5));
        assert_eq!(c.answer(), Some(err(5, 9)));
        drop(c);
        s.assert_clean(base);
    }
}

// Unregistered | RRC failing validation | EventError{2,3,4,5} | Rejected; then the error
// deadline closes it.
each_engine! {
    fn rejections_close_at_the_error_deadline() {
        let s = server(&[]);
        let base = s.fds();
        let cases = [
            (rrc(7, "unknown client", 1, None), 2),
            (rrc(8, "MediaServer_email", 2, None), 3),
            (rrc(9, "AgentDesktop", 2, Some("wrong")), 4),
            (rrc(10, "Reporting_dc", 5, None), 5),
        ];
        let mut clients: Vec<_> = cases
            .iter()
            .map(|(f, _)| {
                let mut c = s.connect();
                c.send(f);
                c
            })
            .collect();
        for (c, (f, code)) in clients.iter_mut().zip(&cases) {
            let rid = i32::from_be_bytes(f[13..17].try_into().unwrap());
            assert_eq!(c.answer(), Some(err(rid, *code)));
        }
        for c in &mut clients {
            assert_window(c.expect_close(), ERR_MS);
        }
        // The unknown-client answer is byte-exact against the vector.
        let mut c = s.connect();
        c.send(&rrc(7, "nobody", 1, None));
        let raw = c.read_raw().unwrap();
        assert_eq!(
            &raw[..21],
            &hex("0000002900810003000101000400000007000701000400000002")[..21]
        );
        drop(c);
        s.assert_clean(base);
    }
}

// Unregistered | malformed | EventError{7}; any other message | EventError{1}; the seed's
// "first one then the other"; Rejected | any well-framed message | EventError{1}.
each_engine! {
    fn malformed_other_and_first_one_then_the_other() {
        let s = server(&[]);
        let base = s.fds();
        let mut m = s.connect();
        m.send(&hex("0000001600010002000101000400000004000301000400000001"));
        assert_eq!(
            m.answer(),
            Some(err(4, 7)),
            "missing ClientName, ReferenceId readable"
        );
        let mut o = s.connect();
        o.send(&hex("0000000d00100001000101000400000005"));
        assert_eq!(o.answer(), Some(err(5, 1)));
        // Other first, then a valid registration: still refused.
        o.send(&rrc(6, "MediaServer_email", 1, None));
        assert_eq!(o.answer(), Some(err(6, 1)));
        // Invalid registration first, then another message.
        let mut i = s.connect();
        i.send(&rrc(1, "nobody", 1, None));
        assert_eq!(i.answer(), Some(err(1, 2)));
        i.send(&other(2));
        assert_eq!(i.answer(), Some(err(2, 1)));
        for c in [&mut m, &mut o, &mut i] {
            assert_window(c.expect_close(), ERR_MS);
        }
        s.assert_clean(base);
    }
}

// Rejected | its 16th EventError written | close.
each_engine! {
    fn sixteen_errors_then_close() {
        let s = server(&[]);
        let base = s.fds();
        let mut c = s.connect();
        let frames: Vec<u8> = (1..=20).flat_map(other).collect();
        c.send(&frames);
        for rid in 1..=16 {
            assert_eq!(c.answer(), Some(err(rid, 1)));
        }
        let t = c.expect_close();
        assert!(
            t < Duration::from_millis(ERR_MS),
            "closed by the cap, not the deadline: {t:?}"
        );
        drop(c);
        s.assert_clean(base);
    }
}

// any | framing error | EventError{0, 8}; close once written.
each_engine! {
    fn framing_errors_close_at_once() {
        let s = server(&[]);
        let base = s.fds();
        for bad in ["00001ffd00010000", "00000003000100", "ffffffff"] {
            let mut c = s.connect();
            c.send(&hex(bad));
            assert_eq!(c.answer(), Some(err(0, 8)), "{bad}");
            assert!(c.expect_close() < Duration::from_millis(ERR_MS));
        }
        // Also on a registered connection, and the largest allowed frame is accepted.
        let mut c = s.connect();
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })));
        let mut max = hex("00001ffc0010000100630301ff");
        max[11..13].copy_from_slice(&(8192u16 - 13).to_be_bytes());
        max.resize(8192, b'a');
        c.send(&max);
        assert_eq!(
            c.answer(),
            Some(err(0, 9)),
            "a frame of exactly max_frame_len is served"
        );
        c.send(&hex("00002000"));
        assert_eq!(c.answer(), Some(err(0, 8)));
        c.expect_close();
        s.assert_clean(base);
    }
}

// Registered | RRC not Proxy | 6; malformed | 7; other | 9; unregister unknown | 12;
// unregister self | EventAck then close.
each_engine! {
    fn registered_rows() {
        let s = server(&[]);
        let base = s.fds();
        let mut c = s.connect();
        c.send(&rrc(1, "AgentDesktop", 2, Some("s3cret")));
        let Some(Ans::Ack { id: Some(own), .. }) = c.answer() else {
            panic!("no ack")
        };
        assert_ne!(own, 0);
        c.send(&rrc(2, "AgentDesktop", 2, Some("s3cret")));
        assert_eq!(c.answer(), Some(err(2, 6)));
        c.send(&hex(
            "0000001d000100030001010004000000030002020002fffe000301000400000001",
        ));
        assert_eq!(c.answer(), Some(err(3, 7)));
        c.send(&other(4));
        assert_eq!(c.answer(), Some(err(4, 9)));
        c.send(&unreg(5, Some(own + 1000)));
        assert_eq!(c.answer(), Some(err(5, 12)));
        c.send(&unreg(6, Some(own)));
        assert_eq!(c.answer(), Some(ack(6, None)));
        c.expect_close();
        let mut c = s.connect();
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
        c.send(&unreg(2, None));
        assert_eq!(c.answer(), Some(ack(2, None)));
        c.expect_close();
        s.assert_clean(base);
    }
}

// Registered Proxy | valid RRC | EventAck{new id}; over its limit | 13; unregister a logical
// client | EventAck; pipelined frames answered in order.
each_engine! {
    fn proxy_logical_clients_pipelined() {
        let s = server(&[]);
        let base = s.fds();
        let mut c = s.connect();
        let mut batch = rrc(1, "Proxy_small", 3, None);
        batch.extend(rrc(2, "MediaServer_email", 1, None));
        batch.extend(rrc(3, "Router_local", 4, None));
        batch.extend(rrc(4, "MediaServer_email", 1, None));
        batch.extend(other(5));
        c.send(&batch);
        let mut ids = Vec::new();
        for rid in 1..=3 {
            match c.answer() {
                Some(Ans::Ack {
                    rid: r,
                    id: Some(id),
                }) if r == rid && id != 0 => ids.push(id),
                other => panic!("answer {rid}: {other:?}"),
            }
        }
        assert_eq!(c.answer(), Some(err(4, 13)));
        assert_eq!(c.answer(), Some(err(5, 9)));
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "distinct ids");
        assert_eq!(s.wait_metric("ixn_logical_clients_registered", 2.0), 2.0);
        c.send(&unreg(6, Some(ids[1])));
        assert_eq!(c.answer(), Some(ack(6, None)));
        c.send(&rrc(7, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { rid: 7, .. })));
        drop(c);
        s.assert_clean(base);
        assert_eq!(s.wait_metric("ixn_logical_clients_registered", 0.0), 0.0);
    }
}

// Unregistered | registration deadline | close; bytes never move the deadline.
each_engine! {
    fn silent_and_trickling_clients_drop_at_the_deadline() {
        let s = server(&[]);
        let base = s.fds();
        let mut silent = s.connect();
        let mut trickle = s.connect();
        let f = rrc(1, "MediaServer_email", 1, None);
        for b in &f[..f.len() - 1] {
            trickle.send(&[*b]);
            std::thread::sleep(Duration::from_millis(8));
        }
        assert_window(silent.expect_close(), REG_MS);
        assert_window(trickle.expect_close(), REG_MS);
        s.assert_clean(base);
        assert_eq!(
            s.wait_metric(
                "ixn_connections_closed_total{reason=\"registration_timeout\"}",
                2.0
            ),
            2.0
        );
    }
}

// A bulk drop: 3,000 silent connections expire together and all close in the window.
each_engine! {
    fn bulk_drop_of_3000_silent_connections() {
        let s = server(&["--registration-timeout", "1500ms"]);
        let base = s.fds();
        let mut clients: Vec<Client> = (0..3000).map(|_| s.connect()).collect();
        assert_eq!(s.wait_metric("ixn_connections_active", 3000.0), 3000.0);
        let mut latest = Duration::ZERO;
        for c in &mut clients {
            let t = c.expect_close();
            assert!(t >= Duration::from_millis(1500), "closed early: {t:?}");
            latest = latest.max(t.saturating_sub(Duration::from_millis(1500)));
        }
        // Connects took a while; each close is measured from its own connect.
        assert!(
            latest <= Duration::from_millis(TICK_MS) + Duration::from_secs(1),
            "late by {latest:?}"
        );
        drop(clients);
        s.assert_clean(base);
        assert_eq!(
            s.metric("ixn_timer_expired_total{timer=\"registration\"}"),
            3000.0
        );
    }
}

// any | connection limit reached at accept | EventError{10}; close.
each_engine! {
    fn connection_limit() {
        let s = server(&["--max-connections", "3"]);
        let base = s.fds();
        let mut held: Vec<Client> = (0..3)
            .map(|i| {
                let mut c = s.connect();
                c.send(&rrc(i, "MediaServer_email", 1, None));
                assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
                c
            })
            .collect();
        let mut over = s.connect();
        assert_eq!(over.answer(), Some(err(0, 10)));
        over.expect_close();
        // The held ones are untouched.
        held[0].send(&other(9));
        assert_eq!(held[0].answer(), Some(err(9, 9)));
        held.clear();
        s.assert_clean(base);
        // Room again.
        let mut c = s.connect();
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
    }
}

// any | peer closes or resets | nothing; the slot is freed.
each_engine! {
    fn peer_reset_mid_frame_frees_the_slot() {
        let s = server(&[]);
        let base = s.fds();
        for _ in 0..20 {
            let mut c = s.connect();
            c.send(&rrc(1, "MediaServer_email", 1, None)[..10]);
            let sock = socket2::SockRef::from(&c.s);
            sock.set_linger(Some(Duration::ZERO)).unwrap();
            drop(c);
        }
        let mut half = s.connect();
        half.send(&rrc(1, "MediaServer_email", 1, None)[..10]);
        half.s.shutdown(std::net::Shutdown::Write).unwrap();
        half.expect_close();
        s.assert_clean(base);
    }
}

fn write_registry(path: &std::path::Path, names: &[&str]) {
    let mut text = String::new();
    for n in names {
        text.push_str(&format!(
            "[[client]]\nname = \"{n}\"\ntypes = [\"MediaServer\"]\n\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

// SIGHUP reloads the registry; a broken file is refused and the old one kept; live
// connections are untouched.
each_engine! {
    fn sighup_reload() {
        let dir = test_dir("reload");
        std::fs::create_dir_all(&dir).unwrap();
        let reg = dir.join("registry.toml");
        write_registry(&reg, &["Alpha"]);
        let s = server(&[
            "--registry",
            reg.to_str().unwrap(),
            "--registration-timeout",
            "20s",
        ]);
        let base = s.fds();
        let mut live = s.connect();
        live.send(&rrc(1, "Alpha", 1, None));
        assert!(matches!(live.answer(), Some(Ans::Ack { .. })));
        let mut c = s.connect();
        c.send(&rrc(1, "Beta", 1, None));
        assert_eq!(c.answer(), Some(err(1, 2)));

        write_registry(&reg, &["Alpha", "Beta"]);
        s.signal("HUP");
        s.wait_log("registry reloaded");
        let mut c2 = s.connect();
        c2.send(&rrc(2, "Beta", 1, None));
        assert!(matches!(c2.answer(), Some(Ans::Ack { rid: 2, .. })));

        std::fs::write(&reg, "[[client]]\nname = \"Gamma\"\ntypes = [\"Nope\"]\n").unwrap();
        s.signal("HUP");
        let line = s.wait_log("reload refused");
        assert!(
            line.contains("registry.toml:3"),
            "names file and line: {line}"
        );
        let mut c = s.connect();
        c.send(&rrc(3, "Beta", 1, None));
        assert!(
            matches!(c.answer(), Some(Ans::Ack { rid: 3, .. })),
            "old registry kept"
        );
        assert_eq!(
            s.metric("ixn_registry_reloads_total{result=\"error\"}"),
            1.0
        );

        live.send(&other(4));
        assert_eq!(live.answer(), Some(err(4, 9)), "live connection untouched");
        drop((live, c, c2));
        s.assert_clean(base);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// any | server draining (SIGTERM) | unregistered and rejected: close; registered:
// EventError{11}, close; the process exits 0; /ready goes 503.
each_engine! {
    fn sigterm_drains_and_exits_zero() {
        let mut s = server(&[
            "--workers",
            "2",
            "--registration-timeout",
            "20s",
            "--error-disconnect-timeout",
            "20s",
        ]);
        assert_eq!(s.http_get("/ready").0, 200);
        assert_eq!(s.http_get("/live").0, 200);
        let mut registered: Vec<Client> = (0..10)
            .map(|i| {
                let mut c = s.connect();
                c.send(&rrc(i, "MediaServer_email", 1, None));
                assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
                c
            })
            .collect();
        let mut unregistered = s.connect();
        let mut rejected = s.connect();
        rejected.send(&other(1));
        assert_eq!(rejected.answer(), Some(err(1, 1)));
        assert_eq!(s.wait_metric("ixn_connections_active", 12.0), 12.0);
        s.signal("TERM");
        for c in &mut registered {
            assert_eq!(c.answer(), Some(err(0, 11)));
            c.expect_close();
        }
        unregistered.expect_close();
        rejected.expect_close();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                break st;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
    }
}

// A client that sends but never reads stalls only itself: the write timeout closes it
// (reason write_stall) while other clients are served.
each_engine! {
    fn client_that_never_reads_is_closed_by_the_write_timeout() {
        let s = server(&["--write-timeout", "500ms"]);
        let base = s.fds();
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&s.addr.into()).unwrap();
        let mut hog: std::net::TcpStream = sock.into();
        std::io::Write::write_all(&mut hog, &rrc(1, "MediaServer_email", 1, None)).unwrap();
        hog.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        // Up to 17 MB of frames whose answers (~2.8x larger) the client never reads: more than
        // the kernel's socket buffers hold, so the server's write must stall.
        let chunk: Vec<u8> = (0..10_000).flat_map(other).collect();
        let writer = std::thread::spawn(move || {
            for _ in 0..100 {
                if std::io::Write::write_all(&mut hog, &chunk).is_err() {
                    return true;
                }
            }
            false
        });
        // Meanwhile the worker serves others.
        let mut c = s.connect();
        c.send(&rrc(2, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { rid: 2, .. })));
        drop(c);
        assert!(
            writer.join().unwrap(),
            "the server closed the stalled connection"
        );
        assert_eq!(
            s.wait_metric("ixn_connections_closed_total{reason=\"write_stall\"}", 1.0),
            1.0
        );
        s.assert_clean(base);
    }
}

// `--check-config` validates and exits; a broken registry is refused naming file and line.
each_engine! {
    fn check_config() {
        let bin = env!("CARGO_BIN_EXE_ixn-server");
        let ok = std::process::Command::new(bin)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(ok.status.success());
        assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration OK"));
        let dir = test_dir("check");
        std::fs::create_dir_all(&dir).unwrap();
        let reg = dir.join("bad.toml");
        std::fs::write(
            &reg,
            "[[client]]\nname = \"a\"\ntypes = [\"Proxy\"]\nallow = [\"300.0.0.0/8\"]\n",
        )
        .unwrap();
        let bad = std::process::Command::new(bin)
            .args(["--check-config", "--registry", reg.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(2));
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains("bad.toml:4"), "{err}");
        let bad = std::process::Command::new(bin)
            .args(["--check-config", "--max-frame-len", "2000000"])
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// Many connections accepted at once, then registered one after another: every queued
// connection gets served (no connection waits for a task that never comes).
each_engine! {
    fn a_burst_of_connections_is_served_in_full() {
        let s = server(&["--registration-timeout", "30s"]);
        let base = s.fds();
        for round in [1usize, 8, 1500] {
            let mut conns: Vec<Client> = (0..round).map(|_| s.connect()).collect();
            for (i, c) in conns.iter_mut().enumerate() {
                c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.send(&rrc(i as i32, "MediaServer_email", 1, None));
                assert!(
                    matches!(c.answer(), Some(Ans::Ack { .. })),
                    "round {round}: connection {i} not served"
                );
            }
        }
        s.assert_clean(base);
    }
}
