//! Every vector of the spec's `vectors.txt` (copied to `tests/data/`) decodes to its stated
//! meaning, and every valid message re-encodes to exactly the same bytes.

use ixn::protocol::{
    decode, encode, encode_event_ack, encode_event_error, DecodeError, ErrorCode, EventAck,
    EventError, FramingError, KvList, Malformed, MalformedReason, Message, RegisterClient,
    UnregisterClient, Value, DEFAULT_MAX_FRAME_LEN,
};

const VECTORS: &str = include_str!("data/vectors.txt");

fn vectors() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in VECTORS.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            name = Some(line.trim().to_string());
        } else if let Some(hex) = line.trim().strip_prefix("hex ") {
            let bytes = hex::decode(hex.trim()).expect("vector hex");
            out.push((name.take().expect("hex line follows a name"), bytes));
        }
    }
    out
}

fn malformed(bytes: &[u8]) -> Malformed {
    match decode(bytes, DEFAULT_MAX_FRAME_LEN) {
        Err(DecodeError::Malformed(m)) => {
            assert_eq!(
                m.frame_len,
                bytes.len(),
                "resync point is the end of the frame"
            );
            m
        }
        other => panic!("expected a malformed message, got {other:?}"),
    }
}

/// Decodes `bytes` as one whole frame, checks it is `want`, and re-encodes it byte-exactly.
fn round_trip(bytes: &[u8], want: Message<'_>) {
    let frame = decode(bytes, DEFAULT_MAX_FRAME_LEN)
        .expect("decodes")
        .expect("complete");
    assert_eq!(frame.frame_len, bytes.len());
    assert_eq!(frame.message, want);
    let mut out = Vec::new();
    encode(&frame.message, &mut out).unwrap();
    assert_eq!(
        hex::encode(&out),
        hex::encode(bytes),
        "re-encoding is byte-exact"
    );
    // Every proper prefix is "need more", never an error or a message.
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut], DEFAULT_MAX_FRAME_LEN),
            Ok(None),
            "prefix {cut}"
        );
    }
}

#[test]
fn every_vector_matches_its_meaning() {
    let all = vectors();
    assert_eq!(all.len(), 22, "vectors.txt holds 22 vectors");
    for (name, bytes) in &all {
        check(name, bytes);
    }
}

fn check(name: &str, bytes: &[u8]) {
    match name {
        "register_minimal" => round_trip(
            bytes,
            Message::RegisterClient(RegisterClient {
                reference_id: 7,
                client_name: "MediaServer_email",
                client_type: 1,
                proxy_client_id: None,
                credential: None,
                extension: None,
                keep_alive: None,
            }),
        ),
        "register_full" => {
            let frame = decode(bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            let Message::RegisterClient(m) = frame.message else {
                panic!("not a RequestRegisterClient: {:?}", frame.message)
            };
            let ext = m.extension.expect("Extension present");
            let entries: Vec<_> = ext.iter().collect();
            assert_eq!(
                entries,
                vec![("site", Value::String("eu-1")), ("prio", Value::Int(3))]
            );
            // Build the same Extension from scratch to check the kvlist encoder too.
            let mut raw = Vec::new();
            ixn::protocol::write_kv_entry(&mut raw, "site", &Value::String("eu-1")).unwrap();
            ixn::protocol::write_kv_entry(&mut raw, "prio", &Value::Int(3)).unwrap();
            round_trip(
                bytes,
                Message::RegisterClient(RegisterClient {
                    reference_id: -2,
                    client_name: "Agent_ü",
                    client_type: 2,
                    proxy_client_id: Some(0),
                    credential: Some("s3cret"),
                    extension: Some(KvList::parse(&raw).unwrap()),
                    keep_alive: None,
                }),
            );
        }
        "unregister" => round_trip(
            bytes,
            Message::UnregisterClient(UnregisterClient {
                reference_id: 9,
                proxy_client_id: Some(65537),
            }),
        ),
        "event_ack" => {
            round_trip(
                bytes,
                Message::EventAck(EventAck {
                    reference_id: 7,
                    proxy_client_id: Some(1),
                    extension: None,
                    keep_alive: None,
                }),
            );
            let mut out = Vec::new();
            encode_event_ack(&mut out, 7, Some(1), None);
            assert_eq!(out, bytes, "the server's own EventAck writer");
        }
        "event_error" => {
            round_trip(
                bytes,
                Message::EventError(EventError {
                    reference_id: 7,
                    error_code: 2,
                    error_description: "unknown client",
                }),
            );
            let mut out = Vec::new();
            encode_event_error(&mut out, 7, ErrorCode::UnknownClient);
            assert_eq!(out, bytes, "the server's own EventError writer");
        }
        "other_message" => round_trip(
            bytes,
            Message::Other {
                msg_id: 0x0010,
                reference_id: Some(5),
            },
        ),
        "unknown_attr_skipped" => {
            let frame = decode(bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            assert_eq!(frame.frame_len, bytes.len());
            let want = Message::RegisterClient(RegisterClient {
                reference_id: 1,
                client_name: "X",
                client_type: 3,
                proxy_client_id: None,
                credential: None,
                extension: None,
                keep_alive: None,
            });
            assert_eq!(frame.message, want);
            // Our encoder never writes attribute 99, so the byte-exact comparison is
            // against the vector without it: [8..17) is ReferenceId, [17..24) attr 99.
            let mut without = bytes.to_vec();
            without.drain(17..24);
            without[3] -= 7;
            without[7] -= 1;
            round_trip(&without, want);
        }
        "empty_message" => round_trip(
            bytes,
            Message::Other {
                msg_id: 0x0010,
                reference_id: None,
            },
        ),
        "malformed_wrong_type" => {
            let m = malformed(bytes);
            assert_eq!(m.reason, MalformedReason::WrongType(1));
            assert_eq!(m.reference_id, None);
        }
        "malformed_duplicate" => {
            let m = malformed(bytes);
            assert_eq!(m.reason, MalformedReason::Duplicate(1));
            assert_eq!(m.reference_id, Some(1), "the first ReferenceId was valid");
        }
        "malformed_missing_name" => {
            let m = malformed(bytes);
            assert_eq!(m.reason, MalformedReason::Missing(2));
            assert_eq!(m.reference_id, Some(4));
        }
        "malformed_bad_utf8" => {
            let m = malformed(bytes);
            assert_eq!(m.reason, MalformedReason::BadUtf8(2));
            assert_eq!(m.reference_id, Some(1));
        }
        "malformed_overrun" => {
            let m = malformed(bytes);
            assert_eq!(m.reason, MalformedReason::Overrun);
            assert_eq!(m.reference_id, Some(1));
        }
        "malformed_count" => {
            let m = malformed(bytes);
            assert_eq!(m.reason, MalformedReason::CountMismatch);
            assert_eq!(m.reference_id, Some(1));
        }
        "malformed_int_len" => {
            let m = malformed(bytes);
            assert_eq!(m.reason, MalformedReason::BadLength(1));
            assert_eq!(m.reference_id, None);
        }
        "framing_too_short" => assert_eq!(
            decode(bytes, DEFAULT_MAX_FRAME_LEN),
            Err(DecodeError::Framing(FramingError::TooShort { length: 3 }))
        ),
        "framing_too_long" => {
            assert_eq!(
                decode(bytes, DEFAULT_MAX_FRAME_LEN),
                Err(DecodeError::Framing(FramingError::TooLarge {
                    frame_len: 8193,
                    max_frame_len: 8192
                }))
            );
            // The same frame is only incomplete under a larger limit.
            assert_eq!(decode(bytes, 8193), Ok(None));
        }
        "framing_max_ok" => {
            assert_eq!(bytes.len(), 8192);
            let frame = decode(bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            assert_eq!(frame.frame_len, 8192);
            assert_eq!(
                frame.message,
                Message::Other {
                    msg_id: 0x0010,
                    reference_id: None
                }
            );
            // One byte less of limit and the same frame is a framing error.
            assert!(matches!(
                decode(bytes, 8191),
                Err(DecodeError::Framing(FramingError::TooLarge { .. }))
            ));
        }
        "register_keepalive" => round_trip(
            bytes,
            Message::RegisterClient(RegisterClient {
                reference_id: 11,
                client_name: "Agent_1001",
                client_type: 2,
                proxy_client_id: None,
                credential: None,
                extension: None,
                keep_alive: Some(30),
            }),
        ),
        "event_ack_keepalive" => {
            round_trip(
                bytes,
                Message::EventAck(EventAck {
                    reference_id: 11,
                    proxy_client_id: Some(3),
                    extension: None,
                    keep_alive: Some(30),
                }),
            );
            let mut out = Vec::new();
            encode_event_ack(&mut out, 11, Some(3), Some(30));
            assert_eq!(out, bytes, "the server's own EventAck writer");
        }
        "keepalive_request" => round_trip(
            bytes,
            Message::KeepAlive(ixn::protocol::KeepAlive { reference_id: 12 }),
        ),
        "event_error_keepalive" => {
            round_trip(
                bytes,
                Message::EventError(EventError {
                    reference_id: 0,
                    error_code: 19,
                    error_description: "keepalive expired",
                }),
            );
            let mut out = Vec::new();
            encode_event_error(&mut out, 0, ErrorCode::KeepAliveExpired);
            assert_eq!(out, bytes, "the server's own EventError writer");
        }
        other => panic!("vector {other} has no expectation in this test"),
    }
}
