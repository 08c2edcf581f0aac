//! The fleet thread: one Redis connection (a `ConnectionManager` for a primary, a cluster
//! connection for seed nodes; both multiplexed, both over RESP3 so that the channels'
//! messages arrive on the same connection), the lease, names, bans and the admin API's
//! fleet calls (docs/PROTOCOL.md §13).
//!
//! Operations on one name run one at a time, in the order workers posted them (a claim,
//! then its release), so a release can never overtake the claim it undoes; operations on
//! different names run concurrently and share round trips. Every operation is bounded by
//! `fleet_timeout`; a claim that Redis does not answer in time is decided by
//! `fleet_unavailable`. The names this server holds are kept here too, so that a lost
//! lease or an emptied Redis is followed by re-asserting them all.
//!
//! Over 600 lines on purpose: this is the fleet thread's one state and its one loop (what
//! runs on which name, the lease, re-asserting, settling conflicts, the channels'
//! messages); the parts that need no state are beside it (`names`, `calls`, `conn`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ixn_proto::names::{ConnKey, Holder};
use ixn_proto::registry::OnDuplicate;
use ixn_proto::session::Kick;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::calls;
use super::conn::{connect, count, jitter, timed, Conn};
use super::handle::{unix_ms, Fleet, Op};
use super::keys::{Keys, Message};
use super::names::{self, alive, displace, Finished, Name, NameOp, Rec, SWAP};
use crate::control::{Command, Inboxes};

/// Longest a release waits for claims to share a round trip with.
const RELEASE_DELAY: Duration = Duration::from_millis(1);

/// What the fleet thread needs of the server.
pub struct Context {
    /// The fleet's shared half.
    pub fleet: Arc<Fleet>,
    /// Workers' command inboxes (kicks of replaced holders and operators' kicks).
    pub inboxes: Arc<Inboxes>,
    /// Admission control, where fleet bans are applied.
    pub admission: Arc<crate::admission::Admission>,
    /// The admin API's address, for `GET /v1/instances`.
    pub admin: Option<std::net::SocketAddr>,
    /// When the server started (RFC 3339).
    pub started: String,
    /// Registered clients now.
    pub clients: Box<dyn Fn() -> u64 + Send>,
    /// The core to pin the fleet thread to, if any.
    pub core: Option<core_affinity::CoreId>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Starts the fleet thread.
pub fn spawn(ctx: Context) -> std::io::Result<()> {
    let Some(ops) = ctx
        .fleet
        .receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("ixn-fleet".into())
        .spawn(move || {
            if let Some(core) = ctx.core {
                core_affinity::set_for_current(core);
            }
            let fleet = ctx.fleet.clone();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(move || fleet.wake_delivered())
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("fleet: cannot start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(run(ctx, ops));
        })
        .map(drop)
}

/// What a task tells the loop when it ends.
enum Done {
    Connected(Conn),
    /// A batch of name operations ended.
    Names(Vec<Finished>),
    Renewed {
        ok: bool,
        lost: bool,
    },
    Conflict {
        name: Name,
        settled: bool,
    },
    /// A re-assert under `replace` found a newer holder elsewhere: ours is replaced.
    Displaced {
        name: Name,
        holder: Holder,
    },
}

struct State {
    ctx: Context,
    keys: Keys,
    conn: Option<Conn>,
    up: bool,
    held: HashMap<Name, Vec<Rec>>,
    /// Names with an operation in flight, and the operations waiting behind it.
    busy: HashMap<Name, VecDeque<NameOp>>,
    conflicts: HashSet<Name>,
    kicks: HashMap<u64, tokio::sync::oneshot::Sender<Option<bool>>>,
    next_request: u64,
    done: UnboundedSender<Done>,
    /// Releases held back to travel with the next claims (their names stay busy, so a
    /// claim of one of them waits behind it), and when they go anyway.
    deferred: Vec<NameOp>,
    deferred_until: Option<tokio::time::Instant>,
    /// Releases Redis did not answer: tried again each second while it answers.
    unreleased: Vec<(Name, Holder)>,
    /// The server exits: told once every name operation is done and the lease deleted.
    leaving: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn run(ctx: Context, mut ops: UnboundedReceiver<Op>) {
    let (done, mut done_rx) = unbounded_channel();
    let (push_tx, mut push_rx) = unbounded_channel();
    let keys = ctx.fleet.keys.clone();
    let cfg = ctx.fleet.config.clone();
    let mut s = State {
        keys,
        conn: None,
        up: false,
        held: HashMap::new(),
        busy: HashMap::new(),
        conflicts: HashSet::new(),
        kicks: HashMap::new(),
        next_request: 1,
        done,
        deferred: Vec::new(),
        deferred_until: None,
        unreleased: Vec::new(),
        leaving: None,
        ctx,
    };
    metrics::gauge!(crate::metrics::FLEET_UP).set(0.0);
    // Connect in the background, backing off with full jitter: servers that lost Redis
    // together do not come back in step.
    {
        let (cfg, keys, done) = (cfg.clone(), s.keys.clone(), s.done.clone());
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match connect(&cfg, &keys, push_tx.clone()).await {
                    Ok(c) => {
                        let _ = done.send(Done::Connected(c));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("fleet: cannot reach Redis: {e}");
                        tokio::time::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
    let mut renew = tokio::time::interval(cfg.lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settle = tokio::time::interval(Duration::from_secs(1));
    settle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deferred = s.deferred_until;
        tokio::select! {
            _ = tokio::time::sleep_until(deferred.unwrap_or_else(tokio::time::Instant::now)), if deferred.is_some() => {
                s.deferred_until = None;
                let ready = std::mem::take(&mut s.deferred);
                s.run_names(ready);
            }
            op = ops.recv() => match op {
                Some(op) => s.op(op),
                None => return,
            },
            Some(d) = done_rx.recv() => s.done(d),
            Some(p) = push_rx.recv() => s.push(p),
            _ = renew.tick() => s.renew(),
            _ = settle.tick() => s.settle(),
        }
    }
}

impl State {
    fn timeout(&self) -> Duration {
        self.ctx.fleet.config.timeout
    }

    fn op(&mut self, op: Op) {
        let mut ready = Vec::new();
        match op {
            Op::Batch(ops) => {
                for op in ops {
                    match op {
                        op @ (Op::Claim { .. } | Op::Release { .. }) => self.admit(op, &mut ready),
                        other => self.start(other),
                    }
                }
            }
            op @ (Op::Claim { .. } | Op::Release { .. }) => self.admit(op, &mut ready),
            other => self.start(other),
        }
        self.send_or_defer(ready);
    }

    /// Releases alone wait (at most [`RELEASE_DELAY`]) for claims to travel with: a
    /// registration's release then shares a round trip with others' claims.
    fn send_or_defer(&mut self, mut ready: Vec<NameOp>) {
        if ready.iter().any(|op| matches!(op, NameOp::Claim { .. })) {
            ready.append(&mut self.deferred);
            self.deferred_until = None;
            self.run_names(ready);
        } else if !ready.is_empty() {
            self.deferred.append(&mut ready);
            self.deferred_until
                .get_or_insert_with(|| tokio::time::Instant::now() + RELEASE_DELAY);
        }
    }

    /// A claim or release: ready to run if nothing runs on its name, else queued behind.
    fn admit(&mut self, op: Op, ready: &mut Vec<NameOp>) {
        let Some(op) = name_op(op) else { return };
        match self.busy.get_mut(&**op.name()) {
            Some(q) => q.push_back(op),
            None => {
                self.busy.insert(op.name().clone(), VecDeque::new());
                ready.push(op);
            }
        }
    }

    /// Runs one batch of name operations (one per name, each name marked busy).
    fn run_names(&mut self, ops: Vec<NameOp>) {
        if ops.is_empty() {
            return;
        }
        for op in &ops {
            if let NameOp::Release { name, holder } = op {
                if let Some(recs) = self.held.get_mut(name) {
                    recs.retain(|r| r.holder != *holder);
                    if recs.is_empty() {
                        self.held.remove(name);
                        self.conflicts.remove(name);
                    }
                }
            }
        }
        self.gauge();
        let Some(conn) = self.conn.clone() else {
            let fleet = &self.ctx.fleet;
            let finished = ops
                .into_iter()
                .map(|op| match op {
                    NameOp::Claim { name, rec, ticket } => {
                        count("claim", "unavailable", Duration::ZERO);
                        let kept = names::unavailable(fleet, rec.holder, ticket, &name);
                        Finished::Claimed { name, rec, kept }
                    }
                    NameOp::Release { name, holder } => Finished::Released {
                        name,
                        holder,
                        done: false,
                    },
                })
                .collect();
            let _ = self.done.send(Done::Names(finished));
            return;
        };
        let batch = names::Batch {
            conn,
            keys: self.keys.clone(),
            fleet: self.ctx.fleet.clone(),
            inboxes: self.ctx.inboxes.clone(),
            timeout: self.timeout(),
        };
        let done = self.done.clone();
        tokio::spawn(async move {
            let finished = names::run(batch, ops).await;
            let _ = done.send(Done::Names(finished));
        });
    }

    /// Starts `op` (for a name, that name is marked busy already).
    fn start(&mut self, op: Op) {
        match op {
            Op::Claim { .. } | Op::Release { .. } => {}
            Op::Ban {
                address,
                remaining,
                failures,
            } => {
                if let Some(conn) = self.conn.clone() {
                    let (keys, timeout) = (self.keys.clone(), self.timeout());
                    tokio::spawn(calls::ban(
                        conn, keys, timeout, address, remaining, failures,
                    ));
                }
            }
            Op::Unban { address } => {
                if let Some(conn) = self.conn.clone() {
                    let (keys, timeout) = (self.keys.clone(), self.timeout());
                    tokio::spawn(calls::unban(conn, keys, timeout, address));
                }
            }
            Op::WhoHolds { name, done } => {
                let Some(conn) = self.conn.clone() else {
                    let _ = done.send(Err("the fleet's Redis is not reachable".into()));
                    return;
                };
                let (keys, timeout) = (self.keys.clone(), self.timeout());
                let local = self
                    .held
                    .get(name.as_str())
                    .and_then(|r| r.last())
                    .map(|r| r.holder);
                tokio::spawn(async move {
                    let _ = done.send(calls::who_holds(conn, keys, timeout, name, local).await);
                });
            }
            Op::Instances { done } => {
                let Some(conn) = self.conn.clone() else {
                    let _ = done.send(Err("the fleet's Redis is not reachable".into()));
                    return;
                };
                let (keys, timeout) = (self.keys.clone(), self.timeout());
                tokio::spawn(async move {
                    let _ = done.send(calls::instances(conn, keys, timeout).await);
                });
            }
            Op::Batch(_) => {}
            Op::Leave { done } => {
                let ready = std::mem::take(&mut self.deferred);
                self.deferred_until = None;
                self.run_names(ready);
                self.leaving = Some(done);
                self.leave_if_idle();
            }
            Op::Kick {
                instance,
                conn: target,
                done,
            } => {
                let Some(mut conn) = self.conn.clone() else {
                    let _ = done.send(None);
                    return;
                };
                let request = self.next_request;
                self.next_request += 1;
                self.kicks.insert(request, done);
                let msg = Message::Kick {
                    request,
                    reply_to: self.keys.instance.clone(),
                    conn: target,
                };
                let (channel, timeout) = (self.keys.to(&instance), self.timeout());
                tokio::spawn(async move { calls::publish(&mut conn, timeout, channel, msg).await });
                // Unanswered requests are forgotten after a while (the caller has its own
                // timeout): see `settle`.
            }
        }
    }

    fn gauge(&self) {
        let n: usize = self.held.len();
        self.ctx.fleet.names_held.store(n as u64, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::FLEET_NAMES_HELD).set(n as f64);
    }

    fn set_up(&mut self, up: bool) {
        if self.up != up {
            if up {
                tracing::info!("fleet: Redis answers");
            } else {
                tracing::warn!(
                    "fleet: Redis does not answer; names are decided by --fleet-unavailable"
                );
            }
        }
        self.up = up;
        self.ctx.fleet.up.store(up, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::FLEET_UP).set(if up { 1.0 } else { 0.0 });
    }

    fn done(&mut self, d: Done) {
        match d {
            Done::Connected(c) => {
                self.conn = Some(c);
                self.renew();
                self.load_bans();
            }
            Done::Names(finished) => {
                let mut ready = Vec::new();
                for f in finished {
                    let name = match f {
                        Finished::Claimed { name, rec, kept } => {
                            if kept {
                                self.held.entry(name.clone()).or_default().push(rec);
                            }
                            name
                        }
                        Finished::Released { name, holder, done } => {
                            if !done {
                                // Left in Redis, it would keep the name from every other
                                // server while this one lives: tried again until it goes.
                                self.unreleased.push((name.clone(), holder));
                            }
                            name
                        }
                    };
                    self.next_into(&name, &mut ready);
                }
                self.gauge();
                if self.leaving.is_some() {
                    self.run_names(ready);
                    self.leave_if_idle();
                } else {
                    self.send_or_defer(ready);
                }
            }
            Done::Renewed { ok, lost } => {
                let was = self.up;
                self.set_up(ok);
                if ok && (lost || !was) {
                    self.reassert();
                    if !was {
                        self.load_bans();
                    }
                }
            }
            Done::Conflict { name, settled } => {
                if settled {
                    self.conflicts.remove(&name);
                } else if self.held.contains_key(&name) && self.conflicts.insert(name.clone()) {
                    metrics::counter!(crate::metrics::FLEET_CONFLICTS).increment(1);
                    tracing::warn!(
                        name = &*name,
                        "fleet: a name is held on two servers (reject keeps both until one closes)"
                    );
                }
                self.next(&name);
            }
            Done::Displaced { name, holder } => {
                self.kick_local(holder.conn, Kick::Replaced, None);
                if let Some(recs) = self.held.get_mut(&name) {
                    recs.retain(|r| r.holder != holder);
                    if recs.is_empty() {
                        self.held.remove(&name);
                    }
                }
                self.gauge();
                self.next(&name);
            }
        }
    }

    /// Once nothing runs on any name, the lease goes and the exit may proceed.
    fn leave_if_idle(&mut self) {
        if !self.busy.is_empty() {
            return;
        }
        let Some(done) = self.leaving.take() else {
            return;
        };
        let Some(mut conn) = self.conn.clone() else {
            let _ = done.send(());
            return;
        };
        let (keys, timeout) = (self.keys.clone(), self.timeout());
        tokio::spawn(async move {
            let _: Option<i64> = timed(
                "leave",
                timeout,
                redis::cmd("DEL")
                    .arg(keys.lease(&keys.instance))
                    .query_async(&mut conn),
            )
            .await;
            let _: Option<i64> = timed(
                "leave",
                timeout,
                redis::cmd("HDEL")
                    .arg(keys.instances())
                    .arg(&keys.instance)
                    .query_async(&mut conn),
            )
            .await;
            let _ = done.send(());
        });
    }

    /// The operation on `name` ended: the next one waiting starts.
    fn next(&mut self, name: &str) {
        let mut ready = Vec::new();
        self.next_into(name, &mut ready);
        self.run_names(ready);
    }

    /// The operation on `name` ended: the next one waiting joins `ready` (the name stays
    /// busy), or the name is free.
    fn next_into(&mut self, name: &str, ready: &mut Vec<NameOp>) {
        match self.busy.get_mut(name).map(VecDeque::pop_front) {
            Some(Some(op)) => ready.push(op),
            Some(None) => {
                self.busy.remove(name);
            }
            None => {}
        }
    }

    /// Renews the lease (and this server's description); a lease found missing (expired,
    /// or Redis restarted empty) is followed by re-asserting every name.
    fn renew(&mut self) {
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        let (keys, done, timeout) = (self.keys.clone(), self.done.clone(), self.timeout());
        let lease = self.ctx.fleet.config.lease;
        let desc = serde_json::json!({
            "instance": keys.instance,
            "admin": self.ctx.admin.map(|a| a.to_string()),
            "started_at": self.ctx.started,
            "clients": (self.ctx.clients)(),
            "generation": keys.generation_text(),
        })
        .to_string();
        tokio::spawn(async move {
            let r = timed("renew", timeout, async {
                let prev: Option<String> = redis::cmd("SET")
                    .arg(keys.lease(&keys.instance))
                    .arg(keys.generation_text())
                    .arg("PX")
                    .arg(lease.as_millis() as u64)
                    .arg("GET")
                    .query_async(&mut conn)
                    .await?;
                let _: i64 = redis::cmd("HSET")
                    .arg(keys.instances())
                    .arg(&keys.instance)
                    .arg(desc)
                    .query_async(&mut conn)
                    .await?;
                Ok(prev != Some(keys.generation_text()))
            })
            .await;
            let _ = done.send(Done::Renewed {
                ok: r.is_some(),
                lost: r.unwrap_or(false),
            });
        });
    }

    /// Re-asserts every name this server holds (after an outage, a lost lease or an
    /// emptied Redis).
    fn reassert(&mut self) {
        let names: Vec<(Name, Rec)> = self
            .held
            .iter()
            .filter_map(|(n, recs)| {
                recs.iter()
                    .max_by_key(|r| r.claimed_ms)
                    .map(|r| (n.clone(), r.clone()))
            })
            .collect();
        if !names.is_empty() {
            tracing::info!(
                names = names.len(),
                "fleet: re-asserting the names this server holds"
            );
        }
        for (name, rec) in names {
            if self.busy.contains_key(&name) {
                continue;
            }
            self.busy.insert(name.clone(), VecDeque::new());
            self.assert_one(name, rec);
        }
    }

    /// Puts `rec` back as `name`'s holder, settling a conflict as §13 says.
    fn assert_one(&mut self, name: Name, rec: Rec) {
        let Some(mut conn) = self.conn.clone() else {
            let _ = self.done.send(Done::Conflict {
                name,
                settled: true,
            });
            return;
        };
        let (keys, done, timeout) = (self.keys.clone(), self.done.clone(), self.timeout());
        let (inboxes, fleet) = (self.ctx.inboxes.clone(), self.ctx.fleet.clone());
        tokio::spawn(async move {
            let value = keys.holder_value(rec.holder, rec.claimed_ms);
            let key = keys.name(&name);
            let r = timed("reassert", timeout, async {
                let prev: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("NX")
                    .arg("GET")
                    .query_async(&mut conn)
                    .await?;
                let Some(cur) = prev else {
                    return Ok(Done::Conflict {
                        name: name.clone(),
                        settled: true,
                    });
                };
                if cur == value {
                    return Ok(Done::Conflict {
                        name: name.clone(),
                        settled: true,
                    });
                }
                let Some(other) = alive(&mut conn, &keys, &cur).await? else {
                    let _: i32 = SWAP
                        .key(&key)
                        .arg(&cur)
                        .arg(&value)
                        .invoke_async(&mut conn)
                        .await?;
                    return Ok(Done::Conflict {
                        name: name.clone(),
                        settled: true,
                    });
                };
                if rec.policy == OnDuplicate::Replace {
                    if rec.claimed_ms > other.claimed_ms {
                        let swapped: i32 = SWAP
                            .key(&key)
                            .arg(&cur)
                            .arg(&value)
                            .invoke_async(&mut conn)
                            .await?;
                        if swapped == 1 {
                            displace(&mut conn, &keys, &inboxes, &fleet, other, timeout).await;
                        }
                        return Ok(Done::Conflict {
                            name: name.clone(),
                            settled: swapped == 1,
                        });
                    }
                    return Ok(Done::Displaced {
                        name: name.clone(),
                        holder: rec.holder,
                    });
                }
                Ok(Done::Conflict {
                    name: name.clone(),
                    settled: false,
                })
            })
            .await;
            let _ = done.send(r.unwrap_or(Done::Conflict {
                name,
                settled: false,
            }));
        });
    }

    /// Every second: names held twice under `reject` are tried again (the survivor takes
    /// the name in Redis once the other holder is gone); unanswered kick requests expire;
    /// a server not connected yet counts as down.
    fn settle(&mut self) {
        if self.conn.is_none() {
            self.set_up(false);
        }
        let names: Vec<Name> = self.conflicts.iter().cloned().collect();
        for name in names {
            if self.busy.contains_key(&name) {
                continue;
            }
            let Some(rec) = self
                .held
                .get(&name)
                .and_then(|r| r.iter().max_by_key(|r| r.claimed_ms))
                .cloned()
            else {
                self.conflicts.remove(&name);
                continue;
            };
            self.busy.insert(name.clone(), VecDeque::new());
            self.assert_one(name, rec);
        }
        if self.up && !self.unreleased.is_empty() {
            let mut ready = Vec::new();
            for (name, holder) in std::mem::take(&mut self.unreleased) {
                let op = Op::Release {
                    name: std::sync::Arc::new(Box::from(&*name)),
                    holder,
                };
                self.admit(op, &mut ready);
            }
            self.run_names(ready);
        }
        // Kick requests older than this are answered "no answer" by their caller already.
        if self.kicks.len() > 1024 {
            self.kicks.clear();
        }
    }

    /// Loads the bans in force into admission control.
    fn load_bans(&mut self) {
        if !self.ctx.fleet.config.bans {
            return;
        }
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let (keys, timeout, admission) = (
            self.keys.clone(),
            self.timeout(),
            self.ctx.admission.clone(),
        );
        tokio::spawn(calls::load_bans(conn, keys, timeout, admission));
    }

    /// A message on one of this server's channels.
    fn push(&mut self, p: redis::PushInfo) {
        if p.kind == redis::PushKind::Disconnection {
            return;
        }
        if p.kind != redis::PushKind::Message || p.data.len() < 2 {
            return;
        }
        let Ok(text) = redis::from_redis_value_ref::<String>(&p.data[1]) else {
            return;
        };
        let Some(m) = Message::decode(&text) else {
            return;
        };
        match m {
            Message::Replaced { generation, conn } => {
                if generation == self.keys.generation {
                    self.kick_local(conn, Kick::Replaced, None);
                }
            }
            Message::Kick {
                request,
                reply_to,
                conn: target,
            } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.kick_local(target, Kick::Operator, Some(tx));
                let Some(mut conn) = self.conn.clone() else {
                    return;
                };
                let (keys, timeout) = (self.keys.clone(), self.timeout());
                tokio::spawn(async move {
                    let found = tokio::time::timeout(Duration::from_secs(2), rx)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(false);
                    let msg = Message::Kicked { request, found };
                    calls::publish(&mut conn, timeout, keys.to(&reply_to), msg).await;
                });
            }
            Message::Kicked { request, found } => {
                if let Some(done) = self.kicks.remove(&request) {
                    let _ = done.send(Some(found));
                }
            }
            Message::Ban {
                address,
                until_ms,
                failures,
            } => {
                if self.ctx.fleet.config.bans {
                    if let Ok(ip) = address.parse() {
                        calls::apply_ban(&self.ctx.admission, ip, until_ms, failures);
                    }
                }
            }
            Message::Unban { address } => {
                if self.ctx.fleet.config.bans {
                    if let Ok(ip) = address.parse() {
                        self.ctx.admission.lift(ip);
                    }
                }
            }
        }
    }

    /// Posts a kick to the worker holding `conn`, and wakes it.
    fn kick_local(
        &self,
        conn: ConnKey,
        kick: Kick,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    ) {
        if self
            .ctx
            .inboxes
            .post(conn.worker as usize, Command::Kick { conn, kick, done })
        {
            self.ctx.fleet.wake(conn.worker as usize);
        }
    }
}

/// A claim or release as the names' batches take it.
fn name_op(op: Op) -> Option<NameOp> {
    match op {
        Op::Claim {
            name,
            policy,
            holder,
            ticket,
        } => Some(NameOp::Claim {
            name: Name::from(&**name),
            rec: Rec {
                holder,
                policy,
                claimed_ms: unix_ms(),
            },
            ticket,
        }),
        Op::Release { name, holder } => Some(NameOp::Release {
            name: Name::from(&**name),
            holder,
        }),
        _ => None,
    }
}
