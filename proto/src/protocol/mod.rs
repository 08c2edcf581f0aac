//! IXN/1 wire codec: frames, attributes and messages of docs/PROTOCOL.md §1–5, pure and copy-free.
//!
//! The decoder is a function over a byte slice ([`decode`]); decoded messages borrow
//! their strings and binaries from that slice, so decoding never allocates. The encoder
//! writes into any [`bytes::BufMut`] the caller owns. Nothing here performs I/O or reads a
//! clock, which is what lets every rule of the spec be tested in microseconds.
#![forbid(unsafe_code)]

mod decode;
mod encode;
mod types;

pub use decode::{decode, DecodeError, Frame, FramingError, Malformed, MalformedReason};
pub use encode::{encode, encode_event_ack, encode_event_error, write_kv_entry, EncodeError};
pub use types::{
    attr, msg, AttrType, ClientType, ErrorCode, EventAck, EventError, KeepAlive, KvIter, KvList,
    Message, RegisterClient, UnregisterClient, Value,
};

/// Bytes of the frame header: `length` (u32), `msg_id` (u16), `attr_count` (u16).
pub const HEADER_LEN: usize = 8;
/// Bytes of an attribute header: `attr_id` (u16), `type` (u8), `len` (u16).
pub const ATTR_HEADER_LEN: usize = 5;
/// Default bound on a whole frame, length field included (docs/PROTOCOL.md §1).
pub const DEFAULT_MAX_FRAME_LEN: usize = 8192;
/// Hard upper bound any `max_frame_len` setting may take (1 MiB).
pub const MAX_FRAME_LEN_LIMIT: usize = 1 << 20;
/// Smallest `max_frame_len` that still admits a frame with no attributes.
pub const MIN_FRAME_LEN: usize = HEADER_LEN;
/// Deepest kvlist nesting allowed; the Extension attribute itself is depth 1.
pub const MAX_KVLIST_DEPTH: usize = 4;
/// Longest ClientName in bytes.
pub const MAX_CLIENT_NAME_LEN: usize = 255;
/// Longest Credential in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 1024;
