//! Fuzz target: a `Connection` on a TLS listener (optionally behind a PROXY header) fed
//! arbitrary bytes as its ClientHello and records, cut into reads, with its deadlines. It
//! must never panic, never take more input than it is given, keep `armed()` equal to the
//! last timer change, write nothing once a close is decided, and end every refused
//! handshake with a close once written (the alert), never a silent reset.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ixn::connection::{Action, ConnConfig, Connection, Env};
use ixn::registry::Registry;
use ixn::session::{CloseReason, IdAllocator};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

static REGISTRY: OnceLock<Registry> = OnceLock::new();
/// A self-signed certificate made once: building it per input would dominate each run.
static TLS: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();

fn tls_config() -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ixn.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    c.alpn_protocols = vec![b"ixn/1".to_vec()];
    Arc::new(c)
}

const DEADLINE: u8 = 0xfd;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let registry = REGISTRY.get_or_init(Registry::embedded);
    let tls = TLS.get_or_init(tls_config).clone();
    let mut ids = IdAllocator::default();
    let config = ConnConfig::default();
    let now = Instant::now();
    let proxy = mode & 1 == 1;
    let read_size = usize::from(mode >> 1).max(1);
    let (mut c, _) = Connection::accept_tls(
        now,
        (IpAddr::V4(Ipv4Addr::LOCALHOST), 40000).into(),
        proxy,
        tls,
        &config,
    )
    .expect("a valid config");
    let mut pending = Vec::new();
    let mut decided = false;
    for chunk in data.chunks(read_size) {
        let mut out = Vec::new();
        let mut env = Env {
            registry,
            ids: &mut ids,
            config: &config,
            gate: None,
            names: None,
        };
        let p = if chunk.first() == Some(&DEADLINE) {
            match c.armed() {
                Some(t) => c.on_deadline(now, t, &mut env, &mut out, |_| {}),
                None => continue,
            }
        } else {
            common::feed(&mut c, now, &mut pending, chunk, &mut env, &mut out)
        };
        common::check_timer(&c, &p);
        if decided {
            assert!(out.is_empty(), "wrote after the close was decided");
        }
        if !decided {
            // (After the alert, the linger may end it now with the same reason.)
            assert_ne!(
                p.action,
                Action::CloseNow(CloseReason::Tls),
                "a refused handshake must close once its alert is written"
            );
        }
        match p.action {
            Action::Continue => {}
            Action::CloseNow(_) => break,
            Action::CloseAfterWrite => {
                decided = true;
                let _ = c.on_flushed(now, &config);
            }
        }
    }
});
