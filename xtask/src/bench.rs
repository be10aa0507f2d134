//! `cargo xtask bench`: in one run on one topology, against the same Dovecot:
//!
//! - relay rows (daemon `--mode relay`): check sessions/s and p50/p99 latency at concurrency
//!   1 and 32, and RETR throughput of a 10 MB message, directly to Dovecot and through the
//!   transparent relay;
//! - attenuation rows (daemon `--mode attenuate`): the same check load once the attenuation table
//!   is warm (every user checked once, so its mailbox is verified empty), with the number of
//!   Dovecot logins the attenuated runs caused, read from Dovecot's log;
//! - memory per attenuation-table entry with 100,000 users (pop3-engine's `table_memory`
//!   test, see [`table_memory`]);
//! - what other traffic pays: iperf3 through the router with no interceptor and with each
//!   dataplane and XDP mode, and the programs' own cost per frame (see [`other_traffic`]).
//!
//! The session rows run on `--dataplane` (default `auto`: tc on veth); run the bench once
//! with `--dataplane xdp` and once with `--dataplane tc` for the A/B figures.
//!
//! The load generator (`xtask loadgen`) runs inside the client namespace. Add scenarios in
//! `scenarios()`.

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
    /// `pop3-interceptor run --mode` for the "through" measurement: `relay` or `attenuate`.
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
    /// The attenuation rows: the daemon in attenuate mode, its table warmed by one check per
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
    print_attenuation_targets(&ms, attenuation.as_ref(), table_memory.as_ref());
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

/// The attenuation targets: attenuated >= 3x Dovecot's sessions/s and <= 0.5x its p50; table entries
/// under 256 bytes; and what the attenuated runs cost Dovecot.
fn print_attenuation_targets(
    ms: &[Measurement],
    att: Option<&AttenuationCheck>,
    mem: Option<&TableMemory>,
) {
    println!();
    println!("attenuation targets:");
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

/// What [`table_memory`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct TableMemory {
    pub method: &'static str,
    pub users: usize,
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

/// Memory per attenuation-table entry with `users` users: runs pop3-engine's ignored
/// `table_memory` test (its counting allocator is that test binary's alone) in release
/// and reads the line it prints.
pub fn table_memory(users: usize) -> Result<TableMemory> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "test",
            "--release",
            "--quiet",
            "-p",
            "pop3-engine",
            "--features",
            "testing",
            "--test",
            "table_memory",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .env("TABLE_USERS", users.to_string())
        .output()
        .context("running cargo test --test table_memory")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("TABLE_MEMORY ")) else {
        bail!(
            "the table_memory test printed no result:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let field = |name: &str| -> Result<f64> {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok(TableMemory {
        method: "pop3-engine's table_memory test: the AttenuationEngine driven through N check \
                 sessions, fake clock, counting global allocator (net live bytes after - before) \
                 and glibc mallinfo2",
        users: field("users")? as usize,
        requested_bytes_per_entry: field("requested")?,
        malloc_bytes_per_entry: field("malloc")?,
        username_len: field("username_len")? as usize,
        entry_struct_bytes: field("entry")? as usize,
        key_struct_bytes: field("key")? as usize,
        elapsed_s: field("elapsed_s")?,
    })
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
