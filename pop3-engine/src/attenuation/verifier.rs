//! Password verifiers: what the table keeps instead of a password.
//!
//! A verifier is a 128-bit keyed SipHash-2-4 of (server, username, password) under a
//! salt drawn at random once per process and never stored anywhere. It only has to
//! answer "same password as the one the server last accepted?" for the life of the
//! process; soft state means a restart simply relearns. Comparison is constant-time.

use std::{
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
};

/// The per-process secret that keys every verifier.
#[derive(Clone, Copy)]
pub struct Salt([u64; 4]);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

impl Salt {
    /// A fresh random salt (from the standard library's randomly keyed hasher).
    pub fn random() -> Self {
        let state = RandomState::new();
        Self(std::array::from_fn(|i| state.hash_one(i)))
    }

    /// A fixed salt, for tests that need reproducible verifiers.
    pub fn fixed(keys: [u64; 4]) -> Self {
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
        let v = Verifier([siphash24(a, b, &msg), siphash24(c, d, &msg)]);
        msg.fill(0);
        v
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

/// SipHash-2-4 (Aumasson and Bernstein) with a 128-bit key, 64-bit output.
fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let round = |v: &mut [u64; 4]| {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    };
    let compress = |v: &mut [u64; 4], m: u64| {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    };
    let chunks = msg.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        compress(&mut v, u64::from_le_bytes(chunk.try_into().unwrap()));
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    last[7] = msg.len() as u8;
    compress(&mut v, u64::from_le_bytes(last));
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // Key 00..0f; messages 00, 00 01, ... (the paper's appendix / reference vectors).
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn verifiers_tell_passwords_users_and_servers_apart() {
        let salt = Salt::random();
        let a: SocketAddr = "203.0.113.5:110".parse().unwrap();
        let b: SocketAddr = "203.0.113.6:110".parse().unwrap();
        let v = salt.verifier(a, b"alice", b"pw");
        assert!(v.matches(&salt.verifier(a, b"alice", b"pw")));
        assert!(!v.matches(&salt.verifier(a, b"alice", b"pw2")));
        assert!(!v.matches(&salt.verifier(a, b"alicepw", b"")));
        assert!(!v.matches(&salt.verifier(b, b"alice", b"pw")));
        assert!(!v.matches(&Salt::random().verifier(a, b"alice", b"pw")));
    }
}
