//! What the fleet (docs/PROTOCOL.md §13) costs a registration, each figure beside its
//! baseline in the same run: churn (`ixn-loadgen`, closed loop, one thread on CPU 1) against
//! one server worker on CPU 0, with Redis on CPU 1, for
//!
//! * names under `reject`, no fleet (the process's own table): the baseline;
//! * names under `reject` through the fleet (every registration a claim in Redis, every
//!   close its release);
//! * names under `allow`, no fleet, and the same with `--fleet-redis` (which must cost
//!   nothing: `allow` never touches Redis).
//!
//! Reported: server CPU per registration and its ratio, registration p99 and its ratio,
//! Redis's own CPU per registration (a claim and its release), and Redis's reads per
//! registration (`INFO stats` `total_reads_processed`): below one, round trips are shared.
//!
//! `cargo bench --bench fleet [-- quick]`; without `--bench` (as `cargo test` runs it) a
//! smoke run checks that fleet registrations complete without error.

#[path = "common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_ns, start_ixn, Proc};

/// Names in the registry, per policy: far above the registrations in flight, so a name is
/// released long before the loadgen comes back to it.
const NAMES: usize = 4096;

struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_redis() -> Redis {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new("taskset")
        .args(["-c", "1", "redis-server", "--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let r = Redis { child, port };
    let t0 = Instant::now();
    while r.cli(&["PING"]).trim() != "PONG" {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    r
}

impl Redis {
    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn stat(&self, key: &str) -> f64 {
        self.cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn registry() -> std::path::PathBuf {
    let mut text = String::new();
    for i in 0..NAMES {
        text.push_str(&format!(
            "[[client]]\nname = \"Rej{i}\"\ntypes = [\"MediaServer\"]\non_duplicate = \"reject\"\n\
             [[client]]\nname = \"All{i}\"\ntypes = [\"MediaServer\"]\n"
        ));
    }
    let p = std::env::temp_dir().join(format!("ixn-fleet-bench-{}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

fn loadgen_bin() -> std::path::PathBuf {
    let mut bin = std::env::current_exe().unwrap();
    bin.pop();
    bin.pop();
    bin.push("ixn-loadgen");
    bin
}

/// One churn run: (registrations, errors, server CPU µs per registration, register p99 µs).
fn churn(p: &Proc, prefix: &str, dur: Duration, concurrency: usize) -> (f64, f64, f64, f64) {
    let json = std::env::temp_dir().join(format!("ixn-fleet-bench-{}.json", std::process::id()));
    let pid = p.child.id();
    let cpu0 = cpu_ns(pid);
    let out = Command::new(loadgen_bin())
        .args(["--target", &p.addr.to_string(), "--scenario", "churn"])
        .args([
            "--threads",
            "1",
            "--pin",
            "--first-cpu",
            "1",
            "--reset-close",
            "-q",
        ])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--duration", &format!("{}ms", dur.as_millis())])
        .args([
            "--client-name",
            prefix,
            "--client-names",
            &NAMES.to_string(),
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("ixn-loadgen (cargo build --release first)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cpu = (cpu_ns(pid) - cpu0) as f64;
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ok = v["ok"].as_f64().unwrap_or(0.0);
    let errors = v["error_total"].as_f64().unwrap_or(0.0);
    let p99 = v["phases"]["register"]["p99"].as_f64().unwrap_or(0.0);
    (ok, errors, cpu / 1000.0 / ok.max(1.0), p99)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !redis_available() {
        assert!(
            std::env::var_os("IXN_REQUIRE_REDIS").is_none(),
            "redis-server is not installed (scripts/test installs it)"
        );
        println!("fleet bench: SKIPPED (redis-server is not installed)");
        return;
    }
    let reg = registry();
    let reg = reg.to_str().unwrap();
    let redis = start_redis();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let plain = || start_ixn(&["--registry", reg]);
    let fleet = || start_ixn(&["--registry", reg, "--fleet-redis", &url]);
    if !args.iter().any(|a| a == "--bench") {
        let p = fleet();
        // The fleet thread connects in the background: give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        let (ok, errors, _, _) = churn(&p, "Rej", Duration::from_millis(500), 4);
        assert!(
            ok > 0.0 && errors == 0.0,
            "fleet churn: {ok} ok, {errors} errors"
        );
        println!("fleet bench smoke run: ok ({ok} registrations through Redis)");
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let (dur, rounds) = if quick {
        (Duration::from_secs(2), 1)
    } else {
        (Duration::from_secs(5), 3)
    };
    // `-- inflight=N` (default 64): registrations in flight.
    let concurrency = args
        .iter()
        .find_map(|a| a.strip_prefix("inflight=")?.parse().ok())
        .unwrap_or(64);
    println!(
        "# fleet churn: 1 server worker (CPU 0), Redis and ixn-loadgen (CPU 1), {concurrency} in flight, {}s x {rounds}",
        dur.as_secs()
    );
    type Start<'a> = &'a dyn Fn() -> Proc;
    let cases: [(&str, Start, &str, bool); 4] = [
        ("reject, no fleet", &plain, "Rej", false),
        ("reject, fleet", &fleet, "Rej", true),
        ("allow, no fleet", &plain, "All", false),
        ("allow, fleet", &fleet, "All", true),
    ];
    let mut cpu = vec![Vec::new(); cases.len()];
    let mut p99 = vec![Vec::new(); cases.len()];
    let mut redis_cpu = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..rounds {
        for (i, (name, start, prefix, in_fleet)) in cases.iter().enumerate() {
            let p = start();
            if *in_fleet {
                std::thread::sleep(Duration::from_millis(500));
            }
            let _ = churn(&p, prefix, Duration::from_millis(300), concurrency); // warm-up
            let (rcpu0, reads0) = (
                cpu_ns(redis.child.id()),
                redis.stat("total_reads_processed"),
            );
            let (ok, errors, us, lat) = churn(&p, prefix, dur, concurrency);
            let rcpu = (cpu_ns(redis.child.id()) - rcpu0) as f64 / 1000.0 / ok.max(1.0);
            let r = (redis.stat("total_reads_processed") - reads0) / ok.max(1.0);
            println!(
                "  {name:<18} {ok:>8.0} reg ({errors:.0} errors)  server {us:>6.2} µs/reg  register p99 {lat:>5.0} µs  Redis {rcpu:>5.2} µs/reg, {r:.3} reads/reg"
            );
            assert_eq!(errors, 0.0, "{name}: registrations failed");
            cpu[i].push(us);
            p99[i].push(lat);
            if i == 1 {
                redis_cpu.push(rcpu);
                reads.push(r);
            }
        }
    }
    let cpu: Vec<f64> = cpu.into_iter().map(median).collect();
    let p99: Vec<f64> = p99.into_iter().map(median).collect();
    println!("  medians of {rounds}:");
    println!(
        "    reject through the fleet: server CPU {:.2}x, register p99 {:.2}x the same churn without a fleet",
        cpu[1] / cpu[0],
        p99[1] / p99[0]
    );
    println!(
        "    Redis: {:.2} µs of its CPU and {:.3} reads per registration (a claim and its release)",
        median(redis_cpu),
        median(reads)
    );
    println!(
        "    allow with --fleet-redis: server CPU {:.2}x, register p99 {:.2}x allow without",
        cpu[3] / cpu[2],
        p99[3] / p99[2]
    );
}
