//! `xtask ideal-responder` (internal): the bench's ceiling for attenuated checks. A POP3
//! responder on kernel TCP that accepts any login and answers every maildrop as empty
//! ("+OK 0 0"): what an attenuated check would cost if the edge had nothing to do but answer.
//! One tokio thread, like the daemon's one dataplane thread. Run by `cargo xtask bench` inside
//! the server namespace.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A command line longer than this ends the session (RFC 1939 allows 255 bytes).
const MAX_LINE: u64 = 512;
/// A session is closed after this long.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct IdealResponderArgs {
    /// Address to listen on, e.g. 203.0.113.2:1100.
    #[arg(long)]
    listen: SocketAddr,
}

pub fn run(a: IdealResponderArgs) -> Result<ExitCode> {
    crate::accept_loop::serve(a.listen, IDLE, session)
}

/// The reply to one command line: everything succeeds and every maildrop is empty.
fn reply(line: &[u8]) -> &'static [u8] {
    let verb = line
        .split(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .next();
    match verb.map(|v| v.to_ascii_uppercase()).as_deref() {
        Some(b"STAT") => b"+OK 0 0\r\n",
        Some(b"LIST" | b"UIDL") if line.trim_ascii().len() == 4 => b"+OK\r\n.\r\n",
        Some(b"LIST" | b"UIDL" | b"RETR" | b"TOP" | b"DELE") => b"-ERR no such message\r\n",
        Some(b"QUIT") => b"+OK bye\r\n",
        _ => b"+OK\r\n",
    }
}

async fn session(s: TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"+OK ideal responder ready\r\n").await?;
    let mut line = Vec::with_capacity(64);
    loop {
        line.clear();
        let n = (&mut r).take(MAX_LINE).read_until(b'\n', &mut line).await?;
        if n == 0 || !line.ends_with(b"\n") {
            return Ok(());
        }
        let out = reply(&line);
        w.write_all(out).await?;
        if out.starts_with(b"+OK bye") {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reply;

    #[test]
    fn every_maildrop_is_empty_and_every_login_accepted() {
        assert_eq!(reply(b"USER anyone\r\n"), b"+OK\r\n");
        assert_eq!(reply(b"PASS wrong\r\n"), b"+OK\r\n");
        assert_eq!(reply(b"stat\r\n"), b"+OK 0 0\r\n");
        assert_eq!(reply(b"UIDL\r\n"), b"+OK\r\n.\r\n");
        assert_eq!(reply(b"LIST 1\r\n"), b"-ERR no such message\r\n");
        assert_eq!(reply(b"QUIT\r\n"), b"+OK bye\r\n");
    }
}
