//! One client connection through the patent's state machine.
//!
//! The client is greeted locally (or, for a mail server whose greeting carries an APOP
//! timestamp, with that server's own greeting) and the mail server is reached only when
//! a decision needs it. Commands are processed one at a time, in order: while an
//! exchange with the server is in flight, later client input waits in a bounded buffer.
//! The engine knows which answer it is owed at every moment; a server that answers
//! what was not asked ends the session with `[SYS/TEMP]` instead of shifting every
//! later answer onto the wrong command.
//!
//! This module holds the session's states and its life (events in, the end); the rest,
//! by phase:
//!
//! - [`command`]: one complete client line, dispatched by state;
//! - [`authorization`]: USER, PASS and AUTH PLAIN, the local-or-server decision, the
//!   server's answer to a login;
//! - [`attenuated`]: a TRANSACTION answered at the edge (the terminate flag);
//! - [`exchange`]: the steps sent to the server one at a time and their answers;
//! - [`snapshot`]: what the held QUIT learns of the maildrop, and the UIDL check before
//!   a message is fetched for a session answered from a snapshot;
//! - [`from_cache`]: RETR from the edge cache after the UIDL handshake;
//! - [`tunnel`]: the sessions handed to the command gate.
//!
//! The rules that decide a check live in their own modules (`check_rules` and the
//! policies it calls).

mod attenuated;
mod authorization;
mod command;
mod exchange;
mod from_cache;
mod snapshot;
mod tunnel;

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Instant};

use super::{
    Shared,
    edge_cache::{Deleted, Lookup, Numbering},
    maildrop::Maildrop,
    table::{UserKey, UserName},
    verifier::Verifier,
};
use crate::{
    codec::{CommandDecoder, Expect, ResponseDecoder, StatusKind},
    gate::{Gate, MAX_EARLY, SERVER_UNAVAILABLE, TOO_MANY_PENDING},
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
    /// `UIDL` (`uidl`) or `LIST`, once per session before its first RETR or TOP, for the
    /// edge cache.
    CacheList { uidl: bool },
    /// `UIDL n` before a RETR, TOP or DELE (`dele`) of message n, for the edge cache
    /// (answered from the session's listing when it has one).
    CacheId { n: Vec<u8>, dele: bool },
    /// `LIST n` before a RETR or TOP of message n, for the edge cache (answered from the
    /// session's listing when it has one).
    CacheSize { n: Vec<u8> },
    /// The RETR or TOP (`top`: its line count) `line`: from the edge's copy if the
    /// server's UIDL and size match one (in flight while the daemon looks), else relayed.
    FromCache { line: Vec<u8>, top: Option<u64> },
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
    /// What the server said about the message of the RETR or TOP being looked up.
    lookup: Lookup,
    /// The messages this session deleted, for the edge cache.
    cache_deleted: Deleted,
    /// The server's numbering of this session's maildrop, for the edge cache.
    numbering: Numbering,
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
            numbering: Numbering::Unknown,
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
