//! `--workers`: the dataplane on several threads, one per set of frame queues.
//!
//! Each worker is a [`Dataplane`] of its own (AF_XDP sockets of its RX queues, or its
//! queue of the TAP; smoltcp stacks, connection table, upstream poller and POP3 engine),
//! pinned to a core of its own when there are several. Frames of one flow always reach
//! the same worker: on XDP the RX queue decides (the queue's socket belongs to one
//! worker), on TC the kernel's flow hash picks the TAP queue. The workers share the
//! connection [`Limits`] (checked on SYNs and when connections end, never per packet) and
//! the user table: each worker's engine (its sessions, server records, counters) works
//! over one [`pop3_engine::attenuation::SharedTable`], in shards by a keyed hash of the
//! user, each behind its own mutex, so a user learnt on one worker is known to all and
//! no lock covers the whole table. A worker's engine sits behind a mutex that only its
//! own worker takes in the hot path; the operator thread takes it to mirror the table,
//! apply notifications and read counters.
//!
//! Each worker's dataplane moves its own flows into and out of the classifier's `FLOWS`
//! map ([`FlowMaps`]: at the end of a pass, once the updates are a moment old). The operator
//! thread (the daemon's main thread) is woken when a worker's connections came or went
//! (for the mirror; each worker at most once per [`OPERATOR_WAKE_GAP`], so a busy worker
//! does not run the operator's whole tick for every check), and asks the workers for
//! fresh counters on a scrape.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    ops::ControlFlow,
    os::fd::BorrowedFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use pop3_engine::session::{ConnId, ConnInfo, Event, Output, Pop3Engine};

use super::{
    Dataplane, DataplaneConfig, DataplaneError, DataplaneStats,
    limits::Limits,
    lock,
    queue::{FrameQueue, FrameSource},
    sources::SourceLimits,
    tap::TapQueue,
    xsk::XskQueue,
};
use crate::{cache::SharedCache, engine::Engine, flow_maps::FlowMaps, waker::Waker};

/// Blocking threads of the operator runtime: edge-cache reads at once (each holds one
/// message in memory), and name lookups.
const BLOCKING_THREADS: usize = 4;
/// How long the operator waits for the workers' counters on a scrape.
const STATS_WAIT: Duration = Duration::from_secs(1);
/// The shortest time between two wake-ups of the operator thread by one worker for its
/// flows: at thousands of checks a second, waking it for each cost a fifth of the
/// daemon's CPU, while the mirror it feeds is read by people and bpftool.
const OPERATOR_WAKE_GAP: Duration = Duration::from_millis(2);

/// How many workers `--workers` asks for (in the config file: a number or `"auto"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "WorkerCountText")]
pub enum WorkerCount {
    /// One per RX queue of the interface (on TC: one per queue the kernel gives the
    /// subscriber interface), at most one per CPU the daemon may run on.
    Auto,
    Fixed(NonZeroUsize),
}

impl std::str::FromStr for WorkerCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Fixed)
            .map_err(|_| format!("{s:?}: a number of workers (at least 1) or \"auto\""))
    }
}

/// `workers` as the config file may write it.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum WorkerCountText {
    Number(usize),
    Text(String),
}

impl TryFrom<WorkerCountText> for WorkerCount {
    type Error = String;

    fn try_from(value: WorkerCountText) -> Result<Self, Self::Error> {
        match value {
            WorkerCountText::Number(n) => n.to_string().parse(),
            WorkerCountText::Text(s) => s.parse(),
        }
    }
}

impl WorkerCount {
    /// The number of workers for an interface with `queues` RX queues. On XDP a worker
    /// without a queue would have nothing to read, so there are at most `queues`.
    pub fn resolve(self, queues: u32, source: FrameSource) -> usize {
        let queues = queues.max(1) as usize;
        let wanted = match self {
            WorkerCount::Auto => queues.min(cpus().len().max(1)),
            WorkerCount::Fixed(n) => n.get(),
        };
        match source {
            FrameSource::AfXdp => wanted.min(queues),
            FrameSource::Tap => wanted,
        }
    }
}

/// The CPUs this process may run on.
fn cpus() -> Vec<usize> {
    rustix::thread::sched_getaffinity(None)
        .map(|set| {
            (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&cpu| set.is_set(cpu))
                .collect()
        })
        .unwrap_or_default()
}

/// A worker's engine as its dataplane drives it: each call takes the mutex, which only
/// the operator thread ever contends for.
pub struct WorkerEngine(Arc<Mutex<Engine>>);

impl Pop3Engine for WorkerEngine {
    fn open(&mut self, conn: ConnId, info: ConnInfo, now: Instant, out: &mut Vec<Output>) {
        lock(&self.0).open(conn, info, now, out);
    }

    fn handle(&mut self, conn: ConnId, event: Event<'_>, now: Instant, out: &mut Vec<Output>) {
        lock(&self.0).handle(conn, event, now, out);
    }

    fn close(&mut self, conn: ConnId, now: Instant) {
        lock(&self.0).close(conn, now);
    }

    fn next_timeout(&self) -> Option<Instant> {
        lock(&self.0).next_timeout()
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        lock(&self.0).on_timeout(now, out);
    }
}

/// What a worker hands the operator thread.
#[derive(Debug, Default)]
struct Outbox {
    /// `(client, server)` of connections that ended, for the mirror.
    closed: Vec<(SocketAddr, SocketAddr)>,
    /// The worker's counters, as of the scrape numbered `generation`.
    stats: DataplaneStats,
    generation: u64,
}

/// A worker as the operator thread sees it.
struct Worker {
    engine: Arc<Mutex<Engine>>,
    outbox: Arc<Mutex<Outbox>>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<Result<(), DataplaneError>>>,
}

/// What the workers are built from.
pub struct WorkersConfig {
    /// The subscriber-facing interface.
    pub ifname: String,
    /// Where frames come from: AF_XDP sockets or the TC dataplane's TAP.
    pub source: FrameSource,
    /// RX queues of the interface; one AF_XDP socket each.
    pub queues: u32,
    /// Per-subscriber limits on connections and SYNs, over all workers.
    pub per_source: SourceLimits,
    /// Each worker's dataplane settings.
    pub dataplane: DataplaneConfig,
}

/// The dataplane workers of one interface.
pub struct Workers {
    workers: Vec<Worker>,
    /// Each worker's frame queues until its thread starts (see [`Workers::start`]).
    ready: Vec<Vec<FrameQueue>>,
    /// Each worker's dataplane settings.
    config: DataplaneConfig,
    cache: Option<SharedCache>,
    stop: Arc<AtomicBool>,
    /// The number of the last scrape asked for.
    scrape: Arc<AtomicU64>,
    limits: Arc<Limits>,
    /// The daemon's operator I/O (notifications, metrics, NATS).
    runtime: tokio::runtime::Runtime,
}

impl Workers {
    /// Opens the frame queues (one AF_XDP socket per RX queue, dealt round-robin, or one
    /// TAP queue per worker) for one worker per engine of `engines`, and the operator
    /// runtime. The sockets still have to go into the XSKMAP ([`Self::sockets`]), or the
    /// TAP into the classifier's config ([`Self::tap`]), before [`Self::start`].
    pub fn open(config: WorkersConfig, engines: Vec<Engine>) -> Result<Self, DataplaneError> {
        let count = engines.len().max(1);
        let mut queues: Vec<Vec<FrameQueue>> = (0..count).map(|_| Vec::new()).collect();
        match config.source {
            FrameSource::AfXdp => {
                for q in 0..config.queues {
                    let queue = XskQueue::open(&config.ifname, q)?;
                    queues[q as usize % count].push(FrameQueue::Xsk(queue));
                }
            }
            FrameSource::Tap => {
                let ifindex = crate::ebpf::interface_index(&config.ifname)
                    .ok_or_else(|| DataplaneError::NoSuchInterface(config.ifname.clone()))?;
                let taps = TapQueue::open(ifindex, config.dataplane.mtu, count)?;
                for (worker, tap) in queues.iter_mut().zip(taps) {
                    worker.push(FrameQueue::Tap(tap));
                }
            }
        }
        let limits = Arc::new(Limits::new(config.dataplane.max_conns, config.per_source));
        let workers = engines
            .into_iter()
            .map(|engine| {
                Ok(Worker {
                    engine: Arc::new(Mutex::new(engine)),
                    outbox: Arc::default(),
                    waker: Arc::new(Waker::new().map_err(DataplaneError::Runtime)?),
                    thread: None,
                })
            })
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("operator-io")
            .max_blocking_threads(BLOCKING_THREADS)
            .enable_io()
            .enable_time()
            .build()
            .map_err(DataplaneError::Runtime)?;
        Ok(Self {
            workers,
            ready: queues,
            config: config.dataplane,
            cache: None,
            stop: Arc::default(),
            scrape: Arc::default(),
            limits,
            runtime,
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there is no worker (never: there is at least one).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// `(queue id, socket)` pairs for the XSKMAP, before [`Self::start`].
    pub fn sockets(&self) -> Vec<(u32, BorrowedFd<'_>)> {
        self.ready
            .iter()
            .flatten()
            .filter_map(|q| match q {
                FrameQueue::Xsk(q) => Some((q.queue_id(), q.fd())),
                FrameQueue::Tap(_) => None,
            })
            .collect()
    }

    /// The TAP's interface index, for the TC classifier (`None` on AF_XDP).
    pub fn tap(&self) -> Option<u32> {
        self.ready.iter().flatten().find_map(|q| match q {
            FrameQueue::Tap(q) => Some(q.ifindex()),
            FrameQueue::Xsk(_) => None,
        })
    }

    /// The tokio runtime of the daemon's operator I/O (HTTP endpoints, NATS).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Answers every worker's edge-cache requests from `cache`.
    pub fn set_cache(&mut self, cache: &SharedCache) {
        self.cache = Some(cache.clone());
    }

    /// Starts one thread per worker, each pinned to a CPU of its own when there are
    /// several (a single worker is left where the scheduler puts it), each with its own
    /// handles of `flows`; `operator` is woken when a worker has something for the
    /// operator thread.
    pub fn start(&mut self, operator: &Arc<Waker>, flows: &FlowMaps) -> anyhow::Result<()> {
        let cpus = cpus();
        let pin = self.ready.len() > 1 && !cpus.is_empty();
        for (index, queues) in self.ready.drain(..).enumerate() {
            let cpu = pin.then(|| cpus[index % cpus.len()]);
            let worker = &mut self.workers[index];
            let run = WorkerRun {
                config: self.config.clone(),
                engine: WorkerEngine(worker.engine.clone()),
                queues,
                limits: self.limits.clone(),
                waker: worker.waker.clone(),
                cache: self.cache.clone(),
                flows: flows.try_clone()?,
                runtime: self.runtime.handle().clone(),
                outbox: worker.outbox.clone(),
                stop: self.stop.clone(),
                scrape: self.scrape.clone(),
                operator: operator.clone(),
            };
            worker.thread = Some(
                std::thread::Builder::new()
                    .name(format!("dataplane-{index}"))
                    .spawn(move || run.run(cpu))?,
            );
        }
        Ok(())
    }

    /// The workers' engines, in worker order.
    pub fn engines(&self) -> impl Iterator<Item = &Arc<Mutex<Engine>>> {
        self.workers.iter().map(|w| &w.engine)
    }

    /// Moves the flows the workers saw end since the last call into `closed`.
    pub fn take_closed(&self, closed: &mut Vec<(SocketAddr, SocketAddr)>) {
        for worker in &self.workers {
            closed.append(&mut lock(&worker.outbox).closed);
        }
    }

    /// Connections open over all workers.
    pub fn active_conns(&self) -> usize {
        self.limits.conns()
    }

    /// Each worker's counters, fresh: asks every worker and waits (at most a second) for
    /// them to answer at the end of their pass.
    pub fn stats(&self) -> Vec<DataplaneStats> {
        let generation = self.scrape.fetch_add(1, Ordering::AcqRel) + 1;
        for worker in &self.workers {
            worker.waker.wake();
        }
        let deadline = Instant::now() + STATS_WAIT;
        loop {
            let fresh = self
                .workers
                .iter()
                .all(|w| w.thread.is_none() || lock(&w.outbox).generation >= generation);
            if fresh || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.workers.iter().map(|w| lock(&w.outbox).stats).collect()
    }

    /// The first worker that stopped on its own (an error, a panic), if one did.
    pub fn failed(&self) -> Option<usize> {
        self.workers
            .iter()
            .position(|w| w.thread.as_ref().is_some_and(JoinHandle::is_finished))
    }

    /// Stops every worker and waits for them; returns the first error one met.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        for worker in &self.workers {
            worker.waker.wake();
        }
        let mut result = Ok(());
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let Some(thread) = worker.thread.take() else {
                continue;
            };
            let outcome = match thread.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(anyhow::anyhow!("dataplane worker {index}: {err}")),
                Err(_) => Err(anyhow::anyhow!("dataplane worker {index} panicked")),
            };
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

/// What a worker thread builds its dataplane from, and what it shares.
struct WorkerRun {
    config: DataplaneConfig,
    engine: WorkerEngine,
    queues: Vec<FrameQueue>,
    limits: Arc<Limits>,
    waker: Arc<Waker>,
    cache: Option<SharedCache>,
    flows: FlowMaps,
    runtime: tokio::runtime::Handle,
    outbox: Arc<Mutex<Outbox>>,
    stop: Arc<AtomicBool>,
    scrape: Arc<AtomicU64>,
    operator: Arc<Waker>,
}

impl WorkerRun {
    fn run(self, cpu: Option<usize>) -> Result<(), DataplaneError> {
        if let Some(cpu) = cpu {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            if let Err(err) = rustix::thread::sched_setaffinity(None, &set) {
                tracing::warn!(cpu, %err, "could not pin a dataplane worker");
            }
        }
        let WorkerRun {
            config,
            engine,
            queues,
            limits,
            waker,
            cache,
            flows,
            runtime,
            outbox,
            stop,
            scrape,
            operator,
        } = self;
        let mut dataplane = Dataplane::new(config, engine, queues, limits, waker, runtime)?;
        dataplane.set_flow_maps(flows);
        if let Some(cache) = cache {
            dataplane.set_cache(cache);
        }
        let mut answered = 0;
        let mut wakes = PacedWakes::new(OPERATOR_WAKE_GAP);
        dataplane.run(|dp| {
            let now = Instant::now();
            let changed = dp.flows_changed();
            let wanted = scrape.load(Ordering::Acquire);
            let scraped = wanted > answered;
            if changed || scraped {
                let mut outbox = lock(&outbox);
                outbox.closed.extend_from_slice(dp.closed_flows());
                if scraped {
                    outbox.stats = dp.stats();
                    outbox.generation = wanted;
                    answered = wanted;
                }
                drop(outbox);
            }
            // A scrape needs no wake-up: the operator polls the outbox for its counters.
            if changed {
                wakes.owe();
            }
            if wakes.take(now) {
                operator.wake();
            }
            dp.wake_by(wakes.due());
            if stop.load(Ordering::Acquire) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
    }
}

/// Wake-ups owed to another thread, sent at most once per `gap`.
#[derive(Debug)]
struct PacedWakes {
    gap: Duration,
    sent_at: Option<Instant>,
    owed: bool,
}

impl PacedWakes {
    fn new(gap: Duration) -> Self {
        Self {
            gap,
            sent_at: None,
            owed: false,
        }
    }

    /// Something for the other thread is waiting.
    fn owe(&mut self) {
        self.owed = true;
    }

    /// Whether to wake the other thread now: something is owed and the gap has passed
    /// since the last wake-up.
    fn take(&mut self, now: Instant) -> bool {
        let paced = self
            .sent_at
            .is_some_and(|at| now.duration_since(at) < self.gap);
        if !self.owed || paced {
            return false;
        }
        self.owed = false;
        self.sent_at = Some(now);
        true
    }

    /// When an owed wake-up may go, if one is owed (one owed and never paced went out in
    /// [`Self::take`]).
    fn due(&self) -> Option<Instant> {
        self.sent_at.filter(|_| self.owed).map(|at| at + self.gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_are_paced_and_none_is_lost() {
        let gap = Duration::from_millis(2);
        let start = Instant::now();
        let mut wakes = PacedWakes::new(gap);
        assert!(!wakes.take(start), "nothing owed");
        assert_eq!(wakes.due(), None);
        wakes.owe();
        assert!(wakes.take(start), "the first wake-up goes at once");
        wakes.owe();
        wakes.owe();
        let soon = start + gap / 2;
        assert!(!wakes.take(soon), "within the gap");
        assert_eq!(wakes.due(), Some(start + gap), "a pass is asked for");
        assert!(wakes.take(start + gap), "owed, sent once the gap passed");
        assert_eq!(wakes.due(), None, "two owed, one sent: nothing left");
        assert!(!wakes.take(start + 3 * gap), "nothing owed");
    }

    #[test]
    fn worker_counts_parse_and_resolve_against_queues_and_cpus() {
        assert_eq!("auto".parse(), Ok(WorkerCount::Auto));
        let two: WorkerCount = "2".parse().unwrap();
        assert!("0".parse::<WorkerCount>().is_err());
        assert!("many".parse::<WorkerCount>().is_err());
        // XDP: no more workers than RX queues, each worker needs a socket to read.
        assert_eq!(two.resolve(1, FrameSource::AfXdp), 1);
        assert_eq!(two.resolve(4, FrameSource::AfXdp), 2);
        // TC: the TAP gets a queue per worker whatever the interface has.
        assert_eq!(two.resolve(1, FrameSource::Tap), 2);
        let cpus = cpus().len().max(1);
        assert_eq!(
            WorkerCount::Auto.resolve(64, FrameSource::AfXdp),
            cpus.min(64)
        );
        assert_eq!(WorkerCount::Auto.resolve(1, FrameSource::Tap), 1);
        let file: WorkerCount = serde_json::from_str("3").unwrap();
        assert_eq!(file, WorkerCount::Fixed(NonZeroUsize::new(3).unwrap()));
        let file: WorkerCount = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(file, WorkerCount::Auto);
    }
}
