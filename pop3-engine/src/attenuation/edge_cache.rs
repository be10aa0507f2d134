//! Serving RETR and TOP from the edge's copy of a user's mail (the patent's cache aspect).
//!
//! In a session that passes through, the first RETR or TOP is preceded by `UIDL` and
//! `LIST` to the server: its own unique-ids and sizes, in the maildrop it has locked for
//! this session (RFC 1939 fixes its messages and numbers until QUIT), are the
//! synchronisation handshake, once per session. A maildrop whose listing is larger than
//! [`MAX_NUMBERING`] (or a server that refuses it) is asked `UIDL n` and `LIST n` before
//! each message instead. Only a cached copy with
//! that UIDL and size is served; the daemon checks its file and answers with
//! [`crate::session::Event::Cached`]. Anything else goes to the server. A DELE's UIDL
//! is remembered, and the cached copy is forgotten once the server's QUIT `+OK` has
//! committed the deletion.

use crate::codec::trim_eol;

/// Most bytes of the server's UIDL and LIST answers one session keeps: about 400
/// messages; a larger maildrop is asked about message by message.
pub const MAX_NUMBERING: usize = 16 * 1024;

/// Most DELEs remembered in one session; past it the user's whole cache is forgotten
/// at QUIT instead of message by message.
pub const MAX_DELETED: usize = 4096;

/// The message number of a `RETR n` or `DELE n` (digits only, as RFC 1939 writes it).
pub fn message_number(rest: &[u8]) -> Option<&[u8]> {
    let mut args = rest.split(|&b| b == b' ').filter(|a| !a.is_empty());
    let n = args.next()?;
    let digits = (1..=10).contains(&n.len()) && n.iter().all(u8::is_ascii_digit);
    (digits && args.next().is_none()).then_some(n)
}

/// The value of the server's `+OK n value` answer to `UIDL n` or `LIST n`, if it is
/// about message `n`.
pub fn scan_value<'a>(line: &'a [u8], n: &[u8]) -> Option<&'a [u8]> {
    let mut words = trim_eol(line).split(|&b| b == b' ');
    (words.next()? == b"+OK" && words.next()? == n).then_some(())?;
    let value = words.next().filter(|v| !v.is_empty())?;
    words.next().is_none().then_some(value)
}

/// The arguments of `TOP n lines` (digits only): the message number and the lines.
pub fn top_arguments(rest: &[u8]) -> Option<(&[u8], u64)> {
    let mut args = rest.split(|&b| b == b' ').filter(|a| !a.is_empty());
    let n = message_number(args.next()?)?;
    let lines = args.next().filter(|l| (1..=10).contains(&l.len()))?;
    let lines = std::str::from_utf8(lines).ok()?.parse().ok()?;
    args.next().is_none().then_some((n, lines))
}

/// The server's answer to RETR (`top`: `None`) or to `TOP n lines` of a message of these
/// bytes, as Dovecot sends it: its status line, then the message dot-stuffed (RFC 1939
/// 3); for TOP only the headers, the blank line and `lines` body lines; CRLF added when
/// what was sent does not end a line (an empty message too); the `.` line.
///
/// Dovecot counts body lines from the first line that starts with CR or LF (the end of
/// the headers), and a message without one is all headers. It leaves a `.` at the very
/// start of a message unstuffed, which ends the answer early; here it is stuffed (such a
/// message is no RFC 5322 message, and a broken frame is not worth copying).
pub fn fetch_answer(message: &[u8], top: Option<u64>) -> Vec<u8> {
    let mut answer = match top {
        None => format!("+OK {} octets\r\n", message.len()).into_bytes(),
        Some(_) => b"+OK\r\n".to_vec(),
    };
    answer.reserve(message.len() + message.len() / 64 + 5);
    // The blank line after the headers counts as the first body line.
    let mut lines_left = top.map(|n| n.saturating_add(1));
    let mut in_body = false;
    let mut last = None;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if lines_left == Some(0) {
            break;
        }
        in_body |= matches!(line.first(), Some(b'\r' | b'\n'));
        if line.first() == Some(&b'.') {
            answer.push(b'.');
        }
        answer.extend_from_slice(line);
        last = line.last().copied();
        if in_body && last == Some(b'\n') {
            lines_left = lines_left.map(|n| n - 1);
        }
    }
    if last != Some(b'\n') {
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b".\r\n");
    answer
}

/// What the server said about the message a RETR or TOP asks for.
#[derive(Debug, Default)]
pub struct Lookup {
    pub uidl: Option<Vec<u8>>,
    pub size: Option<u64>,
}

impl Lookup {
    /// The UIDL and size, once the server gave both.
    pub fn complete(self) -> Option<(Vec<u8>, u64)> {
        Some((self.uidl?, self.size?))
    }
}

/// The server's numbering of this session's maildrop, learnt once.
#[derive(Debug, Default)]
pub enum Numbering {
    /// Not asked yet.
    #[default]
    Unknown,
    /// The bodies of the server's UIDL and LIST answers; `complete` once both ended.
    Listed {
        uidls: Vec<u8>,
        sizes: Vec<u8>,
        complete: bool,
    },
    /// Too large to keep, or refused: each message is asked about on its own.
    PerMessage,
}

impl Numbering {
    /// The listing about to be asked for.
    pub fn asking() -> Self {
        Self::Listed {
            uidls: Vec::new(),
            sizes: Vec::new(),
            complete: false,
        }
    }

    /// Keeps a piece of the body of the UIDL (`uidl`) or LIST answer, within
    /// [`MAX_NUMBERING`]; `end`: the LIST answer, the last asked, ended.
    pub fn collect(&mut self, uidl: bool, bytes: &[u8], end: bool) {
        let Self::Listed {
            uidls,
            sizes,
            complete,
        } = self
        else {
            return;
        };
        if uidls.len() + sizes.len() + bytes.len() > MAX_NUMBERING {
            *self = Self::PerMessage;
            return;
        }
        if uidl { uidls } else { sizes }.extend_from_slice(bytes);
        *complete = end && !uidl;
    }

    /// The server's UIDL and size of message `n` (`None` inside: it listed no such
    /// message), once the listing is complete.
    pub fn message(&self, n: &[u8]) -> Option<Option<(&[u8], u64)>> {
        let Self::Listed {
            uidls,
            sizes,
            complete: true,
        } = self
        else {
            return None;
        };
        let size = listed(sizes, n)
            .and_then(|size| std::str::from_utf8(size).ok())
            .and_then(|size| size.parse().ok());
        Some(listed(uidls, n).zip(size))
    }
}

/// The value the `n value` line about message `n` of a listing's body gives.
fn listed<'a>(body: &'a [u8], n: &[u8]) -> Option<&'a [u8]> {
    body.split(|&b| b == b'\n').map(trim_eol).find_map(|line| {
        let mut words = line.split(|&b| b == b' ');
        (words.next()? == n).then_some(())?;
        let value = words.next().filter(|v| !v.is_empty())?;
        words.next().is_none().then_some(value)
    })
}

/// The messages a session deleted (their UIDLs, until its QUIT commits them, and their
/// numbers: a deleted message is the server's to answer for).
#[derive(Debug, Default)]
pub struct Deleted {
    uidls: Vec<Vec<u8>>,
    numbers: Vec<Vec<u8>>,
    overflow: bool,
}

impl Deleted {
    /// Message `n`, of unique-id `uidl` if the server named it, was deleted.
    pub fn push(&mut self, n: &[u8], uidl: Option<&[u8]>) {
        if self.numbers.len() < MAX_DELETED {
            self.numbers.push(n.to_vec());
            self.uidls.extend(uidl.map(<[u8]>::to_vec));
        } else {
            self.overflow = true;
        }
    }

    /// Whether message `n` may have been deleted in this session.
    pub fn has(&self, n: &[u8]) -> bool {
        self.overflow || self.numbers.iter().any(|d| d == n)
    }

    /// RSET: nothing is deleted after all.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The UIDLs to forget, or `None` when there were too many to remember (forget the
    /// user's whole cache).
    pub fn take(&mut self) -> Option<Vec<Vec<u8>>> {
        let Self {
            uidls, overflow, ..
        } = std::mem::take(self);
        (!overflow).then_some(uidls)
    }

    /// Whether there is anything to forget.
    pub fn is_empty(&self) -> bool {
        self.uidls.is_empty() && !self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retr_answer_is_what_dovecot_sends() {
        assert_eq!(
            fetch_answer(b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend.\r\n", None),
            b"+OK 36 octets\r\nSubject: x\r\n\r\n..hidden\r\n...two\r\nend.\r\n.\r\n"
        );
        assert_eq!(fetch_answer(b"", None), b"+OK 0 octets\r\n\r\n.\r\n");
        assert_eq!(fetch_answer(b".\r\n", None), b"+OK 3 octets\r\n..\r\n.\r\n");
        assert_eq!(
            fetch_answer(b"S: x\r\n\r\nno end", None),
            b"+OK 14 octets\r\nS: x\r\n\r\nno end\r\n.\r\n"
        );
    }

    /// The cases Dovecot 2.3's `fetch_callback` distinguishes, with what it sent for
    /// them (the e2e test `edge_cache` compares every one with the real server).
    #[test]
    fn top_answer_is_what_dovecot_sends() {
        let m = b"A: 1\r\nB: 2\r\n\r\none\r\n.two\r\nthree\r\n";
        let top = |n| fetch_answer(m, Some(n));
        assert_eq!(top(0), b"+OK\r\nA: 1\r\nB: 2\r\n\r\n.\r\n");
        assert_eq!(top(1), b"+OK\r\nA: 1\r\nB: 2\r\n\r\none\r\n.\r\n");
        assert_eq!(top(2), b"+OK\r\nA: 1\r\nB: 2\r\n\r\none\r\n..two\r\n.\r\n");
        let whole = b"+OK\r\nA: 1\r\nB: 2\r\n\r\none\r\n..two\r\nthree\r\n.\r\n";
        assert_eq!(top(3), whole);
        assert_eq!(top(u64::MAX), whole);
        // Headers only: all of it, whatever the count.
        assert_eq!(fetch_answer(b"A: 1\r\n", Some(0)), b"+OK\r\nA: 1\r\n.\r\n");
        // A body whose last line has no line end gets one.
        assert_eq!(
            fetch_answer(b"A: 1\r\n\r\nlast", Some(5)),
            b"+OK\r\nA: 1\r\n\r\nlast\r\n.\r\n"
        );
        assert_eq!(fetch_answer(b"", Some(0)), b"+OK\r\n\r\n.\r\n");
    }

    #[test]
    fn reads_only_well_formed_answers_about_the_message_asked() {
        assert_eq!(
            scan_value(b"+OK 3 0000abc\r\n", b"3"),
            Some(&b"0000abc"[..])
        );
        assert_eq!(scan_value(b"+OK 3 120\r\n", b"3"), Some(&b"120"[..]));
        assert_eq!(scan_value(b"+OK 4 0000abc\r\n", b"3"), None);
        assert_eq!(scan_value(b"-ERR no such message\r\n", b"3"), None);
        assert_eq!(scan_value(b"+OK 3\r\n", b"3"), None);
        assert_eq!(scan_value(b"+OK 3 a b\r\n", b"3"), None);
        assert_eq!(message_number(b"12"), Some(&b"12"[..]));
        assert_eq!(message_number(b" 7 "), Some(&b"7"[..]));
        for bad in [&b""[..], b"1 2", b"x", b"-1", b"12345678901", b"1\tx"] {
            assert_eq!(message_number(bad), None, "{bad:?}");
        }
        assert_eq!(top_arguments(b"3 10"), Some((&b"3"[..], 10)));
        assert_eq!(top_arguments(b" 3  0 "), Some((&b"3"[..], 0)));
        for bad in [
            &b"3"[..],
            b"3 x",
            b"3 -1",
            b"3 1 2",
            b"x 1",
            b"3 12345678901",
        ] {
            assert_eq!(top_arguments(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn deleted_is_bounded() {
        let mut deleted = Deleted::default();
        deleted.push(b"1", Some(b"a"));
        deleted.push(b"2", None);
        assert!(deleted.has(b"2") && !deleted.has(b"3"));
        assert_eq!(deleted.take(), Some(vec![b"a".to_vec()]));
        for _ in 0..=MAX_DELETED {
            deleted.push(b"1", Some(b"a"));
        }
        assert!(
            deleted.has(b"3"),
            "past the bound, any message may be deleted"
        );
        assert_eq!(deleted.take(), None);
        assert!(deleted.is_empty());
    }

    #[test]
    fn numbering_is_the_servers_listing_within_its_bound() {
        let mut numbering = Numbering::asking();
        numbering.collect(true, b"1 000001ab\r\n2 000002", false);
        numbering.collect(true, b"cd\r\n.\r\n", true);
        assert_eq!(numbering.message(b"1"), None, "not complete yet");
        numbering.collect(false, b"1 44\r\n2 100\r\n.\r\n", true);
        assert_eq!(numbering.message(b"2"), Some(Some((&b"000002cd"[..], 100))));
        assert_eq!(numbering.message(b"1"), Some(Some((&b"000001ab"[..], 44))));
        assert_eq!(numbering.message(b"3"), Some(None));
        assert_eq!(numbering.message(b"01"), Some(None));
        let mut large = Numbering::asking();
        large.collect(true, &vec![b'x'; MAX_NUMBERING + 1], true);
        assert!(matches!(large, Numbering::PerMessage));
    }
}
