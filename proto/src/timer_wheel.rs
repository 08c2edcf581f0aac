//! Hashed timer wheel (Varghese & Lauck, scheme 6) holding every per-connection deadline of one worker.
//!
//! Pure: time is always an argument, so the wheel is tested against a reference model.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use slab::Slab;

const NIL: u32 = u32::MAX;

/// Identifies one armed timer; stale keys (fired or cancelled) are recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    /// Absolute tick at which the entry fires: the first tick boundary at or after its deadline.
    tick: u64,
    generation: u32,
    prev: u32,
    next: u32,
}

/// A hashed timer wheel.
///
/// # Layout
///
/// Time is cut into ticks of `tick` since `origin`. A deadline `d` belongs to tick
/// `ceil((d - origin) / tick)`, the first tick boundary at or after it, and is kept in slot
/// `tick mod slots` (slots is a power of two). Each slot is the head of an intrusive doubly
/// linked list threaded through one [`Slab`] of entries, so an entry is one slab slot (value,
/// absolute tick, generation, two u32 links) and a slot is one u32: 4096 slots cost 16 KiB.
/// Deadlines further away than one revolution (`slots × tick`, 409.6 s with the defaults)
/// share a slot with nearer ones and are skipped, by comparing their absolute tick, until
/// their own revolution comes round.
///
/// # Costs
///
/// * `insert`: O(1), one slab insert and a list push.
/// * `cancel`: O(1), an unlink and a slab remove; a stale key costs one comparison.
/// * `advance`: O(elapsed ticks + entries in the visited slots). With every deadline within
///   one revolution (the server's timeouts are seconds, the revolution minutes) that is
///   O(expired), which is what lets a worker drop 10,000 silent connections in one tick.
///   When more than a revolution has elapsed every slot is visited once, never more.
///
/// # Guarantee
///
/// An entry is returned by the first `advance(now)` with `now` at or past its deadline's
/// tick boundary: never before its deadline, and no later than one tick after it when
/// `advance` is called at every tick boundary.
#[derive(Debug)]
pub struct TimerWheel<T> {
    ticks: Ticks,
    /// Every tick below this one has been processed.
    next_tick: u64,
    slots: Box<[u32]>,
    mask: u64,
    entries: Slab<Entry<T>>,
    generation: u32,
}

impl<T> TimerWheel<T> {
    /// A wheel starting at `origin` with `slots` (rounded up to a power of two) of `tick` each.
    pub fn new(origin: Instant, tick: Duration, slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        Self {
            ticks: Ticks::new(origin, tick),
            next_tick: 0,
            slots: vec![NIL; slots].into_boxed_slice(),
            mask: slots as u64 - 1,
            entries: Slab::new(),
            generation: 0,
        }
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Arms a timer for `deadline`; a deadline already passed fires at the next `advance`.
    pub fn insert(&mut self, deadline: Instant, value: T) -> TimerKey {
        let tick = self.ticks.ceil(deadline).max(self.next_tick);
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let slot = (tick & self.mask) as usize;
        let head = self.slots[slot];
        let index = self.entries.insert(Entry {
            value,
            tick,
            generation,
            prev: NIL,
            next: head,
        }) as u32;
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.slots[slot] = index;
        TimerKey { index, generation }
    }

    fn unlink(&mut self, index: u32) -> Entry<T> {
        let e = self.entries.remove(index as usize);
        if e.prev == NIL {
            self.slots[(e.tick & self.mask) as usize] = e.next;
        } else {
            self.entries[e.prev as usize].next = e.next;
        }
        if e.next != NIL {
            self.entries[e.next as usize].prev = e.prev;
        }
        e
    }

    /// Disarms a timer, returning its value; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        match self.entries.get(key.index as usize) {
            Some(e) if e.generation == key.generation => Some(self.unlink(key.index).value),
            _ => None,
        }
    }

    /// Processes every tick boundary up to `now`, handing each expired value to `expired`.
    /// Returns how many expired.
    pub fn advance(&mut self, now: Instant, mut expired: impl FnMut(T)) -> usize {
        let target = self.ticks.floor(now);
        if target < self.next_tick {
            return 0;
        }
        let span = (target - self.next_tick + 1).min(self.slots.len() as u64);
        let mut n = 0;
        for t in self.next_tick..self.next_tick + span {
            let mut i = self.slots[(t & self.mask) as usize];
            while i != NIL {
                let e = &self.entries[i as usize];
                let next = e.next;
                if e.tick <= target {
                    expired(self.unlink(i).value);
                    n += 1;
                }
                i = next;
            }
        }
        self.next_tick = target + 1;
        n
    }
}

/// Time cut into ticks since an origin: the arithmetic both wheels share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticks {
    origin: Instant,
    tick_nanos: u64,
    /// ⌊2^64 / tick_nanos⌋: turns the division by the tick on every insert into a
    /// multiplication (plus one correction step), the one costly instruction of an insert.
    tick_recip: u64,
}

impl Ticks {
    /// Ticks of `tick` (at least 1 ms) from `origin`.
    pub(crate) fn new(origin: Instant, tick: Duration) -> Self {
        let tick = tick.max(Duration::from_millis(1));
        Self {
            origin,
            // Ticks of more than 584 years do not occur; u64 keeps the hot path off u128 division.
            tick_nanos: u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX),
            tick_recip: u64::try_from((1u128 << 64) / tick.as_nanos().max(2)).unwrap_or(u64::MAX),
        }
    }

    fn elapsed_nanos(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    /// ⌊nanos / tick⌋ without a division: the reciprocal estimate is at most one short.
    #[inline]
    fn nanos_floor(&self, nanos: u64) -> u64 {
        let q = ((u128::from(nanos) * u128::from(self.tick_recip)) >> 64) as u64;
        if (q + 1).saturating_mul(self.tick_nanos) <= nanos {
            q + 1
        } else {
            q
        }
    }

    /// The instant of tick boundary `tick`.
    pub(crate) fn instant(&self, tick: u64) -> Instant {
        self.origin + Duration::from_nanos(tick.saturating_mul(self.tick_nanos))
    }

    /// The last tick boundary at or before `t`.
    #[inline]
    pub(crate) fn floor(&self, t: Instant) -> u64 {
        self.nanos_floor(self.elapsed_nanos(t))
    }

    /// The first tick boundary at or after `t`.
    #[inline]
    pub(crate) fn ceil(&self, t: Instant) -> u64 {
        let nanos = self.elapsed_nanos(t);
        let floor = self.nanos_floor(nanos);
        floor + u64::from(floor.saturating_mul(self.tick_nanos) < nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn fires_at_first_boundary_at_or_after_deadline() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, TICK, 8);
        w.insert(t0 + Duration::from_millis(250), "a");
        w.insert(t0 + Duration::from_millis(300), "b");
        let mut got = Vec::new();
        w.advance(t0 + Duration::from_millis(299), |v| got.push(v));
        assert!(got.is_empty(), "boundary 200 is before both deadlines");
        w.advance(t0 + Duration::from_millis(300), |v| got.push(v));
        got.sort();
        assert_eq!(got, vec!["a", "b"]);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_and_stale_keys() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, TICK, 8);
        let a = w.insert(t0 + TICK, 1);
        let b = w.insert(t0 + TICK, 2);
        assert_eq!(w.cancel(a), Some(1));
        assert_eq!(w.cancel(a), None, "double cancel");
        // Slot reuse: a new entry takes a's slab index, a's key must not reach it.
        let c = w.insert(t0 + TICK * 2, 3);
        assert_eq!(c.index, a.index);
        assert_eq!(w.cancel(a), None, "stale key after reuse");
        let mut got = Vec::new();
        w.advance(t0 + TICK * 2, |v| got.push(v));
        got.sort();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(w.cancel(b), None, "fired");
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, TICK, 4);
        w.insert(t0 + TICK * 9, "far");
        w.insert(t0 + TICK, "near");
        let mut got = Vec::new();
        for k in 1..=8 {
            w.advance(t0 + TICK * k, |v| got.push(v));
        }
        assert_eq!(got, vec!["near"]);
        w.advance(t0 + TICK * 9, |v| got.push(v));
        assert_eq!(got, vec!["near", "far"]);
    }

    #[test]
    fn long_gap_visits_each_slot_once_and_past_deadlines_fire_next() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, TICK, 4);
        for k in 0..20 {
            w.insert(t0 + TICK * k, k);
        }
        let mut got = Vec::new();
        assert_eq!(w.advance(t0 + TICK * 100, |v| got.push(v)), 20);
        // Inserting a deadline in the past lands on the next unprocessed tick.
        w.insert(t0, 99);
        assert_eq!(w.advance(t0 + TICK * 100, |v| got.push(v)), 0);
        assert_eq!(w.advance(t0 + TICK * 101, |v| got.push(v)), 1);
    }

    #[test]
    fn ten_thousand_in_one_tick() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, TICK, 4096);
        for i in 0..10_000u32 {
            w.insert(
                t0 + Duration::from_millis(5000) - Duration::from_micros(u64::from(i)),
                i,
            );
        }
        let mut n = 0;
        assert_eq!(w.advance(t0 + Duration::from_millis(4999), |_| n += 1), 0);
        assert_eq!(
            w.advance(t0 + Duration::from_millis(5000), |_| n += 1),
            10_000
        );
        assert_eq!(n, 10_000);
    }

    proptest! {
        #[test]
        // Ticks from the wheel's minimum (it clamps anything shorter to 1 ms): a tick below
        // it made this test fail about once in 40 runs, comparing against the unclamped tick.
        fn reciprocal_division_is_exact(nanos in any::<u64>(), tick in 1_000_000u64..10_000_000_000) {
            let t = Ticks::new(Instant::now(), Duration::from_nanos(tick));
            prop_assert_eq!(t.nanos_floor(nanos), nanos / tick);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Cancel(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..5_000).prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Cancel),
            3 => (0u64..700).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// The wheel agrees with a BTreeMap model: same values expire at the same advance,
        /// none before its deadline, none later than the first boundary at or after it.
        #[test]
        fn matches_reference_model(ops in prop::collection::vec(op(), 1..300), slots in 1usize..64) {
            let t0 = Instant::now();
            let mut w = TimerWheel::new(t0, TICK, slots);
            // model: id -> deadline (ms since t0)
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            let mut keys: Vec<(u32, TimerKey)> = Vec::new();
            let mut now_ms = 0u64;
            let mut processed_to = 0u64; // ms of the last processed boundary + 100
            let mut next_id = 0u32;
            for op in ops {
                match op {
                    Op::Insert(offset) => {
                        let deadline = now_ms + offset;
                        let id = next_id;
                        next_id += 1;
                        keys.push((id, w.insert(t0 + Duration::from_millis(deadline), id)));
                        model.insert(id, deadline);
                    }
                    Op::Cancel(i) if !keys.is_empty() => {
                        let (id, key) = keys[i % keys.len()];
                        prop_assert_eq!(w.cancel(key), model.remove(&id).map(|_| id));
                    }
                    Op::Cancel(_) => {}
                    Op::Advance(dt) => {
                        now_ms += dt;
                        let mut got = Vec::new();
                        w.advance(t0 + Duration::from_millis(now_ms), |v| got.push(v));
                        got.sort_unstable();
                        let boundary = now_ms / 100 * 100;
                        let want: Vec<u32> = model
                            .iter()
                            .filter(|(_, &d)| d.max(processed_to).div_ceil(100) * 100 <= boundary)
                            .map(|(&id, _)| id)
                            .collect();
                        for id in &want {
                            let d = model.remove(id).unwrap();
                            prop_assert!(d <= now_ms, "fired early");
                        }
                        prop_assert_eq!(got, want);
                        processed_to = boundary + 100;
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
