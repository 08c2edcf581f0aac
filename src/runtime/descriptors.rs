//! The descriptor budget: the soft limit raised to the hard one, and shared out between
//! the server's own descriptors, the metrics and admin listeners, and clients.

use std::sync::atomic::Ordering;

use super::{lifecycle, Shared};

/// Shares the descriptor limit out: the server's own, the metrics and admin listeners'
/// bounds, then clients; and says so when it is too low for every client. `clients_open`:
/// client connections open already (a live upgrade's), not counted as the server's own.
pub(super) fn share_descriptors(shared: &Shared, limit: usize, clients_open: usize) {
    let config = &shared.config;
    let reserve = open_descriptors().saturating_sub(clients_open)
        + FD_HEADROOM
        + lifecycle::REFUSALS_LINGERING_MAX * config.workers;
    let admin = if config.admin_listen.is_some() {
        crate::admin::MAX_CONNECTIONS
    } else {
        0
    };
    let b = FdBudget::new(
        limit,
        reserve,
        config.max_connections,
        config.metrics_max_connections,
        admin,
    );
    if b.clients < config.max_connections {
        tracing::warn!(
            max_connections = config.max_connections,
            nofile = limit,
            "the descriptor limit leaves room for {} client connections, after {} for the server itself, {} for the metrics listener and {} for the admin API (the rest get ServerOverloaded); raise it to at least {} (LimitNOFILE=)",
            b.clients,
            reserve,
            b.metrics,
            admin,
            b.wanted
        );
    }
    if b.metrics < config.metrics_max_connections {
        tracing::warn!(
            metrics_max_connections = config.metrics_max_connections,
            nofile = limit,
            "the descriptor limit leaves room for only {} metrics connections; raise it to at least {} (LimitNOFILE=)",
            b.metrics,
            b.wanted
        );
    }
    shared.max_clients.store(b.clients, Ordering::Relaxed);
    shared
        .health
        .max_connections
        .store(b.metrics, Ordering::Relaxed);
}

/// Descriptors kept free beyond the server's own, the metrics listener's and the lingering
/// refusals': a refusal (EventError 10) that does not linger still needs one, briefly.
pub(super) const FD_HEADROOM: usize = 16;

/// Raises the soft descriptor limit to the hard one (as nginx's `worker_rlimit_nofile` or
/// Go's runtime do) and returns it; `None` if it is unlimited or unreadable.
pub(super) fn raise_nofile_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we pass and keeps no pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass and keeps no pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// Descriptors the process has open now.
pub(super) fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// How the descriptor limit is shared out (the spec's descriptor budget): the server's own
/// descriptors first, then the metrics listener's bound (`--metrics-max-connections`) and
/// the admin API's, then clients, up to `--max-connections`. Clients never starve the
/// listeners operators and their probes depend on (a second scrape, `/live` during a
/// scrape); a client over the budget is answered ServerOverloaded rather than left in the
/// backlog by a failing accept(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// Client connections admitted at once.
    pub clients: usize,
    /// Metrics connections served at once.
    pub metrics: usize,
    /// The limit that would give every listener its configured maximum.
    pub wanted: usize,
}

impl FdBudget {
    /// Shares `limit` descriptors, `reserve` of which the server keeps for itself and
    /// `admin` for the admin API.
    pub fn new(
        limit: usize,
        reserve: usize,
        max_clients: usize,
        max_metrics: usize,
        admin: usize,
    ) -> Self {
        let room = limit.saturating_sub(reserve);
        let metrics = max_metrics.clamp(1, room.max(1));
        let clients = room
            .saturating_sub(metrics + admin)
            .clamp(1, max_clients.max(1));
        Self {
            clients,
            metrics,
            wanted: reserve + max_metrics + admin + max_clients,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FdBudget;

    #[test]
    fn the_descriptor_limit_goes_to_metrics_and_admin_before_clients() {
        // Plenty: every listener gets its maximum.
        let b = FdBudget::new(20_000, 50, 1000, 64, 16);
        assert_eq!((b.clients, b.metrics), (1000, 64));
        assert_eq!(b.wanted, 50 + 64 + 16 + 1000);
        // This machine's 20,000 against the default 100,000 clients: the metrics
        // listener keeps its 64 (it kept 1 before revision 3).
        let b = FdBudget::new(20_000, 100, 100_000, 64, 0);
        assert_eq!((b.clients, b.metrics), (20_000 - 100 - 64, 64));
        // Too little for the clients: metrics and admin first, clients the rest.
        let b = FdBudget::new(200, 52, 100, 64, 16);
        assert_eq!((b.clients, b.metrics), (68, 64));
        // Nothing left at all: one of each, and accept(2) failures are backed off.
        let b = FdBudget::new(40, 52, 100, 64, 16);
        assert_eq!((b.clients, b.metrics), (1, 1));
    }
}
