//! Issue 12: on the TC dataplane the daemon hands large segments to the kernel with a
//! `virtio_net_hdr` and the kernel cuts them to the client's MSS (GSO,
//! `interceptor-user/src/dataplane/gso.rs`). A 10 MB RETR arrives byte for byte as it does
//! direct, in a small fraction of the frames one per MTU would take; a client that asked
//! for 536-byte segments gets none longer on the wire, and the SYN-ACK tells it the MSS
//! the link carries, not the stack's 64 KB. Run as root, one at a time
//! (`cargo xtask test`).

use std::net::SocketAddr;
use std::time::Duration;

use pop3_interceptor_e2e::clients::RawSession;
use pop3_interceptor_e2e::dovecot::make_large_message;
use pop3_interceptor_e2e::prometheus;
use pop3_interceptor_e2e::topology::{
    HOST_IFACE, ROUTER_CLIENT_IFACE, ROUTER_CLIENT_V4, ROUTER_CLIENT_V6, server_pop3_v4,
    server_pop3_v6,
};
use pop3_interceptor_e2e::{Dovecot, Interceptor, Node, Topology};
use rstest::rstest;

const METRICS: &str = "127.0.0.1:9110";

/// `alice`'s message 1 over POP3 from the client namespace: the body as the client reads
/// it (dot-stuffing undone by nobody: the bytes on the wire).
fn retr(topo: &Topology, addr: SocketAddr) -> Vec<u8> {
    let mut s = RawSession::connect(topo, Node::Client, addr).unwrap();
    s.set_timeout(Duration::from_secs(30)).unwrap();
    assert!(s.read_line().unwrap().starts_with("+OK"));
    assert!(s.command("USER alice").unwrap().starts_with("+OK"));
    assert!(s.command("PASS alice-pw").unwrap().starts_with("+OK"));
    assert!(s.command("RETR 1").unwrap().starts_with("+OK"));
    let body = s.read_multiline().unwrap();
    assert!(s.command("QUIT").unwrap().starts_with("+OK"));
    body
}

/// One of the daemon's counters, scraped with curl in the router namespace.
fn metric(topo: &Topology, name: &str) -> f64 {
    let url = format!("http://{METRICS}/metrics");
    let out = topo
        .exec(
            Node::Router,
            &["curl", "-sS", "--noproxy", "*", "--max-time", "5", &url],
        )
        .unwrap();
    prometheus::parse(&out.stdout_str())
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[rstest]
#[case::relay("relay")]
#[case::attenuate_pass_through("attenuate")]
fn a_10_mb_retr_leaves_the_tc_dataplane_in_gso_frames(#[case] mode: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let message = make_large_message("alice", 10 << 20);
    dc.deliver("alice", &message).unwrap();
    let direct = retr(&topo, server_pop3_v4());
    assert!(direct.len() >= message.len());

    let ic = Interceptor::start(
        &topo,
        &["--mode", mode, "--dataplane", "tc", "--metrics", METRICS],
    )
    .unwrap();
    let through = retr(&topo, server_pop3_v4());
    assert!(
        direct == through,
        "{} bytes direct, {} through the daemon",
        direct.len(),
        through.len()
    );
    assert_eq!(
        metric(&topo, "pop3_interceptor_connections_accepted_total"),
        1.0,
        "the session went through the daemon: {}",
        ic.log_tail(20)
    );
    // One frame per MSS would be over 7,000 (7,291 without the offload). Segments go out
    // as large as the bytes the server has sent so far allow (up to 64 KB), so how many
    // depends on pacing: 500 to 2,000 here.
    let per_mss = through.len() / 1460;
    let frames = metric(&topo, "pop3_interceptor_afxdp_tx_frames_total") as usize;
    assert!(
        frames > 0 && frames < per_mss / 2,
        "{frames} frames sent, {per_mss} at one per MSS"
    );
    assert_eq!(
        metric(&topo, "pop3_interceptor_afxdp_tx_ring_full_total"),
        0.0,
        "no frame refused"
    );
}

/// tcpdump's `-v` lines for TCP segments from `server` (`ADDR.PORT > ...`).
fn segments_from<'a>(capture: &'a str, server: &SocketAddr) -> Vec<&'a str> {
    let from = format!(" {}.{} > ", server.ip(), server.port());
    capture.lines().filter(|l| l.contains(&from)).collect()
}

/// The number after `key` in a tcpdump line (`length 536`, `mss 1460`).
fn field(line: &str, key: &str) -> Option<usize> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[rstest]
#[case::v4(server_pop3_v4(), 1460)]
#[case::v6(server_pop3_v6(), 1440)]
fn a_client_asking_for_536_byte_segments_gets_none_longer(
    #[case] server: SocketAddr,
    #[case] link_mss: usize,
) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let message = make_large_message("alice", 1 << 20);
    dc.deliver("alice", &message).unwrap();
    // The client's SYNs say MSS 536.
    for (family, via) in [
        ("-4", ROUTER_CLIENT_V4.to_string()),
        ("-6", ROUTER_CLIENT_V6.to_string()),
    ] {
        let route = [
            "ip", family, "route", "change", "default", "via", &via, "advmss", "536",
        ];
        topo.exec(Node::Client, &route)
            .unwrap()
            .check("advmss")
            .unwrap();
    }
    // veth would hand a GSO frame to its peer whole: with TSO off on the router's side the
    // kernel cuts it there as a NIC would, and GRO off on the client's side keeps the
    // pieces apart, so the capture sees what a wire would carry.
    let no_tso = ["ethtool", "-K", ROUTER_CLIENT_IFACE, "tso", "off"];
    topo.exec(Node::Router, &no_tso)
        .unwrap()
        .check("tso off")
        .unwrap();
    let no_gro = ["ethtool", "-K", HOST_IFACE, "gro", "off"];
    topo.exec(Node::Client, &no_gro)
        .unwrap()
        .check("gro off")
        .unwrap();

    let ic = Interceptor::start(&topo, &["--mode", "relay", "--dataplane", "tc"]).unwrap();
    let log = topo.dir().join("capture.txt");
    let capture = topo
        .spawn(
            Node::Client,
            &[
                "tcpdump",
                "-i",
                HOST_IFACE,
                "-nn",
                "-v",
                "-l",
                "-U",
                "-s",
                "128",
                "tcp port 110",
            ],
            &log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let body = retr(&topo, server);
    assert!(body.len() >= message.len());
    std::thread::sleep(Duration::from_millis(500));
    drop(capture);
    let text = std::fs::read_to_string(&log).unwrap();
    let segments = segments_from(&text, &server);
    let syn_ack = segments
        .iter()
        .find(|l| l.contains("Flags [S.]"))
        .unwrap_or_else(|| panic!("no SYN-ACK captured: {}", ic.log_tail(10)));
    assert_eq!(field(syn_ack, "mss "), Some(link_mss), "{syn_ack}");
    let lengths: Vec<usize> = segments
        .iter()
        .filter_map(|l| field(l, "length "))
        .collect();
    let carried: usize = lengths.iter().sum();
    assert!(carried >= message.len(), "{carried} bytes captured");
    let longest = lengths.iter().max().copied().unwrap_or(0);
    assert_eq!(longest, 536, "the longest segment's payload");
}
