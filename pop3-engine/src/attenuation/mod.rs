//! The attenuation engine (issue 3): the patent's state machine answers empty POP3
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
//! Per connection: the relay's bound (about 17 KB: one partial line, held client
//! input, one partial status line), a 4 KB CAPA body at most, and the session's login
//! lines. Shared: the user table, bounded by [`Config::table_size`], and one small
//! capability record per mail server (at most [`MAX_SERVERS`]).

mod caps;
mod config;
mod fsm;
pub(crate) mod sasl;
mod table;
mod verifier;

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Instant};

use hashbrown::HashMap;

pub use caps::ServerCaps;
pub use config::{BadDuration, Config, parse_duration};
pub use fsm::State;
pub use table::{Entry, UserKey, UserName, UserTable};
pub use verifier::{Salt, Verifier};

use crate::session::{Action, ConnId, ConnInfo, Event, Output, Pop3Engine};
use fsm::Session;

/// Most mail servers whose capabilities are remembered; past it the record restarts.
pub const MAX_SERVERS: usize = 4096;

/// What the operator wants counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Login attempts (PASS or AUTH PLAIN) seen.
    pub checks_seen: u64,
    /// Login attempts answered without the server (`+OK` inside the interval, `[IN-USE]`).
    pub answered_locally: u64,
    /// Login attempts and tunnelled sessions that reached the server.
    pub passed_through: u64,
    /// Logins the server did not have to do.
    pub upstream_logins_avoided: u64,
    /// Times the user table was collected (expired entries dropped).
    pub gc_runs: u64,
}

/// A user whose table entry may have changed, for mirrors of the table (the pinned BPF
/// map): look it up in [`AttenuationEngine::table`]; absent means removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserChange {
    /// The user whose entry changed.
    pub key: Arc<UserKey>,
    /// The session that touched the entry and its subscriber; `None` for a removal.
    pub session: Option<(ConnId, SocketAddr)>,
}

/// State shared by every connection.
#[derive(Debug)]
struct Shared {
    config: Config,
    salt: Salt,
    table: UserTable,
    servers: HashMap<SocketAddr, ServerCaps>,
    counters: Counters,
}

impl Shared {
    fn caps(&self, server: SocketAddr) -> Option<&ServerCaps> {
        self.servers.get(&server)
    }

    fn learn_caps(&mut self, server: SocketAddr, caps: ServerCaps) {
        if self.servers.len() >= MAX_SERVERS && !self.servers.contains_key(&server) {
            self.servers.clear();
        }
        self.servers.insert(server, caps);
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
    /// An engine with an empty table and a fresh random salt.
    pub fn new(config: Config) -> Self {
        Self::with_salt(config, Salt::random())
    }

    /// An engine with a given salt (tests).
    pub fn with_salt(config: Config, salt: Salt) -> Self {
        Self {
            shared: Shared {
                table: UserTable::new(config.table_size, config.interval),
                config,
                salt,
                servers: HashMap::new(),
                counters: Counters::default(),
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

    /// The user table, for the operator surface.
    pub fn table(&self) -> &UserTable {
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
        self.sessions
            .insert(conn, Session::open(info, deadline, &mut actions));
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
        }
        let client_spoke = matches!(event, Event::ClientData(_));
        if client_spoke || session.state == State::Closed {
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
