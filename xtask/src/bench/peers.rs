//! The bench's peers, measured in the same topology as the daemon: nginx's mail proxy (what an
//! operator would deploy instead of the interceptor's relay) and the ideal relay (the floor
//! for any relay that terminates TCP) on the router, and the ideal responder (the ceiling
//! for attenuated checks) on the server.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use e2e::topology::{ROUTER_CLIENT_V4, SERVER_V4, server_pop3_v4};
use e2e::util::wait_for;
use e2e::{ChildGuard, Node, Topology};

/// Where nginx's mail proxy listens (router namespace, subscriber side).
pub fn nginx_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ROUTER_CLIENT_V4), 1110)
}

/// Where the ideal relay listens (router namespace, subscriber side).
pub fn ideal_relay_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ROUTER_CLIENT_V4), 1111)
}

/// Where the ideal responder listens (server namespace).
pub fn ideal_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVER_V4), 1100)
}

/// Debian's dynamic mail module (package libnginx-mod-mail).
const NGINX_MAIL_MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";
/// nginx's auth_http endpoint, served by the same nginx on the router's loopback.
const AUTH_PORT: u16 = 8110;

/// nginx's config: a POP3 proxy (USER/PASS) whose auth_http endpoint sends every login to
/// the Dovecot; that endpoint is a `location` of the same nginx, the cheapest auth an
/// operator could run. Everything nginx writes stays under `dir`.
fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    let backend = server_pop3_v4();
    format!(
        "load_module {NGINX_MAIL_MODULE};
daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{AUTH_PORT};
        location = /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server {ip};
            add_header Auth-Port {port};
            return 204;
        }}
    }}
}}
mail {{
    server_name bench;
    auth_http 127.0.0.1:{AUTH_PORT}/auth;
    server {{
        listen {listen};
        protocol pop3;
        pop3_auth plain;
    }}
}}
",
        ip = backend.ip(),
        port = backend.port(),
        listen = nginx_addr(),
    )
}

/// A running peer; stopped (SIGTERM, then SIGKILL) by its PID on drop.
pub struct Peer {
    child: ChildGuard,
    /// What the load generator connects to.
    pub addr: SocketAddr,
}

impl Peer {
    /// The PID whose process tree's CPU time is the peer's.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.child.terminate(Duration::from_secs(5));
    }
}

/// Starts nginx's mail proxy in the router namespace with its own config, pid and log files
/// under `dir`, and waits until it accepts.
pub fn start_nginx(topo: &Topology, dir: &Path) -> Result<Peer> {
    if !Path::new(NGINX_MAIL_MODULE).exists() {
        bail!("{NGINX_MAIL_MODULE} is missing: scripts/setup.sh installs libnginx-mod-mail");
    }
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir))?;
    let (prefix, conf_s) = (dir.display().to_string(), conf.display().to_string());
    let args = [
        "nginx",
        "-p",
        prefix.as_str(),
        "-c",
        conf_s.as_str(),
        "-e",
        "stderr",
    ];
    let child = topo.spawn(Node::Router, &args, &dir.join("nginx.log"))?;
    ready(
        topo,
        Peer {
            child,
            addr: nginx_addr(),
        },
        &dir.join("nginx.log"),
    )
}

/// Starts the ideal responder (`xtask ideal-responder`) in the server namespace.
pub fn start_ideal(topo: &Topology, exe: &Path, dir: &Path) -> Result<Peer> {
    start_xtask_peer(
        topo,
        exe,
        dir,
        Node::Server,
        "ideal-responder",
        ideal_addr(),
        &[],
    )
}

/// Starts the ideal relay (`xtask ideal-relay`) in the router namespace, relaying to the
/// Dovecot.
pub fn start_ideal_relay(topo: &Topology, exe: &Path, dir: &Path) -> Result<Peer> {
    let to = server_pop3_v4().to_string();
    let args = ["--to", to.as_str()];
    start_xtask_peer(
        topo,
        exe,
        dir,
        Node::Router,
        "ideal-relay",
        ideal_relay_addr(),
        &args,
    )
}

/// Runs `exe command --listen addr args` (one of xtask's own peers) in `node`'s namespace,
/// logging to `dir/command.log`, and waits until it accepts on `addr`.
fn start_xtask_peer(
    topo: &Topology,
    exe: &Path,
    dir: &Path,
    node: Node,
    command: &str,
    addr: SocketAddr,
    args: &[&str],
) -> Result<Peer> {
    let (exe, listen) = (exe.display().to_string(), addr.to_string());
    let argv: Vec<&str> = [exe.as_str(), command, "--listen", listen.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let log = dir.join(format!("{command}.log"));
    let child = topo.spawn(node, &argv, &log)?;
    ready(topo, Peer { child, addr }, &log)
}

fn ready(topo: &Topology, mut peer: Peer, log: &Path) -> Result<Peer> {
    let addr = peer.addr;
    let up = wait_for(
        &format!("{} accepting on {addr}", peer.child.name()),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            if !peer.child.is_running() {
                return Some(false);
            }
            topo.can_connect(Node::Client, addr, Duration::from_millis(200))
                .then_some(true)
        },
    );
    if let Ok(true) = up {
        return Ok(peer);
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    bail!("{} did not start: {up:?}\n{text}", peer.child.name())
}
