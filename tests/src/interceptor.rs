//! The daemon under test, started in the router namespace on `rc0`.
//!
//! `ip netns exec` gives the command a fresh mount namespace and remounts /sys, so a bpffs under
//! /sys/fs/bpf is not visible to it. The fixture mounts its own bpffs at
//! [`TEST_BPFFS`] (outside /sys) once, and gives each daemon a per-test `--pin-dir` below it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::{Node, ROUTER_CLIENT_IFACE, Topology, spawn_logged};
use crate::util::{
    self, ChildGuard, CmdOutput, DEFAULT_TIMEOUT, TempDir, next_seq, read_lossy, run_cmd, tail,
    wait_for,
};

/// Where the tests mount their own bpffs.
pub const TEST_BPFFS: &str = "/run/pop3-interceptor-tests/bpffs";
/// The log line the daemon prints once it is attached and serving.
pub const READY_MARKER: &str = "interceptor ready";
/// The daemon flags that switch the per-subscriber limits off: for a load generator, one
/// subscriber making thousands of sessions a second.
pub const NO_PER_SOURCE_LIMITS: [&str; 6] = [
    "--max-conns-per-source",
    "0",
    "--max-half-open-per-source",
    "0",
    "--syn-rate-per-source",
    "0",
];
/// Environment variable naming the daemon binary (set by `cargo xtask test`).
pub const BIN_ENV: &str = "POP3I_BIN";

/// The daemon binary: `$POP3I_BIN`, else `<workspace>/target/release/pop3-interceptor`, else
/// `$CARGO_TARGET_DIR/release/pop3-interceptor`.
pub fn interceptor_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!("{BIN_ENV}={} does not exist", p.display());
        }
        return Ok(p);
    }
    let candidates = [
        util::workspace_root().join("target/release/pop3-interceptor"),
        util::target_dir().join("release/pop3-interceptor"),
    ];
    for c in &candidates {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    bail!(
        "pop3-interceptor binary not found (looked at {}): run `cargo build --release -p \
         pop3-interceptor` or set {BIN_ENV}",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn is_bpffs_mounted(path: &str) -> bool {
    // /proc/self/mountinfo: "... mount-point ... - fstype source options"
    read_lossy(Path::new("/proc/self/mountinfo"))
        .lines()
        .any(|l| {
            let mut parts = l.split(" - ");
            let (Some(left), Some(right)) = (parts.next(), parts.next()) else {
                return false;
            };
            left.split_whitespace().nth(4) == Some(path)
                && right.split_whitespace().next() == Some("bpf")
        })
}

/// Mounts a bpffs at [`TEST_BPFFS`] unless one is already there (idempotent).
pub fn ensure_test_bpffs() -> Result<PathBuf> {
    let p = PathBuf::from(TEST_BPFFS);
    if is_bpffs_mounted(TEST_BPFFS) {
        return Ok(p);
    }
    fs::create_dir_all(&p).with_context(|| format!("creating {TEST_BPFFS}"))?;
    let st = Command::new("mount")
        .args(["-t", "bpf", "bpf", TEST_BPFFS])
        .status()?;
    if !st.success() && !is_bpffs_mounted(TEST_BPFFS) {
        bail!("mount -t bpf bpf {TEST_BPFFS} failed ({st})");
    }
    Ok(p)
}

/// The daemon flags for a dataplane the suites run on: `xdp` is native XDP (the mode of a
/// physical NIC; on veth `--xdp-mode auto` would pick skb), `tc` the TC classifier (a TCX
/// link here), `tc-netlink` the classifier as a clsact filter (kernels before TCX).
pub fn dataplane_args(dataplane: &str) -> &'static [&'static str] {
    match dataplane {
        "xdp" => &["--dataplane", "xdp", "--xdp-mode", "native"],
        "tc" => &["--dataplane", "tc"],
        "tc-netlink" => &["--dataplane", "tc", "--tc-attach", "netlink"],
        other => panic!("no dataplane {other:?}: xdp, tc or tc-netlink"),
    }
}

#[derive(Debug, Clone)]
pub struct InterceptorOptions {
    /// Daemon binary; `None` = [`interceptor_bin`].
    pub bin: Option<PathBuf>,
    /// The router namespace to run in ([`Node::Router`], or [`Node::EdgeRouter`]).
    pub node: Node,
    /// Interface to attach to (in the router namespace).
    pub iface: String,
    /// Extra arguments after `run --iface IF --pin-dir DIR` (e.g. `--xdp-mode skb`).
    pub extra_args: Vec<String>,
    /// `RUST_LOG` for the daemon.
    pub rust_log: String,
    /// How long to wait for [`READY_MARKER`].
    pub ready_timeout: Duration,
}

impl Default for InterceptorOptions {
    fn default() -> Self {
        Self {
            bin: None,
            node: Node::Router,
            iface: ROUTER_CLIENT_IFACE.to_string(),
            extra_args: Vec::new(),
            rust_log: "info".to_string(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running `pop3-interceptor run` in the router namespace. Killed by pid on drop; its pin
/// folder is removed.
#[derive(Debug)]
pub struct Interceptor {
    ns: String,
    bin: PathBuf,
    pin_dir: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
    dir: TempDir,
}

impl Interceptor {
    /// Starts the daemon on `rc0` with `extra_args` and waits until it says it is ready.
    pub fn start(topo: &Topology, extra_args: &[&str]) -> Result<Self> {
        Self::start_with(
            topo,
            InterceptorOptions {
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
    }

    pub fn start_with(topo: &Topology, opts: InterceptorOptions) -> Result<Self> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => interceptor_bin()?,
        };
        let bpffs = ensure_test_bpffs()?;
        let n = next_seq();
        let pin_dir = bpffs.join(format!("{}-icpt{n}", topo.prefix()));
        if pin_dir.exists() {
            let _ = fs::remove_dir_all(&pin_dir);
        }
        fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
        let dir = TempDir::new(&format!("{}-icpt{n}", topo.prefix()))?;
        let log = dir.path().join("interceptor.log");
        let mut me = Interceptor {
            ns: topo.ns(opts.node).to_string(),
            bin,
            pin_dir,
            log,
            child: None,
            dir,
        };
        me.spawn(&opts)?;
        Ok(me)
    }

    fn spawn(&mut self, opts: &InterceptorOptions) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(["run", "--iface", &opts.iface, "--pin-dir"])
            .arg(&self.pin_dir)
            .args(&opts.extra_args)
            .env("RUST_LOG", &opts.rust_log)
            .env("NO_COLOR", "1");
        util::scrub_env(&mut cmd);
        fs::write(&self.log, format!("# {cmd:?}\n"))?;
        let child = spawn_logged(&mut cmd, &self.log, "pop3-interceptor")?;
        self.child = Some(child);
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            if read_lossy(&self.log).contains(READY_MARKER) {
                return Ok(());
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait()) {
                bail!(
                    "pop3-interceptor exited ({st}) before ready:\n{}",
                    tail(&self.log, 40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "pop3-interceptor not ready after {:?} (no '{READY_MARKER}' in its log):\n{}",
                    opts.ready_timeout,
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.pid()).unwrap_or(0)
    }
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
    pub fn bin(&self) -> &Path {
        &self.bin
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
    /// A scratch folder removed with the fixture.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("'{needle}' in the interceptor log"),
            timeout,
            Duration::from_millis(50),
            || self.log_text().contains(needle).then_some(()),
        )
    }

    /// `kill -9`: the fail-open case. Returns the exit status.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        self.child.take().and_then(|mut c| c.kill())
    }

    /// `kill -9` without reaping: the daemon stays a zombie (its `/proc/PID` entry remains)
    /// until the fixture is dropped. Waits until the kernel shows it as one.
    pub fn kill9_leave_zombie(&mut self) -> Result<()> {
        let pid = self.pid();
        util::signal_pid(pid, libc::SIGKILL);
        let stat = PathBuf::from(format!("/proc/{pid}/stat"));
        wait_for(
            "the killed daemon to become a zombie",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let text = read_lossy(&stat);
                let state = text.rsplit_once(')')?.1.trim_start().chars().next()?;
                (state == 'Z').then_some(())
            },
        )
    }

    /// Stops the daemon with SIGTERM and reads the engine counters it logs on the way out
    /// (`engine=Some(Counters { checks_seen: 20, ... })`).
    pub fn final_counters(&mut self) -> std::collections::BTreeMap<String, u64> {
        let (_, clean) = self.terminate(Duration::from_secs(10));
        assert!(clean, "the daemon exits on SIGTERM: {}", self.log_tail(20));
        let log = self.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("engine=Some(Counters {"))
            .unwrap_or_else(|| panic!("no engine counters in the log:\n{}", self.log_tail(20)));
        let body = &line[line.find("Counters {").unwrap() + "Counters {".len()..];
        let body = &body[..body.find('}').unwrap()];
        body.split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// SIGTERM and wait up to `timeout`: (status, exited by itself within the timeout).
    pub fn terminate(&mut self, timeout: Duration) -> (Option<ExitStatus>, bool) {
        match self.child.take() {
            Some(mut c) => c.terminate(timeout),
            None => (None, false),
        }
    }

    /// SIGINT and wait up to `timeout`.
    pub fn interrupt(&mut self, timeout: Duration) -> (Option<ExitStatus>, bool) {
        let Some(mut c) = self.child.take() else {
            return (None, false);
        };
        c.signal(libc::SIGINT);
        match c.wait_timeout(timeout) {
            Some(st) => (Some(st), true),
            None => (c.kill(), false),
        }
    }

    /// Runs the daemon binary with other arguments (e.g. `["status", "--pin-dir", ...]`) in the
    /// router namespace, bounded to 60 s.
    pub fn cli(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(args);
        run_cmd(&mut cmd, None, DEFAULT_TIMEOUT, self.dir.path())
    }

    /// A counter of the XDP program's per-CPU COUNTERS map (a `common::Counter`, or its
    /// slot), summed over CPUs, read with the real bpftool.
    pub fn xdp_counter(&self, counter: impl Into<u32>) -> Result<u64> {
        let slot = counter.into();
        let dump = self.dump_map("COUNTERS")?;
        let entries = dump.as_array().context("COUNTERS dump is not an array")?;
        let entry = entries
            .iter()
            .map(|e| e.get("formatted").unwrap_or(e))
            .find(|e| e["key"].as_u64() == Some(u64::from(slot)))
            .with_context(|| format!("no slot {slot} in {dump}"))?;
        entry["values"]
            .as_array()
            .context("per-CPU values")?
            .iter()
            .map(|v| v["value"].as_u64().context("numeric value"))
            .sum()
    }

    /// `bpftool map dump pinned <pin_dir>/<map> -j` in the router namespace, parsed.
    pub fn dump_map(&self, map: &str) -> Result<serde_json::Value> {
        let p = self.pin_dir.join(map);
        let mut cmd = Command::new("bpftool");
        cmd.args(["-j", "map", "dump", "pinned"]).arg(&p);
        let out = run_cmd(&mut cmd, None, DEFAULT_TIMEOUT, self.dir.path())?
            .check(&format!("bpftool map dump pinned {}", p.display()))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Interceptor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- pop3-interceptor log ({}) ---\n{}",
                self.log.display(),
                tail(&self.log, 60)
            );
        }
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(5));
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}
