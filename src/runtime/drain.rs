//! One worker's drain: at once, or as a lame duck spread over `--lame-duck-duration`.

use std::time::{Duration, Instant};

use crate::config::Config;

/// One worker's drain (docs/PROTOCOL.md §8): at once, or as a lame duck — after
/// `--lame-duck-grace`, its registered connections get EventError 11 spread evenly over
/// `--lame-duck-duration`, a slice each timer tick (no timer or task per client). A second
/// SIGTERM (`Shared::hurry`) sends the rest at once.
#[derive(Debug)]
pub(super) struct Drain<H> {
    /// When the spread begins (the grace is over).
    begins: Instant,
    duration: Duration,
    /// Registered connections not yet sent EventError 11, oldest first; `None` until the
    /// spread begins.
    queue: Option<std::collections::VecDeque<H>>,
    total: usize,
    /// When the last one was sent.
    pub finished: Option<Instant>,
}

impl<H> Drain<H> {
    /// A drain that starts at `now`.
    pub fn new(now: Instant, config: &Config) -> Self {
        Self {
            begins: now + config.lame_duck_grace,
            duration: config.lame_duck_duration,
            queue: None,
            total: 0,
            finished: None,
        }
    }

    /// Whether the spread should begin now: the engine then closes its unregistered
    /// connections and hands the registered ones to [`Drain::begin`].
    pub fn ready(&self, now: Instant, hurry: bool) -> bool {
        self.queue.is_none() && (hurry || now >= self.begins)
    }

    /// The spread begins with these registered connections.
    pub fn begin(&mut self, registered: Vec<H>) {
        self.total = registered.len();
        self.queue = Some(registered.into());
    }

    /// The connections due now: as many as keep the spread even (all when `hurry` or the
    /// duration is 0).
    pub fn due(&mut self, now: Instant, hurry: bool) -> Vec<H> {
        let Some(q) = self.queue.as_mut() else {
            return Vec::new();
        };
        let sent = self.total - q.len();
        let target = if hurry || self.duration.is_zero() {
            self.total
        } else {
            let f = now.saturating_duration_since(self.begins).as_secs_f64()
                / self.duration.as_secs_f64();
            ((self.total as f64 * f.min(1.0)).ceil() as usize).min(self.total)
        };
        let n = target.saturating_sub(sent).min(q.len());
        let out: Vec<H> = q.drain(..n).collect();
        if q.is_empty() && self.finished.is_none() {
            self.finished = Some(now);
        }
        out
    }

    /// Whether the worker may stop: every one sent EventError 11 and either all are gone
    /// or `drain_timeout` has passed since.
    pub fn done(&self, now: Instant, empty: bool, drain_timeout: Duration) -> bool {
        self.finished
            .is_some_and(|t| empty || now.saturating_duration_since(t) >= drain_timeout)
    }
}
