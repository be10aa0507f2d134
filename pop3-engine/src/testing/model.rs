//! A model mail server and a fake network around an engine, judging the engine's safety
//! properties as the bytes move.
//!
//! The property tests (`attenuation::tests::model`) and the engine fuzz target (`fuzz/`)
//! drive the same [`World`]: the property tests carry every action out at once
//! ([`World::settle`]), the fuzzer chooses when each piece of the network moves. A broken
//! property panics. What is judged:
//!
//! - a `+OK` to a login that the server did not say itself is only for the password the
//!   server last accepted for that user (among the logins the engine could see);
//! - a local claim that the maildrop is empty (`+OK` to STAT or a listing, "no such
//!   message") only while the server said 0 messages less than the interval ago;
//! - no XCLIENT but the engine's own reaches the server before a login;
//! - no DELE and no QUIT reach the server that the client did not send;
//! - the engine asks for one upstream connection at a time and writes only to one it
//!   asked for;
//! - the client's stream stays POP3: well-framed responses, one per command, in order;
//! - an engine holds no more of the client's input than its bound.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use hashbrown::HashMap;

use super::{Harness, info};
use crate::{
    attenuation::{AttenuationEngine, State, sasl::parse_plain},
    codec::{
        Command, Expect, MAX_SASL_LINE, Response, ResponseDecoder, StatusKind, Verb, trim_eol,
    },
    relay::{MAX_EARLY, RelayEngine},
    session::{Action, ConnId, Event, Output, Pop3Engine},
};

/// The users the model server knows.
pub const USERS: [&str; 3] = ["alice", "carol", "bob"];
/// The passwords they may have; each user starts with the first.
pub const PASSWORDS: [&str; 3] = ["pw0", "pw1", "pw2"];
/// TRANSACTION commands of a check session.
pub const COMMANDS: [&str; 10] = [
    "STAT", "LIST", "LIST 1", "UIDL", "RETR 1", "DELE 1", "TOP 1 0", "NOOP", "RSET", "CAPA",
];
/// The model server's greeting. Every status line it sends says `srv`, so the world can
/// tell the server's answers from the engine's own.
pub const SERVER_GREETING: &[u8] = b"+OK srv ready\r\n";

/// One upstream connection as the model server sees it.
#[derive(Debug, Default)]
struct ServerConn {
    input: Vec<u8>,
    user: Option<String>,
    authed: Option<String>,
    deleted: u32,
}

/// A line the server read, and what it made of it.
#[derive(Debug)]
pub struct Heard {
    /// The line, line end included.
    pub line: Vec<u8>,
    /// No login had succeeded on the connection before this line.
    pub before_login: bool,
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

/// A POP3 server with the facts the properties are judged by: USER/PASS and AUTH PLAIN
/// logins, a maildrop lock, DELE committed only by QUIT. It refuses STLS, APOP and other
/// SASL, and before a login takes any command it does not know with `+OK`, the way a
/// server that trusts the router takes XCLIENT.
#[derive(Debug)]
pub struct ModelServer {
    /// Per user: the password the server takes now.
    pub passwords: HashMap<String, String>,
    /// Per user: messages in the maildrop.
    pub messages: HashMap<String, u32>,
    conns: HashMap<ConnId, ServerConn>,
}

impl Default for ModelServer {
    fn default() -> Self {
        Self {
            passwords: USERS
                .iter()
                .map(|u| (u.to_string(), PASSWORDS[0].to_owned()))
                .collect(),
            messages: HashMap::new(),
            conns: HashMap::new(),
        }
    }
}

impl ModelServer {
    /// Accepts an upstream connection; returns its greeting.
    pub fn connect(&mut self, conn: ConnId) -> &'static [u8] {
        self.conns.insert(conn, ServerConn::default());
        SERVER_GREETING
    }

    /// Drops an upstream connection without UPDATE: its deletions are undone.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Reads the complete lines of what arrived and answers each; stops reading at QUIT.
    pub fn receive(&mut self, conn: ConnId, bytes: &[u8]) -> ServerReply {
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
            let heard = self.answer(conn, line, &mut reply);
            reply.heard.push(heard);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.input = rest.to_vec();
        }
        reply
    }

    fn answer(&mut self, conn: ConnId, line: &[u8], reply: &mut ServerReply) -> Heard {
        let c = self.conns.get_mut(&conn).expect("connected");
        let cmd = Command::parse(line);
        let arg = lossy(cmd.rest);
        let authed = c.authed.clone();
        let count = authed.as_ref().map_or(0, |u| {
            let stored = self.messages.get(u).copied().unwrap_or(0);
            stored.saturating_sub(c.deleted)
        });
        let mut heard = Heard {
            line: line.to_vec(),
            before_login: authed.is_none(),
            accepted: None,
            said_empty: None,
        };
        let answer = match (cmd.verb, &authed) {
            (Verb::Capa, _) => {
                "+OK srv\r\nUSER\r\nSASL PLAIN\r\nTOP\r\nUIDL\r\nXCLIENT\r\n.\r\n".into()
            }
            (Verb::User, None) => {
                c.user = Some(arg);
                "+OK srv\r\n".into()
            }
            (Verb::Pass, None) => match c.user.take() {
                Some(user) => self.login(conn, user, arg, &mut heard),
                None => "-ERR srv no user\r\n".into(),
            },
            (Verb::Auth, None) => {
                let args: Vec<_> = cmd.args().collect();
                match args[..] {
                    [mech, ir] if mech.eq_ignore_ascii_case(b"PLAIN") => match parse_plain(ir) {
                        Some(p) => {
                            let password = lossy(&p.password);
                            self.login(conn, p.user.clone(), password, &mut heard)
                        }
                        None => "-ERR srv bad credentials\r\n".into(),
                    },
                    _ => "-ERR srv no\r\n".into(),
                }
            }
            (Verb::Stls | Verb::Apop, _) => "-ERR srv no\r\n".into(),
            (Verb::Other, None) => "+OK srv\r\n".into(),
            (Verb::Stat, Some(user)) => {
                if count == 0 {
                    heard.said_empty = Some(user.clone());
                }
                format!("+OK {count} {} srv\r\n", count * 10)
            }
            (Verb::List | Verb::Uidl, Some(_)) if !cmd.has_args() => {
                let lines: String = (1..=count).map(|i| format!("{i} 10\r\n")).collect();
                format!("+OK srv\r\n{lines}.\r\n")
            }
            (Verb::Retr | Verb::Top, Some(_)) if count > 0 => "+OK srv\r\n..x\r\n.\r\n".into(),
            (Verb::Dele, Some(_)) if count > 0 => {
                c.deleted += 1;
                "+OK srv\r\n".into()
            }
            (Verb::Noop, Some(_)) => "+OK srv\r\n".into(),
            (Verb::Rset, Some(_)) => {
                c.deleted = 0;
                "+OK srv\r\n".into()
            }
            (Verb::Quit, _) => {
                reply.hang_up = true;
                if let Some(user) = &authed {
                    let stored = self.messages.entry(user.clone()).or_default();
                    *stored = stored.saturating_sub(c.deleted);
                }
                "+OK srv bye\r\n".into()
            }
            _ => "-ERR srv no\r\n".into(),
        };
        reply.bytes.extend_from_slice(answer.as_bytes());
        heard
    }

    fn login(&mut self, conn: ConnId, user: String, password: String, heard: &mut Heard) -> String {
        if self.passwords.get(&user) != Some(&password) {
            return "-ERR [AUTH] srv refused\r\n".into();
        }
        if self
            .conns
            .values()
            .any(|c| c.authed.as_ref() == Some(&user))
        {
            return "-ERR [IN-USE] srv maildrop locked\r\n".into();
        }
        self.conns.get_mut(&conn).expect("connected").authed = Some(user.clone());
        heard.accepted = Some((user, password));
        "+OK srv welcome\r\n".into()
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the world needs to know about an engine beyond [`Pop3Engine`].
pub trait Judged: Pop3Engine {
    /// The engine sends the server an XCLIENT of its own, before any client line.
    const SENDS_XCLIENT: bool;
    /// Most client input the engine may hold unanswered while it still reads the stream.
    const HELD_BOUND: Option<usize>;
    /// Whether the engine now passes `conn`'s client bytes on without reading them.
    fn opaque(&self, conn: ConnId) -> bool;
}

impl Judged for AttenuationEngine {
    const SENDS_XCLIENT: bool = true;
    // Unread input, plus the one line whose exchange is in flight.
    const HELD_BOUND: Option<usize> = Some(MAX_EARLY + MAX_SASL_LINE);

    fn opaque(&self, conn: ConnId) -> bool {
        self.state(conn) == Some(State::Tunnel)
    }
}

impl Judged for RelayEngine {
    const SENDS_XCLIENT: bool = false;
    // It passes every line on at once: what waits is the server's.
    const HELD_BOUND: Option<usize> = None;

    fn opaque(&self, _conn: ConnId) -> bool {
        // It tunnels only after the server accepted STLS or a login, or broke framing;
        // the model server does the first only after a login and never the others.
        false
    }
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
    /// The engine passed this connection's client bytes on unread at some point.
    tunnelled: bool,
    server_deles: u32,
    server_quits: u32,
}

/// An engine, its clients, the model server and the network between, under judgement.
pub struct World<E> {
    /// The engine with its fake clock.
    pub h: Harness<E>,
    /// The mail server.
    pub server: ModelServer,
    /// Judge XCLIENT also in bytes the engine tunnels (see [`Judged::opaque`]).
    pub judge_tunnels: bool,
    interval: Duration,
    conns: HashMap<ConnId, Conn>,
    /// Per user: the password the server last accepted in a session the engine read.
    accepted: HashMap<String, String>,
    /// Per user: when the server last said, in a session the engine read, the maildrop
    /// was empty.
    said_empty: HashMap<String, Instant>,
}

impl<E: Judged> World<E> {
    /// A world around `engine`; `interval` is the attenuation interval (n) it is judged by.
    pub fn new(engine: E, interval: Duration) -> Self {
        Self {
            h: Harness::new(engine),
            server: ModelServer::default(),
            judge_tunnels: true,
            interval,
            conns: HashMap::new(),
            accepted: HashMap::new(),
            said_empty: HashMap::new(),
        }
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
        let reply = self.server.receive(conn, &bytes);
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
        let opaque = self.h.engine.opaque(conn);
        let Some(c) = self.conns.get_mut(&conn) else {
            assert!(
                actions.is_empty(),
                "actions for released {conn}: {actions:?}"
            );
            return;
        };
        c.tunnelled |= opaque;
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
                        tunnelled: c.tunnelled,
                        ..Conn::default()
                    };
                }
                Action::CloseClient => c.client.closed = true,
            }
        }
        let c = &self.conns[&conn];
        if let Some(bound) = E::HELD_BOUND
            && !c.client.closed
            && !c.tunnelled
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
        if cmd.name.eq_ignore_ascii_case(b"XCLIENT") && heard.before_login {
            let own = format!(
                "XCLIENT ADDR={} PORT={}\r\n",
                info().client.ip(),
                info().client.port()
            );
            let engines = E::SENDS_XCLIENT && c.preamble && heard.line == own.as_bytes();
            assert!(
                engines || (c.tunnelled && !self.judge_tunnels),
                "a client's XCLIENT reached the server before a login: {:?}",
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
        if c.tunnelled {
            return;
        }
        if let Some((user, password)) = &heard.accepted {
            self.accepted.insert(user.clone(), password.clone());
        }
        if let Some(user) = &heard.said_empty {
            self.said_empty.insert(user.clone(), now);
        }
    }

    /// The client reads `bytes` from the engine and judges each response.
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
                Ok(Some(Response::Body { end, .. })) => {
                    if end {
                        client.unanswered.pop_front();
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
            let Some(answered) = (if body {
                client.unanswered.front().cloned()
            } else {
                client.unanswered.pop_front()
            }) else {
                // A parting -ERR with nothing asked (the server went away).
                continue;
            };
            client.sasl = kind == StatusKind::Continue;
            self.judge_response(conn, &answered, sasl, &line, kind);
        }
    }

    /// Judges the response `line` to the client's line `answered`.
    fn judge_response(
        &mut self,
        conn: ConnId,
        answered: &[u8],
        sasl: bool,
        line: &[u8],
        kind: StatusKind,
    ) {
        let client = &mut self.conns.get_mut(&conn).expect("open").client;
        let plain = |b64: &[u8]| parse_plain(b64).map(|p| (p.user.clone(), lossy(&p.password)));
        let cmd = Command::parse(answered);
        let login = if sasl {
            plain(trim_eol(answered))
        } else {
            match cmd.verb {
                Verb::User if !client.logged_in => {
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
        if line.windows(3).any(|w| w == b"srv") {
            return; // the server's own word
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
        let claims_empty = !sasl
            && match (kind, cmd.verb) {
                (StatusKind::Ok, Verb::Stat | Verb::List | Verb::Uidl) => true,
                (StatusKind::Err, _) => trim_eol(line).ends_with(b"no such message"),
                _ => false,
            };
        if claims_empty {
            let said = self.said_empty.get(&user).copied();
            assert!(
                said.is_some_and(|t| self.h.now.duration_since(t) < self.interval),
                "local {:?} for {user} without the server saying 0 messages less than n ago",
                String::from_utf8_lossy(trim_eol(line))
            );
        }
    }
}
