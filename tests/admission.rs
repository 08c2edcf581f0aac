//! Admission control over real sockets (docs/PROTOCOL.md §11): the per-address cap, the
//! connection rate and bans after failed registrations, by direct and PROXY listeners.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

each_engine! {
    fn per_address_cap_refuses_exactly_the_excess_and_frees_on_close() {
        let s = Server::start(&["--max-connections-per-ip", "3", "--workers", "2"]);
        let mut held: Vec<Client> = (0..3).map(|_| connect_from("127.0.0.7", s.addr)).collect();
        for c in &mut held {
            c.send(&rrc(1, "MediaServer_email", 1, None));
            assert!(matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })));
        }
        for _ in 0..2 {
            let mut c = connect_from("127.0.0.7", s.addr);
            assert_eq!(c.answer(), Some(err(0, 10)), "over the cap");
            c.expect_close();
        }
        // Another address is not affected.
        let mut other = connect_from("127.0.0.8", s.addr);
        other.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(other.answer(), Some(Ans::Ack { rid: 1, .. })));
        // One of the three leaves: one more fits.
        let mut gone = held.pop().unwrap();
        gone.send(&unreg(2, None));
        assert_eq!(gone.answer(), Some(ack(2, None)));
        gone.expect_close();
        // Our close ends the server's linger, which frees the address's slot.
        drop(gone);
        std::thread::sleep(Duration::from_millis(100));
        let mut c = connect_from("127.0.0.7", s.addr);
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })));
        assert_eq!(
            s.wait_metric("ixn_connections_refused_total{reason=\"per_ip\"}", 2.0),
            2.0
        );
    }
}

each_engine! {
    fn the_connection_rate_is_capped_per_second_in_refuse_mode() {
        let s = Server::start(&[
            "--max-connection-rate",
            "20",
            "--connection-rate-mode",
            "refuse",
            "--workers",
            "2",
        ]);
        let t0 = Instant::now();
        let mut clients: Vec<Client> = (0..60).map(|_| s.connect()).collect();
        let spanned = t0.elapsed().as_secs() + 1;
        let (mut ok, mut refused) = (0u64, 0u64);
        for c in &mut clients {
            c.send(&rrc(1, "MediaServer_email", 1, None));
            match c.answer() {
                Some(Ans::Ack { .. }) => ok += 1,
                Some(Ans::Err { rid: 0, code: 10 }) => refused += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ok + refused, 60);
        // The connects spanned `spanned` seconds (or one more boundary of the server's): at
        // most 20 in each, and at least the first 20.
        assert!(
            ok >= 20 && ok <= 20 * (spanned + 1),
            "{ok} admitted in {spanned} s"
        );
        assert_eq!(
            s.wait_metric(
                "ixn_connections_refused_total{reason=\"rate\"}",
                refused as f64
            ),
            refused as f64
        );
    }
}

each_engine! {
    /// `pace` (the default): over the rate nothing is refused; the excess waits (in the
    /// backlog, or held by the worker that took it) and is served in the seconds after.
    fn over_the_rate_connections_wait_their_second_and_are_all_served() {
        let s = Server::start(&["--max-connection-rate", "20", "--workers", "2"]);
        let t0 = Instant::now();
        let mut clients: Vec<Client> = (0..60).map(|_| s.connect()).collect();
        for c in &mut clients {
            c.send(&rrc(1, "MediaServer_email", 1, None));
        }
        let mut acked = Vec::new();
        for c in &mut clients {
            assert!(matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })), "served, not refused");
            acked.push(t0.elapsed());
        }
        acked.sort();
        // 20 a second: the last 20 come at least one second boundary after the first 20
        // began, so the whole took more than a second, and less than the 3 seconds (and
        // a boundary) the three twenties need.
        assert!(acked[59] > Duration::from_secs(1), "{:?}", acked[59]);
        assert!(acked[59] < Duration::from_secs(4), "{:?}", acked[59]);
        assert_eq!(s.metric("ixn_connections_refused_total{reason=\"rate\"}"), 0.0);
        assert!(s.wait_metric_at_least("ixn_connections_paced_total", 1.0) >= 1.0);
        assert_eq!(s.wait_metric("ixn_connections_accepted_total{listener=\"plain\"}", 60.0), 60.0);
    }

    /// Under a steady overload the server serves the rate (±5 %) and loses nothing. Each
    /// second's registrations come in a burst when the server's second begins, and the
    /// loadgen's seconds are not the server's (a loadgen second may hold the tail of one
    /// burst and the next whole). So the test finds a burst's start on the server's own
    /// counter, and counts what five whole server seconds served, read between bursts.
    fn a_steady_overload_is_served_at_the_rate() {
        let s = Server::start(&["--max-connection-rate", "200", "--workers", "2"]);
        let dir = test_dir("pace-steady");
        let json = dir.join("lg.json");
        let lg = loadgen(
            s.addr,
            &json,
            &["--scenario", "churn", "--concurrency", "64", "--duration", "9s"],
        );
        let served = "ixn_registrations_total{result=\"ok\"}";
        // A burst, then quiet, then the next burst: its start is a second boundary.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = s.metric(served);
        let mut quiet_since = None::<Instant>;
        let boundary = loop {
            assert!(Instant::now() < deadline, "no burst after a quiet spell");
            let now = s.metric(served);
            let t = Instant::now();
            if now != last {
                if quiet_since.is_some_and(|q| t - q > Duration::from_millis(200)) {
                    break t;
                }
                quiet_since = None;
            } else if quiet_since.is_none() {
                quiet_since = Some(t);
            }
            last = now;
            std::thread::sleep(Duration::from_millis(2));
        };
        let at = |d: Duration| {
            std::thread::sleep((boundary + d).saturating_duration_since(Instant::now()));
            s.metric(served)
        };
        let first = at(Duration::from_millis(500));
        let five = at(Duration::from_millis(5500)) - first;
        assert!(lg.wait_with_output().unwrap().status.success());
        let v = loadgen_report(&json);
        assert_eq!(v["error_total"], 0, "nothing lost: {v}");
        let rate = five / 5.0;
        eprintln!("paced: {five} served in five server seconds");
        assert!((190.0..=210.0).contains(&rate), "{rate} a second, not 200 ±5 %: {five} in 5 s");
        assert!(s.wait_metric_at_least("ixn_connections_paced_total", 1.0) >= 1.0);
        assert_eq!(s.metric("ixn_connections_refused_total{reason=\"rate\"}"), 0.0);
        let _ = std::fs::remove_dir_all(dir);
    }
}

each_engine! {
    /// Behind a PROXY listener the rate is counted at accept (it counts connections, not
    /// addresses): over it the balancer's connections wait too, and are all served.
    fn behind_a_proxy_listener_connections_are_paced_too() {
        let s = Server::start(&["--proxy-listen", "127.0.0.1:0", "--max-connection-rate", "10"]);
        let proxy = s.proxy_addr.unwrap();
        let t0 = Instant::now();
        let mut clients: Vec<Client> = (0..25)
            .map(|i| {
                let mut c = Client::connect(proxy);
                let mut bytes = format!("PROXY TCP4 192.0.2.{} 127.0.0.1 5000 7400\r\n", i + 1)
                    .into_bytes();
                bytes.extend(rrc(1, "MediaServer_email", 1, None));
                c.send(&bytes);
                c
            })
            .collect();
        for c in &mut clients {
            assert!(matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })), "served, not refused");
        }
        // 25 at ten a second span two second boundaries: more than a second in all.
        assert!(t0.elapsed() > Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(s.metric("ixn_connections_refused_total{reason=\"rate\"}"), 0.0);
        assert!(s.wait_metric_at_least("ixn_connections_paced_total", 1.0) >= 1.0);
    }
}

each_engine! {
    /// The check at accept (what the filter falls back to): EventError 16.
    fn failed_registrations_ban_an_address_until_the_ban_expires() {
        let s = Server::start(&[
            "--ban-filter",
            "false",
            "--ban-failures",
            "3",
            "--ban-window",
            "10s",
            "--ban-duration",
            "1s",
        ]);
        for _ in 0..3 {
            let mut c = connect_from("127.0.0.9", s.addr);
            c.send(&rrc(1, "nobody", 1, None));
            assert_eq!(c.answer(), Some(err(1, 2)));
        }
        let banned_at = Instant::now();
        let mut c = connect_from("127.0.0.9", s.addr);
        assert_eq!(c.answer(), Some(err(0, 16)), "banned at accept");
        c.expect_close();
        assert_eq!(s.wait_metric("ixn_bans_active", 1.0), 1.0);
        // Another address registers meanwhile.
        let mut other = connect_from("127.0.0.10", s.addr);
        other.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(other.answer(), Some(Ans::Ack { .. })));
        // After the ban: served again.
        std::thread::sleep(Duration::from_secs(1).saturating_sub(banned_at.elapsed()));
        let mut c = connect_from("127.0.0.9", s.addr);
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
        assert_eq!(
            s.wait_metric("ixn_connections_refused_total{reason=\"banned\"}", 1.0),
            1.0
        );
        assert_eq!(
            s.metric("ixn_connections_closed_total{reason=\"banned\"}"),
            1.0
        );
        assert_eq!(
            s.metric("ixn_connections_refused_total{reason=\"banned_syn\"}"),
            0.0
        );
    }
}

/// A connect from `from` to `to` that gives up after `wait`: whether the handshake
/// completed.
fn handshake_from(from: &str, to: std::net::SocketAddr, wait: Duration) -> bool {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect_timeout(&to.into(), wait).is_ok()
}

/// Fails a registration from `from`, which bans it under `--ban-failures 1`.
fn fail_from(from: &str, to: std::net::SocketAddr) {
    let mut c = connect_from(from, to);
    c.send(&rrc(1, "nobody", 1, None));
    assert_eq!(c.answer(), Some(err(1, 2)), "{from}");
}

each_engine! {
    /// Bans below accept (revision 3): a banned address's SYNs are dropped by the
    /// listener's filter, so its connects never complete; lifting the ban through the
    /// admin API lets it in within a tick.
    fn a_banned_address_never_completes_a_handshake_until_the_ban_is_lifted() {
        let s = Server::start(&[
            "--ban-failures",
            "1",
            "--ban-duration",
            "60s",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        fail_from("127.0.0.21", s.addr);
        assert_eq!(s.wait_metric("ixn_bans_active", 1.0), 1.0);
        // The filter is built at the next tick.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !handshake_from("127.0.0.21", s.addr, Duration::from_millis(1500)),
            "a banned address completed a handshake"
        );
        // The SYN and its retransmission after 1 s.
        assert!(
            s.wait_metric_at_least("ixn_connections_refused_total{reason=\"banned_syn\"}", 2.0)
                >= 2.0
        );
        assert_eq!(
            s.metric("ixn_connections_refused_total{reason=\"banned\"}"),
            0.0,
            "nothing reached accept"
        );
        // Another address is served meanwhile, and the established connections of the
        // listener (which inherit its filter) work both ways.
        let mut other = connect_from("127.0.0.22", s.addr);
        other.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(other.answer(), Some(Ans::Ack { .. })));
        // Lifted: in within a tick (each try waits 150 ms; a SYN dropped before the swap
        // would otherwise be retried only after a second).
        assert_eq!(s.admin("DELETE", "/v1/bans/127.0.0.21", None).0, 204);
        let lifted = Instant::now();
        while !handshake_from("127.0.0.21", s.addr, Duration::from_millis(150)) {
            assert!(lifted.elapsed() < Duration::from_secs(1), "the lifted ban still drops");
        }
        assert!(lifted.elapsed() < Duration::from_millis(600), "{:?}", lifted.elapsed());
        let mut c = connect_from("127.0.0.21", s.addr);
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
    }
}

each_engine! {
    /// A ban list larger than the filter holds: the first bans are dropped below accept,
    /// the rest refused at accept with EventError 16; and when bans end, the filter goes.
    fn bans_beyond_the_filter_are_refused_at_accept() {
        let s = Server::start(&["--ban-failures", "1", "--ban-duration", "4s"]);
        let n = 530;
        let from = |i: usize| format!("127.0.{}.{}", 2 + i / 250, 1 + i % 250);
        for i in 0..n {
            fail_from(&from(i), s.addr);
        }
        assert_eq!(s.wait_metric("ixn_bans_active", n as f64), n as f64);
        std::thread::sleep(Duration::from_millis(300));
        // The first ban made is in the filter; the last is beyond it.
        assert!(!handshake_from(&from(0), s.addr, Duration::from_millis(500)));
        let mut c = connect_from(&from(n - 1), s.addr);
        assert_eq!(c.answer(), Some(err(0, 16)), "beyond the filter: refused at accept");
        c.expect_close();
        // Once the bans end, everyone is served again.
        std::thread::sleep(Duration::from_millis(4300));
        assert_eq!(s.wait_metric("ixn_bans_active", 0.0), 0.0);
        std::thread::sleep(Duration::from_millis(200));
        let mut c = connect_from(&from(0), s.addr);
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
    }
}

each_engine! {
    /// Behind a PROXY listener the address judged is the header's, not the balancer's.
    fn behind_a_proxy_listener_the_headers_address_is_banned() {
        let s = Server::start(&[
            "--proxy-listen",
            "127.0.0.1:0",
            "--ban-failures",
            "2",
            "--ban-duration",
            "60s",
        ]);
        let proxy = s.proxy_addr.unwrap();
        let header = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 5000 7400\r\n").into_bytes();
        for _ in 0..2 {
            let mut c = Client::connect(proxy);
            c.send(&header("192.0.2.9"));
            c.send(&rrc(1, "nobody", 1, None));
            assert_eq!(c.answer(), Some(err(1, 2)));
        }
        let mut c = Client::connect(proxy);
        let mut bytes = header("192.0.2.9");
        bytes.extend(rrc(1, "MediaServer_email", 1, None));
        c.send(&bytes);
        assert_eq!(
            c.answer(),
            Some(err(0, 16)),
            "the request behind the header is not served"
        );
        c.expect_close();
        // The balancer's own address (127.0.0.1) and other clients behind it are not banned.
        let mut c = Client::connect(proxy);
        let mut bytes = header("192.0.2.10");
        bytes.extend(rrc(1, "MediaServer_email", 1, None));
        c.send(&bytes);
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
    }
}
