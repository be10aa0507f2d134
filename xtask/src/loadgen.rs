//! A lean POP3 load generator (tokio, one thread): check sessions (connect, USER, PASS, STAT,
//! QUIT) or RETR sessions, at a given concurrency, bounded by a duration and a session count.
//! Prints one JSON object ([`LoadReport`]).
//!
//! Run by `cargo xtask bench` as `ip netns exec <client> xtask loadgen ... --json`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// connect, USER, PASS, STAT, QUIT
    Check,
    /// connect, USER, PASS, RETR <n>, QUIT; measures body bytes per second
    Retr,
}

#[derive(Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// POP3 server address, e.g. 203.0.113.2:110 or [2001:db8:2::2]:110
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, value_enum, default_value = "check")]
    pub mode: Mode,
    /// A user (repeatable); sessions use the users round-robin.
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Users PREFIX000 .. PREFIX{count-1} (with --user-count).
    #[arg(long)]
    pub user_prefix: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub user_count: usize,
    /// Password of every user.
    #[arg(long)]
    pub pass: String,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// How long to run, e.g. 5s, 1500ms.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many sessions (0 = only the duration bounds it).
    #[arg(long, default_value_t = 0)]
    pub max_sessions: u64,
    /// Message number for --mode retr.
    #[arg(long, default_value_t = 1)]
    pub msg: u32,
    /// Per-session time limit.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// Print JSON (default: a human line).
    #[arg(long)]
    pub json: bool,
}

/// What one load run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub mode: Option<Mode>,
    pub target: String,
    pub concurrency: usize,
    /// Wall time of the run (including the wait for sessions still running at the deadline,
    /// up to --session-timeout).
    pub elapsed_s: f64,
    /// The time `sessions_per_s` is computed over: the duration, or the elapsed time when the
    /// run ended earlier (--max-sessions).
    #[serde(default)]
    pub window_s: f64,
    /// Sessions that completed with +OK at every step.
    pub sessions: u64,
    pub errors: u64,
    /// Sessions that ran past --session-timeout (included in `errors`).
    #[serde(default)]
    pub timeouts: u64,
    pub sessions_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// RETR mode: message body bytes received (successful sessions).
    pub bytes: u64,
    /// RETR mode: body bytes / time spent receiving them (sum over sessions), in MB/s (10^6).
    pub mb_per_s: f64,
    /// The first few distinct errors.
    pub first_errors: Vec<String>,
}

/// One POP3 connection of the load generator (also driven by `soak`).
pub(crate) struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    line: String,
}

impl Conn {
    /// Connects and reads the greeting; `step` names what is being waited for (so a session
    /// that times out can say where it stalled).
    pub(crate) async fn open(addr: SocketAddr, step: &mut &'static str) -> Result<Self> {
        *step = "connect";
        let s = TcpStream::connect(addr).await.context("connect")?;
        *step = "greeting";
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
            line: String::new(),
        };
        c.expect_ok("greeting").await?;
        Ok(c)
    }
    async fn expect_ok(&mut self, what: &str) -> Result<()> {
        self.line.clear();
        let n = (&mut self.r).take(4096).read_line(&mut self.line).await?;
        if n == 0 {
            bail!("{what}: connection closed");
        }
        if !self.line.starts_with("+OK") {
            bail!("{what}: {}", self.line.trim_end());
        }
        Ok(())
    }
    /// Sends `line` and requires a `+OK` answer (then in [`Conn::reply`]).
    pub(crate) async fn cmd(&mut self, what: &str, line: &str) -> Result<()> {
        self.w.write_all(line.as_bytes()).await?;
        self.expect_ok(what).await
    }
    pub(crate) async fn login(
        &mut self,
        user: &str,
        pass: &str,
        step: &mut &'static str,
    ) -> Result<()> {
        *step = "USER";
        self.cmd("USER", &format!("USER {user}\r\n")).await?;
        *step = "PASS";
        self.cmd("PASS", &format!("PASS {pass}\r\n")).await
    }
    /// The last status line read.
    pub(crate) fn reply(&self) -> &str {
        self.line.trim_end()
    }
    /// Reads a multi-line body after its +OK line, dot-unstuffed, one line per entry
    /// (line ends removed); at most `limit` bytes.
    pub(crate) async fn read_lines(&mut self, limit: usize) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        let mut total = 0;
        loop {
            self.line.clear();
            let n = (&mut self.r).take(4096).read_line(&mut self.line).await?;
            if n == 0 {
                bail!("connection closed inside a multi-line response");
            }
            total += n;
            if total > limit {
                bail!("multi-line response over {limit} bytes");
            }
            let line = self.line.trim_end_matches(['\r', '\n']);
            if line == "." {
                return Ok(lines);
            }
            lines.push(line.strip_prefix('.').unwrap_or(line).to_owned());
        }
    }
    /// Reads a multi-line body after its +OK line; returns its size in bytes
    /// (terminator excluded).
    async fn read_body(&mut self) -> Result<u64> {
        // The +OK line's CRLF counts as the line end before a possible lone ".".
        let mut tail: [u8; 5] = [0, 0, 0, b'\r', b'\n'];
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = self.r.read(&mut buf).await?;
            if n == 0 {
                bail!("connection closed inside a multi-line response");
            }
            total += n as u64;
            for &b in &buf[..n] {
                tail.copy_within(1.., 0);
                tail[4] = b;
            }
            if &tail == b"\r\n.\r\n" || (total == 3 && &buf[..3] == b".\r\n") {
                return Ok(total.saturating_sub(3));
            }
        }
    }
}

async fn check_session(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    step: &mut &'static str,
) -> Result<u64> {
    let mut c = Conn::open(addr, step).await?;
    c.login(user, pass, step).await?;
    *step = "STAT";
    c.cmd("STAT", "STAT\r\n").await?;
    *step = "QUIT";
    c.cmd("QUIT", "QUIT\r\n").await?;
    Ok(0)
}

async fn retr_session(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    msg: u32,
    step: &mut &'static str,
) -> Result<(u64, Duration)> {
    let mut c = Conn::open(addr, step).await?;
    c.login(user, pass, step).await?;
    *step = "RETR";
    let t = Instant::now();
    c.cmd("RETR", &format!("RETR {msg}\r\n")).await?;
    let bytes = c.read_body().await?;
    let dt = t.elapsed();
    *step = "QUIT";
    c.cmd("QUIT", "QUIT\r\n").await?;
    Ok((bytes, dt))
}

#[derive(Default)]
struct WorkerResult {
    lat_us: Vec<u64>,
    /// Sessions that completed before the deadline.
    in_window: u64,
    errors: u64,
    timeouts: u64,
    bytes: u64,
    xfer: Duration,
    first_errors: Vec<String>,
}

pub fn run(a: LoadgenArgs) -> Result<ExitCode> {
    let report = measure(&a)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:?} c={} sessions={} errors={} {:.0}/s p50={}us p99={}us {:.1} MB/s",
            a.mode,
            a.concurrency,
            report.sessions,
            report.errors,
            report.sessions_per_s,
            report.p50_us,
            report.p99_us,
            report.mb_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the load described by `a` and returns what it measured.
pub fn measure(a: &LoadgenArgs) -> Result<LoadReport> {
    let mut users = a.users.clone();
    if let Some(p) = &a.user_prefix {
        users.extend((0..a.user_count).map(|i| format!("{p}{i:03}")));
    }
    if users.is_empty() {
        bail!("no users: give --user or --user-prefix with --user-count");
    }
    if a.concurrency == 0 || a.concurrency > 4096 {
        bail!("--concurrency must be 1..=4096");
    }
    if a.duration > Duration::from_secs(600) {
        bail!("--duration is limited to 10 minutes");
    }
    let users = Arc::new(users);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let deadline = start + a.duration;
    let seq = Arc::new(AtomicU64::new(0));
    let results: Vec<WorkerResult> = rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..a.concurrency {
            let users = users.clone();
            let seq = seq.clone();
            let a = a.clone();
            handles.push(tokio::spawn(async move {
                let mut r = WorkerResult::default();
                while Instant::now() < deadline {
                    let i = seq.fetch_add(1, Ordering::Relaxed);
                    if a.max_sessions > 0 && i >= a.max_sessions {
                        break;
                    }
                    let user = &users[(i as usize) % users.len()];
                    let t = Instant::now();
                    let mut step = "connect";
                    let res = match a.mode {
                        Mode::Check => tokio::time::timeout(
                            a.session_timeout,
                            check_session(a.target, user, &a.pass, &mut step),
                        )
                        .await
                        .map(|r| r.map(|_| (0, Duration::ZERO))),
                        Mode::Retr => {
                            tokio::time::timeout(
                                a.session_timeout,
                                retr_session(a.target, user, &a.pass, a.msg, &mut step),
                            )
                            .await
                        }
                    };
                    match res {
                        Ok(Ok((bytes, xfer))) => {
                            r.lat_us.push(t.elapsed().as_micros() as u64);
                            if Instant::now() <= deadline {
                                r.in_window += 1;
                            }
                            r.bytes += bytes;
                            r.xfer += xfer;
                        }
                        Ok(Err(e)) => {
                            r.errors += 1;
                            note_error(&mut r.first_errors, format!("{step}: {e:#}"));
                            // Do not spin on a refusing server.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(_) => {
                            r.errors += 1;
                            r.timeouts += 1;
                            note_error(
                                &mut r.first_errors,
                                format!("session timed out waiting for {step}"),
                            );
                        }
                    }
                }
                r
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap_or_default());
        }
        out
    });
    let elapsed = start.elapsed();
    let mut lat: Vec<u64> = results
        .iter()
        .flat_map(|r| r.lat_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let xfer: Duration = results.iter().map(|r| r.xfer).sum();
    let mut first_errors = Vec::new();
    for r in &results {
        for e in &r.first_errors {
            note_error(&mut first_errors, e.clone());
        }
    }
    Ok(LoadReport {
        mode: Some(a.mode),
        target: a.target.to_string(),
        concurrency: a.concurrency,
        elapsed_s: elapsed.as_secs_f64(),
        sessions: lat.len() as u64,
        errors: results.iter().map(|r| r.errors).sum(),
        timeouts: results.iter().map(|r| r.timeouts).sum(),
        sessions_per_s: if elapsed > a.duration {
            // Stragglers that finish (or time out) after the deadline must not stretch the
            // window: count what completed while the load ran; stragglers show in the
            // latencies, errors and timeouts.
            results.iter().map(|r| r.in_window).sum::<u64>() as f64 / a.duration.as_secs_f64()
        } else {
            lat.len() as f64 / elapsed.as_secs_f64()
        },
        window_s: elapsed.min(a.duration).as_secs_f64(),
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        max_us: lat.last().copied().unwrap_or(0),
        bytes,
        mb_per_s: if xfer.is_zero() {
            0.0
        } else {
            bytes as f64 / 1e6 / xfer.as_secs_f64()
        },
        first_errors,
    })
}

fn note_error(v: &mut Vec<String>, e: String) {
    if v.len() < 5 && !v.contains(&e) {
        v.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator against a tiny in-process POP3 responder on loopback.
    #[test]
    fn loadgen_against_loopback_responder() {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let body = "x".repeat(1000);
        let srv = std::thread::spawn(move || {
            for _ in 0..6 {
                let Ok((s, _)) = l.accept() else { return };
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                w.write_all(b"+OK ready\r\n").unwrap();
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    let reply = if line.starts_with("RETR") {
                        format!("+OK 1002 octets\r\n{body}\r\n.\r\n")
                    } else {
                        "+OK\r\n".to_string()
                    };
                    w.write_all(reply.as_bytes()).unwrap();
                    if line.starts_with("QUIT") {
                        break;
                    }
                    line.clear();
                }
            }
        });
        let mut a = LoadgenArgs {
            target: addr,
            mode: Mode::Check,
            users: vec!["u".into()],
            user_prefix: None,
            user_count: 0,
            pass: "p".into(),
            concurrency: 1,
            duration: Duration::from_secs(10),
            max_sessions: 3,
            msg: 1,
            session_timeout: Duration::from_secs(5),
            json: true,
        };
        let r = measure(&a).unwrap();
        assert_eq!((r.sessions, r.errors), (3, 0), "{r:?}");
        a.mode = Mode::Retr;
        let r = measure(&a).unwrap();
        assert_eq!((r.sessions, r.errors, r.bytes), (3, 0, 3 * 1002), "{r:?}");
        srv.join().unwrap();
    }
}
