//! One end-to-end environment: a [`Topology`], a real [`Dovecot`] and, when asked, the
//! daemon under test, torn down daemon first on drop; plus the client sessions most tests
//! share.

use std::{collections::HashMap, time::Duration};

use crate::{
    Dovecot, DovecotOptions, Interceptor, InterceptorOptions, Node, Topology,
    clients::{self, PoplibOptions, RawSession},
    prometheus,
    topology::{TopologyOptions, server_pop3_v4},
};

/// The topology, Dovecot and the daemon (if started). Fields drop in order: the daemon,
/// then Dovecot, then the namespaces.
pub struct Env {
    ic: Option<Interceptor>,
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
        Self::direct_on(TopologyOptions::default(), options)
    }

    /// [`Env::direct`] on a topology built with `topology` (more RX queues, say).
    pub fn direct_on(topology: TopologyOptions, options: DovecotOptions) -> Self {
        let topo = Topology::with_options(topology).expect("topology");
        let dc = Dovecot::start_with(&topo, options).expect("dovecot");
        Self { ic: None, dc, topo }
    }

    /// Starts the daemon with `args` after `run`, stopping the one running first.
    pub fn start_daemon(&mut self, args: &[&str]) -> &mut Interceptor {
        self.start_daemon_with(InterceptorOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
    }

    /// Starts the daemon with `options`, stopping the one running first.
    pub fn start_daemon_with(&mut self, options: InterceptorOptions) -> &mut Interceptor {
        self.ic = None;
        let ic = Interceptor::start_with(&self.topo, options).expect("interceptor");
        self.ic.insert(ic)
    }

    /// Stops the daemon (killed by pid, pins removed): clients reach Dovecot directly.
    pub fn stop_daemon(&mut self) {
        self.ic = None;
    }

    /// The daemon. Panics when none was started.
    pub fn ic(&self) -> &Interceptor {
        self.ic.as_ref().expect("no daemon started")
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
        let mut s =
            RawSession::connect(&self.topo, Node::Client, server_pop3_v4()).expect("connect");
        s.set_timeout(Duration::from_secs(20)).unwrap();
        let greeting = s.read_line().unwrap();
        assert!(greeting.starts_with("+OK"), "{greeting}");
        s
    }

    /// `GET http://addr/metrics` with curl from the router namespace, parsed.
    pub fn scrape(&self, addr: &str) -> HashMap<String, f64> {
        let out = self
            .curl(&[&format!("http://{addr}/metrics")])
            .check("curl /metrics")
            .unwrap();
        prometheus::parse(&out.stdout_str())
    }

    /// curl with `args` in the router namespace (5 s at most, no proxy).
    pub fn curl(&self, args: &[&str]) -> crate::CmdOutput {
        let mut all = vec!["curl", "-sS", "--noproxy", "*", "--max-time", "5"];
        all.extend_from_slice(args);
        self.topo.exec(Node::Router, &all).expect("curl runs")
    }
}
