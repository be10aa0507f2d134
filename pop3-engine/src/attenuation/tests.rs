//! One test per bullet of the patent's "States, Events, and Actions", with a fake clock
//! and exact bytes in both directions, and the harness the topics under `tests/` share
//! (the model-based property test is `tests/model.rs`).

use std::time::{Duration, Instant};

use super::*;
use crate::{
    gate::{LINE_TOO_LONG, SERVER_UNAVAILABLE},
    session::Action::{self, CloseClient, CloseUpstream, ConnectUpstream},
    testing::{Harness, info, to_client, to_upstream},
};
use fsm::{GREETING, LOGGED_IN, LOGGING_OUT, NO_SUCH_MESSAGE};

mod demand_rule;
mod edge_cache;
mod hostile;
mod leave_on_server;
mod lifetime;
mod model;
mod pass_through;
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

/// An attenuated session of alice ("pw") that must now ask the server: the engine logs
/// in behind the client's back; returns what it sends the server once logged in.
fn log_in_behind(h: &mut Harness<AttenuationEngine>, conn: ConnId) -> Vec<Action> {
    assert_eq!(
        connect_upstream(h, conn, false),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(conn, b"+OK\r\n"), [to_upstream(b"PASS pw\r\n")]);
    h.server(conn, b"+OK Logged in.\r\n")
}

/// A table that knows alice ("pw") and her maildrop verified empty at `h.now`.
fn alice_verified_empty() -> Harness<AttenuationEngine> {
    let mut h = engine();
    passed_through_check(&mut h, 1, "pw", 0);
    h
}

/// A new-mail notification for `user` from the test server.
fn notify(h: &mut Harness<AttenuationEngine>, user: &[u8]) -> usize {
    let now = h.now;
    h.engine.new_mail(info().server.ip(), None, user, now)
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
