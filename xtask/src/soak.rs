//! `cargo xtask soak`: a population of mail clients against the real Dovecot, with real
//! deliveries through `dovecot-lda`, in three configurations side by side:
//!
//! - `direct`: no interceptor;
//! - `time-rule`: through the interceptor, attenuating by `--interval` alone;
//! - `notify`: through the interceptor with its defaults (`--interval 15m`,
//!   `--notify-interval 1h`) and Dovecot's `push_notification` plugin (`ox` driver) posting
//!   every delivery to it (the demand rule).
//!
//! Each configuration gets a fresh topology and Dovecot. Every user polls at its own period
//! (uniform in `--poll-min..--poll-max`); a share of them (`--keep-percent`) leave their mail
//! on the server (STAT, UIDL, RETR of new UIDs only), the others RETR and DELE everything.
//! Deliveries are a Poisson process (`--mean-gap` per user) to random users, each message
//! carrying a unique id in its Subject. After `--duration`, deliveries stop and the clients
//! poll on until every message was seen (bounded). Reported: checks, the share that reached
//! Dovecot (its own log counts the logins), the share of checks that found nothing new and
//! never reached Dovecot, messages lost and duplicated, and the delivery delay (delivery
//! start to first RETR by the client). Writes `<target>/soak.json`.
//!
//! A little over 600 lines: one command whose parts (population, deliverer, clients,
//! report) share the `Ledger`; the client loop is the part to move out if it grows.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use e2e::dovecot::make_message;
use e2e::topology::{ROUTER_SERVER_V4, server_pop3_v4};
use e2e::{Dovecot, DovecotOptions, Interceptor, InterceptorOptions, Node, Topology};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::loadgen::Conn;
use crate::run;

const PASS: &str = "soak-pw";
const SECRET: &str = "soak-notify-secret";
/// The notification endpoint: the router's mail-server-facing address.
const NOTIFY_PORT: u16 = 8110;
/// Most deliveries in one configuration, whatever the rate.
const MAX_DELIVERIES: u64 = 20_000;
/// Most bytes of one multi-line answer the clients read.
const MAX_ANSWER: usize = 4 << 20;
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// Clients straight to Dovecot.
    Direct,
    /// Through the interceptor, attenuating by --interval alone.
    TimeRule,
    /// Through the interceptor with Dovecot's push notifications.
    Notify,
}

#[derive(Args)]
pub struct SoakArgs {
    /// Do not run scripts/setup.sh first.
    #[arg(long)]
    skip_setup: bool,
    /// Do not build the daemon (use the existing release binary).
    #[arg(long)]
    skip_build: bool,
    /// Which configurations to run (repeatable; default: all three).
    #[arg(long = "config", value_enum)]
    configs: Vec<Config>,
    /// How long deliveries go on in each configuration (max 10m).
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Users (mail clients).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=500))]
    users: u64,
    /// Share of clients that leave their mail on the server, in percent.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(0..=100))]
    keep_percent: u64,
    /// Shortest polling period of a client.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    poll_min: Duration,
    /// Longest polling period of a client.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    poll_max: Duration,
    /// Mean time between two deliveries to one user (the population's deliveries are a
    /// Poisson process of rate users / mean-gap).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    mean_gap: Duration,
    /// The daemon's --interval in the `time-rule` configuration.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Seed of the random choices (periods, client kinds, delivery times and users).
    #[arg(long, default_value_t = 9)]
    seed: u64,
    /// Extra arguments for `pop3-interceptor run` (repeatable).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Where to write the JSON (default: <target>/soak.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Checks and logins of one kind of client.
#[derive(Debug, Default, Clone, Serialize)]
struct KindResult {
    clients: u64,
    /// Check sessions completed.
    checks: u64,
    /// Checks that found at least one new message.
    checks_new: u64,
    /// Checks that found nothing new.
    checks_empty: u64,
    /// Dovecot logins of these users (its log).
    logins: u64,
    /// Share of checks that reached Dovecot: logins / checks.
    reached_share: f64,
    /// Share of the checks that found nothing new and never reached Dovecot:
    /// 1 - (logins - checks_new) / checks_empty (a check that found new mail must have
    /// logged in, and no check logs in twice).
    empty_avoided_share: f64,
}

#[derive(Debug, Serialize)]
struct ConfigResult {
    config: Config,
    daemon_args: Vec<String>,
    deliveries: u64,
    delivery_errors: u64,
    seen: u64,
    lost: u64,
    duplicated: u64,
    session_errors: u64,
    first_errors: Vec<String>,
    delay_p50_s: f64,
    delay_p99_s: f64,
    delay_worst_s: f64,
    all: KindResult,
    deleting: KindResult,
    keeping: KindResult,
    elapsed_s: f64,
}

#[derive(Serialize)]
struct SoakJson<'a> {
    duration_s: f64,
    users: u64,
    keep_percent: u64,
    poll_min_s: f64,
    poll_max_s: f64,
    mean_gap_s: f64,
    interval_s: f64,
    seed: u64,
    results: &'a [ConfigResult],
}

/// One client of the population.
struct Client {
    user: String,
    keeps: bool,
    period: Duration,
    offset: Duration,
}

/// What the clients and the deliverer share.
#[derive(Default)]
struct Ledger {
    /// Message id -> delivery start (since the run's start).
    delivered: Mutex<HashMap<u64, Duration>>,
    /// Message id -> first RETR (since the run's start).
    seen: Mutex<HashMap<u64, Duration>>,
    duplicated: AtomicU64,
    deliveries_done: AtomicBool,
    session_errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Ledger {
    fn all_seen(&self) -> bool {
        self.deliveries_done.load(Ordering::Relaxed)
            && self.seen.lock().unwrap().len() >= self.delivered.lock().unwrap().len()
    }

    fn saw(&self, id: u64, at: Duration) {
        if self.seen.lock().unwrap().insert(id, at).is_some() {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, err: String) {
        self.session_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 5 && !first.contains(&err) {
            first.push(err);
        }
    }
}

/// A client's tally.
#[derive(Default)]
struct Tally {
    checks: u64,
    checks_new: u64,
}

pub fn run(args: SoakArgs) -> Result<ExitCode> {
    if args.duration > Duration::from_secs(600) {
        bail!("--duration is limited to 10m");
    }
    if args.poll_min.is_zero() || args.poll_min > args.poll_max {
        bail!("--poll-min must be positive and at most --poll-max");
    }
    if args.mean_gap < Duration::from_secs(1) {
        bail!("--mean-gap must be at least 1s");
    }
    if !args.skip_setup {
        run::setup()?;
    }
    let configs = if args.configs.is_empty() {
        vec![Config::Direct, Config::TimeRule, Config::Notify]
    } else {
        args.configs.clone()
    };
    let bin = if configs == [Config::Direct] {
        None
    } else if args.skip_build {
        Some(run::daemon_bin()?)
    } else {
        Some(run::build_daemon()?)
    };
    let mut results = Vec::new();
    for config in configs {
        eprintln!("soak: {config:?} for {:?} ...", args.duration);
        let result = run_config(&args, config, bin.as_deref())
            .with_context(|| format!("soak {config:?}"))?;
        eprintln!(
            "soak: {config:?}: {} checks, {} logins, {} delivered, {} lost, {} duplicated, worst delay {:.2} s",
            result.all.checks,
            result.all.logins,
            result.deliveries,
            result.lost,
            result.duplicated,
            result.delay_worst_s
        );
        results.push(result);
    }
    print_table(&results);
    let json = SoakJson {
        duration_s: args.duration.as_secs_f64(),
        users: args.users,
        keep_percent: args.keep_percent,
        poll_min_s: args.poll_min.as_secs_f64(),
        poll_max_s: args.poll_max.as_secs_f64(),
        mean_gap_s: args.mean_gap.as_secs_f64(),
        interval_s: args.interval.as_secs_f64(),
        seed: args.seed,
        results: &results,
    };
    let out = match &args.out {
        Some(p) => p.clone(),
        None => run::target_dir()?.join("soak.json"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", out.display());
    let clean = results
        .iter()
        .all(|r| r.lost == 0 && r.duplicated == 0 && r.delivery_errors == 0);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn population(args: &SoakArgs) -> Vec<Client> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let keepers = (args.users * args.keep_percent).div_ceil(100);
    (0..args.users)
        .map(|i| {
            let period = rng.random_range(args.poll_min..=args.poll_max);
            Client {
                user: format!("soak{i:03}"),
                keeps: i < keepers,
                period,
                offset: rng.random_range(Duration::ZERO..=period),
            }
        })
        .collect()
}

fn run_config(
    args: &SoakArgs,
    config: Config,
    bin: Option<&std::path::Path>,
) -> Result<ConfigResult> {
    let clients = population(args);
    let topo = Topology::new()?;
    let endpoint = SocketAddr::new(ROUTER_SERVER_V4.into(), NOTIFY_PORT);
    let dovecot = Dovecot::start_with(
        &topo,
        DovecotOptions {
            users: clients
                .iter()
                .map(|c| (c.user.clone(), PASS.to_owned()))
                .collect(),
            fast_login: true,
            push_url: (config == Config::Notify).then(|| {
                format!("http://dovecot:{SECRET}@{endpoint}/preliminary/http-notify/v1/notify")
            }),
            ..Default::default()
        },
    )?;
    if config == Config::Notify {
        for client in &clients {
            dovecot.enable_push(&topo, &client.user)?;
        }
    }
    let mut daemon_args: Vec<String> = match config {
        Config::Direct => Vec::new(),
        Config::TimeRule => vec![
            "--interval".into(),
            format!("{}ms", args.interval.as_millis()),
        ],
        Config::Notify => {
            let secret = topo.dir().join("notify.secret");
            std::fs::write(&secret, format!("{SECRET}\n"))?;
            vec![
                "--notify-listen".into(),
                endpoint.to_string(),
                "--notify-secret-file".into(),
                secret.display().to_string(),
            ]
        }
    };
    if config != Config::Direct {
        daemon_args.extend(args.daemon_args.iter().cloned());
    }
    let mut interceptor = match (config, bin) {
        (Config::Direct, _) => None,
        (_, Some(bin)) => Some(
            Interceptor::start_with(
                &topo,
                InterceptorOptions {
                    bin: Some(bin.to_path_buf()),
                    extra_args: daemon_args.clone(),
                    ..Default::default()
                },
            )
            .context("starting the interceptor")?,
        ),
        (_, None) => bail!("no daemon binary"),
    };
    let logins_before = dovecot.logins().len();
    let ledger = Ledger::default();
    let drain = args.poll_max
        + Duration::from_secs(15)
        + if config == Config::TimeRule {
            args.interval
        } else {
            Duration::ZERO
        };
    let ns = topo.ns(Node::Client).to_owned();
    let started = Instant::now();
    let (tallies, delivery_errors) = std::thread::scope(|scope| -> Result<_> {
        let deliverer = scope.spawn(|| deliver(args, &clients, &topo, &dovecot, &ledger, started));
        let polling =
            scope.spawn(|| poll_all(&ns, &clients, &ledger, started, args.duration + drain));
        let delivery_errors = deliverer.join().expect("deliverer");
        let tallies = polling.join().expect("clients")?;
        Ok((tallies, delivery_errors))
    })?;
    let elapsed = started.elapsed();
    if let Some(interceptor) = &mut interceptor {
        interceptor.terminate(Duration::from_secs(10));
    }
    // Dovecot's log process writes asynchronously.
    std::thread::sleep(Duration::from_secs(1));
    let mut logins_of: HashMap<String, u64> = HashMap::new();
    for login in &dovecot.logins()[logins_before..] {
        *logins_of.entry(login.user.clone()).or_default() += 1;
    }
    let kind = |keeps: Option<bool>| {
        let mut k = KindResult::default();
        for (client, tally) in clients.iter().zip(&tallies) {
            if keeps.is_some_and(|keeps| keeps != client.keeps) {
                continue;
            }
            k.clients += 1;
            k.checks += tally.checks;
            k.checks_new += tally.checks_new;
            k.logins += logins_of.get(&client.user).copied().unwrap_or(0);
        }
        k.checks_empty = k.checks - k.checks_new;
        k.reached_share = ratio(k.logins, k.checks);
        k.empty_avoided_share = 1.0 - ratio(k.logins.saturating_sub(k.checks_new), k.checks_empty);
        k
    };
    let delivered = ledger.delivered.lock().unwrap().clone();
    let seen = ledger.seen.lock().unwrap().clone();
    let mut delays: Vec<f64> = delivered
        .iter()
        .filter_map(|(id, at)| Some(seen.get(id)?.saturating_sub(*at).as_secs_f64()))
        .collect();
    delays.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        delays
            .get(((delays.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(ConfigResult {
        config,
        daemon_args,
        deliveries: delivered.len() as u64,
        delivery_errors,
        seen: delivered.keys().filter(|id| seen.contains_key(id)).count() as u64,
        lost: delivered.keys().filter(|id| !seen.contains_key(id)).count() as u64,
        duplicated: ledger.duplicated.load(Ordering::Relaxed),
        session_errors: ledger.session_errors.load(Ordering::Relaxed),
        first_errors: ledger.first_errors.lock().unwrap().clone(),
        delay_p50_s: quantile(0.5),
        delay_p99_s: quantile(0.99),
        delay_worst_s: delays.last().copied().unwrap_or(0.0),
        all: kind(None),
        deleting: kind(Some(false)),
        keeping: kind(Some(true)),
        elapsed_s: elapsed.as_secs_f64(),
    })
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Poisson deliveries through dovecot-lda until the duration ends; returns the failures.
fn deliver(
    args: &SoakArgs,
    clients: &[Client],
    topo: &Topology,
    dovecot: &Dovecot,
    ledger: &Ledger,
    started: Instant,
) -> u64 {
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let rate = clients.len() as f64 / args.mean_gap.as_secs_f64();
    let mut next = Duration::ZERO;
    let mut errors = 0;
    for id in 0..MAX_DELIVERIES {
        // Exponential gaps: a Poisson process.
        let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
        next += Duration::from_secs_f64(-uniform.ln() / rate);
        if next >= args.duration {
            break;
        }
        std::thread::sleep(next.saturating_sub(started.elapsed()));
        let client = &clients[rng.random_range(0..clients.len())];
        let message = make_message(
            "soak@example.org",
            &format!("{}@example.org", client.user),
            &format!("soak {id}"),
            "soak",
        );
        ledger
            .delivered
            .lock()
            .unwrap()
            .insert(id, started.elapsed());
        if let Err(err) = dovecot.deliver_lda(topo, &client.user, &message) {
            errors += 1;
            ledger.delivered.lock().unwrap().remove(&id);
            eprintln!("soak: delivery {id} failed: {err:#}");
        }
    }
    ledger.deliveries_done.store(true, Ordering::Relaxed);
    errors
}

/// Runs every client in the client namespace until `limit`, or until deliveries ended and
/// every delivered message was seen.
fn poll_all(
    ns: &str,
    clients: &[Client],
    ledger: &Ledger,
    started: Instant,
    limit: Duration,
) -> Result<Vec<Tally>> {
    enter_netns(ns)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let tasks = clients
            .iter()
            .map(|client| poll_one(client, ledger, started, limit));
        Ok(futures_util::future::join_all(tasks).await)
    })
}

/// This thread's network namespace becomes `ns` (sockets made later belong to it).
fn enter_netns(ns: &str) -> Result<()> {
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    use std::os::fd::AsFd;
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening /run/netns/{ns}"))?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .with_context(|| format!("setns {ns}"))
}

async fn poll_one(client: &Client, ledger: &Ledger, started: Instant, limit: Duration) -> Tally {
    let mut tally = Tally::default();
    let mut known_uids: HashSet<String> = HashSet::new();
    let mut at = client.offset;
    loop {
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        if started.elapsed() >= limit || ledger.all_seen() {
            return tally;
        }
        let session = tokio::time::timeout(
            SESSION_TIMEOUT,
            check(client, &mut known_uids, ledger, started),
        )
        .await;
        match session {
            Ok(Ok(new)) => {
                tally.checks += 1;
                tally.checks_new += u64::from(new);
            }
            Ok(Err(err)) => ledger.error(format!("{}: {err:#}", client.user)),
            Err(_) => ledger.error(format!("{}: session timed out", client.user)),
        }
        at += client.period;
    }
}

/// One check; returns whether it found new mail.
async fn check(
    client: &Client,
    known_uids: &mut HashSet<String>,
    ledger: &Ledger,
    started: Instant,
) -> Result<bool> {
    let mut step = "connect";
    let mut c = Conn::open(server_pop3_v4(), &mut step).await?;
    c.login(&client.user, PASS, &mut step).await?;
    c.cmd("STAT", "STAT\r\n").await?;
    let count: u32 = c
        .reply()
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("STAT: {}", c.reply()))?;
    let mut new = Vec::new();
    if client.keeps {
        if count > 0 {
            c.cmd("UIDL", "UIDL\r\n").await?;
            for line in c.read_lines(MAX_ANSWER).await? {
                let mut words = line.split_whitespace();
                let (Some(n), Some(uid)) = (words.next(), words.next()) else {
                    bail!("UIDL line {line:?}");
                };
                if !known_uids.contains(uid) {
                    new.push((n.to_owned(), Some(uid.to_owned())));
                }
            }
        }
    } else {
        new.extend((1..=count).map(|n| (n.to_string(), None)));
    }
    for (n, uid) in &new {
        c.cmd("RETR", &format!("RETR {n}\r\n")).await?;
        let lines = c.read_lines(MAX_ANSWER).await?;
        let id = lines
            .iter()
            .find_map(|l| l.strip_prefix("Subject: soak ")?.trim().parse::<u64>().ok())
            .with_context(|| format!("message {n} has no soak id"))?;
        ledger.saw(id, started.elapsed());
        if !client.keeps {
            c.cmd("DELE", &format!("DELE {n}\r\n")).await?;
        }
        if let Some(uid) = uid {
            known_uids.insert(uid.clone());
        }
    }
    c.cmd("QUIT", "QUIT\r\n").await?;
    Ok(!new.is_empty())
}

fn print_table(results: &[ConfigResult]) {
    let percent = |x: f64| format!("{:.1}%", x * 100.0);
    println!();
    println!(
        "| config | checks | reached Dovecot | empty checks kept from Dovecot (all / deleting / keeping) | delivered | lost | duplicated | delay p50 / p99 / worst | session errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        println!(
            "| {} | {} | {} ({}) | {} / {} / {} | {} | {} | {} | {:.2} / {:.2} / {:.2} s | {} |",
            serde_json::to_value(r.config)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.all.checks,
            r.all.logins,
            percent(r.all.reached_share),
            percent(r.all.empty_avoided_share),
            percent(r.deleting.empty_avoided_share),
            percent(r.keeping.empty_avoided_share),
            r.deliveries,
            r.lost,
            r.duplicated,
            r.delay_p50_s,
            r.delay_p99_s,
            r.delay_worst_s,
            r.session_errors,
        );
    }
    for r in results.iter().filter(|r| !r.first_errors.is_empty()) {
        println!("{:?}: first errors: {:?}", r.config, r.first_errors);
    }
}
