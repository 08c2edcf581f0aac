//! Server-level figures: registrations per second and server CPU per registration against a
//! plain single-threaded epoll loop (mio), resident memory per idle registered connection,
//! and CPU per connection dropped in bulk by the timer wheel.
//!
//! `cargo bench --bench server` (add `-- quick` for a short run, and any of `churn`,
//! `memory`, `bulk`, `metrics`, `loadgen` to run only those parts). The server runs as a
//! separate process with one worker pinned to CPU 0; the clients run here, pinned to CPU 1.
//! Server CPU is read from `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU), so
//! the figure is the server's own cost, whatever the clients spend. Not a test: it prints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::{cpu_ns, listen_addr, rss_kib, start_ixn, Proc, ACK_LEN, RRC};

/// The baseline: the same accept/read/answer/close loop a user would write with mio (epoll),
/// single-threaded, answering every complete frame with a fixed EventAck.
fn epoll_baseline_main() {
    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let at = std::env::var("IXN_BENCH_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let mut listener = TcpListener::bind(at.parse().unwrap()).unwrap();
    eprintln!("listening on {}", listener.local_addr().unwrap());
    poll.registry()
        .register(&mut listener, Token(usize::MAX), Interest::READABLE)
        .unwrap();
    let mut ack = hex::decode("0000001600800002000101000400000007000401000400000001").unwrap();
    let mut conns: slab::Slab<(mio::net::TcpStream, Vec<u8>)> = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        poll.poll(&mut events, None).unwrap();
        for ev in &events {
            if ev.token() == Token(usize::MAX) {
                while let Ok((mut s, _)) = listener.accept() {
                    let e = conns.vacant_entry();
                    poll.registry()
                        .register(&mut s, Token(e.key()), Interest::READABLE)
                        .unwrap();
                    e.insert((s, Vec::new()));
                }
                continue;
            }
            let k = ev.token().0;
            let mut close = false;
            if let Some((s, pending)) = conns.get_mut(k) {
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(n) => {
                            pending.extend_from_slice(&buf[..n]);
                            while pending.len() >= 4 {
                                let len = u32::from_be_bytes(pending[..4].try_into().unwrap())
                                    as usize
                                    + 4;
                                if pending.len() < len {
                                    break;
                                }
                                // Echo the ReferenceId (the first attribute's value).
                                if len >= 17 {
                                    ack[13..17].copy_from_slice(&pending[13..17]);
                                }
                                pending.drain(..len);
                                let _ = s.write_all(&ack);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
            }
            if close {
                let (mut s, _) = conns.remove(k);
                let _ = poll.registry().deregister(&mut s);
            }
        }
    }
}

fn start_baseline() -> Proc {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("IXN_BENCH_EPOLL_BASELINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listen_addr(&mut child);
    // Pin the baseline to CPU 0 like the ixn worker.
    let _ = Command::new("taskset")
        .args(["-pc", "0", &child.id().to_string()])
        .stdout(Stdio::null())
        .status();
    Proc { child, addr }
}

/// connect → RequestRegisterClient → EventAck → close, from `threads` client threads on CPU 1.
fn churn(addr: SocketAddr, threads: usize, dur: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let rrc = hex::decode(RRC).unwrap();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, rrc) = (stop.clone(), done.clone(), rrc.clone());
            std::thread::spawn(move || {
                if let Some(c) = core_affinity::get_core_ids().and_then(|c| c.get(1).copied()) {
                    core_affinity::set_for_current(c);
                }
                let mut ack = [0u8; ACK_LEN];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    if s.write_all(&rrc).is_ok() && s.read_exact(&mut ack).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    // Linger 0 avoids TIME_WAIT exhausting the ports of a long run.
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        let _ = h.join();
    }
    done.load(Ordering::Relaxed)
}

fn measure_churn(name: &str, p: &Proc, threads: usize, dur: Duration) -> (f64, f64) {
    churn(p.addr, threads, Duration::from_millis(300)); // warm-up
    let pid = p.child.id();
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    let n = churn(p.addr, threads, dur);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ns(pid) - cpu0) as f64;
    let rate = n as f64 / secs;
    let us = cpu / 1000.0 / n.max(1) as f64;
    println!("{name:<34} {threads:>3} clients  {rate:>9.0} reg/s  {us:>6.2} server CPU µs/reg  ({n} in {secs:.1}s)");
    (rate, us)
}

/// The same churn with metrics on and off, alternated to spread the machine's drift.
fn metrics_cost(dur: Duration) {
    println!("# metrics on vs off (churn, 8 clients), alternating runs");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (flag, acc) in [("true", &mut on), ("false", &mut off)] {
            let p = start_ixn(&["--metrics", flag]);
            let name = format!("ixn-server --metrics {flag}");
            acc.push(measure_churn(&name, &p, 8, dur));
        }
    }
    let med = |v: &mut Vec<(f64, f64)>, i: usize| {
        let mut x: Vec<f64> = v.iter().map(|t| if i == 0 { t.0 } else { t.1 }).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (ron, roff) = (med(&mut on, 0), med(&mut off, 0));
    let (con, coff) = (med(&mut on, 1), med(&mut off, 1));
    println!(
        "  medians: rate on {ron:.0}/s off {roff:.0}/s ({:+.1}%); CPU on {con:.2} off {coff:.2} µs/reg ({:+.1}%)",
        (ron / roff - 1.0) * 100.0,
        (con / coff - 1.0) * 100.0
    );
}

/// `ixn-loadgen` (one thread, CPU 1) against the canned epoll server and against
/// ixn-server (both on CPU 0): if the canned server lets it go faster, the loadgen is not
/// what limits the measurement of ixn-server.
fn loadgen_capacity(dur: Duration) {
    let mut bin = std::env::current_exe().unwrap();
    bin.pop();
    bin.pop();
    bin.push("ixn-loadgen");
    println!("# ixn-loadgen capacity: churn --reset-close, 1 thread pinned to CPU 1, 64 in flight");
    let secs = format!("{}s", dur.as_secs());
    let run = |name: &str, p: &Proc| {
        let json = std::env::temp_dir().join(format!("ixn-lg-bench-{}.json", std::process::id()));
        let cpu0 = cpu_ns(p.child.id());
        let out = Command::new(&bin)
            .args([
                "--target",
                &p.addr.to_string(),
                "--threads",
                "1",
                "--pin",
                "--first-cpu",
                "1",
            ])
            .args([
                "--concurrency",
                "64",
                "--duration",
                &secs,
                "--warmup",
                "500ms",
                "-q",
            ])
            .arg("--reset-close")
            .arg("--json")
            .arg(&json)
            .output()
            .expect("target/release/ixn-loadgen (cargo build --release first)");
        let cpu = cpu_ns(p.child.id()) - cpu0;
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        let field = |k: &str| {
            text.split(&format!("\"{k}\": "))
                .nth(1)
                .and_then(|r| r.split([',', '\n']).next())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        println!(
            "{name:<34} {:>9.0} reg/s  errors {}  server CPU {:.0}% of one core  (exit {:?})",
            field("rate"),
            field("error_total"),
            cpu as f64 / 1e9 / (dur.as_secs_f64() + 0.5) * 100.0,
            out.status.code()
        );
    };
    let base = start_baseline();
    run("loadgen -> canned epoll server", &base);
    drop(base);
    let ixn = start_ixn(&[]);
    run("loadgen -> ixn-server (1 worker)", &ixn);
}

fn idle_memory(n: usize) {
    let p = start_ixn(&["--registration-timeout", "120s"]);
    let pid = p.child.id();
    let rrc = hex::decode(RRC).unwrap();
    // Warm the allocator with one round first, so the figure is the steady state.
    let warm: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(p.addr).unwrap())
        .collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let mut held = Vec::with_capacity(n);
    let mut ack = [0u8; ACK_LEN];
    for _ in 0..n {
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(&rrc).unwrap();
        s.read_exact(&mut ack).unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    println!(
        "idle registered connections: {n}, server RSS {before} KiB -> {after} KiB: {:.0} bytes per connection",
        (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
    );
}

fn bulk_drop(n: usize) {
    let p = start_ixn(&["--registration-timeout", "4s"]);
    let pid = p.child.id();
    let t0 = Instant::now();
    let mut held: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(p.addr).unwrap())
        .collect();
    let opened = t0.elapsed();
    assert!(
        opened < Duration::from_millis(3500),
        "connects too slow for the measurement"
    );
    // Idle until just before the deadline, then measure the drop.
    std::thread::sleep(Duration::from_millis(3800).saturating_sub(t0.elapsed()));
    let cpu0 = cpu_ns(pid);
    let idle0 = Instant::now();
    let mut b = [0u8; 1];
    let mut latest = Duration::ZERO;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read(&mut b);
        latest = t0.elapsed();
    }
    let cpu = cpu_ns(pid) - cpu0;
    println!(
        "bulk drop: {n} silent connections dropped by {:.0} ms after the first connect (deadline 4000 ms + opening {:.0} ms); server CPU {:.2} µs per dropped connection ({:.1} ms in {:.0} ms)",
        latest.as_secs_f64() * 1000.0,
        opened.as_secs_f64() * 1000.0,
        cpu as f64 / 1000.0 / n as f64,
        cpu as f64 / 1e6,
        idle0.elapsed().as_secs_f64() * 1000.0
    );
}

fn main() {
    if std::env::var_os("IXN_BENCH_EPOLL_BASELINE").is_some() {
        epoll_baseline_main();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // Run by `cargo test --all-targets` (no `--bench` flag): a smoke run that keeps the
        // harness honest without timing anything.
        for p in [start_baseline(), start_ixn(&[])] {
            let n = churn(p.addr, 2, Duration::from_millis(200));
            assert!(n > 0, "no registration completed");
        }
        println!("server bench smoke run: ok (use `cargo bench --bench server` to measure)");
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    // Optional filters: `churn`, `memory`, `bulk` (default: all).
    let only: Vec<&str> = ["churn", "memory", "bulk", "metrics", "loadgen"]
        .into_iter()
        .filter(|f| args.iter().any(|a| a == f))
        .collect();
    let run = |f: &str| only.is_empty() || only.contains(&f);
    let dur = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    if run("churn") {
        println!("# registration churn: connect -> RequestRegisterClient -> EventAck -> close");
    }
    for threads in [4, 16].into_iter().filter(|_| run("churn")) {
        let base = start_baseline();
        let (br, bus) = measure_churn("epoll baseline (mio, 1 thread)", &base, threads, dur);
        drop(base);
        let coop = start_ixn(&["--ring-setup", "coop-taskrun"]);
        let (cr, cus) = measure_churn("ixn-server, ring COOP_TASKRUN", &coop, threads, dur);
        drop(coop);
        let plain = start_ixn(&["--ring-setup", "plain"]);
        let (pr, pus) = measure_churn("ixn-server, ring without flags", &plain, threads, dur);
        drop(plain);
        println!(
            "  ratios to baseline: COOP_TASKRUN rate {:.2}x cpu {:.2}x; plain ring rate {:.2}x cpu {:.2}x",
            cr / br,
            cus / bus,
            pr / br,
            pus / bus
        );
    }
    if run("metrics") {
        metrics_cost(dur);
    }
    if run("loadgen") {
        loadgen_capacity(dur);
    }
    if run("memory") {
        idle_memory(if quick { 2000 } else { 10_000 });
    }
    if run("bulk") {
        bulk_drop(if quick { 2000 } else { 10_000 });
    }
}
