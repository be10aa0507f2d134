//! POP3 framing on arbitrary bytes cut into arbitrary chunks.
//!
//! - Command lines: whatever the chunking, the decoder hands out exactly the lines of a
//!   plain reference split, byte for byte, refuses exactly the lines over the limit in
//!   force (255, or 4096 in SASL), and nothing after the first refusal. Every line parses
//!   into a name and arguments that rebuild it.
//! - Responses: the same pieces (status lines, body bytes) whatever the chunking; every
//!   byte taken comes out again; status lines are under 512 octets and classified as
//!   `StatusKind::of` says; a body ends exactly at its first `.` line.
//! - Dot-stuffing round-trips, and a multi-line response written with `write_multiline`
//!   decodes back to its body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop3_engine::codec::{
    Command, CommandDecoder, Expect, MAX_COMMAND_LINE, MAX_RESPONSE_LINE, MAX_SASL_LINE, Response,
    ResponseDecoder, ResponseError, StatusKind, dot_stuff, dot_unstuff, trim_eol, write_multiline,
};

struct Input {
    bytes: Vec<u8>,
    /// Chunk lengths, used in turn (0 counts as 1).
    chunks: Vec<u8>,
    /// Per line or response, in turn: the SASL limit / a multi-line answer expected.
    modes: Vec<bool>,
}

impl Input {
    /// Four bytes of chunk lengths, one of mode bits, then the stream: seeds stay
    /// readable (`fuzz/corpus/codec`).
    fn new(data: &[u8]) -> Self {
        let (head, bytes) = data.split_at(data.len().min(5));
        let mut head = head.to_vec();
        head.resize(5, 0);
        Self {
            bytes: bytes.to_vec(),
            chunks: head[..4].to_vec(),
            modes: (0..8).map(|i| head[4] >> i & 1 == 1).collect(),
        }
    }

    fn mode(&self, i: usize) -> bool {
        !self.modes.is_empty() && self.modes[i % self.modes.len()]
    }

    /// `bytes` whole, then cut as `chunks` says.
    fn cuttings(&self) -> [Vec<&[u8]>; 2] {
        let mut cut = Vec::new();
        let mut rest = &self.bytes[..];
        for i in 0.. {
            if rest.is_empty() {
                break;
            }
            let n = self
                .chunks
                .get(i % self.chunks.len().max(1))
                .map_or(1, |&n| n);
            let (chunk, tail) = rest.split_at(usize::from(n).clamp(1, rest.len()));
            cut.push(chunk);
            rest = tail;
        }
        [vec![&self.bytes[..]], cut]
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Line(Vec<u8>),
    TooLong,
}

/// The reference: split at LF, each line judged against the limit of its mode.
fn reference_lines(input: &Input) -> Vec<Line> {
    let mut out = Vec::new();
    for (i, line) in input.bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let limit = if input.mode(i) {
            MAX_SASL_LINE
        } else {
            MAX_COMMAND_LINE
        };
        let complete = line.ends_with(b"\n");
        if line.len() > limit || (!complete && line.len() >= limit) {
            out.push(Line::TooLong);
            break;
        }
        if complete {
            out.push(Line::Line(line.to_vec()));
        }
    }
    out
}

fn decode_commands(input: &Input, chunks: &[&[u8]]) -> Vec<Line> {
    let mut decoder = CommandDecoder::default();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest = *chunk;
        loop {
            // The limit follows the line count, so a line keeps one limit in any chunking.
            decoder.set_sasl(input.mode(out.len()));
            match decoder.decode(&mut rest) {
                Ok(Some(line)) => out.push(Line::Line(line.to_vec())),
                Ok(None) => break,
                Err(e) => {
                    assert!(e.limit == MAX_COMMAND_LINE || e.limit == MAX_SASL_LINE);
                    out.push(Line::TooLong);
                    return out;
                }
            }
        }
    }
    out
}

fn check_command(line: &[u8]) {
    let cmd = Command::parse(line);
    let text = trim_eol(line);
    let rebuilt = if cmd.name.len() == text.len() {
        cmd.name.to_vec()
    } else {
        [cmd.name, b" ", cmd.rest].concat()
    };
    assert_eq!(rebuilt, text, "name and rest rebuild the line");
    assert!(!cmd.name.contains(&b' '));
    for arg in cmd.args() {
        assert!(!arg.is_empty() && !arg.contains(&b' '));
    }
    assert_eq!(cmd.has_args(), cmd.args().next().is_some());
}

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Status(Vec<u8>, StatusKind, bool),
    /// Body bytes of one response, joined; `true` once its end came.
    Body(Vec<u8>, bool),
    Error(ResponseError),
}

fn decode_responses(input: &Input, chunks: &[&[u8]]) -> Vec<Piece> {
    let mut decoder = ResponseDecoder::default();
    let mut out: Vec<Piece> = Vec::new();
    let mut responses = 0;
    let mut taken = Vec::new();
    'input: for chunk in chunks {
        let mut rest = *chunk;
        loop {
            let expect = if input.mode(responses) {
                Expect::MultiOnOk
            } else {
                Expect::Single
            };
            let before = rest.len();
            let piece = decoder.decode(&mut rest, expect);
            match piece {
                Ok(None) => break,
                Ok(Some(Response::Status { line, kind, body })) => {
                    assert!(line.len() <= MAX_RESPONSE_LINE && line.ends_with(b"\n"));
                    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                    assert_eq!(StatusKind::of(line), Some(kind));
                    assert_eq!(body, kind == StatusKind::Ok && expect == Expect::MultiOnOk);
                    taken.extend_from_slice(line);
                    if !body {
                        responses += 1;
                    }
                    out.push(Piece::Status(line.to_vec(), kind, body));
                }
                Ok(Some(Response::Body { data, end })) => {
                    assert!(!data.is_empty(), "an empty body piece");
                    assert_eq!(
                        data.len(),
                        before - rest.len(),
                        "body bytes are the input's"
                    );
                    taken.extend_from_slice(data);
                    if end {
                        responses += 1;
                    }
                    match out.last_mut() {
                        Some(Piece::Body(bytes, done @ false)) => {
                            bytes.extend_from_slice(data);
                            *done = end;
                        }
                        _ => out.push(Piece::Body(data.to_vec(), end)),
                    }
                }
                Err(e) => {
                    out.push(Piece::Error(e));
                    break 'input;
                }
            }
        }
    }
    // Nothing is lost or made up: what came out is the input's prefix.
    assert_eq!(taken, input.bytes[..taken.len()]);
    out
}

/// A body ends at its first line that is a lone `.`, and only there.
fn check_body(body: &[u8], end: bool) {
    let lines: Vec<&[u8]> = body.split_inclusive(|&b| b == b'\n').collect();
    let terminator = |l: &[u8]| l == b".\n" || l == b".\r\n";
    let first_end = lines.iter().position(|l| terminator(l));
    if end {
        assert_eq!(
            first_end,
            Some(lines.len() - 1),
            "body end at its first . line"
        );
    } else {
        assert_eq!(first_end, None, "a . line that did not end the body");
    }
}

fn check_multiline_round_trip(body: &[u8]) {
    let mut stuffed = Vec::new();
    dot_stuff(body, &mut stuffed);
    let mut unstuffed = Vec::new();
    dot_unstuff(&stuffed, &mut unstuffed);
    assert_eq!(unstuffed, body, "dot-stuffing round-trips");

    let mut wire = Vec::new();
    write_multiline(b"+OK here", body, &mut wire);
    let mut rest = &wire[..];
    let mut decoder = ResponseDecoder::default();
    match decoder.decode(&mut rest, Expect::MultiOnOk) {
        Ok(Some(Response::Status {
            line, body: true, ..
        })) => assert_eq!(line, b"+OK here\r\n"),
        other => panic!("status of a written multi-line response: {other:?}"),
    }
    let Ok(Some(Response::Body { data, end: true })) = decoder.decode(&mut rest, Expect::Single)
    else {
        panic!("the body of a written multi-line response did not end");
    };
    assert!(rest.is_empty(), "bytes after the end of a written response");
    let content = data.strip_suffix(b".\r\n").expect("terminator");
    let mut decoded = Vec::new();
    dot_unstuff(content, &mut decoded);
    let mut expected = body.to_vec();
    if !body.is_empty() && !body.ends_with(b"\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(decoded, expected, "a written body decodes back");
}

fuzz_target!(|data: &[u8]| {
    let input = Input::new(data);
    let reference = reference_lines(&input);
    for chunks in input.cuttings() {
        let lines = decode_commands(&input, &chunks);
        assert_eq!(
            lines, reference,
            "command lines differ from the reference split"
        );
    }
    for line in &reference {
        if let Line::Line(line) = line {
            check_command(line);
        }
    }

    let [whole, cut] = input.cuttings();
    let pieces = decode_responses(&input, &whole);
    let cut_pieces = decode_responses(&input, &cut);
    assert_eq!(pieces, cut_pieces, "responses depend on the chunking");
    for piece in &pieces {
        if let Piece::Body(body, end) = piece {
            check_body(body, *end);
        }
    }

    check_multiline_round_trip(&input.bytes);
});
