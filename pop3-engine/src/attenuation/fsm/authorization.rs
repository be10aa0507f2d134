//! The AUTHORIZATION state: USER (the patent's None and Idle states), PASS and AUTH
//! PLAIN, the check that decides between a local answer and the server, and the
//! server's answer to a login (relayed, or replayed behind an attenuated session).

use std::{sync::Arc, time::Instant};

use super::{Credentials, LOGGED_IN, LOGIN_DELAYED, LoginMode, Session, State, Step};
use crate::{
    attenuation::{
        Shared,
        check_rules::{self, Check, Outcome},
        table::{UserKey, UserName},
    },
    codec::Command,
    gate::{self, SERVER_UNAVAILABLE},
    sasl::{PlainError, parse_plain},
    secret::Secret,
    session::Action,
};

impl Session {
    /// USER: the patent's None state (no entry: ask the server) or Idle state (local +OK).
    /// The name is kept as the exact bytes sent; it takes no table slot.
    pub(super) fn user_command(
        &mut self,
        line: &[u8],
        cmd: &Command<'_>,
        sh: &mut Shared,
        out: &mut Vec<Action>,
    ) {
        if sh.opted_out(cmd.rest) {
            return self.tunnel(line, sh, out);
        }
        let user = UserName::from(cmd.rest);
        let known = sh.table.contains(&UserKey {
            server: self.server(),
            user: user.clone(),
        });
        self.user = Some(user);
        self.user_upstream = false;
        if known {
            out.push(Action::ToClient(b"+OK\r\n".to_vec()));
        } else {
            self.upstream(Step::ForwardUser(line.to_vec()), out);
        }
    }

    /// AUTH PLAIN with its credentials: handled like USER and PASS.
    pub(super) fn auth_plain(
        &mut self,
        b64: &[u8],
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mut line = Secret::from(&b"AUTH PLAIN "[..]);
        line.extend(b64);
        line.extend(b"\r\n");
        match parse_plain(b64) {
            Ok(c) if !sh.opted_out(&c.user) => {
                self.user = Some(UserName::from(c.user.as_slice()));
                self.user_upstream = false;
                self.login(c.password.expose(), (None, line), sh, now, out);
            }
            Err(PlainError::ControlCharacter) => {
                out.push(Action::ToClient(gate::BAD_CHARACTERS.to_vec()))
            }
            // Undecodable: whatever it hides must not reach the server.
            Err(PlainError::Malformed) => out.push(Action::ToClient(gate::BAD_SASL.to_vec())),
            // The server's to judge: opted-out users, master-user logins.
            _ => self.tunnel(line.expose(), sh, out),
        }
    }

    /// PASS (or AUTH PLAIN) for the session's user: the patent's Authorization-state
    /// cases. `lines` are the USER line (if any) and the login line to replay.
    ///
    /// A check is answered locally only when nobody else is in session as this user:
    /// the server alone decides whether a user may hold two sessions at once.
    pub(super) fn login(
        &mut self,
        password: &[u8],
        (user_line, login_line): (Option<Vec<u8>>, Secret),
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        sh.counters.checks_seen += 1;
        let user = self.user.clone().unwrap_or_else(|| UserName::from(""));
        let verifier = sh.salt.verifier(self.server(), &user, password);
        let lookup = UserKey {
            server: self.server(),
            user,
        };
        let (interval, base_interval) = (
            sh.interval_for(&lookup, now),
            sh.base_interval_for(&lookup, now),
        );
        let key = sh.table.key(&lookup);
        let config = &sh.config;
        let mut genuine = false;
        // The maildrop a local answer shows, read in the same call that decides.
        let mut view = None;
        let decision = key.as_ref().and_then(|key| {
            sh.table.update(key, now, |e| {
                let check = Check {
                    now,
                    interval,
                    base_interval,
                    password_ok: e.verifier.matches(&verifier),
                    in_session: e.sessions > 0,
                };
                genuine = check.password_ok;
                let d = check_rules::decide(e, check, config);
                match d.outcome {
                    Outcome::Local { .. } => {
                        e.answered_locally = e.answered_locally.saturating_add(1);
                        e.sessions = 1;
                        view = e.view().flatten().map(Arc::clone);
                    }
                    Outcome::Server => e.passed_through = e.passed_through.saturating_add(1),
                    Outcome::Refuse => {}
                }
                d
            })
        });
        if let Some(d) = &decision {
            sh.counters.count(d);
        }
        // Only checks of known users with their password are load: a stream of made-up
        // logins must not stretch n for everyone.
        if genuine {
            sh.load.check(now);
        }
        let outcome = decision.map_or(Outcome::Server, |d| d.outcome);
        if outcome == Outcome::Refuse {
            // RFC 2449: the client is to wait; the next attempt starts afresh.
            out.push(Action::ToClient(LOGIN_DELAYED.to_vec()));
            self.user = None;
            return;
        }
        // Kept for the replay, or for a later Behind login of an attenuated session.
        self.credentials = Some(Credentials {
            user_line,
            login_line,
            verifier,
        });
        if let Outcome::Local { trust_view } = outcome {
            sh.counters.answered_locally += 1;
            sh.counters.upstream_logins_avoided += 1;
            self.trust_view = trust_view;
            // The maildrop this session shows, fixed at login as POP3's own is.
            self.shown = view;
            self.entry = key;
            self.state = State::Transaction { terminate: true };
            out.push(Action::ToClient(LOGGED_IN.to_vec()));
            return;
        }
        sh.counters.passed_through += 1;
        self.login_upstream(LoginMode::Relayed, out);
    }

    /// Queues the patent's replay: USER (unless the server has it), wait, then PASS.
    pub(super) fn login_upstream(&mut self, mode: LoginMode, out: &mut Vec<Action>) {
        self.upstream(Step::ReplayUser(mode), out);
        self.steps.push_back(Step::Login(mode));
    }

    /// The server's answer to a login.
    pub(super) fn login_answer(
        &mut self,
        mode: LoginMode,
        line: Vec<u8>,
        ok: bool,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        self.user_upstream = false;
        if let Some(sent) = self.login_sent.take() {
            let server_fault = !ok && line.windows(10).any(|w| w == b"[SYS/TEMP]");
            sh.load
                .login(now.saturating_duration_since(sent), server_fault, now);
        }
        match (ok, mode) {
            (true, LoginMode::Relayed) => {
                out.push(Action::ToClient(line));
                self.login_at = Some(now);
                self.state = State::Transaction { terminate: false };
                let (Some(user), Some(credentials)) = (&self.user, self.credentials.take()) else {
                    return true;
                };
                // Only now, with the server's word, does the user get an entry.
                let key = UserKey {
                    server: self.server(),
                    user: user.clone(),
                };
                let new = !sh.table.contains(&key);
                self.entry = sh.table.entry(key, now, credentials.verifier);
                // The password-change case: the server's word replaces the verifier.
                self.with_entry(sh, now, |e| {
                    e.verifier = credentials.verifier;
                    e.sessions = e.sessions.saturating_add(1);
                    if new {
                        e.passed_through = 1;
                    }
                });
                true
            }
            (true, LoginMode::Behind) => {
                // The login answered at the edge was not avoided after all.
                sh.counters.upstream_logins_avoided =
                    sh.counters.upstream_logins_avoided.saturating_sub(1);
                self.login_at = Some(now);
                self.state = State::Transaction { terminate: false };
                true
            }
            (false, LoginMode::Relayed) => {
                // The wrong-password case: nothing changes but the answer, and the
                // next attempt starts from scratch.
                out.push(Action::ToClient(line));
                self.credentials = None;
                self.user = None;
                true
            }
            (false, LoginMode::Behind) => {
                out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
                self.finish(sh, now, out, true);
                false
            }
        }
    }
}
