//! Real POP3 clients run inside the client namespace (curl, Python poplib, fetchmail, openssl)
//! and a raw TCP session for arbitrary bytes. Every call is bounded by a timeout.
//!
//! Client quirks: curl logs in with AUTH PLAIN when CAPA offers SASL PLAIN and prints
//! a lone CRLF for an empty listing; fetchmail 6.4 insists on STLS unless its rc file says
//! `sslproto ''`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::topology::{Node, Topology};
use crate::util::{CmdOutput, next_seq, set_mode};

/// Time limit of one client run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `/usr/bin/python3` when present (the apt one), else `python3` from PATH.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("pop3://{addr}/{path}")
}

/// Runs curl against `pop3://addr/path` from the client namespace. `path` empty = LIST,
/// `"1"` = RETR 1. `extra` goes before the URL (e.g. `["--ssl-reqd", "-k"]` for STLS).
pub fn curl(
    topo: &Topology,
    addr: SocketAddr,
    user: &str,
    pass: &str,
    path: &str,
    extra: &[&str],
) -> Result<CmdOutput> {
    let creds = format!("{user}:{pass}");
    let u = url(addr, path);
    let mut args = vec![
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--connect-timeout",
        "10",
        "--max-time",
        "25",
        "-u",
        &creds,
    ];
    args.extend_from_slice(extra);
    args.push(&u);
    topo.exec_with(Node::Client, &args, None, CLIENT_TIMEOUT)
}

/// `curl pop3://addr/` (LIST): the listing, e.g. `"1 123\r\n"`, or `"\r\n"` when empty.
pub fn curl_list(topo: &Topology, addr: SocketAddr, user: &str, pass: &str) -> Result<String> {
    Ok(curl(topo, addr, user, pass, "", &[])?
        .check("curl LIST")?
        .stdout_str())
}

/// `curl pop3://addr/N` (RETR N): the message bytes.
pub fn curl_retr(
    topo: &Topology,
    addr: SocketAddr,
    user: &str,
    pass: &str,
    n: u32,
) -> Result<Vec<u8>> {
    Ok(curl(topo, addr, user, pass, &n.to_string(), &[])?
        .check("curl RETR")?
        .stdout)
}

const POPLIB_SCRIPT: &str = r#"
import json, poplib, ssl, sys
cfg = json.loads(sys.argv[1])
out = []
def s(b):
    return b.decode('latin-1') if isinstance(b, bytes) else str(b)
def step(name, fn):
    try:
        r = fn()
        out.append([name, r])
        return True
    except Exception as e:
        out.append([name, 'EXC ' + type(e).__name__ + ': ' + s(e)])
        return False
def finish():
    print(json.dumps(out))
    sys.exit(0)
p = None
def connect():
    global p
    p = poplib.POP3(cfg['host'], cfg['port'], timeout=cfg['timeout'])
    return s(p.getwelcome())
if not step('welcome', connect): finish()
if cfg.get('capa'):
    step('capa', lambda: sorted(k + (' ' + ' '.join(v) if v else '') for k, v in p.capa().items()))
if cfg.get('stls'):
    def stls():
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        r = s(p.stls(ctx))
        return r + ' [' + p.sock.version() + ']'
    if not step('stls', stls): finish()
if not step('user', lambda: s(p.user(cfg['user']))): finish()
if not step('pass', lambda: s(p.pass_(cfg['pass']))): finish()
step('stat', lambda: '%d %d' % p.stat())
def lst():
    r, lines, _ = p.list()
    return [s(r)] + [s(l) for l in lines]
step('list', lst)
def uidl():
    r, lines, _ = p.uidl()
    return [s(r)] + [s(l) for l in lines]
step('uidl', uidl)
if cfg.get('retr'):
    n = p.stat()[0]
    for i in range(1, n + 1):
        def retr(i=i):
            r, lines, octets = p.retr(i)
            return [s(r), octets] + [s(l) for l in lines]
        step('retr %d' % i, retr)
for i, n in cfg.get('top', []):
    def top(i=i, n=n):
        r, lines, octets = p.top(i, n)
        return [s(r), octets] + [s(l) for l in lines]
    step('top %d %d' % (i, n), top)
for i in cfg.get('dele', []):
    step('dele %d' % i, lambda i=i: s(p.dele(i)))
if cfg.get('quit', True):
    step('quit', lambda: s(p.quit()))
else:
    p.sock.close()
    out.append(['disconnect', 'closed without QUIT'])
finish()
"#;

/// What a poplib session does (see [`poplib`]).
#[derive(Debug, Clone)]
pub struct PoplibOptions {
    /// Ask CAPA first (capabilities listed sorted).
    pub capa: bool,
    /// STLS before logging in (certificate not verified: the test Dovecot's is self-signed).
    pub stls: bool,
    /// RETR every message STAT reports.
    pub retr: bool,
    /// TOP (message, lines) for each pair, after the RETRs.
    pub top: Vec<(u32, u32)>,
    /// DELE these message numbers.
    pub dele: Vec<u32>,
    /// End with QUIT (false: just close the socket).
    pub quit: bool,
    pub timeout_secs: u32,
}

impl Default for PoplibOptions {
    fn default() -> Self {
        Self {
            capa: false,
            stls: false,
            retr: true,
            top: Vec::new(),
            dele: Vec::new(),
            quit: true,
            timeout_secs: 15,
        }
    }
}

/// The result of a poplib session: each step with the server's answer.
#[derive(Debug, Clone)]
pub struct PopTranscript {
    /// (step, answer) in order; an answer is a string, or a list for multi-line responses.
    /// A failed step's answer starts with `EXC <exception>`.
    pub steps: Vec<(String, Value)>,
}

impl PopTranscript {
    /// One line per step: `stat: 1 123`, multi-line answers joined with ` | `.
    /// Identical sessions give identical text (Dovecot's answers carry no timestamps).
    pub fn normalized(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.steps {
            let text = match v {
                Value::String(t) => t.clone(),
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(" | "),
                other => other.to_string(),
            };
            s.push_str(&format!("{k}: {text}\n"));
        }
        s
    }
    pub fn get(&self, step: &str) -> Option<&Value> {
        self.steps.iter().find(|(k, _)| k == step).map(|(_, v)| v)
    }
    /// The answer of a single-line step, e.g. `get_str("pass")`.
    pub fn get_str(&self, step: &str) -> Option<&str> {
        self.get(step).and_then(Value::as_str)
    }
    /// (messages, octets) from STAT, if it succeeded.
    pub fn stat(&self) -> Option<(u64, u64)> {
        let s = self.get_str("stat")?;
        let mut it = s.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
    /// True when no step raised an exception.
    pub fn ok(&self) -> bool {
        !self.normalized().lines().any(|l| {
            l.split_once(": ")
                .is_some_and(|(_, v)| v.starts_with("EXC "))
        })
    }
}

/// Runs a Python poplib session against `addr` from the client namespace.
pub fn poplib(
    topo: &Topology,
    addr: SocketAddr,
    user: &str,
    pass: &str,
    opts: &PoplibOptions,
) -> Result<PopTranscript> {
    let cfg = serde_json::json!({
        "host": addr.ip().to_string(), "port": addr.port(), "user": user, "pass": pass,
        "capa": opts.capa, "stls": opts.stls, "retr": opts.retr, "top": opts.top,
        "dele": opts.dele,
        "quit": opts.quit, "timeout": opts.timeout_secs,
    })
    .to_string();
    let out = topo.exec_with(
        Node::Client,
        &[python(), "-c", POPLIB_SCRIPT, &cfg],
        None,
        Duration::from_secs(opts.timeout_secs as u64 * 4 + 10),
    )?;
    let out = out.check("python poplib session")?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("poplib output is not JSON: {}", out.stdout_str()))?;
    let steps = v
        .as_array()
        .ok_or_else(|| anyhow!("poplib output is not a list"))?
        .iter()
        .filter_map(|e| {
            let a = e.as_array()?;
            Some((a.first()?.as_str()?.to_string(), a.get(1)?.clone()))
        })
        .collect();
    Ok(PopTranscript { steps })
}

/// fetchmail settings (see [`fetchmail`]).
#[derive(Debug, Clone)]
pub struct FetchmailOptions {
    /// `keep` (leave messages on the server) instead of `no keep`.
    pub keep: bool,
    /// `fetchall` (also messages seen before).
    pub fetchall: bool,
    /// Use STLS (`sslproto ''` is omitted, certificate not checked) instead of plain POP3.
    pub stls: bool,
    /// `uidl`: remember fetched messages by UIDL (with `keep`, only new ones are fetched).
    pub uidl: bool,
}

impl Default for FetchmailOptions {
    fn default() -> Self {
        Self {
            keep: true,
            fetchall: true,
            stls: false,
            uidl: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FetchmailResult {
    /// fetchmail's exit code: 0 = mail fetched, 1 = no mail, others are errors.
    pub code: Option<i32>,
    /// Its verbose output (stdout + stderr).
    pub output: String,
    /// What the MDA received: every fetched message appended, each followed by a
    /// `\n--- end of message ---\n` marker line.
    pub delivered: Vec<u8>,
    /// The folder holding the rc file, FETCHMAILHOME and the delivered file (reuse it to keep
    /// fetchmail's UID memory across runs, via [`fetchmail_in`]).
    pub home: PathBuf,
}

impl FetchmailResult {
    /// Exit 0 (mail) or 1 (no mail).
    pub fn ok(&self) -> bool {
        matches!(self.code, Some(0) | Some(1))
    }
}

/// Runs fetchmail once from the client namespace in a fresh folder.
pub fn fetchmail(
    topo: &Topology,
    addr: SocketAddr,
    user: &str,
    pass: &str,
    opts: &FetchmailOptions,
) -> Result<FetchmailResult> {
    let home = topo.dir().join(format!("fetchmail-{}", next_seq()));
    fetchmail_in(topo, &home, addr, user, pass, opts)
}

/// Runs fetchmail once with its files in `home` (created if missing).
pub fn fetchmail_in(
    topo: &Topology,
    home: &Path,
    addr: SocketAddr,
    user: &str,
    pass: &str,
    opts: &FetchmailOptions,
) -> Result<FetchmailResult> {
    fs::create_dir_all(home)?;
    set_mode(home, 0o700)?;
    let rc = home.join("fetchmailrc");
    let delivered = home.join("delivered");
    let mut s = String::new();
    s.push_str("set no syslog\nset no bouncemail\nset invisible\n");
    s.push_str(&format!(
        "poll \"{}\" protocol pop3 port {}{} timeout 15\n",
        addr.ip(),
        addr.port(),
        if opts.uidl { " uidl" } else { "" }
    ));
    s.push_str(&format!(
        "  user \"{user}\" there with password \"{pass}\" is \"root\" here\n"
    ));
    if opts.stls {
        s.push_str("  sslproto 'tls1.2+' no sslcertck\n");
    } else {
        s.push_str("  sslproto ''\n");
    }
    s.push_str(if opts.keep { "  keep\n" } else { "  no keep\n" });
    s.push_str(if opts.fetchall {
        "  fetchall\n"
    } else {
        "  no fetchall\n"
    });
    let mda = home.join("mda.sh");
    fs::write(
        &mda,
        format!(
            "#!/bin/sh\ncat >> '{0}'\nprintf '\\n--- end of message ---\\n' >> '{0}'\n",
            delivered.display()
        ),
    )?;
    set_mode(&mda, 0o700)?;
    s.push_str(&format!("  mda \"{}\"\n", mda.display()));
    fs::write(&rc, s)?;
    set_mode(&rc, 0o600)?;
    let rc_s = rc.display().to_string();
    let mut cmd = topo.command(
        Node::Client,
        &["fetchmail", "-v", "--nosyslog", "--nodetach", "-f", &rc_s],
    );
    cmd.env("FETCHMAILHOME", home).env("HOME", home);
    let out = crate::util::run_cmd(&mut cmd, None, CLIENT_TIMEOUT, topo.dir())?;
    Ok(FetchmailResult {
        code: out.code,
        output: format!("{}{}", out.stdout_str(), out.stderr_str()),
        delivered: fs::read(&delivered).unwrap_or_default(),
        home: home.to_path_buf(),
    })
}

/// `openssl s_client -starttls pop3` from the client namespace, sending `QUIT` once TLS is up.
/// The output (stdout + stderr) shows the protocol and ends with Dovecot's answer to QUIT.
pub fn openssl_starttls(topo: &Topology, addr: SocketAddr) -> Result<CmdOutput> {
    let a = addr.to_string();
    topo.exec_with(
        Node::Client,
        &[
            "openssl",
            "s_client",
            "-starttls",
            "pop3",
            "-connect",
            &a,
            "-brief",
            "-crlf",
            "-ign_eof",
        ],
        Some(b"QUIT\n"),
        CLIENT_TIMEOUT,
    )
}

/// A raw TCP connection (from any namespace) for byte-exact POP3 dialogues and malformed input.
/// Every read has a timeout.
#[derive(Debug)]
pub struct RawSession {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    timeout: Duration,
}

impl RawSession {
    /// Connects from `node` to `addr` (read/write timeout 10 s).
    pub fn connect(topo: &Topology, node: Node, addr: SocketAddr) -> Result<Self> {
        let stream = topo.connect(node, addr, Duration::from_secs(10))?;
        Self::from_stream(stream, Duration::from_secs(10))
    }

    pub fn from_stream(stream: TcpStream, timeout: Duration) -> Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            stream,
            timeout,
        })
    }

    pub fn set_timeout(&mut self, t: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(t))?;
        self.stream.set_write_timeout(Some(t))?;
        self.timeout = t;
        Ok(())
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads one line including its CRLF (at most 64 KiB). Empty string = EOF.
    pub fn read_line(&mut self) -> Result<String> {
        let mut buf = Vec::new();
        let r = (&mut self.reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut buf);
        r.context("reading a line")?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads a multi-line body up to and including the `.` line; returns the raw bytes.
    pub fn read_multiline(&mut self) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(1 << 20)
                .read_until(b'\n', &mut line)
                .context("reading multi-line body")?;
            if n == 0 {
                bail!("EOF inside a multi-line response");
            }
            all.extend_from_slice(&line);
            if line == b".\r\n" {
                return Ok(all);
            }
            if Instant::now() > deadline {
                bail!("multi-line response longer than 120 s");
            }
        }
    }

    /// Reads what is there, at most `max` bytes (blocks until at least one arrives).
    pub fn read_some(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        let n = self.reader.read(&mut buf).context("reading")?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).context("sending")
    }

    /// Sends `cmd` + CRLF and reads the one-line answer.
    pub fn command(&mut self, cmd: &str) -> Result<String> {
        self.send(format!("{cmd}\r\n").as_bytes())?;
        self.read_line()
    }

    /// Reads until EOF, `max` bytes or the timeout. Returns the bytes and whether EOF was seen.
    pub fn read_to_end_bounded(&mut self, max: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        let deadline = Instant::now() + self.timeout;
        while out.len() < max && Instant::now() < deadline {
            match self.reader.read(&mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return (out, true);
                }
                Err(_) => break,
            }
        }
        (out, false)
    }

    /// Closes the connection without QUIT (an abrupt client disconnect).
    pub fn abort(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The outcome of [`raw_exchange`].
#[derive(Debug, Clone)]
pub struct RawReply {
    /// The server's first line (greeting).
    pub greeting: String,
    /// Everything read after sending (bounded).
    pub reply: Vec<u8>,
    /// The peer closed (EOF or reset) within the timeout.
    pub closed: bool,
    /// Sending failed part-way (e.g. the peer closed and reset), with the error.
    pub write_error: Option<String>,
    pub elapsed: Duration,
}

impl RawReply {
    pub fn reply_str(&self) -> String {
        String::from_utf8_lossy(&self.reply).into_owned()
    }
}

/// Connects from the client namespace, reads the greeting, sends `bytes`, then reads the
/// answer until the peer closes, `max_reply` bytes, or `timeout`.
pub fn raw_exchange(
    topo: &Topology,
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
    max_reply: usize,
) -> Result<RawReply> {
    let start = Instant::now();
    let mut s = RawSession::connect(topo, Node::Client, addr)?;
    s.set_timeout(timeout)?;
    let greeting = s.read_line()?;
    let write_error = s.send(bytes).err().map(|e| format!("{e:#}"));
    let (reply, closed) = s.read_to_end_bounded(max_reply);
    Ok(RawReply {
        greeting,
        reply,
        closed,
        write_error,
        elapsed: start.elapsed(),
    })
}
