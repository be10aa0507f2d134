//! `pop3-interceptor run`: attach, intercept, detach.

use anyhow::{Context as _, bail};

use crate::{
    cache::EdgeCache,
    choice::{self, DataplaneKind, Hook},
    cli::RunArgs,
    dataplane::{Dataplane, DataplaneConfig, destinations, queue::FrameSource},
    ebpf::{self, AttachOptions, Attachment, EbpfError},
    engine::Engine,
    metrics,
    notify::Notifications,
    prefetch::Prefetcher,
    settings::{FileSettings, Settings},
    signals::SignalFd,
};

/// How often the router's own addresses are looked up again for the exclusion maps.
const EXCLUDED_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

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

    let config = DataplaneConfig {
        ifname: iface.clone(),
        source: match hook {
            Hook::Xdp(_) => FrameSource::AfXdp,
            Hook::Tc => FrameSource::Tap,
        },
        queues,
        mtu,
        max_conns: settings.max_conns,
        handshake_timeout: std::time::Duration::from_secs(10),
        idle_timeout: settings.idle_timeout,
        fin_timeout: settings.fin_timeout,
        per_source: settings.per_source,
        connect_timeout: settings.connect_timeout,
        response_timeout: settings.response_timeout,
    };
    let engine = Engine::new(&settings).context("drawing the verifier salt from the OS")?;
    let mut dataplane = Dataplane::new(config, engine).with_context(|| {
        format!(
            "opening the {} dataplane's frame queues on {iface}",
            hook.label()
        )
    })?;
    let mut prefetcher = None;
    if let Some((dir, limits)) = &settings.cache {
        let cache = EdgeCache::open(dir, *limits)
            .with_context(|| format!("opening the edge cache in {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), stats = ?cache.stats(), "edge cache open");
        if let Some(config) = &settings.prefetch {
            let started = Prefetcher::start(
                config.clone(),
                settings.ports.clone(),
                &cache,
                dataplane.runtime(),
                dataplane.waker(),
            )
            .context("starting the edge cache's prefetch (its profile file)")?;
            tracing::info!(master_user = %config.master_user, "edge cache prefetch on");
            prefetcher = Some(started);
        }
        dataplane.set_cache(cache);
    }
    for (queue, fd) in dataplane.sockets() {
        attachment
            .register_socket(queue, fd)
            .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))?;
    }
    if let Some(tap) = dataplane.tap() {
        attachment
            .register_tap(tap)
            .context("pointing the TC classifier at the TAP device")?;
    }
    let notifications = match &settings.notify {
        Some(config) => Some(
            Notifications::start(config.clone(), dataplane.runtime(), dataplane.waker())
                .context("serving new-mail notifications (--notify-listen)")?,
        ),
        None => None,
    };
    let metrics =
        metrics::Exporter::start(settings.metrics, dataplane.runtime(), dataplane.waker())
            .context("serving Prometheus metrics (--metrics)")?;
    tracing::info!(
        %iface,
        dataplane = hook.label(),
        queues,
        mode = ?settings.mode,
        interval = ?settings.engine.interval,
        ports = ?settings.ports,
        servers = ?settings.servers,
        pin_dir = %settings.pin_dir.display(),
        "interceptor ready"
    );

    let mut mirror = match dataplane.engine().attenuation() {
        Some(_) => Some(attachment.mirror()?),
        None => None,
    };
    let mut excluded_at = std::time::Instant::now();
    let signal = loop {
        let signal = dataplane.run(&signals, |dp| {
            if let Err(err) = attachment.heartbeat() {
                tracing::warn!(%err, "writing the heartbeat for the TC classifier");
            }
            attachment.adopt_flows(dp.established_flows());
            attachment.forget_flows(dp.closed_flows());
            let (engine, mut cache) = dp.engine_and_cache_mut();
            if let (Some(notifications), Some(engine)) = (&notifications, engine.attenuation_mut())
            {
                let now = std::time::Instant::now();
                notifications.drain(|n| {
                    let ended = engine.new_mail(n.server, n.port, &n.user, now);
                    tracing::debug!(server = %n.server, ended, "new-mail notification");
                    if let (Some(prefetcher), Some(cache)) = (&mut prefetcher, cache.as_deref_mut())
                    {
                        prefetcher.notified(engine, cache, n.server, n.port, &n.user);
                    }
                });
                // Without the broker, news for this edge's users may be going astray.
                if notifications
                    .stats()
                    .fanout
                    .as_ref()
                    .is_some_and(|f| !f.is_connected())
                {
                    engine.notifications_missed(now);
                }
            }
            if let (Some(prefetcher), (engine, Some(cache))) =
                (&mut prefetcher, dp.engine_and_cache_mut())
                && let Some(engine) = engine.attenuation()
            {
                prefetcher.tick(engine, cache, std::time::Instant::now());
            }
            // Addresses come and go on a router: keep excluding all of its own.
            if excluded_at.elapsed() >= EXCLUDED_REFRESH {
                excluded_at = std::time::Instant::now();
                if let Err(err) = attachment.update_excluded(&excluded()) {
                    tracing::warn!(%err, "updating the excluded destinations");
                }
            }
            if let Some(mirror) = &mut mirror {
                let closed = dp.closed_flows().to_vec();
                let active = dp.active_conns() as u64;
                if let Some(prefetcher) = &prefetcher {
                    mirror.set_prefetch(prefetcher.stats());
                }
                if let Some(engine) = dp.engine_mut().attenuation_mut() {
                    mirror.sync(engine, &closed, active, std::time::Instant::now());
                }
            }
            metrics.answer_scrapes(|| {
                let snapshot = metrics::Snapshot::take(
                    dp,
                    &attachment,
                    notifications.as_ref().map(|n| n.stats()),
                );
                metrics::Snapshot {
                    prefetch: prefetcher.as_ref().map(|p| p.stats()).unwrap_or_default(),
                    ..snapshot
                }
            });
        })?;
        if signal != libc::SIGHUP {
            break signal;
        }
        reload_opt_out(&settings, dataplane.engine_mut());
    };
    let stats = dataplane.stats();
    let counters = attachment.counters().unwrap_or_default();
    let engine = dataplane.engine().attenuation().map(|e| *e.counters());
    tracing::info!(
        signal,
        ?stats,
        ?counters,
        ?engine,
        "stopping: detaching from {iface}"
    );
    if dataplane.tap().is_some() {
        // The classifier passes everything again before the TAP goes away, rather than
        // redirecting to a device that no longer exists (which drops).
        let _ = attachment.register_tap(0);
    }
    drop(dataplane);
    drop(attachment);
    Ok(())
}
