//! The packet path under attack. Crafted frames from the client namespace (an
//! `AF_PACKET` socket, see `pop3_interceptor_e2e::raw`) try to steal, stall or reset other
//! subscribers' sessions, or to make the daemon answer what the router would drop.
//! Spoofed sources come from 198.51.100.0/24 only. Run as root, one at a time
//! (`cargo xtask test`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4};
use std::time::{Duration, Instant};

use pop3_interceptor_e2e::raw::{self, Flags, RawConn, RawLink, Seg, subscriber};
use pop3_interceptor_e2e::topology::{ROUTER_CLIENT_V4, SERVER_V4, server_pop3_v4};
use pop3_interceptor_e2e::{Dovecot, Interceptor, Node, Topology};

/// How long a test waits for an answer that must come.
const ANSWER: Duration = Duration::from_secs(3);
/// How long a test listens for an answer that must not come.
const SILENCE: Duration = Duration::from_millis(1500);

fn pop3(ip: std::net::Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, 110)
}

/// Crafted frames from made-up subscriber `host` (198.51.100.`host`), known to the router
/// as a neighbour at the client's MAC.
struct Attacker {
    link: RawLink,
    router_mac: [u8; 6],
    ip: std::net::Ipv4Addr,
    next_port: u16,
}

impl Attacker {
    fn new(topo: &Topology, host: u8) -> Self {
        let link = RawLink::client(topo).unwrap();
        let ip = subscriber(host);
        raw::add_neighbour(topo, ip.into(), link.mac).unwrap();
        Self {
            router_mac: raw::router_mac(topo).unwrap(),
            link,
            ip,
            next_port: 40000,
        }
    }

    /// A SYN from a fresh port of this subscriber to `dst`.
    fn syn(&mut self, dst: SocketAddrV4) -> Seg {
        self.next_port += 1;
        let src = SocketAddrV4::new(self.ip, self.next_port);
        Seg::syn(
            self.link.mac,
            self.router_mac,
            src,
            dst,
            1_000_000 + u32::from(self.next_port),
        )
    }

    /// Sends `frame` (built from `syn`) and says whether a SYN-ACK for `syn`'s flow came.
    fn syn_acked(&self, syn: &Seg, frame: &[u8], wait: Duration) -> bool {
        self.link.send(frame).unwrap();
        self.link
            .recv_tcp(syn.dst, syn.src, wait)
            .is_some_and(|s| s.is_syn_ack())
    }
}

/// Sets the IPv4 header checksum of an untagged frame right after its bytes changed.
fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let mut sum: u32 = frame[14..14 + ihl]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// `frame` with `options` (a multiple of 4 bytes) inserted after its 20-byte IPv4 header.
fn with_ip_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x40 | ((20 + options.len()) / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut out);
    out
}

#[test]
fn a_syn_with_a_bad_ipv4_header_checksum_gets_no_syn_ack() {
    let topo = Topology::new().unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 50);
    let syn = a.syn(pop3(SERVER_V4));
    let mut frame = syn.frame();
    frame[24] ^= 0x5a;
    assert!(
        !a.syn_acked(&syn, &frame, SILENCE),
        "bad IPv4 header checksum answered"
    );
    let syn = a.syn(pop3(SERVER_V4));
    assert!(
        a.syn_acked(&syn, &syn.frame(), ANSWER),
        "a correct SYN is answered"
    );
}

#[test]
fn a_syn_with_a_bad_tcp_checksum_gets_no_syn_ack() {
    let topo = Topology::new().unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 50);
    let syn = a.syn(pop3(SERVER_V4));
    let mut frame = syn.frame();
    frame[14 + 20 + 16] ^= 0x5a;
    assert!(
        !a.syn_acked(&syn, &frame, SILENCE),
        "bad TCP checksum answered"
    );
    let syn = a.syn(pop3(SERVER_V4));
    assert!(
        a.syn_acked(&syn, &syn.frame(), ANSWER),
        "a correct SYN is answered"
    );
}

#[test]
fn syns_with_malformed_ip_options_get_no_syn_ack() {
    let topo = Topology::new().unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 51);
    let server = pop3(SERVER_V4);
    // Option length 0, 1, and past the end of the header.
    for bad in [[7u8, 0, 0, 0], [7, 1, 0, 0], [1, 1, 7, 9]] {
        let syn = a.syn(server);
        let frame = with_ip_options(&syn.frame(), &bad);
        assert!(
            !a.syn_acked(&syn, &frame, SILENCE),
            "options {bad:?} answered"
        );
    }
    // Well-formed options (NOPs, END) are fine.
    let syn = a.syn(server);
    let frame = with_ip_options(&syn.frame(), &[1, 1, 1, 0]);
    assert!(
        a.syn_acked(&syn, &frame, ANSWER),
        "well-formed options answered"
    );
}

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
fn syns_to_loopback_or_the_router_itself_are_not_intercepted() {
    let topo = Topology::new().unwrap();
    let ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 53);
    for dst in [
        pop3("127.0.0.1".parse().unwrap()),
        pop3(ROUTER_CLIENT_V4),
        pop3(pop3_interceptor_e2e::topology::ROUTER_SERVER_V4),
    ] {
        let syn = a.syn(dst);
        assert!(
            !a.syn_acked(&syn, &syn.frame(), SILENCE),
            "SYN to {dst} answered"
        );
    }
    assert_eq!(
        ic.xdp_counter(common::Counter::Matched).unwrap(),
        0,
        "none of them matched"
    );
    let syn = a.syn(pop3(SERVER_V4));
    assert!(
        a.syn_acked(&syn, &syn.frame(), ANSWER),
        "the mail server is still intercepted"
    );
}

/// Reads what the kernel client gets after a half-close, bounded: the bytes and whether
/// the connection then ended (EOF).
fn read_after_half_close(stream: &mut std::net::TcpStream, within: Duration) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[test]
fn a_half_closed_client_gets_its_answer_then_the_connection_closes() {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    for mode in ["relay", "attenuate"] {
        let _ic = Interceptor::start(&topo, &["--mode", mode]).unwrap();
        let mut stream = topo
            .connect(Node::Client, server_pop3_v4(), ANSWER)
            .unwrap();
        stream.set_read_timeout(Some(ANSWER)).unwrap();
        let mut greeting = [0u8; 256];
        let n = stream.read(&mut greeting).unwrap();
        assert!(greeting[..n].starts_with(b"+OK"), "{mode}: greeting");
        stream.write_all(b"USER x\r\n").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let (answer, closed) = read_after_half_close(&mut stream, Duration::from_secs(5));
        assert!(
            answer.starts_with("+OK") || answer.starts_with("-ERR"),
            "{mode}: answer {answer:?}"
        );
        assert!(
            closed,
            "{mode}: still open 5 s after the client's FIN (got {answer:?})"
        );
    }
}

/// Sends a keep-alive ACK (at `conn`'s current numbers) every 300 ms until the server
/// resets the connection; how long that took, or `None` within `limit`.
fn keep_alive_until_reset(conn: &RawConn<'_>, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        conn.send_at(conn.snd_nxt.wrapping_sub(1), Flags::ACK, &[])
            .unwrap();
        let reset = conn.link.recv_until(Duration::from_millis(300), |f| {
            Seg::parse(f)
                .filter(|s| s.src == conn.base.dst && s.dst == conn.base.src && s.flags.rst)
        });
        if reset.is_some() {
            return Some(start.elapsed());
        }
    }
    None
}

#[test]
fn half_closed_connections_are_reaped_by_the_fin_timer_despite_keep_alives() {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay", "--fin-timeout", "2s"]).unwrap();
    let mut a = Attacker::new(&topo, 60);

    // CLOSE_WAIT / LAST_ACK: the client sends FIN and never acknowledges ours.
    let syn = a.syn(pop3(SERVER_V4));
    let mut conn = RawConn::connect(&a.link, syn, ANSWER)
        .unwrap()
        .expect("SYN-ACK");
    conn.read_until("\r\n", ANSWER).unwrap();
    conn.send(Flags::FIN_ACK, b"USER x\r\n").unwrap();
    conn.snd_nxt = conn.snd_nxt.wrapping_add(b"USER x\r\n".len() as u32 + 1);
    let took = keep_alive_until_reset(&conn, Duration::from_secs(8));
    assert!(
        took.is_some(),
        "a client that half-closed is still open after 8 s"
    );

    // FIN_WAIT_2: the server side closes after QUIT, the client acknowledges and never
    // sends its own FIN.
    let syn = a.syn(pop3(SERVER_V4));
    let mut conn = RawConn::connect(&a.link, syn, ANSWER)
        .unwrap()
        .expect("SYN-ACK");
    conn.read_until("\r\n", ANSWER).unwrap();
    conn.send_data(b"QUIT\r\n").unwrap();
    conn.read_until("\r\n", ANSWER).unwrap();
    let fin = conn
        .link
        .recv_until(ANSWER, |f| {
            Seg::parse(f).filter(|s| s.src == conn.base.dst && s.flags.fin)
        })
        .expect("the server side closes after QUIT");
    conn.rcv_nxt = fin.seq.wrapping_add(fin.payload.len() as u32 + 1);
    conn.send(Flags::ACK, &[]).unwrap();
    let took = keep_alive_until_reset(&conn, Duration::from_secs(8));
    assert!(
        took.is_some(),
        "FIN_WAIT_2 kept alive by ACKs is still open after 8 s"
    );
}

#[test]
fn rfc_5961_inexact_rst_and_syn_get_a_challenge_ack_and_the_session_lives() {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 61);
    let syn = a.syn(pop3(SERVER_V4));
    let mut conn = RawConn::connect(&a.link, syn, ANSWER)
        .unwrap()
        .expect("SYN-ACK");
    conn.read_until("\r\n", ANSWER).unwrap();

    let challenge = |conn: &RawConn<'_>, what: &str| {
        let ack = conn
            .link
            .recv_until(ANSWER, |f| {
                Seg::parse(f).filter(|s| s.src == conn.base.dst && s.dst == conn.base.src)
            })
            .unwrap_or_else(|| panic!("no challenge ACK after {what}"));
        assert!(
            ack.flags.ack && !ack.flags.rst && ack.payload.is_empty(),
            "{what}: {ack:?}"
        );
        assert_eq!(
            ack.ack, conn.snd_nxt,
            "{what}: the challenge ACK carries RCV.NXT"
        );
    };
    // An RST inside the window but not at the next expected sequence number.
    conn.send_at(conn.snd_nxt.wrapping_add(100), Flags::RST, &[])
        .unwrap();
    challenge(&conn, "an inexact RST");
    // A SYN on the established connection.
    conn.send_at(conn.snd_nxt.wrapping_add(7), Flags::SYN, &[])
        .unwrap();
    challenge(&conn, "a SYN");
    // An ACK of data never sent.
    let mut bogus = conn.base.next(
        conn.snd_nxt,
        conn.rcv_nxt.wrapping_add(100_000),
        Flags::ACK,
        &[],
    );
    bogus.flags.psh = true;
    a.link.send(&bogus.frame()).unwrap();
    challenge(&conn, "an ACK of unsent data");
    // Data far outside the window is not taken.
    conn.send_at(
        conn.snd_nxt.wrapping_add(1_000_000),
        Flags::PSH_ACK,
        b"QUIT\r\n",
    )
    .unwrap();

    // The session is intact: the server still answers in order.
    conn.send_data(b"CAPA\r\n").unwrap();
    let capa = conn.read_until("\r\n.\r\n", ANSWER).unwrap();
    assert!(capa.starts_with("+OK"), "{capa:?}");

    // The exact RST ends it: the next segment finds no connection.
    conn.send(Flags::RST, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    conn.send_data(b"NOOP\r\n").unwrap();
    let after = conn.recv(ANSWER).expect("an answer after the exact RST");
    assert!(
        after.flags.rst,
        "the exact RST closed the session: {after:?}"
    );
}

/// Reads from `stream` until `needle` arrives or `within` passes; whether it arrived.
fn read_until_within(stream: &mut std::net::TcpStream, needle: &[u8], within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn a_spoofed_syn_cannot_redirect_another_subscribers_replies() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    dc.deliver(
        "alice",
        &pop3_interceptor_e2e::dovecot::make_large_message("alice", 400_000),
    )
    .unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    // The victim: the real client at 198.51.100.2, logged in.
    let mut victim = topo
        .connect(Node::Client, server_pop3_v4(), ANSWER)
        .unwrap();
    assert!(read_until_within(&mut victim, b"\r\n", ANSWER), "greeting");
    victim.write_all(b"USER alice\r\n").unwrap();
    assert!(read_until_within(&mut victim, b"\r\n", ANSWER));
    victim.write_all(b"PASS alice-pw\r\n").unwrap();
    assert!(read_until_within(&mut victim, b"\r\n", ANSWER));

    // The attacker, on the same segment: SYNs with the victim's address and its own MAC,
    // one every millisecond (bounded: 3,000 of them) while the victim downloads.
    let link = RawLink::client(&topo).unwrap();
    let own_mac = link.mac;
    let fake_mac = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x99];
    let router_mac = raw::router_mac(&topo).unwrap();
    let attacker = std::thread::spawn(move || {
        for i in 0..3000u16 {
            let src = SocketAddrV4::new(pop3_interceptor_e2e::topology::CLIENT_V4, 30000 + i);
            let syn = Seg::syn(fake_mac, router_mac, src, pop3(SERVER_V4), u32::from(i));
            link.send(&syn.frame()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        link
    });
    victim.write_all(b"RETR 1\r\n").unwrap();
    let complete = read_until_within(&mut victim, b"\r\n.\r\n", Duration::from_secs(10));
    let link = attacker.join().unwrap();
    assert!(
        complete,
        "the victim's download stalled while spoofed SYNs arrived"
    );

    // Even the attacker's own flow is answered where the router would send it (with a
    // SYN-ACK, or an RST once the SYNs above used up the address's budget).
    link.drain();
    let src = SocketAddrV4::new(pop3_interceptor_e2e::topology::CLIENT_V4, 45000);
    let syn = Seg::syn(fake_mac, router_mac, src, pop3(SERVER_V4), 77);
    link.send(&syn.frame()).unwrap();
    let reply = link
        .recv_tcp(syn.dst, syn.src, ANSWER)
        .expect("the SYN is answered");
    assert_eq!(
        reply.dst_mac, own_mac,
        "the answer goes to the MAC the router knows for the address"
    );
}

#[test]
fn a_syn_failing_the_reverse_path_check_is_not_taken_over() {
    let topo = Topology::new().unwrap();
    let ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 70);
    // The router reaches 198.51.100.200 through its server-facing side, not rc0.
    topo.exec(
        Node::Router,
        &["ip", "route", "add", "198.51.100.200/32", "dev", "rs0"],
    )
    .unwrap()
    .check("ip route add")
    .unwrap();
    let src = SocketAddrV4::new(subscriber(200), 46000);
    let syn = Seg::syn(a.link.mac, a.router_mac, src, pop3(SERVER_V4), 5);
    assert!(
        !a.syn_acked(&syn, &syn.frame(), SILENCE),
        "a SYN from a source routed elsewhere was answered"
    );
    assert_eq!(
        ic.xdp_counter(common::Counter::ReversePathFailed).unwrap(),
        1,
        "counted as reverse_path_failed"
    );
    let syn = a.syn(pop3(SERVER_V4));
    assert!(
        a.syn_acked(&syn, &syn.frame(), ANSWER),
        "a source behind rc0 is answered"
    );
}

#[test]
fn qinq_frames_are_intercepted_and_answered_with_both_tags() {
    let topo = Topology::new().unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 71);
    let mut syn = a.syn(pop3(SERVER_V4));
    syn.vlans = vec![100, 200];
    a.link.send(&syn.frame()).unwrap();
    let reply = a
        .link
        .recv_tcp(syn.dst, syn.src, ANSWER)
        .expect("a SYN-ACK for the double-tagged SYN");
    assert!(reply.is_syn_ack(), "{reply:?}");
    assert_eq!(reply.vlans, vec![100, 200], "both tags kept, outer first");
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
fn an_address_the_router_gains_later_is_excluded_too() {
    let topo = Topology::new().unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 90);
    // Not the router's yet: intercepted like any destination.
    let later = subscriber(250);
    let syn = a.syn(pop3(later));
    assert!(
        a.syn_acked(&syn, &syn.frame(), ANSWER),
        "before: intercepted"
    );
    topo.exec(
        Node::Router,
        &["ip", "addr", "add", &format!("{later}/32"), "dev", "lo"],
    )
    .unwrap()
    .check("ip addr add")
    .unwrap();
    // The daemon looks its addresses up again every 5 s.
    std::thread::sleep(Duration::from_secs(7));
    let syn = a.syn(pop3(later));
    assert!(
        !a.syn_acked(&syn, &syn.frame(), SILENCE),
        "the router's new address is still intercepted"
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
