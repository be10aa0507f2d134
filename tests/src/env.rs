//! One end-to-end environment: a [`Topology`], a real [`Dovecot`] and, when asked, the
//! daemon under test (one per edge router with the second edge), torn down daemons first
//! on drop; plus the client sessions most tests share.

use std::{collections::HashMap, time::Duration};

use crate::{
    Dovecot, DovecotOptions, Interceptor, InterceptorOptions, Node, Topology, TopologyOptions,
    clients::{self, PoplibOptions, RawSession},
    prometheus,
    topology::server_pop3_v4,
};

/// The topology, Dovecot and the daemons (if started). Fields drop in order: the daemons,
/// then Dovecot, then the namespaces.
pub struct Env {
    ic: Option<Interceptor>,
    /// The daemon on the second edge's router ([`Env::with_second_edge`]).
    edge_ic: Option<Interceptor>,
    pub dc: Dovecot,
    pub topo: Topology,
}

impl Env {
    /// The daemon in `--mode relay` in front of a default Dovecot.
    pub fn relay() -> Self {
        Self::start(DovecotOptions::default(), &["--mode", "relay"])
    }

    /// The daemon in `--mode attenuate` with `--interval interval` in front of a default
    /// Dovecot.
    pub fn attenuating(interval: Duration) -> Self {
        let interval = format!("{}ms", interval.as_millis());
        Self::start(DovecotOptions::default(), &["--interval", &interval])
    }

    /// The daemon with `args` after `run` (attenuating with its defaults unless they say
    /// otherwise) in front of a Dovecot with `options`.
    pub fn start(options: DovecotOptions, args: &[&str]) -> Self {
        let mut env = Self::direct(options);
        env.start_daemon(args);
        env
    }

    /// No daemon yet: clients reach Dovecot directly until [`Env::start_daemon`].
    pub fn direct(options: DovecotOptions) -> Self {
        Self::on(Topology::new().expect("topology"), options)
    }

    /// [`Env::direct`] on a topology built with `topology`.
    pub fn direct_with(topology: TopologyOptions, options: DovecotOptions) -> Self {
        Self::on(Topology::with_options(topology).expect("topology"), options)
    }

    /// [`Env::direct`] with the second edge (its router and subscriber namespaces, in front
    /// of the same Dovecot): start its daemon with [`InterceptorOptions::node`]
    /// `Node::EdgeRouter`.
    pub fn with_second_edge(options: DovecotOptions) -> Self {
        let mut topo = Topology::new().expect("topology");
        topo.add_edge().expect("second edge");
        Self::on(topo, options)
    }

    fn on(topo: Topology, options: DovecotOptions) -> Self {
        let dc = Dovecot::start_with(&topo, options).expect("dovecot");
        Self {
            ic: None,
            edge_ic: None,
            dc,
            topo,
        }
    }

    /// Starts the daemon with `args` after `run`, stopping the one running first.
    pub fn start_daemon(&mut self, args: &[&str]) -> &mut Interceptor {
        self.start_daemon_with(InterceptorOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
    }

    /// Starts the daemon with `options` on its router (`options.node`), stopping the one
    /// running there first.
    pub fn start_daemon_with(&mut self, options: InterceptorOptions) -> &mut Interceptor {
        let node = options.node;
        *self.slot(node) = None;
        let ic = Interceptor::start_with(&self.topo, options).expect("interceptor");
        self.slot(node).insert(ic)
    }

    fn slot(&mut self, router: Node) -> &mut Option<Interceptor> {
        match router {
            Node::EdgeRouter => &mut self.edge_ic,
            _ => &mut self.ic,
        }
    }

    /// Stops the daemon (killed by pid, pins removed): clients reach Dovecot directly.
    pub fn stop_daemon(&mut self) {
        self.ic = None;
    }

    /// The daemon. Panics when none was started.
    pub fn ic(&self) -> &Interceptor {
        self.ic.as_ref().expect("no daemon started")
    }

    /// The second edge's daemon. Panics when none was started.
    pub fn edge_ic(&self) -> &Interceptor {
        self.edge_ic
            .as_ref()
            .expect("no daemon started on the second edge")
    }

    pub fn ic_mut(&mut self) -> &mut Interceptor {
        self.ic.as_mut().expect("no daemon started")
    }

    /// A mail check of `user` with its password, as a mail client polls (poplib: USER,
    /// PASS, STAT, QUIT); it must succeed. Returns the STAT answer, `"COUNT SIZE"`.
    pub fn check(&self, user: &str) -> String {
        let pass = self.dc.password(user).expect("a fixture user");
        let opts = PoplibOptions {
            retr: false,
            ..Default::default()
        };
        let t = clients::poplib(&self.topo, server_pop3_v4(), user, pass, &opts).unwrap();
        assert!(t.ok(), "{}", t.normalized());
        t.get_str("stat").unwrap_or_default().to_string()
    }

    /// A raw session from the client namespace to the mail server's POP3 port, greeting
    /// read (it must be `+OK`).
    pub fn connect(&self) -> RawSession {
        self.connect_from(Node::Client)
    }

    /// [`Env::connect`] from `client`'s namespace (`Node::EdgeClient`: behind the second
    /// edge).
    pub fn connect_from(&self, client: Node) -> RawSession {
        let mut s = RawSession::connect(&self.topo, client, server_pop3_v4()).expect("connect");
        s.set_timeout(Duration::from_secs(20)).unwrap();
        let greeting = s.read_line().unwrap();
        assert!(greeting.starts_with("+OK"), "{greeting}");
        s
    }

    /// A raw session from `client` logged in as `user` with its password (USER, PASS: it
    /// must succeed).
    pub fn login_from(&self, client: Node, user: &str) -> RawSession {
        let pass = self.dc.password(user).expect("a fixture user");
        let mut s = self.connect_from(client);
        s.command(&format!("USER {user}")).unwrap();
        let reply = s.command(&format!("PASS {pass}")).unwrap();
        assert!(reply.starts_with("+OK"), "{reply}");
        s
    }

    /// A mail check from `client` as a raw session (USER, PASS, STAT, QUIT); returns the
    /// STAT count.
    pub fn check_from(&self, client: Node, user: &str) -> u64 {
        let mut s = self.login_from(client, user);
        let stat = s.command("STAT").unwrap();
        let count = stat.split_whitespace().nth(1).and_then(|n| n.parse().ok());
        s.command("QUIT").unwrap();
        count.unwrap_or_else(|| panic!("STAT: {stat}"))
    }

    /// `GET http://addr/metrics` with curl from the router namespace, parsed.
    pub fn scrape(&self, addr: &str) -> HashMap<String, f64> {
        self.scrape_on(Node::Router, addr)
    }

    /// [`Env::scrape`] from `router`'s namespace.
    pub fn scrape_on(&self, router: Node, addr: &str) -> HashMap<String, f64> {
        let out = self
            .curl_on(router, &[&format!("http://{addr}/metrics")])
            .check("curl /metrics")
            .unwrap();
        prometheus::parse(&out.stdout_str())
    }

    /// curl with `args` in the router namespace (5 s at most, no proxy).
    pub fn curl(&self, args: &[&str]) -> crate::CmdOutput {
        self.curl_on(Node::Router, args)
    }

    /// [`Env::curl`] in `node`'s namespace.
    pub fn curl_on(&self, node: Node, args: &[&str]) -> crate::CmdOutput {
        let mut all = vec!["curl", "-sS", "--noproxy", "*", "--max-time", "5"];
        all.extend_from_slice(args);
        self.topo.exec(node, &all).expect("curl runs")
    }
}
