//! The attenuation engine: the patent's state machine answers empty POP3
//! checks at the edge and passes everything else to the mail server.
//!
//! A check is answered locally only when the password matches the last one the server
//! accepted for that user on that server and the server said the maildrop was empty
//! less than the interval n ago. Everything else reaches the server, which stays the
//! only authority on passwords and mail.
//!
//! Where the patent's answer is not valid POP3 the engine follows RFC 1939: LIST and
//! UIDL without argument on an empty maildrop answer `+OK` and an empty listing (the
//! patent says `-ERR no such message`). NOOP and RSET are answered locally only in
//! attenuated sessions; in passed-through sessions they reach the server (RSET must
//! undo deletions there). An attenuated session that outlives the interval logs in
//! to the server behind the client's back before answering any command about the
//! maildrop, so "empty" is never claimed from stale knowledge.
//!
//! # Memory
//!
//! Per connection: the command gate's bound (about 17 KB: one partial line, held client
//! input, one partial status line), a 4 KB CAPA body at most, the session's login
//! lines, and with the edge cache the server's listing once a RETR or TOP asked for it
//! (at most `edge_cache::MAX_NUMBERING`, 16 KiB). Shared: the user table, bounded by
//! [`Config::table_size`], and one small record per mail server (at most
//! [`MAX_SERVERS`]).
//!
//! # Trust
//!
//! Every client line passes [`crate::gate`]'s checks before the engine acts on it, and
//! a pass-through session (STLS, APOP, other SASL, opted-out users) is relayed through
//! a [`crate::gate::Gate`]: nothing a subscriber sends reaches the server unread before
//! the server accepted a login. Usernames are the exact bytes sent; a user gets a table
//! entry only once the server accepted a password for it, and a login the server takes
//! in a pass-through session (behind a refused STLS, APOP, AUTH PLAIN) ends the local
//! answers for the password known before.

mod caps;
pub mod check_rules;
mod config;
mod edge_cache;
mod fsm;
pub mod load;
mod maildrop;
pub mod periodicity;
mod shared_table;
mod stamp;
mod table;
mod verifier;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use hashbrown::HashMap;

pub use caps::ServerCaps;
pub use config::{Config, FastCheck, LoadAdaptive, LoginDelay, LoginDelayAction};
pub use fsm::State;
pub use maildrop::{MAX_MAILDROP, Maildrop};
pub use shared_table::{EntrySnapshot, SharedTable};
pub use table::{Entry, EntryMut, EntryRef, FastCheckVerdict, Timed, UserKey, UserName, UserTable};
pub use verifier::{Salt, Verifier};

use crate::session::{Action, ConnId, ConnInfo, Event, Output, Pop3Engine};
use fsm::Session;

/// Most mail servers remembered; past it the record restarts.
pub const MAX_SERVERS: usize = 4096;

/// What the operator wants counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Login attempts (PASS or AUTH PLAIN) seen.
    pub checks_seen: u64,
    /// Login attempts answered without the server (`+OK` inside the interval).
    pub answered_locally: u64,
    /// Login attempts and tunnelled sessions that reached the server.
    pub passed_through: u64,
    /// Logins the server did not have to do (a session answered at the edge that later
    /// logs in behind the client, to fetch a message, is not counted).
    pub upstream_logins_avoided: u64,
    /// Times the user table was collected (expired entries dropped).
    pub gc_runs: u64,
    /// New-mail notifications received (the demand rule).
    pub notifications: u64,
    /// Notifications that ended the attenuation of a known user.
    pub notifications_applied: u64,
    /// Checks that could have been answered locally, passed through by the one-in-m rule.
    pub one_in_m_passed: u64,
    /// Fast repeated checks passed through by the fast-check reward.
    pub fast_checks_rewarded: u64,
    /// Checks answered locally during a fast-check penalty (fresh view or not).
    pub fast_checks_penalized: u64,
    /// Metronomic checks the periodicity rule answered locally (past n, or a fast-check
    /// reward refused to a poller).
    pub periodic_held: u64,
    /// Irregular checks the periodicity rule passed through (inside n).
    pub irregular_passed: u64,
    /// Checks sooner than LOGIN-DELAY answered locally.
    pub login_delay_local: u64,
    /// Checks sooner than LOGIN-DELAY refused with `-ERR [LOGIN-DELAY]`.
    pub login_delay_refused: u64,
    /// Checks answered locally only because load had raised n.
    pub load_held: u64,
}

impl Counters {
    /// The optional rules' decisions as (rule, decision, count), for the operator.
    pub fn rule_decisions(&self) -> [(&'static str, &'static str, u64); 8] {
        [
            ("one_in_m", "passed", self.one_in_m_passed),
            ("fast_check", "rewarded", self.fast_checks_rewarded),
            ("fast_check", "penalized", self.fast_checks_penalized),
            ("periodicity", "held", self.periodic_held),
            ("periodicity", "passed", self.irregular_passed),
            ("login_delay", "local", self.login_delay_local),
            ("login_delay", "refused", self.login_delay_refused),
            ("load", "held", self.load_held),
        ]
    }

    /// Counts what each rule decided about one check.
    fn count(&mut self, d: &check_rules::Decision) {
        use check_rules::Outcome;
        use periodicity::Rhythm;
        let local = matches!(d.outcome, Outcome::Local { .. });
        self.fast_checks_rewarded += u64::from(d.fast_check == FastCheckVerdict::Rewarded);
        self.fast_checks_penalized += u64::from(d.fast_check == FastCheckVerdict::Penalized);
        self.one_in_m_passed += u64::from(d.one_in_m);
        self.periodic_held += u64::from(local && d.periodicity == Some(Rhythm::Metronomic));
        self.irregular_passed += u64::from(!local && d.periodicity == Some(Rhythm::Irregular));
        self.login_delay_local += u64::from(local && d.login_delay);
        self.login_delay_refused += u64::from(d.outcome == Outcome::Refuse);
        self.load_held += u64::from(d.load_held);
    }
}

impl Counters {
    /// Adds the counters of another worker's engine over the same [`SharedTable`]: the
    /// sessions' counts add up; every engine hears every notification and collects the
    /// whole table, so those counts are the largest of any one engine's.
    pub fn add_worker(&mut self, o: &Self) {
        self.checks_seen += o.checks_seen;
        self.answered_locally += o.answered_locally;
        self.passed_through += o.passed_through;
        self.upstream_logins_avoided += o.upstream_logins_avoided;
        self.gc_runs = self.gc_runs.max(o.gc_runs);
        self.notifications = self.notifications.max(o.notifications);
        self.notifications_applied = self.notifications_applied.max(o.notifications_applied);
        self.one_in_m_passed += o.one_in_m_passed;
        self.fast_checks_rewarded += o.fast_checks_rewarded;
        self.fast_checks_penalized += o.fast_checks_penalized;
        self.periodic_held += o.periodic_held;
        self.irregular_passed += o.irregular_passed;
        self.login_delay_local += o.login_delay_local;
        self.login_delay_refused += o.login_delay_refused;
        self.load_held += o.load_held;
    }
}

/// A user whose table entry may have changed, for mirrors of the table (the pinned BPF
/// map): look it up in [`AttenuationEngine::table`]; absent means removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserChange {
    /// The user whose entry changed.
    pub key: Arc<UserKey>,
    /// The session that touched the entry and its subscriber; `None` for a removal or
    /// a change no session made (a new-mail notification).
    pub session: Option<(ConnId, SocketAddr)>,
}

/// What the engine has learnt about one mail server.
#[derive(Debug, Default)]
struct ServerRecord {
    /// Its last greeting carried an APOP timestamp: sessions are greeted with the
    /// server's own greeting, so that APOP clients can log in.
    apop: bool,
    /// Its capabilities and when they were learnt; refreshed once older than
    /// [`Config::caps_ttl`], and not replaced by a CAPA that failed.
    caps: Option<(ServerCaps, Instant)>,
    /// When it last sent a new-mail notification.
    last_notification: Option<Instant>,
}

/// State shared by every connection.
#[derive(Debug)]
struct Shared {
    config: Config,
    salt: Salt,
    table: SharedTable,
    servers: HashMap<SocketAddr, ServerRecord>,
    /// Notifications may have been lost until then (the way they come by was down): a
    /// view taken before it is trusted for [`Config::interval`] only.
    missed_until: Option<Instant>,
    counters: Counters,
    load: load::LoadMeter,
}

impl Shared {
    /// The server's capabilities as last learnt, however old.
    fn caps(&self, server: SocketAddr) -> Option<&ServerCaps> {
        self.servers
            .get(&server)?
            .caps
            .as_ref()
            .map(|(caps, _)| caps)
    }

    /// Whether the server's capabilities were learnt less than the TTL ago.
    fn caps_fresh(&self, server: SocketAddr, now: Instant) -> bool {
        self.servers
            .get(&server)
            .and_then(|r| r.caps.as_ref())
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) < self.config.caps_ttl)
    }

    /// Whether a new session to `server` can be greeted locally: its greeting is known
    /// and offers no APOP.
    fn greets_locally(&self, server: SocketAddr) -> bool {
        self.servers.get(&server).is_some_and(|r| !r.apop)
    }

    fn record(&mut self, server: SocketAddr) -> &mut ServerRecord {
        if self.servers.len() >= MAX_SERVERS && !self.servers.contains_key(&server) {
            self.servers.clear();
        }
        self.servers.entry(server).or_default()
    }

    fn learn_greeting(&mut self, server: SocketAddr, apop: bool) {
        self.record(server).apop = apop;
    }

    fn learn_caps(&mut self, server: SocketAddr, caps: ServerCaps, now: Instant) {
        self.record(server).caps = Some((caps, now));
    }

    /// The patent's n for users of servers that send no notifications: [`Config::interval`],
    /// raised by load when [`Config::load_adaptive`] is set.
    fn interval(&self, now: Instant) -> std::time::Duration {
        match &self.config.load_adaptive {
            Some(rule) => self.load.interval(self.config.interval, rule, now),
            None => self.config.interval,
        }
    }

    /// The patent's n for `key`: [`Config::notify_interval`] while its server sends
    /// new-mail notifications and one has reached this very user (so the server names
    /// the user as the client does), [`Shared::interval`] otherwise.
    fn interval_for(&self, key: &UserKey, now: Instant) -> std::time::Duration {
        let base = self.base_interval_for(key, now);
        if base == self.config.interval {
            self.interval(now)
        } else {
            base
        }
    }

    /// [`Shared::interval_for`] without the load-adaptive rule.
    fn base_interval_for(&self, key: &UserKey, now: Instant) -> std::time::Duration {
        let notifying = self
            .servers
            .get(&key.server)
            .and_then(|r| r.last_notification)
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.notify_silence);
        let entry = self.table.get(key);
        let reachable = entry.as_ref().is_some_and(|e| e.notified().is_some());
        // A view older than a possible loss of notifications could hide mail they told.
        let complete = entry
            .and_then(|e| e.verified())
            .is_some_and(|v| self.missed_until.is_none_or(|m| v >= m));
        if notifying && reachable && complete {
            self.config.notify_interval
        } else {
            self.config.interval
        }
    }

    /// Whether `user` (exact bytes) is on the opt-out list.
    fn opted_out(&self, user: &[u8]) -> bool {
        std::str::from_utf8(user).is_ok_and(|u| self.config.opt_out.contains(u))
    }
}

/// The attenuation engine as a [`Pop3Engine`].
#[derive(Debug)]
pub struct AttenuationEngine {
    shared: Shared,
    sessions: HashMap<ConnId, Session>,
    /// Autologout deadlines, earliest first.
    deadlines: BTreeSet<(Instant, ConnId)>,
    next_gc: Option<Instant>,
    /// Entries touched since the last [`AttenuationEngine::take_changes`] (bounded by
    /// the table size: a mirror that falls behind resynchronises).
    changes: Vec<UserChange>,
}

impl AttenuationEngine {
    /// An engine with an empty table. The salt of its password verifiers and the epoch
    /// of its table's times (any time: the start) come from the caller (the daemon draws
    /// the salt from the OS once at start; tests fix one), so the engine itself reads
    /// nothing from the operating system.
    pub fn new(config: Config, salt: Salt, epoch: Instant) -> Self {
        let table = Self::table_for(&config, salt, epoch, 1);
        Self::with_table(config, salt, table)
    }

    /// An empty table in `shards` shards for engines with `config` and `salt` (see
    /// [`Self::with_table`]).
    pub fn table_for(config: &Config, salt: Salt, epoch: Instant, shards: usize) -> SharedTable {
        let lifetime = config
            .interval
            .max(config.notify_interval)
            .max(config.load_adaptive.map_or(config.interval, |l| l.max))
            * config.periodicity.map_or(1, |f| f.get());
        SharedTable::new(
            config.table_size,
            lifetime,
            config.maildrop_budget,
            epoch,
            shards,
            salt,
        )
    }

    /// An engine over `table`, which other engines (other threads) may share: every engine
    /// of one table must have the `salt` the table was made with, for their verifiers to
    /// agree, and the same `config`.
    pub fn with_table(config: Config, salt: Salt, table: SharedTable) -> Self {
        Self {
            shared: Shared {
                table,
                config,
                salt,
                servers: HashMap::new(),
                missed_until: None,
                counters: Counters::default(),
                load: load::LoadMeter::default(),
            },
            sessions: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_gc: None,
            changes: Vec::new(),
        }
    }

    /// The counters, for status and metrics.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// The user table, for the operator surface (shared with the engines of other workers
    /// made with [`Self::with_table`]).
    pub fn table(&self) -> &SharedTable {
        &self.shared.table
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Replaces the opt-out list (SIGHUP). Sessions already open keep their course;
    /// the next login of a listed user reaches the server.
    pub fn set_opt_out(&mut self, users: std::collections::HashSet<String>) {
        self.shared.config.opt_out = users;
    }

    /// What a mail server offers, once learnt.
    pub fn server_caps(&self, server: SocketAddr) -> Option<&ServerCaps> {
        self.shared.caps(server)
    }

    /// The demand rule: the mail server at `server` (any port, or `port`) said new mail
    /// arrived for `user`. That user's attenuation there ends at once, a session running
    /// now cannot renew it, and the server counts as notifying (its users are attenuated
    /// for [`Config::notify_interval`]). Returns the number of entries it ended.
    pub fn new_mail(
        &mut self,
        server: IpAddr,
        port: Option<u16>,
        user: &[u8],
        now: Instant,
    ) -> usize {
        self.shared.counters.notifications += 1;
        let servers: Vec<SocketAddr> = self
            .shared
            .servers
            .keys()
            .filter(|s| s.ip() == server && port.is_none_or(|p| s.port() == p))
            .copied()
            .collect();
        let mut ended = 0;
        for server in servers {
            let key = UserKey {
                server,
                user: UserName::from(user),
            };
            let Some(key) = self.shared.table.key(&key) else {
                continue;
            };
            // Only a notification that reached a known user shows the server notifies
            // in the names its clients use.
            self.shared.record(server).last_notification = Some(now);
            self.shared.table.new_mail(&key, now);
            if self.changes.len() < self.shared.config.table_size {
                self.changes.push(UserChange { key, session: None });
            }
            ended += 1;
        }
        self.shared.counters.notifications_applied += ended as u64;
        ended
    }

    /// The n in force now for users of servers that send no notifications (moved by
    /// load when [`Config::load_adaptive`] is set).
    pub fn interval(&self, now: Instant) -> std::time::Duration {
        self.shared.interval(now)
    }

    /// The load the engine measures at `now`, from 0 (none) to 1 (full), weighed by
    /// `rule` (see [the `load` module](crate::attenuation::load)): what the edge cache's
    /// prefetch waits on.
    pub fn load(&self, rule: &LoadAdaptive, now: Instant) -> f64 {
        self.shared.load.load(rule, now)
    }

    /// Notifications may have been lost until `now` (the broker that fans them out was
    /// down): every view taken before is trusted for [`Config::interval`] only, even for
    /// users of a notifying server, until a later session renews it.
    pub fn notifications_missed(&mut self, now: Instant) {
        self.shared.missed_until = self.shared.missed_until.max(Some(now));
    }

    /// The n in force for `key` now (see [`Config::notify_interval`]).
    pub fn interval_for(&self, key: &UserKey, now: Instant) -> std::time::Duration {
        self.shared.interval_for(key, now)
    }

    /// The entries touched and removed since the last call, oldest first. A mirror
    /// refreshes each from [`AttenuationEngine::table`].
    pub fn take_changes(&mut self) -> Vec<UserChange> {
        let mut changes = std::mem::take(&mut self.changes);
        changes.extend(
            self.shared
                .table
                .take_removed()
                .into_iter()
                .map(|key| UserChange { key, session: None }),
        );
        changes
    }

    fn note_change(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        if let Some(key) = session.user_key()
            && self.changes.len() < self.shared.config.table_size
        {
            self.changes.push(UserChange {
                key: key.clone(),
                session: Some((conn, session.client())),
            });
        }
    }

    /// The state of a connection, if it is known.
    pub fn state(&self, conn: ConnId) -> Option<State> {
        self.sessions.get(&conn).map(|s| s.state)
    }

    fn rearm(&mut self, conn: ConnId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        self.deadlines.remove(&(session.deadline, conn));
        if session.state != State::Closed {
            session.deadline = now + self.shared.config.autologout;
            self.deadlines.insert((session.deadline, conn));
        }
    }
}

impl Pop3Engine for AttenuationEngine {
    fn open(&mut self, conn: ConnId, info: ConnInfo, now: Instant, out: &mut Vec<Output>) {
        let mut actions = Vec::new();
        let deadline = now + self.shared.config.autologout;
        self.sessions.insert(
            conn,
            Session::open(info, &self.shared, deadline, &mut actions),
        );
        self.deadlines.insert((deadline, conn));
        self.next_gc
            .get_or_insert(now + self.shared.config.gc_interval);
        emit(conn, actions, out);
    }

    fn handle(&mut self, conn: ConnId, event: Event<'_>, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let sh = &mut self.shared;
        let mut actions = Vec::new();
        let a = &mut actions;
        match event {
            Event::ClientData(data) => session.client_data(data, sh, now, a),
            Event::ClientClosed => session.client_closed(sh, now, a),
            Event::UpstreamConnected => session.upstream_connected(sh, now, a),
            Event::UpstreamData(data) => session.upstream_data(data, sh, now, a),
            Event::UpstreamClosed | Event::UpstreamFailed => session.upstream_lost(sh, now, a),
            Event::Cached(message) => session.cached(message, sh, now, a),
        }
        // Autologout counts data in either direction: a long RETR to a slow client is
        // not idleness.
        let data = matches!(event, Event::ClientData(_) | Event::UpstreamData(_));
        if data || session.state == State::Closed {
            self.rearm(conn, now);
        }
        self.note_change(conn);
        emit(conn, actions, out);
    }

    fn close(&mut self, conn: ConnId, now: Instant) {
        self.note_change(conn);
        if let Some(mut session) = self.sessions.remove(&conn) {
            self.deadlines.remove(&(session.deadline, conn));
            session.release(&mut self.shared, now);
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        let autologout = self.deadlines.first().map(|(t, _)| *t);
        autologout.into_iter().chain(self.next_gc).min()
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        while let Some(&(deadline, conn)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(session) = self.sessions.get_mut(&conn) {
                let mut actions = Vec::new();
                session.autologout(&mut self.shared, now, &mut actions);
                emit(conn, actions, out);
            }
        }
        if self.next_gc.is_some_and(|t| t <= now) {
            let collected = self.shared.table.collect(now);
            self.shared.counters.gc_runs += 1;
            tracing::debug!(
                collected,
                users = self.shared.table.len(),
                "user table collected"
            );
            self.next_gc = Some(now + self.shared.config.gc_interval);
        }
    }
}

/// Hands a connection's actions to the dataplane, joining adjacent sends in one
/// direction (a status line and its body pieces), so it writes once per event.
fn emit(conn: ConnId, actions: Vec<Action>, out: &mut Vec<Output>) {
    let start = out.len();
    for action in actions {
        match (out[start..].last_mut().map(|o| &mut o.action), action) {
            (Some(Action::ToClient(prev)), Action::ToClient(more))
            | (Some(Action::ToUpstream(prev)), Action::ToUpstream(more)) => {
                prev.extend_from_slice(&more)
            }
            (_, action) => out.push(Output { conn, action }),
        }
    }
}

#[cfg(test)]
mod tests;
