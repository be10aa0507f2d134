use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Instant,
};

use pop3_interceptor_e2e::prometheus::parse;

use super::*;

fn value(text: &str, name: &str) -> Option<f64> {
    parse(text).get(name).copied()
}

fn sample() -> Snapshot {
    Snapshot {
        engine: attenuation::Counters {
            checks_seen: 10,
            answered_locally: 7,
            passed_through: 3,
            upstream_logins_avoided: 6,
            gc_runs: 2,
            notifications: 9,
            notifications_applied: 8,
            one_in_m_passed: 5,
            fast_checks_rewarded: 6,
            fast_checks_penalized: 7,
            periodic_held: 11,
            irregular_passed: 12,
            login_delay_local: 13,
            login_delay_refused: 14,
            load_held: 15,
        },
        interval_secs: 900,
        table_entries: 4,
        dataplane: DataplaneStats {
            frames_rx: 100,
            frames_tx: 90,
            frames_malformed: 1,
            tx_ring_full: 0,
            conns_accepted: 10,
            conns_refused_full: 2,
            conns_timed_out: 1,
            conns_fin_timed_out: 4,
            challenge_acks: 6,
            conns_refused_source_conns: 7,
            conns_refused_source_half_open: 8,
            conns_refused_source_rate: 9,
            conns_active: 3,
            fill_ring_empty: 5,
        },
        workers: vec![
            DataplaneStats {
                conns_accepted: 4,
                frames_rx: 40,
                ..Default::default()
            },
            DataplaneStats {
                conns_accepted: 6,
                frames_rx: 60,
                ..Default::default()
            },
        ],
        xdp: common::Counter::ALL
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, 1000 + i as u64))
            .collect(),
        notifications: vec![("accepted", 9), ("unauthorized", 4)],
        fanout: Some((true, vec![("disconnect", 2), ("received", 5)])),
        cache: crate::cache::CacheStats {
            hits: 21,
            misses: 22,
            bytes_served: 23,
            mismatches: 24,
            store: crate::cache::store::StoreStats {
                users: 2,
                messages: 25,
                bytes: 26,
                evictions: 27,
                corrupt: 28,
            },
        },
        prefetch: crate::prefetch::PrefetchStats {
            runs: 29,
            failures: 30,
            messages: 31,
            bytes: 32,
            lull: true,
            verdict: Some(crate::prefetch::config::Verdict::Lull),
        },
    }
}

#[test]
fn the_exposition_has_every_metric_with_prometheus_names() {
    let text = encode(sample(), false);
    let expect = [
        ("pop3_interceptor_checks_seen_total", 10.0),
        ("pop3_interceptor_answered_locally_total", 7.0),
        ("pop3_interceptor_passed_through_total", 3.0),
        ("pop3_interceptor_upstream_logins_avoided_total", 6.0),
        ("pop3_interceptor_gc_runs_total", 2.0),
        ("pop3_interceptor_notifications_applied_total", 8.0),
        ("pop3_interceptor_one_in_m_passed_total", 5.0),
        ("pop3_interceptor_fast_checks_rewarded_total", 6.0),
        ("pop3_interceptor_fast_checks_penalized_total", 7.0),
        (
            "pop3_interceptor_worker_connections_accepted_total{worker=\"0\"}",
            4.0,
        ),
        (
            "pop3_interceptor_worker_connections_accepted_total{worker=\"1\"}",
            6.0,
        ),
        (
            "pop3_interceptor_worker_frames_received_total{worker=\"0\"}",
            40.0,
        ),
        (
            "pop3_interceptor_worker_frames_received_total{worker=\"1\"}",
            60.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"periodicity\",decision=\"held\"}",
            11.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"periodicity\",decision=\"passed\"}",
            12.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"login_delay\",decision=\"local\"}",
            13.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"login_delay\",decision=\"refused\"}",
            14.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"load\",decision=\"held\"}",
            15.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"one_in_m\",decision=\"passed\"}",
            5.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"fast_check\",decision=\"rewarded\"}",
            6.0,
        ),
        (
            "pop3_interceptor_rule_decisions_total{rule=\"fast_check\",decision=\"penalized\"}",
            7.0,
        ),
        ("pop3_interceptor_interval_seconds", 900.0),
        ("pop3_interceptor_cache_hits_total", 21.0),
        ("pop3_interceptor_cache_misses_total", 22.0),
        ("pop3_interceptor_cache_served_bytes_total", 23.0),
        ("pop3_interceptor_cache_sync_mismatches_total", 24.0),
        ("pop3_interceptor_cache_messages", 25.0),
        ("pop3_interceptor_cache_bytes", 26.0),
        ("pop3_interceptor_cache_evictions_total", 27.0),
        ("pop3_interceptor_cache_corrupt_total", 28.0),
        ("pop3_interceptor_prefetch_runs_total", 29.0),
        ("pop3_interceptor_prefetch_failures_total", 30.0),
        ("pop3_interceptor_prefetch_messages_total", 31.0),
        ("pop3_interceptor_bytes_prefetched_total", 32.0),
        ("pop3_interceptor_prefetch_lull", 1.0),
        ("pop3_interceptor_nats_connected", 1.0),
        (
            "pop3_interceptor_nats_events_total{event=\"disconnect\"}",
            2.0,
        ),
        (
            "pop3_interceptor_nats_events_total{event=\"received\"}",
            5.0,
        ),
        (
            "pop3_interceptor_notifications_total{outcome=\"accepted\"}",
            9.0,
        ),
        (
            "pop3_interceptor_notifications_total{outcome=\"unauthorized\"}",
            4.0,
        ),
        ("pop3_interceptor_sessions_active", 3.0),
        ("pop3_interceptor_table_entries", 4.0),
        ("pop3_interceptor_xdp_frames_seen_total", 1000.0),
        ("pop3_interceptor_xdp_matched_total", 1001.0),
        ("pop3_interceptor_xdp_redirected_total", 1002.0),
        ("pop3_interceptor_xdp_fallback_passed_total", 1003.0),
        ("pop3_interceptor_xdp_reverse_path_failed_total", 1004.0),
        ("pop3_interceptor_xdp_no_neighbour_total", 1005.0),
        ("pop3_interceptor_afxdp_rx_frames_total", 100.0),
        ("pop3_interceptor_afxdp_tx_frames_total", 90.0),
        ("pop3_interceptor_afxdp_fill_ring_empty_total", 5.0),
        ("pop3_interceptor_afxdp_tx_ring_full_total", 0.0),
        ("pop3_interceptor_frames_malformed_total", 1.0),
        ("pop3_interceptor_connections_accepted_total", 10.0),
        ("pop3_interceptor_connections_refused_total", 2.0),
        ("pop3_interceptor_connections_timed_out_total", 1.0),
        ("pop3_interceptor_connections_fin_timed_out_total", 4.0),
        ("pop3_interceptor_challenge_acks_total", 6.0),
        (
            "pop3_interceptor_connections_refused_source_conns_total",
            7.0,
        ),
        (
            "pop3_interceptor_connections_refused_source_half_open_total",
            8.0,
        ),
        (
            "pop3_interceptor_connections_refused_source_rate_total",
            9.0,
        ),
    ];
    for (name, v) in expect {
        assert_eq!(value(&text, name), Some(v), "{name} in\n{text}");
    }
    assert!(
        text.contains("# TYPE pop3_interceptor_checks_seen_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE pop3_interceptor_sessions_active gauge\n"),
        "{text}"
    );
    assert!(text.contains(
        "# HELP pop3_interceptor_xdp_redirected_total XDP program counter redirected (summed over CPUs): matched frames handed to an AF_XDP socket\n"
    ), "{text}");
    // Every sample has a HELP and a TYPE, and nothing else is exported.
    let samples = parse(&text);
    assert_eq!(samples.len(), expect.len(), "{text}");
    for name in samples.keys() {
        let family = name.split('{').next().unwrap_or(name);
        assert!(text.contains(&format!("# TYPE {family} ")), "{name}");
        assert!(text.contains(&format!("# HELP {family} ")), "{name}");
        assert!(name.starts_with("pop3_interceptor_"), "{name}");
    }
}

#[test]
fn relay_mode_without_notifications_reports_zero_engine_counters_and_no_family() {
    let text = encode(
        Snapshot {
            engine: attenuation::Counters::default(),
            notifications: Vec::new(),
            ..sample()
        },
        false,
    );
    assert_eq!(
        value(&text, "pop3_interceptor_checks_seen_total"),
        Some(0.0)
    );
    assert!(!text.contains("notifications_total"), "{text}");
}

#[test]
fn openmetrics_ends_with_eof() {
    let text = encode(Snapshot::default(), true);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("pop3_interceptor_checks_seen_total 0\n"));
}

fn get(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// An exporter on its own runtime, and a thread standing in for the dataplane (for
/// 10 s at most) that answers scrapes with [`sample`], `checks_seen` counting its
/// snapshots.
fn exporter() -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let waker = Arc::new(Waker::new().unwrap());
    let exporter = Exporter::start(Some(addr), runtime.handle(), waker).unwrap();
    std::thread::spawn(move || {
        let mut taken = 0;
        for _ in 0..1000 {
            exporter.answer_scrapes(|| {
                taken += 1;
                let mut s = sample();
                s.engine.checks_seen = taken;
                s
            });
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (runtime, addr)
}

#[test]
fn the_http_endpoint_serves_a_fresh_snapshot_per_scrape_and_refuses_the_rest() {
    let (_runtime, addr) = exporter();

    let ok = get(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert_eq!(value(body, "pop3_interceptor_checks_seen_total"), Some(1.0));
    let again = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(
        value(
            again.split_once("\r\n\r\n").unwrap().1,
            "pop3_interceptor_checks_seen_total"
        ),
        Some(2.0),
        "each scrape takes its own snapshot"
    );

    let om = get(
        addr,
        b"GET /metrics?x=1 HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
    );
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");

    let head = get(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.0 200 OK") && head.ends_with("\r\n\r\n"),
        "{head}"
    );

    assert!(get(addr, b"GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
    let post = get(addr, b"POST /metrics HTTP/1.0\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.0 405") && post.to_ascii_lowercase().contains("allow: get"),
        "{post}"
    );
    assert!(get(addr, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));

    // A head without end is refused, not buffered without bound.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
    let big = vec![b'a'; 1 << 20];
    let _ = s.write_all(&big);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 4"), "{out}");

    // A silent client does not hold up the others.
    let started = Instant::now();
    let silent = TcpStream::connect(addr).unwrap();
    let ok = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(silent);
}
