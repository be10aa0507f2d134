//! The attenuation engine end to end, with the real Dovecot. The tests of what
//! reaches Dovecot, the real clients, STLS and XCLIENT run on both dataplanes (`rstest`
//! cases); the rest on the default one.
//!
//! The daemon runs in its default `--mode attenuate` with an interval of a few seconds. Every
//! test counts what reached Dovecot in Dovecot's own log (`Login:` lines) and asserts exact
//! numbers, so a check answered at the edge that should have reached the server (or the other
//! way round) fails the test. Run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test attenuation -- --test-threads=1`.
//!
//! Longer than 600 lines: one suite sharing one raw-session check helper (`Check`), whose
//! exact first lines the tests compare; the check-rule tests at the end (one-in-m, fast
//! check) belong in `rules.rs` once they move to the `Env` fixture's `check`.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pop3_interceptor_e2e::clients::{self, FetchmailOptions, PoplibOptions, RawSession};
use pop3_interceptor_e2e::dovecot::make_message;
use pop3_interceptor_e2e::interceptor::dataplane_args;
use pop3_interceptor_e2e::topology::{CLIENT_V4, CLIENT_V6, server_pop3_v4, server_pop3_v6};
use pop3_interceptor_e2e::{Dovecot, Interceptor, Node, Topology};
use rstest::rstest;

/// The attenuation interval of most tests.
const INTERVAL: Duration = Duration::from_secs(5);
/// Dovecot's answer to a refused login.
const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.";

/// The dataplane of the tests that do not run on both: the daemon's own choice.
const DEFAULT_DATAPLANE: &str = "auto";

/// The daemon in its default mode (attenuate) on `dataplane` (`xdp`: native, `tc`, or
/// [`DEFAULT_DATAPLANE`]), with `interval` and `extra` flags.
fn attenuator(topo: &Topology, dataplane: &str, interval: Duration, extra: &[&str]) -> Interceptor {
    let iv = format!("{}s", interval.as_secs());
    let mut args = match dataplane {
        DEFAULT_DATAPLANE => Vec::new(),
        chosen => dataplane_args(chosen).to_vec(),
    };
    args.extend(["--interval", iv.as_str()]);
    args.extend_from_slice(extra);
    let ic = Interceptor::start(topo, &args).expect("interceptor");
    assert!(
        ic.log_text().contains("mode=Attenuate"),
        "the default mode is attenuate: {}",
        ic.log_tail(5)
    );
    ic
}

/// One POP3 check as a mail client makes it (USER, PASS, STAT, QUIT), with each answer's
/// first line (CRLF removed). After a refused PASS the session ends with QUIT.
#[derive(Debug, Clone, Default)]
struct Check {
    greeting: String,
    user: String,
    pass: String,
    stat: Option<String>,
    quit: String,
}

impl Check {
    fn logged_in(&self) -> bool {
        self.pass.starts_with("+OK")
    }
    fn stat_count(&self) -> Option<u64> {
        let s = self.stat.as_deref()?.strip_prefix("+OK ")?;
        s.split_whitespace().next()?.parse().ok()
    }
}

fn line(s: &mut RawSession) -> String {
    s.read_line().expect("a line").trim_end().to_string()
}

fn cmd(s: &mut RawSession, c: &str) -> String {
    s.command(c).expect("command").trim_end().to_string()
}

/// Reads time out after 40 s: Dovecot delays each refused login by 2 s and more after
/// repeated failures from one address (its auth penalty, up to 15 s, plus the delay).
fn connect(topo: &Topology, addr: SocketAddr) -> RawSession {
    let mut s = RawSession::connect(topo, Node::Client, addr).expect("connect");
    s.set_timeout(Duration::from_secs(40)).unwrap();
    s
}

fn check_at(topo: &Topology, addr: SocketAddr, user: &str, pass: &str) -> Check {
    let mut s = connect(topo, addr);
    let mut c = Check {
        greeting: line(&mut s),
        ..Default::default()
    };
    c.user = cmd(&mut s, &format!("USER {user}"));
    c.pass = cmd(&mut s, &format!("PASS {pass}"));
    if c.logged_in() {
        c.stat = Some(cmd(&mut s, "STAT"));
    }
    // The edge may have closed the connection (e.g. after `-ERR [SYS/TEMP]`).
    c.quit = s
        .command("QUIT")
        .map(|l| l.trim_end().to_string())
        .unwrap_or_default();
    c
}

fn check(topo: &Topology, user: &str, pass: &str) -> Check {
    check_at(topo, server_pop3_v4(), user, pass)
}

/// An empty-mailbox check that must succeed.
fn empty_check(topo: &Topology, user: &str, pass: &str) -> Check {
    let c = check(topo, user, pass);
    assert!(c.greeting.starts_with("+OK"), "{c:?}");
    assert!(c.logged_in(), "{c:?}");
    assert_eq!(c.stat.as_deref(), Some("+OK 0 0"), "{c:?}");
    assert!(c.quit.starts_with("+OK"), "{c:?}");
    c
}

/// Dovecot's log process writes asynchronously: wait for at least `expected` logins of `user`
/// (bounded), give it a little longer to write more, then return the exact count.
fn logins(dc: &Dovecot, user: &str, expected: usize) -> usize {
    let _ = dc.wait_login_count(user, expected, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    dc.login_count(user)
}

fn auth_plain_line(user: &str, pass: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        STANDARD.encode(format!("\0{user}\0{pass}"))
    )
}

/// Sleeps until `interval` (plus a margin) has passed since `since`.
fn wait_past(since: Instant, interval: Duration) {
    let until = since + interval + Duration::from_millis(700);
    let now = Instant::now();
    if until > now {
        std::thread::sleep(until - now);
    }
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn twenty_checks_within_the_interval_cause_exactly_one_dovecot_login(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    // Long enough for 20 checks on a slow machine; the test checks that it was.
    let interval = Duration::from_secs(10);
    let mut ic = attenuator(&topo, dataplane, interval, &[]);
    let start = Instant::now();
    for _ in 0..20 {
        empty_check(&topo, "alice", "alice-pw");
    }
    let took = start.elapsed();
    assert!(
        took < interval,
        "20 checks took {took:?}, longer than the interval: the test proves nothing"
    );
    assert_eq!(logins(&dc, "alice", 1), 1, "20 checks, one Dovecot login");
    assert_eq!(dc.login_count("bob"), 0);
    let c = ic.final_counters();
    for (k, v) in [
        ("checks_seen", 20),
        ("answered_locally", 19),
        ("passed_through", 1),
        ("upstream_logins_avoided", 19),
    ] {
        assert_eq!(c.get(k), Some(&v), "{k}: {c:?}");
    }
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn mail_delivered_is_seen_by_the_first_check_after_the_interval(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let _ic = attenuator(&topo, dataplane, INTERVAL, &[]);
    empty_check(&topo, "alice", "alice-pw");
    // The mailbox was verified empty when that check's QUIT went upstream (its STAT).
    let verified = Instant::now();
    empty_check(&topo, "alice", "alice-pw");
    assert_eq!(
        logins(&dc, "alice", 1),
        1,
        "the second check was attenuated"
    );

    let msg = make_message("x@p3i.test.example", "alice", "new", "arrived");
    dc.deliver("alice", &msg).unwrap();
    // Inside the interval the edge still answers "empty": that is the patent's trade-off.
    let c = empty_check(&topo, "alice", "alice-pw");
    assert_eq!(c.stat.as_deref(), Some("+OK 0 0"));
    assert!(
        verified.elapsed() < INTERVAL,
        "checks were too slow for this test"
    );
    assert_eq!(logins(&dc, "alice", 1), 1);

    wait_past(verified, INTERVAL);
    let c = check(&topo, "alice", "alice-pw");
    assert!(c.logged_in(), "{c:?}");
    assert_eq!(c.stat_count(), Some(1), "the first check after n: {c:?}");
    assert_eq!(logins(&dc, "alice", 2), 2, "it reached Dovecot");
    // Left on the server: the next check is answered from that session's snapshot.
    let c = check(&topo, "alice", "alice-pw");
    assert_eq!(c.stat_count(), Some(1), "{c:?}");
    assert_eq!(logins(&dc, "alice", 2), 2);
    // Fetching it logs in behind the client (after checking the numbering).
    let p = clients::poplib(
        &topo,
        server_pop3_v4(),
        "alice",
        "alice-pw",
        &PoplibOptions::default(),
    )
    .unwrap();
    assert!(p.ok(), "{}", p.normalized());
    assert!(
        p.normalized().contains("Subject: new"),
        "{}",
        p.normalized()
    );
    assert_eq!(logins(&dc, "alice", 3), 3);
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn a_wrong_password_gets_dovecots_err_and_never_a_local_ok(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = attenuator(&topo, dataplane, Duration::from_secs(30), &[]);
    // Unknown to the edge.
    let c = check(&topo, "alice", "wrong");
    assert_eq!(c.pass, AUTH_FAILED, "{c:?}");
    // Learnt, then attenuated.
    empty_check(&topo, "alice", "alice-pw");
    empty_check(&topo, "alice", "alice-pw");
    assert_eq!(logins(&dc, "alice", 1), 1);
    // Attenuated user, wrong password: replayed, Dovecot refuses, its -ERR is relayed. (Few
    // of them: Dovecot's auth penalty for the subscriber's address grows with each failure,
    // which also shows that XCLIENT made Dovecot see the subscriber.)
    let started = Instant::now();
    for pw in ["wrong", "ALICE-PW"] {
        let c = check(&topo, "alice", pw);
        assert_eq!(c.pass, AUTH_FAILED, "password {pw:?}: {c:?}");
        assert_eq!(c.stat, None);
    }
    // The same with AUTH PLAIN.
    let mut s = connect(&topo, server_pop3_v4());
    assert!(line(&mut s).starts_with("+OK"));
    assert_eq!(
        cmd(&mut s, &auth_plain_line("alice", "wrong")),
        AUTH_FAILED,
        "AUTH PLAIN with a wrong password"
    );
    assert!(cmd(&mut s, "QUIT").starts_with("+OK"));
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "each refusal came from Dovecot, after its auth failure delay: {:?}",
        started.elapsed()
    );
    // Nothing changed: the right password is still attenuated, and answered at once although
    // Dovecot would now make this address wait.
    let started = Instant::now();
    let c = empty_check(&topo, "alice", "alice-pw");
    assert_eq!(c.pass, "+OK Logged in.");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(logins(&dc, "alice", 1), 1, "no login for refused passwords");
    // Dovecot saw every wrong password, from the subscriber's address.
    let mismatches = dc
        .log_lines_matching("Password mismatch")
        .into_iter()
        .filter(|l| l.contains("passwd-file(alice,198.51.100.2"))
        .count();
    assert_eq!(mismatches, 4, "{}", dc.log_text());
    let c = ic.final_counters();
    assert_eq!(c["checks_seen"], 7, "{c:?}");
    assert_eq!(c["upstream_logins_avoided"], 2);
}

#[test]
fn a_password_changed_in_dovecots_passwd_file_is_picked_up() {
    let topo = Topology::new().unwrap();
    let mut dc = Dovecot::start(&topo).unwrap();
    let _ic = attenuator(&topo, DEFAULT_DATAPLANE, INTERVAL, &[]);
    empty_check(&topo, "bob", "bob-pw");
    dc.set_password("bob", "bob-new").unwrap();
    // The new password differs from the one the edge knows: replayed, Dovecot accepts it.
    empty_check(&topo, "bob", "bob-new");
    // Its QUIT went upstream: bob's mailbox is verified empty as of now.
    let verified = Instant::now();
    assert_eq!(logins(&dc, "bob", 2), 2);
    // The old one now differs from the stored verifier: replayed, Dovecot refuses it.
    let c = check(&topo, "bob", "bob-pw");
    assert_eq!(c.pass, AUTH_FAILED, "{c:?}");
    // The new one is the one attenuated now.
    empty_check(&topo, "bob", "bob-new");
    assert_eq!(logins(&dc, "bob", 2), 2);

    // Changed again, and this time the old password is tried first: after the interval the
    // edge asks Dovecot, which refuses it.
    dc.set_password("bob", "bob-third").unwrap();
    wait_past(verified, INTERVAL);
    let c = check(&topo, "bob", "bob-new");
    assert_eq!(c.pass, AUTH_FAILED, "{c:?}");
    empty_check(&topo, "bob", "bob-third");
    assert_eq!(logins(&dc, "bob", 3), 3);
    let c = check(&topo, "bob", "bob-new");
    assert_eq!(c.pass, AUTH_FAILED, "{c:?}");
    assert_eq!(logins(&dc, "bob", 3), 3);
}

#[test]
fn an_opted_out_user_always_reaches_dovecot() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = attenuator(
        &topo,
        DEFAULT_DATAPLANE,
        Duration::from_secs(30),
        &["--opt-out", "bob,dave"],
    );
    for _ in 0..5 {
        let c = empty_check(&topo, "bob", "bob-pw");
        assert!(c.pass.starts_with("+OK"), "{c:?}");
        empty_check(&topo, "alice", "alice-pw");
    }
    // curl logs in with AUTH PLAIN: opted out too.
    for _ in 0..2 {
        clients::curl_list(&topo, server_pop3_v4(), "dave", "dave-pw").unwrap();
    }
    assert_eq!(
        logins(&dc, "bob", 5),
        5,
        "every check of bob reached Dovecot"
    );
    assert_eq!(
        logins(&dc, "dave", 2),
        2,
        "every check of dave reached Dovecot"
    );
    assert_eq!(logins(&dc, "alice", 1), 1, "alice was attenuated");
    assert!(
        dc.logins_for("bob")
            .iter()
            .all(|l| l.rip == CLIENT_V4.to_string())
    );
    let c = ic.final_counters();
    // Opted-out sessions are tunnels: counted as passed through, not as checks.
    assert_eq!(c["checks_seen"], 5, "{c:?}");
    assert_eq!(c["passed_through"], 1 + 5 + 2, "{c:?}");
    assert_eq!(c["upstream_logins_avoided"], 4, "{c:?}");
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn stls_reaches_dovecots_tls_unchanged(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let _ic = attenuator(&topo, dataplane, Duration::from_secs(30), &[]);
    let opts = PoplibOptions {
        capa: true,
        stls: true,
        ..Default::default()
    };
    for i in 1..=3 {
        let t = clients::poplib(&topo, server_pop3_v4(), "alice", "alice-pw", &opts).unwrap();
        assert!(t.ok(), "{}", t.normalized());
        let capa = t.get("capa").unwrap().to_string();
        assert!(capa.contains("STLS"), "the edge's CAPA offers STLS: {capa}");
        let stls = t.get_str("stls").unwrap();
        assert!(
            stls.starts_with("+OK Begin TLS") && stls.contains("[TLSv1."),
            "{stls}"
        );
        assert_eq!(t.stat(), Some((0, 0)));
        // Every TLS session is Dovecot's: one TLS login each, never attenuated.
        assert_eq!(logins(&dc, "alice", i), i);
        let last = dc.logins_for("alice").pop().unwrap();
        assert!(last.tls, "Dovecot logged a TLS login: {}", last.line);
        assert_eq!(last.rip, CLIENT_V4.to_string(), "{}", last.line);
    }
    let out = clients::openssl_starttls(&topo, server_pop3_v4()).unwrap();
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(text.contains("Protocol version: TLSv1."), "{text}");
    assert!(text.contains("+OK Logging out"), "{text}");
    assert!(
        dc.log_lines_matching("TLS")
            .iter()
            .any(|l| l.contains("Disconnected") || l.contains("Aborted login")),
        "Dovecot saw the openssl TLS session: {}",
        dc.log_text()
    );
}

#[test]
fn a_stopped_mail_server_still_answers_attenuated_checks_only() {
    let topo = Topology::new().unwrap();
    let mut dc = Dovecot::start(&topo).unwrap();
    let _ic = attenuator(
        &topo,
        DEFAULT_DATAPLANE,
        Duration::from_secs(60),
        &["--connect-timeout", "2s"],
    );
    empty_check(&topo, "alice", "alice-pw");
    // bob keeps one message on the server: his check is answered from its snapshot.
    dc.deliver("bob", &make_message("x@p3i.test.example", "bob", "s", "b"))
        .unwrap();
    let c = check(&topo, "bob", "bob-pw");
    assert_eq!(c.stat_count(), Some(1), "{c:?}");
    dc.stop().unwrap();

    for _ in 0..3 {
        let c = empty_check(&topo, "alice", "alice-pw");
        assert_eq!(c.pass, "+OK Logged in.", "{c:?}");
    }
    // A user the edge never saw: USER needs the server.
    let mut s = connect(&topo, server_pop3_v4());
    assert!(line(&mut s).starts_with("+OK"), "greeted at the edge");
    let u = cmd(&mut s, "USER carol");
    assert!(u.starts_with("-ERR [SYS/TEMP]"), "{u}");
    // bob's check too (the snapshot is fresh), but fetching needs the server.
    let c = check(&topo, "bob", "bob-pw");
    assert_eq!(
        (c.pass.as_str(), c.stat_count()),
        ("+OK Logged in.", Some(1))
    );
    let mut s = connect(&topo, server_pop3_v4());
    line(&mut s);
    cmd(&mut s, "USER bob");
    assert_eq!(cmd(&mut s, "PASS bob-pw"), "+OK Logged in.");
    let r = cmd(&mut s, "RETR 1");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    // An attenuated user with another password: must ask the server, never a local +OK.
    let c = check(&topo, "alice", "not-her-password");
    assert!(c.pass.starts_with("-ERR [SYS/TEMP]"), "{c:?}");
    // And alice's right password still works at the edge.
    empty_check(&topo, "alice", "alice-pw");

    dc.restart().unwrap();
    let c = check(&topo, "carol", "carol-pw");
    assert_eq!(c.stat.as_deref(), Some("+OK 0 0"), "{c:?}");
    assert_eq!(logins(&dc, "alice", 1), 1);
    assert_eq!(logins(&dc, "carol", 1), 1);
}

#[test]
fn a_client_that_disconnects_mid_session_never_causes_a_quit_upstream() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let _ic = attenuator(&topo, DEFAULT_DATAPLANE, INTERVAL, &[]);
    for subject in ["one", "two"] {
        dc.deliver(
            "dave",
            &make_message("x@p3i.test.example", "dave", subject, "b"),
        )
        .unwrap();
    }
    for round in 1..=3 {
        let mut s = connect(&topo, server_pop3_v4());
        assert!(line(&mut s).starts_with("+OK"));
        assert!(cmd(&mut s, "USER dave").starts_with("+OK"));
        assert!(cmd(&mut s, "PASS dave-pw").starts_with("+OK"));
        assert!(cmd(&mut s, "STAT").starts_with("+OK 2 "));
        let dele = cmd(&mut s, "DELE 1");
        assert!(dele.starts_with("+OK"), "{dele}");
        if round == 2 {
            // QUIT sent in the same segment as the abort would be a QUIT: here the client
            // sends half a command and vanishes.
            s.send(b"QU").unwrap();
        }
        s.abort();
        assert_eq!(logins(&dc, "dave", round), round);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            dc.message_count("dave"),
            2,
            "round {round}: nothing deleted"
        );
    }
    assert!(
        dc.log_lines_matching("Logged out")
            .iter()
            .all(|l| !l.contains("pop3(dave)")),
        "Dovecot never got a QUIT from dave's sessions: {}",
        dc.log_text()
    );
    // A proper QUIT does delete.
    let t = clients::poplib(
        &topo,
        server_pop3_v4(),
        "dave",
        "dave-pw",
        &PoplibOptions {
            retr: false,
            dele: vec![1],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(t.ok(), "{}", t.normalized());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dc.message_count("dave"), 1);
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn xclient_makes_dovecot_log_the_subscribers_address(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let _ic = attenuator(&topo, dataplane, Duration::from_secs(30), &[]);
    for user in ["alice", "bob", "carol"] {
        empty_check(&topo, user, &format!("{user}-pw"));
    }
    let c = check_at(&topo, server_pop3_v6(), "dave", "dave-pw");
    assert_eq!(c.stat.as_deref(), Some("+OK 0 0"), "{c:?}");
    for user in ["alice", "bob", "carol"] {
        assert_eq!(logins(&dc, user, 1), 1);
        let l = dc.logins_for(user).pop().unwrap();
        assert_eq!(l.rip, CLIENT_V4.to_string(), "{}", l.line);
    }
    assert_eq!(logins(&dc, "dave", 1), 1);
    let l = dc.logins_for("dave").pop().unwrap();
    assert_eq!(l.rip, CLIENT_V6.to_string(), "{}", l.line);
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn curl_and_fetchmail_work_through_the_attenuating_daemon(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = attenuator(&topo, dataplane, Duration::from_secs(30), &[]);
    let addr = server_pop3_v4();
    // An empty mailbox: the first curl check reaches Dovecot, the next ones do not, and
    // curl cannot tell them apart.
    let curl_v = || {
        let out = clients::curl(&topo, addr, "alice", "alice-pw", "", &["-v"])
            .unwrap()
            .check("curl")
            .unwrap();
        // Dovecot logs method=PLAIN for USER/PASS too: curl's own trace shows what it sent.
        assert!(
            out.stderr_str().contains("> AUTH PLAIN"),
            "curl logs in with AUTH PLAIN: {}",
            out.stderr_str()
        );
        out
    };
    let first = curl_v();
    for _ in 0..3 {
        let again = curl_v();
        assert_eq!(
            again.stdout, first.stdout,
            "attenuated listing as Dovecot's"
        );
    }
    assert_eq!(logins(&dc, "alice", 1), 1);
    let l = dc.logins_for("alice").pop().unwrap();
    assert_eq!(
        l.method, "PLAIN",
        "curl logs in with AUTH PLAIN: {}",
        l.line
    );
    let bad = clients::curl(&topo, addr, "alice", "wrong", "", &[]).unwrap();
    assert!(!bad.success(), "curl with a wrong password fails");

    // A mailbox with mail: listed from the snapshot, the message fetched from Dovecot.
    let msg = make_message("x@p3i.test.example", "dave", "for curl", "hello curl");
    dc.deliver("dave", &msg).unwrap();
    let list = clients::curl_list(&topo, addr, "dave", "dave-pw").unwrap();
    assert!(list.starts_with("1 "), "{list:?}");
    let body = clients::curl_retr(&topo, addr, "dave", "dave-pw", 1).unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("hello curl"),
        "{body:?}"
    );
    assert_eq!(logins(&dc, "dave", 2), 2);

    // fetchmail: mail fetched through the daemon, then empty checks attenuated.
    let fm = clients::fetchmail(
        &topo,
        addr,
        "dave",
        "dave-pw",
        &FetchmailOptions {
            keep: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fm.code, Some(0), "{}", fm.output);
    assert!(
        String::from_utf8_lossy(&fm.delivered).contains("hello curl"),
        "{}",
        fm.output
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        dc.message_count("dave"),
        0,
        "fetchmail deleted it with QUIT"
    );
    assert_eq!(logins(&dc, "dave", 3), 3);
    for _ in 0..3 {
        let fm = clients::fetchmail(&topo, addr, "dave", "dave-pw", &Default::default()).unwrap();
        assert_eq!(fm.code, Some(1), "no mail: {}", fm.output);
    }
    // The deleting session's held QUIT asked STAT first (0 once the DELEs are counted) and
    // only then QUIT: the mailbox is known empty, so every later check is answered at the edge.
    assert_eq!(
        logins(&dc, "dave", 3),
        3,
        "no empty fetchmail check reached Dovecot"
    );
    let c = ic.final_counters();
    assert_eq!(c["upstream_logins_avoided"], 3 + 3, "{c:?}");
}

#[test]
fn malformed_pop3_gets_err_and_the_daemon_keeps_serving() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = attenuator(&topo, DEFAULT_DATAPLANE, Duration::from_secs(30), &[]);
    let addr = server_pop3_v4();
    empty_check(&topo, "alice", "alice-pw");

    // AUTHORIZATION state: garbage, empty lines, PASS before USER, transaction commands.
    let mut s = connect(&topo, addr);
    assert!(line(&mut s).starts_with("+OK"));
    for bad in [
        "\u{1}\u{7f}garbage\u{ff}",
        "",
        "   ",
        "XYZZY",
        "PASS alice-pw",
        "STAT",
        "LIST",
        "RETR 1",
        "DELE 1",
        "UIDL",
        "TOP 1 0",
        "RSET",
        "NOOP",
    ] {
        let r = cmd(&mut s, bad);
        assert!(r.starts_with("-ERR"), "{bad:?} before login: {r:?}");
    }
    // Still usable: a login in the same session works (attenuated).
    assert!(cmd(&mut s, "USER alice").starts_with("+OK"));
    assert_eq!(cmd(&mut s, "PASS alice-pw"), "+OK Logged in.");
    // TRANSACTION state, attenuated: wrong-state and unknown commands.
    for bad in [
        "USER alice",
        "PASS alice-pw",
        "APOP alice x",
        "XYZZY",
        "",
        "RETR 1",
        "DELE 1",
    ] {
        let r = cmd(&mut s, bad);
        assert!(
            r.starts_with("-ERR"),
            "{bad:?} in an attenuated session: {r:?}"
        );
    }
    assert!(cmd(&mut s, "QUIT").starts_with("+OK"));

    // TRANSACTION state, passed through (mail waiting): Dovecot's own -ERR.
    dc.deliver("bob", &make_message("x@p3i.test.example", "bob", "s", "b"))
        .unwrap();
    let mut s = connect(&topo, addr);
    assert!(line(&mut s).starts_with("+OK"));
    assert!(cmd(&mut s, "USER bob").starts_with("+OK"));
    assert!(cmd(&mut s, "PASS bob-pw").starts_with("+OK"));
    for bad in ["USER bob", "XYZZY", "RETR 9", "DELE 0"] {
        let r = cmd(&mut s, bad);
        assert!(r.starts_with("-ERR"), "{bad:?} in a relayed session: {r:?}");
    }
    assert!(cmd(&mut s, "STAT").starts_with("+OK 1 "));
    assert!(cmd(&mut s, "QUIT").starts_with("+OK"));

    // An overlong command line: -ERR and the connection closes.
    for len in [300usize, 5000, 100_000] {
        let mut bytes = vec![b'A'; len];
        bytes.extend_from_slice(b"\r\n");
        let r = clients::raw_exchange(&topo, addr, &bytes, Duration::from_secs(10), 4096).unwrap();
        assert!(r.greeting.starts_with("+OK"));
        assert!(
            r.reply_str().starts_with("-ERR"),
            "{len}: {:?}",
            r.reply_str()
        );
        assert!(r.closed, "{len}: closed after -ERR");
    }
    // Bytes without any line end at all.
    let r =
        clients::raw_exchange(&topo, addr, &[b'x'; 20_000], Duration::from_secs(10), 4096).unwrap();
    assert!(r.reply_str().starts_with("-ERR"), "{:?}", r.reply_str());
    assert!(r.closed);
    // Bad AUTH PLAIN credentials become Dovecot's problem (a tunnel), which refuses them.
    let mut s = connect(&topo, addr);
    assert!(line(&mut s).starts_with("+OK"));
    let r = cmd(&mut s, "AUTH PLAIN !!!not-base64!!!");
    assert!(r.starts_with("-ERR"), "{r}");

    // The daemon keeps serving, attenuated and passed through alike.
    empty_check(&topo, "alice", "alice-pw");
    let c = empty_check(&topo, "carol", "carol-pw");
    assert!(c.pass.starts_with("+OK"));
    assert!(ic.is_running());
    assert_eq!(logins(&dc, "alice", 1), 1);
    assert_eq!(logins(&dc, "carol", 1), 1);
    let c = ic.final_counters();
    assert_eq!(c["upstream_logins_avoided"], 2, "{c:?}");
}

#[test]
fn one_in_m_sends_every_mth_attenuable_check_to_dovecot() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = attenuator(
        &topo,
        DEFAULT_DATAPLANE,
        Duration::from_secs(30),
        &["--one-in-m", "3"],
    );
    // The first check teaches the edge; of the next 9 that could be answered here, every
    // third reaches Dovecot.
    for _ in 0..10 {
        empty_check(&topo, "alice", "alice-pw");
    }
    assert_eq!(logins(&dc, "alice", 4), 4);
    let c = ic.final_counters();
    assert_eq!(c["one_in_m_passed"], 3, "{c:?}");
}

#[test]
fn a_fast_third_check_is_rewarded_and_fast_polling_then_stays_at_the_edge() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = attenuator(
        &topo,
        DEFAULT_DATAPLANE,
        Duration::from_secs(30),
        &["--fast-check", "3/20s"],
    );
    empty_check(&topo, "alice", "alice-pw");
    // Three quick checks: the third is a person pressing "check" again.
    for _ in 0..3 {
        empty_check(&topo, "alice", "alice-pw");
    }
    assert_eq!(
        logins(&dc, "alice", 2),
        2,
        "the third fast check reached Dovecot"
    );
    // Polling on that fast: answered at the edge for the penalty.
    for _ in 0..6 {
        empty_check(&topo, "alice", "alice-pw");
    }
    assert_eq!(logins(&dc, "alice", 2), 2);
    let c = ic.final_counters();
    assert_eq!(c["fast_checks_rewarded"], 1, "{c:?}");
}
