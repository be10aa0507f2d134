//! Segmentation offload on the TC dataplane: smoltcp writes TCP segments of up to 64 KB
//! and the kernel cuts them to the client's MSS (GSO), so a large answer costs one
//! `sendmsg` per 64 KB instead of one per MTU.
//!
//! smoltcp sizes its segments by the MSS in the client's SYN and by its interface's MTU,
//! and advertises that MTU in its SYN-ACK. So on the TC dataplane its interfaces get
//! [`STACK_MTU`]; the client's SYN reaches smoltcp with a raised MSS ([`raise_syn_mss`],
//! the client's own kept with the connection); smoltcp's SYN-ACK leaves with the MSS the
//! link carries ([`lower_synack_mss`]), so the client never sends more than that; and a
//! segment longer than the client's MSS leaves with a `virtio_net_hdr` asking the kernel
//! to segment it ([`offload`]). The XDP dataplane uses none of this: AF_XDP sends frames
//! as they are.
//!
//! Every function here takes hostile bytes: a packet that does not parse, or a malformed
//! option list, is left alone and never read past its end.

use std::net::IpAddr;

use etherparse::{SlicedPacket, TransportSlice};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, virtio_net_hdr,
};

use super::frame::{fold, pseudo_header_sum};

/// IP MTU of the TC dataplane's smoltcp interfaces: the largest IP packet (an IPv4 total
/// length is 16 bits; GSO takes up to 64 KB).
pub const STACK_MTU: usize = u16::MAX as usize;

/// The least MSS taken from a client (Linux's `TCP_MIN_SND_MSS`, smoltcp's minimum too).
const MIN_MSS: u16 = 48;
/// TCP header without options.
const TCP_HEADER_LEN: usize = 20;
/// Where the checksum sits in the TCP header.
const TCP_CHECKSUM_AT: usize = 16;
/// TCP option kinds (RFC 9293 3.1).
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;
const OPTION_MSS_LEN: usize = 4;

/// The `virtio_net_hdr` in front of every frame on a `PACKET_VNET_HDR` socket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VnetHeader(virtio_net_hdr);

impl VnetHeader {
    /// No offload: the frame goes out as it is.
    pub const NONE: Self = Self(virtio_net_hdr {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    });

    /// The header as the kernel reads it (native byte order: the legacy header on a
    /// little-endian host).
    pub fn to_bytes(self) -> [u8; 10] {
        let h = self.0;
        let mut out = [0; 10];
        out[0] = h.flags;
        out[1] = h.gso_type;
        for (i, field) in [h.hdr_len, h.gso_size, h.csum_start, h.csum_offset]
            .into_iter()
            .enumerate()
        {
            out[2 + 2 * i..4 + 2 * i].copy_from_slice(&field.to_ne_bytes());
        }
        out
    }
}

/// Where the TCP header of an IP packet is.
struct TcpAt {
    src: IpAddr,
    dst: IpAddr,
    /// Offset of the TCP header in the packet (after any IPv4 options or IPv6 extension
    /// headers).
    start: usize,
    header_len: usize,
    syn: bool,
}

use super::stack::addresses;

fn locate(ip_packet: &[u8]) -> Option<TcpAt> {
    let packet = SlicedPacket::from_ip(ip_packet).ok()?;
    let (src, dst) = addresses(packet.net?)?;
    let TransportSlice::Tcp(tcp) = packet.transport? else {
        return None;
    };
    let start = (tcp.slice().as_ptr() as usize).checked_sub(ip_packet.as_ptr() as usize)?;
    Some(TcpAt {
        src,
        dst,
        start,
        header_len: tcp.header_len(),
        syn: tcp.syn(),
    })
}

/// Most options one header holds (40 bytes of options, 4 per MSS option).
const MAX_MSS_OPTIONS: usize = 10;

/// The offsets (in `options`) of every MSS option's value, in order, up to the end of the
/// list. `None` when the list is malformed as smoltcp reads it (an option running past the
/// header, a length under 2, an MSS option not 4 bytes long): smoltcp then drops the
/// segment anyway.
fn mss_options(options: &[u8]) -> Option<impl Iterator<Item = usize> + Clone + use<>> {
    let mut found = [0usize; MAX_MSS_OPTIONS];
    let mut count = 0;
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            OPTION_END => break,
            OPTION_NOP => at += 1,
            _ => {
                let len = usize::from(*options.get(at + 1)?);
                if len < 2 || at + len > options.len() {
                    return None;
                }
                if kind == OPTION_MSS {
                    if len != OPTION_MSS_LEN {
                        return None;
                    }
                    *found.get_mut(count)? = at + 2;
                    count += 1;
                }
                at += len;
            }
        }
    }
    Some(found.into_iter().take(count))
}

/// Writes `value` into the 16 bits at `at` of the TCP header at `tcp.start`, and updates
/// the checksum for it (RFC 1624, eqn. 3; a field at an odd offset straddles two of the
/// checksum's words, so its bytes count swapped).
fn rewrite_word(packet: &mut [u8], tcp: &TcpAt, at: usize, value: u16) {
    let field = tcp.start + at;
    let old = [packet[field], packet[field + 1]];
    let new = value.to_be_bytes();
    let word = |bytes: [u8; 2]| {
        if at.is_multiple_of(2) {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        }
    };
    let check_at = tcp.start + TCP_CHECKSUM_AT;
    let check = u16::from_be_bytes([packet[check_at], packet[check_at + 1]]);
    let sum = u32::from(!check) + u32::from(!word(old)) + u32::from(word(new));
    packet[check_at..check_at + 2].copy_from_slice(&(!fold(sum)).to_be_bytes());
    packet[field..field + 2].copy_from_slice(&new);
}

/// Overwrites every MSS option of the SYN in `ip_packet` with `to(client's MSS)`, the
/// checksum kept right; returns the least MSS the client gave. `None` (nothing changed)
/// for anything but a SYN with a well-formed option list holding an MSS option.
fn rewrite_mss(ip_packet: &mut [u8], to: impl FnOnce(u16) -> u16) -> Option<u16> {
    let tcp = locate(ip_packet)?;
    if !tcp.syn {
        return None;
    }
    let options_at = tcp.start + TCP_HEADER_LEN;
    let options = ip_packet.get(options_at..tcp.start + tcp.header_len)?;
    let positions = mss_options(options)?;
    let least = positions
        .clone()
        .map(|at| u16::from_be_bytes([options[at], options[at + 1]]))
        .min()?;
    let value = to(least);
    for at in positions {
        rewrite_word(ip_packet, &tcp, TCP_HEADER_LEN + at, value);
    }
    Some(least)
}

/// The MSS of segments on the wire to a client: what its SYN said, at most what the link
/// carries (`link_mtu` less the IP and TCP headers, as smoltcp clamps it), at least
/// [`MIN_MSS`].
fn wire_mss(client: u16, link_mtu: usize, ipv6: bool) -> u16 {
    let link = link_mtu.saturating_sub(ip_header_len(ipv6) + TCP_HEADER_LEN);
    client
        .min(u16::try_from(link).unwrap_or(u16::MAX))
        .max(MIN_MSS)
}

fn ip_header_len(ipv6: bool) -> usize {
    if ipv6 { 40 } else { 20 }
}

/// The MSS smoltcp is told for a client whose segments carry `wire_mss`: the largest
/// multiple of it that fits a [`STACK_MTU`] packet, so GSO cuts no runt off each segment.
fn stack_mss(wire_mss: u16, ipv6: bool) -> u16 {
    let most = STACK_MTU - ip_header_len(ipv6) - TCP_HEADER_LEN;
    let wire = usize::from(wire_mss.max(MIN_MSS));
    u16::try_from(most / wire * wire).unwrap_or(wire_mss)
}

/// Raises the MSS of a client's SYN (an IP packet, before smoltcp reads it) so that
/// smoltcp writes large segments to that client; returns the MSS segments on the wire must
/// keep to. `None`, the SYN untouched, when it carries no MSS option (smoltcp then assumes
/// 536 and its segments need no offload) or does not parse.
pub fn raise_syn_mss(ip_packet: &mut [u8], link_mtu: usize) -> Option<u16> {
    let ipv6 = ip_packet.first().is_some_and(|b| b >> 4 == 6);
    let client = rewrite_mss(ip_packet, |client| {
        stack_mss(wire_mss(client, link_mtu, ipv6), ipv6)
    })?;
    Some(wire_mss(client, link_mtu, ipv6))
}

/// Puts the MSS the link carries (`link_mtu` less the headers) into smoltcp's SYN-ACK,
/// which advertises its own [`STACK_MTU`]: the client must never send us more than the
/// link carries. Returns whether the packet was a SYN with an MSS option.
pub fn lower_synack_mss(ip_packet: &mut [u8], link_mtu: usize) -> bool {
    let ipv6 = ip_packet.first().is_some_and(|b| b >> 4 == 6);
    let link = link_mtu.saturating_sub(ip_header_len(ipv6) + TCP_HEADER_LEN);
    let link = u16::try_from(link).unwrap_or(u16::MAX);
    rewrite_mss(ip_packet, |ours| ours.min(link)).is_some()
}

/// The offload for one packet smoltcp wrote to a client whose segments on the wire carry
/// at most `wire_mss` bytes (payload plus options, as an MSS option counts them), sent
/// behind a link-layer header of `l2_len` bytes. A longer payload gets GSO (TCPv4 or
/// TCPv6, segments of `wire_mss` less the options) with the checksum left to the kernel:
/// the checksum field then holds the folded pseudo-header sum over the whole segment's
/// length, which `tcp_gso_segment` adjusts for each piece. Anything else goes as it is
/// (smoltcp computed its checksum).
pub fn offload(ip_packet: &mut [u8], l2_len: usize, wire_mss: u16) -> VnetHeader {
    let Some(tcp) = locate(ip_packet) else {
        return VnetHeader::NONE;
    };
    let payload = ip_packet.len() - tcp.start - tcp.header_len;
    let gso_size = usize::from(wire_mss).saturating_sub(tcp.header_len - TCP_HEADER_LEN);
    let tcp_len = ip_packet.len() - tcp.start;
    let (Ok(gso_size), Ok(csum_start), Ok(hdr_len), Ok(tcp_len)) = (
        u16::try_from(gso_size),
        u16::try_from(l2_len + tcp.start),
        u16::try_from(l2_len + tcp.start + tcp.header_len),
        u32::try_from(tcp_len),
    ) else {
        return VnetHeader::NONE;
    };
    if gso_size == 0 || payload <= usize::from(gso_size) {
        return VnetHeader::NONE;
    }
    let Some(pseudo) = pseudo_header_sum(tcp.src, tcp.dst, tcp_len) else {
        return VnetHeader::NONE;
    };
    let check_at = tcp.start + TCP_CHECKSUM_AT;
    ip_packet[check_at..check_at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    let gso_type = match tcp.src {
        IpAddr::V4(_) => VIRTIO_NET_HDR_GSO_TCPV4,
        IpAddr::V6(_) => VIRTIO_NET_HDR_GSO_TCPV6,
    };
    VnetHeader(virtio_net_hdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: gso_type as u8,
        hdr_len,
        gso_size,
        csum_start,
        csum_offset: TCP_CHECKSUM_AT as u16,
    })
}

#[cfg(test)]
mod tests;
