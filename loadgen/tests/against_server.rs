//! Each scenario against the real server on loopback, for about a second; the loadgen's
//! counts must agree with the server's `/metrics` counters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn server_bin() -> PathBuf {
    // The server binary lives in the sibling package's target directory.
    let mut p = PathBuf::from(env!("CARGO_BIN_EXE_ixn-loadgen"));
    p.set_file_name("ixn-server");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "ixn-server", "--bin", "ixn-server"])
            .status()
            .expect("cargo build ixn-server");
        assert!(ok.success());
    }
    p
}

struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    start_with(&[])
}

/// Like [`start`], with more server flags.
fn start_with(extra: &[&str]) -> Server {
    let mut child = Command::new(server_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--registration-timeout",
            "600ms",
            "--error-disconnect-timeout",
            "300ms",
            "--timer-tick",
            "20ms",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut addr, mut metrics) = (None, None);
    while addr.is_none() || metrics.is_none() {
        let line = lines.next().expect("server log").unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            addr = Some(a.trim().parse().unwrap());
        }
        if let Some(a) = line.split("metrics on ").nth(1) {
            metrics = Some(a.trim().parse().unwrap());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        addr: addr.unwrap(),
        metrics: metrics.unwrap(),
    }
}

impl Server {
    fn metric(&self, series: &str) -> f64 {
        let mut s = std::net::TcpStream::connect(self.metrics).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| {
                let (n, v) = l.rsplit_once(' ')?;
                (n == series).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Waits for the server's flush (once per tick) to reach `want`.
    fn wait(&self, series: &str, want: f64) -> f64 {
        let t = Instant::now();
        loop {
            let v = self.metric(series);
            if v == want || t.elapsed() > Duration::from_secs(5) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn loadgen(s: &Server, args: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!(
        "ixn-lg-{}-{}",
        std::process::id(),
        args.join("_").len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!("{}.json", args[1]));
    let out = Command::new(env!("CARGO_BIN_EXE_ixn-loadgen"))
        .args(["--target", &s.addr.to_string(), "--threads", "1", "-q"])
        .args([
            "--registration-timeout",
            "600ms",
            "--error-disconnect-timeout",
            "300ms",
        ])
        .args(["--timer-tick", "20ms", "--slack", "400ms"])
        .args(["--json", json.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(v["error_total"], 0, "{v:#}");
    v
}

fn n(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap_or(0.0)
}

#[test]
fn churn_counts_agree() {
    let s = start();
    let v = loadgen(
        &s,
        &[
            "--scenario",
            "churn",
            "--duration",
            "1s",
            "--concurrency",
            "8",
        ],
    );
    let ok = n(&v, &["ok"]);
    assert!(ok > 100.0, "{v:#}");
    assert_eq!(s.wait("ixn_registrations_total{result=\"ok\"}", ok), ok);
    assert_eq!(
        s.wait("ixn_connections_closed_total{reason=\"peer\"}", ok),
        ok
    );
    assert!(n(&v, &["latency_us", "p99"]) > 0.0);
    assert!(n(&v, &["phases", "register", "count"]) == ok);
}

#[test]
fn hgrm_and_plot_files_are_written() {
    let s = start();
    let dir = std::env::temp_dir().join(format!("ixn-lg-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (hgrm, svg) = (dir.join("l.hgrm"), dir.join("l.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_ixn-loadgen"))
        .args([
            "--target",
            &s.addr.to_string(),
            "--threads",
            "1",
            "-q",
            "--duration",
            "1500ms",
        ])
        .arg("--hgrm")
        .arg(&hgrm)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let h = std::fs::read_to_string(&hgrm).unwrap();
    assert!(h.contains("Percentile") && h.contains("#[Max"), "{h}");
    let last = h
        .lines()
        .rev()
        .find(|l| l.contains("1.000000000000"))
        .expect("100th percentile row");
    assert!(last.split_whitespace().count() >= 3);
    let p = std::fs::read_to_string(&svg).unwrap();
    assert!(
        p.starts_with("<svg") && p.contains("polyline"),
        "an SVG with lines"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn open_loop_rate_counts_agree() {
    let s = start();
    let v = loadgen(
        &s,
        &["--scenario", "churn", "--duration", "1s", "--rate", "500"],
    );
    let ok = n(&v, &["ok"]);
    assert!(
        (400.0..=600.0).contains(&ok),
        "about 500 at 500/s for 1 s: {ok}"
    );
    assert_eq!(v["mode"], "open");
    assert_eq!(s.wait("ixn_registrations_total{result=\"ok\"}", ok), ok);
}

#[test]
fn stages_follow_the_rate_profile() {
    let s = start();
    // 0 -> 200/s over 1 s (100 arrivals), then 200 -> 400/s over 1 s (300 more).
    let v = loadgen(
        &s,
        &[
            "--scenario",
            "churn",
            "--stages",
            "1s:200/s,1s:400/s",
            "--warmup",
            "0s",
        ],
    );
    let ok = n(&v, &["ok"]);
    assert!((380.0..=420.0).contains(&ok), "about 400: {ok}");
    assert_eq!(v["mode"], "open");
    assert_eq!(n(&v, &["target_rate"]), 400.0);
    // Three times the first second's arrivals in the second (100 then 300).
    let series = v["series"].as_array().expect("series");
    let first: f64 = series
        .iter()
        .take(1)
        .map(|x| x["ok"].as_f64().unwrap())
        .sum();
    assert!(
        first < 160.0,
        "the ramp starts slow: {first} in the first second"
    );
    assert_eq!(s.wait("ixn_registrations_total{result=\"ok\"}", ok), ok);
}

#[test]
fn silent_counts_and_deadline_windows_agree() {
    let s = start();
    let v = loadgen(
        &s,
        &[
            "--scenario",
            "silent",
            "--duration",
            "1s",
            "--concurrency",
            "20",
        ],
    );
    let ok = n(&v, &["ok"]);
    assert!(ok >= 20.0);
    assert_eq!(n(&v, &["silent", "within"]), ok);
    assert_eq!(n(&v, &["silent", "before"]), 0.0);
    assert_eq!(
        s.wait("ixn_timer_expired_total{timer=\"registration\"}", ok),
        ok
    );
    assert_eq!(
        s.wait(
            "ixn_connections_closed_total{reason=\"registration_timeout\"}",
            ok
        ),
        ok
    );
}

#[test]
fn invalid_counts_agree_by_error_code() {
    let s = start();
    let v = loadgen(
        &s,
        &[
            "--scenario",
            "invalid",
            "--duration",
            "1s",
            "--concurrency",
            "10",
        ],
    );
    let case = |c: &str| n(&v, &["invalid_cases", c]);
    let total = n(&v, &["ok"]);
    assert!(total >= 10.0);
    assert_eq!(n(&v, &["invalid", "within"]), total);
    let code =
        |c: i32, name: &str| format!("ixn_errors_sent_total{{code=\"{c}\",name=\"{name}\"}}");
    let want2 = case("unknown_client") + case("first_one_then_the_other");
    assert_eq!(s.wait(&code(2, "UnknownClient"), want2), want2);
    let want3 = case("undefined_client_type");
    assert_eq!(s.wait(&code(3, "ClientTypeNotAllowed"), want3), want3);
    let want4 = case("wrong_credential");
    assert_eq!(s.wait(&code(4, "AuthenticationFailed"), want4), want4);
    let want1 = case("other_message_first") + case("first_one_then_the_other");
    assert_eq!(s.wait(&code(1, "ClientNotRegistered"), want1), want1);
    assert_eq!(
        s.wait(
            "ixn_connections_closed_total{reason=\"error_timeout\"}",
            total
        ),
        total
    );
}

#[test]
fn hold_counts_agree() {
    let s = start();
    // Registered clients outlive the server's registration deadline (600 ms) while held.
    let v = loadgen(
        &s,
        &[
            "--scenario",
            "hold",
            "--connections",
            "300",
            "--connect-rate",
            "3000",
            "--duration",
            "1500ms",
            // Held longer than the I/O timeout: holding is not an I/O wait.
            "--io-timeout",
            "500ms",
        ],
    );
    assert_eq!(n(&v, &["ok"]), 300.0);
    assert_eq!(
        s.wait("ixn_registrations_total{result=\"ok\"}", 300.0),
        300.0
    );
    assert_eq!(
        s.wait("ixn_connections_active", 0.0),
        0.0,
        "released at the end"
    );
}

#[test]
fn mix_counts_agree_by_kind() {
    let s = start();
    let v = loadgen(
        &s,
        &[
            "--scenario",
            "mix",
            "--mix",
            "churn=80,invalid=10,silent=10",
            "--duration",
            "1s",
            "--concurrency",
            "16",
        ],
    );
    let kind = |k: &str| n(&v, &["ok_by_kind", k]);
    assert!(
        kind("churn") > 0.0 && kind("invalid") > 0.0 && kind("silent") > 0.0,
        "{v:#}"
    );
    assert_eq!(
        s.wait("ixn_registrations_total{result=\"ok\"}", kind("churn")),
        kind("churn")
    );
    assert_eq!(
        s.wait(
            "ixn_timer_expired_total{timer=\"registration\"}",
            kind("silent")
        ),
        kind("silent")
    );
    assert_eq!(
        s.wait(
            "ixn_connections_closed_total{reason=\"error_timeout\"}",
            kind("invalid")
        ),
        kind("invalid")
    );
}

#[test]
fn thresholds_fail_the_run_and_errors_are_counted() {
    // Nothing listens on this port: every connect fails, the error-rate threshold trips.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_ixn-loadgen"))
        .args([
            "--target",
            &format!("127.0.0.1:{port}"),
            "--threads",
            "1",
            "-q",
        ])
        .args([
            "--duration",
            "300ms",
            "--concurrency",
            "2",
            "--max-error-rate",
            "0.01",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("connect_failed"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("threshold missed"));
}

#[test]
fn open_loop_against_a_stalled_server_accounts_for_every_start() {
    // A server that accepts and never answers: every open-loop start stays in flight until
    // --io-timeout, and the run must wait for all of them and count each exactly once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            held.len()
        })
    };
    let dir = std::env::temp_dir().join(format!("ixn-lg-stalled-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("stalled.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ixn-loadgen"))
        .args(["--target", &addr.to_string(), "--threads", "1", "-q"])
        .args(["--duration", "1s", "--warmup", "0s", "--rate", "400"])
        .args(["--io-timeout", "500ms", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    // Let the acceptor take the last connections from the backlog.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let accepted = acceptor.join().unwrap() as f64;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(n(&v, &["ok"]), 0.0, "{v:#}");
    assert!(
        (380.0..=420.0).contains(&accepted),
        "about 400 starts: {accepted}"
    );
    assert_eq!(n(&v, &["errors", "timeout"]), accepted, "{v:#}");
    assert_eq!(n(&v, &["error_total"]), accepted, "{v:#}");
}

#[test]
fn storm_moves_every_client_to_the_other_instance_after_the_drain() {
    // A drains as a lame duck, spreading EventError 11 over 500 ms; B takes them all.
    let mut a = start_with(&["--lame-duck-duration", "500ms"]);
    let b = start();
    let pid = a.child.id().to_string();
    let v = loadgen(
        &a,
        &[
            "--scenario",
            "storm",
            "--connections",
            "200",
            "--connect-rate",
            "4000",
            "--reconnect-targets",
            &b.addr.to_string(),
            "--drain-pid",
            &pid,
            "--duration",
            "20s",
            "--backoff",
            "20ms",
        ],
    );
    let storm = &v["storm"];
    assert_eq!(n(storm, &["registered_initially"]), 200.0, "{v:#}");
    assert_eq!(n(storm, &["reregistered"]), 200.0, "{v:#}");
    assert_eq!(n(storm, &["attempts"]), 200.0, "B refused nobody: {v:#}");
    // The drain's spread shows in the time until all are back.
    let back = n(storm, &["all_back_after_s"]);
    assert!((0.35..10.0).contains(&back), "{v:#}");
    assert!(n(storm, &["peak_attempts_per_s"]) >= 1.0);
    assert_eq!(n(&v, &["ok_by_kind", "storm"]), 200.0);
    assert!(n(&v, &["latency_us", "p50"]) > 0.0);
    assert_eq!(
        b.wait("ixn_registrations_total{result=\"ok\"}", 200.0),
        200.0
    );
    let status = a.child.wait().unwrap();
    assert!(status.success(), "A exits 0 after its drain: {status:?}");
}
