//! Bytes that may hold a password: wiped when dropped, never printed.

use std::fmt;

use zeroize::Zeroizing;

/// Client bytes that may carry credentials (a PASS line, SASL data, held input).
///
/// `Debug` prints `<redacted>`, so a session dumped into a log at trace level shows no
/// password; the buffer is zeroed when dropped or cleared.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// The bytes, for sending them where they belong.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends bytes. Growing first zeroes the old buffer: no copy is left behind.
    pub fn extend(&mut self, more: &[u8]) {
        if self.0.capacity() - self.0.len() < more.len() {
            let mut grown = Zeroizing::new(Vec::with_capacity((self.0.len() + more.len()) * 2));
            grown.extend_from_slice(&self.0);
            self.0 = grown;
        }
        self.0.extend_from_slice(more);
    }

    /// Drops the first `n` bytes (zeroing what moves).
    pub fn consume(&mut self, n: usize) {
        let len = self.0.len();
        self.0.copy_within(n.min(len).., 0);
        let keep = len - n.min(len);
        self.0[keep..].fill(0);
        self.0.truncate(keep);
    }

    /// Takes the bytes out, leaving this empty.
    pub fn take(&mut self) -> Secret {
        std::mem::take(self)
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_bytes() {
        let mut s = Secret::from(&b"PASS hunter2\r\n"[..]);
        s.extend(b"more");
        assert_eq!(format!("{s:?}"), "<redacted>");
        s.consume(5);
        assert_eq!(s.expose(), b"hunter2\r\nmore");
        assert_eq!(s.take().expose(), b"hunter2\r\nmore");
        assert!(s.is_empty());
    }
}
