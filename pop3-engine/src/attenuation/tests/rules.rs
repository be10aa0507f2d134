//! The patent's other rules through the whole engine: LOGIN-DELAY, the load-adaptive n,
//! one-in-m and the fast-check reward.

use super::*;
use crate::attenuation::{LoadAdaptive, LoginDelay, LoginDelayAction};

fn with_login_delay(action: LoginDelayAction) -> Harness<AttenuationEngine> {
    let mut h = alice_verified_empty();
    h.engine.shared.config.login_delay = Some(LoginDelay {
        delay: Duration::from_secs(120),
        action,
    });
    h
}

/// alice's PASS on a new session `conn`: what the engine did with it.
fn pass(h: &mut Harness<AttenuationEngine>, conn: ConnId, pw: &str) -> Vec<Action> {
    h.open(conn);
    h.client(conn, b"USER alice\r\n");
    h.client(conn, format!("PASS {pw}\r\n").as_bytes())
}

#[test]
fn capa_advertises_the_login_delay() {
    let mut h = with_login_delay(LoginDelayAction::Local);
    h.open(2);
    let capa = to_client_bytes(&h.client(2, b"CAPA\r\n"));
    assert!(
        contains(&capa, b"\r\nLOGIN-DELAY 120\r\n"),
        "{}",
        capa.escape_ascii()
    );
    // And after an attenuated login, for the user.
    h.now += Duration::from_secs(30);
    attenuated_login(&mut h, 3, "pw");
    let capa = to_client_bytes(&h.client(3, b"CAPA\r\n"));
    assert!(
        contains(&capa, b"\r\nLOGIN-DELAY 120\r\n"),
        "{}",
        capa.escape_ascii()
    );
}

#[test]
fn a_check_sooner_than_the_login_delay_is_refused_and_may_retry() {
    let mut h = with_login_delay(LoginDelayAction::Refuse);
    h.now += Duration::from_secs(30);
    let out = pass(&mut h, 2, "pw");
    assert!(
        to_client_bytes(&out).starts_with(b"-ERR [LOGIN-DELAY]"),
        "{out:?}"
    );
    assert_eq!(h.engine.state(2), Some(State::Authorization));
    // A wrong password is the server's to judge, never refused or answered here.
    assert_eq!(
        h.client(2, b"USER alice\r\nPASS guess\r\n")[1..],
        [ConnectUpstream]
    );
    h.engine.close(2, h.now);
    // The refusal did not restart the delay: 121 s after the last check, answered.
    h.now += Duration::from_secs(91);
    assert_eq!(
        pass(&mut h, 3, "pw"),
        [ConnectUpstream],
        "n is over: the server"
    );
    assert_eq!(h.engine.counters().login_delay_refused, 1);
}

#[test]
fn a_check_sooner_than_the_login_delay_is_answered_locally_from_an_old_view() {
    let mut h = with_login_delay(LoginDelayAction::Local);
    // Past n (60 s), inside the delay (120 s): answered from the view held.
    h.now += Duration::from_secs(90);
    assert_eq!(pass(&mut h, 2, "pw"), [to_client(LOGGED_IN)]);
    // The session trusts that view: no login behind the client's back.
    assert_eq!(h.client(2, b"STAT\r\n"), [to_client(b"+OK 0 0\r\n")]);
    h.engine.close(2, h.now);
    // Never with a wrong password.
    h.now += Duration::from_secs(10);
    assert_eq!(pass(&mut h, 3, "guess"), [ConnectUpstream]);
    assert_eq!(h.engine.counters().login_delay_local, 1);
}

/// A passed-through check of the known alice whose login the server answers after
/// `latency`, showing an empty maildrop.
fn slow_check(h: &mut Harness<AttenuationEngine>, conn: ConnId, latency: Duration) {
    assert_eq!(pass(h, conn, "pw"), [ConnectUpstream]);
    assert_eq!(
        connect_upstream(h, conn, false),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(conn, b"+OK\r\n"), [to_upstream(b"PASS pw\r\n")]);
    h.now += latency;
    assert_eq!(
        h.server(conn, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
    assert_eq!(h.client(conn, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    h.server(conn, b"+OK 0 0\r\n");
    h.server(conn, b"+OK Logging out.\r\n");
    h.engine.close(conn, h.now);
}

#[test]
fn slow_server_logins_raise_n_and_quiet_brings_it_back() {
    let mut h = alice_verified_empty();
    h.engine.shared.config.load_adaptive = Some(LoadAdaptive {
        max: Duration::from_secs(600),
        latency: Duration::from_secs(1),
        check_rate: None,
    });
    assert_eq!(h.engine.interval(h.now), INTERVAL, "fast logins: no load");
    h.now += INTERVAL;
    slow_check(&mut h, 2, Duration::from_secs(2));
    assert_eq!(h.engine.interval(h.now), Duration::from_secs(600));
    // 90 s on, past the minimum n but not the raised one: answered at the edge.
    h.now += Duration::from_secs(90);
    assert_eq!(pass(&mut h, 3, "pw"), [to_client(LOGGED_IN)]);
    h.engine.close(3, h.now);
    assert_eq!(h.engine.counters().load_held, 1);
    h.now += Duration::from_secs(3600);
    assert_eq!(h.engine.interval(h.now), INTERVAL);
}

#[test]
fn only_checks_with_the_accepted_password_count_towards_the_check_rate() {
    let mut h = alice_verified_empty();
    h.engine.shared.config.load_adaptive = Some(LoadAdaptive {
        max: Duration::from_secs(600),
        latency: Duration::from_secs(1),
        check_rate: std::num::NonZeroU32::new(1),
    });
    // Made-up logins, ten a second for 20 s: no load.
    for conn in 2..202 {
        h.now += Duration::from_millis(100);
        assert_eq!(pass(&mut h, conn, "guess"), [ConnectUpstream]);
        h.engine.close(conn, h.now);
    }
    assert_eq!(h.engine.interval(h.now), INTERVAL);
    // alice's own checks at that rate are load.
    for conn in 202..402 {
        h.now += Duration::from_millis(100);
        pass(&mut h, conn, "pw");
        h.engine.close(conn, h.now);
    }
    assert_eq!(h.engine.interval(h.now), Duration::from_secs(600));
}

#[test]
fn one_in_m_passes_every_mth_local_check_through() {
    let mut h = alice_verified_empty();
    h.engine.shared.config.one_in_m = std::num::NonZeroU32::new(3);
    let mut went = Vec::new();
    for conn in 2..9 {
        h.open(conn);
        h.client(conn, b"USER alice\r\n");
        let out = h.client(conn, b"PASS pw\r\n");
        went.push(out == [ConnectUpstream]);
        h.engine.close(conn, h.now);
    }
    assert_eq!(went, [false, false, true, false, false, true, false]);
    assert_eq!(h.engine.counters().one_in_m_passed, 2);
}

/// One check of alice on `conn`: whether its PASS went to the server.
fn passes_through(h: &mut Harness<AttenuationEngine>, conn: ConnId) -> bool {
    h.open(conn);
    h.client(conn, b"USER alice\r\n");
    let out = h.client(conn, b"PASS pw\r\n");
    let through = out == [ConnectUpstream];
    if !through {
        assert_eq!(h.client(conn, b"STAT\r\n"), [to_client(b"+OK 0 0\r\n")]);
    }
    h.engine.close(conn, h.now);
    through
}

#[test]
fn the_third_fast_check_is_rewarded_then_fast_polling_is_answered_at_the_edge() {
    let mut h = alice_verified_empty();
    h.engine.shared.config.fast_check = Some(FastCheck {
        count: std::num::NonZeroU32::new(3).unwrap(),
        window: Duration::from_secs(20),
        penalty: Duration::from_secs(300),
    });
    let mut went = Vec::new();
    for conn in 2..5 {
        h.now += Duration::from_secs(5);
        went.push(passes_through(&mut h, conn));
    }
    assert_eq!(
        went,
        [false, false, true],
        "the third within 20 s is rewarded"
    );
    // Within the penalty, checks stay at the edge even once n (60 s) has passed.
    let mut h = alice_verified_empty();
    h.engine.shared.config.fast_check = Some(FastCheck {
        count: std::num::NonZeroU32::new(2).unwrap(),
        window: Duration::from_secs(20),
        penalty: Duration::from_secs(300),
    });
    h.now += Duration::from_secs(5);
    assert!(!passes_through(&mut h, 2));
    h.now += Duration::from_secs(5);
    assert!(passes_through(&mut h, 3), "rewarded");
    h.now += INTERVAL * 2;
    assert!(
        !passes_through(&mut h, 4),
        "penalized: answered from the old view"
    );
    h.now += Duration::from_secs(300);
    assert!(
        passes_through(&mut h, 5),
        "penalty over, view old: the server answers"
    );
    let c = *h.engine.counters();
    assert_eq!((c.fast_checks_rewarded, c.fast_checks_penalized), (1, 1));
}
