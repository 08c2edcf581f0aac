//! Metrics and health over real HTTP: a known scenario's exact counters, histogram series,
//! the exposition checked by `promtool`, a real Prometheus server scraping it, and
//! `/ready` across start and drain.

#[macro_use]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn start() -> Server {
    Server::start(&[
        "--workers",
        "1",
        "--registration-timeout",
        "500ms",
        "--error-disconnect-timeout",
        "300ms",
        "--timer-tick",
        "20ms",
    ])
}

/// Runs the scenario, returns when every connection is closed.
fn scenario(s: &Server) {
    let mut open = Vec::new();
    // 5 registrations that unregister (one via a Proxy logical client too).
    for i in 0..5 {
        let mut c = s.connect();
        c.send(&rrc(i, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
        c.send(&unreg(100 + i, None));
        assert_eq!(c.answer(), Some(ack(100 + i, None)));
        c.expect_close();
    }
    // Rejections, each waits for its error deadline.
    let rejections: [(Vec<u8>, i32, usize); 5] = [
        (rrc(1, "nobody", 1, None), 2, 3),
        (rrc(1, "MediaServer_email", 4, None), 3, 2),
        (rrc(1, "AgentDesktop", 2, Some("nope")), 4, 1),
        (rrc(1, "Reporting_dc", 5, None), 5, 1),
        (other(1), 1, 2),
    ];
    for (f, code, n) in &rejections {
        for _ in 0..*n {
            let mut c = s.connect();
            c.send(f);
            assert_eq!(c.answer(), Some(err(1, *code)));
            open.push(c);
        }
    }
    // One malformed registration (bad UTF-8 ClientName, ReferenceId 1).
    let mut c = s.connect();
    c.send(&hex(
        "0000001d000100030001010004000000010002020002fffe000301000400000001",
    ));
    assert_eq!(c.answer(), Some(err(1, 7)));
    open.push(c);
    // Four silent connections.
    for _ in 0..4 {
        open.push(s.connect());
    }
    // One framing error.
    let mut c = s.connect();
    c.send(&hex("00000003000100"));
    assert_eq!(c.answer(), Some(err(0, 8)));
    c.expect_close();
    for c in &mut open {
        c.expect_close();
    }
}

each_engine! {
    fn known_scenario_exact_counters_and_real_prometheus_scrape() {
        let s = start();
        // Every series exists, at zero, before the first event.
        let (status, text) = s.http_get("/metrics");
        assert_eq!(status, 200);
        for series in [
            "ixn_connections_accepted_total{listener=\"plain\"} 0",
            "ixn_connections_accepted_total{listener=\"tls\"} 0",
            "ixn_tls_handshakes_total{result=\"failed\"} 0",
            "ixn_connections_active 0",
            "ixn_connections_closed_total{reason=\"peer\"} 0",
            "ixn_registrations_total{result=\"ok\"} 0",
            "ixn_errors_sent_total{code=\"8\",name=\"FrameTooLarge\"} 0",
            "ixn_timer_expired_total{timer=\"registration\"} 0",
            "ixn_build_info{version=\"",
            "# TYPE ixn_registrations_total counter",
            "# HELP ixn_connections_active",
        ] {
            assert!(text.contains(series), "missing at start: {series}\n{text}");
        }

        scenario(&s);
        assert_eq!(s.wait_metric("ixn_connections_active", 0.0), 0.0);
        // Metrics are flushed once per tick: wait for the last closes to land.
        s.wait_metric(
            "ixn_connections_closed_total{reason=\"registration_timeout\"}",
            4.0,
        );
        let text = s.http_get("/metrics").1;
        let m = |series: &str| metric_in(&text, series);
        let expect = [
            ("ixn_connections_accepted_total{listener=\"plain\"}", 20.0),
            ("ixn_connections_active", 0.0),
            ("ixn_clients_registered", 0.0),
            ("ixn_connections_closed_total{reason=\"unregister\"}", 5.0),
            (
                "ixn_connections_closed_total{reason=\"error_timeout\"}",
                10.0,
            ),
            (
                "ixn_connections_closed_total{reason=\"registration_timeout\"}",
                4.0,
            ),
            (
                "ixn_connections_closed_total{reason=\"framing_error\"}",
                1.0,
            ),
            ("ixn_connections_closed_total{reason=\"peer\"}", 0.0),
            ("ixn_registrations_total{result=\"ok\"}", 5.0),
            ("ixn_registrations_total{result=\"UnknownClient\"}", 3.0),
            (
                "ixn_registrations_total{result=\"ClientTypeNotAllowed\"}",
                2.0,
            ),
            (
                "ixn_registrations_total{result=\"AuthenticationFailed\"}",
                1.0,
            ),
            ("ixn_registrations_total{result=\"AddressNotAllowed\"}", 1.0),
            ("ixn_registrations_total{result=\"MalformedMessage\"}", 1.0),
            (
                "ixn_errors_sent_total{code=\"1\",name=\"ClientNotRegistered\"}",
                2.0,
            ),
            (
                "ixn_errors_sent_total{code=\"2\",name=\"UnknownClient\"}",
                3.0,
            ),
            (
                "ixn_errors_sent_total{code=\"3\",name=\"ClientTypeNotAllowed\"}",
                2.0,
            ),
            (
                "ixn_errors_sent_total{code=\"4\",name=\"AuthenticationFailed\"}",
                1.0,
            ),
            (
                "ixn_errors_sent_total{code=\"5\",name=\"AddressNotAllowed\"}",
                1.0,
            ),
            (
                "ixn_errors_sent_total{code=\"7\",name=\"MalformedMessage\"}",
                1.0,
            ),
            (
                "ixn_errors_sent_total{code=\"8\",name=\"FrameTooLarge\"}",
                1.0,
            ),
            ("ixn_timer_expired_total{timer=\"registration\"}", 4.0),
            ("ixn_timer_expired_total{timer=\"error_disconnect\"}", 10.0),
            ("ixn_registration_duration_seconds_count", 5.0),
        ];
        for (series, want) in expect {
            assert_eq!(m(series), want, "{series}");
        }
        assert!(m("ixn_registration_duration_seconds_sum") > 0.0);
        assert_eq!(
            m("ixn_registration_duration_seconds_bucket{le=\"+Inf\"}"),
            5.0,
            "histogram buckets, not a summary"
        );
        assert!(text.contains("ixn_registration_duration_seconds_bucket{le=\"0.001\"}"));
        assert!(m("ixn_received_bytes_total") > 0.0 && m("ixn_sent_bytes_total") > 0.0);

        // The exposition is valid for Prometheus' own checker.
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (apt package prometheus; .ci/run installs it)");
        std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        let problems =
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        // promtool exits 0 for a valid exposition; lint remarks would be printed.
        assert!(out.status.success(), "promtool check metrics: {problems}");

        // And a real Prometheus server scrapes it.
        let value = prometheus_query(&s, "ixn_registrations_total{result=\"ok\"}");
        assert_eq!(value, 5.0);
    }
}

/// Runs `prometheus` scraping the server every 200 ms and returns `query`'s value.
fn prometheus_query(s: &Server, query: &str) -> f64 {
    let dir = test_dir("prom");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 200ms\nscrape_configs:\n  - job_name: ixn\n    scrape_interval: 200ms\n    static_configs:\n      - targets: ['{}']\n",
            s.metrics
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt package prometheus; .ci/run installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let result = loop {
        assert!(
            Instant::now() < deadline,
            "prometheus never returned {query}: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let q: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        use std::io::{Read, Write};
        let _ = write!(
            conn,
            "GET /api/v1/query?query={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut resp = String::new();
        let _ = conn.read_to_string(&mut resp);
        last = resp.clone();
        // {"status":"success","data":{"resultType":"vector","result":[{"metric":{...},"value":[ts,"5"]}]}}
        if let Some(v) = resp
            .split("\"value\":[")
            .nth(1)
            .and_then(|r| r.split('"').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
        {
            break v;
        }
    };
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

each_engine! {
    fn ready_is_503_while_draining_and_live_stays_200() {
        let s = Server::start(&[
            "--workers",
            "2",
            "--timer-tick",
            "500ms",
            "--registration-timeout",
            "30s",
        ]);
        assert_eq!(s.http_get("/ready"), (200, "ready\n".to_string()));
        let mut c = s.connect();
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
        s.signal("TERM");
        // The drain flag is visible at once; workers act on their next tick (500 ms).
        let t = Instant::now();
        let mut saw = None;
        while t.elapsed() < Duration::from_secs(2) {
            let (status, body) = s.http_get("/ready");
            if status == 503 {
                saw = Some(body);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(saw.as_deref(), Some("draining\n"));
        assert_eq!(s.http_get("/live").0, 200);
        assert_eq!(c.answer(), Some(err(0, 11)));
    }
}

each_engine! {
    fn metrics_can_be_turned_off() {
        let s = Server::start(&["--workers", "1", "--metrics", "false"]);
        assert_eq!(s.http_get("/metrics").0, 404);
        assert_eq!(s.http_get("/ready").0, 200);
        let mut c = s.connect();
        c.send(&rrc(1, "MediaServer_email", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
    }
}
