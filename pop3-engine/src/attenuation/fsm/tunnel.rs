//! Sessions that are not ours to answer (STLS, APOP, other SASL, opted-out users),
//! relayed through the command gate.

use std::time::Instant;

use super::{Link, Session, Step};
use crate::{
    attenuation::{
        Shared,
        table::{UserKey, UserName},
    },
    gate::Gate,
    session::Action,
};

impl Session {
    /// Hands the rest of the session to the server, through the command gate.
    pub(super) fn tunnel(&mut self, line: &[u8], sh: &mut Shared, out: &mut Vec<Action>) {
        sh.counters.passed_through += 1;
        self.upstream(Step::Tunnel(line.into()), out);
    }

    /// Lets the command gate handle an event of a tunnelled session.
    pub(super) fn through_gate(
        &mut self,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
        f: impl FnOnce(&mut Gate, &mut Vec<Action>),
    ) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        f(gate, out);
        if let Some(user) = gate.take_login() {
            // The server took a login the engine could not check: the password the
            // entry holds may be stale now, so the user's next check goes to the server.
            let key = UserKey {
                server: self.info.server,
                user: UserName::from(&user[..]),
            };
            if let Some(key) = sh.table.key(&key) {
                sh.table.clear_view(&key, now);
            }
        }
        if gate.is_closed() {
            // The gate already asked to close both sides.
            self.link = Link::Down;
            self.finish(sh, now, out, false);
        }
    }
}
