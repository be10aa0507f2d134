//! POP3 framing, sans-IO (RFC 1939, RFC 2449, RFC 5034).
//!
//! Client side: [`CommandDecoder`] cuts the byte stream into command lines under the
//! RFC 2449 limit and [`Command`] parses one. Server side: [`ResponseDecoder`] finds
//! status lines, SASL continuations and the end of multi-line bodies without ever
//! holding a body in memory. Both decoders borrow complete lines straight from the
//! input when they can and buffer at most one partial line, never more than its limit.

use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Longest command line a client may send, CRLF included (RFC 2449 section 4).
pub const MAX_COMMAND_LINE: usize = 255;
/// Longest client line inside a SASL exchange: base64 credentials outgrow 255 octets.
pub const MAX_SASL_LINE: usize = 4096;
/// Longest status line a server may send, CRLF included (RFC 2449 section 4).
pub const MAX_RESPONSE_LINE: usize = 512;

/// A line grew past its limit before its line end arrived.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("line longer than {limit} octets")]
pub struct LineTooLong {
    /// The limit that was exceeded, line end included.
    pub limit: usize,
}

/// Why the server's byte stream could not be framed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ResponseError {
    /// A status line was longer than [`MAX_RESPONSE_LINE`].
    #[error(transparent)]
    TooLong(#[from] LineTooLong),
    /// A status line started with neither `+OK`, `-ERR` nor `+` (continuation).
    #[error("status line is neither +OK, -ERR nor a continuation")]
    BadStatus,
}

/// Cuts a byte stream into lines ending in LF (CRLF or bare LF), with a length limit.
///
/// Memory is bounded by the limit: a partial line is buffered only while it is shorter
/// than the limit, so a 100 KB line costs at most `limit` bytes before it is refused.
/// A partial client line may be half a password: it is zeroed when dropped and never
/// printed.
pub struct LineDecoder {
    buf: Zeroizing<Vec<u8>>,
    limit: usize,
    /// `buf` holds a line already handed out; drop it on the next call.
    handed_out: bool,
}

impl std::fmt::Debug for LineDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineDecoder")
            .field("buffered", &self.buf.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl LineDecoder {
    /// A decoder refusing lines longer than `limit` octets, line end included.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Zeroizing::new(Vec::new()),
            limit,
            handed_out: false,
        }
    }

    /// Changes the limit, e.g. for the longer lines of a SASL exchange.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Whether part of a line is waiting for its line end.
    pub fn has_partial(&self) -> bool {
        !self.handed_out && !self.buf.is_empty()
    }

    /// Drops any partial line, e.g. when the stream stops being lines (TLS).
    pub fn reset(&mut self) {
        self.buf.zeroize();
        self.handed_out = false;
    }

    /// Takes bytes from the front of `input` up to and including the next line end.
    ///
    /// Returns the whole line, line end included, once it is complete; `None` when
    /// `input` ran out first (the partial line is kept). On [`LineTooLong`] the partial
    /// line is dropped and what is left of `input` is not meaningful: the caller is
    /// expected to end the conversation.
    pub fn decode<'s, 'i: 's>(
        &'s mut self,
        input: &mut &'i [u8],
    ) -> Result<Option<&'s [u8]>, LineTooLong> {
        if self.handed_out {
            self.reset();
        }
        let too_long = LineTooLong { limit: self.limit };
        match input.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let (line, rest) = input.split_at(end + 1);
                if self.buf.len() + line.len() > self.limit {
                    self.reset();
                    *input = rest;
                    return Err(too_long);
                }
                *input = rest;
                if self.buf.is_empty() {
                    return Ok(Some(line));
                }
                self.buf.extend_from_slice(line);
                self.handed_out = true;
                Ok(Some(&self.buf))
            }
            None => {
                // A partial line must leave room for at least its LF.
                if self.buf.len() + input.len() >= self.limit {
                    let room = self.limit.saturating_sub(self.buf.len());
                    *input = &input[room.min(input.len())..];
                    self.reset();
                    return Err(too_long);
                }
                self.buf.extend_from_slice(input);
                *input = &[];
                Ok(None)
            }
        }
    }
}

/// Strips a trailing CRLF or LF.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Cuts the client's stream into command lines.
///
/// Commands are limited to [`MAX_COMMAND_LINE`]; while a SASL exchange is in progress
/// the caller switches to [`MAX_SASL_LINE`] with [`CommandDecoder::set_sasl`].
#[derive(Debug)]
pub struct CommandDecoder {
    line: LineDecoder,
}

impl Default for CommandDecoder {
    fn default() -> Self {
        Self {
            line: LineDecoder::new(MAX_COMMAND_LINE),
        }
    }
}

impl CommandDecoder {
    /// Selects the SASL line limit (`true`) or the command line limit (`false`).
    pub fn set_sasl(&mut self, sasl: bool) {
        self.line.set_limit(if sasl {
            MAX_SASL_LINE
        } else {
            MAX_COMMAND_LINE
        });
    }

    /// Drops any partial line (the stream stops being commands).
    pub fn reset(&mut self) {
        self.line.reset();
    }

    /// The next raw line, line end included; see [`LineDecoder::decode`].
    pub fn decode<'s, 'i: 's>(
        &'s mut self,
        input: &mut &'i [u8],
    ) -> Result<Option<&'s [u8]>, LineTooLong> {
        self.line.decode(input)
    }
}

/// The POP3 commands the interceptor tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `USER`
    User,
    /// `PASS`
    Pass,
    /// `APOP`
    Apop,
    /// `AUTH`
    Auth,
    /// `STLS`
    Stls,
    /// `CAPA`
    Capa,
    /// `QUIT`
    Quit,
    /// `STAT`
    Stat,
    /// `LIST`
    List,
    /// `RETR`
    Retr,
    /// `DELE`
    Dele,
    /// `NOOP`
    Noop,
    /// `RSET`
    Rset,
    /// `TOP`
    Top,
    /// `UIDL`
    Uidl,
    /// Anything else; its name is in [`Command::name`].
    Other,
}

const VERBS: [(&[u8], Verb); 15] = [
    (b"USER", Verb::User),
    (b"PASS", Verb::Pass),
    (b"APOP", Verb::Apop),
    (b"AUTH", Verb::Auth),
    (b"STLS", Verb::Stls),
    (b"CAPA", Verb::Capa),
    (b"QUIT", Verb::Quit),
    (b"STAT", Verb::Stat),
    (b"LIST", Verb::List),
    (b"RETR", Verb::Retr),
    (b"DELE", Verb::Dele),
    (b"NOOP", Verb::Noop),
    (b"RSET", Verb::Rset),
    (b"TOP", Verb::Top),
    (b"UIDL", Verb::Uidl),
];

/// One parsed command line, borrowing from the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command<'a> {
    /// The command, matched case-insensitively.
    pub verb: Verb,
    /// The command name as sent.
    pub name: &'a [u8],
    /// Everything after the first space, raw: PASS may carry spaces in its password.
    pub rest: &'a [u8],
}

impl<'a> Command<'a> {
    /// Parses a line, with or without its line end.
    pub fn parse(line: &'a [u8]) -> Self {
        let line = trim_eol(line);
        let (name, rest) = match line.iter().position(|&b| b == b' ') {
            Some(sp) => (&line[..sp], &line[sp + 1..]),
            None => (line, &line[line.len()..]),
        };
        let verb = VERBS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(Verb::Other, |&(_, v)| v);
        Self { verb, name, rest }
    }

    /// The space-separated arguments.
    pub fn args(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.rest.split(|&b| b == b' ').filter(|a| !a.is_empty())
    }

    /// Whether the command has any argument.
    pub fn has_args(&self) -> bool {
        self.args().next().is_some()
    }

    /// The shape of the server's answer to this command (RFC 1939, RFC 2449, RFC 5034).
    pub fn expect(&self) -> Expect {
        let multi = match self.verb {
            Verb::Retr | Verb::Top | Verb::Capa => true,
            // With an argument these answer for one message (or start a SASL exchange).
            Verb::List | Verb::Uidl | Verb::Auth => !self.has_args(),
            _ => false,
        };
        if multi {
            Expect::MultiOnOk
        } else {
            Expect::Single
        }
    }
}

/// What the caller expects the next response to look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// One status line (greetings, most commands, SASL steps).
    Single,
    /// A status line and, if it is `+OK`, a dot-terminated body.
    MultiOnOk,
}

/// The first word of a status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    /// `+OK`
    Ok,
    /// `-ERR`
    Err,
    /// `+ ...`: a SASL server challenge (RFC 5034).
    Continue,
}

impl StatusKind {
    /// Classifies a status line, or `None` if it is not one.
    pub fn of(line: &[u8]) -> Option<Self> {
        let starts = |p: &[u8]| line.len() >= p.len() && line[..p.len()].eq_ignore_ascii_case(p);
        if starts(b"+OK") {
            Some(Self::Ok)
        } else if starts(b"-ERR") {
            Some(Self::Err)
        } else if line.first() == Some(&b'+') {
            Some(Self::Continue)
        } else {
            None
        }
    }
}

/// One piece of the server's stream, as found by [`ResponseDecoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// A complete status line, line end included.
    Status {
        /// The raw line, line end included.
        line: &'a [u8],
        /// What the line says.
        kind: StatusKind,
        /// A multi-line body follows.
        body: bool,
    },
    /// Raw body bytes as they arrived, still dot-stuffed.
    Body {
        /// The bytes, to be passed on as they are.
        data: &'a [u8],
        /// They include the final `.` line: the response is complete.
        end: bool,
    },
}

/// Where the body scanner is relative to the terminating `.` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    LineStart,
    Mid,
    Dot,
    DotCr,
}

/// Finds the server's responses in its byte stream, streaming multi-line bodies.
///
/// Holds at most one partial status line ([`MAX_RESPONSE_LINE`]); body bytes are handed
/// out as slices of the input and never copied, so a 10 MB RETR costs nothing extra.
#[derive(Debug)]
pub struct ResponseDecoder {
    line: LineDecoder,
    body: Option<BodyState>,
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        Self {
            line: LineDecoder::new(MAX_RESPONSE_LINE),
            body: None,
        }
    }
}

impl ResponseDecoder {
    /// Whether the decoder is between responses (no partial status line, no open body).
    pub fn at_boundary(&self) -> bool {
        self.body.is_none() && !self.line.has_partial()
    }

    /// Takes the next piece from the front of `input`.
    ///
    /// `expect` describes the response this piece belongs to (the oldest unanswered
    /// command); it matters only when a status line completes. `-ERR` never has a body.
    /// Returns `None` when `input` is used up without completing a piece.
    pub fn decode<'s, 'i: 's>(
        &'s mut self,
        input: &mut &'i [u8],
        expect: Expect,
    ) -> Result<Option<Response<'s>>, ResponseError> {
        if let Some(state) = &mut self.body {
            if input.is_empty() {
                return Ok(None);
            }
            let end = scan_body(state, input);
            let (data, rest) = input.split_at(end.unwrap_or(input.len()));
            *input = rest;
            if end.is_some() {
                self.body = None;
            }
            return Ok(Some(Response::Body {
                data,
                end: end.is_some(),
            }));
        }
        let Some(line) = self.line.decode(input)? else {
            return Ok(None);
        };
        let kind = StatusKind::of(line).ok_or(ResponseError::BadStatus)?;
        let body = kind == StatusKind::Ok && expect == Expect::MultiOnOk;
        if body {
            self.body = Some(BodyState::LineStart);
        }
        Ok(Some(Response::Status { line, kind, body }))
    }
}

/// Advances over body bytes; returns the offset just past the terminating `.` line.
fn scan_body(state: &mut BodyState, data: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < data.len() {
        if *state == BodyState::Mid {
            match data[i..].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    i += nl + 1;
                    *state = BodyState::LineStart;
                    continue;
                }
                None => return None,
            }
        }
        *state = match (*state, data[i]) {
            (BodyState::Dot | BodyState::DotCr, b'\n') => return Some(i + 1),
            (BodyState::LineStart, b'.') => BodyState::Dot,
            (BodyState::Dot, b'\r') => BodyState::DotCr,
            (_, b'\n') => BodyState::LineStart,
            _ => BodyState::Mid,
        };
        i += 1;
    }
    None
}

/// Calls `f` with each line of `data`, line end included (the last may lack one).
fn for_each_line(data: &[u8], mut f: impl FnMut(&[u8])) {
    data.split_inclusive(|&b| b == b'\n').for_each(&mut f);
}

/// Appends `body` to `out` with every line starting with `.` given an extra `.`.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    for_each_line(body, |line| {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    });
}

/// Appends `wire` to `out` with the extra `.` of every dot-stuffed line removed.
pub fn dot_unstuff(wire: &[u8], out: &mut Vec<u8>) {
    for_each_line(wire, |line| {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    });
}

/// Appends a complete multi-line response: `status` (without line end), the body
/// dot-stuffed and ending in CRLF, and the terminating `.` line.
pub fn write_multiline(status: &[u8], body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(status);
    out.extend_from_slice(b"\r\n");
    dot_stuff(body, out);
    if !body.is_empty() && !body.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests;
