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
//! Each path runs check sessions at every `--concurrency` ([`runs`]: sessions/s, p50/p99
//! latency, and the CPU time per session of the process on the path, from /proc, see
//! [`cpu`]); `direct`, `nginx` and `relay` also RETR a 10 MB message. Every row is printed as a ratio against
//! `direct` and against `nginx` ([`report`]) and drawn as SVG charts ([`charts`]). Then:
//! memory per attenuation-table entry ([`table_memory`]), what other traffic pays
//! ([`other_traffic`]), and the edge cache's prefetch over a compressed day
//! ([`cache_day`]; alone with `--cache-only`).
//!
//! The daemon's rows run on `--dataplane` (default `auto`: tc on veth); run the bench once
//! with `--dataplane xdp` and once with `--dataplane tc` for the A/B figures. The relay and
//! attenuated rows run with one dataplane worker, then again with each of `--workers`
//! ([`workers`] prints them side by side).
//!
//! The load generator (`xtask loadgen`) runs inside the client namespace.

mod cache_day;
mod charts;
mod cpu;
mod peers;
mod report;
mod runs;
mod table_memory;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use e2e::dovecot::make_large_message;
use e2e::topology::server_pop3_v4;
use e2e::{Dovecot, DovecotOptions, Topology, TopologyOptions};
use serde::Serialize;

use crate::loadgen::LoadReport;
use crate::other_traffic::{self, OtherTraffic};
use crate::run;
use runs::{AttenuationCheck, Bench, print_attenuation_check};
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
    /// Worker counts (`--workers`) of the extra relay and attenuated rows, beside the
    /// one-worker rows (comma-separated). With `--dataplane xdp` the router's client-facing
    /// veth gets as many RX queues as the largest.
    #[arg(long, value_delimiter = ',', default_value = "2",
          value_parser = clap::value_parser!(u16).range(2..=16))]
    workers: Vec<u16>,
    /// Concurrencies of the extra workers' rows (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,64",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    workers_concurrency: Vec<u16>,
    /// Rounds of the path comparison (direct, the peers, the relay with one worker), one
    /// after the other: this machine's speed drifts over minutes, and a path measured only
    /// before or after another would carry the drift as its own. The tables and charts show
    /// each figure's median over the rounds; the JSON keeps every round.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10))]
    rounds: u64,
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
    IdealRelay,
}

impl Path {
    /// Every path, in the order of the tables and chart legends.
    pub const ALL: [Path; 6] = [
        Path::Direct,
        Path::Nginx,
        Path::Relay,
        Path::Attenuated,
        Path::Ideal,
        Path::IdealRelay,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Nginx => "nginx",
            Path::Relay => "relay",
            Path::Attenuated => "attenuated",
            Path::Ideal => "ideal",
            Path::IdealRelay => "ideal-relay",
        }
    }

    /// Whether the path can serve a real message (the attenuated and ideal ones answer
    /// checks only).
    fn serves_retr(self) -> bool {
        matches!(
            self,
            Path::Direct | Path::Nginx | Path::Relay | Path::IdealRelay
        )
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

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub path: Path,
    /// The round of the path comparison (1 for the rows measured once).
    pub round: u64,
    pub scenario: Scenario,
    pub report: LoadReport,
    /// CPU time (user + system, all threads and direct children) of the process on the
    /// path (daemon, nginx, ideal responder) per completed session; `None` for `direct`.
    pub cpu_us_per_session: Option<f64>,
    /// The daemon's `--workers` (`None` for the paths without the daemon).
    pub workers: Option<usize>,
}

#[derive(Debug, Serialize)]
struct BenchJson {
    /// `--dataplane` of the daemon's rows.
    dataplane: String,
    duration_s: f64,
    /// Rounds of the path comparison (each row of `measurements` has its own).
    rounds: u64,
    users: u64,
    retr_bytes: usize,
    dovecot_fast_login: bool,
    nproc: usize,
    measurements: Vec<Measurement>,
    attenuation: Option<AttenuationCheck>,
    /// What Dovecot saw of the attenuated runs with several workers.
    attenuation_workers: Vec<AttenuationCheck>,
    table_memory: Option<TableMemory>,
    other_traffic: Option<OtherTraffic>,
    cache_day: Option<cache_day::CacheDay>,
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

    // XDP gives each worker RX queues of its own: as many queues as the most workers (the
    // TC dataplane's TAP has a queue per worker whatever the veth has).
    let queues = match args.dataplane.as_str() {
        "xdp" => args.workers.iter().copied().max().unwrap_or(1),
        _ => 1,
    };
    let topo = Topology::with_options(TopologyOptions {
        rc0_queues: queues.into(),
    })?;
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
    for round in 1..=args.rounds {
        let first = ms.len();
        bench.measure((Path::Direct, None), server_pop3_v4(), None, &mut ms)?;
        if !args.direct_only && !args.skip_peers {
            bench.measure_peers(&mut ms)?;
        }
        if let Some(bin) = &bin {
            bench.measure_relay(bin, 1, &mut ms)?;
        }
        for m in &mut ms[first..] {
            m.round = round;
        }
    }
    let attenuation = match &bin {
        Some(bin) if !args.skip_attenuate => {
            Some(bench.measure_attenuated(bin, &dovecot, 1, &mut ms)?)
        }
        _ => None,
    };
    let mut attenuation_workers = Vec::new();
    if let Some(bin) = &bin {
        for &n in &args.workers {
            bench.measure_relay(bin, n.into(), &mut ms)?;
            if !args.skip_attenuate {
                let check = bench.measure_attenuated(bin, &dovecot, n.into(), &mut ms)?;
                attenuation_workers.push(check);
            }
        }
    }
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

    let rows = report::medians(&ms);
    report::print_paths(&rows, args.rounds);
    report::print_rounds(&ms);
    report::print_attenuation_targets(&rows);
    if let Some(a) = &attenuation {
        print_attenuation_check(a);
    }
    workers::print(&rows);
    for a in &attenuation_workers {
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
        rounds: args.rounds,
        users: args.users,
        retr_bytes: big.len(),
        dovecot_fast_login: fast,
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        measurements: ms,
        attenuation,
        attenuation_workers,
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
    for chart in charts::write(&rows, &charts_dir, &chart_caption(&json))? {
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

/// What the charts say about the run they come from.
fn chart_caption(j: &BenchJson) -> String {
    format!(
        "{} cores, {} users, {} s per point, median of {} rounds (attenuated: one run), dataplane {}",
        j.nproc, j.users, j.duration_s, j.rounds, j.dataplane
    )
}
