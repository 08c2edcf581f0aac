//! Which rustls crypto provider the server uses (issue 15): full and resumed TLS 1.3
//! handshakes between a rustls client and server in memory, one thread, with *ring* and with
//! aws-lc-rs, timing only the server side's calls. `cargo bench --bench tls_provider`.
//! Not a test: it prints (docs/BENCHMARKS.md has the figures).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::server::ProducesTickets;

/// Server CPU per handshake (µs) over `n` handshakes.
fn server_us(
    provider: CryptoProvider,
    ticketer: Arc<dyn ProducesTickets>,
    n: usize,
    resume: bool,
) -> f64 {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ixn.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(provider);
    let mut sc = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    sc.ticketer = ticketer;
    let sc = Arc::new(sc);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        cc.resumption = rustls::client::Resumption::disabled();
    }
    let cc = Arc::new(cc);
    let mut server = Duration::ZERO;
    for _ in 0..n {
        let name = ServerName::try_from("ixn.test").unwrap();
        let mut c = rustls::ClientConnection::new(cc.clone(), name).unwrap();
        let mut s = rustls::ServerConnection::new(sc.clone()).unwrap();
        loop {
            let mut moved = false;
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                let t = Instant::now();
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets().unwrap();
                server += t.elapsed();
            }
            let mut buf = Vec::new();
            let t = Instant::now();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            server += t.elapsed();
            if !buf.is_empty() {
                moved = true;
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets().unwrap();
            }
            if !moved && !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
    }
    server.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets`: a smoke run of each provider.
        for resume in [false, true] {
            let us = server_us(
                rustls::crypto::ring::default_provider(),
                rustls::crypto::ring::Ticketer::new().unwrap(),
                3,
                resume,
            );
            assert!(us > 0.0);
        }
        return;
    }
    for round in 1..=2 {
        for resume in [false, true] {
            let ring = server_us(
                rustls::crypto::ring::default_provider(),
                rustls::crypto::ring::Ticketer::new().unwrap(),
                2000,
                resume,
            );
            let aws = server_us(
                rustls::crypto::aws_lc_rs::default_provider(),
                rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
                2000,
                resume,
            );
            println!(
                "round {round}, {}: ring {ring:.1} µs, aws-lc-rs {aws:.1} µs of server CPU per handshake ({:.2}x)",
                if resume { "resumed" } else { "full" },
                aws / ring
            );
        }
    }
}
