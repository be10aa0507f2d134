//! `cargo xtask bench`: in one run on one topology, against the same Dovecot:
//!
//! - issue 2 rows (daemon `--mode relay`): check sessions/s and p50/p99 latency at concurrency
//!   1 and 32, and RETR throughput of a 10 MB message, directly to Dovecot and through the
//!   transparent relay;
//! - issue 3 rows (daemon `--mode attenuate`): the same check load once the attenuation table
//!   is warm (every user checked once, so its mailbox is verified empty), with the number of
//!   Dovecot logins the attenuated runs caused, read from Dovecot's log;
//! - memory per attenuation-table entry with 100,000 users (see [`table_memory`]);
//! - what other traffic pays: iperf3 through the router with no interceptor and with each
//!   dataplane and XDP mode, and the programs' own cost per frame (see [`other_traffic`]).
//!
//! The session rows run on `--dataplane` (default `auto`: tc on veth); run the bench once
//! with `--dataplane xdp` and once with `--dataplane tc` for the A/B figures.
//!
//! The load generator (`xtask loadgen`) runs inside the client namespace. Add scenarios in
//! `scenarios()`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicIsize, Ordering as AtomicOrdering};
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
    /// Duration of each check measurement (max 60s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
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
    /// Only measure the direct path (no interceptor).
    #[arg(long)]
    direct_only: bool,
    /// Skip the issue-3 rows (daemon in attenuate mode).
    #[arg(long)]
    skip_attenuate: bool,
    /// Users in the attenuation table for the memory-per-entry measurement (0 = skip it).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=2_000_000))]
    table_users: u64,
    /// Only measure the attenuation table's memory per entry (in-process: no set-up, build,
    /// namespaces, Dovecot or daemon; no JSON written).
    #[arg(long)]
    table_only: bool,
    /// Dataplane of the session rows: `xdp`, `tc` or `auto`.
    #[arg(long, default_value = "auto", value_parser = ["xdp", "tc", "auto"])]
    dataplane: String,
    /// Skip the other-traffic rows (iperf3 per dataplane and mode).
    #[arg(long, conflicts_with = "other_traffic_only")]
    skip_other_traffic: bool,
    /// Only the other-traffic rows (no Dovecot, no sessions; no JSON written).
    #[arg(long)]
    other_traffic_only: bool,
    /// Extra arguments for `pop3-interceptor run` (repeatable), after `--mode`.
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Dovecot with one login process per connection (its default) instead of its fast mode.
    #[arg(long)]
    dovecot_secure_login: bool,
    /// Where to write the JSON (default: <target>/bench.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One measurement, made directly and through the daemon in `daemon_mode`.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    /// Load generator mode: `check` or `retr`.
    pub mode: &'static str,
    pub concurrency: usize,
    /// `pop3-interceptor run --mode` for the "through" measurement: `relay` (issue 2) or
    /// `attenuate` (issue 3).
    pub daemon_mode: &'static str,
}

fn scenario(
    name: &str,
    mode: &'static str,
    concurrency: usize,
    daemon_mode: &'static str,
) -> Scenario {
    Scenario {
        name: name.into(),
        mode,
        concurrency,
        daemon_mode,
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        scenario("check c=1", "check", 1, "relay"),
        scenario("check c=32", "check", 32, "relay"),
        scenario("retr 1 session", "retr", 1, "relay"),
        scenario("attenuated check c=1", "check", 1, "attenuate"),
        scenario("attenuated check c=32", "check", 32, "attenuate"),
    ]
}

/// The same load directly to Dovecot is measured once and compared with every daemon mode.
fn same_load(a: &Scenario, b: &Scenario) -> bool {
    a.mode == b.mode && a.concurrency == b.concurrency
}

#[derive(Debug, Serialize)]
struct Measurement {
    /// `direct` (client to Dovecot, no daemon) or `through` (the daemon on the path).
    path: String,
    /// The daemon's `--mode` for `through` measurements; `None` for `direct` ones.
    daemon_mode: Option<&'static str>,
    scenario: Scenario,
    report: LoadReport,
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
    /// `--dataplane` of the session rows.
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
}

struct Bench<'a> {
    bin_args: Vec<String>,
    args: &'a BenchArgs,
    topo: &'a Topology,
    exe: PathBuf,
}

impl Bench<'_> {
    fn loadgen(&self, sc: &Scenario) -> Result<LoadReport> {
        self.loadgen_bounded(sc, None)
    }

    /// Like `loadgen`, stopping after `max_sessions` check sessions if given.
    fn loadgen_bounded(&self, sc: &Scenario, max_sessions: Option<u64>) -> Result<LoadReport> {
        let exe = self.exe.display().to_string();
        let target = server_pop3_v4().to_string();
        let conc = sc.concurrency.to_string();
        let mut args: Vec<String> = vec![
            exe,
            "loadgen".into(),
            "--json".into(),
            "--target".into(),
            target,
            "--mode".into(),
            sc.mode.into(),
            "--pass".into(),
            BENCH_PASS.into(),
            "--concurrency".into(),
            conc,
        ];
        let limit = if sc.mode == "retr" {
            args.extend([
                "--user".into(),
                BIG_USER.into(),
                "--duration".into(),
                "60s".into(),
            ]);
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

    /// Runs the scenarios whose daemon mode is `daemon_mode` (for "direct": the distinct loads
    /// of every mode, once each).
    fn run_path(&self, path: &str, daemon_mode: &str, out: &mut Vec<Measurement>) -> Result<()> {
        let mut todo: Vec<Scenario> = Vec::new();
        for sc in scenarios() {
            let wanted = if path == "direct" {
                !todo.iter().any(|t| same_load(t, &sc))
            } else {
                sc.daemon_mode == daemon_mode
            };
            if wanted {
                todo.push(sc);
            }
        }
        for sc in todo {
            eprint!("bench: {path:<9} {:<22} ... ", sc.name);
            let r = self.loadgen(&sc)?;
            eprintln!(
                "{} sessions, {} errors, {:.0}/s, p50 {} us, p99 {} us{}",
                r.sessions,
                r.errors,
                r.sessions_per_s,
                r.p50_us,
                r.p99_us,
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
                path: path.into(),
                daemon_mode: (path != "direct").then_some(sc.daemon_mode),
                scenario: sc,
                report: r,
            });
        }
        Ok(())
    }
}

impl Bench<'_> {
    /// The issue-3 rows: the daemon in attenuate mode, its table warmed by one check per
    /// user, then the attenuated check scenarios; Dovecot's log says how many logins they cost.
    fn run_attenuated(
        &self,
        bin: &std::path::Path,
        dovecot: &Dovecot,
        out: &mut Vec<Measurement>,
    ) -> Result<AttenuationCheck> {
        let mut extra_args = vec!["--mode".to_string(), "attenuate".to_string()];
        extra_args.extend(["--dataplane".to_string(), self.args.dataplane.clone()]);
        extra_args.extend(one_source_load());
        if !self.bin_args.iter().any(|a| a.starts_with("--interval")) {
            // Far longer than the run: every check after the warm-up may be attenuated.
            extra_args.extend(["--interval".to_string(), "15m".to_string()]);
        }
        extra_args.extend(self.bin_args.iter().cloned());
        let opts = InterceptorOptions {
            bin: Some(bin.to_path_buf()),
            extra_args,
            ..Default::default()
        };
        let mut icpt = Interceptor::start_with(self.topo, opts)
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
            eprint!(
                "bench: {:<9} {:<22} ... ",
                "through", "warm-up (1 per user)"
            );
            let warm =
                self.loadgen_bounded(&scenario("warm-up", "check", 1, "attenuate"), Some(users))?;
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
            self.run_path("through", "attenuate", out)?;
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
        let t = table_memory(args.table_users.max(1) as usize)?;
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
        bin_args: args.daemon_args.clone(),
        args: &args,
        topo: &topo,
        exe,
    };
    let mut ms = Vec::new();
    // Dovecot's first login of a user creates its index files (several ms): log every user in
    // once first, or whichever path runs first pays for it.
    eprint!("bench: {:<9} {:<22} ... ", "direct", "Dovecot warm-up");
    let warm = bench.loadgen_bounded(&scenario("warm-up", "check", 8, "none"), Some(args.users))?;
    eprintln!("{} sessions, {} errors", warm.sessions, warm.errors);
    bench.run_path("direct", "", &mut ms)?;
    if let Some(bin) = &bin {
        let mut extra_args = vec!["--mode".to_string(), "relay".to_string()];
        extra_args.extend(["--dataplane".to_string(), args.dataplane.clone()]);
        extra_args.extend(one_source_load());
        extra_args.extend(args.daemon_args.iter().cloned());
        let opts = InterceptorOptions {
            bin: Some(bin.clone()),
            extra_args,
            ..Default::default()
        };
        let mut icpt = Interceptor::start_with(&topo, opts).context("starting the interceptor")?;
        let res = bench.run_path("through", "relay", &mut ms);
        icpt.terminate(Duration::from_secs(10));
        res?;
    }
    let attenuation = match &bin {
        Some(bin) if !args.skip_attenuate => Some(bench.run_attenuated(bin, &dovecot, &mut ms)?),
        _ => None,
    };
    drop(dovecot);
    let other = match &bin {
        Some(bin) if !args.skip_other_traffic => {
            Some(other_traffic::measure(&topo, bin, args.duration)?)
        }
        _ => None,
    };
    let table_memory = if args.table_users > 0 {
        eprint!("bench: table memory with {} users ... ", args.table_users);
        let t = table_memory(args.table_users as usize)?;
        eprintln!(
            "{:.0} B/entry requested, {:.0} B/entry malloc ({:.1} s)",
            t.requested_bytes_per_entry, t.malloc_bytes_per_entry, t.elapsed_s
        );
        Some(t)
    } else {
        None
    };

    print_table(&ms);
    print_issue3(&ms, attenuation.as_ref(), table_memory.as_ref());
    if let Some(other) = &other {
        other_traffic::print(other);
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
    };
    let out = match &args.out {
        Some(p) => p.clone(),
        None => run::target_dir()?.join("bench.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// The load generator must be lean (DESIGN.md): use a release build of xtask.
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

fn print_table(ms: &[Measurement]) {
    let direct = |sc: &Scenario| {
        ms.iter()
            .find(|m| m.path == "direct" && same_load(&m.scenario, sc))
            .map(|m| &m.report)
    };
    let through = |sc: &Scenario| {
        ms.iter()
            .find(|m| m.path == "through" && m.scenario.name == sc.name)
            .map(|m| &m.report)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(d), Some(t)) if d > 0.0 => format!("{:.2}x", t / d),
        _ => "-".to_string(),
    };
    let fmt = |v: Option<f64>, prec: usize| v.map(|v| format!("{v:.prec$}")).unwrap_or("-".into());
    println!();
    println!(
        "{:<40} {:<10} {:>10} {:>10} {:>15}",
        "metric", "daemon", "direct", "through", "through/direct"
    );
    for sc in scenarios() {
        let (d, t) = (direct(&sc), through(&sc));
        type Row = (String, fn(&LoadReport) -> f64, usize);
        let rows: Vec<Row> = if sc.mode == "retr" {
            vec![
                (format!("{} MB/s", sc.name), |r| r.mb_per_s, 1),
                (
                    format!("{} p50 ms", sc.name),
                    |r| r.p50_us as f64 / 1000.0,
                    1,
                ),
            ]
        } else {
            vec![
                (format!("{} sessions/s", sc.name), |r| r.sessions_per_s, 0),
                (format!("{} p50 us", sc.name), |r| r.p50_us as f64, 0),
                (format!("{} p99 us", sc.name), |r| r.p99_us as f64, 0),
                (format!("{} errors", sc.name), |r| r.errors as f64, 0),
                (
                    format!("{} of which timeouts", sc.name),
                    |r| r.timeouts as f64,
                    0,
                ),
            ]
        };
        for (label, f, prec) in rows {
            let (dv, tv) = (d.map(f), t.map(f));
            println!(
                "{label:<40} {:<10} {:>10} {:>10} {:>15}",
                sc.daemon_mode,
                fmt(dv, prec),
                fmt(tv, prec),
                ratio(dv, tv)
            );
        }
    }
}

/// Issue 3's targets: attenuated >= 3x Dovecot's sessions/s and <= 0.5x its p50; table entries
/// under 256 bytes; and what the attenuated runs cost Dovecot.
fn print_issue3(ms: &[Measurement], att: Option<&AttenuationCheck>, mem: Option<&TableMemory>) {
    println!();
    println!("issue 3 targets:");
    for sc in scenarios().iter().filter(|s| s.daemon_mode == "attenuate") {
        let d = ms
            .iter()
            .find(|m| m.path == "direct" && same_load(&m.scenario, sc));
        let t = ms
            .iter()
            .find(|m| m.path == "through" && m.scenario.name == sc.name);
        let (Some(d), Some(t)) = (d, t) else { continue };
        let (d, t) = (&d.report, &t.report);
        let speed = if d.sessions_per_s > 0.0 {
            t.sessions_per_s / d.sessions_per_s
        } else {
            0.0
        };
        let lat = if d.p50_us > 0 {
            t.p50_us as f64 / d.p50_us as f64
        } else {
            f64::INFINITY
        };
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "  {:<24} sessions/s {:>8.0} vs {:>6.0} = {:>5.2}x (target >= 3x: {}); p50 {:>6} us vs {:>6} us = {:.2}x (target <= 0.5x: {})",
            sc.name,
            t.sessions_per_s,
            d.sessions_per_s,
            speed,
            verdict(speed >= 3.0),
            t.p50_us,
            d.p50_us,
            lat,
            verdict(lat <= 0.5)
        );
    }
    if let Some(a) = att {
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
    if let Some(m) = mem {
        print_table_memory(m);
    }
}

fn print_table_memory(m: &TableMemory) {
    println!(
        "  table memory, {} users (usernames of {} bytes): {:.0} B/entry requested from the \
         allocator, {:.0} B/entry in glibc malloc (target < 256: {})",
        m.users,
        m.username_len,
        m.requested_bytes_per_entry,
        m.malloc_bytes_per_entry,
        if m.malloc_bytes_per_entry < 256.0 && m.requested_bytes_per_entry < 256.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  (size_of Entry {} B, UserKey {} B; the rest is the hash map's slots and control \
         bytes, the Arc header and the timer list's B-tree nodes; usernames of up to 22 bytes \
         are inside the key)",
        m.entry_struct_bytes, m.key_struct_bytes
    );
    println!("  method: {}", m.method);
}

// ---------------------------------------------------------------------------------------------
// Memory per attenuation-table entry.
//
// Measured in-process: the real `pop3_engine::attenuation::AttenuationEngine` is driven through
// complete check sessions (greeting, USER, PASS, QUIT with the held STAT) for N distinct users
// against a scripted mail server, with a fake clock (1 ms per session), under a counting global
// allocator. Bytes live after minus bytes live before, divided by N. All sessions are closed
// first, so what remains is the table: map, timer list, keys (and long usernames). Two views:
// the bytes the engine asked the allocator for, and glibc's in-use bytes (`mallinfo2`:
// `uordblks + hblkhd`), which add malloc's per-chunk overhead and rounding.
// ---------------------------------------------------------------------------------------------

/// Heap bytes currently allocated through the global allocator (requested sizes).
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting live bytes.
struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, AtomicOrdering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, AtomicOrdering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, AtomicOrdering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                AtomicOrdering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// glibc's view of the heap in use (arena chunks + mmapped chunks), overhead included.
fn malloc_in_use() -> usize {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let mi = unsafe { libc::mallinfo2() };
    mi.uordblks + mi.hblkhd
}

/// What [`table_memory`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct TableMemory {
    pub method: &'static str,
    pub users: usize,
    pub table_len: usize,
    /// Net bytes requested from the allocator, per entry (strings included).
    pub requested_bytes_per_entry: f64,
    /// Net glibc in-use bytes (malloc overhead included), per entry.
    pub malloc_bytes_per_entry: f64,
    pub username_len: usize,
    /// `size_of::<Entry>()` and `size_of::<UserKey>()`: what each map slot and each shared key
    /// hold before the map's, the timer list's and malloc's overheads.
    pub entry_struct_bytes: usize,
    pub key_struct_bytes: usize,
    pub elapsed_s: f64,
}

/// Drives `users` check sessions through a fresh engine and measures the table's heap.
pub fn table_memory(users: usize) -> Result<TableMemory> {
    use pop3_engine::attenuation::{AttenuationEngine, Config, Salt};
    use pop3_engine::session::{Action, ConnInfo, Event, Output, Pop3Engine};
    use std::time::Instant;

    let started = Instant::now();
    let server: std::net::SocketAddr = "203.0.113.2:110".parse().unwrap();
    let t0 = Instant::now();
    let mut engine = AttenuationEngine::with_salt(Config::default(), Salt::random());
    let mut out: Vec<Output> = Vec::with_capacity(64);
    let mut queue: std::collections::VecDeque<Output> =
        std::collections::VecDeque::with_capacity(64);
    let mut feed: Vec<Vec<u8>> = Vec::with_capacity(8);
    // Warm the engine's per-connection structures and the server record with one session
    // whose user is then measured too (so the loop below covers users 1..N).
    let name = |i: usize| format!("user{i:07}");
    let username_len = name(0).len();
    let mut before: Option<(isize, usize)> = None;
    for i in 0..users {
        if i == 1 {
            before = Some((LIVE_BYTES.load(AtomicOrdering::Relaxed), malloc_in_use()));
        }
        let now = t0 + Duration::from_millis(i as u64);
        let conn = i as u64;
        let client: std::net::SocketAddr = format!("198.51.100.2:{}", 1024 + (i % 60000))
            .parse()
            .unwrap();
        out.clear();
        engine.open(conn, ConnInfo { client, server }, now, &mut out);
        // The first session to a server connects at once (its greeting is learnt).
        queue.extend(out.drain(..));
        let user = format!("USER {}\r\n", name(i)).into_bytes();
        let client_lines: [&[u8]; 3] = [&user, b"PASS secret-pw\r\n", b"QUIT\r\n"];
        let mut closed = false;
        for line in client_lines {
            out.clear();
            engine.handle(conn, Event::ClientData(line), now, &mut out);
            queue.extend(out.drain(..));
            // A scripted mail server answers whatever the engine sends it.
            let mut guard = 0;
            while let Some(o) = queue.pop_front() {
                guard += 1;
                if guard > 100 {
                    bail!("table_memory: the engine did not settle for user {i}");
                }
                feed.clear();
                let mut connected = false;
                match o.action {
                    Action::ConnectUpstream => connected = true,
                    Action::ToUpstream(bytes) => {
                        for cmd in bytes.split_inclusive(|&b| b == b'\n') {
                            let verb = cmd
                                .split(|&b| b == b' ' || b == b'\r')
                                .next()
                                .unwrap_or_default()
                                .to_ascii_uppercase();
                            feed.push(match verb.as_slice() {
                                b"CAPA" => {
                                    b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n.\r\n".to_vec()
                                }
                                b"STAT" => b"+OK 0 0\r\n".to_vec(),
                                b"QUIT" => b"+OK Logging out.\r\n".to_vec(),
                                _ => b"+OK\r\n".to_vec(),
                            });
                        }
                    }
                    Action::CloseClient | Action::CloseUpstream => closed = true,
                    Action::ToClient(_) => {}
                }
                if connected {
                    out.clear();
                    engine.handle(conn, Event::UpstreamConnected, now, &mut out);
                    queue.extend(out.drain(..));
                    feed.push(b"+OK Dovecot ready.\r\n".to_vec());
                }
                for answer in feed.drain(..) {
                    out.clear();
                    engine.handle(conn, Event::UpstreamData(&answer), now, &mut out);
                    queue.extend(out.drain(..));
                }
            }
        }
        if !closed {
            bail!("table_memory: session {i} did not end");
        }
        engine.close(conn, now);
        // The daemon drains the engine's change list for its table mirror all the time.
        drop(engine.take_changes());
    }
    let (live0, malloc0) = before.unwrap_or((0, 0));
    let live1 = LIVE_BYTES.load(AtomicOrdering::Relaxed);
    let malloc1 = malloc_in_use();
    let counted = users.saturating_sub(1).max(1) as f64;
    let c = engine.counters();
    if engine.table().len() != users || c.checks_seen != users as u64 {
        bail!(
            "table_memory: expected {users} entries and checks, got {} and {:?}",
            engine.table().len(),
            c
        );
    }
    let verified = engine
        .table()
        .iter()
        .filter(|(_, e)| e.verified().is_some())
        .count();
    if verified != users {
        bail!("table_memory: only {verified} of {users} entries verified empty");
    }
    let r = TableMemory {
        method: "AttenuationEngine driven through N check sessions, fake clock, counting global \
                 allocator (net live bytes after - before) and glibc mallinfo2",
        users,
        table_len: engine.table().len(),
        requested_bytes_per_entry: (live1 - live0) as f64 / counted,
        malloc_bytes_per_entry: (malloc1 as f64 - malloc0 as f64) / counted,
        username_len,
        entry_struct_bytes: std::mem::size_of::<pop3_engine::attenuation::Entry>(),
        key_struct_bytes: std::mem::size_of::<pop3_engine::attenuation::UserKey>(),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    drop(engine);
    Ok(r)
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
