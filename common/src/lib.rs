//! Types shared by the XDP program (`interceptor-ebpf`) and the daemon (`interceptor-user`).
//!
//! Everything that crosses the kernel/user boundary is defined here once: the layout of
//! map keys and values, the map names (which are also the pin file names) and the
//! defaults. The crate is `#![no_std]` so the eBPF side can use it; the `user` feature
//! adds the `aya::Pod` impls the daemon needs to read and write the maps.
#![no_std]

/// Default folder (on bpffs) where the maps are pinned.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/pop3-interceptor";

/// Default intercepted TCP port (POP3, RFC 1939).
pub const DEFAULT_POP3_PORT: u16 = 110;

/// Names of the maps in the eBPF object. BPF object names are at most 15 bytes; the
/// same names are used as pin file names under the pin folder.
pub mod map_names {
    /// XSKMAP: RX queue index -> AF_XDP socket.
    pub const XSKS: &str = "XSKS";
    /// Hash: intercepted destination ports.
    pub const PORTS: &str = "PORTS";
    /// LPM trie: IPv4 mail-server prefixes.
    pub const SERVERS_V4: &str = "SERVERS_V4";
    /// LPM trie: IPv6 mail-server prefixes.
    pub const SERVERS_V6: &str = "SERVERS_V6";
    /// Array of one [`Config`](super::Config).
    pub const CONFIG: &str = "CONFIG";
    /// LRU hash: flows the XDP program has started redirecting.
    pub const FLOWS: &str = "FLOWS";
    /// Per-CPU array of [`Counter`](super::Counter) values.
    pub const COUNTERS: &str = "COUNTERS";

    /// Every map the daemon pins, for status and clean-up.
    pub const ALL: [&str; 7] = [XSKS, PORTS, SERVERS_V4, SERVERS_V6, CONFIG, FLOWS, COUNTERS];
}

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "pop3_intercept";

/// Most RX queues the XSKMAP can address.
pub const MAX_QUEUES: u32 = 64;
/// Most intercepted ports.
pub const MAX_PORTS: u32 = 64;
/// Most mail-server prefixes per address family.
pub const MAX_SERVER_PREFIXES: u32 = 1024;
/// Most flows tracked by the XDP program at once (LRU: the oldest are evicted).
pub const MAX_FLOWS: u32 = 65536;

/// Global switches of the XDP program, in the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Non-zero: only destinations inside `SERVERS_V4`/`SERVERS_V6` are intercepted.
    /// Zero: any destination on an intercepted port is.
    pub server_filter: u32,
}

/// Address family tag in [`FlowKey`].
pub const FAMILY_V4: u8 = 4;
/// Address family tag in [`FlowKey`].
pub const FAMILY_V6: u8 = 6;

/// A TCP flow as the client sent it. IPv4 addresses use the first 4 bytes of the
/// 16-byte fields, the rest zero; ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// What the XDP program remembers of a redirected flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `bpf_ktime_get_ns()` when the SYN was seen.
    pub first_seen_ns: u64,
}

/// Slots of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every frame the program ran on.
    FramesSeen = 0,
    /// TCP frames to an intercepted port and server.
    Matched = 1,
    /// Matched frames handed to an AF_XDP socket.
    Redirected = 2,
    /// Matched frames with no AF_XDP socket on their queue, passed to the kernel (fail-open).
    FallbackPassed = 3,
}

impl Counter {
    /// Number of slots in the `COUNTERS` array.
    pub const COUNT: u32 = 4;
    /// All counters, in slot order.
    pub const ALL: [Counter; 4] = [
        Counter::FramesSeen,
        Counter::Matched,
        Counter::Redirected,
        Counter::FallbackPassed,
    ];

    /// Name used in `status` output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::FramesSeen => "frames_seen",
            Counter::Matched => "matched",
            Counter::Redirected => "redirected",
            Counter::FallbackPassed => "fallback_passed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
}
