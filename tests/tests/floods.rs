//! Floods from the client namespace: SYN floods, per-source caps, a full connection table,
//! thousands of half-open connections. Each must leave live sessions and other
//! subscribers alone and keep the daemon's memory bounded. Crafted frames as in
//! `packet_attacks.rs`; spoofed sources come from 198.51.100.0/24 only. Run as root, one
//! at a time (`cargo xtask test`).

use std::io::{Read, Write};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use pop3_interceptor_e2e::raw::{
    self, ANSWER, Attacker, Flags, RawConn, RawLink, Seg, pop3, subscriber,
};
use pop3_interceptor_e2e::topology::{SERVER_V4, server_pop3_v4};
use pop3_interceptor_e2e::util::read_until_within;
use pop3_interceptor_e2e::{Dovecot, Interceptor, Node, Topology};

#[test]
fn a_syn_refused_for_a_full_table_gets_an_rst() {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay", "--max-conns", "1"]).unwrap();
    // The one slot: a real client's session.
    let mut held = topo
        .connect(Node::Client, server_pop3_v4(), ANSWER)
        .unwrap();
    held.set_read_timeout(Some(ANSWER)).unwrap();
    let mut greeting = [0u8; 64];
    assert!(held.read(&mut greeting).unwrap() > 0);

    // A subscriber never seen before: no reply header was ever learnt for it.
    let mut a = Attacker::new(&topo, 52);
    let syn = a.syn(pop3(SERVER_V4));
    a.link.send(&syn.frame()).unwrap();
    let reply = a
        .link
        .recv_tcp(syn.dst, syn.src, ANSWER)
        .expect("an answer to the refused SYN");
    assert!(reply.flags.rst, "{reply:?}");
    assert!(reply.flags.ack && reply.ack == syn.seq + 1, "{reply:?}");
}

#[test]
fn a_syn_flood_does_not_evict_a_live_session() {
    const SOURCES: u8 = 20;
    const SYNS: u32 = 70_000;
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay", "--max-conns", "1000"]).unwrap();
    let mut victim = topo
        .connect(Node::Client, server_pop3_v4(), ANSWER)
        .unwrap();
    assert!(read_until_within(&mut victim, b"\r\n", ANSWER), "greeting");

    // 70,000 SYNs of distinct flows (more than the 65,536 flows XDP used to remember),
    // each followed by an ACK, from 20 made-up subscribers the router knows; bounded in
    // count and in time.
    let link = RawLink::client(&topo).unwrap();
    let router_mac = raw::router_mac(&topo).unwrap();
    let sources: Vec<_> = (0..SOURCES).map(|i| subscriber(100 + i)).collect();
    for ip in &sources {
        raw::add_neighbour(&topo, (*ip).into(), link.mac).unwrap();
    }
    let start = Instant::now();
    let mut sent = 0u32;
    'flood: for port in 20000u16.. {
        for ip in &sources {
            if sent == SYNS || start.elapsed() > Duration::from_secs(40) {
                break 'flood;
            }
            let syn = Seg::syn(
                link.mac,
                router_mac,
                SocketAddrV4::new(*ip, port),
                pop3(SERVER_V4),
                sent,
            );
            link.send(&syn.frame()).unwrap();
            // A second segment of the flow marks it as used, as a live flow's would be.
            link.send(&syn.next(sent + 1, 1, Flags::ACK, &[]).frame())
                .unwrap();
            sent += 1;
        }
    }
    eprintln!("sent {sent} SYNs in {:?}", start.elapsed());
    assert_eq!(sent, SYNS, "the flood was cut short by its time bound");
    std::thread::sleep(Duration::from_millis(500));

    victim.write_all(b"CAPA\r\n").unwrap();
    assert!(
        read_until_within(&mut victim, b"\r\n.\r\n", Duration::from_secs(5)),
        "the live session did not survive the SYN flood"
    );
}

/// Sends a SYN from each of `syns` and collects, per SYN, whether it got a SYN-ACK (true)
/// or an RST (false); `None` for no answer within `ANSWER`.
fn answers(a: &Attacker, syns: &[Seg]) -> Vec<Option<bool>> {
    syns.iter()
        .map(|syn| {
            a.link.send(&syn.frame()).unwrap();
            a.link
                .recv_tcp(syn.dst, syn.src, ANSWER)
                .map(|reply| reply.is_syn_ack())
        })
        .collect()
}

#[test]
fn per_source_caps_refuse_with_an_rst_and_spare_other_subscribers() {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let caps = [
        "--mode",
        "relay",
        "--max-half-open-per-source",
        "2",
        "--max-conns-per-source",
        "3",
        "--syn-rate-per-source",
        "0",
    ];
    let ic = Interceptor::start(&topo, &caps).unwrap();
    // Half-open: two handshakes left hanging, the third SYN is refused.
    let mut a = Attacker::new(&topo, 80);
    let syns: Vec<Seg> = (0..3).map(|_| a.syn(pop3(SERVER_V4))).collect();
    assert_eq!(answers(&a, &syns), [Some(true), Some(true), Some(false)]);
    // Another subscriber is not affected.
    let mut b = Attacker::new(&topo, 81);
    let syn = b.syn(pop3(SERVER_V4));
    assert_eq!(answers(&b, &[syn]), [Some(true)]);
    // Open connections: three complete handshakes, the fourth SYN is refused.
    let mut c = Attacker::new(&topo, 82);
    for _ in 0..3 {
        let syn = c.syn(pop3(SERVER_V4));
        link_handshake(&c, syn);
    }
    let syn = c.syn(pop3(SERVER_V4));
    assert_eq!(answers(&c, &[syn]), [Some(false)]);
    drop(ic);

    // New connections per second: a burst of 5, then refusals.
    let _ic =
        Interceptor::start(&topo, &["--mode", "relay", "--syn-rate-per-source", "5"]).unwrap();
    let mut d = Attacker::new(&topo, 83);
    let syns: Vec<Seg> = (0..8).map(|_| d.syn(pop3(SERVER_V4))).collect();
    let got = answers(&d, &syns);
    assert_eq!(&got[..5], &[Some(true); 5], "{got:?}");
    assert!(got[5..].contains(&Some(false)), "{got:?}");
}

/// Completes a handshake for `syn` (which must be answered).
fn link_handshake(a: &Attacker, syn: Seg) {
    RawConn::connect(&a.link, syn, ANSWER)
        .unwrap()
        .expect("a SYN-ACK");
}

/// The daemon's resident memory in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn two_thousand_half_open_connections_cost_little_and_are_given_back() {
    const HALF_OPEN: u32 = 2000;
    let topo = Topology::new().unwrap();
    let ic = Interceptor::start(
        &topo,
        &[
            "--mode",
            "relay",
            "--max-half-open-per-source",
            "0",
            "--max-conns-per-source",
            "0",
            "--syn-rate-per-source",
            "0",
        ],
    )
    .unwrap();
    let link = RawLink::client(&topo).unwrap();
    let router_mac = raw::router_mac(&topo).unwrap();
    let sources: Vec<_> = (0..20).map(|i| subscriber(120 + i)).collect();
    for ip in &sources {
        raw::add_neighbour(&topo, (*ip).into(), link.mac).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss(ic.pid());

    let mut answered = 0u32;
    for n in 0..HALF_OPEN {
        let src = SocketAddrV4::new(sources[(n % 20) as usize], 20000 + (n / 20) as u16);
        let syn = Seg::syn(link.mac, router_mac, src, pop3(SERVER_V4), n);
        link.send(&syn.frame()).unwrap();
        if n % 100 == 99 {
            // Pace the flood so the daemon keeps up and every SYN gets a socket.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Count the SYN-ACKs that came back (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    while answered < HALF_OPEN && Instant::now() < deadline {
        if link
            .recv_until(Duration::from_millis(200), |f| {
                Seg::parse(f).filter(Seg::is_syn_ack)
            })
            .is_some()
        {
            answered += 1;
        }
    }
    let peak = rss(ic.pid());
    let per_conn = peak.saturating_sub(baseline) / u64::from(HALF_OPEN);
    eprintln!(
        "RSS baseline {} KB, with {answered} half-open {} KB: {per_conn} B per half-open connection",
        baseline / 1024,
        peak / 1024
    );
    assert!(answered >= HALF_OPEN * 9 / 10, "only {answered} SYN-ACKs");
    assert!(per_conn <= 4096, "{per_conn} B per half-open connection");

    // The handshake timeout (10 s) reaps them; the memory goes back within a minute.
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let mut now_rss = rss(ic.pid());
    while now_rss > baseline + 10 * 1024 * 1024 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        now_rss = rss(ic.pid());
    }
    eprintln!(
        "RSS {} KB {:?} after the flood",
        now_rss / 1024,
        start.elapsed()
    );
    assert!(
        now_rss <= baseline + 10 * 1024 * 1024,
        "RSS {} KB stays up",
        now_rss / 1024
    );
}

#[test]
fn one_subscriber_cannot_take_every_slot_with_the_default_limits() {
    let topo = Topology::new().unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay", "--max-conns", "40"]).unwrap();
    // 40 handshakes left hanging by one address: it gets its default share of half-open
    // slots, then RSTs, and the table keeps room for others.
    let mut a = Attacker::new(&topo, 84);
    let syns: Vec<Seg> = (0..40).map(|_| a.syn(pop3(SERVER_V4))).collect();
    let got = answers(&a, &syns);
    let accepted = got.iter().filter(|g| **g == Some(true)).count();
    assert!(
        (1..40).contains(&accepted),
        "{accepted} of 40 accepted: {got:?}"
    );
    let mut b = Attacker::new(&topo, 85);
    let syn = b.syn(pop3(SERVER_V4));
    assert_eq!(
        answers(&b, &[syn]),
        [Some(true)],
        "another subscriber still gets in"
    );
}
