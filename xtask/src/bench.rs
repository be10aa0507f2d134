//! `cargo xtask bench`: POP3 check sessions/s and p50/p99 latency at concurrency 1 and 32, and
//! RETR throughput of a 10 MB message, directly to Dovecot and through the interceptor, in one
//! run on one topology. The load generator (`xtask loadgen`) runs inside the client namespace.
//!
//! Add scenarios in `scenarios()`; add paths (e.g. "attenuated": the daemon with an interval)
//! in `run()`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use e2e::dovecot::make_large_message;
use e2e::topology::server_pop3_v4;
use e2e::{Dovecot, DovecotOptions, Interceptor, InterceptorOptions, Node, Topology};
use serde::Serialize;

use crate::loadgen::{LoadReport, parse_duration};
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
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Number of check users (sessions go round-robin over them).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1000))]
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
    /// Extra arguments for `pop3-interceptor run` (repeatable).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Dovecot with one login process per connection (its default) instead of its fast mode.
    #[arg(long)]
    dovecot_secure_login: bool,
    /// Where to write the JSON (default: <target>/bench.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One measurement the bench makes on every path.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub mode: &'static str,
    pub concurrency: usize,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "check c=1".into(),
            mode: "check",
            concurrency: 1,
        },
        Scenario {
            name: "check c=32".into(),
            mode: "check",
            concurrency: 32,
        },
        Scenario {
            name: "retr 1 session".into(),
            mode: "retr",
            concurrency: 1,
        },
    ]
}

#[derive(Debug, Serialize)]
struct Measurement {
    path: String,
    scenario: Scenario,
    report: LoadReport,
}

#[derive(Debug, Serialize)]
struct BenchJson {
    duration_s: f64,
    users: u64,
    retr_bytes: usize,
    dovecot_fast_login: bool,
    nproc: usize,
    measurements: Vec<Measurement>,
}

struct Bench<'a> {
    args: &'a BenchArgs,
    topo: &'a Topology,
    exe: PathBuf,
}

impl Bench<'_> {
    fn loadgen(&self, sc: &Scenario) -> Result<LoadReport> {
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

    fn run_path(&self, path: &str, out: &mut Vec<Measurement>) -> Result<()> {
        for sc in scenarios() {
            eprint!("bench: {path:<8} {:<16} ... ", sc.name);
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
                scenario: sc,
                report: r,
            });
        }
        Ok(())
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.duration > Duration::from_secs(60) {
        bail!("--duration is limited to 60s");
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
    bench.run_path("direct", &mut ms)?;
    if let Some(bin) = bin {
        let opts = InterceptorOptions {
            bin: Some(bin),
            extra_args: args.daemon_args.clone(),
            ..Default::default()
        };
        let mut icpt = Interceptor::start_with(&topo, opts).context("starting the interceptor")?;
        let res = bench.run_path("through", &mut ms);
        icpt.terminate(Duration::from_secs(10));
        res?;
    }
    drop(dovecot);

    print_table(&ms);
    let json = BenchJson {
        duration_s: args.duration.as_secs_f64(),
        users: args.users,
        retr_bytes: big.len(),
        dovecot_fast_login: fast,
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        measurements: ms,
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
    let get = |path: &str, name: &str| {
        ms.iter()
            .find(|m| m.path == path && m.scenario.name == name)
            .map(|m| &m.report)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(d), Some(t)) if d > 0.0 => format!("{:.2}x", t / d),
        _ => "-".to_string(),
    };
    let fmt = |v: Option<f64>, prec: usize| v.map(|v| format!("{v:.prec$}")).unwrap_or("-".into());
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "metric", "direct", "through", "through/direct"
    );
    for sc in scenarios() {
        let (d, t) = (get("direct", &sc.name), get("through", &sc.name));
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
            ]
        };
        for (label, f, prec) in rows {
            let (dv, tv) = (d.map(f), t.map(f));
            println!(
                "{label:<34} {:>12} {:>12} {:>10}",
                fmt(dv, prec),
                fmt(tv, prec),
                ratio(dv, tv)
            );
        }
    }
}
