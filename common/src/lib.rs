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
    /// Hash: established flows, added by the daemon once their handshake completed.
    pub const FLOWS: &str = "FLOWS";
    /// LRU hash: flows whose SYN the XDP program redirected, until the daemon adopts
    /// them into `FLOWS` (or forgets them). SYN floods churn only this one.
    pub const HALF_OPEN: &str = "HALF_OPEN";
    /// Per-CPU array of [`Counter`](super::Counter) values.
    pub const COUNTERS: &str = "COUNTERS";
    /// Hash: the attenuation table mirrored for operators ([`UserKey`](super::UserKey)).
    pub const USERS: &str = "USERS";
    /// Hash: live POP3 sessions by flow ([`SessionKey`](super::SessionKey)).
    pub const SESSIONS: &str = "SESSIONS";
    /// Array of one [`AttachInfo`](super::AttachInfo): where and by whom the program runs.
    pub const INFO: &str = "INFO";
    /// Array of one [`DaemonStats`](super::DaemonStats), refreshed every second.
    pub const STATS: &str = "STATS";
    /// LPM trie: IPv4 destinations never intercepted (loopback, the router's own, ...).
    pub const EXCLUDED_V4: &str = "EXCLUDED_V4";
    /// LPM trie: IPv6 destinations never intercepted.
    pub const EXCLUDED_V6: &str = "EXCLUDED_V6";

    /// Every map the daemon pins, for status and clean-up.
    pub const ALL: [&str; 14] = [
        XSKS,
        PORTS,
        SERVERS_V4,
        SERVERS_V6,
        CONFIG,
        FLOWS,
        HALF_OPEN,
        COUNTERS,
        USERS,
        SESSIONS,
        INFO,
        STATS,
        EXCLUDED_V4,
        EXCLUDED_V6,
    ];
}

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "pop3_intercept";
/// Name of the TC classifier in the eBPF object (the TC dataplane).
pub const TC_PROGRAM: &str = "pop3_intercept_tc";

/// Most RX queues the XSKMAP can address.
pub const MAX_QUEUES: u32 = 64;
/// Most intercepted ports.
pub const MAX_PORTS: u32 = 64;
/// Most mail-server prefixes per address family.
pub const MAX_SERVER_PREFIXES: u32 = 1024;
/// Most never-intercepted prefixes per address family (fixed ranges plus the router's own
/// addresses).
pub const MAX_EXCLUDED_PREFIXES: u32 = 1024;
/// Default capacity of `FLOWS`; the daemon sizes it to `--max-conns` when larger, so an
/// established flow always has room and is never evicted.
pub const MAX_FLOWS: u32 = 65536;
/// Most half-open flows the XDP program remembers (LRU: a flood evicts only these).
pub const MAX_HALF_OPEN: u32 = 65536;

/// Global switches of the XDP program, in the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Non-zero: only destinations inside `SERVERS_V4`/`SERVERS_V6` are intercepted.
    /// Zero: any destination on an intercepted port is.
    pub server_filter: u32,
    /// TC dataplane: the daemon's TAP device, where chosen skbs are redirected. Zero
    /// (no TAP yet, or the XDP dataplane): the TC program passes everything.
    pub redirect_ifindex: u32,
    /// TC classifier attached through netlink (which outlives the daemon): when the
    /// daemon last said it is alive (`bpf_ktime_get_ns()` clock). The classifier passes
    /// everything once it is older than [`HEARTBEAT_GRACE_NS`]. Zero: not checked (a TCX
    /// link goes with the daemon by itself).
    pub heartbeat_ns: u64,
}

/// How long a netlink-attached TC classifier keeps redirecting after the daemon's last
/// heartbeat (it writes one at least every second while its loop runs).
pub const HEARTBEAT_GRACE_NS: u64 = 3_000_000_000;

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

impl FlowKey {
    /// The key of a client flow, as the XDP program builds it; `None` when the two
    /// addresses are of different families.
    pub fn new(client: core::net::SocketAddr, server: core::net::SocketAddr) -> Option<Self> {
        use core::net::IpAddr;
        let mut key = FlowKey {
            client_port: client.port(),
            server_port: server.port(),
            ..FlowKey::default()
        };
        match (client.ip(), server.ip()) {
            (IpAddr::V4(c), IpAddr::V4(s)) => {
                key.client_addr[..4].copy_from_slice(&c.octets());
                key.server_addr[..4].copy_from_slice(&s.octets());
                key.family = FAMILY_V4;
            }
            (IpAddr::V6(c), IpAddr::V6(s)) => {
                key.client_addr = c.octets();
                key.server_addr = s.octets();
                key.family = FAMILY_V6;
            }
            _ => return None,
        }
        Some(key)
    }
}

/// What the XDP program remembers of a redirected flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns()`) when the SYN was seen
    /// (`HALF_OPEN`) or the handshake completed (`FLOWS`).
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
    /// SYNs whose source's route back leaves through another interface (or none): a
    /// spoofed source, passed to the kernel (and its rp_filter).
    ReversePathFailed = 4,
    /// SYNs from a client the router has no neighbour entry for, passed to the kernel
    /// (which resolves one; the client's retry is intercepted).
    NoNeighbour = 5,
}

impl Counter {
    /// Number of slots in the `COUNTERS` array.
    pub const COUNT: u32 = 6;
    /// All counters, in slot order.
    pub const ALL: [Counter; 6] = [
        Counter::FramesSeen,
        Counter::Matched,
        Counter::Redirected,
        Counter::FallbackPassed,
        Counter::ReversePathFailed,
        Counter::NoNeighbour,
    ];

    /// Name used in `status` output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::FramesSeen => "frames_seen",
            Counter::Matched => "matched",
            Counter::Redirected => "redirected",
            Counter::FallbackPassed => "fallback_passed",
            Counter::ReversePathFailed => "reverse_path_failed",
            Counter::NoNeighbour => "no_neighbour",
        }
    }

    /// One line saying what the counter counts, for metrics' help text.
    pub const fn help(self) -> &'static str {
        match self {
            Counter::FramesSeen => "every frame the program ran on",
            Counter::Matched => "TCP frames to an intercepted port and server",
            Counter::Redirected => "matched frames handed to an AF_XDP socket",
            Counter::FallbackPassed => {
                "matched frames with no AF_XDP socket on their queue, passed to the kernel (fail-open)"
            }
            Counter::ReversePathFailed => {
                "SYNs whose route back leaves through another interface (spoofed source), passed to the kernel"
            }
            Counter::NoNeighbour => {
                "SYNs from clients without a neighbour entry on the router, passed to the kernel"
            }
        }
    }
}

impl From<Counter> for u32 {
    /// The counter's slot in the `COUNTERS` array.
    fn from(counter: Counter) -> u32 {
        counter as u32
    }
}

/// Room for an address and port as text, NUL included: `[ffff:...:ffff]:65535` is 47.
pub const ADDR_TEXT: usize = 48;
/// Room for a username as text, NUL included; longer names are not mirrored.
pub const USER_TEXT: usize = 64;
/// Room for a state or mode word as text, NUL included.
pub const WORD_TEXT: usize = 16;

/// Text fields are `c_char` arrays: the daemon marks the object's `i8` BTF type as a
/// character type before loading, so `bpftool map dump` prints them as strings. Use
/// `c_char` for text only.
pub type Text<const N: usize> = [core::ffi::c_char; N];

/// Most users mirrored in `USERS` unless `--mirror-size` says otherwise.
pub const DEFAULT_MIRRORED_USERS: u32 = 65536;
/// Most sessions mirrored in `SESSIONS`.
pub const MAX_MIRRORED_SESSIONS: u32 = 65536;

/// A user of a mail server, as text (e.g. `203.0.113.2:110`, `alice`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserKey {
    pub server: Text<ADDR_TEXT>,
    pub user: Text<USER_TEXT>,
}

/// What operators see of a user. Times are unix seconds, 0 for never. Never a
/// password or a verifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserValue {
    /// `attenuated`, `pass-through` or `in-session`.
    pub state: Text<WORD_TEXT>,
    /// The subscriber address and port of the user's last session.
    pub last_client: Text<ADDR_TEXT>,
    /// Until when checks are answered locally (0: they are not).
    pub attenuated_until: u64,
    /// When the server last said the mailbox is empty.
    pub last_verified_empty: u64,
    /// The last login attempt.
    pub last_check: u64,
    pub checks_answered_locally: u64,
    pub checks_passed_through: u64,
    /// Messages the edge cache holds for the user (0 with the cache off).
    pub cached_messages: u64,
    /// Bytes of those messages.
    pub cached_bytes: u64,
}

/// A client flow as tcpdump shows it: `198.51.100.2:40000` to `203.0.113.2:110`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub client: Text<ADDR_TEXT>,
    pub server: Text<ADDR_TEXT>,
}

/// The user and POP3 state of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionValue {
    pub user: Text<USER_TEXT>,
    /// `authorization`, `local`, `relayed`, `tunnel` or `closed`.
    pub state: Text<WORD_TEXT>,
}

/// The attach point, for `status` and `detach`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    pub iface: Text<WORD_TEXT>,
    /// `auto`, `native` or `skb`.
    pub mode: Text<WORD_TEXT>,
    pub ifindex: u32,
    /// The daemon's process id.
    pub pid: u32,
    /// When it attached, unix seconds.
    pub attached_at: u64,
}

/// The engine's and dataplane's counters, published for `status` and bpftool.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct DaemonStats {
    pub checks_seen: u64,
    pub checks_answered_locally: u64,
    pub checks_passed_through: u64,
    pub upstream_logins_avoided: u64,
    pub sessions_active: u64,
    pub table_entries: u64,
    pub gc_runs: u64,
    pub users_not_mirrored: u64,
    /// When these were written, unix seconds.
    pub updated_at: u64,
    /// The patent's n now, seconds (moved by load with `--interval-max`).
    pub interval_secs: u64,
    /// Decisions of the optional rules, named by [`RULE_DECISIONS`].
    pub rule_decisions: [u64; RULE_DECISIONS.len()],
    /// The edge cache (all 0 with it off): RETRs and TOPs answered from the edge and
    /// relayed after a lookup, message bytes served from the edge, users evicted for
    /// room, users dropped because the server disagreed, what it holds now.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_bytes_served: u64,
    pub cache_evictions: u64,
    pub cache_sync_mismatches: u64,
    pub cache_messages: u64,
    pub cache_bytes: u64,
    /// The edge cache's prefetch now, an index into [`PREFETCH_STATES`] (0: off).
    pub prefetch_state: u64,
    /// Prefetch sessions with the mail server that ended, and those that failed.
    pub prefetch_runs: u64,
    pub prefetch_failures: u64,
    /// Messages and their bytes the prefetch copied into the edge cache.
    pub prefetch_messages: u64,
    pub bytes_prefetched: u64,
}

/// What [`DaemonStats::prefetch_state`] means: off, or why it may run now or not.
pub const PREFETCH_STATES: [&str; 5] = ["off", "lull", "busy-hour", "outside-window", "loaded"];

/// The optional attenuation rules' decisions as (rule, decision), in the order of
/// [`DaemonStats::rule_decisions`].
pub const RULE_DECISIONS: [(&str, &str); 8] = [
    ("one_in_m", "passed"),
    ("fast_check", "rewarded"),
    ("fast_check", "penalized"),
    ("periodicity", "held"),
    ("periodicity", "passed"),
    ("login_delay", "local"),
    ("login_delay", "refused"),
    ("load", "held"),
];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::UserKey {}
    unsafe impl aya::Pod for super::UserValue {}
    unsafe impl aya::Pod for super::SessionKey {}
    unsafe impl aya::Pod for super::SessionValue {}
    unsafe impl aya::Pod for super::AttachInfo {}
    unsafe impl aya::Pod for super::DaemonStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_keys_are_laid_out_as_the_xdp_program_builds_them() {
        let key = FlowKey::new(
            "198.51.100.2:40000".parse().unwrap(),
            "203.0.113.2:110".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(&key.client_addr[..4], &[198, 51, 100, 2]);
        assert_eq!(&key.client_addr[4..], &[0; 12]);
        assert_eq!((key.client_port, key.server_port), (40000, 110));
        let v6 = FlowKey::new(
            "[2001:db8:1::2]:40000".parse().unwrap(),
            "[2001:db8:2::2]:110".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(v6.family, FAMILY_V6);
        assert!(
            FlowKey::new(
                "198.51.100.2:1".parse().unwrap(),
                "[2001:db8:2::2]:110".parse().unwrap()
            )
            .is_none()
        );
    }
}
