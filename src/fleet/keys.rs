//! The fleet's keys and values in Redis (docs/PROTOCOL.md §13), spelled once: what the
//! servers write, what operators read with `redis-cli`, and how a holder is parsed back.
//!
//! * `<fleet>:instance:<id>`: a server's lease; its value is the server's start
//!   generation (a random token drawn at start), so a restart under the same
//!   `--fleet-instance` does not revive its predecessor's names.
//! * `<fleet>:instances`: a hash of the servers' descriptions (admin address, start time,
//!   clients), for `GET /v1/instances`; an entry whose lease is gone is dead and removed.
//! * `<fleet>:name:{<ClientName>}`: the holder of a name: `<instance> <generation>
//!   <connection> <ProxyClientId> <claimed at, Unix ms>`. The name is a Redis Cluster
//!   hash tag, so names spread over the cluster's slots, and every operation on a name
//!   touches that one key.
//! * `<fleet>:ban:{<address>}`: a ban, expiring with it; its value is `<until, Unix ms>
//!   <failures>`. `<fleet>:bans` indexes them (address → until) for a server that
//!   (re)connects.
//! * Channels: `<fleet>:to:<instance>` (what one server asks of another: a replaced
//!   name's holder, an operator's kick and its answer), `<fleet>:bans` (bans made and
//!   lifted).

use std::fmt::Write as _;

use ixn_proto::names::{ConnKey, Holder};

/// The keys and channels of one fleet, as seen by one server.
#[derive(Debug, Clone)]
pub struct Keys {
    fleet: String,
    /// This server's id.
    pub instance: String,
    /// This server's start generation.
    pub generation: u64,
}

impl Keys {
    /// The keys of fleet `fleet` for server `instance` started as `generation`.
    pub fn new(fleet: &str, instance: &str, generation: u64) -> Self {
        Self {
            fleet: fleet.into(),
            instance: instance.into(),
            generation,
        }
    }

    /// A server's lease.
    pub fn lease(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.fleet)
    }

    /// The hash describing the live servers.
    pub fn instances(&self) -> String {
        format!("{}:instances", self.fleet)
    }

    /// A name's holder.
    pub fn name(&self, name: &str) -> String {
        let mut s = String::new();
        self.write_name(&mut s, name);
        s
    }

    /// [`Keys::name`], written over `out`.
    pub fn write_name(&self, out: &mut String, name: &str) {
        out.clear();
        out.push_str(&self.fleet);
        out.push_str(":name:{");
        out.push_str(name);
        out.push('}');
    }

    /// The pattern of every name key (for operators' `SCAN`).
    pub fn name_pattern(&self) -> String {
        format!("{}:name:*", self.fleet)
    }

    /// A ban.
    pub fn ban(&self, address: &str) -> String {
        format!("{}:ban:{{{address}}}", self.fleet)
    }

    /// The index of bans.
    pub fn bans(&self) -> String {
        format!("{}:bans", self.fleet)
    }

    /// The channel of what is asked of server `instance`.
    pub fn to(&self, instance: &str) -> String {
        format!("{}:to:{instance}", self.fleet)
    }

    /// The channel of bans.
    pub fn ban_channel(&self) -> String {
        format!("{}:bans", self.fleet)
    }

    /// This server's generation as the lease holds it.
    pub fn generation_text(&self) -> String {
        self.generation.to_string()
    }

    /// What identifies `holder` in a name's value: everything but the claim time, so a
    /// release can compare it (with a trailing space: no holder is a prefix of another).
    pub fn holder_prefix(&self, holder: Holder) -> String {
        let mut s = String::with_capacity(48);
        self.write_holder_prefix(&mut s, holder);
        s
    }

    /// [`Keys::holder_prefix`], written over `out`.
    pub fn write_holder_prefix(&self, out: &mut String, holder: Holder) {
        let c = holder.conn;
        out.clear();
        let _ = write!(
            out,
            "{} {} {}-{}-{} {} ",
            self.instance, self.generation, c.worker, c.slot, c.generation, holder.id
        );
    }

    /// A name's value for `holder`, claimed at `claimed_ms` (Unix milliseconds).
    pub fn holder_value(&self, holder: Holder, claimed_ms: u64) -> String {
        let mut s = String::with_capacity(64);
        self.write_holder_value(&mut s, holder, claimed_ms);
        s
    }

    /// [`Keys::holder_value`], written over `out`.
    pub fn write_holder_value(&self, out: &mut String, holder: Holder, claimed_ms: u64) {
        self.write_holder_prefix(out, holder);
        let _ = write!(out, "{claimed_ms}");
    }
}

/// A name's holder as read back from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its server.
    pub instance: String,
    /// Its server's start generation.
    pub generation: u64,
    /// Its connection on that server.
    pub conn: ConnKey,
    /// Its registration's ProxyClientId.
    pub id: i32,
    /// When it was claimed (Unix ms): under `replace`, the newer claim wins a conflict.
    pub claimed_ms: u64,
}

impl Held {
    /// Parses a name's value; `None` if it is not one of ours.
    pub fn parse(value: &str) -> Option<Held> {
        let mut parts = value.split(' ');
        let instance = parts.next()?.to_string();
        let generation = parts.next()?.parse().ok()?;
        let mut conn = parts.next()?.split('-').map(str::parse::<u32>);
        let conn = ConnKey {
            worker: conn.next()?.ok()?,
            slot: conn.next()?.ok()?,
            generation: conn.next()?.ok()?,
        };
        let id = parts.next()?.parse().ok()?;
        let claimed_ms = parts.next()?.parse().ok()?;
        if parts.next().is_some() || instance.is_empty() {
            return None;
        }
        Some(Held {
            instance,
            generation,
            conn,
            id,
            claimed_ms,
        })
    }
}

/// A ban's value: until (Unix ms) and failures.
pub fn ban_value(until_ms: u64, failures: u32) -> String {
    format!("{until_ms} {failures}")
}

/// Parses a ban's value.
pub fn parse_ban(value: &str) -> Option<(u64, u32)> {
    let (until, failures) = value.split_once(' ')?;
    Some((until.parse().ok()?, failures.parse().ok()?))
}

/// What one server asks of another on its channel, or announces on the bans channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A newer registration under `replace` took the name this connection held.
    Replaced {
        /// The holder's server generation (a message for a predecessor is ignored).
        generation: u64,
        /// The connection.
        conn: ConnKey,
    },
    /// An operator closes this connection (`DELETE /v1/clients/ID` on another server);
    /// answer on `reply_to`'s channel with [`Message::Kicked`].
    Kick {
        /// The request, echoed in the answer.
        request: u64,
        /// The asking server.
        reply_to: String,
        /// The connection.
        conn: ConnKey,
    },
    /// The answer to a [`Message::Kick`]: whether a registered connection was there.
    Kicked {
        /// The request answered.
        request: u64,
        /// Found and told.
        found: bool,
    },
    /// A ban made on some server.
    Ban {
        /// The address.
        address: String,
        /// Until (Unix ms).
        until_ms: u64,
        /// Failures that caused it.
        failures: u32,
    },
    /// A ban lifted through some server's admin API.
    Unban {
        /// The address.
        address: String,
    },
}

fn conn_text(c: ConnKey) -> String {
    format!("{}-{}-{}", c.worker, c.slot, c.generation)
}

fn parse_conn(s: &str) -> Option<ConnKey> {
    let mut p = s.split('-').map(str::parse::<u32>);
    let k = ConnKey {
        worker: p.next()?.ok()?,
        slot: p.next()?.ok()?,
        generation: p.next()?.ok()?,
    };
    p.next().is_none().then_some(k)
}

impl Message {
    /// The message as published.
    pub fn encode(&self) -> String {
        match self {
            Message::Replaced { generation, conn } => {
                format!("replaced {generation} {}", conn_text(*conn))
            }
            Message::Kick {
                request,
                reply_to,
                conn,
            } => format!("kick {request} {reply_to} {}", conn_text(*conn)),
            Message::Kicked { request, found } => format!("kicked {request} {}", u8::from(*found)),
            Message::Ban {
                address,
                until_ms,
                failures,
            } => format!("ban {address} {until_ms} {failures}"),
            Message::Unban { address } => format!("unban {address}"),
        }
    }

    /// Parses a published message; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Message> {
        let mut p = s.split(' ');
        let m = match p.next()? {
            "replaced" => Message::Replaced {
                generation: p.next()?.parse().ok()?,
                conn: parse_conn(p.next()?)?,
            },
            "kick" => Message::Kick {
                request: p.next()?.parse().ok()?,
                reply_to: p.next()?.to_string(),
                conn: parse_conn(p.next()?)?,
            },
            "kicked" => Message::Kicked {
                request: p.next()?.parse().ok()?,
                found: p.next()? == "1",
            },
            "ban" => Message::Ban {
                address: p.next()?.to_string(),
                until_ms: p.next()?.parse().ok()?,
                failures: p.next()?.parse().ok()?,
            },
            "unban" => Message::Unban {
                address: p.next()?.to_string(),
            },
            _ => return None,
        };
        p.next().is_none().then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use crate::fleet::keys::*;

    fn holder() -> Holder {
        Holder {
            conn: ConnKey {
                worker: 1,
                slot: 22,
                generation: 333,
            },
            id: 7,
        }
    }

    #[test]
    fn a_holder_round_trips_and_its_prefix_is_not_anothers() {
        let k = Keys::new("ixn", "pod-a", 99);
        let v = k.holder_value(holder(), 1_700_000_000_123);
        assert_eq!(v, "pod-a 99 1-22-333 7 1700000000123");
        let h = Held::parse(&v).unwrap();
        assert_eq!(
            (
                h.instance.as_str(),
                h.generation,
                h.conn,
                h.id,
                h.claimed_ms
            ),
            ("pod-a", 99, holder().conn, 7, 1_700_000_000_123)
        );
        assert!(v.starts_with(&k.holder_prefix(holder())));
        let mut other = holder();
        other.id = 70;
        assert!(!k
            .holder_value(other, 1)
            .starts_with(&k.holder_prefix(holder())));
        for bad in [
            "",
            "a",
            "a 1 1-2 7 5",
            "a x 1-2-3 7 5",
            "a 1 1-2-3 7 5 extra",
        ] {
            assert_eq!(Held::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_are_hash_tagged_so_a_cluster_spreads_them() {
        let k = Keys::new("ixn", "a", 1);
        assert_eq!(k.name("Agent_7"), "ixn:name:{Agent_7}");
        assert_eq!(k.ban("10.0.0.1"), "ixn:ban:{10.0.0.1}");
        assert_eq!(k.lease("a"), "ixn:instance:a");
    }

    #[test]
    fn messages_round_trip() {
        let c = holder().conn;
        for m in [
            Message::Replaced {
                generation: 5,
                conn: c,
            },
            Message::Kick {
                request: 9,
                reply_to: "pod-b".into(),
                conn: c,
            },
            Message::Kicked {
                request: 9,
                found: true,
            },
            Message::Ban {
                address: "::1".into(),
                until_ms: 12,
                failures: 3,
            },
            Message::Unban {
                address: "10.1.2.3".into(),
            },
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(Message::decode("kick 1"), None);
        assert_eq!(parse_ban(&ban_value(5, 2)), Some((5, 2)));
    }
}
