//! A TRANSACTION with the terminate flag set: answered at the edge from the view the
//! client was shown at its login, until only the server may answer.

use std::time::Instant;

use super::{LOGGING_OUT, LoginMode, NO_SUCH_MESSAGE, Session, Step};
use crate::{
    attenuation::Shared,
    codec::{Command, Verb},
    session::Action,
};

impl Session {
    /// A TRANSACTION command with the terminate flag set: answered from the view the
    /// client was shown at its login, an empty maildrop or the server's own answers.
    /// A message command on a snapshot goes to the server, once its numbering is
    /// checked.
    pub(super) fn local_transaction(
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
}
