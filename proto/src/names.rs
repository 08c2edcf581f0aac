//! What a connection needs of the process's name table, for `on_duplicate`
//! (docs/PROTOCOL.md §7): a key for every connection of the process, a holder of a name,
//! and the [`Names`] interface a registration claims and releases through. The table
//! itself (a process-wide, locked map) is the server's (`ixn::names::NameTable`); the
//! core only calls it, so it stays free of locks and threads.
#![forbid(unsafe_code)]

use crate::protocol::ErrorCode;
use crate::registry::{OnDuplicate, SharedName};

/// One connection of the process, as long as it lives: its worker, slab slot and the
/// slot's generation (a later connection in the same slot has another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The worker that owns it.
    pub worker: u32,
    /// Its slot in that worker's slab.
    pub slot: u32,
    /// The slot's generation when it was accepted.
    pub generation: u32,
}

/// One holder of a name: a connection, and the ProxyClientId its registration got (its
/// own, or one of its logical clients').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The connection.
    pub conn: ConnKey,
    /// The registration's ProxyClientId.
    pub id: i32,
}

/// The process's table of held names, as the core uses it.
pub trait Names: Sync {
    /// `holder` registers `name` under `policy`: `Err(DuplicateClient)` when `reject`
    /// finds it held by another; under `replace`, the older holders of other connections
    /// are displaced (and closed by their workers). Under `allow` nothing is entered.
    fn claim(
        &self,
        name: &SharedName,
        policy: OnDuplicate,
        holder: Holder,
    ) -> Result<(), ErrorCode>;
    /// `holder` no longer holds `name` (it unregistered or closed); nothing if it was
    /// replaced meanwhile.
    fn release(&self, name: &str, holder: Holder);
}

/// The table as one connection sees it: what the session claims and releases with.
#[derive(Clone, Copy)]
pub struct Claims<'a> {
    /// The process's table.
    pub table: &'a dyn Names,
    /// The connection claiming.
    pub conn: ConnKey,
}

impl std::fmt::Debug for Claims<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Claims<'_> {
    /// See [`Names::claim`].
    pub fn claim(&self, name: &SharedName, policy: OnDuplicate, id: i32) -> Result<(), ErrorCode> {
        self.table.claim(
            name,
            policy,
            Holder {
                conn: self.conn,
                id,
            },
        )
    }

    /// See [`Names::release`].
    pub fn release(&self, name: &str, id: i32) {
        self.table.release(
            name,
            Holder {
                conn: self.conn,
                id,
            },
        );
    }
}
