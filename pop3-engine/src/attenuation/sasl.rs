//! SASL PLAIN (RFC 4616) credentials, the one mechanism the engine understands.

/// The identity and password of a SASL PLAIN message.
pub struct PlainCredentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl Drop for PlainCredentials {
    fn drop(&mut self) {
        self.password.fill(0);
    }
}

/// Decodes a base64 PLAIN message `authzid NUL authcid NUL passwd`.
///
/// `None` when it is malformed or asks to act as someone else (a non-empty authzid
/// other than the user): only the server can judge that, so such logins are tunnelled.
pub fn parse_plain(b64: &[u8]) -> Option<PlainCredentials> {
    let mut raw = decode_base64(b64)?;
    let creds = (|| {
        let mut parts = raw.splitn(3, |&b| b == 0);
        let (authz, authc, pass) = (parts.next()?, parts.next()?, parts.next()?);
        if authc.is_empty() || !(authz.is_empty() || authz == authc) {
            return None;
        }
        Some(PlainCredentials {
            user: String::from_utf8(authc.to_vec()).ok()?,
            password: pass.to_vec(),
        })
    })();
    raw.fill(0);
    creds
}

/// Standard base64 with padding (RFC 4648 section 4), as SASL in POP3 uses.
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (i, quad) in text.chunks(4).enumerate() {
        let last = i + 1 == text.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_credentials() {
        // "\0alice\0s3 cret"
        let c = parse_plain(b"AGFsaWNlAHMzIGNyZXQ=").unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_slice()),
            ("alice", &b"s3 cret"[..])
        );
        // "alice\0alice\0pw"
        assert_eq!(parse_plain(b"YWxpY2UAYWxpY2UAcHc=").unwrap().user, "alice");
        // "bob\0alice\0pw": acting as someone else
        assert!(parse_plain(b"Ym9iAGFsaWNlAHB3").is_none());
        assert!(parse_plain(b"not base64!").is_none());
        assert!(parse_plain(b"YWxpY2U=").is_none(), "no NULs");
    }

    #[test]
    fn decodes_base64_padding() {
        assert_eq!(decode_base64(b"").unwrap(), b"");
        assert_eq!(decode_base64(b"Zg==").unwrap(), b"f");
        assert_eq!(decode_base64(b"Zm8=").unwrap(), b"fo");
        assert_eq!(decode_base64(b"Zm9v").unwrap(), b"foo");
        assert!(decode_base64(b"Zg==Zm9v").is_none());
    }
}
