//! The process-wide table of held names for `on_duplicate` (docs/PROTOCOL.md §7): the
//! server's implementation of the core's [`Names`] interface.
//!
//! Only names whose registry entry says `reject` or `replace` are entered: under `allow`
//! (the default) nobody asks, so the common registration never touches this shared table.
//! A policy therefore applies to the registrations made while it is in force: after a
//! reload that turns `allow` into `reject`, connections registered earlier are not known
//! to the table and do not refuse a newcomer.
//!
//! # Layout and costs
//!
//! The table is split into shards by a hash of the name, each a mutex around a map from
//! name to its holders. A claim or a release locks one shard for one map lookup; two
//! workers contend only when they register names of the same shard at the same instant.
//! The table is bounded by the live registrations: an entry exists only while a
//! connection holds the name, and every close gives its names back.
//!
//! # Replacing
//!
//! Under `replace` a claim takes the older holders out of the table at once (so a third
//! registration sees only the newest) and hands each to the `replaced` callback given at
//! construction; the server posts them to their workers, which send EventError 15 and
//! close them. A holder's later release then finds nothing of its own and does nothing, so
//! it can never remove the newer holder. A connection never replaces itself: a Proxy that
//! registers a logical client under a name it already holds keeps both.
//!
//! # In a fleet
//!
//! With `--fleet-redis` (docs/PROTOCOL.md §13) this table is the first word, Redis the
//! last: a claim this table refuses is refused at once (no round trip); one it enters is
//! posted to the fleet thread and answered [`Claim::Pending`], the registration waiting for
//! the fleet's verdict. Every release of an entered name is posted too (Redis deletes it
//! only if the name is still that holder's).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

pub use ixn_proto::names::{Claim, Claims, ConnKey, Holder, Names, Ticket};
use ixn_proto::protocol::ErrorCode;
use ixn_proto::registry::{OnDuplicate, SharedName};

/// A held name as a map key: the shared name (no copy), hashed and compared as text so
/// a lookup by `&str` finds it.
#[derive(Debug, Clone)]
struct Key(SharedName);

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self.0).hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        **self.0 == **other.0
    }
}

impl Eq for Key {}

type Shard = HashMap<Key, Vec<Holder>>;

/// The process-wide table of held names.
pub struct NameTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    replaced: Box<dyn Fn(Holder) + Send + Sync>,
    /// Names held, all shards together (read without locking any).
    held: AtomicUsize,
    /// The fleet that decides last, with `--fleet-redis`.
    fleet: Option<std::sync::Arc<crate::fleet::Fleet>>,
}

impl std::fmt::Debug for NameTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameTable")
            .field("shards", &self.shards.len())
            .field("names", &self.len())
            .finish_non_exhaustive()
    }
}

impl NameTable {
    /// An empty table of `shards` shards (at least 1); `replaced` is told of every holder
    /// a `replace` claim displaced.
    pub fn new(shards: usize, replaced: impl Fn(Holder) + Send + Sync + 'static) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            replaced: Box::new(replaced),
            held: AtomicUsize::new(0),
            fleet: None,
        }
    }

    /// The same table, deciding last through `fleet`.
    pub fn with_fleet(mut self, fleet: Option<std::sync::Arc<crate::fleet::Fleet>>) -> Self {
        self.fleet = fleet;
        self
    }

    fn shard(&self, name: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(name) % self.shards.len() as u64) as usize;
        // A panic while a shard was locked leaves a map that is still consistent (every
        // change is one insert or removal), so a poisoned lock is used as it is.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holders of `name` now.
    pub fn holders(&self, name: &str) -> Vec<Holder> {
        self.shard(name).get(name).cloned().unwrap_or_default()
    }

    /// `from`'s hold on `name` passes to `to` in one step under the name's lock (a
    /// connection taken back after a failed upgrade, under its new key): no other claim
    /// can come between. Whether `from` held it; if not, nothing changes.
    pub fn transfer(&self, name: &str, from: Holder, to: Holder) -> bool {
        let mut shard = self.shard(name);
        match shard
            .get_mut(name)
            .and_then(|hs| hs.iter_mut().find(|h| **h == from))
        {
            Some(h) => {
                *h = to;
                true
            }
            None => false,
        }
    }

    /// Names held now.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Names for NameTable {
    /// `holder` registers `name` under `policy`. `Err(DuplicateClient)` when `reject`
    /// finds it held; otherwise the holder is entered (under `replace`, in place of the
    /// older holders of other connections, each handed to the `replaced` callback).
    /// Under `allow` nothing is entered.
    fn claim(
        &self,
        name: &SharedName,
        policy: OnDuplicate,
        holder: Holder,
        ticket: Ticket,
    ) -> Result<Claim, ErrorCode> {
        if policy == OnDuplicate::Allow {
            return Ok(Claim::Done);
        }
        let mut displaced = Vec::new();
        {
            let mut shard = self.shard(name);
            let holders = shard.entry(Key(name.clone())).or_insert_with(|| {
                self.held.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            });
            match policy {
                OnDuplicate::Reject if !holders.is_empty() => {
                    return Err(ErrorCode::DuplicateClient)
                }
                OnDuplicate::Replace => holders.retain(|h| {
                    let same = h.conn == holder.conn;
                    if !same {
                        displaced.push(*h);
                    }
                    same
                }),
                _ => {}
            }
            holders.push(holder);
        }
        // Outside the lock: the callback may take other locks.
        for h in displaced {
            (self.replaced)(h);
        }
        let Some(fleet) = &self.fleet else {
            return Ok(Claim::Done);
        };
        fleet.queue(crate::fleet::Op::Claim {
            name: name.clone(),
            policy,
            holder,
            ticket,
        });
        Ok(Claim::Pending)
    }

    /// `holder` no longer holds `name` (it unregistered or closed); nothing if it was
    /// replaced meanwhile.
    fn release(&self, name: &str, holder: Holder) {
        let mut shard = self.shard(name);
        let Some(holders) = shard.get_mut(name) else {
            return;
        };
        let before = holders.len();
        holders.retain(|h| *h != holder);
        let (had, empty) = (holders.len() < before, holders.is_empty());
        // In a fleet, the shared name goes with the release (no copy of the text).
        let key = match (had, &self.fleet) {
            (true, Some(_)) => shard.get_key_value(name).map(|(k, _)| k.0.clone()),
            _ => None,
        };
        if empty {
            shard.remove(name);
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        if let (Some(name), Some(fleet)) = (key, &self.fleet) {
            fleet.queue(crate::fleet::Op::Release { name, holder });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    const T: Ticket = Ticket {
        reference_id: 1,
        client_type: 1,
        logical: false,
        keep_alive: 0,
    };

    fn key(worker: u32, slot: u32) -> ConnKey {
        ConnKey {
            worker,
            slot,
            generation: 1,
        }
    }

    fn table() -> (NameTable, Arc<StdMutex<Vec<Holder>>>) {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        (NameTable::new(4, move |h| s.lock().unwrap().push(h)), seen)
    }

    #[test]
    fn allow_enters_nothing() {
        let (t, _) = table();
        let n: SharedName = Arc::new("A".into());
        let h = Holder {
            conn: key(0, 1),
            id: 1,
        };
        assert_eq!(t.claim(&n, OnDuplicate::Allow, h, T), Ok(Claim::Done));
        assert_eq!(t.claim(&n, OnDuplicate::Allow, h, T), Ok(Claim::Done));
        assert!(t.is_empty());
    }

    #[test]
    fn reject_refuses_while_held_and_admits_after_release() {
        let (t, seen) = table();
        let n: SharedName = Arc::new("A".into());
        let first = Holder {
            conn: key(0, 1),
            id: 1,
        };
        let second = Holder {
            conn: key(1, 1),
            id: 2,
        };
        assert_eq!(t.claim(&n, OnDuplicate::Reject, first, T), Ok(Claim::Done));
        assert_eq!(
            t.claim(&n, OnDuplicate::Reject, second, T),
            Err(ErrorCode::DuplicateClient)
        );
        t.release(&n, first);
        assert!(t.is_empty());
        assert_eq!(t.claim(&n, OnDuplicate::Reject, second, T), Ok(Claim::Done));
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_transfer_keeps_the_name_held_throughout_and_only_from_its_holder() {
        let (t, seen) = table();
        let n: SharedName = Arc::new("A".into());
        let (old, new, other) = (
            Holder {
                conn: key(0, 1),
                id: 1,
            },
            Holder {
                conn: key(0, 9),
                id: 1,
            },
            Holder {
                conn: key(1, 1),
                id: 2,
            },
        );
        t.claim(&n, OnDuplicate::Reject, old, T).unwrap();
        assert!(!t.transfer(&n, other, new), "only its holder's hold passes");
        assert!(!t.transfer("B", old, new), "nor a name not held");
        assert!(t.transfer(&n, old, new));
        assert_eq!(t.holders(&n), vec![new]);
        assert_eq!(
            t.claim(&n, OnDuplicate::Reject, other, T),
            Err(ErrorCode::DuplicateClient)
        );
        // The old key's late release changes nothing; the new holder's frees it.
        t.release(&n, old);
        assert_eq!(t.holders(&n), vec![new]);
        t.release(&n, new);
        assert!(t.is_empty());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn replace_displaces_other_connections_and_their_late_release_is_harmless() {
        let (t, seen) = table();
        let n: SharedName = Arc::new("A".into());
        let old = Holder {
            conn: key(0, 1),
            id: 1,
        };
        let own_logical = Holder {
            conn: key(0, 1),
            id: 3,
        };
        let new = Holder {
            conn: key(1, 7),
            id: 2,
        };
        t.claim(&n, OnDuplicate::Replace, old, T).unwrap();
        // The same connection keeps both of its registrations.
        t.claim(&n, OnDuplicate::Replace, own_logical, T).unwrap();
        assert!(seen.lock().unwrap().is_empty());
        t.claim(&n, OnDuplicate::Replace, new, T).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![old, own_logical]);
        assert_eq!(t.holders(&n), vec![new]);
        // The displaced connection closes and releases: the newer holder stays.
        t.release(&n, old);
        t.release(&n, own_logical);
        assert_eq!(t.holders(&n), vec![new]);
        t.release(&n, new);
        assert!(t.is_empty());
    }
}
