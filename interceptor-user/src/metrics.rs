//! Prometheus metrics: `run --metrics ADDR` serves `GET /metrics` with axum, on the
//! dataplane's tokio runtime (the one the notification endpoint uses).
//!
//! The dataplane workers own every counter they report, so a scrape asks for a fresh
//! [`Snapshot`] and waits: the request wakes the operator thread, which asks each worker
//! for its counters at the end of its pass (see [`Exporter::answer_scrapes`]). A scrape right after a check therefore shows
//! it, and nothing is copied while nobody scrapes. The snapshot is encoded by one
//! prometheus-client [`Collector`] reading the [`METRICS`] table (each metric's name, help
//! text and where its value comes from, once) and the XDP program's counters (named and
//! described by [`common::Counter`]): the Prometheus text format (0.0.4) by default,
//! OpenMetrics when the scraper asks for it in `Accept`.
//!
//! At most [`MAX_CONNECTIONS`] connections are open at once, each for at most
//! [`CONNECTION_LIFETIME`] ([`BoundedListener`]), and at most [`MAX_WAITING_SCRAPES`] wait
//! for the dataplane.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use pop3_engine::attenuation;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text, text as openmetrics},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::sync::oneshot;

use crate::{
    bounded_listener::BoundedListener,
    cache::EdgeCache,
    dataplane::{DataplaneStats, lock, workers::Workers},
    ebpf::Attachment,
    notify::NotifyStats,
    waker::Waker,
};

/// Prefix of every metric name.
pub const PREFIX: &str = "pop3_interceptor";
/// Most scrapes waiting for the dataplane at once; past it: 503.
pub const MAX_WAITING_SCRAPES: usize = 16;
/// How long a scrape waits for the dataplane's snapshot before answering 503.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections open at once, and how long each may stay open.
pub const MAX_CONNECTIONS: usize = 16;
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything the metrics report, gathered on the operator thread (each worker hands in
/// its own counters when a scrape asks).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The attenuation engine's counters (all zero in `--mode relay`).
    pub engine: attenuation::Counters,
    /// The patent's n now, in seconds (0 in `--mode relay`).
    pub interval_secs: u64,
    /// Users in the attenuation table.
    pub table_entries: u64,
    /// Summed over the workers.
    pub dataplane: DataplaneStats,
    /// Each worker's own, in worker order.
    pub workers: Vec<DataplaneStats>,
    /// The XDP program's counters, summed over CPUs.
    pub xdp: Vec<(common::Counter, u64)>,
    /// What became of new-mail notification requests, by outcome (empty when off).
    pub notifications: Vec<(&'static str, u64)>,
    /// Whether the NATS broker is connected, and the fan-out's events (`None` without one).
    pub fanout: Option<(bool, Vec<(&'static str, u64)>)>,
    /// The edge cache's counters (all zero without `--cache-dir`).
    pub cache: crate::cache::CacheStats,
    /// The edge cache's prefetch (all zero without a `[prefetch]` table).
    pub prefetch: crate::prefetch::PrefetchStats,
}

impl Snapshot {
    /// Reads the workers' counters and engines and the XDP program's per-CPU counters map
    /// (one syscall per counter and one per AF_XDP socket).
    pub fn take(
        workers: &Workers,
        attachment: &Attachment,
        notifications: Option<&NotifyStats>,
        cache: Option<&Mutex<EdgeCache>>,
    ) -> Self {
        let mut engine = attenuation::Counters::default();
        let (mut interval_secs, mut table_entries) = (0, 0);
        for (index, shared) in workers.engines().enumerate() {
            if let Some(e) = lock(shared).attenuation() {
                engine.add_worker(e.counters());
                // One table, shared by every worker's engine.
                if index == 0 {
                    table_entries = e.table().len() as u64;
                    interval_secs = e.interval(std::time::Instant::now()).as_secs();
                }
            }
        }
        let per_worker = workers.stats();
        let mut dataplane = DataplaneStats::default();
        for stats in &per_worker {
            dataplane += *stats;
        }
        Self {
            engine,
            interval_secs,
            table_entries,
            dataplane,
            workers: per_worker,
            xdp: attachment.counters().unwrap_or_default(),
            notifications: notifications.map(NotifyStats::outcomes).unwrap_or_default(),
            fanout: notifications
                .and_then(|n| n.fanout.as_deref())
                .map(|f| (f.is_connected(), f.events())),
            cache: cache.map(|c| lock(c).stats()).unwrap_or_default(),
            prefetch: Default::default(),
        }
    }
}

/// Whether a metric only goes up or goes both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Exported with the `_total` suffix.
    Counter,
    Gauge,
}

/// One exported metric: its name (without [`PREFIX`]), help text and value in a snapshot.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub value: fn(&Snapshot) -> u64,
}

const fn counter(name: &'static str, help: &'static str, value: fn(&Snapshot) -> u64) -> Metric {
    Metric {
        name,
        help,
        kind: Kind::Counter,
        value,
    }
}

const fn gauge(name: &'static str, help: &'static str, value: fn(&Snapshot) -> u64) -> Metric {
    Metric {
        name,
        help,
        kind: Kind::Gauge,
        value,
    }
}

/// Every metric but the XDP program's counters and the notifications by outcome. Adding
/// one is one line here.
pub const METRICS: &[Metric] = &[
    counter(
        "checks_seen",
        "POP3 login attempts (PASS or AUTH PLAIN) seen by the attenuation engine",
        |s| s.engine.checks_seen,
    ),
    counter(
        "answered_locally",
        "Login attempts answered without the mail server (mailbox known to hold nothing new)",
        |s| s.engine.answered_locally,
    ),
    counter(
        "passed_through",
        "Login attempts and tunnelled sessions relayed to the mail server",
        |s| s.engine.passed_through,
    ),
    counter(
        "upstream_logins_avoided",
        "Logins the mail server did not have to do",
        |s| s.engine.upstream_logins_avoided,
    ),
    counter(
        "gc_runs",
        "Collections of expired entries from the attenuation table",
        |s| s.engine.gc_runs,
    ),
    counter(
        "fast_checks_rewarded",
        "Fast repeated checks passed to the mail server by --fast-check",
        |s| s.engine.fast_checks_rewarded,
    ),
    counter(
        "fast_checks_penalized",
        "Checks answered at the edge during a --fast-check penalty",
        |s| s.engine.fast_checks_penalized,
    ),
    counter(
        "one_in_m_passed",
        "Checks that could have been answered at the edge, passed through by --one-in-m",
        |s| s.engine.one_in_m_passed,
    ),
    counter(
        "notifications_applied",
        "New-mail notifications that ended the attenuation of a known user",
        |s| s.engine.notifications_applied,
    ),
    counter(
        "afxdp_rx_frames",
        "Frames received on the AF_XDP sockets",
        |s| s.dataplane.frames_rx,
    ),
    counter(
        "afxdp_tx_frames",
        "Frames queued for transmission on the AF_XDP sockets",
        |s| s.dataplane.frames_tx,
    ),
    counter(
        "afxdp_fill_ring_empty",
        "Frames the kernel dropped because an AF_XDP fill ring was empty",
        |s| s.dataplane.fill_ring_empty,
    ),
    counter(
        "afxdp_tx_ring_full",
        "Frames not sent because no AF_XDP TX frame was free (TCP retransmits them)",
        |s| s.dataplane.tx_ring_full,
    ),
    counter(
        "frames_malformed",
        "Redirected frames the dataplane could not parse",
        |s| s.dataplane.frames_malformed,
    ),
    counter(
        "connections_accepted",
        "Intercepted TCP connections accepted (SYNs answered)",
        |s| s.dataplane.conns_accepted,
    ),
    counter(
        "connections_refused",
        "Intercepted TCP connections refused with RST because --max-conns was reached",
        |s| s.dataplane.conns_refused_full,
    ),
    counter(
        "connections_timed_out",
        "Intercepted connections dropped by the handshake or idle timeout",
        |s| s.dataplane.conns_timed_out,
    ),
    counter(
        "connections_fin_timed_out",
        "Half-closed connections (CLOSE_WAIT, FIN_WAIT_2, ...) reset by --fin-timeout",
        |s| s.dataplane.conns_fin_timed_out,
    ),
    counter(
        "challenge_acks",
        "Segments dropped by the RFC 5961 checks (inexact RST, SYN or bad ACK on a live connection)",
        |s| s.dataplane.challenge_acks,
    ),
    counter(
        "connections_refused_source_conns",
        "SYNs refused with RST: their source had --max-conns-per-source connections",
        |s| s.dataplane.conns_refused_source_conns,
    ),
    counter(
        "connections_refused_source_half_open",
        "SYNs refused with RST: their source had --max-half-open-per-source handshakes open",
        |s| s.dataplane.conns_refused_source_half_open,
    ),
    counter(
        "connections_refused_source_rate",
        "SYNs refused with RST: their source exceeded --syn-rate-per-source",
        |s| s.dataplane.conns_refused_source_rate,
    ),
    gauge("sessions_active", "Intercepted connections open now", |s| {
        s.dataplane.conns_active
    }),
    gauge("table_entries", "Users in the attenuation table", |s| {
        s.table_entries
    }),
    gauge(
        "interval_seconds",
        "The patent's n now: how long a maildrop view is trusted (moved by load with --interval-max)",
        |s| s.interval_secs,
    ),
    counter(
        "cache_hits",
        "RETRs answered from the edge cache (the server's UIDL and size matched the copy)",
        |s| s.cache.hits,
    ),
    counter(
        "cache_misses",
        "RETRs looked up in the edge cache and relayed to the mail server",
        |s| s.cache.misses,
    ),
    counter(
        "cache_served_bytes",
        "Message bytes answered from the edge cache",
        |s| s.cache.bytes_served,
    ),
    counter(
        "cache_evictions",
        "Users evicted from the edge cache to stay within --cache-total-mb",
        |s| s.cache.store.evictions,
    ),
    counter(
        "cache_sync_mismatches",
        "Users whose edge cache was dropped: the mail server listed a cached UIDL with another size",
        |s| s.cache.mismatches,
    ),
    counter(
        "cache_corrupt",
        "Edge cache files that failed their check on read (deleted, never served)",
        |s| s.cache.store.corrupt,
    ),
    gauge("cache_bytes", "Message bytes held in the edge cache", |s| {
        s.cache.store.bytes
    }),
    gauge("cache_messages", "Messages held in the edge cache", |s| {
        s.cache.store.messages as u64
    }),
    counter(
        "bytes_prefetched",
        "Message bytes the prefetch copied from the mail server into the edge cache",
        |s| s.prefetch.bytes,
    ),
    counter(
        "prefetch_messages",
        "Messages the prefetch copied from the mail server into the edge cache",
        |s| s.prefetch.messages,
    ),
    counter(
        "prefetch_runs",
        "Prefetch sessions with the mail server that ended (done, deferred or failed)",
        |s| s.prefetch.runs,
    ),
    counter(
        "prefetch_failures",
        "Prefetch sessions that failed: server down, master login refused, a wrong answer",
        |s| s.prefetch.failures,
    ),
    gauge(
        "prefetch_lull",
        "1 while the prefetch's window, busy hours and load threshold let it run",
        |s| u64::from(s.prefetch.lull),
    ),
];

const RULE_DECISIONS: &str = "rule_decisions";
const RULE_DECISIONS_HELP: &str =
    "Decisions of the optional attenuation rules, by rule and decision";
const NATS_CONNECTED: &str = "nats_connected";
const NATS_CONNECTED_HELP: &str = "1 while the NATS broker of the fan-out is connected";
const NATS_EVENTS: &str = "nats_events";
const NATS_EVENTS_HELP: &str = "NATS fan-out of notifications, by event (disconnect, published, publish_dropped, received, rejected, receive_dropped)";
const WORKER_CONNECTIONS: &str = "worker_connections_accepted";
const WORKER_CONNECTIONS_HELP: &str =
    "Intercepted TCP connections accepted, by dataplane worker (--workers)";
const WORKER_FRAMES: &str = "worker_frames_received";
const WORKER_FRAMES_HELP: &str = "Frames received from the frame queues, by dataplane worker";
const NOTIFICATIONS: &str = "notifications";
const NOTIFICATIONS_HELP: &str = "New-mail notification requests, by outcome (accepted, ignored, unauthorized, malformed, rate_limited, queue_full)";

/// Encodes one snapshot: the [`METRICS`] table, the XDP program's counters, the rules'
/// decisions, the notifications by outcome (when the endpoint is on) and the NATS
/// fan-out (when on).
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = &self.0;
        for metric in METRICS {
            let value = (metric.value)(snapshot);
            match metric.kind {
                Kind::Counter => encode_one(
                    &mut encoder,
                    metric.name,
                    metric.help,
                    ConstCounter::new(value),
                )?,
                Kind::Gauge => encode_one(
                    &mut encoder,
                    metric.name,
                    metric.help,
                    ConstGauge::new(value),
                )?,
            }
        }
        for &(counter, value) in &snapshot.xdp {
            let help = format!(
                "XDP program counter {} (summed over CPUs): {}",
                counter.name(),
                counter.help()
            );
            let name = format!("xdp_{}", counter.name());
            encode_one(&mut encoder, &name, &help, ConstCounter::new(value))?;
        }
        let decisions = snapshot.engine.rule_decisions();
        encode_family(
            &mut encoder,
            RULE_DECISIONS,
            RULE_DECISIONS_HELP,
            decisions.map(|(rule, decision, n)| ([("rule", rule), ("decision", decision)], n)),
        )?;
        let workers = snapshot.workers.iter().enumerate();
        encode_family(
            &mut encoder,
            WORKER_CONNECTIONS,
            WORKER_CONNECTIONS_HELP,
            workers
                .clone()
                .map(|(i, w)| ([("worker", i.to_string())], w.conns_accepted)),
        )?;
        encode_family(
            &mut encoder,
            WORKER_FRAMES,
            WORKER_FRAMES_HELP,
            workers.map(|(i, w)| ([("worker", i.to_string())], w.frames_rx)),
        )?;
        if !snapshot.notifications.is_empty() {
            encode_family(
                &mut encoder,
                NOTIFICATIONS,
                NOTIFICATIONS_HELP,
                snapshot
                    .notifications
                    .iter()
                    .map(|&(outcome, n)| ([("outcome", outcome)], n)),
            )?;
        }
        if let Some((connected, events)) = &snapshot.fanout {
            let connected = ConstGauge::new(u64::from(*connected));
            encode_one(&mut encoder, NATS_CONNECTED, NATS_CONNECTED_HELP, connected)?;
            encode_family(
                &mut encoder,
                NATS_EVENTS,
                NATS_EVENTS_HELP,
                events.iter().map(|&(event, n)| ([("event", event)], n)),
            )?;
        }
        Ok(())
    }
}

/// One labelled counter family: a sample per label set.
fn encode_family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let sample = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, sample.metric_type())?;
    for (labels, count) in samples {
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The exposition of `snapshot`: OpenMetrics text (ending with `# EOF`) or the Prometheus
/// text format 0.0.4.
pub fn encode(snapshot: Snapshot, openmetrics: bool) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::new();
    let written = if openmetrics {
        openmetrics::encode(&mut out, &registry)
    } else {
        prometheus_text::encode(&mut out, &registry)
    };
    written.expect("writing to a String cannot fail");
    out
}

/// A scrape's request for a snapshot, answered by the dataplane thread.
type ScrapeRequest = oneshot::Sender<Snapshot>;

/// The metrics side of `run`: serves them when `--metrics` is set; does nothing otherwise.
#[derive(Debug, Default)]
pub struct Exporter {
    requests: Option<mpsc::Receiver<ScrapeRequest>>,
}

struct Endpoint {
    requests: mpsc::SyncSender<ScrapeRequest>,
    waker: Arc<Waker>,
}

impl Exporter {
    /// Binds `addr` (if any; a busy address fails `run` at start-up) and serves on
    /// `runtime`; `waker` wakes the operator thread when a scrape waits.
    pub fn start(
        addr: Option<SocketAddr>,
        runtime: &tokio::runtime::Handle,
        waker: Arc<Waker>,
    ) -> std::io::Result<Self> {
        let Some(addr) = addr else {
            return Ok(Self::default());
        };
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let (requests, receiver) = mpsc::sync_channel(MAX_WAITING_SCRAPES);
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route(
                "/",
                get(|| async { "pop3-interceptor: metrics at /metrics\n" }),
            )
            .with_state(Arc::new(Endpoint { requests, waker }));
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        runtime.spawn(async move {
            let listener = BoundedListener::new(listener, MAX_CONNECTIONS, CONNECTION_LIFETIME);
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "metrics endpoint stopped");
            }
        });
        tracing::info!("serving Prometheus metrics at http://{local}/metrics");
        Ok(Self {
            requests: Some(receiver),
        })
    }

    /// Call on every operator pass: when scrapes wait, takes one snapshot with `take`
    /// and hands it to each of them.
    pub fn answer_scrapes(&self, take: impl FnOnce() -> Snapshot) {
        let Some(requests) = &self.requests else {
            return;
        };
        let mut waiting = requests.try_iter().peekable();
        if waiting.peek().is_none() {
            return;
        }
        let snapshot = take();
        for request in waiting {
            // A scrape that gave up has dropped its receiver: nothing to do.
            let _ = request.send(snapshot.clone());
        }
    }
}

async fn metrics(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    let (request, answer) = oneshot::channel();
    if endpoint.requests.try_send(request).is_err() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    endpoint.waker.wake();
    let Ok(Ok(snapshot)) = tokio::time::timeout(ANSWER_TIMEOUT, answer).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let openmetrics = headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        prometheus_text::CONTENT_TYPE
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        encode(snapshot, openmetrics),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
