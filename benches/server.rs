//! Server-level figures: registrations per second and server CPU per registration against a
//! plain single-threaded epoll loop (mio), resident memory per idle registered connection,
//! and CPU per connection dropped in bulk by the timer wheel.
//!
//! Over 600 lines on purpose: each figure is measured beside its baseline in the same
//! run, so the baselines live with the benchmarks.
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
#[path = "common/epoll_client.rs"]
mod epoll_client;
#[path = "common/tls_bench.rs"]
mod tls_bench;
#[path = "common/uring_baseline.rs"]
mod uring_baseline;
use common::{cpu_ns, listen_addr, rss_kib, softirqd_ns, start_ixn, Proc, ACK_LEN, RRC};

/// The baseline: the same accept/read/answer/close loop a user would write with mio (epoll),
/// single-threaded, answering every complete frame with a fixed EventAck. It listens on
/// `IXN_BENCH_LISTEN` when set (to run it by hand, e.g. inside a network namespace).
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
    start_child_baseline("IXN_BENCH_EPOLL_BASELINE")
}

/// The raw io_uring yardstick (benches/common/uring_baseline.rs), pinned like the others.
fn start_uring_baseline() -> Proc {
    start_child_baseline("IXN_BENCH_URING_BASELINE")
}

fn start_child_baseline(var: &str) -> Proc {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(var, "1")
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
/// what limits the measurement of ixn-server. With `perf` at hand, a system-wide profile
/// of each run is also split the way two hosts would pay for it (see [`two_host_split`]).
fn loadgen_capacity(dur: Duration) {
    let mut bin = std::env::current_exe().unwrap();
    bin.pop();
    bin.pop();
    bin.push("ixn-loadgen");
    println!("# ixn-loadgen capacity: churn --reset-close, 1 thread pinned to CPU 1, 64 in flight");
    let perf = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !perf {
        println!("  (perf not found: no two-host split; install linux-perf for it)");
    }
    let secs = format!("{}s", dur.as_secs());
    let run = |name: &str, p: &Proc| {
        let tmp = std::env::temp_dir();
        let json = tmp.join(format!("ixn-lg-bench-{}.json", std::process::id()));
        let data = tmp.join(format!("ixn-lg-bench-{}.perf", std::process::id()));
        let cpu0 = cpu_ns(p.child.id());
        let stat0 = cpu_busy();
        let mut lg = Command::new(&bin)
            .args(["--target", &p.addr.to_string(), "--threads", "1"])
            .args(["--pin", "--first-cpu", "1", "--concurrency", "64"])
            .args([
                "--duration",
                &secs,
                "--warmup",
                "500ms",
                "-q",
                "--reset-close",
            ])
            .arg("--json")
            .arg(&json)
            .stdout(Stdio::null())
            .spawn()
            .expect("target/release/ixn-loadgen (cargo build --release first)");
        // Profile a window inside the measured part of the run (warm-up 0.5 s, then `dur`).
        let window = dur.as_secs_f64() - 1.0;
        let profile = (perf && window >= 1.0).then(|| {
            std::thread::sleep(Duration::from_secs(1));
            Command::new("perf")
                .args(["record", "-a", "-g", "-e", "cpu-clock", "-F", "2000", "-o"])
                .arg(&data)
                .args(["--", "sleep", &format!("{window}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        });
        let status = lg.wait().unwrap();
        let cpu = cpu_ns(p.child.id()) - cpu0;
        let busy: Vec<f64> = cpu_busy()
            .iter()
            .zip(&stat0)
            .map(|(b, a)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64 * 100.0)
            .collect();
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        let field = |k: &str| json_number(&text, k);
        let rate = field("rate");
        println!(
            "{name:<34} {rate:>9.0} reg/s  errors {}  server process {:.0}% of a core; CPU 0 busy {:.0}%, CPU 1 busy {:.0}%  (exit {:?})",
            field("error_total"),
            cpu as f64 / 1e9 / (dur.as_secs_f64() + 0.5) * 100.0,
            busy.first().copied().unwrap_or(0.0),
            busy.get(1).copied().unwrap_or(0.0),
            status.code()
        );
        if profile.is_some_and(|r| r.is_ok_and(|s| s.success())) {
            match two_host_split(&data, 2000.0, rate * window) {
                Some(s) => println!(
                    "  two-host split: loadgen {:.1} µs/reg (here {:.1}), server {:.1} µs/reg (here {:.1}); \
                     per core the loadgen is {:.2}x the server; unrelated work {:.1}%",
                    s.client_us,
                    s.client_here_us,
                    s.server_us,
                    s.server_here_us,
                    s.server_us / s.client_us,
                    s.unrelated_pct
                ),
                None => println!("  two-host split: no usable profile"),
            }
        }
        let _ = std::fs::remove_file(&data);
    };
    let base = start_baseline();
    run("loadgen -> canned epoll server", &base);
    drop(base);
    let ixn = start_ixn(&[]);
    run("loadgen -> ixn-server (1 worker)", &ixn);
}

/// The first top-level number named `key` in the loadgen's JSON summary (0 if absent).
fn json_number(text: &str, key: &str) -> f64 {
    text.split(&format!("\"{key}\": "))
        .nth(1)
        .and_then(|r| r.split([',', '\n']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// CPU (user + system) of this process's reaped children, in nanoseconds.
fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// Sockets in TIME_WAIT on this machine (`/proc/net/sockstat`).
fn time_wait() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("TCP:"))?.to_string();
            let mut it = l.split_whitespace();
            it.position(|w| w == "tw")?;
            it.next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Client CPU per registration: `ixn-loadgen` with its defaults (one thread, 64 in flight,
/// graceful close, 16 loopback sources) against the minimal mio client from the same
/// sources (benches/common/epoll_client.rs), alternating, both on CPU 1 against the epoll
/// baseline server on CPU 0. The first round starts with whatever TIME_WAIT the runs
/// before left; each run adds ~100k entries, so later rounds run against a full table.
fn loadgen_against_client(dur: Duration, rounds: usize) {
    let mut bin = std::env::current_exe().unwrap();
    bin.pop();
    bin.pop();
    bin.push("ixn-loadgen");
    println!("# client CPU per registration: ixn-loadgen (defaults) against a minimal mio client, graceful close, 64 in flight");
    let server = start_baseline();
    let secs = dur.as_secs_f64();
    let json = std::env::temp_dir().join(format!("ixn-lg-client-{}.json", std::process::id()));
    let (mut lg, mut mc) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let tw = time_wait();
        let c0 = children_cpu_ns();
        let out = Command::new("taskset")
            .args(["-c", "1"])
            .arg(std::env::current_exe().unwrap())
            .env("IXN_BENCH_EPOLL_CLIENT", server.addr.to_string())
            .env("IXN_BENCH_CLIENT_SECS", secs.to_string())
            .output()
            .unwrap();
        let n: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("done ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let us = (children_cpu_ns() - c0) as f64 / 1000.0 / n.max(1.0);
        println!("  minimal mio client   {:>9.0} reg/s  {us:>6.2} client CPU µs/reg  (TIME_WAIT before: {tw})", n / secs);
        mc.push(us);
        let tw = time_wait();
        let c0 = children_cpu_ns();
        let status = Command::new(&bin)
            .args(["--target", &server.addr.to_string(), "--threads", "1"])
            .args(["--pin", "--first-cpu", "1", "--concurrency", "64"])
            .args(["--duration", &format!("{secs}s"), "--warmup", "0s", "-q"])
            .arg("--json")
            .arg(&json)
            .stdout(Stdio::null())
            .status()
            .expect("target/release/ixn-loadgen (cargo build --release first)");
        let ok = json_number(&std::fs::read_to_string(&json).unwrap_or_default(), "ok");
        let us = (children_cpu_ns() - c0) as f64 / 1000.0 / ok.max(1.0);
        println!("  ixn-loadgen          {:>9.0} reg/s  {us:>6.2} client CPU µs/reg  (TIME_WAIT before: {tw}; exit {:?})", ok / secs, status.code());
        lg.push(us);
    }
    let _ = std::fs::remove_file(&json);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (l, m) = (med(&mut lg), med(&mut mc));
    println!(
        "  medians: ixn-loadgen {l:.2} µs/reg, minimal client {m:.2} µs/reg: {:.2}x",
        l / m
    );
}

/// Busy and total jiffies of each CPU, from /proc/stat (softirq and irq time included).
fn cpu_busy() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
            (busy, busy + v[3] + v[4])
        })
        .collect()
}

/// CPU per registration of each side as two hosts would pay it.
struct Split {
    client_us: f64,
    server_us: f64,
    /// As measured on this host: each CPU's own work.
    client_here_us: f64,
    server_here_us: f64,
    /// Samples of other programs on the two CPUs, in percent of all non-idle samples.
    unrelated_pct: f64,
}

/// Functions that only run for a listening socket or one of its half-open children.
const SERVER_SIDE: [&str; 6] = [
    "tcp_conn_request",
    "tcp_check_req",
    "tcp_v4_syn_recv_sock",
    "tcp_child_process",
    "inet_csk_complete_hashdance",
    "tcp_create_openreq_child",
];

/// Splits a system-wide `perf record -g` profile of a loopback run (server on CPU 0,
/// loadgen on CPU 1) the way two hosts would pay for it.
///
/// On loopback a packet is received in the *sender's* context: the loadgen's `connect(2)`
/// runs the server's SYN handling and the creation of its accepted socket, its `write`
/// runs the server's receive of the request, and the server's `write` runs the client's
/// receive of the EventAck. On two hosts each receives its own packets. So each sample of
/// packet receive (`__netif_receive_skb*`) is charged to the receiving side: the server
/// for listener and half-open handling, the client for SYN-ACK handling
/// (`tcp_rcv_synsent_state_process`), otherwise the side that did not send it (the other
/// CPU's side). All other samples stay with their CPU. The pure ACKs the kernel sends from
/// inside receive processing (one each way per registration) land on the wrong side, and
/// offset each other. Idle time and `perf` itself are
/// left out; NIC interrupt costs, which two real hosts would add to both sides, are not
/// modelled.
fn two_host_split(data: &std::path::Path, hz: f64, regs: f64) -> Option<Split> {
    let out = Command::new("perf")
        .args(["script", "-F", "comm,cpu,ip,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    split_samples(&String::from_utf8_lossy(&out.stdout), hz, regs)
}

/// The classification behind [`two_host_split`], over `perf script -F comm,cpu,ip,sym` text.
fn split_samples(text: &str, hz: f64, regs: f64) -> Option<Split> {
    // [cpu][charged to: 0 = server, 1 = client]
    let mut charged = [[0u64; 2]; 2];
    let (mut related, mut unrelated) = (0u64, 0u64);
    for sample in text.split("\n\n") {
        let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(head) = lines.next() else { continue };
        let Some((comm, cpu)) = head.rsplit_once('[').and_then(|(c, rest)| {
            let cpu: usize = rest.split(']').next()?.trim().parse().ok()?;
            Some((c.trim(), cpu))
        }) else {
            continue;
        };
        if cpu > 1 {
            continue;
        }
        let frames: Vec<&str> = lines.filter_map(|l| l.split_whitespace().nth(1)).collect();
        let has = |f: &str| frames.contains(&f);
        let rx = frames.iter().any(|f| f.starts_with("__netif_receive_skb"));
        if comm.starts_with("perf") || (comm.starts_with("swapper") && !rx) {
            continue;
        }
        let ours = comm.starts_with("ixn-")
            || comm.starts_with("server-")
            || comm.starts_with("ksoftirqd")
            || comm.starts_with("rcu")
            || comm.starts_with("swapper");
        if !ours {
            unrelated += 1;
            continue;
        }
        related += 1;
        let side = if !rx {
            cpu
        } else if SERVER_SIDE.iter().any(|f| has(f)) {
            0
        } else if has("tcp_rcv_synsent_state_process") {
            1
        } else {
            1 - cpu
        };
        charged[cpu][side] += 1;
    }
    if related == 0 || regs <= 0.0 {
        return None;
    }
    let us = |n: u64| n as f64 / hz / regs * 1e6;
    Some(Split {
        client_us: us(charged[0][1] + charged[1][1]),
        server_us: us(charged[0][0] + charged[1][0]),
        client_here_us: us(charged[1][0] + charged[1][1]),
        server_here_us: us(charged[0][0] + charged[0][1]),
        unrelated_pct: unrelated as f64 * 100.0 / (related + unrelated) as f64,
    })
}

/// The two-host split on a hand-made profile: each receive sample lands on the side that
/// receives the packet, everything else stays with its CPU, idle and perf are left out.
fn check_split() {
    let sample = |comm: &str, cpu: usize, frames: &[&str]| {
        let mut s = format!("{comm} [{cpu:03}] \n");
        for f in frames {
            s.push_str(&format!("\tffffffff81000000 {f}\n"));
        }
        s + "\n"
    };
    let rx = "__netif_receive_skb_one_core";
    let text = [
        // Loadgen CPU: own work, the server's SYN, the client's SYN-ACK, the server's
        // receive of the request and of the reset.
        sample("ixn-loadgen-0", 1, &["__sys_socket"]),
        sample(
            "ixn-loadgen-0",
            1,
            &["tcp_conn_request", "tcp_v4_rcv", rx, "__sys_connect"],
        ),
        sample(
            "ixn-loadgen-0",
            1,
            &["tcp_rcv_synsent_state_process", rx, "__sys_connect"],
        ),
        sample("ixn-loadgen-0", 1, &["tcp_rcv_established", rx, "io_write"]),
        sample("ixn-loadgen-0", 1, &["tcp_reset", rx, "__x64_sys_close"]),
        // Server CPU: own work, the client's receive of the EventAck, idle, the profiler.
        sample("ixn-worker-0", 0, &["__sys_accept4"]),
        sample("ixn-worker-0", 0, &["tcp_rcv_established", rx, "io_write"]),
        sample("swapper", 0, &["pv_native_safe_halt", "do_idle"]),
        sample("perf", 0, &["__x64_sys_read"]),
        sample("cc1", 1, &["main"]),
    ]
    .concat();
    // 1 sample = 1 µs per registration at hz = 1e6, regs = 1.
    let s = split_samples(&text, 1e6, 1.0).expect("a split");
    assert_eq!((s.client_us, s.server_us), (3.0, 4.0), "two-host split");
    assert_eq!((s.client_here_us, s.server_here_us), (5.0, 2.0));
    assert!((s.unrelated_pct - 100.0 / 8.0).abs() < 1e-9);
}

fn idle_memory(n: usize, engine: &str) {
    let p = start_ixn(&["--registration-timeout", "120s", "--engine", engine]);
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
        "idle registered connections ({engine}): {n}, server RSS {before} KiB -> {after} KiB: {:.0} bytes per connection",
        (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
    );
}

/// The bulk-drop baseline: a plain epoll loop (mio) that accepts, watches every
/// connection, and closes each silent one `IXN_BENCH_DEADLINE_MS` after its accept, with
/// the same 100 ms tick as the server. Equal timeouts make a FIFO the ideal timer: this is
/// the least a hand-written loop must do to drop silent connections at a deadline.
fn epoll_bulk_baseline_main() {
    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll, Token};
    let deadline = Duration::from_millis(
        std::env::var("IXN_BENCH_DEADLINE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4000),
    );
    let mut poll = Poll::new().unwrap();
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    eprintln!("listening on {}", listener.local_addr().unwrap());
    poll.registry()
        .register(&mut listener, Token(usize::MAX), Interest::READABLE)
        .unwrap();
    let mut conns: slab::Slab<mio::net::TcpStream> = slab::Slab::new();
    let mut fifo: std::collections::VecDeque<(Instant, usize)> = Default::default();
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in &events {
            if ev.token() == Token(usize::MAX) {
                while let Ok((mut s, _)) = listener.accept() {
                    let e = conns.vacant_entry();
                    poll.registry()
                        .register(&mut s, Token(e.key()), Interest::READABLE)
                        .unwrap();
                    fifo.push_back((Instant::now() + deadline, e.key()));
                    e.insert(s);
                }
            }
        }
        let now = Instant::now();
        while let Some(&(at, k)) = fifo.front() {
            if at > now {
                break;
            }
            fifo.pop_front();
            // close(2) alone: the kernel removes a closed descriptor from the epoll set.
            drop(conns.try_remove(k));
        }
    }
}

/// Opens `n` silent connections to `p`, waits for the server to drop them at its 4 s
/// deadline, and returns the CPU each drop cost, the last close after the first connect
/// and the time to open them. Every close is watched (a pass of non-blocking
/// peeks over the sockets, on this thread's own core), and one seen in a pass that ended
/// before its connection's deadline (4 s after its connect began, earlier than the
/// server's accept) fails the benchmark: the timer wheel may close late, never early.
fn measure_bulk(p: &Proc, n: usize) -> Bulk {
    let pid = p.child.id();
    let deadline = Duration::from_millis(4000);
    let t0 = Instant::now();
    let mut began = Vec::with_capacity(n);
    let held: Vec<TcpStream> = (0..n)
        .map(|_| {
            began.push(t0.elapsed());
            TcpStream::connect(p.addr).unwrap()
        })
        .collect();
    let opened = t0.elapsed();
    assert!(
        opened < Duration::from_millis(3500),
        "connects too slow for the measurement: {opened:?}"
    );
    // Idle until just before the deadline, then measure the drop.
    std::thread::sleep(Duration::from_millis(3800).saturating_sub(t0.elapsed()));
    for s in &held {
        s.set_nonblocking(true).unwrap();
    }
    let cpu0 = cpu_ns(pid);
    let soft0 = softirqd_ns();
    let mut b = [0u8; 1];
    let mut open: Vec<usize> = (0..n).collect();
    let (mut latest, mut early) = (Duration::ZERO, 0usize);
    while !open.is_empty() && t0.elapsed() < Duration::from_secs(20) {
        let mut seen = Vec::new();
        open.retain(|&i| match held[i].peek(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            _ => {
                seen.push(i);
                false
            }
        });
        let pass_end = t0.elapsed();
        for i in seen {
            latest = pass_end;
            if pass_end < began[i] + deadline {
                early += 1;
            }
        }
    }
    let cpu = cpu_ns(pid) - cpu0;
    let soft = softirqd_ns().saturating_sub(soft0);
    assert!(open.is_empty(), "{} connections never dropped", open.len());
    assert_eq!(early, 0, "connections closed before their deadline");
    Bulk {
        process_us: cpu as f64 / 1000.0 / n as f64,
        with_softirqd_us: (cpu + soft) as f64 / 1000.0 / n as f64,
        latest,
        opened,
    }
}

/// One bulk drop's figures, per dropped connection.
struct Bulk {
    /// The server process's own CPU time.
    process_us: f64,
    /// With the softirq work its closes left to `ksoftirqd` (the client only watches, so
    /// every packet is the server's): 0 to 3 µs per connection, from round to round and
    /// server to server, which the process's own time does not show.
    with_softirqd_us: f64,
    latest: Duration,
    opened: Duration,
}

/// Bulk drop against the epoll FIFO baseline and both engines, alternating over `rounds`,
/// then the median CPU per dropped connection of each.
fn bulk_drop(n: usize, rounds: usize) {
    type Start = fn() -> Proc;
    let servers: [(&str, Start); 3] = [
        ("epoll FIFO baseline", || {
            start_child_baseline("IXN_BENCH_EPOLL_BULK")
        }),
        ("ixn-server, io_uring", || {
            start_ixn(&["--registration-timeout", "4s", "--engine", "uring"])
        }),
        ("ixn-server, epoll", || {
            start_ixn(&["--registration-timeout", "4s", "--engine", "epoll"])
        }),
    ];
    println!("# bulk drop: {n} silent connections, deadline 4000 ms");
    // The connecting thread runs on CPU 1, away from the server: on CPU 0 it starves the
    // server's accepts, the accept queue overflows and connects wait for SYN retries.
    if let Some(c) = core_affinity::get_core_ids().and_then(|c| c.get(1).copied()) {
        core_affinity::set_for_current(c);
    }
    let mut process = vec![Vec::new(); servers.len()];
    let mut total = vec![Vec::new(); servers.len()];
    for _ in 0..rounds {
        for (i, (name, start)) in servers.iter().enumerate() {
            let p = start();
            let b = measure_bulk(&p, n);
            println!(
                "  {name:<24} {:>6.2} µs of process CPU, {:>6.2} µs with ksoftirqd, per dropped connection (last close {:.0} ms after the first connect; opening took {:.0} ms)",
                b.process_us,
                b.with_softirqd_us,
                b.latest.as_secs_f64() * 1000.0,
                b.opened.as_secs_f64() * 1000.0,
            );
            process[i].push(b.process_us);
            total[i].push(b.with_softirqd_us);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (what, runs) in [("process", &mut process), ("+ksoftirqd", &mut total)] {
        let med: Vec<f64> = runs.iter_mut().map(median).collect();
        for ((name, _), us) in servers.iter().zip(&med) {
            println!(
                "  median of {rounds}, {what:<10}: {name:<24} {us:>6.2} µs, {:.2}x the baseline",
                us / med[0]
            );
        }
    }
}

/// Churn against each server in turn, `rounds` times over (alternating spreads the
/// machine's drift over all of them), then the median of each server's rate and CPU.
fn churn_rounds(threads: usize, dur: Duration, rounds: usize) {
    type Start = fn() -> Proc;
    let servers: [(&str, Start); 4] = [
        ("epoll baseline (mio, 1 thread)", start_baseline),
        ("raw io_uring yardstick", start_uring_baseline),
        ("ixn-server, io_uring engine", || {
            start_ixn(&["--engine", "uring"])
        }),
        ("ixn-server, epoll engine", || {
            start_ixn(&["--engine", "epoll"])
        }),
    ];
    let mut runs = vec![Vec::new(); servers.len()];
    for _ in 0..rounds {
        for ((name, start), acc) in servers.iter().zip(&mut runs) {
            let p = start();
            acc.push(measure_churn(name, &p, threads, dur));
        }
    }
    let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let med: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| (median(r, |m| m.0), median(r, |m| m.1)))
        .collect();
    println!("  medians of {rounds} round(s), {threads} clients:");
    for ((name, _), (rate, us)) in servers.iter().zip(&med) {
        println!(
            "    {name:<32} {rate:>9.0} reg/s {us:>6.2} µs/reg   against epoll: rate {:.2}x cpu {:.2}x; against the yardstick: rate {:.2}x cpu {:.2}x",
            rate / med[0].0,
            us / med[0].1,
            rate / med[1].0,
            us / med[1].1
        );
    }
}

fn main() {
    if std::env::var_os("IXN_BENCH_EPOLL_BASELINE").is_some() {
        epoll_baseline_main();
        return;
    }
    if std::env::var_os("IXN_BENCH_EPOLL_BULK").is_some() {
        epoll_bulk_baseline_main();
        return;
    }
    if std::env::var_os("IXN_BENCH_EPOLL_CLIENT").is_some() {
        epoll_client::epoll_client_main();
        return;
    }
    if std::env::var_os("IXN_BENCH_URING_BASELINE").is_some() {
        uring_baseline::uring_baseline_main();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // Run by `cargo test --all-targets` (no `--bench` flag): a smoke run that keeps the
        // harness honest without timing anything.
        for p in [
            start_baseline(),
            start_uring_baseline(),
            start_ixn(&["--engine", "uring"]),
            start_ixn(&["--engine", "epoll"]),
        ] {
            let n = churn(p.addr, 2, Duration::from_millis(200));
            assert!(n > 0, "no registration completed");
        }
        check_split();
        println!("server bench smoke run: ok (use `cargo bench --bench server` to measure)");
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    // Optional filters: `churn`, `memory`, `bulk` (default: all).
    let only: Vec<&str> = [
        "churn", "memory", "bulk", "metrics", "loadgen", "tls", "storm",
    ]
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
        churn_rounds(threads, dur, if quick { 1 } else { 3 });
    }
    if run("metrics") {
        metrics_cost(dur);
    }
    if run("loadgen") {
        loadgen_capacity(dur);
        loadgen_against_client(dur, if quick { 1 } else { 3 });
    }
    if run("memory") {
        for engine in ["uring", "epoll"] {
            idle_memory(if quick { 2000 } else { 10_000 }, engine);
        }
    }
    if run("storm") {
        storm(Duration::from_secs(3));
    }
    if run("tls") {
        tls_bench::run(dur, if quick { 1000 } else { 10_000 });
    }
    if run("bulk") {
        bulk_drop(if quick { 2000 } else { 10_000 }, if quick { 1 } else { 7 });
    }
}

/// The storm figure (issues 16 and 26): 200 registered clients probe the server (a frame
/// each, one in flight, answered EventError 9) while `ixn-loadgen` throws new connections at
/// 20x the `--max-connection-rate` cap from 16 source addresses; their p50/p99 beside the
/// same probe with no storm, for each engine and each `--connection-rate-mode`, with what
/// became of the storm's connections and the server's CPU per storm connection.
fn storm(dur: Duration) {
    println!("# connection storm: 200 registered clients' answers while connections arrive at 20x the rate cap (1,000/s)");
    for engine in ["uring", "epoll"] {
        for mode in ["pace", "refuse"] {
            storm_one(dur, engine, mode);
        }
    }
}

fn storm_one(dur: Duration, engine: &str, mode: &str) {
    let mut bin = std::env::current_exe().unwrap();
    bin.pop();
    bin.pop();
    bin.push("ixn-loadgen");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let p = start_ixn(&[
        "--metrics-listen",
        &metrics,
        "--max-connection-rate",
        "1000",
        "--connection-rate-mode",
        mode,
        "--engine",
        engine,
        "--registration-timeout",
        "120s",
    ]);
    let rrc = hex::decode(RRC).unwrap();
    let mut clients: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(&rrc).unwrap();
            let mut ack = [0u8; ACK_LEN];
            s.read_exact(&mut ack).unwrap();
            s
        })
        .collect();
    let probe = |clients: &mut [TcpStream], for_: Duration| -> (f64, f64, usize) {
        let mut lat = Vec::new();
        let t0 = Instant::now();
        let mut i = 0usize;
        while t0.elapsed() < for_ {
            let s = &mut clients[i % clients.len()];
            let mut frame = Vec::new();
            ixn::protocol::encode(
                &ixn::protocol::Message::Other {
                    msg_id: 0x0010,
                    reference_id: Some(i as i32 + 1),
                },
                &mut frame,
            )
            .unwrap();
            let t = Instant::now();
            s.write_all(&frame).unwrap();
            let mut head = [0u8; 4];
            s.read_exact(&mut head).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
            s.read_exact(&mut body).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            i += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.sort_by(f64::total_cmp);
        let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
        (q(0.5), q(0.99), lat.len())
    };
    let (q50, q99, qn) = probe(&mut clients, dur);
    let json = std::env::temp_dir().join(format!("ixn-storm-{}.json", std::process::id()));
    let metric = |name: &str| -> f64 {
        let text = std::process::Command::new("curl")
            .args(["-s", &format!("http://{metrics}/metrics")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let cpu0 = cpu_ns(p.child.id());
    let mut lg = Command::new(&bin)
        .args(["--target", &p.addr.to_string(), "--threads", "1"])
        .args([
            "--pin",
            "--first-cpu",
            "1",
            "--scenario",
            "churn",
            "--rate",
            "20000",
        ])
        .args([
            "--duration",
            &format!("{}s", dur.as_secs() + 2),
            "--warmup",
            "0s",
            "-q",
        ])
        .args(["--io-timeout", "500ms", "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("target/release/ixn-loadgen (cargo build --release first)");
    std::thread::sleep(Duration::from_millis(1000));
    let (s50, s99, sn) = probe(&mut clients, dur);
    let _ = lg.wait();
    let cpu = cpu_ns(p.child.id()) - cpu0;
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    let _ = std::fs::remove_file(&json);
    let field = |k: &str| json_number(&text, k);
    let (served, failed) = (field("ok"), field("error_total"));
    println!(
        "  {engine:<5} {mode:<6} quiet: p50 {q50:>4.0} µs p99 {q99:>5.0} µs ({qn}); storm: p50 {s50:>4.0} µs p99 {s99:>5.0} µs ({sn}): p99 {:.2}x quiet",
        s99 / q99,
    );
    println!(
        "               storm connections: {served:.0} served, {:.0} paced, {:.0} refused, {failed:.0} failed at the client (refused, timed out); server {:.1} µs of CPU per storm connection",
        metric("ixn_connections_paced_total"),
        metric("ixn_connections_refused_total"),
        cpu as f64 / 1000.0 / (served + failed).max(1.0),
    );
}
