//! Process, file and timing helpers shared by the fixtures.
//!
//! Every wait here is bounded: commands get a timeout, polls get a deadline and a step.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Default time limit for a helper command (a client session, an `ip` call).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables that would send a client's traffic to a proxy outside the test ranges.
/// They are removed from every command the fixtures start.
pub const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (topology names, scratch files).
pub fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Panics with a clear message unless running as root (the e2e tests need CAP_NET_ADMIN,
/// CAP_SYS_ADMIN and CAP_BPF).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the pop3-interceptor e2e tests create network namespaces and must run as root \
         (run `cargo xtask test` as root)"
    );
}

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target folder: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `sig` to one process by pid. Errors (already gone) are ignored.
pub fn signal_pid(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a positive pid signals exactly that process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Polls `child` until it exits or `timeout` passes. Returns its status if it exited.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` every `step` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    step: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(step);
    }
}

/// The output of a finished helper command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code (`None`: killed by a signal, including the timeout's SIGKILL).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The command was killed because it ran past its timeout.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// Fails with the command's stderr unless it exited 0 in time.
    pub fn check(self, what: &str) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow!(
                "{what} failed (code {:?}, timed out: {}):\nstdout: {}\nstderr: {}",
                self.code,
                self.timed_out,
                self.stdout_str().trim_end(),
                self.stderr_str().trim_end()
            ))
        }
    }
}

/// A folder removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `/tmp/<name>` (mode 0755 so Dovecot's unprivileged processes can traverse it).
    /// Short paths matter: Dovecot's UNIX sockets live under it (108-byte limit).
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        set_mode(&path, 0o755)?;
        Ok(Self {
            path,
            keep: std::env::var_os("P3I_KEEP").is_some(),
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("P3I_KEEP set: keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {uid}:{gid} {}", path.display()))
}

/// Removes proxy variables so no client talks to anything but the test addresses.
pub fn scrub_env(cmd: &mut Command) -> &mut Command {
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// Runs `cmd` to completion with a time limit; stdin is `/dev/null` unless `input` is given.
/// Output goes through files in `scratch` (not pipes), so a grandchild that keeps the
/// descriptors open cannot hang the caller.
pub fn run_cmd(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
    scratch: &Path,
) -> Result<CmdOutput> {
    let n = next_seq();
    let out_p = scratch.join(format!(".out-{n}"));
    let err_p = scratch.join(format!(".err-{n}"));
    let in_p = scratch.join(format!(".in-{n}"));
    let stdin = match input {
        Some(bytes) => {
            fs::write(&in_p, bytes)?;
            Stdio::from(File::open(&in_p)?)
        }
        None => Stdio::null(),
    };
    scrub_env(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(stdin)
        .stdout(File::create(&out_p)?)
        .stderr(File::create(&err_p)?)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let status = wait_child(&mut child, timeout);
    let timed_out = status.is_none();
    let status = match status {
        Some(s) => Some(s),
        None => {
            signal_pid(child.id(), libc::SIGKILL);
            child.wait().ok()
        }
    };
    let elapsed = start.elapsed();
    let read = |p: &Path| -> Vec<u8> {
        let mut v = Vec::new();
        if let Ok(mut f) = File::open(p) {
            let _ = f.read_to_end(&mut v);
        }
        let _ = fs::remove_file(p);
        v
    };
    let stdout = read(&out_p);
    let stderr = read(&err_p);
    let _ = fs::remove_file(&in_p);
    Ok(CmdOutput {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
        timed_out,
        elapsed,
    })
}

/// Reads a whole file as text (lossy), empty if missing.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A long-running process started by a fixture; killed by pid (SIGKILL) on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    pub fn new(child: Child, name: impl Into<String>) -> Self {
        Self {
            child: Some(child),
            name: name.into(),
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `Some(status)` if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }
    /// Sends a signal to the process (by its pid).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            signal_pid(self.pid(), sig);
        }
    }
    /// `kill -9` and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        signal_pid(c.id(), libc::SIGKILL);
        c.wait().ok()
    }
    /// SIGTERM, then waits up to `timeout`; SIGKILL if still running. Returns the exit status
    /// and whether it exited by itself within the timeout.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<ExitStatus>, bool) {
        let Some(mut c) = self.child.take() else {
            return (None, false);
        };
        if let Ok(Some(st)) = c.try_wait() {
            return (Some(st), true);
        }
        signal_pid(c.id(), libc::SIGTERM);
        match wait_child(&mut c, timeout) {
            Some(st) => (Some(st), true),
            None => {
                signal_pid(c.id(), libc::SIGKILL);
                (c.wait().ok(), false)
            }
        }
    }
    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let st = wait_child(c, timeout);
        if st.is_some() {
            self.child = None;
        }
        st
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads from `stream` until `needle` arrives or `within` passes; whether it arrived.
pub fn read_until_within(
    stream: &mut std::net::TcpStream,
    needle: &[u8],
    within: Duration,
) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    false
}
