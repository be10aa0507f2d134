//! Property tests: random check sessions, password changes, new mail and clock jumps,
//! against the model mail server of [`crate::testing::model`], whose world judges every
//! step (the engine fuzz target drives the same world with finer moves).

use std::time::Duration;

use proptest::prelude::*;

use super::{INTERVAL, engine};
use crate::{
    attenuation::{AttenuationEngine, State},
    session::ConnId,
    testing::model::{COMMANDS, PASSWORDS, USERS, World},
};

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..USERS.len(), 0..PASSWORDS.len(), prop::collection::vec((0..COMMANDS.len(), 0..20u64), 0..6), prop::bool::weighted(0.8))
            .prop_map(|(user, pw, commands, quit)| Op::Check { user, pw, commands, quit }),
        2 => (0..120u64).prop_map(Op::Wait),
        1 => (0..USERS.len(), 0..PASSWORDS.len()).prop_map(|(user, pw)| Op::ChangePassword { user, pw }),
        1 => (0..USERS.len()).prop_map(|user| Op::NewMail { user }),
    ]
}

/// The client sends one command line; the network carries everything out at once.
fn say(w: &mut World<AttenuationEngine>, conn: ConnId, line: &str) {
    w.client(conn, format!("{line}\r\n").as_bytes());
    w.settle();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn attenuation_never_lies(ops in prop::collection::vec(op(), 1..30)) {
        let mut w = World::new(engine().engine, INTERVAL);
        for (conn, op) in (1..).zip(ops) {
            match op {
                Op::Wait(secs) => {
                    w.wait(Duration::from_secs(secs));
                    w.settle();
                }
                Op::ChangePassword { user, pw } => {
                    w.server.passwords.insert(USERS[user].to_owned(), PASSWORDS[pw].to_owned());
                }
                Op::NewMail { user } => *w.server.messages.entry(USERS[user].to_owned()).or_default() += 1,
                Op::Check { user, pw, commands, quit } => {
                    w.open(conn);
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
}
