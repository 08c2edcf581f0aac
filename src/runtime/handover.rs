//! A worker's part in a live upgrade (docs/OPERATIONS.md 7e), on the shared lifecycle and
//! so on both backends.
//!
//! In the old process, on [`Command::HandOver`](crate::control::Command): the worker stops
//! taking connections off its listeners (their backlog waits for the new process), stops
//! reading every connection, and at each tick detaches those at rest: reading frames, no
//! answer unsent or being sent, plain TCP, no verdict awaited, and nothing in flight on the
//! socket (on io_uring the receive's cancellation must have completed). A detached
//! connection leaves the slab without a close: its ids and admission count are given back
//! here and taken again by the new process; its names stay held here under its old key
//! until the upgrade ends (a kept TLS connection registering meanwhile still meets them),
//! and pass to its new key, name by name under the name's lock, as a take-back adopts it
//! again. Connections not at rest by the deadline, TLS ones and closing ones stay, are
//! read again, and are drained as a lame duck once the new process has adopted the rest.
//!
//! In the new process, and in the old one when an upgrade fails, [`Core::adopt`] makes
//! handed-over connections this worker's own.

use std::sync::atomic::Ordering;
use std::time::Instant;

use ixn_proto::connection::Connection;
use std::os::fd::AsRawFd;

use ixn_proto::names::{ConnKey, Holder, Names};

use super::{key, Backend, Core, SlotKey};
use crate::control::{Handed, LastPart, Part};

/// A worker's handover in progress.
#[derive(Debug)]
pub(super) struct HandOver {
    parts: std::sync::mpsc::Sender<Part>,
    until: Instant,
}

impl HandOver {
    pub(super) fn new(parts: std::sync::mpsc::Sender<Part>, until: Instant) -> Self {
        Self { parts, until }
    }
}

impl<B: Backend> Core<B> {
    /// Starts handing over: no more accepts, no more reads.
    pub(super) fn hand_over(&mut self, b: &mut B, h: HandOver) {
        b.pause_accepting();
        self.upgrading = true;
        self.handover = Some(h);
        let keys: Vec<usize> = self.slots.iter().map(|(i, _)| i).collect();
        for i in keys {
            self.stop_reading(b, i);
        }
    }

    fn stop_reading(&mut self, b: &mut B, i: usize) {
        let s = &mut self.slots[i];
        if s.hard.is_none() && !s.paused && !s.conn.is_tls() {
            s.paused = true;
            let key = SlotKey {
                slot: i,
                generation: s.generation,
            };
            b.pause(key, &mut s.io);
        }
    }

    /// A tick of the handover: every connection at rest is detached and sent; once none
    /// is left to wait for (or the deadline passed), the last batch goes with the
    /// listeners.
    pub(super) fn hand_over_step(&mut self, b: &mut B, now: Instant) {
        let Some(h) = self.handover.take() else {
            return;
        };
        let mut conns = Vec::new();
        let mut waiting = 0;
        let keys: Vec<usize> = self.slots.iter().map(|(i, _)| i).collect();
        for i in keys {
            match self.detach(b, i, now) {
                Detach::Done(handed) => conns.push(*handed),
                Detach::Wait => waiting += 1,
                Detach::Keep => {}
            }
        }
        let last = waiting == 0 || now >= h.until;
        self.metrics.handed_over(conns.len());
        let part = Part {
            worker: self.index as usize,
            conns,
            last: last.then(|| LastPart {
                listeners: b
                    .listeners()
                    .into_iter()
                    .filter_map(|(fd, kind)| fd.try_clone_to_owned().ok().map(|fd| (fd, kind)))
                    .collect(),
                kept: self.slots.len(),
            }),
        };
        if h.parts.send(part).is_err() || last {
            // Done, or the upgrade gave up: the rest are read again, and the worker waits
            // for the new process's word (`Upgraded`, or `TakeBack` and accepting again).
            self.read_again(b);
            return;
        }
        self.handover = Some(h);
    }

    /// Connections left (TLS, closing, not at rest in time) are read again.
    fn read_again(&mut self, b: &mut B) {
        let keys: Vec<usize> = self.slots.iter().map(|(i, _)| i).collect();
        for i in keys {
            let s = &mut self.slots[i];
            if s.paused && s.hard.is_none() && !s.conn.session().awaiting() {
                s.paused = false;
                let key = SlotKey {
                    slot: i,
                    generation: s.generation,
                };
                b.resume(key, &mut s.io);
            }
        }
    }

    fn detach(&mut self, b: &mut B, i: usize, now: Instant) -> Detach {
        let s = &self.slots[i];
        if s.hard.is_some() || s.conn.is_tls() || s.close_after_write || s.half_closed {
            return Detach::Keep;
        }
        if !s.paused {
            // Accepted since the handover began (paced connections admitted meanwhile).
            self.stop_reading(b, i);
            return Detach::Wait;
        }
        if s.sending || !s.out.is_empty() || self.later.contains_key(&i) {
            return Detach::Wait;
        }
        if !b.detachable(&s.io) {
            return Detach::Wait;
        }
        let Some(h) = s.conn.hand_off(now, &s.pending, self.timers.deadline(i)) else {
            return Detach::Wait;
        };
        self.timers.disarm(i);
        let mut s = self.slots.remove(i);
        if let Some(k) = s.write_timer.take() {
            self.wheel.cancel(k);
        }
        // What this process counted goes; the new process counts it again. Its names stay
        // held here under its old key until the upgrade ends: a kept connection (TLS)
        // registering meanwhile still meets them. Released if it is taken back (before
        // its adoption claims them again); otherwise they go with this process.
        self.shared.release(&s.conn);
        let old = key(self.index, i, s.generation);
        let own = h.session.claimed.then_some(()).and(h.session.name.as_ref());
        let names: Vec<(ConnKey, String, i32)> = own
            .map(|n| (old, n.clone(), h.session.own_id))
            .into_iter()
            .chain(
                h.session
                    .logical
                    .iter()
                    .filter_map(|(id, n)| Some((old, n.clone()?, *id))),
            )
            .collect();
        s.conn.release(&mut self.ids, None);
        if s.counted {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
        }
        let fd = b.detach(s.io);
        if !names.is_empty() {
            // Keyed by the socket, which this process holds until the upgrade ends.
            self.handed_names.insert(fd.as_raw_fd(), names);
        }
        Detach::Done(Box::new((h, fd)))
    }

    /// In a live upgrade's new process, before the worker accepts: adopts the connections
    /// the old process's worker of the same number handed over.
    pub(in crate::runtime) fn adopt_queued(&mut self, b: &mut B) {
        let conns = self
            .shared
            .adopt_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(self.index as usize)
            .map(std::mem::take)
            .unwrap_or_default();
        if !conns.is_empty() {
            let adopted = self.adopt(b, conns);
            self.metrics.adopted(adopted);
        }
    }

    /// Makes handed-over connections this worker's: each keeps its state, deadline,
    /// names and ids, and is read from now on. One that cannot be adopted is closed. The
    /// number adopted.
    pub(super) fn adopt(&mut self, b: &mut B, conns: Vec<Handed>) -> usize {
        let now = self.now;
        let registry = self.shared.registry.load_full();
        let mut adopted = 0;
        let shared = self.shared.clone();
        for (h, fd) in conns {
            // Taken back: the names it holds here under its old key pass to its new key as
            // it claims them (no other client can take one in between); any it does not
            // claim again go after.
            let held = self
                .handed_names
                .remove(&fd.as_raw_fd())
                .unwrap_or_default();
            let generation = self.next_generation();
            let i = self.slots.vacant_key();
            let table = TakenBack {
                table: &shared.names,
                held: &held,
            };
            let claims = ixn_proto::names::Claims {
                table: &table,
                conn: key(self.index, i, generation),
            };
            let adopted_conn = Connection::adopt(&h, now, &registry, &mut self.ids, claims);
            for (conn, name, id) in held {
                shared.names.release(&name, Holder { conn, id });
            }
            let (conn, change) = match adopted_conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(peer = %h.peer, "a handed-over connection is closed: {e}");
                    drop(fd);
                    continue;
                }
            };
            if conn.admitted() {
                self.shared.admission.adopted(conn.peer());
            }
            self.shared.active.fetch_add(1, Ordering::AcqRel);
            let io = b.adopt(fd);
            if let Some(i) = self.insert_as(b, conn, io, true, generation) {
                self.slots[i].pending = h.pending;
                self.apply_timer(i, change);
                adopted += 1;
            }
        }
        adopted
    }

    /// The upgrade failed: the handed connections come back, and accepting resumes.
    pub(super) fn take_back(&mut self, b: &mut B, conns: Vec<Handed>) {
        self.handover = None;
        self.upgrading = false;
        // Counted as `taken_back` by the upgrade's thread.
        self.adopt(b, conns);
        // Any not taken back (none, in practice): their names go.
        for (conn, name, id) in std::mem::take(&mut self.handed_names)
            .into_values()
            .flatten()
        {
            self.shared.names.release(&name, Holder { conn, id });
        }
        self.read_again(b);
        b.resume_accepting();
    }
}

/// The name table as a taken-back connection's adoption sees it: a name it held here under
/// its old key passes to its new key ([`NameTable::transfer`](crate::names::NameTable)),
/// any other claim goes to the table as usual. A transfer asks nothing of a fleet: live
/// upgrades are refused with `--fleet-redis`.
struct TakenBack<'a> {
    table: &'a crate::names::NameTable,
    held: &'a [(ConnKey, String, i32)],
}

impl Names for TakenBack<'_> {
    fn claim(
        &self,
        name: &ixn_proto::registry::SharedName,
        policy: ixn_proto::registry::OnDuplicate,
        holder: Holder,
        ticket: ixn_proto::names::Ticket,
    ) -> Result<ixn_proto::names::Claim, ixn_proto::protocol::ErrorCode> {
        let before = self
            .held
            .iter()
            .find(|(_, n, id)| **n == ***name && *id == holder.id);
        match before {
            Some(&(conn, _, id)) if self.table.transfer(name, Holder { conn, id }, holder) => {
                Ok(ixn_proto::names::Claim::Done)
            }
            _ => self.table.claim(name, policy, holder, ticket),
        }
    }

    fn release(&self, name: &str, holder: Holder) {
        self.table.release(name, holder);
    }
}

enum Detach {
    /// Detached: its state and socket (boxed: the other answers are far more frequent).
    Done(Box<Handed>),
    /// Not at rest yet.
    Wait,
    /// Never handed over (TLS, closing): drained by this process.
    Keep,
}
