//! TLS listeners over real sockets (docs/PROTOCOL.md §9): a private CA, server and client
//! certificates made at test time with rcgen; rustls as the client.
//!
//! Over 600 lines on purpose: every TLS behaviour over real sockets shares this file's CA,
//! certificate files and client harness.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A directory of PEM files for one test.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(test: &str) -> Files {
        let dir = test_dir(&format!("tls-{test}"));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

use rustls::pki_types::pem::PemObject;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Tls {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("ixn.test").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, s)
}

/// Reads one IXN/1 frame and decodes it as an answer (None: end of stream or an error).
fn answer(t: &mut Tls) -> Option<Ans> {
    let mut head = [0u8; 4];
    t.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes(head) as usize;
    let mut frame = head.to_vec();
    frame.resize(4 + len, 0);
    t.read_exact(&mut frame[4..]).ok()?;
    Some(decode_answer(&frame))
}

const REGISTRY: &str = r#"
[[client]]
name = "MediaServer_email"
types = ["MediaServer"]

[[client]]
name = "Secure"
types = ["MediaServer"]
require_tls = true

[[client]]
name = "Media1"
types = ["MediaServer"]
tls_identities = ["dns:media1.example.com", "uri:spiffe://corp/media"]

[[client]]
name = "Only_127_0_0_5"
types = ["MediaServer"]
allow = ["127.0.0.5/32"]
"#;

/// A server with a plain and a TLS listener, a server certificate from `ca`, and client
/// certificates verified against `client_ca` when given.
fn start(files: &Files, ca: &Ca, client_ca: Option<&Ca>, extra: &[&str]) -> Server {
    let (cert, key) = ca.issue(&["ixn.test"], &[], "ixn.test");
    let cert = files.write("server.pem", &cert);
    let key = files.write("server.key", &key);
    let registry = files.write("registry.toml", REGISTRY);
    let mut args = vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--registry",
        &registry,
        "--registration-timeout",
        "1s",
    ];
    let ca_file;
    if let Some(c) = client_ca {
        ca_file = files.write("client-ca.pem", &c.cert.pem());
        args.extend(["--tls-client-ca", &ca_file]);
    }
    args.extend(extra);
    Server::start(&args)
}

each_engine! {
    fn registers_over_tls_and_counts_the_handshake() {
        let files = Files::new("register");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &[]);
        let cfg = client_config(&ca.cert.pem(), None, &[b"ixn/1"]);
        let mut t = tls_connect(s.tls_addr.unwrap(), cfg);
        t.write_all(&rrc(1, "MediaServer_email", 1, None)).unwrap();
        assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
        assert_eq!(t.conn.alpn_protocol(), Some(&b"ixn/1"[..]));
        t.write_all(&unreg(2, None)).unwrap();
        assert_eq!(answer(&mut t), Some(ack(2, None)));
        assert_eq!(
            s.wait_metric("ixn_tls_handshakes_total{result=\"full\"}", 1.0),
            1.0
        );
        assert_eq!(
            s.metric("ixn_connections_accepted_total{listener=\"tls\"}"),
            1.0
        );
    }
}

each_engine! {
    fn require_tls_answers_17_on_plain_and_registers_over_tls() {
        let files = Files::new("require");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &[]);
        let mut c = s.connect();
        c.send(&rrc(1, "Secure", 1, None));
        assert_eq!(c.answer(), Some(err(1, 17)));
        let mut t = tls_connect(
            s.tls_addr.unwrap(),
            client_config(&ca.cert.pem(), None, &[]),
        );
        t.write_all(&rrc(1, "Secure", 1, None)).unwrap();
        assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
    }
}

each_engine! {
    fn certificate_identities_match_or_fail_with_4() {
        let files = Files::new("mtls");
        let ca = Ca::new("test CA");
        let clients = Ca::new("client CA");
        let s = start(&files, &ca, Some(&clients), &[]);
        let addr = s.tls_addr.unwrap();
        for (dns, uris, cn, want_ok) in [
            (&["media1.example.com"][..], &[][..], "whatever", true),
            (&[][..], &["spiffe://corp/media"][..], "x", true),
            (
                &["media2.example.com"][..],
                &[][..],
                "media1.example.com",
                false,
            ),
        ] {
            let (cert, key) = clients.issue(dns, uris, cn);
            let cfg = client_config(&ca.cert.pem(), Some((&cert, &key)), &[]);
            let mut t = tls_connect(addr, cfg);
            t.write_all(&rrc(1, "Media1", 1, None)).unwrap();
            let a = answer(&mut t);
            if want_ok {
                assert!(
                    matches!(a, Some(Ans::Ack { rid: 1, .. })),
                    "{dns:?} {uris:?}: {a:?}"
                );
            } else {
                assert_eq!(
                    a,
                    Some(err(1, 4)),
                    "{dns:?} {cn}: a CN is not a SAN DNS name"
                );
            }
        }
        // No client certificate at all: the handshake passes (not required), identity fails.
        let mut t = tls_connect(addr, client_config(&ca.cert.pem(), None, &[]));
        t.write_all(&rrc(1, "Media1", 1, None)).unwrap();
        assert_eq!(answer(&mut t), Some(err(1, 4)));
    }
}

each_engine! {
    fn a_certificate_from_another_ca_fails_the_handshake_without_ixn_bytes() {
        let files = Files::new("otherca");
        let ca = Ca::new("test CA");
        let clients = Ca::new("client CA");
        let rogue = Ca::new("rogue CA");
        let s = start(
            &files,
            &ca,
            Some(&clients),
            &["--tls-require-client-cert", "true"],
        );
        let (cert, key) = rogue.issue(&["media1.example.com"], &[], "rogue");
        let mut t = tls_connect(
            s.tls_addr.unwrap(),
            client_config(&ca.cert.pem(), Some((&cert, &key)), &[]),
        );
        let _ = t.write_all(&rrc(1, "Media1", 1, None));
        assert_eq!(
            answer(&mut t),
            None,
            "no IXN/1 answer after a refused handshake"
        );
        // Required and not offered: refused as well.
        let mut t = tls_connect(
            s.tls_addr.unwrap(),
            client_config(&ca.cert.pem(), None, &[]),
        );
        let _ = t.write_all(&rrc(1, "Media1", 1, None));
        assert_eq!(answer(&mut t), None);
        assert!(s.wait_metric("ixn_tls_handshakes_total{result=\"failed\"}", 2.0) >= 2.0);
    }
}

each_engine! {
    fn a_client_offering_only_other_alpn_protocols_is_refused() {
        let files = Files::new("alpn");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &[]);
        let mut t = tls_connect(
            s.tls_addr.unwrap(),
            client_config(&ca.cert.pem(), None, &[b"h2"]),
        );
        let _ = t.write_all(&rrc(1, "MediaServer_email", 1, None));
        assert_eq!(answer(&mut t), None);
    }
}

each_engine! {
    fn a_stalled_handshake_is_dropped_at_the_registration_deadline() {
        let files = Files::new("stall");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &[]);
        // A TCP connection to the TLS listener that sends half a ClientHello, then nothing.
        let mut c = Client::connect(s.tls_addr.unwrap());
        c.send(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00]);
        let t0 = Instant::now();
        assert_eq!(c.read_raw(), None, "closed without an IXN/1 byte");
        let waited = c.connected_at.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1500),
            "dropped after {waited:?} (deadline 1 s; read started {:?} after connect)",
            t0.duration_since(c.connected_at)
        );
    }
}

each_engine! {
    fn bad_tls_files_are_refused_at_start_naming_the_flag() {
        let files = Files::new("badfiles");
        let empty = files.write("empty.pem", "");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ixn-server"))
            .args([
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                &empty,
                "--tls-key",
                &empty,
            ])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--tls-cert"), "{err}");
    }
}

each_engine! {
    fn sighup_rotates_the_certificate_for_new_connections_only() {
        let files = Files::new("rotate");
        let old_ca = Ca::new("old CA");
        let s = start(&files, &old_ca, None, &[]);
        let addr = s.tls_addr.unwrap();
        let mut old = tls_connect(addr, client_config(&old_ca.cert.pem(), None, &[]));
        old.write_all(&rrc(1, "MediaServer_email", 1, None))
            .unwrap();
        assert!(matches!(answer(&mut old), Some(Ans::Ack { rid: 1, .. })));

        // A broken key is refused on reload: the old certificate stays in force.
        files.write("server.key", "not a key");
        s.signal("HUP");
        s.wait_log("TLS reload refused");
        let mut t = tls_connect(addr, client_config(&old_ca.cert.pem(), None, &[]));
        t.write_all(&rrc(1, "MediaServer_email", 1, None)).unwrap();
        assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));

        // A new certificate from another CA: new connections see it...
        let new_ca = Ca::new("new CA");
        let (cert, key) = new_ca.issue(&["ixn.test"], &[], "ixn.test");
        files.write("server.pem", &cert);
        files.write("server.key", &key);
        s.signal("HUP");
        s.wait_log("TLS certificate, key and client CAs reloaded");
        let mut t = tls_connect(addr, client_config(&new_ca.cert.pem(), None, &[]));
        t.write_all(&rrc(1, "MediaServer_email", 1, None)).unwrap();
        assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
        let mut t = tls_connect(addr, client_config(&old_ca.cert.pem(), None, &[]));
        let _ = t.write_all(&rrc(1, "MediaServer_email", 1, None));
        assert_eq!(
            answer(&mut t),
            None,
            "the old CA no longer verifies the server"
        );
        // ...while the connection made before the rotation goes on.
        old.write_all(&unreg(2, None)).unwrap();
        assert_eq!(answer(&mut old), Some(ack(2, None)));
    }
}

each_engine! {
    fn tickets_resume_on_every_worker() {
        let files = Files::new("resume");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &["--workers", "2"]);
        let cfg = client_config(&ca.cert.pem(), None, &[]);
        for n in 0..6 {
            let mut t = tls_connect(s.tls_addr.unwrap(), cfg.clone());
            t.write_all(&rrc(1, "MediaServer_email", 1, None)).unwrap();
            assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
            let resumed = t.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            assert_eq!(resumed, n > 0, "connection {n}");
        }
        assert_eq!(
            s.wait_metric("ixn_tls_handshakes_total{result=\"resumed\"}", 5.0),
            5.0
        );
    }
}

each_engine! {
    /// `openssl s_client`, a client nobody here wrote, registers over TLS 1.3 and over 1.2.
    fn openssl_s_client_registers_over_tls13_and_tls12() {
        let files = Files::new("openssl");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &[]);
        let ca_file = files.write("ca.pem", &ca.cert.pem());
        let mut input = rrc(1, "MediaServer_email", 1, None);
        input.extend(unreg(2, None));
        for version in ["-tls1_3", "-tls1_2"] {
            let mut child = std::process::Command::new("openssl")
                .args(["s_client", "-quiet", "-verify_return_error", version])
                .args(["-connect", &s.tls_addr.unwrap().to_string()])
                .args(["-servername", "ixn.test", "-verify_hostname", "ixn.test"])
                .args(["-CAfile", &ca_file])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl");
            child.stdin.take().unwrap().write_all(&input).unwrap();
            let out = child.wait_with_output().unwrap();
            // EventAck for the registration, EventAck for the unregistration, then the server
            // closes once written and s_client exits.
            let o = &out.stdout;
            assert!(
                o.len() >= 8,
                "{version}: {:?}",
                String::from_utf8_lossy(&out.stderr)
            );
            let first = u32::from_be_bytes(o[..4].try_into().unwrap()) as usize + 4;
            assert!(
                matches!(decode_answer(&o[..first]), Ans::Ack { rid: 1, .. }),
                "{version}"
            );
            assert_eq!(decode_answer(&o[first..]), ack(2, None), "{version}");
        }
    }
}

each_engine! {
    /// HAProxy in TCP passthrough with `send-proxy-v2` in front of `--proxy-tls-listen`: the
    /// client's TLS goes through untouched and the registry sees the client's own address.
    fn proxy_then_tls_through_haproxy_passthrough() {
        let files = Files::new("haproxy");
        let ca = Ca::new("test CA");
        let s = start(
            &files,
            &ca,
            None,
            &[
                "--proxy-tls-listen",
                "127.0.0.1:0",
                "--proxy-protocol-trusted",
                "127.0.0.1/32",
            ],
        );
        let backend = s.proxy_tls_addr.unwrap();
        let (_haproxy, front) =
            Haproxy::start(&files.dir, &format!("  server a {backend} send-proxy-v2\n"));
        // From 127.0.0.5 through the balancer: the PROXY header carries it.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.5:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.connect(&front.into()).unwrap();
        let tcp: TcpStream = sock.into();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ClientConnection::new(
            client_config(&ca.cert.pem(), None, &[b"ixn/1"]),
            ServerName::try_from("ixn.test").unwrap(),
        )
        .unwrap();
        let mut t = rustls::StreamOwned::new(conn, tcp);
        // HAProxy connects from 127.0.0.1: only the header's address lets this entry in.
        t.write_all(&rrc(1, "Only_127_0_0_5", 1, None)).unwrap();
        assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
        // (HAProxy's start-up probe through the frontend counts as one more.)
        assert!(
            s.wait_metric(
                "ixn_connections_accepted_total{listener=\"proxy_tls\"}",
                2.0
            ) >= 1.0
        );
    }
}

each_engine! {
    /// `ixn-loadgen --tls`: registrations over TLS with the handshake as its own phase, full
    /// handshakes by default and resumed ones with `--tls-resume`.
    fn loadgen_registers_over_tls_and_times_the_handshake() {
        let files = Files::new("loadgen");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &[]);
        let ca_file = files.write("ca.pem", &ca.cert.pem());
        for (resume, want_resumed) in [(false, false), (true, true)] {
            let json = files.dir.join(format!("lg-{resume}.json"));
            let mut cmd = std::process::Command::new(loadgen_bin());
            cmd.args(["--target", &s.tls_addr.unwrap().to_string(), "--tls"])
                .args(["--tls-ca", &ca_file, "--tls-server-name", "ixn.test"])
                .args([
                    "--threads",
                    "1",
                    "-q",
                    "--count",
                    "100",
                    "--concurrency",
                    "4",
                ])
                .arg("--json")
                .arg(&json);
            if resume {
                cmd.arg("--tls-resume");
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v = std::fs::read_to_string(&json).unwrap();
            let field = |after: &str, key: &str| -> Option<u64> {
                let rest = v.split(after).nth(1)?;
                let n = rest.split(&format!("\"{key}\": ")).nth(1)?;
                n.split([',', '\n', '}']).next()?.trim().parse().ok()
            };
            assert_eq!(field("{", "ok"), Some(100), "{v}");
            assert_eq!(field("\"tls_handshake\"", "count"), Some(100), "{v}");
            assert!(String::from_utf8_lossy(&out.stdout).contains("tls handshake"));
            let resumed = s.wait_metric("ixn_tls_handshakes_total{result=\"resumed\"}", 1.0);
            assert_eq!(resumed > 0.0, want_resumed, "resumed handshakes: {resumed}");
        }
    }
}

each_engine! {
    /// Server keys of every kind the flags promise: RSA, ECDSA and Ed25519, made and signed by
    /// openssl (as an operator following OPERATIONS.md would).
    fn rsa_ecdsa_and_ed25519_keys_serve() {
        let files = Files::new("keys");
        let registry = files.write("registry.toml", REGISTRY);
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&files.dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        files.write(
            "leaf.ext",
            "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:ixn.test\n",
        );
        let ca = std::fs::read_to_string(files.dir.join("ca.pem")).unwrap();
        for (name, newkey) in [
            ("rsa", &["-newkey", "rsa:2048"][..]),
            (
                "ecdsa",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            ),
            ("ed25519", &["-newkey", "ed25519"][..]),
        ] {
            let (key, csr, cert) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let mut req = vec!["req", "-new", "-nodes", "-subj", "/CN=ixn.test"];
            req.extend_from_slice(newkey);
            req.extend(["-keyout", &key, "-out", &csr]);
            openssl(&req);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                &cert,
            ]);
            let c = files.dir.join(&cert).display().to_string();
            let k = files.dir.join(&key).display().to_string();
            let s = Server::start(&[
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                &c,
                "--tls-key",
                &k,
                "--registry",
                &registry,
            ]);
            let mut t = tls_connect(s.tls_addr.unwrap(), client_config(&ca, None, &[]));
            t.write_all(&rrc(1, "MediaServer_email", 1, None)).unwrap();
            assert!(
                matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })),
                "{name} key"
            );
        }
    }
}

each_engine! {
    /// A ClientHello that claims a 16 MiB handshake message is refused when its header
    /// arrives (rustls's bound), not buffered until the deadline.
    fn an_oversized_handshake_message_is_refused_at_once() {
        let files = Files::new("oversized");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &[]);
        let mut c = Client::connect(s.tls_addr.unwrap());
        // One handshake record: ClientHello (1) of length 0xffffff, then body bytes.
        let mut rec = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        rec.resize(5 + 0x4000, 0);
        c.send(&rec);
        let t = Instant::now();
        // An alert may come first; then the end of stream, long before the 1 s deadline.
        until_closed(&mut c.s);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "held {:?}",
            t.elapsed()
        );
        assert!(s.wait_metric("ixn_tls_handshakes_total{result=\"failed\"}", 1.0) >= 1.0);
    }
}

// Hardening, round 3 (issue 22): each on every engine this machine allows.

/// A TLS client registered as MediaServer_email.
fn registered(s: &Server, ca: &Ca) -> Tls {
    let mut t = tls_connect(
        s.tls_addr.unwrap(),
        client_config(&ca.cert.pem(), None, &[]),
    );
    t.write_all(&rrc(1, "MediaServer_email", 1, None)).unwrap();
    t.flush().unwrap();
    assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
    t
}

/// A TLS server on `engine` with one worker and `extra` flags, for the test `tag`; its
/// files (removed on drop) and CA come with it.
fn on_engine(tag: &str, engine: &str, extra: &[&str]) -> (Files, Ca, Server) {
    let files = Files::new(&format!("{tag}-{engine}"));
    let ca = Ca::new("test CA");
    let mut args = vec!["--engine", engine, "--workers", "1"];
    args.extend_from_slice(extra);
    let s = start(&files, &ca, None, &args);
    (files, ca, s)
}

/// Reads and drops whatever comes until the peer closes or resets.
fn until_closed(s: &mut impl Read) {
    let mut buf = [0u8; 1024];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// N1: after the client's close_notify, whatever it keeps writing is not kept: 64 MiB
/// sent raised the server's RSS by 64 MiB before the fix (rustls reads nothing after
/// close_notify, and the engine kept the rest for it, without limit).
#[test]
fn n1_bytes_after_close_notify_are_not_kept() {
    for engine in engines() {
        let (_files, ca, s) = on_engine("n1", engine, &[]);
        let base = s.rss_kib();
        let mut t = registered(&s, &ca);
        t.conn.send_close_notify();
        t.flush().unwrap();
        let junk = vec![0x17u8; 1 << 20];
        let mut sent = 0usize;
        let started = Instant::now();
        while sent < 64 << 20 && started.elapsed() < Duration::from_secs(20) {
            match t.sock.write(&junk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let grown = s.rss_kib().saturating_sub(base);
        assert!(
            grown < 16 * 1024,
            "{engine}: RSS grew by {grown} KiB after {sent} bytes past close_notify"
        );
        // The server answered the close: its own close_notify, then the end of stream.
        until_closed(&mut t.sock);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{engine}: still open"
        );
    }
}

/// N2: 4,096 frames in one write over TLS: every answer arrives, in order. Before the fix
/// the answers were cut after 65,536 bytes (rustls's buffer limit, the write's error
/// ignored) and the stream was corrupt.
#[test]
fn n2_answers_over_64_kib_to_one_record_all_arrive_in_order() {
    for engine in engines() {
        let (_files, ca, s) = on_engine("n2", engine, &[]);
        let mut t = registered(&s, &ca);
        // 8-byte frames (a message with no attribute, each answered with an EventError):
        // 2,048 to a 16 KiB record, whose answers exceed 64 KiB.
        let frames: Vec<u8> = (0..4096)
            .flat_map(|_| [0, 0, 0, 4, 0, 0x10, 0, 0])
            .collect();
        t.write_all(&frames).unwrap();
        t.flush().unwrap();
        for i in 0..4096 {
            match answer(&mut t) {
                Some(Ans::Err { rid: 0, .. }) => {}
                other => panic!("{engine}: answer {i}: {other:?}"),
            }
        }
    }
}

/// N3: `--frame-timeout 1s`, a registered TLS client sends a record holding one frame,
/// all but the record's last byte: it is closed at the frame deadline, as on plain TCP.
/// Before the fix it stayed open (the frame was inside rustls, not yet plaintext).
#[test]
fn n3_a_frame_begun_inside_an_unfinished_record_meets_the_frame_deadline() {
    for engine in engines() {
        let (_files, ca, s) = on_engine("n3", engine, &["--frame-timeout", "1s"]);
        let mut t = registered(&s, &ca);
        t.conn.writer().write_all(&other(2)).unwrap();
        let mut record = Vec::new();
        while t.conn.wants_write() {
            t.conn.write_tls(&mut record).unwrap();
        }
        t.sock.write_all(&record[..record.len() - 1]).unwrap();
        let started = Instant::now();
        until_closed(&mut t.sock);
        let held = started.elapsed();
        assert!(
            held >= Duration::from_millis(900) && held < Duration::from_secs(3),
            "{engine}: closed after {held:?}"
        );
    }
}

/// N9: a ClientHello spread over several records (a 58 KiB handshake message) is
/// refused once it exceeds one record, not held (rustls joins up to 64 KiB).
#[test]
fn n9_a_client_hello_over_one_record_is_refused() {
    for engine in engines() {
        let (_files, _ca, s) = on_engine("n9", engine, &[]);
        let mut c = Client::connect(s.tls_addr.unwrap());
        // A ClientHello (1) of 60 KiB of which 58 KiB are sent, in handshake records of
        // 16 KiB: an unfinished message rustls would join and hold.
        let len = 60 * 1024u32;
        let mut msg = vec![0x01];
        msg.extend_from_slice(&len.to_be_bytes()[1..]);
        msg.extend_from_slice(&[0x03, 0x03]);
        msg.resize(58 * 1024, 0);
        let mut refused = false;
        for chunk in msg.chunks(0x4000) {
            let mut rec = vec![0x16, 0x03, 0x01];
            rec.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            rec.extend_from_slice(chunk);
            if c.s.write_all(&rec).is_err() {
                refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        until_closed(&mut c.s);
        assert!(
            refused || started.elapsed() < Duration::from_millis(700),
            "{engine}: held until {:?}",
            started.elapsed()
        );
        let failed = "ixn_tls_handshakes_total{result=\"failed\"}";
        assert_eq!(s.wait_metric(failed, 1.0), 1.0, "{engine}");
    }
}

each_engine! {
    /// Round 3 ("decide and say"): a SIGHUP that changes no TLS file (a registry reload)
    /// keeps the TLS config and its session-ticket key, so tickets issued before it still
    /// resume; a SIGHUP that changes a TLS file replaces both.
    fn a_registry_only_sighup_keeps_session_tickets_valid() {
        let files = Files::new("keep-tickets");
        let ca = Ca::new("test CA");
        let s = start(&files, &ca, None, &["--workers", "1"]);
        let cfg = client_config(&ca.cert.pem(), None, &[]);
        let handshake = || {
            let mut t = tls_connect(s.tls_addr.unwrap(), cfg.clone());
            t.write_all(&rrc(1, "MediaServer_email", 1, None)).unwrap();
            assert!(matches!(answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
            t.conn.handshake_kind()
        };
        assert_eq!(handshake(), Some(rustls::HandshakeKind::Full));
        s.signal("HUP");
        s.wait_log("TLS files unchanged");
        assert_eq!(handshake(), Some(rustls::HandshakeKind::Resumed));
        let (cert, key) = ca.issue(&["ixn.test"], &[], "ixn.test");
        files.write("server.pem", &cert);
        files.write("server.key", &key);
        s.signal("HUP");
        s.wait_log("TLS certificate, key and client CAs reloaded");
        assert_eq!(handshake(), Some(rustls::HandshakeKind::Full));
    }
}

/// N5 (round 3, decided: docs/PROTOCOL.md): at `--max-connections` a TLS client is closed
/// at once during its handshake, on every engine, while a plain one gets EventError 10.
#[test]
fn n5_a_refused_tls_client_is_closed_at_once_during_its_handshake() {
    for engine in engines() {
        let (_files, ca, s) = on_engine("n5", engine, &["--max-connections", "1"]);
        let _held = registered(&s, &ca);
        let started = Instant::now();
        let mut t = tls_connect(
            s.tls_addr.unwrap(),
            client_config(&ca.cert.pem(), None, &[]),
        );
        let _ = t.write_all(&rrc(1, "MediaServer_email", 1, None));
        let _ = t.flush();
        assert_eq!(
            answer(&mut t),
            None,
            "{engine}: no IXN/1 byte before a handshake"
        );
        assert!(
            t.conn.is_handshaking(),
            "{engine}: refused during the handshake"
        );
        assert!(started.elapsed() < Duration::from_millis(500), "{engine}");
        let mut c = s.connect();
        assert_eq!(
            c.answer(),
            Some(err(0, 10)),
            "{engine}: plain gets the code"
        );
    }
}
