//! Frames from the XDP socket, parsed into what the TCP stack and the flow table need.
//!
//! The XDP program already filtered for TCP to an intercepted port, but userspace does
//! not trust it: anything that does not parse cleanly is reported as an error, counted
//! and dropped here, never a panic.

use std::net::{IpAddr, SocketAddr};

use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use thiserror::Error;

/// Longest link-layer header we mirror: Ethernet plus two VLAN tags.
pub const MAX_L2_LEN: usize = 14 + 2 * 4;

/// Why a frame was not accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("not an Ethernet frame")]
    NotEthernet,
    #[error("not IPv4 or IPv6")]
    NotIp,
    #[error("IP fragment")]
    Fragment,
    #[error("not TCP")]
    NotTcp,
    #[error("link-layer header longer than {MAX_L2_LEN} bytes")]
    L2TooLong,
}

/// The link-layer header to put in front of packets going back to the client: the
/// received one with source and destination MAC swapped, VLAN tags and EtherType kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    bytes: [u8; MAX_L2_LEN],
    len: u8,
}

impl ReplyHeader {
    fn mirror(received: &[u8]) -> Result<Self, FrameError> {
        if received.len() > MAX_L2_LEN {
            return Err(FrameError::L2TooLong);
        }
        let mut bytes = [0u8; MAX_L2_LEN];
        bytes[..received.len()].copy_from_slice(received);
        bytes[..6].copy_from_slice(&received[6..12]);
        bytes[6..12].copy_from_slice(&received[..6]);
        Ok(Self {
            bytes,
            len: received.len() as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A TCP segment from a client, located in its frame.
#[derive(Debug)]
pub struct ClientSegment<'a> {
    /// The IP packet (header and payload, Ethernet padding cut off) for the TCP stack.
    pub ip_packet: &'a [u8],
    /// The subscriber's address and port.
    pub client: SocketAddr,
    /// The destination the client dialled (the mail server).
    pub server: SocketAddr,
    /// A plain SYN (no ACK, FIN or RST, a real source port): the client opens a connection.
    pub opens_connection: bool,
    /// The header to mirror on packets sent back to this client.
    pub reply_header: ReplyHeader,
}

/// Parses an Ethernet frame carrying an unfragmented TCP segment over IPv4 or IPv6,
/// with up to two VLAN tags.
pub fn parse(frame: &[u8]) -> Result<ClientSegment<'_>, FrameError> {
    let packet =
        SlicedPacket::from_ethernet(frame).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let Some(LinkSlice::Ethernet2(_)) = packet.link else {
        return Err(FrameError::NotEthernet);
    };
    let (header, payload, src, dst) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().slice(),
            ip.payload(),
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().slice(),
            ip.payload(),
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
        ),
        _ => return Err(FrameError::NotIp),
    };
    if payload.fragmented {
        return Err(FrameError::Fragment);
    }
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return Err(FrameError::NotTcp);
    };
    // Both slices point into `frame`: the IP packet runs from the header's first byte to
    // the payload's last, which drops any Ethernet padding after it.
    let ip_start = offset_in(frame, header);
    let ip_end = offset_in(frame, payload.payload) + payload.payload.len();
    Ok(ClientSegment {
        ip_packet: &frame[ip_start..ip_end],
        client: SocketAddr::new(src, tcp.source_port()),
        server: SocketAddr::new(dst, tcp.destination_port()),
        opens_connection: tcp.syn()
            && !tcp.ack()
            && !tcp.fin()
            && !tcp.rst()
            && tcp.source_port() != 0,
        reply_header: ReplyHeader::mirror(&frame[..ip_start])?,
    })
}

/// Byte offset of `inner` inside `outer`; `inner` must be a sub-slice of `outer`.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn syn_v4(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv4([198, 51, 100, 2], [203, 0, 113, 2], 64)
            .tcp(40000, 110, 1, 65535)
            .syn();
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn parses_an_ipv4_syn_and_mirrors_the_macs() {
        let frame = syn_v4(&[]);
        let seg = parse(&frame).unwrap();
        assert_eq!(seg.client, "198.51.100.2:40000".parse().unwrap());
        assert_eq!(seg.server, "203.0.113.2:110".parse().unwrap());
        assert!(seg.opens_connection);
        assert_eq!(seg.ip_packet, &frame[14..]);
        let reply = seg.reply_header.as_bytes();
        assert_eq!(&reply[..6], &CLIENT_MAC);
        assert_eq!(&reply[6..12], &ROUTER_MAC);
        assert_eq!(&reply[12..14], &[0x08, 0x00]);
    }

    #[test]
    fn keeps_the_vlan_tag_and_cuts_ethernet_padding() {
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .single_vlan(42.try_into().unwrap())
            .ipv6(
                [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(40001, 110, 1, 65535)
            .ack(7);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"QUIT\r\n").unwrap();
        let ip_len = frame.len() - 18;
        frame.extend_from_slice(&[0; 8]);
        let seg = parse(&frame).unwrap();
        assert!(!seg.opens_connection);
        assert_eq!(seg.ip_packet.len(), ip_len);
        assert_eq!(seg.reply_header.as_bytes().len(), 18);
        assert_eq!(&seg.reply_header.as_bytes()[12..16], &frame[12..16]);
        assert_eq!(seg.server, "[2001:db8:2::2]:110".parse().unwrap());
    }

    #[test]
    fn rejects_what_is_not_a_whole_tcp_segment() {
        let frame = syn_v4(&[]);
        for cut in 0..frame.len() {
            assert!(parse(&frame[..cut]).is_err(), "truncated to {cut} bytes");
        }
        let mut udp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv4([198, 51, 100, 2], [203, 0, 113, 2], 64)
            .udp(1, 110)
            .write(&mut udp, &[])
            .unwrap();
        assert_eq!(parse(&udp).unwrap_err(), FrameError::NotTcp);
        let mut arp = syn_v4(&[]);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(parse(&arp).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_a_corrupted_segment(pos in 0usize..60, value: u8) {
            let mut frame = syn_v4(b"USER a\r\n");
            let pos = pos % frame.len();
            frame[pos] = value;
            let _ = parse(&frame);
        }
    }
}
