//! The prefetch's POP3 client: the few commands it needs (USER/PASS, UIDL, LIST,
//! RETR, QUIT; never DELE), every answer bounded in length and waited for at most a
//! timeout, so a slow, dead or hostile server is an error, never a hang or a crash.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use pop3_engine::secret::Secret;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest status or listing line (RFC 1939: 512 octets with the CRLF).
const MAX_LINE: u64 = 512;
/// Most messages a listing may name.
pub const MAX_MESSAGES: usize = 100_000;

/// Why a prefetch session ended early.
#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error("the server did not answer within the timeout")]
    Timeout,
    #[error("the server closed the connection")]
    Closed,
    #[error("a line longer than the limit")]
    LineTooLong,
    #[error("the master-user login was refused: {0}")]
    LoginRefused(String),
    #[error("the server refused {command}: {line}")]
    Refused { command: &'static str, line: String },
    #[error("malformed answer to {0}")]
    Malformed(&'static str),
    #[error("the server took {0:?} to answer, more than max-latency")]
    Slow(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A message as the server lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub number: u32,
    pub uidl: Vec<u8>,
    pub size: u64,
}

/// One POP3 session with the mail server.
pub struct Client<S> {
    stream: BufReader<S>,
    timeout: Duration,
    max_latency: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting.
    pub async fn greet(
        stream: S,
        timeout: Duration,
        max_latency: Duration,
    ) -> Result<Self, Pop3Error> {
        let mut client = Self {
            stream: BufReader::new(stream),
            timeout,
            max_latency,
        };
        let started = Instant::now();
        let line = client.line(MAX_LINE).await?;
        client.check_latency(started)?;
        ok(&line, "the greeting")?;
        Ok(client)
    }

    /// `USER login`, `PASS password`: a refusal is [`Pop3Error::LoginRefused`] with the
    /// server's words (never the password).
    pub async fn login(&mut self, login: &[u8], password: &Secret) -> Result<(), Pop3Error> {
        let mut user = b"USER ".to_vec();
        user.extend_from_slice(login);
        user.extend_from_slice(b"\r\n");
        let line = self.command(&user).await?;
        if !line.starts_with(b"+OK") {
            return Err(Pop3Error::LoginRefused(printable(&line)));
        }
        let mut pass = Secret::from(&b"PASS "[..]);
        pass.extend(password.expose());
        pass.extend(b"\r\n");
        let line = self.command(pass.expose()).await?;
        if !line.starts_with(b"+OK") {
            return Err(Pop3Error::LoginRefused(printable(&line)));
        }
        Ok(())
    }

    /// `UIDL` and `LIST`: every message with its unique id and size, by number.
    pub async fn listing(&mut self) -> Result<Vec<Listed>, Pop3Error> {
        let uidls = self.multiline_pairs(b"UIDL\r\n", "UIDL").await?;
        let sizes: HashMap<u32, Vec<u8>> = self
            .multiline_pairs(b"LIST\r\n", "LIST")
            .await?
            .into_iter()
            .collect();
        let mut listed = Vec::with_capacity(uidls.len());
        for (number, uidl) in uidls {
            let size = sizes
                .get(&number)
                .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                .ok_or(Pop3Error::Malformed("LIST"))?;
            listed.push(Listed { number, uidl, size });
        }
        Ok(listed)
    }

    /// `RETR n` of a message listed with `size`: the message with dot-stuffing
    /// removed, which must be exactly `size` bytes.
    pub async fn retr(&mut self, number: u32, size: u64) -> Result<Vec<u8>, Pop3Error> {
        let line = self
            .command(format!("RETR {number}\r\n").as_bytes())
            .await?;
        ok(&line, "RETR")?;
        // Dot-stuffing adds at most one byte per line: the answer is bounded by twice
        // the size and the end line.
        let mut budget = size * 2 + 5;
        let mut message = Vec::with_capacity(size.min(1 << 20) as usize);
        loop {
            let line = self.line(budget).await?;
            budget -= line.len() as u64;
            if line == b".\r\n" {
                break;
            }
            if !line.ends_with(b"\r\n") {
                return Err(Pop3Error::Malformed("RETR"));
            }
            message.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
            if message.len() as u64 > size {
                return Err(Pop3Error::Malformed("RETR (larger than listed)"));
            }
        }
        if message.len() as u64 != size {
            return Err(Pop3Error::Malformed("RETR (another size than listed)"));
        }
        Ok(message)
    }

    /// `QUIT`: the session ends and the server commits nothing (nothing was deleted).
    pub async fn quit(mut self) -> Result<(), Pop3Error> {
        let line = self.command(b"QUIT\r\n").await?;
        ok(&line, "QUIT")
    }

    async fn command(&mut self, command: &[u8]) -> Result<Vec<u8>, Pop3Error> {
        let started = Instant::now();
        let write = async {
            self.stream.get_mut().write_all(command).await?;
            self.stream.get_mut().flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| Pop3Error::Timeout)??;
        let line = self.line(MAX_LINE).await?;
        self.check_latency(started)?;
        Ok(line)
    }

    fn check_latency(&self, started: Instant) -> Result<(), Pop3Error> {
        let took = started.elapsed();
        if took > self.max_latency {
            return Err(Pop3Error::Slow(took));
        }
        Ok(())
    }

    /// One line, CRLF included, of at most `limit` bytes.
    async fn line(&mut self, limit: u64) -> Result<Vec<u8>, Pop3Error> {
        let mut line = Vec::new();
        let mut bounded = (&mut self.stream).take(limit);
        let read = bounded.read_until(b'\n', &mut line);
        let n = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| Pop3Error::Timeout)??;
        if n == 0 {
            return Err(Pop3Error::Closed);
        }
        if !line.ends_with(b"\n") {
            return Err(if n as u64 == limit {
                Pop3Error::LineTooLong
            } else {
                Pop3Error::Closed
            });
        }
        Ok(line)
    }

    /// A multi-line answer of `number value` lines, at most [`MAX_MESSAGES`].
    async fn multiline_pairs(
        &mut self,
        command: &[u8],
        name: &'static str,
    ) -> Result<Vec<(u32, Vec<u8>)>, Pop3Error> {
        let line = self.command(command).await?;
        ok(&line, name)?;
        let mut pairs = Vec::new();
        loop {
            let line = self.line(MAX_LINE).await?;
            if line == b".\r\n" {
                return Ok(pairs);
            }
            if pairs.len() == MAX_MESSAGES {
                return Err(Pop3Error::Malformed(name));
            }
            let text = line
                .strip_suffix(b"\r\n")
                .ok_or(Pop3Error::Malformed(name))?;
            let mut fields = text.split(|&b| b == b' ');
            let number = fields
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
                .ok_or(Pop3Error::Malformed(name))?;
            let value = fields
                .next()
                .filter(|v| !v.is_empty())
                .ok_or(Pop3Error::Malformed(name))?;
            pairs.push((number, value.to_vec()));
        }
    }
}

fn ok(line: &[u8], command: &'static str) -> Result<(), Pop3Error> {
    if line.starts_with(b"+OK") {
        Ok(())
    } else {
        Err(Pop3Error::Refused {
            command,
            line: printable(line),
        })
    }
}

/// A server's line for a log: printable ASCII, at most 120 characters.
fn printable(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    line.iter()
        .take(120)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const T: Duration = Duration::from_secs(2);

    /// Runs `client` against a server that answers with `script` (what it sends,
    /// all at once) and returns what the client wrote and its result.
    async fn against<R>(
        script: &[u8],
        client: impl AsyncFnOnce(Client<tokio::io::DuplexStream>) -> Result<R, Pop3Error>,
    ) -> (Vec<u8>, Result<R, Pop3Error>) {
        let (ours, mut theirs) = duplex(1 << 20);
        theirs.write_all(script).await.unwrap();
        // The server says nothing more, then closes.
        theirs.shutdown().await.unwrap();
        let result = match Client::greet(ours, T, T).await {
            Ok(c) => client(c).await,
            Err(e) => Err(e),
        };
        let mut written = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_millis(50), theirs.read_to_end(&mut written)).await;
        (written, result)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_prefetch_session_lists_retrieves_unstuffed_and_quits_without_deleting() {
        rt().block_on(async {
            let script = b"+OK ready\r\n+OK\r\n+OK logged in\r\n\
                +OK\r\n1 uid-a\r\n2 uid-b\r\n.\r\n\
                +OK\r\n1 6\r\n2 3\r\n.\r\n\
                +OK 6 octets\r\n..dot\r\n.\r\n\
                +OK bye\r\n";
            let (written, result) = against(script, async |mut c| {
                c.login(b"alice*edge", &Secret::from(&b"pw"[..])).await?;
                let listed = c.listing().await?;
                let first = c.retr(listed[0].number, listed[0].size).await?;
                c.quit().await?;
                Ok((listed, first))
            })
            .await;
            let (listed, first) = result.unwrap();
            assert_eq!(
                listed[1],
                Listed {
                    number: 2,
                    uidl: b"uid-b".to_vec(),
                    size: 3
                }
            );
            assert_eq!(first, b".dot\r\n");
            assert_eq!(
                written,
                b"USER alice*edge\r\nPASS pw\r\nUIDL\r\nLIST\r\nRETR 1\r\nQUIT\r\n"
            );
        });
    }

    #[test]
    fn a_refused_master_login_says_what_the_server_said_not_the_password() {
        rt().block_on(async {
            let script = b"+OK ready\r\n+OK\r\n-ERR [AUTH] Authentication failed.\r\n";
            let (_, result) = against(script, async |mut c| {
                c.login(b"alice*edge", &Secret::from(&b"hunter2"[..])).await
            })
            .await;
            let error = result.unwrap_err().to_string();
            assert!(error.contains("Authentication failed"), "{error}");
            assert!(!error.contains("hunter2"));
        });
    }

    #[test]
    fn hostile_answers_are_errors_not_hangs_or_unbounded_buffers() {
        rt().block_on(async {
            // A body larger than LIST said.
            let script = b"+OK\r\n+OK\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n.\r\n";
            let (_, r) = against(script, async |mut c| c.retr(1, 5).await).await;
            assert!(
                matches!(
                    r,
                    Err(Pop3Error::Malformed(_)) | Err(Pop3Error::LineTooLong)
                ),
                "{r:?}"
            );
            // A body of another size.
            let (_, r) = against(b"+OK\r\n+OK\r\nab\r\n.\r\n", async |mut c| {
                c.retr(1, 5).await
            })
            .await;
            assert!(matches!(r, Err(Pop3Error::Malformed(_))), "{r:?}");
            // An endless status line.
            let long = [b"+OK ".as_slice(), &[b'x'; 2000]].concat();
            let (_, r) = against(&long, async |_| Ok(())).await;
            assert!(matches!(r, Err(Pop3Error::LineTooLong)), "{r:?}");
            // A malformed listing.
            let (_, r) = against(b"+OK\r\n+OK\r\nnot a number\r\n.\r\n", async |mut c| {
                c.listing().await
            })
            .await;
            assert!(matches!(r, Err(Pop3Error::Malformed("UIDL"))), "{r:?}");
            // A server that closes mid-answer.
            let (_, r) = against(b"+OK\r\n+OK\r\npart", async |mut c| c.retr(1, 100).await).await;
            assert!(matches!(r, Err(Pop3Error::Closed)), "{r:?}");
        });
    }

    #[test]
    fn a_silent_server_times_out() {
        rt().block_on(async {
            let (ours, _theirs) = duplex(64);
            let r = Client::greet(ours, Duration::from_millis(50), T).await;
            assert!(matches!(r, Err(Pop3Error::Timeout)));
        });
    }
}
