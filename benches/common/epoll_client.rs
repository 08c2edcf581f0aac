//! The client-side yardstick for `ixn-loadgen` (issue 14): the churn a user would write
//! with mio (epoll) on one thread, nothing more. `IN_FLIGHT` connections at a time, each
//! connect (non-blocking, from the next of the loadgen's 16 default loopback sources, with
//! `IP_BIND_ADDRESS_NO_PORT`) → RequestRegisterClient → EventAck → graceful close. It
//! prints how many registrations completed, so the bench can divide the process's CPU by it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

/// Connections in flight, as the loadgen's `--concurrency` in the bench.
pub const IN_FLIGHT: usize = 64;
/// The loadgen's default sources for a loopback target: 127.0.0.2 to 127.0.0.17.
const SOURCES: u32 = 16;

fn connect(target: SocketAddr, n: u32) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let one: libc::c_int = 1;
    // SAFETY: `s` is open for the call; the value is a live c_int and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + n % SOURCES);
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.set_nonblocking(true)?;
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// Runs the churn against `IXN_BENCH_EPOLL_CLIENT` (an address) for
/// `IXN_BENCH_CLIENT_SECS` seconds and prints `done N`.
pub fn epoll_client_main() {
    let target: SocketAddr = std::env::var("IXN_BENCH_EPOLL_CLIENT")
        .unwrap()
        .parse()
        .unwrap();
    let secs: f64 = std::env::var("IXN_BENCH_CLIENT_SECS")
        .unwrap()
        .parse()
        .unwrap();
    let rrc = hex::decode(super::common::RRC).unwrap();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(256);
    // Per slot: the stream and how many answer bytes arrived.
    let mut slots: Vec<Option<(TcpStream, usize, bool)>> = (0..IN_FLIGHT).map(|_| None).collect();
    let mut next = 0u32;
    let mut done = 0u64;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut open = |k: usize, slots: &mut Vec<Option<(TcpStream, usize, bool)>>, poll: &Poll| {
        next = next.wrapping_add(1);
        if let Ok(mut s) = connect(target, next) {
            poll.registry()
                .register(&mut s, Token(k), Interest::WRITABLE | Interest::READABLE)
                .unwrap();
            slots[k] = Some((s, 0, false));
        }
    };
    for k in 0..IN_FLIGHT {
        open(k, &mut slots, &poll);
    }
    let mut buf = [0u8; 256];
    while Instant::now() < until {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in &events {
            let k = ev.token().0;
            let Some((s, got, sent)) = slots[k].as_mut() else {
                continue;
            };
            let mut finished = ev.is_error();
            if ev.is_writable() && !*sent {
                *sent = true;
                finished |= s.write_all(&rrc).is_err();
            }
            if ev.is_readable() {
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            finished = true;
                            break;
                        }
                        Ok(n) => {
                            *got += n;
                            if *got >= super::common::ACK_LEN {
                                done += 1;
                                finished = true;
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            finished = true;
                            break;
                        }
                    }
                }
            }
            if finished {
                // Dropping the stream closes it gracefully (FIN), as the loadgen does.
                slots[k] = None;
                open(k, &mut slots, &poll);
            }
        }
    }
    println!("done {done}");
}
