//! Mirrors the attenuation table into the pinned `USERS` map, and live sessions into
//! `SESSIONS`, for operators using bpftool or `pop3-interceptor status`.
//!
//! The engines' tables stay authoritative; the maps are a copy refreshed from the
//! engines' change logs by the operator thread (one change log per worker's engine, one
//! table shared by all of them). With the edge cache on, a user's entry also shows what
//! the cache holds for them (as of the user's last refresh), and `STATS` the cache's
//! totals: kept here, not in the engine's table, whose entries are the memory of a
//! million users. Losing them loses nothing, and a full
//! map only means "not mirrored" (counted), never an error on the packet path.

use std::{
    collections::{BTreeSet, VecDeque},
    ffi::c_char,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, HashMap, MapData};
use common::{DaemonStats, SessionKey, SessionValue, Text, UserKey, UserValue};
use pop3_engine::{
    attenuation::{self as engine, AttenuationEngine, State},
    session::ConnId,
};

use crate::cache::{self, SharedCache};

/// What the mirror could not do, for the operator's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct MirrorStats {
    pub users_mirrored: u64,
    /// Users not written because the map was full or the name too long.
    pub users_not_mirrored: u64,
    pub sessions_not_mirrored: u64,
}

/// Converts the monotonic clock the engine uses into unix seconds.
#[derive(Clone, Copy, Debug)]
struct UnixClock {
    base: Instant,
    base_unix: Duration,
}

impl UnixClock {
    fn now() -> Self {
        Self {
            base: Instant::now(),
            base_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    fn unix(&self, at: Instant) -> u64 {
        let unix = if at >= self.base {
            self.base_unix + (at - self.base)
        } else {
            self.base_unix.saturating_sub(self.base - at)
        };
        unix.as_secs()
    }
}

/// How often the engine's counters are published to `STATS`.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// How long a session lasts before `SESSIONS` shows it: a check is over in a few
/// milliseconds, and showing each cost a write, a delete and their keys' formatting.
const SESSION_SHOWN_AFTER: Duration = Duration::from_millis(50);

/// A session the mirror heard of, by its flow `(client, server)`.
#[derive(Debug)]
struct LiveSession {
    worker: usize,
    conn: ConnId,
    key: Arc<engine::UserKey>,
    /// When the mirror first heard of it.
    seen: Instant,
    /// Written to `SESSIONS` (and so to be deleted when it ends).
    shown: bool,
}

/// The mirrored maps.
pub struct Mirror {
    users: HashMap<MapData, UserKey, UserValue>,
    sessions: HashMap<MapData, SessionKey, SessionValue>,
    /// Sessions heard of and not yet ended, shown or not (a write that failed is tried
    /// again at the session's next change).
    live: hashbrown::HashMap<(SocketAddr, SocketAddr), LiveSession>,
    /// Sessions not shown yet, by when they were first heard of (oldest first).
    unshown: VecDeque<(Instant, (SocketAddr, SocketAddr))>,
    stats_map: Array<MapData, DaemonStats>,
    stats_published: Option<Instant>,
    clock: UnixClock,
    /// Mirrored users still shown as attenuated, by when that stops being true.
    expiries: BTreeSet<(Instant, Arc<engine::UserKey>)>,
    stats: MirrorStats,
    cache: Option<SharedCache>,
    /// The edge cache's prefetch, as last told.
    prefetch: crate::prefetch::PrefetchStats,
}

impl Mirror {
    pub fn new(
        users: HashMap<MapData, UserKey, UserValue>,
        sessions: HashMap<MapData, SessionKey, SessionValue>,
        stats_map: Array<MapData, DaemonStats>,
    ) -> Self {
        Self {
            users,
            sessions,
            live: hashbrown::HashMap::new(),
            unshown: VecDeque::new(),
            stats_map,
            stats_published: None,
            clock: UnixClock::now(),
            expiries: BTreeSet::new(),
            stats: MirrorStats::default(),
            cache: None,
            prefetch: Default::default(),
        }
    }

    /// Shows what `cache` holds per user and in all.
    pub fn set_cache(&mut self, cache: SharedCache) {
        self.cache = Some(cache);
    }

    pub fn stats(&self) -> MirrorStats {
        self.stats
    }

    /// What the prefetch did, published with the counters.
    pub fn set_prefetch(&mut self, stats: crate::prefetch::PrefetchStats) {
        self.prefetch = stats;
    }

    /// Brings the maps up to date with what the engines (one per worker) changed, the
    /// sessions that ended (`closed`, as `(client, server)`), and the attenuations that
    /// ran out; once a second also the counters (`sessions_active` comes from the
    /// dataplane).
    pub fn sync(
        &mut self,
        engines: &mut [&mut AttenuationEngine],
        closed: &[(SocketAddr, SocketAddr)],
        sessions_active: u64,
        now: Instant,
    ) {
        if self
            .stats_published
            .is_none_or(|at| now.duration_since(at) >= STATS_PERIOD)
        {
            self.stats_published = Some(now);
            self.publish_stats(engines, sessions_active, now);
        }
        // A session touches its entry at every command: write each user and each
        // session once per pass, as they stand now.
        let mut users: hashbrown::HashMap<Arc<engine::UserKey>, Option<SocketAddr>> =
            hashbrown::HashMap::new();
        let mut changed = hashbrown::HashSet::new();
        for (worker, engine) in engines.iter_mut().enumerate() {
            for change in engine.take_changes() {
                let client = change.session.map(|(_, client)| client);
                let last = users.entry(change.key.clone()).or_default();
                *last = client.or(*last);
                if let Some((conn, client)) = change.session {
                    let flow = (client, change.key.server);
                    let session = LiveSession {
                        worker,
                        conn,
                        key: change.key,
                        seen: now,
                        shown: false,
                    };
                    match self.live.entry(flow) {
                        hashbrown::hash_map::Entry::Occupied(mut known) => {
                            let (seen, shown) = (known.get().seen, known.get().shown);
                            known.insert(LiveSession {
                                seen,
                                shown,
                                ..session
                            });
                            if shown || now.duration_since(seen) >= SESSION_SHOWN_AFTER {
                                changed.insert(flow);
                            }
                        }
                        hashbrown::hash_map::Entry::Vacant(new) => {
                            new.insert(session);
                            self.unshown.push_back((now, flow));
                        }
                    }
                }
            }
        }
        for (key, client) in users {
            self.refresh_user(engines, &key, client, now);
        }
        // A check is over before it is shown: no syscall for most sessions.
        for &flow in closed {
            if let Some(session) = self.live.remove(&flow)
                && session.shown
            {
                let _ = self.sessions.remove(&session_key(flow.0, flow.1));
            }
        }
        while let Some(&(seen, flow)) = self.unshown.front()
            && now.duration_since(seen) >= SESSION_SHOWN_AFTER
        {
            self.unshown.pop_front();
            changed.insert(flow);
        }
        for flow in changed {
            self.show_session(engines, flow);
        }
        while let Some((at, _)) = self.expiries.first()
            && *at <= now
        {
            let (_, key) = self.expiries.pop_first().expect("just looked at it");
            self.refresh_user(engines, &key, None, now);
        }
    }

    fn publish_stats(
        &mut self,
        engines: &[&mut AttenuationEngine],
        sessions_active: u64,
        now: Instant,
    ) {
        let mut counters = engine::Counters::default();
        for engine in engines {
            counters.add_worker(engine.counters());
        }
        let Some(first) = engines.first() else {
            return;
        };
        let cache = self
            .cache
            .as_ref()
            .map(|c| cache::lock(c).stats())
            .unwrap_or_default();
        let stats = DaemonStats {
            checks_seen: counters.checks_seen,
            checks_answered_locally: counters.answered_locally,
            checks_passed_through: counters.passed_through,
            upstream_logins_avoided: counters.upstream_logins_avoided,
            sessions_active,
            table_entries: first.table().len() as u64,
            gc_runs: counters.gc_runs,
            users_not_mirrored: self.stats.users_not_mirrored,
            updated_at: self.clock.unix(now),
            interval_secs: first.interval(now).as_secs(),
            rule_decisions: counters.rule_decisions().map(|(_, _, n)| n),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_bytes_served: cache.bytes_served,
            cache_evictions: cache.store.evictions,
            cache_sync_mismatches: cache.mismatches,
            cache_messages: cache.store.messages as u64,
            cache_bytes: cache.store.bytes,
            prefetch_state: self.prefetch.verdict.map_or(0, |v| v.state()),
            prefetch_runs: self.prefetch.runs,
            prefetch_failures: self.prefetch.failures,
            prefetch_messages: self.prefetch.messages,
            bytes_prefetched: self.prefetch.bytes,
        };
        let _ = self.stats_map.set(0, stats, 0);
    }

    /// Writes a user's entry as the (shared) table has it (deletes it if gone); `client` is
    /// the subscriber of the session that just touched it, if any.
    fn refresh_user(
        &mut self,
        engines: &[&mut AttenuationEngine],
        key: &Arc<engine::UserKey>,
        client: Option<SocketAddr>,
        now: Instant,
    ) {
        let Some(map_key) = user_key(key) else {
            self.stats.users_not_mirrored += 1;
            return;
        };
        let Some(engine) = engines.first() else {
            return;
        };
        let Some(entry) = engine.table().get(key) else {
            let _ = self.users.remove(&map_key);
            return;
        };
        // Each engine knows which servers notified it of new mail: the longest n in force.
        let interval = engines
            .iter()
            .map(|e| e.interval_for(key, now))
            .max()
            .unwrap_or_default();
        let attenuated = entry.fresh(now, interval);
        let until = entry.verified().map(|t| t + interval);
        if attenuated && let Some(until) = until {
            self.expiries.insert((until, key.clone()));
        }
        let last_client = match client {
            Some(client) => text(&client.to_string()),
            None => self
                .users
                .get(&map_key, 0)
                .map_or([0; common::ADDR_TEXT], |v| v.last_client),
        };
        let state = if entry.sessions > 0 {
            "in-session"
        } else if attenuated {
            "attenuated"
        } else {
            "pass-through"
        };
        let (cached_messages, cached_bytes) = self
            .cache
            .as_ref()
            .map_or((0, 0), |c| cache::lock(c).usage(key.server, &key.user));
        let value = UserValue {
            state: text(state),
            last_client,
            attenuated_until: if attenuated {
                until.map_or(0, |t| self.clock.unix(t))
            } else {
                0
            },
            last_verified_empty: entry.verified().map_or(0, |t| self.clock.unix(t)),
            last_check: self.clock.unix(entry.last_check()),
            checks_answered_locally: u64::from(entry.answered_locally),
            checks_passed_through: u64::from(entry.passed_through),
            cached_messages: cached_messages as u64,
            cached_bytes,
        };
        // The only way a write fails here is a full map (E2BIG).
        match self.users.insert(map_key, value, 0) {
            Ok(()) => self.stats.users_mirrored += 1,
            Err(_) => self.stats.users_not_mirrored += 1,
        }
    }

    /// Writes a live session's row as its engine has it; forgets a session its engine no
    /// longer has (the connection ends in a later pass).
    fn show_session(&mut self, engines: &[&mut AttenuationEngine], flow: (SocketAddr, SocketAddr)) {
        let Some(session) = self.live.get_mut(&flow) else {
            return;
        };
        let Some(state) = engines[session.worker].state(session.conn) else {
            if !session.shown {
                self.live.remove(&flow);
            }
            return;
        };
        let Some(user) = bounded_text::<{ common::USER_TEXT }>(&session.key.user.to_string())
        else {
            return;
        };
        let value = SessionValue {
            user,
            state: text(state_word(state)),
        };
        match self.sessions.insert(session_key(flow.0, flow.1), value, 0) {
            Ok(()) => session.shown = true,
            Err(_) => self.stats.sessions_not_mirrored += 1,
        }
    }
}

fn state_word(state: State) -> &'static str {
    match state {
        State::Authorization | State::SaslPlain => "authorization",
        State::Transaction { terminate: true } => "local",
        State::Transaction { terminate: false } => "relayed",
        State::Tunnel => "tunnel",
        State::Closed => "closed",
    }
}

fn user_key(key: &engine::UserKey) -> Option<UserKey> {
    Some(UserKey {
        server: text(&key.server.to_string()),
        user: bounded_text(&key.user.to_string())?,
    })
}

fn session_key(client: SocketAddr, server: SocketAddr) -> SessionKey {
    SessionKey {
        client: text(&client.to_string()),
        server: text(&server.to_string()),
    }
}

/// `s` as a NUL-terminated text field, `None` if it does not fit.
fn bounded_text<const N: usize>(s: &str) -> Option<Text<N>> {
    (s.len() < N).then(|| text(s))
}

/// `s` as a NUL-terminated text field, cut to fit (addresses and words always fit).
pub fn text<const N: usize>(s: &str) -> Text<N> {
    let mut out = [0 as c_char; N];
    for (slot, byte) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *slot = byte as c_char;
    }
    out
}

/// A text field back as a string, up to its NUL.
///
/// Bytes that could drive a terminal (control characters, anything not ASCII) are
/// shown as `\xNN`: the mirror already writes usernames escaped, and a map written by
/// anything else must not reach an operator's screen raw either.
pub fn text_str(field: &[c_char]) -> String {
    let mut text = String::new();
    for byte in field.iter().take_while(|&&c| c != 0).map(|&c| c as u8) {
        if byte.is_ascii_graphic() || byte == b' ' {
            text.push(char::from(byte));
        } else {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_round_trip_and_always_end_in_nul() {
        let field: Text<8> = text("alice");
        assert_eq!(text_str(&field), "alice");
        let cut: Text<4> = text("abcdef");
        assert_eq!(text_str(&cut), "abc");
        assert_eq!(cut[3], 0);
        assert!(bounded_text::<4>("abcd").is_none());
        assert!(bounded_text::<5>("abcd").is_some());
        let longest = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        assert_eq!(text_str(&text::<{ common::ADDR_TEXT }>(longest)), longest);
    }

    #[test]
    fn usernames_reach_the_operator_escaped() {
        let name = pop3_engine::attenuation::UserName::from(&b"ev\x1b[2Jil\\"[..]);
        let field: Text<32> = text(&name.to_string());
        assert_eq!(text_str(&field), "ev\\x1b[2Jil\\\\");
        // A raw field written by anything else is escaped on the way out too.
        let raw: Text<8> = text("a\u{7}b");
        assert_eq!(text_str(&raw), "a\\x07b");
    }

    #[test]
    fn unix_clock_converts_both_ways_around_its_base() {
        let clock = UnixClock::now();
        let base = clock.base_unix.as_secs();
        assert_eq!(clock.unix(clock.base + Duration::from_secs(90)), base + 90);
        if let Some(earlier) = clock.base.checked_sub(Duration::from_secs(30)) {
            let unix = clock.unix(earlier);
            assert!((base - 30..=base - 29).contains(&unix), "{unix} vs {base}");
        }
    }
}
