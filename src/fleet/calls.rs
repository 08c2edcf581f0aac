//! The fleet's calls that are not a registration's: bans made, lifted and loaded
//! (docs/PROTOCOL.md §13), and the admin API's fleet lookups (§10): who holds a name, and
//! which servers live.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ixn_proto::names::Holder;

use super::conn::{timed, Conn};
use super::handle::unix_ms;
use super::keys::{self, Held, Keys, Message};
use super::names::alive;

/// A ban made here: its key (expiring with it), its index entry, and the message that
/// applies it on every server.
pub(super) async fn ban(
    mut conn: Conn,
    keys: Keys,
    timeout: Duration,
    address: IpAddr,
    remaining: Duration,
    failures: u32,
) {
    let until = unix_ms() + remaining.as_millis() as u64;
    let addr = address.to_string();
    let msg = Message::Ban {
        address: addr.clone(),
        until_ms: until,
        failures,
    };
    let _: Option<()> = timed(
        "ban",
        timeout,
        redis::cmd("SET")
            .arg(keys.ban(&addr))
            .arg(keys::ban_value(until, failures))
            .arg("PX")
            .arg(remaining.as_millis().max(1) as u64)
            .query_async(&mut conn),
    )
    .await;
    let _: Option<i64> = timed(
        "ban",
        timeout,
        redis::cmd("HSET")
            .arg(keys.bans())
            .arg(&addr)
            .arg(until)
            .query_async(&mut conn),
    )
    .await;
    publish(&mut conn, timeout, keys.ban_channel(), msg).await;
}

/// A ban lifted here, everywhere.
pub(super) async fn unban(mut conn: Conn, keys: Keys, timeout: Duration, address: IpAddr) {
    let addr = address.to_string();
    for cmd in [
        redis::cmd("DEL").arg(keys.ban(&addr)).clone(),
        redis::cmd("HDEL").arg(keys.bans()).arg(&addr).clone(),
    ] {
        let _: Option<i64> = timed("unban", timeout, cmd.query_async(&mut conn)).await;
    }
    publish(
        &mut conn,
        timeout,
        keys.ban_channel(),
        Message::Unban { address: addr },
    )
    .await;
}

/// Publishes `msg` on `channel`.
pub(super) async fn publish(conn: &mut Conn, timeout: Duration, channel: String, msg: Message) {
    let _: Option<i64> = timed(
        "publish",
        timeout,
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(msg.encode())
            .query_async(conn),
    )
    .await;
}

/// Applies the bans in force (a server that connects, or reconnects after an outage);
/// ended ones leave the index.
pub(super) async fn load_bans(
    mut conn: Conn,
    keys: Keys,
    timeout: Duration,
    admission: std::sync::Arc<crate::admission::Admission>,
) {
    let all: Option<HashMap<String, u64>> = timed(
        "bans",
        timeout,
        redis::cmd("HGETALL")
            .arg(keys.bans())
            .query_async(&mut conn),
    )
    .await;
    let now = unix_ms();
    for (addr, until) in all.unwrap_or_default() {
        if until <= now {
            let _: Option<i64> = timed(
                "bans",
                timeout,
                redis::cmd("HDEL")
                    .arg(keys.bans())
                    .arg(&addr)
                    .query_async(&mut conn),
            )
            .await;
            continue;
        }
        let cur: Option<Option<String>> = timed(
            "bans",
            timeout,
            redis::cmd("GET")
                .arg(keys.ban(&addr))
                .query_async(&mut conn),
        )
        .await;
        if let (Ok(ip), Some((until, failures))) = (
            addr.parse(),
            cur.flatten().as_deref().and_then(keys::parse_ban),
        ) {
            apply_ban(&admission, ip, until, failures);
        }
    }
}

/// A fleet ban applied here, until `until_ms` (Unix).
pub(super) fn apply_ban(
    admission: &crate::admission::Admission,
    ip: std::net::IpAddr,
    until_ms: u64,
    failures: u32,
) {
    let left = until_ms.saturating_sub(unix_ms());
    if left == 0 {
        return;
    }
    admission.ban(ip, Instant::now() + Duration::from_millis(left), failures);
}

/// `GET /v1/names/NAME`: the live holder of `name` (its server and its admin id).
/// `local` is this server's own holder of it, if any.
pub(super) async fn who_holds(
    mut conn: Conn,
    keys: Keys,
    timeout: Duration,
    name: String,
    local: Option<Holder>,
) -> Result<Option<(String, String)>, String> {
    let r = timed("lookup", timeout, async {
        let cur: Option<String> = redis::cmd("GET")
            .arg(keys.name(&name))
            .query_async(&mut conn)
            .await?;
        let Some(cur) = cur else { return Ok(None) };
        let Some(h) = Held::parse(&cur) else {
            return Ok(None);
        };
        let live = if h.instance == keys.instance {
            h.generation == keys.generation && local.is_some_and(|l| l.conn == h.conn)
        } else {
            alive(&mut conn, &keys, &cur).await?.is_some()
        };
        Ok(live.then(|| {
            let c = h.conn;
            let id = format!(
                "{}-{}-{}-{}@{}",
                h.claimed_ms, c.worker, c.slot, c.generation, h.instance
            );
            (h.instance.clone(), id)
        }))
    })
    .await;
    r.ok_or_else(|| "the fleet's Redis did not answer".into())
}

/// `GET /v1/instances`: the live servers' descriptions; dead ones leave the index.
pub(super) async fn instances(
    mut conn: Conn,
    keys: Keys,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>, String> {
    let r = timed("instances", timeout, async {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.instances())
            .query_async(&mut conn)
            .await?;
        let mut live = Vec::new();
        for (id, desc) in all {
            let lease: Option<String> = redis::cmd("GET")
                .arg(keys.lease(&id))
                .query_async(&mut conn)
                .await?;
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&desc) else {
                continue;
            };
            let generation = v.get("generation").and_then(|g| g.as_str());
            match lease {
                Some(l) if Some(l.as_str()) == generation => {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("generation");
                    }
                    live.push(v);
                }
                None => {
                    let _: i64 = redis::cmd("HDEL")
                        .arg(keys.instances())
                        .arg(&id)
                        .query_async(&mut conn)
                        .await?;
                }
                Some(_) => {}
            }
        }
        live.sort_by(|a, b| a["instance"].as_str().cmp(&b["instance"].as_str()));
        Ok(live)
    })
    .await;
    r.ok_or_else(|| "the fleet's Redis did not answer".into())
}
