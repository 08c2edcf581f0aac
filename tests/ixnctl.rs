//! `ixnctl` against real servers (issue 27): each subcommand's table and JSON and its exit
//! status, a wrong token, a server that is down, the fleet's subcommands against two
//! servers and a Redis, and `ixnctl top` in a real terminal (tmux) under the loadgen.

#[macro_use]
mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "ctl-token";

/// Runs ixnctl against `s` (its admin API and metrics), with a token file when given.
fn ixnctl(s: &Server, token: Option<&std::path::Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(workspace_bin("ixnctl", "ixnctl"));
    cmd.env_remove("IXN_ADMIN_TOKEN_FILE")
        .env("IXN_METRICS_URL", format!("http://{}", s.metrics));
    if let Some(a) = s.admin {
        cmd.env("IXN_ADMIN_URL", format!("http://{a}"));
    }
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    cmd.args(args).output().expect("run ixnctl")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(o)))
}

/// A server with an admin API behind a token, and the token's file.
fn server(tag: &str, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let dir = test_dir(&format!("ixnctl-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut args = vec![
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Server::start(&args), token)
}

fn register(s: &Server, name: &str) -> Client {
    let mut c = s.connect();
    c.send(&rrc(1, name, 1, None));
    assert!(matches!(c.answer(), Some(Ans::Ack { .. })), "{name}");
    c
}

each_engine! {
    fn clients_are_listed_paged_and_kicked() {
        let (s, token) = server("clients", &[]);
        let t = Some(token.as_path());
        let held: Vec<Client> = (0..5).map(|_| register(&s, "MediaServer_email")).collect();
        let mut agent = {
            let mut c = s.connect();
            c.send(&rrc(1, "AgentDesktop", 2, Some("s3cret")));
            assert!(matches!(c.answer(), Some(Ans::Ack { .. })));
            c
        };
        // The table: a header, then one line per client.
        let o = ixnctl(&s, t, &["clients"]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        let text = out(&o);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].contains("CLIENT NAME"), "{text}");
        assert_eq!(lines.len(), 7, "{text}");
        assert_eq!(lines.iter().filter(|l| l.contains("MediaServer_email")).count(), 5);
        // --name narrows; JSON is the API's.
        let o = ixnctl(&s, t, &["--output", "json", "clients", "--name", "AgentDesktop"]);
        let v = json(&o);
        assert_eq!(v["clients"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["clients"][0]["client_name"], "AgentDesktop");
        // Pages of 2: the first page says there is more; --all follows every page.
        let o = ixnctl(&s, t, &["--output", "json", "clients", "--limit", "2"]);
        let v = json(&o);
        assert_eq!(v["clients"].as_array().unwrap().len(), 2);
        assert!(v["next"].is_string(), "{v}");
        let o = ixnctl(&s, t, &["--output", "json", "clients", "--limit", "2", "--all"]);
        let v = json(&o);
        let all = v["clients"].as_array().unwrap();
        assert_eq!(all.len(), 6, "{v}");
        assert!(v["next"].is_null());
        let mut ids: Vec<&str> = all.iter().map(|c| c["id"].as_str().unwrap()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 6, "no client twice across pages");
        // Kick the agent: EventError 15 reaches it; a second kick finds no one (exit 1).
        let o = ixnctl(&s, t, &["--output", "json", "clients", "--name", "AgentDesktop"]);
        let id = json(&o)["clients"][0]["id"].as_str().unwrap().to_string();
        let o = ixnctl(&s, t, &["kick", &id]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        assert!(out(&o).contains("closed with EventError 15"));
        assert_eq!(agent.answer(), Some(common::err(0, 15)));
        drop(held);
        let o = ixnctl(&s, t, &["kick", &id]);
        assert_eq!(o.status.code(), Some(1));
        assert!(err(&o).contains("no such client (404)"), "{}", err(&o));
    }
}

each_engine! {
    fn bans_are_listed_and_lifted() {
        let (s, token) = server("bans", &["--ban-failures", "1", "--ban-duration", "60s"]);
        let t = Some(token.as_path());
        let mut c = connect_from("127.0.0.31", s.addr);
        c.send(&rrc(1, "nobody", 1, None));
        assert_eq!(c.answer(), Some(common::err(1, 2)));
        s.wait_metric("ixn_bans_active", 1.0);
        let o = ixnctl(&s, t, &["bans"]);
        assert_eq!(o.status.code(), Some(0));
        let text = out(&o);
        assert!(text.starts_with("ADDRESS") && text.contains("127.0.0.31"), "{text}");
        let v = json(&ixnctl(&s, t, &["--output", "json", "bans"]));
        assert_eq!(v["bans"][0]["address"], "127.0.0.31");
        assert_eq!(v["bans"][0]["failures"], 1);
        let o = ixnctl(&s, t, &["unban", "127.0.0.31"]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        let o = ixnctl(&s, t, &["unban", "127.0.0.31"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(err(&o).contains("(404)"));
        let o = ixnctl(&s, t, &["unban", "not-an-address"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(err(&o).contains("(400)"));
        assert_eq!(s.wait_metric("ixn_bans_active", 0.0), 0.0);
    }
}

#[test]
fn a_wrong_token_no_token_and_a_server_that_is_down_say_what_to_do() {
    let (s, _) = server("auth", &[]);
    let dir = test_dir("ixnctl-auth-wrong");
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let o = ixnctl(&s, Some(&wrong), &["clients"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        err(&o).contains("refused the token in") && err(&o).contains("(401)"),
        "{}",
        err(&o)
    );
    let o = ixnctl(&s, None, &["bans"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(err(&o).contains("--token-file"), "{}", err(&o));
    let o = ixnctl(&s, None, &["--token-file", "/nonexistent/token", "bans"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unreadable token file is the caller's fault"
    );
    // Down: nothing listens there any more.
    let (admin, metrics) = (s.admin.unwrap(), s.metrics);
    drop(s);
    let down = Command::new(workspace_bin("ixnctl", "ixnctl"))
        .args(["--server", &format!("http://{admin}"), "clients"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(3));
    assert!(
        err(&down).contains("Is the server running with `--admin-listen`"),
        "{}",
        err(&down)
    );
    let down = Command::new(workspace_bin("ixnctl", "ixnctl"))
        .args(["--metrics", &format!("http://{metrics}"), "status"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(3));
    assert!(err(&down).contains("--metrics-listen"), "{}", err(&down));
}

#[test]
fn status_says_ready_then_draining() {
    let (s, _) = server("status", &["--workers", "2", "--lame-duck-duration", "3s"]);
    let _c = register(&s, "MediaServer_email");
    s.wait_metric("ixn_clients_registered", 1.0);
    let o = ixnctl(&s, None, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    for want in [
        "live",
        "ready",
        "engine",
        "workers",
        "registry clients",
        "registry loaded",
    ] {
        assert!(text.lines().any(|l| l.starts_with(want)), "{want}: {text}");
    }
    let v = json(&ixnctl(&s, None, &["--output", "json", "status"]));
    assert_eq!(v["live"], true);
    assert_eq!(v["ready"], true);
    assert_eq!(v["workers"], 2.0);
    assert_eq!(v["registered"], 1.0);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["registry_clients"].as_f64().unwrap() >= 3.0);
    assert!(v["registry_loaded_at"].as_str().unwrap().ends_with('Z'));
    // Draining: not ready, exit 1, for scripts.
    s.signal("TERM");
    let o = eventually_output(
        || ixnctl(&s, None, &["status"]),
        |o| o.status.code() == Some(1),
    );
    assert!(
        out(&o).contains("ready") && out(&o).contains("false"),
        "{}",
        out(&o)
    );
}

/// Runs `f` until `done` says its output is the one awaited (10 s at most).
fn eventually_output(f: impl Fn() -> Output, done: impl Fn(&Output) -> bool) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = f();
        if done(&o) || Instant::now() > deadline {
            assert!(done(&o), "never: {} {}", out(&o), err(&o));
            return o;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_fleet_subcommands_show_names_and_instances() {
    if !common::redis::available("ixnctl fleet") {
        return;
    }
    let dir = test_dir("ixnctl-fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let redis = common::redis::Redis::start(&dir);
    let reg = dir.join("registry.toml");
    std::fs::write(
        &reg,
        "[[client]]\nname = \"Rej\"\ntypes = [\"MediaServer\"]\non_duplicate = \"reject\"\n",
    )
    .unwrap();
    let member = |instance: &str| {
        let s = Server::start(&[
            "--registry",
            reg.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
            "--fleet-instance",
            instance,
            "--fleet-redis",
            &redis.url(),
        ]);
        s.wait_metric("ixn_fleet_up", 1.0);
        s
    };
    let (a, b) = (member("alpha"), member("beta"));
    let _held = register(&a, "Rej");
    // Asked of b: the holder is on a.
    let o = eventually_output(
        || ixnctl(&b, None, &["--output", "json", "names", "Rej"]),
        |o| o.status.code() == Some(0),
    );
    let v = json(&o);
    assert_eq!(v["name"], "Rej");
    assert_eq!(v["instance"], "alpha");
    assert!(v["id"].as_str().unwrap().ends_with("@alpha"), "{v}");
    let o = ixnctl(&b, None, &["names", "Rej"]);
    assert!(
        out(&o).lines().nth(1).unwrap().contains("alpha"),
        "{}",
        out(&o)
    );
    let o = ixnctl(&b, None, &["names", "Nobody"]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    // Both servers, with their admin addresses.
    let o = eventually_output(
        || ixnctl(&a, None, &["--output", "json", "instances"]),
        |o| {
            serde_json::from_slice::<Value>(&o.stdout)
                .is_ok_and(|v| v["instances"].as_array().is_some_and(|i| i.len() == 2))
        },
    );
    let v = json(&o);
    let mut names: Vec<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta"]);
    let table = out(&ixnctl(&a, None, &["instances"]));
    assert!(
        table.starts_with("INSTANCE") && table.contains(&b.admin.unwrap().to_string()),
        "{table}"
    );
    // Not in a fleet: said plainly, exit 1.
    let (lone, token) = server("lone", &[]);
    let o = ixnctl(&lone, Some(&token), &["instances"]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("not in a fleet"), "{}", err(&o));
}

fn tmux(args: &[&str]) -> Output {
    Command::new("tmux").args(args).output().expect("tmux")
}

#[test]
fn top_in_a_real_terminal_agrees_with_the_loadgen_and_q_restores_it() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("IXN_REQUIRE_TMUX").is_none(),
            "tmux is required (IXN_REQUIRE_TMUX)"
        );
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let s = Server::start(&[]);
    let session = format!("ixnctl-top-{}", std::process::id());
    let socket = test_dir("ixnctl-tmux").with_extension("sock");
    let sock = socket.to_str().unwrap();
    let ok = tmux(&[
        "-S",
        sock,
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        "sh",
    ]);
    assert!(ok.status.success(), "{}", err(&ok));
    let capture = || out(&tmux(&["-S", sock, "capture-pane", "-p", "-t", &session]));
    // The shell's screen before: top must leave it as it found it.
    tmux(&[
        "-S",
        sock,
        "send-keys",
        "-t",
        &session,
        "clear; echo before-top",
        "Enter",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let before = capture();
    assert!(before.contains("before-top"), "{before}");
    // Load at a fixed rate for long enough to read several refreshes.
    let rate = 2000u32;
    let json_path = test_dir("ixnctl-top").with_extension("json");
    let load = loadgen(
        s.addr,
        &json_path,
        &["--rate", &rate.to_string(), "--duration", "8s"],
    );
    let cmd = format!(
        "{} --metrics http://{} top",
        workspace_bin("ixnctl", "ixnctl").display(),
        s.metrics
    );
    tmux(&["-S", sock, "send-keys", "-t", &session, &cmd, "Enter"]);
    // Read the screen for a few seconds in the load's middle: the registrations line.
    std::thread::sleep(Duration::from_secs(3));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let screen = capture();
        assert!(screen.contains("ixnctl top"), "{screen}");
        let rate_shown = screen
            .lines()
            .find_map(|l| l.split("registrations ").nth(1))
            .and_then(|r| r.split("/s").next())
            .and_then(|r| r.trim().parse::<f64>().ok());
        seen.push((rate_shown, screen));
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Sorted and narrowed by keys.
    tmux(&["-S", sock, "send-keys", "-t", &session, "f"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        capture().contains("showing: registrations (f)"),
        "{}",
        capture()
    );
    tmux(&["-S", sock, "send-keys", "-t", &session, "s"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(capture().contains("sort: name (s)"), "{}", capture());
    tmux(&["-S", sock, "send-keys", "-t", &session, "q"]);
    std::thread::sleep(Duration::from_millis(500));
    let after = capture();
    let _ = tmux(&["-S", sock, "kill-session", "-t", &session]);
    assert!(load.wait_with_output().unwrap().status.success());
    let report = loadgen_report(&json_path);
    // The loadgen's own registrations per second, whole seconds only.
    let series = report["series"].as_array().unwrap();
    let whole: Vec<f64> = series[1..series.len() - 1]
        .iter()
        .map(|p| p["ok"].as_f64().unwrap())
        .collect();
    let achieved = whole.iter().sum::<f64>() / whole.len() as f64;
    for (shown, screen) in &seen {
        let shown = shown.unwrap_or_else(|| panic!("no registration rate on screen: {screen}"));
        assert!(
            (shown - achieved).abs() <= 0.1 * achieved,
            "top showed {shown}/s, the loadgen {achieved:.0}/s: {screen}"
        );
    }
    // Back to the shell's screen: the alternate screen left, the cursor and echo restored.
    assert!(
        after.contains("before-top"),
        "the terminal was not restored: {after}"
    );
    assert!(!after.contains("ixnctl top "), "{after}");
}
