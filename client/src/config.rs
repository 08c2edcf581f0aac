//! What a [`crate::Client`] is told: its servers, how it picks among them, TLS, its
//! registration, its backoff and what it does with each refusal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ixn_proto::protocol::ClientType;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// Which server of the list a client tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// The first server of the list whenever it (re)connects, then the next ones in
    /// order: a primary and its backups.
    #[default]
    PrimaryBackup,
    /// A random server of the list, then the next ones in order: clients spread their
    /// load (and their reconnections after a drain) over every server.
    Spread,
}

/// What the client does when a registration is refused with EventError 14
/// (DuplicateClient) or 16 (AddressTemporarilyRefused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefusalPolicy {
    /// Stop, and say why ([`crate::Stop::Refused`]).
    #[default]
    Stop,
    /// Try again after the backoff: the name may be free, or the ban over, by then.
    Retry,
}

/// One registration: the connection's own, or a Proxy's logical client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// ClientName, 1..=255 bytes.
    pub name: String,
    /// ClientType.
    pub client_type: ClientType,
    /// Credential, when the server's registry asks for one.
    pub credential: Option<String>,
    /// Extension: key/value pairs sent as strings.
    pub extension: Vec<(String, String)>,
    /// The keepalive to ask for (whole seconds, docs/PROTOCOL.md §12); the server clamps
    /// it and says which is in force. Ignored for a Proxy's logical clients.
    pub keep_alive: Option<Duration>,
}

impl Registration {
    /// A registration of `name` as `client_type`, with nothing else.
    pub fn new(name: impl Into<String>, client_type: ClientType) -> Self {
        Self {
            name: name.into(),
            client_type,
            credential: None,
            extension: Vec::new(),
            keep_alive: None,
        }
    }

    /// With this Credential.
    pub fn credential(mut self, credential: impl Into<String>) -> Self {
        self.credential = Some(credential.into());
        self
    }

    /// With this Extension entry (added after those already given).
    pub fn extension(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extension.push((key.into(), value.into()));
        self
    }

    /// Asking for this keepalive.
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = Some(every);
        self
    }
}

/// Exponential backoff with full jitter: the n-th wait in a row is drawn uniformly from
/// `0..min(max, initial × 2^(n-1))`, so clients a drain or an outage dropped together do
/// not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub initial: Duration,
    /// The ceiling of every wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before attempt `failures + 1`, after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let ceiling = self
            .initial
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// TLS towards the servers: rustls's client configuration and the name their
/// certificates carry.
#[derive(Debug, Clone)]
pub struct Tls {
    /// rustls's configuration (roots, client certificate, protocol versions).
    pub config: Arc<rustls::ClientConfig>,
    /// The name every server's certificate must carry; by default each server's host.
    pub server_name: Option<String>,
}

impl Tls {
    /// Servers whose certificates chain to a CA of the PEM bundle `ca`, with no client
    /// certificate.
    pub fn with_ca_file(ca: impl AsRef<Path>) -> Result<Self, Error> {
        Self::build(ca.as_ref(), None)
    }

    /// Like [`Tls::with_ca_file`], presenting the PEM certificate chain `cert` and its
    /// private key `key` to servers that verify clients (mutual TLS).
    pub fn with_client_cert(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        Self::build(ca.as_ref(), Some((cert.as_ref(), key.as_ref())))
    }

    /// With this name to check the servers' certificates against.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    fn build(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, Error> {
        let bad = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
            Error::Config(format!("{what} {}: {e}", p.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad("CA file", ca, &e))? {
            let cert = cert.map_err(|e| bad("CA file", ca, &e))?;
            roots.add(cert).map_err(|e| bad("CA file", ca, &e))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad("certificate", cert, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("certificate", cert, &e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Config(e.to_string()))?
            }
        };
        Ok(Self {
            config: Arc::new(config),
            server_name: None,
        })
    }
}

/// Everything a [`crate::Client`] needs; build it with [`ClientConfig::new`] and the
/// setters.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Servers as `host:port`, at least one.
    pub servers: Vec<String>,
    /// Which is tried first.
    pub selection: Selection,
    /// TLS, or plain TCP.
    pub tls: Option<Tls>,
    /// The connection's own registration, made again after every reconnection.
    pub registration: Registration,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// Longest wait for a connection (TCP and TLS handshakes together).
    pub connect_timeout: Duration,
    /// Longest wait for any answer: a registration's, and a RequestKeepAlive's, after
    /// which the server is declared dead. With a keepalive k in force the shorter of this
    /// and k / 2 is used, so a silent server is noticed within k.
    pub answer_timeout: Duration,
    /// What EventError 14 (DuplicateClient) does.
    pub on_duplicate: RefusalPolicy,
    /// What EventError 16 (AddressTemporarilyRefused) does.
    pub on_banned: RefusalPolicy,
}

impl ClientConfig {
    /// A client of `servers` (`host:port`, tried as [`Selection`] says) registering as
    /// `registration`, over plain TCP, with the default backoff and timeouts.
    pub fn new<S: Into<String>>(
        servers: impl IntoIterator<Item = S>,
        registration: Registration,
    ) -> Self {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            selection: Selection::default(),
            tls: None,
            registration,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(5),
            on_duplicate: RefusalPolicy::default(),
            on_banned: RefusalPolicy::default(),
        }
    }

    /// Over TLS.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Choosing servers this way.
    pub fn selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// With this backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// With this answer timeout.
    pub fn answer_timeout(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    /// With these policies for EventError 14 and 16.
    pub fn refusals(mut self, on_duplicate: RefusalPolicy, on_banned: RefusalPolicy) -> Self {
        self.on_duplicate = on_duplicate;
        self.on_banned = on_banned;
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.servers.is_empty() {
            return Err(Error::Config("no server given".into()));
        }
        let n = self.registration.name.len();
        if !(1..=255).contains(&n) {
            return Err(Error::Config(format!("a ClientName of {n} bytes")));
        }
        if let Some(k) = self.registration.keep_alive {
            if k.subsec_nanos() != 0 || !(1..=u64::from(u16::MAX)).contains(&k.as_secs()) {
                return Err(Error::Config(format!(
                    "keepalive {k:?}: whole seconds in 1..=65535"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_full_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::ZERO);
        for (n, ceiling) in [(1, 100), (2, 200), (4, 800), (5, 1000), (30, 1000)] {
            let draws: Vec<_> = (0..200).map(|_| b.delay(n)).collect();
            let ceiling = Duration::from_millis(ceiling);
            assert!(draws.iter().all(|d| *d <= ceiling), "{n}");
            // Spread below the ceiling, not stuck at it.
            assert!(draws.iter().any(|d| *d < ceiling / 2), "{n}");
            assert!(draws.iter().any(|d| *d > ceiling / 2), "{n}");
        }
    }

    #[test]
    fn a_config_is_checked() {
        let reg = Registration::new("a", ClientType::MediaServer);
        assert!(ClientConfig::new(["x:1"], reg.clone()).check().is_ok());
        assert!(ClientConfig::new(Vec::<String>::new(), reg.clone())
            .check()
            .is_err());
        let half = reg.clone().keep_alive(Duration::from_millis(1500));
        assert!(ClientConfig::new(["x:1"], half).check().is_err());
        let empty = Registration::new("", ClientType::MediaServer);
        assert!(ClientConfig::new(["x:1"], empty).check().is_err());
    }
}
