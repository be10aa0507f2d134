//! One client connection through the patent's state machine.
//!
//! Longer than 600 lines: the states and every transition between them are one `match`
//! over one session; split across files, a state would sit apart from its transitions.
//! The rules that decide a check live in their own modules (`check_rules` and the
//! policies it calls).
//!
//! The client is greeted locally (or, for a mail server whose greeting carries an APOP
//! timestamp, with that server's own greeting) and the mail server is reached only when
//! a decision needs it. Commands are processed one at a time, in order: while an
//! exchange with the server is in flight, later client input waits in a bounded buffer.
//! The engine knows which answer it is owed at every moment; a server that answers
//! what was not asked ends the session with `[SYS/TEMP]` instead of shifting every
//! later answer onto the wrong command.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Instant};

use super::{
    Shared,
    caps::{ServerCaps, has_apop_timestamp},
    check_rules::{self, Check, Outcome},
    edge_cache::{self, Deleted, Lookup},
    maildrop::{MAX_MAILDROP, Maildrop},
    table::{UserKey, UserName},
    verifier::Verifier,
};
use crate::{
    codec::{
        Command, CommandDecoder, Expect, Response, ResponseDecoder, StatusKind, Verb, trim_eol,
    },
    gate::{
        self, Gate, LINE_TOO_LONG, MAX_EARLY, SERVER_UNAVAILABLE, TOO_MANY_PENDING,
        without_xclient_code,
    },
    sasl::{PlainError, parse_plain},
    secret::Secret,
    session::{Action, ConnInfo},
};

/// The local greeting. It carries no APOP timestamp: APOP cannot be answered locally.
pub const GREETING: &[u8] = b"+OK POP3 ready\r\n";
/// Local answer to a PASS accepted inside the attenuation interval.
pub const LOGGED_IN: &[u8] = b"+OK Logged in.\r\n";
/// RFC 2449's answer to a check sooner than the advertised LOGIN-DELAY.
const LOGIN_DELAYED: &[u8] = b"-ERR [LOGIN-DELAY] Checked too soon, try again later.\r\n";
/// Local answer to QUIT.
pub const LOGGING_OUT: &[u8] = b"+OK Logging out.\r\n";
/// Local answer about any message of an empty maildrop.
pub const NO_SUCH_MESSAGE: &[u8] = b"-ERR no such message\r\n";
/// Longest CAPA body kept while learning a server's capabilities.
const MAX_CAPA_BODY: usize = 4096;
/// Most bytes of local answers one batch of client input may produce: a client that
/// pipelines listings of a large snapshot without reading them is flooding.
pub const MAX_LOCAL_ANSWERS: usize = 256 * 1024;

/// The patent's session states, plus the two ends a proxy needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// AUTHORIZATION (the patent's None/Idle states are the table entry's absence or
    /// presence when USER arrives).
    Authorization,
    /// AUTH PLAIN was sent without credentials; the next line carries them.
    SaslPlain,
    /// TRANSACTION.
    Transaction {
        /// The patent's terminate flag: the session is answered locally.
        terminate: bool,
    },
    /// Not ours to answer (STLS, APOP, other SASL, opted-out user): relayed through
    /// the command gate.
    Tunnel,
    /// Finished; waiting for the dataplane to release it.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down,
    Connecting,
    Up,
}

/// What to send the server to log the user in: kept only for the session's life.
#[derive(Clone, Debug)]
struct Credentials {
    /// The USER line, for USER/PASS logins.
    user_line: Option<Vec<u8>>,
    /// The PASS or AUTH PLAIN line.
    login_line: Secret,
    verifier: Verifier,
}

/// How a login exchange with the server answers the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoginMode {
    /// The client's PASS (or AUTH) waits for the server's answer, which is relayed.
    Relayed,
    /// An attenuated session outlived the interval: log in behind the client's back
    /// before answering its command; a refusal ends the session.
    Behind,
}

/// One exchange with the mail server, in order; the front one may be in flight.
#[derive(Debug)]
enum Step {
    /// The server's greeting; `relay`: it is also the client's greeting.
    Greeting { relay: bool },
    /// Learn the server's capabilities, unless known and fresh.
    Capa,
    /// Tell the server who the subscriber is, if it offers XCLIENT.
    Xclient,
    /// A None-state USER: forwarded, its answer relayed.
    ForwardUser(Vec<u8>),
    /// The USER line of a replayed login, unless the server already has it.
    ReplayUser(LoginMode),
    /// The PASS or AUTH PLAIN line of a replayed login.
    Login(LoginMode),
    /// A client command relayed as is.
    Relay { line: Vec<u8>, expect: Expect },
    /// The held QUIT's STAT: is the maildrop empty now?
    Stat,
    /// The held QUIT's LIST or UIDL (`true`): the snapshot for leave-on-server clients.
    Snapshot { uidl: bool },
    /// UIDL before a message command in a session that was answered from a snapshot:
    /// the numbering the client saw must still hold.
    Verify,
    /// QUIT upstream; its answer ends the session.
    Quit,
    /// Hand this client line and the rest of the session to the command gate.
    Tunnel(Secret),
    /// Answer the client's CAPA, now that the server's capabilities are known.
    LocalCapa,
    /// `UIDL n` before a RETR or DELE (`dele`) of message n, for the edge cache.
    CacheId { n: Vec<u8>, dele: bool },
    /// `LIST n` before a RETR of message n, for the edge cache.
    CacheSize { n: Vec<u8> },
    /// The RETR `line`: from the edge's copy if the server's UIDL and size match one
    /// (in flight while the daemon looks), else relayed.
    FromCache { line: Vec<u8> },
}

/// What the held QUIT's STAT, LIST and UIDL showed, kept until the QUIT succeeds.
#[derive(Debug)]
enum Observed {
    /// STAT said 0.
    Empty,
    /// The answers so far (each complete with its status line and `.` line).
    Listing {
        stat: Vec<u8>,
        list: Vec<u8>,
        uidl: Vec<u8>,
    },
}

/// A piece of the server's answer, detached from the decoder's buffer.
enum Piece {
    Status(Vec<u8>, StatusKind, bool),
    Body(Vec<u8>, bool),
}

/// One client connection.
#[derive(Debug)]
pub struct Session {
    info: ConnInfo,
    pub state: State,
    link: Link,
    commands: CommandDecoder,
    responses: ResponseDecoder,
    steps: VecDeque<Step>,
    in_flight: bool,
    /// Client bytes not yet processed (bounded by [`MAX_EARLY`]).
    held: Secret,
    /// The username of the login under way or done, exactly as the client sent it.
    user: Option<UserName>,
    /// The table entry this session counts in (see [`super::Entry::sessions`]): set
    /// once a login is accepted, by the server or locally.
    entry: Option<Arc<UserKey>>,
    /// The server has our USER for the current login attempt.
    user_upstream: bool,
    credentials: Option<Credentials>,
    capa_body: Vec<u8>,
    /// The server's greeting said `[XCLIENT]`: Dovecot's way of telling a trusted
    /// peer it may send XCLIENT (its CAPA does not list it).
    greeting_xclient: bool,
    /// When the server accepted this session's login: its maildrop snapshot is from
    /// then (RFC 1939 locks the maildrop at login), so a STAT that says 0 vouches for
    /// that moment, not for the moment of the STAT.
    login_at: Option<Instant>,
    /// What the held QUIT's STAT, LIST and UIDL showed. Recorded as the user's view only
    /// when the QUIT is answered `+OK`: after DELEs the answers describe the maildrop
    /// after the UPDATE that makes them true, and a failed UPDATE (or a lost
    /// connection) leaves the messages there.
    observed: Option<Observed>,
    /// A DELE went to the server in this session: its numbering will change at UPDATE,
    /// so no listing from this session is kept.
    deleted: bool,
    /// The snapshot this session was answered from locally (the maildrop the client
    /// was shown at its login), to check the server's numbering against.
    shown: Option<Arc<Maildrop>>,
    /// Answered locally by a rule that trusts a view older than n (the fast-check
    /// penalty, periodicity, LOGIN-DELAY): the view counts as fresh for the session.
    trust_view: bool,
    /// When the login in flight was sent to the server (its latency is load).
    login_sent: Option<Instant>,
    /// The pass-through of [`State::Tunnel`].
    gate: Option<Box<Gate>>,
    /// The client closed its side: what it sent is still answered, then the session ends.
    client_eof: bool,
    /// When the session is closed for idleness (autologout).
    pub deadline: Instant,
    /// What the server said about the message of the RETR being looked up.
    lookup: Lookup,
    /// The messages this session deleted, for the edge cache.
    cache_deleted: Deleted,
}

impl Session {
    /// A new session: greeted locally when the server's greeting is known to carry no
    /// APOP timestamp, otherwise with the server's own greeting (so APOP works).
    pub fn open(info: ConnInfo, sh: &Shared, deadline: Instant, out: &mut Vec<Action>) -> Self {
        let mut session = Self {
            info,
            state: State::Authorization,
            link: Link::Down,
            commands: CommandDecoder::default(),
            responses: ResponseDecoder::default(),
            steps: VecDeque::new(),
            in_flight: false,
            held: Secret::default(),
            user: None,
            entry: None,
            user_upstream: false,
            credentials: None,
            capa_body: Vec::new(),
            greeting_xclient: false,
            login_at: None,
            observed: None,
            deleted: false,
            shown: None,
            trust_view: false,
            login_sent: None,
            gate: None,
            client_eof: false,
            deadline,
            lookup: Lookup::default(),
            cache_deleted: Deleted::default(),
        };
        if sh.greets_locally(info.server) {
            out.push(Action::ToClient(GREETING.to_vec()));
        } else {
            session.connect(true, out);
        }
        session
    }

    /// The table entry this session counts in.
    pub fn user_key(&self) -> Option<&Arc<UserKey>> {
        self.entry.as_ref()
    }

    /// The subscriber's address.
    pub fn client(&self) -> SocketAddr {
        self.info.client
    }

    fn server(&self) -> SocketAddr {
        self.info.server
    }

    /// Bytes from the client.
    pub fn client_data(
        &mut self,
        data: &[u8],
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match self.state {
            State::Closed => {}
            State::Tunnel => self.through_gate(sh, now, out, |g, o| g.client_data(data, o)),
            _ => {
                self.held.extend(data);
                self.pump(sh, now, out);
                // Whatever waits behind an exchange in flight is bounded.
                if self.held.len() > MAX_EARLY {
                    self.refuse(TOO_MANY_PENDING, sh, now, out);
                }
            }
        }
    }

    /// The client closed its side (or reset it). What it sent before is still carried
    /// out in order and answered, a `QUIT` among it included (committing its DELEs);
    /// then the session ends, never with a QUIT of our own (RFC 1939: no UPDATE on an
    /// abnormal end).
    pub fn client_closed(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        self.client_eof = true;
        match self.state {
            State::Tunnel => self.through_gate(sh, now, out, |g, o| g.client_closed(o)),
            _ => self.pump(sh, now, out),
        }
    }

    /// The dataplane released the connection: whatever was pending, the session ends
    /// here (and its count in the user's entry with it), without QUIT.
    pub fn release(&mut self, sh: &mut Shared, now: Instant) {
        self.finish(sh, now, &mut Vec::new(), false);
    }

    /// The autologout timer fired: close both sides, again without QUIT.
    pub fn autologout(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        self.finish(sh, now, out, true);
    }

    /// The upstream connection is up.
    pub fn upstream_connected(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        if self.link == Link::Connecting {
            self.link = Link::Up;
            self.pump(sh, now, out);
        }
    }

    /// The upstream connection failed or closed.
    pub fn upstream_lost(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        if self.state == State::Closed || self.link == Link::Down {
            return;
        }
        if self.state == State::Tunnel {
            return self.through_gate(sh, now, out, |g, o| g.upstream_failed(o));
        }
        let login_pending = self.login_sent.take().is_some()
            || self.steps.iter().any(|s| matches!(s, Step::Login(_)));
        if login_pending {
            sh.load.failure(now);
        }
        if self.upstream_needed() {
            // Not inside a body the client is still receiving: it would corrupt it.
            if self.responses.at_boundary() {
                out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
            }
            self.finish(sh, now, out, true);
        } else {
            // An idle upstream (opened for CAPA): the session goes on without it.
            self.drop_link();
        }
    }

    /// Whether the session waits on, or relays for, the server.
    fn upstream_needed(&self) -> bool {
        !self.steps.is_empty() || self.state == (State::Transaction { terminate: false })
    }

    fn drop_link(&mut self) {
        self.link = Link::Down;
        self.in_flight = false;
        self.responses = ResponseDecoder::default();
        self.user_upstream = false;
    }

    /// Bytes from the server.
    pub fn upstream_data(
        &mut self,
        data: &[u8],
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.state == State::Tunnel {
            return self.through_gate(sh, now, out, |g, o| g.server_data(data, o));
        }
        let mut input = data;
        while !input.is_empty() && self.state != State::Closed {
            // While the daemon looks up the edge cache, the server owes nothing.
            if !self.in_flight || matches!(self.steps.front(), Some(Step::FromCache { .. })) {
                return self.unexpected_answer(sh, now, out);
            }
            let expect = match self.steps.front() {
                Some(Step::Capa | Step::Snapshot { .. } | Step::Verify) => Expect::MultiOnOk,
                Some(Step::Relay { expect, .. }) => *expect,
                _ => Expect::Single,
            };
            let piece = match self.responses.decode(&mut input, expect) {
                Ok(None) => return,
                Ok(Some(Response::Status { line, kind, body })) => {
                    Piece::Status(line.to_vec(), kind, body)
                }
                Ok(Some(Response::Body { data, end })) => Piece::Body(data.to_vec(), end),
                Err(err) => {
                    tracing::warn!(%err, "mail server broke POP3 framing");
                    return self.breach(sh, now, out);
                }
            };
            if self.answer(piece, sh, now, out) {
                self.steps.pop_front();
                self.in_flight = false;
                // The engine asks one thing at a time: more bytes now answer nothing.
                if !input.is_empty() {
                    return self.breach(sh, now, out);
                }
                self.pump(sh, now, out);
            }
        }
    }

    /// The server answered out of turn: its later answers could no longer be matched
    /// to our commands, so the session ends rather than shift them.
    fn breach(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        tracing::warn!(server = %self.server(), "mail server answered out of turn");
        out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
        self.finish(sh, now, out, true);
    }

    /// The server spoke while nothing was asked of it.
    fn unexpected_answer(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        if self.upstream_needed() {
            self.breach(sh, now, out);
        } else {
            // An idle connection's parting words (Dovecot's inactivity notice): let it go.
            out.push(Action::CloseUpstream);
            self.drop_link();
        }
    }

    /// Handles a piece of the answer to the step in flight; `true` once it is complete.
    fn answer(
        &mut self,
        piece: Piece,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let step = self.steps.front().expect("a step is in flight");
        let (line, kind, body) = match piece {
            Piece::Body(data, end) => {
                if matches!(step, Step::Snapshot { .. } | Step::Verify) {
                    let uidl = matches!(step, Step::Snapshot { uidl: true } | Step::Verify);
                    let verify = matches!(step, Step::Verify);
                    self.collect(uidl, &data);
                    if end && verify {
                        return self.verified(sh, now, out);
                    }
                } else if matches!(step, Step::Capa) {
                    let room = MAX_CAPA_BODY.saturating_sub(self.capa_body.len());
                    self.capa_body
                        .extend_from_slice(&data[..room.min(data.len())]);
                    if end {
                        let caps = ServerCaps::parse(&std::mem::take(&mut self.capa_body));
                        sh.learn_caps(self.server(), caps, now);
                    }
                } else {
                    out.push(Action::ToClient(data));
                }
                return end;
            }
            Piece::Status(line, kind, body) => (line, kind, body),
        };
        let ok = kind == StatusKind::Ok;
        if kind == StatusKind::Continue {
            // The engine sends AUTH PLAIN with its initial response: no challenge is owed.
            self.breach(sh, now, out);
            return false;
        }
        match step {
            Step::Greeting { relay } => {
                let relay = *relay;
                sh.learn_greeting(self.server(), has_apop_timestamp(&line));
                if relay {
                    out.push(Action::ToClient(without_xclient_code(&line)));
                }
                if !ok {
                    if relay {
                        self.finish(sh, now, out, true);
                    } else {
                        self.in_flight = false;
                        self.upstream_lost(sh, now, out);
                    }
                    return false;
                }
                self.greeting_xclient = line
                    .windows(9)
                    .any(|w| w.eq_ignore_ascii_case(b"[XCLIENT]"));
            }
            Step::Xclient | Step::Capa => {}
            Step::ForwardUser(_) => {
                self.user_upstream = ok;
                if !ok {
                    self.user = None;
                }
                out.push(Action::ToClient(line));
            }
            Step::ReplayUser(_) if ok => self.user_upstream = true,
            Step::ReplayUser(mode) => {
                // The server refused the user: its -ERR answers the login.
                let mode = *mode;
                self.steps.remove(1);
                return self.login_answer(mode, line, false, sh, now, out);
            }
            Step::Login(mode) => return self.login_answer(*mode, line, ok, sh, now, out),
            Step::Relay { .. } => out.push(Action::ToClient(line)),
            Step::Stat => self.record_stat(&line, ok, sh, now),
            Step::Snapshot { uidl } if ok => {
                let uidl = *uidl;
                self.collect(uidl, &line);
            }
            Step::Snapshot { .. } => {
                // No listing: no snapshot.
                self.observed = None;
                if let Some(key) = &self.entry {
                    sh.table.clear_view(key, now);
                }
            }
            Step::Verify if ok => self.collect(true, &line),
            Step::Verify => {
                // No listing to check against: as good as a renumbering.
                self.observed = None;
                return self.verified(sh, now, out);
            }
            Step::Quit => {
                if ok && let (Some(key), Some(login)) = (self.entry.clone(), self.login_at) {
                    self.record_view(&key, login, sh, now);
                }
                if ok && !self.cache_deleted.is_empty() {
                    out.push(Action::CacheForget {
                        user: self.cache_user(),
                        uidls: self.cache_deleted.take(),
                    });
                }
                out.push(Action::ToClient(line));
                self.finish(sh, now, out, true);
                return false;
            }
            Step::CacheId { n, dele } => {
                let uidl = edge_cache::scan_value(&line, n).filter(|_| ok);
                match (uidl, *dele) {
                    (Some(uidl), true) => self.cache_deleted.push(uidl),
                    (uidl, false) => self.lookup.uidl = uidl.map(<[u8]>::to_vec),
                    (None, true) => {}
                }
            }
            Step::CacheSize { n } => {
                let size = edge_cache::scan_value(&line, n).filter(|_| ok);
                self.lookup.size = size
                    .and_then(|size| std::str::from_utf8(size).ok())
                    .and_then(|size| size.parse().ok());
            }
            Step::Tunnel(_) | Step::LocalCapa | Step::FromCache { .. } => {
                unreachable!("never in flight to the server")
            }
        }
        !body
    }

    /// The server's answer to a login.
    fn login_answer(
        &mut self,
        mode: LoginMode,
        line: Vec<u8>,
        ok: bool,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        self.user_upstream = false;
        if let Some(sent) = self.login_sent.take() {
            let server_fault = !ok && line.windows(10).any(|w| w == b"[SYS/TEMP]");
            sh.load
                .login(now.saturating_duration_since(sent), server_fault, now);
        }
        match (ok, mode) {
            (true, LoginMode::Relayed) => {
                out.push(Action::ToClient(line));
                self.login_at = Some(now);
                self.state = State::Transaction { terminate: false };
                let (Some(user), Some(credentials)) = (&self.user, self.credentials.take()) else {
                    return true;
                };
                // Only now, with the server's word, does the user get an entry.
                let key = UserKey {
                    server: self.server(),
                    user: user.clone(),
                };
                let new = !sh.table.contains(&key);
                self.entry = sh.table.entry(key, now, credentials.verifier);
                // The password-change case: the server's word replaces the verifier.
                self.with_entry(sh, now, |e| {
                    e.verifier = credentials.verifier;
                    e.sessions = e.sessions.saturating_add(1);
                    if new {
                        e.passed_through = 1;
                    }
                });
                true
            }
            (true, LoginMode::Behind) => {
                // The login answered at the edge was not avoided after all.
                sh.counters.upstream_logins_avoided =
                    sh.counters.upstream_logins_avoided.saturating_sub(1);
                self.login_at = Some(now);
                self.state = State::Transaction { terminate: false };
                true
            }
            (false, LoginMode::Relayed) => {
                // The wrong-password case: nothing changes but the answer, and the
                // next attempt starts from scratch.
                out.push(Action::ToClient(line));
                self.credentials = None;
                self.user = None;
                true
            }
            (false, LoginMode::Behind) => {
                out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
                self.finish(sh, now, out, true);
                false
            }
        }
    }

    /// The held QUIT's STAT answer: `+OK 0 ...` proves the maildrop empty; otherwise a
    /// snapshot is taken with LIST and UIDL, when the server offers UIDL and this
    /// session deleted nothing.
    fn record_stat(&mut self, line: &[u8], ok: bool, sh: &mut Shared, now: Instant) {
        let count = trim_eol(line).split(|&b| b == b' ').nth(1);
        let listing = ok && !self.deleted && sh.caps(self.server()).is_some_and(|c| c.uidl);
        self.observed = match count {
            _ if !ok => None,
            Some(b"0") => Some(Observed::Empty),
            _ if listing => Some(Observed::Listing {
                stat: line.to_vec(),
                list: Vec::new(),
                uidl: Vec::new(),
            }),
            _ => None,
        };
        if matches!(self.observed, Some(Observed::Listing { .. })) {
            self.steps.insert(1, Step::Snapshot { uidl: false });
            self.steps.insert(2, Step::Snapshot { uidl: true });
        } else if self.observed.is_none()
            && let Some(key) = &self.entry
        {
            // What the user had seen is no longer what the server holds.
            sh.table.clear_view(key, now);
        }
    }

    /// Keeps part of a LIST or UIDL answer (`uidl`), bounded by [`MAX_MAILDROP`]: a
    /// larger maildrop gets no snapshot.
    fn collect(&mut self, uidl: bool, bytes: &[u8]) {
        if let Some(Observed::Listing {
            stat,
            list,
            uidl: ids,
        }) = &mut self.observed
        {
            let target = if uidl { ids } else { list };
            if stat.len() + target.len() + bytes.len() > MAX_MAILDROP {
                self.observed = None;
            } else {
                target.extend_from_slice(bytes);
            }
        }
    }

    /// The QUIT succeeded: what the session saw becomes the user's view, as of its login.
    fn record_view(&mut self, key: &Arc<UserKey>, login: Instant, sh: &mut Shared, now: Instant) {
        let maildrop = match self.observed.take() {
            Some(Observed::Empty) => Some(None),
            Some(Observed::Listing { stat, list, uidl }) => {
                Maildrop::new(&stat, &list, &uidl).map(Some)
            }
            None => None,
        };
        match maildrop {
            Some(view) => {
                sh.table.set_view(key, now, login, view);
            }
            None => sh.table.clear_view(key, now),
        }
    }

    /// The server's UIDL before a message command arrived whole: relay the command only
    /// if every message the client was shown still has its number.
    fn verified(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) -> bool {
        let now_listed = match self.observed.take() {
            Some(Observed::Listing { uidl, .. }) => uidl,
            _ => Vec::new(),
        };
        let same = self
            .shown
            .as_ref()
            .is_some_and(|m| m.still_numbered(&now_listed));
        if same {
            return true;
        }
        tracing::info!(server = %self.server(), "maildrop renumbered since the snapshot");
        if let Some(key) = &self.entry {
            sh.table.clear_view(key, now);
        }
        out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
        self.finish(sh, now, out, true);
        false
    }

    /// Runs steps and client commands until something must be waited for.
    fn pump(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        let (mut counted, mut answered) = (out.len(), 0);
        loop {
            // Only what this pass added since the last look.
            for action in &out[counted..] {
                if let Action::ToClient(bytes) = action {
                    answered += bytes.len();
                }
            }
            counted = out.len();
            if answered > MAX_LOCAL_ANSWERS {
                return self.refuse(TOO_MANY_PENDING, sh, now, out);
            }
            if matches!(self.state, State::Closed | State::Tunnel) || self.in_flight {
                return;
            }
            if !self.steps.is_empty() {
                if !self.start_step(sh, now, out) {
                    return;
                }
                continue;
            }
            let mut held = self.held.take();
            let mut input = held.expose();
            let line = match self.commands.decode(&mut input) {
                Ok(Some(line)) => Secret::from(line),
                // The decoder keeps the partial line: nothing is left in `held`.
                Ok(None) => {
                    if self.client_eof {
                        // Everything the client sent is answered.
                        self.finish(sh, now, out, true);
                    }
                    return;
                }
                Err(_) => return self.refuse(LINE_TOO_LONG, sh, now, out),
            };
            let used = held.len() - input.len();
            held.consume(used);
            self.held = held;
            self.command(line.expose(), sh, now, out);
        }
    }

    /// Starts the front step; `false` when it now waits for the server.
    fn start_step(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) -> bool {
        let send = match self.steps.front_mut().expect("a step") {
            Step::LocalCapa => {
                let mut capa = Vec::new();
                sh.caps(self.info.server)
                    .cloned()
                    .unwrap_or_default()
                    .local_capa(sh.config.login_delay.map(|d| d.delay), &mut capa);
                out.push(Action::ToClient(capa));
                self.steps.pop_front();
                return true;
            }
            _ if self.link != Link::Up => return false,
            Step::Greeting { .. } => None,
            Step::Capa if sh.caps_fresh(self.info.server, now) => {
                self.steps.pop_front();
                return true;
            }
            Step::Capa => Some(b"CAPA\r\n".to_vec()),
            Step::Xclient
                if !(self.greeting_xclient
                    || sh.caps(self.info.server).is_some_and(|c| c.xclient)) =>
            {
                self.steps.pop_front();
                return true;
            }
            Step::Xclient => Some(
                format!(
                    "XCLIENT ADDR={} PORT={}\r\n",
                    self.info.client.ip(),
                    self.info.client.port()
                )
                .into_bytes(),
            ),
            Step::ForwardUser(line) | Step::Relay { line, .. } => Some(std::mem::take(line)),
            Step::ReplayUser(_) => {
                match self.credentials.as_ref().and_then(|c| c.user_line.as_ref()) {
                    Some(line) if !self.user_upstream => Some(line.clone()),
                    _ => {
                        self.steps.pop_front();
                        return true;
                    }
                }
            }
            Step::Login(_) => {
                self.login_sent = Some(now);
                self.credentials
                    .as_ref()
                    .map(|c| c.login_line.expose().to_vec())
            }
            Step::Stat => Some(b"STAT\r\n".to_vec()),
            Step::Snapshot { uidl: false } => Some(b"LIST\r\n".to_vec()),
            Step::Snapshot { uidl: true } => Some(b"UIDL\r\n".to_vec()),
            Step::Verify => {
                self.observed = Some(Observed::Listing {
                    stat: Vec::new(),
                    list: Vec::new(),
                    uidl: Vec::new(),
                });
                Some(b"UIDL\r\n".to_vec())
            }
            Step::Quit => Some(b"QUIT\r\n".to_vec()),
            Step::CacheId { n, .. } => Some([b"UIDL ", &n[..], b"\r\n"].concat()),
            Step::CacheSize { n } => Some([b"LIST ", &n[..], b"\r\n"].concat()),
            Step::FromCache { line } => match std::mem::take(&mut self.lookup).complete() {
                Some((uidl, size)) => {
                    out.push(Action::CacheRead {
                        user: self.cache_user(),
                        uidl,
                        size,
                    });
                    None
                }
                None => {
                    let line = std::mem::take(line);
                    self.steps[0] = Step::Relay {
                        line,
                        expect: Expect::MultiOnOk,
                    };
                    return true;
                }
            },
            Step::Tunnel(line) => {
                let mut bytes = line.take();
                bytes.extend(self.held.take().expose());
                self.steps.clear();
                self.state = State::Tunnel;
                self.gate = Some(Box::new(Gate::after_greeting()));
                let eof = self.client_eof;
                self.through_gate(sh, now, out, |g, o| {
                    g.client_data(bytes.expose(), o);
                    if eof {
                        g.client_closed(o);
                    }
                });
                return false;
            }
        };
        if let Some(bytes) = send {
            out.push(Action::ToUpstream(bytes));
        }
        self.in_flight = true;
        false
    }

    /// Lets the command gate handle an event of a tunnelled session.
    fn through_gate(
        &mut self,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
        f: impl FnOnce(&mut Gate, &mut Vec<Action>),
    ) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        f(gate, out);
        if let Some(user) = gate.take_login() {
            // The server took a login the engine could not check: the password the
            // entry holds may be stale now, so the user's next check goes to the server.
            let key = UserKey {
                server: self.info.server,
                user: UserName::from(&user[..]),
            };
            if let Some(key) = sh.table.key(&key) {
                sh.table.clear_view(&key, now);
            }
        }
        if gate.is_closed() {
            // The gate already asked to close both sides.
            self.link = Link::Down;
            self.finish(sh, now, out, false);
        }
    }

    /// Opens the upstream connection and queues its set-up.
    fn connect(&mut self, relay_greeting: bool, out: &mut Vec<Action>) {
        self.link = Link::Connecting;
        out.push(Action::ConnectUpstream);
        self.steps.extend([
            Step::Greeting {
                relay: relay_greeting,
            },
            Step::Capa,
            Step::Xclient,
        ]);
    }

    /// Queues a step that needs the server, connecting first if needed.
    fn upstream(&mut self, step: Step, out: &mut Vec<Action>) {
        if self.link == Link::Down {
            self.connect(false, out);
        }
        self.steps.push_back(step);
    }

    /// One complete client line, with no exchange in flight.
    fn command(&mut self, line: &[u8], sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        let reply =
            |out: &mut Vec<Action>, bytes: &[u8]| out.push(Action::ToClient(bytes.to_vec()));
        if self.state == State::SaslPlain {
            self.state = State::Authorization;
            self.commands.set_sasl(false);
            if let Err(message) = gate::check_command(line) {
                return reply(out, message);
            }
            let b64 = trim_eol(line);
            if b64 == b"*" {
                return reply(out, b"-ERR Authentication cancelled.\r\n");
            }
            return self.auth_plain(b64, sh, now, out);
        }
        // Nothing that could speak for the router, or break the server's parsing,
        // is ever acted on, in any state.
        if let Err(message) = gate::check_command(line) {
            return reply(out, message);
        }
        let cmd = Command::parse(line);
        match (self.state, cmd.verb) {
            (_, Verb::Capa) if self.state != (State::Transaction { terminate: false }) => {
                if !sh.caps_fresh(self.server(), now) {
                    match self.link {
                        // The connection's set-up asks CAPA.
                        Link::Down => self.connect(false, out),
                        Link::Connecting | Link::Up => self.steps.push_back(Step::Capa),
                    }
                }
                self.steps.push_back(Step::LocalCapa);
            }
            (State::Authorization, Verb::User) => self.user_command(line, &cmd, sh, out),
            (State::Authorization, Verb::Pass) => match &self.user {
                None => reply(out, b"-ERR No username given.\r\n"),
                Some(user) => {
                    let mut user_line = b"USER ".to_vec();
                    user_line.extend_from_slice(user);
                    user_line.extend_from_slice(b"\r\n");
                    self.login(cmd.rest, (Some(user_line), line.into()), sh, now, out);
                }
            },
            (State::Authorization, Verb::Auth) => {
                let mut args = cmd.args();
                match (args.next(), args.next()) {
                    (Some(m), None) if m.eq_ignore_ascii_case(b"PLAIN") => {
                        self.state = State::SaslPlain;
                        self.commands.set_sasl(true);
                        reply(out, b"+ \r\n");
                    }
                    (Some(m), Some(ir)) if m.eq_ignore_ascii_case(b"PLAIN") => {
                        self.auth_plain(ir, sh, now, out)
                    }
                    (Some(_), _) => self.tunnel(line, sh, out),
                    (None, _) => self.upstream(
                        Step::Relay {
                            line: line.to_vec(),
                            expect: cmd.expect(),
                        },
                        out,
                    ),
                }
            }
            (State::Authorization, Verb::Stls | Verb::Apop) => self.tunnel(line, sh, out),
            (State::Authorization, Verb::Quit) => {
                reply(out, LOGGING_OUT);
                self.finish(sh, now, out, true);
            }
            (State::Authorization, _) => reply(out, b"-ERR Unknown command or not logged in.\r\n"),
            (State::Transaction { terminate: true }, _) => {
                self.local_transaction(line, &cmd, sh, now, out)
            }
            (State::Transaction { terminate: false }, Verb::Quit) => {
                // Hold the QUIT: first learn whether the maildrop is empty now.
                self.steps.extend([Step::Stat, Step::Quit]);
            }
            (State::Transaction { terminate: false }, verb) => {
                self.deleted |= verb == Verb::Dele;
                if sh.config.cache {
                    self.through_cache(line, &cmd);
                    return;
                }
                self.steps.push_back(Step::Relay {
                    line: line.to_vec(),
                    expect: cmd.expect(),
                });
            }
            (State::SaslPlain | State::Tunnel | State::Closed, _) => {}
        }
    }

    /// USER: the patent's None state (no entry: ask the server) or Idle state (local +OK).
    /// The name is kept as the exact bytes sent; it takes no table slot.
    fn user_command(
        &mut self,
        line: &[u8],
        cmd: &Command<'_>,
        sh: &mut Shared,
        out: &mut Vec<Action>,
    ) {
        if sh.opted_out(cmd.rest) {
            return self.tunnel(line, sh, out);
        }
        let user = UserName::from(cmd.rest);
        let known = sh.table.contains(&UserKey {
            server: self.server(),
            user: user.clone(),
        });
        self.user = Some(user);
        self.user_upstream = false;
        if known {
            out.push(Action::ToClient(b"+OK\r\n".to_vec()));
        } else {
            self.upstream(Step::ForwardUser(line.to_vec()), out);
        }
    }

    /// AUTH PLAIN with its credentials: handled like USER and PASS.
    fn auth_plain(&mut self, b64: &[u8], sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        let mut line = Secret::from(&b"AUTH PLAIN "[..]);
        line.extend(b64);
        line.extend(b"\r\n");
        match parse_plain(b64) {
            Ok(c) if !sh.opted_out(&c.user) => {
                self.user = Some(UserName::from(c.user.as_slice()));
                self.user_upstream = false;
                self.login(c.password.expose(), (None, line), sh, now, out);
            }
            Err(PlainError::ControlCharacter) => {
                out.push(Action::ToClient(gate::BAD_CHARACTERS.to_vec()))
            }
            // Undecodable: whatever it hides must not reach the server.
            Err(PlainError::Malformed) => out.push(Action::ToClient(gate::BAD_SASL.to_vec())),
            // The server's to judge: opted-out users, master-user logins.
            _ => self.tunnel(line.expose(), sh, out),
        }
    }

    /// PASS (or AUTH PLAIN) for the session's user: the patent's Authorization-state
    /// cases. `lines` are the USER line (if any) and the login line to replay.
    ///
    /// A check is answered locally only when nobody else is in session as this user:
    /// the server alone decides whether a user may hold two sessions at once.
    fn login(
        &mut self,
        password: &[u8],
        (user_line, login_line): (Option<Vec<u8>>, Secret),
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        sh.counters.checks_seen += 1;
        let user = self.user.clone().unwrap_or_else(|| UserName::from(""));
        let verifier = sh.salt.verifier(self.server(), &user, password);
        let lookup = UserKey {
            server: self.server(),
            user,
        };
        let (interval, base_interval) = (
            sh.interval_for(&lookup, now),
            sh.base_interval_for(&lookup, now),
        );
        let key = sh.table.key(&lookup);
        let config = &sh.config;
        let mut genuine = false;
        // The maildrop a local answer shows, read in the same call that decides.
        let mut view = None;
        let decision = key.as_ref().and_then(|key| {
            sh.table.update(key, now, |e| {
                let check = Check {
                    now,
                    interval,
                    base_interval,
                    password_ok: e.verifier.matches(&verifier),
                    in_session: e.sessions > 0,
                };
                genuine = check.password_ok;
                let d = check_rules::decide(e, check, config);
                match d.outcome {
                    Outcome::Local { .. } => {
                        e.answered_locally = e.answered_locally.saturating_add(1);
                        e.sessions = 1;
                        view = e.view().flatten().map(Arc::clone);
                    }
                    Outcome::Server => e.passed_through = e.passed_through.saturating_add(1),
                    Outcome::Refuse => {}
                }
                d
            })
        });
        if let Some(d) = &decision {
            sh.counters.count(d);
        }
        // Only checks of known users with their password are load: a stream of made-up
        // logins must not stretch n for everyone.
        if genuine {
            sh.load.check(now);
        }
        let outcome = decision.map_or(Outcome::Server, |d| d.outcome);
        if outcome == Outcome::Refuse {
            // RFC 2449: the client is to wait; the next attempt starts afresh.
            out.push(Action::ToClient(LOGIN_DELAYED.to_vec()));
            self.user = None;
            return;
        }
        // Kept for the replay, or for a later Behind login of an attenuated session.
        self.credentials = Some(Credentials {
            user_line,
            login_line,
            verifier,
        });
        if let Outcome::Local { trust_view } = outcome {
            sh.counters.answered_locally += 1;
            sh.counters.upstream_logins_avoided += 1;
            self.trust_view = trust_view;
            // The maildrop this session shows, fixed at login as POP3's own is.
            self.shown = view;
            self.entry = key;
            self.state = State::Transaction { terminate: true };
            out.push(Action::ToClient(LOGGED_IN.to_vec()));
            return;
        }
        sh.counters.passed_through += 1;
        self.login_upstream(LoginMode::Relayed, out);
    }

    /// A TRANSACTION command with the terminate flag set: answered from the view the
    /// client was shown at its login, an empty maildrop or the server's own answers.
    /// A message command on a snapshot goes to the server, once its numbering is
    /// checked.
    fn local_transaction(
        &mut self,
        line: &[u8],
        cmd: &Command<'_>,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let verb = cmd.verb;
        let asks_maildrop = matches!(
            verb,
            Verb::Stat | Verb::List | Verb::Uidl | Verb::Retr | Verb::Top | Verb::Dele
        );
        let interval = self
            .entry
            .as_ref()
            .map_or(sh.config.interval, |k| sh.interval_for(k, now));
        let still_fresh = self.trust_view
            || self
                .entry
                .as_ref()
                .and_then(|k| sh.table.get(k))
                .is_some_and(|e| e.fresh(now, interval));
        let arg = cmd.args().next().unwrap_or_default();
        let message_known = self
            .shown
            .as_ref()
            .is_some_and(|m| m.one(false, arg).is_some());
        let fetches = matches!(verb, Verb::Retr | Verb::Top | Verb::Dele);
        if asks_maildrop && (!still_fresh || (fetches && message_known)) {
            // Only the server may answer now: the session outlived the interval, or the
            // client wants a message.
            self.login_upstream(LoginMode::Behind, out);
            if self.shown.is_some() {
                self.steps.push_back(Step::Verify);
            }
            self.deleted |= verb == Verb::Dele;
            self.steps.push_back(Step::Relay {
                line: line.to_vec(),
                expect: cmd.expect(),
            });
            return;
        }
        let listing = !cmd.has_args();
        let answer: Vec<u8> = match (&self.shown, verb) {
            (None, Verb::Stat) => b"+OK 0 0\r\n".to_vec(),
            // RFC 1939 wants a (empty) listing where the patent says -ERR.
            (None, Verb::List | Verb::Uidl) if listing => b"+OK 0 messages\r\n.\r\n".to_vec(),
            (Some(m), Verb::Stat) => m.stat().to_vec(),
            (Some(m), Verb::List) if listing => m.list().to_vec(),
            (Some(m), Verb::Uidl) if listing => m.uidl().to_vec(),
            (Some(m), Verb::List | Verb::Uidl) => m
                .one(verb == Verb::Uidl, arg)
                .unwrap_or_else(|| NO_SUCH_MESSAGE.to_vec()),
            (_, Verb::List | Verb::Uidl | Verb::Retr | Verb::Top | Verb::Dele) => {
                NO_SUCH_MESSAGE.to_vec()
            }
            (_, Verb::Noop | Verb::Rset) => b"+OK\r\n".to_vec(),
            (_, Verb::Quit) => LOGGING_OUT.to_vec(),
            _ => b"-ERR Unknown command.\r\n".to_vec(),
        };
        out.push(Action::ToClient(answer));
        if verb == Verb::Quit {
            self.finish(sh, now, out, true);
        }
    }

    /// Hands the rest of the session to the server, through the command gate.
    /// A passed-through command with the edge cache on: RETR and DELE of a message
    /// first ask the server its UIDL (and, for RETR, size); see [`edge_cache`].
    fn through_cache(&mut self, line: &[u8], cmd: &Command<'_>) {
        let n = edge_cache::message_number(cmd.rest).map(<[u8]>::to_vec);
        match (cmd.verb, n) {
            (Verb::Retr, Some(n)) => {
                return self.steps.extend([
                    Step::CacheId {
                        n: n.clone(),
                        dele: false,
                    },
                    Step::CacheSize { n },
                    Step::FromCache {
                        line: line.to_vec(),
                    },
                ]);
            }
            (Verb::Dele, Some(n)) => self.steps.push_back(Step::CacheId { n, dele: true }),
            (Verb::Rset, _) => self.cache_deleted.clear(),
            _ => {}
        }
        self.steps.push_back(Step::Relay {
            line: line.to_vec(),
            expect: cmd.expect(),
        });
    }

    /// The username the edge cache files this session's mail under, as the client
    /// sent it.
    fn cache_user(&self) -> Vec<u8> {
        self.user.as_deref().unwrap_or_default().to_vec()
    }

    /// The daemon's answer to [`Action::CacheRead`]: the RETR in flight is answered
    /// from the edge, or relayed to the server.
    pub fn cached(
        &mut self,
        message: Option<&[u8]>,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !(self.in_flight && matches!(self.steps.front(), Some(Step::FromCache { .. }))) {
            return;
        }
        self.in_flight = false;
        match message {
            Some(message) => {
                out.push(Action::ToClient(edge_cache::retr_answer(message)));
                self.steps.pop_front();
            }
            None => {
                let Some(Step::FromCache { line }) = self.steps.pop_front() else {
                    unreachable!("checked above");
                };
                self.steps.push_front(Step::Relay {
                    line,
                    expect: Expect::MultiOnOk,
                });
            }
        }
        self.pump(sh, now, out);
    }

    fn tunnel(&mut self, line: &[u8], sh: &mut Shared, out: &mut Vec<Action>) {
        sh.counters.passed_through += 1;
        self.upstream(Step::Tunnel(line.into()), out);
    }

    /// Queues the patent's replay: USER (unless the server has it), wait, then PASS.
    fn login_upstream(&mut self, mode: LoginMode, out: &mut Vec<Action>) {
        self.upstream(Step::ReplayUser(mode), out);
        self.steps.push_back(Step::Login(mode));
    }

    /// Changes this session's table entry, if it has one.
    fn with_entry<R>(
        &self,
        sh: &mut Shared,
        now: Instant,
        f: impl FnOnce(&mut super::table::EntryMut<'_>) -> R,
    ) -> Option<R> {
        sh.table.update(self.entry.as_ref()?, now, f)
    }

    /// Ends the session with an error line, closing both sides. Inside a body the client
    /// is still receiving, the line would corrupt it: then the session just closes.
    fn refuse(&mut self, message: &[u8], sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        if self.responses.at_boundary() {
            out.push(Action::ToClient(message.to_vec()));
        }
        self.finish(sh, now, out, true);
    }

    /// Leaves the user's entry and closes what is open; never sends QUIT.
    fn finish(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>, close_client: bool) {
        if self.state == State::Closed {
            return;
        }
        if matches!(self.state, State::Transaction { .. }) {
            self.with_entry(sh, now, |e| e.sessions = e.sessions.saturating_sub(1));
        }
        self.state = State::Closed;
        self.credentials = None;
        self.steps.clear();
        self.held = Secret::default();
        if close_client {
            out.push(Action::CloseClient);
        }
        if self.link != Link::Down {
            out.push(Action::CloseUpstream);
        }
    }
}
