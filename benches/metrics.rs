//! Hot-path cost of metrics: everything one registration records, with the real Prometheus
//! recorder installed, including the per-tick flush amortised over a tick's registrations.
//!
//! `cargo bench --bench metrics`. Compare with the server CPU per registration in
//! docs/BENCHMARKS.md (about 35 µs) to see the share metrics take.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ixn::metrics::WorkerMetrics;
use ixn::session::{Answer, Close, CloseReason, Output, Registration, TimerAction};

fn bench(c: &mut Criterion) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(ixn::metrics::DURATION_BUCKETS)
        .unwrap()
        .install_recorder()
        .unwrap();
    ixn::metrics::describe();
    let m = WorkerMetrics::new();
    let ack = Output {
        answer: Some(Answer::Ack),
        registration: Some(Ok(Registration {
            proxy_client_id: 1,
            logical: false,
        })),
        timer: TimerAction::Cancel,
        close: Close::No,
        keep_alive: false,
    };
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    // One registration's worth of events; a flush every 2,500 registrations (a 100 ms
    // tick at 25k registrations/s).
    let mut n = 0u32;
    g.bench_function("per_registration", |b| {
        b.iter(|| {
            m.accepted(ixn_proto::tls::ListenerKind::Plain);
            m.bytes_in(44);
            m.output(&ack);
            m.bytes_out(26);
            m.registration_duration(Duration::from_micros(40));
            m.closed(CloseReason::Peer, true, 0);
            n += 1;
            if n == 2500 {
                n = 0;
                m.flush();
            }
        })
    });
    g.finish();
    let _ = recorder.render();
}

criterion_group!(benches, bench);
criterion_main!(benches);
