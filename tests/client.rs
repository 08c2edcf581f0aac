//! `ixn-client` against the real server, on both engines: registration and keepalive,
//! TLS with a client certificate, a restart survived (the registration and a Proxy's
//! logical clients made again), a lame-duck drain left for the other server, a kick
//! obeyed, refusals typed, and a server that stops answering (SIGSTOP) noticed within the
//! keepalive.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use ixn_client::{
    Backoff, Client, ClientConfig, ClientType, Error, ErrorCode, Event, Lost, Registration, Status,
    Stop, Tls,
};
use tokio::sync::broadcast;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn fast(config: ClientConfig) -> ClientConfig {
    config.backoff(Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    })
}

/// Waits (at most 10 s) for an event `f` accepts; the events before it are returned too.
async fn until(rx: &mut broadcast::Receiver<Event>, f: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no such event; saw {seen:?}"))
            .unwrap();
        let done = f(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

each_engine! {
    fn registers_keeps_alive_and_replays_a_proxys_clients_after_a_restart() {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let args = ["--workers", "1", "--keepalive-min", "1s", "--timer-tick", "20ms", "--listen", &listen];
        let s = Server::start(&args);
        let rt = runtime();
        let reg = Registration::new("Proxy_main", ClientType::Proxy)
            .credential("proxy-secret")
            .extension("site", "eu-1")
            .keep_alive(Duration::from_secs(1));
        let client = rt.block_on(Client::connect(fast(ClientConfig::new([listen.clone()], reg)))).unwrap();
        let mut events = client.events();
        let Status::Registered(r) = client.status() else { panic!("{:?}", client.status()) };
        assert_eq!(r.keep_alive, Some(Duration::from_secs(1)), "the keepalive in force");
        assert_eq!(r.server, listen);
        let (a, _) = rt.block_on(client.register_logical(Registration::new("MediaServer_email", ClientType::MediaServer))).unwrap();
        let (b, _) = rt.block_on(client.register_logical(Registration::new("Router_local", ClientType::RoutingEngine))).unwrap();
        assert_eq!(s.wait_metric("ixn_logical_clients_registered", 2.0), 2.0);
        // Its keepalives hold it well past 1.5 × 1 s of anything else.
        std::thread::sleep(Duration::from_millis(3500));
        assert!(matches!(client.status(), Status::Registered(_)));
        assert!(s.metric("ixn_keepalives_total") >= 4.0, "sent on its own");
        assert_eq!(s.metric(r#"ixn_connections_closed_total{reason="keepalive"}"#), 0.0);
        // The server dies and comes back on the same port.
        drop(s);
        let seen = rt.block_on(until(&mut events, |e| matches!(e, Event::Lost { .. })));
        assert!(matches!(seen.last(), Some(Event::Lost { reason: Lost::Closed | Lost::Io(_), .. })), "{seen:?}");
        let s = Server::start(&args);
        let seen = rt.block_on(until(&mut events, |e| matches!(e, Event::LogicalRegistered { logical, .. } if *logical == b)));
        assert!(seen.iter().any(|e| matches!(e, Event::Registered(_))), "{seen:?}");
        assert!(seen.iter().any(|e| matches!(e, Event::LogicalRegistered { logical, .. } if *logical == a)), "{seen:?}");
        assert_eq!(s.wait_metric("ixn_clients_registered", 1.0), 1.0);
        assert_eq!(s.wait_metric("ixn_logical_clients_registered", 2.0), 2.0);
        // One logical client goes; the server agrees.
        rt.block_on(client.unregister_logical(a)).unwrap();
        assert_eq!(s.wait_metric("ixn_logical_clients_registered", 1.0), 1.0);
        rt.block_on(client.close());
        assert_eq!(s.wait_metric("ixn_clients_registered", 0.0), 0.0);
        assert_eq!(s.metric(r#"ixn_connections_closed_total{reason="unregister"}"#), 1.0);
    }

    fn tls_with_a_client_certificate() {
        let dir = test_dir("client-tls");
        let (ca, clients) = (Ca::new("server CA"), Ca::new("client CA"));
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cert, key) = ca.issue(&["ixn.test"], &[], "ixn.test");
        let (cert, key) = (write("server.pem", &cert), write("server.key", &key));
        let (ccert, ckey) = clients.issue(&["media1.example.com"], &[], "media1");
        let (ccert, ckey) = (write("client.pem", &ccert), write("client.key", &ckey));
        let ca_file = write("ca.pem", &ca.cert.pem());
        let client_ca = write("client-ca.pem", &clients.cert.pem());
        let registry = write(
            "registry.toml",
            "[[client]]\nname = \"Media1\"\ntypes = [\"MediaServer\"]\n\
             tls_identities = [\"dns:media1.example.com\"]\n",
        );
        let p = |p: &std::path::PathBuf| p.display().to_string();
        let s = Server::start(&[
            "--tls-listen", "127.0.0.1:0", "--tls-cert", &p(&cert), "--tls-key", &p(&key),
            "--tls-client-ca", &p(&client_ca), "--registry", &p(&registry),
        ]);
        let server = s.tls_addr.unwrap().to_string();
        let rt = runtime();
        let reg = || Registration::new("Media1", ClientType::MediaServer);
        // With the certificate: registered.
        let tls = Tls::with_client_cert(&ca_file, &ccert, &ckey).unwrap().server_name("ixn.test");
        let c = rt.block_on(Client::connect(ClientConfig::new([server.clone()], reg()).tls(tls))).unwrap();
        assert!(matches!(c.status(), Status::Registered(_)));
        assert_eq!(s.wait_metric(r#"ixn_tls_handshakes_total{result="full"}"#, 1.0), 1.0);
        rt.block_on(c.close());
        // Without it the entry's identity is missing: AuthenticationFailed, typed.
        let tls = Tls::with_ca_file(&ca_file).unwrap().server_name("ixn.test");
        let e = rt.block_on(Client::connect(ClientConfig::new([server], reg()).tls(tls))).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::AuthenticationFailed), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn a_lame_duck_drain_moves_it_to_the_other_server() {
        let args = ["--workers", "1", "--lame-duck-duration", "500ms", "--timer-tick", "20ms"];
        let (a, b) = (Server::start(&args), Server::start(&args));
        let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
        let rt = runtime();
        let reg = Registration::new("MediaServer_email", ClientType::MediaServer);
        let client = rt.block_on(async { Client::start(fast(ClientConfig::new([sa.clone(), sb.clone()], reg))) }).unwrap();
        let mut events = client.events();
        let r = rt.block_on(client.registered()).unwrap();
        assert_eq!(r.server, sa);
        a.signal("TERM");
        // (Its first registration's event may come first, or have come before `events`.)
        let seen = rt.block_on(until(&mut events, |e| matches!(e, Event::Registered(r) if r.server == sb)));
        assert!(seen.iter().any(|e| matches!(e, Event::Lost { reason: Lost::Draining, server } if *server == sa)), "{seen:?}");
        assert!(matches!(seen.last(), Some(Event::Registered(r)) if r.server == sb), "{seen:?}");
        assert_eq!(b.wait_metric("ixn_clients_registered", 1.0), 1.0);
    }

    fn a_kick_stops_it_and_refusals_are_typed() {
        let dir = test_dir("client-kick");
        let registry = dir.join("registry.toml");
        std::fs::write(
            &registry,
            "[[client]]\nname = \"Rej\"\ntypes = [\"MediaServer\"]\non_duplicate = \"reject\"\n",
        )
        .unwrap();
        let s = Server::start(&["--admin-listen", "127.0.0.1:0", "--registry", registry.to_str().unwrap()]);
        let server = s.addr.to_string();
        let rt = runtime();
        let reg = || Registration::new("Rej", ClientType::MediaServer);
        let client = rt.block_on(Client::connect(fast(ClientConfig::new([server.clone()], reg())))).unwrap();
        // The name is held: a second client is refused with 14 and, by default, stops.
        let e = rt.block_on(Client::connect(ClientConfig::new([server.clone()], reg()))).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::DuplicateClient), "{e}");
        let e = rt
            .block_on(Client::connect(ClientConfig::new([server.clone()], Registration::new("nobody", ClientType::MediaServer))))
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::UnknownClient), "{e}");
        // An operator closes the first one: it stops, and does not come back.
        let (_, body) = s.admin("GET", "/v1/clients?name=Rej", None);
        let id = body.split("\"id\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
        let accepted = s.metric(r#"ixn_connections_accepted_total{listener="plain"}"#);
        let (code, _) = s.admin("DELETE", &format!("/v1/clients/{id}"), None);
        assert_eq!(code, 204);
        let e = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), client.registered()).await
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(client.status(), Status::Stopped(_)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(client.status(), Status::Stopped(Stop::Kicked), "{e:?}");
        assert!(matches!(rt.block_on(client.registered()), Err(Error::Stopped(Stop::Kicked))));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            s.metric(r#"ixn_connections_accepted_total{listener="plain"}"#),
            accepted,
            "no reconnection after a kick"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn under_retry_a_refused_name_is_registered_once_it_is_free() {
        let dir = test_dir("client-retry");
        let registry = dir.join("registry.toml");
        std::fs::write(
            &registry,
            "[[client]]\nname = \"Rej\"\ntypes = [\"MediaServer\"]\non_duplicate = \"reject\"\n",
        )
        .unwrap();
        let s = Server::start(&["--registry", registry.to_str().unwrap()]);
        let server = s.addr.to_string();
        let rt = runtime();
        let reg = || Registration::new("Rej", ClientType::MediaServer);
        let first = rt.block_on(Client::connect(ClientConfig::new([server.clone()], reg()))).unwrap();
        let second = rt.block_on(async {
            Client::start(
                fast(ClientConfig::new([server.clone()], reg()))
                    .refusals(ixn_client::RefusalPolicy::Retry, ixn_client::RefusalPolicy::Stop),
            )
        })
        .unwrap();
        let mut events = second.events();
        let seen = rt.block_on(until(&mut events, |e| matches!(e, Event::Lost { reason: Lost::Refused(ErrorCode::DuplicateClient), .. })));
        assert!(!seen.iter().any(|e| matches!(e, Event::Registered(_))), "{seen:?}");
        // The holder leaves: the retrying client gets the name.
        rt.block_on(first.close());
        rt.block_on(until(&mut events, |e| matches!(e, Event::Registered(_))));
        let r = rt.block_on(second.registered()).unwrap();
        assert_eq!(r.server, server);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn a_stopped_server_is_noticed_within_the_keepalive() {
        let s = Server::start(&["--workers", "1", "--keepalive-min", "1s"]);
        let rt = runtime();
        let reg = Registration::new("MediaServer_email", ClientType::MediaServer).keep_alive(Duration::from_secs(2));
        let client = rt.block_on(Client::connect(fast(ClientConfig::new([s.addr.to_string()], reg)))).unwrap();
        let mut events = client.events();
        std::thread::sleep(Duration::from_millis(1200));
        s.signal("STOP");
        let stopped = Instant::now();
        let seen = rt.block_on(until(&mut events, |e| matches!(e, Event::Lost { .. })));
        let noticed = stopped.elapsed();
        s.signal("CONT");
        assert!(matches!(seen.last(), Some(Event::Lost { reason: Lost::ServerSilent, .. })), "{seen:?}");
        assert!(noticed <= Duration::from_millis(2000 + 300), "noticed after {noticed:?}");
        // Answering again, it is registered again.
        rt.block_on(until(&mut events, |e| matches!(e, Event::Registered(_))));
    }
}
