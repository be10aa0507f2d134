//! A model mail server and a fake network around an engine, judging the engine's safety
//! properties as the bytes move.
//!
//! Longer than 600 lines: the model server, the network and the judge share one state
//! (what each side was told and when); apart, every property would reach across files.
//!
//! The property tests (`attenuation::tests::model`) and the engine fuzz target (`fuzz/`)
//! drive the same [`World`]: the property tests carry every action out at once
//! ([`World::settle`]), the fuzzer chooses when each piece of the network moves. A broken
//! property panics. What is judged:
//!
//! - a `+OK` to a login that the server did not say itself is only for the password the
//!   server last accepted for that user;
//! - a local claim that the maildrop is empty (`+OK 0 0`, an empty listing) only while
//!   the server said 0 messages less than the interval ago;
//! - every STAT answer and listing the server did not just give this session (local, or
//!   replayed from a snapshot) is true of the maildrop within the time rule: every
//!   message older than n counted, none that has been gone for n; a local "no such
//!   message" never for a number that old mail must have;
//! - RETR or TOP of a number a UIDL listing showed brings that very message, and one
//!   answered from the edge cache the message the server numbers so in that session;
//! - no XCLIENT but the engine's own reaches the server, in any state;
//! - no DELE and no QUIT reach the server that the client did not send;
//! - the engine asks for one upstream connection at a time and writes only to one it
//!   asked for;
//! - the client's stream stays POP3: well-framed responses, one per command, in order;
//! - an engine holds no more of the client's input than its bound.

use std::{
    collections::{BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use hashbrown::HashMap;

use super::{Harness, info};
use crate::{
    attenuation::AttenuationEngine,
    codec::{
        Command, Expect, MAX_SASL_LINE, Response, ResponseDecoder, StatusKind, Verb, trim_eol,
    },
    gate::MAX_EARLY,
    relay::RelayEngine,
    sasl::parse_plain,
    session::{Action, ConnId, Event, Output, Pop3Engine},
};

/// The users the model server knows.
pub const USERS: [&str; 3] = ["alice", "carol", "bob"];
/// The passwords they may have; each user starts with the first.
pub const PASSWORDS: [&str; 3] = ["pw0", "pw1", "pw2"];
/// TRANSACTION commands of a check session.
pub const COMMANDS: [&str; 13] = [
    "STAT", "LIST", "LIST 1", "UIDL", "UIDL 2", "RETR 1", "RETR 2", "DELE 1", "DELE 2", "TOP 1 0",
    "NOOP", "RSET", "CAPA",
];
/// The model server's greeting.
pub const SERVER_GREETING: &[u8] = b"+OK srv ready\r\n";

/// One message: its UID and when it arrived. Its body is the line `u<uid>`, so a
/// client can tell which message it got.
#[derive(Clone, Copy, Debug)]
struct Message {
    uid: u32,
    arrived: Instant,
}

impl Message {
    /// The message's bytes, as RETR sends them (before the `.` line).
    fn body(&self) -> String {
        body(self.uid)
    }
}

/// The bytes of message `uid`.
fn body(uid: u32) -> String {
    format!("u{uid}\r\n")
}

/// One upstream connection as the model server sees it.
#[derive(Debug, Default)]
struct ServerConn {
    input: Vec<u8>,
    user: Option<String>,
    authed: Option<String>,
    /// When the login was accepted.
    since: Option<Instant>,
    /// The maildrop as this session numbers it: as at login, new mail appended; a
    /// message deleted elsewhere keeps its number (RFC 1939 numbers are the session's).
    view: Vec<Message>,
    /// Message numbers marked deleted: they keep their numbers until UPDATE.
    deleted: BTreeSet<usize>,
}

/// A line the server read, and what it made of it.
#[derive(Debug)]
pub struct Heard {
    /// The line, line end included.
    pub line: Vec<u8>,
    /// The user and password this line logged in with.
    pub accepted: Option<(String, String)>,
    /// The user whose maildrop this line's STAT found empty.
    pub said_empty: Option<String>,
}

/// What the server answers to bytes it read.
#[derive(Debug, Default)]
pub struct ServerReply {
    /// The answers, in order.
    pub bytes: Vec<u8>,
    /// The complete lines read.
    pub heard: Vec<Heard>,
    /// It hangs up once the answers are sent (QUIT).
    pub hang_up: bool,
}

/// Who said a status line: every one but the greeting ends in its own `srv#<n>` mark,
/// so the world tells the server's answers from the engine's, and a replay from a
/// snapshot from the answer itself.
#[derive(Clone, Copy, Debug)]
struct Said {
    conn: ConnId,
    /// When the session that said it logged in (its numbering dates from then).
    since: Instant,
}

/// A POP3 server with the facts the properties are judged by: USER/PASS and AUTH PLAIN
/// logins, a maildrop lock, POP3 numbering (deleted messages keep their numbers until
/// UPDATE, UIDs never reused), DELE committed only by QUIT, deletions behind the edge's
/// back. It refuses STLS, APOP and other SASL, and before a login takes any command it
/// does not know with `+OK`, the way a server that trusts the router takes XCLIENT.
#[derive(Debug)]
pub struct ModelServer {
    /// Per user: the password the server takes now.
    pub passwords: HashMap<String, String>,
    mailboxes: HashMap<String, Vec<Message>>,
    next_uid: u32,
    /// Per user: when messages left the maildrop (QUIT elsewhere, webmail).
    gone: HashMap<String, Vec<Instant>>,
    conns: HashMap<ConnId, ServerConn>,
    said: Vec<Said>,
    /// Whose each UID is (deleted messages included): what an edge cache filled by
    /// prefetch may hold.
    owners: HashMap<u32, String>,
}

impl Default for ModelServer {
    fn default() -> Self {
        Self {
            passwords: USERS
                .iter()
                .map(|u| (u.to_string(), PASSWORDS[0].to_owned()))
                .collect(),
            mailboxes: HashMap::new(),
            next_uid: 0,
            gone: HashMap::new(),
            conns: HashMap::new(),
            said: Vec::new(),
            owners: HashMap::new(),
        }
    }
}

impl ModelServer {
    /// New mail for `user`.
    pub fn deliver(&mut self, user: &str, now: Instant) {
        self.next_uid += 1;
        let message = Message {
            uid: self.next_uid,
            arrived: now,
        };
        self.mailboxes
            .entry(user.to_owned())
            .or_default()
            .push(message);
        self.owners.insert(message.uid, user.to_owned());
    }

    /// What an edge cache prefetched from this server holds for `user` under `uidl`:
    /// most messages ever delivered (deleted ones too), some never fetched (every
    /// fourth UID) and some as a copy of another size (every fifth, a sync mismatch);
    /// `forgotten` UIDs are gone. `None` unless a sound copy of `size` bytes is there.
    pub fn edge_copy(
        &self,
        user: &[u8],
        uidl: &[u8],
        size: u64,
        forgotten: &BTreeSet<u32>,
    ) -> Option<Vec<u8>> {
        let uid: u32 = std::str::from_utf8(uidl.strip_prefix(b"u")?)
            .ok()?
            .parse()
            .ok()?;
        let held = self.owners.get(&uid)?.as_bytes() == user
            && !uid.is_multiple_of(4)
            && !uid.is_multiple_of(5)
            && !forgotten.contains(&uid);
        let body = body(uid).into_bytes();
        (held && body.len() as u64 == size).then_some(body)
    }

    /// The UID line of message `n` as server session `conn` numbers it now, if live.
    fn numbered(&self, conn: ConnId, n: usize) -> Option<String> {
        let c = self.conns.get(&conn)?;
        let m = c.view.get(n.checked_sub(1)?)?;
        (!c.deleted.contains(&n)).then(|| format!("u{}", m.uid))
    }

    /// Someone deletes the user's first message without the edge (webmail).
    pub fn delete_elsewhere(&mut self, user: &str, now: Instant) {
        if let Some(mailbox) = self.mailboxes.get_mut(user)
            && !mailbox.is_empty()
        {
            mailbox.remove(0);
            self.gone.entry(user.to_owned()).or_default().push(now);
        }
    }

    /// Accepts an upstream connection; returns its greeting.
    pub fn connect(&mut self, conn: ConnId) -> &'static [u8] {
        self.conns.insert(conn, ServerConn::default());
        SERVER_GREETING
    }

    /// Drops an upstream connection without UPDATE: its deletions are undone.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Messages `conn`'s server session has marked deleted.
    fn pending(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.deleted.len())
    }

    /// Reads the complete lines of what arrived and answers each; stops reading at QUIT.
    pub fn receive(&mut self, conn: ConnId, bytes: &[u8], now: Instant) -> ServerReply {
        let mut reply = ServerReply::default();
        let Some(c) = self.conns.get_mut(&conn) else {
            return reply;
        };
        c.input.extend_from_slice(bytes);
        let input = std::mem::take(&mut c.input);
        let mut rest = &input[..];
        while !reply.hang_up
            && let Some(nl) = rest.iter().position(|&b| b == b'\n')
        {
            let (line, tail) = rest.split_at(nl + 1);
            rest = tail;
            let heard = self.answer(conn, line, now, &mut reply);
            reply.heard.push(heard);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.input = rest.to_vec();
        }
        reply
    }

    fn answer(
        &mut self,
        conn: ConnId,
        line: &[u8],
        now: Instant,
        reply: &mut ServerReply,
    ) -> Heard {
        let cmd = Command::parse(line);
        let arg = lossy(cmd.rest);
        let mut heard = Heard {
            line: line.to_vec(),
            accepted: None,
            said_empty: None,
        };
        let c = self.conns.get_mut(&conn).expect("connected");
        let authed = c.authed.clone();
        if let Some(user) = &authed {
            // New mail shows in an open session, after what it had.
            let last = c.view.last().map_or(0, |m| m.uid);
            let mailbox = self
                .mailboxes
                .get(user)
                .map(Vec::as_slice)
                .unwrap_or_default();
            c.view.extend(mailbox.iter().filter(|m| m.uid > last));
        }
        let live: Vec<(usize, Message)> = (1..)
            .zip(c.view.iter().copied())
            .filter(|(n, _)| !c.deleted.contains(n))
            .collect();
        let numbered = cmd
            .args()
            .next()
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
            .and_then(|n| live.iter().find(|(m, _)| *m == n).copied());
        let mark = self.said.len();
        let octets: usize = live.iter().map(|(_, m)| m.body().len()).sum();
        let stat = format!("+OK {} {octets}", live.len());
        let (status, body) = match (cmd.verb, &authed) {
            (Verb::Capa, _) => (
                "+OK",
                "USER\r\nSASL PLAIN\r\nTOP\r\nUIDL\r\nXCLIENT\r\n.\r\n".into(),
            ),
            (Verb::User, None) => {
                c.user = Some(arg);
                ("+OK", String::new())
            }
            (Verb::Pass, None) => match c.user.take() {
                Some(user) => (self.login(conn, user, arg, now, &mut heard), String::new()),
                None => ("-ERR no user", String::new()),
            },
            (Verb::Auth, None) => {
                let args: Vec<_> = cmd.args().collect();
                let status = match args[..] {
                    [mech, ir] if mech.eq_ignore_ascii_case(b"PLAIN") => match parse_plain(ir) {
                        Ok(p) => {
                            let user = lossy(&p.user);
                            let password = lossy(p.password.expose());
                            self.login(conn, user, password, now, &mut heard)
                        }
                        Err(_) => "-ERR bad credentials",
                    },
                    _ => "-ERR no",
                };
                (status, String::new())
            }
            (Verb::Stls | Verb::Apop, _) => ("-ERR no", String::new()),
            (Verb::Other, None) => ("+OK", String::new()),
            (Verb::Stat, Some(user)) => {
                if live.is_empty() {
                    heard.said_empty = Some(user.clone());
                }
                (stat.as_str(), String::new())
            }
            (Verb::List | Verb::Uidl, Some(_)) if !cmd.has_args() => {
                let lines: String = live
                    .iter()
                    .map(|(n, m)| match cmd.verb {
                        Verb::List => format!("{n} {}\r\n", m.body().len()),
                        _ => format!("{n} u{}\r\n", m.uid),
                    })
                    .collect();
                ("+OK", format!("{lines}.\r\n"))
            }
            (Verb::Retr | Verb::Top, Some(_)) => match numbered {
                Some((_, m)) => ("+OK", format!("{}.\r\n", m.body())),
                None => ("-ERR no such message", String::new()),
            },
            (Verb::Dele, Some(_)) => match numbered {
                Some((n, _)) => {
                    c.deleted.insert(n);
                    ("+OK", String::new())
                }
                None => ("-ERR no such message", String::new()),
            },
            (Verb::Noop, Some(_)) => ("+OK", String::new()),
            (Verb::Rset, Some(_)) => {
                c.deleted.clear();
                ("+OK", String::new())
            }
            (Verb::Quit, _) => {
                reply.hang_up = true;
                if let Some(user) = &authed {
                    // UPDATE: what this session deleted leaves the maildrop.
                    let gone: Vec<u32> = c.deleted.iter().map(|n| c.view[n - 1].uid).collect();
                    let mailbox = self.mailboxes.entry(user.clone()).or_default();
                    let before = mailbox.len();
                    mailbox.retain(|m| !gone.contains(&m.uid));
                    let left = before - mailbox.len();
                    self.gone
                        .entry(user.clone())
                        .or_default()
                        .extend((0..left).map(|_| now));
                }
                ("+OK bye", String::new())
            }
            _ => ("-ERR no", String::new()),
        };
        let since = self.conns.get(&conn).and_then(|c| c.since).unwrap_or(now);
        self.said.push(Said { conn, since });
        reply
            .bytes
            .extend_from_slice(format!("{status} srv#{mark}\r\n{body}").as_bytes());
        heard
    }

    fn login(
        &mut self,
        conn: ConnId,
        user: String,
        password: String,
        now: Instant,
        heard: &mut Heard,
    ) -> &'static str {
        if self.passwords.get(&user) != Some(&password) {
            return "-ERR [AUTH] refused";
        }
        if self
            .conns
            .values()
            .any(|c| c.authed.as_ref() == Some(&user))
        {
            return "-ERR [IN-USE] maildrop locked";
        }
        let c = self.conns.get_mut(&conn).expect("connected");
        c.authed = Some(user.clone());
        c.since = Some(now);
        c.view = self.mailboxes.get(&user).cloned().unwrap_or_default();
        heard.accepted = Some((user, password));
        "+OK welcome"
    }

    /// The server session that said the status line `line`, if the server said it.
    fn said_by(&self, line: &[u8]) -> Option<(usize, Said)> {
        let text = std::str::from_utf8(line).ok()?;
        let mark = text
            .split(' ')
            .find_map(|w| w.trim_end().strip_prefix("srv#"))?;
        let mark: usize = mark.parse().ok()?;
        Some((mark, *self.said.get(mark)?))
    }

    fn mailbox(&self, user: &str) -> &[Message] {
        self.mailboxes
            .get(user)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether "`user` has `count` messages" is true now within the time rule, for a
    /// session that marked `pending` deleted and numbers from `since`: every message
    /// that arrived `interval` ago or earlier counted, none gone longer than that.
    fn count_is_true(
        &self,
        user: &str,
        count: usize,
        pending: usize,
        since: Instant,
        now: Instant,
        interval: Duration,
    ) -> bool {
        let mailbox = self.mailbox(user);
        let recently_gone = self.gone.get(user).map_or(0, |when| {
            when.iter().filter(|&&t| t + interval > since).count()
        });
        count <= mailbox.len() + recently_gone
            && self.few_enough(user, count, pending, now, interval)
    }

    /// Whether `count` messages, with `pending` marked deleted, leave out none of
    /// `user`'s mail older than `interval`.
    fn few_enough(
        &self,
        user: &str,
        count: usize,
        pending: usize,
        now: Instant,
        interval: Duration,
    ) -> bool {
        let mailbox = self.mailbox(user);
        let old = mailbox
            .iter()
            .filter(|m| now.duration_since(m.arrived) >= interval)
            .count();
        count + pending >= old
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the world needs to know about an engine beyond [`Pop3Engine`].
pub trait Judged: Pop3Engine {
    /// The engine sends the server an XCLIENT of its own, before any client line.
    const SENDS_XCLIENT: bool;
    /// Most client input the engine may hold unanswered.
    const HELD_BOUND: Option<usize>;
}

impl Judged for AttenuationEngine {
    const SENDS_XCLIENT: bool = true;
    // Unread input, plus the one line whose exchange is in flight.
    const HELD_BOUND: Option<usize> = Some(MAX_EARLY + MAX_SASL_LINE);
}

impl Judged for RelayEngine {
    const SENDS_XCLIENT: bool = false;
    // It passes every line on at once: what waits is the server's.
    const HELD_BOUND: Option<usize> = None;
}

/// The client's side of one connection: what it sent, and the responses it read.
#[derive(Debug, Default)]
struct ClientSide {
    partial: Vec<u8>,
    /// Complete lines sent and not yet answered, oldest first.
    unanswered: VecDeque<Vec<u8>>,
    deles: u32,
    quits: u32,
    responses: ResponseDecoder,
    greeted: bool,
    /// The oldest unanswered line answers a SASL challenge (`+ `).
    sasl: bool,
    /// The user named by the session's last USER or AUTH PLAIN before a login.
    user: String,
    /// A login was accepted: USER and AUTH no longer name the session's user.
    logged_in: bool,
    closed: bool,
    /// The status line and body so far of the multi-line response being read.
    status: Vec<u8>,
    body: Vec<u8>,
    /// What the session's UIDL listings showed: message number -> UID line.
    listed: HashMap<Vec<u8>, Vec<u8>>,
}

impl ClientSide {
    fn send(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            match Command::parse(&line).verb {
                Verb::Dele => self.deles += 1,
                Verb::Quit => self.quits += 1,
                _ => {}
            }
            self.unanswered.push_back(line);
        }
    }

    fn unanswered_bytes(&self) -> usize {
        self.partial.len() + self.unanswered.iter().map(Vec::len).sum::<usize>()
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Link {
    #[default]
    Down,
    Connecting,
    Up,
}

/// One connection: the client, the upstream link and what is on the wire between.
#[derive(Debug, Default)]
struct Conn {
    client: ClientSide,
    link: Link,
    /// Engine bytes the server has not read yet.
    to_server: Vec<u8>,
    /// Server bytes not yet given to the engine.
    to_engine: Vec<u8>,
    /// The server hangs up once `to_engine` is delivered (it answered QUIT).
    hang_up: bool,
    /// Only CAPA was heard on this upstream connection so far.
    preamble: bool,
    server_deles: u32,
    server_quits: u32,
}

/// An engine, its clients, the model server and the network between, under judgement.
pub struct World<E> {
    /// The engine with its fake clock.
    pub h: Harness<E>,
    /// The mail server.
    pub server: ModelServer,
    interval: Duration,
    conns: HashMap<ConnId, Conn>,
    /// Per user: the password the server last accepted in a session the engine read.
    accepted: HashMap<String, String>,
    /// Per user: when the server last said, in a session the engine read, the maildrop
    /// was empty.
    said_empty: HashMap<String, Instant>,
    /// The server's status lines (by mark) a client has read: a second reading is a
    /// replay.
    read: std::collections::HashSet<usize>,
    /// The engine runs with the edge cache: its reads are answered from what the
    /// server's prefetch would have copied ([`ModelServer::edge_copy`]).
    edge_cache: bool,
    /// UIDs the engine had the edge forget.
    forgotten: BTreeSet<u32>,
}

impl<E: Judged> World<E> {
    /// A world around `engine`; `interval` is the attenuation interval (n) it is judged by.
    pub fn new(engine: E, interval: Duration) -> Self {
        Self {
            h: Harness::new(engine),
            server: ModelServer::default(),
            interval,
            conns: HashMap::new(),
            accepted: HashMap::new(),
            said_empty: HashMap::new(),
            read: Default::default(),
            edge_cache: false,
            forgotten: BTreeSet::new(),
        }
    }

    /// The world of an engine configured with the edge cache.
    pub fn with_edge_cache(mut self) -> Self {
        self.edge_cache = true;
        self
    }

    /// Connections opened and not released.
    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// A client connects as `conn`.
    pub fn open(&mut self, conn: ConnId) {
        assert!(!self.conns.contains_key(&conn), "connection {conn} reused");
        self.conns.insert(conn, Conn::default());
        let actions = self.h.open(conn);
        self.carry_out(conn, actions);
    }

    /// The client sends `bytes` (ignored once its side is closed).
    pub fn client(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.client.closed) else {
            return;
        };
        c.client.send(bytes);
        let actions = self.h.client(conn, bytes);
        self.carry_out(conn, actions);
    }

    /// The client hangs up.
    pub fn client_close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.client.closed) else {
            return;
        };
        c.client.closed = true;
        let actions = self.h.event(conn, Event::ClientClosed);
        self.carry_out(conn, actions);
    }

    /// The dataplane releases the connection (both sides gone).
    pub fn release(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.h.engine.close(conn, self.h.now);
            self.server.disconnect(conn);
        }
    }

    /// The upstream connection being made comes up (`ok`) or fails.
    pub fn connect(&mut self, conn: ConnId, ok: bool) {
        let Some(c) = self
            .conns
            .get_mut(&conn)
            .filter(|c| c.link == Link::Connecting)
        else {
            return;
        };
        let event = if ok {
            c.link = Link::Up;
            c.preamble = true;
            c.to_engine = self.server.connect(conn).to_vec();
            Event::UpstreamConnected
        } else {
            c.link = Link::Down;
            c.to_server.clear();
            Event::UpstreamFailed
        };
        let actions = self.h.event(conn, event);
        self.carry_out(conn, actions);
    }

    /// The server reads what reached it; `false` if there was nothing to read.
    pub fn server_read(&mut self, conn: ConnId) -> bool {
        let Some(c) = self
            .conns
            .get_mut(&conn)
            .filter(|c| c.link == Link::Up && !c.to_server.is_empty() && !c.hang_up)
        else {
            return false;
        };
        let bytes = std::mem::take(&mut c.to_server);
        let reply = self.server.receive(conn, &bytes, self.h.now);
        for heard in &reply.heard {
            self.judge_heard(conn, heard);
        }
        let c = self.conns.get_mut(&conn).expect("still open");
        c.to_engine.extend_from_slice(&reply.bytes);
        c.hang_up = reply.hang_up;
        true
    }

    /// Up to `max` bytes of the server's answers reach the engine; `false` if none waited.
    pub fn deliver(&mut self, conn: ConnId, max: usize) -> bool {
        let Some(c) = self
            .conns
            .get_mut(&conn)
            .filter(|c| c.link == Link::Up && (!c.to_engine.is_empty() || c.hang_up))
        else {
            return false;
        };
        if !c.to_engine.is_empty() {
            let n = max.clamp(1, c.to_engine.len());
            let bytes: Vec<u8> = c.to_engine.drain(..n).collect();
            let actions = self.h.server(conn, &bytes);
            self.carry_out(conn, actions);
        }
        let hung_up = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.link == Link::Up && c.hang_up && c.to_engine.is_empty());
        if hung_up {
            self.server_hang_up(conn);
        }
        true
    }

    /// The server closes the upstream connection (what it had not sent is lost).
    pub fn server_hang_up(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.link == Link::Up) else {
            return;
        };
        c.link = Link::Down;
        c.to_server.clear();
        c.to_engine.clear();
        c.hang_up = false;
        self.server.disconnect(conn);
        let actions = self.h.event(conn, Event::UpstreamClosed);
        self.carry_out(conn, actions);
    }

    /// The clock moves on by `by` and the timers that fell due run.
    pub fn wait(&mut self, by: Duration) {
        let outputs = self.h.advance(by);
        self.carry_out_all(outputs);
    }

    /// Moves the network until nothing moves: connections come up, the server reads and
    /// answers, answers reach the engine.
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            let mut conns: Vec<ConnId> = self.conns().collect();
            conns.sort_unstable();
            for conn in conns {
                if self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| c.link == Link::Connecting)
                {
                    self.connect(conn, true);
                    moved = true;
                }
                moved |= self.server_read(conn);
                moved |= self.deliver(conn, usize::MAX);
            }
            if !moved {
                return;
            }
        }
    }

    fn carry_out_all(&mut self, outputs: Vec<Output>) {
        for Output { conn, action } in outputs {
            self.carry_out(conn, vec![action]);
        }
    }

    /// Carries out the engine's actions the way the dataplane would, then judges what
    /// the engine holds.
    fn carry_out(&mut self, conn: ConnId, actions: Vec<Action>) {
        if !self.conns.contains_key(&conn) {
            assert!(
                actions.is_empty(),
                "actions for released {conn}: {actions:?}"
            );
            return;
        }
        let mut reads = Vec::new();
        for action in actions {
            let c = self.conns.get_mut(&conn).expect("open");
            match action {
                Action::ToClient(bytes) => self.client_reads(conn, &bytes),
                Action::ConnectUpstream => {
                    assert_eq!(c.link, Link::Down, "a second upstream connection at once");
                    c.link = Link::Connecting;
                }
                Action::ToUpstream(bytes) => {
                    assert_ne!(c.link, Link::Down, "bytes for an upstream never asked for");
                    c.to_server.extend_from_slice(&bytes);
                }
                Action::CloseUpstream => {
                    // No QUIT: the server drops the session without UPDATE.
                    if c.link == Link::Up {
                        self.server.disconnect(conn);
                    }
                    *c = Conn {
                        client: std::mem::take(&mut c.client),
                        server_deles: c.server_deles,
                        server_quits: c.server_quits,
                        ..Conn::default()
                    };
                }
                Action::CloseClient => c.client.closed = true,
                Action::CacheRead { .. } | Action::CacheForget { .. } if !self.edge_cache => {
                    panic!("the engine asked for an edge cache it does not have: {action:?}")
                }
                Action::CacheRead { user, uidl, size } => {
                    let copy = self.server.edge_copy(&user, &uidl, size, &self.forgotten);
                    reads.push(copy);
                }
                Action::CacheForget { uidls, .. } => {
                    let uids = uidls.into_iter().flatten();
                    let uids =
                        uids.filter_map(|u| lossy(u.strip_prefix(b"u")?).parse::<u32>().ok());
                    self.forgotten.extend(uids);
                }
            }
        }
        // The daemon's answers come back as events of their own.
        for copy in reads {
            if !self.conns.contains_key(&conn) {
                break;
            }
            let actions = self.h.event(conn, Event::Cached(copy.as_deref()));
            self.carry_out(conn, actions);
        }
        let c = &self.conns[&conn];
        if let Some(bound) = E::HELD_BOUND
            && !c.client.closed
        {
            let held = c.client.unanswered_bytes();
            assert!(held <= bound, "{held} client bytes held unanswered");
        }
    }

    /// The server read `heard` on `conn`'s upstream connection.
    fn judge_heard(&mut self, conn: ConnId, heard: &Heard) {
        let now = self.h.now;
        let c = self.conns.get_mut(&conn).expect("open");
        let cmd = Command::parse(&heard.line);
        let first = heard
            .line
            .split(u8::is_ascii_whitespace)
            .find(|w| !w.is_empty());
        if first.is_some_and(|w| w.eq_ignore_ascii_case(b"XCLIENT")) {
            let own = format!(
                "XCLIENT ADDR={} PORT={}\r\n",
                info().client.ip(),
                info().client.port()
            );
            assert!(
                E::SENDS_XCLIENT && c.preamble && heard.line == own.as_bytes(),
                "a client's XCLIENT reached the server: {:?}",
                String::from_utf8_lossy(&heard.line)
            );
        }
        c.preamble &= cmd.verb == Verb::Capa;
        match cmd.verb {
            Verb::Dele => c.server_deles += 1,
            Verb::Quit => c.server_quits += 1,
            _ => {}
        }
        assert!(
            c.server_deles <= c.client.deles,
            "the server got a DELE the client did not send"
        );
        assert!(
            c.server_quits <= c.client.quits,
            "the server got a QUIT the client did not send"
        );
        if let Some((user, password)) = &heard.accepted {
            self.accepted.insert(user.clone(), password.clone());
        }
        if let Some(user) = &heard.said_empty {
            self.said_empty.insert(user.clone(), now);
        }
    }

    /// The client reads `bytes` from the engine and judges each complete response.
    fn client_reads(&mut self, conn: ConnId, bytes: &[u8]) {
        let mut input = bytes;
        loop {
            let client = &mut self.conns.get_mut(&conn).expect("open").client;
            let front = client.unanswered.front();
            let expect = match front {
                Some(line) if client.greeted && !client.sasl => Command::parse(line).expect(),
                _ => Expect::Single,
            };
            let (line, kind, body) = match client.responses.decode(&mut input, expect) {
                Ok(None) => return,
                Ok(Some(Response::Body { data, end })) => {
                    client.body.extend_from_slice(data);
                    if end {
                        let answered = client.unanswered.pop_front().expect("asked");
                        let line = std::mem::take(&mut client.status);
                        let body = std::mem::take(&mut client.body);
                        self.judge_response(conn, &answered, false, &line, StatusKind::Ok, &body);
                    }
                    continue;
                }
                Ok(Some(Response::Status { line, kind, body })) => (line.to_vec(), kind, body),
                Err(err) => panic!("the client got a broken response: {err}"),
            };
            if !std::mem::replace(&mut client.greeted, true) {
                continue;
            }
            let sasl = std::mem::take(&mut client.sasl);
            if body {
                client.status = line;
                continue;
            }
            let Some(answered) = client.unanswered.pop_front() else {
                // A parting -ERR with nothing asked (the server went away).
                continue;
            };
            client.sasl = kind == StatusKind::Continue;
            self.judge_response(conn, &answered, sasl, &line, kind, &[]);
        }
    }

    /// Judges the response `line` (and multi-line `body`) to the client's line
    /// `answered`.
    fn judge_response(
        &mut self,
        conn: ConnId,
        answered: &[u8],
        sasl: bool,
        line: &[u8],
        kind: StatusKind,
        body: &[u8],
    ) {
        let now = self.h.now;
        let client = &mut self.conns.get_mut(&conn).expect("open").client;
        let plain = |b64: &[u8]| {
            parse_plain(b64)
                .ok()
                .map(|p| (lossy(&p.user), lossy(p.password.expose())))
        };
        let cmd = Command::parse(answered);
        let login = if sasl {
            plain(trim_eol(answered))
        } else {
            match cmd.verb {
                // A refused USER (a control character, say) leaves the user as it was.
                Verb::User if !client.logged_in && kind == StatusKind::Ok => {
                    client.user = lossy(cmd.rest);
                    None
                }
                Verb::Pass => Some((client.user.clone(), lossy(cmd.rest))),
                Verb::Auth => match cmd.args().collect::<Vec<_>>()[..] {
                    [mech, ir] if mech.eq_ignore_ascii_case(b"PLAIN") => plain(ir),
                    _ => None,
                },
                _ => None,
            }
        };
        if let Some((user, _)) = &login
            && !client.logged_in
        {
            client.user = user.clone();
        }
        client.logged_in |= login.is_some() && kind == StatusKind::Ok;
        let user = client.user.clone();
        let lines = || {
            body.split_inclusive(|&b| b == b'\n')
                .map(trim_eol)
                .take_while(|l| *l != b".")
        };
        // A UIDL listing teaches which UID each number is; a RETR or TOP of a listed
        // number must bring exactly that message (the model's body is its UID).
        let arg = cmd.args().next().map(<[u8]>::to_vec);
        match (cmd.verb, &arg, kind) {
            (Verb::Uidl, None, StatusKind::Ok) if !sasl => {
                for l in lines() {
                    if let Some((n, uid)) =
                        std::str::from_utf8(l).ok().and_then(|l| l.split_once(' '))
                    {
                        client.listed.insert(n.into(), uid.into());
                    }
                }
            }
            (Verb::Retr | Verb::Top, Some(n), StatusKind::Ok) if !sasl => {
                if let (Some(expected), Some(got)) = (client.listed.get(n), lines().next()) {
                    assert_eq!(
                        lossy(got),
                        lossy(expected),
                        "{} brought another message than UIDL listed",
                        lossy(trim_eol(answered))
                    );
                }
                // Not the server's word: from the edge, which must bring what the server
                // numbers n in this very session now.
                if self.server.said_by(line).is_none() {
                    let number = lossy(n).parse().ok();
                    let now_numbered = number.and_then(|n| self.server.numbered(conn, n));
                    let got = lines().next().map(lossy);
                    assert!(
                        now_numbered.is_some() && got == now_numbered,
                        "{} from the edge brought {got:?}, the server numbers {now_numbered:?}",
                        lossy(trim_eol(answered))
                    );
                }
            }
            _ => {}
        }
        let said = self.server.said_by(line);
        if let Some((mark, s)) = said
            && s.conn == conn
            && self.read.insert(mark)
        {
            return; // the server's own word to this session, read for the first time
        }
        if let Some((user, password)) = login
            && kind == StatusKind::Ok
        {
            assert_eq!(
                self.accepted.get(&user),
                Some(&password),
                "local +OK to {user}'s login with a password the server did not accept last"
            );
        }
        if sasl {
            return;
        }
        let count = match (kind, cmd.verb, &arg) {
            (StatusKind::Ok, Verb::Stat, _) => std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split(' ').nth(1)?.parse::<usize>().ok()),
            (StatusKind::Ok, Verb::List | Verb::Uidl, None) => Some(lines().count()),
            _ => None,
        };
        let pending = self.server.pending(conn);
        let text = || lossy(trim_eol(line));
        if let Some(count) = count {
            let since = said.map_or(now, |(_, s)| s.since);
            assert!(
                self.server
                    .count_is_true(&user, count, pending, since, now, self.interval),
                "{} for {user}: {} is not true now",
                lossy(trim_eol(answered)),
                text()
            );
            if count == 0 && said.is_none() {
                let said = self.said_empty.get(&user).copied();
                assert!(
                    said.is_some_and(|t| now.duration_since(t) < self.interval),
                    "local {:?} for {user} without the server saying 0 messages less than n ago",
                    text()
                );
            }
        }
        // "No such message n": fewer than n messages, unless mail younger than n.
        let n = arg
            .as_deref()
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
        if kind == StatusKind::Err
            && trim_eol(line).ends_with(b"no such message")
            && let Some(n) = n.filter(|&n| n > 0)
        {
            assert!(
                self.server
                    .few_enough(&user, n - 1, pending, now, self.interval),
                "local {:?} to {} for {user}, whose old mail has that number",
                text(),
                lossy(trim_eol(answered))
            );
        }
    }
}
