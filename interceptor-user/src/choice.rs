//! Which dataplane (and XDP mode) to attach with: what the operator asked for, or, on
//! `auto`, what costs the interface's other traffic least, with the reason for the log.
//!
//! Measured with iperf3 through the router (see the README): on veth any attached XDP
//! program makes the kernel turn the peer's TSO off, so forwarding drops to about 0.2x
//! in native mode and 0.75x in skb mode, while a TC classifier leaves it at line rate.
//! On a physical NIC native XDP is the cheapest per packet.

/// Which program carries the intercepted frames (`--dataplane`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataplaneKind {
    /// TC on veth (XDP slows other traffic there) or where XDP cannot attach, else XDP.
    Auto,
    /// XDP program and AF_XDP sockets (kernel bypass).
    Xdp,
    /// TC classifier (TCX link) and a TAP device: skbs, offloads left alone.
    Tc,
}

/// How to attach the XDP program (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Generic on veth (native costs other traffic more there), else native if the
    /// driver supports it, else generic.
    Auto,
    /// Native XDP in the driver.
    Native,
    /// Generic XDP in the kernel's network stack (works everywhere, slower).
    Skb,
}

/// How to attach the TC classifier (`--tc-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcAttach {
    /// A TCX link where the kernel has TCX (6.6 and later), else netlink.
    Auto,
    /// A TCX link, owned by the daemon: it goes when the daemon does, however it dies.
    Tcx,
    /// A filter on a clsact qdisc, through netlink: it stays after a kill -9 (until
    /// `detach`), but passes everything once the daemon's heartbeat stops.
    Netlink,
}

/// What gets attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The XDP program; `Auto` lets the kernel pick native when the driver has it.
    Xdp(XdpMode),
    /// The TC classifier.
    Tc,
}

impl Hook {
    /// The name `status` shows, kept in `INFO`.
    pub fn label(self) -> &'static str {
        match self {
            Hook::Xdp(XdpMode::Auto) => "xdp",
            Hook::Xdp(XdpMode::Native) => "xdp-native",
            Hook::Xdp(XdpMode::Skb) => "xdp-skb",
            Hook::Tc => "tc",
        }
    }
}

/// The hook to try first for `driver` (the interface's driver name, as `ethtool -i`
/// prints it), and why. `auto` falls back to TC if XDP then fails to attach.
pub fn choose(dataplane: DataplaneKind, xdp_mode: XdpMode, driver: &str) -> (Hook, &'static str) {
    let veth = driver == "veth";
    match dataplane {
        DataplaneKind::Tc => (Hook::Tc, "--dataplane tc"),
        DataplaneKind::Auto if veth => (
            Hook::Tc,
            "veth: an XDP program turns the peer's TSO off and slows all other traffic",
        ),
        DataplaneKind::Auto | DataplaneKind::Xdp => match xdp_mode {
            XdpMode::Auto if veth => (
                Hook::Xdp(XdpMode::Skb),
                "veth: generic XDP costs other traffic less than native there",
            ),
            XdpMode::Auto => (
                Hook::Xdp(XdpMode::Auto),
                "XDP, native where the driver has it",
            ),
            mode => (Hook::Xdp(mode), "--xdp-mode"),
        },
    }
}

/// The interface's driver name (`ETHTOOL_GDRVINFO`), empty if the kernel does not say.
pub fn driver(ifname: &str) -> String {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounds below.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr
        .ifr_name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return String::new();
    }
    // SAFETY: ifr points at a live ethtool_drvinfo-sized buffer.
    let ok = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr) } == 0;
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if !ok {
        return String::new();
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    String::from_utf8_lossy(&info.driver[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_tc_on_veth_and_xdp_elsewhere() {
        assert_eq!(
            choose(DataplaneKind::Auto, XdpMode::Auto, "veth").0,
            Hook::Tc
        );
        assert_eq!(
            choose(DataplaneKind::Auto, XdpMode::Auto, "ixgbe").0,
            Hook::Xdp(XdpMode::Auto)
        );
        assert_eq!(
            choose(DataplaneKind::Tc, XdpMode::Native, "ixgbe").0,
            Hook::Tc
        );
    }

    #[test]
    fn xdp_mode_auto_is_generic_on_veth() {
        assert_eq!(
            choose(DataplaneKind::Xdp, XdpMode::Auto, "veth").0,
            Hook::Xdp(XdpMode::Skb)
        );
        assert_eq!(
            choose(DataplaneKind::Xdp, XdpMode::Native, "veth").0,
            Hook::Xdp(XdpMode::Native)
        );
    }
}
