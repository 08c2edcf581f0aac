//! Allocation budget: steady-state heap allocations per registration through the real
//! server (in-process, one worker), counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RRC: [u8; 48] = *b"\x00\x00\x00\x2c\x00\x01\x00\x03\x00\x01\x01\x00\x04\x00\x00\x00\x07\x00\x02\x02\x00\x11MediaServer_email\x00\x03\x01\x00\x04\x00\x00\x00\x01";

fn register(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&RRC).unwrap();
    let mut ack = [0u8; 26];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(&ack[4..6], &[0x00, 0x80], "EventAck");
}

/// Runs the real server in this process on `engine` and counts heap allocations (whole
/// process, the client included) per registration once warm.
fn allocations_per_registration(engine: ixn::config::Engine) -> f64 {
    // Pick a free port, then run the real server on it in this process.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = ixn::config::Args {
        listen: vec![addr],
        workers: Some(1),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        engine: Some(engine),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    std::thread::spawn(move || ixn::runtime::run(config, ixn::registry::Registry::embedded()));
    let t = std::time::Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Warm up: pools, slabs and histograms reach their steady size.
    for _ in 0..3000 {
        register(addr);
    }
    std::thread::sleep(Duration::from_millis(300));
    let n = 20_000u64;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        register(addr);
    }
    // Let the last closes and a timer tick (metric flush) happen inside the window.
    std::thread::sleep(Duration::from_millis(300));
    let per = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    println!("{engine:?}: heap allocations per registration: {per:.2}");
    per
}

/// The io_uring engine. One engine per test binary: the metrics recorder a server
/// installs is process-wide, so a second in-process server could not start.
#[test]
fn at_most_one_allocation_per_registration() {
    let per = allocations_per_registration(ixn::config::Engine::Uring);
    assert!(
        per <= 1.0,
        "{per:.2} allocations per registration (budget 1)"
    );
}
