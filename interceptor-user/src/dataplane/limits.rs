//! The connection limits every worker shares: `--max-conns` over all of them, and the
//! per-subscriber limits of [`Sources`] whichever worker a subscriber's flows reach.
//!
//! An attacker spreading flows over RX queues must not get one limit per worker. Each
//! worker asks here on a SYN, when a handshake completes and when a connection ends, never
//! per packet. The total is one atomic counter; the sources are split into shards by a
//! keyed hash of the address (an attacker cannot aim all its addresses at one shard),
//! each behind its own mutex, so two workers admitting different subscribers rarely meet.

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::{
    lock,
    sources::{Refusal, SourceLimits, Sources},
};

/// Shards of the source table: enough that workers seldom wait on each other.
const SHARDS: usize = 64;

/// Why a SYN was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `--max-conns` connections are open over all workers.
    Full,
    /// One of its subscriber's limits.
    Source(Refusal),
}

/// Connection counts shared by the workers.
#[derive(Debug)]
pub struct Limits {
    max_conns: usize,
    conns: AtomicUsize,
    shards: Box<[Mutex<Sources>]>,
    hasher: RandomState,
}

impl Limits {
    pub fn new(max_conns: usize, per_source: SourceLimits) -> Self {
        Self {
            max_conns,
            conns: AtomicUsize::new(0),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Sources::new(per_source)))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, ip: IpAddr) -> MutexGuard<'_, Sources> {
        let index = self.hasher.hash_one(ip) as usize % self.shards.len();
        lock(&self.shards[index])
    }

    /// Decides on a SYN from `ip`; an accepted one holds a slot until [`Self::closed`].
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        let taken = self
            .conns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_conns).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refused::Full);
        }
        self.shard(ip).admit(ip, now).map_err(|refusal| {
            self.conns.fetch_sub(1, Ordering::AcqRel);
            Refused::Source(refusal)
        })
    }

    /// The handshake of one of `ip`'s connections completed.
    pub fn established(&self, ip: IpAddr) {
        self.shard(ip).established(ip);
    }

    /// One of `ip`'s connections ended (`half_open`: before its handshake completed).
    pub fn closed(&self, ip: IpAddr, half_open: bool) {
        self.shard(ip).closed(ip, half_open);
        self.conns.fetch_sub(1, Ordering::AcqRel);
    }

    /// Forgets sources without connections whose SYN budget is full again.
    pub fn sweep(&self, now: Instant) {
        for shard in &self.shards {
            lock(shard).sweep(now);
        }
    }

    /// Connections open over all workers.
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn limits(max_conns: usize, per_source: u32) -> Limits {
        Limits::new(
            max_conns,
            SourceLimits {
                max_conns: per_source,
                max_half_open: 0,
                syn_rate: 0,
            },
        )
    }

    #[test]
    fn one_subscriber_gets_its_limit_once_over_all_threads() {
        let limits = Arc::new(limits(1000, 10));
        let now = Instant::now();
        let admitted: usize = (0..4)
            .map(|_| {
                let limits = limits.clone();
                std::thread::spawn(move || (0..10).filter(|_| limits.admit(A, now).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 10);
        assert_eq!(limits.conns(), 10);
        assert_eq!(limits.admit(A, now), Err(Refused::Source(Refusal::Conns)));
        limits.closed(A, true);
        assert_eq!(limits.conns(), 9);
        assert_eq!(limits.admit(A, now), Ok(()));
    }

    #[test]
    fn the_total_holds_over_all_threads_and_a_refusal_takes_no_slot() {
        let limits = Arc::new(limits(8, 0));
        let now = Instant::now();
        let admitted: usize = (0..4u8)
            .map(|t| {
                let limits = limits.clone();
                std::thread::spawn(move || {
                    (0..8u8)
                        .filter(|i| {
                            let ip = IpAddr::from([198, 51, 100, t * 8 + i]);
                            limits.admit(ip, now).is_ok()
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 8);
        assert_eq!(limits.admit(A, now), Err(Refused::Full));
        assert_eq!(limits.conns(), 8);
    }
}
