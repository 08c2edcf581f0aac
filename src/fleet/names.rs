//! Names in Redis (docs/PROTOCOL.md §13): a batch of claims and releases, each decided and
//! answered. A batch holds at most one operation per name (the fleet thread keeps the
//! rest waiting, in order), so the batch may go to Redis in any grouping: to a primary as
//! one pipeline (one write, one round trip for the whole batch); to a Redis Cluster, as
//! one command per name, all in flight at once (each touches one key, so one slot).
//!
//! A claim's first command is all it needs unless the name is held: `reject` then checks
//! the holder's lease and takes the name over from a dead holder with a compare-and-set;
//! `replace` tells the holder it displaced, on whichever server. Both are rare, and run
//! after the batch's verdicts are out.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ixn_proto::names::{Holder, Ticket, Verdict};
use ixn_proto::protocol::ErrorCode;
use ixn_proto::registry::OnDuplicate;
use ixn_proto::session::Kick;
use redis::{RedisResult, Value};

use super::conn::{count_many, Conn};
use super::handle::Fleet;
use super::keys::{Held, Keys, Message};
use crate::config::FleetUnavailable;
use crate::control::{Command, Inboxes};

/// Deletes a name only if this holder still holds it (one key: a Cluster's slot). Sent by
/// its hash (`EVALSHA`: a release is ~40 bytes shorter than the script, and Redis does not
/// hash the script's text again for each one); a Redis that does not know the script yet
/// (just started, or a cluster node not asked before) answers `NOSCRIPT`, and that release
/// goes again with the text (`EVAL`), which teaches it the script.
const RELEASE_TEXT: &str = "local v = redis.call('GET', KEYS[1]) \
     if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then \
       return redis.call('DEL', KEYS[1]) end return 0";
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_TEXT));

/// Replaces a name's holder only if it is still the one read before.
pub(super) static SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
           redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
    )
});

/// A ClientName as the fleet thread keeps it: shared, so the books, the operations in
/// flight and the ones waiting behind them hold one copy (looked up by `&str`).
pub(super) type Name = Arc<str>;

/// A name this server holds in Redis (or would, once Redis is back).
#[derive(Debug, Clone)]
pub(super) struct Rec {
    pub holder: Holder,
    pub policy: OnDuplicate,
    pub claimed_ms: u64,
}

/// One operation on a name.
#[derive(Debug)]
pub(super) enum NameOp {
    /// A registration claims it.
    Claim {
        name: Name,
        rec: Rec,
        ticket: Ticket,
    },
    /// A holder gives it back.
    Release { name: Name, holder: Holder },
}

impl NameOp {
    pub(super) fn name(&self) -> &Name {
        match self {
            NameOp::Claim { name, .. } | NameOp::Release { name, .. } => name,
        }
    }

    /// The operation's one command (a release by its script's hash, or with its text).
    /// Sized once, its key and value written through one scratch string: a batch builds
    /// one per operation, and growing each argument by argument showed in profiles.
    fn command(&self, keys: &Keys, by_hash: bool, scratch: &mut String) -> redis::Cmd {
        let mut c = redis::Cmd::with_capacity(6, 192);
        match self {
            NameOp::Claim { name, rec, .. } => {
                c.arg("SET");
                keys.write_name(scratch, name);
                c.arg(scratch.as_str());
                keys.write_holder_value(scratch, rec.holder, rec.claimed_ms);
                c.arg(scratch.as_str());
                if rec.policy != OnDuplicate::Replace {
                    c.arg("NX");
                }
                c.arg("GET");
            }
            NameOp::Release { name, holder } => {
                if by_hash {
                    c.arg("EVALSHA").arg(RELEASE.get_hash());
                } else {
                    c.arg("EVAL").arg(RELEASE_TEXT);
                }
                c.arg(1);
                keys.write_name(scratch, name);
                c.arg(scratch.as_str());
                keys.write_holder_prefix(scratch, *holder);
                c.arg(scratch.as_str());
            }
        }
        c
    }
}

/// How an operation ended, for the fleet thread's books.
#[derive(Debug)]
pub(super) enum Finished {
    /// A claim: whether this server now holds the name (granted, or allowed while Redis
    /// did not answer).
    Claimed { name: Name, rec: Rec, kept: bool },
    /// A release; `done` false if Redis did not answer it (it is tried again).
    Released {
        name: Name,
        holder: Holder,
        done: bool,
    },
}

/// What a batch needs besides its operations.
pub(super) struct Batch {
    pub conn: Conn,
    pub keys: Keys,
    pub fleet: Arc<Fleet>,
    pub inboxes: Arc<Inboxes>,
    pub timeout: Duration,
}

/// Runs `ops` (one per name), delivers every claim's verdict, and says how each ended.
pub(super) async fn run(mut b: Batch, ops: Vec<NameOp>) -> Vec<Finished> {
    let t0 = Instant::now();
    let (first, failed) =
        match tokio::time::timeout(b.timeout, first_commands(&mut b.conn, &b.keys, &ops)).await {
            Ok(answers) => (answers, "error"),
            Err(_) => (vec![None; ops.len()], "timeout"),
        };
    let took = t0.elapsed();
    let mut finished = Vec::with_capacity(ops.len());
    let mut displaced = Vec::new();
    let mut held = Vec::new();
    // Claims and releases, answered and not: counted once per kind for the batch.
    let mut tally = [0u64; 4];
    for (op, answer) in ops.into_iter().zip(first) {
        let kind = usize::from(matches!(op, NameOp::Release { .. })) * 2;
        tally[kind + usize::from(answer.is_none())] += 1;
        match op {
            NameOp::Release { name, holder } => finished.push(Finished::Released {
                name,
                holder,
                done: answer.is_some(),
            }),
            NameOp::Claim { name, rec, ticket } => {
                let previous = match answer {
                    None => {
                        let kept = unavailable(&b.fleet, rec.holder, ticket, &name);
                        finished.push(Finished::Claimed { name, rec, kept });
                        continue;
                    }
                    Some(v) => redis::from_redis_value_ref::<Option<String>>(&v)
                        .ok()
                        .flatten(),
                };
                match (rec.policy, previous) {
                    (_, None) => grant(&b.fleet, &mut finished, name, rec, ticket),
                    (OnDuplicate::Replace, Some(cur)) => {
                        if let Some(old) = Held::parse(&cur) {
                            displaced.push(old);
                        }
                        grant(&b.fleet, &mut finished, name, rec, ticket);
                    }
                    (_, Some(cur)) => held.push((name, rec, ticket, cur)),
                }
            }
        }
    }
    for (i, n) in tally.into_iter().enumerate() {
        let op = if i < 2 { "claim" } else { "release" };
        count_many(op, if i % 2 == 0 { "ok" } else { failed }, took, n);
    }
    // Names held by another: the holder's lease decides (a dead one's name is taken over).
    for (name, rec, ticket, cur) in held {
        let value = b.keys.holder_value(rec.holder, rec.claimed_ms);
        let r = super::conn::timed("claim_held", b.timeout, async {
            if alive(&mut b.conn, &b.keys, &cur).await?.is_some() {
                return Ok(false);
            }
            let key = b.keys.name(&name);
            let swapped: i32 = SWAP
                .key(&key)
                .arg(&cur)
                .arg(&value)
                .invoke_async(&mut b.conn)
                .await?;
            Ok(swapped == 1)
        })
        .await;
        match r {
            Some(true) => grant(&b.fleet, &mut finished, name, rec, ticket),
            Some(false) => {
                b.fleet.deliver(Verdict {
                    holder: rec.holder,
                    ticket,
                    result: Err(ErrorCode::DuplicateClient),
                });
                finished.push(Finished::Claimed {
                    name,
                    rec,
                    kept: false,
                });
            }
            None => {
                let kept = unavailable(&b.fleet, rec.holder, ticket, &name);
                finished.push(Finished::Claimed { name, rec, kept });
            }
        }
    }
    for old in displaced {
        displace(&mut b.conn, &b.keys, &b.inboxes, &b.fleet, old, b.timeout).await;
    }
    finished
}

/// Each operation's first command: to a primary, one pipeline; to a cluster, each on its
/// own, all at once. `None` for an operation Redis did not answer, or answered with an
/// error; releases it answered `NOSCRIPT` go again with the script's text.
async fn first_commands(conn: &mut Conn, keys: &Keys, ops: &[NameOp]) -> Vec<Option<Value>> {
    let mut answers = send(conn, keys, ops.iter(), true).await;
    let unknown: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(&answers[i], Some(Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript)))
        .collect();
    if !unknown.is_empty() {
        let again = send(conn, keys, unknown.iter().map(|&i| &ops[i]), false).await;
        for (i, a) in unknown.into_iter().zip(again) {
            answers[i] = a;
        }
    }
    answers
        .into_iter()
        .map(|a| a.filter(|v| !matches!(v, Value::ServerError(_))))
        .collect()
}

/// Sends `ops`' commands: to a primary as one pipeline, to a cluster each on its own.
/// An error Redis answered stays in its place (`Value::ServerError`).
async fn send<'a>(
    conn: &mut Conn,
    keys: &Keys,
    ops: impl ExactSizeIterator<Item = &'a NameOp>,
    by_hash: bool,
) -> Vec<Option<Value>> {
    let n = ops.len();
    if let Conn::Cluster(_) = conn {
        let mut scratch = String::new();
        let all = ops.map(|op| {
            let mut c = conn.clone();
            let cmd = op.command(keys, by_hash, &mut scratch);
            async move {
                match cmd.query_async::<Value>(&mut c).await {
                    Ok(v) => Some(v),
                    Err(e) => e
                        .into_server_errors()
                        .and_then(|v| v.first().map(|(_, e)| Value::ServerError(e.clone()))),
                }
            }
        });
        return futures_util::future::join_all(all).await;
    }
    let mut p = redis::Pipeline::with_capacity(n);
    p.ignore_errors();
    let mut scratch = String::with_capacity(128);
    for op in ops {
        p.add_command(op.command(keys, by_hash, &mut scratch));
    }
    match p.query_async::<Vec<Value>>(conn).await {
        Ok(v) if v.len() == n => v.into_iter().map(Some).collect(),
        Ok(_) | Err(_) => vec![None; n],
    }
}

fn grant(fleet: &Fleet, finished: &mut Vec<Finished>, name: Name, rec: Rec, ticket: Ticket) {
    fleet.deliver(Verdict {
        holder: rec.holder,
        ticket,
        result: Ok(()),
    });
    finished.push(Finished::Claimed {
        name,
        rec,
        kept: true,
    });
}

/// A claim Redis did not decide: `fleet_unavailable` does. Whether the name is kept.
pub(super) fn unavailable(fleet: &Fleet, holder: Holder, ticket: Ticket, name: &str) -> bool {
    let result = match fleet.config.unavailable {
        FleetUnavailable::Allow => {
            tracing::warn!(
                name,
                "fleet: no answer in time; registered on this server's word"
            );
            Ok(())
        }
        FleetUnavailable::Refuse => Err(ErrorCode::FleetUnavailable),
    };
    fleet.deliver(Verdict {
        holder,
        ticket,
        result,
    });
    result.is_ok()
}

/// Whether `cur` (a name's value) names a live holder other than this server's own
/// stale entries: its server's lease holds its generation.
pub(super) async fn alive(conn: &mut Conn, keys: &Keys, cur: &str) -> RedisResult<Option<Held>> {
    let Some(h) = Held::parse(cur) else {
        return Ok(None);
    };
    if h.instance == keys.instance {
        // This server's table said the name was free: a holder of ours that Redis still
        // shows is gone (its release was lost), or of a predecessor.
        return Ok(None);
    }
    let lease: Option<String> = redis::cmd("GET")
        .arg(keys.lease(&h.instance))
        .query_async(conn)
        .await?;
    Ok((lease == Some(h.generation.to_string())).then_some(h))
}

/// The older holder a `replace` claim took the name from is told, wherever it is.
pub(super) async fn displace(
    conn: &mut Conn,
    keys: &Keys,
    inboxes: &Inboxes,
    fleet: &Fleet,
    old: Held,
    timeout: Duration,
) {
    if old.instance == keys.instance {
        if old.generation == keys.generation {
            // Ours: the process's table displaced it already unless it had lost track.
            if inboxes.post(
                old.conn.worker as usize,
                Command::Kick {
                    conn: old.conn,
                    kick: Kick::Replaced,
                    done: None,
                },
            ) {
                fleet.wake(old.conn.worker as usize);
            }
        }
        return;
    }
    let msg = Message::Replaced {
        generation: old.generation,
        conn: old.conn,
    };
    let _: Option<i64> = super::conn::timed(
        "publish",
        timeout,
        redis::cmd("PUBLISH")
            .arg(keys.to(&old.instance))
            .arg(msg.encode())
            .query_async(conn),
    )
    .await;
}
