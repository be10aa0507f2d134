//! The packet path in userspace: frames in (AF_XDP sockets, or the TC dataplane's TAP),
//! TCP terminated by smoltcp, POP3 bytes to and from the engine and the upstream
//! connections, frames out.
//!
//! Longer than 600 lines: the one loop and the steps of a pass in order; the pieces with
//! a job of their own (frames, stacks, connections, sources, RFC 5961, frame queues) are
//! its submodules.
//!
//! One worker thread runs the whole loop for its frame queues (`poll(2)` on them, its
//! upstream sockets' epoll descriptor and its eventfd), so connection state needs no
//! locks; `--workers` runs several, each a [`Dataplane`] of its own (see [`workers`]),
//! sharing only the connection [`limits`] and the user table. Data flows one way through
//! each step: frames -> [`frame::parse`] -> [`stack::Stack`] -> [`Pop3Engine`] -> actions
//! -> stack -> frames.

mod conn;
pub mod destinations;
pub mod frame;
pub mod gso;
pub mod limits;
pub mod queue;
pub mod rfc5961;
pub mod sources;
pub mod stack;
pub mod stacks;
pub mod tap;
pub mod workers;
pub mod xsk;

use std::{
    net::SocketAddr,
    ops::ControlFlow,
    os::fd::AsFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pop3_engine::session::{Action, ConnId, ConnInfo, Event, Output, Pop3Engine};
use rustix::{
    event::{PollFd, PollFlags, Timespec},
    io::Errno,
};
use smoltcp::socket::tcp::State;
use thiserror::Error;

use crate::{
    cache::{self, SharedCache, reads::CacheReads},
    flow_maps::FlowMaps,
    upstream::{Upstream, UpstreamEvent},
    waker::Waker,
};
use conn::{Conn, ConnTable};
use frame::ReplyHeader;
use limits::{Limits, Refused};
use queue::FrameQueue;
use rfc5961::{ChallengeLimit, Verdict};
use sources::Refusal;
use stacks::Stacks;
use tap::TapError;
use xsk::XskError;

/// Tunables of one worker's dataplane.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// IP MTU of the interface.
    pub mtu: usize,
    /// Segments larger than the client's MSS go to the kernel to cut (GSO; the TC
    /// dataplane's reply socket can, AF_XDP cannot): see [`gso`].
    pub segmentation_offload: bool,
    /// Most concurrent intercepted connections over all workers (the [`Limits`] refuse
    /// SYNs beyond it); sizes this worker's stacks.
    pub max_conns: usize,
    /// A connection that is not established within this is dropped.
    pub handshake_timeout: Duration,
    /// A connection without any traffic for this long is dropped.
    pub idle_timeout: Duration,
    /// A half-closed connection (either side sent FIN) is dropped this long after that,
    /// whatever keeps arriving on it.
    pub fin_timeout: Duration,
    /// How long to wait for the mail server's TCP handshake.
    pub connect_timeout: Duration,
    /// How long the mail server may stay silent when it owes an answer.
    pub response_timeout: Duration,
}

/// Why the dataplane could not start.
#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    #[error("starting the upstream poller, the operator runtime or an eventfd: {0}")]
    Runtime(std::io::Error),
    #[error("poll: {0}")]
    Poll(std::io::Error),
    #[error("drawing the initial sequence number seed from the OS: {0}")]
    Random(getrandom::Error),
}

/// What the dataplane did, for the operator's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct DataplaneStats {
    pub frames_rx: u64,
    pub frames_tx: u64,
    pub frames_malformed: u64,
    pub tx_ring_full: u64,
    pub conns_accepted: u64,
    pub conns_refused_full: u64,
    /// SYNs refused because their source had `--max-conns-per-source` connections.
    pub conns_refused_source_conns: u64,
    /// SYNs refused because their source had `--max-half-open-per-source` handshakes open.
    pub conns_refused_source_half_open: u64,
    /// SYNs refused because their source exceeded `--syn-rate-per-source`.
    pub conns_refused_source_rate: u64,
    pub conns_timed_out: u64,
    /// Half-closed connections reaped by the FIN timer.
    pub conns_fin_timed_out: u64,
    /// Segments dropped by the RFC 5961 checks (a challenge ACK answers, rate limited).
    pub challenge_acks: u64,
    pub conns_active: u64,
    /// Frames the kernel dropped for want of a free frame in a fill ring.
    pub fill_ring_empty: u64,
}

impl std::ops::AddAssign for DataplaneStats {
    /// Sums two workers' counters.
    fn add_assign(&mut self, other: Self) {
        self.frames_rx += other.frames_rx;
        self.frames_tx += other.frames_tx;
        self.frames_malformed += other.frames_malformed;
        self.tx_ring_full += other.tx_ring_full;
        self.conns_accepted += other.conns_accepted;
        self.conns_refused_full += other.conns_refused_full;
        self.conns_refused_source_conns += other.conns_refused_source_conns;
        self.conns_refused_source_half_open += other.conns_refused_source_half_open;
        self.conns_refused_source_rate += other.conns_refused_source_rate;
        self.conns_timed_out += other.conns_timed_out;
        self.conns_fin_timed_out += other.conns_fin_timed_out;
        self.challenge_acks += other.challenge_acks;
        self.conns_active += other.conns_active;
        self.fill_ring_empty += other.fill_ring_empty;
    }
}

/// Frames read from one queue before moving on, so one busy queue cannot starve others.
const RX_BUDGET: u32 = 256;
/// Bytes read from a client socket per engine call.
const CLIENT_READ_CHUNK: usize = 4096;
/// Bytes for a client beyond which we stop reading from it.
const MAX_PENDING_TO_CLIENT: usize = 64 * 1024;
/// Bytes queued for a server beyond which we stop reading from its client.
const MAX_PENDING_TO_UPSTREAM: usize = 256 * 1024;
/// RFC 5961 challenge ACKs sent per second at most, over all connections (Linux's
/// default `tcp_challenge_ack_limit` is 1000).
const CHALLENGE_ACKS_PER_SECOND: u32 = 1000;
/// Connections at a peak worth trimming the heap after.
const TRIM_AFTER_PEAK: usize = 256;
/// How often idle and handshake timeouts are checked at the latest.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Connections looked at per pass for their timeouts, about: a pass stays short however
/// many connections are open.
const ROUND_SHARE: usize = 100;

/// The dataplane of one interface.
pub struct Dataplane<E> {
    config: DataplaneConfig,
    queues: Vec<FrameQueue>,
    stacks: Stacks,
    conns: ConnTable,
    engine: E,
    upstream: Upstream,
    /// What `upstream` reported in this pass (kept to reuse its allocation).
    upstream_events: Vec<UpstreamEvent>,
    cache_reads: CacheReads,
    waker: Arc<Waker>,
    outputs: Vec<Output>,
    /// Segments we build ourselves (RSTs for refused SYNs, challenge ACKs): queue index,
    /// link-layer header, IP packet. Sent with the next transmit.
    control_tx: Vec<(usize, ReplyHeader, Vec<u8>)>,
    challenges: ChallengeLimit,
    limits: Arc<Limits>,
    /// Most connections since the heap was last trimmed.
    peak_since_trim: usize,
    /// Connections touched since they were last serviced (packets, upstream events).
    dirty: hashbrown::HashSet<ConnId>,
    /// `(client, server)` of the connections reclaimed during the last pass.
    closed_flows: Vec<(SocketAddr, SocketAddr)>,
    /// Connections that reached TIME-WAIT in this pass: reclaimed after its transmit, once
    /// smoltcp's ACK of the client's FIN is out (without it the client retransmits its
    /// FIN to a flow that is gone, and the classifier passes that to the real server).
    time_wait: Vec<ConnId>,
    /// `(client, server)` of the connections whose handshake completed in the last pass.
    established_flows: Vec<(SocketAddr, SocketAddr)>,
    scratch: Vec<u8>,
    stats: DataplaneStats,
    epoch: Instant,
    last_housekeeping: Instant,
    /// The edge cache (`--cache-dir`), read on the operator runtime's blocking threads
    /// when the engine asks.
    cache: Option<SharedCache>,
    /// When the last share of connections was looked at (see `service_conns`).
    last_round: Instant,
    /// When the caller wants a pass at the latest (see [`Self::wake_by`]).
    wanted_by: Option<Instant>,
    /// The classifier's flow maps, written at the end of each pass; `None` until the
    /// worker hands them over.
    flow_maps: Option<FlowMaps>,
}

impl<E: Pop3Engine> Dataplane<E> {
    /// A worker's dataplane over `queues` (opened by [`workers`]), admitting connections
    /// through the `limits` all workers share; `waker` wakes its `poll(2)` from other
    /// threads; edge-cache reads run on `runtime`'s blocking threads. Built on the
    /// worker's own thread (its upstream poller stays there).
    pub fn new(
        config: DataplaneConfig,
        engine: E,
        queues: Vec<FrameQueue>,
        limits: Arc<Limits>,
        waker: Arc<Waker>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, DataplaneError> {
        let upstream = Upstream::new(config.connect_timeout).map_err(DataplaneError::Runtime)?;
        let epoch = Instant::now();
        // Initial sequence numbers must be unpredictable to off-path attackers.
        let stack_mtu = if config.segmentation_offload {
            gso::STACK_MTU
        } else {
            config.mtu
        };
        let stacks = Stacks::new(
            config.max_conns,
            stack_mtu,
            smoltcp::time::Instant::ZERO,
            getrandom::u64,
        )
        .map_err(DataplaneError::Random)?;
        Ok(Self {
            stacks,
            limits,
            config,
            queues,
            conns: ConnTable::default(),
            challenges: ChallengeLimit::new(CHALLENGE_ACKS_PER_SECOND, epoch),
            peak_since_trim: 0,
            engine,
            upstream,
            upstream_events: Vec::new(),
            cache_reads: CacheReads::new(runtime, waker.clone()),
            waker,
            outputs: Vec::new(),
            control_tx: Vec::new(),
            dirty: hashbrown::HashSet::new(),
            closed_flows: Vec::new(),
            time_wait: Vec::new(),
            established_flows: Vec::new(),
            scratch: vec![0; CLIENT_READ_CHUNK],
            stats: DataplaneStats::default(),
            epoch,
            last_housekeeping: epoch,
            cache: None,
            last_round: epoch,
            wanted_by: None,
            flow_maps: None,
        })
    }

    /// Answers the engine's edge-cache requests from `cache`.
    pub fn set_cache(&mut self, cache: SharedCache) {
        self.cache = Some(cache);
    }

    /// Keeps the classifier's `FLOWS` and `HALF_OPEN` as this worker's flows come and go.
    pub fn set_flow_maps(&mut self, flow_maps: FlowMaps) {
        self.flow_maps = Some(flow_maps);
    }

    /// Whether a flow came or went during the last pass.
    pub fn flows_changed(&self) -> bool {
        !self.established_flows.is_empty() || !self.closed_flows.is_empty()
    }

    /// Asks for a pass by `at` at the latest (or none: `None`), for work the caller does
    /// between passes.
    pub fn wake_by(&mut self, at: Option<Instant>) {
        self.wanted_by = at;
    }

    /// `(client, server)` of the connections that ended during the last pass.
    pub fn closed_flows(&self) -> &[(SocketAddr, SocketAddr)] {
        &self.closed_flows
    }

    /// A snapshot of the counters; asks the kernel for each socket's statistics (one
    /// syscall per queue), so take it when asked (a scrape), not on every pass.
    pub fn stats(&self) -> DataplaneStats {
        let mut stats = self.stats;
        for q in &self.queues {
            let s = q.stats();
            stats.frames_rx += s.rx_frames;
            stats.frames_tx += s.tx_frames;
            stats.tx_ring_full += s.tx_ring_full;
            stats.fill_ring_empty += s.fill_ring_empty;
        }
        stats.conns_active = self.conns.len() as u64;
        stats
    }

    /// Runs until `on_tick` breaks. `on_tick` runs after every loop iteration (for the
    /// operator surface), at least once a second; [`Self::waker`] wakes it.
    pub fn run(
        &mut self,
        mut on_tick: impl FnMut(&mut Self) -> ControlFlow<()>,
    ) -> Result<(), DataplaneError> {
        // The descriptors never change: build the poll set once, not per pass, on
        // duplicates (the same open files) so that it does not borrow `self`.
        let upstream_slot = self.queues.len();
        let waker_slot = upstream_slot + 1;
        let watched = self
            .queues
            .iter()
            .map(|q| q.fd())
            .chain([self.upstream.as_fd(), self.waker.as_fd()])
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(DataplaneError::Poll)?;
        let mut fds: Vec<PollFd<'_>> = watched
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        loop {
            // To the nanosecond (ppoll): a wait rounded down to whole milliseconds, as
            // poll(2) takes it, spun through the last millisecond before every deadline.
            let wait = self.next_wakeup(Instant::now());
            let timeout = Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(err) => return Err(DataplaneError::Poll(err.into())),
            }
            // An eventfd read that finds nothing is a syscall for nothing. A wake-up whose
            // write is still on its way makes the descriptor readable for the next poll.
            if !fds[waker_slot].revents().is_empty() {
                self.waker.reset();
            }
            self.closed_flows.clear();
            self.established_flows.clear();
            let now = Instant::now();
            self.receive(now, &fds[..upstream_slot]);
            let upstream_ready = fds[upstream_slot].revents().contains(PollFlags::IN);
            self.upstream_events(upstream_ready, now);
            self.service_conns(now);
            self.timers(now);
            self.transmit(now);
            self.write_flow_maps(now);
            if on_tick(self).is_break() {
                return Ok(());
            }
        }
    }

    /// Hands the pass's new and ended flows to the flow maps, which write them once they
    /// have settled.
    fn write_flow_maps(&mut self, now: Instant) {
        let Some(flow_maps) = &mut self.flow_maps else {
            return;
        };
        flow_maps.adopt(&self.established_flows);
        flow_maps.forget(&self.closed_flows);
        let conns = &self.conns;
        flow_maps.write(now, |client, server| {
            conns.by_flow(client, server).is_some()
        });
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(now.duration_since(self.epoch).as_micros() as i64)
    }

    fn next_wakeup(&mut self, now: Instant) -> Duration {
        if !self.dirty.is_empty() || self.upstream.has_work() {
            return Duration::ZERO;
        }
        let smol_now = self.smol_now(now);
        // Wake often enough that each pass looks at about `ROUND_SHARE` connections.
        let mut wait = HOUSEKEEPING
            .mul_f64(ROUND_SHARE as f64 / self.conns.len().max(1) as f64)
            .clamp(Duration::from_millis(1), HOUSEKEEPING);
        if let Some(delay) = self.stacks.poll_delay(smol_now) {
            wait = wait.min(Duration::from_micros(delay.total_micros()));
        }
        for at in [
            self.engine.next_timeout(),
            self.upstream.next_deadline(),
            self.wanted_by,
            self.flow_maps.as_ref().and_then(FlowMaps::due),
        ]
        .into_iter()
        .flatten()
        {
            wait = wait.min(at.saturating_duration_since(now));
        }
        wait
    }

    /// Reads frames from every queue into the TCP stack; `polled` is the queues' part of
    /// the poll set, in their order.
    fn receive(&mut self, now: Instant, polled: &[PollFd<'_>]) {
        let smol_now = self.smol_now(now);
        let Self {
            config,
            queues,
            stacks,
            conns,
            stats,
            dirty,
            control_tx,
            challenges,
            limits,
            flow_maps,
            ..
        } = self;
        for (index, queue) in queues.iter_mut().enumerate() {
            let reported = polled.get(index).is_some_and(|fd| !fd.revents().is_empty());
            queue.receive(RX_BUDGET, reported, |bytes| {
                let segment = match frame::parse(bytes) {
                    Ok(segment) => segment,
                    Err(err) => {
                        stats.frames_malformed += 1;
                        tracing::debug!(%err, "frame dropped");
                        return;
                    }
                };
                let mut opened = None;
                // A SYN whose MSS was raised for segmentation offload (a copy).
                let mut raised = None;
                match conns.by_flow(segment.client, segment.server) {
                    Some(id) => {
                        let Some(conn) = conns.get_mut(id) else {
                            return;
                        };
                        let state = stacks.peek(conn.sock).state();
                        let synchronized = !matches!(
                            state,
                            State::Listen | State::SynReceived | State::SynSent | State::Closed
                        );
                        if rfc5961::check(&conn.seq, synchronized, &segment.tcp)
                            == Verdict::ChallengeAck
                        {
                            // Dropped, and nothing refreshed: it may not be the client's.
                            stats.challenge_acks += 1;
                            if challenges.allow(now)
                                && let Some(ack) = challenge_ack(conn)
                            {
                                control_tx.push((conn.reply.1, conn.reply.0, ack));
                            }
                            return;
                        }
                        conn.seq.received(&segment.tcp);
                        conn.last_activity = now;
                        dirty.insert(id);
                    }
                    None if segment.opens_connection => {
                        let refused = match limits.admit(segment.client.ip(), now) {
                            Ok(()) => None,
                            Err(Refused::Full) => Some(&mut stats.conns_refused_full),
                            Err(Refused::Source(Refusal::Conns)) => {
                                Some(&mut stats.conns_refused_source_conns)
                            }
                            Err(Refused::Source(Refusal::HalfOpen)) => {
                                Some(&mut stats.conns_refused_source_half_open)
                            }
                            Err(Refused::Source(Refusal::Rate)) => {
                                Some(&mut stats.conns_refused_source_rate)
                            }
                        };
                        if let Some(counter) = refused {
                            // A clear refusal, built from the frame itself: the client
                            // may have no connection (and so no reply header) yet.
                            *counter += 1;
                            if let Some(rst) = frame::reset_reply(&segment) {
                                control_tx.push((index, segment.reply_header, rst));
                            }
                            return;
                        }
                        let sock = stacks.listen(segment.client, segment.server);
                        let id = conns.insert(
                            sock,
                            segment.client,
                            segment.server,
                            (segment.reply_header, index),
                            now,
                        );
                        if let Some(conn) = conns.get_mut(id) {
                            conn.seq.peer_shift = segment.tcp.window_shift.unwrap_or(0);
                            if config.segmentation_offload {
                                let mut syn = segment.ip_packet.to_vec();
                                conn.gso_mss = gso::raise_syn_mss(&mut syn, config.mtu);
                                raised = conn.gso_mss.map(|_| syn);
                            }
                        }
                        opened = Some((sock, id));
                    }
                    // Not a flow of ours (it ended): nothing to answer.
                    None => return,
                }
                let packet = raised.as_deref().unwrap_or(segment.ip_packet);
                stacks.ingress(smol_now, segment.client, segment.server, packet);
                if let Some((sock, id)) = opened {
                    // A listener that did not take its SYN would steal the next one.
                    if stacks.socket(sock).state() == State::Listen {
                        stacks.remove(sock);
                        conns.remove(id);
                        limits.closed(segment.client.ip(), true);
                    } else {
                        dirty.insert(id);
                        stats.conns_accepted += 1;
                        // Before the SYN-ACK leaves: the client's next segment needs it.
                        if let Some(flow_maps) = flow_maps {
                            flow_maps.readmit(segment.client, segment.server);
                        }
                    }
                }
            });
        }
    }

    fn upstream_events(&mut self, ready: bool, now: Instant) {
        let mut events = std::mem::take(&mut self.upstream_events);
        self.upstream.poll(ready, now, &mut events);
        for event in events.drain(..) {
            let (id, event) = match &event {
                UpstreamEvent::Connected(id) => (*id, Event::UpstreamConnected),
                UpstreamEvent::Data(id, data) => {
                    if let Some(conn) = self.conns.get_mut(*id) {
                        conn.upstream_credit_owed += data.len();
                        conn.upstream_waiting_since = None;
                    }
                    (*id, Event::UpstreamData(data))
                }
                UpstreamEvent::Closed(id) => (*id, Event::UpstreamClosed),
                UpstreamEvent::Failed(id) => (*id, Event::UpstreamFailed),
            };
            if self.conns.get_mut(id).is_none() {
                continue;
            }
            self.engine.handle(id, event, now, &mut self.outputs);
            self.apply_outputs(now);
        }
        self.upstream_events = events;
        for (id, message) in self.cache_reads.finished() {
            if self.conns.get_mut(id).is_none() {
                continue;
            }
            let event = Event::Cached(message.as_deref());
            self.engine.handle(id, event, now, &mut self.outputs);
            self.apply_outputs(now);
        }
    }

    /// Moves bytes between the touched connections' sockets and the engine, and reclaims
    /// connections that are finished. Every connection is also looked at once a second,
    /// for timeouts and for state changes made by smoltcp's own timers: a share of them
    /// each pass, so that ten thousand idle connections do not stall one pass a second.
    fn service_conns(&mut self, now: Instant) {
        let len = self.conns.len();
        let elapsed = now.duration_since(self.last_round);
        let share = if len == 0 || elapsed >= HOUSEKEEPING {
            self.last_round = now;
            len
        } else {
            // Whole connections only; the time of the rest carries over.
            let share = (len as u128 * elapsed.as_nanos() / HOUSEKEEPING.as_nanos()) as usize;
            self.last_round += HOUSEKEEPING.mul_f64(share as f64 / len as f64);
            share
        };
        let dirty = &mut self.dirty;
        self.conns.next_round(share, |id| {
            dirty.insert(id);
        });
        let ids: Vec<ConnId> = self.dirty.drain().collect();
        for id in ids {
            self.service(id, now);
            self.apply_outputs(now);
            self.half_close(id, now);
            self.apply_outputs(now);
            self.flush_to_client(id);
            self.reclaim_if_done(id, now);
        }
    }

    fn service(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.opened && self.stacks.peek(conn.sock).may_send() {
            conn.opened = true;
            self.established_flows.push((conn.client, conn.server));
            self.limits.established(conn.client.ip());
            let info = ConnInfo {
                client: conn.client,
                server: conn.server,
            };
            self.engine.open(id, info, now, &mut self.outputs);
        }
        if !conn.opened || conn.client_closed || !self.stacks.peek(conn.sock).can_recv() {
            return;
        }
        let socket = self.stacks.socket(conn.sock);
        // Backpressure: while the client is not reading what we send, or the server is
        // not taking what it sent, leave its bytes in smoltcp: the window closes.
        while socket.can_recv()
            && conn.to_client.len() < MAX_PENDING_TO_CLIENT
            && conn
                .upstream
                .as_ref()
                .is_none_or(|link| link.queued() < MAX_PENDING_TO_UPSTREAM)
        {
            let Ok(n) = socket.recv_slice(&mut self.scratch) else {
                break;
            };
            self.engine.handle(
                id,
                Event::ClientData(&self.scratch[..n]),
                now,
                &mut self.outputs,
            );
        }
    }

    /// The client sent FIN (a half-close, RFC 9293 3.6) and everything before it was read:
    /// an answer the server still owes goes out first, then our FIN. Runs after the
    /// engine's actions for that data are applied, so a command just sent upstream counts
    /// as owed. The FIN timer bounds the wait.
    fn half_close(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.opened || conn.client_closed || self.stacks.peek(conn.sock).may_recv() {
            return;
        }
        conn.closing_since.get_or_insert(now);
        if conn.upstream_waiting_since.is_none() {
            conn.client_closed = true;
            conn.close_after_flush = true;
            self.engine
                .handle(id, Event::ClientClosed, now, &mut self.outputs);
        }
    }

    fn apply_outputs(&mut self, now: Instant) {
        for Output { conn: id, action } in self.outputs.drain(..) {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            self.dirty.insert(id);
            match action {
                Action::ToClient(bytes) => conn.to_client.extend(bytes),
                Action::ConnectUpstream => {
                    conn.upstream = Some(self.upstream.connect(id, conn.server));
                    conn.upstream_waiting_since.get_or_insert(now);
                }
                Action::ToUpstream(bytes) => {
                    if let Some(link) = &conn.upstream {
                        link.send(bytes);
                        conn.upstream_waiting_since.get_or_insert(now);
                    }
                }
                Action::CloseUpstream => {
                    if let Some(link) = conn.upstream.take() {
                        link.close();
                    }
                    conn.upstream_waiting_since = None;
                }
                Action::CloseClient => conn.close_after_flush = true,
                Action::CacheRead { user, uidl, size } => {
                    let (cache, server) = (self.cache.clone(), conn.server);
                    self.cache_reads.start(id, move || {
                        cache::read(cache.as_ref()?, server, &user, &uidl, size)
                    });
                }
                Action::CacheForget { user, uidls } => {
                    if let Some(cache) = &self.cache {
                        cache::lock(cache).forget(conn.server, &user, uidls.as_deref());
                    }
                }
            }
        }
    }

    /// Moves pending bytes into the client's TCP send buffer; returns upstream credit
    /// once everything the server sent has reached it.
    fn flush_to_client(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        while !conn.to_client.is_empty() && self.stacks.peek(conn.sock).can_send() {
            let socket = self.stacks.socket(conn.sock);
            let (front, _) = conn.to_client.as_slices();
            match socket.send_slice(front) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    conn.to_client.drain(..n);
                }
            }
        }
        if conn.to_client.is_empty() {
            if conn.upstream_credit_owed > 0
                && let Some(link) = &conn.upstream
            {
                link.return_credit(conn.upstream_credit_owed);
            }
            conn.upstream_credit_owed = 0;
            if conn.close_after_flush && self.stacks.peek(conn.sock).is_open() {
                let socket = self.stacks.socket(conn.sock);
                // Nothing of ours is left to carry an ACK: the one for the client's FIN
                // must not wait for smoltcp's delayed-ACK timer (see `reclaim_if_done`).
                socket.set_ack_delay(None);
                socket.close();
            }
        }
    }

    fn reclaim_if_done(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let state = self.stacks.peek(conn.sock).state();
        // Once either side sent FIN the FIN timer runs, and keep-alive ACKs (which refresh
        // `last_activity`) do not stop it: CLOSE_WAIT and FIN_WAIT_2 cannot leak a slot.
        if !matches!(
            state,
            State::Listen | State::SynReceived | State::SynSent | State::Established
        ) {
            conn.closing_since.get_or_insert(now);
        }
        if state == State::TimeWait {
            // smoltcp's ACK of the client's FIN (no delay since our close) goes out with
            // this pass's transmit: reclaim after that.
            self.time_wait.push(id);
            return;
        }
        let handshake_expired =
            !conn.opened && now.duration_since(conn.created) > self.config.handshake_timeout;
        let idle_expired = now.duration_since(conn.last_activity) > self.config.idle_timeout;
        let fin_expired = conn
            .closing_since
            .is_some_and(|since| now.duration_since(since) > self.config.fin_timeout);
        // A listener that did not take its SYN (a bad segment) would steal the next one.
        let finished = matches!(state, State::Closed | State::Listen);
        if !(finished || handshake_expired || idle_expired || fin_expired) {
            return;
        }
        if !finished {
            self.stacks.socket(conn.sock).abort();
            if fin_expired {
                self.stats.conns_fin_timed_out += 1;
            } else {
                self.stats.conns_timed_out += 1;
            }
            // Let the RST go out while the connection still has its reply header.
            self.send_stack_tx(now);
        }
        self.reclaim(id, now);
    }

    /// Tells the engine and the limits that connection `id` is gone and frees its socket.
    fn reclaim(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let sock = conn.sock;
        if conn.opened && !conn.client_closed {
            self.engine
                .handle(id, Event::ClientClosed, now, &mut self.outputs);
            self.outputs.clear();
        }
        self.stacks.remove(sock);
        if let Some(conn) = self.conns.remove(id) {
            self.limits.closed(conn.client.ip(), !conn.opened);
            self.closed_flows.push((conn.client, conn.server));
        }
        self.engine.close(id, now);
    }

    fn timers(&mut self, now: Instant) {
        if self.engine.next_timeout().is_some_and(|at| at <= now) {
            self.engine.on_timeout(now, &mut self.outputs);
            self.apply_outputs(now);
        }
        if now.duration_since(self.last_housekeeping) >= HOUSEKEEPING {
            self.last_housekeeping = now;
            self.expire_silent_servers(now);
            self.limits.sweep(now);
            self.trim_heap();
        }
    }

    /// Gives freed heap memory back to the kernel once the table has shrunk to half of
    /// its peak (after a SYN flood, say): glibc keeps it otherwise.
    fn trim_heap(&mut self) {
        let now_conns = self.conns.len();
        self.peak_since_trim = self.peak_since_trim.max(now_conns);
        if self.peak_since_trim >= TRIM_AFTER_PEAK && now_conns <= self.peak_since_trim / 2 {
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
            self.peak_since_trim = now_conns;
        }
    }

    /// A server that was sent something and said nothing for `response_timeout` is
    /// treated as failed: the engine answers the client `-ERR [SYS/TEMP]` instead of
    /// leaving it hanging until the idle timeout.
    fn expire_silent_servers(&mut self, now: Instant) {
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            // While the client has not taken what the server sent, the server may be
            // paused by our own credit: its silence is ours, so its clock starts again.
            if conn.upstream_credit_owed > 0 || !conn.to_client.is_empty() {
                if let Some(since) = &mut conn.upstream_waiting_since {
                    *since = now;
                }
                continue;
            }
            let silent = conn
                .upstream_waiting_since
                .is_some_and(|since| now.duration_since(since) > self.config.response_timeout);
            if !silent {
                continue;
            }
            tracing::info!(conn = id, server = %conn.server, "mail server did not answer in time");
            conn.upstream_waiting_since = None;
            conn.upstream = None;
            self.engine
                .handle(id, Event::UpstreamFailed, now, &mut self.outputs);
            self.apply_outputs(now);
        }
    }

    /// Sends what the stack produced and the segments we built, each packet wrapped in
    /// its connection's link-layer header, on the queue that client's frames arrive on.
    fn transmit(&mut self, now: Instant) {
        self.send_stack_tx(now);
        for id in std::mem::take(&mut self.time_wait) {
            self.reclaim(id, now);
        }
        for (index, header, packet) in self.control_tx.drain(..) {
            self.queues[index].transmit(header.as_bytes(), &packet, gso::VnetHeader::NONE);
        }
        for queue in &mut self.queues {
            queue.flush();
        }
    }

    /// Lets smoltcp send what its sockets have queued (data, ACKs, retransmissions) and
    /// hands the packets to the TX rings; the sequence tracker sees each. Packets of flows
    /// that have no connection (any more) have nowhere to go. With segmentation offload,
    /// smoltcp's SYN-ACK gets the link's MSS and a segment longer than the client's MSS
    /// leaves for the kernel to cut.
    fn send_stack_tx(&mut self, now: Instant) {
        let smol_now = self.smol_now(now);
        let Self {
            config,
            stacks,
            queues,
            conns,
            ..
        } = self;
        stacks.egress(smol_now, |packet| {
            let Some((client, server, sent)) = stack::packet_meta(packet) else {
                return;
            };
            let Some(conn) = conns
                .by_flow(client, server)
                .and_then(|id| conns.get_mut(id))
            else {
                return;
            };
            conn.seq.sent(&sent);
            let (header, index) = &conn.reply;
            let mut vnet = gso::VnetHeader::NONE;
            if config.segmentation_offload {
                if sent.syn {
                    gso::lower_synack_mss(packet, config.mtu);
                } else if let Some(mss) = conn.gso_mss {
                    vnet = gso::offload(packet, header.as_bytes().len(), mss);
                }
            }
            queues[*index].transmit(header.as_bytes(), packet, vnet);
        });
    }
}

/// An RFC 5961 challenge ACK: our current SND.NXT and RCV.NXT and window.
fn challenge_ack(conn: &Conn) -> Option<Vec<u8>> {
    let t = &conn.seq;
    let window = (t.rcv_wnd >> t.rcv_shift).min(u32::from(u16::MAX)) as u16;
    frame::control_segment(
        conn.server,
        conn.client,
        t.snd_nxt,
        Some(t.rcv_nxt),
        false,
        window,
    )
}

/// Locks a mutex shared between threads; a thread that panicked holding it left data that
/// is still whole (every change under these locks is one call).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
