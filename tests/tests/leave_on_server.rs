//! Clients that leave their mail on the server. Their checks (STAT and UIDL,
//! then RETR of new messages only) are answered from a snapshot of the server's own
//! answers, byte for byte; a message is always fetched from the server, after its
//! numbering is checked. Run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test leave_on_server -- --test-threads=1`.

use std::collections::BTreeSet;
use std::time::Duration;

use pop3_interceptor_e2e::clients::{self, FetchmailOptions, RawSession};
use pop3_interceptor_e2e::dovecot::{DovecotOptions, make_message};
use pop3_interceptor_e2e::env::Env;
use pop3_interceptor_e2e::topology::server_pop3_v4;
use pop3_interceptor_e2e::{Dovecot, Node};

/// The daemon's flags here: a long interval, so every check after the first is answered
/// at the edge.
const DAEMON: &[&str] = &["--interval", "30s"];

/// What a leave-on-server client sees in one check: the STAT and UIDL answers as
/// bytes, and the bodies of the messages it had not seen before.
#[derive(Debug, PartialEq, Eq)]
struct Check {
    stat: String,
    uidl: Vec<u8>,
    fetched: Vec<Vec<u8>>,
}

/// STAT, UIDL, RETR of the UIDs not in `seen` (which learns them), QUIT.
fn check(env: &Env, seen: &mut BTreeSet<String>) -> Check {
    let mut s = env.connect();
    s.command("USER alice").unwrap();
    assert!(s.command("PASS alice-pw").unwrap().starts_with("+OK"));
    let stat = s.command("STAT").unwrap();
    s.send(b"UIDL\r\n").unwrap();
    let status = s.read_line().unwrap();
    let body = s.read_multiline().unwrap();
    let mut fetched = Vec::new();
    for line in String::from_utf8_lossy(&body).lines() {
        let Some((n, uid)) = line.split_once(' ') else {
            continue;
        };
        if seen.insert(uid.to_owned()) {
            assert!(s.command(&format!("RETR {n}")).unwrap().starts_with("+OK"));
            fetched.push(s.read_multiline().unwrap());
        }
    }
    assert!(s.command("QUIT").unwrap().starts_with("+OK"));
    Check {
        stat,
        uidl: [status.into_bytes(), body].concat(),
        fetched,
    }
}

fn deliver(dc: &Dovecot, subject: &str) {
    dc.deliver(
        "alice",
        &make_message("a@example.org", "alice@example.org", subject, subject),
    )
    .unwrap();
}

#[test]
fn a_leave_on_server_client_sees_the_same_bytes_and_spares_the_server() {
    let mut env = Env::direct(DovecotOptions::default());
    for subject in ["one", "two", "three"] {
        deliver(&env.dc, subject);
    }
    let mut seen_direct = BTreeSet::new();
    let direct = check(&env, &mut seen_direct);
    assert_eq!(direct.fetched.len(), 3);
    let again_direct = check(&env, &mut seen_direct);
    let logins_direct = env.dc.login_count("alice");

    env.start_daemon(DAEMON);
    let mut seen = BTreeSet::new();
    let first = check(&env, &mut seen);
    assert_eq!(
        first, direct,
        "the first check through is relayed as it is direct"
    );
    for _ in 0..10 {
        assert_eq!(
            check(&env, &mut seen),
            again_direct,
            "byte for byte what Dovecot says"
        );
    }
    // The first check through reached Dovecot; the ten after it did not.
    let through = env
        .dc
        .wait_login_count("alice", logins_direct + 1, Duration::from_secs(5))
        .unwrap();
    assert_eq!(through, logins_direct + 1);
}

#[test]
fn a_message_deleted_behind_the_edge_is_never_fetched_by_a_stale_number() {
    let mut env = Env::direct(DovecotOptions::default());
    for subject in ["one", "two", "three"] {
        deliver(&env.dc, subject);
    }
    env.start_daemon(DAEMON);
    let mut seen = BTreeSet::new();
    check(&env, &mut seen);
    // Webmail (a direct session from the server's side) deletes message 1.
    let mut webmail = RawSession::connect(&env.topo, Node::Server, server_pop3_v4()).unwrap();
    webmail.read_line().unwrap();
    webmail.command("USER alice").unwrap();
    webmail.command("PASS alice-pw").unwrap();
    assert!(webmail.command("DELE 1").unwrap().starts_with("+OK"));
    assert!(webmail.command("QUIT").unwrap().starts_with("+OK"));
    // The edge still shows three messages (the time rule), but fetching "2" by the old
    // numbering would bring what was 3: the session ends instead.
    let mut s = env.connect();
    s.command("USER alice").unwrap();
    assert!(s.command("PASS alice-pw").unwrap().starts_with("+OK"));
    assert_eq!(
        s.command("STAT").unwrap().split_whitespace().nth(1),
        Some("3")
    );
    let retr = s.command("RETR 2").unwrap();
    assert!(retr.starts_with("-ERR [SYS/TEMP]"), "{retr}");
    // The next check starts from the server's truth.
    let mut fresh = BTreeSet::new();
    let after = check(&env, &mut fresh);
    assert_eq!(after.stat.split_whitespace().nth(1), Some("2"));
    assert_eq!(after.fetched.len(), 2);
    assert!(
        String::from_utf8_lossy(&after.fetched.concat()).contains("two"),
        "the right messages"
    );
}

#[test]
fn fetchmail_keeping_mail_by_uidl_gets_the_same_mail_and_spares_the_server() {
    let mut env = Env::direct(DovecotOptions::default());
    for subject in ["one", "two"] {
        deliver(&env.dc, subject);
    }
    let keep = FetchmailOptions {
        keep: true,
        fetchall: false,
        uidl: true,
        ..Default::default()
    };
    let addr = server_pop3_v4();
    let fetch = |env: &Env, home: &str| {
        let home = env.topo.dir().join(home);
        clients::fetchmail_in(&env.topo, &home, addr, "alice", "alice-pw", &keep).unwrap()
    };
    let direct = fetch(&env, "direct");
    assert_eq!(direct.code, Some(0), "{}", direct.output);
    env.start_daemon(DAEMON);
    let dc = &env.dc;
    let logins_before = dc.login_count("alice");
    let first = fetch(&env, "through");
    assert_eq!(first.code, Some(0), "{}", first.output);
    assert_eq!(first.delivered, direct.delivered, "the same two messages");
    let logins_after_first = dc
        .wait_login_count("alice", logins_before + 1, Duration::from_secs(5))
        .unwrap();
    for _ in 0..3 {
        let again = fetch(&env, "through");
        assert_eq!(again.code, Some(1), "nothing new: {}", again.output);
    }
    assert_eq!(
        first.delivered,
        fetch(&env, "through").delivered,
        "nothing fetched twice"
    );
    assert_eq!(
        dc.login_count("alice"),
        logins_after_first,
        "the checks that found nothing new never reached Dovecot"
    );
}
