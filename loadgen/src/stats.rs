//! Counting and timing: per-thread HdrHistograms merged at the end, and a per-second window
//! the main thread drains for the progress line and the plot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Microsecond histogram up to one hour, 3 significant digits.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `d` in microseconds, saturating at the histogram's top.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, h.high());
    let _ = h.record(us);
}

/// One second of one thread's results.
#[derive(Debug)]
pub struct Window {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    /// `--tls`: connect → handshake done.
    pub handshake: Histogram<u64>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            ok: 0,
            errors: 0,
            latency: hist(),
            handshake: hist(),
        }
    }
}

/// What every thread and the main thread share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set when the run must end (time, count, fatal error, all threads done).
    pub stop: AtomicBool,
    /// Connections started in the measured part of the run.
    pub started: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Connections open now.
    pub active: AtomicI64,
    /// A condition that ends the run with an error (descriptor or port exhaustion).
    pub fatal: Mutex<Option<String>>,
    /// One window per thread.
    pub windows: Vec<Mutex<Window>>,
    /// The storm scenario's progress.
    pub storm: Storm,
    /// Registrations so far, for `--client-names` (each takes the next name).
    pub names: AtomicU64,
}

/// The storm scenario's shared progress; times are nanoseconds from `origin`, 0 = not
/// yet.
#[derive(Debug)]
pub struct Storm {
    pub origin: std::time::Instant,
    /// Clients registered now.
    pub registered: AtomicU64,
    /// Clients that registered on the first target.
    pub registered_initially: AtomicU64,
    /// Connection attempts after a drop (what the reconnect targets saw).
    pub attempts: AtomicU64,
    /// Registrations after a drop.
    pub reregistered: AtomicU64,
    /// Clients dropped now and not yet registered again.
    pub away: AtomicI64,
    /// Clients dropped at least once.
    pub dropped_clients: AtomicU64,
    /// The first drop.
    pub drained_ns: AtomicU64,
    /// Every dropped client registered again.
    pub all_back_ns: AtomicU64,
}

impl Default for Storm {
    fn default() -> Self {
        Self {
            origin: std::time::Instant::now(),
            registered: AtomicU64::new(0),
            registered_initially: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            reregistered: AtomicU64::new(0),
            away: AtomicI64::new(0),
            dropped_clients: AtomicU64::new(0),
            drained_ns: AtomicU64::new(0),
            all_back_ns: AtomicU64::new(0),
        }
    }
}

impl Storm {
    fn now_ns(&self) -> u64 {
        (self.origin.elapsed().as_nanos() as u64).max(1)
    }

    /// A held client was dropped (`first`: for the first time).
    pub fn dropped(&self, first: bool) {
        self.registered.fetch_sub(1, Ordering::AcqRel);
        self.away.fetch_add(1, Ordering::AcqRel);
        if first {
            self.dropped_clients.fetch_add(1, Ordering::AcqRel);
        }
        let _ =
            self.drained_ns
                .compare_exchange(0, self.now_ns(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// A dropped client registered again. The storm is over when every client has been
    /// dropped (a lame duck spreads the drops out) and none is away any more.
    pub fn back(&self, clients: u64) {
        self.registered.fetch_add(1, Ordering::AcqRel);
        self.reregistered.fetch_add(1, Ordering::AcqRel);
        if self.away.fetch_sub(1, Ordering::AcqRel) == 1
            && self.dropped_clients.load(Ordering::Acquire) >= clients
        {
            self.all_back_ns.store(self.now_ns(), Ordering::Release);
        }
    }

    /// Seconds from `origin` of a recorded time, if it happened.
    pub fn secs(ns: u64) -> Option<f64> {
        (ns != 0).then(|| ns as f64 / 1e9)
    }
}

impl Shared {
    pub fn new(threads: usize) -> Self {
        Self {
            windows: (0..threads)
                .map(|_| Mutex::new(Window::default()))
                .collect(),
            ..Default::default()
        }
    }

    pub fn fail(&self, why: String) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        self.stop.store(true, Ordering::Release);
    }
}

/// Silent connections: when the server dropped them relative to the deadline window.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DropClasses {
    pub before: u64,
    pub within: u64,
    pub after: u64,
}

/// Everything one thread measured.
#[derive(Debug)]
pub struct Totals {
    pub ok: u64,
    /// Successful instances by scenario kind (churn, hold, silent, invalid).
    pub ok_by_kind: BTreeMap<&'static str, u64>,
    /// Successful invalid instances by case.
    pub invalid_cases: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    /// Intended start → final answer (or drop for silent).
    pub latency: Histogram<u64>,
    /// Intended start → connected (first write done).
    pub connect: Histogram<u64>,
    /// First write done → answer.
    pub register: Histogram<u64>,
    /// `--tls`: connect(2) → handshake done (the TCP handshake included).
    pub handshake: Histogram<u64>,
    /// silent: connect → the server's drop.
    pub dropped: Histogram<u64>,
    pub drops: DropClasses,
    /// invalid: first EventError → the server's close.
    pub error_close: Histogram<u64>,
    pub error_drops: DropClasses,
    /// hold with --keepalive: RequestKeepAlive written → its EventAck.
    pub keepalive: Histogram<u64>,
    /// lapse: the last frame written → the server's EventError 19.
    pub lapsed: Histogram<u64>,
    pub lapse_drops: DropClasses,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            ok: 0,
            ok_by_kind: BTreeMap::new(),
            invalid_cases: BTreeMap::new(),
            errors: BTreeMap::new(),
            latency: hist(),
            connect: hist(),
            register: hist(),
            handshake: hist(),
            dropped: hist(),
            drops: DropClasses::default(),
            error_close: hist(),
            error_drops: DropClasses::default(),
            keepalive: hist(),
            lapsed: hist(),
            lapse_drops: DropClasses::default(),
        }
    }
}

impl Totals {
    pub fn merge(&mut self, o: &Totals) {
        self.ok += o.ok;
        for (mine, theirs) in [
            (&mut self.errors, &o.errors),
            (&mut self.ok_by_kind, &o.ok_by_kind),
            (&mut self.invalid_cases, &o.invalid_cases),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        for (a, b) in [
            (&mut self.latency, &o.latency),
            (&mut self.connect, &o.connect),
            (&mut self.register, &o.register),
            (&mut self.handshake, &o.handshake),
            (&mut self.dropped, &o.dropped),
            (&mut self.error_close, &o.error_close),
            (&mut self.keepalive, &o.keepalive),
            (&mut self.lapsed, &o.lapsed),
        ] {
            let _ = a.add(b);
        }
        for (a, b) in [
            (&mut self.drops, &o.drops),
            (&mut self.error_drops, &o.error_drops),
            (&mut self.lapse_drops, &o.lapse_drops),
        ] {
            a.before += b.before;
            a.within += b.within;
            a.after += b.after;
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Drop timing relative to a deadline window `[deadline, deadline + tick + slack]`.
pub fn classify(elapsed: Duration, deadline: Duration, window: Duration, c: &mut DropClasses) {
    if elapsed < deadline {
        c.before += 1;
    } else if elapsed <= deadline + window {
        c.within += 1;
    } else {
        c.after += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_windows() {
        let mut c = DropClasses::default();
        let d = Duration::from_secs(5);
        let w = Duration::from_millis(150);
        classify(Duration::from_millis(4999), d, w, &mut c);
        classify(Duration::from_millis(5000), d, w, &mut c);
        classify(Duration::from_millis(5150), d, w, &mut c);
        classify(Duration::from_millis(5151), d, w, &mut c);
        assert_eq!((c.before, c.within, c.after), (1, 2, 1));
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Totals::default();
        let mut b = Totals {
            ok: 3,
            ..Default::default()
        };
        *b.errors.entry("x").or_default() += 2;
        record(&mut b.latency, Duration::from_micros(100));
        b.drops.within = 1;
        a.merge(&b);
        a.merge(&b);
        assert_eq!(a.ok, 6);
        assert_eq!(a.errors["x"], 4);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.drops.within, 2);
        assert_eq!(a.error_total(), 4);
    }
}
