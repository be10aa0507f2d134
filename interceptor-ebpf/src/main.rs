//! XDP program for the subscriber-facing interface.
//!
//! TCP segments to an intercepted port (and, when configured, to a mail-server prefix)
//! are redirected into the AF_XDP socket bound to the frame's RX queue. A flow is
//! taken over only from its SYN on: segments of a connection that existed before the
//! daemon attached keep going to the kernel, so attaching never breaks a live session.
//! A SYN's flow goes into `HALF_OPEN` (LRU); the daemon moves it to `FLOWS` once the
//! handshake completes, so a SYN flood can only evict other half-open flows, never a
//! live session. A SYN is taken over only if the kernel's FIB routes its source back
//! out of this interface (XDP runs before rp_filter), and its Ethernet header is
//! rewritten to the router's own view (FIB + neighbour table) before the daemon sees it.
//! Destinations in `EXCLUDED_V4`/`EXCLUDED_V6` (loopback, the router itself...) are
//! never taken over. Every miss, every malformed or truncated frame and every frame
//! without a socket on its queue is `XDP_PASS`: this program never drops, and a dead
//! daemon means traffic flows to the server as if we were not there (fail-open).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, XskMap},
    helpers::bpf_ktime_get_ns,
    helpers::generated::bpf_fib_lookup,
    macros::{btf_map, xdp},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use common::{
    AttachInfo, Config, Counter, DEFAULT_MIRRORED_USERS, DaemonStats, FAMILY_V4, FAMILY_V6,
    FlowKey, FlowValue, MAX_EXCLUDED_PREFIXES, MAX_FLOWS, MAX_HALF_OPEN, MAX_MIRRORED_SESSIONS,
    MAX_PORTS, MAX_QUEUES, MAX_SERVER_PREFIXES, SessionKey, SessionValue, UserKey, UserValue,
};

#[btf_map]
static XSKS: XskMap<{ MAX_QUEUES as usize }> = XskMap::new();

#[btf_map]
static PORTS: HashMap<u16, u8, { MAX_PORTS as usize }> = HashMap::new();

#[btf_map]
static SERVERS_V4: LpmTrie<[u8; 4], u8, { MAX_SERVER_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
static SERVERS_V6: LpmTrie<[u8; 16], u8, { MAX_SERVER_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
static EXCLUDED_V4: LpmTrie<[u8; 4], u8, { MAX_EXCLUDED_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
static EXCLUDED_V6: LpmTrie<[u8; 16], u8, { MAX_EXCLUDED_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
static FLOWS: HashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }> = HashMap::new();

#[btf_map]
static HALF_OPEN: LruHashMap<FlowKey, FlowValue, { MAX_HALF_OPEN as usize }> = LruHashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

// The operator's maps: written by the daemon, read with bpftool and `status`. They live
// in this object so that their key and value types are in its BTF.

#[btf_map]
static USERS: HashMap<UserKey, UserValue, { DEFAULT_MIRRORED_USERS as usize }> = HashMap::new();

#[btf_map]
static SESSIONS: HashMap<SessionKey, SessionValue, { MAX_MIRRORED_SESSIONS as usize }> =
    HashMap::new();

#[btf_map]
static INFO: Array<AttachInfo, 1> = Array::new();

#[btf_map]
static STATS: Array<DaemonStats, 1> = Array::new();

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HDR_LEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const TCP_MIN_HDR_LEN: usize = 20;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_RST: u8 = 0x04;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[xdp]
pub fn pop3_intercept(ctx: XdpContext) -> u32 {
    count(Counter::FramesSeen);
    match try_pop3_intercept(&ctx) {
        Ok(action) => action,
        // A frame we cannot parse is not ours to judge: hand it to the kernel.
        Err(()) => xdp_action::XDP_PASS,
    }
}

fn try_pop3_intercept(ctx: &XdpContext) -> Result<u32, ()> {
    let Some(flow) = parse_flow(ctx)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    if !is_intercepted(&flow.key) {
        return Ok(xdp_action::XDP_PASS);
    }
    if !flow.is_syn && FLOWS.get_ptr(&flow.key).is_none() && HALF_OPEN.get_ptr(&flow.key).is_none()
    {
        // A connection that started before we attached: leave it with the kernel.
        return Ok(xdp_action::XDP_PASS);
    }
    count(Counter::Matched);
    // Replies for this flow go where the router would send them: the client's MAC from
    // the kernel's own FIB and neighbour table, never what the SYN claims.
    let macs = if flow.is_syn {
        match router_view(ctx, &flow.key) {
            Ok(macs) => Some(macs),
            Err(counter) => {
                count(counter);
                return Ok(xdp_action::XDP_PASS);
            }
        }
    } else {
        None
    };
    // SAFETY: ctx.ctx points at the live xdp_md for this invocation.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    match XSKS.redirect(queue, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            count(Counter::Redirected);
            if let Some(macs) = macs {
                // The daemon mirrors this header for every reply of the flow.
                write(ctx, 0, &macs)?;
            }
            if flow.is_syn {
                // Remembered only once a socket took the SYN: a flow the kernel got
                // (no socket yet on this queue) stays with the kernel to its end.
                let value = FlowValue {
                    // SAFETY: helper without preconditions.
                    first_seen_ns: unsafe { bpf_ktime_get_ns() },
                };
                // A full LRU evicts the oldest half-open flow; a failed insert leaves this
                // one to the kernel after its SYN, and the client's retry comes back here.
                let _ = HALF_OPEN.insert(&flow.key, &value, 0);
            }
            Ok(action)
        }
        Err(_) => {
            count(Counter::FallbackPassed);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// The TCP flow of a frame, with whether it opens a connection.
struct Flow {
    key: FlowKey,
    is_syn: bool,
}

/// Parses Ethernet, up to two VLAN tags, IPv4 or IPv6, and TCP. `Ok(None)` for anything
/// that is not an unfragmented TCP segment; `Err` for a truncated frame.
#[inline(always)]
fn parse_flow(ctx: &XdpContext) -> Result<Option<Flow>, ()> {
    let mut offset = ETH_HDR_LEN;
    let mut ether_type = u16::from_be(read::<u16>(ctx, 12)?);
    // Up to two tags (802.1ad QinQ: outer S-tag, inner C-tag); a third is not ours.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = u16::from_be(read::<u16>(ctx, offset + 2)?);
        offset += VLAN_HDR_LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            ether_type = u16::from_be(read::<u16>(ctx, offset + 2)?);
            offset += VLAN_HDR_LEN;
        }
    }
    let mut key = FlowKey::default();
    match ether_type {
        ETH_P_IPV4 => {
            let version_ihl: u8 = read(ctx, offset)?;
            let ihl = usize::from(version_ihl & 0x0f) * 4;
            if version_ihl >> 4 != 4 || ihl < 20 {
                return Ok(None);
            }
            // Any fragment, first or later, has no complete TCP header we could trust.
            let frag = u16::from_be(read::<u16>(ctx, offset + 6)?);
            if frag & 0x3fff != 0 || read::<u8>(ctx, offset + 9)? != IPPROTO_TCP {
                return Ok(None);
            }
            let src: [u8; 4] = read(ctx, offset + 12)?;
            let dst: [u8; 4] = read(ctx, offset + 16)?;
            key.client_addr[..4].copy_from_slice(&src);
            key.server_addr[..4].copy_from_slice(&dst);
            key.family = FAMILY_V4;
            offset += ihl;
        }
        ETH_P_IPV6 => {
            // Extension headers are rare on POP3 and not worth parsing here: pass them.
            if read::<u8>(ctx, offset)? >> 4 != 6 || read::<u8>(ctx, offset + 6)? != IPPROTO_TCP {
                return Ok(None);
            }
            key.client_addr = read(ctx, offset + 8)?;
            key.server_addr = read(ctx, offset + 24)?;
            key.family = FAMILY_V6;
            offset += IPV6_HDR_LEN;
        }
        _ => return Ok(None),
    }
    // One bounds check for the whole minimal TCP header, then reads from the copy: the
    // verifier cannot follow a variable (IHL-based) offset through separate checks.
    let tcp: [u8; TCP_MIN_HDR_LEN] = read(ctx, offset)?;
    let flags = tcp[13];
    if usize::from(tcp[12] >> 4) * 4 < TCP_MIN_HDR_LEN {
        return Ok(None);
    }
    key.client_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    key.server_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    Ok(Some(Flow {
        key,
        // A plain SYN: SYN|FIN, SYN|RST and friends open nothing.
        is_syn: flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_FIN | TCP_FLAG_RST) == TCP_FLAG_SYN,
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
fn router_view(ctx: &XdpContext, key: &FlowKey) -> Result<[u8; 12], Counter> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    // SAFETY: ctx.ctx points at the live xdp_md for this invocation.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
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
            ctx.ctx.cast(),
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

/// Writes `bytes` at `offset` from the start of the frame, bounds-checked for the verifier.
#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, offset: usize, bytes: &[u8; N]) -> Result<(), ()> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return Err(());
    }
    let dst = (start + offset) as *mut u8;
    // Byte by byte: a block copy compiles to pointer shifts the verifier refuses.
    for (i, byte) in bytes.iter().enumerate() {
        // SAFETY: the range was checked against data_end just above.
        unsafe { core::ptr::write_volatile(dst.add(i), *byte) };
    }
    Ok(())
}

/// Reads a `T` at `offset` from the start of the frame, bounds-checked for the verifier.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    // SAFETY: the range was checked against data_end just above; unaligned read.
    Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot: no other program instance writes it concurrently.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
