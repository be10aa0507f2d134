//! The dataplane's frame parser (`pop3_interceptor::dataplane::frame::parse`) on
//! arbitrary bytes: never a panic, and what it accepts is consistent.
//!
//! - the IP packet is the frame's own bytes, right after the link-layer header;
//! - the reply header is that header with the MACs swapped, VLAN tags and EtherType kept;
//! - the IP packet parses again on its own, to the same addresses and ports;
//! - a frame built from the reply header and the IP packet (what a reply looks like)
//!   parses to the same segment, and mirroring it gives back the original header.
#![no_main]

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use libfuzzer_sys::fuzz_target;
use pop3_interceptor::dataplane::frame::{MAX_L2_LEN, parse};

fuzz_target!(|frame: &[u8]| {
    let Ok(seg) = parse(frame) else {
        return;
    };
    let l2 = seg.reply_header.as_bytes();
    assert!([14, 18, 22].contains(&l2.len()) && l2.len() <= MAX_L2_LEN);
    assert_eq!(seg.ip_packet.as_ptr(), frame[l2.len()..].as_ptr());
    assert!(seg.ip_packet.len() <= frame.len() - l2.len());
    assert_eq!(&l2[..6], &frame[6..12]);
    assert_eq!(&l2[6..12], &frame[..6]);
    assert_eq!(&l2[12..], &frame[12..l2.len()]);

    assert_eq!(seg.client.is_ipv4(), seg.server.is_ipv4());
    let version = if seg.client.is_ipv4() { 4 } else { 6 };
    assert_eq!(seg.ip_packet[0] >> 4, version);
    if seg.opens_connection {
        assert_ne!(seg.client.port(), 0);
    }

    let ip = SlicedPacket::from_ip(seg.ip_packet).expect("the IP packet parses alone");
    let (src, dst) = match ip.net {
        Some(NetSlice::Ipv4(v4)) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        other => panic!("not IP alone: {other:?}"),
    };
    let Some(TransportSlice::Tcp(tcp)) = ip.transport else {
        panic!("not TCP alone");
    };
    assert_eq!(
        (src, tcp.source_port()),
        (seg.client.ip(), seg.client.port())
    );
    assert_eq!(
        (dst, tcp.destination_port()),
        (seg.server.ip(), seg.server.port())
    );

    let reply = [l2, seg.ip_packet].concat();
    let again = parse(&reply).expect("a reply-shaped frame parses");
    assert_eq!(again.ip_packet, seg.ip_packet);
    assert_eq!(
        (again.client, again.server, again.opens_connection),
        (seg.client, seg.server, seg.opens_connection)
    );
    assert_eq!(again.reply_header.as_bytes(), &frame[..l2.len()]);
});
