//! `ixn-loadgen`: load generator for IXN/1 registration traffic (docs/LOADGEN.md).

mod cli;
mod report;
mod run;
mod stats;
mod tls;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cli::{Args, Mix, Scenario};
use crate::report::{Second, Summary};
use crate::stats::{hist, Shared, Totals};

fn main() -> ExitCode {
    let args = Args::parse();
    match run_all(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ixn-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_all(args: Args) -> anyhow::Result<ExitCode> {
    let sources = if args.source.is_empty() {
        cli::default_sources(args.target)
    } else {
        cli::sources(&args.source)?
    };
    if let Some(w) = cli::PortPressure::read().and_then(|p| p.warning(sources.len())) {
        eprintln!("ixn-loadgen: warning: {w}");
    }
    let mix = if args.scenario == Scenario::Mix {
        Mix::parse(&args.mix)?
    } else {
        Mix::default()
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let shared = Arc::new(Shared::new(threads));
    let tls = match tls::client_config(&args)? {
        Some(c) => Some((c, tls::server_name(&args)?)),
        None => None,
    };
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let holds = matches!(args.scenario, Scenario::Hold | Scenario::Storm);
    if args.stages.is_some() && (args.rate.is_some() || holds) {
        anyhow::bail!(
            "--stages is an open-loop rate profile: not with --rate or --scenario hold/storm"
        );
    }
    if let Some(s) = &args.stages {
        if s.total() <= args.warmup {
            anyhow::bail!("--stages last {:?}, no longer than --warmup", s.total());
        }
    }
    let measure_until = if let Some(s) = &args.stages {
        // The profile is the run: warm-up included, it ends with the last stage.
        start + s.total()
    } else if args.count.is_some() && !holds {
        // --count ends the run; the duration is only a safety net.
        measure_from + Duration::from_secs(24 * 3600)
    } else {
        measure_from + args.duration
    };
    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        let plan = run::Plan {
            args: args.clone(),
            index,
            threads,
            sources: sources.clone(),
            tls: tls.clone(),
            mix,
            measure_from,
            measure_until,
        };
        let shared = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("ixn-loadgen-{index}"))
                .spawn(move || run::thread_main(plan, shared))?,
        );
    }

    // Progress once a second, and the per-second series for --plot.
    let mut series: Vec<Second> = Vec::new();
    let mut next = start + Duration::from_secs(1);
    let mut storm = report::StormPeaks::default();
    loop {
        let done = handles.iter().all(std::thread::JoinHandle::is_finished);
        let now = Instant::now();
        if holds && now >= measure_until {
            shared.stop.store(true, Ordering::Release);
        }
        if args.scenario == Scenario::Storm && storm.watch(&args, &shared.storm)? {
            // Every dropped client is registered again: the storm is over.
            shared.stop.store(true, Ordering::Release);
        }
        if now >= next || done {
            let mut window = hist();
            let mut handshakes = hist();
            let (mut ok, mut errors) = (0, 0);
            for w in &shared.windows {
                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                ok += w.ok;
                errors += w.errors;
                let _ = window.add(&w.latency);
                let _ = handshakes.add(&w.handshake);
                *w = stats::Window::default();
            }
            let t = now.duration_since(start).as_secs_f64();
            let s = Second {
                t,
                ok,
                errors,
                p50_us: if window.is_empty() {
                    0
                } else {
                    window.value_at_quantile(0.5)
                },
                p99_us: if window.is_empty() {
                    0
                } else {
                    window.value_at_quantile(0.99)
                },
                handshake_p99_us: if handshakes.is_empty() {
                    0
                } else {
                    handshakes.value_at_quantile(0.99)
                },
            };
            if !args.quiet {
                eprintln!(
                    "[{t:>6.1}s] {:>8} ok/s {:>6} err/s  p99 {:>9}  active {:>6}  total ok {} err {}{}",
                    s.ok,
                    s.errors,
                    report::fmt_us(s.p99_us),
                    shared.active.load(Ordering::Relaxed),
                    shared.ok.load(Ordering::Relaxed),
                    shared.errors.load(Ordering::Relaxed),
                    if now < measure_from { "  (warm-up)" } else { "" }
                );
            }
            if now >= measure_from {
                series.push(s);
            }
            storm.second(&shared.storm);
            next += Duration::from_secs(1);
        }
        if done {
            break;
        }
        std::thread::sleep(
            Duration::from_millis(20).min(next.saturating_duration_since(Instant::now())),
        );
    }
    let mut totals = Totals::default();
    for h in handles {
        match h.join() {
            Ok(t) => totals.merge(&t),
            Err(_) => anyhow::bail!("a load thread panicked"),
        }
    }
    if let Some(why) = shared
        .fatal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        anyhow::bail!("{why}");
    }
    let measured = Instant::now()
        .min(measure_until)
        .saturating_duration_since(measure_from)
        .max(Duration::from_millis(1));
    let mut summary = Summary::new(&args, threads, measured, &totals, series);
    if args.scenario == Scenario::Storm {
        summary.storm = Some(storm.report(&args, &shared.storm));
    }
    summary.print();
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)?;
    }
    if let Some(p) = &args.hgrm {
        std::fs::write(p, report::hgrm(&totals.latency))?;
    }
    if let Some(p) = &args.plot {
        report::plot(p, &summary)?;
    }
    let mut failed = Vec::new();
    if let Some(max) = args.max_error_rate {
        let attempts = summary.ok + summary.error_total;
        let rate = summary.error_total as f64 / attempts.max(1) as f64;
        if rate > max {
            failed.push(format!("error rate {rate:.4} > --max-error-rate {max}"));
        }
    }
    if let Some(max) = args.max_p99 {
        let p99 = Duration::from_micros(summary.latency_us.p99);
        if p99 > max {
            failed.push(format!("p99 {p99:?} > --max-p99 {max:?}"));
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in failed {
            eprintln!("ixn-loadgen: threshold missed: {f}");
        }
        Ok(ExitCode::from(1))
    }
}
