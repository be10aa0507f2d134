//! The packet path under attack. Crafted frames from the client namespace (an
//! `AF_PACKET` socket, see `pop3_interceptor_e2e::raw`) try to steal, stall or reset other
//! subscribers' sessions, or to make the daemon answer what the router would drop.
//! Spoofed sources come from 198.51.100.0/24 only. Run as root, one at a time
//! (`cargo xtask test`). Floods and exhausted tables are in `floods.rs`.
//!
//! The tests whose frames reach a mail server use the [`Env`] fixture; those whose frames
//! must stop at the daemon (SYNs it refuses, answers it gives itself) build only the
//! topology and the daemon: a Dovecot there would only cost its start-up.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4};
use std::time::{Duration, Instant};

use pop3_interceptor_e2e::raw::{
    self, ANSWER, Attacker, Flags, RawConn, RawLink, SILENCE, Seg, pop3, subscriber,
};
use pop3_interceptor_e2e::topology::{ROUTER_CLIENT_V4, SERVER_V4, server_pop3_v4};
use pop3_interceptor_e2e::util::read_until_within;
use pop3_interceptor_e2e::{DovecotOptions, Env, Interceptor, Node, Topology};
use rstest::rstest;

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

/// A SYN with one byte of a checksum flipped (`at`: its offset in the untagged frame).
#[rstest]
#[case::ipv4_header(24)]
#[case::tcp(14 + 20 + 16)]
fn a_syn_with_a_bad_checksum_gets_no_syn_ack(#[case] at: usize) {
    let topo = Topology::new().unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay"]).unwrap();
    let mut a = Attacker::new(&topo, 50);
    let syn = a.syn(pop3(SERVER_V4));
    let mut frame = syn.frame();
    frame[at] ^= 0x5a;
    assert!(
        !a.syn_acked(&syn, &frame, SILENCE),
        "a bad checksum at byte {at} answered"
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
    let mut env = Env::direct(DovecotOptions::default());
    for mode in ["relay", "attenuate"] {
        env.start_daemon(&["--mode", mode]);
        let mut stream = env
            .topo
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
    let env = Env::start(
        DovecotOptions::default(),
        &["--mode", "relay", "--fin-timeout", "2s"],
    );
    let mut a = Attacker::new(&env.topo, 60);

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
    let env = Env::relay();
    let mut a = Attacker::new(&env.topo, 61);
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

#[test]
fn a_spoofed_syn_cannot_redirect_another_subscribers_replies() {
    let mut env = Env::direct(DovecotOptions::default());
    env.dc
        .deliver(
            "alice",
            &pop3_interceptor_e2e::dovecot::make_large_message("alice", 400_000),
        )
        .unwrap();
    env.start_daemon(&["--mode", "relay"]);
    let topo = &env.topo;
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
    let link = RawLink::client(topo).unwrap();
    let own_mac = link.mac;
    let fake_mac = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x99];
    let router_mac = raw::router_mac(topo).unwrap();
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
