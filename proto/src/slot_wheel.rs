//! A hashed timer wheel with one timer per index, kept beside the index (a connection's
//! slot): the deadline a worker's connections each hold at most one of.
//!
//! # Why beside the index
//!
//! [`crate::timer_wheel::TimerWheel`] keeps its entries in a slab of their own, so every
//! armed timer costs a slab entry (48 bytes with the server's value) on top of the
//! connection. A connection holds one protocol deadline at a time (docs/PROTOCOL.md §6:
//! registration, error, frame, keepalive, linger), and a registered connection with a
//! keepalive in force holds one for as long as it lives: here that deadline is a 16-byte
//! node at the connection's own index, the same whether it is armed or not, and arming,
//! re-arming and disarming never allocate.
//!
//! # Layout
//!
//! The same hashing as the slab wheel (Varghese & Lauck, scheme 6): slot `tick mod slots`
//! heads an intrusive doubly linked list, here threaded through `nodes` by index. A node
//! is its tick (the absolute tick's low 32 bits: deadlines lie within 2^31 ticks of the
//! present, 24 days at the smallest tick of 1 ms and the longest timeout of 7 days), its
//! two links and its value.
//!
//! # Costs
//!
//! `arm`, `disarm`: O(1), an unlink and a link. `advance`: O(elapsed ticks + nodes in the
//! slots visited), as for the slab wheel. Memory: 16 bytes per index up to the highest
//! index armed, armed or not.
//!
//! # Guarantee
//!
//! A timer is handed out by the first `advance(now)` with `now` at or past its deadline's
//! tick boundary: never before its deadline, and no later than one tick after it when
//! `advance` is called at every tick boundary.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::timer_wheel::Ticks;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node<V> {
    /// Low 32 bits of the absolute tick it fires at.
    tick: u32,
    prev: u32,
    next: u32,
    /// `Some` while armed.
    value: Option<V>,
}

/// One timer per index; see the module documentation.
#[derive(Debug)]
pub struct SlotWheel<V> {
    ticks: Ticks,
    /// Every tick below this one has been processed.
    next_tick: u64,
    heads: Box<[u32]>,
    mask: u64,
    nodes: Vec<Node<V>>,
    armed: usize,
}

impl<V: Copy> SlotWheel<V> {
    /// A wheel starting at `origin` with `slots` (rounded up to a power of two) of `tick`
    /// each (at least 1 ms).
    pub fn new(origin: Instant, tick: Duration, slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        Self {
            ticks: Ticks::new(origin, tick),
            next_tick: 0,
            heads: vec![NIL; slots].into_boxed_slice(),
            mask: slots as u64 - 1,
            nodes: Vec::new(),
            armed: 0,
        }
    }

    /// Timers armed.
    pub fn len(&self) -> usize {
        self.armed
    }

    /// Whether none is armed.
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    /// The value armed at `index`, if any.
    pub fn armed(&self, index: usize) -> Option<V> {
        self.nodes.get(index).and_then(|n| n.value)
    }

    /// When `index`'s timer fires, if armed: its deadline rounded up to the tick boundary
    /// it was filed under (what a live upgrade hands over, docs/OPERATIONS.md 7e).
    pub fn deadline(&self, index: usize) -> Option<Instant> {
        let n = self.nodes.get(index)?;
        n.value?;
        // The low 32 bits of the tick, within 2^31 ticks of the next one processed.
        let ahead = n.tick.wrapping_sub(self.next_tick as u32) as i32;
        let tick = if ahead >= 0 {
            self.next_tick + ahead as u64
        } else {
            self.next_tick
        };
        Some(self.ticks.instant(tick))
    }

    /// Arms `index`'s timer for `deadline` with `value`, replacing the one it had; a
    /// deadline already passed fires at the next `advance`. `index` must be below
    /// `u32::MAX`.
    pub fn arm(&mut self, index: usize, deadline: Instant, value: V) {
        self.disarm(index);
        if index >= self.nodes.len() {
            let empty = Node {
                tick: 0,
                prev: NIL,
                next: NIL,
                value: None,
            };
            self.nodes.resize(index + 1, empty);
        }
        // Within 2^31 ticks, so that the low 32 bits order it.
        let tick = self
            .ticks
            .ceil(deadline)
            .clamp(self.next_tick, self.next_tick + (i32::MAX as u64));
        let slot = (tick & self.mask) as usize;
        let head = self.heads[slot];
        self.nodes[index] = Node {
            tick: tick as u32,
            prev: NIL,
            next: head,
            value: Some(value),
        };
        if head != NIL {
            self.nodes[head as usize].prev = index as u32;
        }
        self.heads[slot] = index as u32;
        self.armed += 1;
    }

    /// Disarms `index`'s timer, returning its value; `None` if none was armed.
    pub fn disarm(&mut self, index: usize) -> Option<V> {
        let n = *self.nodes.get(index)?;
        let value = n.value?;
        if n.prev == NIL {
            self.heads[(u64::from(n.tick) & self.mask) as usize] = n.next;
        } else {
            self.nodes[n.prev as usize].next = n.next;
        }
        if n.next != NIL {
            self.nodes[n.next as usize].prev = n.prev;
        }
        self.nodes[index].value = None;
        self.armed -= 1;
        Some(value)
    }

    /// Processes every tick boundary up to `now`, handing each expired timer's index and
    /// value to `expired` (disarmed first: `expired` may not re-arm it, the caller does
    /// that afterwards). Returns how many expired.
    pub fn advance(&mut self, now: Instant, mut expired: impl FnMut(usize, V)) -> usize {
        let target = self.ticks.floor(now);
        if target < self.next_tick {
            return 0;
        }
        let span = (target - self.next_tick + 1).min(self.heads.len() as u64);
        let mut n = 0;
        for t in self.next_tick..self.next_tick + span {
            let mut i = self.heads[(t & self.mask) as usize];
            while i != NIL {
                let node = self.nodes[i as usize];
                // Due when its tick is not after the target (within 2^31 ticks of it).
                if (target as u32).wrapping_sub(node.tick) as i32 >= 0 {
                    if let Some(v) = self.disarm(i as usize) {
                        expired(i as usize, v);
                        n += 1;
                    }
                }
                i = node.next;
            }
        }
        self.next_tick = target + 1;
        n
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_deadline_reads_back_rounded_up_to_its_tick() {
        let t0 = Instant::now();
        let mut w: SlotWheel<u8> = SlotWheel::new(t0, Duration::from_millis(100), 64);
        assert_eq!(w.deadline(3), None);
        w.arm(3, t0 + Duration::from_millis(250), 1);
        assert_eq!(w.deadline(3), Some(t0 + Duration::from_millis(300)));
        // Far beyond one turn of the wheel.
        w.arm(5, t0 + Duration::from_secs(3600), 2);
        assert_eq!(w.deadline(5), Some(t0 + Duration::from_secs(3600)));
        w.advance(t0 + Duration::from_millis(300), |_, _| {});
        assert_eq!(w.deadline(3), None, "fired");
        assert_eq!(w.deadline(5), Some(t0 + Duration::from_secs(3600)));
    }

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn a_node_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Node<crate::session::Timer>>(), 16);
    }

    #[test]
    fn one_timer_per_index_rearmed_in_place() {
        let t0 = Instant::now();
        let mut w = SlotWheel::new(t0, TICK, 8);
        w.arm(3, t0 + TICK, 'a');
        w.arm(3, t0 + TICK * 3, 'b');
        assert_eq!(w.len(), 1, "re-armed, not added");
        assert_eq!(w.armed(3), Some('b'));
        let mut got = Vec::new();
        w.advance(t0 + TICK * 2, |i, v| got.push((i, v)));
        assert!(got.is_empty(), "the first deadline is gone");
        w.advance(t0 + TICK * 3, |i, v| got.push((i, v)));
        assert_eq!(got, vec![(3, 'b')]);
        assert_eq!(w.armed(3), None);
        assert_eq!(w.disarm(3), None);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        let t0 = Instant::now();
        let mut w = SlotWheel::new(t0, TICK, 4);
        w.arm(0, t0 + TICK * 9, "far");
        w.arm(1, t0 + TICK, "near");
        let mut got = Vec::new();
        for k in 1..=8 {
            w.advance(t0 + TICK * k, |_, v| got.push(v));
        }
        assert_eq!(got, vec!["near"]);
        w.advance(t0 + TICK * 9, |_, v| got.push(v));
        assert_eq!(got, vec!["near", "far"]);
    }

    #[test]
    fn ten_thousand_in_one_tick() {
        let t0 = Instant::now();
        let mut w = SlotWheel::new(t0, TICK, 4096);
        for i in 0..10_000usize {
            w.arm(
                i,
                t0 + Duration::from_millis(5000) - Duration::from_micros(i as u64),
                i,
            );
        }
        assert_eq!(w.advance(t0 + Duration::from_millis(4999), |_, _| ()), 0);
        let mut seen = vec![false; 10_000];
        assert_eq!(
            w.advance(t0 + Duration::from_millis(5000), |i, v| {
                assert_eq!(i, v);
                seen[i] = true;
            }),
            10_000
        );
        assert!(seen.iter().all(|s| *s));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Arm(usize, u64),
        Disarm(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..16, 0u64..5_000).prop_map(|(i, d)| Op::Arm(i, d)),
            2 => (0usize..16).prop_map(Op::Disarm),
            3 => (0u64..700).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// The wheel agrees with a model (index → deadline): the same timers expire at the
        /// same advance, none before its deadline, none later than the first boundary at or
        /// after it; re-arming replaces.
        #[test]
        fn matches_reference_model(ops in prop::collection::vec(op(), 1..300), slots in 1usize..64) {
            let t0 = Instant::now();
            let mut w = SlotWheel::new(t0, TICK, slots);
            let mut model: BTreeMap<usize, (u64, u32)> = BTreeMap::new();
            let mut now_ms = 0u64;
            let mut processed_to = 0u64;
            let mut stamp = 0u32;
            for op in ops {
                match op {
                    Op::Arm(i, offset) => {
                        let deadline = now_ms + offset;
                        stamp += 1;
                        w.arm(i, t0 + Duration::from_millis(deadline), stamp);
                        model.insert(i, (deadline, stamp));
                    }
                    Op::Disarm(i) => {
                        prop_assert_eq!(w.disarm(i), model.remove(&i).map(|(_, s)| s));
                    }
                    Op::Advance(dt) => {
                        now_ms += dt;
                        let mut got = Vec::new();
                        w.advance(t0 + Duration::from_millis(now_ms), |i, v| got.push((i, v)));
                        got.sort_unstable();
                        let boundary = now_ms / 100 * 100;
                        let want: Vec<(usize, u32)> = model
                            .iter()
                            .filter(|(_, &(d, _))| d.max(processed_to).div_ceil(100) * 100 <= boundary)
                            .map(|(&i, &(_, s))| (i, s))
                            .collect();
                        for (i, _) in &want {
                            let (d, _) = model.remove(i).unwrap();
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
