//! Property tests for the codec: round-trips, and arbitrary bytes never panic or allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ixn::protocol::{
    decode, encode, write_kv_entry, DecodeError, EventAck, EventError, KvList, Message,
    RegisterClient, UnregisterClient, Value, DEFAULT_MAX_FRAME_LEN,
};
use proptest::prelude::*;

/// Counts heap allocations made by the current thread, so decode can be shown to make none.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn name() -> impl Strategy<Value = String> {
    "\\PC{1,60}".prop_filter("1..=255 bytes", |s| !s.is_empty() && s.len() <= 255)
}

fn extension() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        ("[a-z]{1,8}", any::<i32>(), "\\PC{0,12}", any::<bool>()),
        0..4,
    )
    .prop_map(|entries| {
        let mut raw = Vec::new();
        for (k, i, s, as_int) in entries {
            let v = if as_int {
                Value::Int(i)
            } else {
                Value::String(&s)
            };
            write_kv_entry(&mut raw, &k, &v).unwrap();
        }
        raw
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn register_round_trips(
        rid in any::<i32>(), n in name(), ty in any::<i32>(), pid in any::<Option<i32>>(),
        cred in prop::option::of("\\PC{0,40}"), ext in prop::option::of(extension()),
        ka in any::<Option<u16>>(),
    ) {
        let m = Message::RegisterClient(RegisterClient {
            reference_id: rid,
            client_name: &n,
            client_type: ty,
            proxy_client_id: pid,
            credential: cred.as_deref(),
            extension: ext.as_deref().map(|e| KvList::parse(e).unwrap()),
            keep_alive: ka,
        });
        let mut buf = Vec::new();
        encode(&m, &mut buf).unwrap();
        let before = allocs();
        let f = decode(&buf, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
        prop_assert_eq!(allocs(), before, "decode allocated");
        prop_assert_eq!(f.frame_len, buf.len());
        prop_assert_eq!(f.message, m);
    }

    #[test]
    fn other_messages_round_trip(
        rid in any::<i32>(), pid in any::<Option<i32>>(), code in any::<i32>(), text in "\\PC{0,80}",
        other_id in 4u16..0x7f, ka in any::<Option<u16>>(),
    ) {
        let ms = [
            Message::UnregisterClient(UnregisterClient { reference_id: rid, proxy_client_id: pid }),
            Message::KeepAlive(ixn::protocol::KeepAlive { reference_id: rid }),
            Message::EventAck(EventAck { reference_id: rid, proxy_client_id: pid, extension: None, keep_alive: ka }),
            Message::EventError(EventError { reference_id: rid, error_code: code, error_description: &text }),
            Message::Other { msg_id: other_id, reference_id: pid },
        ];
        for m in ms {
            let mut buf = Vec::new();
            encode(&m, &mut buf).unwrap();
            let f = decode(&buf, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(f.message, m);
            prop_assert_eq!(f.frame_len, buf.len());
        }
    }

    /// Arbitrary bytes: no panic, no allocation, and a coherent answer.
    #[test]
    fn arbitrary_bytes_are_handled(bytes in prop::collection::vec(any::<u8>(), 0..300), max in 8usize..400) {
        let before = allocs();
        let r = decode(&bytes, max);
        prop_assert_eq!(allocs(), before, "decode allocated");
        match r {
            Ok(None) => {
                // Need more: either the length field is incomplete or the frame is.
                if bytes.len() >= 4 {
                    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                    prop_assert!(len >= 4 && 4 + len <= max && bytes.len() < 4 + len);
                }
            }
            Ok(Some(f)) => prop_assert!(f.frame_len >= 8 && f.frame_len <= bytes.len().min(max)),
            Err(DecodeError::Malformed(m)) => prop_assert!(m.frame_len >= 8 && m.frame_len <= bytes.len().min(max)),
            Err(DecodeError::Framing(_)) => {
                let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as u64;
                prop_assert!(len < 4 || 4 + len > max as u64);
            }
        }
    }

    /// Bytes shaped like a frame (valid header, random body) exercise attribute parsing.
    #[test]
    fn framed_garbage_is_handled(msg_id in any::<u16>(), count in 0u16..8, body in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = Vec::new();
        buf.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        buf.extend_from_slice(&msg_id.to_be_bytes());
        buf.extend_from_slice(&count.to_be_bytes());
        buf.extend_from_slice(&body);
        let before = allocs();
        let r = decode(&buf, DEFAULT_MAX_FRAME_LEN);
        prop_assert_eq!(allocs(), before, "decode allocated");
        match r {
            Ok(Some(f)) => prop_assert_eq!(f.frame_len, buf.len()),
            Err(DecodeError::Malformed(m)) => prop_assert_eq!(m.frame_len, buf.len()),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

#[test]
fn kvlist_nesting_is_capped_at_depth_4() {
    fn nest(depth: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        write_kv_entry(&mut raw, "leaf", &Value::Int(1)).unwrap();
        for _ in 1..depth {
            let inner = raw.clone();
            raw.clear();
            let kv = KvList::parse(&inner).unwrap();
            write_kv_entry(&mut raw, "n", &Value::KvList(kv)).unwrap();
        }
        raw
    }
    for depth in 1..=4 {
        assert!(KvList::parse(&nest(depth)).is_ok(), "depth {depth}");
    }
    // Build depth 5 by hand, since KvList::parse would refuse the depth-4 level inside.
    let inner4 = nest(4);
    let mut raw = Vec::new();
    raw.extend_from_slice(&1u16.to_be_bytes());
    raw.push(b'n');
    raw.push(4);
    raw.extend_from_slice(&(inner4.len() as u16).to_be_bytes());
    raw.extend_from_slice(&inner4);
    assert_eq!(
        KvList::parse(&raw),
        Err(ixn::protocol::MalformedReason::KvListTooDeep)
    );
}
