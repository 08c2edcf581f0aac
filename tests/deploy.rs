//! Deployment contract: systemd `Type=notify` readiness and stopping notifications, the
//! shipped unit file passing `systemd-analyze verify`, and a clear refusal to start where a
//! seccomp profile or an old kernel takes io_uring away.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

#[test]
fn sd_notify_ready_after_listening_and_stopping_on_drain() {
    let dir = std::env::temp_dir().join(format!("ixn-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let s = Server::start_with_env(
        &["--workers", "2"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Ready means listening: a client registers at once.
    let mut c = s.connect();
    c.send(&rrc(1, "MediaServer_email", 1, None));
    assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
    s.signal("TERM");
    let n = sock.recv(&mut buf).expect("STOPPING notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unit_file_verifies() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ixn-server.service");
    let text = std::fs::read_to_string(unit).unwrap();
    for needed in [
        "Type=notify",
        "ExecStartPre=",
        "--check-config",
        "ExecReload=",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
    ] {
        assert!(text.contains(needed), "unit lacks {needed}");
    }
    // systemd-analyze wants the ExecStart binary to exist: point it at the built one.
    let dir = std::env::temp_dir().join(format!("ixn-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("ixn-server.service");
    std::fs::write(
        &local,
        text.replace("/usr/bin/ixn-server", env!("CARGO_BIN_EXE_ixn-server")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&local)
        .output()
        .expect("systemd-analyze (systemd)");
    let msg =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze verify: {msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the server with `io_uring_setup(2)` failing with `errno` (a seccomp filter set in
/// the child before exec, as a container runtime or systemd's `SystemCallFilter=` would)
/// and returns its exit code and stderr.
fn start_without_io_uring(errno: i32) -> (Option<i32>, String) {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    use std::os::unix::process::CommandExt;
    let filter = SeccompFilter::new(
        [(SYS_IO_URING_SETUP, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        std::env::consts::ARCH
            .try_into()
            .expect("a seccompiler target"),
    )
    .unwrap();
    let program: BpfProgram = filter.try_into().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ixn-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null());
    // SAFETY: runs in the forked child before exec; it only calls prctl(2) and seccomp(2)
    // on a program built before the fork, and touches no lock another thread could hold.
    unsafe {
        cmd.pre_exec(move || seccompiler::apply_filter(&program).map_err(std::io::Error::other));
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `io_uring_setup`'s number, the same on every architecture (added after the tables were
/// unified).
const SYS_IO_URING_SETUP: i64 = 425;

#[test]
fn refuses_to_start_without_io_uring_and_says_why() {
    for (errno, why) in [
        (1, "seccomp"),     // EPERM: a filter refused it
        (38, "Linux 5.11"), // ENOSYS: no io_uring in this kernel
    ] {
        let (code, stderr) = start_without_io_uring(errno);
        assert_eq!(code, Some(1), "errno {errno}: exit code; stderr: {stderr}");
        assert!(
            stderr.contains("io_uring") && stderr.contains(why),
            "errno {errno}: stderr should name the cause ({why}): {stderr}"
        );
        assert!(!stderr.contains("panicked"), "errno {errno}: {stderr}");
        assert!(!stderr.contains("listening on"), "errno {errno}: {stderr}");
    }
}
