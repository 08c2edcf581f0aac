//! Fault injection for the integration tests, compiled into debug builds only.
//!
//! `IXN_DEBUG_PANIC=accept|connection` makes the accept loop or a connection task panic at
//! its first event, so a test can check that any panic in a worker ends the whole process;
//! `IXN_DEBUG_ID_SPACE=N` makes each worker's ProxyClientIds wrap after N, so a test can
//! reach the wrap; `IXN_DEBUG_RECV_BUFFERS=N` gives engine v2 a provided-buffer ring of N
//! buffers (a power of two), so a test can force `ENOBUFS`. In release builds these
//! functions are constants and the variables are ignored.

/// Panics if `IXN_DEBUG_PANIC` names `point` (debug builds only).
#[inline]
pub fn maybe_panic(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("IXN_DEBUG_PANIC").is_ok_and(|v| v == point) {
        panic!("IXN_DEBUG_PANIC={point}: injected fault");
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// The last ProxyClientId of a worker's sequence: `IXN_DEBUG_ID_SPACE` in debug builds,
/// else the positive i32 range.
pub fn id_space_last() -> u32 {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("IXN_DEBUG_ID_SPACE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        return n;
    }
    i32::MAX as u32
}

/// Provided buffers per engine v2 worker: `IXN_DEBUG_RECV_BUFFERS` in debug builds (a power
/// of two up to `default`), else `default`.
pub fn recv_buffers(default: u16) -> u16 {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("IXN_DEBUG_RECV_BUFFERS")
        .ok()
        .and_then(|v| v.parse::<u16>().ok())
        .filter(|n| n.is_power_of_two() && *n <= default)
    {
        return n;
    }
    default
}
