//! `pop3-interceptor run`: attach, intercept, detach.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustix::{
    event::{PollFd, PollFlags, Timespec},
    io::Errno,
};

use crate::{
    cache::EdgeCache,
    choice::{self, DataplaneKind, Hook},
    cli::RunArgs,
    dataplane::{
        DataplaneConfig, destinations, lock,
        queue::FrameSource,
        workers::{Workers, WorkersConfig},
    },
    ebpf::{self, AttachOptions, Attachment, EbpfError},
    engine::Engine,
    metrics,
    mirror::Mirror,
    notify::Notifications,
    prefetch::Prefetcher,
    settings::{FileSettings, Settings},
    signals::SignalFd,
    waker::Waker,
};

/// How often the router's own addresses are looked up again for the exclusion maps.
const EXCLUDED_REFRESH: Duration = Duration::from_secs(5);

/// SIGHUP: re-reads the opt-out list from the config file. Open sessions are kept.
fn reload_opt_out(settings: &Settings, engine: &mut Engine) {
    let Some(path) = &settings.config_file else {
        tracing::warn!("SIGHUP: no --config file to reload the opt-out list from");
        return;
    };
    let Some(engine) = engine.attenuation_mut() else {
        return;
    };
    match FileSettings::load(path) {
        Ok(file) => {
            let users: std::collections::HashSet<String> =
                file.opt_out.unwrap_or_default().into_iter().collect();
            tracing::info!(count = users.len(), file = %path.display(), "SIGHUP: opt-out list reloaded");
            engine.set_opt_out(users);
        }
        Err(err) => {
            tracing::error!(%err, "SIGHUP: config not reloaded, the old opt-out list stays")
        }
    }
}

/// Runs until SIGINT or SIGTERM, then detaches and leaves the interface as it was.
pub fn run(args: RunArgs, signals: SignalFd) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    if !rustix::process::geteuid().is_root() {
        tracing::warn!(
            "not running as root: needs CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW and CAP_PERFMON"
        );
    }
    let iface = &settings.iface;
    if ebpf::interface_index(iface).is_none() {
        bail!("no interface named {iface:?} in this network namespace (see `ip link`)");
    }
    let driver = choice::driver(iface);
    let (mut hook, why) = choice::choose(settings.dataplane, settings.xdp_mode, &driver);
    let queues = ebpf::rx_queue_count(iface);
    // A frame must fit one UMEM chunk: larger segments would be dropped on TX.
    let mtu = ebpf::interface_mtu(iface)
        .unwrap_or(1500)
        .min(crate::dataplane::xsk::MAX_FRAME - crate::dataplane::frame::MAX_L2_LEN);
    let excluded = || {
        destinations::excluded(
            &destinations::own_addresses(),
            &settings.servers,
            settings.intercept_private,
        )
    };
    let mut options = AttachOptions {
        ifname: iface.clone(),
        hook,
        tc_attach: settings.tc_attach,
        ports: settings.ports.clone(),
        servers: settings.servers.clone(),
        excluded: excluded(),
        max_conns: u32::try_from(settings.max_conns).unwrap_or(u32::MAX),
        pin_dir: settings.pin_dir.clone(),
        mirror_size: settings.mirror_size,
    };
    tracing::info!(%iface, %driver, dataplane = hook.label(), reason = why, "dataplane chosen");
    let mut attachment = match Attachment::attach(&options) {
        Err(EbpfError::Attach { source, .. })
            if settings.dataplane == DataplaneKind::Auto && matches!(hook, Hook::Xdp(_)) =>
        {
            tracing::warn!(%iface, err = %source, "XDP cannot attach here: falling back to the TC dataplane");
            hook = Hook::Tc;
            options.hook = hook;
            Attachment::attach(&options)?
        }
        attached => attached?,
    };
    attachment.keep_pins(settings.keep_pins);

    let source = match hook {
        Hook::Xdp(_) => FrameSource::AfXdp,
        Hook::Tc => FrameSource::Tap,
    };
    let count = settings.workers.resolve(queues, source);
    let config = WorkersConfig {
        ifname: iface.clone(),
        source,
        queues,
        per_source: settings.per_source,
        dataplane: DataplaneConfig {
            mtu,
            segmentation_offload: source == FrameSource::Tap,
            max_conns: settings.max_conns,
            handshake_timeout: std::time::Duration::from_secs(10),
            idle_timeout: settings.idle_timeout,
            fin_timeout: settings.fin_timeout,
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
        },
    };
    let engines =
        Engine::for_workers(&settings, count).context("drawing the verifier salt from the OS")?;
    let mut workers = Workers::open(config, engines).with_context(|| {
        format!(
            "opening the {} dataplane's frame queues on {iface}",
            hook.label()
        )
    })?;
    let cache = match &settings.cache {
        Some((dir, limits)) => {
            let cache = EdgeCache::open(dir, *limits)
                .with_context(|| format!("opening the edge cache in {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), stats = ?cache.stats(), "edge cache open");
            let cache = Arc::new(Mutex::new(cache));
            workers.set_cache(&cache);
            Some(cache)
        }
        None => None,
    };
    let operator = Arc::new(Waker::new().context("creating the operator thread's eventfd")?);
    let prefetcher = match (&settings.prefetch, &cache) {
        (Some(config), Some(cache)) => {
            let started = Prefetcher::start(
                config.clone(),
                settings.ports.clone(),
                &lock(cache),
                workers.runtime(),
                operator.clone(),
            )
            .context("starting the edge cache's prefetch (its profile file)")?;
            tracing::info!(master_user = %config.master_user, "edge cache prefetch on");
            Some(started)
        }
        _ => None,
    };
    for (queue, fd) in workers.sockets() {
        attachment
            .register_socket(queue, fd)
            .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))?;
    }
    if let Some(tap) = workers.tap() {
        attachment
            .register_tap(tap)
            .context("pointing the TC classifier at the TAP device")?;
    }
    let notifications = match &settings.notify {
        Some(config) => Some(
            Notifications::start(config.clone(), workers.runtime(), operator.clone())
                .context("serving new-mail notifications (--notify-listen)")?,
        ),
        None => None,
    };
    let metrics = metrics::Exporter::start(settings.metrics, workers.runtime(), operator.clone())
        .context("serving Prometheus metrics (--metrics)")?;
    let attenuating = lock(workers.engines().next().expect("one worker at least"))
        .attenuation()
        .is_some();
    let mut mirror = match attenuating {
        true => Some(attachment.mirror()?),
        false => None,
    };
    if let (Some(mirror), Some(cache)) = (&mut mirror, &cache) {
        mirror.set_cache(cache.clone());
    }
    let flows = attachment.flow_maps()?;
    workers
        .start(&operator, &flows)
        .context("starting the dataplane workers")?;
    drop(flows);
    tracing::info!(
        %iface,
        dataplane = hook.label(),
        queues,
        workers = workers.len(),
        mode = ?settings.mode,
        interval = ?settings.engine.interval,
        ports = ?settings.ports,
        servers = ?settings.servers,
        pin_dir = %settings.pin_dir.display(),
        "interceptor ready"
    );
    let mut op = Operator {
        attachment,
        workers,
        mirror,
        notifications,
        metrics,
        cache,
        prefetcher,
        excluded_at: Instant::now(),
        closed: Vec::new(),
    };
    let result = op.run(&signals, &operator, &settings, &excluded);
    let counters = op.attachment.counters().unwrap_or_default();
    let stats = op.workers.stats();
    let engine = op.workers.engines().fold(None, |sum, engine| {
        let counters = *lock(engine).attenuation()?.counters();
        let mut sum: pop3_engine::attenuation::Counters = sum.unwrap_or_default();
        sum.add_worker(&counters);
        Some(sum)
    });
    tracing::info!(
        ?stats,
        ?counters,
        ?engine,
        "stopping: detaching from {iface}"
    );
    let Operator {
        mut attachment,
        workers,
        ..
    } = op;
    if source == FrameSource::Tap {
        // The classifier passes everything again before the TAP goes away (with the
        // workers), rather than redirecting to a device that no longer exists (which drops).
        let _ = attachment.register_tap(0);
    }
    let stopped = workers.stop();
    drop(attachment);
    result.and(stopped)
}

/// How often the operator thread runs when nothing wakes it: the TC classifier's
/// heartbeat is written at least this often.
const OPERATOR_TICK: Duration = Duration::from_millis(100);

/// The operator thread (the daemon's main thread) while the workers run: signals, the
/// classifier's heartbeat and exclusions, the mirror, notifications and metrics.
struct Operator {
    attachment: Attachment,
    workers: Workers,
    mirror: Option<Mirror>,
    notifications: Option<Notifications>,
    metrics: metrics::Exporter,
    cache: Option<Arc<Mutex<EdgeCache>>>,
    /// Fills the edge cache in quiet hours (`[prefetch]`). It reads the shared user table
    /// through the first worker's engine, and that engine's load measure.
    prefetcher: Option<Prefetcher>,
    excluded_at: Instant,
    /// Flows the workers saw end since the last tick, for the mirror.
    closed: Vec<(SocketAddr, SocketAddr)>,
}

impl Operator {
    /// Runs until SIGINT or SIGTERM (SIGHUP reloads the opt-out list) or a worker stops.
    fn run(
        &mut self,
        signals: &SignalFd,
        waker: &Waker,
        settings: &Settings,
        excluded: &dyn Fn() -> Vec<ipnet::IpNet>,
    ) -> anyhow::Result<()> {
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: OPERATOR_TICK.as_nanos() as i64,
        };
        loop {
            let mut fds = [
                PollFd::new(signals, PollFlags::IN),
                PollFd::new(waker, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(err) => return Err(err).context("poll on the operator thread"),
            }
            waker.reset();
            if let Some(signal) = signals.read() {
                if signal != libc::SIGHUP {
                    tracing::info!(signal, "stopping");
                    return Ok(());
                }
                for engine in self.workers.engines() {
                    reload_opt_out(settings, &mut lock(engine));
                }
            }
            if let Some(worker) = self.workers.failed() {
                bail!("dataplane worker {worker} stopped");
            }
            self.tick(excluded);
        }
    }

    fn tick(&mut self, excluded: &dyn Fn() -> Vec<ipnet::IpNet>) {
        if let Err(err) = self.attachment.heartbeat() {
            tracing::warn!(%err, "writing the heartbeat for the TC classifier");
        }
        self.closed.clear();
        self.workers.take_closed(&mut self.closed);
        let now = Instant::now();
        if let Some(notifications) = &self.notifications {
            // Every worker's engine hears every notification: a user may be known to any.
            notifications.drain(|n| {
                for engine in self.workers.engines() {
                    if let Some(engine) = lock(engine).attenuation_mut() {
                        let ended = engine.new_mail(n.server, n.port, &n.user, now);
                        tracing::debug!(server = %n.server, ended, "new-mail notification");
                    }
                }
                if let (Some(prefetcher), Some(cache), Some(engine)) = (
                    &mut self.prefetcher,
                    &self.cache,
                    self.workers.engines().next(),
                ) && let Some(engine) = lock(engine).attenuation()
                {
                    prefetcher.notified(engine, &mut lock(cache), n.server, n.port, &n.user);
                }
            });
            // Without the broker, news for this edge's users may be going astray.
            if notifications
                .stats()
                .fanout
                .as_ref()
                .is_some_and(|f| !f.is_connected())
            {
                for engine in self.workers.engines() {
                    if let Some(engine) = lock(engine).attenuation_mut() {
                        engine.notifications_missed(now);
                    }
                }
            }
        }
        if let (Some(prefetcher), Some(cache), Some(engine)) = (
            &mut self.prefetcher,
            &self.cache,
            self.workers.engines().next(),
        ) && let Some(engine) = lock(engine).attenuation()
        {
            prefetcher.tick(engine, &mut lock(cache), now);
        }
        // Addresses come and go on a router: keep excluding all of its own.
        if self.excluded_at.elapsed() >= EXCLUDED_REFRESH {
            self.excluded_at = Instant::now();
            if let Err(err) = self.attachment.update_excluded(&excluded()) {
                tracing::warn!(%err, "updating the excluded destinations");
            }
        }
        if let Some(mirror) = &mut self.mirror {
            if let Some(prefetcher) = &self.prefetcher {
                mirror.set_prefetch(prefetcher.stats());
            }
            let active = self.workers.active_conns() as u64;
            let mut guards: Vec<_> = self.workers.engines().map(|e| lock(e)).collect();
            let mut engines: Vec<_> = guards
                .iter_mut()
                .filter_map(|g| g.attenuation_mut())
                .collect();
            mirror.sync(&mut engines, &self.closed, active, now);
        }
        let Self {
            workers,
            attachment,
            notifications,
            cache,
            metrics,
            prefetcher,
            ..
        } = self;
        metrics.answer_scrapes(|| metrics::Snapshot {
            prefetch: prefetcher.as_ref().map(|p| p.stats()).unwrap_or_default(),
            ..metrics::Snapshot::take(
                workers,
                attachment,
                notifications.as_ref().map(|n| n.stats()),
                cache.as_deref(),
            )
        });
    }
}
