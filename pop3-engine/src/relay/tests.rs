use super::*;
use crate::testing::{Harness, to_client, to_upstream};

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
    assert_eq!(h.event(1, Event::UpstreamClosed), [Action::CloseClient]);
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
            to_upstream(b"NOOP\r\n"),
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
            Action::CloseClient
        ]
    );
}

#[test]
fn server_failing_mid_session_gets_sys_temp() {
    let mut h = greeted();
    h.client(1, b"STAT\r\n");
    assert_eq!(
        h.event(1, Event::UpstreamFailed),
        [to_client(SERVER_UNAVAILABLE), Action::CloseClient]
    );
}

#[test]
fn server_failing_inside_a_body_just_closes() {
    let mut h = greeted();
    h.client(1, b"RETR 1\r\n");
    h.server(1, b"+OK 10 octets\r\nhalf a bo");
    assert_eq!(h.event(1, Event::UpstreamFailed), [Action::CloseClient]);
}

#[test]
fn client_disconnect_never_sends_quit() {
    let mut h = greeted();
    h.client(1, b"USER a\r\n");
    assert_eq!(h.event(1, Event::ClientClosed), [Action::CloseUpstream]);
    assert_eq!(h.server(1, b"+OK\r\n"), []);
}

#[test]
fn pipelined_commands_match_their_responses() {
    let mut h = greeted();
    let batch = b"LIST\r\nRETR 1\r\nUIDL 1\r\nSTLS\r\n";
    assert_eq!(h.client(1, batch), [to_upstream(batch)]);
    // Answers split at awkward places; the lone "." inside RETR's body is stuffed.
    let answers: [&[u8]; 4] = [
        b"+OK 1 messages\r\n1 9\r",
        b"\n.\r\n+OK 9 octets\r\n..\r\nhi\r\n.",
        b"\r\n+OK 1 abc\r\n-ERR",
        b" no TLS here\r\n",
    ];
    for a in answers {
        assert_eq!(h.server(1, a), [to_client(a)]);
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
    // SASL responses are not commands, even when they look like one.
    assert_eq!(h.client(1, b"XCLIENT\r\n"), [to_upstream(b"XCLIENT\r\n")]);
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

/// Found by the engine fuzz target: lines pipelined behind a SASL response went on
/// unread, so an XCLIENT behind a failed AUTH reached the server as a command.
#[test]
fn xclient_behind_a_failed_auth_is_still_refused() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"AUTH PLAIN\r\nbogus\r\nXCLIENT ADDR=192.0.2.66\r\n"),
        [to_upstream(b"AUTH PLAIN\r\n")]
    );
    // One line per challenge; the rest waits for the server's next word.
    assert_eq!(
        h.server(1, b"+ \r\n"),
        [to_client(b"+ \r\n"), to_upstream(b"bogus\r\n")]
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
fn lines_held_during_an_accepted_auth_go_on_in_the_tunnel() {
    let mut h = greeted();
    assert_eq!(
        h.client(1, b"AUTH PLAIN AGFsaWNlAHB3\r\nlayer"),
        [to_upstream(b"AUTH PLAIN AGFsaWNlAHB3\r\n")]
    );
    assert_eq!(
        h.server(1, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n"), to_upstream(b"layer")]
    );
}

#[test]
fn an_accepted_auth_turns_the_session_into_a_tunnel_and_apop_stays_pop3() {
    let mut h = greeted();
    let login = b"AUTH PLAIN AGFsaWNlAHB3\r\n";
    assert_eq!(h.client(1, login), [to_upstream(login)]);
    assert_eq!(
        h.server(1, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
    let blob = vec![b'A'; 5000];
    assert_eq!(h.client(1, &blob), [to_upstream(&blob)]);

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
    assert_eq!(
        h.server(1, b"cot ready.\r\n+OK\r\n"),
        [to_client(b"+OK Dovecot ready.\r\n"), to_client(b"+OK\r\n")],
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
