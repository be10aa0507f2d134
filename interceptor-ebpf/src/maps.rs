//! The maps both programs share with the daemon. They are pinned under `--pin-dir`, so
//! their names are the operator's surface (see `common::map_names`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, XskMap},
    macros::btf_map,
};
use common::{
    AttachInfo, Config, Counter, DEFAULT_MIRRORED_USERS, DaemonStats, FlowKey, FlowValue,
    MAX_EXCLUDED_PREFIXES, MAX_FLOWS, MAX_HALF_OPEN, MAX_MIRRORED_SESSIONS, MAX_PORTS, MAX_QUEUES,
    MAX_SERVER_PREFIXES, SessionKey, SessionValue, UserKey, UserValue,
};

#[btf_map]
pub static XSKS: XskMap<{ MAX_QUEUES as usize }> = XskMap::new();

#[btf_map]
pub static PORTS: HashMap<u16, u8, { MAX_PORTS as usize }> = HashMap::new();

#[btf_map]
pub static SERVERS_V4: LpmTrie<[u8; 4], u8, { MAX_SERVER_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static SERVERS_V6: LpmTrie<[u8; 16], u8, { MAX_SERVER_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static EXCLUDED_V4: LpmTrie<[u8; 4], u8, { MAX_EXCLUDED_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static EXCLUDED_V6: LpmTrie<[u8; 16], u8, { MAX_EXCLUDED_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static FLOWS: HashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }> = HashMap::new();

#[btf_map]
pub static HALF_OPEN: LruHashMap<FlowKey, FlowValue, { MAX_HALF_OPEN as usize }> =
    LruHashMap::new();

#[btf_map]
pub static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

// The operator's maps: written by the daemon, read with bpftool and `status`. They live
// in this object so that their key and value types are in its BTF.

#[btf_map]
pub static USERS: HashMap<UserKey, UserValue, { DEFAULT_MIRRORED_USERS as usize }> = HashMap::new();

#[btf_map]
pub static SESSIONS: HashMap<SessionKey, SessionValue, { MAX_MIRRORED_SESSIONS as usize }> =
    HashMap::new();

#[btf_map]
pub static INFO: Array<AttachInfo, 1> = Array::new();

#[btf_map]
pub static STATS: Array<DaemonStats, 1> = Array::new();
