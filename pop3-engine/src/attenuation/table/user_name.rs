//! Usernames as the exact bytes a client sent, short ones stored inside the key.

use std::{
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
};

/// Longest username kept inside the key itself (longer ones get an allocation of their own).
/// 22 bytes keep [`UserKey`] at 56 bytes, so its `Arc` still fits an 80-byte malloc chunk.
const INLINE_NAME: usize = 22;

/// A username as the exact bytes a client sent (no lossy text conversion, so two byte
/// strings never share an entry): stored inline when at most 22 bytes, boxed otherwise.
/// It derefs to, and compares, orders and hashes exactly like, the bytes it holds;
/// it prints them with control characters and backslashes escaped.
#[derive(Clone)]
pub struct UserName(Name);

#[derive(Clone)]
enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Boxed(Box<[u8]>),
}

impl UserName {
    /// The username's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Name::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Name::Boxed(s) => s,
        }
    }
}

impl From<&str> for UserName {
    fn from(s: &str) -> Self {
        Self::from(s.as_bytes())
    }
}

impl From<&[u8]> for UserName {
    fn from(s: &[u8]) -> Self {
        Self(if s.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..s.len()].copy_from_slice(s);
            Name::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Name::Boxed(s.into())
        })
    }
}

impl Deref for UserName {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for UserName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for UserName {}

impl PartialOrd for UserName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for UserName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for UserName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_bytes().escape_ascii(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_behave_like_bytes_inline_or_boxed() {
        use std::hash::BuildHasher;
        let hasher = std::hash::RandomState::new();
        for s in [
            "",
            "a",
            "alice",
            "x".repeat(22).as_str(),
            "y".repeat(23).as_str(),
        ] {
            let n = UserName::from(s);
            assert_eq!(&*n, s.as_bytes());
            assert_eq!(format!("{n:?} {n}"), format!("{s:?} {s}"));
            assert_eq!(hasher.hash_one(&n), hasher.hash_one(s.as_bytes()));
        }
        // Not text: kept exactly, printed escaped, never equal to a lossy look-alike.
        let raw = UserName::from(&b"\xe9\x1b[2J\\"[..]);
        assert_eq!(raw.to_string(), "\\xe9\\x1b[2J\\\\");
        assert_ne!(raw, UserName::from("\u{fffd}\u{1b}[2J\\"));
        let (short, long) = (UserName::from("b"), UserName::from("a".repeat(30).as_str()));
        assert_eq!(short.cmp(&long), "b".cmp(&"a".repeat(30)));
        assert!(matches!(
            UserName::from("x".repeat(22).as_str()).0,
            Name::Inline { .. }
        ));
        assert!(matches!(
            UserName::from("x".repeat(23).as_str()).0,
            Name::Boxed(_)
        ));
    }
}
