//! Scale-out behind a real HAProxy (Debian package `haproxy`) with `send-proxy-v2`: two
//! ixn-server instances, the load generator registering through the balancer, allow-lists
//! judged on the client's real address, and no header refused.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

each_engine! {
    fn two_instances_behind_haproxy_send_proxy_v2() {
        let dir = test_dir("haproxy");
        std::fs::create_dir_all(&dir).unwrap();
        let reg = dir.join("registry.toml");
        std::fs::write(
            &reg,
            "[[client]]\nname = \"MediaServer_email\"\ntypes = [\"MediaServer\"]\n\n\
             [[client]]\nname = \"Only_127_0_0_2\"\ntypes = [\"MediaServer\"]\nallow = [\"127.0.0.2/32\"]\n",
        )
        .unwrap();
        let start = || {
            Server::start(&[
                "--workers",
                "1",
                "--registry",
                reg.to_str().unwrap(),
                "--proxy-listen",
                "127.0.0.1:0",
                "--proxy-protocol-trusted",
                "127.0.0.1/32",
            ])
        };
        let (a, b) = (start(), start());
        let (pa, pb) = (a.proxy_addr.unwrap(), b.proxy_addr.unwrap());
        let (_haproxy, front) = Haproxy::start(
            &dir,
            &format!(
                "  balance roundrobin\n  server a {pa} send-proxy-v2\n  server b {pb} send-proxy-v2\n"
            ),
        );

        // The load generator registers through the balancer; both instances serve.
        let json = dir.join("lg.json");
        let out = Command::new(loadgen_bin())
            .args([
                "--target",
                &front.to_string(),
                "--threads",
                "1",
                "-q",
                "--scenario",
                "churn",
            ])
            .args(["--count", "400", "--concurrency", "4", "--json"])
            .arg(&json)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&json).unwrap();
        let ok: f64 = text
            .split("\"ok\": ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        assert_eq!(ok, 400.0, "{text}");
        let series = "ixn_registrations_total{result=\"ok\"}";
        let t = Instant::now();
        let (mut na, mut nb) = (0.0, 0.0);
        while na + nb < ok && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            na = a.metric(series);
            nb = b.metric(series);
        }
        assert_eq!(na + nb, ok, "registrations the servers saw against the loadgen's: {text}");
        assert!(na > 0.0 && nb > 0.0, "both instances served: {na} + {nb}");

        // The allow-list sees the real source address, not HAProxy's.
        for (from, want_ok) in [("127.0.0.2", true), ("127.0.0.3", false)] {
            for _ in 0..2 {
                // Twice: round robin reaches both instances.
                let mut c = connect_from(from, front);
                c.send(&rrc(5, "Only_127_0_0_2", 1, None));
                let a = c.answer();
                if want_ok {
                    assert!(
                        matches!(a, Some(Ans::Ack { rid: 5, .. })),
                        "from {from}: {a:?}"
                    );
                } else {
                    assert_eq!(a, Some(err(5, 5)), "from {from}");
                }
            }
        }

        // Straight to an instance's PROXY listener without a header: refused, nothing answered.
        let mut c = Client::connect(pa);
        c.send(&rrc(6, "MediaServer_email", 1, None));
        assert!(c.read_raw().is_none(), "no answer without a PROXY header");
        assert!(
            a.wait_metric(
                "ixn_connections_closed_total{reason=\"proxy_protocol\"}",
                1.0
            ) >= 1.0
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
