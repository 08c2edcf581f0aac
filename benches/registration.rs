//! End-to-end registrations per second over loopback, against ixn-server (one worker, started
//! here) and against a plain tokio (epoll) server kept in this file: the accept/read/answer/
//! close loop a user would otherwise write.
//!
//! * `churn/<server>/<clients>`: connect → RequestRegisterClient → EventAck → close, with
//!   1, 4 and 16 client threads;
//! * `open_connections/<server>`: RequestRegisterClient → EventAck on connections opened
//!   beforehand (the connects are not timed).
//!
//! `cargo bench --bench registration`. Build the server first (`cargo build --release`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "common/mod.rs"]
mod common;
use common::{start_ixn, ACK_LEN, RRC};

/// The plain tokio server: one task per connection answering each frame with an EventAck
/// that echoes its ReferenceId.
fn start_tokio_baseline() -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(256);
                    let mut ack =
                        hex::decode("0000001600800002000101000400000007000401000400000001")
                            .unwrap();
                    loop {
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        while buf.len() >= 4 {
                            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize + 4;
                            if buf.len() < len {
                                break;
                            }
                            if len >= 17 {
                                ack[13..17].copy_from_slice(&buf[13..17]);
                            }
                            buf.drain(..len);
                            if s.write_all(&ack).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

fn register_on(s: &mut TcpStream, rrc: &[u8]) {
    let mut ack = [0u8; ACK_LEN];
    s.write_all(rrc).unwrap();
    s.read_exact(&mut ack).unwrap();
}

/// `iters` churn registrations spread over `clients` threads; the wall time they took.
fn churn(addr: SocketAddr, clients: usize, iters: u64) -> Duration {
    let rrc = Arc::new(hex::decode(RRC).unwrap());
    let left = Arc::new(AtomicU64::new(iters));
    let t = Instant::now();
    let hs: Vec<_> = (0..clients)
        .map(|_| {
            let (rrc, left) = (rrc.clone(), left.clone());
            std::thread::spawn(move || {
                while left
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let mut s = TcpStream::connect(addr).unwrap();
                    register_on(&mut s, &rrc);
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    t.elapsed()
}

/// `iters` registrations on connections opened beforehand, in rounds of at most 2,000.
fn on_open(addr: SocketAddr, iters: u64) -> Duration {
    let rrc = hex::decode(RRC).unwrap();
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(2000);
        let mut conns: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let t = Instant::now();
        for s in &mut conns {
            register_on(s, &rrc);
        }
        total += t.elapsed();
        for s in &conns {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
        left -= n;
    }
    total
}

fn bench(c: &mut Criterion) {
    let ixn = start_ixn(&["--registration-timeout", "60s"]);
    let servers = [
        ("ixn-server", ixn.addr),
        ("tokio-baseline", start_tokio_baseline()),
    ];
    let mut g = c.benchmark_group("churn");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));
    for clients in [1usize, 4, 16] {
        for (name, addr) in servers {
            g.bench_with_input(BenchmarkId::new(name, clients), &clients, |b, &clients| {
                b.iter_custom(|iters| churn(addr, clients, iters))
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("open_connections");
    g.throughput(Throughput::Elements(1));
    for (name, addr) in servers {
        g.bench_function(name, |b| b.iter_custom(|iters| on_open(addr, iters)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
