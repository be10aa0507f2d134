//! SASL PLAIN (RFC 4616): the one mechanism the interceptor reads.
//!
//! The attenuation engine needs the identity and password to answer a check locally;
//! the command gate needs the decoded fields only to refuse ones that would smuggle
//! line ends or NULs to the server.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

use crate::secret::Secret;

/// The identity and password of a SASL PLAIN message.
pub struct PlainCredentials {
    /// The authentication identity, exactly as the client encoded it.
    pub user: Vec<u8>,
    /// The password; wiped when dropped.
    pub password: Secret,
}

/// Why a PLAIN message is not a plain login of one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainError {
    /// Not base64, or not `authzid NUL authcid NUL passwd`: only the server can say
    /// what it makes of it.
    Malformed,
    /// A non-empty authzid other than the user: acting as someone else (a master-user
    /// login), which only the server can judge.
    ActsAsOther,
    /// A field holds CR, LF or NUL: it could only be meant to break the server's line
    /// or field parsing, so it never goes on.
    ControlCharacter,
}

/// Decodes a base64 PLAIN message `authzid NUL authcid NUL passwd`.
pub fn parse_plain(b64: &[u8]) -> Result<PlainCredentials, PlainError> {
    let raw = Zeroizing::new(STANDARD.decode(b64).map_err(|_| PlainError::Malformed)?);
    let mut parts = raw.splitn(3, |&b| b == 0);
    let (Some(authz), Some(authc), Some(pass)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(PlainError::Malformed);
    };
    // `splitn` leaves any further NUL inside the password.
    if [authz, authc, pass]
        .iter()
        .any(|f| f.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)))
    {
        return Err(PlainError::ControlCharacter);
    }
    if authc.is_empty() {
        return Err(PlainError::Malformed);
    }
    if !(authz.is_empty() || authz == authc) {
        return Err(PlainError::ActsAsOther);
    }
    Ok(PlainCredentials {
        user: authc.to_vec(),
        password: Secret::from(pass),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(raw: &[u8]) -> Vec<u8> {
        STANDARD.encode(raw).into_bytes()
    }

    #[test]
    fn reads_plain_credentials() {
        let c = parse_plain(&b64(b"\0alice\0s3 cret")).unwrap();
        assert_eq!(
            (c.user.as_slice(), c.password.expose()),
            (&b"alice"[..], &b"s3 cret"[..])
        );
        assert_eq!(
            parse_plain(&b64(b"alice\0alice\0pw")).unwrap().user,
            b"alice"
        );
        assert_eq!(
            parse_plain(&b64(b"bob\0alice\0pw")).err(),
            Some(PlainError::ActsAsOther)
        );
        assert_eq!(
            parse_plain(b"not base64!").err(),
            Some(PlainError::Malformed)
        );
        assert_eq!(
            parse_plain(&b64(b"alice")).err(),
            Some(PlainError::Malformed)
        );
        assert_eq!(
            parse_plain(&b64(b"\0\0pw")).err(),
            Some(PlainError::Malformed)
        );
    }

    #[test]
    fn control_characters_in_any_field_are_refused() {
        for raw in [
            &b"\0al\rice\0pw"[..],
            b"\0alice\nUSER victim\0pw",
            b"\0alice\0p\r\nw",
            b"\0alice\0p\0w",
            b"x\ny\0alice\0pw",
        ] {
            assert_eq!(
                parse_plain(&b64(raw)).err(),
                Some(PlainError::ControlCharacter),
                "{raw:?}"
            );
        }
    }
}
