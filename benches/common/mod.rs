//! Shared by the server benches: starting the real `ixn-server` binary and reading a
//! process's CPU time and resident memory from /proc.
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// RequestRegisterClient for the embedded registry's MediaServer_email, ReferenceId 7.
pub const RRC: &str = "0000002c0001000300010100040000000700020200114d656469615365727665725f656d61696c000301000400000001";
/// Bytes of the EventAck it gets.
pub const ACK_LEN: usize = 26;

pub fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Nanoseconds every `ksoftirqd/N` thread has run. A process's CPU time includes the
/// softirq work (TCP's, for its closes) run in its own context, but not what the kernel
/// leaves to these threads when softirqs pile up, which varies from run to run; where
/// nothing else sends packets, their change over a measurement belongs to it too.
pub fn softirqd_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_ixn(extra: &[&str]) -> Proc {
    let bin = std::env::var("IXN_SERVER_BIN").unwrap_or_else(|_| {
        let mut p = std::env::current_exe().unwrap();
        p.pop();
        p.pop();
        p.push("ixn-server");
        p.to_string_lossy().into_owned()
    });
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "1"]);
    if !extra.contains(&"--metrics-listen") {
        cmd.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .args(extra)
        .env("RUST_LOG", "warn,ixn::runtime=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ixn-server binary (cargo build --release first)");
    let addr = listen_addr(&mut child);

    Proc { child, addr }
}

/// Reads a child's stderr up to its `listening on ADDR` line and returns ADDR; the rest of
/// its stderr is drained on a thread so the child never blocks on a full pipe.
pub fn listen_addr(child: &mut Child) -> SocketAddr {
    let mut err = child.stderr.take().expect("stderr piped");
    let mut text = String::new();
    let mut b = [0u8; 1];
    while !text.contains("listening on ") || !text.ends_with('\n') {
        if err.read(&mut b).unwrap_or(0) == 0 {
            panic!("process exited before listening: {text}");
        }
        text.push(b[0] as char);
    }
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = err.read_to_end(&mut sink);
    });
    let line = text.split("listening on ").nth(1).unwrap_or_default();
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()
        .expect("listen address")
}
