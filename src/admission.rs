//! Admission control (docs/PROTOCOL.md §11): the connection rate, the per-address cap and
//! temporary bans after repeated failed registrations, across every worker.
//!
//! Cost on the hot path: with every control off (the default) nothing here is touched.
//! The rate is one atomic word, `(second << 32) | count`, bumped with one `fetch_add` per
//! accept (a compare-and-swap only when the second turns). Per-address state lives in
//! [`SHARDS`] mutex-guarded maps chosen by a hash of the address, so two workers contend
//! only when their peers land in the same shard, and a registered client's traffic never
//! comes here: only accepts, closes and failed registrations do.
//!
//! Bounds against an attacker with many addresses: the per-address connection counts hold
//! only addresses with a connection open, so at most `max_connections` entries; the failure
//! counters and bans are capped at [`MAX_TRACKED`] addresses each (spread over the shards).
//! When the failure table is full, failures of addresses not yet tracked are not counted
//! (no ban, counted in `untracked`) rather than evicting older ones, so a flood of fresh
//! addresses cannot wash a real offender's record out; expired entries are swept as the
//! shards are touched.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards of the per-address tables.
pub const SHARDS: usize = 64;
/// Most addresses whose failures (and, separately, bans) are remembered.
pub const MAX_TRACKED: usize = 65_536;

/// Why a connection is refused at accept; the `reason` label of
/// `ixn_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is banned (EventError 16).
    Banned,
    /// Over `--max-connection-rate` this second (10).
    Rate,
    /// The address holds `--max-connections-per-ip` already (10).
    PerIp,
    /// `--max-connections` reached (10).
    Limit,
    /// A banned address's SYN, dropped by the listener's ban filter before a socket
    /// existed (revision 3): nothing is answered, the client's TCP retries.
    BannedSyn,
}

impl Refusal {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [Refusal; 5] = [
        Self::Banned,
        Self::Rate,
        Self::PerIp,
        Self::Limit,
        Self::BannedSyn,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Banned => "banned",
            Self::Rate => "rate",
            Self::PerIp => "per_ip",
            Self::Limit => "limit",
            Self::BannedSyn => "banned_syn",
        }
    }

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The EventError a refusal answers with (section 11); a dropped SYN is answered
    /// with nothing, and would have been told 16 at accept.
    pub fn code(self) -> ixn_proto::protocol::ErrorCode {
        match self {
            Self::Banned | Self::BannedSyn => {
                ixn_proto::protocol::ErrorCode::AddressTemporarilyRefused
            }
            _ => ixn_proto::protocol::ErrorCode::ServerOverloaded,
        }
    }

    /// The close reason it is counted under.
    pub fn close_reason(self) -> ixn_proto::session::CloseReason {
        match self {
            Self::Banned | Self::BannedSyn => ixn_proto::session::CloseReason::Banned,
            _ => ixn_proto::session::CloseReason::Overload,
        }
    }
}

/// What a connection over `--max-connection-rate` gets (docs/PROTOCOL.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateMode {
    /// The worker stops taking connections off its listeners until the next second: they
    /// wait in the kernel's backlog and are served then.
    #[default]
    Pace,
    /// EventError{0, 10} and a close once written.
    Refuse,
}

/// The limits in force; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// New connections per second, all workers together.
    pub rate: u32,
    /// What a connection over `rate` gets.
    pub rate_mode: RateMode,
    /// Concurrent connections from one address.
    pub per_ip: u32,
    /// Failed registrations within `window` that ban an address.
    pub ban_failures: u32,
    /// The window failures are counted in.
    pub ban_window: Duration,
    /// How long a ban lasts.
    pub ban_duration: Duration,
    /// Bans are enforced below accept too, by the listeners' filters (`crate::ban_filter`).
    pub ban_filter: bool,
}

#[derive(Debug, Default)]
struct Shard {
    /// Open connections per address (only addresses with one open).
    open: HashMap<IpAddr, u32>,
    /// Failures in the current window: (window start, count).
    failures: HashMap<IpAddr, (Instant, u32)>,
    /// Bans: (until, failures that caused it).
    bans: HashMap<IpAddr, (Instant, u32)>,
}

/// One ban, for the admin API and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// The address.
    pub address: IpAddr,
    /// When it ends.
    pub until: Instant,
    /// Failures that caused it.
    pub failures: u32,
}

/// Admission state shared by every worker.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    origin: Instant,
    /// `(second since origin) << 32 | connections admitted in it`.
    second: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    tracked_failures: AtomicUsize,
    bans: AtomicUsize,
    /// The earliest end of a ban in the table, in milliseconds since `origin` (`u64::MAX`
    /// for none): `bans_active` sweeps only once it has passed.
    next_expiry_ms: AtomicU64,
    /// Failures not counted because the table was full.
    pub untracked: AtomicU64,
    /// Changes to the set of bans (made, lifted, ended): the listeners' ban filters are
    /// rebuilt when it moves.
    epoch: AtomicU64,
}

impl Admission {
    /// Admission with these limits; `origin` is the clock's zero for the rate's seconds.
    pub fn new(limits: Limits, origin: Instant) -> Self {
        Self {
            limits,
            origin,
            second: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            tracked_failures: AtomicUsize::new(0),
            bans: AtomicUsize::new(0),
            next_expiry_ms: AtomicU64::new(u64::MAX),
            untracked: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts the changes to the set of bans; ends are seen by [`Admission::bans_active`],
    /// which workers call at every tick.
    pub fn ban_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bans_changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(ip) as usize) % SHARDS;
        // A worker that panicked while holding a shard aborts the process (the panic hook),
        // so a poisoned lock is never seen in service.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a new connection from `ip` (section 11's order: ban, rate, per address) and,
    /// when it passes, counts it against the rate and its address. A connection that
    /// passes must be [`Admission::released`] when it closes.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.check_counting(ip, now, true)
    }

    /// [`Admission::check`], counting the connection against the rate only when `rate`
    /// (behind a PROXY listener in `pace` mode the rate was taken at accept).
    pub fn check_counting(&self, ip: IpAddr, now: Instant, rate: bool) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if self.limits.ban_failures > 0 && self.banned(ip, now) {
            return Err(Refusal::Banned);
        }
        if rate && !self.take_rate(now) {
            return Err(Refusal::Rate);
        }
        if self.limits.per_ip > 0 {
            let mut s = self.shard(ip);
            let n = s.open.entry(ip).or_insert(0);
            if *n >= self.limits.per_ip {
                if *n == 0 {
                    s.open.remove(&ip);
                }
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        Ok(())
    }

    /// A connection counted by another process's admission, handed over by a live
    /// upgrade: counted here (never refused: it is open already).
    pub fn adopted(&self, ip: IpAddr) {
        if self.limits.per_ip == 0 {
            return;
        }
        let ip = ip.to_canonical();
        *self.shard(ip).open.entry(ip).or_insert(0) += 1;
    }

    /// A connection that passed [`Admission::check`] closed.
    pub fn released(&self, ip: IpAddr) {
        if self.limits.per_ip == 0 {
            return;
        }
        let ip = ip.to_canonical();
        let mut s = self.shard(ip);
        if let Some(n) = s.open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                s.open.remove(&ip);
            }
        }
    }

    /// Whether connections over the rate are paced (held until the next second) rather
    /// than refused.
    pub fn paces(&self) -> bool {
        self.limits.rate > 0 && self.limits.rate_mode == RateMode::Pace
    }

    /// When the rate's next second begins, after `now`.
    pub fn next_second(&self, now: Instant) -> Instant {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        self.origin + Duration::from_secs(sec + 1)
    }

    /// Counts one connection against this second's rate: whether it is within it (always
    /// with no rate set).
    pub fn take_rate(&self, now: Instant) -> bool {
        if self.limits.rate == 0 {
            return true;
        }
        let sec = now.saturating_duration_since(self.origin).as_secs();
        loop {
            let cur = self.second.load(Ordering::Acquire);
            if cur >> 32 == sec & 0xffff_ffff {
                let before = self.second.fetch_add(1, Ordering::AcqRel);
                if before >> 32 == sec & 0xffff_ffff {
                    return (before & 0xffff_ffff) < u64::from(self.limits.rate);
                }
                // The second turned between the load and the add: start over.
                continue;
            }
            // A new second: the first to swap in `(sec, 1)` takes it.
            let next = (sec & 0xffff_ffff) << 32 | 1;
            if self
                .second
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return self.limits.rate >= 1;
            }
        }
    }

    fn banned(&self, ip: IpAddr, now: Instant) -> bool {
        let mut s = self.shard(ip);
        match s.bans.get(&ip) {
            Some((until, _)) if *until > now => true,
            Some(_) => {
                s.bans.remove(&ip);
                self.bans.fetch_sub(1, Ordering::AcqRel);
                self.bans_changed();
                false
            }
            None => false,
        }
    }

    /// A registration from `ip` failed (EventError 2, 3, 4, 5 or 17): returns the ban it
    /// caused, if it was the `ban_failures`th within the window.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Ban> {
        let l = self.limits;
        if l.ban_failures == 0 {
            return None;
        }
        let ip = ip.to_canonical();
        let mut s = self.shard(ip);
        if s.bans.get(&ip).is_some_and(|(until, _)| *until > now) {
            return None;
        }
        let count = match s.failures.get_mut(&ip) {
            Some((start, n)) if now.saturating_duration_since(*start) < l.ban_window => {
                *n += 1;
                *n
            }
            Some(entry) => {
                *entry = (now, 1);
                1
            }
            None => {
                if self.tracked_failures.load(Ordering::Acquire) >= MAX_TRACKED {
                    sweep(&mut s.failures, &self.tracked_failures, |(start, _)| {
                        now.saturating_duration_since(*start) >= l.ban_window
                    });
                    if self.tracked_failures.load(Ordering::Acquire) >= MAX_TRACKED {
                        self.untracked.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                }
                s.failures.insert(ip, (now, 1));
                self.tracked_failures.fetch_add(1, Ordering::AcqRel);
                1
            }
        };
        if count < l.ban_failures {
            return None;
        }
        s.failures.remove(&ip);
        self.tracked_failures.fetch_sub(1, Ordering::AcqRel);
        if self.bans.load(Ordering::Acquire) >= MAX_TRACKED {
            sweep(&mut s.bans, &self.bans, |(until, _)| *until <= now);
            if self.bans.load(Ordering::Acquire) >= MAX_TRACKED {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let ban = Ban {
            address: ip,
            until: now + l.ban_duration,
            failures: count,
        };
        if s.bans.insert(ip, (ban.until, count)).is_none() {
            self.bans.fetch_add(1, Ordering::AcqRel);
        }
        self.bans_changed();
        self.next_expiry_ms
            .fetch_min(self.ms(ban.until), Ordering::AcqRel);
        Some(ban)
    }

    /// Bans in force at `now`: expired ones are dropped here (workers ask at every tick,
    /// for `ixn_bans_active`), so the gauge agrees with the admin API's list (N11). The
    /// shards are swept only once the earliest ban has ended, not at every tick.
    pub fn bans_active(&self, now: Instant) -> usize {
        let count = self.bans.load(Ordering::Acquire);
        if count == 0 || self.ms(now) < self.next_expiry_ms.load(Ordering::Acquire) {
            return count;
        }
        let mut next = u64::MAX;
        // Every ban that ended is gone from the filters too.
        self.bans_changed();
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            sweep(&mut s.bans, &self.bans, |(until, _)| *until <= now);
            if let Some(earliest) = s.bans.values().map(|(until, _)| *until).min() {
                next = next.min(self.ms(earliest));
            }
        }
        // Bans are made `ban_duration` from their failure, so one made meanwhile ends
        // after every ban seen here: storing this minimum cannot hide its end.
        self.next_expiry_ms.store(next, Ordering::Release);
        self.bans.load(Ordering::Acquire)
    }

    /// Milliseconds from `origin` to `t` (0 before it).
    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// The bans in force at `now`, for the admin API.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let s = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(s.bans.iter().filter(|(_, (until, _))| *until > now).map(
                |(ip, (until, failures))| Ban {
                    address: *ip,
                    until: *until,
                    failures: *failures,
                },
            ));
        }
        all.sort_by_key(|b| (b.until, b.address));
        all
    }

    /// Bans `ip` until `until` (a ban another server of the fleet made, docs/PROTOCOL.md
    /// §13): entered like one of ours, or extended.
    pub fn ban(&self, ip: IpAddr, until: Instant, failures: u32) {
        let ip = ip.to_canonical();
        let mut s = self.shard(ip);
        if self.bans.load(Ordering::Acquire) >= MAX_TRACKED && !s.bans.contains_key(&ip) {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let entry = s.bans.entry(ip).or_insert_with(|| {
            self.bans.fetch_add(1, Ordering::AcqRel);
            (until, failures)
        });
        if entry.0 < until {
            *entry = (until, failures);
        }
        self.bans_changed();
        self.next_expiry_ms
            .fetch_min(self.ms(until), Ordering::AcqRel);
    }

    /// Lifts the ban on `ip`; whether there was one.
    pub fn lift(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let mut s = self.shard(ip);
        let had = s.bans.remove(&ip).is_some();
        if had {
            self.bans.fetch_sub(1, Ordering::AcqRel);
            self.bans_changed();
        }
        had
    }
}

/// Whether a session output is a failed registration that counts toward a ban: answered
/// with EventError 2, 3, 4, 5 or 17 (section 11).
pub fn is_failure(o: &ixn_proto::session::Output) -> bool {
    use ixn_proto::protocol::ErrorCode as E;
    matches!(
        o.registration,
        Some(Err(E::UnknownClient
            | E::ClientTypeNotAllowed
            | E::AuthenticationFailed
            | E::AddressNotAllowed
            | E::TlsRequired))
    )
}

/// Drops the entries `expired` says are over, keeping `count` in step.
fn sweep<V>(map: &mut HashMap<IpAddr, V>, count: &AtomicUsize, expired: impl Fn(&V) -> bool) {
    let before = map.len();
    map.retain(|_, v| !expired(v));
    count.fetch_sub(before - map.len(), Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn everything_off_admits_all() {
        let a = Admission::new(Limits::default(), Instant::now());
        for _ in 0..10_000 {
            assert_eq!(a.check(ip("10.0.0.1"), Instant::now()), Ok(()));
        }
        assert_eq!(a.failed(ip("10.0.0.1"), Instant::now()), None);
    }

    #[test]
    fn rate_admits_exactly_n_per_second() {
        let t0 = Instant::now();
        let a = Admission::new(
            Limits {
                rate: 5,
                ..Default::default()
            },
            t0,
        );
        let ok = (0..8)
            .filter(|_| a.check(ip("10.0.0.1"), t0).is_ok())
            .count();
        assert_eq!(ok, 5);
        assert_eq!(a.check(ip("10.0.0.2"), t0), Err(Refusal::Rate));
        let next = t0 + Duration::from_secs(1);
        let ok = (0..8)
            .filter(|_| a.check(ip("10.0.0.1"), next).is_ok())
            .count();
        assert_eq!(ok, 5, "a new second, a new budget");
    }

    #[test]
    fn per_ip_caps_concurrent_connections_and_release_frees() {
        let now = Instant::now();
        let a = Admission::new(
            Limits {
                per_ip: 2,
                ..Default::default()
            },
            now,
        );
        assert!(a.check(ip("10.0.0.1"), now).is_ok());
        assert!(
            a.check(ip("::ffff:10.0.0.1"), now).is_ok(),
            "the same address"
        );
        assert_eq!(a.check(ip("10.0.0.1"), now), Err(Refusal::PerIp));
        assert!(a.check(ip("10.0.0.2"), now).is_ok(), "another address");
        a.released(ip("10.0.0.1"));
        assert!(a.check(ip("10.0.0.1"), now).is_ok());
    }

    #[test]
    fn failures_ban_expire_and_lift() {
        let t0 = Instant::now();
        let a = Admission::new(
            Limits {
                ban_failures: 3,
                ban_window: Duration::from_secs(10),
                ban_duration: Duration::from_secs(60),
                ..Default::default()
            },
            t0,
        );
        let x = ip("10.0.0.9");
        assert_eq!(a.failed(x, t0), None);
        assert_eq!(a.failed(x, t0), None);
        // Outside the window the count starts over.
        let late = t0 + Duration::from_secs(11);
        assert_eq!(a.failed(x, late), None);
        assert_eq!(a.failed(x, late), None);
        let ban = a
            .failed(x, late)
            .expect("the third failure within the window bans");
        assert_eq!(
            (ban.failures, ban.until),
            (3, late + Duration::from_secs(60))
        );
        assert_eq!(a.bans_active(late), 1);
        assert_eq!(a.check(x, late), Err(Refusal::Banned));
        assert!(a.check(ip("10.0.0.8"), late).is_ok());
        // Expiry.
        let after = late + Duration::from_secs(60);
        assert_eq!(a.bans_active(after - Duration::from_millis(1)), 1);
        // An expired ban is not counted, whether or not its address came back (N11).
        assert_eq!(a.bans_active(after), 0);
        assert!(a.check(x, after).is_ok());
        // Lifting.
        for _ in 0..3 {
            a.failed(x, after);
        }
        assert_eq!(a.check(x, after), Err(Refusal::Banned));
        let listed = a.bans(after);
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].address, listed[0].failures), (x, 3));
        assert!(
            a.bans(after + Duration::from_secs(60)).is_empty(),
            "expired: not listed"
        );
        assert!(a.lift(x));
        assert!(!a.lift(x));
        assert!(a.bans(after).is_empty());
        assert!(a.check(x, after).is_ok());
    }

    #[test]
    fn the_failure_table_is_bounded_and_keeps_its_offenders() {
        let t0 = Instant::now();
        let a = Admission::new(
            Limits {
                ban_failures: 2,
                ban_window: Duration::from_secs(60),
                ban_duration: Duration::from_secs(60),
                ..Default::default()
            },
            t0,
        );
        let offender = ip("192.0.2.1");
        a.failed(offender, t0);
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            a.failed(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0);
        }
        assert!(a.tracked_failures.load(Ordering::Relaxed) <= MAX_TRACKED);
        assert!(a.untracked.load(Ordering::Relaxed) >= 1000);
        assert!(
            a.failed(offender, t0).is_some(),
            "its record survived the flood"
        );
    }
}
