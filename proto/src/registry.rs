//! The client registry (docs/PROTOCOL.md §7): who may register, as what, with which secret, from where.
//!
//! Over 600 lines on purpose: parsing, validating and looking up one file format stay
//! together, and half of the file is its tests.
//!
//! Parsed from TOML text once (and again on SIGHUP by the server, which reads the file and
//! swaps whole registries); lookups are a hash of the ClientName. Pure: parsing takes text,
//! validation takes the peer address as an argument.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::protocol::{ClientType, ErrorCode};
use crate::tls::TlsPeer;

/// The registry compiled into the binary, used when no `--registry` is given.
pub const EMBEDDED_REGISTRY: &str = include_str!("../../config/registry.toml");

/// Default for `max_logical_clients` (docs/PROTOCOL.md §7).
pub const DEFAULT_MAX_LOGICAL_CLIENTS: u32 = 64;

/// A registry file that could not be used; the message names file, line and field.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file is not a valid registry.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// Path as given (or `<embedded>`).
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the field.
        message: String,
    },
}

label_enum! {
    /// What a registration does when its ClientName is already registered (docs/PROTOCOL.md
    /// §7, `on_duplicate`).
    pub enum OnDuplicate {
        /// Both stay registered (the default).
        Allow => "allow",
        /// The newer one is refused with EventError 14.
        Reject => "reject",
        /// The newer one is acknowledged; the older connection gets EventError 15 and closes.
        Replace => "replace",
    }
}

/// A ClientName shared by the registry entry and every connection registered under it:
/// cloned without allocating, and one pointer wide (every idle connection carries one; an
/// `Arc<str>` is two).
pub type SharedName = Arc<Box<str>>;

/// One registered ClientName.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    /// The ClientName, shared (not copied) by every connection registered under it.
    name: SharedName,
    types: u8,
    credential_sha256: Option<[u8; 32]>,
    allow: Vec<IpNet>,
    max_logical_clients: u32,
    /// The client must connect over TLS (17 otherwise).
    require_tls: bool,
    /// Certificate identities (`dns:`, `uri:`, `ip:`, `cn:`), one of which the client's
    /// verified certificate must carry (4 otherwise); empty: no certificate asked for.
    tls_identities: Vec<Box<str>>,
    /// The duplicate-name policy.
    on_duplicate: OnDuplicate,
}

impl ClientEntry {
    /// The ClientName (a reference-counted copy costs no allocation).
    pub fn name(&self) -> &SharedName {
        &self.name
    }

    /// The duplicate-name policy.
    pub fn on_duplicate(&self) -> OnDuplicate {
        self.on_duplicate
    }

    /// Whether `t` is among the entry's allowed types.
    pub fn allows_type(&self, t: ClientType) -> bool {
        self.types & t.bit() != 0
    }

    /// Logical clients a Proxy with this name may register besides itself.
    pub fn max_logical_clients(&self) -> u32 {
        self.max_logical_clients
    }
}

/// The set of valid clients, keyed by ClientName.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    clients: HashMap<Box<str>, ClientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    client: Vec<RawClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: toml::Spanned<String>,
    types: toml::Spanned<Vec<ClientType>>,
    #[serde(default, deserialize_with = "de_sha256")]
    credential_sha256: Option<[u8; 32]>,
    #[serde(default)]
    allow: Option<toml::Spanned<Vec<IpNet>>>,
    #[serde(default)]
    max_logical_clients: Option<u32>,
    #[serde(default)]
    require_tls: bool,
    #[serde(default)]
    tls_identities: Option<toml::Spanned<Vec<String>>>,
    #[serde(default)]
    on_duplicate: Option<toml::Spanned<String>>,
}

/// The kinds of certificate identity `tls_identities` may name (docs/PROTOCOL.md §7).
pub const IDENTITY_KINDS: [&str; 4] = ["dns:", "uri:", "ip:", "cn:"];

fn de_sha256<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
    let s = String::deserialize(d)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| {
        serde::de::Error::custom("credential_sha256 must be 64 hexadecimal digits (a SHA-256)")
    })?;
    Ok(Some(out))
}

/// 1-based line and column of byte `offset` in `text`, for `file:line:column` messages.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

impl Registry {
    /// The embedded default registry.
    pub fn embedded() -> Self {
        // The embedded file is checked by a unit test, so this cannot fail in a release.
        Self::parse(EMBEDDED_REGISTRY, "<embedded>").expect("embedded registry is valid")
    }

    /// Parses registry text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, RegistryError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            RegistryError::Invalid {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            invalid(offset, e.message().trim().to_string())
        })?;
        let mut clients = HashMap::with_capacity(raw.client.len());
        for c in raw.client {
            let name_span = c.name.span();
            let name = c.name.into_inner();
            if name.is_empty() || name.len() > crate::protocol::MAX_CLIENT_NAME_LEN {
                return Err(invalid(
                    name_span.start,
                    "field `name` must be 1..=255 bytes".into(),
                ));
            }
            if c.types.get_ref().is_empty() {
                return Err(invalid(
                    c.types.span().start,
                    format!("field `types` of client {name:?} lists no ClientType"),
                ));
            }
            let types = c.types.get_ref().iter().fold(0u8, |acc, t| acc | t.bit());
            let allow = match c.allow {
                None => Vec::new(),
                Some(a) if a.get_ref().is_empty() => {
                    return Err(invalid(
                        a.span().start,
                        format!(
                        "field `allow` of client {name:?} is empty; omit it to allow any address"
                    ),
                    ))
                }
                Some(a) => a.into_inner().into_iter().map(|n| n.trunc()).collect(),
            };
            let tls_identities = match c.tls_identities {
                None => Vec::new(),
                Some(ids) => {
                    let span = ids.span().start;
                    let ids = ids.into_inner();
                    if ids.is_empty() {
                        return Err(invalid(
                            span,
                            format!("field `tls_identities` of client {name:?} is empty; omit it to ask for no certificate"),
                        ));
                    }
                    if let Some(bad) = ids.iter().find(|id| {
                        !IDENTITY_KINDS
                            .iter()
                            .any(|k| id.len() > k.len() && id.starts_with(k))
                    }) {
                        return Err(invalid(
                            span,
                            format!("field `tls_identities` of client {name:?}: {bad:?} must start with dns:, uri:, ip: or cn: and name something"),
                        ));
                    }
                    ids.into_iter().map(String::into_boxed_str).collect()
                }
            };
            let on_duplicate =
                match c.on_duplicate {
                    None => OnDuplicate::Allow,
                    Some(p) => OnDuplicate::ALL
                        .into_iter()
                        .find(|o| o.name() == p.get_ref())
                        .ok_or_else(|| {
                            invalid(
                                p.span().start,
                                format!(
                                "field `on_duplicate` of client {name:?}: {:?} is not one of {}",
                                p.get_ref(),
                                OnDuplicate::ALL.map(|o| format!("{:?}", o.name())).join(", ")
                            ),
                            )
                        })?,
                };
            let entry = ClientEntry {
                name: Arc::new(name.clone().into_boxed_str()),
                types,
                credential_sha256: c.credential_sha256,
                allow,
                max_logical_clients: c.max_logical_clients.unwrap_or(DEFAULT_MAX_LOGICAL_CLIENTS),
                // Identities can only come from TLS, so they imply it.
                require_tls: c.require_tls || !tls_identities.is_empty(),
                tls_identities,
                on_duplicate,
            };
            if clients
                .insert(name.clone().into_boxed_str(), entry)
                .is_some()
            {
                return Err(invalid(
                    name_span.start,
                    format!("field `name`: client {name:?} is listed twice"),
                ));
            }
        }
        if clients.is_empty() {
            // An empty registry would refuse every client: almost certainly a truncated or
            // wrong file, so it is refused and (on reload) the registry in force is kept.
            return Err(invalid(
                0,
                "no [[client]] entry: a registry must name at least one client".into(),
            ));
        }
        Ok(Self { clients })
    }

    /// Number of ClientNames.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the registry holds no client.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The entry for a ClientName.
    pub fn get(&self, name: &str) -> Option<&ClientEntry> {
        self.clients.get(name)
    }

    /// Validates a registration in the spec's order (docs/PROTOCOL.md §6): name (2), type
    /// (3), peer address (5), TLS required (17), then credential and certificate identity
    /// (4); `tls` is the connection's TLS, if it has one. The address comes before any secret, so
    /// a peer outside an entry's networks learns nothing about its credential. Returns the
    /// entry and the parsed ClientType on success.
    pub fn validate(
        &self,
        name: &str,
        client_type: i32,
        credential: Option<&str>,
        peer: IpAddr,
        tls: Option<&TlsPeer>,
    ) -> Result<(&ClientEntry, ClientType), ErrorCode> {
        let entry = self.clients.get(name).ok_or(ErrorCode::UnknownClient)?;
        let ty = ClientType::from_i32(client_type)
            .filter(|t| entry.allows_type(*t))
            .ok_or(ErrorCode::ClientTypeNotAllowed)?;
        if !entry.allow.is_empty() {
            let peer = peer.to_canonical();
            if !entry.allow.iter().any(|net| net.contains(&peer)) {
                return Err(ErrorCode::AddressNotAllowed);
            }
        }
        if entry.require_tls && tls.is_none() {
            return Err(ErrorCode::TlsRequired);
        }
        if let Some(want) = &entry.credential_sha256 {
            let given = credential.ok_or(ErrorCode::AuthenticationFailed)?;
            let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
            // Constant time, so response timing never tells how much of a guess was right.
            if !bool::from(digest.ct_eq(want)) {
                return Err(ErrorCode::AuthenticationFailed);
            }
        }
        if !entry.tls_identities.is_empty() {
            let presented = tls.map_or(&[][..], |t| &t.identities[..]);
            if !presented.iter().any(|id| entry.tls_identities.contains(id)) {
                return Err(ErrorCode::AuthenticationFailed);
            }
        }
        Ok((entry, ty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn embedded_registry_parses() {
        let r = Registry::embedded();
        assert!(r.len() >= 5);
        assert_eq!(
            r.get("Proxy_small").map(|e| e.max_logical_clients()),
            Some(2)
        );
        assert_eq!(
            r.get("MediaServer_email").map(|e| e.max_logical_clients()),
            Some(DEFAULT_MAX_LOGICAL_CLIENTS)
        );
    }

    #[test]
    fn validation_order_is_name_type_address_credential() {
        let r = Registry::embedded();
        // Unknown name wins over everything else being wrong too.
        assert_eq!(
            r.validate("nobody", 99, None, LOOP, None).err(),
            Some(ErrorCode::UnknownClient)
        );
        // Type is checked before the missing credential.
        assert_eq!(
            r.validate("AgentDesktop", 1, None, LOOP, None).err(),
            Some(ErrorCode::ClientTypeNotAllowed)
        );
        assert_eq!(
            r.validate("AgentDesktop", 0, None, LOOP, None).err(),
            Some(ErrorCode::ClientTypeNotAllowed),
            "undefined ClientType"
        );
        assert_eq!(
            r.validate("AgentDesktop", 2, None, LOOP, None).err(),
            Some(ErrorCode::AuthenticationFailed)
        );
        assert_eq!(
            r.validate("AgentDesktop", 2, Some("s3creT"), LOOP, None)
                .err(),
            Some(ErrorCode::AuthenticationFailed)
        );
        assert!(r
            .validate("AgentDesktop", 2, Some("s3cret"), LOOP, None)
            .is_ok());
        // The address before the credential: outside the entry's networks, a wrong and a
        // right credential get the same answer (no oracle).
        let dir = r#"
[[client]]
name = "Locked"
types = ["MediaServer"]
credential_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
allow = ["10.0.0.0/8"]
"#;
        let locked = Registry::parse(dir, "t").unwrap();
        for cred in [None, Some("wrong"), Some("secret")] {
            assert_eq!(
                locked.validate("Locked", 1, cred, LOOP, None).err(),
                Some(ErrorCode::AddressNotAllowed),
                "{cred:?}"
            );
        }
        let inside = "10.9.9.9".parse().unwrap();
        assert_eq!(
            locked
                .validate("Locked", 1, Some("wrong"), inside, None)
                .err(),
            Some(ErrorCode::AuthenticationFailed)
        );
        assert!(locked
            .validate("Locked", 1, Some("secret"), inside, None)
            .is_ok());
        // Address checks on entries without a credential.
        assert_eq!(
            r.validate("Reporting_dc", 5, None, LOOP, None).err(),
            Some(ErrorCode::AddressNotAllowed)
        );
        assert!(r
            .validate("Reporting_dc", 5, None, "10.1.2.3".parse().unwrap(), None)
            .is_ok());
        // IPv4-mapped IPv6 peers match IPv4 networks.
        assert!(r
            .validate(
                "Router_local",
                4,
                None,
                "::ffff:127.0.0.9".parse().unwrap(),
                None
            )
            .is_ok());
        assert!(r
            .validate("Router_local", 5, None, "::1".parse().unwrap(), None)
            .is_ok());
        assert_eq!(
            r.validate(
                "Router_local",
                5,
                None,
                "192.168.1.1".parse().unwrap(),
                None
            )
            .err(),
            Some(ErrorCode::AddressNotAllowed)
        );
    }

    #[test]
    fn credential_is_ignored_when_not_required() {
        let r = Registry::embedded();
        assert!(r
            .validate("MediaServer_email", 1, Some("anything"), LOOP, None)
            .is_ok());
    }

    fn err_of(text: &str) -> (usize, String) {
        match Registry::parse(text, "reg.toml") {
            Err(RegistryError::Invalid {
                line,
                message,
                file,
                ..
            }) => {
                assert_eq!(file, "reg.toml");
                (line, message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn broken_files_name_line_and_field() {
        let (line, msg) = err_of("[[client]]\nname = \"a\"\ntypes = [\"Nope\"]\n");
        assert_eq!(line, 3);
        assert!(msg.contains("Nope"), "{msg}");

        let (line, msg) =
            err_of("[[client]]\nname = \"a\"\ntypes = [\"Proxy\"]\nallow = [\"10.0.0.0/33\"]\n");
        assert_eq!(line, 4, "{msg}");

        let (line, msg) =
            err_of("[[client]]\nname = \"a\"\ntypes = [\"Proxy\"]\ncredential_sha256 = \"abc\"\n");
        assert_eq!(line, 4);
        assert!(msg.contains("credential_sha256"), "{msg}");

        let (line, msg) = err_of(
            "[[client]]\nname = \"a\"\ntypes = [\"Proxy\"]\n[[client]]\nname = \"a\"\ntypes = [\"Proxy\"]\n",
        );
        assert_eq!(line, 5);
        assert!(msg.contains("twice"), "{msg}");

        let (line, msg) = err_of("[[client]]\nname = \"a\"\ntypes = [\"Proxy\"]\nalow = []\n");
        assert_eq!(line, 4);
        assert!(msg.contains("alow"), "{msg}");

        let (line, msg) = err_of("[[client]]\nname = \"a\"\ntypes = [\"Proxy\"]\nallow = []\n");
        assert_eq!(line, 4);
        assert!(msg.contains("allow"), "{msg}");

        let (_, msg) = err_of("[[client]]\ntypes = [\"Proxy\"]\n");
        assert!(msg.contains("name"), "{msg}");

        for empty in ["", "# nothing\n", "client = []\n"] {
            let (line, msg) = err_of(empty);
            assert_eq!(line, 1);
            assert!(msg.contains("[[client]]"), "{msg}");
        }
    }

    #[test]
    fn tls_is_checked_after_the_address_and_identities_with_the_credential() {
        let r = Registry::parse(
            r#"
[[client]]
name = "Tls"
types = ["MediaServer"]
allow = ["127.0.0.0/8"]
require_tls = true
credential_sha256 = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"

[[client]]
name = "Ident"
types = ["MediaServer"]
tls_identities = ["dns:media1.example.com", "cn:Media One"]
"#,
            "t.toml",
        )
        .unwrap();
        let tls = |ids: &[&str]| TlsPeer {
            version: "TLSv1.3",
            identities: ids.iter().map(|s| (*s).into()).collect(),
        };
        let outside: IpAddr = "10.0.0.1".parse().unwrap();
        // The address (5) before TLS (17), TLS before the credential (4).
        assert_eq!(
            r.validate("Tls", 1, None, outside, None).err(),
            Some(ErrorCode::AddressNotAllowed)
        );
        assert_eq!(
            r.validate("Tls", 1, Some("wrong"), LOOP, None).err(),
            Some(ErrorCode::TlsRequired)
        );
        let anon = tls(&[]);
        assert_eq!(
            r.validate("Tls", 1, Some("wrong"), LOOP, Some(&anon)).err(),
            Some(ErrorCode::AuthenticationFailed)
        );
        assert!(r
            .validate("Tls", 1, Some("s3cret"), LOOP, Some(&anon))
            .is_ok());
        // Identities imply TLS; a match on any one identity; SAN DNS is not the CN.
        assert_eq!(
            r.validate("Ident", 1, None, LOOP, None).err(),
            Some(ErrorCode::TlsRequired)
        );
        for (ids, ok) in [
            (&["dns:media1.example.com"][..], true),
            (&["dns:other.example.com", "cn:Media One"][..], true),
            (&["cn:media1.example.com"][..], false),
            (&[][..], false),
        ] {
            let peer = tls(ids);
            assert_eq!(
                r.validate("Ident", 1, None, LOOP, Some(&peer)).is_ok(),
                ok,
                "{ids:?}"
            );
        }
    }

    #[test]
    fn bad_tls_identities_are_refused_with_their_line() {
        for (value, needle) in [
            ("[]", "is empty"),
            (r#"["media1.example.com"]"#, "must start with dns:"),
            (r#"["dns:"]"#, "must start with dns:"),
        ] {
            let text = format!(
                "[[client]]\nname = \"X\"\ntypes = [\"MediaServer\"]\ntls_identities = {value}\n"
            );
            let e = Registry::parse(&text, "r.toml").unwrap_err().to_string();
            assert!(e.starts_with("r.toml:4:") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn on_duplicate_parses_each_policy_and_refuses_others_with_their_line() {
        for p in OnDuplicate::ALL {
            let text = format!(
                "[[client]]\nname = \"X\"\ntypes = [\"MediaServer\"]\non_duplicate = \"{}\"\n",
                p.name()
            );
            let r = Registry::parse(&text, "r.toml").unwrap();
            assert_eq!(r.get("X").map(ClientEntry::on_duplicate), Some(p));
        }
        let r = Registry::parse("[[client]]\nname = \"X\"\ntypes = [\"Proxy\"]\n", "r").unwrap();
        assert_eq!(
            r.get("X").map(ClientEntry::on_duplicate),
            Some(OnDuplicate::Allow)
        );
        assert_eq!(r.get("X").map(|e| &***e.name()), Some("X"));
        let e = Registry::parse(
            "[[client]]\nname = \"X\"\ntypes = [\"Proxy\"]\non_duplicate = \"kick\"\n",
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("r.toml:4:") && e.contains("\"reject\""),
            "{e}"
        );
    }
}
