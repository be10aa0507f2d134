//! `pop3-interceptor detach`: cleans up after a daemon that did not exit cleanly.
//!
//! A daemon killed with SIGKILL takes its XDP or TCX link, its AF_XDP sockets and its TAP
//! device with it, but its pinned maps stay on the bpffs, and an XDP program attached the
//! legacy netlink way (on kernels without XDP links) stays on the interface, and so does a
//! TC classifier attached through netlink (`--tc-attach netlink`; it passes everything
//! once the daemon's heartbeat stopped). This removes all of them, and refuses while the
//! daemon that owns them still runs.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{ebpf, status};

/// Detaches any XDP program and our netlink TC filter from `iface`, and removes the pins
/// under `pin_dir`.
pub fn detach(iface: &str, pin_dir: &Path) -> anyhow::Result<()> {
    if let Ok(s) = status::read(pin_dir, &status::Query::default())
        && s.running
    {
        bail!(
            "pid {} still runs pop3-interceptor on {}: stop it with `kill -TERM {}` (it detaches by itself)",
            s.attach.pid,
            s.attach.iface,
            s.attach.pid
        );
    }
    if ebpf::interface_index(iface).is_none() {
        bail!("no interface named {iface:?} in this network namespace (see `ip link`)");
    }
    // iproute2 clears whichever XDP mode is attached; with nothing attached it is a no-op.
    for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
        let status = Command::new("ip")
            .args(["link", "set", "dev", iface, mode, "off"])
            .status()
            .context("running `ip` (iproute2) to detach XDP")?;
        if !status.success() {
            bail!("`ip link set dev {iface} {mode} off` failed ({status})");
        }
    }
    ebpf::remove_tc_filter(iface)
        .with_context(|| format!("removing the TC classifier from {iface}"))?;
    ebpf::remove_pins(pin_dir);
    if pin_dir.exists() {
        bail!(
            "{} is not empty after removing the pins: left alone",
            pin_dir.display()
        );
    }
    println!("detached from {iface}; removed {}", pin_dir.display());
    Ok(())
}
