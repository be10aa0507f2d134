//! One complete client line, with no exchange in flight: checked by the command gate,
//! then handled by the session's state.

use std::time::Instant;

use super::{LOGGING_OUT, Link, Session, State, Step};
use crate::{
    attenuation::Shared,
    codec::{Command, Verb, trim_eol},
    gate,
    session::Action,
};

impl Session {
    /// One complete client line, with no exchange in flight.
    pub(super) fn command(
        &mut self,
        line: &[u8],
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
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
}
