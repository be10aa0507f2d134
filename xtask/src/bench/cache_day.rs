//! `cargo xtask bench --cache-only`: the edge cache's prefetch over a day compressed
//! into minutes, once without the cache and once with it, on the same schedule.
//!
//! The day: mail arrives for every user at random times from 00:00 to 18:00; every
//! user checks once in the busy hour, 18:00 to 19:00 (RETR of each new message, DELE,
//! QUIT), and once more at 21:00 to collect what is left. The prefetch may run from
//! 20:00 to 17:00 (its window) and never from 17:00 to 20:00 (its busy hours); the
//! users' home edge is this one (a profile file). The daemon's day is as long as the
//! bench's (`day-length`), so its hours are the bench's.
//!
//! Reported: the bytes the mail server's interface sent during the busy hour, with and
//! without the cache, and during the whole day; the RETR latency as the clients saw it,
//! of messages the edge answered (its `cache_hits_total` is read around each RETR) and
//! of the others, which came from the server; messages lost
//! (delivered, never retrieved), duplicated (retrieved twice) and stale (retrieved
//! other than delivered).

use std::{
    collections::HashMap,
    io::{Read, Write},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use e2e::clients::RawSession;
use e2e::topology::server_pop3_v4;
use e2e::{Dovecot, DovecotOptions, Interceptor, InterceptorOptions, Node, Topology};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

const PASSWORD: &str = "day-pw";
const MASTER: &str = "edge";
const MASTER_PASSWORD: &str = "edge-master-pw";
const METRICS: &str = "127.0.0.1:9118";
const HOUR: f64 = 3600.0;

/// The day's settings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DaySettings {
    /// How long a day lasts in real time.
    pub day_s: f64,
    pub users: usize,
    /// Messages each user gets in a day.
    pub messages_per_user: usize,
}

/// One run of the day.
#[derive(Debug, Default, Serialize)]
pub struct DayRun {
    /// Bytes the mail server's interface sent from 18:00 to 19:00, and in the whole day.
    pub busy_hour_server_bytes: u64,
    pub day_server_bytes: u64,
    /// RETR latency as the clients measured it, milliseconds: of messages the edge
    /// held a copy of when the RETR was sent, and of the others (from the server).
    pub edge: Latency,
    pub server: Latency,
    pub lost: usize,
    pub duplicated: usize,
    pub stale: usize,
    /// The daemon's counters at the end of the day.
    pub cache_hits: f64,
    pub bytes_prefetched: f64,
    pub prefetch_failures: f64,
}

/// RETR latencies of one kind.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub retrs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let at = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
            samples.get(at).copied().unwrap_or(0.0)
        };
        Self {
            retrs: samples.len(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
        }
    }
}

/// Both runs.
#[derive(Debug, Serialize)]
pub struct CacheDay {
    pub settings: DaySettings,
    pub without_cache: DayRun,
    pub with_cache: DayRun,
}

impl CacheDay {
    /// The share of the busy hour's server bytes the cache moved to quiet hours.
    pub fn moved(&self) -> f64 {
        let (without, with) = (
            self.without_cache.busy_hour_server_bytes as f64,
            self.with_cache.busy_hour_server_bytes as f64,
        );
        if without == 0.0 {
            0.0
        } else {
            1.0 - with / without
        }
    }
}

enum Step {
    Deliver {
        user: usize,
        message: usize,
    },
    Check {
        user: usize,
    },
    /// The busy hour starts or ends: read the server's counter.
    Mark,
}

/// Runs the day without and with the cache, with the daemon `bin` and `dataplane`.
pub fn measure(bin: &Path, dataplane: &str, settings: DaySettings) -> Result<CacheDay> {
    if settings.day_s < 48.0 {
        bail!("--cache-day must be at least 48s (two seconds an hour)");
    }
    let without_cache = one_day(bin, dataplane, settings, false)?;
    let with_cache = one_day(bin, dataplane, settings, true)?;
    Ok(CacheDay {
        settings,
        without_cache,
        with_cache,
    })
}

fn user_name(i: usize) -> String {
    format!("day{i:03}")
}

/// The message `message` of user `user`: 20 to 200 kB, dot-stuffed lines included.
fn message(user: usize, message: usize, rng: &mut StdRng) -> Vec<u8> {
    let size = rng.random_range(20_000..200_000);
    let mut m = format!(
        "From: sender@example.org\nTo: {}@example.org\nSubject: day mail {message}\n\
         Message-ID: <{user}.{message}@day.example>\n\n",
        user_name(user)
    )
    .into_bytes();
    let mut line = 0;
    while m.len() < size {
        if line % 40 == 7 {
            m.extend_from_slice(b".a line that starts with a dot\n");
        }
        m.extend_from_slice(
            format!("{user:03} {message:03} {line:06} lorem ipsum dolor sit amet\n").as_bytes(),
        );
        line += 1;
    }
    m
}

fn one_day(bin: &Path, dataplane: &str, settings: DaySettings, cache: bool) -> Result<DayRun> {
    let label = if cache {
        "with the cache"
    } else {
        "without the cache"
    };
    let topo = Topology::new()?;
    let users: Vec<(String, String)> = (0..settings.users)
        .map(|i| (user_name(i), PASSWORD.to_owned()))
        .collect();
    let dovecot = Dovecot::start_with(
        &topo,
        DovecotOptions {
            users,
            fast_login: true,
            master_user: Some((MASTER.into(), MASTER_PASSWORD.into())),
            ..Default::default()
        },
    )?;
    let day = Duration::from_secs_f64(settings.day_s);
    let mut args = vec![
        "--dataplane".to_owned(),
        dataplane.to_owned(),
        "--interval".to_owned(),
        "0s".to_owned(),
        "--metrics".to_owned(),
        METRICS.to_owned(),
    ];
    if cache {
        let dir = topo.dir();
        let profile = dir.join("profile");
        let lines: String = (0..settings.users)
            .map(|i| format!("{} {} edge-1\n", server_pop3_v4(), user_name(i)))
            .collect();
        std::fs::write(&profile, lines)?;
        let config = dir.join("day.toml");
        std::fs::write(
            &config,
            format!(
                "cache-dir = \"{}\"\n[prefetch]\nmaster-user = \"{MASTER}\"\n\
                 master-password = \"{MASTER_PASSWORD}\"\nwindow = \"20:00-17:00\"\n\
                 busy-hours = [\"17:00-20:00\"]\nday-length = \"{}ms\"\nevery = \"{}ms\"\n\
                 messages-per-second = 200\nbytes-per-second = 20000000\n\
                 profile = \"{}\"\nedge = \"edge-1\"\n",
                dir.join("cache").display(),
                day.as_millis(),
                (day.as_millis() / 48).max(500),
                profile.display()
            ),
        )?;
        args.extend(["--config".to_owned(), config.display().to_string()]);
    }
    let ic = Interceptor::start_with(
        &topo,
        InterceptorOptions {
            bin: Some(bin.to_path_buf()),
            extra_args: args,
            ..Default::default()
        },
    )?;

    // The schedule, in seconds of the day; the same seed for both runs.
    let mut rng = StdRng::seed_from_u64(11);
    let mut steps: Vec<(f64, Step)> = Vec::new();
    let mut delivered: HashMap<(usize, usize), Vec<u8>> = HashMap::new();
    for user in 0..settings.users {
        for m in 0..settings.messages_per_user {
            delivered.insert((user, m), message(user, m, &mut rng));
            steps.push((
                rng.random_range(0.0..18.0 * HOUR),
                Step::Deliver { user, message: m },
            ));
        }
        steps.push((
            rng.random_range(18.05 * HOUR..18.9 * HOUR),
            Step::Check { user },
        ));
        steps.push((21.0 * HOUR + user as f64 * 60.0, Step::Check { user }));
    }
    steps.push((18.0 * HOUR, Step::Mark));
    steps.push((19.0 * HOUR, Step::Mark));
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Start at the daemon's midnight: the next multiple of the day in unix time.
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let midnight = (unix / settings.day_s).ceil() * settings.day_s;
    eprintln!(
        "bench: cache day {label}: {} users, {} messages each, a day of {:.0} s (starts in {:.0} s)",
        settings.users,
        settings.messages_per_user,
        settings.day_s,
        midnight - unix
    );
    let start = Instant::now() + Duration::from_secs_f64(midnight - unix);
    let at = |second_of_day: f64| {
        start + Duration::from_secs_f64(second_of_day / (24.0 * HOUR) * settings.day_s)
    };
    let day_start_bytes = server_tx_bytes(&topo)?;
    let mut marks = Vec::new();
    let mut run = DayRun::default();
    let mut latencies = (Vec::new(), Vec::new());
    let mut received: HashMap<(usize, usize), usize> = HashMap::new();
    for (second, step) in &steps {
        let due = at(*second);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        match step {
            Step::Deliver { user, message } => {
                dovecot.deliver(&user_name(*user), &delivered[&(*user, *message)])?;
            }
            Step::Mark => marks.push(server_tx_bytes(&topo)?),
            Step::Check { user } => {
                check(
                    &topo,
                    *user,
                    &delivered,
                    &mut received,
                    &mut latencies,
                    &mut run,
                )
                .with_context(|| format!("{label}: {}'s check", user_name(*user)))?;
            }
        }
    }
    std::thread::sleep(at(24.0 * HOUR).saturating_duration_since(Instant::now()));
    run.day_server_bytes = server_tx_bytes(&topo)? - day_start_bytes;
    run.busy_hour_server_bytes = marks[1] - marks[0];
    run.lost = delivered
        .keys()
        .filter(|k| !received.contains_key(k))
        .count();
    run.duplicated = received.values().filter(|n| **n > 1).count();
    run.edge = Latency::of(latencies.0);
    run.server = Latency::of(latencies.1);
    let metrics = scrape(&topo);
    let metric = |name: &str| {
        metrics
            .get(&format!("pop3_interceptor_{name}"))
            .copied()
            .unwrap_or(0.0)
    };
    run.cache_hits = metric("cache_hits_total");
    run.bytes_prefetched = metric("bytes_prefetched_total");
    run.prefetch_failures = metric("prefetch_failures_total");
    drop(ic);
    drop(dovecot);
    eprintln!(
        "bench: cache day {label}: busy hour {} B from the server, day {} B; RETR from the edge {} p50 {:.2} ms, from the server {} p50 {:.2} ms; lost {} duplicated {} stale {}",
        run.busy_hour_server_bytes,
        run.day_server_bytes,
        run.edge.retrs,
        run.edge.p50_ms,
        run.server.retrs,
        run.server.p50_ms,
        run.lost,
        run.duplicated,
        run.stale
    );
    Ok(run)
}

/// RETRs the daemon answered from the edge so far (its `cache_hits_total`), read over
/// a plain HTTP request from the router's namespace (no process started: it is read
/// around every RETR).
fn edge_hits(topo: &Topology) -> Result<f64> {
    let mut stream = topo.connect(Node::Router, METRICS.parse()?, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: edge\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let body = reply.split_once("\r\n\r\n").context("an HTTP answer")?.1;
    let metrics = e2e::prometheus::parse(body);
    Ok(metrics
        .get("pop3_interceptor_cache_hits_total")
        .copied()
        .unwrap_or(0.0))
}

/// One check of `user` through the edge: RETR and DELE of every message, QUIT; each
/// message retrieved is looked up among those `delivered`.
fn check(
    topo: &Topology,
    user: usize,
    delivered: &HashMap<(usize, usize), Vec<u8>>,
    received: &mut HashMap<(usize, usize), usize>,
    latencies: &mut (Vec<f64>, Vec<f64>),
    run: &mut DayRun,
) -> Result<()> {
    let mut s = RawSession::connect(topo, Node::Client, server_pop3_v4())?;
    s.set_timeout(Duration::from_secs(30))?;
    s.read_line()?;
    s.command(&format!("USER {}", user_name(user)))?;
    let pass = s.command(&format!("PASS {PASSWORD}"))?;
    if !pass.starts_with("+OK") {
        bail!("login refused: {pass}");
    }
    let stat = s.command("STAT")?;
    let count: usize = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("STAT")?;
    for n in 1..=count {
        let hits = edge_hits(topo)?;
        let started = Instant::now();
        let status = s.command(&format!("RETR {n}"))?;
        if !status.starts_with("+OK") {
            bail!("RETR {n}: {status}");
        }
        let body = s.read_multiline()?;
        let took = started.elapsed().as_secs_f64() * 1000.0;
        if edge_hits(topo)? > hits {
            latencies.0.push(took);
        } else {
            latencies.1.push(took);
        }
        let message = unstuff(&body);
        let key = delivered
            .iter()
            .find(|(_, m)| **m == message)
            .map(|(k, _)| *k);
        match key {
            Some(key) => *received.entry(key).or_default() += 1,
            None => run.stale += 1,
        }
        let dele = s.command(&format!("DELE {n}"))?;
        if !dele.starts_with("+OK") {
            bail!("DELE {n}: {dele}");
        }
    }
    let quit = s.command("QUIT")?;
    if !quit.starts_with("+OK") {
        bail!("QUIT: {quit}");
    }
    Ok(())
}

/// A RETR body as delivered: dot-stuffing and the end line removed, LF line ends.
fn unstuff(body: &[u8]) -> Vec<u8> {
    let body = body.strip_suffix(b".\r\n").unwrap_or(body);
    let mut message = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_prefix(b".").unwrap_or(line);
        let line = line
            .strip_suffix(b"\r\n")
            .map_or(line.to_vec(), |l| [l, b"\n"].concat());
        message.extend_from_slice(&line);
    }
    message
}

/// Bytes the mail server's interface has sent.
fn server_tx_bytes(topo: &Topology) -> Result<u64> {
    let out = topo.exec(
        Node::Server,
        &["cat", "/sys/class/net/eth0/statistics/tx_bytes"],
    )?;
    out.stdout_str().trim().parse().context("tx_bytes")
}

fn scrape(topo: &Topology) -> HashMap<String, f64> {
    let url = format!("http://{METRICS}/metrics");
    let out = topo.exec(
        Node::Router,
        &["curl", "-sS", "--noproxy", "*", "--max-time", "5", &url],
    );
    out.map(|o| e2e::prometheus::parse(&o.stdout_str()))
        .unwrap_or_default()
}

/// The day's table.
pub fn print(day: &CacheDay) {
    let s = &day.settings;
    println!(
        "\nedge cache over a day of {:.0} s ({} users, {} messages each, busy hour 18:00-19:00):",
        s.day_s, s.users, s.messages_per_user
    );
    println!(
        "{:<14} {:>15} {:>10} {:>22} {:>22} {:>5} {:>4} {:>5} {:>9} {:>12}",
        "",
        "busy-hour bytes",
        "day bytes",
        "RETR edge n p50/p99 ms",
        "RETR srv n p50/p99 ms",
        "lost",
        "dup",
        "stale",
        "edge hits",
        "prefetched B"
    );
    let latency = |l: &Latency| format!("{} {:.2}/{:.2}", l.retrs, l.p50_ms, l.p99_ms);
    for (label, r) in [
        ("without cache", &day.without_cache),
        ("with cache", &day.with_cache),
    ] {
        println!(
            "{label:<14} {:>15} {:>10} {:>22} {:>22} {:>5} {:>4} {:>5} {:>9} {:>12}",
            r.busy_hour_server_bytes,
            r.day_server_bytes,
            latency(&r.edge),
            latency(&r.server),
            r.lost,
            r.duplicated,
            r.stale,
            r.cache_hits,
            r.bytes_prefetched
        );
    }
    println!(
        "busy-hour bytes from the server moved to quiet hours: {:.1}% (target: at least 50%)",
        day.moved() * 100.0
    );
}
