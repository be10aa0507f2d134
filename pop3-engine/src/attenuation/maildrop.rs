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

use crate::codec::trim_eol;

/// Largest snapshot kept for one user (STAT, LIST and UIDL answers together); a larger
/// maildrop is simply not answered locally.
pub const MAX_MAILDROP: usize = 64 * 1024;

/// The server's STAT, LIST and UIDL answers of one session, as wire bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Maildrop {
    /// The three answers one after the other, in one allocation: a snapshot per user who
    /// keeps mail on the server is what the table holds most of.
    wire: Box<[u8]>,
    /// Where LIST's answer starts and UIDL's starts (at most [`MAX_MAILDROP`]).
    list_at: u32,
    uidl_at: u32,
}

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
        let maildrop = Self {
            wire: [stat, list, uidl].concat().into(),
            list_at: stat.len() as u32,
            uidl_at: (stat.len() + list.len()) as u32,
        };
        let count = maildrop.count()?;
        (listing(maildrop.list()).count() == count && listing(maildrop.uidl()).count() == count)
            .then_some(maildrop)
    }

    /// Memory held, for the table's budget.
    pub fn bytes(&self) -> usize {
        self.wire.len()
    }

    /// Number of messages, from the STAT answer.
    pub fn count(&self) -> Option<usize> {
        let text = trim_eol(self.stat());
        let count = text.split(|&b| b == b' ').nth(1)?;
        std::str::from_utf8(count).ok()?.parse().ok()
    }

    /// The server's answer to STAT.
    pub fn stat(&self) -> &[u8] {
        &self.wire[..self.list_at as usize]
    }

    /// The server's answer to LIST without argument.
    pub fn list(&self) -> &[u8] {
        &self.wire[self.list_at as usize..self.uidl_at as usize]
    }

    /// The server's answer to UIDL without argument.
    pub fn uidl(&self) -> &[u8] {
        &self.wire[self.uidl_at as usize..]
    }

    /// The answer to `LIST n` (`uidl`: `UIDL n`), as RFC 1939 writes it; `None` for a
    /// message that does not exist.
    pub fn one(&self, uidl: bool, n: &[u8]) -> Option<Vec<u8>> {
        let source = if uidl { self.uidl() } else { self.list() };
        let line = listing(source).find(|line| line.split(|&b| b == b' ').next() == Some(n))?;
        let mut answer = b"+OK ".to_vec();
        answer.extend_from_slice(line);
        answer.extend_from_slice(b"\r\n");
        Some(answer)
    }

    /// Whether every message of the snapshot still has its number in the server's UIDL
    /// answer now (mail that arrived since comes after them and changes nothing).
    pub fn still_numbered(&self, uidl_now: &[u8]) -> bool {
        let mut now = listing(uidl_now);
        listing(self.uidl()).all(|line| now.next() == Some(line))
    }
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
        assert_eq!((m.stat(), m.list(), m.uidl()), (STAT, LIST, UIDL));
        assert_eq!(m.count(), Some(2));
        assert_eq!(m.one(false, b"2").unwrap(), b"+OK 2 2000\r\n");
        assert_eq!(m.one(true, b"1").unwrap(), b"+OK 1 000000017ab\r\n");
        assert_eq!(m.one(false, b"3"), None);
        assert_eq!(m.one(true, b"0"), None);
        assert_eq!(
            format!("{m:?}"),
            "Maildrop { messages: Some(2), bytes: 86 }"
        );
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
