//! Fuzz target: a whole `Connection` (optional PROXY header first, then the registration
//! session, frame deadline and closing once written) fed arbitrary byte streams cut into
//! reads, interleaved with its deadlines, the drain, an operator's kick and the engine's
//! flush. It must never panic, answer only with frames that decode, never answer once a
//! close is decided, keep `armed()` equal to the last timer change, never write more than
//! 16 EventErrors to a rejected connection, and give back every name and id it held once
//! it is gone.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ixn::connection::{Action, ConnConfig, Connection, Env, Notice};
use ixn::names::{Claims, ConnKey};
use ixn::protocol::{decode, Message};
use ixn::registry::Registry;
use ixn::session::{IdAllocator, Kick, State};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Parsed once: parsing per input took most of each run.
static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The embedded registry plus names under each `on_duplicate` policy.
const DUPLICATES: &str = "\n[[client]]\nname = \"Rej\"\ntypes = [\"MediaServer\", \"Proxy\"]\non_duplicate = \"reject\"\n\
[[client]]\nname = \"Rep\"\ntypes = [\"MediaServer\", \"Proxy\"]\non_duplicate = \"replace\"\n";

/// Control bytes at the start of a chunk (otherwise the chunk is stream bytes).
const KICK: u8 = 0xfc;
const DEADLINE: u8 = 0xfd;
const DRAIN: u8 = 0xfe;
const LATER: u8 = 0xff;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let registry = REGISTRY.get_or_init(|| {
        let text = format!("{}{DUPLICATES}", ixn::registry::EMBEDDED_REGISTRY);
        Registry::parse(&text, "fuzz").expect("the fuzz registry parses")
    });
    let table = common::Names::default();
    let claims = Claims {
        table: &table,
        conn: ConnKey {
            worker: 0,
            slot: 0,
            generation: 1,
        },
    };
    let mut ids = IdAllocator::default();
    // Every registration gets a keepalive of 1 s, so its deadline is fuzzed too.
    let mut config = ConnConfig::default();
    config.session.keep_alive = ixn::session::KeepAliveConfig {
        min: 1,
        max: 3600,
        default: 1,
    };
    let mut now = Instant::now();
    // Mode bit 0: a PROXY header is expected (the input must bring it, split anywhere);
    // bits 1..: the read size.
    let proxy = mode & 1 == 1;
    let read_size = usize::from(mode >> 1).max(1);
    let (mut c, _) = Connection::accept(
        now,
        (IpAddr::V4(Ipv4Addr::LOCALHOST), 40000).into(),
        proxy,
        &config,
    );
    let mut pending = Vec::new();
    let mut decided = false;
    let mut errors_when_rejected = 0usize;
    for chunk in data.chunks(read_size) {
        let mut out = Vec::new();
        let mut env = Env {
            registry,
            ids: &mut ids,
            config: &config,
            gate: None,
            names: Some(claims),
        };
        let was_rejected = c.session().state() == State::Rejected;
        let p = match chunk.first() {
            Some(&DEADLINE) => match c.armed() {
                Some(t) => c.on_deadline(now, t, &mut env, &mut out, |_| {}),
                None => continue,
            },
            Some(&DRAIN) => c.on_drain(now, &mut env, &mut out, |_| {}),
            Some(&KICK) => {
                let kick = Notice::Kick(Kick::Operator);
                c.on_notice(now, kick, &mut env, &mut out, |_| {})
            }
            Some(&LATER) => {
                now += Duration::from_millis(u64::from(chunk.len() as u8) * 40);
                continue;
            }
            _ => common::feed(&mut c, now, &mut pending, chunk, &mut env, &mut out),
        };
        common::check_timer(&c, &p);
        if decided {
            assert!(out.is_empty(), "answered after the close was decided");
        }
        let mut rest = &out[..];
        while !rest.is_empty() {
            let f = decode(rest, usize::MAX)
                .expect("answers decode")
                .expect("complete answers");
            if matches!(f.message, Message::EventError(_))
                && (was_rejected || c.session().state() == State::Rejected)
            {
                errors_when_rejected += 1;
            }
            rest = &rest[f.frame_len..];
        }
        match p.action {
            Action::Continue => {}
            Action::CloseNow(_) => break,
            Action::CloseAfterWrite => {
                decided = true;
                let _ = c.on_flushed(now, &config);
            }
        }
    }
    assert!(
        errors_when_rejected <= 16,
        "{errors_when_rejected} errors to a rejected connection"
    );
    c.release(&mut ids, Some(claims));
    assert!(
        table.is_empty(),
        "names left held after the connection is gone"
    );
    assert_eq!(ids.live(), 0, "ids left live after the connection is gone");
});
