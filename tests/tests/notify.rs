//! The demand rule. A mail server's new-mail notification ends a
//! user's attenuation at once, so with `--interval 15m` a delivery is still seen by the
//! very next check. The notifier here is a plain HTTP POST from the mail server's
//! namespace (what Dovecot's `lua` driver or an MTA hook sends). Run as root, one at a
//! time: `cargo test -p pop3-interceptor-e2e --test notify -- --test-threads=1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pop3_interceptor_e2e::dovecot::{DovecotOptions, make_message};
use pop3_interceptor_e2e::env::Env;
use pop3_interceptor_e2e::topology::ROUTER_SERVER_V4;
use pop3_interceptor_e2e::{Dovecot, Node};

const SECRET: &str = "n0tify-s3cret";

/// The endpoint, on the router's mail-server-facing address.
fn endpoint() -> SocketAddr {
    SocketAddr::new(ROUTER_SERVER_V4.into(), 8110)
}

/// Dovecot with `options` behind the daemon with a long interval and the notification
/// endpoint on.
fn env(options: DovecotOptions, extra: &[&str]) -> Env {
    let mut env = Env::direct(options);
    let secret = env.topo.dir().join("notify.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let listen = endpoint().to_string();
    let mut args = vec![
        "--interval",
        "15m",
        "--notify-listen",
        listen.as_str(),
        "--notify-secret-file",
        secret.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    env.start_daemon(&args);
    env
}

/// One HTTP/1.1 request from the mail server's namespace; returns the status code.
fn http(env: &Env, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> u16 {
    request(env, method, path, auth, body, Duration::from_secs(5))
}

/// [`http`], waiting up to `wait` for the answer.
fn request(
    env: &Env,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
    wait: Duration,
) -> u16 {
    let mut stream = env
        .topo
        .connect(Node::Server, endpoint(), Duration::from_secs(5))
        .unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: edge\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A server may answer (413) before taking a large body: a failed write is fine.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {reply:?}"))
}

fn bearer() -> String {
    format!("Bearer {SECRET}")
}

/// An authentic `POST /notify` with `body`; returns the status code.
fn post(env: &Env, body: &[u8]) -> u16 {
    http(env, "POST", "/notify", Some(&bearer()), body)
}

/// A check that must log in; returns the STAT count.
fn check(env: &Env, user: &str) -> u64 {
    let stat = env.check(user);
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Waits until Dovecot logged `n` logins of `user` (its log is written asynchronously).
fn logins(dc: &Dovecot, user: &str, n: usize) -> usize {
    dc.wait_login_count(user, n, Duration::from_secs(5))
        .unwrap_or_else(|_| dc.login_count(user))
}

#[test]
fn a_notified_delivery_is_seen_by_the_very_next_check() {
    let env = env(DovecotOptions::default(), &[]);
    let dc = &env.dc;
    for _ in 0..10 {
        assert_eq!(check(&env, "alice"), 0);
    }
    assert_eq!(
        logins(dc, "alice", 1),
        1,
        "attenuated after the first check"
    );
    for _ in 0..3 {
        dc.deliver(
            "alice",
            &make_message("a@example.org", "alice@example.org", "new", "mail"),
        )
        .unwrap();
        // What a delivery hook sends.
        let body = br#"{"user":"alice","event":"messageNew","folder":"INBOX"}"#;
        let started = Instant::now();
        assert_eq!(
            http(
                &env,
                "PUT",
                "/preliminary/http-notify/v1/notify",
                Some(&bearer()),
                body
            ),
            204
        );
        assert_eq!(check(&env, "alice"), 1, "the very next check sees it");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The client fetched it and deletes it: from then on attenuated again.
        let mut s = env.connect();
        s.command("USER alice").unwrap();
        s.command("PASS alice-pw").unwrap();
        assert!(s.command("DELE 1").unwrap().starts_with("+OK"));
        assert!(s.command("QUIT").unwrap().starts_with("+OK"));
        for _ in 0..5 {
            assert_eq!(check(&env, "alice"), 0);
        }
    }
    // One login for the first check, then per delivery: the check that saw the mail and
    // the session that deleted it. None for the 5 x 3 + 9 attenuated checks.
    assert_eq!(logins(dc, "alice", 7), 7);
}

#[test]
fn the_endpoint_refuses_what_is_not_an_authentic_notification_and_survives_a_flood() {
    let env = env(DovecotOptions::default(), &["--notify-rate", "50"]);
    let dc = &env.dc;
    assert_eq!(check(&env, "bob"), 0);
    let ok = br#"{"user":"bob"}"#;
    assert_eq!(http(&env, "POST", "/notify", None, ok), 401);
    assert_eq!(http(&env, "POST", "/notify", Some("Bearer wrong"), ok), 401);
    let basic_wrong = "Basic ZG92ZWNvdDp3cm9uZw=="; // dovecot:wrong
    assert_eq!(http(&env, "POST", "/notify", Some(basic_wrong), ok), 401);
    assert_eq!(post(&env, b"{not json"), 400);
    assert_eq!(post(&env, br#"{"user":"a\nb"}"#), 400);
    let huge = format!(r#"{{"user":"bob","pad":"{}"}}"#, "x".repeat(64 * 1024));
    assert_eq!(post(&env, huge.as_bytes()), 413);
    assert_eq!(post(&env, br#"{"user":"nobody"}"#), 204);
    // None of that ended bob's attenuation: his check is still answered at the edge.
    assert_eq!(check(&env, "bob"), 0);
    assert_eq!(logins(dc, "bob", 1), 1);

    // A flood, bounded in count and time: the rate limit answers 429 and POP3 goes on.
    let started = Instant::now();
    let mut limited = 0;
    for _ in 0..300 {
        if post(&env, br#"{"user":"nobody"}"#) == 429 {
            limited += 1;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(limited > 0, "the request rate is bounded");
    assert_eq!(check(&env, "bob"), 0);
    // A basic-auth notification (Dovecot's URL form user:SECRET@) still works after it.
    std::thread::sleep(Duration::from_secs(1));
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("dovecot:{SECRET}")
        )
    );
    assert_eq!(http(&env, "POST", "/notify", Some(&basic), ok), 204);
    dc.deliver(
        "bob",
        &make_message("a@example.org", "bob@example.org", "s", "b"),
    )
    .unwrap();
    assert_eq!(check(&env, "bob"), 1);
}

/// The daemon's open sockets.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn silent_connections_cannot_keep_a_notification_out() {
    // The endpoint's bounds: notify::MAX_CONNECTIONS and notify::CONNECTION_LIFETIME.
    const MAX_CONNECTIONS: usize = 64;
    const LIFETIME: Duration = Duration::from_secs(10);
    let env = env(DovecotOptions::default(), &[]);
    let (dc, ic) = (&env.dc, env.ic());
    assert_eq!(check(&env, "carol"), 0);
    let before = sockets(ic.pid());
    // More connections than the endpoint keeps open, each connecting and saying nothing.
    let mut silent: Vec<TcpStream> = (0..MAX_CONNECTIONS + 16)
        .map(|_| {
            env.topo
                .connect(Node::Server, endpoint(), Duration::from_secs(5))
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let held = sockets(ic.pid()).saturating_sub(before);
    assert!(
        held <= MAX_CONNECTIONS,
        "the daemon holds {held} silent connections"
    );

    // An authentic notification queued behind them is served once the first ones expired.
    let started = Instant::now();
    let body = br#"{"user":"carol"}"#;
    let wait = 3 * LIFETIME;
    assert_eq!(
        request(&env, "POST", "/notify", Some(&bearer()), body, wait),
        204
    );
    assert!(started.elapsed() < 2 * LIFETIME, "{:?}", started.elapsed());
    dc.deliver(
        "carol",
        &make_message("a@example.org", "carol@example.org", "s", "b"),
    )
    .unwrap();
    assert_eq!(
        check(&env, "carol"),
        1,
        "the notification ended the attenuation"
    );

    // The endpoint closed the silent connections (end of stream or a reset, not a timeout).
    for s in &mut silent {
        s.set_read_timeout(Some(2 * LIFETIME)).unwrap();
        if let Err(e) = s.read_to_end(&mut Vec::new()) {
            assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        }
    }
}

/// A deleting client's check: logs in, fetches and deletes whatever is there, quits.
/// Returns how many messages it got.
fn poll_and_delete(env: &Env, user: &str) -> usize {
    let mut s = env.connect();
    s.command(&format!("USER {user}")).unwrap();
    assert!(
        s.command(&format!("PASS {user}-pw"))
            .unwrap()
            .starts_with("+OK")
    );
    let stat = s.command("STAT").unwrap();
    let count: usize = stat.split_whitespace().nth(1).unwrap().parse().unwrap();
    for n in 1..=count {
        assert!(s.command(&format!("RETR {n}")).unwrap().starts_with("+OK"));
        s.read_multiline().unwrap();
        assert!(s.command(&format!("DELE {n}")).unwrap().starts_with("+OK"));
    }
    assert!(s.command("QUIT").unwrap().starts_with("+OK"));
    count
}

#[test]
fn dovecots_own_push_plugin_makes_one_login_per_delivery() {
    let url = format!(
        "http://dovecot:{SECRET}@{}/preliminary/http-notify/v1/notify",
        endpoint()
    );
    let options = DovecotOptions {
        push_url: Some(url),
        ..Default::default()
    };
    let env = env(options, &[]);
    let dc = &env.dc;
    dc.enable_push(&env.topo, "carol").unwrap();
    let mut got = 0;
    for round in 0..20 {
        if round == 6 || round == 13 {
            let message = make_message("a@example.org", "carol@example.org", "push", "x");
            dc.deliver_lda(&env.topo, "carol", &message).unwrap();
            // Dovecot's plugin posts while delivering; the check right after sees it.
            assert_eq!(poll_and_delete(&env, "carol"), 1, "round {round}");
            got += 1;
        } else {
            assert_eq!(poll_and_delete(&env, "carol"), 0, "round {round}");
        }
    }
    assert_eq!(got, 2);
    // The first check, then one per delivery; the other 17 never reached Dovecot.
    assert_eq!(logins(dc, "carol", 3), 3);
}
