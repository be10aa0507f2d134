//! The user table and its timer list (the patent's two tables).
//!
//! Entries are keyed by (mail server, username). Each entry carries an expiry time
//! and sits in a timer list ordered by it, so collecting expired entries walks only
//! the expired ones and never scans the table. The table is bounded: when full, the
//! entries nearest their expiry are evicted first, and locked entries (a session is in
//! TRANSACTION) are never removed. Nothing is persisted: a restarted daemon relearns.
//!
//! The patent also puts the session state, the terminate flag and the session timer in
//! the entry. Here they live in the connection's session instead: while the lock flag
//! admits one session per user in TRANSACTION that is the same information, and it keeps
//! entries small.
//!
//! Memory per entry: the key (server address and username, shared by the map and the
//! timer list through one `Arc`), a 16-byte verifier, three timestamps, a flag and a
//! check counter (88 bytes of entry, 48 of key), plus the map's and the timer list's
//! own overhead: roughly 250 bytes per user all told.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hashbrown::HashMap;

use super::verifier::Verifier;

/// Who an entry is about: a username on one mail server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    /// The mail server the client dialled.
    pub server: SocketAddr,
    /// The username as the client sent it.
    pub user: Box<str>,
}

/// What the proxy has learnt about one user.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The last password the server accepted, as a verifier; `None` until one did.
    pub verifier: Option<Verifier>,
    /// When the server last said the maildrop holds no message (`NULL` in the patent).
    pub verified_empty: Option<Instant>,
    /// A session of this user is in TRANSACTION: a second one gets `[IN-USE]`.
    pub locked: bool,
    /// The last login attempt (the operator's "last check").
    pub last_check: Instant,
    /// Login attempts answered without the server.
    pub answered_locally: u32,
    /// Login attempts that reached the server.
    pub passed_through: u32,
    /// When the entry stops being useful and may be collected.
    expires: Instant,
}

impl Entry {
    /// When the entry may be collected.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Whether the maildrop was verified empty less than `interval` before `now`.
    pub fn fresh(&self, now: Instant, interval: Duration) -> bool {
        self.verified_empty
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
    }
}

/// The bounded user table with its timer list.
#[derive(Debug)]
pub struct UserTable {
    entries: HashMap<Arc<UserKey>, Entry>,
    timers: BTreeSet<(Instant, Arc<UserKey>)>,
    capacity: usize,
    /// How long an entry stays after its last use.
    lifetime: Duration,
    /// Keys removed since the last [`UserTable::take_removed`], for mirrors.
    removed: Vec<Arc<UserKey>>,
}

impl UserTable {
    /// A table of at most `capacity` users, each kept `lifetime` after its last use.
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            capacity,
            lifetime,
            removed: Vec::new(),
        }
    }

    /// The keys collected or evicted since the last call (at most `capacity` are kept:
    /// a mirror that falls that far behind resynchronises from [`UserTable::iter`]).
    pub fn take_removed(&mut self) -> Vec<Arc<UserKey>> {
        std::mem::take(&mut self.removed)
    }

    fn forget(&mut self, key: Arc<UserKey>) {
        self.entries.remove(&*key);
        if self.removed.len() < self.capacity {
            self.removed.push(key);
        }
    }

    /// Number of users in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no user.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `key`, if any.
    pub fn get(&self, key: &UserKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Every entry, for the operator surface.
    pub fn iter(&self) -> impl Iterator<Item = (&UserKey, &Entry)> {
        self.entries.iter().map(|(k, e)| (&**k, e))
    }

    /// The entry of `key`, created if missing; `None` if the table is full of locked
    /// entries. Returns the shared key to hold while a session uses the entry.
    pub fn entry(&mut self, key: UserKey, now: Instant) -> Option<Arc<UserKey>> {
        if let Some((k, _)) = self.entries.get_key_value(&key) {
            return Some(k.clone());
        }
        if self.entries.len() >= self.capacity {
            self.collect(now);
            self.evict_one();
        }
        if self.entries.len() >= self.capacity {
            return None;
        }
        let key = Arc::new(key);
        let expires = now + self.lifetime;
        self.timers.insert((expires, key.clone()));
        self.entries.insert(
            key.clone(),
            Entry {
                verifier: None,
                verified_empty: None,
                locked: false,
                last_check: now,
                answered_locally: 0,
                passed_through: 0,
                expires,
            },
        );
        Some(key)
    }

    /// Changes an entry and pushes its expiry to `lifetime` from `now`.
    pub fn update<R>(
        &mut self,
        key: &Arc<UserKey>,
        now: Instant,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> Option<R> {
        let entry = self.entries.get_mut(&**key)?;
        let result = f(entry);
        let expires = now + self.lifetime;
        if expires != entry.expires {
            self.timers.remove(&(entry.expires, key.clone()));
            self.timers.insert((expires, key.clone()));
            entry.expires = expires;
        }
        Some(result)
    }

    /// Removes the unlocked entries whose expiry is due; returns how many.
    ///
    /// A locked entry found due is left in place: its session's end re-arms it.
    pub fn collect(&mut self, now: Instant) -> usize {
        let due: Vec<_> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .filter(|(_, k)| self.entries.get(&**k).is_some_and(|e| !e.locked))
            .cloned()
            .collect();
        let count = due.len();
        for (t, key) in due {
            self.timers.remove(&(t, key.clone()));
            self.forget(key);
        }
        count
    }

    /// Removes the unlocked entry nearest its expiry, to make room.
    fn evict_one(&mut self) {
        let victim = self
            .timers
            .iter()
            .find(|(_, k)| self.entries.get(&**k).is_some_and(|e| !e.locked))
            .cloned();
        if let Some((t, key)) = victim {
            self.timers.remove(&(t, key.clone()));
            self.forget(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> UserKey {
        UserKey {
            server: "203.0.113.5:110".parse().unwrap(),
            user: user.into(),
        }
    }

    #[test]
    fn collects_only_expired_unlocked_entries() {
        let t0 = Instant::now();
        let mut table = UserTable::new(10, Duration::from_secs(60));
        let a = table.entry(key("a"), t0).unwrap();
        let b = table.entry(key("b"), t0 + Duration::from_secs(30)).unwrap();
        table.update(&a, t0, |e| e.locked = true);
        assert_eq!(
            table.collect(t0 + Duration::from_secs(61)),
            0,
            "a is locked"
        );
        table.update(&a, t0 + Duration::from_secs(61), |e| e.locked = false);
        assert_eq!(table.collect(t0 + Duration::from_secs(91)), 1);
        assert!(table.get(&b).is_none());
        assert!(table.get(&a).is_some());
        assert_eq!(table.collect(t0 + Duration::from_secs(121)), 1);
        assert!(table.is_empty());
        assert!(table.timers.is_empty());
    }

    #[test]
    fn a_full_table_evicts_the_oldest_unlocked_entry() {
        let t0 = Instant::now();
        let mut table = UserTable::new(2, Duration::from_secs(60));
        let a = table.entry(key("a"), t0).unwrap();
        table.update(&a, t0, |e| e.locked = true);
        table.entry(key("b"), t0 + Duration::from_secs(1)).unwrap();
        table.entry(key("c"), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(table.len(), 2);
        assert!(table.get(&key("b")).is_none());
        let c = Arc::new(key("c"));
        table.update(&c, t0, |e| e.locked = true);
        assert!(table.entry(key("d"), t0).is_none(), "all locked: no room");
    }
}
