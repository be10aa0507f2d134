//! The server's side of a session: capabilities answered truthfully, tunnels (STLS, APOP,
//! other SASL, opted-out users), AUTH PLAIN, XCLIENT.

use super::*;

#[test]
fn capa_is_answered_locally_and_truthfully() {
    let mut h = engine();
    h.open(1);
    // Nothing known about the server yet: ask it once.
    assert_eq!(h.client(1, b"CAPA\r\n"), [ConnectUpstream]);
    h.event(1, Event::UpstreamConnected);
    assert_eq!(h.server(1, b"+OK hi\r\n"), [to_upstream(b"CAPA\r\n")]);
    let local = b"+OK Capability list follows\r\nUSER\r\nPIPELINING\r\nSTLS\r\nSASL PLAIN\r\n.\r\n";
    assert_eq!(h.server(1, SERVER_CAPA), [to_upstream(XCLIENT)]);
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(local)]);
    // Known now: no upstream needed.
    h.open(2);
    assert_eq!(h.client(2, b"CAPA\r\n"), [to_client(local)]);
}

#[test]
fn stls_is_never_offered_unless_the_server_offers_it() {
    let mut h = engine();
    h.open(1);
    h.client(1, b"CAPA\r\n");
    h.event(1, Event::UpstreamConnected);
    h.server(1, b"+OK hi\r\n");
    assert_eq!(
        h.server(1, b"+OK\r\nUSER\r\n.\r\n"),
        [to_client(
            b"+OK Capability list follows\r\nUSER\r\nPIPELINING\r\n.\r\n"
        )]
    );
}

#[test]
fn stls_becomes_a_tunnel_to_the_server() {
    let mut h = alice_verified_empty();
    h.open(2);
    assert_eq!(h.client(2, b"STLS\r\n"), [ConnectUpstream]);
    assert_eq!(
        connect_upstream(&mut h, 2, false),
        [to_upstream(b"STLS\r\n")]
    );
    assert_eq!(
        h.server(2, b"+OK Begin TLS negotiation now.\r\n"),
        [to_client(b"+OK Begin TLS negotiation now.\r\n")]
    );
    let hello = vec![0x16; 700];
    assert_eq!(h.client(2, &hello), [to_upstream(&hello)]);
    assert_eq!(h.engine.state(2), Some(State::Tunnel));
    assert_eq!(
        h.event(2, Event::UpstreamClosed),
        [CloseClient, CloseUpstream]
    );
}

/// Found by the model test: a login the server took behind a refused STLS (new
/// password) left the old password answered at the edge.
#[test]
fn a_login_passed_through_the_gate_ends_the_old_password() {
    let mut h = alice_verified_empty();
    h.open(2);
    assert_eq!(h.client(2, b"STLS\r\n"), [ConnectUpstream]);
    connect_upstream(&mut h, 2, false);
    let refused = b"-ERR TLS not available.\r\n";
    assert_eq!(h.server(2, refused), [to_client(refused)]);
    assert_eq!(
        h.client(2, b"USER alice\r\n"),
        [to_upstream(b"USER alice\r\n")]
    );
    h.server(2, b"+OK\r\n");
    assert_eq!(h.client(2, b"PASS new\r\n"), [to_upstream(b"PASS new\r\n")]);
    h.server(2, b"+OK Logged in.\r\n");
    h.engine.close(2, h.now);
    // The old password now goes to the server, which refuses it.
    h.open(3);
    assert_eq!(h.client(3, b"USER alice\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(h.client(3, b"PASS pw\r\n"), [ConnectUpstream]);
}

#[test]
fn apop_and_other_sasl_become_a_tunnel() {
    for login in [
        &b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n"[..],
        b"AUTH CRAM-MD5\r\n",
    ] {
        let mut h = alice_verified_empty();
        h.open(2);
        assert_eq!(h.client(2, login), [ConnectUpstream]);
        assert_eq!(connect_upstream(&mut h, 2, false), [to_upstream(login)]);
        assert_eq!(
            h.server(2, b"+ PDE4OTYuNjk3\r\n"),
            [to_client(b"+ PDE4OTYuNjk3\r\n")]
        );
    }
}

#[test]
fn auth_plain_is_handled_like_user_and_pass() {
    let mut h = alice_verified_empty();
    h.open(2);
    assert_eq!(
        h.client(2, format!("AUTH PLAIN {PLAIN_ALICE_PW}\r\n").as_bytes()),
        [to_client(LOGGED_IN)]
    );
    assert_eq!(
        h.client(2, b"QUIT\r\n"),
        [to_client(LOGGING_OUT), CloseClient]
    );
    // Without initial response, and after the interval: replayed as AUTH PLAIN.
    h.now += INTERVAL;
    h.open(3);
    assert_eq!(h.client(3, b"AUTH PLAIN\r\n"), [to_client(b"+ \r\n")]);
    assert_eq!(
        h.client(3, format!("{PLAIN_ALICE_PW}\r\n").as_bytes()),
        [ConnectUpstream]
    );
    let replay = format!("AUTH PLAIN {PLAIN_ALICE_PW}\r\n");
    assert_eq!(
        connect_upstream(&mut h, 3, false),
        [to_upstream(replay.as_bytes())]
    );
    assert_eq!(
        h.server(3, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
    assert_eq!(
        h.engine.state(3),
        Some(State::Transaction { terminate: false })
    );
}

#[test]
fn opted_out_users_always_reach_the_server() {
    let mut h = alice_verified_empty();
    h.open(2);
    assert_eq!(h.client(2, b"USER bob\r\n"), [ConnectUpstream]);
    assert_eq!(
        connect_upstream(&mut h, 2, false),
        [to_upstream(b"USER bob\r\n")]
    );
    assert_eq!(h.client(2, b"PASS x\r\n"), [to_upstream(b"PASS x\r\n")]);
    assert_eq!(
        h.server(2, b"+OK\r\n+OK\r\n"),
        [to_client(b"+OK\r\n+OK\r\n")]
    );
    assert!(entry(&h, "bob").is_none());
}

#[test]
fn xclient_is_sent_when_dovecots_greeting_offers_it() {
    let mut h = engine();
    h.open(1);
    h.client(1, b"USER alice\r\n");
    h.event(1, Event::UpstreamConnected);
    assert_eq!(
        h.server(1, b"+OK [XCLIENT] Dovecot ready.\r\n"),
        [to_upstream(b"CAPA\r\n")]
    );
    assert_eq!(
        h.server(1, b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"),
        [to_upstream(XCLIENT)]
    );
    assert_eq!(
        h.server(1, b"+OK Updated\r\n"),
        [to_upstream(b"USER alice\r\n")]
    );
}

#[test]
fn no_xclient_when_the_server_does_not_offer_it() {
    let mut h = engine();
    h.open(1);
    h.client(1, b"USER alice\r\n");
    h.event(1, Event::UpstreamConnected);
    h.server(1, b"+OK hi\r\n");
    assert_eq!(
        h.server(1, b"+OK\r\nUSER\r\n.\r\n"),
        [to_upstream(b"USER alice\r\n")]
    );
}

#[test]
fn a_server_offering_apop_greets_every_session_itself() {
    let mut h = Harness::new(AttenuationEngine::new(
        config(),
        Salt::new([1, 2, 3, 4]),
        Instant::now(),
    ));
    let greeting = b"+OK [XCLIENT] Dovecot ready. <1.2@mail>\r\n";
    for conn in [1, 2] {
        // Never seen, then known to offer APOP: the server's own greeting, untouched
        // but for the code meant for the router.
        assert_eq!(h.open(conn), [ConnectUpstream]);
        assert_eq!(h.event(conn, Event::UpstreamConnected), []);
        let first = h.engine.server_caps(info().server).is_none();
        let mut expected = vec![to_client(b"+OK Dovecot ready. <1.2@mail>\r\n")];
        expected.push(if first {
            to_upstream(b"CAPA\r\n")
        } else {
            to_upstream(XCLIENT)
        });
        assert_eq!(h.server(conn, greeting), expected);
        if first {
            assert_eq!(h.server(conn, SERVER_CAPA), [to_upstream(XCLIENT)]);
        }
        assert_eq!(h.server(conn, b"+OK Updated\r\n"), []);
        let apop = b"APOP alice 0123456789abcdef0123456789abcdef\r\n";
        assert_eq!(h.client(conn, apop), [to_upstream(apop)]);
        assert_eq!(
            h.server(conn, b"+OK Logged in.\r\n"),
            [to_client(b"+OK Logged in.\r\n")]
        );
    }
    // Once the greeting stops offering APOP, sessions are greeted locally again.
    h.engine.shared.learn_greeting(info().server, false);
    assert_eq!(h.open(3), [to_client(GREETING)]);
}

#[test]
fn capabilities_are_relearnt_after_their_ttl_and_a_failed_capa_hides_nothing() {
    let mut h = alice_verified_empty();
    let capa_of = |h: &mut Harness<AttenuationEngine>, conn| {
        h.open(conn);
        h.client(conn, b"CAPA\r\n")
    };
    let local = capa_of(&mut h, 2);
    assert!(
        contains(&to_client_bytes(&local), b"STLS"),
        "learnt from the first session"
    );
    h.now += config().caps_ttl;
    // Stale: the next CAPA asks the server; its -ERR does not replace what is known.
    assert_eq!(capa_of(&mut h, 3), [ConnectUpstream]);
    assert_eq!(h.event(3, Event::UpstreamConnected), []);
    assert_eq!(h.server(3, b"+OK ready\r\n"), [to_upstream(b"CAPA\r\n")]);
    assert_eq!(h.server(3, b"-ERR not now\r\n"), [to_upstream(XCLIENT)]);
    let out = h.server(3, b"+OK\r\n");
    assert!(contains(&to_client_bytes(&out), b"STLS"), "{out:?}");
    // Still stale: the next session asks again.
    assert_eq!(capa_of(&mut h, 4), [ConnectUpstream]);
}
