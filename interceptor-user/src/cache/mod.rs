//! The patent's edge cache: users' mail copied to the edge, served from there.
//!
//! - [`store`]: the Maildirs on disk, bounded, checked on every read;
//! - [`crate::prefetch`] fills them in quiet hours.
//!
//! The engine asks with [`pop3_engine::session::Action::CacheRead`] once the server
//! has told it, in the user's own session, the UIDL and size of the message a RETR
//! asks for; [`EdgeCache::read`] answers with the copy only if it matches both. A
//! copy cached under that UIDL with another size means the edge is out of sync with
//! the server: the user's whole cache is dropped.

pub mod store;

use std::{net::SocketAddr, path::Path};

use store::{Limits, Store, StoreStats, UserId};

/// What the cache served and threw away, for the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// RETRs answered from the edge.
    pub hits: u64,
    /// RETRs looked up and relayed to the server.
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
    /// and `size`, if the edge holds a sound one.
    pub fn read(
        &mut self,
        server: SocketAddr,
        user: &[u8],
        uidl: &[u8],
        size: u64,
    ) -> Option<Vec<u8>> {
        let id = UserId::new(server, user);
        let message = match self.store.size_of(id, uidl) {
            Some(cached) if cached != size => {
                tracing::info!(%server, "edge cache out of sync with the server: dropped");
                self.stats.mismatches += 1;
                self.store.drop_user(id);
                None
            }
            Some(_) => self.store.get(id, uidl, size),
            None => None,
        };
        match &message {
            Some(bytes) => {
                self.stats.hits += 1;
                self.stats.bytes_served += bytes.len() as u64;
            }
            None => self.stats.misses += 1,
        }
        message
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
