//! Test harness: runs the real `ixn-server` binary on loopback and talks IXN/1 to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod redis;

use ixn::protocol::{
    decode, encode, Message, RegisterClient, UnregisterClient, DEFAULT_MAX_FRAME_LEN,
};

/// Whether this machine allows the io_uring engine, asked once per test process and on a
/// thread of its own: a ring's teardown queues task work to the thread that made it,
/// which interrupts that thread's next blocking socket read with EINTR (a read with a
/// timeout is not restarted), and a test reading an answer then saw a close.
pub fn io_uring_allowed() -> Result<(), String> {
    static ALLOWED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ALLOWED
        .get_or_init(|| {
            std::thread::spawn(ixn::runtime::io_uring_allowed)
                .join()
                .unwrap_or_else(|_| Err("the probe panicked".into()))
        })
        .clone()
}

/// The `--engine` values every socket suite runs on: `uring` where this kernel (and its
/// seccomp profile) allows io_uring, and `epoll` always. Where io_uring is refused, the
/// suite says on stderr that its io_uring half was skipped, and why, rather than passing it.
pub fn engines() -> Vec<&'static str> {
    match io_uring_allowed() {
        Ok(()) => vec!["uring", "epoll"],
        Err(why) => {
            eprintln!("SKIPPED on the io_uring engine (not allowed here: {why})");
            vec!["epoll"]
        }
    }
}

thread_local! {
    /// The engine this test thread runs its servers on (set by [`each_engine!`]).
    static ENGINE: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Makes `engine` the one every server this thread starts runs on; `false` (with the test
/// named as skipped on stderr) where this machine does not allow it.
pub fn use_engine(engine: &'static str, test: &str) -> bool {
    if engine == "uring" {
        if let Err(why) = io_uring_allowed() {
            eprintln!("SKIPPED {test} on the io_uring engine (not allowed here: {why})");
            return false;
        }
    }
    ENGINE.with(|e| e.set(Some(engine)));
    true
}

/// A new, empty directory for one test on the engine this thread runs (the two halves of
/// an [`each_engine!`] test run at once and must not share one).
pub fn test_dir(tag: &str) -> std::path::PathBuf {
    let engine = ENGINE.with(std::cell::Cell::get).unwrap_or("default");
    let dir = std::env::temp_dir().join(format!("ixn-{tag}-{engine}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Declares each test once and runs it on both engines, as `NAME::uring` and
/// `NAME::epoll`: every server the body starts runs on that engine (the harness adds
/// `--engine` unless the test gives one). On a machine that refuses io_uring, the uring
/// half says on stderr that it was skipped, by name.
#[macro_export]
macro_rules! each_engine {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn uring() {
                if $crate::common::use_engine("uring", concat!(stringify!($name), "::uring")) $body
            }
            #[test]
            fn epoll() {
                if $crate::common::use_engine("epoll", concat!(stringify!($name), "::epoll")) $body
            }
        }
    )*};
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The PROXY-protocol listener, when `--proxy-listen` was given.
    pub proxy_addr: Option<SocketAddr>,
    /// The TLS listener, when `--tls-listen` was given.
    pub tls_addr: Option<SocketAddr>,
    /// The PROXY-then-TLS listener, when `--proxy-tls-listen` was given.
    pub proxy_tls_addr: Option<SocketAddr>,
    pub metrics: SocketAddr,
    /// The admin API, when `--admin-listen` was given.
    pub admin: Option<SocketAddr>,
    pub logs: mpsc::Receiver<String>,
    /// Log lines up to the one saying where metrics are served.
    pub startup: Vec<String>,
}

impl Server {
    /// Starts the binary with `args` on ephemeral ports and waits until it listens.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        // `IXN_TEST_SERVER_BIN` runs a suite against another build (an older commit's, to
        // show that a test fails where a defect still is).
        let bin = std::env::var("IXN_TEST_SERVER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ixn-server").to_string());
        let mut cmd = Command::new(bin);
        cmd.envs(env.iter().copied());
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args);
        Self::start_command(cmd)
    }

    /// Runs `cmd` (the server binary, or a wrapper such as `prlimit` that execs it) and waits
    /// until it listens; the start-up lines are kept in `startup`.
    pub fn start_command(mut cmd: Command) -> Server {
        if let Some(engine) = ENGINE.with(std::cell::Cell::get) {
            if !cmd.get_args().any(|a| a == "--engine") {
                cmd.args(["--engine", engine]);
            }
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ixn-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut addr, mut metrics, mut proxy_addr) = (None, None, None);
        let (mut tls_addr, mut proxy_tls_addr, mut admin) = (None, None, None);
        let mut startup = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() || metrics.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("server start-up logs");
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = Some(a.trim().parse().unwrap());
            }
            if let Some(a) = line.split("PROXY protocol on ").nth(1) {
                proxy_addr = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(a) = line.split("listening with TLS on ").nth(1) {
                tls_addr = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(a) = line.split("PROXY protocol and TLS on ").nth(1) {
                proxy_tls_addr = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(a) = line.split("admin API on ").nth(1) {
                admin = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(a) = line.split("metrics on ").nth(1) {
                metrics = Some(a.trim().parse().unwrap());
            }
            startup.push(line);
        }
        Server {
            child,
            addr: addr.unwrap(),
            proxy_addr,
            tls_addr,
            proxy_tls_addr,
            metrics: metrics.unwrap(),
            admin,
            logs: rx,
            startup,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The server process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// Open descriptors of the server process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// GET `path` on the metrics listener: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http(self.metrics, "GET", path, &[])
    }

    /// `method path` on the admin API, with `token` as its bearer token: (status, body).
    pub fn admin(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
        http(self.admin.expect("--admin-listen"), method, path, &headers)
    }

    /// The value of one series in `/metrics` (0 if absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric_in(&self.http_get("/metrics").1, series)
    }

    /// Polls `series` until it equals `want` or 5 s pass; returns the last value.
    pub fn wait_metric(&self, series: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series);
            if v == want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits (at most 5 s) until `series` is at least `want`; its last value.
    pub fn wait_metric_at_least(&self, series: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series);
            if v >= want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until no client connection is open and the descriptors are back to `baseline`.
    pub fn assert_clean(&self, baseline: usize) {
        assert_eq!(
            self.wait_metric("ixn_connections_active", 0.0),
            0.0,
            "slab not empty"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.fds() > baseline && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
        }
        assert_eq!(self.fds(), baseline, "descriptor leak");
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_within(needle, Duration::from_secs(10))
    }

    /// Waits at most `within` for a log line containing `needle`.
    pub fn wait_log_within(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let line = self
                .logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            // `IXN_TEST_SHOW_LOGS=1`: the lines read past, for a test being debugged.
            if std::env::var_os("IXN_TEST_SHOW_LOGS").is_some() {
                eprintln!("server: {line}");
            }
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// An owned decoded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ans {
    Ack { rid: i32, id: Option<i32> },
    Err { rid: i32, code: i32 },
}

pub fn ack(rid: i32, id: Option<i32>) -> Ans {
    Ans::Ack { rid, id }
}

pub fn err(rid: i32, code: i32) -> Ans {
    Ans::Err { rid, code }
}

/// A blocking IXN/1 client.
pub struct Client {
    pub s: TcpStream,
    buf: Vec<u8>,
    /// Just before the connect: a lower bound of the server's accept time.
    pub connected_at: Instant,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        // Taken before connect(2): the server cannot accept (and start its deadline) earlier,
        // however late this thread is scheduled after the handshake.
        let connected_at = Instant::now();
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            s,
            buf: Vec::new(),
            connected_at,
        }
    }

    /// Wraps a stream connected elsewhere (e.g. from a chosen source address).
    pub fn from_stream(s: TcpStream) -> Client {
        Client {
            s,
            buf: Vec::new(),
            connected_at: Instant::now(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The client's own address and port (the server's `peer`).
    pub fn local_addr(&self) -> SocketAddr {
        self.s.local_addr().unwrap()
    }

    /// Reads exactly one frame's raw bytes (None at end of stream).
    pub fn read_raw(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize + 4;
                if self.buf.len() >= len {
                    return Some(self.buf.drain(..len).collect());
                }
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                // A signal is not an end of stream (a read with a timeout is not restarted).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn answer(&mut self) -> Option<Ans> {
        Some(decode_answer(&self.read_raw()?))
    }

    /// Waits for end of stream; returns the time since connect. Panics on more data.
    pub fn expect_close(&mut self) -> Duration {
        if let Some(a) = self.read_raw() {
            panic!("expected close, got {a:02x?}");
        }
        self.connected_at.elapsed()
    }
}

pub fn frame(m: Message<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    encode(&m, &mut v).unwrap();
    v
}

pub fn rrc(rid: i32, name: &str, ty: i32, cred: Option<&str>) -> Vec<u8> {
    rrc_keep_alive(rid, name, ty, cred, None)
}

/// RequestRegisterClient asking for a keepalive (docs/PROTOCOL.md §12).
pub fn rrc_keep_alive(
    rid: i32,
    name: &str,
    ty: i32,
    cred: Option<&str>,
    keep_alive: Option<u16>,
) -> Vec<u8> {
    frame(Message::RegisterClient(RegisterClient {
        reference_id: rid,
        client_name: name,
        client_type: ty,
        proxy_client_id: None,
        credential: cred,
        extension: None,
        keep_alive,
    }))
}

/// RequestKeepAlive (docs/PROTOCOL.md §12).
pub fn keep_alive(rid: i32) -> Vec<u8> {
    frame(Message::KeepAlive(ixn::protocol::KeepAlive {
        reference_id: rid,
    }))
}

/// Reads one whole answer frame from any stream (a TLS one, a raw socket); `None` if the
/// stream ended or failed first.
pub fn read_answer(s: &mut impl Read) -> Option<Ans> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut body).ok()?;
    Some(decode_answer(&[&head[..], &body].concat()))
}

pub fn unreg(rid: i32, id: Option<i32>) -> Vec<u8> {
    frame(Message::UnregisterClient(UnregisterClient {
        reference_id: rid,
        proxy_client_id: id,
    }))
}

pub fn other(rid: i32) -> Vec<u8> {
    frame(Message::Other {
        msg_id: 0x0010,
        reference_id: Some(rid),
    })
}

pub fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// A real HAProxy (Debian package `haproxy`) in TCP mode, killed on drop.
pub struct Haproxy(Child);

impl Haproxy {
    /// Writes `dir/haproxy.cfg` with one frontend on a free loopback port and a backend
    /// whose body is `backend` (its `server` lines), checks and starts it, and waits until
    /// the frontend accepts. Returns it and the frontend's address.
    pub fn start(dir: &std::path::Path, backend: &str) -> (Haproxy, SocketAddr) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\n\
                 frontend ixn\n  bind 127.0.0.1:{port}\n  default_backend ixn_servers\n\n\
                 backend ixn_servers\n{backend}"
            ),
        )
        .unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&cfg)
            .output()
            .expect("haproxy");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let h = Haproxy(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t = Instant::now();
        while TcpStream::connect(front).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "haproxy did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (h, front)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on now (for a server started on it, killed and started
/// again, or a process whose port must be known before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `ixn-loadgen` against `target` (one thread, quiet) with `args`, writing its JSON
/// report to `json` ([`loadgen_report`]).
pub fn loadgen(target: SocketAddr, json: &std::path::Path, args: &[&str]) -> Child {
    Command::new(loadgen_bin())
        .args([
            "--target",
            &target.to_string(),
            "--threads",
            "1",
            "-q",
            "--json",
        ])
        .arg(json)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("ixn-loadgen")
}

/// The JSON report a [`loadgen`] run wrote.
pub fn loadgen_report(json: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(json).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

pub fn loadgen_bin() -> std::path::PathBuf {
    workspace_bin("ixn-loadgen", "ixn-loadgen")
}

/// Another workspace binary beside the server's (`cargo test --workspace` builds it; built
/// here if missing).
pub fn workspace_bin(package: &str, name: &str) -> std::path::PathBuf {
    let mut p = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ixn-server"));
    p.set_file_name(name);
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", package])
            .status()
            .unwrap_or_else(|e| panic!("cargo build {package}: {e}"));
        assert!(ok.success());
    }
    p
}

/// Decodes one raw server frame as an answer (panics on anything else).
pub fn decode_answer(raw: &[u8]) -> Ans {
    let f = decode(raw, DEFAULT_MAX_FRAME_LEN)
        .expect("server frame decodes")
        .unwrap();
    match f.message {
        Message::EventAck(a) => Ans::Ack {
            rid: a.reference_id,
            id: a.proxy_client_id,
        },
        Message::EventError(e) => Ans::Err {
            rid: e.reference_id,
            code: e.error_code,
        },
        other => panic!("server sent {other:?}"),
    }
}

/// Connects to `to` from the loopback address `from` (any of 127.0.0.0/8).
pub fn connect_from(from: &str, to: SocketAddr) -> Client {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Client::from_stream(s)
}

/// One HTTP/1.1 request to `addr` with extra header lines: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("http connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A CA able to sign certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf certificate with these SAN DNS names and URIs and this CN, and its key.
    pub fn issue(&self, dns: &[&str], uris: &[&str], cn: &str) -> (String, String) {
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI(rcgen::Ia5String::try_from(*u).unwrap()));
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A self-signed certificate for `ixn.test` written to `dir`: its PEM, and the flags of a
/// TLS listener on an ephemeral port serving it.
pub fn tls_listener(dir: &std::path::Path) -> (String, Vec<String>) {
    let (cert, key) = self_signed();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let args = ["--tls-listen", "127.0.0.1:0", "--tls-cert"]
        .into_iter()
        .map(String::from)
        .chain([cert_file.display().to_string(), "--tls-key".into()])
        .chain([key_file.display().to_string()])
        .collect();
    (cert, args)
}

/// A self-signed certificate for `ixn.test`: (certificate PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ixn.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn tls_client(cert_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(c)
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn tls_open(addr: SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> TlsStream {
    let name = rustls::pki_types::ServerName::try_from("ixn.test").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, s)
}
