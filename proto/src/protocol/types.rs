//! Typed IXN/1 messages, attribute ids and enumerations, borrowing from the decoded frame.

use super::decode::{read_u16, MalformedReason};

/// Message ids (docs/PROTOCOL.md §3).
pub mod msg {
    /// client → server: register this connection (or a Proxy's logical client).
    pub const REQUEST_REGISTER_CLIENT: u16 = 0x0001;
    /// client → server: unregister the connection or one of a Proxy's logical clients.
    pub const REQUEST_UNREGISTER_CLIENT: u16 = 0x0002;
    /// client → server: a registered client's sign of life (revision 3, §12).
    pub const REQUEST_KEEP_ALIVE: u16 = 0x0003;
    /// server → client: the request succeeded.
    pub const EVENT_ACK: u16 = 0x0080;
    /// server → client: the request failed.
    pub const EVENT_ERROR: u16 = 0x0081;
}

/// Attribute ids (docs/PROTOCOL.md §2).
pub mod attr {
    /// int: the client's correlation id, echoed in answers.
    pub const REFERENCE_ID: u16 = 1;
    /// string, 1..=255 bytes.
    pub const CLIENT_NAME: u16 = 2;
    /// int, see [`super::ClientType`].
    pub const CLIENT_TYPE: u16 = 3;
    /// int, assigned by the server.
    pub const PROXY_CLIENT_ID: u16 = 4;
    /// string, 0..=1024 bytes.
    pub const CREDENTIAL: u16 = 5;
    /// kvlist.
    pub const EXTENSION: u16 = 6;
    /// int, see [`super::ErrorCode`].
    pub const ERROR_CODE: u16 = 7;
    /// string, human readable.
    pub const ERROR_DESCRIPTION: u16 = 8;
    /// int, seconds 0..=65535 (revision 3, §12).
    pub const KEEP_ALIVE: u16 = 9;
}

/// Attribute value types on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AttrType {
    /// 4-byte big-endian i32.
    Int = 1,
    /// UTF-8 text.
    String = 2,
    /// Opaque bytes.
    Binary = 3,
    /// Nested key/value entries.
    KvList = 4,
}

impl AttrType {
    /// The type for a wire byte, if it is one of the four defined.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Int),
            2 => Some(Self::String),
            3 => Some(Self::Binary),
            4 => Some(Self::KvList),
            _ => None,
        }
    }

    /// The type each known attribute id must have.
    pub fn of_attr(attr_id: u16) -> Option<Self> {
        match attr_id {
            attr::REFERENCE_ID
            | attr::CLIENT_TYPE
            | attr::PROXY_CLIENT_ID
            | attr::ERROR_CODE
            | attr::KEEP_ALIVE => Some(Self::Int),
            attr::CLIENT_NAME | attr::CREDENTIAL | attr::ERROR_DESCRIPTION => Some(Self::String),
            attr::EXTENSION => Some(Self::KvList),
            _ => None,
        }
    }
}

/// Declares a wire enumeration once: the enum with its wire values, and from that one
/// declaration `ALL`, `COUNT`, the int conversions (`from_i32`, `code`), the spec's name
/// and a dense `index` for per-value tables (metrics). Modelled on rustls's
/// `enum_builder!`: adding a value is one line here, and everything else follows.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in declaration (wire) order.
            pub const ALL: [$name; [$($value),+].len()] = [$(Self::$variant),+];
            /// How many values there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The value for a wire integer, if it is one.
            pub fn from_i32(v: i32) -> Option<Self> {
                match v {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The wire integer.
            pub fn code(self) -> i32 {
                self as i32
            }

            /// The spec's name (also the registry's spelling and a metric label).
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => stringify!($variant), )+
                }
            }

            /// Position in [`Self::ALL`], for tables indexed by value.
            pub fn index(self) -> usize {
                #[allow(non_camel_case_types, dead_code)]
                enum Ordinal { $( $variant, )+ }
                match self {
                    $( Self::$variant => Ordinal::$variant as usize, )+
                }
            }
        }
    };
}

wire_enum! {
    /// ClientType values (docs/PROTOCOL.md §4).
    #[derive(serde::Deserialize, serde::Serialize)]
    pub enum ClientType {
        /// 1
        MediaServer = 1,
        /// 2
        AgentApplication = 2,
        /// 3: may register further logical clients on its connection.
        Proxy = 3,
        /// 4
        RoutingEngine = 4,
        /// 5
        ReportingEngine = 5,
    }
}

impl ClientType {
    /// Bit of this type in a [`crate::registry`] allow-set.
    pub fn bit(self) -> u8 {
        1 << self.index()
    }
}

wire_enum! {
    /// ErrorCode values (docs/PROTOCOL.md §5).
    pub enum ErrorCode {
        /// A message other than RequestRegisterClient before registration, or any after a rejection.
        ClientNotRegistered = 1,
        /// ClientName is not in the registry.
        UnknownClient = 2,
        /// ClientType unknown, or not allowed for that ClientName.
        ClientTypeNotAllowed = 3,
        /// Credential missing or wrong.
        AuthenticationFailed = 4,
        /// Peer address outside the entry's allowed networks.
        AddressNotAllowed = 5,
        /// RequestRegisterClient on a registered connection that is not a Proxy.
        AlreadyRegistered = 6,
        /// Well framed, but breaks section 2 or lacks a mandatory attribute.
        MalformedMessage = 7,
        /// Framing error.
        FrameTooLarge = 8,
        /// A registered client sent a message the server does not serve.
        UnsupportedRequest = 9,
        /// A connection or registration limit is reached.
        ServerOverloaded = 10,
        /// The server is draining.
        ServerShuttingDown = 11,
        /// RequestUnregisterClient names an id this connection does not own.
        UnknownProxyClientId = 12,
        /// A Proxy connection reached its limit of logical clients.
        TooManyClients = 13,
        /// The ClientName is registered elsewhere and its entry says `on_duplicate = "reject"`.
        DuplicateClient = 14,
        /// Closed by an operator, or replaced by a newer registration of its ClientName.
        ClientDisconnected = 15,
        /// The peer address made too many failed registrations and is refused for a while.
        AddressTemporarilyRefused = 16,
        /// The registry entry requires TLS and the connection is not TLS.
        TlsRequired = 17,
        /// The fleet's name table did not answer in time for a name under `reject` or
        /// `replace`, and `fleet_unavailable = "refuse"` (docs/PROTOCOL.md §13).
        FleetUnavailable = 18,
        /// A registered connection with a keepalive in force sent no complete frame for
        /// 1.5 × its KeepAlive (docs/PROTOCOL.md §12).
        KeepAliveExpired = 19,
    }
}

impl ErrorCode {
    /// The ErrorDescription the server sends (its text is not part of the contract): the
    /// name in words.
    pub fn description(self) -> &'static str {
        match self {
            Self::ClientNotRegistered => "client not registered",
            Self::UnknownClient => "unknown client",
            Self::ClientTypeNotAllowed => "client type not allowed",
            Self::AuthenticationFailed => "authentication failed",
            Self::AddressNotAllowed => "address not allowed",
            Self::AlreadyRegistered => "already registered",
            Self::MalformedMessage => "malformed message",
            Self::FrameTooLarge => "frame too large",
            Self::UnsupportedRequest => "unsupported request",
            Self::ServerOverloaded => "server overloaded",
            Self::ServerShuttingDown => "server shutting down",
            Self::UnknownProxyClientId => "unknown proxy client id",
            Self::TooManyClients => "too many clients",
            Self::DuplicateClient => "duplicate client",
            Self::ClientDisconnected => "client disconnected",
            Self::AddressTemporarilyRefused => "address temporarily refused",
            Self::TlsRequired => "tls required",
            Self::FleetUnavailable => "fleet unavailable",
            Self::KeepAliveExpired => "keepalive expired",
        }
    }
}

#[cfg(test)]
mod enum_tests {
    use super::*;

    #[test]
    fn one_declaration_gives_all_count_conversions_names_and_indexes() {
        assert_eq!(ErrorCode::COUNT, 19);
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(c.code(), i as i32 + 1);
            assert_eq!(ErrorCode::from_i32(c.code()), Some(*c));
            assert!(!c.description().is_empty());
        }
        assert_eq!(ErrorCode::from_i32(0), None);
        assert_eq!(ErrorCode::from_i32(20), None);
        assert_eq!(ErrorCode::TlsRequired.name(), "TlsRequired");
        assert_eq!(ClientType::COUNT, 5);
        for (i, t) in ClientType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(ClientType::from_i32(t.code()), Some(*t));
        }
        assert_eq!(ClientType::from_i32(6), None);
        assert_eq!(ClientType::Proxy.name(), "Proxy");
    }
}

/// A decoded IXN/1 message, borrowing strings and binaries from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// 0x0001
    RegisterClient(RegisterClient<'a>),
    /// 0x0002
    UnregisterClient(UnregisterClient),
    /// 0x0003
    KeepAlive(KeepAlive),
    /// 0x0080
    EventAck(EventAck<'a>),
    /// 0x0081
    EventError(EventError<'a>),
    /// Any other `msg_id`; its ReferenceId when one was present as a valid int.
    Other {
        /// The message id.
        msg_id: u16,
        /// ReferenceId, if present.
        reference_id: Option<i32>,
    },
}

impl Message<'_> {
    /// The message's `msg_id`.
    pub fn msg_id(&self) -> u16 {
        match self {
            Self::RegisterClient(_) => msg::REQUEST_REGISTER_CLIENT,
            Self::UnregisterClient(_) => msg::REQUEST_UNREGISTER_CLIENT,
            Self::KeepAlive(_) => msg::REQUEST_KEEP_ALIVE,
            Self::EventAck(_) => msg::EVENT_ACK,
            Self::EventError(_) => msg::EVENT_ERROR,
            Self::Other { msg_id, .. } => *msg_id,
        }
    }

    /// The ReferenceId an answer to this message echoes (0 when there is none).
    pub fn reference_id(&self) -> i32 {
        match self {
            Self::RegisterClient(m) => m.reference_id,
            Self::UnregisterClient(m) => m.reference_id,
            Self::KeepAlive(m) => m.reference_id,
            Self::EventAck(m) => m.reference_id,
            Self::EventError(m) => m.reference_id,
            Self::Other { reference_id, .. } => reference_id.unwrap_or(0),
        }
    }
}

/// RequestRegisterClient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterClient<'a> {
    /// Mandatory.
    pub reference_id: i32,
    /// Mandatory, 1..=255 bytes.
    pub client_name: &'a str,
    /// Mandatory; the raw value, since an undefined one is error 3, not a malformed message.
    pub client_type: i32,
    /// Optional.
    pub proxy_client_id: Option<i32>,
    /// Optional, 0..=1024 bytes.
    pub credential: Option<&'a str>,
    /// Optional.
    pub extension: Option<KvList<'a>>,
    /// Optional: the keepalive asked for, in seconds; 0 asks for none (§12).
    pub keep_alive: Option<u16>,
}

/// RequestUnregisterClient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnregisterClient {
    /// Mandatory.
    pub reference_id: i32,
    /// Optional: which logical client; absent means the connection itself.
    pub proxy_client_id: Option<i32>,
}

/// RequestKeepAlive (revision 3, §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Mandatory.
    pub reference_id: i32,
}

/// EventAck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAck<'a> {
    /// Mandatory.
    pub reference_id: i32,
    /// Optional.
    pub proxy_client_id: Option<i32>,
    /// Optional.
    pub extension: Option<KvList<'a>>,
    /// Optional: the keepalive in force, in seconds (the answer to a registration that
    /// set one, §12).
    pub keep_alive: Option<u16>,
}

/// EventError.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventError<'a> {
    /// Mandatory.
    pub reference_id: i32,
    /// Mandatory (raw, so a client can see codes from a newer server).
    pub error_code: i32,
    /// Mandatory.
    pub error_description: &'a str,
}

/// A validated kvlist value: entries are decoded lazily by [`KvList::iter`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KvList<'a> {
    raw: &'a [u8],
}

impl std::fmt::Debug for KvList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> KvList<'a> {
    /// Validates `raw` as the entries of a top-level kvlist (such as Extension).
    pub fn parse(raw: &'a [u8]) -> Result<Self, MalformedReason> {
        Self::parse_at(raw, 1)
    }

    /// Validates `raw` as a kvlist nested at `depth` (the Extension attribute is depth 1).
    fn parse_at(raw: &'a [u8], depth: usize) -> Result<Self, MalformedReason> {
        if depth > super::MAX_KVLIST_DEPTH {
            return Err(MalformedReason::KvListTooDeep);
        }
        let mut rest = raw;
        while !rest.is_empty() {
            rest = split_entry(rest, Some(depth))?.2;
        }
        Ok(Self { raw })
    }

    /// The encoded entries, as they appear on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The entries in wire order.
    pub fn iter(&self) -> KvIter<'a> {
        KvIter { rest: self.raw }
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Iterator over the entries of a validated [`KvList`].
#[derive(Debug, Clone)]
pub struct KvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for KvIter<'a> {
    type Item = (&'a str, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // The list was validated at construction, so nested lists need no second pass.
        match split_entry(self.rest, None) {
            Ok((key, value, tail)) => {
                self.rest = tail;
                Some((key, value))
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// A kvlist entry's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// int
    Int(i32),
    /// string
    String(&'a str),
    /// binary
    Binary(&'a [u8]),
    /// nested kvlist
    KvList(KvList<'a>),
}

/// Splits one kvlist entry off `buf`; a nested list is validated at `depth + 1` unless
/// `depth` is `None` (the bytes were validated already).
fn split_entry(
    buf: &[u8],
    depth: Option<usize>,
) -> Result<(&str, Value<'_>, &[u8]), MalformedReason> {
    let key_len = usize::from(read_u16(buf, 0).ok_or(MalformedReason::Overrun)?);
    if !(1..=255).contains(&key_len) {
        return Err(MalformedReason::BadKvKey);
    }
    let key = buf.get(2..2 + key_len).ok_or(MalformedReason::Overrun)?;
    let key = std::str::from_utf8(key).map_err(|_| MalformedReason::BadKvKey)?;
    let at = 2 + key_len;
    let ty = *buf.get(at).ok_or(MalformedReason::Overrun)?;
    let val_len = usize::from(read_u16(buf, at + 1).ok_or(MalformedReason::Overrun)?);
    let start = at + 3;
    let val = buf
        .get(start..start + val_len)
        .ok_or(MalformedReason::Overrun)?;
    let value = match AttrType::from_u8(ty).ok_or(MalformedReason::BadKvType)? {
        AttrType::Int => {
            let b: [u8; 4] = val.try_into().map_err(|_| MalformedReason::BadKvValue)?;
            Value::Int(i32::from_be_bytes(b))
        }
        AttrType::String => {
            Value::String(std::str::from_utf8(val).map_err(|_| MalformedReason::BadKvValue)?)
        }
        AttrType::Binary => Value::Binary(val),
        AttrType::KvList => match depth {
            None => Value::KvList(KvList { raw: val }),
            Some(d) => Value::KvList(KvList::parse_at(val, d + 1)?),
        },
    };
    Ok((key, value, &buf[start + val_len..]))
}
