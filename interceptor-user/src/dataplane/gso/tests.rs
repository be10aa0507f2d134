use super::*;
use etherparse::NetSlice;
use etherparse::{PacketBuilder, TcpOptionElement};
use proptest::prelude::*;

const CLIENT_V4: [u8; 4] = [198, 51, 100, 2];
const SERVER_V4: [u8; 4] = [203, 0, 113, 2];
const CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A client's SYN (IP packet) over IPv4 or IPv6 with these TCP options, raw.
fn syn(v6: bool, options: &[u8]) -> Vec<u8> {
    let builder = if v6 {
        PacketBuilder::ipv6(CLIENT_V6, SERVER_V6, 64)
    } else {
        PacketBuilder::ipv4(CLIENT_V4, SERVER_V4, 64)
    };
    let mut tcp = etherparse::TcpHeader::new(40000, 110, 7, 64240);
    tcp.syn = true;
    tcp.set_options_raw(options).unwrap();
    let builder = builder.tcp_header(tcp);
    let mut out = Vec::new();
    builder.write(&mut out, &[]).unwrap();
    out
}

/// A segment from the server with `payload` bytes and these options, checksum complete.
fn data(v6: bool, options: &[TcpOptionElement], payload: usize) -> Vec<u8> {
    let builder = if v6 {
        PacketBuilder::ipv6(SERVER_V6, CLIENT_V6, 64)
    } else {
        PacketBuilder::ipv4(SERVER_V4, CLIENT_V4, 64)
    };
    let builder = builder
        .tcp(110, 40000, 1, 502)
        .ack(1)
        .options(options)
        .unwrap();
    let payload: Vec<u8> = (0..payload).map(|i| (i * 7 % 251) as u8).collect();
    let mut out = Vec::new();
    builder.write(&mut out, &payload).unwrap();
    out
}

/// The TCP checksum is complete (etherparse recomputes it from scratch).
fn checksum_ok(packet: &[u8]) -> bool {
    let sliced = SlicedPacket::from_ip(packet).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP");
    };
    let header = tcp.to_header();
    let expected = match sliced.net.unwrap() {
        NetSlice::Ipv4(ip) => header
            .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            .unwrap(),
        NetSlice::Ipv6(ip) => header
            .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
            .unwrap(),
        NetSlice::Arp(_) => unreachable!(),
    };
    header.checksum == expected
}

/// Every MSS option value of a SYN, in order (etherparse's reading).
fn mss_values(packet: &[u8]) -> Vec<u16> {
    let sliced = SlicedPacket::from_ip(packet).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP");
    };
    tcp.options_iterator()
        .map_while(Result::ok)
        .filter_map(|o| match o {
            TcpOptionElement::MaximumSegmentSize(mss) => Some(mss),
            _ => None,
        })
        .collect()
}

const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, // MSS 1460
    4, 2, // SACK permitted
    8, 10, 0, 0, 0, 1, 0, 0, 0, 0, // timestamps
    1, // NOP
    3, 3, 7, // window scale 7
];

#[test]
fn a_syn_mss_is_raised_to_a_multiple_of_the_clients_and_the_checksum_kept() {
    let mut packet = syn(false, &LINUX_SYN_OPTIONS);
    assert!(checksum_ok(&packet));
    assert_eq!(raise_syn_mss(&mut packet, 1500), Some(1460));
    // 44 segments of 1460 in one 64 KB packet.
    assert_eq!(mss_values(&packet), [44 * 1460]);
    assert!(checksum_ok(&packet));
}

#[test]
fn the_clients_mss_is_clamped_to_the_link_and_to_the_least_linux_takes() {
    let mut packet = syn(false, &[2, 4, 0x23, 0x28, 1, 1, 1, 0]); // 9000
    assert_eq!(raise_syn_mss(&mut packet, 1500), Some(1460));
    let mut packet = syn(false, &[2, 4, 0, 1]); // 1
    assert_eq!(raise_syn_mss(&mut packet, 1500), Some(MIN_MSS));
    assert!(usize::from(mss_values(&packet)[0]) <= STACK_MTU - 40);
    assert!(checksum_ok(&packet));
}

#[test]
fn an_ipv6_syn_with_the_mss_at_an_odd_offset_keeps_its_checksum() {
    // NOP, window scale, then the MSS whose value starts at an odd offset.
    let options = [1, 3, 3, 7, 1, 2, 4, 0x02, 0x18, 0, 0, 0]; // MSS 536, END
    let mut packet = syn(true, &options);
    assert_eq!(raise_syn_mss(&mut packet, 1500), Some(536));
    assert_eq!(mss_values(&packet), [(65535 - 60) / 536 * 536]);
    assert!(checksum_ok(&packet));
}

#[test]
fn every_mss_option_is_rewritten_and_the_least_is_kept() {
    let options = [2, 4, 0x05, 0xb4, 1, 2, 4, 0x02, 0x18, 0, 0, 0]; // 1460, NOP, 536
    let mut packet = syn(false, &options);
    assert_eq!(raise_syn_mss(&mut packet, 1500), Some(536));
    let raised = (65535 - 40) / 536 * 536;
    assert_eq!(mss_values(&packet), [raised, raised]);
    assert!(checksum_ok(&packet));
}

#[test]
fn a_syn_without_an_mss_option_is_left_alone() {
    for options in [&[][..], &[1, 3, 3, 7][..], &[0, 2, 4, 5][..]] {
        let mut packet = syn(false, options);
        let before = packet.clone();
        assert_eq!(raise_syn_mss(&mut packet, 1500), None, "{options:?}");
        assert_eq!(packet, before);
    }
}

#[test]
fn malformed_option_lists_are_left_alone() {
    for options in [
        &[1, 1, 1, 2][..],               // MSS kind, its length cut off
        &[1, 2, 4, 5][..],               // MSS running past the header
        &[2, 3, 5, 0][..],               // MSS of the wrong length
        &[3, 0, 2, 4, 5, 180, 0, 0][..], // length 0 before a good MSS
        &[8, 1, 2, 4, 5, 180, 0, 0][..], // length 1
    ] {
        let mut packet = syn(false, options);
        let before = packet.clone();
        assert_eq!(raise_syn_mss(&mut packet, 1500), None, "{options:?}");
        assert!(!lower_synack_mss(&mut packet, 1500));
        assert_eq!(packet, before, "{options:?}");
    }
}

#[test]
fn only_syns_are_rewritten() {
    let mut packet = data(false, &[TcpOptionElement::MaximumSegmentSize(1460)], 10);
    let before = packet.clone();
    assert_eq!(raise_syn_mss(&mut packet, 1500), None);
    assert_eq!(packet, before);
}

#[test]
fn the_syn_ack_leaves_with_the_links_mss() {
    for (v6, link) in [(false, 1460), (true, 1440)] {
        let ours = (STACK_MTU - if v6 { 60 } else { 40 }) as u16;
        let mut packet = syn(v6, &[2, 4, (ours >> 8) as u8, ours as u8, 1, 3, 3, 0]);
        assert!(lower_synack_mss(&mut packet, 1500));
        assert_eq!(mss_values(&packet), [link]);
        assert!(checksum_ok(&packet));
    }
}

/// One's-complement sum of the TCP segment as the kernel finishes a CHECKSUM_PARTIAL one:
/// from `csum_start` to the end, the field included as it stands.
fn finish_partial(packet: &[u8], csum_start: usize) -> u16 {
    let mut sum: u32 = packet[csum_start..]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn a_segment_longer_than_the_clients_mss_is_offloaded_with_a_partial_checksum() {
    for (v6, ip_len) in [(false, 20usize), (true, 40)] {
        let mut packet = data(v6, &[], 10_000);
        let complete = packet[ip_len + 16..ip_len + 18].to_vec();
        let vnet = offload(&mut packet, 14, 1460);
        let h = vnet.0;
        assert_eq!(h.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM as u8);
        let gso = if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        assert_eq!(h.gso_type, gso as u8);
        assert_eq!(h.gso_size, 1460);
        assert_eq!(usize::from(h.hdr_len), 14 + ip_len + 20);
        assert_eq!(usize::from(h.csum_start), 14 + ip_len);
        assert_eq!(h.csum_offset, 16);
        // What the kernel computes from the partial sum is the complete checksum.
        let finished = finish_partial(&packet, ip_len);
        assert_eq!(finished.to_be_bytes().to_vec(), complete);
    }
}

#[test]
fn tcp_options_count_against_the_segment_size() {
    let timestamps = [
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::Timestamp(1, 2),
    ];
    let mut packet = data(true, &timestamps, 5000);
    assert_eq!(offload(&mut packet, 18, 1440).0.gso_size, 1428);
}

#[test]
fn a_segment_within_the_mss_goes_as_it_is() {
    for payload in [0, 1, 1460] {
        let mut packet = data(false, &[], payload);
        let before = packet.clone();
        assert_eq!(offload(&mut packet, 14, 1460), VnetHeader::NONE);
        assert_eq!(packet, before);
    }
    assert_eq!(VnetHeader::NONE.to_bytes(), [0; 10]);
    assert_eq!(std::mem::size_of::<virtio_net_hdr>(), 10);
}

proptest! {
    /// Hostile bytes: no panic, and nothing grows or shrinks.
    #[test]
    fn arbitrary_packets_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
        mss in any::<u16>(),
        mtu in 0usize..70_000,
    ) {
        let len = bytes.len();
        let _ = raise_syn_mss(&mut bytes, mtu);
        let _ = lower_synack_mss(&mut bytes, mtu);
        let _ = offload(&mut bytes, 22, mss);
        prop_assert_eq!(bytes.len(), len);
    }

    /// Option bytes from the alphabet of option kinds and lengths in a well-formed SYN:
    /// no panic, and a rewrite keeps the checksum and leaves no MSS above the stack's.
    #[test]
    fn arbitrary_options_keep_the_checksum(
        mut options in proptest::collection::vec(
            prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 8, 10, 0xb4]),
            0..=40,
        ),
        v6 in any::<bool>(),
    ) {
        options.resize(options.len().div_ceil(4) * 4, 0);
        let mut packet = syn(v6, &options);
        if raise_syn_mss(&mut packet, 1500).is_some() {
            prop_assert!(checksum_ok(&packet));
            prop_assert!(mss_values(&packet).iter().all(|&m| usize::from(m) <= STACK_MTU - 40));
        }
    }
}
