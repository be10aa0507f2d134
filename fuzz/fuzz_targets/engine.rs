//! The engines (`AttenuationEngine`, or `RelayEngine`) driven by arbitrary sequences of
//! events against the model mail server: clients connecting, sending command lines or
//! raw bytes and hanging up; upstream connections coming up or failing; the server
//! reading, answering in arbitrary pieces and hanging up; the clock jumping; passwords
//! changing, mail arriving and mail deleted elsewhere.
//!
//! The judge is `pop3_engine::testing::model::World` (shared with the property tests):
//! no local `+OK` to a password the server did not accept last, no local "empty"
//! without the server saying so less than n ago, every count not the server's own true
//! within the time rule, RETR/TOP of a listed number bringing that message, no client
//! XCLIENT upstream, no DELE or QUIT upstream the client did not send, well-framed
//! responses in order, bounded held input. Any violation panics.
#![no_main]

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pop3_engine::{
    attenuation::{AttenuationEngine, Config, Salt},
    relay::RelayEngine,
    session::ConnId,
    testing::model::{COMMANDS, Judged, PASSWORDS, USERS, World},
};

/// The attenuation interval n the world judges by.
const INTERVAL: Duration = Duration::from_secs(60);
/// Most connections open at once: enough for lock and table conflicts.
const MAX_CONNS: usize = 4;

#[derive(Arbitrary, Debug)]
struct Input {
    relay: bool,
    ops: Vec<Op>,
}

/// One move of the world; `conn` picks among the open connections.
#[derive(Arbitrary, Debug)]
enum Op {
    Open,
    Say { conn: u8, line: Line },
    Raw { conn: u8, bytes: Vec<u8> },
    ClientClose { conn: u8 },
    Release { conn: u8 },
    Connect { conn: u8, ok: bool },
    ServerRead { conn: u8 },
    Deliver { conn: u8, max: u8 },
    ServerHangUp { conn: u8 },
    Wait { secs: u16 },
    Settle,
    ChangePassword { user: u8, pw: u8 },
    NewMail { user: u8 },
    DeleteElsewhere { user: u8 },
}

/// A command line a POP3 client (or an attacker) sends.
#[derive(Arbitrary, Debug)]
enum Line {
    User(u8),
    Pass(u8),
    /// AUTH PLAIN, with the credentials on the AUTH line or after the `+ ` challenge.
    AuthPlain {
        user: u8,
        pw: u8,
        inline: bool,
    },
    Command(u8),
    Quit,
    Xclient,
    Stls,
    Apop(u8),
}

fn user(i: u8) -> &'static str {
    USERS[usize::from(i) % USERS.len()]
}

fn password(i: u8) -> &'static str {
    PASSWORDS[usize::from(i) % PASSWORDS.len()]
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ABC[(n >> (18 - 6 * i) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

impl Line {
    fn bytes(&self) -> Vec<u8> {
        let text = match self {
            Line::User(u) => format!("USER {}\r\n", user(*u)),
            Line::Pass(p) => format!("PASS {}\r\n", password(*p)),
            Line::AuthPlain {
                user: u,
                pw,
                inline,
            } => {
                let b64 = base64(format!("\0{}\0{}", user(*u), password(*pw)).as_bytes());
                if *inline {
                    format!("AUTH PLAIN {b64}\r\n")
                } else {
                    format!("AUTH PLAIN\r\n{b64}\r\n")
                }
            }
            Line::Command(c) => format!("{}\r\n", COMMANDS[usize::from(*c) % COMMANDS.len()]),
            Line::Quit => "QUIT\r\n".to_owned(),
            Line::Xclient => "XCLIENT ADDR=192.0.2.66 PORT=1\r\n".to_owned(),
            Line::Stls => "STLS\r\n".to_owned(),
            Line::Apop(u) => format!("APOP {} c4c9334bac560ecc979e58001b3e22fb\r\n", user(*u)),
        };
        text.into_bytes()
    }
}

fn play<E: Judged>(mut world: World<E>, ops: &[Op]) {
    let mut next: ConnId = 1;
    for op in ops {
        let mut open: Vec<ConnId> = world.conns().collect();
        open.sort_unstable();
        let pick = |i: u8| (!open.is_empty()).then(|| open[usize::from(i) % open.len()]);
        match *op {
            Op::Open if open.len() < MAX_CONNS => {
                world.open(next);
                next += 1;
            }
            Op::Open => {}
            Op::Say { conn, ref line } => {
                if let Some(c) = pick(conn) {
                    world.client(c, &line.bytes());
                }
            }
            Op::Raw { conn, ref bytes } => {
                if let Some(c) = pick(conn) {
                    world.client(c, bytes);
                }
            }
            Op::ClientClose { conn } => pick(conn).into_iter().for_each(|c| world.client_close(c)),
            Op::Release { conn } => pick(conn).into_iter().for_each(|c| world.release(c)),
            Op::Connect { conn, ok } => pick(conn).into_iter().for_each(|c| world.connect(c, ok)),
            Op::ServerRead { conn } => {
                if let Some(c) = pick(conn) {
                    world.server_read(c);
                }
            }
            Op::Deliver { conn, max } => {
                if let Some(c) = pick(conn) {
                    world.deliver(c, usize::from(max));
                }
            }
            Op::ServerHangUp { conn } => {
                pick(conn).into_iter().for_each(|c| world.server_hang_up(c))
            }
            // Up to a little past autologout (600 s), so every timer can fire.
            Op::Wait { secs } => world.wait(Duration::from_secs(u64::from(secs % 700))),
            Op::Settle => world.settle(),
            Op::ChangePassword { user: u, pw } => {
                world
                    .server
                    .passwords
                    .insert(user(u).to_owned(), password(pw).to_owned());
            }
            Op::NewMail { user: u } => {
                let now = world.h.now;
                world.server.deliver(user(u), now);
            }
            Op::DeleteElsewhere { user: u } => {
                let now = world.h.now;
                world.server.delete_elsewhere(user(u), now);
            }
        }
    }
    // Whatever the moves left pending must also play out cleanly.
    world.settle();
}

fuzz_target!(|input: Input| {
    if input.relay {
        play(World::new(RelayEngine::new(), INTERVAL), &input.ops);
    } else {
        let config = Config {
            interval: INTERVAL,
            opt_out: HashSet::from(["bob".to_owned()]),
            // Fewer entries than users: a full table must not change what is true.
            table_size: 2,
            autologout: Duration::from_secs(600),
            gc_interval: Duration::from_secs(30),
            ..Config::default()
        };
        let engine = AttenuationEngine::new(config, Salt::new([1, 2, 3, 4]), Instant::now());
        play(World::new(engine, INTERVAL), &input.ops);
    }
});
