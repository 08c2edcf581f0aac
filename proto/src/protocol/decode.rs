//! Frame decoder: a pure function from bytes to `Ok(None)`, a typed message or a typed error.
//!
//! Two kinds of failure are kept apart because the connection must treat them differently:
//! a [`FramingError`] means the length prefix cannot be trusted and the stream cannot be
//! resynchronised (answer once, then close); a [`Malformed`] message was framed correctly,
//! so the caller answers it and resumes at the next frame, `frame_len` bytes further on.

use super::types::{
    attr, msg, AttrType, EventAck, EventError, KeepAlive, KvList, Message, RegisterClient,
    UnregisterClient,
};
use super::{ATTR_HEADER_LEN, HEADER_LEN, MAX_CLIENT_NAME_LEN, MAX_CREDENTIAL_LEN};

/// One decoded frame: its message and how many bytes of the input it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message, borrowing from the input.
    pub message: Message<'a>,
    /// Bytes of the input the frame occupied, length field included.
    pub frame_len: usize,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The stream cannot be resynchronised: answer FrameTooLarge and close.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// The frame is intact but its content breaks the spec: answer and go on.
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// A length prefix outside `4..=max_frame_len - 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// `length` < 4: not even room for `msg_id` and `attr_count`.
    #[error("frame length {length} is below the minimum of 4")]
    TooShort {
        /// The length field as received.
        length: u32,
    },
    /// `4 + length` > `max_frame_len`.
    #[error("frame of {frame_len} bytes exceeds max_frame_len {max_frame_len}")]
    TooLarge {
        /// `4 + length`.
        frame_len: u64,
        /// The limit in force.
        max_frame_len: usize,
    },
}

/// A well-framed message whose content breaks docs/PROTOCOL.md §2 or §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed message 0x{msg_id:04x}: {reason}")]
pub struct Malformed {
    /// Bytes to skip to reach the next frame.
    pub frame_len: usize,
    /// The frame's `msg_id`.
    pub msg_id: u16,
    /// The ReferenceId, if it was read as a valid int before the fault was found.
    pub reference_id: Option<i32>,
    /// What was wrong.
    pub reason: MalformedReason,
}

/// What made a message malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedReason {
    /// An attribute (or kvlist entry) runs past the end of its container.
    #[error("attribute overruns the frame")]
    Overrun,
    /// `attr_count` does not match the attributes that fill the frame.
    #[error("attribute count does not match the frame length")]
    CountMismatch,
    /// A known attribute carries the wrong type.
    #[error("attribute {0} has the wrong type")]
    WrongType(u16),
    /// A known attribute appears twice.
    #[error("attribute {0} appears twice")]
    Duplicate(u16),
    /// A string attribute is not valid UTF-8.
    #[error("attribute {0} is not valid UTF-8")]
    BadUtf8(u16),
    /// An attribute's length is outside what its type or definition allows.
    #[error("attribute {0} has a bad length")]
    BadLength(u16),
    /// An int attribute outside the values its definition allows (KeepAlive: 0..=65535).
    #[error("attribute {0} is out of its range")]
    OutOfRange(u16),
    /// A mandatory attribute is absent.
    #[error("mandatory attribute {0} is missing")]
    Missing(u16),
    /// A kvlist nests deeper than 4.
    #[error("kvlist nested deeper than 4")]
    KvListTooDeep,
    /// A kvlist key is empty, longer than 255 bytes or not UTF-8.
    #[error("kvlist key is invalid")]
    BadKvKey,
    /// A kvlist entry has an undefined type.
    #[error("kvlist entry has an undefined type")]
    BadKvType,
    /// A kvlist entry's value does not match its type.
    #[error("kvlist value does not match its type")]
    BadKvValue,
}

pub(crate) fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes the first frame of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete (read more and call again),
/// `Ok(Some(frame))` for a message, and an error otherwise; see [`DecodeError`]. A
/// too-large length is reported as soon as the 4-byte length field has arrived, so a
/// hostile peer can never make the caller buffer more than `max_frame_len` bytes.
/// Never allocates: strings and binaries in the result borrow from `buf`.
pub fn decode(buf: &[u8], max_frame_len: usize) -> Result<Option<Frame<'_>>, DecodeError> {
    let Some(length) = read_u32(buf, 0) else {
        return Ok(None);
    };
    if length < 4 {
        return Err(FramingError::TooShort { length }.into());
    }
    let frame_len = 4 + u64::from(length);
    if frame_len > max_frame_len as u64 {
        return Err(FramingError::TooLarge {
            frame_len,
            max_frame_len,
        }
        .into());
    }
    // Bounded by max_frame_len (at most 1 MiB), so the cast cannot truncate.
    let frame_len = frame_len as usize;
    let Some(frame) = buf.get(..frame_len) else {
        return Ok(None);
    };
    let msg_id = read_u16(frame, 4).unwrap_or(0);
    let attr_count = read_u16(frame, 6).unwrap_or(0);
    let mut attrs = Attrs::default();
    let malformed = |attrs: &Attrs<'_>, reason| Malformed {
        frame_len,
        msg_id,
        reference_id: attrs.reference_id,
        reason,
    };
    if let Err(reason) = attrs.read(&frame[HEADER_LEN..], attr_count) {
        return Err(malformed(&attrs, reason).into());
    }
    let message = attrs
        .to_message(msg_id)
        .map_err(|reason| malformed(&attrs, reason))?;
    Ok(Some(Frame { message, frame_len }))
}

/// The known attributes of one message, each at most once.
#[derive(Default)]
struct Attrs<'a> {
    reference_id: Option<i32>,
    client_name: Option<&'a str>,
    client_type: Option<i32>,
    proxy_client_id: Option<i32>,
    credential: Option<&'a str>,
    extension: Option<KvList<'a>>,
    error_code: Option<i32>,
    error_description: Option<&'a str>,
    keep_alive: Option<u16>,
}

impl<'a> Attrs<'a> {
    /// Reads exactly `count` attributes that must fill `body` exactly.
    fn read(&mut self, mut body: &'a [u8], count: u16) -> Result<(), MalformedReason> {
        for _ in 0..count {
            if body.is_empty() {
                return Err(MalformedReason::CountMismatch);
            }
            if body.len() < ATTR_HEADER_LEN {
                return Err(MalformedReason::Overrun);
            }
            let id = u16::from_be_bytes([body[0], body[1]]);
            let ty = body[2];
            let len = usize::from(u16::from_be_bytes([body[3], body[4]]));
            let value = body
                .get(ATTR_HEADER_LEN..ATTR_HEADER_LEN + len)
                .ok_or(MalformedReason::Overrun)?;
            body = &body[ATTR_HEADER_LEN + len..];
            // Unknown ids are skipped whatever their type byte says: forward compatibility.
            let Some(want) = AttrType::of_attr(id) else {
                continue;
            };
            if ty != want as u8 {
                return Err(MalformedReason::WrongType(id));
            }
            self.set(id, value)?;
        }
        if body.is_empty() {
            Ok(())
        } else {
            Err(MalformedReason::CountMismatch)
        }
    }

    fn set(&mut self, id: u16, value: &'a [u8]) -> Result<(), MalformedReason> {
        fn int(id: u16, v: &[u8]) -> Result<i32, MalformedReason> {
            let b: [u8; 4] = v.try_into().map_err(|_| MalformedReason::BadLength(id))?;
            Ok(i32::from_be_bytes(b))
        }
        fn string(id: u16, v: &[u8], max: usize, min: usize) -> Result<&str, MalformedReason> {
            if v.len() < min || v.len() > max {
                return Err(MalformedReason::BadLength(id));
            }
            std::str::from_utf8(v).map_err(|_| MalformedReason::BadUtf8(id))
        }
        fn put<T>(slot: &mut Option<T>, id: u16, v: T) -> Result<(), MalformedReason> {
            if slot.is_some() {
                return Err(MalformedReason::Duplicate(id));
            }
            *slot = Some(v);
            Ok(())
        }
        match id {
            attr::REFERENCE_ID => put(&mut self.reference_id, id, int(id, value)?),
            attr::CLIENT_NAME => put(
                &mut self.client_name,
                id,
                string(id, value, MAX_CLIENT_NAME_LEN, 1)?,
            ),
            attr::CLIENT_TYPE => put(&mut self.client_type, id, int(id, value)?),
            attr::PROXY_CLIENT_ID => put(&mut self.proxy_client_id, id, int(id, value)?),
            attr::CREDENTIAL => put(
                &mut self.credential,
                id,
                string(id, value, MAX_CREDENTIAL_LEN, 0)?,
            ),
            attr::EXTENSION => put(&mut self.extension, id, KvList::parse(value)?),
            attr::ERROR_CODE => put(&mut self.error_code, id, int(id, value)?),
            attr::ERROR_DESCRIPTION => put(
                &mut self.error_description,
                id,
                string(id, value, usize::MAX, 0)?,
            ),
            attr::KEEP_ALIVE => {
                let secs =
                    u16::try_from(int(id, value)?).map_err(|_| MalformedReason::OutOfRange(id))?;
                put(&mut self.keep_alive, id, secs)
            }
            _ => Ok(()),
        }
    }

    fn to_message(&self, msg_id: u16) -> Result<Message<'a>, MalformedReason> {
        let need = |v: Option<i32>, id| v.ok_or(MalformedReason::Missing(id));
        Ok(match msg_id {
            msg::REQUEST_REGISTER_CLIENT => Message::RegisterClient(RegisterClient {
                reference_id: need(self.reference_id, attr::REFERENCE_ID)?,
                client_name: self
                    .client_name
                    .ok_or(MalformedReason::Missing(attr::CLIENT_NAME))?,
                client_type: need(self.client_type, attr::CLIENT_TYPE)?,
                proxy_client_id: self.proxy_client_id,
                credential: self.credential,
                extension: self.extension,
                keep_alive: self.keep_alive,
            }),
            msg::REQUEST_UNREGISTER_CLIENT => Message::UnregisterClient(UnregisterClient {
                reference_id: need(self.reference_id, attr::REFERENCE_ID)?,
                proxy_client_id: self.proxy_client_id,
            }),
            msg::REQUEST_KEEP_ALIVE => Message::KeepAlive(KeepAlive {
                reference_id: need(self.reference_id, attr::REFERENCE_ID)?,
            }),
            msg::EVENT_ACK => Message::EventAck(EventAck {
                reference_id: need(self.reference_id, attr::REFERENCE_ID)?,
                proxy_client_id: self.proxy_client_id,
                extension: self.extension,
                keep_alive: self.keep_alive,
            }),
            msg::EVENT_ERROR => Message::EventError(EventError {
                reference_id: need(self.reference_id, attr::REFERENCE_ID)?,
                error_code: need(self.error_code, attr::ERROR_CODE)?,
                error_description: self
                    .error_description
                    .ok_or(MalformedReason::Missing(attr::ERROR_DESCRIPTION))?,
            }),
            other => Message::Other {
                msg_id: other,
                reference_id: self.reference_id,
            },
        })
    }
}
