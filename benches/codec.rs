//! Codec throughput: decode and encode of RequestRegisterClient, EventAck and EventError.
//!
//! Measured 2026-11-24 on the 2-core VM (kernel 6.18), `cargo bench --bench codec`:
//! decode of a RequestRegisterClient (with Credential, 59 bytes) 38 ns (26 M msg/s), EventAck
//! 24 ns, EventError 34 ns; encode of EventAck 10.5 ns, EventError 14 ns. The target is a
//! decode under 100 ns with no heap allocation; `tests/codec_props.rs` asserts the second
//! part with a counting allocator.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ixn::protocol::{
    decode, encode, encode_event_ack, encode_event_error, ErrorCode, Message, RegisterClient,
    DEFAULT_MAX_FRAME_LEN,
};

fn register_frame() -> Vec<u8> {
    let mut v = Vec::new();
    encode(
        &Message::RegisterClient(RegisterClient {
            reference_id: 7,
            client_name: "MediaServer_email",
            client_type: 1,
            proxy_client_id: None,
            credential: Some("s3cret"),
            extension: None,
            keep_alive: None,
        }),
        &mut v,
    )
    .unwrap();
    v
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let rrc = register_frame();
    let mut ack = Vec::new();
    encode_event_ack(&mut ack, 7, Some(1), None);
    let mut error = Vec::new();
    encode_event_error(&mut error, 7, ErrorCode::UnknownClient);
    for (name, bytes) in [
        ("RequestRegisterClient", &rrc),
        ("EventAck", &ack),
        ("EventError", &error),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/elements"), |b| {
            b.iter(|| {
                decode(black_box(bytes), DEFAULT_MAX_FRAME_LEN)
                    .unwrap()
                    .unwrap()
            })
        });
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("{name}/bytes"), |b| {
            b.iter(|| {
                decode(black_box(bytes), DEFAULT_MAX_FRAME_LEN)
                    .unwrap()
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let mut buf = Vec::with_capacity(256);
    g.throughput(Throughput::Elements(1));
    g.bench_function("EventAck", |b| {
        b.iter(|| {
            buf.clear();
            encode_event_ack(&mut buf, black_box(7), Some(black_box(1)), None);
            buf.len()
        })
    });
    g.bench_function("EventError", |b| {
        b.iter(|| {
            buf.clear();
            encode_event_error(&mut buf, black_box(7), ErrorCode::UnknownClient);
            buf.len()
        })
    });
    let rrc = register_frame();
    let frame = decode(&rrc, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
    g.throughput(Throughput::Bytes(rrc.len() as u64));
    g.bench_function("RequestRegisterClient", |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(&frame.message), &mut buf).unwrap();
            buf.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
