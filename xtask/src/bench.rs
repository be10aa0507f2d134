//! `cargo xtask bench`: in one run on one topology, against the same Dovecot, every path a
//! POP3 check can take ([`Path`]):
//!
//! - `direct`: the client to Dovecot, nothing on the path;
//! - `nginx`: through nginx's mail proxy on the router (what an operator would otherwise
//!   deploy; see [`peers`]);
//! - `relay`: through the daemon in `--mode relay`;
//! - `attenuated`: through the daemon in `--mode attenuate` once its table is warm (every user
//!   checked once, so its mailbox is verified empty), with the Dovecot logins the attenuated
//!   runs caused, read from Dovecot's log;
//! - `ideal`: an ideal responder on kernel TCP (any login, every maildrop empty): the ceiling
//!   for attenuated checks.
//!
//! Each path runs check sessions at every `--concurrency` (sessions/s, p50/p99 latency, and
//! the CPU time per session of the process on the path, from /proc, see [`cpu`]); `direct`,
//! `nginx` and `relay` also RETR a 10 MB message. Every row is printed as a ratio against
//! `direct` and against `nginx` ([`report`]) and drawn as SVG charts ([`charts`]). Then:
//! memory per attenuation-table entry ([`table_memory`]), what other traffic pays
//! ([`other_traffic`]), and the edge cache's prefetch over a compressed day
//! ([`cache_day`]; alone with `--cache-only`).
//!
//! The daemon's rows run on `--dataplane` (default `auto`: tc on veth); run the bench once
//! with `--dataplane xdp` and once with `--dataplane tc` for the A/B figures.
//!
//! The load generator (`xtask loadgen`) runs inside the client namespace.

mod cache_day;
mod charts;
mod cpu;
mod peers;
mod report;
mod table_memory;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use e2e::dovecot::make_large_message;
use e2e::topology::server_pop3_v4;
use e2e::{Dovecot, DovecotOptions, Interceptor, InterceptorOptions, Node, Topology};
use serde::Serialize;

use crate::loadgen::LoadReport;
use crate::other_traffic::{self, OtherTraffic};
use crate::run;
use table_memory::{TableMemory, print_table_memory};

const BENCH_PASS: &str = "bench-pw";
const BENCH_PREFIX: &str = "bench";
const BIG_USER: &str = "bigbox";

#[derive(Args)]
pub struct BenchArgs {
    /// Do not run scripts/setup.sh first.
    #[arg(long)]
    skip_setup: bool,
    /// Do not build the daemon (use the existing release binary).
    #[arg(long)]
    skip_build: bool,
    /// Duration of each check measurement, per path and concurrency (max 60s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrencies of the check measurements (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: Vec<u16>,
    /// Number of check users (sessions go round-robin over them). Keep it well above the
    /// concurrency: a user with a session open is never answered at the edge, so
    /// concurrent sessions of one user would all reach Dovecot.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1000))]
    users: u64,
    /// Size of the RETR message in MB (10^6 bytes).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=200))]
    retr_mb: u64,
    /// RETR repetitions per path.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    retr_count: u64,
    /// Only measure the direct path (no daemon, no peers).
    #[arg(long)]
    direct_only: bool,
    /// Skip the peers (nginx's mail proxy and the ideal responder).
    #[arg(long)]
    skip_peers: bool,
    /// Skip the attenuation rows (daemon in attenuate mode).
    #[arg(long)]
    skip_attenuate: bool,
    /// Users in the attenuation table for the memory-per-entry measurement (0 = skip it).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=2_000_000))]
    table_users: u64,
    /// Only measure the attenuation table's memory per entry (pop3-engine's `table_memory`
    /// test: no set-up, daemon build, namespaces, Dovecot or root; no JSON written).
    #[arg(long)]
    table_only: bool,
    /// Dataplane of the daemon's rows: `xdp`, `tc` or `auto`.
    #[arg(long, default_value = "auto", value_parser = ["xdp", "tc", "auto"])]
    dataplane: String,
    /// Skip the other-traffic rows (iperf3 per dataplane and mode).
    #[arg(long, conflicts_with = "other_traffic_only")]
    skip_other_traffic: bool,
    /// Only the other-traffic rows (no Dovecot, no sessions; no JSON written).
    #[arg(long)]
    other_traffic_only: bool,
    /// Skip the edge cache's day (prefetch in quiet hours against none).
    #[arg(long, conflicts_with = "cache_only")]
    skip_cache: bool,
    /// Only the edge cache's day (no JSON written).
    #[arg(long)]
    cache_only: bool,
    /// How long the edge cache's compressed day lasts.
    #[arg(long, default_value = "96s", value_parser = humantime::parse_duration)]
    cache_day: Duration,
    /// Users of the edge cache's day.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=200))]
    cache_users: u64,
    /// Messages each user of the edge cache's day gets.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=50))]
    cache_messages: u64,
    /// Extra arguments for `pop3-interceptor run` (repeatable), after `--mode`.
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Dovecot with one login process per connection (its default) instead of its fast mode.
    #[arg(long)]
    dovecot_secure_login: bool,
    /// Where to write the JSON (default: <target>/bench.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder for the SVG charts (default: <target>/bench-charts; the README's are in
    /// docs/bench).
    #[arg(long)]
    charts: Option<PathBuf>,
}

/// What a measured session goes through on its way to an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Direct,
    Nginx,
    Relay,
    Attenuated,
    Ideal,
}

impl Path {
    /// Every path, in the order of the tables and chart legends.
    pub const ALL: [Path; 5] = [
        Path::Direct,
        Path::Nginx,
        Path::Relay,
        Path::Attenuated,
        Path::Ideal,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Nginx => "nginx",
            Path::Relay => "relay",
            Path::Attenuated => "attenuated",
            Path::Ideal => "ideal",
        }
    }

    /// Whether the path can serve a real message (the attenuated and ideal ones answer
    /// checks only).
    fn serves_retr(self) -> bool {
        matches!(self, Path::Direct | Path::Nginx | Path::Relay)
    }
}

/// One load: check sessions at a concurrency, or RETR of the big message.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Load generator mode: `check` or `retr`.
    pub mode: &'static str,
    pub concurrency: usize,
}

impl Scenario {
    pub fn name(&self) -> String {
        match self.mode {
            "retr" => "retr 1 session".to_string(),
            m => format!("{m} c={}", self.concurrency),
        }
    }
}

/// The loads of `path`: checks at every concurrency, then RETR where the path serves it.
fn scenarios(args: &BenchArgs, path: Path) -> Vec<Scenario> {
    let mut v: Vec<Scenario> = args
        .concurrency
        .iter()
        .map(|&c| Scenario {
            mode: "check",
            concurrency: c.into(),
        })
        .collect();
    if path.serves_retr() {
        v.push(Scenario {
            mode: "retr",
            concurrency: 1,
        });
    }
    v
}

#[derive(Debug, Serialize)]
pub struct Measurement {
    pub path: Path,
    pub scenario: Scenario,
    pub report: LoadReport,
    /// CPU time (user + system, all threads and direct children) of the process on the
    /// path (daemon, nginx, ideal responder) per completed session; `None` for `direct`.
    pub cpu_us_per_session: Option<f64>,
}

/// What Dovecot saw of the attenuated runs.
#[derive(Debug, Default, Serialize)]
struct AttenuationCheck {
    /// Warm-up sessions (one per user, passed through to Dovecot).
    warm_sessions: u64,
    /// Dovecot logins during the warm-up.
    warm_logins: usize,
    /// Check sessions completed in the attenuated runs.
    sessions: u64,
    /// Dovecot logins during the attenuated runs (target: about 0).
    logins: usize,
    /// The daemon's engine counters, as logged at SIGTERM.
    engine_counters: Option<String>,
    /// Frames the kernel dropped because the daemon's AF_XDP fill ring was empty (its
    /// `DataplaneStats`, logged at SIGTERM): each one is a TCP loss a client recovers from
    /// only by retransmitting.
    fill_ring_empty: Option<u64>,
}

#[derive(Debug, Serialize)]
struct BenchJson {
    /// `--dataplane` of the daemon's rows.
    dataplane: String,
    duration_s: f64,
    users: u64,
    retr_bytes: usize,
    dovecot_fast_login: bool,
    nproc: usize,
    measurements: Vec<Measurement>,
    attenuation: Option<AttenuationCheck>,
    table_memory: Option<TableMemory>,
    other_traffic: Option<OtherTraffic>,
    cache_day: Option<cache_day::CacheDay>,
}

struct Bench<'a> {
    args: &'a BenchArgs,
    topo: &'a Topology,
    exe: PathBuf,
}

impl Bench<'_> {
    /// Runs `sc` against `target` from the client namespace, stopping after `max_sessions`
    /// check sessions if given.
    fn loadgen(
        &self,
        target: SocketAddr,
        sc: &Scenario,
        max_sessions: Option<u64>,
    ) -> Result<LoadReport> {
        let exe = self.exe.display().to_string();
        let mut args: Vec<String> = vec![
            exe,
            "loadgen".into(),
            "--json".into(),
            "--target".into(),
            target.to_string(),
            "--mode".into(),
            sc.mode.into(),
            "--pass".into(),
            BENCH_PASS.into(),
            "--concurrency".into(),
            sc.concurrency.to_string(),
        ];
        let limit = if sc.mode == "retr" {
            args.extend(["--user".into(), BIG_USER.into()]);
            args.extend(["--duration".into(), "60s".into()]);
            args.extend(["--max-sessions".into(), self.args.retr_count.to_string()]);
            Duration::from_secs(120)
        } else {
            args.extend(["--user-prefix".into(), BENCH_PREFIX.into()]);
            args.extend(["--user-count".into(), self.args.users.to_string()]);
            args.extend([
                "--duration".into(),
                format!("{}ms", self.args.duration.as_millis()),
            ]);
            if let Some(n) = max_sessions {
                args.extend(["--max-sessions".into(), n.to_string()]);
            }
            self.args.duration + Duration::from_secs(60)
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .topo
            .exec_with(Node::Client, &argv, None, limit)?
            .check("loadgen")?;
        let r: LoadReport = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("loadgen output: {}", out.stdout_str()))?;
        Ok(r)
    }

    /// Runs every scenario of `path` against `target`; `cpu_pid` is the process on the path
    /// whose CPU time each run costs.
    fn measure(
        &self,
        path: Path,
        target: SocketAddr,
        cpu_pid: Option<u32>,
        out: &mut Vec<Measurement>,
    ) -> Result<()> {
        for sc in scenarios(self.args, path) {
            eprint!("bench: {:<10} {:<16} ... ", path.label(), sc.name());
            let before = cpu_pid.map(cpu::tree_cpu).transpose()?;
            let r = self.loadgen(target, &sc, None)?;
            let used = match (cpu_pid, before) {
                (Some(pid), Some(b)) => Some(cpu::tree_cpu(pid)?.saturating_sub(b)),
                _ => None,
            };
            let cpu_us_per_session = used.map(|u| u.as_secs_f64() * 1e6 / r.sessions.max(1) as f64);
            eprintln!(
                "{} sessions, {} errors, {:.0}/s, p50 {} us, p99 {} us{}{}",
                r.sessions,
                r.errors,
                r.sessions_per_s,
                r.p50_us,
                r.p99_us,
                cpu_us_per_session
                    .map(|c| format!(", {c:.0} us CPU/session"))
                    .unwrap_or_default(),
                if sc.mode == "retr" {
                    format!(", {:.1} MB/s", r.mb_per_s)
                } else {
                    String::new()
                }
            );
            if !r.first_errors.is_empty() {
                eprintln!("bench:   errors: {:?}", r.first_errors);
            }
            out.push(Measurement {
                path,
                scenario: sc,
                report: r,
                cpu_us_per_session,
            });
        }
        Ok(())
    }

    /// The peers' rows: nginx's mail proxy, then the ideal responder, each alone on the path.
    fn measure_peers(&self, out: &mut Vec<Measurement>) -> Result<()> {
        let dir = self.topo.dir().join("peers");
        let nginx = peers::start_nginx(self.topo, &dir).context("starting nginx's mail proxy")?;
        self.measure(Path::Nginx, nginx.addr, Some(nginx.pid()), out)?;
        drop(nginx);
        let ideal = peers::start_ideal(self.topo, &self.exe, &dir)
            .context("starting the ideal responder")?;
        self.measure(Path::Ideal, ideal.addr, Some(ideal.pid()), out)
    }

    /// The daemon's arguments for `mode`, the bench's own first.
    fn daemon_opts(&self, bin: &std::path::Path, mode: &str) -> InterceptorOptions {
        let mut extra_args = vec!["--mode".to_string(), mode.to_string()];
        extra_args.extend(["--dataplane".to_string(), self.args.dataplane.clone()]);
        extra_args.extend(one_source_load());
        if mode == "attenuate"
            && !self
                .args
                .daemon_args
                .iter()
                .any(|a| a.starts_with("--interval"))
        {
            // Far longer than the run: every check after the warm-up may be attenuated.
            extra_args.extend(["--interval".to_string(), "15m".to_string()]);
        }
        extra_args.extend(self.args.daemon_args.iter().cloned());
        InterceptorOptions {
            bin: Some(bin.to_path_buf()),
            extra_args,
            ..Default::default()
        }
    }

    /// The relay rows: the daemon in relay mode.
    fn measure_relay(&self, bin: &std::path::Path, out: &mut Vec<Measurement>) -> Result<()> {
        let mut icpt = Interceptor::start_with(self.topo, self.daemon_opts(bin, "relay"))
            .context("starting the interceptor (relay)")?;
        let res = self.measure(Path::Relay, server_pop3_v4(), Some(icpt.pid()), out);
        icpt.terminate(Duration::from_secs(10));
        res
    }

    /// The attenuation rows: the daemon in attenuate mode, its table warmed by one check per
    /// user, then the attenuated checks; Dovecot's log says how many logins they cost.
    fn measure_attenuated(
        &self,
        bin: &std::path::Path,
        dovecot: &Dovecot,
        out: &mut Vec<Measurement>,
    ) -> Result<AttenuationCheck> {
        let mut icpt = Interceptor::start_with(self.topo, self.daemon_opts(bin, "attenuate"))
            .context("starting the interceptor (attenuate)")?;
        let first = out.len();
        let res = (|| -> Result<AttenuationCheck> {
            let settle = |at_least: usize| {
                // Dovecot's log process writes asynchronously.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while dovecot.logins().len() < at_least && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(500));
                dovecot.logins().len()
            };
            let before = settle(0);
            let users = self.args.users;
            eprint!("bench: {:<10} {:<16} ... ", "attenuated", "warm-up, 1/user");
            let one = Scenario {
                mode: "check",
                concurrency: 1,
            };
            let warm = self.loadgen(server_pop3_v4(), &one, Some(users))?;
            eprintln!("{} sessions, {} errors", warm.sessions, warm.errors);
            if warm.sessions != users || warm.errors != 0 {
                bail!(
                    "warm-up: {} sessions and {} errors for {users} users: {:?}",
                    warm.sessions,
                    warm.errors,
                    warm.first_errors
                );
            }
            let warmed = settle(before + users as usize);
            self.measure(Path::Attenuated, server_pop3_v4(), Some(icpt.pid()), out)?;
            let after = settle(0);
            Ok(AttenuationCheck {
                warm_sessions: warm.sessions,
                warm_logins: warmed - before,
                sessions: out[first..].iter().map(|m| m.report.sessions).sum(),
                logins: after - warmed,
                engine_counters: None,
                fill_ring_empty: None,
            })
        })();
        icpt.terminate(Duration::from_secs(10));
        let mut check = res?;
        check.fill_ring_empty = icpt.log_text().lines().find_map(|l| {
            let i = l.find("fill_ring_empty: ")?;
            let rest = &l[i + "fill_ring_empty: ".len()..];
            rest[..rest.find(|c: char| !c.is_ascii_digit())?]
                .parse()
                .ok()
        });
        check.engine_counters = icpt.log_text().lines().find_map(|l| {
            let i = l.find("engine=Some(")?;
            let rest = &l[i + "engine=Some(".len()..];
            Some(rest[..rest.find(')').unwrap_or(rest.len())].to_string())
        });
        Ok(check)
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.duration > Duration::from_secs(60) {
        bail!("--duration is limited to 60s");
    }
    if args.table_only {
        let t = table_memory::measure(args.table_users.max(1) as usize)?;
        print_table_memory(&t);
        return Ok(ExitCode::SUCCESS);
    }
    if !args.skip_setup {
        run::setup()?;
    }
    let bin = if args.direct_only {
        None
    } else if args.skip_build {
        Some(run::daemon_bin()?)
    } else {
        Some(run::build_daemon()?)
    };
    let day = cache_day::DaySettings {
        day_s: args.cache_day.as_secs_f64(),
        users: args.cache_users as usize,
        messages_per_user: args.cache_messages as usize,
    };
    if args.cache_only {
        let Some(bin) = &bin else {
            bail!("--cache-only needs the daemon: drop --direct-only");
        };
        cache_day::print(&cache_day::measure(bin, &args.dataplane, day)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.other_traffic_only {
        let Some(bin) = &bin else {
            bail!("--other-traffic-only needs the daemon: drop --direct-only");
        };
        let topo = Topology::new()?;
        other_traffic::print(&other_traffic::measure(&topo, bin, args.duration)?);
        return Ok(ExitCode::SUCCESS);
    }
    let exe = loadgen_exe(args.skip_build)?;

    let topo = Topology::new()?;
    let mut users: Vec<(String, String)> = (0..args.users)
        .map(|i| (format!("{BENCH_PREFIX}{i:03}"), BENCH_PASS.to_string()))
        .collect();
    users.push((BIG_USER.to_string(), BENCH_PASS.to_string()));
    let fast = !args.dovecot_secure_login;
    let dovecot = Dovecot::start_with(
        &topo,
        DovecotOptions {
            users,
            fast_login: fast,
            ..Default::default()
        },
    )?;
    let big = make_large_message(BIG_USER, (args.retr_mb * 1_000_000) as usize);
    dovecot.deliver(BIG_USER, &big)?;

    let bench = Bench {
        args: &args,
        topo: &topo,
        exe,
    };
    let mut ms = Vec::new();
    // Dovecot's first login of a user creates its index files (several ms): log every user in
    // once first, or whichever path runs first pays for it.
    eprint!("bench: {:<10} {:<16} ... ", "direct", "Dovecot warm-up");
    let eight = Scenario {
        mode: "check",
        concurrency: 8,
    };
    let warm = bench.loadgen(server_pop3_v4(), &eight, Some(args.users))?;
    eprintln!("{} sessions, {} errors", warm.sessions, warm.errors);
    bench.measure(Path::Direct, server_pop3_v4(), None, &mut ms)?;
    if !args.direct_only && !args.skip_peers {
        bench.measure_peers(&mut ms)?;
    }
    if let Some(bin) = &bin {
        bench.measure_relay(bin, &mut ms)?;
    }
    let attenuation = match &bin {
        Some(bin) if !args.skip_attenuate => {
            Some(bench.measure_attenuated(bin, &dovecot, &mut ms)?)
        }
        _ => None,
    };
    drop(dovecot);
    let other = match &bin {
        Some(bin) if !args.skip_other_traffic => {
            Some(other_traffic::measure(&topo, bin, args.duration)?)
        }
        _ => None,
    };
    let cache_day = match &bin {
        Some(bin) if !args.skip_cache => Some(cache_day::measure(bin, &args.dataplane, day)?),
        _ => None,
    };
    let table_memory = if args.table_users > 0 {
        eprint!("bench: table memory with {} users ... ", args.table_users);
        let t = table_memory::measure(args.table_users as usize)?;
        eprintln!(
            "{:.0} B/entry requested, {:.0} B/entry malloc ({:.1} s)",
            t.requested_bytes_per_entry, t.malloc_bytes_per_entry, t.elapsed_s
        );
        Some(t)
    } else {
        None
    };

    report::print_paths(&ms);
    report::print_attenuation_targets(&ms);
    if let Some(a) = &attenuation {
        print_attenuation_check(a);
    }
    if let Some(t) = &table_memory {
        print_table_memory(t);
    }
    if let Some(other) = &other {
        other_traffic::print(other);
    }
    if let Some(day) = &cache_day {
        cache_day::print(day);
    }
    let json = BenchJson {
        dataplane: args.dataplane.clone(),
        other_traffic: other,
        duration_s: args.duration.as_secs_f64(),
        users: args.users,
        retr_bytes: big.len(),
        dovecot_fast_login: fast,
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        measurements: ms,
        attenuation,
        table_memory,
        cache_day,
    };
    let out = match &args.out {
        Some(p) => p.clone(),
        None => run::target_dir()?.join("bench.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", out.display());
    let charts_dir = match &args.charts {
        Some(p) => p.clone(),
        None => run::target_dir()?.join("bench-charts"),
    };
    for chart in charts::write(&json.measurements, &charts_dir, &chart_caption(&json))? {
        println!("wrote {}", chart.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The load generator must not be the bottleneck it measures: use a release build of xtask.
fn loadgen_exe(skip_build: bool) -> Result<PathBuf> {
    let release = run::target_dir()?.join("release").join("xtask");
    if !skip_build {
        run::step(
            "build loadgen",
            run::cargo().args(["build", "--release", "-p", "xtask"]),
        )?;
    }
    if release.exists() {
        return Ok(release);
    }
    eprintln!(
        "bench: no release xtask at {}: using this (maybe debug) binary",
        release.display()
    );
    std::env::current_exe().context("locating the xtask binary")
}

/// The load generator is one subscriber making thousands of sessions per second: the
/// per-source limits (meant for real subscribers) are switched off for it.
fn one_source_load() -> [String; 6] {
    [
        "--max-conns-per-source",
        "0",
        "--max-half-open-per-source",
        "0",
        "--syn-rate-per-source",
        "0",
    ]
    .map(String::from)
}

/// What the charts say about the run they come from.
fn chart_caption(j: &BenchJson) -> String {
    format!(
        "{} cores, {} users, {} s per point, daemon dataplane {}",
        j.nproc, j.users, j.duration_s, j.dataplane
    )
}

/// What the attenuated runs cost Dovecot, and the daemon's counters.
fn print_attenuation_check(a: &AttenuationCheck) {
    println!(
        "  Dovecot logins: warm-up {} for {} sessions; attenuated runs {} for {} sessions",
        a.warm_logins, a.warm_sessions, a.logins, a.sessions
    );
    if let Some(c) = &a.engine_counters {
        println!("  daemon engine counters at exit: {c}");
    }
    if let Some(n) = a.fill_ring_empty {
        println!(
            "  frames dropped by the kernel for want of a fill-ring frame (attenuate runs): {n}"
        );
    }
}
