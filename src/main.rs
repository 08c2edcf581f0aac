//! `ixn-server`: parses the operating interface (docs/PROTOCOL.md §8) and runs the server.

use std::process::ExitCode;

use clap::Parser;
use ixn::config::{Args, LogFormat};
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

/// Any panic, on any thread, ends the process.
///
/// A worker's connection and accept tasks run on its runtime, which would catch a task's
/// panic and carry on: a slot, a descriptor and an `active` count leaked, or a listener
/// whose handshakes complete and are never served while `/ready` says 200. Nothing in the
/// process can tell which invariants the panic broke, so the one safe answer is to stop the
/// whole server and let the supervisor (systemd `Restart=on-failure`, Kubernetes) start a
/// clean one. A hook rather than `panic = "abort"` in the profile, so that every build (the
/// debug binary the integration tests drive included) behaves the same, and the panic is
/// logged through the server's own log format first.
fn abort_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(
            thread = name,
            "panic: {info}; aborting so that a supervisor restarts the server"
        );
        std::process::abort();
    }));
}

/// `--signal-drain PID`: SIGTERM to the server, then wait for it to exit (checked every
/// 200 ms). In a container the server is PID 1 and this hook dies with it.
fn signal_drain(pid: i32) -> ExitCode {
    let alive = |sig| {
        // SAFETY: kill(2) with a pid and a signal number has no memory effects.
        unsafe { libc::kill(pid, sig) == 0 }
    };
    if !alive(libc::SIGTERM) {
        eprintln!(
            "ixn-server: --signal-drain {pid}: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    while alive(0) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    abort_on_panic();
    let args = Args::parse();
    if let Some(pid) = args.signal_drain {
        return signal_drain(pid);
    }
    let check_only = args.check_config;
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ixn-server: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    let registry = match ixn::config::registry(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ixn-server: registry: {e}");
            return ExitCode::from(2);
        }
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
