//! The patent's edge cache: users' mail copied to the edge, served from there.
//!
//! - [`store`]: the Maildirs on disk, bounded, checked on every read;
//! - [`reads`]: reads off the dataplane thread;
//! - [`crate::prefetch`] fills them in quiet hours.
//!
//! The engine asks with [`pop3_engine::session::Action::CacheRead`] once the server
//! has told it, in the user's own session, the UIDL and size of the message a RETR or
//! TOP asks for; [`read`] answers with the copy only if it matches both. A copy cached
//! under that UIDL with another size means the edge is out of sync with the server: the
//! user's whole cache is dropped.
//!
//! The cache is shared ([`SharedCache`]): the dataplane workers forget deleted messages,
//! the operator thread reads the counters and takes in prefetched files, reads run on the
//! operator runtime's blocking threads. The lock is held for the index only, never while
//! a file is read.

pub mod reads;
pub mod store;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use store::{Found, Limits, Store, StoreStats, UserId};

/// What the cache served and threw away, for the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// RETRs and TOPs answered from the edge.
    pub hits: u64,
    /// RETRs and TOPs looked up and relayed to the server.
    pub misses: u64,
    /// Message bytes answered from the edge.
    pub bytes_served: u64,
    /// Users whose cache was dropped because the server disagreed with it.
    pub mismatches: u64,
    pub store: StoreStats,
}

/// The store and its counters.
#[derive(Debug)]
pub struct EdgeCache {
    store: Store,
    stats: CacheStats,
}

impl EdgeCache {
    /// Opens the cache folder (see [`Store::open`]).
    pub fn open(root: &Path, limits: Limits) -> std::io::Result<Self> {
        Ok(Self {
            store: Store::open(root, limits)?,
            stats: CacheStats::default(),
        })
    }

    /// The copy of `user`'s message at `server` that the server lists now with `uidl`
    /// and `size`, to read; a copy of another size drops the user's cache. A lookup
    /// that finds nothing is a miss.
    fn find(&mut self, server: SocketAddr, user: &[u8], uidl: &[u8], size: u64) -> Option<Found> {
        let id = UserId::new(server, user);
        let found = match self.store.size_of(id, uidl) {
            Some(cached) if cached != size => {
                tracing::info!(%server, "edge cache out of sync with the server: dropped");
                self.stats.mismatches += 1;
                self.store.drop_user(id);
                None
            }
            Some(_) => self.store.find(id, uidl, size),
            None => None,
        };
        if found.is_none() {
            self.stats.misses += 1;
        }
        found
    }

    /// What reading `found` gave: a hit, or a miss whose file is deleted.
    fn settle(&mut self, found: &Found, message: Option<&[u8]>) {
        self.store.settle(found, message.is_some());
        match message {
            Some(bytes) => {
                self.stats.hits += 1;
                self.stats.bytes_served += bytes.len() as u64;
            }
            None => self.stats.misses += 1,
        }
    }

    /// The server committed the deletion of these messages (`None`: of too many to
    /// name): the edge forgets them.
    pub fn forget(&mut self, server: SocketAddr, user: &[u8], uidls: Option<&[Vec<u8>]>) {
        let id = UserId::new(server, user);
        match uidls {
            Some(uidls) => uidls.iter().for_each(|uidl| self.store.remove(id, uidl)),
            None => self.store.drop_user(id),
        }
    }

    /// Messages and bytes cached for `user` at `server`.
    pub fn usage(&self, server: SocketAddr, user: &[u8]) -> (usize, u64) {
        self.store.usage(UserId::new(server, user))
    }

    /// The store itself.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store itself, to fill it.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            store: self.store.stats(),
            ..self.stats
        }
    }
}

/// The edge cache, shared between the dataplane and the reads off its thread.
pub type SharedCache = Arc<Mutex<EdgeCache>>;

/// The cache, even if a thread panicked while holding it: every change to it is
/// complete before the next file operation, so what it holds stays consistent.
pub fn lock(cache: &Mutex<EdgeCache>) -> MutexGuard<'_, EdgeCache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The copy of `user`'s message at `server` that the server lists now with `uidl` and
/// `size`, if the edge holds a sound one. Blocking file I/O: not for the dataplane
/// thread. The lock is taken around the index work only.
pub fn read(
    cache: &Mutex<EdgeCache>,
    server: SocketAddr,
    user: &[u8],
    uidl: &[u8],
    size: u64,
) -> Option<Vec<u8>> {
    let found = lock(cache).find(server, user, uidl, size)?;
    let message = found.read();
    lock(cache).settle(&found, message.as_deref());
    message
}
