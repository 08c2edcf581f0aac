//! The raw io_uring yardstick (issue 14): the ingredients an io_uring engine can use, with
//! no protocol logic beyond echoing the ReferenceId into a fixed EventAck. One thread, one
//! ring set up with `SINGLE_ISSUER | DEFER_TASKRUN`, sleeping in `io_uring_enter`;
//! multishot accept; multishot recv into a provided-buffer ring (an idle connection owns
//! no read buffer); answers with one non-blocking `send(2)`; closes through the ring;
//! completions reaped in batches. `ENOBUFS` re-arms the receive.

use std::net::TcpListener;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const ACCEPT: u64 = u64::MAX;
const CLOSE: u64 = 1 << 62;
const BGID: u16 = 0;
const BUFS: u16 = 4096;
const BUF_LEN: usize = 512;

/// The provided-buffer ring: `BUFS` entries the kernel fills receives into.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> BufRing {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(BUFS) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .unwrap();
        // SAFETY: the layout has a non-zero size; the memory is zeroed, which is a valid
        // `BufRingEntry` array, and freed in `Drop` with the same layout.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        assert!(!entries.is_null());
        let mut r = BufRing {
            entries,
            layout,
            bufs: vec![0; usize::from(BUFS) * BUF_LEN],
            tail: 0,
        };
        // SAFETY: `entries` points to `BUFS` entries that live until the ring is dropped
        // (the `BufRing` is dropped after the `IoUring`, see `uring_baseline_main`).
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, BUFS, BGID)
                .expect("IORING_REGISTER_PBUF_RING");
        }
        for bid in 0..BUFS {
            r.give_back(bid);
        }
        r
    }

    /// Hands buffer `bid` back to the kernel.
    fn give_back(&mut self, bid: u16) {
        let i = usize::from(self.tail & (BUFS - 1));
        // SAFETY: `i < BUFS`, inside the allocation; only this thread writes entries.
        let e = unsafe { &mut *self.entries.add(i) };
        e.set_addr(self.bufs[usize::from(bid) * BUF_LEN..].as_ptr() as u64);
        e.set_len(BUF_LEN as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays the first entry's `resv`, inside the allocation;
        // the release store publishes the entry written above to the kernel.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        &self.bufs[usize::from(bid) * BUF_LEN..][..len]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) }
    }
}

fn push(ring: &mut IoUring, e: squeue::Entry) {
    // SAFETY: every entry pushed refers to descriptors and buffers that outlive it (the
    // listener, accepted sockets closed only through the ring, the registered buffer ring).
    while unsafe { ring.submission().push(&e) }.is_err() {
        ring.submit().expect("io_uring_enter");
    }
}

fn recv(fd: i32) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), BGID)
        .build()
        .user_data(fd as u64)
}

/// Runs the yardstick server; listens on `IXN_BENCH_LISTEN` or an ephemeral port.
pub fn uring_baseline_main() {
    let at = std::env::var("IXN_BENCH_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let listener = TcpListener::bind(at).unwrap();
    eprintln!("listening on {}", listener.local_addr().unwrap());
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .expect("a SINGLE_ISSUER | DEFER_TASKRUN ring (Linux 6.1)");
    let mut bufs = BufRing::new(&ring);
    let mut ack = hex::decode("0000001600800002000101000400000007000401000400000001").unwrap();
    // Bytes of a frame split across receives, by descriptor (rare: requests are small).
    let mut partial: Vec<Vec<u8>> = Vec::new();
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    push(&mut ring, accept.clone());
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    loop {
        ring.submit_and_wait(1).expect("io_uring_enter");
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (ud, res, flags) in done.drain(..) {
            if ud == ACCEPT {
                if res >= 0 {
                    push(&mut ring, recv(res));
                }
                if !cqueue::more(flags) {
                    push(&mut ring, accept.clone());
                }
                continue;
            }
            if ud & CLOSE != 0 {
                continue;
            }
            let fd = ud as i32;
            if res > 0 {
                let bid = cqueue::buffer_select(flags).expect("a provided buffer");
                let data = bufs.buf(bid, res as usize);
                let slot = fd as usize;
                if partial.len() <= slot {
                    partial.resize_with(slot + 1, Vec::new);
                }
                let mut input: &[u8] = data;
                let joined;
                if !partial[slot].is_empty() {
                    partial[slot].extend_from_slice(data);
                    joined = std::mem::take(&mut partial[slot]);
                    input = &joined;
                }
                let mut out = 0;
                while input.len() >= 4 {
                    let len = u32::from_be_bytes(input[..4].try_into().unwrap()) as usize + 4;
                    if input.len() < len {
                        break;
                    }
                    if len >= 17 {
                        ack[13..17].copy_from_slice(&input[13..17]);
                    }
                    input = &input[len..];
                    out += 1;
                }
                if !input.is_empty() {
                    partial[slot] = input.to_vec();
                }
                for _ in 0..out {
                    // SAFETY: `fd` is an accepted socket not yet closed (closes go through
                    // this loop); `ack` is a live buffer of `ack.len()` bytes.
                    unsafe {
                        libc::send(
                            fd,
                            ack.as_ptr().cast(),
                            ack.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        );
                    }
                }
                bufs.give_back(bid);
                if !cqueue::more(flags) {
                    push(&mut ring, recv(fd));
                }
            } else if res == -libc::ENOBUFS {
                // Every buffer was in use: the multishot receive ended; arm it again.
                push(&mut ring, recv(fd));
            } else if !cqueue::more(flags) {
                // End of stream or an error: close through the ring.
                if let Some(p) = partial.get_mut(fd as usize) {
                    p.clear();
                }
                push(
                    &mut ring,
                    opcode::Close::new(types::Fd(fd)).build().user_data(CLOSE),
                );
            }
        }
    }
}
