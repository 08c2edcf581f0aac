//! Deployment contract: systemd `Type=notify` readiness and stopping notifications, and the
//! shipped unit file passing `systemd-analyze verify`.

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
