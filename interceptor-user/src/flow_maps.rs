//! The classifier's `FLOWS` and `HALF_OPEN` maps as the dataplane keeps them: a flow moves
//! to `FLOWS` when its handshake completes and leaves both when it ends.
//!
//! Each dataplane worker has handles of its own (duplicated descriptors of the same maps)
//! and updates them at the end of every pass, in the order its connections came and went:
//! a reused 4-tuple's new flow is never forgotten by a late update for the old one.

use std::{net::SocketAddr, os::fd::AsFd};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError};
use common::{FlowKey, FlowValue};

/// `FLOWS` and `HALF_OPEN`.
pub struct FlowMaps {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    half_open: HashMap<MapData, FlowKey, FlowValue>,
}

impl FlowMaps {
    pub fn new(
        flows: HashMap<MapData, FlowKey, FlowValue>,
        half_open: HashMap<MapData, FlowKey, FlowValue>,
    ) -> Self {
        Self { flows, half_open }
    }

    /// Handles of the same two maps for another thread.
    pub fn try_clone(&self) -> Result<Self, MapError> {
        Ok(Self {
            flows: duplicate(&self.flows)?,
            half_open: duplicate(&self.half_open)?,
        })
    }

    /// Moves flows whose handshake completed from `HALF_OPEN` to `FLOWS`, where no SYN
    /// flood can evict them. `FLOWS` holds at least `--max-conns` entries, so it has room.
    pub fn adopt(&mut self, established: &[(SocketAddr, SocketAddr)]) {
        let value = FlowValue {
            first_seen_ns: monotonic_ns(),
        };
        for key in flow_keys(established) {
            if let Err(err) = self.flows.insert(key, value, 0) {
                tracing::warn!(%err, "FLOWS: an established flow stays in HALF_OPEN");
                continue;
            }
            let _ = self.half_open.remove(&key);
        }
    }

    /// Forgets finished flows, so a reused 4-tuple starts from its SYN again and its
    /// segments go to the kernel.
    pub fn forget(&mut self, closed: &[(SocketAddr, SocketAddr)]) {
        for key in flow_keys(closed) {
            let _ = self.flows.remove(&key);
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

fn flow_keys(flows: &[(SocketAddr, SocketAddr)]) -> impl Iterator<Item = FlowKey> + '_ {
    flows
        .iter()
        .filter_map(|&(client, server)| FlowKey::new(client, server))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
