//! The TLS listeners' rustls `ServerConfig`, built from PEM files (docs/PROTOCOL.md §9).
//!
//! The protocol side of TLS lives in `ixn_proto::tls` (sans-IO, inside `Connection`); this
//! module only reads files and sets policy: TLS 1.3 and 1.2, ALPN `ixn/1`, session tickets
//! from one ticketer shared by every worker (a client resumes whichever worker it reaches),
//! and client certificates verified against `--tls-client-ca` when one is given. The crypto
//! provider is aws-lc-rs: measured against *ring* on this machine it spends 9–18 % less
//! server CPU per handshake, full or resumed (docs/BENCHMARKS.md), and it builds with a C
//! compiler alone.
//! The config is built at start and again on SIGHUP; a file that fails keeps the old one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The ALPN protocol a TLS listener selects when the client offers ALPN.
pub const ALPN: &[u8] = b"ixn/1";

/// Where the TLS settings come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// `--tls-key`: PEM private key.
    pub key: Option<PathBuf>,
    /// `--tls-client-ca`: PEM CA bundle for client certificates.
    pub client_ca: Option<PathBuf>,
    /// `--tls-require-client-cert`.
    pub require_client_cert: bool,
}

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{flag} {path}: {message}")]
    File {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(flag: &'static str, path: &Path, message: impl ToString) -> TlsConfigError {
    TlsConfigError::File {
        flag,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

impl TlsFiles {
    /// The bytes of every file set (certificate, key, client CAs), to tell whether a
    /// reload would change anything; `None` if one cannot be read.
    pub fn file_bytes(&self) -> Option<Vec<u8>> {
        let mut all = Vec::new();
        for p in [&self.cert, &self.key, &self.client_ca]
            .into_iter()
            .flatten()
        {
            all.extend(std::fs::read(p).ok()?);
            all.push(0);
        }
        Some(all)
    }

    /// Reads the files and builds the server config; `None` when no certificate is set.
    pub fn load(&self) -> Result<Option<Arc<ServerConfig>>, TlsConfigError> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let chain = certs("--tls-cert", cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("--tls-key", key, e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs("--tls-client-ca", ca)? {
                    roots
                        .add(c)
                        .map_err(|e| file_error("--tls-client-ca", ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_client_cert {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                }
                .map_err(|e| file_error("--tls-client-ca", ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        Ok(Some(Arc::new(config)))
    }
}
