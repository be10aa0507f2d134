//! Three network namespaces (client, router, mail server) joined by two veth pairs.
//!
//! ```text
//!  client ns                 router ns                              server ns
//!  eth0 198.51.100.2/24 ---- rc0 198.51.100.1/24   rs0 203.0.113.1/24 ---- eth0 203.0.113.2/24
//!       2001:db8:1::2/64         2001:db8:1::1/64      2001:db8:2::1/64         2001:db8:2::2/64
//! ```
//!
//! [`Topology::add_edge`] adds a second edge router and its own subscriber in front of the
//! same mail server (for notifications fanned out across edges):
//!
//! ```text
//!  edge-client ns               edge-router ns                            server ns
//!  eth0 198.51.100.130/25 ---- rc0 198.51.100.129/25  rs0 203.0.113.129/25 ---- eth1 203.0.113.130/25
//! ```
//!
//! The edge router reaches the server's 203.0.113.2 through `eth1`; the server routes
//! 198.51.100.128/25 back through the edge router.
//!
//! The interceptor attaches to the router's `rc0` (the subscriber-facing interface). Only the
//! TEST-NET ranges 198.51.100.0/24 and 203.0.113.0/24 and the documentation prefix 2001:db8::/32
//! are used, inside namespaces this guard creates and deletes.

use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::util::{
    self, ChildGuard, CmdOutput, DEFAULT_TIMEOUT, TempDir, next_seq, pid_alive, run_cmd, scrub_env,
    signal_pid,
};

/// Prefix of every namespace, temp folder and pin folder the fixtures create:
/// `p3i-<pid>-<n>-<role>`. The pid lets a later run remove what a killed run left behind.
pub const PREFIX: &str = "p3i";

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const ROUTER_SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const ROUTER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const ROUTER_SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

/// The router's client-facing interface: where the interceptor attaches.
pub const ROUTER_CLIENT_IFACE: &str = "rc0";
/// The router's server-facing interface.
pub const ROUTER_SERVER_IFACE: &str = "rs0";
/// The interface name inside the client and the server namespaces.
pub const HOST_IFACE: &str = "eth0";

/// The second edge's subscriber, router and the server's interface towards it.
pub const EDGE_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 130);
pub const EDGE_ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 129);
pub const EDGE_ROUTER_SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 129);
pub const SERVER_EDGE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 130);
/// The server's interface towards the second edge.
pub const SERVER_EDGE_IFACE: &str = "eth1";

pub const POP3_PORT: u16 = 110;

/// The mail server's POP3 address (IPv4).
pub fn server_pop3_v4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_V4), POP3_PORT)
}
/// The mail server's POP3 address (IPv6).
pub fn server_pop3_v6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(SERVER_V6), POP3_PORT)
}

/// One of the three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Client,
    Router,
    Server,
    /// The second edge's subscriber (after [`Topology::add_edge`]).
    EdgeClient,
    /// The second edge router (after [`Topology::add_edge`]).
    EdgeRouter,
}

impl Node {
    pub fn role(self) -> &'static str {
        match self {
            Node::Client => "client",
            Node::Router => "router",
            Node::Server => "server",
            Node::EdgeClient => "edge-client",
            Node::EdgeRouter => "edge-router",
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.role())
    }
}

/// How to build the topology.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// RX and TX queue count of the router's client-facing veth `rc0` and of its peer (the
    /// client's eth0). XDP on a veth needs the peer's TX queues <= its own RX queues, so both
    /// ends get the same count.
    pub rc0_queues: u32,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self { rc0_queues: 1 }
    }
}

/// The three namespaces; everything is removed on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    client: String,
    router: String,
    server: String,
    /// The second edge's client and router namespaces, once added.
    edge: Option<(String, String)>,
    options: TopologyOptions,
    created: Vec<String>,
    // Declared last: dropped after the namespaces are gone.
    dir: TempDir,
}

impl Topology {
    /// A topology with one queue on every veth.
    pub fn new() -> Result<Self> {
        Self::with_options(TopologyOptions::default())
    }

    pub fn with_options(options: TopologyOptions) -> Result<Self> {
        util::require_root();
        cleanup_stale();
        let prefix = format!("{PREFIX}-{}-{}", std::process::id(), next_seq());
        let dir = TempDir::new(&prefix)?;
        let mut topo = Topology {
            client: format!("{prefix}-client"),
            router: format!("{prefix}-router"),
            server: format!("{prefix}-server"),
            edge: None,
            prefix,
            options,
            created: Vec::new(),
            dir,
        };
        // On error, Drop removes whatever was made so far.
        topo.build()
            .with_context(|| format!("building topology {}", topo.prefix))?;
        Ok(topo)
    }

    fn build(&mut self) -> Result<()> {
        let (c, r, s) = (
            self.client.clone(),
            self.router.clone(),
            self.server.clone(),
        );
        for ns in [&c, &r, &s] {
            self.ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
            // No duplicate address detection anywhere: addresses are usable at once.
            self.sysctl(
                ns,
                &[
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
            self.ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let queues = self.options.rc0_queues.max(1);
        self.veth_pair((&r, ROUTER_CLIENT_IFACE), (&c, HOST_IFACE), queues)?;
        self.veth_pair((&r, ROUTER_SERVER_IFACE), (&s, HOST_IFACE), 1)?;
        let addrs: [(&str, &str, String, String); 4] = [
            (
                &c,
                HOST_IFACE,
                format!("{CLIENT_V4}/24"),
                format!("{CLIENT_V6}/64"),
            ),
            (
                &r,
                ROUTER_CLIENT_IFACE,
                format!("{ROUTER_CLIENT_V4}/24"),
                format!("{ROUTER_CLIENT_V6}/64"),
            ),
            (
                &r,
                ROUTER_SERVER_IFACE,
                format!("{ROUTER_SERVER_V4}/24"),
                format!("{ROUTER_SERVER_V6}/64"),
            ),
            (
                &s,
                HOST_IFACE,
                format!("{SERVER_V4}/24"),
                format!("{SERVER_V6}/64"),
            ),
        ];
        for (ns, dev, v4, v6) in &addrs {
            self.ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            self.ip(&["-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"])?;
            self.ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        self.sysctl(
            &r,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        self.ip(&[
            "-n",
            &c,
            "route",
            "add",
            "default",
            "via",
            &ROUTER_CLIENT_V4.to_string(),
        ])?;
        self.ip(&[
            "-n",
            &c,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_CLIENT_V6.to_string(),
        ])?;
        self.ip(&[
            "-n",
            &s,
            "route",
            "add",
            "default",
            "via",
            &ROUTER_SERVER_V4.to_string(),
        ])?;
        self.ip(&[
            "-n",
            &s,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_SERVER_V6.to_string(),
        ])?;
        Ok(())
    }

    /// Adds the second edge (see the module's picture): its router and subscriber
    /// namespaces, removed with the rest.
    pub fn add_edge(&mut self) -> Result<()> {
        if self.edge.is_some() {
            bail!("the second edge exists already");
        }
        let (c, r, s) = (
            format!("{}-edge-client", self.prefix),
            format!("{}-edge-router", self.prefix),
            self.server.clone(),
        );
        for ns in [&c, &r] {
            self.ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
            self.ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        self.edge = Some((c.clone(), r.clone()));
        self.veth_pair((&r, ROUTER_CLIENT_IFACE), (&c, HOST_IFACE), 1)?;
        self.veth_pair((&r, ROUTER_SERVER_IFACE), (&s, SERVER_EDGE_IFACE), 1)?;
        for (ns, dev, addr) in [
            (&c, HOST_IFACE, EDGE_CLIENT_V4),
            (&r, ROUTER_CLIENT_IFACE, EDGE_ROUTER_CLIENT_V4),
            (&r, ROUTER_SERVER_IFACE, EDGE_ROUTER_SERVER_V4),
            (&s, SERVER_EDGE_IFACE, SERVER_EDGE_V4),
        ] {
            self.ip(&["-n", ns, "addr", "add", &format!("{addr}/25"), "dev", dev])?;
            self.ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        self.sysctl(&r, &["net.ipv4.ip_forward=1"])?;
        let (router_c, router_s, server_e) = (
            EDGE_ROUTER_CLIENT_V4.to_string(),
            EDGE_ROUTER_SERVER_V4.to_string(),
            SERVER_EDGE_V4.to_string(),
        );
        self.ip(&["-n", &c, "route", "add", "default", "via", &router_c])?;
        let server = format!("{SERVER_V4}/32");
        self.ip(&["-n", &r, "route", "add", &server, "via", &server_e])?;
        self.ip(&[
            "-n",
            &s,
            "route",
            "add",
            "198.51.100.128/25",
            "via",
            &router_s,
        ])?;
        Ok(())
    }

    /// A veth pair from `(namespace, name)` to its peer, with `queues` RX and TX queues
    /// on each side.
    fn veth_pair(
        &self,
        (ns, name): (&str, &str),
        (peer_ns, peer): (&str, &str),
        queues: u32,
    ) -> Result<()> {
        let q = queues.to_string();
        let queues = ["numtxqueues", &q, "numrxqueues", &q];
        let mut args = vec!["-n", ns, "link", "add", name];
        args.extend(queues);
        args.extend(["type", "veth", "peer", "name", peer]);
        args.extend(queues);
        args.extend(["netns", peer_ns]);
        self.ip(&args)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let out = run_cmd(
            Command::new("ip").args(args),
            None,
            DEFAULT_TIMEOUT,
            self.dir.path(),
        )?;
        out.check(&format!("ip {}", args.join(" ")))?;
        Ok(())
    }

    fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "sysctl", "-q", "-w"])
            .args(settings);
        run_cmd(&mut cmd, None, DEFAULT_TIMEOUT, self.dir.path())?
            .check(&format!("sysctl in {ns}"))?;
        Ok(())
    }

    /// `p3i-<pid>-<n>`: unique per topology; other fixtures name their files after it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The namespace name of a node (for `ip netns exec`).
    pub fn ns(&self, node: Node) -> &str {
        match node {
            Node::Client => &self.client,
            Node::Router => &self.router,
            Node::Server => &self.server,
            Node::EdgeClient => &self.edge.as_ref().expect("Topology::add_edge first").0,
            Node::EdgeRouter => &self.edge.as_ref().expect("Topology::add_edge first").1,
        }
    }
    pub fn options(&self) -> &TopologyOptions {
        &self.options
    }
    /// A scratch folder removed with the topology.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `Command` that runs `args` inside `node`'s namespace (proxy variables removed).
    pub fn command(&self, node: Node, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(node)]).args(args);
        scrub_env(&mut cmd);
        cmd
    }

    /// Runs `args` inside `node` with the default 60 s limit and returns its output
    /// (whatever the exit code: use `.check()` to require success).
    pub fn exec(&self, node: Node, args: &[&str]) -> Result<CmdOutput> {
        self.exec_with(node, args, None, DEFAULT_TIMEOUT)
    }

    /// Like [`exec`](Self::exec) with bytes on stdin and an explicit time limit.
    pub fn exec_with(
        &self,
        node: Node,
        args: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CmdOutput> {
        run_cmd(
            &mut self.command(node, args),
            input,
            timeout,
            self.dir.path(),
        )
    }

    /// Starts a long-running command inside `node`, stdout and stderr appended to `log`.
    /// The guard kills it by pid on drop.
    pub fn spawn(&self, node: Node, args: &[&str], log: &Path) -> Result<ChildGuard> {
        let mut cmd = self.command(node, args);
        spawn_logged(
            &mut cmd,
            log,
            &format!("{} in {}", args.join(" "), self.ns(node)),
        )
    }

    /// Opens a TCP connection from inside `node` (the socket is created in a thread that
    /// entered the namespace; it stays there and can be used from any thread).
    pub fn connect(&self, node: Node, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        in_netns(self.ns(node), move || {
            TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))
        })?
    }

    /// Whether `addr` accepts a TCP connection from `node` within `timeout`.
    pub fn can_connect(&self, node: Node, addr: SocketAddr, timeout: Duration) -> bool {
        self.connect(node, addr, timeout).is_ok()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::env::var_os("P3I_KEEP").is_some() {
            eprintln!("P3I_KEEP set: keeping namespaces {}-*", self.prefix);
            return;
        }
        for ns in self.created.iter().rev() {
            delete_ns(ns);
        }
    }
}

/// Starts `cmd` with stdin from /dev/null and stdout/stderr appended to `log` (never pipes:
/// a daemon that keeps them open would hang a reader).
pub fn spawn_logged(cmd: &mut Command, log: &Path, name: &str) -> Result<ChildGuard> {
    let f = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    Ok(ChildGuard::new(child, name))
}

/// Runs `f` in a new thread that entered the network namespace `ns` (by `/run/netns/<ns>`).
/// Sockets created there belong to that namespace for their whole life.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = PathBuf::from("/run/netns").join(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let handle = std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns on a valid namespace fd; it only changes this (new) thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(anyhow!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow!("thread in netns panicked"))?
}

fn delete_ns(ns: &str) {
    // Processes still inside (ours, from a killed run or a leaked guard) keep a namespace
    // alive after `ip netns del`: kill them by pid first.
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<u32>() {
                signal_pid(pid, libc::SIGKILL);
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Parses `p3i-<pid>-<n>...` and returns the pid.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let mut it = rest.splitn(3, '-');
    let pid = it.next()?.parse().ok()?;
    let _n: u32 = it.next()?.parse().ok()?;
    Some(pid)
}

/// Removes namespaces, temp folders and test pin folders left by runs whose process is gone.
pub fn cleanup_stale() {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "list"])
        .stderr(Stdio::null())
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(pid) = owner_pid(name)
                && !pid_alive(pid)
            {
                eprintln!("removing leftover namespace {name} (pid {pid} is gone)");
                delete_ns(name);
            }
        }
    }
    for parent in [
        std::env::temp_dir(),
        PathBuf::from(crate::interceptor::TEST_BPFFS),
    ] {
        let Ok(rd) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name)
                && !pid_alive(pid)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Fails unless `ip netns` is usable (root, iproute2 present).
pub fn check_prerequisites() -> Result<()> {
    let st = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .status();
    match st {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("`ip netns list` failed ({s}): run as root"),
        Err(e) => bail!("cannot run `ip` ({e}): install iproute2 (scripts/setup.sh)"),
    }
}
