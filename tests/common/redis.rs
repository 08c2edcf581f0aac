//! A real `redis-server` for the fleet's tests (docs/PROTOCOL.md §13): a single primary
//! or a three-node Redis Cluster, on loopback ports of their own, with no persistence (a
//! restart is an emptied Redis).
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `redis-server` is installed. Where it is not, a fleet test says it was skipped,
/// by name, unless `IXN_REQUIRE_REDIS` is set (the README's test command installs it and
/// sets that), when it fails.
pub fn available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("IXN_REQUIRE_REDIS").is_none(),
            "{test}: redis-server is not installed (scripts/test installs it)"
        );
        eprintln!("SKIPPED {test}: redis-server is not installed");
    }
    found
}

/// A port nobody listens on now (and whose cluster bus port, +10000, is free too).
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 50_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// One redis-server process.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
}

impl Redis {
    /// A single primary.
    pub fn start(dir: &std::path::Path) -> Redis {
        Self::start_node(dir, false)
    }

    fn start_node(dir: &std::path::Path, cluster: bool) -> Redis {
        // Ports are handed out process-wide, never twice: tests of one binary run at once,
        // and a port freed by one may be picked by another before its server binds it.
        static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        let port = loop {
            let p = free_port();
            let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
            if !taken.contains(&p) {
                taken.push(p);
                break p;
            }
        };
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            child: None,
            port,
            dir,
            cluster,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"));
        }
        let child = cmd.spawn().expect("spawn redis-server");
        let pid = child.id();
        self.child = Some(child);
        // Ours answers, not another test's that took the port first (tests run at once):
        // the server that answers must be this process.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = self.cli(&["INFO", "server"]);
            if info.contains(&format!("process_id:{pid}\r"))
                || info.contains(&format!("process_id:{pid}\n"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server (`-c`: following cluster redirections).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-c"])
            .args(args)
            .stderr(Stdio::null())
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Kills it (SIGKILL: nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Gone when its port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three primaries on loopback.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start(dir: &std::path::Path) -> Cluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_node(dir, true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster { nodes }
    }

    /// The seed nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}
