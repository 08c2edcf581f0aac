//! `ixnctl`: the operator's command line for `ixn-server` and a fleet of them. It speaks
//! the admin API (docs/PROTOCOL.md §10, §13) with the JSON types the server writes
//! (`ixn::admin_api`), reads `/live`, `/ready` and `/metrics`, and checks configuration
//! and registry files with the server's own code (`ixn::config`).

mod api;
mod top;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ixn::admin_api as types;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use api::{exit, refused, Admin, Failure};

/// The operator's command line for ixn-server: who is connected, kick, bans, a fleet's
/// names and servers, a live view, health, and configuration checks.
#[derive(Debug, Parser)]
#[command(name = "ixnctl", version, propagate_version = true)]
struct Cli {
    /// The server's admin API (its --admin-listen).
    #[arg(
        long,
        global = true,
        env = "IXN_ADMIN_URL",
        default_value = "http://127.0.0.1:9465"
    )]
    server: String,
    /// The server's metrics endpoint (its --metrics-listen), for `top` and `status`.
    #[arg(
        long,
        global = true,
        env = "IXN_METRICS_URL",
        default_value = "http://127.0.0.1:9464"
    )]
    metrics: String,
    /// The file holding the admin API's bearer token (the server's --admin-token-file).
    #[arg(long, global = true, env = "IXN_ADMIN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Tables sized to the terminal, or the API's JSON.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registered clients, oldest first.
    Clients {
        /// Only this ClientName.
        #[arg(long)]
        name: Option<String>,
        /// Clients per page (the server's default 100, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Closes one registered client with EventError 15 (in a fleet, on whichever server).
    Kick {
        /// Its id, as `clients` shows it.
        id: String,
    },
    /// The bans in force.
    Bans,
    /// Lifts the ban on an address (in a fleet, everywhere).
    Unban {
        /// The banned address.
        address: String,
    },
    /// Who holds a ClientName in the fleet.
    Names {
        /// The ClientName.
        name: String,
    },
    /// The fleet's live servers.
    Instances,
    /// A live view of the server, refreshed each second (q quits).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Health in one screen: exit 0 when live and ready, 1 when not ready, 3 when down.
    Status,
    /// A live upgrade (as SIGUSR2): the binary at the server's path takes over every
    /// connection; answered once it is over. Exit 1 if it could not run or failed (the
    /// server then keeps serving every connection).
    Upgrade,
    /// Checks a configuration file as `ixn-server --check-config` does.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Registry files.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Prints a shell's completions for ixnctl.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints ixnctl's man page (roff).
    Man,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Checks a registry file as the server reads it.
    Check {
        /// The registry file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("ixnctl: {f}");
            ExitCode::from(f.status)
        }
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
}

/// What a path segment or query value escapes: all but RFC 3986's unreserved characters
/// and the `:` and `@` of addresses and fleet client ids, which the API reads unescaped.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'@');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, ESCAPED).to_string()
}

fn admin(cli: &Cli) -> Result<Admin, Failure> {
    Admin::new(&cli.server, cli.token_file.as_deref())
}

/// A DELETE that succeeds with 204.
fn delete(cli: &Cli, path: &str, done: &str) -> Result<u8, Failure> {
    let a = admin(cli)?.call("DELETE", path)?;
    if a.status != 204 {
        return Err(refused(a.status, &a.body));
    }
    match cli.output {
        Output::Json => print_json(&serde_json::json!({ "done": done })),
        Output::Table => println!("{done}"),
    }
    Ok(0)
}

/// How long `upgrade` waits for the server's answer: its handover's own bounds, and more.
const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn upgrade(cli: &Cli) -> Result<u8, Failure> {
    let a = admin(cli)?.call_within("POST", "/v1/upgrade", Some(UPGRADE_TIMEOUT))?;
    if a.status != 200 {
        return Err(refused(a.status, &a.body));
    }
    let report: types::Upgrade = serde_json::from_str(&a.body).map_err(|e| {
        Failure::new(
            exit::REFUSED,
            format!("the server's answer to the upgrade is not what this ixnctl reads: {e}"),
        )
    })?;
    match cli.output {
        Output::Json => print_json(&report),
        Output::Table => println!(
            "upgraded: {} connections handed to pid {} in {} ms; {} drain from the old process as a lame duck",
            report.handed, report.pid, report.duration_ms, report.kept
        ),
    }
    Ok(0)
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let width = view::terminal_width();
    match &cli.command {
        Command::Clients { name, limit, all } => {
            let api = admin(&cli)?;
            let mut query = Vec::new();
            if let Some(n) = name {
                query.push(format!("name={}", encode(n)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let mut page: types::ClientPage =
                api.get(&format!("/v1/clients?{}", query.join("&")))?;
            let mut clients = std::mem::take(&mut page.clients);
            while let (true, Some(after)) = (*all, page.next.clone()) {
                let mut q = query.clone();
                q.push(format!("after={}", encode(&after)));
                page = api.get(&format!("/v1/clients?{}", q.join("&")))?;
                clients.append(&mut page.clients);
            }
            let page = types::ClientPage {
                clients,
                next: page.next,
            };
            match cli.output {
                Output::Json => print_json(&page),
                Output::Table => {
                    let rows: Vec<Vec<String>> = page
                        .clients
                        .iter()
                        .map(|c| {
                            vec![
                                c.id.clone(),
                                c.client_name.clone(),
                                c.client_type.clone(),
                                c.peer.clone(),
                                c.registered_at.clone(),
                                c.tls.as_ref().map_or("-".into(), |t| {
                                    if t.identities.is_empty() {
                                        t.version.clone()
                                    } else {
                                        format!("{} {}", t.version, t.identities.join(","))
                                    }
                                }),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        view::table(
                            &["ID", "CLIENT NAME", "TYPE", "PEER", "REGISTERED", "TLS"],
                            &rows,
                            width
                        )
                    );
                    if let Some(next) = &page.next {
                        println!("(more: --all, or the next page after {next})");
                    }
                }
            }
            Ok(0)
        }
        Command::Upgrade => upgrade(&cli),
        Command::Kick { id } => delete(
            &cli,
            &format!("/v1/clients/{}", encode(id)),
            &format!("client {id} closed with EventError 15"),
        ),
        Command::Bans => {
            let list: types::BanList = admin(&cli)?.get("/v1/bans")?;
            match cli.output {
                Output::Json => print_json(&list),
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .bans
                        .iter()
                        .map(|b| vec![b.address.clone(), b.until.clone(), b.failures.to_string()])
                        .collect();
                    print!(
                        "{}",
                        view::table(&["ADDRESS", "UNTIL", "FAILURES"], &rows, width)
                    );
                }
            }
            Ok(0)
        }
        Command::Unban { address } => delete(
            &cli,
            &format!("/v1/bans/{}", encode(address)),
            &format!("ban on {address} lifted"),
        ),
        Command::Names { name } => {
            let h: types::NameHolder = admin(&cli)?.get(&format!("/v1/names/{}", encode(name)))?;
            match cli.output {
                Output::Json => print_json(&h),
                Output::Table => print!(
                    "{}",
                    view::table(
                        &["CLIENT NAME", "INSTANCE", "ID"],
                        &[vec![h.name, h.instance, h.id]],
                        width
                    )
                ),
            }
            Ok(0)
        }
        Command::Instances => {
            let list: types::InstanceList = admin(&cli)?.get("/v1/instances")?;
            match cli.output {
                Output::Json => print_json(&list),
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .instances
                        .iter()
                        .map(|i| {
                            vec![
                                i.instance.clone(),
                                i.admin.clone().unwrap_or_else(|| "-".into()),
                                i.started_at.clone(),
                                i.clients.to_string(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        view::table(&["INSTANCE", "ADMIN", "STARTED", "CLIENTS"], &rows, width)
                    );
                }
            }
            Ok(0)
        }
        Command::Top { interval } => {
            if !(0.1..=3600.0).contains(interval) {
                return Err(Failure::new(
                    exit::INVALID,
                    "--interval is in seconds, 0.1 to 3600",
                ));
            }
            top::run(&cli.metrics, Duration::from_secs_f64(*interval))?;
            Ok(0)
        }
        Command::Status => status(&cli, width),
        Command::CheckConfig { file } => {
            let argv = [
                std::ffi::OsStr::new("ixn-server"),
                std::ffi::OsStr::new("--config"),
                file.as_os_str(),
            ];
            let checked = <ixn::config::Args as clap::Parser>::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|args| args.resolve().map_err(|e| format!("configuration: {e}")))
                .and_then(|config| {
                    ixn::config::registry(&config)
                        .map(|r| (config, r))
                        .map_err(|e| format!("registry: {e}"))
                });
            let (config, registry) = checked
                .map_err(|m| Failure::new(exit::INVALID, format!("{}: {m}", file.display())))?;
            let listen: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
            match cli.output {
                Output::Json => print_json(&serde_json::json!({
                    "ok": true,
                    "workers": config.workers,
                    "listen": listen,
                    "registry_clients": registry.len(),
                })),
                Output::Table => println!(
                    "configuration OK: {} worker(s), listen {}, registry {} client(s)",
                    config.workers,
                    listen.join(" "),
                    registry.len()
                ),
            }
            Ok(0)
        }
        Command::Registry {
            command: RegistryCommand::Check { file },
        } => {
            let r = ixn::config::load_registry(file)
                .map_err(|e| Failure::new(exit::INVALID, e.to_string()))?;
            match cli.output {
                Output::Json => print_json(&serde_json::json!({ "ok": true, "clients": r.len() })),
                Output::Table => println!("registry OK: {} client(s)", r.len()),
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "ixnctl",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Failure::new(exit::INVALID, e.to_string()))?;
            Ok(0)
        }
    }
}

/// `ixnctl status`: `/live`, `/ready` and what `/metrics` says of the server.
fn status(cli: &Cli, width: usize) -> Result<u8, Failure> {
    let (live, _) = api::metrics_get(&cli.metrics, "/live")?;
    let (ready, ready_body) = api::metrics_get(&cli.metrics, "/ready")?;
    let (m, body) = api::metrics_get(&cli.metrics, "/metrics")?;
    let snap = (m == 200)
        .then(|| view::Snapshot::parse(&body, std::time::Instant::now()).ok())
        .flatten();
    let label = |m: &str, l: &str| {
        snap.as_ref()
            .and_then(|s| s.label(m, l))
            .map_or(serde_json::Value::Null, Into::into)
    };
    let number = |m: &str| {
        snap.as_ref()
            .filter(|s| s.has(m))
            .map_or(serde_json::Value::Null, |s| s.sum(m).into())
    };
    let loaded = snap
        .as_ref()
        .filter(|s| s.has("ixn_registry_loaded_timestamp_seconds"))
        .map_or(serde_json::Value::Null, |s| {
            let t = s.sum("ixn_registry_loaded_timestamp_seconds").max(0.0);
            let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(t);
            humantime::format_rfc3339_seconds(at).to_string().into()
        });
    // (JSON key, what people read, value)
    let fields = [
        ("live", "live", (live == 200).into()),
        ("ready", "ready", (ready == 200).into()),
        ("version", "version", label("ixn_build_info", "version")),
        ("engine", "engine", label("ixn_engine_info", "engine")),
        ("workers", "workers", number("ixn_workers")),
        (
            "connections",
            "connections",
            number("ixn_connections_active"),
        ),
        (
            "registered",
            "registered clients",
            number("ixn_clients_registered"),
        ),
        (
            "registry_clients",
            "registry clients",
            number("ixn_registry_clients"),
        ),
        ("registry_loaded_at", "registry loaded", loaded),
        (
            "registry_reloads",
            "registry reloads",
            number("ixn_registry_reloads_total"),
        ),
        ("bans", "bans", number("ixn_bans_active")),
        (
            "drain_remaining",
            "draining, left to tell",
            number("ixn_drain_remaining"),
        ),
    ];
    match cli.output {
        Output::Json => {
            let o: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, _, v)| (k.to_string(), v))
                .collect();
            print_json(&o);
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = fields
                .into_iter()
                .map(|(_, k, v)| {
                    let v = match v {
                        serde_json::Value::Null => "-".to_string(),
                        serde_json::Value::String(s) => s,
                        v => v.to_string(),
                    };
                    let v = if k == "ready" && ready != 200 {
                        format!("{v} ({})", ready_body.trim())
                    } else {
                        v
                    };
                    vec![k.to_string(), v]
                })
                .collect();
            let t = view::table(&["", ""], &rows, width);
            print!("{}", t.split_once('\n').map_or("", |x| x.1));
        }
    }
    Ok(match (live == 200, ready == 200) {
        (true, true) => 0,
        _ => exit::REFUSED,
    })
}
