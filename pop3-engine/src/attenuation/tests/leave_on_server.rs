//! Clients that leave their mail on the server: answered from the snapshot the server
//! gave, byte for byte, as long as its numbering holds.

use super::*;

const STAT2: &[u8] = b"+OK 2 3000\r\n";

const LIST2: &[u8] = b"+OK 2 messages:\r\n1 1000\r\n2 2000\r\n.\r\n";

const UIDL2: &[u8] = b"+OK\r\n1 000000017ab\r\n2 000000018cd\r\n.\r\n";

/// An engine that knows the server offers UIDL, and a passed-through session of alice
/// that saw two messages and left them there.
fn alice_keeps_two_messages() -> Harness<AttenuationEngine> {
    let mut h = engine();
    let caps = ServerCaps::parse(b"USER\r\nUIDL\r\nTOP\r\nXCLIENT\r\n");
    let now = h.now;
    h.engine.shared.learn_caps(info().server, caps, now);
    relayed_login(&mut h, 1, false);
    assert_eq!(h.client(1, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    assert_eq!(h.server(1, STAT2), [to_upstream(b"LIST\r\n")]);
    assert_eq!(h.server(1, LIST2), [to_upstream(b"UIDL\r\n")]);
    assert_eq!(h.server(1, UIDL2), [to_upstream(b"QUIT\r\n")]);
    h.server(1, b"+OK bye\r\n");
    h.engine.close(1, h.now);
    assert!(entry(&h, "alice").unwrap().view().unwrap().is_some());
    h
}

#[test]
fn a_leave_on_server_check_is_answered_byte_for_byte_from_the_snapshot() {
    let mut h = alice_keeps_two_messages();
    attenuated_login(&mut h, 2, "pw");
    assert_eq!(h.client(2, b"STAT\r\n"), [to_client(STAT2)]);
    assert_eq!(h.client(2, b"LIST\r\n"), [to_client(LIST2)]);
    assert_eq!(h.client(2, b"UIDL\r\n"), [to_client(UIDL2)]);
    assert_eq!(
        h.client(2, b"UIDL 2\r\n"),
        [to_client(b"+OK 2 000000018cd\r\n")]
    );
    assert_eq!(h.client(2, b"LIST 1\r\n"), [to_client(b"+OK 1 1000\r\n")]);
    assert_eq!(h.client(2, b"LIST 3\r\n"), [to_client(NO_SUCH_MESSAGE)]);
    assert_eq!(h.client(2, b"RETR 3\r\n"), [to_client(NO_SUCH_MESSAGE)]);
    assert_eq!(
        h.client(2, b"QUIT\r\n"),
        [to_client(LOGGING_OUT), CloseClient]
    );
}

#[test]
fn a_message_is_fetched_from_the_server_once_its_number_is_checked() {
    let mut h = alice_keeps_two_messages();
    attenuated_login(&mut h, 2, "pw");
    h.client(2, b"UIDL\r\n");
    assert_eq!(h.client(2, b"RETR 2\r\n"), [ConnectUpstream]);
    assert_eq!(log_in_behind(&mut h, 2), [to_upstream(b"UIDL\r\n")]);
    // A new message arrived since: it comes after, the client's numbers still hold.
    let now_listed = b"+OK\r\n1 000000017ab\r\n2 000000018cd\r\n3 000000019ef\r\n.\r\n";
    assert_eq!(h.server(2, now_listed), [to_upstream(b"RETR 2\r\n")]);
    let body = b"+OK 2000 octets\r\nSubject: x\r\n\r\nbody\r\n.\r\n";
    assert_eq!(h.server(2, body), [to_client(body)]);
}

#[test]
fn a_renumbered_maildrop_is_never_served_from_the_snapshot() {
    let mut h = alice_keeps_two_messages();
    attenuated_login(&mut h, 2, "pw");
    h.client(2, b"DELE 2\r\n");
    connect_upstream(&mut h, 2, false);
    h.server(2, b"+OK\r\n");
    assert_eq!(
        h.server(2, b"+OK Logged in.\r\n"),
        [to_upstream(b"UIDL\r\n")]
    );
    // Another session deleted message 1: what was 2 is 1 now. Never DELE the wrong one.
    assert_eq!(
        h.server(2, b"+OK\r\n1 000000018cd\r\n.\r\n"),
        [to_client(SERVER_UNAVAILABLE), CloseClient, CloseUpstream]
    );
    assert_eq!(entry(&h, "alice").unwrap().verified(), None);
}

#[test]
fn a_session_that_deleted_keeps_no_listing() {
    let mut h = alice_keeps_two_messages();
    h.now += INTERVAL;
    relayed_login(&mut h, 2, false);
    h.client(2, b"DELE 1\r\n");
    h.server(2, b"+OK Marked to be deleted.\r\n");
    assert_eq!(h.client(2, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    // Numbers change at UPDATE: no LIST or UIDL of this session is kept.
    assert_eq!(h.server(2, b"+OK 1 2000\r\n"), [to_upstream(b"QUIT\r\n")]);
    h.server(2, b"+OK bye\r\n");
    assert_eq!(entry(&h, "alice").unwrap().verified(), None);
}

#[test]
fn snapshots_stay_within_their_memory_budget() {
    let mut h = alice_keeps_two_messages();
    let held = h.engine.table().maildrop_bytes();
    // What the snapshot stores, its answers packed.
    let snapshot = crate::attenuation::Maildrop::new(STAT2, LIST2, UIDL2).unwrap();
    assert_eq!(held, snapshot.bytes());
    assert!(held > 0 && held < STAT2.len() + LIST2.len() + UIDL2.len());
    // A new-mail notification drops the snapshot and its bytes.
    notify(&mut h, b"alice");
    assert_eq!(h.engine.table().maildrop_bytes(), 0);
}

#[test]
fn an_older_sessions_view_never_replaces_what_a_newer_session_saw() {
    let mut h = engine();
    relayed_login(&mut h, 1, true);
    h.now += Duration::from_secs(10);
    relayed_login(&mut h, 2, false);
    assert_eq!(entry(&h, "alice").unwrap().sessions, 2);
    // The newer session sees a message (mail arrived in between)...
    h.client(2, b"QUIT\r\n");
    h.server(2, b"+OK 1 100\r\n");
    h.server(2, b"+OK bye\r\n");
    h.engine.close(2, h.now);
    // ...the older one, from its login's snapshot, says empty: not recorded.
    h.now += Duration::from_secs(5);
    h.client(1, b"QUIT\r\n");
    h.server(1, b"+OK 0 0\r\n");
    h.server(1, b"+OK bye\r\n");
    h.engine.close(1, h.now);
    assert_eq!(entry(&h, "alice").unwrap().verified(), None);
    h.open(3);
    h.client(3, b"USER alice\r\n");
    assert_eq!(h.client(3, b"PASS pw\r\n"), [ConnectUpstream]);
}
