//! The gate's suite, driven through the transparent relay (one gate per connection).

use super::*;
use crate::{
    relay::RelayEngine,
    session::{Event, Pop3Engine},
    testing::{Harness, to_client, to_upstream},
};

const GREETING: &[u8] = b"+OK Dovecot ready.\r\n";

/// A relay with connection 1 open, connected, and greeted.
fn greeted() -> Harness<RelayEngine> {
    let mut h = Harness::new(RelayEngine::new());
    assert_eq!(h.open(1), [Action::ConnectUpstream]);
    assert_eq!(h.event(1, Event::UpstreamConnected), []);
    assert_eq!(h.server(1, GREETING), [to_client(GREETING)]);
    h
}

#[test]
fn relays_a_check_session_byte_for_byte() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"USER alice\r\n"),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(
        h.client(1, b"PASS s3 cret\r\n"),
        [to_upstream(b"PASS s3 cret\r\n")]
    );
    assert_eq!(
        h.server(1, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
    assert_eq!(h.client(1, b"STAT\r\n"), [to_upstream(b"STAT\r\n")]);
    assert_eq!(h.server(1, b"+OK 0 0\r\n"), [to_client(b"+OK 0 0\r\n")]);
    assert_eq!(h.client(1, b"QUIT\r\n"), [to_upstream(b"QUIT\r\n")]);
    assert_eq!(
        h.server(1, b"+OK Logging out.\r\n"),
        [to_client(b"+OK Logging out.\r\n")]
    );
    assert_eq!(
        h.event(1, Event::UpstreamClosed),
        [Action::CloseClient, Action::CloseUpstream]
    );
    assert_eq!(
        h.client(1, b"NOOP\r\n"),
        [],
        "events after the end are ignored"
    );
}

#[test]
fn holds_client_lines_until_upstream_is_up() {
    let mut h = Harness::new(RelayEngine::new());
    h.open(1);
    assert_eq!(h.client(1, b"CAPA\r\nUS"), []);
    assert_eq!(
        h.event(1, Event::UpstreamConnected),
        [to_upstream(b"CAPA\r\n")]
    );
    assert_eq!(h.client(1, b"ER a\n"), [to_upstream(b"USER a\n")]);
}

#[test]
fn partial_lines_wait_for_their_end() {
    let mut h = greeted();
    assert_eq!(h.client(1, b"ST"), []);
    assert_eq!(h.client(1, b"AT\r\nNO"), [to_upstream(b"STAT\r\n")]);
}

#[test]
fn overlong_client_line_is_refused_and_closes_both_sides() {
    let mut h = greeted();
    let huge = vec![b'x'; 100 * 1024];
    assert_eq!(
        h.client(1, &[b"NOOP\r\n".as_slice(), &huge].concat()),
        [
            // Nothing of a batch with a refused line goes on.
            to_client(b"-ERR line too long\r\n"),
            Action::CloseClient,
            Action::CloseUpstream,
        ]
    );
    assert_eq!(h.client(1, b"\r\n"), []);
}

#[test]
fn overlong_line_split_over_chunks_is_refused_at_the_limit() {
    let mut h = greeted();
    assert_eq!(h.client(1, &[b'x'; 200]), []);
    assert_eq!(
        h.client(1, &[b'x'; 200]),
        [
            to_client(LINE_TOO_LONG),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

#[test]
fn unreachable_server_gets_sys_temp() {
    let mut h = Harness::new(RelayEngine::new());
    h.open(1);
    assert_eq!(
        h.event(1, Event::UpstreamFailed),
        [
            to_client(b"-ERR [SYS/TEMP] mail server unavailable\r\n"),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

#[test]
fn server_failing_mid_session_gets_sys_temp() {
    let mut h = greeted();
    h.client(1, b"STAT\r\n");
    assert_eq!(
        h.event(1, Event::UpstreamFailed),
        [
            to_client(SERVER_UNAVAILABLE),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

#[test]
fn server_failing_inside_a_body_just_closes() {
    let mut h = greeted();
    h.client(1, b"RETR 1\r\n");
    h.server(1, b"+OK 10 octets\r\nhalf a bo");
    assert_eq!(
        h.event(1, Event::UpstreamFailed),
        [Action::CloseClient, Action::CloseUpstream]
    );
}

#[test]
fn client_disconnect_never_sends_quit() {
    let mut h = greeted();
    assert_eq!(
        h.event(1, Event::ClientClosed),
        [Action::CloseClient, Action::CloseUpstream]
    );
}

#[test]
fn a_half_closed_client_gets_its_answers_then_both_sides_close() {
    let mut h = greeted();
    h.client(1, b"USER a\r\nPASS b\r\n");
    assert_eq!(h.event(1, Event::ClientClosed), []);
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(
        h.server(1, b"-ERR [AUTH] no\r\n"),
        [
            to_client(b"-ERR [AUTH] no\r\n"),
            Action::CloseClient,
            Action::CloseUpstream
        ],
        "no QUIT of our own"
    );
}

#[test]
fn pipelined_commands_match_their_responses() {
    let mut h = greeted();
    let batch = b"LIST\r\nRETR 1\r\nUIDL 1\r\nSTLS\r\n";
    assert_eq!(h.client(1, batch), [to_upstream(batch)]);
    // Answers split at awkward places; the lone "." inside RETR's body is stuffed.
    // A status line goes on once complete; body bytes as they come.
    let answers: [(&[u8], &[u8]); 4] = [
        (b"+OK 1 messages\r\n1 9\r", b"+OK 1 messages\r\n1 9\r"),
        (
            b"\n.\r\n+OK 9 octets\r\n..\r\nhi\r\n.",
            b"\n.\r\n+OK 9 octets\r\n..\r\nhi\r\n.",
        ),
        (b"\r\n+OK 1 abc\r\n-ERR", b"\r\n+OK 1 abc\r\n"),
        (b" no TLS here\r\n", b"-ERR no TLS here\r\n"),
    ];
    for (from_server, to_the_client) in answers {
        assert_eq!(h.server(1, from_server), [to_client(to_the_client)]);
    }
    // STLS was refused, so the session is POP3 again and limits apply.
    assert_eq!(h.client(1, b"NOOP\r\n"), [to_upstream(b"NOOP\r\n")]);
    assert_eq!(h.client(1, &[b'x'; 300])[0], to_client(LINE_TOO_LONG));
}

#[test]
fn stls_accepted_turns_the_session_into_a_tunnel() {
    let mut h = greeted();
    assert_eq!(h.client(1, b"STLS\r\n"), [to_upstream(b"STLS\r\n")]);
    assert_eq!(
        h.server(1, b"+OK Begin TLS\r\n"),
        [to_client(b"+OK Begin TLS\r\n")]
    );
    // TLS records: no line ends, far over every limit, passed on untouched.
    let hello = vec![0x16; 2000];
    assert_eq!(h.client(1, &hello), [to_upstream(&hello)]);
    let reply = vec![0x17; 3000];
    assert_eq!(h.server(1, &reply), [to_client(&reply)]);
}

#[test]
fn client_bytes_right_after_stls_wait_for_its_answer() {
    let mut h = greeted();
    let early_tls = [b"STLS\r\n".as_slice(), &[0x16; 600]].concat();
    assert_eq!(h.client(1, &early_tls), [to_upstream(b"STLS\r\n")]);
    assert_eq!(
        h.server(1, b"+OK Begin TLS\r\n"),
        [to_client(b"+OK Begin TLS\r\n"), to_upstream(&[0x16; 600])]
    );
}

#[test]
fn xclient_behind_a_refused_stls_is_still_refused() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"STLS\r\nXCLIENT ADDR=192.0.2.66\r\n"),
        [to_upstream(b"STLS\r\n")]
    );
    assert_eq!(
        h.server(1, b"-ERR TLS not available\r\n"),
        [
            to_client(b"-ERR TLS not available\r\n"),
            to_client(XCLIENT_REFUSED),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

/// Found by the engine fuzz target: the refusal was spliced into the middle of a
/// server line the client was still receiving.
#[test]
fn a_refusal_never_lands_inside_a_response() {
    let mut h = greeted();
    assert_eq!(h.client(1, b"LIST\r\n"), [to_upstream(b"LIST\r\n")]);
    assert_eq!(h.server(1, b"+OK\r\n1 1"), [to_client(b"+OK\r\n1 1")]);
    assert_eq!(
        h.client(1, b"XCLIENT\r\n"),
        [Action::CloseClient, Action::CloseUpstream]
    );
    let mut h = greeted();
    assert_eq!(h.client(1, b"NOOP\r\n"), [to_upstream(b"NOOP\r\n")]);
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(
        h.client(1, b"XCLIENT\r\n"),
        [
            to_client(XCLIENT_REFUSED),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

#[test]
fn a_sasl_exchange_is_relayed_and_a_failed_one_goes_back_to_pop3() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"AUTH LOGIN\r\n"),
        [to_upstream(b"AUTH LOGIN\r\n")]
    );
    assert_eq!(
        h.server(1, b"+ VXNlcm5hbWU6\r\n"),
        [to_client(b"+ VXNlcm5hbWU6\r\n")]
    );
    assert_eq!(h.client(1, b"YWxpY2U=\r\n"), [to_upstream(b"YWxpY2U=\r\n")]);
    assert_eq!(
        h.server(1, b"-ERR [AUTH] Authentication failed.\r\n"),
        [to_client(b"-ERR [AUTH] Authentication failed.\r\n")]
    );
    assert_eq!(
        h.client(1, b"XCLIENT ADDR=192.0.2.66\r\n")[0],
        to_client(XCLIENT_REFUSED),
        "back in POP3 after the failed AUTH"
    );
}

#[test]
fn an_accepted_auth_or_apop_stays_pop3() {
    let mut h = greeted();
    let login = b"AUTH PLAIN AGFsaWNlAHB3\r\n";
    assert_eq!(h.client(1, login), [to_upstream(login)]);
    assert_eq!(
        h.server(1, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
    assert_eq!(h.client(1, b"STAT\r\n"), [to_upstream(b"STAT\r\n")]);
    assert_eq!(h.client(1, &[b'x'; 300])[0], to_client(LINE_TOO_LONG));

    let mut h = greeted();
    let apop = b"APOP a 0123456789abcdef0123456789abcdef\r\n";
    assert_eq!(h.client(1, apop), [to_upstream(apop)]);
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(h.client(1, &[b'x'; 300])[0], to_client(LINE_TOO_LONG));
}

#[test]
fn auth_without_mechanism_stays_pop3() {
    let mut h = greeted();
    h.client(1, b"AUTH\r\n");
    h.server(1, b"+OK\r\nPLAIN\r\n.\r\n");
    assert_eq!(h.client(1, &[b'x'; 300])[0], to_client(LINE_TOO_LONG));
}

#[test]
fn flooding_without_reading_is_refused() {
    let mut h = greeted();
    let flood = b"NOOP\r\n".repeat(MAX_PENDING);
    assert_eq!(h.client(1, &flood), [to_upstream(&flood)]);
    assert_eq!(
        h.client(1, b"NOOP\r\n"),
        [
            to_client(TOO_MANY_PENDING),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

#[test]
fn close_forgets_the_connection() {
    let mut h = greeted();
    h.engine.close(1, h.now);
    assert_eq!(h.engine.connections(), 0);
    assert_eq!(h.client(1, b"STAT\r\n"), []);
}

#[test]
fn the_xclient_code_of_a_trusting_server_is_not_shown_to_the_client() {
    let mut h = Harness::new(RelayEngine::new());
    h.open(1);
    h.event(1, Event::UpstreamConnected);
    assert_eq!(h.server(1, b"+OK [XCLIENT] Dove"), []);
    h.client(1, b"NOOP\r\n");
    assert_eq!(
        h.server(1, b"cot ready.\r\n+OK\r\n"),
        [to_client(b"+OK Dovecot ready.\r\n+OK\r\n")],
        "greeting rewritten, what follows it relayed as it came"
    );
}

#[test]
fn a_client_sending_xclient_is_refused_and_nothing_reaches_the_server() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"XCLIENT ADDR=192.0.2.66 PORT=1\r\n"),
        [
            to_client(XCLIENT_REFUSED),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

/// What a refused line does: its `-ERR`, both sides closed, nothing upstream.
fn refused(message: &[u8]) -> [Action; 3] {
    [
        to_client(message),
        Action::CloseClient,
        Action::CloseUpstream,
    ]
}

#[test]
fn xclient_is_refused_in_any_case_and_spacing() {
    for line in [
        &b"xclient ADDR=192.0.2.66\r\n"[..],
        b"XcLiEnT ADDR=192.0.2.66\r\n",
        b"  XCLIENT ADDR=192.0.2.66\r\n",
        b"XCLIENT\tADDR=192.0.2.66\r\n",
        b"XCLIENT\n",
    ] {
        let mut h = greeted();
        assert_eq!(h.client(1, line), refused(XCLIENT_REFUSED), "{line:?}");
    }
}

#[test]
fn xclient_pipelined_behind_other_commands_sends_nothing() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"USER a\r\nXCLIENT ADDR=192.0.2.66\r\nPASS b\r\n"),
        refused(XCLIENT_REFUSED)
    );
}

#[test]
fn xclient_inside_a_sasl_exchange_is_refused() {
    let mut h = greeted();
    h.client(1, b"AUTH LOGIN\r\n");
    h.server(1, b"+ VXNlcm5hbWU6\r\n");
    assert_eq!(
        h.client(1, b"XCLIENT ADDR=192.0.2.66\r\n"),
        refused(XCLIENT_REFUSED)
    );
}

#[test]
fn xclient_after_a_cancelled_auth_or_refused_apop_is_refused() {
    let mut h = greeted();
    h.client(1, b"AUTH PLAIN\r\n");
    h.server(1, b"+ \r\n");
    assert_eq!(h.client(1, b"*\r\n"), [to_upstream(b"*\r\n")]);
    h.server(1, b"-ERR Authentication aborted\r\n");
    assert_eq!(
        h.client(1, b"XCLIENT ADDR=192.0.2.66\r\n"),
        refused(XCLIENT_REFUSED)
    );

    let mut h = greeted();
    h.client(1, b"APOP a 0123456789abcdef0123456789abcdef\r\n");
    h.server(1, b"-ERR [AUTH] no\r\n");
    assert_eq!(
        h.client(1, b"XCLIENT ADDR=192.0.2.66\r\n"),
        refused(XCLIENT_REFUSED)
    );
}

#[test]
fn nul_or_a_stray_cr_in_a_command_is_refused() {
    for line in [
        &b"USER name\0junk\r\n"[..],
        b"USER a\rQUIT\r\n",
        b"PASS \0\n",
    ] {
        let mut h = greeted();
        assert_eq!(h.client(1, line), refused(BAD_CHARACTERS), "{line:?}");
    }
}

/// What the gate does with PLAIN data `b64`, sent as an initial response and as the
/// response to the server's challenge.
fn plain_both_ways(b64: &str) -> [Vec<Action>; 2] {
    let mut h = greeted();
    let initial = h.client(1, format!("AUTH PLAIN {b64}\r\n").as_bytes());
    let mut h = greeted();
    h.client(1, b"AUTH PLAIN\r\n");
    h.server(1, b"+ \r\n");
    let continued = h.client(1, format!("{b64}\r\n").as_bytes());
    [initial, continued]
}

#[test]
fn sasl_plain_fields_with_line_ends_or_nul_are_refused() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    for raw in [
        &b"\0alice\r\nUSER victim\0pw"[..],
        b"\0alice\0p\nw",
        b"a\rb\0alice\0pw",
        b"\0alice\0p\0w",
    ] {
        for out in plain_both_ways(&STANDARD.encode(raw)) {
            assert_eq!(out, refused(BAD_CHARACTERS));
        }
    }
    // Other mechanisms' data is not PLAIN's to judge.
    let mut h = greeted();
    h.client(1, b"AUTH LOGIN\r\n");
    h.server(1, b"+ VXNlcm5hbWU6\r\n");
    let odd = format!("{}\r\n", STANDARD.encode(b"a\0b"));
    assert_eq!(h.client(1, odd.as_bytes()), [to_upstream(odd.as_bytes())]);
}

#[test]
fn a_reply_nobody_asked_for_ends_the_session() {
    let mut h = greeted();
    h.client(1, b"USER alice\r\n");
    // One answer owed, two sent: the second would answer the next command.
    assert_eq!(
        h.server(1, b"+OK\r\n+OK Logged in.\r\n"),
        [
            to_client(b"+OK\r\n"),
            to_client(SERVER_UNAVAILABLE),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
    let mut h = greeted();
    assert_eq!(
        h.server(1, b"+OK\r\n"),
        refused(SERVER_UNAVAILABLE),
        "nothing was asked"
    );
}

#[test]
fn a_server_breaking_framing_ends_the_session() {
    let mut h = greeted();
    h.client(1, b"STAT\r\n");
    assert_eq!(h.server(1, b"hello\r\n"), refused(SERVER_UNAVAILABLE));
}

/// Found by the engine fuzz target (on the relay this gate replaced): lines pipelined
/// behind a SASL response went on unread, so an XCLIENT behind a failed AUTH reached the
/// server as a command. Now one line goes per challenge and the rest waits.
#[test]
fn lines_pipelined_behind_a_sasl_response_wait_for_the_servers_answer() {
    let mut h = greeted();
    assert_eq!(
        h.client(
            1,
            b"AUTH PLAIN\r\nAGFsaWNlAHdyb25n\r\nXCLIENT ADDR=192.0.2.66\r\n"
        ),
        [to_upstream(b"AUTH PLAIN\r\n")]
    );
    assert_eq!(
        h.server(1, b"+ \r\n"),
        [to_client(b"+ \r\n"), to_upstream(b"AGFsaWNlAHdyb25n\r\n")]
    );
    assert_eq!(
        h.server(1, b"-ERR [AUTH] Authentication failed.\r\n"),
        [
            to_client(b"-ERR [AUTH] Authentication failed.\r\n"),
            to_client(XCLIENT_REFUSED),
            Action::CloseClient,
            Action::CloseUpstream
        ]
    );
}

#[test]
fn commands_held_during_an_accepted_auth_go_on_as_commands() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"AUTH PLAIN AGFsaWNlAHB3\r\nSTAT\r\nLI"),
        [to_upstream(b"AUTH PLAIN AGFsaWNlAHB3\r\n")]
    );
    assert_eq!(
        h.server(1, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n"), to_upstream(b"STAT\r\n")]
    );
    assert_eq!(h.client(1, b"ST\r\n"), [to_upstream(b"LIST\r\n")]);
    assert_eq!(h.server(1, b"+OK 0 0\r\n"), [to_client(b"+OK 0 0\r\n")]);
    assert_eq!(h.server(1, b"+OK\r\n.\r\n"), [to_client(b"+OK\r\n.\r\n")]);
}

/// Found by review: PLAIN data the strict decoder refuses went on unchecked, and a
/// lenient server decoder would find the line end in it.
#[test]
fn plain_data_that_does_not_decode_is_refused() {
    // "\0alice\0p\nw" is AGFsaWNlAHAKdw==
    for b64 in [
        "AGFsaWNlAHAKdw",
        "AGFsaWNlAHAKdw=",
        "AGFsaWNlAHAKdw==\t",
        " AGFsaWNlAHAKdw==",
    ] {
        for out in plain_both_ways(b64) {
            assert!(
                !out.iter().any(|a| matches!(a, Action::ToUpstream(_))),
                "{b64:?}: {out:?}"
            );
        }
    }
    // The cancel still goes on.
    let mut h = greeted();
    h.client(1, b"AUTH PLAIN\r\n");
    h.server(1, b"+ \r\n");
    assert_eq!(h.client(1, b"*\r\n"), [to_upstream(b"*\r\n")]);
}
