//! XDP program for the subscriber-facing interface.
//!
//! TCP segments to an intercepted port (and, when configured, to a mail-server prefix)
//! are redirected into the AF_XDP socket bound to the frame's RX queue. A flow is
//! taken over only from its SYN on: segments of a connection that existed before the
//! daemon attached keep going to the kernel, so attaching never breaks a live session.
//! Every miss, every malformed or truncated frame and every frame without a socket on
//! its queue is `XDP_PASS`: this program never drops, and a dead daemon means traffic
//! flows to the server as if we were not there (fail-open).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, XskMap},
    helpers::bpf_ktime_get_ns,
    macros::{btf_map, xdp},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use common::{
    AttachInfo, Config, Counter, DEFAULT_MIRRORED_USERS, DaemonStats, FAMILY_V4, FAMILY_V6,
    FlowKey, FlowValue, MAX_FLOWS, MAX_MIRRORED_SESSIONS, MAX_PORTS, MAX_QUEUES,
    MAX_SERVER_PREFIXES, SessionKey, SessionValue, UserKey, UserValue,
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
static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
static FLOWS: LruHashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }> = LruHashMap::new();

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
    if !flow.is_syn && FLOWS.get_ptr(&flow.key).is_none() {
        // A connection that started before we attached: leave it with the kernel.
        return Ok(xdp_action::XDP_PASS);
    }
    count(Counter::Matched);
    // SAFETY: ctx.ctx points at the live xdp_md for this invocation.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    match XSKS.redirect(queue, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            count(Counter::Redirected);
            if flow.is_syn {
                // Remembered only once a socket took the SYN: a flow the kernel got
                // (no socket yet on this queue) stays with the kernel to its end.
                let value = FlowValue {
                    // SAFETY: helper without preconditions.
                    first_seen_ns: unsafe { bpf_ktime_get_ns() },
                };
                // A full LRU evicts the oldest flow; a failed insert leaves this one to
                // the kernel after its SYN, and the client's retry will come back here.
                let _ = FLOWS.insert(&flow.key, &value, 0);
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

/// Parses Ethernet, one VLAN tag, IPv4 or IPv6, and TCP. `Ok(None)` for anything that is
/// not an unfragmented TCP segment; `Err` for a truncated frame.
#[inline(always)]
fn parse_flow(ctx: &XdpContext) -> Result<Option<Flow>, ()> {
    let mut offset = ETH_HDR_LEN;
    let mut ether_type = u16::from_be(read::<u16>(ctx, 12)?);
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = u16::from_be(read::<u16>(ctx, offset + 2)?);
        offset += VLAN_HDR_LEN;
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

/// True when the flow goes to an intercepted port and, if a server filter is set, to a
/// configured mail-server prefix.
#[inline(always)]
fn is_intercepted(key: &FlowKey) -> bool {
    // SAFETY: PORTS is only read here; the value is plain data.
    if unsafe { PORTS.get(key.server_port) }.is_none() {
        return false;
    }
    let filter = CONFIG
        .get(0)
        .is_some_and(|config| config.server_filter != 0);
    if !filter {
        return true;
    }
    if key.family == FAMILY_V4 {
        let mut data = [0u8; 4];
        data.copy_from_slice(&key.server_addr[..4]);
        SERVERS_V4.get(&Key::new(32, data)).is_some()
    } else {
        SERVERS_V6.get(&Key::new(128, key.server_addr)).is_some()
    }
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
