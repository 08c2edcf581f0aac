//! Frame encoder: writes messages into a caller's `BufMut`, attributes in section 2 order.

use bytes::BufMut;

use super::types::{attr, msg, AttrType, ErrorCode, KvList, Message, Value};
use super::ATTR_HEADER_LEN;

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A value is longer than a u16 length field can describe.
    #[error("attribute {0} is longer than 65535 bytes")]
    ValueTooLong(u16),
    /// A kvlist key is empty or longer than 255 bytes.
    #[error("kvlist key must be 1..=255 bytes")]
    BadKey,
}

/// One attribute to write; the order of a message's list is the order on the wire.
enum Attr<'a> {
    Int(u16, i32),
    Str(u16, &'a [u8]),
    Kv(u16, &'a [u8]),
}

impl Attr<'_> {
    fn value_len(&self) -> usize {
        match self {
            Attr::Int(..) => 4,
            Attr::Str(_, v) | Attr::Kv(_, v) => v.len(),
        }
    }
}

fn write_frame(
    dst: &mut impl BufMut,
    msg_id: u16,
    attrs: &[Option<Attr<'_>>],
) -> Result<(), EncodeError> {
    let mut body = 0usize;
    let mut count = 0u16;
    for a in attrs.iter().flatten() {
        let (id, len) = match a {
            Attr::Int(id, _) | Attr::Str(id, _) | Attr::Kv(id, _) => (*id, a.value_len()),
        };
        if len > usize::from(u16::MAX) {
            return Err(EncodeError::ValueTooLong(id));
        }
        body += ATTR_HEADER_LEN + len;
        count += 1;
    }
    // At most 8 attributes of at most 64 KiB each: always fits the u32 length field.
    dst.put_u32((4 + body) as u32);
    dst.put_u16(msg_id);
    dst.put_u16(count);
    for a in attrs.iter().flatten() {
        match a {
            Attr::Int(id, v) => {
                dst.put_u16(*id);
                dst.put_u8(AttrType::Int as u8);
                dst.put_u16(4);
                dst.put_i32(*v);
            }
            Attr::Str(id, v) | Attr::Kv(id, v) => {
                let ty = if matches!(a, Attr::Kv(..)) {
                    AttrType::KvList
                } else {
                    AttrType::String
                };
                dst.put_u16(*id);
                dst.put_u8(ty as u8);
                dst.put_u16(v.len() as u16);
                dst.put_slice(v);
            }
        }
    }
    Ok(())
}

/// Encodes any message; optional attributes are written only when present.
pub fn encode(message: &Message<'_>, dst: &mut impl BufMut) -> Result<(), EncodeError> {
    use Attr::{Int, Str};
    fn kv<'a>(k: Option<KvList<'a>>) -> Option<Attr<'a>> {
        k.map(|k| Attr::Kv(attr::EXTENSION, k.as_bytes()))
    }
    fn keep_alive<'a>(k: Option<u16>) -> Option<Attr<'a>> {
        k.map(|k| Int(attr::KEEP_ALIVE, k.into()))
    }
    let attrs: [Option<Attr<'_>>; 7] = match message {
        Message::RegisterClient(m) => [
            Some(Int(attr::REFERENCE_ID, m.reference_id)),
            Some(Str(attr::CLIENT_NAME, m.client_name.as_bytes())),
            Some(Int(attr::CLIENT_TYPE, m.client_type)),
            m.proxy_client_id.map(|v| Int(attr::PROXY_CLIENT_ID, v)),
            m.credential.map(|c| Str(attr::CREDENTIAL, c.as_bytes())),
            kv(m.extension),
            keep_alive(m.keep_alive),
        ],
        Message::UnregisterClient(m) => [
            Some(Int(attr::REFERENCE_ID, m.reference_id)),
            m.proxy_client_id.map(|v| Int(attr::PROXY_CLIENT_ID, v)),
            None,
            None,
            None,
            None,
            None,
        ],
        Message::KeepAlive(m) => [
            Some(Int(attr::REFERENCE_ID, m.reference_id)),
            None,
            None,
            None,
            None,
            None,
            None,
        ],
        Message::EventAck(m) => [
            Some(Int(attr::REFERENCE_ID, m.reference_id)),
            m.proxy_client_id.map(|v| Int(attr::PROXY_CLIENT_ID, v)),
            kv(m.extension),
            keep_alive(m.keep_alive),
            None,
            None,
            None,
        ],
        Message::EventError(m) => [
            Some(Int(attr::REFERENCE_ID, m.reference_id)),
            Some(Int(attr::ERROR_CODE, m.error_code)),
            Some(Str(attr::ERROR_DESCRIPTION, m.error_description.as_bytes())),
            None,
            None,
            None,
            None,
        ],
        Message::Other { reference_id, .. } => [
            reference_id.map(|v| Int(attr::REFERENCE_ID, v)),
            None,
            None,
            None,
            None,
            None,
            None,
        ],
    };
    write_frame(dst, message.msg_id(), &attrs)
}

/// Writes the server's EventAck: ReferenceId and, when given, ProxyClientId and the
/// keepalive in force.
pub fn encode_event_ack(
    dst: &mut impl BufMut,
    reference_id: i32,
    proxy_client_id: Option<i32>,
    keep_alive: Option<u16>,
) {
    let attrs = [
        Some(Attr::Int(attr::REFERENCE_ID, reference_id)),
        proxy_client_id.map(|v| Attr::Int(attr::PROXY_CLIENT_ID, v)),
        keep_alive.map(|k| Attr::Int(attr::KEEP_ALIVE, k.into())),
    ];
    // Three ints cannot exceed any length field.
    let _ = write_frame(dst, msg::EVENT_ACK, &attrs);
}

/// Writes the server's EventError with the code's standard description.
pub fn encode_event_error(dst: &mut impl BufMut, reference_id: i32, code: ErrorCode) {
    let attrs = [
        Some(Attr::Int(attr::REFERENCE_ID, reference_id)),
        Some(Attr::Int(attr::ERROR_CODE, code.code())),
        Some(Attr::Str(
            attr::ERROR_DESCRIPTION,
            code.description().as_bytes(),
        )),
    ];
    // The descriptions are short constants, far below the u16 limit.
    let _ = write_frame(dst, msg::EVENT_ERROR, &attrs);
}

/// Appends one kvlist entry to `dst`, for building an Extension value.
pub fn write_kv_entry(
    dst: &mut impl BufMut,
    key: &str,
    value: &Value<'_>,
) -> Result<(), EncodeError> {
    if key.is_empty() || key.len() > 255 {
        return Err(EncodeError::BadKey);
    }
    let (ty, bytes): (AttrType, &[u8]) = match value {
        Value::Int(_) => (AttrType::Int, &[]),
        Value::String(s) => (AttrType::String, s.as_bytes()),
        Value::Binary(b) => (AttrType::Binary, b),
        Value::KvList(k) => (AttrType::KvList, k.as_bytes()),
    };
    let len = if let Value::Int(_) = value {
        4
    } else {
        bytes.len()
    };
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::ValueTooLong(attr::EXTENSION));
    }
    dst.put_u16(key.len() as u16);
    dst.put_slice(key.as_bytes());
    dst.put_u8(ty as u8);
    dst.put_u16(len as u16);
    match value {
        Value::Int(v) => dst.put_i32(*v),
        _ => dst.put_slice(bytes),
    }
    Ok(())
}
