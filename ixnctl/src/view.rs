//! What `ixnctl` shows, kept apart from the terminal: tables sized to a width, and a
//! server's metrics read from `/metrics` into totals, per-second rates between two scrapes
//! and registration-time quantiles from the histogram's buckets.

use std::collections::BTreeMap;
use std::time::Instant;

/// A table of `headers` and `rows`, each column as wide as its widest cell, shrunk (the
/// widest first, cut with `…`) until a line fits in `width`.
pub fn table(headers: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let cols = headers.len();
    let len = |s: &str| s.chars().count();
    let mut w: Vec<usize> = headers.iter().map(|h| len(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(len(c));
        }
    }
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
    while total(&w) > width {
        let Some((i, widest)) = w.iter().copied().enumerate().max_by_key(|(_, x)| *x) else {
            break;
        };
        if widest <= 4 {
            break;
        }
        w[i] = widest - 1;
    }
    let cell = |s: &str, w: usize| {
        if len(s) <= w {
            format!("{s:<w$}")
        } else {
            let cut: String = s.chars().take(w.saturating_sub(1)).collect();
            format!("{cut}…")
        }
    };
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(&w).map(|(c, w)| cell(c, *w)).collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// The terminal's width; no limit when the output is not a terminal (a pipe, a file), so
/// that scripts get every cell whole.
pub fn terminal_width() -> usize {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return usize::MAX;
    }
    ratatui::crossterm::terminal::size()
        .map(|(w, _)| w as usize)
        .ok()
        .filter(|w| *w > 0)
        .unwrap_or(120)
}

/// One scrape of `/metrics`.
pub struct Snapshot {
    pub at: Instant,
    samples: Vec<prometheus_parse::Sample>,
}

impl Snapshot {
    /// Parses the Prometheus text format.
    pub fn parse(text: &str, at: Instant) -> std::io::Result<Self> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Ok(Self {
            at,
            samples: prometheus_parse::Scrape::parse(lines)?.samples,
        })
    }

    fn scalar(v: &prometheus_parse::Value) -> Option<f64> {
        use prometheus_parse::Value::*;
        match v {
            Counter(x) | Gauge(x) | Untyped(x) => Some(*x),
            _ => None,
        }
    }

    /// The sum of `metric`'s series (0 if it has none).
    pub fn sum(&self, metric: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter_map(|s| Self::scalar(&s.value))
            .sum()
    }

    /// `metric`'s series summed by the value of `label`.
    pub fn by(&self, metric: &str, label: &str) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.metric == metric) {
            if let (Some(v), Some(l)) = (Self::scalar(&s.value), s.labels.get(label)) {
                *m.entry(l.to_string()).or_insert(0.0) += v;
            }
        }
        m
    }

    /// The value of `label` on `metric`'s first series (an `_info` metric's).
    pub fn label(&self, metric: &str, label: &str) -> Option<String> {
        self.samples
            .iter()
            .find(|s| s.metric == metric)
            .and_then(|s| s.labels.get(label).map(str::to_string))
    }

    /// Whether the server exports `metric` at all.
    pub fn has(&self, metric: &str) -> bool {
        self.samples.iter().any(|s| s.metric == metric)
    }

    /// `metric`'s cumulative buckets `(le, count)`, summed over its series.
    pub fn buckets(&self, metric: &str) -> Vec<(f64, f64)> {
        let mut m: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.metric == metric) {
            if let prometheus_parse::Value::Histogram(hs) = &s.value {
                for h in hs {
                    let e = m.entry(h.less_than.to_bits()).or_insert((h.less_than, 0.0));
                    e.1 += h.count;
                }
            }
        }
        let mut v: Vec<(f64, f64)> = m.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// The `q` quantile of the observations between two scrapes of a histogram's buckets,
/// interpolated within its bucket (as PromQL's `histogram_quantile`); `None` without any.
pub fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let prev = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, (c - prev).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, c) in &delta {
        if *c >= rank {
            if le.is_infinite() {
                // Beyond the last finite bound: that bound is the best there is.
                return Some(lower.0);
            }
            let span = c - lower.1;
            let within = if span > 0.0 {
                (rank - lower.1) / span
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (*le, *c);
    }
    Some(lower.0)
}

/// A line of `top`'s table: one series, its rate and its total.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What it counts: `refused`, `errors`, `closed`, `tls`, `registrations`.
    pub section: &'static str,
    /// The series within it (a reason, a code and name, a result).
    pub key: String,
    /// Per second between the two scrapes.
    pub rate: f64,
    /// Since the server started.
    pub total: f64,
}

/// The sections `top` shows, in order; its `f` key narrows to each in turn.
pub const SECTIONS: [&str; 5] = ["registrations", "refused", "errors", "closed", "tls"];

/// `top`'s rows from two scrapes.
pub fn rows(before: &Snapshot, after: &Snapshot) -> Vec<Row> {
    let dt = after
        .at
        .saturating_duration_since(before.at)
        .as_secs_f64()
        .max(1e-3);
    let mut out = Vec::new();
    let mut add = |section, metric: &str, label: &str| {
        let prev = before.by(metric, label);
        for (key, total) in after.by(metric, label) {
            let rate = (total - prev.get(&key).copied().unwrap_or(0.0)).max(0.0) / dt;
            out.push(Row {
                section,
                key,
                rate,
                total,
            });
        }
    };
    add("registrations", "ixn_registrations_total", "result");
    add("refused", "ixn_connections_refused_total", "reason");
    add("errors", "ixn_errors_sent_total", "name");
    add("closed", "ixn_connections_closed_total", "reason");
    add("tls", "ixn_tls_handshakes_total", "result");
    out
}

/// A rate for people: `1234/s`, `12.3/s`, `0/s`.
pub fn per_second(r: f64) -> String {
    if r >= 100.0 || r == 0.0 {
        format!("{r:.0}/s")
    } else {
        format!("{r:.1}/s")
    }
}

/// Seconds for people: `850µs`, `12.3ms`, `1.20s`.
pub fn seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_the_width_and_cut_the_widest_column() {
        let rows = vec![
            vec![
                "1".to_string(),
                "a-very-long-client-name-indeed".to_string(),
            ],
            vec!["22".to_string(), "short".to_string()],
        ];
        let wide = table(&["ID", "NAME"], &rows, 100);
        assert_eq!(wide.lines().next(), Some("ID  NAME"));
        assert!(wide.contains("a-very-long-client-name-indeed"));
        let narrow = table(&["ID", "NAME"], &rows, 16);
        assert!(narrow.lines().all(|l| l.chars().count() <= 16), "{narrow}");
        assert!(narrow.contains('…'), "{narrow}");
    }

    const TEXT: &str = "\
# TYPE ixn_registrations_total counter
ixn_registrations_total{result=\"ok\"} 100
ixn_registrations_total{result=\"error\"} 4
# TYPE ixn_engine_info gauge
ixn_engine_info{engine=\"io_uring_v2\"} 1
# TYPE ixn_registration_duration_seconds histogram
ixn_registration_duration_seconds_bucket{le=\"0.001\"} 50
ixn_registration_duration_seconds_bucket{le=\"0.01\"} 100
ixn_registration_duration_seconds_bucket{le=\"+Inf\"} 100
ixn_registration_duration_seconds_sum 0.2
ixn_registration_duration_seconds_count 100
";

    #[test]
    fn metrics_are_summed_grouped_and_labelled() {
        let s = Snapshot::parse(TEXT, Instant::now()).unwrap();
        assert_eq!(s.sum("ixn_registrations_total"), 104.0);
        assert_eq!(s.by("ixn_registrations_total", "result")["ok"], 100.0);
        assert_eq!(
            s.label("ixn_engine_info", "engine").as_deref(),
            Some("io_uring_v2")
        );
        assert_eq!(
            s.buckets("ixn_registration_duration_seconds"),
            vec![(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)]
        );
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_of_the_interval() {
        let before = [(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        // 100 more: 20 under 1 ms, 80 between 1 and 10 ms.
        let after = [(0.001, 70.0), (0.01, 200.0), (f64::INFINITY, 200.0)];
        let p50 = quantile(0.5, &before, &after).unwrap();
        // Rank 50 of 100: 30 into the 80 of the second bucket.
        assert!((p50 - (0.001 + 0.009 * 30.0 / 80.0)).abs() < 1e-12, "{p50}");
        let p10 = quantile(0.1, &before, &after).unwrap();
        assert!((p10 - 0.0005).abs() < 1e-12, "{p10}");
        assert_eq!(quantile(0.5, &after, &after), None, "nothing observed");
    }

    #[test]
    fn rates_are_per_second_between_scrapes() {
        let t0 = Instant::now();
        let a = Snapshot::parse(TEXT, t0).unwrap();
        let more = TEXT.replace("{result=\"ok\"} 100", "{result=\"ok\"} 300");
        let b = Snapshot::parse(&more, t0 + std::time::Duration::from_secs(2)).unwrap();
        let r = rows(&a, &b);
        let ok = r.iter().find(|r| r.key == "ok").unwrap();
        assert_eq!(
            (ok.section, ok.rate, ok.total),
            ("registrations", 100.0, 300.0)
        );
        let err = r.iter().find(|r| r.key == "error").unwrap();
        assert_eq!(err.rate, 0.0);
    }
}
