//! The Prometheus endpoint of `run --metrics ADDR`, scraped over HTTP with curl from
//! inside the router namespace and parsed, while real POP3 checks are attenuated.
//!
//! Run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test metrics -- --test-threads=1`

use std::collections::HashMap;
use std::time::Duration;

use common::Counter;
use pop3_interceptor_e2e::util::wait_for;
use pop3_interceptor_e2e::{DovecotOptions, Env, Node};

/// Where the daemon serves its metrics, inside the router namespace (its own loopback).
const METRICS_ADDR: &str = "127.0.0.1:9110";
/// How long a value may take to settle (a connection closes a moment after its client is done).
const SETTLE: Duration = Duration::from_secs(6);

/// Every metric the endpoint must export.
const NAMES: &[&str] = &[
    "pop3_interceptor_checks_seen_total",
    "pop3_interceptor_answered_locally_total",
    "pop3_interceptor_passed_through_total",
    "pop3_interceptor_upstream_logins_avoided_total",
    "pop3_interceptor_gc_runs_total",
    "pop3_interceptor_sessions_active",
    "pop3_interceptor_table_entries",
    "pop3_interceptor_xdp_frames_seen_total",
    "pop3_interceptor_xdp_matched_total",
    "pop3_interceptor_xdp_redirected_total",
    "pop3_interceptor_xdp_fallback_passed_total",
    "pop3_interceptor_afxdp_rx_frames_total",
    "pop3_interceptor_afxdp_tx_frames_total",
    "pop3_interceptor_afxdp_fill_ring_empty_total",
    "pop3_interceptor_connections_accepted_total",
    "pop3_interceptor_connections_refused_total",
    "pop3_interceptor_connections_timed_out_total",
];

fn get(m: &HashMap<String, f64>, name: &str) -> u64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("{name} missing from {m:?}")) as u64
}

/// Scrapes until `cond` holds (a connection closes a moment after its client is done).
fn scrape_until(
    env: &Env,
    what: &str,
    cond: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let mut last = HashMap::new();
    wait_for(what, SETTLE, Duration::from_millis(200), || {
        last = env.scrape(METRICS_ADDR);
        cond(&last).then(|| last.clone())
    })
    .unwrap_or_else(|e| panic!("{e}; last scrape: {last:?}"))
}

/// A check of alice, whose mailbox is empty.
fn check(env: &Env) {
    assert_eq!(env.check("alice"), "0 0");
}

#[test]
fn metrics_count_attenuated_checks_over_http() {
    let env = Env::start(
        DovecotOptions::default(),
        &["--metrics", METRICS_ADDR, "--interval", "10m"],
    );
    let (dc, ic) = (&env.dc, env.ic());
    assert!(
        ic.log_text()
            .contains(&format!("http://{METRICS_ADDR}/metrics")),
        "{}",
        ic.log_tail(10)
    );

    // Before any check: every metric is there, the engine's at zero.
    let before = scrape_until(&env, "a first refresh", |m| {
        NAMES.iter().all(|n| m.contains_key(*n))
    });
    for name in [
        "pop3_interceptor_checks_seen_total",
        "pop3_interceptor_answered_locally_total",
        "pop3_interceptor_passed_through_total",
        "pop3_interceptor_upstream_logins_avoided_total",
        "pop3_interceptor_table_entries",
        "pop3_interceptor_sessions_active",
        "pop3_interceptor_connections_accepted_total",
    ] {
        assert_eq!(get(&before, name), 0, "{name}");
    }

    // The first check reaches Dovecot and finds the mailbox empty.
    check(&env);
    let first = scrape_until(&env, "the first check counted", |m| {
        get(m, "pop3_interceptor_checks_seen_total") == 1
            && get(m, "pop3_interceptor_sessions_active") == 0
    });
    assert_eq!(get(&first, "pop3_interceptor_passed_through_total"), 1);
    assert_eq!(get(&first, "pop3_interceptor_answered_locally_total"), 0);
    assert_eq!(
        get(&first, "pop3_interceptor_upstream_logins_avoided_total"),
        0
    );
    assert_eq!(get(&first, "pop3_interceptor_table_entries"), 1);
    assert_eq!(
        get(&first, "pop3_interceptor_connections_accepted_total"),
        1
    );
    assert_eq!(dc.login_count("alice"), 1);

    // The next two are answered at the edge: Dovecot sees no new login.
    check(&env);
    check(&env);
    // Each scrape asks the dataplane for its counters: one right after a check shows it.
    assert_eq!(
        get(
            &env.scrape(METRICS_ADDR),
            "pop3_interceptor_checks_seen_total"
        ),
        3
    );
    let after = scrape_until(&env, "three checks counted", |m| {
        get(m, "pop3_interceptor_checks_seen_total") == 3
            && get(m, "pop3_interceptor_sessions_active") == 0
    });
    assert_eq!(dc.login_count("alice"), 1, "two logins avoided");
    assert_eq!(get(&after, "pop3_interceptor_answered_locally_total"), 2);
    assert_eq!(
        get(&after, "pop3_interceptor_upstream_logins_avoided_total"),
        2
    );
    assert_eq!(get(&after, "pop3_interceptor_passed_through_total"), 1);
    assert_eq!(get(&after, "pop3_interceptor_table_entries"), 1);
    // No load rule: n is the --interval, and no optional rule decided anything.
    assert_eq!(get(&after, "pop3_interceptor_interval_seconds"), 600);
    assert_eq!(
        get(
            &after,
            "pop3_interceptor_rule_decisions_total{rule=\"one_in_m\",decision=\"passed\"}"
        ),
        0
    );
    assert_eq!(
        get(&after, "pop3_interceptor_connections_accepted_total"),
        3
    );
    assert_eq!(get(&after, "pop3_interceptor_connections_refused_total"), 0);
    assert_eq!(get(&after, "pop3_interceptor_xdp_fallback_passed_total"), 0);
    assert_eq!(
        get(&after, "pop3_interceptor_afxdp_fill_ring_empty_total"),
        0
    );

    // The packet counters moved with the sessions and agree with each other.
    let redirected = get(&after, "pop3_interceptor_xdp_redirected_total");
    let rx = get(&after, "pop3_interceptor_afxdp_rx_frames_total");
    let tx = get(&after, "pop3_interceptor_afxdp_tx_frames_total");
    assert!(
        redirected > get(&first, "pop3_interceptor_xdp_redirected_total"),
        "{after:?}"
    );
    assert!(
        rx > 0 && rx <= redirected,
        "rx {rx}, redirected {redirected}"
    );
    assert!(tx > 0, "{after:?}");
    assert!(get(&after, "pop3_interceptor_xdp_matched_total") >= redirected);
    assert!(get(&after, "pop3_interceptor_xdp_frames_seen_total") >= redirected);
    // Once the flows are quiet, the exported XDP counter is the pinned map's (bpftool).
    scrape_until(&env, "metrics to match bpftool", |m| {
        get(m, "pop3_interceptor_xdp_redirected_total")
            == ic.xdp_counter(Counter::Redirected).unwrap()
    });

    // Only GET /metrics is served.
    let code = |args: &[&str]| {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        env.curl(&all).stdout_str()
    };
    assert_eq!(code(&[&format!("http://{METRICS_ADDR}/nope")]), "404");
    assert_eq!(
        code(&["-X", "POST", &format!("http://{METRICS_ADDR}/metrics")]),
        "405"
    );
}

#[test]
fn metrics_are_off_by_default() {
    let env = Env::start(DovecotOptions::default(), &[]);
    let ic = env.ic();
    let out = env.curl(&[&format!("http://{METRICS_ADDR}/metrics")]);
    assert!(!out.success(), "nothing listens: {}", out.stdout_str());
    assert!(!ic.log_text().contains("/metrics"), "{}", ic.log_tail(10));
    let ss = env.topo.exec(Node::Router, &["ss", "-Htln"]).unwrap();
    assert!(ss.stdout_str().trim().is_empty(), "{}", ss.stdout_str());
}
