//! Password verifiers: what the table keeps instead of a password.
//!
//! A verifier is two keyed SipHash-2-4 hashes (`siphasher`) of (server, username, password) under a
//! salt drawn at random once per process and never stored anywhere. It only has to
//! answer "same password as the one the server last accepted?" for the life of the
//! process; soft state means a restart simply relearns. Comparison is constant-time.

use std::{hash::Hasher, net::SocketAddr};

use siphasher::sip::SipHasher24;
use zeroize::Zeroize;

/// The per-process secret that keys every verifier.
#[derive(Clone, Copy)]
pub struct Salt([u64; 4]);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

impl Salt {
    /// A salt of four secret keys (the daemon draws them from the OS once per process;
    /// tests fix them for reproducible verifiers).
    pub fn new(keys: [u64; 4]) -> Self {
        Self(keys)
    }

    /// The verifier of `password` for `user` on `server`.
    pub fn verifier(&self, server: SocketAddr, user: &[u8], password: &[u8]) -> Verifier {
        let mut msg = Vec::with_capacity(64 + user.len() + password.len());
        msg.extend_from_slice(server.to_string().as_bytes());
        for part in [user, password] {
            // Length-prefixed, so no two inputs share an encoding.
            msg.extend_from_slice(&(part.len() as u64).to_le_bytes());
            msg.extend_from_slice(part);
        }
        let [a, b, c, d] = self.0;
        let hash = |k0, k1| {
            let mut h = SipHasher24::new_with_keys(k0, k1);
            h.write(&msg);
            h.finish()
        };
        let v = Verifier([hash(a, b), hash(c, d)]);
        msg.zeroize();
        v
    }

    /// A keyed hash of `key`, to pick its shard of the user table (keys of their own, so
    /// it says nothing about any verifier).
    pub(crate) fn shard_hash(&self, key: &super::UserKey) -> u64 {
        use std::hash::Hash;
        let [a, b, c, d] = self.0;
        let mut h = SipHasher24::new_with_keys(a ^ d.rotate_left(17), b ^ c.rotate_left(29));
        key.hash(&mut h);
        h.finish()
    }
}

/// A salted hash of a password the server accepted.
#[derive(Clone, Copy)]
pub struct Verifier([u64; 2]);

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// Equality whose running time does not depend on where the values differ.
    pub fn matches(&self, other: &Verifier) -> bool {
        let diff = (self.0[0] ^ other.0[0]) | (self.0[1] ^ other.0[1]);
        std::hint::black_box(diff) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_tell_passwords_users_and_servers_apart() {
        let salt = Salt::new([1, 2, 3, 4]);
        let a: SocketAddr = "203.0.113.5:110".parse().unwrap();
        let b: SocketAddr = "203.0.113.6:110".parse().unwrap();
        let v = salt.verifier(a, b"alice", b"pw");
        assert!(v.matches(&salt.verifier(a, b"alice", b"pw")));
        assert!(!v.matches(&salt.verifier(a, b"alice", b"pw2")));
        assert!(!v.matches(&salt.verifier(a, b"alicepw", b"")));
        assert!(!v.matches(&salt.verifier(b, b"alice", b"pw")));
        assert!(!v.matches(&Salt::new([1, 2, 3, 5]).verifier(a, b"alice", b"pw")));
    }
}
