//! Keepalive (docs/PROTOCOL.md §12) at the level an engine sees it: the value in force
//! and its EventAck, the deadline that re-checks the last complete frame instead of moving
//! with every frame, its interplay with the frame deadline, and EventError 19.

use super::*;
use crate::session::KeepAliveConfig;

fn rrc_ka(rid: i32, name: &str, ty: i32, keep_alive: Option<u16>) -> Vec<u8> {
    rrc_with(rid, name, ty, None, keep_alive)
}

fn keep_alive_request(rid: i32) -> Vec<u8> {
    let mut v = Vec::new();
    encode(
        &Message::KeepAlive(crate::protocol::KeepAlive { reference_id: rid }),
        &mut v,
    )
    .unwrap();
    v
}

/// The KeepAlive attribute of the one EventAck in `out`.
fn acked_keep_alive(out: &[u8]) -> Option<u16> {
    let f = decode(out, usize::MAX).unwrap().unwrap();
    let Message::EventAck(a) = f.message else {
        panic!("{:?}", f.message)
    };
    a.keep_alive
}

fn with_keep_alive(min: u16, max: u16, default: u16) -> H {
    let (mut h, _) = H::new(false);
    h.config.session.keep_alive = KeepAliveConfig { min, max, default };
    h
}

#[test]
fn the_keepalive_in_force_is_clamped_and_announced_in_the_event_ack() {
    // (asked, default) → in force; min 5, max 3600.
    for (asked, default, want) in [
        (Some(30), 0, Some(30)),
        (Some(1), 0, Some(5)),
        (Some(65535), 0, Some(3600)),
        (Some(0), 0, None),
        (None, 0, None),
        (None, 60, Some(60)),
        (Some(0), 60, Some(60)),
        (Some(10), 60, Some(10)),
    ] {
        let mut h = with_keep_alive(5, 3600, default);
        let p = h.read(&rrc_ka(1, "MediaServer_email", 1, asked));
        assert!(p.registered);
        assert_eq!(acked_keep_alive(&h.out), want, "asked {asked:?}");
        assert_eq!(h.c.session().keep_alive(), want);
        let expect = match want {
            Some(k) => TimerChange::Arm(
                Timer::KeepAlive,
                h.now + Duration::from_millis(u64::from(k) * 1500),
            ),
            None => TimerChange::Cancel,
        };
        assert_eq!(p.timer, expect, "asked {asked:?}");
    }
}

#[test]
fn a_frame_costs_no_timer_and_the_deadline_rechecks_the_last_one() {
    let mut h = with_keep_alive(5, 3600, 0);
    let t0 = h.now;
    let _ = h.read(&rrc_ka(1, "MediaServer_email", 1, Some(10)));
    h.out.clear();
    h.later(Duration::from_secs(4));
    let p = h.read(&keep_alive_request(2));
    assert_eq!(p.timer, TimerChange::Keep, "no wheel operation per frame");
    assert_eq!(h.answers(), vec![(2, 0)]);
    // The deadline armed at registration (t0 + 15 s) finds a frame at t0 + 4 s.
    h.now = t0 + Duration::from_secs(15);
    let p = h.deadline(Timer::KeepAlive);
    assert_eq!(p.action, Action::Continue);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::KeepAlive, t0 + Duration::from_secs(19))
    );
    assert!(h.out.is_empty());
    // One millisecond early is still alive.
    h.now = t0 + Duration::from_secs(19) - Duration::from_millis(1);
    let p = h.deadline(Timer::KeepAlive);
    assert_eq!(p.action, Action::Continue);
    assert!(matches!(p.timer, TimerChange::Arm(Timer::KeepAlive, _)));
    // Silent for 15 s: EventError{0, 19}, close once written.
    h.now = t0 + Duration::from_secs(19);
    let p = h.deadline(Timer::KeepAlive);
    assert_eq!(p.action, Action::CloseAfterWrite);
    assert_eq!(h.answers(), vec![(0, 19)]);
    assert_eq!(h.c.on_eof(), CloseReason::KeepAlive);
    assert_eq!(h.c.session().state(), State::Closing);
    // A stale one after that does nothing.
    assert_eq!(h.deadline(Timer::KeepAlive), Progress::NOTHING);
}

#[test]
fn any_complete_frame_is_a_sign_of_life_even_one_answered_with_an_error() {
    let mut h = with_keep_alive(5, 3600, 0);
    let t0 = h.now;
    let _ = h.read(&rrc_ka(1, "MediaServer_email", 1, Some(5)));
    h.later(Duration::from_secs(7));
    let p = h.read(&other(2));
    assert_eq!(p.timer, TimerChange::Keep);
    h.now = t0 + Duration::from_millis(7500);
    let p = h.deadline(Timer::KeepAlive);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::KeepAlive, t0 + Duration::from_millis(14500))
    );
}

#[test]
fn a_partial_frame_arms_whichever_deadline_comes_first() {
    // Keepalive 5 s (silent at most 7.5 s), frame timeout 5 s.
    let mut h = with_keep_alive(5, 3600, 0);
    let t0 = h.now;
    let _ = h.read(&rrc_ka(1, "MediaServer_email", 1, Some(5)));
    let f = other(2);
    // Begun at 1 s: its frame deadline (6 s) comes before the keepalive's (7.5 s).
    h.now = t0 + Duration::from_secs(1);
    let p = h.read(&f[..3]);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::Frame, t0 + Duration::from_secs(6))
    );
    // Completed: back to the keepalive deadline, from this frame.
    h.now = t0 + Duration::from_secs(2);
    let p = h.read(&f[3..]);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::KeepAlive, t0 + Duration::from_millis(9500))
    );
    // Begun at 6 s: the keepalive's 9.5 s comes before the frame's 11 s.
    h.now = t0 + Duration::from_secs(6);
    let p = h.read(&f[..3]);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::KeepAlive, t0 + Duration::from_millis(9500))
    );
    // A begun frame is no sign of life: at 9.5 s it expires.
    h.now = t0 + Duration::from_millis(9500);
    h.out.clear();
    let p = h.deadline(Timer::KeepAlive);
    assert_eq!(p.action, Action::CloseAfterWrite);
    assert_eq!(h.answers(), vec![(0, 19)]);
}

#[test]
fn request_keep_alive_is_any_other_message_before_registration() {
    let mut h = with_keep_alive(5, 3600, 0);
    let p = h.read(&keep_alive_request(3));
    assert_eq!(h.answers(), vec![(3, 1)]);
    assert!(matches!(
        p.timer,
        TimerChange::Arm(Timer::ErrorDisconnect, _)
    ));
    assert_eq!(h.c.session().state(), State::Rejected);
}

#[test]
fn a_keep_alive_outside_its_range_is_malformed() {
    for v in [-1i32, 65536, i32::MIN, i32::MAX] {
        let mut h = with_keep_alive(5, 3600, 0);
        // RequestRegisterClient ReferenceId=4 ClientName=MediaServer_email ClientType=1,
        // then KeepAlive (attribute 9, int) = v.
        let mut f = rrc_ka(4, "MediaServer_email", 1, Some(0));
        let n = f.len();
        f[n - 4..].copy_from_slice(&v.to_be_bytes());
        let _ = h.read(&f);
        assert_eq!(h.answers(), vec![(4, 7)], "KeepAlive {v}");
    }
}

#[test]
fn a_proxys_logical_clients_do_not_change_its_keepalive() {
    let mut h = with_keep_alive(5, 3600, 0);
    let _ = h.read(&rrc_ka(1, "Proxy_small", 3, Some(20)));
    h.out.clear();
    let p = h.read(&rrc_ka(2, "MediaServer_email", 1, Some(60)));
    assert_eq!(p.logical_delta, 1);
    assert_eq!(
        acked_keep_alive(&h.out),
        None,
        "a logical client's EventAck"
    );
    assert_eq!(h.c.session().keep_alive(), Some(20));
    assert_eq!(p.timer, TimerChange::Keep);
}

#[test]
fn without_a_keepalive_nothing_is_armed_while_registered() {
    let mut h = with_keep_alive(5, 3600, 0);
    let _ = h.read(&rrc_ka(1, "MediaServer_email", 1, None));
    assert_eq!(h.c.armed(), None);
    h.later(Duration::from_secs(100_000));
    let p = h.read(&keep_alive_request(2));
    assert_eq!(p.timer, TimerChange::Keep);
    assert_eq!(h.answers().last(), Some(&(2, 0)), "still answered");
    assert_eq!(h.deadline(Timer::KeepAlive), Progress::NOTHING);
}

#[test]
fn a_deadline_in_the_same_millisecond_as_the_last_frame_finds_it_alive() {
    // The frame's moment is rounded up, the present down: within one millisecond the
    // silence is "negative", which must read as none (not as 49 days of it).
    let mut h = with_keep_alive(5, 3600, 0);
    h.later(Duration::from_micros(1500));
    let _ = h.read(&rrc_ka(1, "MediaServer_email", 1, Some(5)));
    h.out.clear();
    let p = h.deadline(Timer::KeepAlive);
    assert_eq!(p.action, Action::Continue);
    assert_eq!(
        p.timer,
        TimerChange::Arm(Timer::KeepAlive, h.now + Duration::from_millis(7500))
    );
    assert!(h.out.is_empty());
}
