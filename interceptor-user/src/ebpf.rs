//! Loading the eBPF object, configuring its maps, attaching one of its programs (XDP, or
//! the TC classifier) and pinning the maps.
//!
//! Either program is attached through a BPF link held by this process (an XDP link, or
//! a TCX link): when the daemon dies, however it dies, the kernel detaches the program
//! and closes the AF_XDP sockets or the TAP device, and traffic flows to the mail server
//! as if we were never there (fail-open).
//!
//! On kernels without TCX (before 6.6) the classifier is a filter on a clsact qdisc,
//! added through netlink. That filter is not owned by the process: a clean exit removes
//! it, `detach` removes what a kill -9 left, and in between it fails open by itself: the
//! daemon writes a heartbeat into `CONFIG` while its loop runs, and the classifier
//! passes everything once the heartbeat is older than [`common::HEARTBEAT_GRACE_NS`]
//! (a redirect to the vanished TAP would drop).

use std::{
    fs,
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, XskMap, lpm_trie::Key},
    programs::{
        Program, ProgramError, SchedClassifier, Xdp, XdpMode as AyaXdpMode,
        links::LinkOrder,
        tc::{self, NlOptions, TcAttachOptions, TcAttachType},
    },
};
use common::{AttachInfo, Config, Counter, map_names};
use ipnet::IpNet;
use thiserror::Error;

use crate::{
    choice::{Hook, TcAttach, XdpMode},
    flow_maps::FlowMaps,
    mirror::text,
};

/// The XDP object built by build.rs from `interceptor-ebpf`.
pub(crate) static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pop3-interceptor"));

/// How often a netlink-attached classifier hears the daemon's heartbeat (well inside
/// [`common::HEARTBEAT_GRACE_NS`]; the loop passes at least once a second).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// bpffs magic number, from `statfs(2)`.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn aya_xdp_mode(mode: XdpMode) -> AyaXdpMode {
    match mode {
        XdpMode::Auto => AyaXdpMode::Default,
        XdpMode::Native => AyaXdpMode::Driver,
        XdpMode::Skb => AyaXdpMode::Skb,
    }
}

/// What is intercepted, and where the maps go.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub ifname: String,
    /// Which program, and how.
    pub hook: Hook,
    /// How the TC classifier attaches (for [`Hook::Tc`]).
    pub tc_attach: TcAttach,
    pub ports: Vec<u16>,
    /// Mail-server prefixes; empty means any destination.
    pub servers: Vec<IpNet>,
    /// Destinations never intercepted (see `dataplane::destinations`).
    pub excluded: Vec<IpNet>,
    /// `--max-conns`: `FLOWS` gets at least this many entries.
    pub max_conns: u32,
    pub pin_dir: PathBuf,
    /// Capacity of the `USERS` mirror map.
    pub mirror_size: u32,
}

/// Why the program could not be loaded, configured or attached.
#[derive(Debug, Error)]
pub enum EbpfError {
    #[error("no interface named {0:?} in this network namespace")]
    NoSuchInterface(String),
    #[error(
        "{0} is not on a bpffs: mount one with `mount -t bpf bpf {0}` (or its parent), or pass --pin-dir on a bpffs"
    )]
    NotBpffs(String),
    #[error("creating the pin folder {0}: {1}")]
    PinDir(String, std::io::Error),
    #[error(
        "loading the XDP object: {0} (run as root, or with CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW and CAP_PERFMON)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    #[error("XDP map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("attaching {} to {ifname} refused: {source}", hook.label())]
    Attach {
        ifname: String,
        hook: Hook,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("XDP program: {0}")]
    Program(#[source] aya::programs::ProgramError),
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map { map, source }
}

/// The loaded, attached program. Dropping it detaches the program and removes the pins.
pub struct Attachment {
    ebpf: Ebpf,
    xsks: XskMap<aya::maps::MapData>,
    config: Array<aya::maps::MapData, Config>,
    hook: Hook,
    /// A netlink-attached classifier: when the heartbeat was last written.
    heartbeat: Option<Instant>,
    flows: FlowMaps,
    counters: PerCpuArray<aya::maps::MapData, u64>,
    excluded_v4: LpmTrie<aya::maps::MapData, [u8; 4], u8>,
    excluded_v6: LpmTrie<aya::maps::MapData, [u8; 16], u8>,
    /// What the exclusion maps hold now.
    excluded: Vec<IpNet>,
    pin_dir: PathBuf,
    keep_pins: bool,
}

impl Attachment {
    /// Loads the object, fills the config maps, pins the maps and attaches to the interface.
    pub fn attach(options: &AttachOptions) -> Result<Self, EbpfError> {
        if interface_index(&options.ifname).is_none() {
            return Err(EbpfError::NoSuchInterface(options.ifname.clone()));
        }
        prepare_pin_dir(&options.pin_dir)?;
        let mut object = XDP_OBJECT.to_vec();
        if let Err(err) = crate::btf_text::mark_i8_as_char(&mut object) {
            tracing::warn!(%err, "bpftool will print text fields as numbers");
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::USERS, options.mirror_size)
            .map_max_entries(map_names::FLOWS, options.max_conns.max(common::MAX_FLOWS))
            .load(&object)
            .map_err(EbpfError::Load)?;
        configure(&mut ebpf, options)?;
        pin_maps(&ebpf, &options.pin_dir)?;

        let attached = match options.hook {
            Hook::Xdp(mode) => {
                let program: &mut Xdp = program_mut(&mut ebpf, common::XDP_PROGRAM)?;
                program.load().map_err(EbpfError::Program)?;
                program
                    .attach(&options.ifname, aya_xdp_mode(mode))
                    .map(|_| options.hook.label())
            }
            Hook::Tc => {
                let program: &mut SchedClassifier = program_mut(&mut ebpf, common::TC_PROGRAM)?;
                program.load().map_err(EbpfError::Program)?;
                attach_tc(program, &options.ifname, options.tc_attach)
            }
        };
        let label = attached.map_err(|source| EbpfError::Attach {
            ifname: options.ifname.clone(),
            hook: options.hook,
            source,
        })?;

        write_info(&mut ebpf, options, label)?;
        let xsks = take_map(&mut ebpf, map_names::XSKS)?;
        let config = take_map(&mut ebpf, map_names::CONFIG)?;
        let flows = take_map(&mut ebpf, map_names::FLOWS)?;
        let half_open = take_map(&mut ebpf, map_names::HALF_OPEN)?;
        let counters = take_map(&mut ebpf, map_names::COUNTERS)?;
        let excluded_v4 = take_map(&mut ebpf, map_names::EXCLUDED_V4)?;
        let excluded_v6 = take_map(&mut ebpf, map_names::EXCLUDED_V6)?;
        Ok(Self {
            ebpf,
            xsks,
            config,
            hook: options.hook,
            heartbeat: (label == TC_NETLINK_LABEL).then(|| Instant::now() - HEARTBEAT_EVERY),
            flows: FlowMaps::new(flows, half_open),
            counters,
            excluded_v4,
            excluded_v6,
            excluded: options.excluded.clone(),
            pin_dir: options.pin_dir.clone(),
            keep_pins: false,
        })
    }

    /// Keep the pinned maps after exit (for inspecting what a stopped daemon left).
    pub fn keep_pins(&mut self, keep: bool) {
        self.keep_pins = keep;
    }

    /// Points the XSKMAP slot of `queue` at an AF_XDP socket.
    pub fn register_socket(&mut self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), EbpfError> {
        self.xsks
            .set(queue, socket, 0)
            .map_err(map_err(map_names::XSKS))
    }

    /// Points the TC program at the TAP device that reads the chosen skbs.
    pub fn register_tap(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        let mut value = self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        value.redirect_ifindex = ifindex;
        self.config
            .set(0, value, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    /// Tells a netlink-attached classifier that the daemon is alive (at most every
    /// [`HEARTBEAT_EVERY`]); call it on every pass of the loop. A no-op otherwise.
    pub fn heartbeat(&mut self) -> Result<(), EbpfError> {
        let Some(last) = &mut self.heartbeat else {
            return Ok(());
        };
        if last.elapsed() < HEARTBEAT_EVERY {
            return Ok(());
        }
        *last = Instant::now();
        let mut value = self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        value.heartbeat_ns = crate::flow_maps::monotonic_ns();
        self.config
            .set(0, value, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    /// What is attached.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Handles of `FLOWS` and `HALF_OPEN` for a dataplane worker.
    pub fn flow_maps(&self) -> Result<FlowMaps, EbpfError> {
        self.flows.try_clone().map_err(map_err(map_names::FLOWS))
    }

    /// Makes the exclusion maps hold exactly `wanted` (new prefixes first, then the stale
    /// ones go), e.g. after the router's addresses changed.
    pub fn update_excluded(&mut self, wanted: &[IpNet]) -> Result<(), EbpfError> {
        for net in wanted.iter().filter(|n| !self.excluded.contains(n)) {
            match net {
                IpNet::V4(n) => self
                    .excluded_v4
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                        1,
                        0,
                    )
                    .map_err(map_err(map_names::EXCLUDED_V4))?,
                IpNet::V6(n) => self
                    .excluded_v6
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                        1,
                        0,
                    )
                    .map_err(map_err(map_names::EXCLUDED_V6))?,
            }
        }
        for net in self.excluded.iter().filter(|n| !wanted.contains(n)) {
            let _ = match net {
                IpNet::V4(n) => self
                    .excluded_v4
                    .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
                IpNet::V6(n) => self
                    .excluded_v6
                    .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
            };
        }
        self.excluded = wanted.to_vec();
        Ok(())
    }

    /// The operator's `USERS` and `SESSIONS` maps, for the table mirror.
    pub fn mirror(&mut self) -> Result<crate::mirror::Mirror, EbpfError> {
        Ok(crate::mirror::Mirror::new(
            take_map(&mut self.ebpf, map_names::USERS)?,
            take_map(&mut self.ebpf, map_names::SESSIONS)?,
            take_map(&mut self.ebpf, map_names::STATS)?,
        ))
    }

    /// The XDP program's counters summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, EbpfError> {
        read_counters(&self.counters)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // Detach first so no frame is redirected to a socket that is going away.
        let name = match self.hook {
            Hook::Xdp(_) => common::XDP_PROGRAM,
            Hook::Tc => common::TC_PROGRAM,
        };
        let _ = match self.ebpf.program_mut(name) {
            Some(Program::Xdp(program)) => program.unload(),
            Some(Program::SchedClassifier(program)) => program.unload(),
            _ => Ok(()),
        };
        if !self.keep_pins {
            remove_pins(&self.pin_dir);
        }
    }
}

/// What `status` shows for a classifier attached through netlink.
const TC_NETLINK_LABEL: &str = "tc-netlink";

/// Attaches the loaded classifier to `ifname`'s ingress as `how` asks; returns the mode
/// `status` shows.
fn attach_tc(
    program: &mut SchedClassifier,
    ifname: &str,
    how: TcAttach,
) -> Result<&'static str, ProgramError> {
    if how != TcAttach::Netlink {
        // A TCX link, owned by this process like the XDP link: it goes with us.
        let tcx = program.attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        match tcx {
            Ok(_) => return Ok(Hook::Tc.label()),
            Err(err) if how == TcAttach::Tcx => return Err(err),
            Err(err) => tracing::warn!(%err, "no TCX link here: attaching through netlink"),
        }
    }
    // The qdisc may be there already (another user, or a daemon killed earlier).
    if let Err(err) = tc::qdisc_add_clsact(ifname) {
        tracing::debug!(%err, "adding the clsact qdisc");
    }
    program.attach_with_options(
        ifname,
        TcAttachType::Ingress,
        TcAttachOptions::Netlink(NlOptions::default()),
    )?;
    Ok(TC_NETLINK_LABEL)
}

/// Removes a netlink-attached classifier that a killed daemon left on `ifname` (none
/// there, or no clsact qdisc at all: nothing to do). The qdisc stays: others may use it,
/// and empty it costs nothing.
pub fn remove_tc_filter(ifname: &str) -> Result<(), tc::TcError> {
    match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, common::TC_PROGRAM) {
        Err(tc::TcError::IoError(err)) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(tc::TcError::NetlinkError(err))
            if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Sums a pinned or owned per-CPU counters map.
pub fn read_counters(
    map: &PerCpuArray<aya::maps::MapData, u64>,
) -> Result<Vec<(Counter, u64)>, EbpfError> {
    Counter::ALL
        .iter()
        .map(|&counter| {
            let values = map
                .get(&(counter as u32), 0)
                .map_err(map_err(map_names::COUNTERS))?;
            Ok((counter, values.iter().sum()))
        })
        .collect()
}

/// Removes the pinned maps (and the folder, if that leaves it empty).
pub fn remove_pins(pin_dir: &Path) {
    for name in map_names::ALL {
        let _ = fs::remove_file(pin_dir.join(name));
    }
    let _ = fs::remove_dir(pin_dir);
}

fn configure(ebpf: &mut Ebpf, options: &AttachOptions) -> Result<(), EbpfError> {
    let mut ports: HashMap<_, u16, u8> = map_mut(ebpf, map_names::PORTS)?;
    for &port in &options.ports {
        ports
            .insert(port, 1, 0)
            .map_err(map_err(map_names::PORTS))?;
    }
    insert_nets(
        ebpf,
        [map_names::SERVERS_V4, map_names::SERVERS_V6],
        &options.servers,
    )?;
    insert_nets(
        ebpf,
        [map_names::EXCLUDED_V4, map_names::EXCLUDED_V6],
        &options.excluded,
    )?;
    let mut config: Array<_, Config> = map_mut(ebpf, map_names::CONFIG)?;
    let value = Config {
        server_filter: u32::from(!options.servers.is_empty()),
        redirect_ifindex: 0,
        heartbeat_ns: 0,
    };
    config
        .set(0, value, 0)
        .map_err(map_err(map_names::CONFIG))?;
    Ok(())
}

/// Puts each prefix of `nets` into the LPM trie of its family (`[v4 map, v6 map]`).
fn insert_nets(ebpf: &mut Ebpf, names: [&'static str; 2], nets: &[IpNet]) -> Result<(), EbpfError> {
    let v4 = nets.iter().filter_map(|net| match net {
        IpNet::V4(net) => Some((net.prefix_len(), net.network().octets())),
        IpNet::V6(_) => None,
    });
    insert_prefixes(ebpf, names[0], v4)?;
    let v6 = nets.iter().filter_map(|net| match net {
        IpNet::V6(net) => Some((net.prefix_len(), net.network().octets())),
        IpNet::V4(_) => None,
    });
    insert_prefixes(ebpf, names[1], v6)
}

fn insert_prefixes<const N: usize>(
    ebpf: &mut Ebpf,
    name: &'static str,
    prefixes: impl Iterator<Item = (u8, [u8; N])>,
) -> Result<(), EbpfError> {
    let mut trie: LpmTrie<_, [u8; N], u8> = map_mut(ebpf, name)?;
    for (len, network) in prefixes {
        trie.insert(&Key::new(u32::from(len), network), 1, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

/// Records the attach point in `INFO` for `status` and `detach`.
fn write_info(ebpf: &mut Ebpf, options: &AttachOptions, mode: &str) -> Result<(), EbpfError> {
    let mut info: Array<_, AttachInfo> = map_mut(ebpf, map_names::INFO)?;
    let value = AttachInfo {
        iface: text(&options.ifname),
        mode: text(mode),
        ifindex: interface_index(&options.ifname).unwrap_or(0),
        pid: std::process::id(),
        attached_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    info.set(0, value, 0).map_err(map_err(map_names::INFO))
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(EbpfError::Missing(name))?;
    T::try_from(program).map_err(EbpfError::Program)
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(EbpfError::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn pin_maps(ebpf: &Ebpf, pin_dir: &Path) -> Result<(), EbpfError> {
    for name in map_names::ALL {
        let map = ebpf.map(name).ok_or(EbpfError::Missing(name))?;
        let path = pin_dir.join(name);
        // A pin left by a killed daemon belongs to maps nobody uses any more.
        let _ = fs::remove_file(&path);
        map.pin(&path).map_err(|source| EbpfError::Pin {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn prepare_pin_dir(pin_dir: &Path) -> Result<(), EbpfError> {
    let display = || pin_dir.display().to_string();
    fs::create_dir_all(pin_dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied
            || !is_bpffs(pin_dir.parent().unwrap_or(pin_dir))
        {
            EbpfError::NotBpffs(display())
        } else {
            EbpfError::PinDir(display(), e)
        }
    })?;
    if !is_bpffs(pin_dir) {
        let _ = fs::remove_dir(pin_dir);
        return Err(EbpfError::NotBpffs(display()));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|stat| stat.f_type == BPF_FS_MAGIC)
}

/// The interface's index in this network namespace.
pub fn interface_index(ifname: &str) -> Option<u32> {
    let name = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: valid NUL-terminated string. (libc: rustix's `name_to_index` needs a
    // socket to ask through.)
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Number of RX queues of an interface, from sysfs (which `ip netns exec` remounts for
/// the namespace, so this sees the namespace's interfaces).
pub fn rx_queue_count(ifname: &str) -> u32 {
    let dir = format!("/sys/class/net/{ifname}/queues");
    let count = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1);
    (count.max(1) as u32).min(common::MAX_QUEUES)
}

/// The interface's MTU, from sysfs.
pub fn interface_mtu(ifname: &str) -> Option<usize> {
    fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
