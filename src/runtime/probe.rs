//! Whether the io_uring engine can run on this host, and why not in operator terms (a
//! seccomp profile, a sysctl, the memlock limit, the kernel's version).

use super::error::StartError;
use super::uring;

/// io_uring features the kernel reports, for the start-up log.
pub(super) fn ring_features(p: &io_uring::Parameters) -> String {
    let all = [
        ("fast_poll", p.is_feature_fast_poll()),
        ("nodrop", p.is_feature_nodrop()),
        ("submit_stable", p.is_feature_submit_stable()),
        ("ext_arg", p.is_feature_ext_arg()),
        ("native_workers", p.is_feature_native_workers()),
        ("skip_cqe_on_success", p.is_feature_skip_cqe_on_success()),
        ("linked_file", p.is_feature_linked_file()),
    ];
    all.iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks that the io_uring engine can run here: first that a ring can be created at all
/// (explaining why not in operator terms: a seccomp profile, a sysctl, the memlock limit),
/// then that the kernel offers what the engine needs. Returns the kernel's io_uring
/// features, for the start-up log.
pub fn probe_io_uring() -> Result<String, StartError> {
    match io_uring::IoUring::new(8) {
        Ok(ring) => {
            let features = ring_features(ring.params());
            uring::probe().map_err(|why| StartError::IoUring(format!("it needs {why}")))?;
            Ok(features)
        }
        Err(e) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(0);
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) if kernel_has_io_uring() => "io_uring_setup returned ENOSYS on a kernel that has io_uring: a seccomp profile blocks it (the default profiles of Docker, containerd and Podman do); run with deploy/seccomp/ixn-server.json, which allows io_uring_setup, io_uring_enter and io_uring_register".to_string(),
                Some(libc::ENOSYS) => "the kernel has no io_uring (needs Linux 5.11 or later, built with CONFIG_IO_URING)".to_string(),
                Some(libc::EPERM) if disabled > 0 => format!(
                    "kernel.io_uring_disabled = {disabled}; set it to 0 (or 1 and run as a member of kernel.io_uring_group): sysctl -w kernel.io_uring_disabled=0"
                ),
                Some(libc::EPERM) => "io_uring_setup was refused (EPERM): a seccomp profile (container runtime or systemd SystemCallFilter) blocks it; allow io_uring_setup, io_uring_enter and io_uring_register".to_string(),
                Some(libc::ENOMEM) => "not enough locked memory for the ring (raise RLIMIT_MEMLOCK, LimitMEMLOCK= in systemd)".to_string(),
                _ => e.to_string(),
            };
            Err(StartError::IoUring(why))
        }
    }
}

/// Whether the io_uring engine can run here (the kernel, its settings and the seccomp
/// profile allow everything it needs); the reason in operator terms if not. The test
/// harness asks this to run every socket suite on each engine this machine allows.
pub fn io_uring_allowed() -> Result<(), String> {
    probe_io_uring().map(drop).map_err(|e| e.to_string())
}

/// Whether this kernel is new enough to have io_uring (5.11, the oldest the engines
/// support), so an ENOSYS from `io_uring_setup` means a filter, not a missing feature.
pub(super) fn kernel_has_io_uring() -> bool {
    let release = kernel_release();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (5, 11)
}

pub(super) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
