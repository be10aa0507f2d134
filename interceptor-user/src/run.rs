//! `pop3-interceptor run`: attach, intercept, detach.

use anyhow::{Context as _, bail};
use pop3_engine::relay::RelayEngine;

use crate::{
    cli::RunArgs,
    dataplane::{Dataplane, DataplaneConfig},
    ebpf::{self, AttachOptions, Attachment},
    signals::SignalFd,
};

/// Runs until SIGINT or SIGTERM, then detaches and leaves the interface as it was.
pub fn run(args: RunArgs, signals: SignalFd) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::warn!("not running as root: loading XDP needs CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW");
    }
    if ebpf::interface_index(&args.iface).is_none() {
        bail!(
            "no interface named {:?} in this network namespace (see `ip link`)",
            args.iface
        );
    }
    let queues = ebpf::rx_queue_count(&args.iface);
    let mtu = ebpf::interface_mtu(&args.iface).unwrap_or(1500);
    let mut attachment = Attachment::attach(&AttachOptions {
        ifname: args.iface.clone(),
        mode: args.xdp_mode,
        ports: args.ports.clone(),
        servers: args.servers.clone(),
        pin_dir: args.pin_dir.clone(),
    })?;
    attachment.keep_pins(args.keep_pins);

    let config = DataplaneConfig {
        ifname: args.iface.clone(),
        queues,
        mtu,
        max_conns: args.max_conns,
        handshake_timeout: std::time::Duration::from_secs(10),
        idle_timeout: args.idle_timeout,
        connect_timeout: args.connect_timeout,
    };
    let mut dataplane = Dataplane::new(config, RelayEngine::new())
        .with_context(|| format!("opening AF_XDP sockets on {}", args.iface))?;
    for (queue, fd) in dataplane.sockets() {
        attachment
            .register_socket(queue, fd)
            .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))?;
    }
    tracing::info!(
        iface = %args.iface,
        queues,
        ports = ?args.ports,
        servers = ?args.servers,
        pin_dir = %args.pin_dir.display(),
        "interceptor ready"
    );

    let signal = dataplane.run(&signals, |_| {})?;
    let stats = dataplane.stats();
    let counters = attachment.counters().unwrap_or_default();
    tracing::info!(signal, ?stats, ?counters, "stopping: detaching from {}", args.iface);
    drop(dataplane);
    drop(attachment);
    Ok(())
}
