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
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    #[error("malformed IPv4 options")]
    BadIpOptions,
    #[error("bad TCP checksum")]
    BadTcpChecksum,
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
    /// The TCP header fields the dataplane checks before smoltcp sees the segment.
    pub tcp: TcpMeta,
}

/// Sequence space and flags of a received segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpMeta {
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub has_ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload_len: u32,
    /// The window scale option of a SYN.
    pub window_shift: Option<u8>,
}

impl TcpMeta {
    /// Sequence space the segment occupies (SYN and FIN count one each).
    pub fn seg_len(&self) -> u32 {
        self.payload_len + u32::from(self.syn) + u32::from(self.fin)
    }
}

/// A bare TCP segment from `from` to `to` (an IP packet without link-layer header): an RST
/// when `rst`, an ACK of `ack` otherwise. Built by us, not by smoltcp, for segments that
/// never reach a socket (refused SYNs, RFC 5961 challenge ACKs).
pub fn control_segment(
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    ack: Option<u32>,
    rst: bool,
    window: u16,
) -> Option<Vec<u8>> {
    let builder = match (from.ip(), to.ip()) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            etherparse::PacketBuilder::ipv4(f.octets(), t.octets(), 64)
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            etherparse::PacketBuilder::ipv6(f.octets(), t.octets(), 64)
        }
        _ => return None,
    };
    let mut builder = builder.tcp(from.port(), to.port(), seq, window);
    if rst {
        builder = builder.rst();
    }
    if let Some(ack) = ack {
        builder = builder.ack(ack);
    }
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).ok()?;
    Some(out)
}

/// The RST answering `segment` (RFC 793 "Reset Generation"); `None` for an RST.
pub fn reset_reply(segment: &ClientSegment<'_>) -> Option<Vec<u8>> {
    let t = &segment.tcp;
    if t.rst {
        return None;
    }
    if t.has_ack {
        control_segment(segment.server, segment.client, t.ack, None, true, 0)
    } else {
        let ack = t.seq.wrapping_add(t.seg_len());
        control_segment(segment.server, segment.client, 0, Some(ack), true, 0)
    }
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
        Some(NetSlice::Ipv4(ip)) => {
            // The kernel never hands us a frame it checked: XDP runs first.
            if fold(sum_words(ip.header().slice(), 0)) != 0xffff {
                return Err(FrameError::BadIpChecksum);
            }
            check_ipv4_options(ip.header().options())?;
            (
                ip.header().slice(),
                ip.payload(),
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
            )
        }
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
    check_tcp_checksum(src, dst, tcp.slice())?;
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
        tcp: TcpMeta {
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            syn: tcp.syn(),
            has_ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            payload_len: tcp.payload().len() as u32,
            window_shift: if tcp.syn() {
                window_shift(tcp.options_iterator())
            } else {
                None
            },
        },
    })
}

/// The window scale option among TCP options, if any (malformed options end the search).
pub fn window_shift(options: etherparse::TcpOptionsIterator<'_>) -> Option<u8> {
    options.map_while(Result::ok).find_map(|o| match o {
        etherparse::TcpOptionElement::WindowScale(shift) => Some(shift),
        _ => None,
    })
}

/// IPv4 options (RFC 791): END and NOP are one byte; every other option has a length byte
/// of at least 2 that stays inside the header. Anything else is malformed.
fn check_ipv4_options(mut options: &[u8]) -> Result<(), FrameError> {
    while let Some(&kind) = options.first() {
        match kind {
            0 => return Ok(()),
            1 => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1).ok_or(FrameError::BadIpOptions)?);
                if len < 2 || len > options.len() {
                    return Err(FrameError::BadIpOptions);
                }
                options = &options[len..];
            }
        }
    }
    Ok(())
}

/// Checks the TCP checksum of `segment` (header and payload).
///
/// Two forms are accepted: a complete checksum, and the CHECKSUM_PARTIAL form a local
/// sender leaves on a veth (the field holds only the folded pseudo-header sum, the NIC's
/// job was skipped; XDP sees the frame before anyone completes it). A real NIC never
/// delivers the second form, and a forger gains nothing from it: it still has to know
/// the pseudo-header. Anything else is dropped.
fn check_tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> Result<(), FrameError> {
    let pseudo =
        pseudo_header_sum(src, dst, segment.len() as u32).ok_or(FrameError::BadTcpChecksum)?;
    if fold(sum_words(segment, pseudo)) == 0xffff {
        return Ok(());
    }
    let field = segment
        .get(16..18)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(FrameError::BadTcpChecksum)?;
    if field == fold(pseudo) {
        return Ok(());
    }
    Err(FrameError::BadTcpChecksum)
}

/// The unfolded one's-complement sum of a TCP pseudo-header (RFC 9293 3.1, RFC 8200 8.1)
/// for a segment of `len` bytes; `None` when the addresses are of different families.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, len: u32) -> Option<u32> {
    Some(match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(&s.octets(), sum_words(&d.octets(), 6 + len)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(
            &s.octets(),
            sum_words(&d.octets(), 6 + (len >> 16) + (len & 0xffff)),
        ),
        _ => return None,
    })
}

/// One's-complement sum of big-endian 16-bit words (an odd last byte padded with zero),
/// added to `initial`; not folded.
fn sum_words(bytes: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    let mut chunks = bytes.chunks_exact(2);
    for word in &mut chunks {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// Folds a one's-complement sum to 16 bits.
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
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

    /// `frame` (an IPv4 SYN from `syn_v4`) with `options` after the IP header, IHL, total
    /// length and header checksum fixed. The TCP checksum does not cover IP options.
    fn with_ip_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let mut out = frame[..34].to_vec();
        out.extend_from_slice(options);
        out.extend_from_slice(&frame[34..]);
        out[14] = 0x40 | ((20 + options.len()) / 4) as u8;
        let total = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
        out[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ip_checksum(&mut out);
        out
    }

    fn fix_ip_checksum(frame: &mut [u8]) {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        frame[24..26].fill(0);
        let sum = !fold(sum_words(&frame[14..14 + ihl], 0));
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn drops_a_wrong_ipv4_header_checksum() {
        let mut frame = syn_v4(&[]);
        frame[24] ^= 0x01;
        assert_eq!(parse(&frame).unwrap_err(), FrameError::BadIpChecksum);
    }

    #[test]
    fn checks_the_tcp_checksum_in_full_or_partial_form() {
        let good = syn_v4(b"USER a\r\n");
        assert!(parse(&good).is_ok());
        let mut bad = good.clone();
        bad[50] ^= 0x40;
        assert_eq!(parse(&bad).unwrap_err(), FrameError::BadTcpChecksum);
        let mut payload = good.clone();
        *payload.last_mut().unwrap() ^= 0x01;
        assert_eq!(parse(&payload).unwrap_err(), FrameError::BadTcpChecksum);
        // CHECKSUM_PARTIAL as a local veth sender leaves it: the pseudo-header sum only.
        let mut partial = good.clone();
        let len = (partial.len() - 34) as u32;
        let pseudo = sum_words(&partial[26..34], 6 + len);
        partial[50..52].copy_from_slice(&fold(pseudo).to_be_bytes());
        assert!(parse(&partial).is_ok());
        // ...but not its complement, nor zero.
        partial[50..52].copy_from_slice(&(!fold(pseudo)).to_be_bytes());
        assert_eq!(parse(&partial).unwrap_err(), FrameError::BadTcpChecksum);
    }

    #[test]
    fn checks_the_tcp_checksum_over_ipv6() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv6(
                [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(40000, 110, 1, 65535)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        assert!(parse(&frame).is_ok());
        frame[14 + 40 + 16] ^= 0x10;
        assert_eq!(parse(&frame).unwrap_err(), FrameError::BadTcpChecksum);
    }

    #[test]
    fn parses_ipv4_options_and_drops_malformed_ones() {
        let frame = syn_v4(&[]);
        // NOP, NOP, NOP, END; and a 4-byte option (router alert) that fits exactly.
        assert!(parse(&with_ip_options(&frame, &[1, 1, 1, 0])).is_ok());
        assert!(parse(&with_ip_options(&frame, &[148, 4, 0, 0])).is_ok());
        for bad in [[7, 0, 0, 0], [7, 1, 0, 0], [1, 1, 7, 3], [7, 8, 0, 0]] {
            assert_eq!(
                parse(&with_ip_options(&frame, &bad)).unwrap_err(),
                FrameError::BadIpOptions,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keeps_both_tags_of_a_qinq_frame() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .double_vlan(100.try_into().unwrap(), 200.try_into().unwrap())
            .ipv4([198, 51, 100, 2], [203, 0, 113, 2], 64)
            .tcp(40000, 110, 1, 65535)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        let seg = parse(&frame).unwrap();
        assert!(seg.opens_connection);
        assert_eq!(seg.reply_header.as_bytes().len(), 22);
        assert_eq!(&seg.reply_header.as_bytes()[12..22], &frame[12..22]);
    }

    #[test]
    fn a_refused_syn_gets_an_rst_that_acknowledges_it() {
        let frame = syn_v4(&[]);
        let seg = parse(&frame).unwrap();
        let rst = reset_reply(&seg).unwrap();
        let reply = etherparse::SlicedPacket::from_ip(&rst).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = reply.transport else {
            panic!("not TCP")
        };
        assert!(tcp.rst() && tcp.ack() && !tcp.syn());
        assert_eq!(tcp.acknowledgment_number(), 2, "SYN seq 1 + 1");
        assert_eq!((tcp.source_port(), tcp.destination_port()), (110, 40000));
        let Some(NetSlice::Ipv4(ip)) = reply.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr().octets(), [203, 0, 113, 2]);
        assert_eq!(ip.header().destination_addr().octets(), [198, 51, 100, 2]);
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
