//! Live upgrades (docs/OPERATIONS.md 7e) over real sockets against the real binary, on both
//! engines: SIGUSR2 starts the binary again, which takes over the listeners and every
//! connection at rest. Ten thousand registered clients (plain, behind PROXY, Proxies with
//! logical clients, a keepalive in force, mid-frame, pipelining, and some pinging right
//! through the handover) are all answered afterwards, exactly once and in order, by the new
//! process, with no disconnect; deadlines hold across it; names stay held. A new binary that
//! exits at once, or is killed in the middle of the handover, loses no client.

#[macro_use]
mod common;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The clients of the full test, unless `IXN_UPGRADE_CLIENTS` says otherwise.
const CLIENTS: usize = 10_000;
const TICK: Duration = Duration::from_millis(20);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(600);
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// A silent client's keepalive: it is dropped 1.5 × this after its registration.
const KEEPALIVE_S: u16 = 4;

/// Each test holds thousands of descriptors (in this process and in two servers): one at
/// a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn clients() -> usize {
    std::env::var("IXN_UPGRADE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CLIENTS)
}

const REGISTRY: &str = "[[client]]\nname = \"Agent\"\ntypes = [\"AgentApplication\"]\n\
    [[client]]\nname = \"Held\"\ntypes = [\"AgentApplication\"]\non_duplicate = \"reject\"\n\
    [[client]]\nname = \"Gateway\"\ntypes = [\"Proxy\"]\nmax_logical_clients = 8\n\
    [[client]]\nname = \"Logical\"\ntypes = [\"AgentApplication\"]\n";

fn server(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    server_with(dir, env, &[])
}

fn server_with(dir: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> Server {
    let reg = dir.join("registry.toml");
    std::fs::write(&reg, REGISTRY).unwrap();
    let timeout = format!("{}ms", REGISTRATION_TIMEOUT.as_millis());
    let mut args = vec![
        "--workers",
        "2",
        "--timer-tick",
        "20ms",
        "--registry",
        reg.to_str().unwrap(),
        "--proxy-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--registration-timeout",
        &timeout,
        "--keepalive-min",
        "1s",
        "--frame-timeout",
        "120s",
    ];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, env)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    /// Behind a PROXY header.
    Proxied,
    /// A Proxy with three logical clients.
    Gateway,
    /// A keepalive of 60 s in force.
    KeepAlive,
    /// Half a frame sent before the upgrade, the rest after.
    MidFrame,
    /// Three frames in one write after the upgrade.
    Pipelining,
}

impl Kind {
    fn of(i: usize) -> Kind {
        match i % 10 {
            1 | 6 => Kind::Proxied,
            2 if i % 100 == 2 => Kind::Gateway,
            3 => Kind::KeepAlive,
            4 => Kind::MidFrame,
            5 => Kind::Pipelining,
            _ => Kind::Plain,
        }
    }
}

struct Registered {
    kind: Kind,
    c: Client,
    /// A Proxy's logical clients' ids.
    logical: Vec<i32>,
}

/// The address the `i`th client's PROXY header gives.
fn proxied_peer(i: usize) -> std::net::SocketAddr {
    let ip = std::net::Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    (ip, 1024 + (i % 60000) as u16).into()
}

/// Every registered client's peer address, as the admin API lists them (page by page).
fn listed_peers(s: &Server) -> std::collections::HashSet<String> {
    let mut peers = std::collections::HashSet::new();
    let mut after = String::new();
    loop {
        let (status, body) = s.admin("GET", &format!("/v1/clients?limit=1000{after}"), None);
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for c in page["clients"].as_array().unwrap() {
            peers.insert(c["peer"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return peers,
        }
    }
}

/// Connects and registers `n` clients of every kind, a few hundred at a time (sent all,
/// then read all, so the backlog never overflows and the round trips overlap).
fn register_all(s: &Server, n: usize) -> Vec<Registered> {
    let proxy = s.proxy_addr.unwrap();
    let mut all = Vec::with_capacity(n);
    for start in (0..n).step_by(250) {
        let mut batch = Vec::new();
        for i in start..(start + 250).min(n) {
            let kind = Kind::of(i);
            let mut c = match kind {
                Kind::Proxied => {
                    let mut c = Client::connect(proxy);
                    let peer = proxied_peer(i);
                    let header =
                        format!("PROXY TCP4 {} 10.0.0.1 {} 7400\r\n", peer.ip(), peer.port());
                    c.send(header.as_bytes());
                    c
                }
                _ => s.connect(),
            };
            match kind {
                Kind::Gateway => {
                    let mut bytes = rrc(1, "Gateway", 3, None);
                    for rid in 2..5 {
                        bytes.extend(rrc(rid, "Logical", 2, None));
                    }
                    c.send(&bytes);
                }
                Kind::KeepAlive => c.send(&rrc_keep_alive(1, "Agent", 2, None, Some(60))),
                _ => c.send(&rrc(1, "Agent", 2, None)),
            }
            batch.push(Registered {
                kind,
                c,
                logical: Vec::new(),
            });
        }
        for r in &mut batch {
            let Some(Ans::Ack {
                rid: 1,
                id: Some(_),
            }) = r.c.answer()
            else {
                panic!("{:?} client not registered", r.kind);
            };
            if r.kind == Kind::Gateway {
                for rid in 2..5 {
                    match r.c.answer() {
                        Some(Ans::Ack {
                            rid: got,
                            id: Some(id),
                        }) if got == rid => r.logical.push(id),
                        a => panic!("logical client {rid}: {a:?}"),
                    }
                }
            }
        }
        all.extend(batch);
    }
    all
}

/// Clients that ping (RequestKeepAlive, one at a time) right through the handover: every
/// answer must come, once, in order. Returns when each ping was sent, and its latency.
fn pingers(
    s: &Server,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(Instant, Duration)>>> {
    (0..n)
        .map(|_| {
            let mut c = s.connect();
            c.send(&rrc(1, "Agent", 2, None));
            assert!(matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut rid = 100;
                while !stop.load(Ordering::Acquire) {
                    let t = Instant::now();
                    c.send(&keep_alive(rid));
                    assert_eq!(c.answer(), Some(ack(rid, None)), "ping {rid}");
                    latencies.push((t, t.elapsed()));
                    rid += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                latencies
            })
        })
        .collect()
}

/// The new process, killed when the test ends.
struct NewProcess(u32);

impl Drop for NewProcess {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

fn number_after(line: &str, prefix: &str) -> u32 {
    let rest = line
        .split(prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("{prefix:?} in {line}"));
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn wait_exit(s: &mut Server, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Nothing more has come, and the connection is open.
fn assert_quiet(c: &mut Client) {
    c.s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    match c.s.read(&mut b) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        r => panic!("expected nothing, got {r:?}"),
    }
    c.s.set_nonblocking(false).unwrap();
}

/// Half a RequestKeepAlive (ReferenceId 7) from every MidFrame client.
fn begin_mid(all: &mut [Registered]) {
    for r in all.iter_mut().filter(|r| r.kind == Kind::MidFrame) {
        r.c.send(&keep_alive(7)[..9]);
    }
}

/// The rest of every MidFrame client's frame.
fn end_mid(all: &mut [Registered]) {
    for r in all.iter_mut().filter(|r| r.kind == Kind::MidFrame) {
        r.c.send(&keep_alive(7)[9..]);
    }
}

/// Writes `text` to `dir/name`, executable (a stand-in for the new binary).
fn executable(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// After a failed upgrade: every client is answered, and the server still accepts.
fn still_serving(s: &Server, all: &mut [Registered]) {
    end_mid(all);
    ping_all(all, 1000);
    let mut c = s.connect();
    c.send(&rrc(1, "Agent", 2, None));
    assert!(matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })));
    let n = all.len() as f64 + 1.0;
    assert_eq!(s.wait_metric("ixn_connections_active", n), n);
}

/// Every client answers a ping (Pipelining ones three in one write, MidFrame ones the frame
/// they began), in order, and nothing else has come.
fn ping_all(all: &mut [Registered], rid: i32) {
    for r in all.iter_mut() {
        match r.kind {
            Kind::Pipelining => {
                let mut bytes = Vec::new();
                for k in 0..3 {
                    bytes.extend(keep_alive(rid + k));
                }
                r.c.send(&bytes);
            }
            Kind::MidFrame => {}
            Kind::Gateway => {
                let id = r.logical.pop().unwrap();
                let mut bytes = unreg(rid, Some(id));
                bytes.extend(keep_alive(rid + 1));
                r.c.send(&bytes);
            }
            _ => r.c.send(&keep_alive(rid)),
        }
    }
    for r in all.iter_mut() {
        let want: Vec<Ans> = match r.kind {
            Kind::Pipelining => (0..3).map(|k| ack(rid + k, None)).collect(),
            Kind::Gateway => vec![ack(rid, None), ack(rid + 1, None)],
            Kind::MidFrame => vec![ack(7, None)],
            _ => vec![ack(rid, None)],
        };
        for w in want {
            assert_eq!(r.c.answer(), Some(w), "{:?} client", r.kind);
        }
        assert_quiet(&mut r.c);
    }
}

each_engine! {
    fn ten_thousand_clients_survive_an_upgrade() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade");
        let mut s = server(&dir, &[]);
        let n = clients();
        let mut all = register_all(&s, n);
        // A name under `reject`, held across the upgrade.
        let mut held = s.connect();
        held.send(&rrc(1, "Held", 2, None));
        assert!(matches!(held.answer(), Some(Ans::Ack { rid: 1, .. })));
        let stop = Arc::new(AtomicBool::new(false));
        let pinging = pingers(&s, 16, stop.clone());
        // Deadlines set by the old process, met by the new one.
        let mut silent = s.connect();
        let mut quiet = s.connect();
        quiet.send(&rrc_keep_alive(1, "Agent", 2, None, Some(KEEPALIVE_S)));
        assert!(matches!(quiet.answer(), Some(Ans::Ack { rid: 1, .. })));
        let quiet_since = Instant::now();
        begin_mid(&mut all);
        std::thread::sleep(Duration::from_millis(100));

        // `/ready` stays 200 throughout.
        let metrics = s.metrics;
        let ready_stop = Arc::new(AtomicBool::new(false));
        let ready = {
            let stop = ready_stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    seen.push(http(metrics, "GET", "/ready", &[]).0);
                    std::thread::sleep(Duration::from_millis(5));
                }
                seen
            })
        };
        let t0 = Instant::now();
        s.signal("USR2");
        let new = NewProcess(number_after(
            &s.wait_log_within("started the new binary", Duration::from_secs(10)),
            "pid ",
        ));
        // A duplicate of the held name, while the handover runs, is refused.
        let addr = s.addr;
        let duplicate = std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            c.s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            c.send(&rrc(1, "Held", 2, None));
            c.answer()
        });
        let done = s.wait_log_within("connections handed to pid", Duration::from_secs(60));
        let handed = number_after(&done, "handed=");
        let took = t0.elapsed();
        assert!(handed as usize >= n + 16 + 3, "{done}");
        assert_eq!(wait_exit(&mut s, Duration::from_secs(10)).code(), Some(0));
        stop.store(true, Ordering::Release);
        ready_stop.store(true, Ordering::Release);
        let ready = ready.join().unwrap();
        assert!(ready.len() > 10 && ready.iter().all(|&s| s == 200), "/ready: {ready:?}");
        let pings: Vec<(Instant, Duration)> =
            pinging.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert_eq!(duplicate.join().unwrap(), Some(err(1, 14)));

        end_mid(&mut all);
        ping_all(&mut all, 1000);
        // Still held by the client that registered it before the upgrade.
        let mut again = Client::connect(s.addr);
        again.send(&rrc(1, "Held", 2, None));
        assert_eq!(again.answer(), Some(err(1, 14)));
        held.send(&keep_alive(2));
        assert_eq!(held.answer(), Some(ack(2, None)));

        // The silent unregistered client goes at its original deadline, within a tick.
        let gone = silent.expect_close();
        assert!(gone >= REGISTRATION_TIMEOUT - TICK && gone <= REGISTRATION_TIMEOUT + TICK + SLACK, "{gone:?}");
        // The keepalive in force moved with its client: EventError 19 at 1.5 × k.
        let k = Duration::from_secs(u64::from(KEEPALIVE_S)) * 3 / 2;
        assert_eq!(quiet.answer(), Some(err(0, 19)));
        let at = quiet_since.elapsed();
        assert!(at >= k - TICK && at <= k + TICK + SLACK, "{at:?}");

        // The new process counted what it adopted; the clients listed keep their addresses.
        assert_eq!(
            s.wait_metric("ixn_upgrade_connections_total{result=\"adopted\"}", f64::from(handed)),
            f64::from(handed)
        );
        assert!(s.metric("ixn_upgrade_duration_seconds") > 0.0, "the new process reports the handover");
        assert_eq!(s.metric("ixn_upgrades_total{result=\"done\"}"), 1.0);
        let peers = listed_peers(&s);
        for i in (0..n).filter(|&i| Kind::of(i) == Kind::Proxied) {
            assert!(peers.contains(&proxied_peer(i).to_string()), "client {i}'s address");
        }
        // Latency of the pings sent before the signal, and of those sent between it and
        // the commit's log line.
        let quantiles = |mut l: Vec<Duration>| {
            l.sort();
            let q = |p: usize| l.get((l.len() * p / 100).min(l.len().saturating_sub(1))).map_or(0, Duration::as_micros);
            format!("{} pings, p50 {} µs, p99 {} µs, max {} µs", l.len(), q(50), q(99), q(100))
        };
        let before = pings.iter().filter(|(at, _)| *at < t0).map(|p| p.1).collect();
        let during = pings.iter().filter(|(at, _)| *at >= t0 && *at < t0 + took).map(|p| p.1).collect();
        eprintln!(
            "upgrade of {handed} connections: {} ms (the old process's own figure: {} ms); before it: {}; during it: {}",
            took.as_millis(),
            number_after(&done, " in "),
            quantiles(before),
            quantiles(during)
        );
        drop(new);
    }

    fn a_new_binary_that_exits_at_once_loses_no_client() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade-false");
        let s = server(&dir, &[("IXN_UPGRADE_BINARY", "/bin/false")]);
        let failed = "ixn_upgrades_total{result=\"failed\"}";
        assert_eq!(s.metric(failed), 0.0);
        assert!(s.http_get("/metrics").1.contains(failed), "at zero from the start");
        let mut all = register_all(&s, 300);
        begin_mid(&mut all);
        s.signal("USR2");
        s.wait_log_within("upgrade failed", Duration::from_secs(20));
        // What the IxnUpgradeFailed alert watches.
        assert_eq!(s.metric(failed), 1.0);
        still_serving(&s, &mut all);
    }

    fn a_new_binary_that_dies_mid_handover_loses_no_client() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade-killed");
        // The real binary with too few descriptors for what is handed: it dies in the
        // middle of the handover, after its first batches.
        let wrapper = executable(
            &dir,
            "killed.sh",
            &format!(
                "#!/bin/sh\nexec prlimit --nofile=500 \"{}\" \"$@\"\n",
                env!("CARGO_BIN_EXE_ixn-server")
            ),
        );
        let s = server(&dir, &[("IXN_UPGRADE_BINARY", wrapper.to_str().unwrap())]);
        let mut all = register_all(&s, 2000);
        begin_mid(&mut all);
        s.signal("USR2");
        let failed = s.wait_log_within("upgrade failed", Duration::from_secs(60));
        // Dead with connections handed and not yet adopted: all taken back.
        let back = failed.split(" connections taken back").next().unwrap();
        let back: usize = back.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(back > 0, "{failed}");
        eprintln!("{failed}");
        still_serving(&s, &mut all);
    }

    fn tls_clients_drain_as_a_lame_duck_and_come_back() {
        use std::io::Write;
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade-tls");
        let (cert, tls_args) = tls_listener(&dir);
        let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        let mut s = server_with(&dir, &[], &tls_args);
        let tls = s.tls_addr.unwrap();
        let config = tls_client(&cert);
        let mut all = register_all(&s, 500);
        let mut secure: Vec<TlsStream> = (0..20)
            .map(|_| {
                let mut t = tls_open(tls, &config);
                t.write_all(&rrc(1, "Agent", 2, None)).unwrap();
                assert!(matches!(read_answer(&mut t), Some(Ans::Ack { rid: 1, .. })));
                t
            })
            .collect();
        // A plain client holds a name under `reject`; a TLS client (kept by the old
        // process) asks for it while the handover runs: refused or closed, never granted.
        let mut held = s.connect();
        held.send(&rrc(1, "Held", 2, None));
        assert!(matches!(held.answer(), Some(Ans::Ack { rid: 1, .. })));
        let mut late = tls_open(tls, &config);
        late.conn.complete_io(&mut late.sock).unwrap();
        begin_mid(&mut all);
        let t0 = Instant::now();
        s.signal("USR2");
        let _new = NewProcess(number_after(
            &s.wait_log_within("started the new binary", Duration::from_secs(10)),
            "pid ",
        ));
        s.wait_log_within("handing over", Duration::from_secs(10));
        // After the workers' next tick (20 ms), which detaches the connections at rest.
        std::thread::sleep(Duration::from_millis(30));
        late.write_all(&rrc(1, "Held", 2, None)).unwrap();
        let done = s.wait_log_within("connections handed to pid", Duration::from_secs(60));
        assert_eq!(number_after(&done, "kept="), 21, "{done}");
        let answer = read_answer(&mut late);
        assert!(matches!(answer, None | Some(Ans::Err { code: 14, .. })), "{answer:?}");
        // Kernel TLS is not used (docs/OPERATIONS.md 7e): each TLS client is told the server
        // is going (EventError 11, as a drain does), then closed, and registers again with
        // the new process.
        let mut back = Vec::new();
        for t in &mut secure {
            assert_eq!(read_answer(t), Some(err(0, 11)));
            assert_eq!(read_answer(t), None);
            let mut again = tls_open(tls, &config);
            again.write_all(&rrc(1, "Agent", 2, None)).unwrap();
            assert!(matches!(read_answer(&mut again), Some(Ans::Ack { rid: 1, .. })));
            back.push(t0.elapsed());
        }
        assert_eq!(wait_exit(&mut s, Duration::from_secs(10)).code(), Some(0));
        end_mid(&mut all);
        ping_all(&mut all, 1000);
        held.send(&keep_alive(2));
        assert_eq!(held.answer(), Some(ack(2, None)));
        eprintln!(
            "TLS over an upgrade: {} clients drained and registered again with the new process within {} ms of SIGUSR2",
            back.len(),
            back.iter().max().unwrap().as_millis()
        );
    }

    fn ixnctl_upgrade_twice_then_a_failed_one() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade-ixnctl");
        let mut s = server_with(&dir, &[], &["--ban-failures", "2", "--ban-filter", "false"]);
        // A ban made before the upgrades holds after them.
        for _ in 0..2 {
            let mut c = connect_from("127.0.0.77", s.addr);
            c.send(&rrc(1, "nobody", 2, None));
            assert_eq!(c.answer(), Some(err(1, 2)));
        }
        let ctl = |s: &Server, args: &[&str]| {
            std::process::Command::new(workspace_bin("ixnctl", "ixnctl"))
                .env("IXN_ADMIN_URL", format!("http://{}", s.admin.unwrap()))
                .env_remove("IXN_ADMIN_TOKEN_FILE")
                .args(args)
                .output()
                .unwrap()
        };
        let mut all = register_all(&s, 300);
        let mut pids = vec![s.pid()];
        let mut news = Vec::new();
        for round in 0..2 {
            begin_mid(&mut all);
            let o = ctl(&s, &["--output", "json", "upgrade"]);
            assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
            let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(report["handed"], 300, "{report}");
            assert_eq!(report["kept"], 0, "{report}");
            let pid = report["pid"].as_u64().unwrap() as u32;
            assert!(!pids.contains(&pid));
            news.push(NewProcess(pid));
            // The process that answered goes.
            let previous = *pids.last().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{previous}/status")).exists()
                && !std::fs::read_to_string(format!("/proc/{previous}/status")).unwrap_or_default().contains("zombie")
            {
                assert!(Instant::now() < deadline, "round {round}: pid {previous} still runs");
                std::thread::sleep(Duration::from_millis(20));
            }
            pids.push(pid);
            end_mid(&mut all);
            ping_all(&mut all, 1000 + 10 * round);
        }
        let o = ctl(&s, &["--output", "json", "bans"]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("127.0.0.77"), "the ban moved");
        let mut banned = connect_from("127.0.0.77", s.addr);
        assert_eq!(banned.answer(), Some(err(0, 16)));
        let _ = s.child.wait();
        drop(news);

        // A new binary that fails: the caller is told, the server keeps every client.
        let dir = test_dir("upgrade-ixnctl-false");
        let s = server(&dir, &[("IXN_UPGRADE_BINARY", "/bin/false")]);
        let mut all = register_all(&s, 50);
        let o = ctl(&s, &["upgrade"]);
        assert_eq!(o.status.code(), Some(1));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("keeps serving") && e.contains("exited"), "{e}");
        begin_mid(&mut all);
        end_mid(&mut all);
        ping_all(&mut all, 1000);
    }

    fn a_new_binary_killed_mid_handover_loses_no_client() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade-sigkill");
        let s = server(&dir, &[]);
        let mut all = register_all(&s, 6000);
        let mut held = s.connect();
        held.send(&rrc(1, "Held", 2, None));
        assert!(matches!(held.answer(), Some(Ans::Ack { rid: 1, .. })));
        begin_mid(&mut all);
        s.signal("USR2");
        let pid = number_after(
            &s.wait_log_within("started the new binary", Duration::from_secs(10)),
            "pid ",
        );
        // SIGKILL once it holds a thousand of the sockets handed (of 6,000). (Counted only
        // once it has connected: a process just forked holds its parent's descriptors.)
        s.wait_log_within("handing over", Duration::from_secs(10));
        let fds = format!("/proc/{pid}/fd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(&fds).map(|d| d.count()).unwrap_or(0) < 1000 {
            assert!(Instant::now() < deadline, "the new process never held 1,000 sockets");
        }
        drop(NewProcess(pid));
        let failed = s.wait_log_within("upgrade failed", Duration::from_secs(60));
        assert!(failed.contains("6001 connections taken back"), "{failed}");
        // The name came back with its holder: still refused to another, free once it goes.
        let mut other = s.connect();
        other.send(&rrc(1, "Held", 2, None));
        assert_eq!(other.answer(), Some(err(1, 14)));
        held.send(&unreg(2, None));
        assert_eq!(held.answer(), Some(ack(2, None)));
        let mut next = s.connect();
        next.send(&rrc(1, "Held", 2, None));
        assert!(matches!(next.answer(), Some(Ans::Ack { rid: 1, .. })));
        drop((other, held, next));
        still_serving(&s, &mut all);
    }

    fn a_changed_listener_needs_a_restart_and_keeps_every_client() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade-listeners");
        let reg = dir.join("registry.toml");
        std::fs::write(&reg, REGISTRY).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, "proxy_listen = [\"127.0.0.1:0\"]\n").unwrap();
        let s = Server::start(&[
            "--workers",
            "2",
            "--registry",
            reg.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]);
        let mut all = register_all(&s, 200);
        // The new binary reads a configuration without the PROXY listener.
        std::fs::write(&config, "max_frame_len = 8192\n").unwrap();
        begin_mid(&mut all);
        s.signal("USR2");
        let why = s.wait_log_within("changing listeners needs a restart", Duration::from_secs(20));
        assert!(why.contains("no longer asks for"), "{why}");
        let failed = s.wait_log_within("upgrade failed", Duration::from_secs(20));
        assert!(failed.contains("taken back"), "{failed}");
        still_serving(&s, &mut all);
    }

    fn a_new_binary_of_another_version_is_refused_cleanly() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("upgrade-version");
        // A "new binary" that speaks a later upgrade wire: it says hello and reports the
        // answer it gets.
        let fake = executable(
            &dir,
            "newer.py",
            "#!/usr/bin/env python3\n\
             import json, os, socket, struct, sys\n\
             path = sys.argv[sys.argv.index('--upgrade-from') + 1]\n\
             s = socket.socket(socket.AF_UNIX); s.connect(path)\n\
             body = json.dumps({'type': 'hello', 'wire': 99, 'handoff': 1, 'workers': 2, 'pid': os.getpid()}).encode()\n\
             s.sendall(struct.pack('>II', len(body), 0) + body)\n\
             head = s.recv(8, socket.MSG_WAITALL); n = struct.unpack('>II', head)[0]\n\
             print('newer binary was told: ' + s.recv(n, socket.MSG_WAITALL).decode(), file=sys.stderr)\n",
        );
        let s = server(&dir, &[("IXN_UPGRADE_BINARY", fake.to_str().unwrap())]);
        let mut all = register_all(&s, 200);
        begin_mid(&mut all);
        s.signal("USR2");
        let told = s.wait_log_within("newer binary was told", Duration::from_secs(20));
        assert!(told.contains("\"refuse\"") && told.contains("wire 99"), "{told}");
        let failed = s.wait_log_within("upgrade failed", Duration::from_secs(20));
        assert!(failed.contains("wire 99"), "{failed}");
        still_serving(&s, &mut all);
    }
}
