//! Session integrity against a hostile subscriber (and a server that answers out of turn):
//! nothing spoofed reaches the server, nothing out of order is believed, every buffer bounded.

use super::*;

const SPOOF: &[u8] = b"XCLIENT ADDR=192.0.2.66\r\n";

/// Sends `lines` one by one, carrying out the engine's actions like a server that
/// answers every write with `answer`; returns all bytes sent upstream.
fn drive(
    h: &mut Harness<AttenuationEngine>,
    conn: ConnId,
    lines: &[&[u8]],
    answer: &[u8],
) -> Vec<u8> {
    let mut upstream = Vec::new();
    for line in lines {
        let mut actions = h.client(conn, line);
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                match action {
                    ConnectUpstream => {
                        let first = h.engine.server_caps(info().server).is_none();
                        next.extend(connect_upstream(h, conn, first));
                    }
                    Action::ToUpstream(bytes) => {
                        upstream.extend_from_slice(&bytes);
                        next.extend(h.server(conn, answer));
                    }
                    _ => {}
                }
            }
            actions = next;
        }
    }
    upstream
}

#[test]
fn a_subscribers_xclient_never_reaches_the_server_on_any_path() {
    let apop = b"APOP alice 0123456789abcdef0123456789abcdef\r\n";
    let paths: [&[&[u8]]; 10] = [
        &[b"STLS\r\n", SPOOF],
        &[apop, SPOOF],
        &[b"AUTH CRAM-MD5\r\n", SPOOF],
        &[b"AUTH CRAM-MD5\r\n", b"xclient addr=192.0.2.66\r\n"],
        &[b"AUTH PLAIN !!!!\r\n", SPOOF],
        &[b"AUTH PLAIN\r\n", b"*\r\n", SPOOF],
        &[b"AUTH PLAIN\r\n", SPOOF],
        &[b"USER bob\r\n", SPOOF],
        &[b"USER bob\r\nXCLIENT ADDR=192.0.2.66\r\nPASS x\r\n"],
        &[
            b"USER alice\r\n",
            b"PASS pw\r\n",
            b"  XCLIENT ADDR=192.0.2.66\r\n",
        ],
    ];
    for path in paths {
        let mut h = engine();
        h.open(2);
        let upstream = drive(&mut h, 2, path, b"-ERR no\r\n");
        assert!(
            !contains(&upstream, b"192.0.2.66"),
            "{path:?}: {upstream:?}"
        );
        // A server accepting STLS makes the rest TLS, opaque by design.
        if path[0] == b"STLS\r\n" {
            continue;
        }
        let mut h = engine();
        h.open(2);
        let upstream = drive(&mut h, 2, path, b"+OK\r\n");
        assert!(
            !contains(&upstream, b"192.0.2.66"),
            "{path:?} (+OK): {upstream:?}"
        );
    }
}

#[test]
fn control_characters_get_err_and_nothing_goes_upstream() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let smuggle = STANDARD.encode(b"\0alice\r\nUSER victim\0pw");
    let nul_pw = STANDARD.encode(b"\0alice\0p\0w");
    let cases: [&[&[u8]]; 5] = [
        &[b"USER alice\0junk\r\n"],
        &[b"USER al\rice\r\n"],
        &[b"AUTH PLAIN ", smuggle.as_bytes(), b"\r\n"],
        &[b"AUTH PLAIN\r\n", nul_pw.as_bytes(), b"\r\n"],
        &[b"USER alice\r\n", b"PASS p\0w\r\n"],
    ];
    for case in cases {
        let mut h = alice_verified_empty();
        h.open(2);
        let bytes = case.concat();
        let actions = h.client(2, &bytes);
        assert!(
            contains(&to_client_bytes(&actions), crate::gate::BAD_CHARACTERS),
            "{bytes:?}: {actions:?}"
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::ToUpstream(_) | ConnectUpstream)),
            "{bytes:?}: {actions:?}"
        );
        // The session goes on: the next honest login works.
        h.client(2, b"USER alice\r\n");
        assert_eq!(
            h.client(2, b"PASS pw\r\n"),
            [to_client(LOGGED_IN)],
            "{bytes:?}"
        );
    }
}

#[test]
fn an_extra_reply_closes_the_session_and_verifies_nothing() {
    let mut h = engine();
    h.open(1);
    h.client(1, b"USER alice\r\n");
    connect_upstream(&mut h, 1, true);
    // One answer owed to USER, two sent: the second would answer PASS.
    assert_eq!(
        h.server(1, b"+OK\r\n+OK Logged in.\r\n"),
        [
            to_client(&[b"+OK\r\n".as_slice(), SERVER_UNAVAILABLE].concat()),
            CloseClient,
            CloseUpstream
        ]
    );
    assert!(entry(&h, "alice").is_none());

    // A STAT answered together with the QUIT it was not yet asked.
    let mut h = engine();
    relayed_login(&mut h, 1, true);
    assert_eq!(h.client(1, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    let out = h.server(1, b"+OK 0 0\r\n+OK bye\r\n");
    assert_eq!(out[0], to_client(SERVER_UNAVAILABLE));
    assert_eq!(entry(&h, "alice").unwrap().verified(), None);
}

#[test]
fn a_missing_reply_closes_the_session_and_verifies_nothing() {
    let mut h = engine();
    relayed_login(&mut h, 1, true);
    h.client(1, b"QUIT\r\n");
    h.server(1, b"+OK 0 0\r\n");
    // The server hangs up without answering the QUIT.
    assert_eq!(
        h.event(1, Event::UpstreamClosed),
        [to_client(SERVER_UNAVAILABLE), CloseClient, CloseUpstream]
    );
    assert_eq!(entry(&h, "alice").unwrap().verified(), None);
}

#[test]
fn a_million_sprayed_usernames_leave_a_warmed_user_attenuated() {
    let mut h = alice_verified_empty();
    h.open(2);
    assert_eq!(h.client(2, b"USER spray0\r\n"), [ConnectUpstream]);
    connect_upstream(&mut h, 2, false);
    h.server(2, b"+OK\r\n");
    for i in 1..1_000_000u32 {
        let line = format!("USER spray{i}\r\n");
        assert_eq!(h.client(2, line.as_bytes()), [to_upstream(line.as_bytes())]);
        h.server(2, b"+OK\r\n");
    }
    assert_eq!(h.engine.table().len(), 1, "names alone take no slot");
    attenuated_login(&mut h, 3, "pw");
}

#[test]
fn no_password_shows_in_the_engines_debug_output() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    h.open(2);
    h.client(2, b"USER alice\r\nPASS hunter2\r\nPASS hunter3");
    h.open(3);
    h.client(3, b"AUTH PLAIN AGFsaWNlAGh1bnRlcjQ=\r\n");
    let dump = format!("{:?}", h.engine);
    for secret in ["hunter2", "hunter3", "hunter4", "AGFsaWNlAGh1bnRlcjQ"] {
        assert!(!dump.contains(secret), "{secret} in {dump}");
    }
}

#[test]
fn an_overlong_line_is_refused() {
    let mut h = engine();
    h.open(1);
    assert_eq!(
        h.client(1, &vec![b'x'; 100_000]),
        [to_client(LINE_TOO_LONG), CloseClient]
    );
}

#[test]
fn a_flood_during_a_relayed_body_closes_without_corrupting_it() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    relayed_login(&mut h, 2, false);
    h.client(2, b"RETR 1\r\n");
    h.server(2, b"+OK 100000 octets\r\nSubject: x\r\n");
    let flood = b"NOOP\r\n".repeat(crate::gate::MAX_EARLY / 6 + 1);
    assert_eq!(h.client(2, &flood), [CloseClient, CloseUpstream]);
}

#[test]
fn a_server_lost_inside_a_relayed_body_adds_no_error_line() {
    let mut h = engine();
    relayed_login(&mut h, 1, true);
    assert_eq!(h.client(1, b"RETR 1\r\n"), [to_upstream(b"RETR 1\r\n")]);
    h.server(1, b"+OK 100 octets\r\nhalf a bo");
    assert_eq!(
        h.event(1, Event::UpstreamClosed),
        [CloseClient, CloseUpstream]
    );
}

#[test]
fn pipelined_listings_of_a_snapshot_are_bounded() {
    let mut h = engine();
    let caps = ServerCaps::parse(b"USER\r\nUIDL\r\nTOP\r\nXCLIENT\r\n");
    let now = h.now;
    h.engine.shared.learn_caps(info().server, caps, now);
    relayed_login(&mut h, 1, false);
    let n = 1500;
    let stat = format!("+OK {n} {}\r\n", n * 1000);
    let mut list = format!("+OK {n} messages:\r\n");
    let mut uidl = "+OK\r\n".to_string();
    for i in 1..=n {
        list.push_str(&format!("{i} 1000\r\n"));
        uidl.push_str(&format!("{i} {i:016x}\r\n"));
    }
    list.push_str(".\r\n");
    uidl.push_str(".\r\n");
    h.client(1, b"QUIT\r\n");
    h.server(1, stat.as_bytes());
    h.server(1, list.as_bytes());
    h.server(1, uidl.as_bytes());
    h.server(1, b"+OK bye\r\n");
    h.engine.close(1, h.now);
    attenuated_login(&mut h, 2, "pw");
    let out = h.client(2, &b"UIDL\r\n".repeat(4096 / 6));
    let bytes = to_client_bytes(&out).len();
    assert!(
        bytes <= fsm::MAX_LOCAL_ANSWERS + MAX_MAILDROP,
        "{bytes} bytes queued for one 4 KB read"
    );
    assert_eq!(out.last(), Some(&CloseClient), "a flood is refused");
}

#[test]
fn undecodable_auth_plain_data_never_reaches_the_server() {
    // "\0alice\0p\nw" without its padding: a lenient decoder would find the LF.
    let mut h = alice_verified_empty();
    h.open(2);
    let out = h.client(2, b"AUTH PLAIN AGFsaWNlAHAKdw\r\n");
    assert_eq!(out, [to_client(crate::gate::BAD_SASL)]);
}
