//! A session's and an entry's lifetime: a lost server, the interval running out inside a
//! session, autologout, collection of expired entries, the mirror's change feed.

use super::*;

#[test]
fn a_dead_server_fails_passed_through_checks_but_not_attenuated_ones() {
    let mut h = alice_verified_empty();
    attenuated_login(&mut h, 2, "pw");
    assert_eq!(h.client(2, b"STAT\r\n"), [to_client(b"+OK 0 0\r\n")]);
    h.open(3);
    h.client(3, b"USER carol\r\n");
    assert_eq!(
        h.event(3, Event::UpstreamFailed),
        [to_client(SERVER_UNAVAILABLE), CloseClient, CloseUpstream]
    );
}

#[test]
fn an_attenuated_session_outliving_the_interval_asks_the_server() {
    let mut h = alice_verified_empty();
    attenuated_login(&mut h, 2, "pw");
    h.now += INTERVAL;
    assert_eq!(h.client(2, b"STAT\r\n"), [ConnectUpstream]);
    assert_eq!(log_in_behind(&mut h, 2), [to_upstream(b"STAT\r\n")]);
    assert_eq!(h.server(2, b"+OK 1 10\r\n"), [to_client(b"+OK 1 10\r\n")]);
}

#[test]
fn autologout_closes_idle_sessions_without_quit() {
    let mut h = alice_verified_empty();
    attenuated_login(&mut h, 2, "pw");
    h.advance(Duration::from_secs(599));
    h.client(2, b"NOOP\r\n");
    assert!(h.advance(Duration::from_secs(599)).is_empty());
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(
        out,
        [Output {
            conn: 2,
            action: CloseClient
        }]
    );
    assert_eq!(entry(&h, "alice").unwrap().sessions, 0);
}

#[test]
fn expired_entries_are_collected_by_the_timer() {
    let mut h = alice_verified_empty();
    h.advance(NOTIFY_INTERVAL - Duration::from_secs(1));
    assert!(entry(&h, "alice").is_some());
    let gc_runs = h.engine.counters().gc_runs;
    h.advance(Duration::from_secs(31));
    assert!(entry(&h, "alice").is_none());
    assert_eq!(
        h.engine.counters().gc_runs,
        gc_runs + 1,
        "one collection ran"
    );
    assert_eq!(
        h.engine.next_timeout(),
        Some(h.now + Duration::from_secs(30))
    );
}

#[test]
fn mirrors_learn_of_every_touched_and_removed_entry() {
    let mut h = alice_verified_empty();
    let touched = h.engine.take_changes();
    let key = touched.last().expect("the login touched alice").key.clone();
    assert_eq!(&*key.user, b"alice");
    assert_eq!(touched.last().unwrap().session, Some((1, info().client)));
    assert_eq!(h.engine.take_changes(), [], "drained");

    attenuated_login(&mut h, 2, "pw");
    let alice = entry(&h, "alice").unwrap();
    assert_eq!((alice.answered_locally, alice.passed_through), (1, 1));
    assert!(h.engine.take_changes().iter().all(|c| c.key == key));

    h.client(2, b"QUIT\r\n");
    h.engine.close(2, h.now);
    h.engine.take_changes();
    h.advance(NOTIFY_INTERVAL + Duration::from_secs(31));
    assert_eq!(
        h.engine.take_changes(),
        [UserChange { key, session: None }],
        "the collection is reported as a removal"
    );
}

#[test]
fn a_quit_followed_at_once_by_a_close_still_commits_the_deletions() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    relayed_login(&mut h, 2, false);
    assert_eq!(h.client(2, b"DELE 1\r\n"), [to_upstream(b"DELE 1\r\n")]);
    h.server(2, b"+OK Marked to be deleted.\r\n");
    assert_eq!(h.client(2, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    assert_eq!(
        h.event(2, Event::ClientClosed),
        [],
        "the QUIT is still on its way"
    );
    assert_eq!(h.server(2, b"+OK 0 0\r\n"), [to_upstream(b"QUIT\r\n")]);
    let done = h.server(2, b"+OK Logging out.\r\n");
    assert!(done.contains(&CloseUpstream), "{done:?}");
    assert_eq!(entry(&h, "alice").unwrap().sessions, 0);

    // Released by the dataplane before the server answered: no QUIT, lock released.
    h.now += INTERVAL;
    h.open(3);
    h.client(3, b"USER alice\r\nPASS pw\r\n");
    connect_upstream(&mut h, 3, false);
    h.server(3, b"+OK\r\n");
    h.server(3, b"+OK Logged in.\r\n");
    h.client(3, b"QUIT\r\n");
    h.event(3, Event::ClientClosed);
    h.engine.close(3, h.now);
    assert!(
        entry(&h, "alice").unwrap().sessions == 0,
        "close releases the lock"
    );
}

#[test]
fn verified_empty_is_stamped_with_the_time_of_the_login() {
    let mut h = engine();
    let login = h.now;
    relayed_login(&mut h, 1, true);
    h.now += Duration::from_secs(45);
    h.client(1, b"QUIT\r\n");
    h.server(1, b"+OK 0 0\r\n");
    h.server(1, b"+OK bye\r\n");
    assert_eq!(entry(&h, "alice").unwrap().verified(), Some(login));
}

#[test]
fn a_long_download_is_not_idleness() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    relayed_login(&mut h, 2, false);
    h.client(2, b"RETR 1\r\n");
    h.server(2, b"+OK 99999999 octets\r\n");
    let autologout = config().autologout;
    for _ in 0..3 {
        assert!(h.advance(autologout - Duration::from_secs(1)).is_empty());
        h.server(2, b"more body bytes\r\n");
    }
    let out = h.advance(autologout);
    assert!(out.iter().any(|o| o.action == CloseClient), "{out:?}");
}
