//! What the `Connection` fuzz targets share: feeding a read the way an engine does, and
//! the invariant every call's timer change must keep.

use std::time::Instant;

use ixn::connection::{Connection, Env, Progress, TimerChange};

/// Appends `chunk` to the unconsumed input and offers all of it, as an engine does; keeps
/// what the connection did not take.
pub fn feed(
    c: &mut Connection,
    now: Instant,
    pending: &mut Vec<u8>,
    chunk: &[u8],
    env: &mut Env<'_>,
    out: &mut Vec<u8>,
) -> Progress {
    pending.extend_from_slice(chunk);
    let p = c.on_bytes(now, pending, env, out, |_| {});
    assert!(
        p.consumed <= pending.len(),
        "took more input than it was given"
    );
    pending.drain(..p.consumed);
    p
}

/// `armed()` always equals the last timer change.
pub fn check_timer(c: &Connection, p: &Progress) {
    match p.timer {
        TimerChange::Arm(t, _) => assert_eq!(c.armed(), Some(t)),
        TimerChange::Cancel => assert_eq!(c.armed(), None),
        TimerChange::Keep => {}
    }
}
