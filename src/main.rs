//! `ixn-server`: parses the operating interface (IXN1.md section 8) and runs the server.

use std::process::ExitCode;

use clap::Parser;
use ixn::config::{Args, LogFormat};
use ixn::registry::Registry;
use tracing_subscriber::EnvFilter;

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let check_only = args.check_config;
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ixn-server: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    let registry = match &config.registry {
        None => Registry::embedded(),
        Some(path) => match Registry::load(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ixn-server: registry: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if check_only {
        println!(
            "configuration OK: {} worker(s), listen {:?}, registry {} client(s)",
            config.workers,
            config.listen,
            registry.len()
        );
        return ExitCode::SUCCESS;
    }
    match ixn::runtime::run(config, registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ixn-server: {e}");
            ExitCode::from(1)
        }
    }
}
