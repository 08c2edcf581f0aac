//! `ixnctl` without a server: the file checks (the server's own validation), completions
//! and the man page. The commands that talk to a server are tested over real sockets in
//! the server's suite (`tests/ixnctl.rs`), which starts `ixn-server` and this binary.

use std::process::{Command, Output};

fn ixnctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ixnctl"))
        .args(args)
        .env_remove("IXN_ADMIN_URL")
        .env_remove("IXN_ADMIN_TOKEN_FILE")
        .output()
        .expect("run ixnctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ixnctl-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const REGISTRY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/registry.toml");

#[test]
fn registry_check_accepts_the_shipped_registry_and_names_the_fault_in_a_bad_one() {
    let out = ixnctl(&["registry", "check", REGISTRY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("registry OK: "),
        "{}",
        text(&out.stdout)
    );
    let json = ixnctl(&["--output", "json", "registry", "check", REGISTRY]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["clients"].as_u64().unwrap() >= 3);

    let d = dir("registry");
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "[[client]]\nname = \"X\"\ntypes = [\"NoSuchType\"]\n").unwrap();
    let out = ixnctl(&["registry", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("NoSuchType"),
        "{err}"
    );
    let missing = ixnctl(&["registry", "check", "/nonexistent/registry.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn check_config_refuses_what_the_server_refuses() {
    let d = dir("config");
    let good = d.join("good.toml");
    std::fs::write(
        &good,
        format!("workers = 3\nlisten = [\"127.0.0.1:7400\"]\nregistry = \"{REGISTRY}\"\n"),
    )
    .unwrap();
    let out = ixnctl(&["check-config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("configuration OK: 3 worker(s), listen 127.0.0.1:7400"),
        "{}",
        text(&out.stdout)
    );
    for (name, body, says) in [
        ("workers.toml", "workers = 0\n", "--workers"),
        ("unknown.toml", "no_such_setting = 1\n", "no_such_setting"),
        (
            "registry.toml",
            "registry = \"/nonexistent/registry.toml\"\n",
            "/nonexistent/registry.toml",
        ),
    ] {
        let f = d.join(name);
        std::fs::write(&f, body).unwrap();
        let out = ixnctl(&["check-config", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{name}: {err}");
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let bash = ixnctl(&["completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    let b = text(&bash.stdout);
    for word in [
        "ixnctl",
        "clients",
        "kick",
        "unban",
        "check-config",
        "--token-file",
    ] {
        assert!(b.contains(word), "bash completions lack {word}");
    }
    let zsh = ixnctl(&["completions", "zsh"]);
    assert!(text(&zsh.stdout).contains("#compdef ixnctl"));
    let man = ixnctl(&["man"]);
    assert_eq!(man.status.code(), Some(0));
    let m = text(&man.stdout);
    assert!(m.contains(".TH ixnctl"), "{m}");
    assert!(
        m.contains("IXN_ADMIN_TOKEN_FILE"),
        "the man page names the environment"
    );
}

#[test]
fn bad_arguments_exit_2() {
    assert_eq!(ixnctl(&["kick"]).status.code(), Some(2));
    assert_eq!(ixnctl(&["top", "--interval", "0"]).status.code(), Some(2));
    assert_eq!(ixnctl(&["--output", "yaml", "bans"]).status.code(), Some(2));
}
