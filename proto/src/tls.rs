//! TLS as a sans-IO layer (docs/PROTOCOL.md §9): rustls between the bytes an engine reads and
//! the IXN/1 frames, and the certificate identities `tls_identities` matches.
//!
//! rustls is itself sans-IO: ciphertext goes in with `read_tls` from a byte slice,
//! plaintext comes out of its reader, answers go into its writer and records come out of
//! `write_tls` into the engine's output buffer. So an engine passes owned buffers exactly as
//! for plain TCP and knows nothing of TLS; [`crate::connection::Connection`] holds a
//! [`ServerTls`] when its listener is a TLS one. Building the `ServerConfig` (reading PEM
//! files, choosing the crypto provider) is the server's business, not this crate's.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BufMut;
use rustls::server::ServerConnection;
use rustls::ServerConfig;

label_enum! {
    /// The kind of listener a connection came through: the `listener` label of
    /// `ixn_connections_accepted_total` (docs/PROTOCOL.md §9).
    pub enum ListenerKind {
        /// Plain TCP.
        Plain => "plain",
        /// TLS.
        Tls => "tls",
        /// A PROXY protocol header, then plain IXN/1.
        Proxy => "proxy",
        /// A PROXY protocol header, then TLS (HAProxy passthrough with `send-proxy-v2`).
        ProxyTls => "proxy_tls",
    }
}

impl ListenerKind {
    /// Whether a PROXY protocol header comes first.
    pub fn proxy(self) -> bool {
        matches!(self, Self::Proxy | Self::ProxyTls)
    }

    /// Whether the connection speaks TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Tls | Self::ProxyTls)
    }
}

label_enum! {
    /// How a handshake ended: the `result` label of `ixn_tls_handshakes_total`.
    pub enum HandshakeResult {
        /// A full handshake.
        Full => "full",
        /// Resumed from a session ticket (or a TLS 1.2 session id).
        Resumed => "resumed",
        /// Refused or broken: the connection ends with an alert and no IXN/1 bytes.
        Failed => "failed",
    }
}

/// A finished (or failed) handshake, for the engine's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// How it ended.
    pub result: HandshakeResult,
    /// From TCP accept to the handshake's end.
    pub duration: Duration,
}

/// What a connection's TLS says about its peer, once the handshake is done: what the
/// registry checks and what the admin API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The verified client certificate's identities, `dns:`, `uri:`, `ip:` then `cn:`
    /// (empty without a client certificate).
    pub identities: Vec<Box<str>>,
}

/// The identities of a DER certificate: SAN DNS names, URIs and IP addresses, then the
/// subject's common names. A certificate that does not parse has none.
pub fn identities_of(der: &[u8]) -> Vec<Box<str>> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut ids: Vec<Box<str>> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => ids.push(format!("dns:{d}").into()),
                GeneralName::URI(u) => ids.push(format!("uri:{u}").into()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        ids.push(format!("ip:{ip}").into());
                    }
                }
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            ids.push(format!("cn:{cn}").into());
        }
    }
    ids
}

/// Why TLS ended a connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The handshake or a record was refused; the alert rustls queued is in the output.
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    /// The client's first flight (its ClientHello) did not fit one record: a half-open
    /// handshake may pin no more than that.
    #[error("TLS: the ClientHello does not fit one record")]
    HelloTooLarge,
    /// rustls refused more ciphertext while the connection was open (its buffer bound).
    #[error("TLS: {0}")]
    Refused(String),
}

/// The largest TLS record on the wire before the server's first flight: a 5-byte header
/// and 16 KiB of plaintext (a ClientHello is never encrypted).
pub const HELLO_MAX: usize = 5 + 16 * 1024;

/// Where the ciphertext stream is among TLS records: enough to tell whether a record has
/// begun and not ended (the frame deadline covers it), without looking inside.
#[derive(Debug, Default, Clone, Copy)]
struct Records {
    /// Header bytes of the next record seen so far (0 to 4).
    head_len: u8,
    /// The length field's first byte, once the header's fourth byte has arrived.
    len_hi: u8,
    /// Body bytes of the current record not yet seen.
    body_left: u16,
}

impl Records {
    /// Follows `bytes` of the stream.
    fn track(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let k = bytes.len().min(usize::from(self.body_left));
                self.body_left -= k as u16;
                bytes = &bytes[k..];
                continue;
            }
            // Header: type (1), version (2), length (2).
            match self.head_len {
                3 => self.len_hi = bytes[0],
                4 => self.body_left = u16::from_be_bytes([self.len_hi, bytes[0]]),
                _ => {}
            }
            self.head_len = (self.head_len + 1) % 5;
            bytes = &bytes[1..];
        }
    }

    /// Whether a record has begun and not ended.
    fn mid_record(self) -> bool {
        self.head_len > 0 || self.body_left > 0
    }
}

/// One connection's TLS: rustls's server state, the plaintext not yet framed, and, once
/// the handshake is done, what it says about the peer.
#[derive(Debug)]
pub struct ServerTls {
    conn: ServerConnection,
    /// Decrypted bytes the frame decoder has not consumed (at most one frame's worth, plus
    /// one record: the decoder consumes every complete frame).
    plain: Vec<u8>,
    peer: Option<TlsPeer>,
    /// Where the client's ciphertext is among records.
    records: Records,
    /// Ciphertext taken before the server's first flight (bounded by [`HELLO_MAX`]).
    hello_bytes: u32,
    /// The server has answered the ClientHello (or failed it).
    hello_answered: bool,
    /// The peer's close_notify has arrived.
    peer_closed: bool,
}

impl ServerTls {
    /// A server side for a new connection.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self {
            conn: ServerConnection::new(config)?,
            plain: Vec::new(),
            peer: None,
            records: Records::default(),
            hello_bytes: 0,
            hello_answered: false,
            peer_closed: false,
        })
    }

    /// The peer, once the handshake is done.
    pub fn peer(&self) -> Option<&TlsPeer> {
        self.peer.as_ref()
    }

    /// Takes ciphertext in, decrypts what it can into the plaintext buffer and returns the
    /// bytes of `input` taken: all of them, unless the peer has sent close_notify (after
    /// which nothing more is read: see [`ServerTls::peer_closed`]). A handshake that ends
    /// here is returned, accepted at `accepted_at`, finished at `now`. On an error the
    /// alert rustls queued is left to [`ServerTls::flush`].
    pub fn receive(
        &mut self,
        mut input: &[u8],
        accepted_at: Instant,
        now: Instant,
    ) -> (usize, Result<Option<Handshake>, TlsError>) {
        let len = input.len();
        let mut done = None;
        while !input.is_empty() {
            // Before the server's first flight only one record may arrive: a ClientHello
            // that spans records would let a half-open handshake pin up to rustls's
            // 64 KiB bound on a handshake message.
            let room = if self.hello_answered {
                input.len()
            } else {
                HELLO_MAX.saturating_sub(self.hello_bytes as usize)
            };
            if room == 0 {
                return (len - input.len(), Err(TlsError::HelloTooLarge));
            }
            let offered = input.len().min(room);
            let mut chunk = &input[..offered];
            let read = self.conn.read_tls(&mut chunk);
            let n = offered - chunk.len();
            self.records.track(&input[..n]);
            if !self.hello_answered {
                self.hello_bytes += n as u32;
            }
            input = &input[n..];
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return (len - input.len(), Err(TlsError::Refused(e.to_string()))),
            }
            match self.conn.process_new_packets() {
                Ok(state) => self.peer_closed = state.peer_has_closed(),
                Err(e) => {
                    self.hello_answered = true;
                    return (len - input.len(), Err(e.into()));
                }
            }
            if self.conn.wants_write() || !self.conn.is_handshaking() {
                self.hello_answered = true;
            }
            if self.peer.is_none() && !self.conn.is_handshaking() {
                done = Some(self.finish_handshake(accepted_at, now));
            }
            self.drain_plaintext();
        }
        (len - input.len(), Ok(done))
    }

    /// Whether the peer has sent close_notify: it sends nothing more, and any bytes after
    /// it are not read.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether a TLS record has begun arriving and not ended: a frame may be inside it,
    /// so the frame deadline must run.
    pub fn mid_record(&self) -> bool {
        self.records.mid_record()
    }

    fn finish_handshake(&mut self, accepted_at: Instant, now: Instant) -> Handshake {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLSv1.3",
        };
        let identities = self
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| identities_of(c.as_ref()))
            .unwrap_or_default();
        self.peer = Some(TlsPeer {
            version,
            identities,
        });
        let result = match self.conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => HandshakeResult::Resumed,
            _ => HandshakeResult::Full,
        };
        Handshake {
            result,
            duration: now.saturating_duration_since(accepted_at),
        }
    }

    fn drain_plaintext(&mut self) {
        let mut chunk = [0u8; 1024];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.plain.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The decrypted bytes not yet framed.
    pub fn plaintext(&self) -> &[u8] {
        &self.plain
    }

    /// Drops `n` framed bytes from the front of the plaintext.
    pub fn consume(&mut self, n: usize) {
        self.plain.drain(..n.min(self.plain.len()));
        if self.plain.is_empty() {
            // An idle TLS connection keeps no plaintext buffer.
            self.plain = Vec::new();
        }
    }

    /// Encrypts `answers` and appends the records to `out`, all of them: rustls bounds
    /// what it holds unsent (64 KiB), so the answers go in as fast as the records come
    /// out, and `out` (the engine's, written under its own backpressure) takes them.
    pub fn send(&mut self, mut answers: &[u8], out: &mut impl BufMut) {
        while !answers.is_empty() {
            match self.conn.writer().write(answers) {
                Ok(n) if n > 0 => answers = &answers[n..],
                // Nothing taken with rustls's buffer just flushed: it is closed for
                // writing (after our close_notify), and the rest could never be sent.
                _ if !self.conn.wants_write() => break,
                _ => {}
            }
            self.flush(out);
        }
        self.flush(out);
    }

    /// Appends whatever rustls has to send (handshake messages, records, an alert) to
    /// `out`.
    pub fn flush(&mut self, out: &mut impl BufMut) {
        let mut w = out.writer();
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut w) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Queues a close_notify alert (flush it with [`ServerTls::flush`]).
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_kinds() {
        assert!(ListenerKind::ProxyTls.proxy() && ListenerKind::ProxyTls.tls());
        assert!(!ListenerKind::Plain.proxy() && !ListenerKind::Plain.tls());
        assert_eq!(
            ListenerKind::ALL.map(|k| k.name()),
            ["plain", "tls", "proxy", "proxy_tls"]
        );
    }

    #[test]
    fn records_are_followed_across_any_split() {
        // Two records: 3 body bytes, then 2.
        let stream = [22, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 2, 9, 9];
        for cut in 0..=stream.len() {
            let mut r = Records::default();
            r.track(&stream[..cut]);
            let inside = cut != 0 && cut != 8 && cut != stream.len();
            assert_eq!(r.mid_record(), inside, "after {cut} bytes");
            r.track(&stream[cut..]);
            assert!(!r.mid_record(), "whole stream after a cut at {cut}");
        }
        // A record with an empty body ends with its header.
        let mut r = Records::default();
        r.track(&[21, 3, 3, 0, 0]);
        assert!(!r.mid_record());
    }

    #[test]
    fn garbage_is_no_identity() {
        assert!(identities_of(b"not a certificate").is_empty());
    }
}
