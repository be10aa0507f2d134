//! The transparent relay (issue 2): every byte passes unchanged in both directions.
//!
//! The relay still runs both streams through the decoders, to enforce the RFC 2449
//! command limit, to match pipelined responses to their commands, and to see when the
//! session stops being POP3: after `+OK` to STLS the stream is TLS, and after AUTH or
//! APOP it may carry a SASL security layer, so from then on it is an opaque tunnel.
//!
//! # Memory per connection
//!
//! Bounded whatever the peers send: one partial command line ([`MAX_COMMAND_LINE`]
//! octets), one partial status line (512 octets), at most [`MAX_PENDING`] unanswered
//! commands (two bytes each), and, only until the upstream connection is up, at most
//! [`MAX_EARLY`] octets of client input held for it. Body bytes are never held: each
//! chunk from the server is handed on as it arrives. About 17 KB in the worst case.

use std::{collections::VecDeque, time::Instant};

use hashbrown::HashMap;

use crate::{
    codec::{
        Command, CommandDecoder, Expect, MAX_COMMAND_LINE, Response, ResponseDecoder, StatusKind,
        Verb,
    },
    session::{Action, ConnId, ConnInfo, Event, Output, Pop3Engine},
};

/// Most commands a client may have sent without their answer having come back.
///
/// RFC 2449 pipelining needs a window, not an unbounded queue; a client past it is
/// not pipelining but flooding.
pub const MAX_PENDING: usize = 64;
/// Most client input held while the upstream connection is still being made.
pub const MAX_EARLY: usize = MAX_PENDING * MAX_COMMAND_LINE;

/// Sent to a client whose line is over the limit, before closing.
pub const LINE_TOO_LONG: &[u8] = b"-ERR line too long\r\n";
/// Sent to a client that sends too much without reading the answers, before closing.
pub const TOO_MANY_PENDING: &[u8] = b"-ERR too many pipelined commands\r\n";
/// Sent when the mail server cannot be reached or breaks, before closing (RFC 2449 code).
pub const SERVER_UNAVAILABLE: &[u8] = b"-ERR [SYS/TEMP] mail server unavailable\r\n";
/// Sent to a client that tries XCLIENT, before closing.
pub const XCLIENT_REFUSED: &[u8] = b"-ERR XCLIENT is not allowed\r\n";

/// Dovecot's greeting code telling a trusted peer (the router) it may send XCLIENT.
const XCLIENT_CODE: &[u8] = b"[XCLIENT] ";

/// How much of the session the relay still understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracking {
    /// Both directions are POP3.
    Pop3,
    /// An AUTH exchange is under way: the client's lines are SASL responses, not read as
    /// commands, passed on one per server challenge (`+ `) and held otherwise: after the
    /// server's final answer they may be commands again.
    Sasl,
    /// STLS was sent: the client's bytes are held (not parsed, not passed on) until the
    /// answer says whether they are TLS (`+OK`) or commands again (`-ERR`).
    AwaitStls,
    /// No longer POP3 (TLS, SASL layer, or a server that broke framing): bytes only.
    Tunnel,
}

/// What an unanswered command changes once it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    None,
    /// STLS: TLS on `+OK`.
    Stls,
    /// AUTH with a mechanism: a possible SASL security layer on `+OK`.
    Sasl,
}

/// An unanswered command (or the greeting), oldest first.
#[derive(Clone, Copy, Debug)]
struct Pending {
    expect: Expect,
    turn: Turn,
}

/// One relayed connection.
#[derive(Debug)]
struct Relay {
    /// The server's greeting has been passed on.
    greeted: bool,
    upstream_up: bool,
    closed: bool,
    tracking: Tracking,
    commands: CommandDecoder,
    responses: ResponseDecoder,
    pending: VecDeque<Pending>,
    /// Client bytes waiting for the upstream connection.
    early: Vec<u8>,
    /// Client bytes sent after STLS, or during AUTH beyond the line the server asked
    /// for, waiting for its answer (at most [`MAX_EARLY`]).
    held: Vec<u8>,
    /// The server's last SASL challenge is unanswered: one client line may go on.
    sasl_line_owed: bool,
}

/// The transparent relay of issue 2 as a [`Pop3Engine`]: no attenuation, no local answers.
#[derive(Debug, Default)]
pub struct RelayEngine {
    conns: HashMap<ConnId, Relay>,
}

impl RelayEngine {
    /// An engine with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of connections not yet released with [`Pop3Engine::close`].
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

impl Pop3Engine for RelayEngine {
    fn open(&mut self, conn: ConnId, _info: ConnInfo, _now: Instant, out: &mut Vec<Output>) {
        let relay = Relay {
            greeted: false,
            upstream_up: false,
            closed: false,
            tracking: Tracking::Pop3,
            commands: CommandDecoder::default(),
            responses: ResponseDecoder::default(),
            // The greeting is the first answer the server owes.
            pending: VecDeque::from([Pending {
                expect: Expect::Single,
                turn: Turn::None,
            }]),
            early: Vec::new(),
            held: Vec::new(),
            sasl_line_owed: false,
        };
        self.conns.insert(conn, relay);
        out.push(Output {
            conn,
            action: Action::ConnectUpstream,
        });
    }

    fn handle(&mut self, conn: ConnId, event: Event<'_>, _now: Instant, out: &mut Vec<Output>) {
        let Some(relay) = self.conns.get_mut(&conn).filter(|r| !r.closed) else {
            return;
        };
        let mut actions = Vec::new();
        match event {
            Event::ClientData(data) => relay.on_client_data(data, &mut actions),
            Event::UpstreamConnected => {
                relay.upstream_up = true;
                if !relay.early.is_empty() {
                    actions.push(Action::ToUpstream(std::mem::take(&mut relay.early)));
                }
            }
            Event::UpstreamData(data) => relay.on_server_data(data, &mut actions),
            Event::ClientClosed => {
                // Never a QUIT: an abnormal disconnect must not enter UPDATE (RFC 1939).
                relay.closed = true;
                actions.push(Action::CloseUpstream);
            }
            Event::UpstreamClosed => {
                relay.closed = true;
                actions.push(Action::CloseClient);
            }
            Event::UpstreamFailed => {
                relay.closed = true;
                // Only where a status line may start: not inside a body, not inside TLS.
                if relay.tracking != Tracking::Tunnel && relay.responses.at_boundary() {
                    actions.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
                }
                actions.push(Action::CloseClient);
            }
        }
        out.extend(actions.into_iter().map(|action| Output { conn, action }));
    }

    fn close(&mut self, conn: ConnId, _now: Instant) {
        self.conns.remove(&conn);
    }

    fn next_timeout(&self) -> Option<Instant> {
        // The mail server runs its own autologout timer; the relay has none.
        None
    }

    fn on_timeout(&mut self, _now: Instant, _out: &mut Vec<Output>) {}
}

impl Relay {
    /// Passes the client's complete lines on (raw), refusing what breaks the limits.
    ///
    /// Nothing the client sends before the server accepted STLS or AUTH goes on
    /// unread: an XCLIENT hidden behind a refused STLS or a failed AUTH would
    /// otherwise reach a server that trusts the router.
    fn on_client_data(&mut self, data: &[u8], actions: &mut Vec<Action>) {
        let mut input = data;
        let mut forward = Vec::new();
        let mut refusal = None;
        while self.tracking == Tracking::Pop3
            || (self.tracking == Tracking::Sasl && self.sasl_line_owed)
        {
            let line = match self.commands.decode(&mut input) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(_) => {
                    refusal = Some(LINE_TOO_LONG);
                    break;
                }
            };
            if self.tracking == Tracking::Sasl {
                forward.extend_from_slice(line);
                self.sasl_line_owed = false;
                continue;
            }
            if self.pending.len() >= MAX_PENDING {
                refusal = Some(TOO_MANY_PENDING);
                break;
            }
            let cmd = Command::parse(line);
            // The server trusts the router's address: XCLIENT from a subscriber would let
            // it claim any address there. No real client sends it.
            if cmd.name.eq_ignore_ascii_case(b"XCLIENT") {
                refusal = Some(XCLIENT_REFUSED);
                break;
            }
            forward.extend_from_slice(line);
            let turn = match cmd.verb {
                Verb::Stls => Turn::Stls,
                Verb::Auth if cmd.has_args() => Turn::Sasl,
                _ => Turn::None,
            };
            self.pending.push_back(Pending {
                expect: cmd.expect(),
                turn,
            });
            match turn {
                Turn::Stls => self.tracking = Tracking::AwaitStls,
                Turn::Sasl => {
                    self.tracking = Tracking::Sasl;
                    self.commands.set_sasl(true);
                }
                Turn::None => {}
            }
        }
        match self.tracking {
            _ if refusal.is_some() => {}
            Tracking::AwaitStls | Tracking::Sasl if self.held.len() + input.len() > MAX_EARLY => {
                refusal = Some(TOO_MANY_PENDING);
            }
            Tracking::AwaitStls | Tracking::Sasl => self.held.extend_from_slice(input),
            Tracking::Tunnel => forward.extend_from_slice(input),
            Tracking::Pop3 => {}
        }
        if !forward.is_empty() {
            if self.upstream_up {
                actions.push(Action::ToUpstream(forward));
            } else if self.early.len() + forward.len() <= MAX_EARLY {
                self.early.extend_from_slice(&forward);
            } else {
                refusal = Some(TOO_MANY_PENDING);
            }
        }
        if let Some(message) = refusal {
            self.closed = true;
            // Only where a status line may start: not inside a response the client is
            // still receiving (the greeting is passed on only once complete).
            if !self.greeted || self.responses.at_boundary() {
                actions.push(Action::ToClient(message.to_vec()));
            }
            actions.extend([Action::CloseClient, Action::CloseUpstream]);
        }
    }

    /// Passes the server's bytes on unchanged and follows its responses.
    ///
    /// The one exception is the greeting: a server that trusts the router (Dovecot's
    /// `login_trusted_networks`) greets it with `[XCLIENT]`, which it would not say to
    /// the subscriber directly. That code is taken out, so the client sees the bytes it
    /// would see without us.
    fn on_server_data(&mut self, data: &[u8], actions: &mut Vec<Action>) {
        let mut input = data;
        if !self.greeted {
            match self.responses.decode(&mut input, Expect::Single) {
                Ok(None) => return,
                Ok(Some(Response::Status { line, .. })) => {
                    actions.push(Action::ToClient(without_xclient_code(line)));
                }
                Ok(Some(Response::Body { .. })) | Err(_) => {
                    self.tracking = Tracking::Tunnel;
                    actions.push(Action::ToClient(data.to_vec()));
                    return;
                }
            }
            self.greeted = true;
            self.pending.pop_front();
            if input.is_empty() {
                return;
            }
        }
        actions.push(Action::ToClient(input.to_vec()));
        while self.tracking != Tracking::Tunnel {
            let expect = self.pending.front().map_or(Expect::Single, |p| p.expect);
            let (kind, done) = match self.responses.decode(&mut input, expect) {
                Ok(None) => break,
                Ok(Some(Response::Status { kind, body, .. })) => (Some(kind), !body),
                Ok(Some(Response::Body { end, .. })) => (None, end),
                Err(err) => {
                    // The server is trusted; a framing break costs tracking, not service.
                    tracing::warn!(%err, "mail server broke POP3 framing; tunnelling the rest");
                    self.tracking = Tracking::Tunnel;
                    break;
                }
            };
            // A SASL challenge (`+ `) leaves the AUTH unanswered and asks for one line.
            if kind == Some(StatusKind::Continue) && self.tracking == Tracking::Sasl {
                self.sasl_line_owed = true;
                let held = std::mem::take(&mut self.held);
                self.on_client_data(&held, actions);
            }
            if !done || kind == Some(StatusKind::Continue) {
                continue;
            }
            let accepted = kind == Some(StatusKind::Ok);
            match self.pending.pop_front().map(|p| p.turn) {
                Some(Turn::Stls) if accepted => {
                    self.tracking = Tracking::Tunnel;
                    let tls = std::mem::take(&mut self.held);
                    if !tls.is_empty() {
                        actions.push(Action::ToUpstream(tls));
                    }
                }
                Some(Turn::Stls) => {
                    self.tracking = Tracking::Pop3;
                    self.commands.reset();
                    let held = std::mem::take(&mut self.held);
                    self.on_client_data(&held, actions);
                }
                Some(Turn::Sasl) => {
                    self.commands.set_sasl(false);
                    self.sasl_line_owed = false;
                    let held = std::mem::take(&mut self.held);
                    if accepted {
                        self.tracking = Tracking::Tunnel;
                        if !held.is_empty() {
                            actions.push(Action::ToUpstream(held));
                        }
                    } else {
                        self.tracking = Tracking::Pop3;
                        self.on_client_data(&held, actions);
                    }
                }
                Some(Turn::None) | None => {}
            }
        }
    }
}

/// The greeting line with Dovecot's `[XCLIENT] ` code removed, if it has one.
fn without_xclient_code(line: &[u8]) -> Vec<u8> {
    match line
        .windows(XCLIENT_CODE.len())
        .position(|w| w == XCLIENT_CODE)
    {
        Some(at) => [&line[..at], &line[at + XCLIENT_CODE.len()..]].concat(),
        None => line.to_vec(),
    }
}

#[cfg(test)]
mod tests;
