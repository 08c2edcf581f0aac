//! The client listeners: one `SO_REUSEPORT` socket per worker and address, bound only
//! once no dying predecessor's socket is left on a fixed port.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use ixn_proto::tls::ListenerKind;
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use super::error::StartError;
use crate::config::Config;

/// One listening socket with `SO_REUSEPORT`, so each worker can have its own.
pub(super) fn listener(
    addr: SocketAddr,
    config: &Config,
) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Accepted sockets inherit these from the listener: no per-connection syscalls.
    s.set_nodelay(true)?;
    // Bounds what a client that never reads pins in the kernel (autotuning would let a
    // send buffer grow to net.ipv4.tcp_wmem's maximum, 4 MiB by default). The kernel
    // doubles the value set to leave room for its bookkeeping, so half is set: the socket
    // then reports the flag's value (getsockopt SO_SNDBUF), and the memory it may pin,
    // payload and overhead together, stays within it.
    s.set_send_buffer_size(config.socket_send_buffer / 2)?;
    if let Some(idle) = config.tcp_keepalive {
        s.set_keepalive(true)?;
        s.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10))
                .with_retries(3),
        )?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(config.backlog.min(i32::MAX as u32) as i32)?;
    Ok(s.into())
}

/// One worker's listening socket and whether it requires a PROXY header.
pub(super) type Listener = (std::net::TcpListener, ListenerKind);

/// Every worker's listeners, and the addresses bound (with their PROXY flag).
pub(super) type Bound = (Vec<Vec<Listener>>, Vec<(SocketAddr, ListenerKind)>);

/// Binds every listener for every worker; port 0 is resolved once and shared. Returns the
/// bound addresses, the PROXY-protocol ones last.
/// How long start-up waits for a predecessor's listener to leave a port.
pub(super) const PREDECESSOR_WAIT: Duration = Duration::from_secs(2);

/// Waits until no socket listens on `addr` (a fixed port), for at most
/// [`PREDECESSOR_WAIT`]. A predecessor killed on this port (SIGKILL, a crash) can hold its
/// listener for some milliseconds after its process is gone: the kernel tears an io_uring
/// down asynchronously, and the listener its multishot accept refers to lives until then.
/// Joining the port's `SO_REUSEPORT` group meanwhile would share new connections with a
/// socket nobody accepts from, and they would be reset when it goes (hardening round 3,
/// D2, the start-up case). A listener that stays is a live process sharing the port on
/// purpose: the server says so and joins it.
pub(super) fn await_free_port(addr: SocketAddr) {
    if addr.port() == 0 {
        return;
    }
    let started = Instant::now();
    loop {
        // SO_REUSEADDR lets the probe bind beside connections in TIME_WAIT, never beside
        // a listener; without SO_REUSEPORT it cannot join a listener's group.
        let free = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|s| {
                s.set_reuse_address(true)?;
                s.bind(&addr.into())
            });
        match free {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            // Free, or an error the real bind will report.
            _ => return,
        }
        if started.elapsed() >= PREDECESSOR_WAIT {
            tracing::warn!(
                "another socket listens on {addr}: new connections are shared with it \
                 (SO_REUSEPORT) while it does"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(super) fn bind_all(config: &Config) -> Result<Bound, StartError> {
    let mut per_worker: Vec<Vec<Listener>> = (0..config.workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for (addr, proxy) in configured(config) {
        await_free_port(addr);
        let first = listener(addr, config).map_err(|source| StartError::Bind { addr, source })?;
        let actual = first.local_addr()?;
        per_worker[0].push((first, proxy));
        for w in per_worker.iter_mut().skip(1) {
            let l = listener(actual, config).map_err(|source| StartError::Bind {
                addr: actual,
                source,
            })?;
            w.push((l, proxy));
        }
        bound.push((actual, proxy));
    }
    Ok((per_worker, bound))
}

/// The client listeners `config` asks for, in the order [`bind_all`] binds them.
fn configured(config: &Config) -> Vec<(std::net::SocketAddr, ListenerKind)> {
    [
        (&config.listen, ListenerKind::Plain),
        (&config.proxy_listen, ListenerKind::Proxy),
        (&config.tls_listen, ListenerKind::Tls),
        (&config.proxy_tls_listen, ListenerKind::ProxyTls),
    ]
    .into_iter()
    .flat_map(|(addrs, kind)| addrs.iter().map(move |a| (*a, kind)))
    .collect()
}

/// Whether a listener bound at `actual` serves `wanted` (port 0: whichever it got).
pub(super) fn serves(wanted: std::net::SocketAddr, actual: std::net::SocketAddr) -> bool {
    wanted.ip() == actual.ip() && (wanted.port() == 0 || wanted.port() == actual.port())
}

/// A live upgrade: the listeners handed over (one worker's) must be the ones `config`
/// asks for, kinds and addresses; a change of listeners needs a restart, not an upgrade.
pub(super) fn check_inherited(config: &Config, inherited: &[Listener]) -> Result<(), String> {
    let mut got: Vec<(std::net::SocketAddr, ListenerKind)> = inherited
        .iter()
        .filter_map(|(l, k)| l.local_addr().ok().map(|a| (a, *k)))
        .collect();
    let wanted = configured(config);
    for (addr, kind) in &wanted {
        match got.iter().position(|(a, k)| k == kind && serves(*addr, *a)) {
            Some(i) => {
                got.swap_remove(i);
            }
            None => {
                return Err(format!(
                    "the configuration asks for a {} listener on {addr}, which the running server does not have; \
                     changing listeners needs a restart",
                    kind.name()
                ))
            }
        }
    }
    match got.first() {
        None => Ok(()),
        Some((a, k)) => Err(format!(
            "the running server has a {} listener on {a} that the configuration no longer asks for; \
             changing listeners needs a restart",
            k.name()
        )),
    }
}

/// Puts `filter` on a listener (atomically replacing the one before), or takes it off.
pub(super) fn set_ban_filter(
    listener: BorrowedFd<'_>,
    filter: Option<&[libc::sock_filter]>,
) -> std::io::Result<()> {
    let s = socket2::SockRef::from(&listener);
    match filter {
        Some(f) => s.attach_filter(f),
        // ENOENT: there was none.
        None => match s.detach_filter() {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        },
    }
}

/// Packets the kernel dropped at this socket (`SK_MEMINFO_DROPS`): on a listener, SYNs its
/// filter dropped and those that found its backlog full.
pub(super) fn socket_drops(listener: BorrowedFd<'_>) -> u64 {
    // From <asm-generic/socket.h> (every architecture we build for); libc does not
    // export it.
    const SO_MEMINFO: libc::c_int = 55;
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` and `len` are live locals, `len` is `info`'s size in bytes, and the
    // kernel writes at most `len` bytes to `info` (and the length it wrote to `len`).
    let r = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r == 0 {
        u64::from(info[libc::SK_MEMINFO_DROPS as usize])
    } else {
        0
    }
}
