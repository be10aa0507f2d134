//! `cargo xtask simulate`: the real attenuation engine, driven in virtual time by a
//! synthetic ISP, with each of the patent's rules on and off. An example of pop3-engine
//! (run with `--release --features testing`) so that its counting allocator, which
//! measures the engine's heap, applies to this binary alone.
//!
//! No network: every session is played through [`Pop3Engine`] against [`SimServer`], a
//! minimal POP3 server kept here because the property tests' model server records every
//! line it says (gigabytes at this scale). The population (see [`Population`]):
//!
//! - pollers (85 %): a client timer every 1, 2, 5, 10, 15 or 30 minutes, 1 % jitter;
//!   15 % of them leave mail on the server (UIDL, RETR of new messages only);
//! - people (15 %): checks at irregular times (mean 20 minutes, more often at the busy
//!   hour), and one time in five a burst of two more checks seconds apart;
//! - mail: Poisson arrivals, 30 a day per user on average, following a daily curve that
//!   peaks in the middle of the busy hour;
//! - the server's login latency grows as its login rate nears `--server-capacity`
//!   (M/M/1: 5 ms + 1/(capacity - rate)), which is what the load-adaptive n sees.
//!
//! Figures per scenario: the share of checks that did not become server logins, server
//! logins per second in the busy hour (and checks per second there, which is what the
//! server would get without the edge), the delay the edge added to each message's
//! delivery (from the first check after its arrival to its RETR; messages still waiting
//! at the end count with the time waited so far), and the engine's heap.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use pop3_engine::attenuation::{AttenuationEngine, Config, Counters, Salt};
use pop3_engine::session::{Action, ConnId, ConnInfo, Event, Output, Pop3Engine};
use pop3_engine::testing::alloc::{CountingAlloc, thread_net_bytes};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod client;
mod report;
mod scenarios;
mod server;

use client::Client;
use report::Row;
use scenarios::scenarios;
use server::SimServer;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// The synthetic ISP.
#[derive(Parser)]
struct SimulateArgs {
    /// Subscribers simulated.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(100..=2_000_000))]
    users: u32,
    /// Simulated minutes before the busy hour: they fill the table and are not measured
    /// (pollers slower than this make their first, server-bound, check in the busy hour).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=600))]
    warmup_minutes: u32,
    /// Logins per second the mail server can take (its latency grows near it); the
    /// default fits the attenuated load of 100,000 users, not the unattenuated one.
    #[arg(long, default_value_t = 100)]
    server_capacity: u32,
    /// Seed of the population and of every random draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only the scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/simulate.json")]
    json: PathBuf,
}

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), 110);
const MAILS_PER_DAY: f64 = 30.0;
const MS_PER_HOUR: u64 = 3_600_000;

fn main() -> Result<ExitCode> {
    run(SimulateArgs::parse())
}

fn run(a: SimulateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let population = Population::new(a.users, a.seed);
    let todo: Vec<_> = scenarios()
        .into_iter()
        .filter(|(name, ..)| a.only.as_deref().is_none_or(|o| name.contains(o)))
        .enumerate()
        .collect();
    // One scenario per core at a time: more would only share the caches.
    let queue = std::sync::Mutex::new(todo.into_iter());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut rows: Vec<(usize, Row)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().expect("no worker panics holding it").next();
                        let Some((i, (name, notify, config))) = next else {
                            return done;
                        };
                        done.push((i, Sim::new(&population, &a, notify, config).run(name)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a scenario panicked"))
            .collect()
    });
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    report::print(&a, &rows, started)?;
    Ok(ExitCode::SUCCESS)
}

/// How a subscriber checks mail.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A client timer: every `period_ms`; `keep`: leaves mail on the server.
    Poller { period_ms: u64, keep: bool },
    /// A person: irregular checks, sometimes in bursts.
    Person,
}

/// The subscribers, the same for every scenario.
struct Population {
    kinds: Vec<Kind>,
}

impl Population {
    fn new(users: u32, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let periods = [(1, 5), (2, 5), (5, 25), (10, 25), (15, 20), (30, 20)];
        let kinds = (0..users)
            .map(|_| {
                if rng.random_bool(0.15) {
                    return Kind::Person;
                }
                // Percent shares: walk them until the draw falls inside one.
                let mut pick = rng.random_range(0..100u64);
                let mut minutes = 30;
                for (m, share) in periods {
                    if pick < share {
                        minutes = m;
                        break;
                    }
                    pick -= share;
                }
                Kind::Poller {
                    period_ms: minutes * 60_000,
                    keep: rng.random_bool(0.15),
                }
            })
            .collect();
        Self { kinds }
    }
}

/// The daily curve at `ms` into the window, whose busy hour starts at `busy_ms`: 0.4
/// far from the busy hour, 2.0 in its middle.
fn curve(ms: u64, busy_ms: u64) -> f64 {
    let peak = busy_ms as f64 / MS_PER_HOUR as f64 + 0.5;
    let h = ms as f64 / MS_PER_HOUR as f64;
    0.4 + 1.6 * (-((h - peak) / 1.0).powi(2)).exp()
}

/// An exponential gap with `rate` events per millisecond.
fn exp_gap(rng: &mut SmallRng, rate: f64) -> u64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    (-u.ln() / rate) as u64 + 1
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    Mail,
    Check,
}

/// The events of the window in one bucket per second, each sorted when its turn comes:
/// a heap of every user's next events costs more than the engine at this scale.
struct Calendar {
    buckets: Vec<Vec<(u64, What, u32)>>,
    /// The bucket being drained (sorted, latest first).
    at: usize,
}

impl Calendar {
    fn new(end_ms: u64) -> Self {
        Self {
            buckets: vec![Vec::new(); end_ms.div_ceil(1000) as usize],
            at: 0,
        }
    }

    /// Schedules an event; past the window's end it is dropped.
    fn push(&mut self, ms: u64, what: What, user: u32) {
        let bucket = (ms / 1000) as usize;
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.push((ms, what, user));
            if bucket == self.at {
                b.sort_unstable_by(|x, y| y.cmp(x));
            }
        }
    }

    /// The earliest event left.
    fn pop(&mut self) -> Option<(u64, What, u32)> {
        loop {
            let b = self.buckets.get_mut(self.at)?;
            if let Some(e) = b.pop() {
                return Some(e);
            }
            self.at += 1;
            if let Some(next) = self.buckets.get_mut(self.at) {
                next.sort_unstable_by(|x, y| y.cmp(x));
            }
        }
    }
}

/// A message waiting in a maildrop: its UID, arrival and the first check after it.
#[derive(Clone, Copy)]
struct Waiting {
    uid: u32,
    first_check: Option<u64>,
}

/// One simulated ISP with one engine.
struct Sim<'a> {
    population: &'a Population,
    /// When the busy hour starts (the end of the warm-up).
    busy_ms: u64,
    capacity: f64,
    notify: bool,
    rng: SmallRng,
    engine: AttenuationEngine,
    t0: Instant,
    server: SimServer,
    events: Calendar,
    next_conn: ConnId,
    /// Per user: its messages not fetched yet, and the highest UID a keeping client saw.
    waiting: Vec<VecDeque<Waiting>>,
    seen_uid: Vec<u32>,
    /// Remaining checks of a person's burst.
    burst: Vec<u8>,
    checks: u64,
    busy_checks: u64,
    /// Per message fetched: the first check after its arrival, and the added delay.
    delays: Vec<(u64, f32)>,
}

impl<'a> Sim<'a> {
    fn new(population: &'a Population, a: &SimulateArgs, notify: bool, config: Config) -> Self {
        let users = population.kinds.len();
        let mut rng = SmallRng::seed_from_u64(a.seed ^ 0x5eed);
        let busy_ms = u64::from(a.warmup_minutes) * 60_000;
        let mut events = Calendar::new(busy_ms + MS_PER_HOUR);
        for (user, kind) in population.kinds.iter().enumerate() {
            let first = match kind {
                Kind::Poller { period_ms, .. } => rng.random_range(0..*period_ms),
                Kind::Person => rng.random_range(0..20 * 60_000),
            };
            events.push(first, What::Check, user as u32);
            let mail = exp_gap(&mut rng, MAILS_PER_DAY * 2.0 / 24.0 / MS_PER_HOUR as f64);
            events.push(mail, What::Mail, user as u32);
        }
        let t0 = Instant::now();
        Self {
            population,
            busy_ms,
            capacity: f64::from(a.server_capacity),
            notify,
            rng,
            engine: AttenuationEngine::new(config, Salt::new([7, 7, 7, 7]), t0),
            t0,
            server: SimServer::new(users),
            events,
            next_conn: 0,
            waiting: vec![VecDeque::new(); users],
            seen_uid: vec![0; users],
            burst: vec![0; users],
            checks: 0,
            busy_checks: 0,
            delays: Vec::new(),
        }
    }

    fn end_ms(&self) -> u64 {
        self.busy_ms + MS_PER_HOUR
    }

    fn busy(&self, ms: u64) -> bool {
        ms >= self.busy_ms
    }

    fn run(mut self, name: &'static str) -> Row {
        let mut timer_out = Vec::new();
        while let Some((ms, what, user)) = self.events.pop() {
            let now = self.t0 + Duration::from_millis(ms);
            if self.engine.next_timeout().is_some_and(|t| t <= now) {
                self.engine.on_timeout(now, &mut timer_out);
                timer_out.clear();
            }
            match what {
                What::Mail => self.mail(user, ms, now),
                What::Check => self.check(user, ms),
            }
        }
        self.finish(name)
    }

    fn mail(&mut self, user: u32, ms: u64, now: Instant) {
        let uid = self.server.deliver(user, ms);
        self.waiting[user as usize].push_back(Waiting {
            uid,
            first_check: None,
        });
        if self.notify {
            self.engine
                .new_mail(SERVER.ip(), Some(SERVER.port()), name(user).as_bytes(), now);
        }
        // Thinning: candidates at the curve's top rate, kept in proportion to it.
        let top = MAILS_PER_DAY * 2.0 / 24.0 / MS_PER_HOUR as f64;
        let mut next = ms;
        loop {
            next += exp_gap(&mut self.rng, top);
            if self
                .rng
                .random_bool((curve(next, self.busy_ms) / 2.0).min(1.0))
            {
                break;
            }
        }
        self.events.push(next, What::Mail, user);
    }

    fn check(&mut self, user: u32, ms: u64) {
        self.checks += 1;
        self.busy_checks += u64::from(self.busy(ms));
        for w in self.waiting[user as usize].iter_mut() {
            w.first_check.get_or_insert(ms);
        }
        let kind = self.population.kinds[user as usize];
        let keep = matches!(kind, Kind::Poller { keep: true, .. });
        self.session(user, ms, keep);
        let next = match kind {
            Kind::Poller { period_ms, .. } => {
                let jitter = self.rng.random_range(-0.01..0.01);
                (period_ms as f64 * (1.0 + jitter)) as u64
            }
            Kind::Person if self.burst[user as usize] > 0 => {
                self.burst[user as usize] -= 1;
                self.rng.random_range(5_000..20_000)
            }
            Kind::Person => {
                if self.rng.random_bool(0.2) {
                    self.burst[user as usize] = 2;
                }
                let rate = curve(ms, self.busy_ms) / (20.0 * 60_000.0);
                exp_gap(&mut self.rng, rate)
            }
        };
        self.events.push(ms + next, What::Check, user);
    }

    /// One client session through the engine, the way a mail client runs it.
    fn session(&mut self, user: u32, ms: u64, keep: bool) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let mut t = self.t0 + Duration::from_millis(ms);
        let info = ConnInfo {
            client: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, (user % 250) as u8 + 1)),
                40_000 + (conn % 20_000) as u16,
            ),
            server: SERVER,
        };
        let mut client = Client::new(user, keep, self.seen_uid[user as usize]);
        let mut out = Vec::new();
        let mut upstream: VecDeque<Upstream> = VecDeque::new();
        self.engine.open(conn, info, t, &mut out);
        // Bounded: a session that stops making progress is dropped.
        for _ in 0..10_000 {
            for Output { action, .. } in out.drain(..) {
                match action {
                    Action::ToClient(bytes) => client.input.extend_from_slice(&bytes),
                    Action::ConnectUpstream => {
                        upstream.push_back(Upstream::Connected);
                        upstream.push_back(Upstream::Data(self.server.connect(conn)));
                    }
                    Action::ToUpstream(bytes) => {
                        let minute = (t - self.t0).as_secs() as usize / 60;
                        let (reply, logins, hang_up) = self.server.receive(conn, &bytes, minute);
                        for _ in 0..logins {
                            t += self.server.login_latency(minute, self.capacity);
                        }
                        upstream.push_back(Upstream::Data(reply));
                        if hang_up {
                            upstream.push_back(Upstream::Closed);
                        }
                    }
                    Action::CloseUpstream => self.server.disconnect(conn),
                    Action::CloseClient => client.closed = true,
                    Action::CacheRead { .. } | Action::CacheForget { .. } => {
                        unreachable!("the simulation runs without the edge cache")
                    }
                }
            }
            if let Some(up) = upstream.pop_front() {
                let event = match &up {
                    Upstream::Connected => Event::UpstreamConnected,
                    Upstream::Data(bytes) => Event::UpstreamData(bytes),
                    Upstream::Closed => Event::UpstreamClosed,
                };
                self.engine.handle(conn, event, t, &mut out);
                continue;
            }
            if client.closed {
                break;
            }
            match client.next(&mut self.delays, &mut self.waiting[user as usize], ms) {
                Some(line) => self
                    .engine
                    .handle(conn, Event::ClientData(&line), t, &mut out),
                None => {
                    self.engine.handle(conn, Event::ClientClosed, t, &mut out);
                    out.clear();
                    break;
                }
            }
        }
        self.server.disconnect(conn);
        self.engine.close(conn, t);
        // What the daemon's mirror of the table reads; unread, it would pile up.
        if conn.is_multiple_of(1024) {
            drop(self.engine.take_changes());
        }
        self.seen_uid[user as usize] = client.seen_uid;
    }

    fn finish(self, name: &'static str) -> Row {
        let end = self.end_ms();
        // Messages first checked for in the busy hour.
        let busy_ms = self.busy_ms;
        let mut delays: Vec<f32> = self
            .delays
            .iter()
            .filter(|(first, _)| *first >= busy_ms)
            .map(|(_, d)| *d)
            .collect();
        let delivered = delays.len() as u64;
        let mut waiting = 0;
        for first in self.waiting.iter().flatten().filter_map(|w| w.first_check) {
            if first >= busy_ms {
                waiting += 1;
                delays.push((end - first) as f32 / 1000.0);
            }
        }
        delays.sort_by(f32::total_cmp);
        let pct = |p: f64| -> f64 {
            if delays.is_empty() {
                return 0.0;
            }
            let i = ((delays.len() - 1) as f64 * p).round() as usize;
            f64::from(delays[i])
        };
        let counters: Counters = *self.engine.counters();
        let logins = self.server.logins;
        let busy_logins = self.server.busy_logins(self.busy_ms);
        let table_entries = self.engine.table().len();
        let interval_at_end = self
            .engine
            .interval(self.t0 + Duration::from_millis(end))
            .as_secs();
        let before = thread_net_bytes();
        drop(self.engine);
        let engine_heap_bytes = (before - thread_net_bytes()) as i64;
        Row {
            scenario: name,
            notifications: self.notify,
            checks: self.checks,
            server_logins: logins,
            checks_cut: 1.0 - busy_logins as f64 / self.busy_checks.max(1) as f64,
            busy_checks_per_sec: self.busy_checks as f64 / 3600.0,
            busy_logins_per_sec: busy_logins as f64 / 3600.0,
            delay_p50_secs: pct(0.5),
            delay_p99_secs: pct(0.99),
            delay_max_secs: delays.last().map_or(0.0, |d| f64::from(*d)),
            messages_delivered: delivered,
            messages_waiting_at_end: waiting,
            engine_heap_bytes,
            table_entries,
            interval_at_end_secs: interval_at_end,
            rule_decisions: counters
                .rule_decisions()
                .iter()
                .map(|(rule, decision, n)| (format!("{rule}_{decision}"), *n))
                .collect(),
        }
    }
}

enum Upstream {
    Connected,
    Data(Vec<u8>),
    Closed,
}

/// The username of subscriber `user`.
fn name(user: u32) -> String {
    format!("user{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(users: u32) -> SimulateArgs {
        SimulateArgs {
            users,
            warmup_minutes: 20,
            server_capacity: 100,
            seed: 3,
            only: None,
            json: PathBuf::new(),
        }
    }

    /// A small ISP through the real engine: mail is delivered, the edge cuts checks,
    /// notifications remove the added delay, and no rule makes the server do more
    /// logins than there were checks.
    #[test]
    fn a_small_isp_gets_its_mail_and_fewer_logins() {
        let a = args(2000);
        let population = Population::new(a.users, a.seed);
        for (name, notify, config) in scenarios() {
            let row = Sim::new(&population, &a, notify, config).run(name);
            assert!(row.messages_delivered > 100, "{row:?}");
            assert!((0.3..1.0).contains(&row.checks_cut), "{row:?}");
            assert!(row.server_logins < row.checks, "{row:?}");
            if notify {
                assert_eq!(row.delay_max_secs, 0.0, "{row:?}");
            }
        }
    }
}
