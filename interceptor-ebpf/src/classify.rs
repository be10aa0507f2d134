//! The rules both programs apply, whatever carries the frame (an XDP buffer or a TC skb):
//! parsing, which flows are intercepted, which are ours already, and the router's own
//! view of a new flow's client (reverse-path check and MACs from the FIB).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_ktime_get_ns, generated::bpf_fib_lookup},
    maps::lpm_trie::Key,
};
use common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, FlowValue};
use core::mem::offset_of;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

use crate::maps::{
    CONFIG, COUNTERS, EXCLUDED_V4, EXCLUDED_V6, FLOWS, HALF_OPEN, PORTS, SERVERS_V4, SERVERS_V6,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A frame as a program sees it, from its Ethernet header on.
pub trait Frame {
    /// Reads a `T` at `offset` from the start of the frame, bounds-checked.
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()>;
    /// The interface the frame arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// The program's context, for `bpf_fib_lookup`.
    fn context(&self) -> *mut core::ffi::c_void;
}

/// A frame of a flow this interceptor takes over. Aligned, and without an `Option`
/// around the MACs: copies of an unaligned struct compile to pointer shifts the
/// verifier refuses.
#[repr(C, align(8))]
pub struct Taken {
    pub flow: Flow,
    /// For a SYN (`flow.is_syn`), `[router MAC, client MAC]`: the Ethernet header the
    /// daemon mirrors for every reply of the flow. Zero otherwise.
    pub macs: [u8; 12],
}

/// `Ok(Some)` when the frame belongs to a flow we take over: an intercepted destination,
/// and either a SYN that passed the reverse-path check or a flow already ours. A
/// connection that started before we attached stays with the kernel. `inline_tags` is
/// how many VLAN tags may still be in the frame's data.
#[inline(always)]
pub fn classify<F: Frame>(ctx: &F, inline_tags: u8) -> Result<Option<Taken>, ()> {
    let Some(flow) = parse_flow(ctx, inline_tags)? else {
        return Ok(None);
    };
    if !is_intercepted(&flow.key) {
        return Ok(None);
    }
    if !flow.is_syn && FLOWS.get_ptr(&flow.key).is_none() && HALF_OPEN.get_ptr(&flow.key).is_none()
    {
        return Ok(None);
    }
    count(Counter::Matched);
    // Replies for this flow go where the router would send them: the client's MAC from
    // the kernel's own FIB and neighbour table, never what the SYN claims.
    let macs = if flow.is_syn {
        match router_view(ctx, &flow.key) {
            Ok(macs) => macs,
            Err(counter) => {
                count(counter);
                return Ok(None);
            }
        }
    } else {
        [0; 12]
    };
    Ok(Some(Taken { flow, macs }))
}

/// After the daemon got a SYN: its flow is half-open until the handshake completes.
/// Remembered only once the daemon took the SYN: a flow the kernel got stays with the
/// kernel to its end.
#[inline(always)]
pub fn remember(taken: &Taken) {
    if !taken.flow.is_syn {
        return;
    }
    let value = FlowValue {
        // SAFETY: helper without preconditions.
        first_seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    // A full LRU evicts the oldest half-open flow; a failed insert leaves this one to
    // the kernel after its SYN, and the client's retry comes back here.
    let _ = HALF_OPEN.insert(&taken.flow.key, &value, 0);
}

/// The TCP flow of a frame, with whether it opens a connection.
pub struct Flow {
    /// The flow as the client sent it.
    pub key: FlowKey,
    /// A plain SYN: the only segment that may start a flow of ours.
    pub is_syn: bool,
}

/// Parses Ethernet, up to two VLAN tags, IPv4 or IPv6, and TCP. `Ok(None)` for anything
/// that is not an unfragmented TCP segment; `Err` for a truncated frame. Header layouts
/// come from `network-types`; headers with enum fields (an IP protocol, an EtherType) are
/// read field by field as bytes, since hostile frames may hold values no variant has.
#[inline(always)]
fn parse_flow<F: Frame>(ctx: &F, inline_tags: u8) -> Result<Option<Flow>, ()> {
    let mut offset = EthHdr::LEN;
    let mut ether_type = u16::from_be(ctx.read::<u16>(offset_of!(EthHdr, ether_type))?);
    // Up to two tags (802.1ad QinQ: outer S-tag, inner C-tag), counting one the kernel
    // already took into the skb's metadata; a third is not ours.
    if inline_tags >= 1 && (ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD) {
        ether_type = u16::from_be(ctx.read::<u16>(offset + offset_of!(VlanHdr, eth_type))?);
        offset += VlanHdr::LEN;
        if inline_tags >= 2 && (ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD) {
            ether_type = u16::from_be(ctx.read::<u16>(offset + offset_of!(VlanHdr, eth_type))?);
            offset += VlanHdr::LEN;
        }
    }
    let mut key = FlowKey::default();
    match ether_type {
        ETH_P_IPV4 => {
            let version_ihl: u8 = ctx.read(offset + offset_of!(Ipv4Hdr, vihl))?;
            let ihl = usize::from(version_ihl & 0x0f) * 4;
            if version_ihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
                return Ok(None);
            }
            // Any fragment, first or later, has no complete TCP header we could trust.
            let frag = u16::from_be(ctx.read::<u16>(offset + offset_of!(Ipv4Hdr, frags))?);
            let proto: u8 = ctx.read(offset + offset_of!(Ipv4Hdr, proto))?;
            if frag & 0x3fff != 0 || proto != IPPROTO_TCP {
                return Ok(None);
            }
            let src: [u8; 4] = ctx.read(offset + offset_of!(Ipv4Hdr, src_addr))?;
            let dst: [u8; 4] = ctx.read(offset + offset_of!(Ipv4Hdr, dst_addr))?;
            key.client_addr[..4].copy_from_slice(&src);
            key.server_addr[..4].copy_from_slice(&dst);
            key.family = FAMILY_V4;
            offset += ihl;
        }
        ETH_P_IPV6 => {
            // Extension headers are rare on POP3 and not worth parsing here: pass them.
            let version = ctx.read::<u8>(offset + offset_of!(Ipv6Hdr, vcf))? >> 4;
            if version != 6
                || ctx.read::<u8>(offset + offset_of!(Ipv6Hdr, next_hdr))? != IPPROTO_TCP
            {
                return Ok(None);
            }
            key.client_addr = ctx.read(offset + offset_of!(Ipv6Hdr, src_addr))?;
            key.server_addr = ctx.read(offset + offset_of!(Ipv6Hdr, dst_addr))?;
            key.family = FAMILY_V6;
            offset += Ipv6Hdr::LEN;
        }
        _ => return Ok(None),
    }
    // One bounds check for the whole minimal TCP header, then reads from the copy: the
    // verifier cannot follow a variable (IHL-based) offset through separate checks.
    let tcp: TcpHdr = ctx.read(offset)?;
    if usize::from(tcp.doff()) * 4 < TcpHdr::LEN {
        return Ok(None);
    }
    key.client_port = u16::from_be_bytes(tcp.source);
    key.server_port = u16::from_be_bytes(tcp.dest);
    Ok(Some(Flow {
        key,
        // A plain SYN: SYN|FIN, SYN|RST and friends open nothing.
        is_syn: tcp.syn() == 1 && tcp.ack() == 0 && tcp.fin() == 0 && tcp.rst() == 0,
    }))
}

/// True when the flow goes to an intercepted port, to a configured mail-server prefix (if
/// a server filter is set), and not to an excluded destination (loopback, the router's own
/// addresses, ...: never a proxy into the router itself).
#[inline(always)]
fn is_intercepted(key: &FlowKey) -> bool {
    // SAFETY: PORTS is only read here; the value is plain data.
    if unsafe { PORTS.get(key.server_port) }.is_none() {
        return false;
    }
    let filter = CONFIG
        .get(0)
        .is_some_and(|config| config.server_filter != 0);
    if key.family == FAMILY_V4 {
        let mut data = [0u8; 4];
        data.copy_from_slice(&key.server_addr[..4]);
        let key = Key::new(32, data);
        (!filter || SERVERS_V4.get(&key).is_some()) && EXCLUDED_V4.get(&key).is_none()
    } else {
        let key = Key::new(128, key.server_addr);
        (!filter || SERVERS_V6.get(&key).is_some()) && EXCLUDED_V6.get(&key).is_none()
    }
}

/// Reverse-path check and link-layer view of a new flow's client, from the kernel's FIB
/// (`bpf_fib_lookup` of the reply direction, as if it arrived here to be forwarded).
/// `Ok([router MAC, client MAC])` when the route back to the client leaves through this
/// interface and its neighbour entry is valid. A route through another interface fails
/// the reverse-path check: XDP runs before rp_filter, so a spoofed source must not be
/// taken over. Without a neighbour entry the kernel gets the SYN (and resolves one).
#[inline(always)]
fn router_view<F: Frame>(ctx: &F, key: &FlowKey) -> Result<[u8; 12], Counter> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let ingress = ctx.ingress_ifindex();
    p.l4_protocol = IPPROTO_TCP;
    p.sport = key.server_port.to_be();
    p.dport = key.client_port.to_be();
    p.ifindex = ingress;
    p.__bindgen_anon_1.tot_len = 40;
    if key.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(first4(&key.server_addr));
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(first4(&key.client_addr));
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(&key.server_addr);
        p.__bindgen_anon_4.ipv6_dst = words(&key.client_addr);
    }
    // SAFETY: `p` is a live, fully initialised bpf_fib_lookup of the size passed.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.context(),
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if p.ifindex != ingress {
        return Err(Counter::ReversePathFailed);
    }
    match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&p.smac);
            macs[6..].copy_from_slice(&p.dmac);
            Ok(macs)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Counter::NoNeighbour),
        _ => Err(Counter::ReversePathFailed),
    }
}

#[inline(always)]
fn first4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// An IPv6 address as the four native-endian words `bpf_fib_lookup` holds it in.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, word) in out.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
    }
    out
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot: no other program instance writes it concurrently.
        unsafe { *slot += 1 };
    }
}
