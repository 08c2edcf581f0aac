//! Live upgrades (docs/OPERATIONS.md 7e): SIGUSR2 starts the binary again (the path it was
//! started from, so a replaced file is the new version) with `--upgrade-from SOCKET`; the
//! new process validates its configuration, connects, and takes over the listeners, the
//! metrics and admin listeners, the bans and every connection at rest, without a client
//! noticing.
//!
//! # Wire
//!
//! A Unix stream socket. Each message is an 8-byte header (the JSON body's length and the
//! number of descriptors, both big-endian u32) sent with its descriptors attached
//! (`SCM_RIGHTS`), then the body. In order: `hello` (new → old: the wire's and
//! [`handoff::VERSION`]s, its workers), `welcome` or `refuse`, `bans`, `conns` batches of
//! at most [`BATCH`] connections per worker, each worker's `listeners`, `http` (the
//! metrics and admin listeners), `done`; then `adopted` (new → old: it holds everything
//! and, its set-up done, is about to start its workers) and `released` (old → new).
//!
//! # Ownership
//!
//! `released` is the commit. Before it the old process keeps its descriptor of every
//! connection it sent, and nothing reads them (the old workers stopped, the new ones have
//! not started): if the new process exits, is killed or refuses, the old one takes every
//! connection back (its workers adopt them again) and accepts again. On `adopted` it
//! closes its descriptors (the sockets stay open in the new process), says `released`,
//! tells its workers to drain what they kept (TLS, closing, not at rest in time) as a lame
//! duck, and exits. The new process serves nothing until it reads `released` (or finds the
//! old process gone, which can take nothing back); any other answer, or none within
//! [`STEP`], and it exits without serving. So a connection is served by one process at a
//! time.

use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ixn_proto::handoff::{self, Handoff};
use ixn_proto::tls::ListenerKind;
use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};

use super::shared::Shared;
use crate::admin_api::Upgrade;
use crate::control::{Command, Handed, UpgradeDone, UpgradeRefused};
use crate::metrics::{upgrade_ended, UpgradeConns, UpgradeEnd};

/// The wire's version.
const WIRE: u32 = 1;
/// Connections per `conns` message (the kernel passes at most 253 descriptors at once).
const BATCH: usize = 200;
/// How long connections not at rest (an answer being written, a verdict awaited) are
/// waited for before the rest are handed over without them.
const AT_REST_WAIT: Duration = Duration::from_secs(2);
/// How long the new process has for each step (start and connect, adopt).
const STEP: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Msg {
    Hello {
        wire: u32,
        handoff: u32,
        workers: usize,
        pid: u32,
    },
    Welcome,
    Refuse {
        why: String,
    },
    /// Bans: address, milliseconds left, failures.
    Bans {
        bans: Vec<(IpAddr, u64, u32)>,
    },
    Conns {
        worker: usize,
        conns: Vec<Handoff>,
    },
    Listeners {
        worker: usize,
        kinds: Vec<String>,
    },
    Http {
        metrics: bool,
        admin: bool,
    },
    Done,
    Adopted {
        conns: usize,
    },
    /// The commit, with what the new process reports of the handover: its duration so
    /// far and the connections the old process kept (its own metrics end with it).
    Released {
        duration_ms: u64,
        kept: usize,
    },
}

fn send(s: &UnixStream, msg: &Msg, fds: &[RawFd]) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg)?;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
    head[4..].copy_from_slice(&(fds.len() as u32).to_be_bytes());
    let n = loop {
        match s.send_with_fd(&head, fds) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    let mut w = s;
    w.write_all(&head[n..])?;
    w.write_all(&body)
}

/// Reads messages and the descriptors that came with them.
struct Reader {
    s: UnixStream,
    bytes: Vec<u8>,
    fds: std::collections::VecDeque<OwnedFd>,
}

impl Reader {
    fn new(s: UnixStream) -> Self {
        Self {
            s,
            bytes: Vec::new(),
            fds: Default::default(),
        }
    }

    fn recv(&mut self) -> std::io::Result<(Msg, Vec<OwnedFd>)> {
        loop {
            if self.bytes.len() >= 8 {
                let len = u32::from_be_bytes([
                    self.bytes[0],
                    self.bytes[1],
                    self.bytes[2],
                    self.bytes[3],
                ]) as usize;
                let nfds = u32::from_be_bytes([
                    self.bytes[4],
                    self.bytes[5],
                    self.bytes[6],
                    self.bytes[7],
                ]) as usize;
                if self.bytes.len() >= 8 + len {
                    // The descriptors come with the header's first byte: with the whole
                    // message here, missing ones were dropped by the kernel (this
                    // process's descriptor limit).
                    if self.fds.len() < nfds {
                        return Err(other(format!(
                            "{} of {nfds} descriptors were lost in passing (the descriptor limit is too low)",
                            nfds - self.fds.len()
                        )));
                    }
                    let msg = serde_json::from_slice(&self.bytes[8..8 + len])?;
                    self.bytes.drain(..8 + len);
                    return Ok((msg, self.fds.drain(..nfds).collect()));
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            let mut fds = [0 as RawFd; 253];
            let (n, nfds) = match self.s.recv_with_fd(&mut buf, &mut fds) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for fd in &fds[..nfds] {
                // SAFETY: the kernel installed these descriptors in this process for this
                // message; nothing else owns them.
                let fd = unsafe { OwnedFd::from_raw_fd(*fd) };
                // Not inherited by a later upgrade's child.
                let _ = socket2::SockRef::from(&fd).set_cloexec(true);
                self.fds.push_back(fd);
            }
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.bytes.extend_from_slice(&buf[..n]);
        }
    }
}

fn other(what: impl Into<String>) -> std::io::Error {
    std::io::Error::other(what.into())
}

/// The executable to start: the path this process was started from (so the file found
/// there now, the new version), or `IXN_UPGRADE_BINARY`.
fn executable() -> PathBuf {
    if let Some(p) = std::env::var_os("IXN_UPGRADE_BINARY") {
        return p.into();
    }
    static START: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    START
        .get_or_init(|| std::env::current_exe().unwrap_or_else(|_| "ixn-server".into()))
        .clone()
}

/// Remembers the executable's path at start (before a package manager replaces it).
pub(super) fn remember_executable() {
    let _ = executable();
}

/// SIGUSR2 (`done`: `None`) or `POST /v1/upgrade`: starts a live upgrade on a thread of its
/// own, unless one cannot run now; `done` is told how it ended.
pub(super) fn start(shared: Arc<Shared>, done: Option<UpgradeDone>) {
    let why = if shared.fleet.is_some() {
        Some("live upgrades are not supported with --fleet-redis (the fleet knows names by instance); drain and restart instead")
    } else if shared.health.draining.load(Ordering::Acquire) {
        Some("draining; no upgrade")
    } else if shared.upgrading.swap(true, Ordering::AcqRel) {
        Some("an upgrade is under way already")
    } else {
        None
    };
    if let Some(why) = why {
        tracing::warn!("upgrade: {why}");
        upgrade_ended(UpgradeEnd::Refused);
        if let Some(done) = done {
            let _ = done.send(Err(UpgradeRefused::Now(why.to_string())));
        }
        return;
    }
    let _ = std::thread::Builder::new()
        .name("ixn-upgrade".into())
        .spawn(move || {
            let t0 = Instant::now();
            let ended = hand_over(&shared, t0).map_err(|e| {
                tracing::error!("upgrade failed, this process keeps serving: {e}");
                upgrade_ended(UpgradeEnd::Failed);
                shared.upgrading.store(false, Ordering::Release);
                UpgradeRefused::Failed(e.to_string())
            });
            if let Some(done) = done {
                let _ = done.send(ended);
            }
        });
}

/// The old process's side.
fn hand_over(shared: &Arc<Shared>, t0: Instant) -> std::io::Result<Upgrade> {
    // In a directory of its own that only this user can enter: nobody else can connect in
    // the new process's place (and the peer's user is checked too).
    let dir = std::env::temp_dir().join(format!(
        "ixn-upgrade-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    }
    let _cleanup = RemoveOnDrop(dir.clone());
    let path = dir.join("upgrade.sock");
    let listener = UnixListener::bind(&path)?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut skip = false;
    for a in std::env::args_os().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        if a == "--upgrade-from" {
            skip = true;
            continue;
        }
        if a.to_string_lossy().starts_with("--upgrade-from=") {
            continue;
        }
        args.push(a);
    }
    let exe = executable();
    let mut child = NewProcess(Some(
        std::process::Command::new(&exe)
            .args(&args)
            .arg("--upgrade-from")
            .arg(&path)
            .spawn()
            .map_err(|e| other(format!("cannot start {}: {e}", exe.display())))?,
    ));
    tracing::info!(pid = child.id(), binary = %exe.display(), "upgrade: started the new binary, pid {}", child.id());
    // The new process's connection, unless it exits first.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + STEP;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) if same_user(&s) => break s,
            Ok(_) => tracing::warn!("upgrade: a connection from another user was refused"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if let Some(status) = child.try_wait()? {
            return Err(other(format!(
                "the new binary exited before taking over ({status})"
            )));
        }
        if Instant::now() > deadline {
            return Err(other("the new binary did not connect in time"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(STEP))?;
    let mut reader = Reader::new(stream.try_clone()?);
    let workers = shared.config.workers;
    match reader.recv()?.0 {
        Msg::Hello {
            wire,
            handoff: h,
            workers: w,
            pid,
        } => {
            if let Some(why) = refusal((wire, h, w), workers) {
                let _ = send(&stream, &Msg::Refuse { why: why.clone() }, &[]);
                return Err(other(why));
            }
            tracing::info!(
                pid,
                "upgrade: the new binary checked its configuration; handing over"
            );
        }
        m => return Err(other(format!("the new binary said {m:?} first"))),
    }
    send(&stream, &Msg::Welcome, &[])?;
    let now = Instant::now();
    let bans = shared
        .admission
        .bans(now)
        .into_iter()
        .map(|b| {
            (
                b.address,
                b.until.saturating_duration_since(now).as_millis() as u64,
                b.failures,
            )
        })
        .collect();
    send(&stream, &Msg::Bans { bans }, &[])?;

    // Every worker hands over; what was sent is kept (open) until it is adopted.
    let (parts_tx, parts) = std::sync::mpsc::channel();
    for w in 0..workers {
        shared.inboxes.post(
            w,
            Command::HandOver {
                parts: parts_tx.clone(),
                until: Instant::now() + AT_REST_WAIT,
            },
        );
    }
    drop(parts_tx);
    let mut handed: Vec<Vec<Handed>> = (0..workers).map(|_| Vec::new()).collect();
    let (mut last, mut kept, mut failure) = (0, 0, None::<std::io::Error>);
    while last < workers {
        let Ok(part) = parts.recv_timeout(AT_REST_WAIT + STEP) else {
            failure.get_or_insert(other("a worker did not hand over"));
            break;
        };
        for chunk in part.conns.chunks(BATCH) {
            if failure.is_none() {
                let fds: Vec<RawFd> = chunk.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
                let conns = chunk.iter().map(|(h, _)| h.clone()).collect();
                if let Err(e) = send(
                    &stream,
                    &Msg::Conns {
                        worker: part.worker,
                        conns,
                    },
                    &fds,
                ) {
                    failure = Some(e);
                }
            }
        }
        handed[part.worker].extend(part.conns);
        if let Some(l) = part.last {
            last += 1;
            kept += l.kept;
            if failure.is_none() {
                let fds: Vec<RawFd> = l.listeners.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
                let kinds = l
                    .listeners
                    .iter()
                    .map(|(_, k)| k.name().to_string())
                    .collect();
                if let Err(e) = send(
                    &stream,
                    &Msg::Listeners {
                        worker: part.worker,
                        kinds,
                    },
                    &fds,
                ) {
                    failure = Some(e);
                }
            }
        }
    }
    let result = failure.map_or_else(
        || {
            let http = shared.http_fds.lock().unwrap_or_else(|e| e.into_inner());
            let fds: Vec<RawFd> = http.iter().flatten().map(|fd| fd.as_raw_fd()).collect();
            send(
                &stream,
                &Msg::Http {
                    metrics: http[0].is_some(),
                    admin: http[1].is_some(),
                },
                &fds,
            )?;
            drop(http);
            send(&stream, &Msg::Done, &[])?;
            match reader.recv()?.0 {
                Msg::Adopted { conns } => Ok(conns),
                m => Err(other(format!("the new binary said {m:?}, not adopted"))),
            }
        },
        Err,
    );
    let total: usize = handed.iter().map(Vec::len).sum();
    match result {
        Ok(adopted) => {
            // The commit: the new process serves them from its word on.
            drop(handed);
            let released = Msg::Released {
                duration_ms: t0.elapsed().as_millis() as u64,
                kept,
            };
            if let Err(e) = send(&stream, &released, &[]) {
                tracing::warn!("upgrade: the new binary did not hear that it may serve: {e}");
            }
            shared.health.handed_over.store(true, Ordering::Release);
            crate::http::stop_accepting();
            crate::metrics::upgrade_connections(UpgradeConns::Kept, kept);
            metrics::gauge!(crate::metrics::UPGRADE_DURATION).set(t0.elapsed().as_secs_f64());
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(child.id())]);
            tracing::info!(
                handed = total,
                adopted,
                kept,
                pid = child.id(),
                "upgrade: {total} connections handed to pid {} in {} ms; {kept} kept here drain as a lame duck",
                child.id(),
                t0.elapsed().as_millis()
            );
            for w in 0..workers {
                shared.inboxes.post(w, Command::Upgraded);
            }
            let pid = child.id();
            child.taken_over();
            Ok(Upgrade {
                duration_ms: t0.elapsed().as_millis() as u64,
                handed: total,
                kept,
                pid,
            })
        }
        Err(e) => {
            // Taken back at once: the new process serves nothing before `released`.
            crate::metrics::upgrade_connections(UpgradeConns::TakenBack, total);
            for (w, conns) in handed.into_iter().enumerate() {
                shared.inboxes.post(w, Command::TakeBack { conns });
            }
            // `child` goes when this returns (see `NewProcess`).
            Err(other(format!("{e}; {total} connections taken back")))
        }
    }
}

/// Why a new binary that says `hello` (its wire and handoff versions, its workers) cannot
/// take over from this one; `None` if it can.
fn refusal((wire, h, workers): (u32, u32, usize), ours: usize) -> Option<String> {
    if wire != WIRE || h != handoff::VERSION {
        Some(format!(
            "the new binary speaks upgrade wire {wire} and handoff {h}, this one {WIRE} and {}",
            handoff::VERSION
        ))
    } else if workers != ours {
        // Each worker's connections go to the worker of the same number.
        Some(format!(
            "the new binary runs {workers} workers, this one {ours}"
        ))
    } else {
        None
    }
}

/// The upgrade's directory, removed with its socket when the upgrade ends either way.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The new process until its commit. On any failure (this value dropped) it gets a moment
/// to say why as it exits, then it is killed and reaped; once it has taken over it is let
/// go ([`NewProcess::taken_over`]).
struct NewProcess(Option<std::process::Child>);

impl NewProcess {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0
            .as_mut()
            .map_or(Ok(None), std::process::Child::try_wait)
    }

    /// It serves now: left running (it is the server from here on).
    fn taken_over(mut self) {
        self.0 = None;
    }
}

impl Drop for NewProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let grace = Instant::now() + Duration::from_secs(2);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether the peer of `s` runs as this process's user.
fn same_user(s: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one `ucred` into the buffer we pass, of the length given;
    // the descriptor is `s`'s, open for the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    r == 0 && cred.uid == unsafe { libc::geteuid() }
}

/// What the new process takes over.
pub(super) struct Inherited {
    reader: Reader,
    pub bans: Vec<(IpAddr, u64, u32)>,
    pub conns: Vec<Vec<Handed>>,
    pub listeners: Vec<Vec<super::listeners::Listener>>,
    pub metrics: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

impl Inherited {
    /// Tells the old process this one holds every connection and is about to serve them,
    /// and waits until it has let go (`released`). An error means it may have taken them
    /// back: this process must not serve them. An old process that is gone (end of stream)
    /// cannot take anything back: the connections are this one's.
    pub(super) fn commit(mut self, conns: usize) -> std::io::Result<()> {
        send(&self.reader.s, &Msg::Adopted { conns }, &[])?;
        match self.reader.recv() {
            Ok((Msg::Released { duration_ms, kept }, _)) => {
                // The old process's figures end with it: this process reports them.
                crate::metrics::upgrade_connections(UpgradeConns::Kept, kept);
                upgrade_ended(UpgradeEnd::Done);
                metrics::gauge!(crate::metrics::UPGRADE_DURATION).set(duration_ms as f64 / 1000.0);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::warn!("upgrade: the old process is gone; its connections are this one's");
                Ok(())
            }
            Ok((m, _)) => Err(other(format!(
                "the running server said {m:?}, not released"
            ))),
            Err(e) => Err(e),
        }
    }
}

/// The new process's side: everything the old one hands over, before any worker starts.
pub(super) fn take_over(path: &Path, workers: usize) -> std::io::Result<Inherited> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(STEP))?;
    let hello = Msg::Hello {
        wire: WIRE,
        handoff: handoff::VERSION,
        workers,
        pid: std::process::id(),
    };
    send(&stream, &hello, &[])?;
    let mut reader = Reader::new(stream.try_clone()?);
    match reader.recv()?.0 {
        Msg::Welcome => {}
        Msg::Refuse { why } => return Err(other(format!("the running server refused: {why}"))),
        m => return Err(other(format!("the running server said {m:?}"))),
    }
    let mut inherited = Inherited {
        reader,
        bans: Vec::new(),
        conns: (0..workers).map(|_| Vec::new()).collect(),
        listeners: (0..workers).map(|_| Vec::new()).collect(),
        metrics: None,
        admin: None,
    };
    loop {
        let (msg, fds) = inherited.reader.recv()?;
        match msg {
            Msg::Bans { bans } => inherited.bans = bans,
            Msg::Conns { worker, conns } => {
                if conns.len() != fds.len() || worker >= workers {
                    return Err(other("a batch of connections does not match its sockets"));
                }
                inherited.conns[worker].extend(conns.into_iter().zip(fds));
            }
            Msg::Listeners { worker, kinds } => {
                if kinds.len() != fds.len() || worker >= workers {
                    return Err(other("listeners do not match their sockets"));
                }
                for (kind, fd) in kinds.iter().zip(fds) {
                    let kind = ListenerKind::ALL
                        .into_iter()
                        .find(|k| k.name() == kind)
                        .ok_or_else(|| other(format!("unknown listener kind {kind}")))?;
                    inherited.listeners[worker].push((std::net::TcpListener::from(fd), kind));
                }
            }
            Msg::Http { metrics, admin } => {
                let mut fds = fds.into_iter();
                if metrics {
                    inherited.metrics = fds.next().map(std::net::TcpListener::from);
                }
                if admin {
                    inherited.admin = fds.next().map(std::net::TcpListener::from);
                }
            }
            Msg::Done => return Ok(inherited),
            m => return Err(other(format!("unexpected {m:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use crate::runtime::upgrade::{handoff, refusal, send, Msg, Reader, WIRE};

    #[test]
    fn another_version_or_worker_count_is_refused() {
        assert_eq!(refusal((WIRE, handoff::VERSION, 2), 2), None);
        let why = refusal((WIRE + 1, handoff::VERSION, 2), 2).unwrap();
        assert!(why.contains(&format!("wire {}", WIRE + 1)), "{why}");
        assert!(refusal((WIRE, handoff::VERSION + 1, 2), 2).is_some());
        assert!(refusal((WIRE, handoff::VERSION, 3), 2)
            .unwrap()
            .contains("3 workers"));
    }

    #[test]
    fn messages_and_their_descriptors_arrive_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let (l1, l2) = (
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let fds = [l1.as_raw_fd(), l2.as_raw_fd()];
        let kinds = vec!["plain".into(), "proxy".into()];
        send(&a, &Msg::Listeners { worker: 1, kinds }, &fds).unwrap();
        send(&a, &Msg::Done, &[]).unwrap();
        let mut r = Reader::new(b);
        let (msg, got) = r.recv().unwrap();
        assert!(matches!(msg, Msg::Listeners { worker: 1, ref kinds } if kinds.len() == 2));
        let got: Vec<std::net::TcpListener> = got.into_iter().map(Into::into).collect();
        assert_eq!(got[0].local_addr().unwrap(), l1.local_addr().unwrap());
        assert_eq!(got[1].local_addr().unwrap(), l2.local_addr().unwrap());
        assert!(matches!(r.recv().unwrap(), (Msg::Done, ref f) if f.is_empty()));
        drop(a);
        assert_eq!(
            r.recv().unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }
}
