use super::*;
use proptest::prelude::*;

/// Feeds `chunks` to a command decoder and collects the lines (or the error).
fn command_lines(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, LineTooLong> {
    let mut dec = CommandDecoder::default();
    let mut lines = Vec::new();
    for chunk in chunks {
        let mut input = *chunk;
        while let Some(line) = dec.decode(&mut input)? {
            lines.push(line.to_vec());
        }
        assert!(input.is_empty());
    }
    Ok(lines)
}

/// Feeds `chunks` to a response decoder; returns status lines and the raw body bytes.
fn responses(chunks: &[&[u8]], expect: &[Expect]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut dec = ResponseDecoder::default();
    let (mut statuses, mut bodies) = (Vec::new(), Vec::new());
    let mut body = Vec::new();
    for chunk in chunks {
        let mut input = *chunk;
        loop {
            let e = expect
                .get(statuses.len())
                .copied()
                .unwrap_or(Expect::Single);
            let idx = statuses.len();
            match dec.decode(&mut input, e).unwrap() {
                None => break,
                Some(Response::Status { line, .. }) => statuses.push(line.to_vec()),
                Some(Response::Body { data, end }) => {
                    assert!(idx > 0);
                    body.extend_from_slice(data);
                    if end {
                        bodies.push(std::mem::take(&mut body));
                    }
                }
            }
        }
    }
    assert!(body.is_empty(), "unterminated body");
    (statuses, bodies)
}

#[test]
fn splits_crlf_and_bare_lf_lines() {
    let lines = command_lines(&[b"USER a\r\nST", b"AT\nQUIT\r", b"\n"]).unwrap();
    assert_eq!(lines, [&b"USER a\r\n"[..], b"STAT\n", b"QUIT\r\n"]);
}

#[test]
fn command_limit_is_255_octets_including_crlf() {
    let ok = [vec![b'A'; 253], b"\r\n".to_vec()].concat();
    assert_eq!(command_lines(&[&ok]).unwrap(), std::slice::from_ref(&ok));
    let long = [vec![b'A'; 254], b"\r\n".to_vec()].concat();
    assert_eq!(command_lines(&[&long]), Err(LineTooLong { limit: 255 }));
    // The same line split so that the CR lands exactly at the limit.
    assert_eq!(
        command_lines(&[&long[..200], &long[200..]]),
        Err(LineTooLong { limit: 255 })
    );
}

#[test]
fn huge_line_is_refused_without_buffering_it() {
    let mut dec = CommandDecoder::default();
    let chunk = vec![b'x'; 1000];
    let mut input = &chunk[..100];
    assert_eq!(dec.decode(&mut input), Ok(None));
    let mut input = &chunk[..];
    assert_eq!(dec.decode(&mut input), Err(LineTooLong { limit: 255 }));
    assert!(dec.line.buf.capacity() <= MAX_COMMAND_LINE);
    assert!(!dec.line.has_partial());
}

#[test]
fn sasl_mode_allows_longer_lines() {
    let line = [vec![b'Q'; 1000], b"\r\n".to_vec()].concat();
    let mut dec = CommandDecoder::default();
    dec.set_sasl(true);
    let mut input = &line[..];
    assert_eq!(dec.decode(&mut input), Ok(Some(&line[..])));
    dec.set_sasl(false);
    let mut input = &line[..];
    assert!(dec.decode(&mut input).is_err());
}

#[test]
fn parses_commands_case_insensitively() {
    let c = Command::parse(b"pass my secret\r\n");
    assert_eq!(
        (c.verb, c.name, c.rest),
        (Verb::Pass, &b"pass"[..], &b"my secret"[..])
    );
    let c = Command::parse(b"Top 1  10\r\n");
    assert_eq!(c.verb, Verb::Top);
    assert_eq!(c.args().collect::<Vec<_>>(), [&b"1"[..], b"10"]);
    let c = Command::parse(b"XCLIENT\n");
    assert_eq!(
        (c.verb, c.name, c.has_args()),
        (Verb::Other, &b"XCLIENT"[..], false)
    );
}

#[test]
fn knows_which_responses_are_multi_line() {
    let shape = |l: &[u8]| Command::parse(l).expect();
    for multi in [
        &b"RETR 1"[..],
        b"TOP 1 0",
        b"CAPA",
        b"LIST",
        b"UIDL",
        b"AUTH",
    ] {
        assert_eq!(shape(multi), Expect::MultiOnOk, "{multi:?}");
    }
    for single in [
        &b"LIST 1"[..],
        b"UIDL 1",
        b"AUTH PLAIN",
        b"STAT",
        b"QUIT",
        b"USER a",
    ] {
        assert_eq!(shape(single), Expect::Single, "{single:?}");
    }
}

#[test]
fn err_to_a_multi_line_command_has_no_body() {
    let wire = b"-ERR no such message\r\n+OK 1 2\r\n";
    let (statuses, bodies) = responses(&[wire], &[Expect::MultiOnOk, Expect::Single]);
    assert_eq!(statuses.len(), 2);
    assert!(bodies.is_empty());
}

#[test]
fn continuation_lines_are_classified() {
    assert_eq!(StatusKind::of(b"+ \r\n"), Some(StatusKind::Continue));
    assert_eq!(StatusKind::of(b"+OK\r\n"), Some(StatusKind::Ok));
    assert_eq!(StatusKind::of(b"-ERR x\r\n"), Some(StatusKind::Err));
    assert_eq!(StatusKind::of(b"* hello\r\n"), None);
    let mut dec = ResponseDecoder::default();
    let mut input = &b"hello\r\n"[..];
    assert_eq!(
        dec.decode(&mut input, Expect::Single),
        Err(ResponseError::BadStatus)
    );
}

#[test]
fn status_line_limit_is_512_octets() {
    let mut dec = ResponseDecoder::default();
    let line = [b"+OK ".to_vec(), vec![b'a'; 600]].concat();
    let mut input = &line[..];
    assert!(matches!(
        dec.decode(&mut input, Expect::Single),
        Err(ResponseError::TooLong(_))
    ));
}

#[test]
fn body_terminator_needs_a_line_of_its_own() {
    let wire = b"+OK\r\na.\r\n..\r\n.x\r\n\r\n.\r\n+OK next\r\n";
    let (statuses, bodies) = responses(&[wire], &[Expect::MultiOnOk]);
    assert_eq!(statuses, [&b"+OK\r\n"[..], b"+OK next\r\n"]);
    assert_eq!(bodies, [&b"a.\r\n..\r\n.x\r\n\r\n.\r\n"[..]]);
}

#[test]
fn empty_body_ends_at_once() {
    let (_, bodies) = responses(&[b"+OK 0 messages\r\n.\r\n"], &[Expect::MultiOnOk]);
    assert_eq!(bodies, [&b".\r\n"[..]]);
}

#[test]
fn writes_multiline_responses() {
    let mut out = Vec::new();
    write_multiline(b"+OK", b"USER\r\n.hidden", &mut out);
    assert_eq!(out, b"+OK\r\nUSER\r\n..hidden\r\n.\r\n");
    out.clear();
    write_multiline(b"+OK 0 messages", b"", &mut out);
    assert_eq!(out, b"+OK 0 messages\r\n.\r\n");
}

/// Cuts `data` at the given (sorted, deduplicated) points.
fn cut<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for &p in points.iter().chain(std::iter::once(&data.len())) {
        let p = p.min(data.len()).max(start);
        pieces.push(&data[start..p]);
        start = p;
    }
    pieces
}

fn points() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::btree_set(0usize..2000, 0..20).prop_map(|s| s.into_iter().collect())
}

/// Bytes rich in the characters that matter to framing.
fn framing_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'.'),
            Just(b'\r'),
            Just(b'\n'),
            Just(b'a'),
            any::<u8>()
        ],
        0..300,
    )
}

proptest! {
    #[test]
    fn dot_stuffing_round_trips(body in framing_bytes()) {
        let mut stuffed = Vec::new();
        dot_stuff(&body, &mut stuffed);
        let mut back = Vec::new();
        dot_unstuff(&stuffed, &mut back);
        prop_assert_eq!(back, body);
    }

    #[test]
    fn multi_line_framing_survives_any_split(body in framing_bytes(), cuts in points()) {
        let mut wire = Vec::new();
        write_multiline(b"+OK here", &body, &mut wire);
        let body_len = wire.len() - b"+OK here\r\n".len();
        wire.extend_from_slice(b"-ERR after\r\n");
        let (statuses, bodies) = responses(&cut(&wire, &cuts), &[Expect::MultiOnOk, Expect::Single]);
        prop_assert_eq!(statuses, vec![b"+OK here\r\n".to_vec(), b"-ERR after\r\n".to_vec()]);
        prop_assert_eq!(bodies.len(), 1);
        prop_assert_eq!(bodies[0].len(), body_len);
        let mut content = Vec::new();
        dot_unstuff(&bodies[0][..body_len - 3], &mut content);
        let mut expected = body.clone();
        if !body.is_empty() && !body.ends_with(b"\n") {
            expected.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(content, expected);
    }

    #[test]
    fn command_lines_survive_any_split(
        lines in prop::collection::vec("[ -~]{0,40}", 0..8),
        cuts in points(),
    ) {
        let wire: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
        let whole = command_lines(&[&wire]).unwrap();
        prop_assert_eq!(command_lines(&cut(&wire, &cuts)).unwrap(), whole.clone());
        prop_assert_eq!(whole.concat(), wire);
    }
}
