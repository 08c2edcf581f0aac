//! PROXY protocol v1/v2 headers (HAProxy, IPVS, cloud balancers), parsed with the `ppp` crate.
//!
//! On a listener configured for it, the header is required before any IXN/1 frame: it
//! carries the client's real address, which is then what the registry's `allow` lists
//! check and what logs show. Pure: a function from bytes to a decision.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use ppp::HeaderResult;

/// Longest header accepted: a v1 line is at most 107 bytes; v2 headers from balancers
/// carry a few TLVs. Anything longer is refused rather than buffered.
pub const MAX_HEADER_LEN: usize = 1024;

/// The longest v1 line, CRLF included (the PROXY protocol specification, section 2.1).
const V1_MAX_LEN: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
/// The 12-byte v2 signature, then version/command, family, and a u16 length of what follows.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

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

/// Where the header at the start of `buf` ends: `Ok(None)` while it is incomplete.
///
/// Completeness is decided here, by the framing the PROXY protocol defines (a CRLF for v1,
/// the length field for v2), not by asking the parser: a v1 line cut anywhere, even right
/// after a space, is a prefix to wait on, never a header to refuse.
fn header_len(buf: &[u8]) -> Result<Option<usize>, ProxyError> {
    if buf.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf) {
        return Ok(None);
    }
    if buf.starts_with(V2_SIGNATURE) {
        if buf.len() < V2_FIXED_LEN {
            return Ok(None);
        }
        let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        return if total > MAX_HEADER_LEN {
            Err(ProxyError::TooLong)
        } else if buf.len() < total {
            Ok(None)
        } else {
            Ok(Some(total))
        };
    }
    if buf.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(buf) {
        return Ok(None);
    }
    if buf.starts_with(V1_PREFIX) {
        let window = &buf[..buf.len().min(V1_MAX_LEN)];
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(i) => Ok(Some(i + 2)),
            None if buf.len() >= V1_MAX_LEN => Err(ProxyError::TooLong),
            None => Ok(None),
        };
    }
    Err(ProxyError::Invalid)
}

/// Parses the header at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let Some(len) = header_len(buf)? else {
        return Ok(None);
    };
    let result = HeaderResult::parse(&buf[..len]);
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

    /// Every header split at every byte position waits for the rest, then parses whole.
    fn assert_splits_wait(h: &[u8], source: Option<SocketAddr>) {
        for cut in 0..h.len() {
            assert_eq!(
                parse(&h[..cut]),
                Ok(None),
                "cut {cut} of {:?}",
                String::from_utf8_lossy(h)
            );
        }
        let mut with_frame = h.to_vec();
        with_frame.extend_from_slice(&[0, 0, 0, 4, 0, 0x10, 0, 0]);
        assert_eq!(
            parse(&with_frame),
            Ok(Some(ProxyHeader {
                len: h.len(),
                source
            }))
        );
    }

    #[test]
    fn v1_split_after_the_space_before_the_destination_port_waits() {
        let line = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 7400\r\n";
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 "), Ok(None));
        assert_splits_wait(line, Some("192.0.2.7:51000".parse().unwrap()));
    }

    proptest::proptest! {
        #[test]
        fn any_v1_or_v2_header_split_anywhere_waits(
            src_ip in proptest::prelude::any::<IpAddr>(),
            src_port in proptest::prelude::any::<u16>(),
            dst_port in 1u16..,
            v2_header in proptest::prelude::any::<bool>(),
            tlv in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let src = SocketAddr::new(src_ip, src_port);
            let dst: SocketAddr = match src {
                SocketAddr::V4(_) => SocketAddr::from(([10, 0, 0, 1], dst_port)),
                SocketAddr::V6(_) => SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, 1], dst_port)),
            };
            let h = if v2_header {
                let mut b = ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (src, dst),
                );
                if !tlv.is_empty() {
                    b = b.write_tlv(ppp::v2::Type::NoOp, &tlv).unwrap();
                }
                b.build().unwrap()
            } else {
                let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                format!("PROXY {fam} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port())
                    .into_bytes()
            };
            assert_splits_wait(&h, Some(src));
        }
    }

    #[test]
    fn overlong_headers_are_refused() {
        let mut v1 = b"PROXY TCP4 ".to_vec();
        v1.resize(V1_MAX_LEN, b'1');
        assert_eq!(parse(&v1), Err(ProxyError::TooLong));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&v2), Err(ProxyError::TooLong));
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
