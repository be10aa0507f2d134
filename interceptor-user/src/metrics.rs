//! Prometheus metrics: `run --metrics ADDR` serves `GET /metrics` on a small thread.
//!
//! The dataplane thread owns every counter it reports, so it takes a [`Snapshot`] at most
//! once a second (in `Dataplane::run`'s `on_tick`) and stores the values into the
//! registry's atomics with [`Metrics::update`]; a scrape only reads those atomics and never
//! touches the dataplane. The exposition is written by the `prometheus-client` crate: the
//! Prometheus text format (0.0.4) by default, OpenMetrics when the scraper asks for it in
//! `Accept`.
//!
//! The HTTP side is deliberately tiny and bounded: one connection at a time, a short read
//! deadline, at most [`MAX_REQUEST`] bytes of request head, `Connection: close`.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use pop3_engine::attenuation;
use prometheus_client::{
    encoding::{prometheus_text, text as openmetrics},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{dataplane::DataplaneStats, ebpf::Attachment, notify::NotifyStats};

/// Prefix of every metric name.
pub const PREFIX: &str = "pop3_interceptor";
/// Longest request head (request line and headers) read from a scraper.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper has to send its request head, in all.
pub const READ_DEADLINE: Duration = Duration::from_secs(2);
/// How long a scraper has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the dataplane refreshes the values at most.
pub const UPDATE_EVERY: Duration = Duration::from_secs(1);

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type U64Counter = Counter<u64, AtomicU64>;
type U64Gauge = Gauge<u64, AtomicU64>;

/// Everything the metrics report, read on the dataplane thread.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The attenuation engine's counters (`None` in `--mode relay`).
    pub engine: Option<attenuation::Counters>,
    /// Users in the attenuation table.
    pub table_entries: u64,
    pub dataplane: DataplaneStats,
    /// The XDP program's counters, summed over CPUs.
    pub xdp: Vec<(common::Counter, u64)>,
    /// What became of new-mail notification requests, by outcome (empty when off).
    pub notifications: Vec<(&'static str, u64)>,
    /// Whether the NATS broker is connected, and the fan-out's events (`None` without one).
    pub fanout: Option<(bool, Vec<(&'static str, u64)>)>,
}

impl Snapshot {
    /// Reads the dataplane, the engine and the XDP program's per-CPU counters map (one
    /// syscall per counter and one per AF_XDP socket: call it about once a second).
    pub fn take(
        dataplane: &crate::dataplane::Dataplane<crate::engine::Engine>,
        attachment: &Attachment,
        notifications: Option<&NotifyStats>,
    ) -> Self {
        let engine = dataplane.engine().attenuation();
        Self {
            engine: engine.map(|e| *e.counters()),
            table_entries: engine.map_or(0, |e| e.table().len() as u64),
            dataplane: dataplane.stats(),
            xdp: attachment.counters().unwrap_or_default(),
            notifications: notifications.map(NotifyStats::outcomes).unwrap_or_default(),
            fanout: notifications
                .and_then(|n| n.fanout.as_deref())
                .map(|f| (f.is_connected(), f.events())),
        }
    }
}

/// The registry and the handles of its metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    checks_seen: U64Counter,
    answered_locally: U64Counter,
    passed_through: U64Counter,
    upstream_logins_avoided: U64Counter,
    gc_runs: U64Counter,
    notifications: Family<Vec<(String, String)>, U64Counter>,
    notifications_applied: U64Counter,
    nats_events: Family<Vec<(String, String)>, U64Counter>,
    nats_connected: U64Gauge,
    one_in_m_passed: U64Counter,
    fast_checks_rewarded: U64Counter,
    fast_checks_penalized: U64Counter,
    sessions_active: U64Gauge,
    table_entries: U64Gauge,
    xdp: Vec<(common::Counter, U64Counter)>,
    afxdp_rx_frames: U64Counter,
    afxdp_tx_frames: U64Counter,
    afxdp_fill_ring_empty: U64Counter,
    afxdp_tx_ring_full: U64Counter,
    frames_malformed: U64Counter,
    connections_accepted: U64Counter,
    connections_refused: U64Counter,
    connections_timed_out: U64Counter,
    connections_fin_timed_out: U64Counter,
    challenge_acks: U64Counter,
    refused_source_conns: U64Counter,
    refused_source_half_open: U64Counter,
    refused_source_rate: U64Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let mut counter = |name: &str, help: &str| {
            let c = U64Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let checks_seen = counter(
            "checks_seen",
            "POP3 login attempts (PASS or AUTH PLAIN) seen by the attenuation engine",
        );
        let answered_locally = counter(
            "answered_locally",
            "Login attempts answered without the mail server (mailbox known to hold nothing new)",
        );
        let passed_through = counter(
            "passed_through",
            "Login attempts and tunnelled sessions relayed to the mail server",
        );
        let upstream_logins_avoided = counter(
            "upstream_logins_avoided",
            "Logins the mail server did not have to do",
        );
        let gc_runs = counter(
            "gc_runs",
            "Collections of expired entries from the attenuation table",
        );
        let fast_checks_rewarded = counter(
            "fast_checks_rewarded",
            "Fast repeated checks passed to the mail server by --fast-check",
        );
        let fast_checks_penalized = counter(
            "fast_checks_penalized",
            "Checks answered at the edge during a --fast-check penalty",
        );
        let one_in_m_passed = counter(
            "one_in_m_passed",
            "Checks that could have been answered at the edge, passed through by --one-in-m",
        );
        let notifications_applied = counter(
            "notifications_applied",
            "New-mail notifications that ended the attenuation of a known user",
        );
        let xdp = common::Counter::ALL
            .iter()
            .map(|&c| {
                let help = format!(
                    "XDP program counter {} (summed over CPUs): {}",
                    c.name(),
                    xdp_help(c)
                );
                (c, counter(&format!("xdp_{}", c.name()), &help))
            })
            .collect();
        let afxdp_rx_frames = counter("afxdp_rx_frames", "Frames received on the AF_XDP sockets");
        let afxdp_tx_frames = counter(
            "afxdp_tx_frames",
            "Frames queued for transmission on the AF_XDP sockets",
        );
        let afxdp_fill_ring_empty = counter(
            "afxdp_fill_ring_empty",
            "Frames the kernel dropped because an AF_XDP fill ring was empty",
        );
        let afxdp_tx_ring_full = counter(
            "afxdp_tx_ring_full",
            "Frames not sent because no AF_XDP TX frame was free (TCP retransmits them)",
        );
        let frames_malformed = counter(
            "frames_malformed",
            "Redirected frames the dataplane could not parse",
        );
        let connections_accepted = counter(
            "connections_accepted",
            "Intercepted TCP connections accepted (SYNs answered)",
        );
        let connections_refused = counter(
            "connections_refused",
            "Intercepted TCP connections refused with RST because --max-conns was reached",
        );
        let connections_timed_out = counter(
            "connections_timed_out",
            "Intercepted connections dropped by the handshake or idle timeout",
        );
        let connections_fin_timed_out = counter(
            "connections_fin_timed_out",
            "Half-closed connections (CLOSE_WAIT, FIN_WAIT_2, ...) reset by --fin-timeout",
        );
        let challenge_acks = counter(
            "challenge_acks",
            "Segments dropped by the RFC 5961 checks (inexact RST, SYN or bad ACK on a live connection)",
        );
        let refused_source_conns = counter(
            "connections_refused_source_conns",
            "SYNs refused with RST: their source had --max-conns-per-source connections",
        );
        let refused_source_half_open = counter(
            "connections_refused_source_half_open",
            "SYNs refused with RST: their source had --max-half-open-per-source handshakes open",
        );
        let refused_source_rate = counter(
            "connections_refused_source_rate",
            "SYNs refused with RST: their source exceeded --syn-rate-per-source",
        );
        let notifications = Family::<Vec<(String, String)>, U64Counter>::default();
        registry.register(
            "notifications",
            "New-mail notification requests, by outcome (accepted, ignored, unauthorized, malformed, rate_limited, queue_full)",
            notifications.clone(),
        );
        let nats_events = Family::<Vec<(String, String)>, U64Counter>::default();
        registry.register(
            "nats_events",
            "NATS fan-out of notifications, by event (disconnect, published, publish_dropped, received, rejected, receive_dropped)",
            nats_events.clone(),
        );
        let nats_connected = U64Gauge::default();
        registry.register(
            "nats_connected",
            "1 while the NATS broker of the fan-out is connected",
            nats_connected.clone(),
        );
        let sessions_active = U64Gauge::default();
        registry.register(
            "sessions_active",
            "Intercepted connections open now",
            sessions_active.clone(),
        );
        let table_entries = U64Gauge::default();
        registry.register(
            "table_entries",
            "Users in the attenuation table",
            table_entries.clone(),
        );
        Self {
            registry,
            checks_seen,
            answered_locally,
            passed_through,
            upstream_logins_avoided,
            gc_runs,
            notifications,
            notifications_applied,
            nats_events,
            nats_connected,
            one_in_m_passed,
            fast_checks_rewarded,
            fast_checks_penalized,
            sessions_active,
            table_entries,
            xdp,
            afxdp_rx_frames,
            afxdp_tx_frames,
            afxdp_fill_ring_empty,
            afxdp_tx_ring_full,
            frames_malformed,
            connections_accepted,
            connections_refused,
            connections_timed_out,
            connections_fin_timed_out,
            challenge_acks,
            refused_source_conns,
            refused_source_half_open,
            refused_source_rate,
        }
    }

    /// Stores a snapshot's values. The sources are monotonic counters, so the exported
    /// counters are set to them rather than incremented.
    pub fn update(&self, snapshot: &Snapshot) {
        let set = |c: &U64Counter, v: u64| c.inner().store(v, Ordering::Relaxed);
        let engine = snapshot.engine.unwrap_or_default();
        set(&self.checks_seen, engine.checks_seen);
        set(&self.answered_locally, engine.answered_locally);
        set(&self.passed_through, engine.passed_through);
        set(
            &self.upstream_logins_avoided,
            engine.upstream_logins_avoided,
        );
        set(&self.gc_runs, engine.gc_runs);
        set(&self.notifications_applied, engine.notifications_applied);
        set(&self.one_in_m_passed, engine.one_in_m_passed);
        set(&self.fast_checks_rewarded, engine.fast_checks_rewarded);
        set(&self.fast_checks_penalized, engine.fast_checks_penalized);
        for (outcome, count) in &snapshot.notifications {
            let labels = vec![("outcome".to_owned(), (*outcome).to_owned())];
            set(&self.notifications.get_or_create(&labels), *count);
        }
        if let Some((connected, events)) = &snapshot.fanout {
            self.nats_connected.set(u64::from(*connected));
            for (event, count) in events {
                let labels = vec![("event".to_owned(), (*event).to_owned())];
                set(&self.nats_events.get_or_create(&labels), *count);
            }
        }
        self.table_entries.set(snapshot.table_entries);
        let dp = &snapshot.dataplane;
        self.sessions_active.set(dp.conns_active);
        set(&self.afxdp_rx_frames, dp.frames_rx);
        set(&self.afxdp_tx_frames, dp.frames_tx);
        set(&self.afxdp_fill_ring_empty, dp.fill_ring_empty);
        set(&self.afxdp_tx_ring_full, dp.tx_ring_full);
        set(&self.frames_malformed, dp.frames_malformed);
        set(&self.connections_accepted, dp.conns_accepted);
        set(&self.connections_refused, dp.conns_refused_full);
        set(&self.connections_timed_out, dp.conns_timed_out);
        set(&self.connections_fin_timed_out, dp.conns_fin_timed_out);
        set(&self.challenge_acks, dp.challenge_acks);
        set(&self.refused_source_conns, dp.conns_refused_source_conns);
        set(
            &self.refused_source_half_open,
            dp.conns_refused_source_half_open,
        );
        set(&self.refused_source_rate, dp.conns_refused_source_rate);
        for (counter, metric) in &self.xdp {
            if let Some(&(_, v)) = snapshot.xdp.iter().find(|(c, _)| c == counter) {
                set(metric, v);
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        openmetrics::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn xdp_help(counter: common::Counter) -> &'static str {
    match counter {
        common::Counter::FramesSeen => "every frame the program ran on",
        common::Counter::Matched => "TCP frames to an intercepted port and server",
        common::Counter::Redirected => "matched frames handed to an AF_XDP socket",
        common::Counter::FallbackPassed => {
            "matched frames with no AF_XDP socket on their queue, passed to the kernel (fail-open)"
        }
        common::Counter::ReversePathFailed => {
            "SYNs whose route back leaves through another interface (spoofed source), passed to the kernel"
        }
        common::Counter::NoNeighbour => {
            "SYNs from clients without a neighbour entry on the router, passed to the kernel"
        }
    }
}

/// The metrics side of `run`: serves them when `--metrics` is set and refreshes the values
/// from the dataplane at most every [`UPDATE_EVERY`]; does nothing otherwise.
#[derive(Debug, Default)]
pub struct Exporter {
    metrics: Option<Arc<Metrics>>,
    last_update: Option<Instant>,
}

impl Exporter {
    /// Binds `addr` (if any) and starts the HTTP thread.
    pub fn start(addr: Option<SocketAddr>) -> io::Result<Self> {
        let Some(addr) = addr else {
            return Ok(Self::default());
        };
        let metrics = Arc::new(Metrics::new());
        let (local, _thread) = serve(addr, metrics.clone())?;
        tracing::info!("serving Prometheus metrics at http://{local}/metrics");
        Ok(Self {
            metrics: Some(metrics),
            last_update: None,
        })
    }

    /// Call on every dataplane tick: takes a [`Snapshot`] when the last one is older than
    /// [`UPDATE_EVERY`].
    pub fn tick(
        &mut self,
        dataplane: &crate::dataplane::Dataplane<crate::engine::Engine>,
        attachment: &Attachment,
        notifications: Option<&NotifyStats>,
    ) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let now = Instant::now();
        if self
            .last_update
            .is_some_and(|t| now.duration_since(t) < UPDATE_EVERY)
        {
            return;
        }
        self.last_update = Some(now);
        metrics.update(&Snapshot::take(dataplane, attachment, notifications));
    }
}

/// Binds `addr` and serves the metrics on a thread named `metrics` until the process
/// exits. Binding happens here, so a busy address fails `run` at start-up.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = handle(stream, &metrics) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: do not spin.
                        tracing::warn!(error = %e, "metrics: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok((local, thread))
}

/// Answers one request on `stream`, then closes it.
fn handle(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = match read_head(&mut stream) {
        Ok(head) => head,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return respond(&mut stream, &Response::status(400, "Bad Request"), false);
        }
        Err(e) => return Err(e),
    };
    let (response, head_only) = route(&head, metrics);
    respond(&mut stream, &response, head_only)
}

/// Reads the request head (up to the blank line), within [`READ_DEADLINE`] and
/// [`MAX_REQUEST`] bytes. The body of a request, if any, is never read.
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| io::ErrorKind::InvalidData.into());
        }
        if buf.len() > MAX_REQUEST {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// An HTTP response before it is written.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    code: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_header: Option<&'static str>,
    body: String,
}

impl Response {
    fn status(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_header: None,
            body: format!("{reason}\n"),
        }
    }
}

/// Picks the answer to a request head. Returns the response and whether it is for HEAD.
fn route(head: &str, metrics: &Metrics) -> (Response, bool) {
    let mut lines = head.lines();
    let mut words = lines.next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return (Response::status(400, "Bad Request"), false);
    };
    if !version.starts_with("HTTP/1.") {
        return (Response::status(400, "Bad Request"), false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let mut r = Response::status(405, "Method Not Allowed");
        r.extra_header = Some("Allow: GET, HEAD");
        return (r, false);
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    match path {
        "/metrics" => {
            let openmetrics = lines.any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("accept")
                        && v.contains("application/openmetrics-text")
                })
            });
            let (content_type, body) = if openmetrics {
                (OPENMETRICS_CONTENT_TYPE, metrics.render_openmetrics())
            } else {
                (prometheus_text::CONTENT_TYPE, metrics.render())
            };
            let response = Response {
                code: 200,
                reason: "OK",
                content_type,
                extra_header: None,
                body,
            };
            (response, head_only)
        }
        "/" => {
            let mut r = Response::status(200, "OK");
            r.body = "pop3-interceptor: metrics at /metrics\n".into();
            (r, head_only)
        }
        _ => (Response::status(404, "Not Found"), head_only),
    }
}

fn respond(stream: &mut TcpStream, response: &Response, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.code,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if let Some(h) = response.extra_header {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// Parses a Prometheus text exposition into `(name with labels, value)` pairs (for tests
/// and tools; comments and blank lines are skipped).
pub fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> Option<f64> {
        parse_exposition(text)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn sample() -> Snapshot {
        Snapshot {
            engine: Some(attenuation::Counters {
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
            }),
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
            xdp: common::Counter::ALL
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, 1000 + i as u64))
                .collect(),
            notifications: vec![("accepted", 9), ("unauthorized", 4)],
            fanout: Some((true, vec![("disconnect", 2), ("received", 5)])),
        }
    }

    #[test]
    fn the_exposition_has_every_metric_with_prometheus_names() {
        let metrics = Metrics::new();
        metrics.update(&sample());
        let text = metrics.render();
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
                "pop3_interceptor_notifications_total{outcome=\"accepted\"}",
                9.0,
            ),
            (
                "pop3_interceptor_notifications_total{outcome=\"unauthorized\"}",
                4.0,
            ),
            ("pop3_interceptor_nats_connected", 1.0),
            (
                "pop3_interceptor_nats_events_total{event=\"disconnect\"}",
                2.0,
            ),
            (
                "pop3_interceptor_nats_events_total{event=\"received\"}",
                5.0,
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
        assert!(text.contains("# HELP pop3_interceptor_checks_seen_total "));
        // Every sample has a HELP and a TYPE, and nothing else is exported.
        let samples = parse_exposition(&text);
        assert_eq!(samples.len(), expect.len(), "{text}");
        for (name, _) in &samples {
            let family = name.split('{').next().unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{name}");
            assert!(name.starts_with("pop3_interceptor_"), "{name}");
        }
    }

    #[test]
    fn relay_mode_reports_zero_engine_counters_and_updates_are_absolute() {
        let metrics = Metrics::new();
        metrics.update(&sample());
        metrics.update(&Snapshot {
            engine: None,
            ..sample()
        });
        let text = metrics.render();
        assert_eq!(
            value(&text, "pop3_interceptor_checks_seen_total"),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "pop3_interceptor_connections_accepted_total"),
            Some(10.0),
            "set, not added twice"
        );
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let metrics = Metrics::new();
        let text = metrics.render_openmetrics();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("pop3_interceptor_checks_seen_total 0\n"));
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn the_http_endpoint_serves_get_metrics_and_refuses_the_rest() {
        let metrics = Arc::new(Metrics::new());
        metrics.update(&sample());
        let (addr, _thread) = serve("127.0.0.1:0".parse().unwrap(), metrics).unwrap();

        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert_eq!(
            value(body, "pop3_interceptor_checks_seen_total"),
            Some(10.0)
        );

        let om = get(
            addr,
            b"GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
        );
        assert!(om.contains("application/openmetrics-text"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");

        let head = get(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
            "{head}"
        );

        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let post = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(
            post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET"),
            "{post}"
        );
        assert!(get(addr, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));

        // An endless head is cut off at MAX_REQUEST.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let big = vec![b'a'; MAX_REQUEST + 1];
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");

        // A silent client is dropped after the read deadline and does not block others.
        let started = Instant::now();
        let silent = TcpStream::connect(addr).unwrap();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"));
        assert!(started.elapsed() < READ_DEADLINE + Duration::from_secs(2));
        drop(silent);
    }
}
