//! Nothing a subscriber sends can speak for the router or for another user.
//!
//! The test Dovecot trusts the router (`login_trusted_networks`), which is how the engine
//! names the subscriber with XCLIENT, so any XCLIENT a subscriber slips through would
//! change the address Dovecot logs. Every test reads Dovecot's own log. Run as root, one at
//! a time: `cargo test -p pop3-interceptor-e2e --test session_integrity -- --test-threads=1`.

use std::net::Shutdown;
use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use pop3_interceptor_e2e::clients::{self, RawSession};
use pop3_interceptor_e2e::dovecot::{DovecotOptions, make_message};
use pop3_interceptor_e2e::interceptor::InterceptorOptions;
use pop3_interceptor_e2e::topology::{CLIENT_V4, ROUTER_SERVER_V4, server_pop3_v4};
use pop3_interceptor_e2e::{Dovecot, Env, Node};

/// The address a hostile subscriber tries to make Dovecot log.
const SPOOFED: &str = "192.0.2.66";
const SPOOF: &[u8] = b"XCLIENT ADDR=192.0.2.66 PORT=4242\r\n";

fn plain(raw: &[u8]) -> String {
    STANDARD.encode(raw)
}

/// Sends `bytes` and collects what comes back within a short while (the session may
/// answer several lines or close).
fn exchange(s: &mut RawSession, bytes: &[u8]) -> String {
    s.send(bytes).unwrap();
    s.set_timeout(Duration::from_millis(1500)).unwrap();
    let (reply, _) = s.read_to_end_bounded(64 * 1024);
    s.set_timeout(Duration::from_secs(20)).unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

/// Every hostile path, each followed by an XCLIENT and a valid login.
fn xclient_paths() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let apop = b"APOP alice 0123456789abcdef0123456789abcdef\r\n".to_vec();
    vec![
        ("refused STLS", vec![b"STLS\r\n".to_vec(), SPOOF.to_vec()]),
        ("refused APOP", vec![apop, SPOOF.to_vec()]),
        (
            "unknown SASL",
            vec![b"AUTH CRAM-MD5\r\n".to_vec(), SPOOF.to_vec()],
        ),
        (
            "bad base64",
            vec![b"AUTH PLAIN !!!!\r\n".to_vec(), SPOOF.to_vec()],
        ),
        (
            "AUTH cancelled",
            vec![
                b"AUTH PLAIN\r\n".to_vec(),
                b"*\r\n".to_vec(),
                SPOOF.to_vec(),
            ],
        ),
        (
            "inside SASL",
            vec![b"AUTH LOGIN\r\n".to_vec(), SPOOF.to_vec()],
        ),
        (
            "opted-out user",
            vec![b"USER bob\r\n".to_vec(), SPOOF.to_vec()],
        ),
        (
            "pipelined",
            vec![[b"USER alice\r\n".as_slice(), SPOOF, b"PASS alice-pw\r\n"].concat()],
        ),
        (
            "after a relayed login",
            vec![
                b"USER alice\r\n".to_vec(),
                b"PASS alice-pw\r\n".to_vec(),
                SPOOF.to_vec(),
            ],
        ),
    ]
}

/// No login with the spoofed address; every login after the first `since` from `rip`: the
/// subscriber's address where the engine names it with XCLIENT, the router's where the
/// relay does not.
fn no_spoofed_login(dc: &Dovecot, since: usize, rip: &str, context: &str) {
    let log = dc.log_text();
    assert!(
        !log.contains(SPOOFED),
        "{context}: Dovecot saw the spoofed address:\n{log}"
    );
    let logins = dc.logins();
    assert!(logins.len() > since, "{context}: no login at all");
    for l in &logins[since..] {
        assert_eq!(l.rip, rip, "{context}: {}", l.line);
    }
}

#[test]
fn a_subscribers_xclient_never_reaches_dovecot_on_any_path() {
    let mut env = Env::direct(DovecotOptions {
        tls: false,
        ..Default::default()
    });
    for (mode, rip) in [
        ("attenuate", CLIENT_V4.to_string()),
        ("relay", ROUTER_SERVER_V4.to_string()),
    ] {
        env.start_daemon(&["--mode", mode, "--opt-out", "bob"]);
        let since = env.dc.logins().len();
        for (name, steps) in xclient_paths() {
            let mut s = env.connect();
            for step in &steps {
                let reply = exchange(&mut s, step);
                assert!(
                    !reply.contains("+OK Updated"),
                    "{mode}/{name}: XCLIENT accepted: {reply}"
                );
            }
            drop(s);
            env.check("alice");
            no_spoofed_login(&env.dc, since, &rip, &format!("{mode}/{name}"));
        }
        env.stop_daemon();
    }
}

#[test]
fn line_ends_and_nul_in_sasl_fields_and_commands_get_err_and_never_reach_dovecot() {
    let env = Env::start(DovecotOptions::default(), &[]);
    let dc = &env.dc;
    let smuggled = [
        format!(
            "AUTH PLAIN {}\r\n",
            plain(b"\0alice\r\nUSER victim\0alice-pw")
        ),
        format!("AUTH PLAIN {}\r\n", plain(b"ali\rce\0alice\0alice-pw")),
        format!("AUTH PLAIN {}\r\n", plain(b"\0alice\0alice-pw\0x")),
        format!("AUTH PLAIN\r\n{}\r\n", plain(b"\0alice\nSTAT\0alice-pw")),
        "USER alice\0victim\r\n".to_string(),
        "USER alice\r\nPASS alice-pw\0\r\n".to_string(),
    ];
    for bad in &smuggled {
        let mut s = env.connect();
        let reply = exchange(&mut s, bad.as_bytes());
        assert!(reply.contains("-ERR"), "{bad:?}: {reply}");
        assert!(!reply.contains("+OK Logged in"), "{bad:?}: {reply}");
        // The same session still takes an honest login.
        assert!(s.command("USER alice").unwrap().starts_with("+OK"));
        let pass = s.command("PASS alice-pw").unwrap();
        assert!(pass.starts_with("+OK"), "{bad:?}: {pass}");
        assert!(s.command("QUIT").unwrap().starts_with("+OK"));
    }
    let log = dc.log_text();
    assert!(!log.contains("victim"), "{log}");
    assert!(
        dc.logins().iter().all(|l| l.user == "alice"),
        "{:?}",
        dc.logins()
    );
}

#[test]
fn two_sessions_of_one_user_both_succeed_against_default_dovecot() {
    let env = Env::attenuating(Duration::from_secs(30));
    // Twice: first with nothing known (both reach Dovecot), then with carol
    // attenuated (the first is answered at the edge, the second must reach Dovecot).
    for round in 0..2 {
        let mut first = env.connect();
        first.command("USER carol").unwrap();
        let p1 = first.command("PASS carol-pw").unwrap();
        let mut second = env.connect();
        second.command("USER carol").unwrap();
        let p2 = second.command("PASS carol-pw").unwrap();
        assert!(
            p1.starts_with("+OK") && p2.starts_with("+OK"),
            "{round}: {p1} / {p2}"
        );
        assert_eq!(second.command("STAT").unwrap().trim_end(), "+OK 0 0");
        assert_eq!(first.command("STAT").unwrap().trim_end(), "+OK 0 0");
        assert!(second.command("QUIT").unwrap().starts_with("+OK"));
        assert!(first.command("QUIT").unwrap().starts_with("+OK"));
    }
}

#[test]
fn with_dovecot_locking_the_second_session_gets_dovecots_own_in_use() {
    let mut env = Env::direct(DovecotOptions {
        lock_session: true,
        ..Default::default()
    });
    env.dc
        .deliver(
            "carol",
            &make_message("a@example.org", "carol@example.org", "hi", "x"),
        )
        .unwrap();
    // Direct, for the text Dovecot itself gives.
    let direct = {
        let mut first = env.connect();
        first.command("USER carol").unwrap();
        first.command("PASS carol-pw").unwrap();
        let mut second = env.connect();
        second.command("USER carol").unwrap();
        second.command("PASS carol-pw").unwrap()
    };
    assert!(direct.starts_with("-ERR [IN-USE]"), "{direct}");
    env.start_daemon(&["--interval", "30s"]);
    let mut first = env.connect();
    first.command("USER carol").unwrap();
    assert!(first.command("PASS carol-pw").unwrap().starts_with("+OK"));
    let mut second = env.connect();
    second.command("USER carol").unwrap();
    assert_eq!(second.command("PASS carol-pw").unwrap(), direct);
}

#[test]
fn an_apop_client_logs_in_through_the_interceptor_as_it_does_direct() {
    let mut env = Env::direct(DovecotOptions {
        apop: true,
        ..Default::default()
    });
    let apop_stat = |env: &Env| {
        let script = "import poplib,sys\n\
            p=poplib.POP3(sys.argv[1],110,timeout=20)\n\
            p.apop('alice','alice-pw')\n\
            print(p.stat()[0]); p.quit()";
        let out = env
            .topo
            .exec_with(
                Node::Client,
                &[
                    clients::python(),
                    "-c",
                    script,
                    &server_pop3_v4().ip().to_string(),
                ],
                None,
                Duration::from_secs(30),
            )
            .unwrap();
        out.check("poplib APOP")
            .map(|o| o.stdout_str().trim().to_string())
    };
    assert_eq!(apop_stat(&env).unwrap(), "0", "direct");
    env.start_daemon(&[]);
    for _ in 0..3 {
        assert_eq!(apop_stat(&env).unwrap(), "0", "through the interceptor");
    }
    let apop_logins: Vec<_> = env
        .dc
        .logins_for("alice")
        .into_iter()
        .filter(|l| l.method == "APOP")
        .collect();
    assert_eq!(apop_logins.len(), 4, "{apop_logins:?}");
    assert!(
        apop_logins[1..]
            .iter()
            .all(|l| l.rip == CLIENT_V4.to_string())
    );
}

#[test]
fn a_quit_right_before_a_half_close_commits_the_deletion_and_gets_its_answers() {
    let env = Env::start(DovecotOptions::default(), &[]);
    let dc = &env.dc;
    dc.deliver(
        "dave",
        &make_message("a@example.org", "dave@example.org", "1", "x"),
    )
    .unwrap();
    dc.deliver(
        "dave",
        &make_message("a@example.org", "dave@example.org", "2", "y"),
    )
    .unwrap();
    let mut s = env.connect();
    s.send(b"USER dave\r\nPASS dave-pw\r\nDELE 1\r\nQUIT\r\n")
        .unwrap();
    s.stream().shutdown(Shutdown::Write).unwrap();
    let (reply, closed) = s.read_to_end_bounded(64 * 1024);
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(reply.matches("+OK").count(), 4, "{reply}");
    assert!(closed, "the session ends after the last answer: {reply}");
    assert_eq!(dc.message_count("dave"), 1, "the DELE was committed");
}

#[test]
fn no_password_appears_in_the_daemons_trace_log() {
    let mut env = Env::direct(DovecotOptions::default());
    env.start_daemon_with(InterceptorOptions {
        rust_log: "trace".to_string(),
        ..Default::default()
    });
    env.dc
        .deliver(
            "alice",
            &make_message("a@example.org", "alice@example.org", "s", "b"),
        )
        .unwrap();
    env.check("alice");
    env.check("alice");
    clients::curl_list(&env.topo, server_pop3_v4(), "bob", "bob-pw").unwrap();
    let mut s = env.connect();
    s.command("USER carol").unwrap();
    s.command("PASS wrong-secret").unwrap();
    let log = env.ic().log_text();
    assert!(log.lines().count() > 10, "trace logging is on: {log}");
    for secret in [
        "alice-pw",
        "bob-pw",
        "wrong-secret",
        &plain(b"\0bob\0bob-pw"),
    ] {
        assert!(!log.contains(secret), "{secret} in the daemon's log");
    }
}
