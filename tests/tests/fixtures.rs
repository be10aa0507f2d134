//! Checks of the e2e fixtures themselves, WITHOUT the interceptor: the clients reach Dovecot
//! through the router's plain kernel forwarding.
//!
//! Run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test fixtures -- --test-threads=1`

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pop3_interceptor_e2e::clients::{self, FetchmailOptions, PoplibOptions, RawSession};
use pop3_interceptor_e2e::dovecot::{make_large_message, make_message};
use pop3_interceptor_e2e::topology::{
    CLIENT_V4, CLIENT_V6, ROUTER_CLIENT_IFACE, server_pop3_v4, server_pop3_v6,
};
use pop3_interceptor_e2e::{Dovecot, DovecotOptions, Env, Node, Topology, TopologyOptions};

fn crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 40);
    for &c in b {
        if c == b'\n' {
            out.push(b'\r');
        }
        out.push(c);
    }
    out
}

#[test]
fn topology_builds_and_is_removed() {
    let name;
    {
        let topo = Topology::new().unwrap();
        name = topo.ns(Node::Router).to_string();
        let out = topo
            .exec(Node::Router, &["ip", "-br", "addr"])
            .unwrap()
            .check("ip addr")
            .unwrap();
        let s = out.stdout_str();
        assert!(
            s.contains("198.51.100.1/24") && s.contains("203.0.113.1/24"),
            "{s}"
        );
        assert!(
            s.contains("2001:db8:1::1/64") && s.contains("2001:db8:2::1/64"),
            "{s}"
        );
        let fwd = topo
            .exec(
                Node::Router,
                &[
                    "sysctl",
                    "-n",
                    "net.ipv4.ip_forward",
                    "net.ipv6.conf.all.forwarding",
                ],
            )
            .unwrap()
            .check("sysctl")
            .unwrap()
            .stdout_str();
        assert_eq!(fwd.split_whitespace().collect::<Vec<_>>(), ["1", "1"]);
        assert!(Path::new("/run/netns").join(&name).exists());
    }
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace {name} left behind"
    );
}

#[test]
fn leftovers_of_a_killed_run_are_removed() {
    // A pid that does not exist stands for a killed run.
    let dead = (100_000..4_000_000u32)
        .rev()
        .step_by(7919)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let stale = format!("p3i-{dead}-0-client");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &stale])
            .status()
            .unwrap()
            .success()
    );
    let _topo = Topology::new().unwrap();
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    if list.contains(&stale) {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
        panic!("leftover namespace {stale} was not removed");
    }
}

#[test]
fn curl_lists_and_retrieves() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    let empty = clients::curl_list(topo, server_pop3_v4(), "alice", "alice-pw").unwrap();
    assert_eq!(
        empty, "\r\n",
        "curl prints a lone CRLF for an empty listing"
    );

    let msg = make_message(
        "x@p3i.test.example",
        "alice",
        "hello",
        "line one\n.dot line\nline three",
    );
    dc.deliver("alice", &msg).unwrap();
    let list = clients::curl_list(topo, server_pop3_v4(), "alice", "alice-pw").unwrap();
    let wire = crlf(&msg);
    assert_eq!(list, format!("1 {}\r\n", wire.len()));
    let body = clients::curl_retr(topo, server_pop3_v4(), "alice", "alice-pw", 1).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&wire)
    );

    let bad = clients::curl(topo, server_pop3_v4(), "alice", "wrong", "", &[]).unwrap();
    assert!(!bad.success(), "wrong password must fail");
}

#[test]
fn poplib_session_stat_list_uidl_retr_dele_quit() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    let m1 = make_message("x@p3i.test.example", "bob", "one", "first");
    let m2 = make_message(
        "x@p3i.test.example",
        "bob",
        "two",
        ".starts with a dot\nsecond",
    );
    dc.deliver("bob", &m1).unwrap();
    dc.deliver("bob", &m2).unwrap();
    let opts = PoplibOptions {
        capa: true,
        dele: vec![1],
        ..Default::default()
    };
    let t = clients::poplib(topo, server_pop3_v4(), "bob", "bob-pw", &opts).unwrap();
    let text = t.normalized();
    assert!(t.ok(), "{text}");
    assert!(t.get_str("welcome").unwrap().starts_with("+OK"), "{text}");
    let size = crlf(&m1).len() + crlf(&m2).len();
    assert_eq!(t.stat(), Some((2, size as u64)), "{text}");
    // UIDL with pop3_uidl_format = %08Xu%08Xv: 16 hex digits.
    let uidl = t.get("uidl").unwrap().as_array().unwrap();
    assert_eq!(uidl.len(), 3, "{text}");
    let uid = uidl[1].as_str().unwrap().split_whitespace().nth(1).unwrap();
    assert!(
        uid.len() == 16 && uid.chars().all(|c| c.is_ascii_hexdigit()),
        "{text}"
    );
    assert!(text.contains("retr 2: +OK"), "{text}");
    assert!(
        text.contains(".starts with a dot"),
        "dot-unstuffed line: {text}"
    );
    assert!(t.get_str("dele 1").unwrap().starts_with("+OK"), "{text}");
    assert!(t.get_str("quit").unwrap().starts_with("+OK"), "{text}");
    assert_eq!(
        dc.message_count("bob"),
        1,
        "DELE 1 + QUIT removes one message"
    );

    // The same session twice gives the same transcript (what the relay comparison relies on).
    let opts = PoplibOptions {
        capa: true,
        ..Default::default()
    };
    let a = clients::poplib(topo, server_pop3_v4(), "bob", "bob-pw", &opts)
        .unwrap()
        .normalized();
    let b = clients::poplib(topo, server_pop3_v4(), "bob", "bob-pw", &opts)
        .unwrap()
        .normalized();
    assert_eq!(a, b);
    assert_eq!(dc.message_count("bob"), 1);

    // An abrupt disconnect after DELE deletes nothing.
    let opts = PoplibOptions {
        dele: vec![1],
        quit: false,
        ..Default::default()
    };
    let t = clients::poplib(topo, server_pop3_v4(), "bob", "bob-pw", &opts).unwrap();
    assert!(
        t.get_str("dele 1").unwrap().starts_with("+OK"),
        "{}",
        t.normalized()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dc.message_count("bob"), 1);
}

#[test]
fn fetchmail_keep_and_delete() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    let msg = make_message("x@p3i.test.example", "carol", "for fetchmail", "body text");
    dc.deliver("carol", &msg).unwrap();
    let keep = FetchmailOptions {
        keep: true,
        ..Default::default()
    };
    let r = clients::fetchmail(topo, server_pop3_v4(), "carol", "carol-pw", &keep).unwrap();
    assert_eq!(r.code, Some(0), "{}", r.output);
    let got = String::from_utf8_lossy(&r.delivered);
    assert!(
        got.contains("Subject: for fetchmail") && got.contains("body text"),
        "{got}"
    );
    assert!(
        !got.contains("Received:"),
        "set invisible: no Received header: {got}"
    );
    assert_eq!(dc.message_count("carol"), 1);

    let del = FetchmailOptions {
        keep: false,
        ..Default::default()
    };
    let r = clients::fetchmail(topo, server_pop3_v4(), "carol", "carol-pw", &del).unwrap();
    assert_eq!(r.code, Some(0), "{}", r.output);
    assert_eq!(dc.message_count("carol"), 0);

    let r = clients::fetchmail(topo, server_pop3_v4(), "carol", "carol-pw", &del).unwrap();
    assert_eq!(r.code, Some(1), "exit 1 = no mail: {}", r.output);
}

#[test]
fn stls_works() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    dc.deliver(
        "alice",
        &make_message("x@p3i.test.example", "alice", "tls", "secret"),
    )
    .unwrap();
    let opts = PoplibOptions {
        capa: true,
        stls: true,
        ..Default::default()
    };
    let t = clients::poplib(topo, server_pop3_v4(), "alice", "alice-pw", &opts).unwrap();
    let text = t.normalized();
    assert!(t.ok(), "{text}");
    assert!(text.contains("capa: ") && text.contains("STLS"), "{text}");
    assert!(
        t.get_str("stls").unwrap().starts_with("+OK") && text.contains("TLSv1."),
        "{text}"
    );
    assert_eq!(t.stat().map(|s| s.0), Some(1), "{text}");
    dc.wait_login_count("alice", 1, Duration::from_secs(5))
        .unwrap();
    assert!(
        dc.logins_for("alice")[0].tls,
        "{:?}",
        dc.logins_for("alice")
    );

    let o = clients::openssl_starttls(topo, server_pop3_v4()).unwrap();
    let all = format!("{}{}", o.stdout_str(), o.stderr_str());
    assert!(
        all.contains("CONNECTION ESTABLISHED") && all.contains("+OK"),
        "{all}"
    );

    let fm = FetchmailOptions {
        stls: true,
        ..Default::default()
    };
    let r = clients::fetchmail(topo, server_pop3_v4(), "alice", "alice-pw", &fm).unwrap();
    assert_eq!(r.code, Some(0), "{}", r.output);
}

#[test]
fn login_is_logged_with_client_address() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    clients::curl_list(topo, server_pop3_v4(), "dave", "dave-pw").unwrap();
    dc.wait_login_count("dave", 1, Duration::from_secs(5))
        .unwrap();
    let l = &dc.logins_for("dave")[0];
    assert_eq!(l.rip, CLIENT_V4.to_string(), "{l:?}");
    assert_eq!(l.method, "PLAIN", "curl uses AUTH PLAIN: {l:?}");
    for _ in 0..3 {
        clients::curl_list(topo, server_pop3_v4(), "dave", "dave-pw").unwrap();
    }
    assert_eq!(
        dc.wait_login_count("dave", 4, Duration::from_secs(5))
            .unwrap(),
        4
    );
    assert_eq!(dc.login_count("alice"), 0);
}

#[test]
fn xclient_is_accepted_from_the_router_only() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    let session = |node, xclient: &str| {
        let mut s = RawSession::connect(topo, node, server_pop3_v4()).unwrap();
        let greeting = s.read_line().unwrap();
        assert!(greeting.starts_with("+OK"));
        assert!(s.command("CAPA").unwrap().starts_with("+OK"));
        let capa = String::from_utf8(s.read_multiline().unwrap()).unwrap();
        let x = s.command(xclient).unwrap();
        (s, greeting, capa, x)
    };
    // From the router (login_trusted_networks): XCLIENT sets the address Dovecot logs.
    let (mut s, greeting, capa, x) = session(Node::Router, "XCLIENT ADDR=198.51.100.77 PORT=40000");
    // Dovecot 2.3.19 advertises XCLIENT in the greeting's response code, not in CAPA.
    assert_eq!(greeting, "+OK [XCLIENT] Dovecot (Debian) ready.\r\n");
    assert!(!capa.contains("XCLIENT"), "{capa}");
    eprintln!("CAPA to the router:\n{capa}XCLIENT answer: {x}");
    assert!(x.starts_with("+OK"), "{x}");
    assert!(s.command("USER alice").unwrap().starts_with("+OK"));
    assert!(s.command("PASS alice-pw").unwrap().starts_with("+OK"));
    assert!(s.command("QUIT").unwrap().starts_with("+OK"));
    dc.wait_login_count("alice", 1, Duration::from_secs(5))
        .unwrap();
    assert_eq!(dc.logins_for("alice")[0].rip, "198.51.100.77");
    // From the client: ignored, yet answered +OK (Dovecot's words).
    let (_s, greeting, _capa, x) = session(Node::Client, "XCLIENT ADDR=198.51.100.77 PORT=40000");
    assert_eq!(greeting, "+OK Dovecot (Debian) ready.\r\n");
    assert_eq!(x, "+OK You are not from trusted IP - ignoring\r\n");
}

#[test]
fn ipv6_end_to_end() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    let msg = make_message("x@p3i.test.example", "alice", "v6", "over ipv6");
    dc.deliver("alice", &msg).unwrap();
    let list = clients::curl_list(topo, server_pop3_v6(), "alice", "alice-pw").unwrap();
    assert_eq!(list, format!("1 {}\r\n", crlf(&msg).len()));
    let t = clients::poplib(
        topo,
        server_pop3_v6(),
        "alice",
        "alice-pw",
        &PoplibOptions::default(),
    )
    .unwrap();
    assert!(
        t.ok() && t.normalized().contains("over ipv6"),
        "{}",
        t.normalized()
    );
    let r = clients::fetchmail(
        topo,
        server_pop3_v6(),
        "alice",
        "alice-pw",
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.code, Some(0), "{}", r.output);
    dc.wait_login_count("alice", 3, Duration::from_secs(5))
        .unwrap();
    assert!(
        dc.logins_for("alice")
            .iter()
            .all(|l| l.rip == CLIENT_V6.to_string())
    );
}

#[test]
fn four_queue_topology() {
    let topo = Topology::with_options(TopologyOptions { rc0_queues: 4 }).unwrap();
    let out = topo
        .exec(
            Node::Router,
            &["ip", "-d", "link", "show", ROUTER_CLIENT_IFACE],
        )
        .unwrap()
        .check("ip link show")
        .unwrap()
        .stdout_str();
    assert!(
        out.contains("numtxqueues 4") && out.contains("numrxqueues 4"),
        "{out}"
    );
    let peer = topo
        .exec(Node::Client, &["ip", "-d", "link", "show", "eth0"])
        .unwrap()
        .stdout_str();
    assert!(
        peer.contains("numtxqueues 4") && peer.contains("numrxqueues 4"),
        "{peer}"
    );
    let dc = Dovecot::start(&topo).unwrap();
    for _ in 0..5 {
        assert_eq!(
            clients::curl_list(&topo, server_pop3_v4(), "bob", "bob-pw").unwrap(),
            "\r\n"
        );
    }
    assert_eq!(
        dc.wait_login_count("bob", 5, Duration::from_secs(5))
            .unwrap(),
        5
    );
}

#[test]
fn password_change_and_new_users() {
    let mut env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &mut env.dc);
    clients::curl_list(topo, server_pop3_v4(), "carol", "carol-pw").unwrap();
    dc.set_password("carol", "new-secret").unwrap();
    let old = clients::curl(topo, server_pop3_v4(), "carol", "carol-pw", "", &[]).unwrap();
    assert!(!old.success(), "old password must fail after the change");
    clients::curl_list(topo, server_pop3_v4(), "carol", "new-secret").unwrap();
    dc.add_user("erin", "erin-pw").unwrap();
    dc.deliver(
        "erin",
        &make_message("x@p3i.test.example", "erin", "hi", "new user"),
    )
    .unwrap();
    let l = clients::curl_list(topo, server_pop3_v4(), "erin", "erin-pw").unwrap();
    assert!(l.starts_with("1 "), "{l}");
}

#[test]
fn dovecot_stop_and_restart() {
    let mut env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &mut env.dc);
    assert!(dc.is_running());
    dc.stop().unwrap();
    assert!(!topo.can_connect(Node::Client, server_pop3_v4(), Duration::from_secs(1)));
    let r = clients::curl(topo, server_pop3_v4(), "alice", "alice-pw", "", &[]).unwrap();
    assert!(!r.success());
    dc.restart().unwrap();
    assert_eq!(
        clients::curl_list(topo, server_pop3_v4(), "alice", "alice-pw").unwrap(),
        "\r\n"
    );
}

#[test]
fn raw_exchange_and_long_line() {
    let env = Env::direct(DovecotOptions::default());
    let topo = &env.topo;
    let r = clients::raw_exchange(
        topo,
        server_pop3_v4(),
        b"CAPA\r\nQUIT\r\n",
        Duration::from_secs(5),
        1 << 20,
    )
    .unwrap();
    assert!(r.greeting.starts_with("+OK"), "{r:?}");
    assert!(r.reply_str().contains("\r\n.\r\n") && r.closed, "{r:?}");

    // A 100 KB line: Dovecot answers it (and/or closes) within the time limit.
    let mut line = vec![b'A'; 100 * 1024];
    line.extend_from_slice(b"\r\n");
    let r = clients::raw_exchange(
        topo,
        server_pop3_v4(),
        &line,
        Duration::from_secs(5),
        1 << 20,
    )
    .unwrap();
    eprintln!(
        "dovecot on a 100 KB line: {:?} closed={} write_error={:?} in {:?}",
        r.reply_str(),
        r.closed,
        r.write_error,
        r.elapsed
    );
    assert!(r.elapsed < Duration::from_secs(8));
    assert!(r.reply_str().starts_with("-ERR") || r.closed, "{r:?}");
}

#[test]
fn large_message_retrieval() {
    let env = Env::direct(DovecotOptions::default());
    let (topo, dc) = (&env.topo, &env.dc);
    let msg = make_large_message("dave", 2 * 1024 * 1024);
    dc.deliver("dave", &msg).unwrap();
    let body = clients::curl_retr(topo, server_pop3_v4(), "dave", "dave-pw", 1).unwrap();
    assert_eq!(body.len(), crlf(&msg).len());
    assert!(body == crlf(&msg), "2 MB message differs after RETR");
    let _: SocketAddr = server_pop3_v4();
}

#[test]
fn untrusted_router_gets_the_plain_greeting() {
    let topo = Topology::new().unwrap();
    let opts = DovecotOptions {
        trust_router: false,
        ..Default::default()
    };
    let _dc = Dovecot::start_with(&topo, opts).unwrap();
    let mut s = RawSession::connect(&topo, Node::Router, server_pop3_v4()).unwrap();
    assert_eq!(s.read_line().unwrap(), "+OK Dovecot (Debian) ready.\r\n");
    let x = s.command("XCLIENT ADDR=198.51.100.77 PORT=40000").unwrap();
    assert_eq!(x, "+OK You are not from trusted IP - ignoring\r\n");
}
