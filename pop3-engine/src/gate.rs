//! The command gate: everything a subscriber sends on its way to the mail server.
//!
//! A mail server that trusts the router (Dovecot's `login_trusted_networks`, so that the
//! interceptor can name the subscriber with `XCLIENT`) would believe anything the
//! subscriber slips past the gate in the router's name. So every client byte is read as
//! a POP3 command line or a SASL response line before it goes on, on every path: the
//! transparent relay and the attenuation engine's pass-through sessions share this one
//! [`Gate`], and the attenuation engine checks its own commands with [`check_command`].
//!
//! - `XCLIENT` (any case, any spacing) is refused in every state, inside SASL exchanges
//!   too: no real client sends it.
//! - A command line with NUL or a CR before its line end, and a SASL PLAIN response
//!   whose decoded fields hold CR, LF or NUL, are refused: they exist only to break the
//!   server's parsing.
//! - Only once the server accepted STLS does the session become an opaque tunnel (TLS
//!   with the server, which the gate cannot and must not read). SASL security layers are
//!   not supported: after a successful AUTH the stream is still read as POP3.
//! - The server's replies are matched to the commands strictly: a reply nobody asked for
//!   ends the session with `-ERR [SYS/TEMP]` rather than shifting every later answer.
//!
//! A refused line is answered `-ERR` and both sides are closed: with commands already
//! pipelined to the server, a local answer could not be put in its place in the reply
//! stream.
//!
//! # Memory per connection
//!
//! One partial command line ([`MAX_SASL_LINE`] octets at most, inside SASL), one partial
//! status line (512 octets), at most [`MAX_PENDING`] unanswered commands (two bytes
//! each), and at most [`MAX_EARLY`] octets of client input held until the upstream
//! connection is up or STLS is answered. Body bytes are never held.

use std::collections::VecDeque;

use crate::{
    codec::{
        Command, CommandDecoder, Expect, MAX_COMMAND_LINE, Response, ResponseDecoder, StatusKind,
        Verb, trim_eol,
    },
    sasl::{PlainError, parse_plain},
    secret::Secret,
    session::Action,
};

#[cfg(doc)]
use crate::codec::MAX_SASL_LINE;

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
/// Sent to a client that tries XCLIENT.
pub const XCLIENT_REFUSED: &[u8] = b"-ERR XCLIENT is not allowed\r\n";
/// Sent to a client whose line or SASL data holds NUL, CR or LF where none belongs.
pub const BAD_CHARACTERS: &[u8] = b"-ERR invalid characters in command\r\n";
/// Sent to a client whose SASL PLAIN data does not decode: it cannot be checked.
pub const BAD_SASL: &[u8] = b"-ERR [AUTH] invalid SASL PLAIN data\r\n";

/// Dovecot's greeting code telling a trusted peer (the router) it may send XCLIENT.
const XCLIENT_CODE: &[u8] = b"[XCLIENT] ";

/// Whether a client command line may go to the server; the `-ERR` line if not.
pub fn check_command(line: &[u8]) -> Result<(), &'static [u8]> {
    let text = trim_eol(line);
    if text.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(BAD_CHARACTERS);
    }
    if is_xclient(text) {
        return Err(XCLIENT_REFUSED);
    }
    Ok(())
}

/// Whether a client line inside a SASL exchange may go to the server. With `plain`,
/// the line is a PLAIN response (or `*`, the cancel, or `=`, empty) whose fields are
/// checked too: what does not decode strictly cannot be checked, so it does not go on
/// (a lenient server decoder might find line ends in it).
pub fn check_sasl_line(line: &[u8], plain: bool) -> Result<(), &'static [u8]> {
    check_command(line)?;
    let text = trim_eol(line);
    if !plain || text == b"*" || text == b"=" {
        return Ok(());
    }
    match parse_plain(text) {
        Ok(_) | Err(PlainError::ActsAsOther) => Ok(()),
        Err(PlainError::ControlCharacter) => Err(BAD_CHARACTERS),
        Err(PlainError::Malformed) => Err(BAD_SASL),
    }
}

/// `XCLIENT` as the first word, whatever the case and the spacing around it.
fn is_xclient(text: &[u8]) -> bool {
    let word = text
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    word.eq_ignore_ascii_case(b"XCLIENT")
}

/// The greeting line with Dovecot's `[XCLIENT] ` code removed, if it has one: the
/// subscriber sees the bytes it would see without the router in between.
pub fn without_xclient_code(line: &[u8]) -> Vec<u8> {
    match line
        .windows(XCLIENT_CODE.len())
        .position(|w| w == XCLIENT_CODE)
    {
        Some(at) => [&line[..at], &line[at + XCLIENT_CODE.len()..]].concat(),
        None => line.to_vec(),
    }
}

/// How much of the session the gate still reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracking {
    /// Both directions are POP3.
    Pop3,
    /// An AUTH exchange is under way: the client's lines are SASL responses, checked
    /// and passed on one per server challenge (`+ `); lines beyond that are held, since
    /// after the server's final answer they are commands again.
    Sasl {
        /// The mechanism is PLAIN: its responses are decoded and checked.
        plain: bool,
    },
    /// STLS was sent: the client's bytes are held (not parsed, not passed on) until the
    /// answer says whether they are TLS (`+OK`) or commands again (`-ERR`).
    AwaitStls,
    /// TLS with the server: bytes only.
    Tunnel,
}

/// What an unanswered command changes once it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    None,
    /// STLS: TLS on `+OK`.
    Stls,
    /// AUTH with a mechanism: SASL responses until the final answer.
    Sasl,
    /// PASS or APOP: a login on `+OK`.
    Login,
}

/// An unanswered command (or the greeting), oldest first.
#[derive(Clone, Copy, Debug)]
struct Pending {
    expect: Expect,
    turn: Turn,
}

/// One client connection relayed through the gate, both directions.
#[derive(Debug)]
pub struct Gate {
    /// The server's greeting has been passed on (or was handled before the gate).
    greeted: bool,
    upstream_up: bool,
    closed: bool,
    /// The client half-closed: the replies it is owed go out, then both sides close.
    client_eof: bool,
    tracking: Tracking,
    commands: CommandDecoder,
    responses: ResponseDecoder,
    pending: VecDeque<Pending>,
    /// Client bytes waiting for the upstream connection.
    early: Secret,
    /// Client bytes sent after STLS, or during AUTH beyond the line a challenge asked
    /// for, waiting for the server's answer.
    held: Secret,
    /// The server's last SASL challenge is unanswered: one client line may go on.
    sasl_line_owed: bool,
    /// The user the session's last USER, APOP or AUTH PLAIN named.
    named: Option<Vec<u8>>,
    /// The user whose login the server accepted, until [`Gate::take_login`].
    logged_in: Option<Vec<u8>>,
}

impl Gate {
    /// A gate for a new connection: the upstream connection is being made and its
    /// greeting is the first answer owed.
    pub fn before_greeting() -> Self {
        Self {
            greeted: false,
            upstream_up: false,
            closed: false,
            client_eof: false,
            tracking: Tracking::Pop3,
            commands: CommandDecoder::default(),
            responses: ResponseDecoder::default(),
            pending: VecDeque::from([Pending {
                expect: Expect::Single,
                turn: Turn::None,
            }]),
            early: Secret::default(),
            held: Secret::default(),
            sasl_line_owed: false,
            named: None,
            logged_in: None,
        }
    }

    /// A gate taking over a connected, greeted session with no answer owed (the
    /// attenuation engine's pass-through).
    pub fn after_greeting() -> Self {
        Self {
            greeted: true,
            upstream_up: true,
            pending: VecDeque::new(),
            ..Self::before_greeting()
        }
    }

    /// The user whose login the server accepted since the last call, if the session
    /// named one: the attenuation engine must stop vouching for an older password.
    pub fn take_login(&mut self) -> Option<Vec<u8>> {
        self.logged_in.take()
    }

    /// Whether the gate closed both sides.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The upstream connection is up: what the client sent meanwhile goes on.
    pub fn upstream_connected(&mut self, out: &mut Vec<Action>) {
        self.upstream_up = true;
        if !self.early.is_empty() {
            out.push(Action::ToUpstream(self.early.take().expose().to_vec()));
        }
    }

    /// The upstream connection failed or broke.
    pub fn upstream_failed(&mut self, out: &mut Vec<Action>) {
        // Only where a status line may start: not inside a body, not inside TLS.
        if self.tracking != Tracking::Tunnel && self.responses.at_boundary() {
            out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
        }
        self.close(out);
    }

    /// The client closed its side. A half-closed client still gets the answers to what
    /// it sent (a `QUIT` among them reaches the server); then both sides close.
    pub fn client_closed(&mut self, out: &mut Vec<Action>) {
        self.client_eof = true;
        if self.pending.is_empty() || matches!(self.tracking, Tracking::Tunnel) {
            self.close(out);
        }
    }

    /// Ends the session, closing both sides; never a QUIT (an abnormal end must not
    /// enter UPDATE, RFC 1939).
    pub fn close(&mut self, out: &mut Vec<Action>) {
        if !std::mem::replace(&mut self.closed, true) {
            out.extend([Action::CloseClient, Action::CloseUpstream]);
        }
    }

    fn refuse(&mut self, message: &[u8], out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        // Only where a status line may start: never inside a body the client is still
        // receiving (found by the engine fuzz target).
        if !self.greeted || self.responses.at_boundary() {
            out.push(Action::ToClient(message.to_vec()));
        }
        self.close(out);
    }

    /// Reads the client's complete lines and passes the accepted ones on, raw.
    pub fn client_data(&mut self, data: &[u8], out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        let mut input = data;
        let mut forward = Vec::new();
        let mut refusal = None;
        while self.tracking == Tracking::Pop3
            || (matches!(self.tracking, Tracking::Sasl { .. }) && self.sasl_line_owed)
        {
            let line = match self.commands.decode(&mut input) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(_) => {
                    refusal = Some(LINE_TOO_LONG);
                    break;
                }
            };
            if let Tracking::Sasl { plain } = self.tracking {
                self.sasl_line_owed = false;
                if plain && let Ok(p) = parse_plain(trim_eol(line)) {
                    self.named = Some(p.user);
                }
                match check_sasl_line(line, plain) {
                    Ok(()) => forward.extend_from_slice(line),
                    Err(message) => refusal = Some(message),
                }
                if refusal.is_some() {
                    break;
                }
                continue;
            }
            if self.pending.len() >= MAX_PENDING {
                refusal = Some(TOO_MANY_PENDING);
                break;
            }
            if let Err(message) = check_command(line) {
                refusal = Some(message);
                break;
            }
            let cmd = Command::parse(line);
            let turn = match cmd.verb {
                Verb::Stls => Turn::Stls,
                Verb::Auth if cmd.has_args() => Turn::Sasl,
                Verb::Pass | Verb::Apop => Turn::Login,
                _ => Turn::None,
            };
            match cmd.verb {
                Verb::User => self.named = Some(cmd.rest.to_vec()),
                Verb::Apop => self.named = cmd.args().next().map(<[u8]>::to_vec),
                // Another mechanism names its user where the gate cannot read it.
                Verb::Auth => self.named = None,
                _ => {}
            }
            let (plain, initial) = {
                let mut args = cmd.args();
                let plain = args
                    .next()
                    .is_some_and(|m| m.eq_ignore_ascii_case(b"PLAIN"));
                (plain, args.next())
            };
            if turn == Turn::Sasl
                && let Some(initial) = initial
            {
                if let Err(message) = check_sasl_line(initial, plain) {
                    refusal = Some(message);
                    break;
                }
                if plain && let Ok(p) = parse_plain(initial) {
                    self.named = Some(p.user);
                }
            }
            forward.extend_from_slice(line);
            self.pending.push_back(Pending {
                expect: cmd.expect(),
                turn,
            });
            match turn {
                Turn::Stls => self.tracking = Tracking::AwaitStls,
                Turn::Sasl => {
                    self.tracking = Tracking::Sasl { plain };
                    self.commands.set_sasl(true);
                }
                Turn::None | Turn::Login => {}
            }
        }
        match self.tracking {
            _ if refusal.is_some() => {}
            Tracking::AwaitStls | Tracking::Sasl { .. }
                if self.held.len() + input.len() > MAX_EARLY =>
            {
                refusal = Some(TOO_MANY_PENDING);
            }
            Tracking::AwaitStls | Tracking::Sasl { .. } => self.held.extend(input),
            Tracking::Tunnel => forward.extend_from_slice(input),
            Tracking::Pop3 => {}
        }
        if let Some(message) = refusal {
            return self.refuse(message, out);
        }
        if forward.is_empty() {
            return;
        }
        if self.upstream_up {
            out.push(Action::ToUpstream(forward));
        } else if self.early.len() + forward.len() <= MAX_EARLY {
            self.early.extend(&forward);
        } else {
            self.refuse(TOO_MANY_PENDING, out);
        }
    }

    /// Passes the server's bytes on unchanged, following its answers.
    ///
    /// The one change is the greeting's `[XCLIENT]` code (see [`without_xclient_code`]).
    pub fn server_data(&mut self, data: &[u8], out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        let mut input = data;
        let mut to_client = Vec::new();
        while self.tracking != Tracking::Tunnel && !input.is_empty() {
            let expect = self.pending.front().map_or(Expect::Single, |p| p.expect);
            let (kind, done) = match self.responses.decode(&mut input, expect) {
                Ok(None) => break,
                Ok(Some(Response::Status { line, kind, body })) => {
                    if self.pending.is_empty() {
                        tracing::warn!("mail server answered a command nobody sent");
                        return self.fail(to_client, out);
                    }
                    if self.greeted {
                        to_client.extend_from_slice(line);
                    } else {
                        to_client.extend(without_xclient_code(line));
                        self.greeted = true;
                    }
                    (Some(kind), !body)
                }
                Ok(Some(Response::Body { data, end })) => {
                    to_client.extend_from_slice(data);
                    (None, end)
                }
                Err(err) => {
                    tracing::warn!(%err, "mail server broke POP3 framing");
                    return self.fail(to_client, out);
                }
            };
            // A SASL challenge (`+ `) leaves the AUTH unanswered and asks for one line.
            if kind == Some(StatusKind::Continue) && matches!(self.tracking, Tracking::Sasl { .. })
            {
                self.sasl_line_owed = true;
                self.flush(&mut to_client, out);
                let held = self.held.take();
                self.client_data(held.expose(), out);
            }
            if !done || kind == Some(StatusKind::Continue) {
                continue;
            }
            let accepted = kind == Some(StatusKind::Ok);
            let turn = self.pending.pop_front().map(|p| p.turn);
            if accepted && matches!(turn, Some(Turn::Sasl | Turn::Login)) {
                self.logged_in = self.named.clone();
            }
            match turn {
                Some(Turn::Stls) if accepted => {
                    self.tracking = Tracking::Tunnel;
                    self.flush(&mut to_client, out);
                    let tls = self.held.take();
                    if !tls.is_empty() {
                        out.push(Action::ToUpstream(tls.expose().to_vec()));
                    }
                }
                Some(Turn::Stls) => {
                    self.tracking = Tracking::Pop3;
                    self.commands.reset();
                    let held = self.held.take();
                    self.flush(&mut to_client, out);
                    self.client_data(held.expose(), out);
                }
                Some(Turn::Sasl) => {
                    // Accepted or not, what follows is POP3 again: held lines are
                    // read as commands.
                    self.commands.set_sasl(false);
                    self.sasl_line_owed = false;
                    self.tracking = Tracking::Pop3;
                    self.flush(&mut to_client, out);
                    let held = self.held.take();
                    self.client_data(held.expose(), out);
                }
                Some(Turn::None | Turn::Login) | None => {}
            }
        }
        to_client.extend_from_slice(input);
        self.flush(&mut to_client, out);
        if self.client_eof && self.pending.is_empty() {
            self.close(out);
        }
    }

    fn flush(&self, to_client: &mut Vec<u8>, out: &mut Vec<Action>) {
        if !to_client.is_empty() {
            out.push(Action::ToClient(std::mem::take(to_client)));
        }
    }

    /// The server broke the protocol: what it said properly goes on, then `[SYS/TEMP]`.
    fn fail(&mut self, mut to_client: Vec<u8>, out: &mut Vec<Action>) {
        self.flush(&mut to_client, out);
        self.refuse(SERVER_UNAVAILABLE, out);
    }
}

#[cfg(test)]
mod tests;
