//! PROXY protocol v1/v2 headers (HAProxy, IPVS, cloud balancers), parsed with the `ppp` crate.
//!
//! On a listener configured for it, the header is required before any IXN/1 frame: it
//! carries the client's real address, which is then what the registry's `allow` lists
//! check and what logs show. Pure: a function from bytes to a decision.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use ppp::{HeaderResult, PartialResult};

/// Longest header accepted: a v1 line is at most 107 bytes; v2 headers from balancers
/// carry a few TLVs. Anything longer is refused rather than buffered.
pub const MAX_HEADER_LEN: usize = 1024;

/// A header that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Not a PROXY v1/v2 header (for example a client that connected directly).
    #[error("missing or invalid PROXY protocol header")]
    Invalid,
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("PROXY protocol header longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
}

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes it occupies at the start of the stream.
    pub len: usize,
    /// The client's address; `None` for a LOCAL/UNKNOWN header (a balancer's own health
    /// check), in which case the connection's own peer address stands.
    pub source: Option<SocketAddr>,
}

/// Parses the header at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(MAX_HEADER_LEN)];
    let result = HeaderResult::parse(window);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER_LEN {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some(ProxyHeader {
                len: h.header.len(),
                source,
            }))
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            };
            Ok(Some(ProxyHeader {
                len: h.len(),
                source,
            }))
        }
        _ => Err(ProxyError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(src: &str, dst: &str) -> Vec<u8> {
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (s, d),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn v1_and_v2_give_the_client_address() {
        let line = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 7400\r\n";
        let mut with_frame = line.to_vec();
        with_frame.extend_from_slice(&[0, 0, 0, 4, 0, 0x10, 0, 0]);
        assert_eq!(
            parse(&with_frame),
            Ok(Some(ProxyHeader {
                len: line.len(),
                source: Some("192.0.2.7:51000".parse().unwrap())
            }))
        );
        let h = v2("[2001:db8::9]:4000", "[::1]:7400");
        let mut with_frame = h.clone();
        with_frame.extend_from_slice(&[0, 0, 0, 4, 0, 0x10, 0, 0]);
        assert_eq!(
            parse(&with_frame),
            Ok(Some(ProxyHeader {
                len: h.len(),
                source: Some("[2001:db8::9]:4000".parse().unwrap())
            }))
        );
    }

    #[test]
    fn partial_headers_wait_and_garbage_is_refused() {
        let h = v2("10.1.2.3:5", "10.0.0.1:7400");
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None));
        // An IXN/1 frame where a header must be: refused, never guessed.
        assert_eq!(
            parse(&[0, 0, 0, 0x2c, 0, 1, 0, 3, 0, 1, 1, 0, 4, 0, 0, 0, 7]),
            Err(ProxyError::Invalid)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Invalid));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").map(|h| h.map(|h| h.source)),
            Ok(Some(None))
        );
    }
}
