//! Signals (SIGHUP reloads, SIGTERM and SIGINT drain), the registry and TLS reloads, and
//! the registry file's watch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;

/// Handles each signal as it arrives (blocking; the process exits around this thread).
pub(super) fn on_signals(shared: &Arc<Shared>, mut signals: signal_hook::iterator::Signals) {
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            reload(shared);
        } else if sig == signal_hook::consts::SIGUSR2 {
            super::upgrade::start(shared.clone(), None);
        } else if !shared.health.draining.swap(true, Ordering::AcqRel) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            tracing::info!(
                active = shared.active.load(Ordering::Relaxed),
                grace = %humantime::format_duration(shared.config.lame_duck_grace),
                spread = %humantime::format_duration(shared.config.lame_duck_duration),
                "draining: no new connections; registered clients get ServerShuttingDown"
            );
        } else if !shared.hurry.swap(true, Ordering::AcqRel) {
            tracing::info!("second signal: the rest get ServerShuttingDown at once");
        }
    }
}

pub(super) fn reload(shared: &Shared) {
    reload_tls(shared);
    if shared.config.registry.is_none() {
        tracing::info!("SIGHUP: the embedded registry is in use; nothing to reload");
        return;
    }
    reload_registry(shared, "SIGHUP");
}

/// Re-reads the registry file (on SIGHUP, or when `--registry-watch` saw it change): a
/// file that fails is refused and the registry in force kept.
pub(super) fn reload_registry(shared: &Shared, why: &str) {
    let Some(path) = &shared.config.registry else {
        return;
    };
    match crate::config::load_registry(path) {
        Ok(r) => {
            let n = r.len();
            shared.registry.store(Arc::new(r));
            crate::metrics::registry_loaded(n);
            metrics::counter!(crate::metrics::REGISTRY_RELOADS, "result" => "ok").increment(1);
            tracing::info!(
                clients = n,
                "{why}: registry reloaded from {}",
                path.display()
            );
        }
        Err(e) => {
            metrics::counter!(crate::metrics::REGISTRY_RELOADS, "result" => "error").increment(1);
            tracing::error!("{why}: registry reload refused, keeping the old one: {e}");
        }
    }
}

/// Quiet time after a change before the registry is read: an editor's or a ConfigMap's
/// update is several events (write, rename, symlink swap) that end as one reload.
pub(super) const WATCH_DEBOUNCE: Duration = Duration::from_millis(250);

/// The longest a change waits for its directory to be quiet.
pub(super) const WATCH_MAX_DELAY: Duration = Duration::from_secs(1);

/// `--registry-watch`: watches the registry file's directory (and, if the file is a
/// symlink, its target's), and reloads once a burst of changes is over and the file's
/// content differs from what was last read. A Kubernetes ConfigMap updates by swapping a
/// `..data` symlink in the directory, which a watch on the file itself would miss.
pub(super) fn watch_registry(shared: Arc<Shared>) {
    let Some(path) = shared.config.registry.clone() else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = match notify::recommended_watcher(tx) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("--registry-watch: cannot watch: {e}; reload with SIGHUP");
            return;
        }
    };
    let mut watched = Vec::new();
    if let Err(e) = watch_dirs(&mut watcher, &path, &mut watched) {
        tracing::warn!("--registry-watch: {e}; reload with SIGHUP");
        return;
    }
    let shown = path.display().to_string();
    // A change between the load at start and the watch's first look is not missed: what
    // the file says now is compared with what is in force. Done here, before the server
    // says it is listening, so that no start-up read is still under way once it does (a
    // test counting the server's descriptors then counted the file's).
    let mut last = std::fs::read(&path).ok();
    if let Ok(r) = crate::config::load_registry(&path) {
        if r != **shared.registry.load() {
            reload_registry(&shared, "registry file changed since start");
        }
    }
    let spawned = std::thread::Builder::new()
        .name("ixn-registry-watch".into())
        .spawn(move || {
            // Kept alive by this thread: dropping it ends the watch.
            let mut watcher = watcher;
            while rx.recv().is_ok() {
                // Debounced: until the directory is quiet for WATCH_DEBOUNCE, but never
                // longer than WATCH_MAX_DELAY, so another file that changes all the time
                // in the same directory cannot hold a reload off for ever (N7).
                let first = Instant::now();
                while first.elapsed() < WATCH_MAX_DELAY && rx.recv_timeout(WATCH_DEBOUNCE).is_ok() {
                }
                // A symlink re-pointed to another directory: watch where it leads now
                // (N10).
                if let Err(e) = watch_dirs(&mut watcher, &path, &mut watched) {
                    tracing::warn!("--registry-watch: {e}");
                }
                let now = std::fs::read(&path).ok();
                if now.is_some() && now != last {
                    reload_registry(&shared, "registry file changed");
                    last = now;
                }
            }
        });
    match spawned {
        Ok(_) => tracing::info!("watching {shown} for changes"),
        Err(e) => tracing::warn!("--registry-watch: {e}; reload with SIGHUP"),
    }
}

/// Watches the directories the registry's path names and leads to (the directory of the
/// path itself, and of every link on the way to the file: a Kubernetes ConfigMap swaps a
/// symlink in the first, the file lives in the last); directories no longer on the way
/// are unwatched.
pub(super) fn watch_dirs(
    watcher: &mut impl notify::Watcher,
    path: &std::path::Path,
    watched: &mut Vec<std::path::PathBuf>,
) -> Result<(), String> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    let mut at = path.to_path_buf();
    for _ in 0..16 {
        let dir = match at.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => ".".into(),
        };
        dirs.push(std::fs::canonicalize(&dir).unwrap_or(dir.clone()));
        match std::fs::read_link(&at) {
            Ok(next) => at = dir.join(next),
            Err(_) => break,
        }
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        if let Some(d) = real.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in watched.iter().filter(|d| !dirs.contains(d)) {
        let _ = watcher.unwatch(d);
    }
    for d in dirs.iter().filter(|d| !watched.contains(d)) {
        watcher
            .watch(d, notify::RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
    }
    *watched = dirs;
    Ok(())
}

/// Re-reads the TLS files: new connections use the new config, live ones keep theirs; a
/// file that fails keeps the old config.
pub(super) fn reload_tls(shared: &Shared) {
    if shared.config.tls.cert.is_none() {
        return;
    }
    let bytes = shared.config.tls.file_bytes();
    let mut last = shared.tls_files.lock().unwrap_or_else(|e| e.into_inner());
    if bytes.is_some() && *last == bytes {
        // A registry-only SIGHUP: the TLS config, and its session-ticket key, stay.
        tracing::info!("TLS files unchanged; TLS config kept (session tickets stay valid)");
        return;
    }
    match shared.config.tls.load() {
        Ok(tls) => {
            shared.tls.store(tls);
            *last = bytes;
            tracing::info!("TLS certificate, key and client CAs reloaded");
        }
        Err(e) => tracing::error!("TLS reload refused, keeping the old config: {e}"),
    }
}
