//! The classifier's `FLOWS` and `HALF_OPEN` maps as the dataplane keeps them: a flow moves
//! to `FLOWS` when its handshake completes and leaves both when it ends.
//!
//! Each dataplane worker has handles of its own (duplicated descriptors of the same maps)
//! and writes what its flows did once the last of it is [`SETTLE`] old, by each flow's
//! last event: a check that begins and ends in between costs one map update (its
//! `HALF_OPEN` entry's removal) instead of four, and a reused 4-tuple's new flow is never
//! forgotten by a late update for the old one.
//!
//! A new SYN of a 4-tuple can also reach the classifier, which puts it in `HALF_OPEN`,
//! while the old flow's entry is being removed and before the daemon has read the SYN:
//! the removal takes the new flow's entry, and its next segments would go to the real
//! server, which resets them. So a SYN the daemon accepts for a flow forgotten in the
//! last two writes puts the entry back ([`FlowMaps::readmit`]) before it is answered.

use std::{
    net::SocketAddr,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError};
use common::{FlowKey, FlowValue};

/// How long a flow's map updates may wait. Until its adoption an established flow is
/// redirected through `HALF_OPEN` (where a SYN flood could evict it, as during its
/// handshake); until it is forgotten an ended flow's stray segments reach the daemon,
/// which drops them, rather than the kernel.
pub const SETTLE: Duration = Duration::from_millis(50);

/// `FLOWS` and `HALF_OPEN`, and what is still to be written to them.
pub struct FlowMaps {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    half_open: HashMap<MapData, FlowKey, FlowValue>,
    /// Flows established (`true`) or ended (`false`) since the last write, by their last
    /// event; at most the flows of one [`SETTLE`].
    pending: hashbrown::HashMap<(SocketAddr, SocketAddr), bool>,
    /// Flows written to `FLOWS` and not removed yet (at most `--max-conns`): a flow that
    /// ended before its adoption costs no `FLOWS` update at all.
    adopted: hashbrown::HashSet<(SocketAddr, SocketAddr)>,
    /// Flows whose entries the last write removed, and the write before it's: a SYN of
    /// theirs still waiting to be read may have lost its `HALF_OPEN` entry.
    forgotten: [hashbrown::HashSet<(SocketAddr, SocketAddr)>; 2],
    /// When `pending` was last written.
    written_at: Instant,
}

impl FlowMaps {
    pub fn new(
        flows: HashMap<MapData, FlowKey, FlowValue>,
        half_open: HashMap<MapData, FlowKey, FlowValue>,
    ) -> Self {
        Self {
            flows,
            half_open,
            pending: hashbrown::HashMap::new(),
            adopted: hashbrown::HashSet::new(),
            forgotten: Default::default(),
            written_at: Instant::now(),
        }
    }

    /// Handles of the same two maps for another thread.
    pub fn try_clone(&self) -> Result<Self, MapError> {
        Ok(Self::new(
            duplicate(&self.flows)?,
            duplicate(&self.half_open)?,
        ))
    }

    /// Notes flows whose handshake completed, to move from `HALF_OPEN` to `FLOWS`, where no
    /// SYN flood can evict them.
    pub fn adopt(&mut self, established: &[(SocketAddr, SocketAddr)]) {
        self.pending
            .extend(established.iter().map(|&flow| (flow, true)));
    }

    /// Notes finished flows, to forget so that a reused 4-tuple starts from its SYN again
    /// and its segments go to the kernel.
    pub fn forget(&mut self, closed: &[(SocketAddr, SocketAddr)]) {
        self.pending
            .extend(closed.iter().map(|&flow| (flow, false)));
    }

    /// Puts back the `HALF_OPEN` entry of a flow whose SYN was just accepted, if a write
    /// may have removed it after the classifier added it: one map update, only for a
    /// 4-tuple reused within two writes.
    pub fn readmit(&mut self, client: SocketAddr, server: SocketAddr) {
        let flow = (client, server);
        let [last, before] = &mut self.forgotten;
        if !(last.remove(&flow) | before.remove(&flow)) {
            return;
        }
        let Some(key) = FlowKey::new(client, server) else {
            return;
        };
        let value = FlowValue {
            first_seen_ns: monotonic_ns(),
        };
        if let Err(err) = self.half_open.insert(key, value, 0) {
            tracing::warn!(%err, "HALF_OPEN: a reused 4-tuple's entry could not be put back");
        }
    }

    /// When [`Self::write`] has something to write, if anything is pending.
    pub fn due(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then(|| self.written_at + SETTLE)
    }

    /// Writes what is pending once [`SETTLE`] has passed since the last write. `live`
    /// says whether a flow has a connection now: an ended flow whose 4-tuple a new SYN
    /// already took keeps its entries, which are the new flow's.
    pub fn write(&mut self, now: Instant, live: impl Fn(SocketAddr, SocketAddr) -> bool) {
        if self.pending.is_empty() || now.duration_since(self.written_at) < SETTLE {
            return;
        }
        self.written_at = now;
        self.forgotten.swap(0, 1);
        self.forgotten[0].clear();
        let value = FlowValue {
            first_seen_ns: monotonic_ns(),
        };
        for (flow, established) in self.pending.drain() {
            let Some(key) = FlowKey::new(flow.0, flow.1) else {
                continue;
            };
            if established {
                // `FLOWS` holds at least `--max-conns` entries, so it has room.
                if let Err(err) = self.flows.insert(key, value, 0) {
                    tracing::warn!(%err, "FLOWS: an established flow stays in HALF_OPEN");
                    continue;
                }
                self.adopted.insert(flow);
            } else if live(flow.0, flow.1) {
                continue;
            } else {
                if self.adopted.remove(&flow) {
                    let _ = self.flows.remove(&key);
                }
                self.forgotten[0].insert(flow);
            }
            let _ = self.half_open.remove(&key);
        }
    }
}

/// Another handle of `map`: a duplicate of its descriptor.
fn duplicate(
    map: &HashMap<MapData, FlowKey, FlowValue>,
) -> Result<HashMap<MapData, FlowKey, FlowValue>, MapError> {
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error,
            })
        })?;
    HashMap::try_from(Map::from_map_data(MapData::from_fd(fd)?)?)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
