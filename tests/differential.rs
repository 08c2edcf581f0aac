//! The differential test of issue 23: one seeded random mix of client behaviours is run
//! against both backends and against the pure `Connection` model, and every
//! well-behaved client's transcript (the answers it received, whether the server closed
//! first, and when) must be the model's.
//!
//! The mix: registrations (valid, unknown, duplicate), other messages before and after,
//! unregistrations, malformed messages, framing errors, frames split at random points
//! across writes (across TLS records on TLS), over plain TCP or TLS, and how a client
//! ends: it half-closes (FIN, or close_notify on TLS) and reads to the end, reads without
//! closing, reads late through a 4 KiB receive buffer (a slow reader), is kicked by the
//! operator through the admin API, or misbehaves (resets mid-frame, resets right after
//! sending, half-closes without ever reading) while the others are served. The model feeds the same bytes to
//! `ixn_proto::connection::Connection` with no I/O at all; ProxyClientIds are compared
//! by presence (the server hands them out in the order clients arrive).
//!
//! `cargo test` runs `IXN_DIFF_CLIENTS` clients (default 1,200) per engine from
//! `IXN_DIFF_SEED` (default below); `scripts/soak.sh` runs many more. A failure names
//! the seed and the client: rerun with that seed to replay the same mix.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use ixn::connection::{Action, ConnConfig, Connection, Env};
use ixn::registry::Registry;
use ixn::session::{IdAllocator, SessionConfig};

const REGISTRATION_MS: u64 = 600;
const ERROR_DISCONNECT_MS: u64 = 400;
const TICK_MS: u64 = 20;

/// The seeded generator (xorshift64*): the same seed, the same mix.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n.max(1)
    }
}

/// How a client ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Half-closes after sending, then reads to the end.
    HalfCloseAndRead,
    /// Reads the answers the model says it is owed without closing; then, if the model
    /// says the server closes, the end of stream at the time the model says.
    ReadOpen,
    /// A 4 KiB receive buffer, reads only 200 ms after half-closing.
    SlowReader,
    /// Resets with its last frame half sent.
    ResetMidFrame,
    /// Resets right after sending everything.
    ResetAfterSend,
    /// Half-closes and never reads; closes 300 ms later.
    FinWithoutReading,
    /// Registered, then closed by the operator (admin API): EventError{0, 15}, then the
    /// end of stream.
    Kicked,
}

/// One client of the mix.
#[derive(Debug)]
struct Script {
    /// The bytes it sends, in order.
    bytes: Vec<u8>,
    /// Where its writes are cut (each a separate write, a few ms apart).
    cuts: Vec<usize>,
    end: End,
    tls: bool,
}

fn script(rng: &mut Rng) -> Script {
    let tls = rng.below(6) == 0;
    if rng.below(10) == 0 {
        // Registered, a few frames answered, then kicked.
        let mut bytes = rrc(1, "MediaServer_email", 1, None);
        for n in 0..rng.below(3) {
            bytes.extend(other(2 + n as i32));
        }
        let cuts = vec![1 + rng.below(bytes.len() as u64 - 1) as usize];
        return Script {
            bytes,
            cuts,
            end: End::Kicked,
            tls,
        };
    }
    let mut bytes = Vec::new();
    let frames = 1 + rng.below(6);
    for n in 0..frames {
        let rid = 1 + n as i32;
        let frame = match rng.below(10) {
            0..=3 => rrc(rid, "MediaServer_email", 1, None),
            4 => rrc(rid, "Nobody", 1, None),
            5 | 6 => other(rid),
            7 => unreg(rid, None),
            // A frame whose count does not match its attributes: malformed.
            8 => hex("0000000d00010002000101000400000005"),
            // A length under 4: a framing error (the stream cannot go on).
            _ => hex("00000002ffff"),
        };
        bytes.extend(frame);
    }
    let mut cuts: Vec<usize> = (0..rng.below(4))
        .map(|_| 1 + rng.below(bytes.len() as u64 - 1) as usize)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let end = match rng.below(12) {
        0..=3 => End::HalfCloseAndRead,
        4..=6 => End::ReadOpen,
        7 if !tls => End::SlowReader,
        7 => End::HalfCloseAndRead,
        8 | 9 => End::ResetMidFrame,
        10 => End::ResetAfterSend,
        _ => End::FinWithoutReading,
    };
    Script {
        bytes,
        cuts,
        end,
        tls,
    }
}

/// What the model says a client is owed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    answers: Vec<Ans>,
    /// The server closes on its own: at once after the answers (`Some(0)`), or after
    /// this many milliseconds (a deadline); `None` while the client keeps it open.
    closes_after_ms: Option<u64>,
}

/// ProxyClientIds compared by presence only.
fn shape(a: &Ans) -> Ans {
    match a {
        Ans::Ack { rid, id } => Ans::Ack {
            rid: *rid,
            id: id.map(|_| 0),
        },
        e => e.clone(),
    }
}

fn decode_all(bytes: &[u8]) -> (Vec<Ans>, usize) {
    let mut rest = bytes;
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let len = 4 + u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < len {
            break;
        }
        out.push(shape(&decode_answer(&rest[..len])));
        rest = &rest[len..];
    }
    (out, rest.len())
}

fn conn_config() -> ConnConfig {
    ConnConfig {
        session: SessionConfig {
            registration_timeout: Duration::from_millis(REGISTRATION_MS),
            error_disconnect_timeout: Duration::from_millis(ERROR_DISCONNECT_MS),
            ..SessionConfig::default()
        },
        ..ConnConfig::default()
    }
}

/// Runs the script's bytes through the pure core: its answers, and whether and when the
/// server closes while the client keeps its side open.
fn model(s: &Script, registry: &Registry) -> Expected {
    let cfg = conn_config();
    let now = Instant::now();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (mut conn, mut timer) = Connection::accept(now, peer, false, &cfg);
    let mut ids = IdAllocator::new(1, 1);
    let mut out = Vec::new();
    let mut env = Env {
        registry,
        ids: &mut ids,
        config: &cfg,
        gate: None,
        names: None,
    };
    let mut p = conn.on_bytes(now, &s.bytes, &mut env, &mut out, |_| {});
    if p.timer != ixn::connection::TimerChange::Keep {
        timer = p.timer;
    }
    if s.end == End::Kicked {
        p = conn.on_kick(
            now,
            ixn::session::Kick::Operator,
            &mut env,
            &mut out,
            |_| {},
        );
    }
    let (answers, _) = decode_all(&out);
    let closes_after_ms = match p.action {
        Action::CloseAfterWrite | Action::CloseNow(_) => Some(0),
        Action::Continue => match (timer, conn.armed()) {
            (ixn::connection::TimerChange::Arm(_, at), Some(_)) => {
                Some(at.saturating_duration_since(now).as_millis() as u64)
            }
            _ => None,
        },
    };
    Expected {
        answers,
        closes_after_ms,
    }
}

/// What the client saw.
#[derive(Debug)]
struct Seen {
    answers: Vec<Ans>,
    stray: usize,
    /// The server's end of stream, and when (from the connect).
    closed_after: Option<Duration>,
}

/// A client's connection: plain TCP or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed (a framing error): later writes may fail.
        let _ = match self {
            Stream::Plain(s) => s.write_all(bytes),
            Stream::Tls(t) => t.write_all(bytes).and_then(|()| t.flush()),
        };
    }

    /// Our side is done: FIN, or close_notify on TLS.
    fn half_close(&mut self) {
        match self {
            Stream::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Stream::Tls(t) => {
                t.conn.send_close_notify();
                let _ = t.flush();
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }

    fn reset(self) {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.sock,
        };
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
}

/// Where a client connects, and how it is kicked.
#[derive(Clone)]
struct Target {
    plain: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
    tls_config: std::sync::Arc<rustls::ClientConfig>,
}

/// The operator closes the registered client at `peer` through the admin API.
fn kick(admin: SocketAddr, peer: SocketAddr) -> Result<(), String> {
    let (status, body) = http(admin, "GET", "/v1/clients?limit=1000", &[]);
    let list: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    // The newest with this address: an earlier connection from the same port (reused at
    // once on loopback) may still be closing.
    let id = list["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|c| c["peer"].as_str() == Some(&peer.to_string()))
        .and_then(|c| c["id"].as_str())
        .ok_or_else(|| format!("{peer} not listed ({status}): {body}"))?
        .to_string();
    match http(admin, "DELETE", &format!("/v1/clients/{id}"), &[]) {
        (204, _) => Ok(()),
        (status, body) => Err(format!("kick {id}: {status} {body}")),
    }
}

fn run_client(t: &Target, s: &Script, expected: &Expected) -> Result<Option<Seen>, String> {
    let started = Instant::now();
    let mut c = if s.tls {
        Stream::Tls(Box::new(tls_open(t.tls, &t.tls_config)))
    } else {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if s.end == End::SlowReader {
            sock.set_recv_buffer_size(4096).unwrap();
        }
        sock.connect(&t.plain.into()).unwrap();
        Stream::Plain(sock.into())
    };
    c.tcp()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut from = 0;
    let last = if s.end == End::ResetMidFrame {
        s.bytes.len() - 1
    } else {
        s.bytes.len()
    };
    for &cut in s.cuts.iter().chain([last].iter()) {
        let cut = cut.min(last);
        if cut > from {
            c.send(&s.bytes[from..cut]);
            from = cut;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    match s.end {
        End::ResetMidFrame | End::ResetAfterSend => {
            c.reset();
            return Ok(None);
        }
        End::FinWithoutReading => {
            c.half_close();
            std::thread::sleep(Duration::from_millis(300));
            return Ok(None);
        }
        End::SlowReader => {
            c.half_close();
            std::thread::sleep(Duration::from_millis(200));
        }
        End::HalfCloseAndRead => c.half_close(),
        End::ReadOpen | End::Kicked => {}
    }
    let mut bytes = Vec::new();
    let mut closed_after = None;
    let mut chunk = [0u8; 4096];
    let mut kicked = false;
    loop {
        let (got, _) = decode_all(&bytes);
        if s.end == End::ReadOpen
            && expected.closes_after_ms.is_none()
            && got.len() >= expected.answers.len()
        {
            // The server keeps it open: what is owed has come.
            break;
        }
        if s.end == End::Kicked && !kicked && got.len() + 1 >= expected.answers.len() {
            // Every answer before the kick has come: the operator closes it now.
            kick(t.admin, c.tcp().local_addr().unwrap())?;
            kicked = true;
        }
        match c.read(&mut chunk) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let (answers, stray) = decode_all(&bytes);
    Ok(Some(Seen {
        answers,
        stray,
        closed_after,
    }))
}

/// Whether what the client saw is what the model says.
fn agrees(s: &Script, e: &Expected, seen: &Seen) -> Result<(), String> {
    if seen.answers != e.answers || seen.stray != 0 {
        return Err(format!(
            "answers {:?} (+{} stray bytes), the model says {:?}",
            seen.answers, seen.stray, e.answers
        ));
    }
    match (s.end, e.closes_after_ms, seen.closed_after) {
        // The client half-closed: the server closes once its answers are out.
        (End::HalfCloseAndRead | End::SlowReader, _, Some(_)) => Ok(()),
        (End::ReadOpen, None, _) => Ok(()),
        (End::Kicked, Some(0), Some(_)) => Ok(()),
        (End::ReadOpen, Some(ms), Some(t)) => {
            let (lo, hi) = (ms, ms + TICK_MS + 400);
            let t = t.as_millis() as u64;
            if ms == 0 || (lo..=hi).contains(&t) {
                Ok(())
            } else {
                Err(format!("closed after {t} ms, the model says {ms} ms"))
            }
        }
        (_, _, closed) => Err(format!(
            "closed: {closed:?}, the model says {:?}",
            e.closes_after_ms
        )),
    }
}

fn seed() -> u64 {
    std::env::var("IXN_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0d1f_f23a)
}

fn clients() -> u64 {
    std::env::var("IXN_DIFF_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200)
}

each_engine! {
    /// Every well-behaved client's transcript is the model's, beside clients that reset
    /// and half-close around it, on a one-worker server.
    fn transcripts_match_the_connection_model() {
        let registry = Registry::embedded();
        let dir = test_dir("differential");
        let (cert, key) = self_signed();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let s = Server::start(&[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--timer-tick",
            "20ms",
            "--registration-timeout",
            "600ms",
            "--error-disconnect-timeout",
            "400ms",
        ]);
        let base = s.fds();
        let seed = seed();
        const THREADS: u64 = 8;
        let per = clients() / THREADS;
        let scripts: Vec<Vec<(Script, Expected)>> = (0..THREADS)
            .map(|t| {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                (0..per)
                    .map(|_| {
                        let s = script(&mut rng);
                        let e = model(&s, &registry);
                        (s, e)
                    })
                    .collect()
            })
            .collect();
        let target = Target {
            plain: s.addr,
            tls: s.tls_addr.unwrap(),
            admin: s.admin.unwrap(),
            tls_config: tls_client(&cert),
        };
        let handles: Vec<_> = scripts
            .into_iter()
            .enumerate()
            .map(|(t, scripts)| {
                let target = target.clone();
                std::thread::spawn(move || {
                    let mut failed = Vec::new();
                    for (n, (s, e)) in scripts.iter().enumerate() {
                        let outcome = run_client(&target, s, e)
                            .and_then(|seen| seen.map_or(Ok(()), |seen| agrees(s, e, &seen)));
                        if let Err(why) = outcome {
                            failed.push(format!(
                                "thread {t} client {n} ({:?}{}, bytes {}): {why}",
                                s.end,
                                if s.tls { ", TLS" } else { "" },
                                hex::encode(&s.bytes)
                            ));
                        }
                    }
                    failed
                })
            })
            .collect();
        let failed: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert!(
            failed.is_empty(),
            "seed {seed}: {} of {} clients differ from the model; first: {:#?}",
            failed.len(),
            per * THREADS,
            &failed[..failed.len().min(5)]
        );
        s.assert_clean(base);
    }
}
