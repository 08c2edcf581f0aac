//! The io_uring engine's own mechanics over real sockets: what its provided-buffer ring does under pressure.

mod common;

use common::*;

/// A ring of one provided buffer (debug builds: `IXN_DEBUG_RECV_BUFFERS`): receives that
/// land in the same batch find no buffer (`ENOBUFS`), end their multishot receive, and
/// must be armed again, or those clients would never be answered.
#[test]
fn enobufs_receives_are_armed_again() {
    if !engines().contains(&"uring") {
        return;
    }
    let s = Server::start_with_env(
        &["--engine", "uring", "--workers", "1"],
        &[("IXN_DEBUG_RECV_BUFFERS", "1")],
    );
    let base = s.fds();
    let mut clients: Vec<Client> = (0..200).map(|_| s.connect()).collect();
    // Split every request in two, each half sent to all clients back to back, so many
    // receives complete while the worker is busy and share one wake-up.
    let req = rrc(1, "MediaServer_email", 1, None);
    let (head, tail) = req.split_at(9);
    for half in [head, tail] {
        for c in &mut clients {
            c.send(half);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (n, c) in clients.iter_mut().enumerate() {
        assert!(
            matches!(c.answer(), Some(Ans::Ack { rid: 1, .. })),
            "client {n} was not acknowledged"
        );
    }
    // Counted per worker and published at its next tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.metric("ixn_receive_buffers_exhausted_total") == 0.0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(
        s.metric("ixn_receive_buffers_exhausted_total") > 0.0,
        "no receive ran out of buffers: the test did not exercise ENOBUFS"
    );
    for c in &mut clients {
        c.send(&unreg(2, None));
        assert_eq!(c.answer(), Some(ack(2, None)));
        c.expect_close();
    }
    drop(clients);
    s.assert_clean(base);
}
