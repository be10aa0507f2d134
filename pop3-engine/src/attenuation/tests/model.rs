//! Property tests: random check sessions, password changes, new mail and clock jumps,
//! against a fake mail server that keeps the facts the properties are judged by.

use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use hashbrown::HashMap;
use proptest::prelude::*;

use super::{INTERVAL, engine};
use crate::{
    attenuation::{AttenuationEngine, State, fsm::LOGGED_IN},
    codec::{Command, Verb, trim_eol},
    session::{Action, ConnId, Event, Pop3Engine},
    testing::Harness,
};

const USERS: [&str; 2] = ["alice", "carol"];
const PASSWORDS: [&str; 3] = ["pw0", "pw1", "pw2"];
const COMMANDS: [&str; 13] = [
    "STAT", "LIST", "LIST 1", "UIDL", "UIDL 2", "RETR 1", "RETR 2", "DELE 1", "DELE 2", "TOP 1 0",
    "NOOP", "RSET", "CAPA",
];
/// The address a hostile subscriber tries to claim with XCLIENT.
const SPOOFED: &str = "192.0.2.66";
/// What a hostile subscriber sends, in any order and cut anywhere: every way the
/// issue lists to slip XCLIENT past the engine, and look-alike usernames.
const HOSTILE: [&str; 20] = [
    "STLS",
    "APOP alice 0123456789abcdef0123456789abcdef",
    "AUTH CRAM-MD5",
    "AUTH PLAIN !!!!",
    "AUTH PLAIN",
    "*",
    "XCLIENT ADDR=192.0.2.66",
    "xclient addr=192.0.2.66 port=1",
    "  XCLIENT ADDR=192.0.2.66",
    "USER bob",
    "USER alice",
    "USER alice ",
    "USER ALICE",
    "USER alice\0x",
    "PASS pw0",
    "PASS pw1",
    // "\0alice\0pw0"
    "AUTH PLAIN AGFsaWNlAHB3MA==",
    // "\0alice\r\nUSER carol\0pw0"
    "AUTH PLAIN AGFsaWNlDQpVU0VSIGNhcm9sAHB3MA==",
    "STAT",
    "DELE 1",
];
/// The logins a hostile session can make honestly: (USER line or AUTH PLAIN line,
/// PASS line) -> the exact user and password.
const HOSTILE_LOGINS: [(&str, &str, &str, &str); 3] = [
    ("USER alice", "PASS pw0", "alice", "pw0"),
    ("USER alice", "PASS pw1", "alice", "pw1"),
    ("AUTH PLAIN AGFsaWNlAHB3MA==", "", "alice", "pw0"),
];

/// One upstream connection as the fake server sees it.
#[derive(Default)]
struct ServerConn {
    buf: Vec<u8>,
    user: Option<String>,
    authed: Option<String>,
    /// Message numbers marked deleted: they keep their numbers until UPDATE (RFC 1939).
    deleted: BTreeSet<usize>,
    deles: u32,
}

/// One message: its UID and when it arrived.
#[derive(Clone, Copy)]
struct Message {
    uid: u32,
    arrived: Instant,
}

/// A mail server with the facts the properties need.
#[derive(Default)]
struct FakeServer {
    passwords: HashMap<String, String>,
    mailboxes: HashMap<String, Vec<Message>>,
    next_uid: u32,
    conns: HashMap<ConnId, ServerConn>,
    /// Per user: the password the server last accepted.
    accepted: HashMap<String, String>,
    /// Per user: when the server last said the maildrop has no message.
    said_empty: HashMap<String, Instant>,
    /// Per user: when messages were deleted behind the edge's back (webmail, another
    /// edge): within n, a count may still include them.
    deleted_elsewhere: HashMap<String, Vec<Instant>>,
}

impl FakeServer {
    fn deliver(&mut self, user: &str, now: Instant) {
        self.next_uid += 1;
        let message = Message {
            uid: self.next_uid,
            arrived: now,
        };
        self.mailboxes
            .entry(user.to_owned())
            .or_default()
            .push(message);
    }

    /// Someone deletes the user's first message without the edge (webmail).
    fn delete_elsewhere(&mut self, user: &str, now: Instant) {
        if let Some(mailbox) = self.mailboxes.get_mut(user)
            && !mailbox.is_empty()
        {
            mailbox.remove(0);
            let when = self.deleted_elsewhere.entry(user.to_owned()).or_default();
            when.push(now);
        }
    }

    /// Answers the complete lines of `bytes`; `true` when the server hangs up after.
    fn receive(&mut self, conn: ConnId, bytes: &[u8], now: Instant) -> (Vec<u8>, bool) {
        let mut reply = Vec::new();
        let mut hang_up = false;
        let c = self.conns.get_mut(&conn).expect("upstream connected");
        c.buf.extend_from_slice(bytes);
        while let Some(nl) = c.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=nl).collect();
            assert!(
                !String::from_utf8_lossy(&line).contains(SPOOFED),
                "a subscriber's XCLIENT reached the server: {line:?}"
            );
            let cmd = Command::parse(&line);
            let arg = String::from_utf8_lossy(cmd.rest).into_owned();
            let user = c.authed.clone().unwrap_or_default();
            let mailbox = self.mailboxes.get(&user).cloned().unwrap_or_default();
            // Messages still there in this session, with their numbers.
            let live: Vec<(usize, Message)> = (1..)
                .zip(mailbox.iter().copied())
                .filter(|(n, _)| !c.deleted.contains(n))
                .collect();
            let numbered = arg
                .trim()
                .split(' ')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| live.iter().any(|(m, _)| m == n));
            let answer = match (cmd.verb, &c.authed) {
                (Verb::Capa, _) => "+OK\r\nUSER\r\nTOP\r\nUIDL\r\nXCLIENT\r\n.\r\n".to_owned(),
                (Verb::Other, None) => "+OK\r\n".to_owned(),
                (Verb::User, None) => {
                    c.user = Some(arg);
                    "+OK\r\n".to_owned()
                }
                (Verb::Pass, None) => match c.user.take() {
                    Some(u) if self.passwords.get(&u) == Some(&arg) => {
                        self.accepted.insert(u.clone(), arg);
                        c.authed = Some(u);
                        "+OK srv welcome\r\n".to_owned()
                    }
                    _ => "-ERR [AUTH] srv refused\r\n".to_owned(),
                },
                (Verb::Stat, Some(u)) => {
                    if live.is_empty() {
                        self.said_empty.insert(u.clone(), now);
                    }
                    format!("+OK {} {} srv\r\n", live.len(), live.len() * 10)
                }
                (Verb::List, Some(_)) if !cmd.has_args() => {
                    let lines: String = live.iter().map(|(n, _)| format!("{n} 10\r\n")).collect();
                    format!("+OK srv\r\n{lines}.\r\n")
                }
                (Verb::Uidl, Some(_)) if !cmd.has_args() => {
                    let lines: String = live
                        .iter()
                        .map(|(n, m)| format!("{n} u{}\r\n", m.uid))
                        .collect();
                    format!("+OK srv\r\n{lines}.\r\n")
                }
                (Verb::Retr | Verb::Top, Some(_)) => match numbered {
                    Some(n) => format!("+OK srv\r\nu{}\r\n.\r\n", mailbox[n - 1].uid),
                    None => "-ERR srv no such message\r\n".to_owned(),
                },
                (Verb::Dele, Some(_)) => match numbered {
                    Some(n) => {
                        c.deleted.insert(n);
                        c.deles += 1;
                        "+OK srv\r\n".to_owned()
                    }
                    None => "-ERR srv no such message\r\n".to_owned(),
                },
                (Verb::Noop, Some(_)) => "+OK srv\r\n".to_owned(),
                (Verb::Rset, Some(_)) => {
                    c.deleted.clear();
                    "+OK srv\r\n".to_owned()
                }
                (Verb::Quit, _) => {
                    hang_up = true;
                    if let Some(u) = &c.authed {
                        let kept = live.into_iter().map(|(_, m)| m).collect();
                        self.mailboxes.insert(u.clone(), kept);
                    }
                    "+OK srv bye\r\n".to_owned()
                }
                _ => "-ERR srv no\r\n".to_owned(),
            };
            reply.extend_from_slice(answer.as_bytes());
        }
        (reply, hang_up)
    }

    /// Whether `count` messages is a true answer for `user` now, for a session that
    /// has marked `pending` messages deleted: every message that arrived `INTERVAL` ago
    /// or earlier is counted (the time rule may hide only newer mail), and none that is
    /// gone.
    fn count_is_true(&self, user: &str, count: usize, pending: usize, now: Instant) -> bool {
        let mailbox = self
            .mailboxes
            .get(user)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let old = mailbox
            .iter()
            .filter(|m| now.duration_since(m.arrived) >= INTERVAL)
            .count();
        let recently_gone = self.deleted_elsewhere.get(user).map_or(0, |when| {
            when.iter()
                .filter(|t| now.duration_since(**t) < INTERVAL)
                .count()
        });
        count <= mailbox.len() + recently_gone && count + pending >= old
    }
}

/// The engine, the fake server, and what the properties watch.
struct World {
    h: Harness<AttenuationEngine>,
    server: FakeServer,
    /// Per connection: user and password the client logged in with.
    logins: HashMap<ConnId, (String, String)>,
    /// Per hostile connection: the logins its lines could honestly make.
    hostile_logins: HashMap<ConnId, Vec<(String, String)>>,
    client_deles: HashMap<ConnId, u32>,
    /// Per connection: the client's last command, and the UIDs its last UIDL listing
    /// showed by message number.
    asked: HashMap<ConnId, String>,
    listed: HashMap<ConnId, HashMap<String, String>>,
}

impl World {
    /// Carries out the engine's actions the way the dataplane would, at once.
    fn carry_out(&mut self, conn: ConnId, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::ToClient(bytes) => self.client_sees(conn, &bytes),
                Action::ConnectUpstream => {
                    self.server.conns.insert(conn, ServerConn::default());
                    let more = self.h.event(conn, Event::UpstreamConnected);
                    self.carry_out(conn, more);
                    let more = self.h.server(conn, b"+OK srv ready\r\n");
                    self.carry_out(conn, more);
                }
                Action::ToUpstream(bytes) => {
                    if self.server.conns.contains_key(&conn) {
                        let (reply, hang_up) = self.server.receive(conn, &bytes, self.h.now);
                        let more = self.h.server(conn, &reply);
                        self.carry_out(conn, more);
                        if hang_up {
                            self.server.conns.remove(&conn);
                            let more = self.h.event(conn, Event::UpstreamClosed);
                            self.carry_out(conn, more);
                        }
                    }
                }
                Action::CloseUpstream => {
                    // No QUIT: the fake server drops the session without UPDATE.
                    self.server.conns.remove(&conn);
                }
                Action::CloseClient => {}
            }
        }
    }

    /// The properties about what the client is told.
    fn client_sees(&mut self, conn: ConnId, bytes: &[u8]) {
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            self.never_a_wrong_message(conn, line);
            let candidates = match self.hostile_logins.get(&conn) {
                Some(pairs) => pairs.clone(),
                None => self.logins.get(&conn).cloned().into_iter().collect(),
            };
            if line == LOGGED_IN {
                assert!(
                    candidates
                        .iter()
                        .any(|(u, p)| self.server.accepted.get(u) == Some(p)),
                    "local +OK for a user and password the server did not accept last"
                );
            }
            // A STAT answer, local or relayed, is true of the maildrop now: every
            // message older than n counted, none that is gone (the session's own
            // pending DELEs aside).
            let words: Vec<&[u8]> = trim_eol(line).split(|&b| b == b' ').collect();
            let stat_asked = self.asked.get(&conn).is_some_and(|c| c == "STAT");
            if stat_asked && words.len() >= 3 && words[0] == b"+OK" {
                let count = std::str::from_utf8(words[1])
                    .ok()
                    .and_then(|c| c.parse().ok());
                let pending = self.server.conns.get(&conn).map_or(0, |c| c.deleted.len());
                if let Some(count) = count
                    && words[2] == format!("{}", count * 10).as_bytes()
                {
                    assert!(
                        candidates.iter().any(|(u, _)| {
                            self.server.count_is_true(u, count, pending, self.h.now)
                        }),
                        "a STAT answer that is not true now: {}",
                        String::from_utf8_lossy(line)
                    );
                }
            }
            if trim_eol(line) == b"+OK 0 0" {
                assert!(
                    candidates.iter().any(|(u, _)| {
                        let said = self.server.said_empty.get(u).copied();
                        said.is_some_and(|t| self.h.now.duration_since(t) < INTERVAL)
                    }),
                    "local +OK 0 0 without the server saying 0 less than n ago"
                );
            }
        }
    }

    /// A UIDL listing teaches which UID each number is; a RETR or TOP of a listed number
    /// must bring exactly that message (the fake server's body is its UID).
    fn never_a_wrong_message(&mut self, conn: ConnId, line: &[u8]) {
        let text = String::from_utf8_lossy(trim_eol(line)).into_owned();
        let asked = self.asked.get(&conn).cloned().unwrap_or_default();
        let mut words = asked.split(' ');
        match (words.next(), words.next()) {
            (Some("UIDL"), None) => {
                if let Some((n, uid)) = text.split_once(' ')
                    && uid.starts_with('u')
                {
                    let listed = self.listed.entry(conn).or_default();
                    listed.insert(n.to_owned(), uid.to_owned());
                }
            }
            (Some("RETR" | "TOP"), Some(n)) if text.starts_with('u') => {
                if let Some(expected) = self.listed.get(&conn).and_then(|l| l.get(n)) {
                    assert_eq!(&text, expected, "{asked} brought another message");
                }
            }
            _ => {}
        }
    }

    fn client(&mut self, conn: ConnId, line: &str) {
        self.asked.insert(conn, line.to_owned());
        if Command::parse(line.as_bytes()).verb == Verb::Dele {
            *self.client_deles.entry(conn).or_default() += 1;
        }
        let actions = self.h.client(conn, format!("{line}\r\n").as_bytes());
        self.carry_out(conn, actions);
    }

    fn check_deles(&self, conn: ConnId) {
        let sent = self.client_deles.get(&conn).copied().unwrap_or(0);
        let seen = self.server.conns.get(&conn).map_or(0, |c| c.deles);
        assert!(seen <= sent, "the engine sent DELE the client did not send");
    }
}

/// One step of a random scenario.
#[derive(Clone, Debug)]
enum Op {
    Check {
        user: usize,
        pw: usize,
        commands: Vec<(usize, u64)>,
        quit: bool,
    },
    Wait(u64),
    ChangePassword {
        user: usize,
        pw: usize,
    },
    NewMail {
        user: usize,
    },
    DeleteElsewhere {
        user: usize,
    },
    /// A hostile session: these lines, cut into chunks of this size.
    Hostile {
        lines: Vec<usize>,
        chunk: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..USERS.len(), 0..PASSWORDS.len(), prop::collection::vec((0..COMMANDS.len(), 0..20u64), 0..6), prop::bool::weighted(0.8))
            .prop_map(|(user, pw, commands, quit)| Op::Check { user, pw, commands, quit }),
        2 => (0..120u64).prop_map(Op::Wait),
        1 => (0..USERS.len(), 0..PASSWORDS.len()).prop_map(|(user, pw)| Op::ChangePassword { user, pw }),
        1 => (0..USERS.len()).prop_map(|user| Op::NewMail { user }),
        1 => (0..USERS.len()).prop_map(|user| Op::DeleteElsewhere { user }),
        2 => (prop::collection::vec(0..HOSTILE.len(), 1..10), 1..40usize)
            .prop_map(|(lines, chunk)| Op::Hostile { lines, chunk }),
    ]
}

/// Plays `ops` against the engine and the fake server, checking every property.
fn run(ops: Vec<Op>) {
    let mut w = World {
        h: engine(),
        server: FakeServer::default(),
        logins: HashMap::new(),
        hostile_logins: HashMap::new(),
        client_deles: HashMap::new(),
        asked: HashMap::new(),
        listed: HashMap::new(),
    };
    for user in USERS {
        w.server
            .passwords
            .insert(user.to_owned(), PASSWORDS[0].to_owned());
    }
    for (conn, op) in (1..).zip(ops) {
        match op {
            Op::Wait(secs) => {
                w.h.advance(Duration::from_secs(secs));
            }
            Op::ChangePassword { user, pw } => {
                w.server
                    .passwords
                    .insert(USERS[user].to_owned(), PASSWORDS[pw].to_owned());
            }
            Op::NewMail { user } => {
                let now = w.h.now;
                w.server.deliver(USERS[user], now);
            }
            Op::DeleteElsewhere { user } => {
                let now = w.h.now;
                w.server.delete_elsewhere(USERS[user], now);
            }
            Op::Hostile { lines, chunk } => {
                let sent: Vec<&str> = lines.iter().map(|&i| HOSTILE[i]).collect();
                let honest = HOSTILE_LOGINS
                    .iter()
                    .filter(|(first, pass, _, _)| {
                        sent.contains(first) && (pass.is_empty() || sent.contains(pass))
                    })
                    .map(|&(_, _, u, p)| (u.to_owned(), p.to_owned()))
                    .collect();
                w.hostile_logins.insert(conn, honest);
                let actions = w.h.open(conn);
                w.carry_out(conn, actions);
                let bytes: Vec<u8> = sent
                    .iter()
                    .flat_map(|l| [l.as_bytes(), b"\r\n"].concat())
                    .collect();
                for piece in bytes.chunks(chunk) {
                    let actions = w.h.client(conn, piece);
                    w.carry_out(conn, actions);
                }
                let actions = w.h.event(conn, Event::ClientClosed);
                w.carry_out(conn, actions);
                w.h.engine.close(conn, w.h.now);
            }
            Op::Check {
                user,
                pw,
                commands,
                quit,
            } => {
                let actions = w.h.open(conn);
                w.carry_out(conn, actions);
                w.logins
                    .insert(conn, (USERS[user].to_owned(), PASSWORDS[pw].to_owned()));
                w.client(conn, &format!("USER {}", USERS[user]));
                w.client(conn, &format!("PASS {}", PASSWORDS[pw]));
                if matches!(w.h.engine.state(conn), Some(State::Transaction { .. })) {
                    for (command, wait) in commands {
                        w.h.advance(Duration::from_secs(wait));
                        w.client(conn, COMMANDS[command]);
                        w.check_deles(conn);
                    }
                }
                if quit {
                    w.client(conn, "QUIT");
                } else {
                    let actions = w.h.event(conn, Event::ClientClosed);
                    w.carry_out(conn, actions);
                }
                w.check_deles(conn);
                w.h.engine.close(conn, w.h.now);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn attenuation_never_lies(ops in prop::collection::vec(op(), 1..30)) {
        run(ops);
    }
}

/// The scenario a stale numbering needs, spelt out: a snapshot of two messages, the
/// first deleted by webmail, then an attenuated session that lists and fetches.
#[test]
fn a_message_deleted_elsewhere_is_never_fetched_by_a_stale_number() {
    let check = |commands: &[&str]| Op::Check {
        user: 0,
        pw: 0,
        commands: commands
            .iter()
            .map(|c| (COMMANDS.iter().position(|k| k == c).expect("a command"), 0))
            .collect(),
        quit: true,
    };
    run(vec![
        Op::NewMail { user: 0 },
        Op::NewMail { user: 0 },
        check(&[]),
        Op::DeleteElsewhere { user: 0 },
        check(&["UIDL", "RETR 1"]),
    ]);
}
