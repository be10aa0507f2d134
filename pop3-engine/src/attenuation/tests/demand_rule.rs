//! The demand rule: new-mail notifications end the attenuation at once and, from a
//! notifying server, allow the longer interval.

use super::*;

#[test]
fn a_notification_ends_the_attenuation_at_once() {
    let mut h = alice_verified_empty();
    attenuated_login(&mut h, 2, "pw");
    h.client(2, b"QUIT\r\n");
    assert_eq!(notify(&mut h, b"alice"), 1);
    h.open(3);
    h.client(3, b"USER alice\r\n");
    assert_eq!(
        h.client(3, b"PASS pw\r\n"),
        [ConnectUpstream],
        "new mail: to the server"
    );
    let c = *h.engine.counters();
    assert_eq!((c.notifications, c.notifications_applied), (1, 1));
    // Unknown users and other servers change nothing.
    assert_eq!(notify(&mut h, b"nobody"), 0);
    let other = "203.0.113.9".parse().unwrap();
    assert_eq!(h.engine.new_mail(other, None, b"alice", h.now), 0);
}

#[test]
fn a_notified_user_gets_the_longer_interval_until_the_server_falls_silent() {
    let mut h = alice_verified_empty();
    let alice = UserKey {
        server: info().server,
        user: "alice".into(),
    };
    assert_eq!(h.engine.interval_for(&alice, h.now), INTERVAL);
    // A notification for a name the edge does not know proves nothing about alice.
    assert_eq!(notify(&mut h, b"alice@example.org"), 0);
    assert_eq!(h.engine.interval_for(&alice, h.now), INTERVAL);
    // One that reaches her does; her next passed-through check is trusted longer.
    assert_eq!(notify(&mut h, b"alice"), 1);
    h.now += Duration::from_secs(1);
    passed_through_check(&mut h, 2, "pw", 0);
    assert_eq!(h.engine.interval_for(&alice, h.now), NOTIFY_INTERVAL);
    // Notifications may have been lost (the fan-out's broker was down): her view is
    // trusted for n only, until a session renews it.
    h.engine.notifications_missed(h.now);
    assert_eq!(h.engine.interval_for(&alice, h.now), NOTIFY_INTERVAL);
    h.now += Duration::from_secs(1);
    h.engine.notifications_missed(h.now);
    assert_eq!(h.engine.interval_for(&alice, h.now), INTERVAL);
    h.now += INTERVAL + Duration::from_secs(1);
    passed_through_check(&mut h, 5, "pw", 0);
    assert_eq!(h.engine.interval_for(&alice, h.now), NOTIFY_INTERVAL);
    h.now += INTERVAL * 3;
    attenuated_login(&mut h, 3, "pw");
    h.client(3, b"QUIT\r\n");
    // Silent for notify_silence: back to the time rule, and alice's stamp is old.
    h.now += Duration::from_secs(600);
    assert_eq!(h.engine.interval_for(&alice, h.now), INTERVAL);
    h.open(4);
    h.client(4, b"USER alice\r\n");
    assert_eq!(h.client(4, b"PASS pw\r\n"), [ConnectUpstream]);
}

#[test]
fn a_notification_during_a_session_is_never_hidden_by_its_quit() {
    let mut h = engine();
    relayed_login(&mut h, 1, true);
    h.now += Duration::from_secs(1);
    assert_eq!(notify(&mut h, b"alice"), 1);
    // The session's STAT says 0: its snapshot is from before the new mail.
    h.client(1, b"QUIT\r\n");
    h.server(1, b"+OK 0 0\r\n");
    h.server(1, b"+OK bye\r\n");
    assert_eq!(entry(&h, "alice").unwrap().verified(), None);
    h.open(2);
    h.client(2, b"USER alice\r\n");
    assert_eq!(h.client(2, b"PASS pw\r\n"), [ConnectUpstream]);
}
