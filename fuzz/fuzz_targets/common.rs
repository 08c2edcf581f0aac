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

/// A name table for one connection's fuzzing (the server's sharded one lives in the server
/// crate, which the fuzzed binaries leave out): `reject` refuses while a name is held,
/// `replace` takes it over, `allow` enters nothing.
#[derive(Default)]
#[allow(dead_code)] // Used by the session target, not the tls one.
pub struct Names(std::sync::Mutex<std::collections::HashMap<String, Vec<ixn::names::Holder>>>);

impl ixn::names::Names for Names {
    fn claim(
        &self,
        name: &ixn::registry::SharedName,
        policy: ixn::registry::OnDuplicate,
        holder: ixn::names::Holder,
        _ticket: ixn::names::Ticket,
    ) -> Result<ixn::names::Claim, ixn::protocol::ErrorCode> {
        use ixn::registry::OnDuplicate;
        if policy == OnDuplicate::Allow {
            return Ok(ixn::names::Claim::Done);
        }
        let mut held = self.0.lock().unwrap();
        let holders = held.entry(name.to_string()).or_default();
        match policy {
            OnDuplicate::Reject if !holders.is_empty() => {
                return Err(ixn::protocol::ErrorCode::DuplicateClient)
            }
            OnDuplicate::Replace => holders.retain(|h| h.conn == holder.conn),
            _ => {}
        }
        holders.push(holder);
        Ok(ixn::names::Claim::Done)
    }

    fn release(&self, name: &str, holder: ixn::names::Holder) {
        let mut held = self.0.lock().unwrap();
        if let Some(holders) = held.get_mut(name) {
            holders.retain(|h| *h != holder);
            if holders.is_empty() {
                held.remove(name);
            }
        }
    }
}

#[allow(dead_code)]
impl Names {
    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}
