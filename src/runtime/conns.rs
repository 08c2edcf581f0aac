//! Per-worker connection table: a slab behind typed, generational handles.
//!
//! A handle names a slab index *and* the generation of the connection that held it when the
//! handle was made. A timer entry or task that outlives its connection carries a stale
//! generation, so it can never reach the next connection that reuses the slot.

use std::os::fd::RawFd;

use slab::Slab;

use crate::session::CloseReason;
use crate::timer_wheel::TimerKey;
use ixn_proto::connection::Connection;

/// A connection of one worker, stable for its lifetime and useless after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    index: u32,
    generation: u32,
}

impl ConnHandle {
    /// The process-wide key of this handle's connection on worker `worker`.
    pub fn key(self, worker: u32) -> ixn_proto::names::ConnKey {
        ixn_proto::names::ConnKey {
            worker,
            slot: self.index,
            generation: self.generation,
        }
    }

    /// The handle a key names (its worker is the caller's).
    pub fn from_key(key: ixn_proto::names::ConnKey) -> Self {
        Self {
            index: key.slot,
            generation: key.generation,
        }
    }
}

/// One live connection: its protocol state and what the runtime needs to drive it.
#[derive(Debug)]
pub struct Conn {
    generation: u32,
    /// Everything protocol: preamble, session, deadlines, closing (sans-IO).
    pub conn: Connection,
    /// The socket, owned by the connection's task (which frees this slot before it
    /// closes the socket), so a timer tick can shut it down without owning it.
    pub fd: RawFd,
    /// The connection's one protocol timer (see [`Connection::armed`]) in the wheel.
    pub timer: Option<TimerKey>,
    /// The write-stall deadline armed while a write is in flight.
    pub write_timer: Option<TimerKey>,
    /// Set by the worker (deadline, drain, stall) for the task to act on.
    pub signal: Option<Signal>,
}

/// What the worker asks of a connection's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Close now with this reason (the worker has shut the socket down, which completes a
    /// pending read).
    Close(CloseReason),
    /// Tell the connection of the drain or a kick once the write in flight completes.
    Tell(ixn_proto::connection::Notice),
}

/// The slab.
#[derive(Debug)]
pub struct Conns {
    slab: Slab<Conn>,
    generation: u32,
}

impl Default for Conns {
    fn default() -> Self {
        Self {
            slab: Slab::new(),
            generation: 0,
        }
    }
}

impl Conns {
    /// Adds a connection.
    pub fn insert(&mut self, conn: Connection, fd: RawFd) -> ConnHandle {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let index = self.slab.insert(Conn {
            generation,
            conn,
            fd,
            timer: None,
            write_timer: None,
            signal: None,
        }) as u32;
        ConnHandle { index, generation }
    }

    /// The connection `h` names, unless it is gone.
    pub fn get_mut(&mut self, h: ConnHandle) -> Option<&mut Conn> {
        self.slab
            .get_mut(h.index as usize)
            .filter(|c| c.generation == h.generation)
    }

    /// Removes the connection `h` names, unless it is gone.
    pub fn remove(&mut self, h: ConnHandle) -> Option<Conn> {
        match self.slab.get(h.index as usize) {
            Some(c) if c.generation == h.generation => Some(self.slab.remove(h.index as usize)),
            _ => None,
        }
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every live connection with its handle.
    pub fn iter(&self) -> impl Iterator<Item = (ConnHandle, &Conn)> {
        self.slab.iter().map(|(i, c)| {
            (
                ConnHandle {
                    index: i as u32,
                    generation: c.generation,
                },
                c,
            )
        })
    }

    /// Handles of every live connection.
    pub fn handles(&self) -> Vec<ConnHandle> {
        self.slab
            .iter()
            .map(|(i, c)| ConnHandle {
                index: i as u32,
                generation: c.generation,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ixn_proto::connection::ConnConfig;
    use std::net::IpAddr;
    use std::time::Instant;

    #[test]
    fn a_slab_entry_stays_small() {
        // Every idle connection pays for one (docs/BENCHMARKS.md, idle memory). The TLS
        // state is one boxed pointer (8 bytes; 104 and 64 before TLS). The admin API and
        // `on_duplicate` added 16 (the registered name, one pointer; its port and
        // registration time; 112 and 72 before).
        assert!(
            std::mem::size_of::<Conn>() <= 128,
            "Conn is {} bytes",
            std::mem::size_of::<Conn>()
        );
        assert!(
            std::mem::size_of::<Connection>() <= 88,
            "Connection is {} bytes",
            std::mem::size_of::<Connection>()
        );
    }

    #[test]
    fn stale_handle_never_reaches_the_reused_slot() {
        let mut c = Conns::default();
        let now = Instant::now();
        let peer = IpAddr::from([127, 0, 0, 1]);
        let conn = || Connection::accept(now, (peer, 1).into(), false, &ConnConfig::default()).0;
        let a = c.insert(conn(), -1);
        assert!(c.remove(a).is_some());
        let b = c.insert(conn(), -1);
        assert_eq!(a.index, b.index, "slot reused");
        assert!(c.get_mut(a).is_none(), "stale handle");
        assert!(
            c.remove(a).is_none(),
            "stale handle cannot remove the new occupant"
        );
        assert!(c.get_mut(b).is_some());
        assert_eq!(c.handles(), vec![b]);
    }
}
