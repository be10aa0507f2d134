//! The user table as the engines of several dataplane workers share it: [`UserTable`]s in
//! shards, a user's shard chosen by a keyed hash of its key, each behind its own mutex.
//!
//! A worker's engine takes one shard's lock per table operation (a login's whole decision
//! is one [`SharedTable::update`]), never a lock over the whole table, so workers checking
//! different users seldom wait for each other. Every operation is one call under one lock:
//! what a closure sees and changes of an entry is consistent. Between two calls another
//! worker may change the entry; the engine reads what it shows a client (the maildrop
//! view) in the same call that decides on the check.
//!
//! The hash is keyed with the engine's [`Salt`]: subscribers cannot aim their usernames at
//! one shard. Each shard holds at most its share of the table size and evicts on its own.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{
    Salt,
    maildrop::Maildrop,
    table::{Entry, EntryMut, EntryRef, Timed, UserKey, UserTable},
    verifier::Verifier,
};

/// A copy of an entry as it stood when read (see [`SharedTable::get`]).
pub type EntrySnapshot = Timed<Box<Entry>>;

/// The user table in shards, shared by the engines of a daemon's workers (`Clone` shares).
#[derive(Clone, Debug)]
pub struct SharedTable(Arc<Shards>);

#[derive(Debug)]
struct Shards {
    shards: Box<[Mutex<UserTable>]>,
    salt: Salt,
}

impl SharedTable {
    /// A table of at most `capacity` users over `shards` shards (at least one), each user
    /// kept `lifetime` after its last use, with at most `maildrop_budget` bytes of maildrop
    /// snapshots (split like the users); times count from `epoch`; `salt` keys the shard
    /// hash.
    pub fn new(
        capacity: usize,
        lifetime: Duration,
        maildrop_budget: usize,
        epoch: Instant,
        shards: usize,
        salt: Salt,
    ) -> Self {
        let shards = shards.max(1);
        let per_shard = |total: usize| total.div_ceil(shards);
        Self(Arc::new(Shards {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(UserTable::new(
                        per_shard(capacity),
                        lifetime,
                        per_shard(maildrop_budget),
                        epoch,
                    ))
                })
                .collect(),
            salt,
        }))
    }

    fn shard(&self, key: &UserKey) -> MutexGuard<'_, UserTable> {
        let shards = &self.0.shards;
        let index = if shards.len() == 1 {
            0
        } else {
            (self.0.salt.shard_hash(key) % shards.len() as u64) as usize
        };
        lock(&shards[index])
    }

    fn all(&self) -> impl Iterator<Item = MutexGuard<'_, UserTable>> {
        self.0.shards.iter().map(lock)
    }

    /// The entry of `key` as it stands now, if any.
    pub fn get(&self, key: &UserKey) -> Option<EntrySnapshot> {
        self.shard(key).get(key).map(|e| e.to_owned_entry())
    }

    /// Whether `key` has an entry.
    pub fn contains(&self, key: &UserKey) -> bool {
        self.shard(key).get(key).is_some()
    }

    /// See [`UserTable::key`].
    pub fn key(&self, key: &UserKey) -> Option<Arc<UserKey>> {
        self.shard(key).key(key)
    }

    /// See [`UserTable::entry`].
    pub fn entry(&self, key: UserKey, now: Instant, verifier: Verifier) -> Option<Arc<UserKey>> {
        self.shard(&key).entry(key, now, verifier)
    }

    /// See [`UserTable::update`]; `f` runs under the shard's lock.
    pub fn update<R>(
        &self,
        key: &Arc<UserKey>,
        now: Instant,
        f: impl FnOnce(&mut EntryMut<'_>) -> R,
    ) -> Option<R> {
        self.shard(key).update(key, now, f)
    }

    /// See [`UserTable::set_view`].
    pub fn set_view(
        &self,
        key: &Arc<UserKey>,
        now: Instant,
        login: Instant,
        maildrop: Option<Maildrop>,
    ) -> bool {
        self.shard(key).set_view(key, now, login, maildrop)
    }

    /// See [`UserTable::clear_view`].
    pub fn clear_view(&self, key: &Arc<UserKey>, now: Instant) {
        self.shard(key).clear_view(key, now);
    }

    /// See [`UserTable::new_mail`].
    pub fn new_mail(&self, key: &Arc<UserKey>, now: Instant) {
        self.shard(key).new_mail(key, now);
    }

    /// Collects every shard (see [`UserTable::collect`]); returns how many went.
    pub fn collect(&self, now: Instant) -> usize {
        self.all().map(|mut shard| shard.collect(now)).sum()
    }

    /// The keys collected or evicted since the last call, from every shard.
    pub fn take_removed(&self) -> Vec<Arc<UserKey>> {
        self.all()
            .flat_map(|mut shard| shard.take_removed())
            .collect()
    }

    /// Number of users in the table.
    pub fn len(&self) -> usize {
        self.all().map(|shard| shard.len()).sum()
    }

    /// Whether the table has no user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by maildrop snapshots.
    pub fn maildrop_bytes(&self) -> usize {
        self.all().map(|shard| shard.maildrop_bytes()).sum()
    }

    /// Calls `f` with every entry, one shard at a time (each locked meanwhile): `f` must
    /// not call back into the table, which would wait for the lock it holds.
    pub fn for_each(&self, mut f: impl FnMut(&UserKey, EntryRef<'_>)) {
        for shard in self.all() {
            for (key, entry) in shard.iter() {
                f(key, entry);
            }
        }
    }
}

/// A worker that panicked holding a shard left a table whose every change was one call:
/// still whole.
fn lock(shard: &Mutex<UserTable>) -> MutexGuard<'_, UserTable> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
