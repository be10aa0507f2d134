//! The simulated mail server.

use std::collections::HashMap;
use std::time::Duration;

use pop3_engine::session::ConnId;

/// A POP3 server just big enough for the simulation: USER/PASS for `user<N>` with
/// password `pw`, STAT, LIST, UIDL, RETR, DELE committed by QUIT. It counts logins.
pub struct SimServer {
    /// Per user: (UID, arrival ms) of each message.
    mailboxes: Vec<Vec<(u32, u64)>>,
    next_uid: u32,
    conns: HashMap<ConnId, ServerConn>,
    pub logins: u64,
    /// Logins per minute of the window, for the busy hour and the latency model.
    per_minute: Vec<u32>,
}

#[derive(Default)]
struct ServerConn {
    user: Option<u32>,
    authed: Option<u32>,
    deleted: Vec<usize>,
}

impl SimServer {
    pub fn new(users: usize) -> Self {
        Self {
            mailboxes: vec![Vec::new(); users],
            next_uid: 0,
            conns: HashMap::new(),
            logins: 0,
            per_minute: Vec::new(),
        }
    }

    pub fn deliver(&mut self, user: u32, ms: u64) -> u32 {
        self.next_uid += 1;
        self.mailboxes[user as usize].push((self.next_uid, ms));
        self.next_uid
    }

    pub fn connect(&mut self, conn: ConnId) -> Vec<u8> {
        self.conns.insert(conn, ServerConn::default());
        b"+OK ready\r\n".to_vec()
    }

    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// The login latency in `minute`: 5 ms plus an M/M/1 queue at the previous
    /// minute's login rate.
    pub fn login_latency(&self, minute: usize, capacity: f64) -> Duration {
        let previous = minute.checked_sub(1).and_then(|m| self.per_minute.get(m));
        let rate = previous.map_or(0.0, |n| f64::from(*n) / 60.0);
        let queue = if rate < capacity * 0.999 {
            1.0 / (capacity - rate)
        } else {
            2.0
        };
        Duration::from_secs_f64(0.005 + queue.min(2.0))
    }

    pub fn busy_logins(&self, busy_ms: u64) -> u64 {
        let start = (busy_ms / 60_000) as usize;
        self.per_minute
            .iter()
            .skip(start)
            .take(60)
            .map(|n| u64::from(*n))
            .sum()
    }

    /// Answers the complete lines in `bytes` (the engine sends whole lines): the reply,
    /// logins made, and whether it hangs up (QUIT).
    pub fn receive(&mut self, conn: ConnId, bytes: &[u8], minute: usize) -> (Vec<u8>, u32, bool) {
        let mut reply = Vec::new();
        let (mut logins, mut hang_up) = (0, false);
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(line);
            let mut words = text.split_whitespace();
            let verb = words.next().unwrap_or("").to_ascii_uppercase();
            let arg = words.next().unwrap_or("");
            let Some(c) = self.conns.get_mut(&conn) else {
                break;
            };
            let live = |mb: &Vec<(u32, u64)>, deleted: &Vec<usize>| -> Vec<(usize, u32)> {
                (1..)
                    .zip(mb.iter())
                    .filter(|(n, _)| !deleted.contains(n))
                    .map(|(n, (uid, _))| (n, *uid))
                    .collect()
            };
            let answer = match (verb.as_str(), c.authed) {
                ("CAPA", _) => "+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n".to_owned(),
                ("USER", None) => {
                    c.user = arg
                        .strip_prefix("user")
                        .and_then(|n| n.parse().ok())
                        .filter(|&n: &u32| (n as usize) < self.mailboxes.len());
                    "+OK\r\n".to_owned()
                }
                ("PASS", None) => match c.user {
                    Some(u) if arg == "pw" => {
                        c.authed = Some(u);
                        logins += 1;
                        "+OK Logged in.\r\n".to_owned()
                    }
                    _ => "-ERR [AUTH] Authentication failed.\r\n".to_owned(),
                },
                ("STAT", Some(u)) => {
                    let n = live(&self.mailboxes[u as usize], &c.deleted).len();
                    format!("+OK {n} {}\r\n", n * 100)
                }
                ("LIST", Some(u)) => {
                    let mut s = "+OK\r\n".to_owned();
                    for (n, _) in live(&self.mailboxes[u as usize], &c.deleted) {
                        s += &format!("{n} 100\r\n");
                    }
                    s + ".\r\n"
                }
                ("UIDL", Some(u)) => {
                    let mut s = "+OK\r\n".to_owned();
                    for (n, uid) in live(&self.mailboxes[u as usize], &c.deleted) {
                        s += &format!("{n} u{uid}\r\n");
                    }
                    s + ".\r\n"
                }
                ("RETR", Some(u)) => {
                    let n: usize = arg.parse().unwrap_or(0);
                    match live(&self.mailboxes[u as usize], &c.deleted)
                        .iter()
                        .find(|(m, _)| *m == n)
                    {
                        Some((_, uid)) => format!(
                            "+OK 100 octets\r\nX-Uid: {uid}\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"
                        ),
                        None => "-ERR no such message\r\n".to_owned(),
                    }
                }
                ("DELE", Some(_)) => {
                    c.deleted.push(arg.parse().unwrap_or(0));
                    "+OK\r\n".to_owned()
                }
                ("QUIT", authed) => {
                    if let Some(u) = authed {
                        let mb = &mut self.mailboxes[u as usize];
                        let mut n = 0;
                        mb.retain(|_| {
                            n += 1;
                            !c.deleted.contains(&n)
                        });
                    }
                    hang_up = true;
                    "+OK bye\r\n".to_owned()
                }
                ("NOOP" | "RSET", Some(_)) => "+OK\r\n".to_owned(),
                _ => "-ERR what?\r\n".to_owned(),
            };
            reply.extend_from_slice(answer.as_bytes());
            if hang_up {
                break;
            }
        }
        self.logins += u64::from(logins);
        if self.per_minute.len() <= minute {
            self.per_minute.resize(minute + 1, 0);
        }
        self.per_minute[minute] += logins;
        (reply, logins, hang_up)
    }
}
