//! A maildrop as the server last showed it, for clients that leave their mail there.
//!
//! A client that keeps its mail on the server never sees an empty maildrop, so the
//! time rule alone would never spare the server its checks. What such a client asks
//! (STAT, LIST, UIDL: "is there anything new?") the server already answered in the
//! last passed-through session: the snapshot keeps those answers as the wire bytes the
//! server sent, so a local answer is byte-identical to the server's. Anything that
//! needs a message (RETR, TOP, DELE) goes to the server, after its UIDL list is checked
//! against the snapshot: the numbering may have changed since (another session deleted
//! mail), and a stale numbering must never fetch or delete the wrong message.
//!
//! A LIST or UIDL answer whose lines are exactly `n value` for n = 1, 2, ... (Dovecot's,
//! and RFC 1939's own form) is kept packed: its status line and the values alone, each
//! followed by `\n`. The numbers, the CRLFs and the `.` line are written back when it is
//! answered, byte for byte the same; any other answer is kept as sent. A snapshot of 20
//! messages takes about a fifth less.

use std::borrow::Cow;

use crate::codec::trim_eol;

/// Largest snapshot kept for one user (STAT, LIST and UIDL answers together); a larger
/// maildrop is simply not answered locally.
pub const MAX_MAILDROP: usize = 64 * 1024;

/// The server's STAT, LIST and UIDL answers of one session, as wire bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Maildrop {
    /// The three answers one after the other (LIST's and UIDL's packed where they can
    /// be), in one allocation: a snapshot per user who keeps mail on the server is what
    /// the table holds most of.
    wire: Box<[u8]>,
    /// Where LIST's answer starts and UIDL's starts (at most [`MAX_MAILDROP`]), with
    /// [`PACKED`] set when that answer is packed.
    list_at: u32,
    uidl_at: u32,
}

/// The flag of [`Maildrop`]'s offsets that says the answer there is packed.
const PACKED: u32 = 1 << 31;

impl std::fmt::Debug for Maildrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maildrop")
            .field("messages", &self.count())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Maildrop {
    /// A snapshot from the server's complete answers (status line and, for LIST and
    /// UIDL, the body up to and including its `.` line); `None` when it would be larger
    /// than [`MAX_MAILDROP`] or the answers do not agree on the number of messages.
    pub fn new(stat: &[u8], list: &[u8], uidl: &[u8]) -> Option<Self> {
        if stat.len() + list.len() + uidl.len() > MAX_MAILDROP {
            return None;
        }
        let count = count(stat)?;
        if listing(list).count() != count || listing(uidl).count() != count {
            return None;
        }
        let mut wire = stat.to_vec();
        let mut append = |answer: &[u8]| {
            let at = wire.len() as u32;
            match pack(answer) {
                Some(packed) => {
                    wire.extend_from_slice(&packed);
                    at | PACKED
                }
                None => {
                    wire.extend_from_slice(answer);
                    at
                }
            }
        };
        let list_at = append(list);
        let uidl_at = append(uidl);
        Some(Self {
            wire: wire.into(),
            list_at,
            uidl_at,
        })
    }

    /// Memory held, for the table's budget.
    pub fn bytes(&self) -> usize {
        self.wire.len()
    }

    /// Number of messages, from the STAT answer.
    pub fn count(&self) -> Option<usize> {
        count(self.stat())
    }

    /// The server's answer to STAT.
    pub fn stat(&self) -> &[u8] {
        &self.wire[..(self.list_at & !PACKED) as usize]
    }

    /// The server's answer to LIST without argument.
    pub fn list(&self) -> Cow<'_, [u8]> {
        self.answer(self.list_at, self.uidl_at)
    }

    /// The server's answer to UIDL without argument.
    pub fn uidl(&self) -> Cow<'_, [u8]> {
        self.answer(self.uidl_at, self.wire.len() as u32)
    }

    /// The answer stored from `at` to `end` (offsets as kept, flag included).
    fn answer(&self, at: u32, end: u32) -> Cow<'_, [u8]> {
        let stored = &self.wire[(at & !PACKED) as usize..(end & !PACKED) as usize];
        if at & PACKED == 0 {
            Cow::Borrowed(stored)
        } else {
            Cow::Owned(unpack(stored))
        }
    }

    /// The answer to `LIST n` (`uidl`: `UIDL n`), as RFC 1939 writes it; `None` for a
    /// message that does not exist.
    pub fn one(&self, uidl: bool, n: &[u8]) -> Option<Vec<u8>> {
        let source = if uidl { self.uidl() } else { self.list() };
        let line = listing(&source).find(|line| line.split(|&b| b == b' ').next() == Some(n))?;
        let mut answer = b"+OK ".to_vec();
        answer.extend_from_slice(line);
        answer.extend_from_slice(b"\r\n");
        Some(answer)
    }

    /// Whether every message of the snapshot still has its number in the server's UIDL
    /// answer now (mail that arrived since comes after them and changes nothing).
    pub fn still_numbered(&self, uidl_now: &[u8]) -> bool {
        let mut now = listing(uidl_now);
        listing(&self.uidl()).all(|line| now.next() == Some(line))
    }
}

/// The number of messages of a STAT answer.
fn count(stat: &[u8]) -> Option<usize> {
    let count = trim_eol(stat).split(|&b| b == b' ').nth(1)?;
    std::str::from_utf8(count).ok()?.parse().ok()
}

/// A LIST or UIDL answer packed: its status line, then each line's value and `\n`, when
/// every line is exactly `n value` CRLF for n = 1, 2, ... and the answer ends with its
/// `.` line; `None` for any other answer.
fn pack(answer: &[u8]) -> Option<Vec<u8>> {
    let status_end = answer.iter().position(|&b| b == b'\n')? + 1;
    let mut packed = answer[..status_end].to_vec();
    let mut rest = &answer[status_end..];
    let mut n = 0u32;
    while rest != b".\r\n" {
        n += 1;
        let line_end = rest.iter().position(|&b| b == b'\n')?;
        let value = rest[..line_end]
            .strip_suffix(b"\r")?
            .strip_prefix(format!("{n} ").as_bytes())?;
        if value.is_empty() || value.contains(&b'\r') {
            return None;
        }
        packed.extend_from_slice(value);
        packed.push(b'\n');
        rest = &rest[line_end + 1..];
    }
    Some(packed)
}

/// The answer [`pack`] packed, byte for byte.
fn unpack(packed: &[u8]) -> Vec<u8> {
    let status_end = packed.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut answer = Vec::with_capacity(packed.len() * 5 / 4 + 8);
    answer.extend_from_slice(&packed[..status_end]);
    // Every value is followed by its `\n`.
    for (i, value) in packed[status_end..]
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
    {
        answer.extend_from_slice(format!("{} ", i + 1).as_bytes());
        answer.extend_from_slice(&value[..value.len() - 1]);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b".\r\n");
    answer
}

/// The `n value` lines of a LIST or UIDL answer (status line and `.` line skipped).
fn listing(answer: &[u8]) -> impl Iterator<Item = &[u8]> {
    answer
        .split_inclusive(|&b| b == b'\n')
        .skip(1)
        .map(trim_eol)
        .take_while(|line| *line != b".")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"+OK 2 3000\r\n";
    const LIST: &[u8] = b"+OK 2 messages:\r\n1 1000\r\n2 2000\r\n.\r\n";
    const UIDL: &[u8] = b"+OK\r\n1 000000017ab\r\n2 000000018cd\r\n.\r\n";

    #[test]
    fn answers_what_the_server_said() {
        let m = Maildrop::new(STAT, LIST, UIDL).unwrap();
        assert_eq!((m.stat(), &*m.list(), &*m.uidl()), (STAT, LIST, UIDL));
        assert_eq!(m.count(), Some(2));
        assert_eq!(m.one(false, b"2").unwrap(), b"+OK 2 2000\r\n");
        assert_eq!(m.one(true, b"1").unwrap(), b"+OK 1 000000017ab\r\n");
        assert_eq!(m.one(false, b"3"), None);
        assert_eq!(m.one(true, b"0"), None);
        assert_eq!(
            format!("{m:?}"),
            "Maildrop { messages: Some(2), bytes: 68 }"
        );
    }

    /// Answers in RFC 1939's own form are kept packed, any other as sent; every one is
    /// answered byte for byte as the server sent it.
    #[test]
    fn packed_or_not_the_answers_come_back_exactly() {
        let packed = Maildrop::new(STAT, LIST, UIDL).unwrap();
        assert!(packed.list_at & packed.uidl_at & PACKED != 0);
        assert!(packed.bytes() < STAT.len() + LIST.len() + UIDL.len());
        let empty = Maildrop::new(b"+OK 0 0\r\n", b"+OK\r\n.\r\n", b"+OK\r\n.\r\n").unwrap();
        assert_eq!(
            (&*empty.list(), &*empty.uidl()),
            (&b"+OK\r\n.\r\n"[..], &b"+OK\r\n.\r\n"[..])
        );
        let kept_as_sent: [(&[u8], &str); 6] = [
            (
                b"+OK\r\n01 1000\r\n2 2000\r\n.\r\n",
                "a number not as written",
            ),
            (b"+OK\r\n2 1000\r\n1 2000\r\n.\r\n", "numbers out of order"),
            (b"+OK\r\n1 1000\n2 2000\r\n.\r\n", "a bare LF"),
            (b"+OK\r\n1 1000\r\n2 \r\n.\r\n", "an empty value"),
            (b"+OK\r\n1 10\r00\r\n2 2000\r\n.\r\n", "a CR in a value"),
            (
                b"+OK\r\n1 1000\r\n2 2000\r\n.\r\nX",
                "bytes after the dot line",
            ),
        ];
        // A value may start with a space: it is still written back as it was.
        let spaced = Maildrop::new(STAT, b"+OK\r\n1  1000\r\n2 2000\r\n.\r\n", UIDL).unwrap();
        assert_ne!(spaced.list_at & PACKED, 0);
        assert_eq!(&*spaced.list(), b"+OK\r\n1  1000\r\n2 2000\r\n.\r\n");
        for (list, why) in kept_as_sent {
            let m = Maildrop::new(STAT, list, UIDL).unwrap();
            assert_eq!(m.list_at & PACKED, 0, "{why}");
            assert_eq!(&*m.list(), list, "{why}");
            assert_eq!((m.stat(), &*m.uidl()), (STAT, UIDL), "{why}");
        }
        assert_eq!(packed.one(true, b"2").unwrap(), b"+OK 2 000000018cd\r\n");
    }

    proptest::proptest! {
        /// Whatever the server sent, a packed answer unpacks to exactly those bytes.
        #[test]
        fn packing_never_changes_a_byte(
            values in proptest::collection::vec("[ 0-9A-Fa-f\r\n.]{0,6}", 0..6),
            skew in 0usize..3,
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let mut answer = b"+OK\r\n".to_vec();
            for (i, v) in values.iter().enumerate() {
                answer.extend_from_slice(format!("{} {v}\r\n", i + 1 + skew / 2).as_bytes());
            }
            answer.extend_from_slice(b".\r\n");
            for bytes in [answer, [&raw[..], b".\r\n"].concat()] {
                if let Some(packed) = pack(&bytes) {
                    proptest::prop_assert_eq!(unpack(&packed), bytes);
                }
            }
        }
    }

    #[test]
    fn tells_a_changed_numbering() {
        let m = Maildrop::new(STAT, LIST, UIDL).unwrap();
        assert!(m.still_numbered(b"+OK 2 messages\r\n1 000000017ab\r\n2 000000018cd\r\n.\r\n"));
        // New mail comes after: nothing the client saw moved.
        assert!(
            m.still_numbered(b"+OK\r\n1 000000017ab\r\n2 000000018cd\r\n3 000000019ef\r\n.\r\n")
        );
        // Message 1 deleted by another session: 2 became 1.
        assert!(!m.still_numbered(b"+OK\r\n1 000000018cd\r\n.\r\n"));
        assert!(!m.still_numbered(b"+OK\r\n.\r\n"));
    }

    #[test]
    fn refuses_answers_that_disagree_or_are_too_large() {
        assert!(Maildrop::new(b"+OK 3 3000\r\n", LIST, UIDL).is_none());
        assert!(Maildrop::new(STAT, LIST, b"+OK\r\n1 a\r\n.\r\n").is_none());
        let huge = vec![b'x'; MAX_MAILDROP];
        assert!(Maildrop::new(STAT, &huge, UIDL).is_none());
    }
}
