//! TLS figures of benches/server.rs (issue 15): churn with a full handshake per
//! registration and with resumption, against plain churn and against Redis 7 doing AUTH
//! over TLS (when `redis-server` is installed) with the same ECDSA P-256 certificate, and
//! the server memory per idle registered TLS connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::common::{cpu_ns, rss_kib, ACK_LEN, RRC};

/// A self-signed ECDSA P-256 certificate for `ixn.test` in a temporary directory, and a
/// client config that trusts it.
pub struct Certs {
    dir: PathBuf,
    pub cert: String,
    pub key: String,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!("ixn-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ixn.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        Certs {
            cert: c.display().to_string(),
            key: k.display().to_string(),
            der: cert.der().clone(),
            dir,
        }
    }

    /// A client config; `resume` keeps the default session cache, else none.
    pub fn client(&self, resume: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if !resume {
            c.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(c)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (bound and released; fine for a bench).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr) {
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{addr} did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One TLS exchange: connect, handshake, `request`, read `answer_len` bytes, close. For
/// NATS (`request` starting with `CONNECT`) the server's plaintext INFO line comes first.
fn exchange(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    request: &[u8],
    answer_len: usize,
) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    if request.starts_with(b"CONNECT") {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if s.read_exact(&mut b).is_err() {
                return false;
            }
            line.push(b[0]);
        }
    }
    let conn =
        rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("ixn.test").unwrap())
            .unwrap();
    let mut t = rustls::StreamOwned::new(conn, s);
    let mut buf = vec![0u8; answer_len];
    t.write_all(request).is_ok() && t.read_exact(&mut buf).is_ok()
}

/// Churn over TLS from `threads` client threads on CPU 1 for `dur`: (rate, server CPU µs
/// per exchange).
pub fn churn(
    pid: u32,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    request: &[u8],
    answer_len: usize,
    threads: usize,
    dur: Duration,
) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Warm-up: the first exchange fills the client's ticket cache.
    exchange(addr, &cfg, request, answer_len);
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, cfg, req) =
                (stop.clone(), done.clone(), cfg.clone(), request.to_vec());
            std::thread::spawn(move || {
                if let Some(c) = core_affinity::get_core_ids().and_then(|c| c.get(1).copied()) {
                    core_affinity::set_for_current(c);
                }
                while !stop.load(Ordering::Relaxed) {
                    if exchange(addr, &cfg, &req, answer_len) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        let _ = h.join();
    }
    let n = done.load(Ordering::Relaxed).max(1) as f64;
    let secs = t0.elapsed().as_secs_f64();
    (n / secs, (cpu_ns(pid) - cpu0) as f64 / 1000.0 / n)
}

/// The ixn-server with one worker and a TLS listener on a free port.
pub fn start_ixn_tls(certs: &Certs, engine: &str) -> (super::common::Proc, SocketAddr) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let p = super::common::start_ixn(&[
        "--tls-listen",
        &listen,
        "--tls-cert",
        &certs.cert,
        "--tls-key",
        &certs.key,
        "--registration-timeout",
        "120s",
        "--engine",
        engine,
    ]);
    let addr: SocketAddr = listen.parse().unwrap();
    wait_listening(addr);
    (p, addr)
}

/// A server under comparison (Redis, NATS), pinned to CPU 0, killed on drop.
pub struct Peer(pub Child, pub SocketAddr);

impl Peer {
    /// Runs `program` with `args(port)` on a free loopback port; `None` if it is not
    /// installed.
    fn start(program: &str, args: impl FnOnce(&str) -> Vec<String>) -> Option<Peer> {
        let port = free_port();
        let child = Command::new("taskset")
            .args(["-c", "0", program])
            .args(args(&port.to_string()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr);
        Some(Peer(child, addr))
    }

    /// Redis 7 with only a TLS port, `requirepass` and the same certificate.
    pub fn redis(certs: &Certs) -> Option<Peer> {
        Self::start("redis-server", |port| {
            let c = &certs.cert;
            let k = &certs.key;
            [
                "--port",
                "0",
                "--tls-port",
                port,
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                c,
                "--tls-key-file",
                k,
                "--tls-ca-cert-file",
                c,
                "--tls-auth-clients",
                "no",
                "--requirepass",
                "s3cret",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec()
        })
    }

    /// NATS 2.9 with TLS required, a user and password, and the same certificate.
    pub fn nats(certs: &Certs) -> Option<Peer> {
        Self::start("nats-server", |port| {
            [
                "-a",
                "127.0.0.1",
                "-p",
                port,
                "--tls",
                "--tlscert",
                &certs.cert,
                "--tlskey",
                &certs.key,
                "--user",
                "u",
                "--pass",
                "s3cret",
            ]
            .map(String::from)
            .to_vec()
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// NATS's CONNECT with credentials and a PING, and its `PONG\r\n`.
pub const NATS_CONNECT: &[u8] =
    b"CONNECT {\"user\":\"u\",\"pass\":\"s3cret\",\"verbose\":false,\"tls_required\":true}\r\nPING\r\n";
pub const NATS_PONG_LEN: usize = 6;

/// `AUTH s3cret` as a RESP array, and Redis's `+OK\r\n`.
pub const REDIS_AUTH: &[u8] = b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n";
pub const REDIS_OK_LEN: usize = 5;

/// The whole TLS section: churn full and resumed (ixn v2 and Redis), plain churn for
/// scale, and memory per idle registered TLS connection.
pub fn run(dur: Duration, idle: usize) {
    let certs = Certs::new();
    let rrc = hex::decode(RRC).unwrap();
    println!("# TLS churn: connect -> handshake -> request -> answer -> close, 4 client threads on CPU 1, one server core (ECDSA P-256)");
    let (p, addr) = start_ixn_tls(&certs, "uring");
    let pid = p.child.id();
    for (name, resume) in [("full handshake", false), ("resumed (tickets)", true)] {
        let (rate, us) = churn(pid, addr, certs.client(resume), &rrc, ACK_LEN, 4, dur);
        println!("  ixn-server v2, {name:<18} {rate:>8.0} reg/s  {us:>7.1} server CPU µs/reg");
    }
    drop(p);
    match Peer::redis(&certs) {
        Some(r) => {
            let pid = r.0.id();
            for (name, resume) in [("full handshake", false), ("resumed (tickets)", true)] {
                let (rate, us) = churn(
                    pid,
                    r.1,
                    certs.client(resume),
                    REDIS_AUTH,
                    REDIS_OK_LEN,
                    4,
                    dur,
                );
                println!(
                    "  Redis 7 AUTH, {name:<19} {rate:>8.0} auth/s {us:>7.1} server CPU µs/auth"
                );
            }
        }
        None => println!(
            "  (redis-server not installed: apt-get install redis-server for the comparison)"
        ),
    }
    match Peer::nats(&certs) {
        Some(n) => {
            let pid = n.0.id();
            for (name, resume) in [("full handshake", false), ("resumed (tickets)", true)] {
                let cfg = certs.client(resume);
                let (rate, us) = churn(pid, n.1, cfg, NATS_CONNECT, NATS_PONG_LEN, 4, dur);
                println!("  NATS 2.9 CONNECT, {name:<15} {rate:>8.0} conn/s {us:>7.1} server CPU µs/conn");
            }
        }
        None => println!(
            "  (nats-server not installed: apt-get install nats-server for the comparison)"
        ),
    }
    // Memory per idle registered TLS connection.
    let (p, addr) = start_ixn_tls(&certs, "uring");
    let pid = p.child.id();
    let cfg = certs.client(true);
    let open = |n: usize| -> Vec<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        (0..n)
            .map(|_| {
                let s = TcpStream::connect(addr).unwrap();
                let conn = rustls::ClientConnection::new(
                    cfg.clone(),
                    ServerName::try_from("ixn.test").unwrap(),
                )
                .unwrap();
                let mut t = rustls::StreamOwned::new(conn, s);
                let mut ack = [0u8; ACK_LEN];
                t.write_all(&rrc).unwrap();
                t.read_exact(&mut ack).unwrap();
                t
            })
            .collect()
    };
    drop(open(500));
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let held = open(idle);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    println!(
        "  idle registered TLS connections: {idle}, server RSS {before} KiB -> {after} KiB: {:.0} bytes per connection",
        after.saturating_sub(before) as f64 * 1024.0 / idle as f64
    );
    drop(held);
}
