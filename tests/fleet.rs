//! A fleet of servers sharing names and bans through a real Redis (docs/PROTOCOL.md §13),
//! over real sockets, on both engines: `reject` and `replace` across servers, names given
//! back on every close path, a killed server's names freed after its lease, Redis stopped
//! (each `fleet_unavailable`) and restarted empty, bans shared, the admin API's fleet
//! calls; and the core of it once more against a three-node Redis Cluster.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::redis::{Cluster, Redis};
use common::*;

const REGISTRY: &str = r#"
[[client]]
name = "Rej"
types = ["MediaServer", "Proxy"]
on_duplicate = "reject"

[[client]]
name = "Rep"
types = ["MediaServer"]
on_duplicate = "replace"

[[client]]
name = "All"
types = ["MediaServer"]
"#;

fn registry(dir: &Path) -> PathBuf {
    let p = dir.join("registry.toml");
    std::fs::write(&p, REGISTRY).unwrap();
    p
}

/// A server of the fleet at `urls`, named `instance`, with an admin API; waits until the
/// fleet is up.
fn member(urls: &[String], instance: &str, dir: &Path, extra: &[&str]) -> Server {
    let reg = registry(dir);
    let mut args: Vec<String> = vec![
        "--registry".into(),
        reg.display().to_string(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--fleet-instance".into(),
        instance.into(),
    ];
    for u in urls {
        args.extend(["--fleet-redis".into(), u.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    assert_eq!(
        s.wait_metric("ixn_fleet_up", 1.0),
        1.0,
        "{instance}: fleet up"
    );
    s
}

/// Registers `name` on a new connection to `s`: the connection and its answer.
fn register(s: &Server, rid: i32, name: &str) -> (Client, Option<Ans>) {
    let mut c = s.connect();
    c.send(&rrc(rid, name, 1, None));
    let a = c.answer();
    (c, a)
}

/// Polls `f` until it holds or `within` passes; the time it took.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// `name` registers on `s` (and is given back), and the release has reached `redis`: the
/// next claim, on any server, finds it free.
fn free_everywhere(s: &Server, redis: &Redis, name: &str) {
    eventually("free", Duration::from_secs(3), || free_on(s, name));
    let key = format!("ixn:name:{{{name}}}");
    eventually("released in Redis", Duration::from_secs(3), || {
        redis.cli(&["EXISTS", &key]).trim() == "0"
    });
}

/// `name` can be registered on `s` now (and is given back at once).
fn free_on(s: &Server, name: &str) -> bool {
    let (mut c, a) = register(s, 99, name);
    let ok = matches!(a, Some(Ans::Ack { .. }));
    if ok {
        c.send(&unreg(100, None));
        let _ = c.answer();
    }
    ok
}

fn is_ack(a: &Option<Ans>) -> bool {
    matches!(a, Some(Ans::Ack { .. }))
}

each_engine! {
    // §13 Names, `reject`: a name held on one server is refused on another (14), and is
    // free again once its holder goes, whichever way it goes.
    fn reject_holds_across_servers_and_every_close_path_gives_the_name_back() {
        if !common::redis::available("reject across servers") {
            return;
        }
        let dir = test_dir("fleet-reject");
        let redis = Redis::start(&dir);
        let urls = [redis.url()];
        let a = member(&urls, "a", &dir, &["--frame-timeout", "300ms"]);
        let b = member(&urls, "b", &dir, &[]);

        type Close = fn(&Server, Client);
        let paths: [(&str, Close); 5] = [
            ("peer close", |_, c| drop(c)),
            ("reset", |_, c| {
                socket2::SockRef::from(&c.s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(c);
            }),
            ("unregister", |_, mut c| {
                c.send(&unreg(7, None));
                assert_eq!(c.answer(), Some(ack(7, None)));
                assert!(c.read_raw().is_none());
            }),
            ("operator kick", |s, mut c| {
                let (_, body) = s.admin("GET", "/v1/clients?name=Rej", None);
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let id = v["clients"][0]["id"].as_str().unwrap().to_string();
                assert!(id.ends_with("@a"), "a fleet's ids name their server: {id}");
                assert_eq!(s.admin("DELETE", &format!("/v1/clients/{id}"), None).0, 204);
                assert_eq!(c.answer(), Some(err(0, 15)));
            }),
            ("frame deadline", |_, mut c| {
                // Half a frame, then silence: closed at --frame-timeout.
                c.send(&[0, 0, 0, 20, 0]);
                assert!(c.read_raw().is_none());
            }),
        ];
        for (how, close) in paths {
            let (held, ans) = register(&a, 1, "Rej");
            assert!(is_ack(&ans), "{how}: {ans:?}");
            let (_, refused) = register(&b, 2, "Rej");
            assert_eq!(refused, Some(err(2, 14)), "{how}: the other server refuses");
            close(&a, held);
            let took = eventually(how, Duration::from_secs(3), || free_on(&b, "Rej"));
            eprintln!("{how}: the name was free on the other server after {took:?}");
            // b gave it back (free_on unregisters): a can take it again.
            eventually(how, Duration::from_secs(3), || free_on(&a, "Rej"));
        }
        // Releases go by the script's hash: a fresh Redis answers the first NOSCRIPT and
        // is taught the script by its text (one EVAL), every later one is an EVALSHA.
        let stats = redis.cli(&["INFO", "commandstats"]);
        let calls = |cmd: &str| -> u64 {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
                .and_then(|v| v.split(',').next()?.parse().ok())
                .unwrap_or(0)
        };
        assert!(
            calls("eval") <= 2 && calls("evalsha") >= 8,
            "releases by hash, not by text: {stats}"
        );
        // `allow` names never touch Redis.
        let (_c1, x) = register(&a, 3, "All");
        let (_c2, y) = register(&b, 4, "All");
        assert!(is_ack(&x) && is_ack(&y));
        assert_eq!(redis.cli(&["EXISTS", "ixn:name:{All}"]).trim(), "0");
        // The drain gives names back too.
        let (_held, ans) = register(&a, 5, "Rej");
        assert!(is_ack(&ans));
        assert_eq!(register(&b, 6, "Rej").1, Some(err(6, 14)));
        a.signal("TERM");
        eventually("drain", Duration::from_secs(5), || free_on(&b, "Rej"));
        // A clean exit takes its lease with it: its names are free at once, not a lease later.
        let mut a = a;
        assert!(a.child.wait().unwrap().success());
        assert_eq!(redis.cli(&["EXISTS", "ixn:instance:a"]).trim(), "0");
        assert_eq!(redis.cli(&["EXISTS", "ixn:instance:b"]).trim(), "1");
    }

    // §13 Names, `replace`: the newer registration on another server is acknowledged and
    // the older holder gets EventError{0, 15} within a second, then is closed.
    fn replace_across_servers_tells_the_older_holder() {
        if !common::redis::available("replace across servers") {
            return;
        }
        let dir = test_dir("fleet-replace");
        let redis = Redis::start(&dir);
        let urls = [redis.url()];
        let a = member(&urls, "a", &dir, &[]);
        let b = member(&urls, "b", &dir, &[]);
        for round in 0..3 {
            let (mut older, ans) = register(&a, 1, "Rep");
            assert!(is_ack(&ans), "{ans:?}");
            let t0 = Instant::now();
            let (_newer, ans) = register(&b, 2, "Rep");
            assert!(is_ack(&ans), "{ans:?}");
            assert_eq!(older.answer(), Some(err(0, 15)), "round {round}");
            let took = t0.elapsed();
            assert!(took < Duration::from_secs(1), "told after {took:?}");
            assert!(older.read_raw().is_none(), "closed once written");
            eprintln!("round {round}: the older holder was told {took:?} after the newer registered");
            // The newer one holds the name in Redis.
            let v = redis.cli(&["GET", "ixn:name:{Rep}"]);
            assert!(v.starts_with("b "), "{v}");
        }
    }

    // Over TLS the waiting registration's answer is encrypted like any other, and the
    // frames pipelined behind it are answered after it, in order.
    fn a_tls_registration_waits_for_the_fleet_too() {
        if !common::redis::available("fleet over TLS") {
            return;
        }
        use std::io::{Read, Write};
        let dir = test_dir("fleet-tls");
        let redis = Redis::start(&dir);
        let urls = [redis.url()];
        let (cert, key) = self_signed();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let a = member(
            &urls,
            "a",
            &dir,
            &[
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert_path.to_str().unwrap(),
                "--tls-key",
                key_path.to_str().unwrap(),
            ],
        );
        let b = member(&urls, "b", &dir, &[]);
        let mut t = tls_open(a.tls_addr.unwrap(), &tls_client(&cert));
        // A registration and an unregistration in one record.
        let script = [rrc(1, "Rej", 1, None), unreg(2, None)].concat();
        t.write_all(&script).unwrap();
        let mut bytes = Vec::new();
        let _ = t.read_to_end(&mut bytes);
        let first = decode_answer(&bytes[..26]);
        assert!(matches!(first, Ans::Ack { rid: 1, .. }), "{first:?}");
        assert_eq!(decode_answer(&bytes[26..]), ack(2, None));
        // Unregistered, the name is free on the other server.
        free_everywhere(&b, &redis, "Rej");
        // A close_notify right behind a waiting registration: answered first, then closed.
        let mut t = tls_open(a.tls_addr.unwrap(), &tls_client(&cert));
        t.write_all(&rrc(3, "Rej", 1, None)).unwrap();
        t.conn.send_close_notify();
        t.flush().unwrap();
        let mut bytes = Vec::new();
        let _ = t.read_to_end(&mut bytes);
        assert!(bytes.len() >= 26, "{bytes:?}");
        assert!(matches!(decode_answer(&bytes[..26]), Ans::Ack { rid: 3, .. }));
        eventually("released", Duration::from_secs(3), || free_on(&b, "Rej"));
    }

    // A client that half-closes right behind its registration still gets the answer the
    // fleet decided (and its name back once the server closes).
    fn a_half_close_behind_a_waiting_registration_still_gets_its_answer() {
        if !common::redis::available("half-close while waiting") {
            return;
        }
        let dir = test_dir("fleet-half-close");
        let redis = Redis::start(&dir);
        let urls = [redis.url()];
        let a = member(&urls, "a", &dir, &[]);
        let b = member(&urls, "b", &dir, &[]);
        for round in 0..20 {
            let mut c = a.connect();
            c.send(&rrc(round, "Rej", 1, None));
            c.s.shutdown(std::net::Shutdown::Write).unwrap();
            let got = c.answer();
            assert!(matches!(got, Some(Ans::Ack { rid, .. }) if rid == round), "round {round}: {got:?}");
            assert!(c.read_raw().is_none(), "closed after the answer");
            free_everywhere(&b, &redis, "Rej");
        }
    }

    // §13 Liveness: a server killed with SIGKILL cannot release; its names are free once
    // its lease has lapsed, not before.
    fn a_killed_server_frees_its_names_after_its_lease() {
        if !common::redis::available("killed server") {
            return;
        }
        let dir = test_dir("fleet-kill");
        let redis = Redis::start(&dir);
        let urls = [redis.url()];
        let mut a = member(&urls, "a", &dir, &["--fleet-lease", "1500ms"]);
        let b = member(&urls, "b", &dir, &["--fleet-lease", "1500ms"]);
        let (_held, ans) = register(&a, 1, "Rej");
        assert!(is_ack(&ans));
        a.child.kill().unwrap();
        let killed = Instant::now();
        assert_eq!(register(&b, 2, "Rej").1, Some(err(2, 14)), "the lease still holds");
        eventually("lease lapse", Duration::from_secs(5), || free_on(&b, "Rej"));
        let after = killed.elapsed();
        assert!(after >= Duration::from_millis(900), "freed too early: {after:?}");
        eprintln!("freed {after:?} after the SIGKILL (lease 1.5 s)");
        // A restarted server under the same id does not revive its predecessor's names.
        let (_h, ans) = register(&b, 3, "Rej");
        assert!(is_ack(&ans));
        let a2 = member(&urls, "a", &dir, &["--fleet-lease", "1500ms"]);
        assert_eq!(register(&a2, 4, "Rej").1, Some(err(4, 14)));
    }

    // §13 When Redis does not answer: `refuse` answers 18 (not a failure toward a ban),
    // `allow` registers on the server's word; `ixn_fleet_up` says so. Redis back, empty:
    // every server re-asserts the names it holds.
    fn redis_stopped_and_restarted_empty() {
        if !common::redis::available("redis stopped") {
            return;
        }
        let dir = test_dir("fleet-outage");
        let mut redis = Redis::start(&dir);
        let urls = [redis.url()];
        let refuse = member(
            &urls,
            "refuse",
            &dir,
            &["--fleet-unavailable", "refuse", "--fleet-timeout", "200ms", "--fleet-lease", "900ms"],
        );
        let allow = member(
            &urls,
            "allow",
            &dir,
            &["--fleet-timeout", "200ms", "--fleet-lease", "900ms"],
        );
        let (_kept, ans) = register(&allow, 1, "Rep");
        assert!(is_ack(&ans));
        redis.stop();
        eventually("fleet down", Duration::from_secs(5), || {
            refuse.metric("ixn_fleet_up") == 0.0 && allow.metric("ixn_fleet_up") == 0.0
        });
        let t0 = Instant::now();
        let (_c, ans) = register(&refuse, 2, "Rej");
        assert_eq!(ans, Some(err(2, 18)));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let (_held_while_down, ans) = register(&allow, 3, "Rej");
        assert!(is_ack(&ans), "allow registers on this server's word: {ans:?}");
        // `allow` names do not wait for Redis at all.
        assert!(is_ack(&register(&refuse, 4, "All").1));
        // Back, and empty: both names `allow` holds are asserted again.
        redis.restart();
        eventually("fleet up", Duration::from_secs(10), || {
            refuse.metric("ixn_fleet_up") == 1.0 && allow.metric("ixn_fleet_up") == 1.0
        });
        eventually("re-asserted", Duration::from_secs(5), || {
            redis.cli(&["GET", "ixn:name:{Rej}"]).starts_with("allow ")
                && redis.cli(&["GET", "ixn:name:{Rep}"]).starts_with("allow ")
        });
        assert_eq!(register(&refuse, 5, "Rej").1, Some(err(5, 14)));
    }

    // A release Redis did not answer is tried again: Redis went down holding the name
    // (saved to disk) and came back with it, after its holder had closed. Left there, the
    // name would stay held, for every other server, by a connection long gone.
    fn a_release_redis_missed_is_tried_again() {
        if !common::redis::available("missed release") {
            return;
        }
        let dir = test_dir("fleet-missed-release");
        let mut redis = Redis::start(&dir);
        let urls = [redis.url()];
        let a = member(&urls, "a", &dir, &["--fleet-timeout", "200ms"]);
        let b = member(&urls, "b", &dir, &[]);
        let (held, ans) = register(&a, 1, "Rej");
        assert!(is_ack(&ans));
        assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
        redis.stop();
        drop(held);
        eventually("release failed", Duration::from_secs(5), || {
            a.metric(r#"ixn_fleet_requests_total{op="release",result="error"}"#)
                + a.metric(r#"ixn_fleet_requests_total{op="release",result="timeout"}"#)
                >= 1.0
        });
        // Back with the name still held by the gone connection.
        redis.restart();
        assert!(redis.cli(&["GET", "ixn:name:{Rej}"]).starts_with("a "));
        let took = eventually("released after all", Duration::from_secs(5), || {
            free_on(&b, "Rej")
        });
        eprintln!("the missed release went through {took:?} after Redis was back");
    }

    // §13 Bans: made on one server, refused on another within a second; lifted through
    // any server's admin API, lifted everywhere.
    fn a_ban_on_one_server_is_refused_on_another() {
        if !common::redis::available("fleet bans") {
            return;
        }
        let dir = test_dir("fleet-bans");
        let redis = Redis::start(&dir);
        let urls = [redis.url()];
        let ban = [
            "--ban-filter",
            "false",
            "--ban-failures",
            "2",
            "--ban-duration",
            "60s",
        ];
        let a = member(&urls, "a", &dir, &ban);
        let b = member(&urls, "b", &dir, &ban);
        for rid in 1..=2 {
            let mut c = connect_from("127.0.0.77", a.addr);
            c.send(&rrc(rid, "Nobody", 1, None));
            assert_eq!(c.answer(), Some(err(rid, 2)));
        }
        let took = eventually("ban shared", Duration::from_secs(1), || {
            b.admin("GET", "/v1/bans", None).1.contains("127.0.0.77")
        });
        eprintln!("the ban applied on the other server after {took:?}");
        let mut c = connect_from("127.0.0.77", b.addr);
        assert_eq!(c.answer(), Some(err(0, 16)));
        assert_eq!(redis.cli(&["EXISTS", "ixn:ban:{127.0.0.77}"]).trim(), "1");
        let (_, body) = b.admin("GET", "/v1/bans", None);
        assert!(body.contains("127.0.0.77"), "{body}");
        // Lifted on b: lifted on a too.
        assert_eq!(b.admin("DELETE", "/v1/bans/127.0.0.77", None).0, 204);
        eventually("ban lifted everywhere", Duration::from_secs(2), || {
            !a.admin("GET", "/v1/bans", None).1.contains("127.0.0.77")
        });
        let mut c = connect_from("127.0.0.77", a.addr);
        c.send(&rrc(9, "All", 1, None));
        assert!(matches!(c.answer(), Some(Ans::Ack { rid: 9, .. })));
        assert_eq!(redis.cli(&["EXISTS", "ixn:ban:{127.0.0.77}"]).trim(), "0");
    }

    // §10 in a fleet: who holds a name, which servers live, and a kick through any server.
    fn the_admin_api_sees_the_fleet() {
        if !common::redis::available("fleet admin") {
            return;
        }
        let dir = test_dir("fleet-admin");
        let redis = Redis::start(&dir);
        let urls = [redis.url()];
        let a = member(&urls, "a", &dir, &[]);
        let b = member(&urls, "b", &dir, &[]);
        let (mut held, ans) = register(&a, 1, "Rej");
        assert!(is_ack(&ans));
        let (code, body) = b.admin("GET", "/v1/names/Rej", None);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((v["name"].as_str(), v["instance"].as_str()), (Some("Rej"), Some("a")));
        assert_eq!(b.admin("GET", "/v1/names/Nobody", None).0, 404);
        let (code, body) = a.admin("GET", "/v1/instances", None);
        assert_eq!(code, 200, "{body}");
        let v2: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> = v2["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["instance"].as_str())
            .collect();
        assert_eq!(names, ["a", "b"], "{body}");
        assert_eq!(
            v2["instances"][0]["admin"].as_str(),
            Some(a.admin.unwrap().to_string().as_str())
        );
        // The id from the name table closes the client through the other server.
        let id = v["id"].as_str().unwrap();
        assert_eq!(b.admin("DELETE", &format!("/v1/clients/{id}"), None).0, 204);
        assert_eq!(held.answer(), Some(err(0, 15)));
        assert_eq!(b.admin("DELETE", &format!("/v1/clients/{id}"), None).0, 404);
        assert_eq!(b.admin("DELETE", "/v1/clients/1-0-1-1@nowhere", None).0, 404);
    }
}

/// The same promises against a three-node Redis Cluster: names spread over its slots, and
/// every operation touches one key.
#[test]
fn a_redis_cluster_serves_the_fleet_too() {
    if !common::redis::available("redis cluster") {
        return;
    }
    let dir = test_dir("fleet-cluster");
    let cluster = Cluster::start(&dir);
    let urls = cluster.urls();
    let a = member(&urls, "a", &dir, &[]);
    let b = member(&urls, "b", &dir, &[]);
    let (held, ans) = register(&a, 1, "Rej");
    assert!(is_ack(&ans), "{ans:?}");
    assert_eq!(register(&b, 2, "Rej").1, Some(err(2, 14)));
    drop(held);
    eventually("released", Duration::from_secs(3), || free_on(&b, "Rej"));
    let (mut older, ans) = register(&a, 3, "Rep");
    assert!(is_ack(&ans));
    let (_newer, ans) = register(&b, 4, "Rep");
    assert!(is_ack(&ans));
    assert_eq!(older.answer(), Some(err(0, 15)));
    assert!(older.read_raw().is_none(), "closed once written");
    assert_eq!(a.metric("ixn_fleet_up"), 1.0);
}

/// A registry of `n` names under `reject` for each of `prefixes` (`<prefix><i>`).
fn many_names(dir: &Path, prefixes: &[&str], n: usize) -> PathBuf {
    let mut text = String::new();
    for p in prefixes {
        for i in 0..n {
            text.push_str(&format!(
                "[[client]]\nname = \"{p}{i}\"\ntypes = [\"MediaServer\"]\non_duplicate = \"reject\"\n"
            ));
        }
    }
    let path = dir.join("many.toml");
    std::fs::write(&path, text).unwrap();
    path
}

each_engine! {
    // The issue's promise: Redis restarting (empty) under load loses no registration, no
    // answer and no name, and keeps no registration waiting past its deadline.
    fn redis_restarting_under_load_loses_nothing() {
        if !common::redis::available("redis restart under load") {
            return;
        }
        let dir = test_dir("fleet-restart-load");
        let mut redis = Redis::start(&dir);
        let reg = many_names(&dir, &["Held", "Churn"], 300);
        let s = Server::start(&[
            "--registry",
            reg.to_str().unwrap(),
            "--fleet-redis",
            &redis.url(),
            "--fleet-instance",
            "a",
            "--fleet-timeout",
            "200ms",
            "--fleet-lease",
            "1s",
        ]);
        assert_eq!(s.wait_metric("ixn_fleet_up", 1.0), 1.0);
        let held_json = dir.join("held.json");
        let mut held = loadgen(
            s.addr,
            &held_json,
            &["--scenario", "hold", "--connections", "300", "--duration", "12s",
              "--client-name", "Held", "--client-names", "300"],
        );
        eventually("held registered", Duration::from_secs(10), || {
            s.metric("ixn_fleet_names_held") >= 300.0
        });
        let churn_json = dir.join("churn.json");
        let mut churn = loadgen(
            s.addr,
            &churn_json,
            &["--scenario", "churn", "--concurrency", "16", "--duration", "4s",
              "--client-name", "Churn", "--client-names", "300", "--reset-close"],
        );
        std::thread::sleep(Duration::from_secs(1));
        redis.restart();
        assert!(churn.wait().unwrap().success(), "churn");
        let c = loadgen_report(&churn_json);
        let (ok, errors) = (c["ok"].as_u64().unwrap(), c["error_total"].as_u64().unwrap());
        let max_us = c["phases"]["register"]["max"].as_u64().unwrap();
        eprintln!("churn through the restart: {ok} registered, {errors} errors, slowest answer {max_us} µs");
        assert!(ok > 100, "{c}");
        assert_eq!(errors, 0, "every registration answered EventAck (fleet_unavailable=allow): {c}");
        assert!(max_us < 5_000_000, "a registration waited past its deadline: {max_us} µs");
        // Every held name is back in the emptied Redis, held by this server.
        eventually("held names re-asserted", Duration::from_secs(5), || {
            redis.cli(&["--scan", "--pattern", "ixn:name:{Held*"]).lines().count() == 300
        });
        let args: Vec<String> = (0..300).map(|i| format!("ixn:name:{{Held{i}}}")).collect();
        let mut mget = vec!["MGET"];
        mget.extend(args.iter().map(String::as_str));
        let holders = redis.cli(&mget);
        assert_eq!(holders.lines().filter(|l| l.starts_with("a ")).count(), 300, "{holders}");
        eprintln!("300 of 300 held names re-asserted, each held by this server");
        assert!(held.wait().unwrap().success(), "hold");
        let h = loadgen_report(&held_json);
        assert_eq!(h["ok"].as_u64(), Some(300), "{h}");
        assert_eq!(h["error_total"].as_u64(), Some(0), "no held client was dropped: {h}");
    }
}
