//! The user table and its timer list (the patent's two tables).
//!
//! Entries are keyed by (mail server, username). Each entry carries an expiry time
//! and sits in a timer list ordered by it, so collecting expired entries walks only
//! the expired ones and never scans the table. The table is bounded: when full, the
//! entries nearest their expiry are evicted first, and entries in session (a session is in
//! TRANSACTION) are never removed. Nothing is persisted: a restarted daemon relearns.
//!
//! The patent also puts the session state, the terminate flag and the session timer in
//! the entry. Here they live in the connection's session instead, and the entry keeps
//! only how many sessions of the user are open: the patent's lock flag, widened because
//! the server, not the edge, decides whether one user may hold two sessions.
//!
//! Entries are made only for logins the server accepted: usernames a client merely
//! names (USER, a failed PASS) never take a slot, so spraying names cannot push real
//! users out.
//!
//! Memory per entry, about 170 bytes: a 160-byte slot in the [`store`] (allocated 4,096
//! at a time), which holds the 56-byte key (server address and username; usernames of
//! up to 22 bytes are inside it, longer ones get an allocation of their own), the
//! 96-byte entry and the 8 bytes that link it into the timer list; and the index, a
//! hash table of 4-byte slot numbers with a control byte each, at most 7/8 full and,
//! just after it doubled, half empty. The entry holds a 16-byte verifier, the check,
//! view, notification, not-before, fast-check and expiry times as 8-byte stamps
//! (nanoseconds from the table's epoch), an optional shared maildrop snapshot (its
//! bytes counted against a budget of their own), a session count, check counters and
//! two 2-byte check intervals (the periodicity rule).
//! `cargo xtask bench --table-only` measures it.

mod store;
mod user_name;

use std::{
    hash::BuildHasher,
    net::SocketAddr,
    ops::{Deref, DerefMut},
    sync::Arc,
    time::{Duration, Instant},
};

use hashbrown::{DefaultHashBuilder, HashTable};
use store::Store;
pub use user_name::UserName;

use super::{
    config::FastCheck,
    maildrop::Maildrop,
    periodicity::CheckHistory,
    stamp::{Epoch, Stamp},
    verifier::Verifier,
};

/// What the fast-check reward makes of a check (see [`EntryMut::fast_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastCheckVerdict {
    /// Nothing: the usual rules decide.
    AsUsual,
    /// The k-th fast check: to the server.
    Rewarded,
    /// Inside the penalty after a reward: answered locally from the view held.
    Penalized,
}

/// Who an entry is about: a username on one mail server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    /// The mail server the client dialled.
    pub server: SocketAddr,
    /// The username, exactly the bytes the client sent.
    pub user: UserName,
}

/// What the proxy has learnt about one user.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The last password the server accepted, as a verifier (an entry exists only once
    /// the server accepted one).
    pub verifier: Verifier,
    /// When the server's view of the maildrop held here was taken: the login of the
    /// session that saw it (`NULL` in the patent: no view).
    verified: Option<Stamp>,
    /// That view: `None` is an empty maildrop, otherwise the server's answers (for
    /// clients that leave their mail on the server).
    maildrop: Option<Arc<Maildrop>>,
    /// When the mail server last said new mail arrived for this user (the demand rule).
    notified: Option<Stamp>,
    /// No view from a session that logged in before this may be recorded: something
    /// newer (new mail, a session that saw mail or deleted some) is known.
    not_before: Option<Stamp>,
    /// Sessions of this user in TRANSACTION now. While there is one, further sessions
    /// go to the server, which applies its own locking; such entries are never removed.
    pub sessions: u16,
    /// Checks answered locally since the last one the one-in-m rule passed through
    /// (M is at most 255).
    pub local_streak: u8,
    /// Checks in the current fast-check window (K is at most 255), and when it opened.
    pub fast_count: u8,
    fast_since: Option<Stamp>,
    /// Until when the fast-check penalty holds.
    penalty_until: Option<Stamp>,
    /// The last check with the password the server accepted (the operator's "last
    /// check"; a wrong password is not the user's check).
    last_check: Stamp,
    /// The intervals between the user's last checks (the periodicity rule).
    pub history: CheckHistory,
    /// Login attempts answered without the server.
    pub answered_locally: u32,
    /// Login attempts that reached the server.
    pub passed_through: u32,
    /// When the entry stops being useful and may be collected.
    expires: Stamp,
}

impl Entry {
    fn maildrop_len(&self) -> usize {
        self.maildrop.as_ref().map_or(0, |m| m.bytes())
    }

    /// The server's view, when one is held: `Some(None)` for an empty maildrop.
    pub fn view(&self) -> Option<Option<&Arc<Maildrop>>> {
        self.verified.map(|_| self.maildrop.as_ref())
    }
}

/// An entry with its table's [`Epoch`], which turns its stamps into [`Instant`]s.
#[derive(Debug)]
pub struct Timed<E> {
    entry: E,
    epoch: Epoch,
}

/// An entry as [`UserTable::get`] and [`UserTable::iter`] show it.
pub type EntryRef<'a> = Timed<&'a Entry>;
/// An entry as [`UserTable::update`] hands it out.
pub type EntryMut<'a> = Timed<&'a mut Entry>;

impl<E: Deref<Target = Entry>> Deref for Timed<E> {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl<E: DerefMut<Target = Entry>> DerefMut for Timed<E> {
    fn deref_mut(&mut self) -> &mut Entry {
        &mut self.entry
    }
}

impl<'a> EntryRef<'a> {
    /// The server's view, when one is held, borrowed from the table.
    pub fn view(&self) -> Option<Option<&'a Arc<Maildrop>>> {
        self.entry.view()
    }
}

impl Timed<&Entry> {
    /// A copy of the entry that outlives the borrow of its table.
    pub fn to_owned_entry(&self) -> Timed<Box<Entry>> {
        Timed {
            entry: Box::new(self.entry.clone()),
            epoch: self.epoch,
        }
    }
}

impl<E: Deref<Target = Entry>> Timed<E> {
    /// When the entry may be collected.
    pub fn expires(&self) -> Instant {
        self.epoch.instant(self.entry.expires)
    }

    /// When the server's view of the maildrop held here was taken (`NULL` in the
    /// patent: `None`).
    pub fn verified(&self) -> Option<Instant> {
        self.entry.verified.map(|s| self.epoch.instant(s))
    }

    /// When the mail server last said new mail arrived for this user.
    pub fn notified(&self) -> Option<Instant> {
        self.entry.notified.map(|s| self.epoch.instant(s))
    }

    /// The last check with the password the server accepted.
    pub fn last_check(&self) -> Instant {
        self.epoch.instant(self.entry.last_check)
    }

    /// Whether the view was taken less than `interval` before `now`.
    pub fn fresh(&self, now: Instant, interval: Duration) -> bool {
        self.verified()
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
    }
}

impl<E: DerefMut<Target = Entry>> Timed<E> {
    /// Records a check at `at`, `since` after the previous one.
    pub fn record_check(&mut self, at: Instant, since: Duration) {
        self.entry.history.push(since);
        self.entry.last_check = self.epoch.stamp(at);
    }

    /// The fast-check reward for a check at `now` that could be answered locally
    /// (`fresh`: inside n): whether it goes to the server (the rewarded one), and
    /// whether it is answered locally by the penalty although its view is old.
    pub fn fast_check(&mut self, rule: &FastCheck, now: Instant, fresh: bool) -> FastCheckVerdict {
        let epoch = self.epoch;
        let e = &mut *self.entry;
        if e.penalty_until
            .is_some_and(|until| now < epoch.instant(until))
        {
            return if e.verified.is_some() {
                FastCheckVerdict::Penalized
            } else {
                FastCheckVerdict::AsUsual
            };
        }
        if !fresh {
            return FastCheckVerdict::AsUsual;
        }
        let in_window = e
            .fast_since
            .is_some_and(|t| now.saturating_duration_since(epoch.instant(t)) <= rule.window);
        if in_window {
            e.fast_count = e.fast_count.saturating_add(1);
        } else {
            (e.fast_count, e.fast_since) = (1, Some(epoch.stamp(now)));
        }
        if u32::from(e.fast_count) >= rule.count.get().min(u8::MAX.into()) {
            (e.fast_count, e.fast_since) = (0, None);
            e.penalty_until = Some(epoch.stamp(now + rule.penalty));
            FastCheckVerdict::Rewarded
        } else {
            FastCheckVerdict::AsUsual
        }
    }
}

/// The bounded user table with its timer list.
///
/// Sessions hold an `Arc<UserKey>` of their user (what [`UserTable::entry`] returns) and
/// look their entry up by it; the table keeps its own copy of each key in the entry's slot.
#[derive(Debug)]
pub struct UserTable {
    /// The origin of every stamp in the table.
    epoch: Epoch,
    /// The entries, their keys and the timer list.
    store: Store,
    /// The slot of each key, hashed by the key in the slot.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    capacity: usize,
    /// How long an entry stays after its last use.
    lifetime: Duration,
    /// Keys removed since the last [`UserTable::take_removed`], for mirrors.
    removed: Vec<Arc<UserKey>>,
    /// Bytes of all maildrop snapshots held, and the most they may take.
    maildrop_bytes: usize,
    maildrop_budget: usize,
}

impl UserTable {
    /// A table of at most `capacity` users (at most `u32::MAX - 1`), each kept `lifetime`
    /// after its last use, with at most `maildrop_budget` bytes of maildrop snapshots;
    /// its times count from `epoch` (any time the caller passes in).
    pub fn new(
        capacity: usize,
        lifetime: Duration,
        maildrop_budget: usize,
        epoch: Instant,
    ) -> Self {
        let capacity = capacity.min(u32::MAX as usize - 1);
        Self {
            epoch: Epoch::new(epoch),
            store: Store::new(capacity),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            capacity,
            lifetime,
            removed: Vec::new(),
            maildrop_bytes: 0,
            maildrop_budget,
        }
    }

    /// Bytes held by maildrop snapshots.
    pub fn maildrop_bytes(&self) -> usize {
        self.maildrop_bytes
    }

    /// Records the view of the maildrop a session saw, as of its login at `login`
    /// (`None`: empty). Ignored when new mail was announced since that login (the
    /// session's view predates it); a snapshot past the budget is not kept (the user
    /// then has no view: the server answers). Returns whether a view is now held.
    pub fn set_view(
        &mut self,
        key: &Arc<UserKey>,
        now: Instant,
        login: Instant,
        maildrop: Option<Maildrop>,
    ) -> bool {
        let Some(entry) = self.get_entry(key) else {
            return false;
        };
        let held = entry.maildrop_len();
        let room = (self.maildrop_budget + held).saturating_sub(self.maildrop_bytes);
        let fits = maildrop.as_ref().is_none_or(|m| m.bytes() <= room);
        // Never older than what is known: a newer view held, new mail announced, or a
        // newer session that saw the maildrop change.
        let login_stamp = self.epoch.stamp(login);
        let stale = entry.verified.is_some_and(|v| v > login_stamp)
            || entry.not_before.is_some_and(|t| t >= login_stamp);
        if stale {
            return entry.verified.is_some();
        }
        let view = fits.then_some(maildrop);
        self.replace_view(key, now, view.map(|m| (login, m)));
        self.get_entry(key).is_some_and(|e| e.verified.is_some())
    }

    /// Drops the user's view: the server answers the next check, and no session that
    /// logged in before `now` may bring a view back.
    pub fn clear_view(&mut self, key: &Arc<UserKey>, now: Instant) {
        self.replace_view(key, now, None);
        let now_stamp = self.epoch.stamp(now);
        self.update(key, now, |e| e.not_before = Some(now_stamp));
    }

    /// New mail arrived at `now` (the demand rule): the view goes, and no session that
    /// logged in before may bring one back.
    pub fn new_mail(&mut self, key: &Arc<UserKey>, now: Instant) {
        self.clear_view(key, now);
        let now_stamp = self.epoch.stamp(now);
        self.update(key, now, |e| e.notified = Some(now_stamp));
    }

    fn replace_view(
        &mut self,
        key: &Arc<UserKey>,
        now: Instant,
        view: Option<(Instant, Option<Maildrop>)>,
    ) {
        let (mut freed, mut taken) = (0, 0);
        let epoch = self.epoch;
        self.update(key, now, |e| {
            freed = e.maildrop_len();
            match view {
                Some((login, maildrop)) => {
                    e.verified = Some(epoch.stamp(login));
                    e.maildrop = maildrop.map(Arc::new);
                }
                None => (e.verified, e.maildrop) = (None, None),
            }
            taken = e.maildrop_len();
        });
        self.maildrop_bytes = self.maildrop_bytes - freed + taken;
    }

    /// The keys collected or evicted since the last call (at most `capacity` are kept:
    /// a mirror that falls that far behind resynchronises from [`UserTable::iter`]).
    pub fn take_removed(&mut self) -> Vec<Arc<UserKey>> {
        std::mem::take(&mut self.removed)
    }

    /// Removes the entry in slot `i`.
    fn forget(&mut self, i: u32) {
        let hash = self.hasher.hash_one(&self.store.node(i).key);
        if let Ok(found) = self.index.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        let node = self.store.remove(i);
        self.maildrop_bytes -= node.entry.maildrop_len();
        if self.removed.len() < self.capacity {
            self.removed.push(Arc::new(node.key));
        }
    }

    /// The slot of `key`'s entry, if there is one.
    fn find(&self, key: &UserKey) -> Option<u32> {
        let store = &self.store;
        self.index
            .find(self.hasher.hash_one(key), |&i| store.node(i).key == *key)
            .copied()
    }

    fn get_entry(&self, key: &UserKey) -> Option<&Entry> {
        self.find(key).map(|i| &self.store.node(i).entry)
    }

    /// Number of users in the table.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the table has no user.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The entry of `key`, if any.
    pub fn get(&self, key: &UserKey) -> Option<EntryRef<'_>> {
        self.get_entry(key).map(|entry| self.timed(entry))
    }

    /// Every entry, for the operator surface.
    pub fn iter(&self) -> impl Iterator<Item = (&UserKey, EntryRef<'_>)> {
        self.store
            .iter()
            .map(|node| (&node.key, self.timed(&node.entry)))
    }

    fn timed<E>(&self, entry: E) -> Timed<E> {
        Timed {
            entry,
            epoch: self.epoch,
        }
    }

    /// `key` to hold while a session uses its entry, if there is one.
    pub fn key(&self, key: &UserKey) -> Option<Arc<UserKey>> {
        self.find(key).map(|_| Arc::new(key.clone()))
    }

    /// The entry of `key`, created if missing; `None` if the table is full of entries
    /// in session. Returns the key to hold while a session uses the entry.
    pub fn entry(
        &mut self,
        key: UserKey,
        now: Instant,
        verifier: Verifier,
    ) -> Option<Arc<UserKey>> {
        if self.find(&key).is_some() {
            return Some(Arc::new(key));
        }
        if self.len() >= self.capacity {
            self.collect(now);
            self.evict_one();
        }
        if self.len() >= self.capacity {
            return None;
        }
        let handle = Arc::new(key.clone());
        let hash = self.hasher.hash_one(&key);
        let i = self.store.insert(
            key,
            Entry {
                verifier,
                verified: None,
                maildrop: None,
                notified: None,
                not_before: None,
                sessions: 0,
                local_streak: 0,
                fast_count: 0,
                fast_since: None,
                penalty_until: None,
                last_check: self.epoch.stamp(now),
                history: CheckHistory::default(),
                answered_locally: 0,
                passed_through: 0,
                expires: self.epoch.stamp(now + self.lifetime),
            },
        );
        let (store, hasher) = (&self.store, &self.hasher);
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(&store.node(j).key));
        Some(handle)
    }

    /// Changes an entry and pushes its expiry to `lifetime` from `now`.
    pub fn update<R>(
        &mut self,
        key: &Arc<UserKey>,
        now: Instant,
        f: impl FnOnce(&mut EntryMut<'_>) -> R,
    ) -> Option<R> {
        let i = self.find(key)?;
        let epoch = self.epoch;
        let entry = &mut self.store.node_mut(i).entry;
        let result = f(&mut Timed { entry, epoch });
        let expires = epoch.stamp(now + self.lifetime);
        if expires != self.store.node(i).entry.expires {
            self.store.set_expiry(i, expires);
        }
        Some(result)
    }

    /// Removes the entries not in session whose expiry is due; returns how many.
    ///
    /// An entry in session found due is left in place: its session's end re-arms it.
    pub fn collect(&mut self, now: Instant) -> usize {
        let now = self.epoch.stamp(now);
        let due: Vec<u32> = self
            .store
            .by_expiry()
            .take_while(|(_, n)| n.entry.expires <= now)
            .filter(|(_, n)| n.entry.sessions == 0)
            .map(|(i, _)| i)
            .collect();
        for &i in &due {
            self.forget(i);
        }
        due.len()
    }

    /// Removes the entry not in session nearest its expiry, to make room.
    fn evict_one(&mut self) {
        let victim = self
            .store
            .by_expiry()
            .find(|(_, n)| n.entry.sessions == 0)
            .map(|(i, _)| i);
        if let Some(i) = victim {
            self.forget(i);
        }
    }
}

#[cfg(test)]
mod tests;
