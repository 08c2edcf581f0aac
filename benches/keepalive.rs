//! What a keepalive costs the server (docs/PROTOCOL.md §12), against the servers users
//! compare us with, each driven the same way in the same run: N held connections, each
//! sending one ping a second (phases spread over the second), answered by
//!
//! * ixn-server: RequestKeepAlive → EventAck, each client registered with KeepAlive 1 (so
//!   its deadline is live), one worker on CPU 0;
//! * Redis 7: `PING` → `+PONG`, on CPU 0;
//! * Mosquitto 2: MQTT `PINGREQ` → `PINGRESP` after a `CONNECT`, on CPU 0.
//!
//! The driver (this process, one thread on CPU 1) times every answer. Reported per server:
//! its CPU per ping (from /proc, over the measured window) and the round trip's p50/p99;
//! then ixn's CPU per ping against the better of the other two. And memory: ixn's resident
//! bytes per registered idle connection with a keepalive in force against without.
//!
//! `cargo bench --bench keepalive [-- quick] [-- clients=N]` (default 10,000 clients, 10 s
//! measured after a 2 s warm-up; `quick`: 2,000 clients, 4 s); without `--bench` (as
//! `cargo test` runs it) a smoke run with 200 clients checks every ping is answered.

#[path = "common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cpu_ns, rss_kib};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How one server is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ixn,
    Redis,
    Mosquitto,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ixn => "ixn-server",
            Kind::Redis => "redis 7 PING",
            Kind::Mosquitto => "mosquitto PINGREQ",
        }
    }

    /// What a connection sends first and how many bytes answer it (none: nothing).
    fn hello(self, i: usize) -> (Vec<u8>, usize) {
        match self {
            // RequestRegisterClient MediaServer_email, KeepAlive 1 → EventAck with
            // ProxyClientId and KeepAlive (35 bytes).
            Kind::Ixn => (register(Some(1)), 35),
            Kind::Redis => (Vec::new(), 0),
            Kind::Mosquitto => {
                // MQTT 3.1.1 CONNECT, clean session, keep alive 60 s, client id "kN".
                let id = format!("k{i}");
                let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
                var.extend((id.len() as u16).to_be_bytes());
                var.extend(id.as_bytes());
                let mut p = vec![0x10, var.len() as u8];
                p.extend(var);
                (p, 4)
            }
        }
    }

    /// One ping and the length of its answer.
    /// The answer to a ping.
    fn pong(self) -> &'static [u8] {
        match self {
            Kind::Ixn => &[0, 0, 0, 0x0d, 0, 0x80, 0, 1, 0, 1, 1, 0, 4, 0, 0, 0, 0x0c],
            Kind::Redis => b"+PONG\r\n",
            Kind::Mosquitto => &[0xd0, 0x00],
        }
    }

    fn ping(self) -> (&'static [u8], usize) {
        match self {
            // RequestKeepAlive ReferenceId 12 → EventAck ReferenceId 12.
            Kind::Ixn => (
                &[0, 0, 0, 0x0d, 0, 3, 0, 1, 0, 1, 1, 0, 4, 0, 0, 0, 0x0c],
                17,
            ),
            Kind::Redis => (b"*1\r\n$4\r\nPING\r\n", 7),
            Kind::Mosquitto => (&[0xc0, 0x00], 2),
        }
    }
}

/// RequestRegisterClient for the embedded registry's MediaServer_email.
fn register(keep_alive: Option<u16>) -> Vec<u8> {
    let mut v = Vec::new();
    ixn::protocol::encode(
        &ixn::protocol::Message::RegisterClient(ixn::protocol::RegisterClient {
            reference_id: 7,
            client_name: "MediaServer_email",
            client_type: 1,
            proxy_client_id: None,
            credential: None,
            extension: None,
            keep_alive,
        }),
        &mut v,
    )
    .unwrap();
    v
}

/// A server under test: its process and address.
struct Target {
    /// ixn-server (killed on drop).
    ixn: Option<common::Proc>,
    /// Redis or Mosquitto.
    other: Option<Child>,
    port: u16,
    /// Its config file's directory, removed on drop.
    dir: Option<std::path::PathBuf>,
}

impl Target {
    fn pid(&self) -> u32 {
        match (&self.ixn, &self.other) {
            (Some(p), _) => p.child.id(),
            (_, Some(c)) => c.id(),
            _ => 0,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.other {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start(kind: Kind) -> Option<Target> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (other, dir) = match kind {
        Kind::Ixn => {
            let p = common::start_ixn(&[
                "--listen",
                &listen,
                "--keepalive-min",
                "1s",
                "--max-connections",
                "30000",
            ]);
            let t = Target {
                ixn: Some(p),
                other: None,
                port,
                dir: None,
            };
            return Some(t);
        }
        Kind::Redis => {
            if !installed("redis-server") {
                return None;
            }
            let c = Command::new("taskset")
                .args(["-c", "0", "redis-server", "--port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--maxclients", "30000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            (Some(c), None)
        }
        Kind::Mosquitto => {
            if !installed("mosquitto") {
                return None;
            }
            let dir = std::env::temp_dir().join(format!("ixn-bench-mosquitto-{port}"));
            std::fs::create_dir_all(&dir).ok()?;
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n\
                     persistence false\nlog_dest none\nmax_keepalive 65535\n"
                ),
            )
            .ok()?;
            let c = Command::new("taskset")
                .args(["-c", "0", "mosquitto", "-c"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            (Some(c), Some(dir))
        }
    };
    let t = Target {
        ixn: None,
        other,
        port,
        dir,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(t)
}

/// What one run measured.
struct Measured {
    cpu_us_per_ping: f64,
    pings: u64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// Holds `clients` connections to `port`, each pinging once a second, and measures the
/// server `pid` over `window` after `warmup`.
fn drive(
    kind: Kind,
    port: u16,
    pid: u32,
    clients: usize,
    warmup: Duration,
    window: Duration,
) -> Measured {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pings = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let hist = Rc::new(std::cell::RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap(),
        ));
        let measuring = Rc::new(std::cell::Cell::new(false));
        let stop = Rc::new(std::cell::Cell::new(false));
        let local = tokio::task::LocalSet::new();
        let connected = Rc::new(std::cell::Cell::new(0usize));
        for i in 0..clients {
            let (pings, errors, hist, measuring, stop, connected) = (
                pings.clone(),
                errors.clone(),
                hist.clone(),
                measuring.clone(),
                stop.clone(),
                connected.clone(),
            );
            local.spawn_local(async move {
                let fail = |what: &str| {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("  first failure: client {i}: {what}");
                    }
                };
                let s = TcpStream::connect(("127.0.0.1", port)).await;
                let Ok(mut s) = s.map_err(|e| fail(&format!("connect: {e}"))) else {
                    return;
                };
                let _ = s.set_nodelay(true);
                let (hello, answer) = kind.hello(i);
                let mut buf = [0u8; 64];
                if !hello.is_empty() {
                    if let Err(e) = s.write_all(&hello).await {
                        return fail(&format!("hello: {e}"));
                    }
                    if let Err(e) = s.read_exact(&mut buf[..answer]).await {
                        return fail(&format!("hello's answer: {e}"));
                    }
                }
                connected.set(connected.get() + 1);
                let (ping, len) = kind.ping();
                let expected = kind.pong();
                // Spread over the second, the first within a second of the registration
                // (ixn-server's keepalive of 1 s allows 1.5 s of silence).
                let mut next = Instant::now() + Duration::from_secs_f64(i as f64 / clients as f64);
                while !stop.get() {
                    tokio::time::sleep_until(next).await;
                    let sent = Instant::now();
                    if let Err(e) = s.write_all(ping).await {
                        return fail(&format!("ping: {e}"));
                    }
                    if let Err(e) = s.read_exact(&mut buf[..len]).await {
                        return fail(&format!("ping's answer: {e}"));
                    }
                    if buf[..len] != expected[..len] {
                        return fail(&format!("answered {:02x?}", &buf[..len]));
                    }
                    if measuring.get() {
                        pings.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.borrow_mut().record(sent.elapsed().as_micros() as u64);
                    }
                    next += Duration::from_secs(1);
                }
            });
        }
        local
            .run_until(async {
                while connected.get() + (errors.load(Ordering::Relaxed) as usize) < clients {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_secs(2) + warmup).await;
                measuring.set(true);
                let cpu0 = cpu_ns(pid);
                tokio::time::sleep(window).await;
                measuring.set(false);
                let cpu = cpu_ns(pid) - cpu0;
                stop.set(true);
                let n = pings.load(Ordering::Relaxed);
                let h = hist.borrow();
                Measured {
                    cpu_us_per_ping: cpu as f64 / 1000.0 / n.max(1) as f64,
                    pings: n,
                    p50_us: h.value_at_quantile(0.5),
                    p99_us: h.value_at_quantile(0.99),
                    errors: errors.load(Ordering::Relaxed),
                }
            })
            .await
    })
}

/// ixn-server's resident bytes per registered idle connection, with a keepalive in force
/// (`hello`) or without (the plain registration).
fn memory_per_connection(keep_alive: bool, clients: usize) -> f64 {
    let t = start(Kind::Ixn).expect("ixn-server");
    let pid = t.pid();
    let before = rss_kib(pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let streams = rt.block_on(async {
        let mut v = Vec::with_capacity(clients);
        for i in 0..clients {
            let mut s = TcpStream::connect(("127.0.0.1", t.port)).await.unwrap();
            let (hello, len) = if keep_alive {
                Kind::Ixn.hello(i)
            } else {
                (register(None), common::ACK_LEN)
            };
            s.write_all(&hello).await.unwrap();
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await.unwrap();
            v.push(s);
        }
        v
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    drop(streams);
    (after.saturating_sub(before) * 1024) as f64 / clients as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(ids) = core_affinity::get_core_ids() {
        if ids.len() > 1 {
            core_affinity::set_for_current(ids[1]);
        }
    }
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "quick");
    let clients = args
        .iter()
        .find_map(|a| a.strip_prefix("clients=")?.parse().ok())
        .unwrap_or(if !bench {
            200
        } else if quick {
            2000
        } else {
            10_000
        });
    let (warmup, window) = if !bench {
        (Duration::ZERO, Duration::from_secs(2))
    } else if quick {
        (Duration::from_secs(1), Duration::from_secs(4))
    } else {
        (Duration::from_secs(2), Duration::from_secs(10))
    };
    println!(
        "# keepalive: {clients} held connections, one ping a second each; server on CPU 0, this driver on CPU 1; {}s measured",
        window.as_secs()
    );
    let mut results = Vec::new();
    for kind in [Kind::Ixn, Kind::Redis, Kind::Mosquitto] {
        let Some(t) = start(kind) else {
            println!("  {:<20} SKIPPED (not installed)", kind.name());
            continue;
        };
        let m = drive(kind, t.port, t.pid(), clients, warmup, window);
        println!(
            "  {:<20} {:>8} pings ({} errors)  server {:>6.2} µs/ping  round trip p50 {:>5} µs  p99 {:>6} µs",
            kind.name(),
            m.pings,
            m.errors,
            m.cpu_us_per_ping,
            m.p50_us,
            m.p99_us
        );
        assert_eq!(m.errors, 0, "{}: connections failed", kind.name());
        assert!(m.pings > 0, "{}: no ping answered", kind.name());
        results.push((kind, m));
    }
    if !bench {
        println!("keepalive bench smoke run: ok");
        return;
    }
    let ixn = results
        .iter()
        .find(|(k, _)| *k == Kind::Ixn)
        .map(|(_, m)| m.cpu_us_per_ping);
    let best = results
        .iter()
        .filter(|(k, _)| *k != Kind::Ixn)
        .map(|(k, m)| (m.cpu_us_per_ping, k.name()))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some(ixn), Some((best, name))) = (ixn, best) {
        println!(
            "  ixn-server CPU per keepalive: {:.2}x the better of the others ({name}, {best:.2} µs)",
            ixn / best
        );
    }
    let n = clients.min(10_000);
    let with = memory_per_connection(true, n);
    let without = memory_per_connection(false, n);
    println!(
        "  ixn-server idle registered connection: {with:.0} bytes with a keepalive in force, {without:.0} without ({:+.0} bytes)",
        with - without
    );
}
