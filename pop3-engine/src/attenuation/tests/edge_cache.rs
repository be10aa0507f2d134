//! The edge cache's handshake and serving, with exact bytes in both directions.

use super::*;

const MESSAGE: &[u8] = b"Subject: cached\r\n\r\n.starts with a dot\r\nend\r\n";
/// What the server sends for RETR of [`MESSAGE`].
const RETR_ANSWER: &[u8] =
    b"+OK 44 octets\r\nSubject: cached\r\n\r\n..starts with a dot\r\nend\r\n.\r\n";

/// An engine with the edge cache on that greets locally.
pub(super) fn cache_engine() -> Harness<AttenuationEngine> {
    let config = Config {
        cache: true,
        ..config()
    };
    let mut h = Harness::new(AttenuationEngine::new(
        config,
        Salt::new([1, 2, 3, 4]),
        Instant::now(),
    ));
    h.engine.shared.learn_greeting(info().server, false);
    h
}

/// A first check of alice: it passes through, logged in by the server.
fn logged_in(h: &mut Harness<AttenuationEngine>, conn: ConnId) {
    assert_eq!(h.open(conn), [to_client(GREETING)]);
    assert_eq!(h.client(conn, b"USER alice\r\n"), [ConnectUpstream]);
    assert_eq!(
        connect_upstream(h, conn, true),
        [to_upstream(b"USER alice\r\n")]
    );
    assert_eq!(h.server(conn, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(
        h.client(conn, b"PASS pw\r\n"),
        [to_upstream(b"PASS pw\r\n")]
    );
    assert_eq!(
        h.server(conn, b"+OK Logged in.\r\n"),
        [to_client(b"+OK Logged in.\r\n")]
    );
}

/// The server's answers to `UIDL` and `LIST` for one message `uidl` of `size` bytes.
fn listing(uidl: &str, size: usize) -> (String, String) {
    (
        format!("+OK\r\n1 {uidl}\r\n.\r\n"),
        format!("+OK 1 messages:\r\n1 {size}\r\n.\r\n"),
    )
}

/// The first RETR 1 of a session up to the daemon's lookup: the session's one
/// handshake, the server listing message 1 as `uidl` of `size` bytes.
fn retr_looked_up(h: &mut Harness<AttenuationEngine>, conn: ConnId, uidl: &str, size: usize) {
    assert_eq!(h.client(conn, b"RETR 1\r\n"), [to_upstream(b"UIDL\r\n")]);
    let (uidls, sizes) = listing(uidl, size);
    assert_eq!(h.server(conn, uidls.as_bytes()), [to_upstream(b"LIST\r\n")]);
    assert_eq!(h.server(conn, sizes.as_bytes()), [cache_read(uidl, size)]);
}

fn cache_read(uidl: &str, size: usize) -> Action {
    Action::CacheRead {
        user: b"alice".to_vec(),
        uidl: uidl.as_bytes().to_vec(),
        size: size as u64,
    }
}

#[test]
fn a_retr_whose_uidl_and_size_match_is_answered_from_the_edge() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    retr_looked_up(&mut h, 1, "000001ab", MESSAGE.len());
    assert_eq!(
        h.event(1, Event::Cached(Some(MESSAGE))),
        [to_client(RETR_ANSWER)]
    );
    // The session goes on with the server: nothing more was owed to it.
    assert_eq!(h.client(1, b"NOOP\r\n"), [to_upstream(b"NOOP\r\n")]);
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    // The handshake was the session's: the next RETR asks the server nothing.
    assert_eq!(
        h.client(1, b"RETR 1\r\n"),
        [cache_read("000001ab", MESSAGE.len())]
    );
    assert_eq!(
        h.event(1, Event::Cached(Some(MESSAGE))),
        [to_client(RETR_ANSWER)]
    );
}

#[test]
fn a_top_whose_uidl_and_size_match_is_answered_from_the_edge() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    for (i, (top, answer)) in [
        (
            &b"TOP 1 0\r\n"[..],
            &b"+OK\r\nSubject: cached\r\n\r\n.\r\n"[..],
        ),
        (
            b"TOP 1 1\r\n",
            b"+OK\r\nSubject: cached\r\n\r\n..starts with a dot\r\n.\r\n",
        ),
        (
            b"TOP 1 99\r\n",
            b"+OK\r\nSubject: cached\r\n\r\n..starts with a dot\r\nend\r\n.\r\n",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let read = cache_read("000001ab", MESSAGE.len());
        if i == 0 {
            // The session's one handshake, before its first TOP.
            assert_eq!(h.client(1, top), [to_upstream(b"UIDL\r\n")]);
            let (uidls, sizes) = listing("000001ab", MESSAGE.len());
            assert_eq!(h.server(1, uidls.as_bytes()), [to_upstream(b"LIST\r\n")]);
            assert_eq!(h.server(1, sizes.as_bytes()), [read]);
        } else {
            assert_eq!(h.client(1, top), [read]);
        }
        assert_eq!(
            h.event(1, Event::Cached(Some(MESSAGE))),
            [to_client(answer)]
        );
    }
    // A miss: the TOP itself goes to the server.
    assert_eq!(
        h.client(1, b"TOP 1 0\r\n"),
        [cache_read("000001ab", MESSAGE.len())]
    );
    assert_eq!(
        h.event(1, Event::Cached(None)),
        [to_upstream(b"TOP 1 0\r\n")]
    );
    let from_server = b"+OK\r\nSubject: cached\r\n\r\n.\r\n";
    assert_eq!(h.server(1, from_server), [to_client(from_server)]);
    // Not a message number and a line count: straight to the server.
    for odd in [&b"TOP 1\r\n"[..], b"TOP 1 -1\r\n", b"TOP x 1\r\n"] {
        assert_eq!(h.client(1, odd), [to_upstream(odd)]);
        assert_eq!(h.server(1, b"-ERR no\r\n"), [to_client(b"-ERR no\r\n")]);
    }
}

#[test]
fn a_miss_is_relayed_to_the_server() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    retr_looked_up(&mut h, 1, "000001ab", MESSAGE.len());
    assert_eq!(
        h.event(1, Event::Cached(None)),
        [to_upstream(b"RETR 1\r\n")]
    );
    assert_eq!(h.server(1, RETR_ANSWER), [to_client(RETR_ANSWER)]);
    // A late or repeated answer from the daemon changes nothing.
    assert_eq!(h.event(1, Event::Cached(Some(MESSAGE))), []);
}

#[test]
fn no_lookup_without_the_servers_own_uidl_and_size_for_that_message() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    // Message 1 is not listed: the server's own answer to RETR reaches the client.
    assert_eq!(h.client(1, b"RETR 1\r\n"), [to_upstream(b"UIDL\r\n")]);
    let (uidls, sizes) = listing("000001ab", MESSAGE.len());
    let uidls = uidls.replace("1 0", "2 0");
    assert_eq!(h.server(1, uidls.as_bytes()), [to_upstream(b"LIST\r\n")]);
    assert_eq!(h.server(1, sizes.as_bytes()), [to_upstream(b"RETR 1\r\n")]);
    let no = b"-ERR There's no message 1.\r\n";
    assert_eq!(h.server(1, no), [to_client(no)]);
    // Not a message number: straight to the server.
    assert_eq!(h.client(1, b"RETR 1 x\r\n"), [to_upstream(b"RETR 1 x\r\n")]);
}

/// A server that refuses the listing, or a maildrop whose listing is too large to keep,
/// is asked `UIDL n` and `LIST n` before each message.
#[test]
fn without_a_listing_each_message_is_asked_about() {
    let large = format!("+OK\r\n{}.\r\n", "9 x\r\n".repeat(5000));
    for refusal in [&b"-ERR Unknown command\r\n"[..], large.as_bytes()] {
        let mut h = cache_engine();
        logged_in(&mut h, 1);
        assert_eq!(h.client(1, b"RETR 1\r\n"), [to_upstream(b"UIDL\r\n")]);
        assert_eq!(h.server(1, refusal), [to_upstream(b"LIST\r\n")]);
        let (_, sizes) = listing("000001ab", MESSAGE.len());
        assert_eq!(h.server(1, sizes.as_bytes()), [to_upstream(b"UIDL 1\r\n")]);
        assert_eq!(
            h.server(1, b"+OK 1 000001ab\r\n"),
            [to_upstream(b"LIST 1\r\n")]
        );
        let size = format!("+OK 1 {}\r\n", MESSAGE.len());
        assert_eq!(
            h.server(1, size.as_bytes()),
            [cache_read("000001ab", MESSAGE.len())]
        );
        assert_eq!(
            h.event(1, Event::Cached(Some(MESSAGE))),
            [to_client(RETR_ANSWER)]
        );
        // An answer about another message, or a malformed size, is no handshake.
        for (id, size) in [
            (&b"+OK 2 000001ab\r\n"[..], &b"+OK 1 44\r\n"[..]),
            (b"+OK 1 000001ab\r\n", b"+OK 1 forty\r\n"),
            (b"+OK 1 000001ab\r\n", b"+OK 2 44\r\n"),
            (
                b"-ERR There's no message 1.\r\n",
                b"-ERR There's no message 1.\r\n",
            ),
        ] {
            assert_eq!(h.client(1, b"RETR 1\r\n"), [to_upstream(b"UIDL 1\r\n")]);
            assert_eq!(h.server(1, id), [to_upstream(b"LIST 1\r\n")]);
            assert_eq!(h.server(1, size), [to_upstream(b"RETR 1\r\n")]);
            assert_eq!(h.server(1, RETR_ANSWER), [to_client(RETR_ANSWER)]);
        }
    }
}

#[test]
fn the_server_speaking_during_a_lookup_ends_the_session() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    retr_looked_up(&mut h, 1, "000001ab", MESSAGE.len());
    assert_eq!(
        h.server(1, b"+OK surprise\r\n"),
        [to_client(SERVER_UNAVAILABLE), CloseClient, CloseUpstream]
    );
    assert_eq!(h.event(1, Event::Cached(Some(MESSAGE))), []);
}

#[test]
fn client_commands_wait_for_the_lookup() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    retr_looked_up(&mut h, 1, "000001ab", MESSAGE.len());
    assert_eq!(h.client(1, b"NOOP\r\n"), []);
    assert_eq!(
        h.event(1, Event::Cached(Some(MESSAGE))),
        [to_client(RETR_ANSWER), to_upstream(b"NOOP\r\n")]
    );
}

/// DELE 1 of the message with `uidl`, relayed after the server named it.
fn dele(h: &mut Harness<AttenuationEngine>, conn: ConnId, uidl: &str) {
    assert_eq!(h.client(conn, b"DELE 1\r\n"), [to_upstream(b"UIDL 1\r\n")]);
    let id = format!("+OK 1 {uidl}\r\n");
    assert_eq!(h.server(conn, id.as_bytes()), [to_upstream(b"DELE 1\r\n")]);
    assert_eq!(
        h.server(conn, b"+OK Marked to be deleted.\r\n"),
        [to_client(b"+OK Marked to be deleted.\r\n")]
    );
}

/// QUIT through the held STAT; the server answers the QUIT with `quit`.
fn quit(h: &mut Harness<AttenuationEngine>, conn: ConnId, quit: &[u8]) -> Vec<Action> {
    assert_eq!(h.client(conn, b"QUIT\r\n"), [to_upstream(b"STAT\r\n")]);
    assert_eq!(h.server(conn, b"+OK 0 0\r\n"), [to_upstream(b"QUIT\r\n")]);
    h.server(conn, quit)
}

#[test]
fn a_message_this_session_deleted_is_the_servers_to_answer() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    retr_looked_up(&mut h, 1, "000001ab", MESSAGE.len());
    h.event(1, Event::Cached(Some(MESSAGE)));
    // With the session's listing, the DELE needs no question of its own.
    assert_eq!(h.client(1, b"DELE 1\r\n"), [to_upstream(b"DELE 1\r\n")]);
    let marked = b"+OK Marked to be deleted.\r\n";
    assert_eq!(h.server(1, marked), [to_client(marked)]);
    for fetch in [&b"RETR 1\r\n"[..], b"TOP 1 0\r\n"] {
        assert_eq!(h.client(1, fetch), [to_upstream(fetch)]);
        let deleted = b"-ERR Message is deleted.\r\n";
        assert_eq!(h.server(1, deleted), [to_client(deleted)]);
    }
    // RSET undeletes: served from the edge again.
    assert_eq!(h.client(1, b"RSET\r\n"), [to_upstream(b"RSET\r\n")]);
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(
        h.client(1, b"RETR 1\r\n"),
        [cache_read("000001ab", MESSAGE.len())]
    );
    // What it deleted with the listing's UIDL is forgotten at QUIT.
    h.event(1, Event::Cached(Some(MESSAGE)));
    h.client(1, b"DELE 1\r\n");
    h.server(1, marked);
    assert_eq!(
        quit(&mut h, 1, b"+OK Logging out, messages deleted.\r\n")[0],
        Action::CacheForget {
            user: b"alice".to_vec(),
            uidls: Some(vec![b"000001ab".to_vec()]),
        }
    );
}

#[test]
fn a_deletion_is_forgotten_at_the_edge_once_the_quit_commits_it() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    dele(&mut h, 1, "000001ab");
    assert_eq!(
        quit(&mut h, 1, b"+OK Logging out, messages deleted.\r\n"),
        [
            Action::CacheForget {
                user: b"alice".to_vec(),
                uidls: Some(vec![b"000001ab".to_vec()]),
            },
            to_client(b"+OK Logging out, messages deleted.\r\n"),
            CloseClient,
            CloseUpstream,
        ]
    );
}

#[test]
fn a_deletion_the_server_did_not_commit_is_kept_at_the_edge() {
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    dele(&mut h, 1, "000001ab");
    assert_eq!(
        quit(
            &mut h,
            1,
            b"-ERR Some deleted messages were not expunged\r\n"
        ),
        [
            to_client(b"-ERR Some deleted messages were not expunged\r\n"),
            CloseClient,
            CloseUpstream,
        ]
    );

    // RSET undeletes: nothing to forget either.
    let mut h = cache_engine();
    logged_in(&mut h, 1);
    dele(&mut h, 1, "000001ab");
    assert_eq!(h.client(1, b"RSET\r\n"), [to_upstream(b"RSET\r\n")]);
    assert_eq!(h.server(1, b"+OK\r\n"), [to_client(b"+OK\r\n")]);
    assert_eq!(
        quit(&mut h, 1, b"+OK Logging out.\r\n"),
        [
            to_client(b"+OK Logging out.\r\n"),
            CloseClient,
            CloseUpstream
        ]
    );
}

#[test]
fn without_the_cache_nothing_changes() {
    let mut h = engine();
    logged_in(&mut h, 1);
    assert_eq!(h.client(1, b"RETR 1\r\n"), [to_upstream(b"RETR 1\r\n")]);
    assert_eq!(h.server(1, RETR_ANSWER), [to_client(RETR_ANSWER)]);
}
