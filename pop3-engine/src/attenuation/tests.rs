//! One test per bullet of the patent's "States, Events, and Actions", with a fake clock
//! and exact bytes in both directions; then property tests against a fake mail server.
//!
//! Longer than 600 lines: one transcript per behaviour of the state machine, sharing the
//! harness helpers at the top; the newer rules have files of their own under `tests/`.

use std::time::{Duration, Instant};

use super::*;
use crate::{
    gate::{LINE_TOO_LONG, SERVER_UNAVAILABLE},
    session::Action::{self, CloseClient, CloseUpstream, ConnectUpstream},
    testing::{Harness, info, to_client, to_upstream},
};
use fsm::{GREETING, LOGGED_IN, LOGGING_OUT, NO_SUCH_MESSAGE};

mod edge_cache;
mod model;
mod rules;

const INTERVAL: Duration = Duration::from_secs(60);
const NOTIFY_INTERVAL: Duration = Duration::from_secs(3600);
const SERVER_CAPA: &[u8] = b"+OK\r\nUSER\r\nSASL PLAIN\r\nXCLIENT\r\nSTLS\r\n.\r\n";
const XCLIENT: &[u8] = b"XCLIENT ADDR=198.51.100.7 PORT=40000\r\n";
/// "\0alice\0pw"
const PLAIN_ALICE_PW: &str = "AGFsaWNlAHB3";

fn config() -> Config {
    Config {
        interval: INTERVAL,
        opt_out: ["bob".to_owned()].into(),
        table_size: 100,
        autologout: Duration::from_secs(600),
        gc_interval: Duration::from_secs(30),
        caps_ttl: Duration::from_secs(3600),
        notify_interval: NOTIFY_INTERVAL,
        notify_silence: Duration::from_secs(600),
        maildrop_budget: 1 << 20,
        one_in_m: None,
        fast_check: None,
        periodicity: None,
        load_adaptive: None,
        login_delay: None,
        cache: false,
    }
}

/// An engine that has seen the test server's greeting (no APOP): it greets locally.
fn engine() -> Harness<AttenuationEngine> {
    let mut h = Harness::new(AttenuationEngine::new(
        config(),
        Salt::new([1, 2, 3, 4]),
        Instant::now(),
    ));
    h.engine.shared.learn_greeting(info().server, false);
    h
}

fn entry(h: &Harness<AttenuationEngine>, user: &str) -> Option<EntrySnapshot> {
    h.engine.table().get(&UserKey {
        server: info().server,
        user: user.into(),
    })
}

/// Connects the upstream asked for and answers its greeting, CAPA (if asked) and
/// XCLIENT; returns what the engine sends next.
fn connect_upstream(h: &mut Harness<AttenuationEngine>, conn: ConnId, capa: bool) -> Vec<Action> {
    assert_eq!(h.event(conn, Event::UpstreamConnected), []);
    let greeting = h.server(conn, b"+OK Dovecot ready.\r\n");
    let after_capa = if capa {
        assert_eq!(greeting, [to_upstream(b"CAPA\r\n")]);
        h.server(conn, SERVER_CAPA)
    } else {
        greeting
    };
    assert_eq!(after_capa, [to_upstream(XCLIENT)]);
    h.server(conn, b"+OK Updated\r\n")
}

/// The patent's None-state check: everything reaches the server, and the QUIT's STAT
/// records the maildrop empty (`count` = 0) or not.
fn passed_through_check(h: &mut Harness<AttenuationEngine>, conn: ConnId, pw: &str, count: u32) {
    let first_contact = h.engine.server_caps(info().server).is_none();
    assert_eq!(h.open(conn), [to_client(GREETING)]);
    let known = entry(h, "alice").is_some();
    if known {
        assert_eq!(h.client(conn, b"USER alice\r\n"), [to_client(b"+OK\r\n")]);
        assert_eq!(
            h.client(conn, format!("PASS {pw}\r\n").as_bytes()),
            [ConnectUpstream]
        );
        assert_eq!(
            connect_upstream(h, conn, first_contact),
            [to_upstream(b"USER alice\r\n")]
        );
        assert_eq!(
            h.server(conn, b"+OK\r\n"),
            [to_upstream(format!("PASS {pw}\r\n").as_bytes())]
        );
    } else {
        assert_eq!(h.client(conn, b"USER alice\r\n"), [ConnectUpstream]);
        assert_eq!(
            connect_upstream(h, conn, first_contact),
            [to_upstream(b"USER alice\r\n")]
        );
        assert_eq!(h.server(conn, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
        assert_eq!(
            h.client(conn, format!("PASS {pw}\r\n").as_bytes()),
            [to_upstream(format!("PASS {pw}\r\n").as_bytes())]
        );
    }
    assert_eq!(
        h.server(conn, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
    assert_eq!(
        h.engine.state(conn),
        Some(State::Transaction { terminate: false })
    );
    assert_eq!(entry(h, "alice").unwrap().sessions, 1);
    assert_eq!(h.client(conn, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    let stat = format!("+OK {count} {}\r\n", count * 100);
    assert_eq!(h.server(conn, stat.as_bytes()), [to_upstream(b"QUIT\r\n")]);
    assert_eq!(
        h.server(conn, b"+OK Logging out.\r\n"),
        [
            to_client(b"+OK Logging out.\r\n"),
            CloseClient,
            CloseUpstream
        ]
    );
    assert_eq!(entry(h, "alice").unwrap().sessions, 0);
    h.engine.close(conn, h.now);
}

/// An attenuated login: USER and PASS answered locally.
fn attenuated_login(h: &mut Harness<AttenuationEngine>, conn: ConnId, pw: &str) {
    assert_eq!(h.open(conn), [to_client(GREETING)]);
    assert_eq!(h.client(conn, b"USER alice\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(
        h.client(conn, format!("PASS {pw}\r\n").as_bytes()),
        [to_client(LOGGED_IN)]
    );
    assert_eq!(
        h.engine.state(conn),
        Some(State::Transaction { terminate: true })
    );
}

/// A table that knows alice ("pw") and her maildrop verified empty at `h.now`.
fn alice_verified_empty() -> Harness<AttenuationEngine> {
    let mut h = engine();
    passed_through_check(&mut h, 1, "pw", 0);
    h
}

#[test]
fn none_state_user_creates_the_entry_and_asks_the_server() {
    let mut h = engine();
    passed_through_check(&mut h, 1, "pw", 0);
    let e = entry(&h, "alice").unwrap();
    assert_eq!(e.verified(), Some(h.now));
    assert_eq!(h.engine.counters().passed_through, 1);
}

#[test]
fn idle_state_user_is_answered_locally() {
    let mut h = alice_verified_empty();
    h.open(2);
    assert_eq!(h.client(2, b"USER alice\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(h.engine.state(2), Some(State::Authorization));
}

/// Two engines over one table in shards, as two dataplane workers run them.
fn two_workers() -> (Harness<AttenuationEngine>, Harness<AttenuationEngine>) {
    let salt = Salt::new([1, 2, 3, 4]);
    let table = AttenuationEngine::table_for(&config(), salt, Instant::now(), 8);
    let worker = || {
        let mut h = Harness::new(AttenuationEngine::with_table(config(), salt, table.clone()));
        h.engine.shared.learn_greeting(info().server, false);
        h
    };
    (worker(), worker())
}

#[test]
fn a_user_learnt_by_one_worker_is_answered_by_the_other_and_its_sessions_count_there() {
    let (mut a, mut b) = two_workers();
    passed_through_check(&mut a, 1, "pw", 0);
    b.now = a.now;
    // The other worker answers alice's next check without the server.
    attenuated_login(&mut b, 2, "pw");
    assert_eq!(b.engine.counters().upstream_logins_avoided, 1);
    // While that session is open, a check on the first worker goes to the server.
    a.open(3);
    a.client(3, b"USER alice\r\n");
    assert_eq!(a.client(3, b"PASS pw\r\n"), [ConnectUpstream]);
    // A wrong password is never answered at the edge, on either worker.
    b.client(2, b"QUIT\r\n");
    b.open(4);
    b.client(4, b"USER alice\r\n");
    assert_eq!(b.client(4, b"PASS wrong\r\n"), [ConnectUpstream]);
    // New mail told to one engine ends the attenuation for both.
    a.engine.new_mail(info().server.ip(), None, b"alice", a.now);
    assert!(entry(&b, "alice").unwrap().verified().is_none());
    assert_eq!(a.engine.table().len(), 1);
}

#[test]
fn a_second_session_of_a_user_in_session_goes_to_the_server() {
    let mut h = alice_verified_empty();
    attenuated_login(&mut h, 2, "pw");
    h.open(3);
    h.client(3, b"USER alice\r\n");
    // Never an [IN-USE] of our own: the server decides about concurrent sessions.
    assert_eq!(h.client(3, b"PASS pw\r\n"), [ConnectUpstream]);
    assert_eq!(
        connect_upstream(&mut h, 3, false),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(3, b"+OK\r\n"), [to_upstream(b"PASS pw\r\n")]);
    let locked = b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n";
    assert_eq!(h.server(3, locked), [to_client(locked)]);
    assert_eq!(h.engine.state(3), Some(State::Authorization));
    // A server that allows it (Dovecot's default) lets both in.
    h.open(4);
    h.client(4, b"USER alice\r\n");
    h.client(4, b"PASS pw\r\n");
    connect_upstream(&mut h, 4, false);
    h.server(4, b"+OK\r\n");
    h.server(4, b"+OK Logged in.\r\n");
    assert_eq!(entry(&h, "alice").unwrap().sessions, 2);
    h.client(2, b"QUIT\r\n");
    assert_eq!(entry(&h, "alice").unwrap().sessions, 1);
}

#[test]
fn matching_pass_inside_the_interval_is_answered_locally() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL - Duration::from_secs(1);
    attenuated_login(&mut h, 2, "pw");
    assert_eq!(entry(&h, "alice").unwrap().sessions, 1);
    let c = *h.engine.counters();
    assert_eq!(
        (c.checks_seen, c.answered_locally, c.upstream_logins_avoided),
        (2, 1, 1)
    );
}

#[test]
fn matching_pass_after_the_interval_is_replayed_user_then_pass() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    passed_through_check(&mut h, 2, "pw", 0);
}

#[test]
fn replayed_login_refused_by_the_server_changes_nothing() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    h.open(2);
    h.client(2, b"USER alice\r\n");
    assert_eq!(h.client(2, b"PASS pw\r\n"), [ConnectUpstream]);
    assert_eq!(
        connect_upstream(&mut h, 2, false),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(2, b"+OK\r\n"), [to_upstream(b"PASS pw\r\n")]);
    let refusal = b"-ERR [AUTH] Authentication failed.\r\n";
    assert_eq!(h.server(2, refusal), [to_client(refusal)]);
    assert_eq!(h.engine.state(2), Some(State::Authorization));
    // A failed login clears the user: the next attempt starts with USER again.
    assert_eq!(
        h.client(2, b"PASS pw\r\n"),
        [to_client(b"-ERR No username given.\r\n")]
    );
}

#[test]
fn a_different_password_accepted_by_the_server_replaces_the_old_one() {
    let mut h = alice_verified_empty();
    passed_through_check(&mut h, 2, "new", 0);
    attenuated_login(&mut h, 3, "new");
    h.client(3, b"QUIT\r\n");
    h.open(4);
    h.client(4, b"USER alice\r\n");
    assert_eq!(
        h.client(4, b"PASS pw\r\n"),
        [ConnectUpstream],
        "the old password is replayed"
    );
}

#[test]
fn a_wrong_password_is_replayed_and_never_answered_locally() {
    let mut h = alice_verified_empty();
    h.open(2);
    h.client(2, b"USER alice\r\n");
    assert_eq!(h.client(2, b"PASS wrong\r\n"), [ConnectUpstream]);
    assert_eq!(
        connect_upstream(&mut h, 2, false),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(2, b"+OK\r\n"), [to_upstream(b"PASS wrong\r\n")]);
    let refusal = b"-ERR [AUTH] Authentication failed.\r\n";
    assert_eq!(h.server(2, refusal), [to_client(refusal)]);
    // The stored verifier is untouched: the right password is still attenuated.
    assert_eq!(
        h.client(2, b"QUIT\r\n"),
        [to_client(LOGGING_OUT), CloseClient, CloseUpstream]
    );
    attenuated_login(&mut h, 3, "pw");
}

#[test]
fn quit_in_authorization_releases_nothing_and_sends_nothing_upstream() {
    let mut h = alice_verified_empty();
    h.open(2);
    h.client(2, b"USER alice\r\n");
    assert_eq!(
        h.client(2, b"QUIT\r\n"),
        [to_client(LOGGING_OUT), CloseClient]
    );
    assert_eq!(entry(&h, "alice").unwrap().sessions, 0);
}

#[test]
fn transaction_with_terminate_true_answers_every_command_locally() {
    let mut h = alice_verified_empty();
    attenuated_login(&mut h, 2, "pw");
    let exchanges: [(&[u8], &[u8]); 11] = [
        (b"STAT\r\n", b"+OK 0 0\r\n"),
        (b"LIST\r\n", b"+OK 0 messages\r\n.\r\n"),
        (b"LIST 1\r\n", NO_SUCH_MESSAGE),
        (b"RETR 1\r\n", NO_SUCH_MESSAGE),
        (b"DELE 1\r\n", NO_SUCH_MESSAGE),
        (b"TOP 1 0\r\n", NO_SUCH_MESSAGE),
        (b"UIDL\r\n", b"+OK 0 messages\r\n.\r\n"),
        (b"UIDL 1\r\n", NO_SUCH_MESSAGE),
        (b"NOOP\r\n", b"+OK\r\n"),
        (b"RSET\r\n", b"+OK\r\n"),
        (b"XTND\r\n", b"-ERR Unknown command.\r\n"),
    ];
    for (command, answer) in exchanges {
        assert_eq!(h.client(2, command), [to_client(answer)], "{command:?}");
    }
    assert_eq!(
        h.client(2, b"QUIT\r\n"),
        [to_client(LOGGING_OUT), CloseClient]
    );
    assert_eq!(entry(&h, "alice").unwrap().sessions, 0);
}

#[test]
fn transaction_with_terminate_false_relays_every_command() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    h.open(2);
    h.client(2, b"USER alice\r\n");
    h.client(2, b"PASS pw\r\n");
    connect_upstream(&mut h, 2, false);
    h.server(2, b"+OK\r\n");
    h.server(2, b"+OK Logged in.\r\n");
    let exchanges: [(&[u8], &[&[u8]]); 8] = [
        (b"STAT\r\n", &[b"+OK 1 120\r\n"]),
        (b"LIST\r\n", &[b"+OK 1 messages:\r\n1 1", b"20\r\n.\r\n"]),
        (
            b"RETR 1\r\n",
            &[b"+OK 120 octets\r\n..dot\r\n", b"body\r\n.\r\n"],
        ),
        (b"TOP 1 0\r\n", &[b"+OK\r\nSubject: x\r\n.\r\n"]),
        (b"UIDL\r\n", &[b"+OK\r\n1 abc\r\n.\r\n"]),
        (b"DELE 1\r\n", &[b"+OK Marked to be deleted.\r\n"]),
        (b"RSET\r\n", &[b"+OK\r\n"]),
        (b"NOOP\r\n", &[b"+OK\r\n"]),
    ];
    for (command, pieces) in exchanges {
        assert_eq!(h.client(2, command), [to_upstream(command)]);
        for piece in pieces {
            assert_eq!(h.server(2, piece), [to_client(piece)]);
        }
    }
}

#[test]
fn quit_with_terminate_false_records_a_non_empty_maildrop_as_null() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    passed_through_check(&mut h, 2, "pw", 3);
    assert_eq!(entry(&h, "alice").unwrap().verified(), None);
    h.open(3);
    h.client(3, b"USER alice\r\n");
    assert_eq!(h.client(3, b"PASS pw\r\n"), [ConnectUpstream]);
}

#[test]
fn quit_whose_stat_fails_leaves_no_view() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    relayed_login(&mut h, 2, false);
    assert_eq!(h.client(2, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    assert_eq!(h.server(2, b"-ERR busy\r\n"), [to_upstream(b"QUIT\r\n")]);
    h.server(2, b"+OK bye\r\n");
    assert_eq!(
        entry(&h, "alice").unwrap().verified(),
        None,
        "nothing known"
    );
}

/// After DELEs the held QUIT's STAT counts 0, which is true only once the server's UPDATE
/// succeeds: a QUIT answered -ERR, or a server gone before answering it, records nothing.
#[test]
fn quit_whose_update_fails_records_nothing() {
    let mut h = alice_verified_empty();
    let verified = entry(&h, "alice").unwrap().verified();
    for (conn, quit_answer) in [
        (2, Some(&b"-ERR [SYS/TEMP] update failed\r\n"[..])),
        (3, None),
    ] {
        h.now += INTERVAL;
        h.open(conn);
        h.client(conn, b"USER alice\r\nPASS pw\r\n");
        connect_upstream(&mut h, conn, false);
        h.server(conn, b"+OK\r\n");
        h.server(conn, b"+OK Logged in.\r\n");
        assert_eq!(h.client(conn, b"DELE 1\r\n"), [to_upstream(b"DELE 1\r\n")]);
        h.server(conn, b"+OK Marked to be deleted.\r\n");
        assert_eq!(h.client(conn, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
        assert_eq!(h.server(conn, b"+OK 0 0\r\n"), [to_upstream(b"QUIT\r\n")]);
        match quit_answer {
            Some(answer) => assert_eq!(
                h.server(conn, answer),
                [to_client(answer), CloseClient, CloseUpstream]
            ),
            None => {
                h.event(conn, Event::UpstreamClosed);
            }
        }
        assert_eq!(entry(&h, "alice").unwrap().verified(), verified);
        h.engine.close(conn, h.now);
        // The next check asks the server.
        h.open(conn + 10);
        h.client(conn + 10, b"USER alice\r\n");
        assert_eq!(h.client(conn + 10, b"PASS pw\r\n"), [ConnectUpstream]);
        h.event(conn + 10, Event::ClientClosed);
        h.engine.close(conn + 10, h.now);
    }
}

#[test]
fn client_disconnect_never_sends_quit_upstream() {
    let mut h = alice_verified_empty();
    h.now += INTERVAL;
    relayed_login(&mut h, 2, false);
    h.client(2, b"DELE 1\r\n");
    // Half-closed: the DELE's answer still goes out, then the end, without QUIT.
    assert_eq!(h.event(2, Event::ClientClosed), []);
    assert_eq!(
        h.server(2, b"+OK\r\n"),
        [to_client(b"+OK\r\n"), CloseClient, CloseUpstream]
    );
    assert_eq!(entry(&h, "alice").unwrap().sessions, 0);
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut h = alice_verified_empty();
    h.open(2);
    assert_eq!(
        h.client(2, b"USER alice\r\nPASS pw\r\nSTAT\r\nQUIT\r\n"),
        [
            to_client(&[&b"+OK\r\n"[..], LOGGED_IN, b"+OK 0 0\r\n", LOGGING_OUT].concat()),
            CloseClient
        ]
    );
    // Passed through: later commands wait for the server's answers.
    h.now += INTERVAL;
    h.open(3);
    assert_eq!(
        h.client(3, b"USER alice\r\nPASS pw\r\nSTAT\r\n"),
        [to_client(b"+OK\r\n"), ConnectUpstream]
    );
    connect_upstream(&mut h, 3, false);
    assert_eq!(h.server(3, b"+OK\r\n"), [to_upstream(b"PASS pw\r\n")]);
    assert_eq!(
        h.server(3, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n"), to_upstream(b"STAT\r\n")]
    );
}

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
    assert_eq!(
        connect_upstream(&mut h, 2, false),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(2, b"+OK\r\n"), [to_upstream(b"PASS pw\r\n")]);
    assert_eq!(
        h.server(2, b"+OK Logged in.\r\n"),
        [to_upstream(b"STAT\r\n")]
    );
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
fn an_overlong_line_is_refused() {
    let mut h = engine();
    h.open(1);
    assert_eq!(
        h.client(1, &vec![b'x'; 100_000]),
        [to_client(LINE_TOO_LONG), CloseClient]
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

// ---- Session integrity against a hostile subscriber ----

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

/// Opens `conn` and logs alice in through the server (pipelined USER and PASS); `capa`:
/// the server is asked its capabilities first.
fn relayed_login(h: &mut Harness<AttenuationEngine>, conn: ConnId, capa: bool) {
    h.open(conn);
    h.client(conn, b"USER alice\r\nPASS pw\r\n");
    connect_upstream(h, conn, capa);
    h.server(conn, b"+OK\r\n");
    assert_eq!(
        h.server(conn, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
    assert_eq!(
        h.engine.state(conn),
        Some(State::Transaction { terminate: false })
    );
}

/// Everything the actions send the client.
fn to_client_bytes(actions: &[Action]) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToClient(bytes) => Some(bytes.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

// ---- The demand rule: new-mail notifications ----

fn notify(h: &mut Harness<AttenuationEngine>, user: &[u8]) -> usize {
    let now = h.now;
    h.engine.new_mail(info().server.ip(), None, user, now)
}

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

// ---- Clients that leave their mail on the server ----

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
    assert_eq!(
        connect_upstream(&mut h, 2, false),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(2, b"+OK\r\n"), [to_upstream(b"PASS pw\r\n")]);
    assert_eq!(
        h.server(2, b"+OK Logged in.\r\n"),
        [to_upstream(b"UIDL\r\n")]
    );
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
    let snapshot = super::Maildrop::new(STAT2, LIST2, UIDL2).unwrap();
    assert_eq!(held, snapshot.bytes());
    assert!(held > 0 && held < STAT2.len() + LIST2.len() + UIDL2.len());
    // A new-mail notification drops the snapshot and its bytes.
    notify(&mut h, b"alice");
    assert_eq!(h.engine.table().maildrop_bytes(), 0);
}

// ---- The patent's one-in-m rule ----

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

// ---- The patent's fast-check reward ----

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

// ---- Found by review ----

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
