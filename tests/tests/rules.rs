//! RFC 2449 LOGIN-DELAY end to end, with the real Dovecot and real clients
//! (curl, poplib, fetchmail). What reached Dovecot is counted in Dovecot's own log.
//! Run as root: `cargo test -p pop3-interceptor-e2e --test rules -- --test-threads=1`.

use std::time::Duration;

use pop3_interceptor_e2e::Dovecot;
use pop3_interceptor_e2e::clients::{self, FetchmailOptions, PoplibOptions};
use pop3_interceptor_e2e::dovecot::DovecotOptions;
use pop3_interceptor_e2e::env::Env;
use pop3_interceptor_e2e::topology::server_pop3_v4;

/// Dovecot's log is written asynchronously: wait for `expected` logins of `user`
/// (bounded), a little longer for more, then the exact count.
fn logins(dc: &Dovecot, user: &str, expected: usize) -> usize {
    let _ = dc.wait_login_count(user, expected, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    dc.login_count(user)
}

/// The daemon with a long interval and a 120 s LOGIN-DELAY handled as `action` says.
fn login_delay(action: &str) -> Env {
    let args = [
        "--interval",
        "30s",
        "--login-delay",
        "120",
        "--login-delay-action",
        action,
    ];
    Env::start(DovecotOptions::default(), &args)
}

fn poplib_with_capa() -> PoplibOptions {
    PoplibOptions {
        capa: true,
        ..PoplibOptions::default()
    }
}

#[test]
fn login_delay_is_advertised_and_curl_poplib_fetchmail_still_work() {
    let mut env = login_delay("local");
    let (topo, dc) = (&env.topo, &env.dc);
    let addr = server_pop3_v4();

    // The first check reaches Dovecot and teaches the edge.
    let first = clients::poplib(topo, addr, "alice", "alice-pw", &poplib_with_capa()).unwrap();
    assert!(first.ok(), "{}", first.normalized());
    assert_eq!(logins(dc, "alice", 1), 1);

    // CAPA says LOGIN-DELAY, to poplib and to curl, and both still get the mailbox.
    let again = clients::poplib(topo, addr, "alice", "alice-pw", &poplib_with_capa()).unwrap();
    assert!(again.ok(), "{}", again.normalized());
    let capa = again.get("capa").unwrap().to_string();
    assert!(capa.contains("LOGIN-DELAY 120"), "{capa}");
    assert_eq!(again.stat(), Some((0, 0)));
    let curl = clients::curl(topo, addr, "alice", "alice-pw", "", &["-v"]).unwrap();
    let curl = curl.check("curl LIST").unwrap();
    assert!(
        String::from_utf8_lossy(&curl.stderr).contains("LOGIN-DELAY 120"),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    // fetchmail: no mail, no error.
    let fm = clients::fetchmail(
        topo,
        addr,
        "alice",
        "alice-pw",
        &FetchmailOptions::default(),
    )
    .unwrap();
    assert_eq!(fm.code, Some(1), "{}", fm.output);
    // Three checks within the delay were answered at the edge.
    assert_eq!(logins(dc, "alice", 1), 1);

    // A wrong password within the delay is Dovecot's to refuse, never answered here.
    let wrong = clients::poplib(topo, addr, "alice", "guess", &PoplibOptions::default()).unwrap();
    assert!(
        wrong.get_str("pass").unwrap().contains("EXC"),
        "{}",
        wrong.normalized()
    );
    let c = env.ic_mut().final_counters();
    assert_eq!(c["login_delay_local"], 3, "{c:?}");
    assert_eq!(c["login_delay_refused"], 0, "{c:?}");
}

#[test]
fn a_check_sooner_than_the_login_delay_is_refused_with_its_response_code() {
    let mut env = login_delay("refuse");
    let (topo, dc) = (&env.topo, &env.dc);
    let addr = server_pop3_v4();
    let first =
        clients::poplib(topo, addr, "alice", "alice-pw", &PoplibOptions::default()).unwrap();
    assert!(first.ok(), "{}", first.normalized());
    let early =
        clients::poplib(topo, addr, "alice", "alice-pw", &PoplibOptions::default()).unwrap();
    let pass = early.get_str("pass").unwrap();
    assert!(
        pass.contains("-ERR [LOGIN-DELAY]"),
        "{}",
        early.normalized()
    );
    // curl reports the refusal as a login failure, and nothing reached Dovecot.
    let curl = clients::curl(topo, addr, "alice", "alice-pw", "", &[]).unwrap();
    assert_ne!(curl.code, Some(0), "curl must fail: {curl:?}");
    assert_eq!(logins(dc, "alice", 1), 1);
    // Another user is not held back by alice's delay.
    let carol =
        clients::poplib(topo, addr, "carol", "carol-pw", &PoplibOptions::default()).unwrap();
    assert!(carol.ok(), "{}", carol.normalized());
    assert_eq!(logins(dc, "carol", 1), 1);
    let c = env.ic_mut().final_counters();
    assert_eq!(c["login_delay_refused"], 2, "{c:?}");
}
