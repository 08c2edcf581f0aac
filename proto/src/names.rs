//! What a connection needs of the process's name table, for `on_duplicate`
//! (docs/PROTOCOL.md §7): a key for every connection of the process, a holder of a name,
//! and the [`Names`] interface a registration claims and releases through. The table
//! itself (a process-wide, locked map) is the server's (`ixn::names::NameTable`); the
//! core only calls it, so it stays free of locks and threads.
//!
//! In a fleet (docs/PROTOCOL.md §13) a claim may not be decided at once: the table answers
//! [`Claim::Pending`], the registration waits (frames behind it wait too), and the engine
//! later hands the connection a [`Verdict`] carrying the [`Ticket`] the claim was made
//! with. The core never learns who decides or how.
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

/// How a claim stands once the table has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Entered: the registration is answered now.
    Done,
    /// Entered here, and waiting for an outside verdict (the fleet's name table): the
    /// registration is answered when the engine hands the connection its [`Verdict`].
    Pending,
}

/// What a waiting registration needs to be answered later; the table carries it to the
/// verdict untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The request's ReferenceId, echoed in its answer.
    pub reference_id: i32,
    /// Its ClientType's wire code.
    pub client_type: u8,
    /// A Proxy's logical client (not the connection's own registration).
    pub logical: bool,
    /// The keepalive its EventAck announces, in seconds (0: none; §12).
    pub keep_alive: u16,
}

/// The outside decision on a [`Claim::Pending`] claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Who claimed (its connection and ProxyClientId).
    pub holder: Holder,
    /// What the claim was made with.
    pub ticket: Ticket,
    /// `Ok`: the name is its; else the EventError that refuses the registration (14, 18).
    pub result: Result<(), ErrorCode>,
}

/// The process's table of held names, as the core uses it.
pub trait Names: Sync {
    /// `holder` registers `name` under `policy`: `Err(DuplicateClient)` when `reject`
    /// finds it held by another; under `replace`, the older holders of other connections
    /// are displaced (and closed by their workers). Under `allow` nothing is entered.
    /// `Ok(Claim::Pending)`: entered, and the registration waits for a [`Verdict`] made
    /// with `ticket`.
    fn claim(
        &self,
        name: &SharedName,
        policy: OnDuplicate,
        holder: Holder,
        ticket: Ticket,
    ) -> Result<Claim, ErrorCode>;
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
    pub fn claim(
        &self,
        name: &SharedName,
        policy: OnDuplicate,
        id: i32,
        ticket: Ticket,
    ) -> Result<Claim, ErrorCode> {
        self.table.claim(
            name,
            policy,
            Holder {
                conn: self.conn,
                id,
            },
            ticket,
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
