//! Lame-duck drain over real sockets (docs/PROTOCOL.md §8): `/ready` turns 503 at once, the
//! grace passes, then registered clients get EventError 11 spread evenly over the
//! duration; a second SIGTERM sends the rest at once; the process exits 0.

#[macro_use]
mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

/// Waits up to `within` for the server to exit; its status code.
fn exit_code(s: &mut Server, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(st) = s.child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Registers `n` clients and returns them.
fn register(s: &Server, n: usize) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut c = s.connect();
            c.send(&rrc(i as i32 + 1, "MediaServer_email", 1, None));
            assert!(matches!(c.answer(), Some(Ans::Ack { .. })), "client {i}");
            c
        })
        .collect()
}

/// Waits for every client's EventError 11; returns when each arrived after `t0`.
fn answers_after(clients: &mut [Client], t0: Instant, within: Duration) -> Vec<Duration> {
    for c in clients.iter_mut() {
        c.s.set_nonblocking(true).unwrap();
    }
    let mut got: Vec<Option<Duration>> = vec![None; clients.len()];
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); clients.len()];
    while got.iter().any(Option::is_none) {
        assert!(
            t0.elapsed() < within,
            "not every client was told in {within:?}"
        );
        for (i, c) in clients.iter_mut().enumerate() {
            if got[i].is_some() {
                continue;
            }
            let mut chunk = [0u8; 64];
            if let Ok(n) = c.s.read(&mut chunk) {
                bufs[i].extend_from_slice(&chunk[..n]);
                if bufs[i].len() >= 26 || n == 0 {
                    got[i] = Some(t0.elapsed());
                    let f = ixn::protocol::decode(&bufs[i], 8192).unwrap().unwrap();
                    assert!(
                        matches!(f.message, ixn::protocol::Message::EventError(e) if e.error_code == 11),
                        "client {i}: {:?}",
                        f.message
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    got.into_iter().map(Option::unwrap).collect()
}

each_engine! {
    fn a_thousand_clients_are_told_evenly_over_the_duration() {
        let mut s = Server::start(&[
            "--lame-duck-duration",
            "2s",
            "--lame-duck-grace",
            "300ms",
            "--timer-tick",
            "20ms",
            "--workers",
            "2",
        ]);
        let mut clients = register(&s, 1000);
        assert_eq!(s.http_get("/ready").0, 200);
        let t0 = Instant::now();
        s.signal("TERM");
        // /ready turns 503 at once, well before the grace is over.
        let ready = loop {
            let (code, _) = s.http_get("/ready");
            if code == 503 || t0.elapsed() > Duration::from_millis(300) {
                break (code, t0.elapsed());
            }
        };
        assert_eq!(ready.0, 503, "/ready still 200 after {:?}", ready.1);
        assert!(
            ready.1 < Duration::from_millis(50),
            "/ready 503 only after {:?}",
            ready.1
        );
        let times = answers_after(&mut clients, t0, Duration::from_secs(8));
        let grace = Duration::from_millis(300);
        assert!(
            times.iter().all(|t| *t >= grace),
            "an answer came during the grace: {:?}",
            times.iter().min()
        );
        // Every 10 % slice of the 2 s spread tells 10 % ± 5 % of them.
        let mut slices = [0usize; 10];
        for t in &times {
            let k = (t.saturating_sub(grace).as_millis() / 200).min(9) as usize;
            slices[k] += 1;
        }
        for (k, n) in slices.iter().enumerate() {
            assert!(
                (50..=150).contains(n),
                "slice {k} told {n} of 1000: {slices:?}"
            );
        }
        drop(clients);
        assert_eq!(
            exit_code(&mut s, Duration::from_secs(10)),
            Some(0),
            "exit status"
        );
    }
}

each_engine! {
    fn a_second_sigterm_tells_the_rest_at_once() {
        let mut s = Server::start(&["--lame-duck-duration", "60s", "--timer-tick", "20ms"]);
        let mut clients = register(&s, 40);
        let t0 = Instant::now();
        s.signal("TERM");
        std::thread::sleep(Duration::from_millis(300));
        s.signal("TERM");
        let times = answers_after(&mut clients, t0, Duration::from_secs(3));
        assert!(
            times.iter().all(|t| *t < Duration::from_secs(2)),
            "{times:?}"
        );
        drop(clients);
        assert_eq!(exit_code(&mut s, Duration::from_secs(10)), Some(0));
    }
}
