//! The fleet's shared half: what workers, the admin API and admission hand the fleet
//! thread ([`Op`]), the verdict inboxes it fills, and how it wakes a worker ([`Wake`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use ixn_proto::names::{Holder, Ticket, Verdict};
use ixn_proto::registry::{OnDuplicate, SharedName};

use super::keys;
use crate::config::FleetConfig;

/// What workers, the admin API and admission ask of the fleet thread.
#[derive(Debug)]
pub enum Op {
    /// A registration claims a name; its verdict goes to the holder's worker.
    Claim {
        /// The name.
        name: SharedName,
        /// `reject` or `replace`.
        policy: OnDuplicate,
        /// Who claims.
        holder: Holder,
        /// Carried back in the verdict.
        ticket: Ticket,
    },
    /// A holder gives its name back (only if it still holds it).
    Release {
        /// The name.
        name: SharedName,
        /// Who held it.
        holder: Holder,
    },
    /// A ban made here, for every server.
    Ban {
        /// The address.
        address: std::net::IpAddr,
        /// How long from now.
        remaining: std::time::Duration,
        /// Failures that caused it.
        failures: u32,
    },
    /// A ban lifted here, everywhere.
    Unban {
        /// The address.
        address: std::net::IpAddr,
    },
    /// `GET /v1/names/NAME`.
    WhoHolds {
        /// The name.
        name: String,
        /// The holder (instance, connection id), if a live server holds it.
        done: tokio::sync::oneshot::Sender<Result<Option<(String, String)>, String>>,
    },
    /// `GET /v1/instances`.
    Instances {
        /// The live servers' descriptions (JSON objects).
        done: tokio::sync::oneshot::Sender<Result<Vec<serde_json::Value>, String>>,
    },
    /// The server exits: what is queued and in flight on names finishes, then the lease is
    /// deleted (this server's names are free at once, not a lease later).
    Leave {
        /// Told when done.
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// What one worker queued in one turn of its loop ([`Fleet::queue`], [`Fleet::flush`]).
    Batch(Vec<Op>),
    /// `DELETE /v1/clients/ID` for a client of another server.
    Kick {
        /// The server holding it.
        instance: String,
        /// The connection there.
        conn: ixn_proto::names::ConnKey,
        /// Whether that server found it (`None`: it did not answer).
        done: tokio::sync::oneshot::Sender<Option<bool>>,
    },
}

/// How the fleet thread wakes a worker whose inbox it filled.
#[derive(Debug)]
pub enum Wake {
    /// An eventfd the worker's ring reads (io_uring).
    EventFd(std::fs::File),
    /// The poll's waker (epoll).
    Mio(mio::Waker),
}

impl Wake {
    fn wake(&self) {
        match self {
            Wake::EventFd(fd) => {
                use std::io::Write;
                // A full counter (never, at 2^64 - 1) or a closed worker: nothing to wake.
                let _ = (&*fd).write(&1u64.to_ne_bytes());
            }
            Wake::Mio(w) => {
                let _ = w.wake();
            }
        }
    }
}

/// One worker's inbox of verdicts.
#[derive(Debug, Default)]
struct Inbox {
    /// Verdicts wait for the worker.
    pending: AtomicBool,
    /// ... and it has not been woken for them yet ([`Fleet::wake_delivered`]).
    unwoken: AtomicBool,
    verdicts: Mutex<Vec<Verdict>>,
}

/// The fleet as the rest of the server sees it.
#[derive(Debug)]
pub struct Fleet {
    /// Settings.
    pub config: FleetConfig,
    /// This server's keys (its instance and start generation).
    pub keys: keys::Keys,
    ops: tokio::sync::mpsc::UnboundedSender<Op>,
    pub(super) receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Op>>>,
    inboxes: Box<[Inbox]>,
    wakes: Box<[OnceLock<Wake>]>,
    /// Redis answers (`ixn_fleet_up`).
    pub up: AtomicBool,
    /// Names this server holds in Redis (`ixn_fleet_names_held`).
    pub names_held: AtomicU64,
}

impl Fleet {
    /// The fleet of `config` for a server of `workers` workers; its thread starts with
    /// [`spawn`].
    pub fn new(config: FleetConfig, workers: usize) -> Self {
        let (ops, receiver) = tokio::sync::mpsc::unbounded_channel();
        let generation = start_generation();
        Self {
            keys: keys::Keys::new(&config.name, &config.instance, generation),
            config,
            ops,
            receiver: Mutex::new(Some(receiver)),
            inboxes: (0..workers).map(|_| Inbox::default()).collect(),
            wakes: (0..workers).map(|_| OnceLock::new()).collect(),
            up: AtomicBool::new(false),
            names_held: AtomicU64::new(0),
        }
    }

    /// Hands `op` to the fleet thread (never blocks; dropped only if the thread is gone,
    /// when every claim already waits for its deadline).
    pub fn post(&self, op: Op) {
        let _ = self.ops.send(op);
    }

    /// Queues `op` on this thread until its [`Fleet::flush`]: a worker's claims and
    /// releases of one turn of its loop reach the fleet thread together, which wakes once
    /// for them and sends them to Redis together. Only worker threads queue (the name
    /// table, called from their connections), and each flushes before it waits.
    pub fn queue(&self, op: Op) {
        BATCH.with(|b| b.borrow_mut().push(op));
    }

    /// Operations this thread has queued and not flushed.
    pub fn queued(&self) -> usize {
        BATCH.with(|b| b.borrow().len())
    }

    /// Hands the fleet thread what this thread queued.
    pub fn flush(&self) {
        let batch = BATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
        match batch.len() {
            0 => {}
            1 => self.post(batch.into_iter().next().unwrap_or(Op::Batch(Vec::new()))),
            _ => self.post(Op::Batch(batch)),
        }
    }

    /// Worker `worker`'s way to be woken.
    pub fn set_wake(&self, worker: usize, wake: Wake) {
        if let Some(w) = self.wakes.get(worker) {
            let _ = w.set(wake);
        }
    }

    /// Posts a verdict to its holder's worker, to be woken by [`Fleet::wake_delivered`]
    /// unless it was woken already and has not looked yet.
    pub(super) fn deliver(&self, v: Verdict) {
        let worker = v.holder.conn.worker as usize;
        let Some(inbox) = self.inboxes.get(worker) else {
            return;
        };
        inbox
            .verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(v);
        if !inbox.pending.swap(true, Ordering::AcqRel) {
            inbox.unwoken.store(true, Ordering::Release);
        }
    }

    /// Wakes every worker whose inbox was filled since it was last woken. The fleet thread
    /// calls it just before it sleeps: a batch's verdicts then wake each worker once, after
    /// the last of them, instead of the first verdict waking (and, on a shared core,
    /// yielding the core to) a worker that would take the rest on a wake of their own.
    pub fn wake_delivered(&self) {
        for (worker, inbox) in self.inboxes.iter().enumerate() {
            if inbox.unwoken.swap(false, Ordering::AcqRel) {
                self.wake(worker);
            }
        }
    }

    /// Wakes worker `worker`.
    pub fn wake(&self, worker: usize) {
        if let Some(w) = self.wakes.get(worker).and_then(OnceLock::get) {
            w.wake();
        }
    }

    /// The verdicts posted to `worker` since it last looked.
    pub fn take(&self, worker: usize) -> Vec<Verdict> {
        match self.inboxes.get(worker) {
            Some(i) if i.pending.swap(false, Ordering::AcqRel) => {
                std::mem::take(&mut *i.verdicts.lock().unwrap_or_else(|e| e.into_inner()))
            }
            _ => Vec::new(),
        }
    }
}

thread_local! {
    /// A worker's claims and releases of the current turn of its loop.
    static BATCH: std::cell::RefCell<Vec<Op>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A random start generation: a restarted server under the same instance id is another
/// holder to the fleet.
fn start_generation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() >> 1
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
