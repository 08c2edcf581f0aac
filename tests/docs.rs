//! The operator's documentation names every label value the server can emit: close
//! reasons and timers are declared once (`CloseReason::ALL`, `Timer::ALL`) and the README
//! must list each of them.

use ixn::session::{CloseReason, Timer};

#[test]
fn readme_lists_every_close_reason_and_timer() {
    let readme = include_str!("../README.md");
    for name in CloseReason::ALL
        .iter()
        .map(|r| r.name())
        .chain(Timer::ALL.iter().map(|t| t.name()))
    {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not list `{name}`"
        );
    }
}

/// `flag -> (env, default)` from the README's operating-interface table.
fn readme_flags() -> std::collections::BTreeMap<String, (String, String)> {
    let readme = include_str!("../README.md");
    readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cols: Vec<String> = l
                .replace("\\|", "/")
                .split('|')
                .skip(1)
                .map(|c| c.trim().replace('`', ""))
                .collect();
            let flag = cols[0].split_whitespace().next().unwrap().to_string();
            let default = match cols[2].as_str() {
                "none" | "" => String::new(),
                d => d.replace(' ', ""),
            };
            (flag, (cols[1].clone(), default))
        })
        .collect()
}

/// `flag -> (env, default)` from `ixn-server --help`.
fn help_flags() -> std::collections::BTreeMap<String, (String, String)> {
    use clap::CommandFactory;
    let cmd = ixn::config::Args::command();
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            // Hidden flags are retired ones, refused with what to say instead.
            if long == "help" || long == "version" || a.is_hide_set() {
                return None;
            }
            let env = a
                .get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let default = help
                .split("[default: ")
                .nth(1)
                .and_then(|d| d.split(']').next())
                .unwrap_or("")
                .replace(' ', "");
            Some((format!("--{long}"), (env, default)))
        })
        .collect()
}

#[test]
fn readme_flag_table_and_help_agree() {
    let readme = readme_flags();
    let help = help_flags();
    let only_readme: Vec<_> = readme.keys().filter(|k| !help.contains_key(*k)).collect();
    let only_help: Vec<_> = help.keys().filter(|k| !readme.contains_key(*k)).collect();
    assert!(
        only_readme.is_empty(),
        "in the README, not in --help: {only_readme:?}"
    );
    assert!(
        only_help.is_empty(),
        "in --help, not in the README: {only_help:?}"
    );
    for (flag, (env, default)) in &readme {
        let (h_env, h_default) = &help[flag];
        assert_eq!(env, h_env, "{flag}: environment variable");
        assert_eq!(default, h_default, "{flag}: default (README vs --help)");
    }
}

#[test]
fn documented_defaults_are_the_ones_in_force() {
    use ixn::config::defaults as def;
    let c = ixn::config::Args::default().resolve().unwrap();
    let help = help_flags();
    // As the flags are written: whole seconds in s, else ms.
    let dur = |d: std::time::Duration| {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        }
    };
    let in_force = [
        ("--listen", c.listen[0].to_string(), def::LISTEN.to_string()),
        (
            "--registration-timeout",
            dur(c.session.registration_timeout),
            dur(def::REGISTRATION_TIMEOUT),
        ),
        (
            "--error-disconnect-timeout",
            dur(c.session.error_disconnect_timeout),
            dur(def::ERROR_DISCONNECT_TIMEOUT),
        ),
        ("--timer-tick", dur(c.timer_tick), dur(def::TIMER_TICK)),
        (
            "--max-connections",
            c.max_connections.to_string(),
            def::MAX_CONNECTIONS.to_string(),
        ),
        (
            "--max-frame-len",
            c.max_frame_len.to_string(),
            def::MAX_FRAME_LEN.to_string(),
        ),
        (
            "--metrics-listen",
            c.metrics_listen.to_string(),
            def::METRICS_LISTEN.to_string(),
        ),
        ("--backlog", c.backlog.to_string(), def::BACKLOG.to_string()),
        (
            "--tcp-keepalive",
            dur(c.tcp_keepalive.unwrap()),
            dur(def::TCP_KEEPALIVE),
        ),
        (
            "--write-timeout",
            dur(c.write_timeout),
            dur(def::WRITE_TIMEOUT),
        ),
        (
            "--drain-timeout",
            dur(c.drain_timeout),
            dur(def::DRAIN_TIMEOUT),
        ),
        (
            "--pin-workers",
            c.pin_workers.to_string(),
            def::PIN_WORKERS.to_string(),
        ),
        ("--metrics", c.metrics.to_string(), def::METRICS.to_string()),
        (
            "--registry-watch",
            c.registry_watch.to_string(),
            def::REGISTRY_WATCH.to_string(),
        ),
        (
            "--frame-timeout",
            dur(c.frame_timeout),
            dur(def::FRAME_TIMEOUT),
        ),
        (
            "--close-linger",
            dur(c.close_linger),
            dur(def::CLOSE_LINGER),
        ),
        (
            "--socket-send-buffer",
            c.socket_send_buffer.to_string(),
            def::SOCKET_SEND_BUFFER.to_string(),
        ),
        (
            "--metrics-max-connections",
            c.metrics_max_connections.to_string(),
            def::METRICS_MAX_CONNECTIONS.to_string(),
        ),
        (
            "--proxy-protocol-trusted",
            c.proxy_protocol_trusted
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            def::PROXY_PROTOCOL_TRUSTED.join(","),
        ),
    ];
    for (flag, value, constant) in in_force {
        assert_eq!(value, constant, "{flag}: the resolver uses the constant");
        assert_eq!(
            help[flag].1, value,
            "{flag}: --help states the default in force"
        );
    }
    let session = ixn::session::SessionConfig::default();
    assert_eq!(session, c.session, "SessionConfig::default is the server's");
}
