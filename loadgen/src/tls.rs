//! `--tls`: the client side of docs/PROTOCOL.md §9 with rustls (aws-lc-rs), driven by
//! hand over the thread's tokio-uring sockets: records are read into and written from
//! owned buffers, rustls decrypts and encrypts in between.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::cli::Args;

/// The ALPN protocol offered, as the server selects it.
pub const ALPN: &[u8] = b"ixn/1";

/// The client config for `--tls`, or `None` without it.
pub fn client_config(a: &Args) -> anyhow::Result<Option<Arc<ClientConfig>>> {
    if !a.tls {
        return Ok(None);
    }
    let ca = a
        .tls_ca
        .as_ref()
        .context("--tls needs --tls-ca (the CA that signed the server's certificate)")?;
    let mut roots = RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("--tls-ca {}", ca.display()))?
    {
        roots
            .add(c.with_context(|| format!("--tls-ca {}", ca.display()))?)
            .with_context(|| format!("--tls-ca {}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut c = match (&a.tls_cert, &a.tls_key) {
        (None, None) => b.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("--tls-cert {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--tls-cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("--tls-key {}", key.display()))?;
            b.with_client_auth_cert(chain, key)?
        }
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    c.alpn_protocols = vec![ALPN.to_vec()];
    if !a.tls_resume {
        // Every connection pays a full handshake, unless --tls-resume.
        c.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Some(Arc::new(c)))
}

/// The name the server's certificate is checked against: `--tls-server-name`, else the
/// target's address.
pub fn server_name(a: &Args) -> anyhow::Result<ServerName<'static>> {
    match &a.tls_server_name {
        Some(n) => ServerName::try_from(n.clone()).context("--tls-server-name"),
        None => Ok(ServerName::IpAddress(match a.target.ip() {
            IpAddr::V4(v) => rustls::pki_types::IpAddr::V4(v.into()),
            IpAddr::V6(v) => rustls::pki_types::IpAddr::V6(v.into()),
        })),
    }
}

/// rustls's records to send, appended to `out`.
pub fn pending_records(c: &mut ClientConnection, out: &mut Vec<u8>) {
    while c.wants_write() {
        if c.write_tls(out).is_err() {
            break;
        }
    }
}

/// Feeds received ciphertext, appending the plaintext to `plain`.
pub fn receive(
    c: &mut ClientConnection,
    mut input: &[u8],
    plain: &mut Vec<u8>,
) -> std::io::Result<()> {
    while !input.is_empty() {
        c.read_tls(&mut input)?;
        c.process_new_packets()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut chunk = [0u8; 512];
        loop {
            match c.reader().read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
            }
        }
    }
    Ok(())
}

/// Queues plaintext for encryption.
pub fn queue(c: &mut ClientConnection, bytes: &[u8]) {
    let _ = c.writer().write_all(bytes);
}
