//! Property tests: random check sessions, hostile sessions, password changes, new mail,
//! deletions behind the edge and clock jumps, against the model mail server of
//! [`crate::testing::model`], whose world judges every step (the engine fuzz target
//! drives the same world with finer moves).

use std::time::Duration;

use proptest::prelude::*;

use super::{INTERVAL, engine};
use crate::{
    attenuation::{AttenuationEngine, State},
    session::ConnId,
    testing::model::{COMMANDS, PASSWORDS, USERS, World},
};

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

/// A password, most often the one every user starts with: repeated good logins are what
/// gets sessions answered locally.
fn password() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0), 1 => 0..PASSWORDS.len()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..USERS.len(), password(), prop::collection::vec((0..COMMANDS.len(), 0..20u64), 0..6), prop::bool::weighted(0.8))
            .prop_map(|(user, pw, commands, quit)| Op::Check { user, pw, commands, quit }),
        2 => (0..120u64).prop_map(Op::Wait),
        1 => (0..USERS.len(), 0..PASSWORDS.len()).prop_map(|(user, pw)| Op::ChangePassword { user, pw }),
        1 => (0..USERS.len()).prop_map(|user| Op::NewMail { user }),
        1 => (0..USERS.len()).prop_map(|user| Op::DeleteElsewhere { user }),
        2 => (prop::collection::vec(0..HOSTILE.len(), 1..10), 1..40usize)
            .prop_map(|(lines, chunk)| Op::Hostile { lines, chunk }),
    ]
}

/// The client sends one command line; the network carries everything out at once.
fn say(w: &mut World<AttenuationEngine>, conn: ConnId, line: &str) {
    w.client(conn, format!("{line}\r\n").as_bytes());
    w.settle();
}

/// Plays `ops` one session at a time, the world judging every step.
fn run(ops: Vec<Op>) {
    play(World::new(engine().engine, INTERVAL), ops);
}

/// [`run`] with the edge cache on, its reads answered by the world.
fn run_cached(ops: Vec<Op>) {
    let engine = super::edge_cache::cache_engine().engine;
    play(World::new(engine, INTERVAL).with_edge_cache(), ops);
}

fn play(mut w: World<AttenuationEngine>, ops: Vec<Op>) {
    for (conn, op) in (1..).zip(ops) {
        let now = w.h.now;
        match op {
            Op::Wait(secs) => {
                w.wait(Duration::from_secs(secs));
                w.settle();
            }
            Op::ChangePassword { user, pw } => {
                let password = PASSWORDS[pw].to_owned();
                w.server.passwords.insert(USERS[user].to_owned(), password);
            }
            Op::NewMail { user } => w.server.deliver(USERS[user], now),
            Op::DeleteElsewhere { user } => w.server.delete_elsewhere(USERS[user], now),
            Op::Hostile { lines, chunk } => {
                w.open(conn);
                w.settle();
                let bytes: Vec<u8> = lines
                    .iter()
                    .flat_map(|&i| [HOSTILE[i].as_bytes(), b"\r\n"].concat())
                    .collect();
                for piece in bytes.chunks(chunk) {
                    w.client(conn, piece);
                    w.settle();
                }
                w.client_close(conn);
                w.settle();
                w.release(conn);
            }
            Op::Check {
                user,
                pw,
                commands,
                quit,
            } => {
                w.open(conn);
                w.settle();
                say(&mut w, conn, &format!("USER {}", USERS[user]));
                say(&mut w, conn, &format!("PASS {}", PASSWORDS[pw]));
                if matches!(w.h.engine.state(conn), Some(State::Transaction { .. })) {
                    for (command, wait) in commands {
                        w.wait(Duration::from_secs(wait));
                        say(&mut w, conn, COMMANDS[command]);
                    }
                }
                if quit {
                    say(&mut w, conn, "QUIT");
                } else {
                    w.client_close(conn);
                    w.settle();
                }
                w.release(conn);
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

    #[test]
    fn the_edge_cache_never_serves_another_message(ops in prop::collection::vec(op(), 1..30)) {
        run_cached(ops);
    }
}

/// alice's check session with the right password, these commands at once, then QUIT.
fn check(commands: &[&str]) -> Op {
    Op::Check {
        user: 0,
        pw: 0,
        commands: commands
            .iter()
            .map(|c| (COMMANDS.iter().position(|k| k == c).expect("a command"), 0))
            .collect(),
        quit: true,
    }
}

/// The scenario a stale numbering needs, spelt out: a snapshot of two messages, the
/// first deleted by webmail, then an attenuated session that lists and fetches.
#[test]
fn a_message_deleted_elsewhere_is_never_fetched_by_a_stale_number() {
    run(vec![
        Op::NewMail { user: 0 },
        Op::NewMail { user: 0 },
        check(&[]),
        Op::DeleteElsewhere { user: 0 },
        check(&["UIDL", "RETR 1"]),
    ]);
}

/// A snapshot's old message must be counted by the next, attenuated, check.
#[test]
fn a_snapshot_answer_counts_the_old_mail() {
    run(vec![
        Op::NewMail { user: 0 },
        Op::Wait(100),
        check(&[]),
        check(&["STAT", "LIST", "UIDL"]),
    ]);
}

/// Found by the property test: a USER line the engine refuses (a control character)
/// leaves the session's user as it was, so the PASS that follows is that user's.
#[test]
fn a_refused_user_line_does_not_change_whose_login_follows() {
    run(vec![
        check(&[]),
        Op::Hostile {
            // USER alice, USER alice\0x, PASS pw0
            lines: vec![10, 13, 14],
            chunk: 1,
        },
    ]);
}

/// The edge cache's scenarios, spelt out: a message fetched, deleted and asked for again
/// in one session, then fetched by number in a session that webmail renumbered.
#[test]
fn the_edge_never_serves_a_deleted_or_renumbered_message() {
    run_cached(vec![
        Op::NewMail { user: 0 },
        Op::NewMail { user: 0 },
        check(&["RETR 1", "DELE 1", "RETR 1", "TOP 1 0", "RSET", "TOP 1 0"]),
        Op::DeleteElsewhere { user: 0 },
        Op::Wait(100),
        check(&["RETR 1", "UIDL", "RETR 2", "TOP 1 0"]),
    ]);
}
