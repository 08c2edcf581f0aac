//! Timer wheel against a `BinaryHeap` (lazy cancellation) and `tokio_util::time::DelayQueue`:
//! insert + cancel with 1k, 100k and 1M timers pending, and one tick that expires 10k.
//!
//! `cargo bench --bench timer_wheel`; figures in docs/BENCHMARKS.md.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use ixn::timer_wheel::TimerWheel;

const TICK: Duration = Duration::from_millis(100);

/// The baseline a user would write: a min-heap of deadlines, cancelled lazily.
struct Heap {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: Vec<bool>,
}

impl Heap {
    fn new(n: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(n),
            live: Vec::with_capacity(n),
        }
    }
    fn insert(&mut self, at: Instant) -> u64 {
        let id = self.live.len() as u64;
        self.live.push(true);
        self.heap.push(Reverse((at, id)));
        id
    }
    fn cancel(&mut self, id: u64) {
        self.live[id as usize] = false;
    }
    fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if std::mem::replace(&mut self.live[id as usize], false) {
                n += 1;
            }
        }
        n
    }
}

fn deadline(t0: Instant, i: usize) -> Instant {
    // Spread over 5 s like registration deadlines of a steady accept rate.
    t0 + Duration::from_micros(((i * 7919) % 5_000_000) as u64 + 1)
}

fn insert_cancel(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("insert_cancel");
    g.throughput(Throughput::Elements(1));
    for &n in &[1_000usize, 100_000, 1_000_000] {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 4096);
        for i in 0..n {
            wheel.insert(deadline(t0, i), i);
        }
        // Deadlines precomputed, so the loop measures the structures, not the arithmetic.
        let ds: Vec<Instant> = (0..4096).map(|i| deadline(t0, n + i)).collect();
        let tds: Vec<tokio::time::Instant> = ds
            .iter()
            .map(|d| tokio::time::Instant::from_std(*d))
            .collect();
        let mut i = n;
        g.bench_with_input(BenchmarkId::new("wheel", n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                let k = wheel.insert(ds[i & 4095], i);
                black_box(wheel.cancel(k))
            })
        });
        let mut heap = Heap::new(n);
        for i in 0..n {
            heap.insert(deadline(t0, i));
        }
        g.bench_with_input(BenchmarkId::new("binary_heap", n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                let k = heap.insert(ds[i & 4095]);
                heap.cancel(k);
                // Lazily cancelled entries stay in the heap until they expire.
                black_box(k)
            })
        });
        let mut dq = tokio_util::time::DelayQueue::with_capacity(n);
        for i in 0..n {
            dq.insert_at(i, tokio::time::Instant::from_std(deadline(t0, i)));
        }
        g.bench_with_input(BenchmarkId::new("delay_queue", n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                let k = dq.insert_at(i, tds[i & 4095]);
                black_box(dq.remove(&k))
            })
        });
    }
    g.finish();
}

fn expire_10k(c: &mut Criterion) {
    let mut g = c.benchmark_group("expire_10k_in_one_tick");
    g.throughput(Throughput::Elements(10_000));
    for &pending in &[0usize, 100_000, 1_000_000] {
        let t0 = Instant::now();
        let due = t0 + Duration::from_millis(5000);
        g.bench_with_input(
            BenchmarkId::new("wheel", pending),
            &pending,
            |b, &pending| {
                b.iter_batched(
                    || {
                        let mut w = TimerWheel::new(t0, TICK, 4096);
                        for i in 0..pending {
                            // Others wait further out, in later slots.
                            w.insert(
                                due + Duration::from_millis(200)
                                    + Duration::from_micros(i as u64 % 60_000_000),
                                i,
                            );
                        }
                        for i in 0..10_000 {
                            w.insert(due - Duration::from_micros(i as u64 % 90_000), i);
                        }
                        // Bring the wheel up to the tick before.
                        w.advance(due - TICK, |_| {});
                        w
                    },
                    |mut w| {
                        let n = w.advance(due, |v| {
                            black_box(v);
                        });
                        assert_eq!(n, 10_000);
                        w
                    },
                    BatchSize::LargeInput,
                )
            },
        );
        g.bench_with_input(
            BenchmarkId::new("binary_heap", pending),
            &pending,
            |b, &pending| {
                b.iter_batched(
                    || {
                        let mut h = Heap::new(pending + 10_000);
                        for i in 0..pending {
                            h.insert(
                                due + Duration::from_millis(200)
                                    + Duration::from_micros(i as u64 % 60_000_000),
                            );
                        }
                        for i in 0..10_000 {
                            h.insert(due - Duration::from_micros(i as u64 % 90_000));
                        }
                        h
                    },
                    |mut h| {
                        assert_eq!(h.expire(due), 10_000);
                        h
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, insert_cancel, expire_10k);
criterion_main!(benches);
