//! Fuzz target: the frame decoder never panics, never reads past the frame, and every
//! decoded message re-encodes and decodes to itself.
#![no_main]

use ixn::protocol::{decode, encode, DecodeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 64 + usize::from(data.first().copied().unwrap_or(0)) * 32;
    let mut rest = data;
    while !rest.is_empty() {
        match decode(rest, max) {
            Ok(None) | Err(DecodeError::Framing(_)) => break,
            Ok(Some(f)) => {
                assert!(f.frame_len >= 8 && f.frame_len <= rest.len() && f.frame_len <= max);
                let mut again = Vec::new();
                if encode(&f.message, &mut again).is_ok() {
                    let g = decode(&again, usize::MAX)
                        .expect("re-encoded frame decodes")
                        .expect("complete");
                    assert_eq!(g.message, f.message);
                }
                rest = &rest[f.frame_len..];
            }
            Err(DecodeError::Malformed(m)) => {
                assert!(m.frame_len >= 8 && m.frame_len <= rest.len());
                rest = &rest[m.frame_len..];
            }
        }
    }
});
