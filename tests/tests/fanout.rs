//! Many edges: new-mail notifications fanned out over a real `nats-server`. Two
//! interceptors on two edge routers in front of one Dovecot ([`Env::with_second_edge`]);
//! the mail server notifies edge A, and the attenuation of a user behind edge B ends. Run
//! as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test fanout -- --test-threads=1`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pop3_interceptor_e2e::dovecot::make_message;
use pop3_interceptor_e2e::interceptor::InterceptorOptions;
use pop3_interceptor_e2e::topology::{EDGE_ROUTER_SERVER_V4, ROUTER_SERVER_V4, SERVER_V4};
use pop3_interceptor_e2e::util::{ChildGuard, wait_for};
use pop3_interceptor_e2e::{DovecotOptions, Env, Node, Topology};

const SECRET: &str = "f4n-out-s3cret";
const SUBJECT: &str = "isp.pop3.new-mail";
const METRICS: &str = "127.0.0.1:9110";

fn broker() -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), 4222)
}

/// A real nats-server in the mail server's namespace; killed by pid on drop.
fn start_broker(topo: &Topology) -> ChildGuard {
    let log = topo.dir().join("nats.log");
    let address = SERVER_V4.to_string();
    let guard = topo
        .spawn(
            Node::Server,
            &["nats-server", "-a", &address, "-p", "4222"],
            &log,
        )
        .unwrap();
    wait_for(
        "nats-server listening",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            topo.can_connect(Node::Server, broker(), Duration::from_secs(1))
                .then_some(())
        },
    )
    .unwrap();
    guard
}

/// An edge: the daemon in `node`'s namespace, its endpoint on `listen`, fanning out.
fn start_edge(env: &mut Env, node: Node, listen: SocketAddr, interval: &str) {
    let secret = env.topo.dir().join("notify.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let args = [
        "--interval",
        interval,
        "--notify-listen",
        &listen.to_string(),
        "--notify-secret-file",
        secret.to_str().unwrap(),
        "--notify-nats",
        &format!("nats://{}", broker()),
        "--notify-subject",
        SUBJECT,
        "--metrics",
        METRICS,
    ]
    .map(str::to_owned);
    let ic = env.start_daemon_with(InterceptorOptions {
        node,
        extra_args: args.to_vec(),
        ..Default::default()
    });
    ic.wait_log("NATS broker connected", Duration::from_secs(10))
        .unwrap();
}

fn endpoint_a() -> SocketAddr {
    SocketAddr::new(ROUTER_SERVER_V4.into(), 8110)
}

fn endpoint_b() -> SocketAddr {
    SocketAddr::new(EDGE_ROUTER_SERVER_V4.into(), 8110)
}

/// What the mail server sends edge A when mail arrives for `user`; returns the status.
fn notify_edge_a(topo: &Topology, user: &str) -> u16 {
    let mut stream = topo
        .connect(Node::Server, endpoint_a(), Duration::from_secs(5))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = format!(r#"{{"user":"{user}","event":"messageNew"}}"#);
    let request = format!(
        "POST /notify HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Fetches and deletes every message of `user` from `client`.
fn fetch_and_delete(env: &Env, client: Node, user: &str) {
    let count = env.check_from(client, user);
    let mut s = env.login_from(client, user);
    for n in 1..=count {
        assert!(s.command(&format!("DELE {n}")).unwrap().starts_with("+OK"));
    }
    assert!(s.command("QUIT").unwrap().starts_with("+OK"));
}

/// One value of an edge's metrics (0 when absent), scraped in its router namespace.
fn metric(env: &Env, router: Node, name: &str) -> u64 {
    env.scrape_on(router, METRICS)
        .get(name)
        .map_or(0, |&v| v as u64)
}

fn event(name: &str) -> String {
    format!("pop3_interceptor_nats_events_total{{event=\"{name}\"}}")
}

/// Waits until `router`'s metric `name` reaches `at_least`.
fn metric_reaches(env: &Env, router: Node, name: &str, at_least: u64) {
    wait_for(
        &format!("{name} >= {at_least} on {router}"),
        Duration::from_secs(10),
        Duration::from_millis(200),
        || (metric(env, router, name) >= at_least).then_some(()),
    )
    .unwrap();
}

/// Publishes `payload` on the subject as anyone with access to the broker can, with a
/// `Pop3-Notify-Mac` header when `mac` is given (NATS's text protocol, HPUB).
fn publish_raw(topo: &Topology, mac: Option<&str>, payload: &str) {
    let mut stream = topo
        .connect(Node::Server, broker(), Duration::from_secs(5))
        .unwrap();
    let headers = match mac {
        Some(mac) => format!("NATS/1.0\r\nPop3-Notify-Mac: {mac}\r\n\r\n"),
        None => "NATS/1.0\r\n\r\n".to_owned(),
    };
    let frame = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nHPUB {SUBJECT} {} {}\r\n{headers}{payload}\r\nPING\r\n",
        headers.len(),
        headers.len() + payload.len()
    );
    stream.write_all(frame.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the broker hung up: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_delivery_notified_to_one_edge_ends_the_attenuation_on_the_other() {
    let mut env = Env::with_second_edge(DovecotOptions::default());
    let _broker = start_broker(&env.topo);
    start_edge(&mut env, Node::Router, endpoint_a(), "15m");
    start_edge(&mut env, Node::EdgeRouter, endpoint_b(), "15m");
    let dc = &env.dc;

    // bob is behind edge B only; his checks are answered there.
    for _ in 0..5 {
        assert_eq!(env.check_from(Node::EdgeClient, "bob"), 0);
    }
    assert_eq!(
        dc.wait_login_count("bob", 1, Duration::from_secs(5))
            .unwrap(),
        1
    );
    dc.deliver(
        "bob",
        &make_message("a@example.org", "bob@example.org", "hi", "1"),
    )
    .unwrap();
    assert_eq!(
        env.check_from(Node::EdgeClient, "bob"),
        0,
        "without a notification the time rule hides it for 15m"
    );

    // Someone with access to the broker but not the secret cannot end it.
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = format!(r#"{{"server":"{SERVER_V4}","user":"bob","sent":{sent}}}"#);
    publish_raw(&env.topo, None, &forged);
    publish_raw(
        &env.topo,
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        &forged,
    );
    publish_raw(&env.topo, Some("x"), &"{".repeat(5000));
    metric_reaches(&env, Node::EdgeRouter, &event("rejected"), 3);
    assert_eq!(
        env.check_from(Node::EdgeClient, "bob"),
        0,
        "forged: still attenuated"
    );

    // The mail server notifies edge A; edge B applies it.
    let started = Instant::now();
    assert_eq!(notify_edge_a(&env.topo, "bob"), 204);
    metric_reaches(&env, Node::EdgeRouter, &event("received"), 1);
    assert_eq!(
        env.check_from(Node::EdgeClient, "bob"),
        1,
        "the very next check on edge B sees it"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    metric_reaches(&env, Node::Router, &event("published"), 1);
    // No echo, no loop: A does not get its own message back, B publishes nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(metric(&env, Node::Router, &event("received")), 0);
    assert_eq!(metric(&env, Node::EdgeRouter, &event("published")), 0);
    assert_eq!(metric(&env, Node::EdgeRouter, &event("received")), 1);
    assert!(env.edge_ic().log_text().contains("NATS broker connected"));
}

#[test]
fn with_the_broker_down_notifications_still_apply_locally_and_the_outage_counts() {
    let mut env = Env::with_second_edge(DovecotOptions::default());
    let mut broker = start_broker(&env.topo);
    start_edge(&mut env, Node::Router, endpoint_a(), "8s");
    start_edge(&mut env, Node::EdgeRouter, endpoint_b(), "8s");
    let dc = &env.dc;
    metric_reaches(&env, Node::Router, "pop3_interceptor_nats_connected", 1);
    metric_reaches(&env, Node::EdgeRouter, "pop3_interceptor_nats_connected", 1);
    // carol behind edge B has had a notification through the broker: from then on her
    // views are trusted for --notify-interval (1h), not 8s.
    assert_eq!(env.check_from(Node::EdgeClient, "carol"), 0);
    assert_eq!(notify_edge_a(&env.topo, "carol"), 204);
    metric_reaches(&env, Node::EdgeRouter, &event("received"), 1);
    assert_eq!(env.check_from(Node::EdgeClient, "carol"), 0);

    broker.kill();
    env.ic()
        .wait_log("NATS broker lost", Duration::from_secs(10))
        .unwrap();
    metric_reaches(&env, Node::Router, &event("disconnect"), 1);
    metric_reaches(&env, Node::EdgeRouter, &event("disconnect"), 1);
    assert_eq!(
        metric(&env, Node::Router, "pop3_interceptor_nats_connected"),
        0
    );

    // alice behind edge A: the notification still applies there.
    assert_eq!(env.check_from(Node::Client, "alice"), 0);
    assert_eq!(env.check_from(Node::Client, "alice"), 0);
    assert_eq!(
        dc.wait_login_count("alice", 1, Duration::from_secs(5))
            .unwrap(),
        1
    );
    dc.deliver(
        "alice",
        &make_message("a@example.org", "alice@example.org", "hi", "1"),
    )
    .unwrap();
    assert_eq!(notify_edge_a(&env.topo, "alice"), 204);
    assert_eq!(
        env.check_from(Node::Client, "alice"),
        1,
        "applied on edge A"
    );
    metric_reaches(&env, Node::Router, &event("publish_dropped"), 1);

    // carol behind edge B misses the news, but the time rule (8s), not the 1h of a
    // notifying server, still bounds her delay: news may have been lost.
    assert_eq!(env.check_from(Node::EdgeClient, "carol"), 0);
    let verified = Instant::now();
    dc.deliver(
        "carol",
        &make_message("a@example.org", "carol@example.org", "hi", "1"),
    )
    .unwrap();
    assert_eq!(notify_edge_a(&env.topo, "carol"), 204);
    assert_eq!(
        env.check_from(Node::EdgeClient, "carol"),
        0,
        "hidden: the broker is down"
    );
    std::thread::sleep(Duration::from_secs(9).saturating_sub(verified.elapsed()));
    assert_eq!(
        env.check_from(Node::EdgeClient, "carol"),
        1,
        "seen once n is over"
    );

    // The broker comes back: both edges reconnect and resubscribe by themselves.
    let _broker = start_broker(&env.topo);
    metric_reaches(&env, Node::Router, "pop3_interceptor_nats_connected", 1);
    metric_reaches(&env, Node::EdgeRouter, "pop3_interceptor_nats_connected", 1);
    fetch_and_delete(&env, Node::EdgeClient, "dave");
    let verified = Instant::now();
    assert_eq!(env.check_from(Node::EdgeClient, "dave"), 0);
    dc.deliver(
        "dave",
        &make_message("a@example.org", "dave@example.org", "hi", "1"),
    )
    .unwrap();
    assert_eq!(notify_edge_a(&env.topo, "dave"), 204);
    metric_reaches(&env, Node::EdgeRouter, &event("received"), 2);
    assert_eq!(
        env.check_from(Node::EdgeClient, "dave"),
        1,
        "fan-out is back"
    );
    assert!(
        verified.elapsed() < Duration::from_secs(7),
        "inconclusive: n (8s) was nearly over, {:?}",
        verified.elapsed()
    );
}
