//! Results: the summary table, the JSON document, the .hgrm export and the SVG plot.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::cli::{Args, Scenario};
use crate::stats::{DropClasses, Percentiles, Totals};

/// One second of the run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: f64,
    pub ok: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// `--tls`: p99 of the handshakes finished in this second (0 without TLS).
    pub handshake_p99_us: u64,
}

/// Per-phase latencies.
#[derive(Debug, serde::Serialize)]
pub struct Phases {
    /// Intended start → connected.
    pub connect: Percentiles,
    /// Request written → answer read.
    pub register: Percentiles,
    /// `--tls`: connect(2) → TLS handshake done; `null` without TLS.
    pub tls_handshake: Option<Percentiles>,
}

/// Deadline checks of the silent and invalid scenarios.
#[derive(Debug, serde::Serialize)]
pub struct Deadline {
    /// The deadline checked against, in ms.
    pub deadline_ms: u64,
    /// Tick + slack after it still counts as "within".
    pub window_ms: u64,
    /// When the server dropped each connection, in µs from connect (silent) or from the
    /// first EventError (invalid).
    pub drop_us: Percentiles,
    #[serde(flatten)]
    pub classes: DropClasses,
}

/// The JSON document (`--json`); its schema is in docs/LOADGEN.md.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub mode: &'static str,
    pub threads: usize,
    pub concurrency: Option<usize>,
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    pub ok: u64,
    /// Successful instances by kind: churn, hold, silent, invalid.
    pub ok_by_kind: BTreeMap<&'static str, u64>,
    /// Successful invalid instances by case.
    pub invalid_cases: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub error_total: u64,
    /// Successful scenario instances per second.
    pub rate: f64,
    /// Intended start → the answer that completes the instance (EventAck; for invalid
    /// clients their last EventError). Silent connections have no answer: see `silent`.
    pub latency_us: Percentiles,
    pub phases: Phases,
    pub silent: Option<Deadline>,
    pub invalid: Option<Deadline>,
    /// lapse: when the server sent EventError 19, from the last frame written, against
    /// 1.5 × the keepalive; `null` for the other scenarios.
    pub lapse: Option<Deadline>,
    /// hold with --keepalive: RequestKeepAlive written → its EventAck; `null` otherwise.
    pub keepalive_rtt_us: Option<Percentiles>,
    /// The storm scenario's outcome; `null` for the others.
    pub storm: Option<StormReport>,
    pub series: Vec<Second>,
}

/// What a reconnection storm did (scenario `storm`).
#[derive(Debug, serde::Serialize)]
pub struct StormReport {
    /// Clients asked for (`--connections`).
    pub clients: usize,
    /// Clients that registered on the first target before the drain.
    pub registered_initially: u64,
    /// Seconds from the start to the first drop (the drain reaching the clients).
    pub drained_at_s: Option<f64>,
    /// Seconds from the first drop until every dropped client was registered again;
    /// `null` if the run ended first.
    pub all_back_after_s: Option<f64>,
    /// Clients registered again after their drop.
    pub reregistered: u64,
    /// Connection attempts after drops, failed ones included.
    pub attempts: u64,
    /// Most reconnection attempts in one second: the rate the targets absorbed.
    pub peak_attempts_per_s: u64,
    /// Most re-registrations in one second.
    pub peak_registrations_per_s: u64,
}

/// The storm's per-second peaks, and the SIGTERM of `--drain-pid`, kept by the main loop.
#[derive(Debug, Default)]
pub struct StormPeaks {
    signalled: bool,
    last_attempts: u64,
    last_back: u64,
    peak_attempts: u64,
    peak_back: u64,
}

impl StormPeaks {
    /// Sends `--drain-pid` its SIGTERM once every client is registered; whether every
    /// dropped client is back (the storm is over).
    pub fn watch(&mut self, args: &Args, s: &crate::stats::Storm) -> anyhow::Result<bool> {
        use std::sync::atomic::Ordering;
        let registered = s.registered.load(Ordering::Acquire);
        if let Some(pid) = args.drain_pid {
            if !self.signalled && registered >= args.connections as u64 {
                // SAFETY: kill(2) with a pid and a signal number has no memory effects.
                if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                    anyhow::bail!("--drain-pid {pid}: {}", std::io::Error::last_os_error());
                }
                self.signalled = true;
            }
        }
        Ok(s.all_back_ns.load(Ordering::Acquire) != 0)
    }

    /// One second passed: the attempts and re-registrations in it.
    pub fn second(&mut self, s: &crate::stats::Storm) {
        use std::sync::atomic::Ordering;
        let attempts = s.attempts.load(Ordering::Acquire);
        let back = s.reregistered.load(Ordering::Acquire);
        self.peak_attempts = self.peak_attempts.max(attempts - self.last_attempts);
        self.peak_back = self.peak_back.max(back - self.last_back);
        (self.last_attempts, self.last_back) = (attempts, back);
    }

    /// The report, at the end of the run.
    pub fn report(&mut self, args: &Args, s: &crate::stats::Storm) -> StormReport {
        use std::sync::atomic::Ordering;
        self.second(s);
        let drained = s.drained_ns.load(Ordering::Acquire);
        let back = s.all_back_ns.load(Ordering::Acquire);
        StormReport {
            clients: args.connections,
            registered_initially: s.registered_initially.load(Ordering::Acquire),
            drained_at_s: crate::stats::Storm::secs(drained),
            all_back_after_s: (drained != 0 && back != 0)
                .then(|| back.saturating_sub(drained) as f64 / 1e9),
            reregistered: s.reregistered.load(Ordering::Acquire),
            attempts: s.attempts.load(Ordering::Acquire),
            peak_attempts_per_s: self.peak_attempts,
            peak_registrations_per_s: self.peak_back,
        }
    }
}

impl Summary {
    pub fn new(
        args: &Args,
        threads: usize,
        measured: Duration,
        t: &Totals,
        series: Vec<Second>,
    ) -> Self {
        let secs = measured.as_secs_f64();
        let window_ms = (args.timer_tick + args.slack).as_millis() as u64;
        let has = |s: Scenario| args.scenario == s || args.scenario == Scenario::Mix;
        Self {
            scenario: args.scenario,
            mode: if args.rate.is_some() || args.stages.is_some() {
                "open"
            } else {
                "closed"
            },
            threads,
            concurrency: (args.rate.is_none() && args.stages.is_none()).then_some(args.concurrency),
            target_rate: args
                .rate
                .or(args.stages.as_ref().map(crate::cli::Stages::peak)),
            duration_s: secs,
            ok: t.ok,
            ok_by_kind: t.ok_by_kind.clone(),
            invalid_cases: t.invalid_cases.clone(),
            errors: t.errors.clone(),
            error_total: t.error_total(),
            rate: t.ok as f64 / secs,
            latency_us: Percentiles::of(&t.latency),
            phases: Phases {
                connect: Percentiles::of(&t.connect),
                register: Percentiles::of(&t.register),
                tls_handshake: args.tls.then(|| Percentiles::of(&t.handshake)),
            },
            silent: has(Scenario::Silent).then(|| Deadline {
                deadline_ms: args.registration_timeout.0.as_millis() as u64,
                window_ms,
                drop_us: Percentiles::of(&t.dropped),
                classes: t.drops,
            }),
            invalid: has(Scenario::Invalid).then(|| Deadline {
                deadline_ms: args.error_disconnect_timeout.0.as_millis() as u64,
                window_ms,
                drop_us: Percentiles::of(&t.error_close),
                classes: t.error_drops,
            }),
            lapse: (args.scenario == Scenario::Lapse).then(|| Deadline {
                deadline_ms: args.keepalive.map_or(0, |k| (k * 3 / 2).as_millis() as u64),
                window_ms,
                drop_us: Percentiles::of(&t.lapsed),
                classes: t.lapse_drops,
            }),
            keepalive_rtt_us: (args.scenario == Scenario::Hold && args.keepalive.is_some())
                .then(|| Percentiles::of(&t.keepalive)),
            storm: None,
            series,
        }
    }

    pub fn print(&self) {
        println!();
        println!(
            "scenario {:?} ({} loop), {} thread(s), {:.1} s measured",
            self.scenario, self.mode, self.threads, self.duration_s
        );
        println!(
            "  ok {}  errors {}  rate {:.0}/s",
            self.ok, self.error_total, self.rate
        );
        if self.ok_by_kind.len() > 1 {
            for (k, v) in &self.ok_by_kind {
                println!("    ok {k:<25} {v}");
            }
        }
        for (k, v) in &self.invalid_cases {
            println!("    invalid {k:<20} {v}");
        }
        for (k, v) in &self.errors {
            println!("    error {k:<22} {v}");
        }
        println!();
        println!(
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "latency", "p50", "p90", "p99", "p99.9", "max", "count"
        );
        let row = |name: &str, p: &Percentiles| {
            if p.count > 0 {
                println!(
                    "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                    name,
                    fmt_us(p.p50),
                    fmt_us(p.p90),
                    fmt_us(p.p99),
                    fmt_us(p.p999),
                    fmt_us(p.max),
                    p.count
                );
            }
        };
        if let Some(h) = &self.phases.tls_handshake {
            row("tls handshake", h);
        }
        row("connect", &self.phases.connect);
        row("register -> ack", &self.phases.register);
        row("total", &self.latency_us);
        if let Some(k) = &self.keepalive_rtt_us {
            row("keepalive -> ack", k);
        }
        for (name, d) in [
            ("silent drop", &self.silent),
            ("error close", &self.invalid),
            ("keepalive lapse", &self.lapse),
        ] {
            if let Some(d) = d {
                row(name, &d.drop_us);
                println!(
                    "  {name}: deadline {} ms, window +{} ms: before {}, within {}, after {}",
                    d.deadline_ms, d.window_ms, d.classes.before, d.classes.within, d.classes.after
                );
            }
        }
        if let Some(s) = &self.storm {
            let secs = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.2} s"));
            println!(
                "  storm: {} of {} clients registered, first drop at {}, all back after {}",
                s.registered_initially,
                s.clients,
                secs(s.drained_at_s),
                secs(s.all_back_after_s)
            );
            println!(
                "  storm: {} re-registrations in {} attempts; peak {} attempts/s, {} registrations/s (latency above: drop to registered again)",
                s.reregistered, s.attempts, s.peak_attempts_per_s, s.peak_registrations_per_s
            );
        }
    }
}

/// `1.23ms`-style.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

/// HdrHistogram percentile distribution text (the `.hgrm` format), values in ms.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if h.is_empty() {
        return out;
    }
    for v in h.iter_quantiles(1) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:12.3} {:14.12} {:10} {}\n",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inv
        ));
    }
    out.push_str(&format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    out
}

/// Throughput and latency percentiles over time.
pub fn plot(path: &Path, s: &Summary) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let t_max = s.series.last().map_or(1.0, |x| x.t).max(1.0);
    let ok_max = s
        .series
        .iter()
        .map(|x| x.ok.max(x.errors))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut c = ChartBuilder::on(&top)
        .caption(
            format!("ixn-loadgen {:?}: completions per second", s.scenario),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..ok_max * 1.1)?;
    c.configure_mesh().x_desc("s").y_desc("per second").draw()?;
    c.draw_series(LineSeries::new(
        s.series.iter().map(|x| (x.t, x.ok as f64)),
        &BLUE,
    ))?
    .label("ok/s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    c.draw_series(LineSeries::new(
        s.series.iter().map(|x| (x.t, x.errors as f64)),
        &RED,
    ))?
    .label("errors/s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    c.configure_series_labels().border_style(BLACK).draw()?;
    let lat_max = s.series.iter().map(|x| x.p99_us).max().unwrap_or(1).max(1) as f64 / 1000.0;
    let mut c = ChartBuilder::on(&bottom)
        .caption("latency percentiles", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..lat_max * 1.1)?;
    c.configure_mesh().x_desc("s").y_desc("ms").draw()?;
    c.draw_series(LineSeries::new(
        s.series.iter().map(|x| (x.t, x.p50_us as f64 / 1000.0)),
        &GREEN,
    ))?
    .label("p50")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
    c.draw_series(LineSeries::new(
        s.series.iter().map(|x| (x.t, x.p99_us as f64 / 1000.0)),
        &MAGENTA,
    ))?
    .label("p99")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], MAGENTA));
    if s.phases.tls_handshake.is_some() {
        c.draw_series(LineSeries::new(
            s.series
                .iter()
                .map(|x| (x.t, x.handshake_p99_us as f64 / 1000.0)),
            &CYAN,
        ))?
        .label("TLS handshake p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], CYAN));
    }
    c.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
