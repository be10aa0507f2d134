//! What a mail server offers (learnt from its CAPA) and what the proxy tells clients.

use crate::codec::{trim_eol, write_multiline};

/// Whether a greeting carries an APOP timestamp (RFC 1939: a msg-id `<...@...>`).
pub fn has_apop_timestamp(greeting: &[u8]) -> bool {
    let Some(open) = greeting.iter().position(|&b| b == b'<') else {
        return false;
    };
    greeting[open..]
        .iter()
        .position(|&b| b == b'>')
        .is_some_and(|close| greeting[open..open + close].contains(&b'@'))
}

/// The capabilities of one mail server that matter to the proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerCaps {
    /// `TOP`
    pub top: bool,
    /// `UIDL`
    pub uidl: bool,
    /// `USER` (USER/PASS logins)
    pub user: bool,
    /// `RESP-CODES`
    pub resp_codes: bool,
    /// `STLS`: the client may switch to TLS (with the server, through the tunnel).
    pub stls: bool,
    /// The server takes `XCLIENT ADDR= PORT=` from us (Dovecot, trusted networks).
    pub xclient: bool,
    /// The server's SASL mechanism list, as it wrote it.
    pub sasl: Option<Box<str>>,
}

impl ServerCaps {
    /// Reads a CAPA body (dot-stuffed wire bytes are fine: no capability starts with `.`).
    pub fn parse(body: &[u8]) -> Self {
        let mut caps = Self::default();
        for line in body.split_inclusive(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(trim_eol(line));
            let mut words = line.split_ascii_whitespace();
            let Some(name) = words.next() else { continue };
            match name.to_ascii_uppercase().as_str() {
                "TOP" => caps.top = true,
                "UIDL" => caps.uidl = true,
                "USER" => caps.user = true,
                "RESP-CODES" => caps.resp_codes = true,
                "STLS" => caps.stls = true,
                "XCLIENT" => caps.xclient = true,
                "SASL" => caps.sasl = Some(words.collect::<Vec<_>>().join(" ").into()),
                _ => {}
            }
        }
        caps
    }

    /// The proxy's own CAPA answer: only what it can honour for this server.
    ///
    /// PIPELINING always (the engine queues commands itself); the rest only when the
    /// server offers it, STLS and SASL included (they are tunnelled to the server, so
    /// hiding them would be a downgrade). XCLIENT is for the proxy, never advertised.
    /// `login_delay`: RFC 2449's LOGIN-DELAY, in whole seconds.
    pub fn local_capa(&self, login_delay: Option<std::time::Duration>, out: &mut Vec<u8>) {
        let mut body = String::new();
        let offered = [
            (self.top, "TOP"),
            (self.uidl, "UIDL"),
            (self.user, "USER"),
            (self.resp_codes, "RESP-CODES"),
            (true, "PIPELINING"),
            (self.stls, "STLS"),
        ];
        for (_, name) in offered.iter().filter(|(on, _)| *on) {
            body.push_str(name);
            body.push_str("\r\n");
        }
        if let Some(mechs) = &self.sasl {
            body.push_str(&format!("SASL {mechs}\r\n"));
        }
        if let Some(delay) = login_delay {
            body.push_str(&format!("LOGIN-DELAY {}\r\n", delay.as_secs()));
        }
        write_multiline(b"+OK Capability list follows", body.as_bytes(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_apop_greetings() {
        assert!(has_apop_timestamp(
            b"+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\r\n"
        ));
        assert!(!has_apop_timestamp(b"+OK Dovecot ready.\r\n"));
        assert!(!has_apop_timestamp(b"+OK <no at sign> x@y\r\n"));
    }

    #[test]
    fn learns_and_tells_capabilities() {
        let caps = ServerCaps::parse(
            b"CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\nXCLIENT\r\n",
        );
        assert!(caps.xclient && caps.stls);
        assert_eq!(caps.sasl.as_deref(), Some("PLAIN LOGIN"));
        let mut out = Vec::new();
        caps.local_capa(None, &mut out);
        assert_eq!(
            out,
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\nPIPELINING\r\nSTLS\r\nSASL PLAIN LOGIN\r\n.\r\n"
        );
        let mut out = Vec::new();
        ServerCaps::parse(b"USER\r\n").local_capa(None, &mut out);
        assert_eq!(
            out,
            b"+OK Capability list follows\r\nUSER\r\nPIPELINING\r\n.\r\n"
        );
    }
}
