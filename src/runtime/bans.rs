//! A worker's part in bans below accept (`crate::ban_filter`): at each tick, when the set
//! of bans has changed (made, lifted by the admin API, ended, or come from the fleet),
//! the filters on this worker's listeners are rebuilt, so a change takes effect within a
//! tick; and the SYNs they dropped are counted in
//! `ixn_connections_refused_total{reason="banned_syn"}`.
//!
//! PROXY listeners get no filter: the address a ban names is only known from the header,
//! after accept, where the check at accept (EventError 16) still applies. So does it for
//! the bans beyond what a filter holds.
//!
//! Counting: the kernel counts a listener's drops as one figure (`SK_MEMINFO_DROPS`), SYNs
//! its filter dropped and SYNs that found its backlog full alike. Drops are counted only
//! while a filter is on the listener, so a full backlog with no ban in force (a storm
//! in `pace` mode) is never counted as bans; with bans in force, it is.

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use ixn_proto::tls::ListenerKind;

use super::listeners::{set_ban_filter, socket_drops};
use crate::admission::Admission;
use crate::metrics::WorkerMetrics;

/// A worker's filters: the set of bans they were built from and the drops seen.
#[derive(Debug, Default)]
pub(super) struct BanFilters {
    /// The ban epoch the filters were built at (`None`: never built).
    epoch: Option<u64>,
    /// A filter is on at least one listener.
    on: bool,
    /// The drops of the filtered listeners at the last tick.
    drops: u64,
    /// A full filter was reported (once per filling).
    warned: bool,
}

impl BanFilters {
    /// Counts the drops since the last tick, then rebuilds the filters if the bans changed.
    pub(super) fn tick(
        &mut self,
        admission: &Admission,
        now: Instant,
        listeners: &[(BorrowedFd<'_>, ListenerKind)],
        metrics: &WorkerMetrics,
    ) {
        if !admission.limits().ban_filter {
            return;
        }
        let filtered = || listeners.iter().filter(|(_, kind)| !kind.proxy());
        if self.on {
            let drops: u64 = filtered().map(|(fd, _)| socket_drops(*fd)).sum();
            metrics.syns_dropped(drops.saturating_sub(self.drops));
            self.drops = drops;
        }
        let epoch = admission.ban_epoch();
        if self.epoch == Some(epoch) {
            return;
        }
        self.epoch = Some(epoch);
        let bans: Vec<IpAddr> = admission.bans(now).iter().map(|b| b.address).collect();
        let (mut on, mut left_out) = (false, 0);
        for (fd, _) in filtered() {
            let v6 = socket2::SockRef::from(fd)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| a.is_ipv6());
            let program = crate::ban_filter::program(&bans, v6);
            let family = bans.iter().filter(|ip| ip.is_ipv6() == v6).count();
            left_out += family - program.as_ref().map_or(0, |(_, held)| *held);
            match set_ban_filter(*fd, program.as_ref().map(|(p, _)| &p[..])) {
                Ok(()) => on |= program.is_some(),
                Err(e) => tracing::warn!("ban filter not set on a listener: {e}"),
            }
        }
        if left_out > 0 && !self.warned {
            tracing::warn!(
                "{left_out} ban(s) beyond the listeners' filters: refused at accept (EventError 16)"
            );
        }
        self.warned = left_out > 0;
        if on && !self.on {
            // Drops from before the filter (a full backlog) are not bans.
            self.drops = filtered().map(|(fd, _)| socket_drops(*fd)).sum();
        }
        self.on = on;
    }
}
