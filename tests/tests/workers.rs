//! `--workers`: several dataplane threads on a four-queue interface, on both dataplanes.
//! Both workers serve sessions (their own counters in the metrics say so), a flood of
//! frames on one queue does not stop the other worker's sessions, and the per-subscriber
//! and total connection limits hold over all workers however the flows spread.
//!
//! Run as root, one at a time (`cargo xtask test`).

use std::collections::HashMap;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

use pop3_interceptor_e2e::interceptor::dataplane_args;
use pop3_interceptor_e2e::raw::{Attacker, pop3};
use pop3_interceptor_e2e::topology::{ROUTER_SERVER_V4, SERVER_V4, server_pop3_v4};
use pop3_interceptor_e2e::util::{read_until_within, wait_for};
use pop3_interceptor_e2e::{DovecotOptions, Env, Node, TopologyOptions};
use rstest::rstest;

/// Where the daemon serves its metrics, inside the router namespace.
const METRICS_ADDR: &str = "127.0.0.1:9112";
/// Sessions each test makes; flows spread over the queues by hash, so with this many both
/// workers get some (all on one worker: a chance of 2 in 2^24).
const SESSIONS: usize = 24;

/// A relaying daemon with two workers on a four-queue `rc0`, with `extra` flags.
fn env(dataplane: &str, extra: &[&str]) -> Env {
    let mut env = Env::direct_with(TopologyOptions { rc0_queues: 4 }, DovecotOptions::default());
    start(&mut env, dataplane, &[&["--mode", "relay"], extra].concat());
    env
}

/// Starts the daemon with two workers on `dataplane` with `extra` flags.
fn start(env: &mut Env, dataplane: &str, extra: &[&str]) {
    let mut args = vec!["--workers", "2", "--metrics", METRICS_ADDR];
    args.extend_from_slice(dataplane_args(dataplane));
    args.extend_from_slice(extra);
    let ic = env.start_daemon(&args);
    assert!(ic.log_text().contains("workers=2"), "{}", ic.log_tail(5));
}

/// A worker's counter `name` (`pop3_interceptor_worker_..._total`) in a scrape.
fn per_worker(scrape: &HashMap<String, f64>, name: &str, worker: usize) -> u64 {
    let key = format!("pop3_interceptor_worker_{name}_total{{worker=\"{worker}\"}}");
    *scrape
        .get(&key)
        .unwrap_or_else(|| panic!("{key} missing from {scrape:?}")) as u64
}

/// One short session through the interceptor: greeting, QUIT, `+OK` back. Returns how
/// long it took.
fn session(env: &Env) -> Duration {
    let start = Instant::now();
    let mut s = env.connect();
    s.send(b"QUIT\r\n").unwrap();
    let bye = s.read_line().unwrap();
    assert!(bye.starts_with("+OK"), "{bye}");
    start.elapsed()
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn two_workers_on_a_four_queue_interface_both_serve_sessions(#[case] dataplane: &str) {
    let env = env(dataplane, &[]);
    for _ in 0..SESSIONS {
        session(&env);
    }
    // A full check too, through whichever worker its flow reaches.
    assert_eq!(env.check("alice"), "0 0");
    let scrape = env.scrape(METRICS_ADDR);
    let accepted: Vec<u64> = (0..2)
        .map(|w| per_worker(&scrape, "connections_accepted", w))
        .collect();
    eprintln!("{dataplane}: sessions accepted per worker {accepted:?}");
    assert_eq!(
        accepted.iter().sum::<u64>(),
        SESSIONS as u64 + 1,
        "every session through a worker"
    );
    assert!(
        accepted.iter().all(|&n| n > 0),
        "both workers served sessions: {accepted:?}"
    );
    assert!(
        !scrape.contains_key("pop3_interceptor_worker_connections_accepted_total{worker=\"2\"}")
    );
    // Dovecot saw every one of them come from the router, none from the client.
    let logins = env.dc.logins_for("alice");
    assert!(
        logins.iter().all(|l| l.rip == ROUTER_SERVER_V4.to_string()),
        "{logins:?}"
    );
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn a_user_learnt_on_one_worker_is_answered_on_every_worker(#[case] dataplane: &str) {
    let mut env = Env::direct_with(TopologyOptions { rc0_queues: 4 }, DovecotOptions::default());
    start(&mut env, dataplane, &["--interval", "10m"]);
    for _ in 0..SESSIONS {
        assert_eq!(env.check("alice"), "0 0");
    }
    let scrape = env.scrape(METRICS_ADDR);
    let accepted: Vec<u64> = (0..2)
        .map(|w| per_worker(&scrape, "connections_accepted", w))
        .collect();
    eprintln!("{dataplane}: checks per worker {accepted:?}");
    assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    // One table for both workers: the first check taught it, every other was answered at
    // the edge, whichever worker its flow reached.
    assert_eq!(env.dc.logins_for("alice").len(), 1);
    assert_eq!(
        scrape["pop3_interceptor_answered_locally_total"] as u64,
        SESSIONS as u64 - 1
    );
    assert_eq!(scrape["pop3_interceptor_table_entries"] as u64, 1);
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn a_flooded_queue_does_not_stall_the_other_workers_sessions(#[case] dataplane: &str) {
    let env = env(dataplane, &[]);
    let mut quiet: Vec<Duration> = (0..8).map(|_| session(&env)).collect();
    quiet.sort();
    let before = env.scrape(METRICS_ADDR);
    // One flow's SYN again and again: one flow hash, so one queue and one worker. Bounded
    // in count and in time; it runs until the sessions below are done.
    let mut attacker = Attacker::new(&env.topo, 61);
    let frame = attacker.syn(pop3(SERVER_V4)).frame();
    let running = Arc::new(AtomicBool::new(true));
    let flood = {
        let running = running.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0u64;
            while running.load(Ordering::Relaxed)
                && sent < 20_000_000
                && start.elapsed() < Duration::from_secs(30)
            {
                attacker.link.send(&frame).unwrap();
                sent += 1;
            }
            (sent, start.elapsed(), running.load(Ordering::Relaxed))
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let took: Vec<Duration> = (0..SESSIONS).map(|_| session(&env)).collect();
    let during = env.scrape(METRICS_ADDR);
    running.store(false, Ordering::Relaxed);
    let (sent, flood_time, bounds_hit) = flood.join().unwrap();
    assert!(
        !bounds_hit,
        "the flood ended (its bounds) before the sessions did: {sent} frames in {flood_time:?}"
    );
    let delta = |name: &str, w: usize| per_worker(&during, name, w) - per_worker(&before, name, w);
    let frames = [delta("frames_received", 0), delta("frames_received", 1)];
    let accepted = [
        delta("connections_accepted", 0),
        delta("connections_accepted", 1),
    ];
    let flooded = usize::from(frames[1] > frames[0]);
    let mut sorted = took.clone();
    sorted.sort();
    let max = sorted[sorted.len() - 1];
    eprintln!(
        "{dataplane}: {sent} flood frames in {flood_time:?}; frames per worker {frames:?}, \
         sessions per worker {accepted:?}; session p50 {:?} (before the flood {:?}), max {max:?}",
        sorted[sorted.len() / 2],
        quiet[quiet.len() / 2],
    );
    assert!(
        frames[flooded] > 10_000,
        "the flood reached one worker: {frames:?}"
    );
    assert!(
        frames[1 - flooded] < frames[flooded] / 10,
        "and only that one: {frames:?}"
    );
    assert!(
        accepted[1 - flooded] > 0,
        "the other worker served sessions during the flood: {accepted:?}"
    );
    // The flood's own flow was accepted once; its repeated SYNs open nothing more.
    assert_eq!(accepted[0] + accepted[1], SESSIONS as u64 + 1);
    assert!(max < Duration::from_secs(2), "no session stalled: {max:?}");
}

/// Opens `n` connections from the client at once; returns the ones that were accepted
/// (greeted) and how many were refused.
fn open_many(env: &Env, n: usize) -> (Vec<std::net::TcpStream>, usize) {
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        match env
            .topo
            .connect(Node::Client, server_pop3_v4(), Duration::from_secs(5))
        {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                assert!(read_until_within(&mut s, b"\r\n", Duration::from_secs(5)));
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    (held, refused)
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn connection_limits_hold_over_all_workers(#[case] dataplane: &str) {
    // Per subscriber: the client's flows spread over both workers, and it still gets 4.
    let mut env = env(dataplane, &["--max-conns-per-source", "4"]);
    let (held, refused) = open_many(&env, 16);
    assert_eq!((held.len(), refused), (4, 12), "--max-conns-per-source 4");
    let scrape = env.scrape(METRICS_ADDR);
    let frames: Vec<u64> = (0..2)
        .map(|w| per_worker(&scrape, "frames_received", w))
        .collect();
    eprintln!("{dataplane}: one subscriber's frames per worker {frames:?}");
    assert!(
        frames.iter().all(|&n| n > 0),
        "its flows reached both workers: {frames:?}"
    );
    assert_eq!(
        scrape["pop3_interceptor_connections_refused_source_conns_total"] as u64,
        12
    );
    // A slot freed on one worker is a slot for the subscriber on either.
    drop(held);
    wait_for(
        "the slots to be freed",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let scrape = env.scrape(METRICS_ADDR);
            (scrape["pop3_interceptor_sessions_active"] as u64 == 0).then_some(())
        },
    )
    .unwrap();
    let (held, _) = open_many(&env, 6);
    assert_eq!(held.len(), 4);
    drop(held);

    // In all: --max-conns is the daemon's, not each worker's.
    start(
        &mut env,
        dataplane,
        &["--mode", "relay", "--max-conns", "4"],
    );
    let (held, refused) = open_many(&env, 16);
    assert_eq!((held.len(), refused), (4, 12), "--max-conns 4");
    let scrape = env.scrape(METRICS_ADDR);
    assert_eq!(
        scrape["pop3_interceptor_connections_refused_total"] as u64,
        12
    );
    drop(held);
}
