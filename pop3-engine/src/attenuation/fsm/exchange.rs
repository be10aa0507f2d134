//! The exchange with the mail server: steps sent one at a time, in order, and each
//! answer matched to the step in flight; client commands run only when none is.

use std::time::Instant;

use super::{Link, MAX_CAPA_BODY, MAX_LOCAL_ANSWERS, Observed, Piece, Session, State, Step};
use crate::{
    attenuation::{
        Shared,
        caps::{ServerCaps, has_apop_timestamp},
        edge_cache::{self, Numbering},
    },
    codec::{Expect, Response, StatusKind},
    gate::{Gate, LINE_TOO_LONG, SERVER_UNAVAILABLE, TOO_MANY_PENDING, without_xclient_code},
    secret::Secret,
    session::Action,
};

impl Session {
    /// Runs steps and client commands until something must be waited for.
    pub(super) fn pump(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        let (mut counted, mut answered) = (out.len(), 0);
        loop {
            // Only what this pass added since the last look.
            for action in &out[counted..] {
                if let Action::ToClient(bytes) = action {
                    answered += bytes.len();
                }
            }
            counted = out.len();
            if answered > MAX_LOCAL_ANSWERS {
                return self.refuse(TOO_MANY_PENDING, sh, now, out);
            }
            if matches!(self.state, State::Closed | State::Tunnel) || self.in_flight {
                return;
            }
            if !self.steps.is_empty() {
                if !self.start_step(sh, now, out) {
                    return;
                }
                continue;
            }
            let mut held = self.held.take();
            let mut input = held.expose();
            let line = match self.commands.decode(&mut input) {
                Ok(Some(line)) => Secret::from(line),
                // The decoder keeps the partial line: nothing is left in `held`.
                Ok(None) => {
                    if self.client_eof {
                        // Everything the client sent is answered.
                        self.finish(sh, now, out, true);
                    }
                    return;
                }
                Err(_) => return self.refuse(LINE_TOO_LONG, sh, now, out),
            };
            let used = held.len() - input.len();
            held.consume(used);
            self.held = held;
            self.command(line.expose(), sh, now, out);
        }
    }

    /// Starts the front step; `false` when it now waits for the server.
    fn start_step(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) -> bool {
        if self.answer_from_listing() {
            return true;
        }
        let send = match self.steps.front_mut().expect("a step") {
            Step::LocalCapa => {
                let mut capa = Vec::new();
                sh.caps(self.info.server)
                    .cloned()
                    .unwrap_or_default()
                    .local_capa(sh.config.login_delay.map(|d| d.delay), &mut capa);
                out.push(Action::ToClient(capa));
                self.steps.pop_front();
                return true;
            }
            _ if self.link != Link::Up => return false,
            Step::Greeting { .. } => None,
            Step::Capa if sh.caps_fresh(self.info.server, now) => {
                self.steps.pop_front();
                return true;
            }
            Step::Capa => Some(b"CAPA\r\n".to_vec()),
            Step::Xclient
                if !(self.greeting_xclient
                    || sh.caps(self.info.server).is_some_and(|c| c.xclient)) =>
            {
                self.steps.pop_front();
                return true;
            }
            Step::Xclient => Some(
                format!(
                    "XCLIENT ADDR={} PORT={}\r\n",
                    self.info.client.ip(),
                    self.info.client.port()
                )
                .into_bytes(),
            ),
            Step::ForwardUser(line) | Step::Relay { line, .. } => Some(std::mem::take(line)),
            Step::ReplayUser(_) => {
                match self.credentials.as_ref().and_then(|c| c.user_line.as_ref()) {
                    Some(line) if !self.user_upstream => Some(line.clone()),
                    _ => {
                        self.steps.pop_front();
                        return true;
                    }
                }
            }
            Step::Login(_) => {
                self.login_sent = Some(now);
                self.credentials
                    .as_ref()
                    .map(|c| c.login_line.expose().to_vec())
            }
            Step::Stat => Some(b"STAT\r\n".to_vec()),
            Step::Snapshot { uidl: false } => Some(b"LIST\r\n".to_vec()),
            Step::Snapshot { uidl: true } => Some(b"UIDL\r\n".to_vec()),
            Step::Verify => {
                self.observed = Some(Observed::Listing {
                    stat: Vec::new(),
                    list: Vec::new(),
                    uidl: Vec::new(),
                });
                Some(b"UIDL\r\n".to_vec())
            }
            Step::Quit => Some(b"QUIT\r\n".to_vec()),
            Step::CacheList { uidl: true } => Some(b"UIDL\r\n".to_vec()),
            Step::CacheList { uidl: false } => Some(b"LIST\r\n".to_vec()),
            Step::CacheId { n, .. } => Some([b"UIDL ", &n[..], b"\r\n"].concat()),
            Step::CacheSize { n } => Some([b"LIST ", &n[..], b"\r\n"].concat()),
            Step::FromCache { line, .. } => match std::mem::take(&mut self.lookup).complete() {
                Some((uidl, size)) => {
                    out.push(Action::CacheRead {
                        user: self.cache_user(),
                        uidl,
                        size,
                    });
                    None
                }
                None => {
                    let line = std::mem::take(line);
                    self.steps[0] = Step::Relay {
                        line,
                        expect: Expect::MultiOnOk,
                    };
                    return true;
                }
            },
            Step::Tunnel(line) => {
                let mut bytes = line.take();
                bytes.extend(self.held.take().expose());
                self.steps.clear();
                self.state = State::Tunnel;
                self.gate = Some(Box::new(Gate::after_greeting()));
                let eof = self.client_eof;
                self.through_gate(sh, now, out, |g, o| {
                    g.client_data(bytes.expose(), o);
                    if eof {
                        g.client_closed(o);
                    }
                });
                return false;
            }
        };
        if let Some(bytes) = send {
            out.push(Action::ToUpstream(bytes));
        }
        self.in_flight = true;
        false
    }

    /// Bytes from the server.
    pub fn upstream_data(
        &mut self,
        data: &[u8],
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.state == State::Tunnel {
            return self.through_gate(sh, now, out, |g, o| g.server_data(data, o));
        }
        let mut input = data;
        while !input.is_empty() && self.state != State::Closed {
            // While the daemon looks up the edge cache, the server owes nothing.
            if !self.in_flight || matches!(self.steps.front(), Some(Step::FromCache { .. })) {
                return self.unexpected_answer(sh, now, out);
            }
            let expect = match self.steps.front() {
                Some(
                    Step::Capa | Step::Snapshot { .. } | Step::Verify | Step::CacheList { .. },
                ) => Expect::MultiOnOk,
                Some(Step::Relay { expect, .. }) => *expect,
                _ => Expect::Single,
            };
            let piece = match self.responses.decode(&mut input, expect) {
                Ok(None) => return,
                Ok(Some(Response::Status { line, kind, body })) => {
                    Piece::Status(line.to_vec(), kind, body)
                }
                Ok(Some(Response::Body { data, end })) => Piece::Body(data.to_vec(), end),
                Err(err) => {
                    tracing::warn!(%err, "mail server broke POP3 framing");
                    return self.breach(sh, now, out);
                }
            };
            if self.answer(piece, sh, now, out) {
                self.steps.pop_front();
                self.in_flight = false;
                // The engine asks one thing at a time: more bytes now answer nothing.
                if !input.is_empty() {
                    return self.breach(sh, now, out);
                }
                self.pump(sh, now, out);
            }
        }
    }

    /// The server answered out of turn: its later answers could no longer be matched
    /// to our commands, so the session ends rather than shift them.
    fn breach(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        tracing::warn!(server = %self.server(), "mail server answered out of turn");
        out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
        self.finish(sh, now, out, true);
    }

    /// The server spoke while nothing was asked of it.
    fn unexpected_answer(&mut self, sh: &mut Shared, now: Instant, out: &mut Vec<Action>) {
        if self.upstream_needed() {
            self.breach(sh, now, out);
        } else {
            // An idle connection's parting words (Dovecot's inactivity notice): let it go.
            out.push(Action::CloseUpstream);
            self.drop_link();
        }
    }

    /// Handles a piece of the answer to the step in flight; `true` once it is complete.
    fn answer(
        &mut self,
        piece: Piece,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let step = self.steps.front().expect("a step is in flight");
        let (line, kind, body) = match piece {
            Piece::Body(data, end) => {
                if let Step::CacheList { uidl } = step {
                    let uidl = *uidl;
                    self.numbering.collect(uidl, &data, end);
                } else if matches!(step, Step::Snapshot { .. } | Step::Verify) {
                    let uidl = matches!(step, Step::Snapshot { uidl: true } | Step::Verify);
                    let verify = matches!(step, Step::Verify);
                    self.collect(uidl, &data);
                    if end && verify {
                        return self.verified(sh, now, out);
                    }
                } else if matches!(step, Step::Capa) {
                    let room = MAX_CAPA_BODY.saturating_sub(self.capa_body.len());
                    self.capa_body
                        .extend_from_slice(&data[..room.min(data.len())]);
                    if end {
                        let caps = ServerCaps::parse(&std::mem::take(&mut self.capa_body));
                        sh.learn_caps(self.server(), caps, now);
                    }
                } else {
                    out.push(Action::ToClient(data));
                }
                return end;
            }
            Piece::Status(line, kind, body) => (line, kind, body),
        };
        let ok = kind == StatusKind::Ok;
        if kind == StatusKind::Continue {
            // The engine sends AUTH PLAIN with its initial response: no challenge is owed.
            self.breach(sh, now, out);
            return false;
        }
        match step {
            Step::Greeting { relay } => {
                let relay = *relay;
                sh.learn_greeting(self.server(), has_apop_timestamp(&line));
                if relay {
                    out.push(Action::ToClient(without_xclient_code(&line)));
                }
                if !ok {
                    if relay {
                        self.finish(sh, now, out, true);
                    } else {
                        self.in_flight = false;
                        self.upstream_lost(sh, now, out);
                    }
                    return false;
                }
                self.greeting_xclient = line
                    .windows(9)
                    .any(|w| w.eq_ignore_ascii_case(b"[XCLIENT]"));
            }
            Step::Xclient | Step::Capa => {}
            Step::ForwardUser(_) => {
                self.user_upstream = ok;
                if !ok {
                    self.user = None;
                }
                out.push(Action::ToClient(line));
            }
            Step::ReplayUser(_) if ok => self.user_upstream = true,
            Step::ReplayUser(mode) => {
                // The server refused the user: its -ERR answers the login.
                let mode = *mode;
                self.steps.remove(1);
                return self.login_answer(mode, line, false, sh, now, out);
            }
            Step::Login(mode) => return self.login_answer(*mode, line, ok, sh, now, out),
            Step::Relay { .. } => out.push(Action::ToClient(line)),
            Step::Stat => self.record_stat(&line, ok, sh, now),
            Step::Snapshot { uidl } if ok => {
                let uidl = *uidl;
                self.collect(uidl, &line);
            }
            Step::Snapshot { .. } => {
                // No listing: no snapshot.
                self.observed = None;
                if let Some(key) = &self.entry {
                    sh.table.clear_view(key, now);
                }
            }
            Step::Verify if ok => self.collect(true, &line),
            Step::Verify => {
                // No listing to check against: as good as a renumbering.
                self.observed = None;
                return self.verified(sh, now, out);
            }
            Step::Quit => {
                if ok && let (Some(key), Some(login)) = (self.entry.clone(), self.login_at) {
                    self.record_view(&key, login, sh, now);
                }
                if ok && !self.cache_deleted.is_empty() {
                    out.push(Action::CacheForget {
                        user: self.cache_user(),
                        uidls: self.cache_deleted.take(),
                    });
                }
                out.push(Action::ToClient(line));
                self.finish(sh, now, out, true);
                return false;
            }
            Step::CacheList { .. } if ok => {}
            // No listing: each message is asked about on its own.
            Step::CacheList { .. } => self.numbering = Numbering::PerMessage,
            Step::CacheId { n, dele } => {
                let (n, dele) = (n.clone(), *dele);
                let uidl = edge_cache::scan_value(&line, &n).filter(|_| ok);
                self.learn_uidl(&n, uidl, dele);
            }
            Step::CacheSize { n } => {
                let size = edge_cache::scan_value(&line, n).filter(|_| ok);
                self.lookup.size = size
                    .and_then(|size| std::str::from_utf8(size).ok())
                    .and_then(|size| size.parse().ok());
            }
            Step::Tunnel(_) | Step::LocalCapa | Step::FromCache { .. } => {
                unreachable!("never in flight to the server")
            }
        }
        !body
    }

    /// Opens the upstream connection and queues its set-up.
    pub(super) fn connect(&mut self, relay_greeting: bool, out: &mut Vec<Action>) {
        self.link = Link::Connecting;
        out.push(Action::ConnectUpstream);
        self.steps.extend([
            Step::Greeting {
                relay: relay_greeting,
            },
            Step::Capa,
            Step::Xclient,
        ]);
    }

    /// Queues a step that needs the server, connecting first if needed.
    pub(super) fn upstream(&mut self, step: Step, out: &mut Vec<Action>) {
        if self.link == Link::Down {
            self.connect(false, out);
        }
        self.steps.push_back(step);
    }
}
