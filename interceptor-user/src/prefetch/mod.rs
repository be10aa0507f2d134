//! The patent's cache action: in a lull, the new mail of the users this edge serves is
//! copied from the mail server into the edge cache, so a later check retrieves it from
//! the edge (after the engine's UIDL handshake) and the server's busy hour carries less.
//!
//! - [`config`]: the `[prefetch]` settings and the schedule (window, busy hours, load);
//! - [`profile`]: the optional profile file of home edges;
//! - [`pop3`]: the bounded POP3 client (never DELE);
//! - [`worker`]: the task on the tokio runtime that runs the sessions.
//!
//! [`Prefetcher`] runs on the operator thread once per tick, and only decides: which
//! users (those whose home the profile says is here, else those this edge has seen, the
//! patent's "last known point"), and whether now is a lull. The sessions, and the
//! writing of the files, happen on the tokio runtime; the operator thread only
//! renames a synced file into place ([`crate::cache::store::Store::commit`]).
//! The server is logged into with its master-user mechanism (`USER user*master`), so
//! the edge never needs a subscriber's password.

pub mod config;
pub mod pop3;
pub mod profile;
pub mod worker;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pop3_engine::attenuation::{AttenuationEngine, UserKey, UserName};

use crate::{
    cache::{EdgeCache, store::UserId},
    waker::Waker,
};
use config::{Config, Verdict};
use profile::{Home, Profile};
use worker::{Job, Outcome, Report, Worker};

/// Most users whose last fill is remembered (past it, the memory starts again).
const MAX_FILLED: usize = 1 << 20;

/// What the prefetch did, for the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Sessions with the mail server that ended (done, deferred or failed).
    pub runs: u64,
    /// Sessions that failed: server down, master login refused, a wrong answer.
    pub failures: u64,
    /// Messages copied into the cache.
    pub messages: u64,
    /// Message bytes copied into the cache.
    pub bytes: u64,
    /// Whether it is a lull now (scheduled runs may start).
    pub lull: bool,
    /// Why, or why not: see [`Verdict::state`].
    pub verdict: Option<Verdict>,
}

/// Decides what to prefetch and takes in what the worker fetched.
pub struct Prefetcher {
    config: Arc<Config>,
    worker: Worker,
    gate: worker::Gate,
    profile: Option<Profile>,
    /// Users not to look at again before then (done recently, or failed).
    not_before: HashMap<UserId, Instant>,
    /// When each user's cache last took a prefetched message.
    filled: HashMap<UserId, Instant>,
    /// Users the last scan found, waiting for room in the worker's queue.
    pending: VecDeque<(SocketAddr, Vec<u8>)>,
    /// The intercepted ports: a notification that names no port is for all of them.
    ports: Vec<u16>,
    /// Users queued or being fetched.
    busy: HashSet<UserId>,
    next_scan: Option<Instant>,
    per_user: u64,
    stats: PrefetchStats,
}

impl Prefetcher {
    /// Starts the worker on `runtime`; `cache` is where messages go; `ports` are the
    /// intercepted ones.
    pub fn start(
        config: Config,
        ports: Vec<u16>,
        cache: &EdgeCache,
        runtime: &tokio::runtime::Handle,
        waker: Arc<Waker>,
    ) -> std::io::Result<Self> {
        let profile = match (&config.profile, &config.edge) {
            (Some(path), Some(edge)) => Some(Profile::load(path, edge)?),
            _ => None,
        };
        let config = Arc::new(config);
        let gate = worker::Gate::default();
        let worker = Worker::start(
            config.clone(),
            runtime,
            cache.store().stager(),
            gate.clone(),
            waker,
        );
        Ok(Self {
            config,
            worker,
            gate,
            profile,
            not_before: HashMap::new(),
            filled: HashMap::new(),
            pending: VecDeque::new(),
            ports,
            busy: HashSet::new(),
            next_scan: None,
            per_user: cache.store().limits().per_user,
            stats: PrefetchStats::default(),
        })
    }

    pub fn stats(&self) -> PrefetchStats {
        self.stats
    }

    /// Once per dataplane pass: judges the lull, takes in what was fetched, every
    /// `every` looks for the users due, and queues them as the worker has room.
    pub fn tick(&mut self, engine: &AttenuationEngine, cache: &mut EdgeCache, now: Instant) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let load = engine.load(&self.config.load_rule, now);
        let scheduled = self.config.schedule.verdict(unix, load, false);
        let demand = self.config.schedule.verdict(unix, load, true);
        let mut gate = 0;
        if scheduled == Verdict::Lull {
            gate |= worker::SCHEDULED_OPEN;
        }
        if demand == Verdict::Lull {
            gate |= worker::DEMAND_OPEN;
        }
        self.gate.store(gate, Ordering::Relaxed);
        self.stats.lull = scheduled == Verdict::Lull;
        self.stats.verdict = Some(scheduled);
        self.take_reports(cache, now);
        if scheduled != Verdict::Lull {
            return;
        }
        if self.next_scan.is_none_or(|at| now >= at) {
            self.next_scan = Some(now + self.config.every);
            self.not_before.retain(|_, at| *at > now);
            self.pending = self.candidates(engine, cache, now).into();
        }
        while let Some((server, user)) = self.pending.front() {
            if !self.queue(cache, *server, &user.clone(), false) {
                break;
            }
            self.pending.pop_front();
        }
    }

    /// A new-mail notification for `user` at `server` (any port, or `port`): fetch
    /// that user's mail now, if the load allows (see [`config::Schedule::verdict`]).
    pub fn notified(
        &mut self,
        engine: &AttenuationEngine,
        cache: &mut EdgeCache,
        server: IpAddr,
        port: Option<u16>,
        user: &[u8],
    ) {
        if self.gate.load(Ordering::Relaxed) & worker::DEMAND_OPEN == 0
            || !valid_login(user, &self.config.separator)
        {
            return;
        }
        let ports: Vec<u16> = match port {
            Some(port) => vec![port],
            None => self.ports.clone(),
        };
        for port in ports {
            let server = SocketAddr::new(server, port);
            let key = UserKey {
                server,
                user: UserName::from(user),
            };
            let seen = engine.table().get(&key).is_some();
            let home = self.home(server, user);
            if home == Home::Here || (seen && home == Home::Unknown) {
                self.queue(cache, server, user, true);
            }
        }
    }

    fn home(&self, server: SocketAddr, user: &[u8]) -> Home {
        self.profile
            .as_ref()
            .map_or(Home::Unknown, |p| p.home(server, user))
    }

    /// The users to look at now: the profile's residents, and the users this edge has
    /// seen whose home is not elsewhere, unless the server said less than n ago that
    /// their maildrop is empty (nothing new to fetch), or their prefetched mail was
    /// evicted before they came for it (fetching it again would only evict another's).
    fn candidates(
        &self,
        engine: &AttenuationEngine,
        cache: &EdgeCache,
        now: Instant,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let table = engine.table();
        let mut users: Vec<(SocketAddr, Vec<u8>, Option<Instant>)> = Vec::new();
        if let Some(profile) = &self.profile {
            users.extend(profile.residents().map(|(server, user)| {
                let key = UserKey {
                    server,
                    user: UserName::from(user),
                };
                let last_check = table.get(&key).map(|entry| entry.last_check());
                (server, user.to_vec(), last_check)
            }));
        }
        // `interval_for` reads the table too: never under `for_each`'s shard lock (the
        // same lock again would wait forever, and the worker behind it).
        let mut seen = Vec::new();
        table.for_each(|key, entry| {
            if self.home(key.server, &key.user) == Home::Unknown {
                let seen_empty = matches!(entry.view(), Some(None));
                seen.push((key.clone(), seen_empty, entry.last_check()));
            }
        });
        for (key, seen_empty, last_check) in seen {
            let empty_now = seen_empty && {
                let interval = engine.interval_for(&key, now);
                table.get(&key).is_some_and(|e| e.fresh(now, interval))
            };
            if !empty_now {
                users.push((key.server, key.user.to_vec(), Some(last_check)));
            }
        }
        let store = cache.store();
        users
            .into_iter()
            .filter(|(server, user, last_check)| {
                let id = UserId::new(*server, user);
                let evicted_unread = self.filled.get(&id).is_some_and(|filled| {
                    store.usage(id).1 == 0 && last_check.is_none_or(|at| at < *filled)
                });
                valid_login(user, &self.config.separator)
                    && !evicted_unread
                    && !self.busy.contains(&id)
                    && self.not_before.get(&id).is_none_or(|at| *at <= now)
            })
            .map(|(server, user, _)| (server, user))
            .collect()
    }

    /// Queues a session for `user`; false when the queue is full.
    fn queue(
        &mut self,
        cache: &mut EdgeCache,
        server: SocketAddr,
        user: &[u8],
        demand: bool,
    ) -> bool {
        let id = UserId::new(server, user);
        if self.busy.contains(&id) {
            return true;
        }
        let store = cache.store_mut();
        let job = Job {
            id,
            server,
            user: user.to_vec(),
            cached: store
                .listing(id)
                .into_iter()
                .map(|(uidl, _)| uidl)
                .collect(),
            room: self.per_user.saturating_sub(store.usage(id).1),
            demand,
        };
        let queued = self.worker.submit(job);
        if queued {
            self.busy.insert(id);
        }
        queued
    }

    fn take_reports(&mut self, cache: &mut EdgeCache, now: Instant) {
        let reports: Vec<Report> = self.worker.reports().collect();
        for report in reports {
            match report {
                Report::Staged(staged) => {
                    let (id, size) = (staged.user(), staged.size());
                    match cache.store_mut().commit(staged) {
                        Ok(()) => {
                            if self.filled.len() >= MAX_FILLED {
                                self.filled.clear();
                            }
                            self.filled.insert(id, now);
                            self.stats.messages += 1;
                            self.stats.bytes += size;
                        }
                        Err(err) => tracing::debug!(%err, "prefetch: a message not kept"),
                    }
                }
                Report::Finished {
                    id,
                    server,
                    outcome,
                } => {
                    self.busy.remove(&id);
                    self.stats.runs += 1;
                    let wait = match outcome {
                        Outcome::Done => self.config.every,
                        Outcome::Deferred(why) => {
                            tracing::debug!(%server, why, "prefetch deferred");
                            Duration::ZERO
                        }
                        Outcome::Failed(err) => {
                            self.stats.failures += 1;
                            tracing::warn!(%server, %err, retry = ?self.config.retry, "prefetch failed");
                            self.config.retry
                        }
                    };
                    self.not_before.insert(id, now + wait);
                }
            }
        }
    }
}

/// Whether `user` can be put in a master-user login: printable, no space, and without
/// the separator (which would name another master user).
fn valid_login(user: &[u8], separator: &str) -> bool {
    !user.is_empty()
        && user.len() <= 255
        && user.iter().all(u8::is_ascii_graphic)
        && !user
            .windows(separator.len())
            .any(|w| w == separator.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_printable_names_without_the_separator_make_a_login() {
        assert!(valid_login(b"alice", "*"));
        assert!(valid_login(b"alice@example.org", "*"));
        assert!(!valid_login(b"alice*admin", "*"));
        assert!(!valid_login(b"ali ce", "*"));
        assert!(!valid_login(b"alice\r\nDELE 1", "*"));
        assert!(!valid_login(b"", "*"));
        assert!(valid_login(b"a*b", "%%"));
        assert!(!valid_login(b"a%%b", "%%"));
    }
}
