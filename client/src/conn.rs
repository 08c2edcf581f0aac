//! One connection to one server: TCP (and TLS), IXN/1 frames written and answers read
//! with the same codec the server uses.

use std::time::Duration;

use ixn_proto::protocol::{
    decode, encode, write_kv_entry, KeepAlive, KvList, Message, RegisterClient, UnregisterClient,
    Value, DEFAULT_MAX_FRAME_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Registration, Tls};

/// A byte stream to a server: TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An answer from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// EventAck.
    Ack {
        rid: i32,
        proxy_client_id: Option<i32>,
        keep_alive: Option<u16>,
    },
    /// EventError.
    Error { rid: i32, code: i32 },
}

/// One open connection.
pub(crate) struct Conn {
    stream: Box<dyn Stream>,
    /// Bytes read and not yet decoded.
    buf: Vec<u8>,
    next_rid: i32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects to `server` (`host:port`) within `timeout`, over TLS when `tls` says so.
    pub(crate) async fn open(
        server: &str,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> std::io::Result<Conn> {
        let open = async {
            let tcp = TcpStream::connect(server).await?;
            tcp.set_nodelay(true)?;
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some(t) => {
                    let host = t.server_name.clone().unwrap_or_else(|| host_of(server));
                    let name = rustls::pki_types::ServerName::try_from(host)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    let connector = tokio_rustls::TlsConnector::from(t.config.clone());
                    Box::new(connector.connect(name, tcp).await?)
                }
            };
            Ok(Conn {
                stream,
                buf: Vec::with_capacity(256),
                next_rid: 1,
            })
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// A fresh ReferenceId for this connection.
    pub(crate) fn rid(&mut self) -> i32 {
        let r = self.next_rid;
        self.next_rid = self.next_rid.checked_add(1).unwrap_or(1);
        r
    }

    /// Writes one message.
    pub(crate) async fn send(&mut self, m: &Message<'_>) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(64);
        encode(m, &mut out)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// RequestRegisterClient for `r` with ReferenceId `rid` (its keepalive only when
    /// `own`: a logical client's is ignored by the server).
    pub(crate) async fn register(
        &mut self,
        rid: i32,
        r: &Registration,
        own: bool,
    ) -> std::io::Result<()> {
        let mut ext = Vec::new();
        for (k, v) in &r.extension {
            write_kv_entry(&mut ext, k, &Value::String(v))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let extension = if r.extension.is_empty() {
            None
        } else {
            Some(KvList::parse(&ext).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?)
        };
        let keep_alive = r
            .keep_alive
            .filter(|_| own)
            .map(|k| u16::try_from(k.as_secs()).unwrap_or(u16::MAX));
        self.send(&Message::RegisterClient(RegisterClient {
            reference_id: rid,
            client_name: &r.name,
            client_type: r.client_type.code(),
            proxy_client_id: None,
            credential: r.credential.as_deref(),
            extension,
            keep_alive,
        }))
        .await
    }

    /// RequestUnregisterClient (of a logical client, or with `None` the connection).
    pub(crate) async fn unregister(&mut self, rid: i32, id: Option<i32>) -> std::io::Result<()> {
        self.send(&Message::UnregisterClient(UnregisterClient {
            reference_id: rid,
            proxy_client_id: id,
        }))
        .await
    }

    /// RequestKeepAlive.
    pub(crate) async fn keep_alive(&mut self, rid: i32) -> std::io::Result<()> {
        self.send(&Message::KeepAlive(KeepAlive { reference_id: rid }))
            .await
    }

    /// The next answer; `None` at the server's end of stream. Cancel-safe: what was read
    /// stays buffered for the next call.
    pub(crate) async fn answer(&mut self) -> std::io::Result<Option<Answer>> {
        loop {
            match decode(&self.buf, DEFAULT_MAX_FRAME_LEN) {
                Ok(Some(f)) => {
                    let a = match f.message {
                        Message::EventAck(a) => Answer::Ack {
                            rid: a.reference_id,
                            proxy_client_id: a.proxy_client_id,
                            keep_alive: a.keep_alive,
                        },
                        Message::EventError(e) => Answer::Error {
                            rid: e.reference_id,
                            code: e.error_code,
                        },
                        m => return Err(invalid(format!("the server sent {m:?}"))),
                    };
                    self.buf.drain(..f.frame_len);
                    return Ok(Some(a));
                }
                Ok(None) => {}
                Err(e) => return Err(invalid(e.to_string())),
            }
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Shuts down the sending side (after a last request), so the server sees an end of
    /// stream once it has answered.
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        self.stream.shutdown().await
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// The host part of `host:port` (an IPv6 address without its brackets).
fn host_of(server: &str) -> String {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("ixn.example:7400"), "ixn.example");
        assert_eq!(host_of("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7400"), "::1");
    }
}
