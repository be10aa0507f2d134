//! `cargo xtask demo`: a client, a router running pop3-interceptor (attenuate mode) on its
//! subscriber-facing veth, and a real Dovecot; a few mail clients poll; then, per user, how many
//! checks were answered at the edge and how many reached Dovecot (Dovecot's own `Login:` lines),
//! and the daemon's engine counters (logged when it stops on SIGTERM).
//!
//! Hooks for more steps: add to `Demo::scenario` (runs with everything up) and to
//! `Demo::report` (after the clients are done).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use e2e::clients::{self, PoplibOptions};
use e2e::dovecot::make_message;
use e2e::topology::server_pop3_v4;
use e2e::{Dovecot, DovecotOptions, Interceptor, InterceptorOptions, Topology};

use crate::run;

#[derive(Args)]
pub struct DemoArgs {
    /// Do not run scripts/setup.sh first.
    #[arg(long)]
    skip_setup: bool,
    /// Do not build the daemon (use the existing release binary).
    #[arg(long)]
    skip_build: bool,
    /// Polling users.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    users: u32,
    /// Checks per user.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    checks: u32,
    /// Pause between rounds of checks, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pause_ms: u64,
    /// The attenuation interval given to the daemon (`--interval`), e.g. 5s, 90s, 15m.
    #[arg(long, default_value = "5s")]
    interval: String,
    /// Extra arguments for `pop3-interceptor run` (repeatable), e.g. --daemon-arg=--opt-out=user01.
    /// `--daemon-arg=--mode=relay` shows the transparent relay instead.
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Run without the interceptor (clients reach Dovecot directly): for comparison.
    #[arg(long)]
    no_interceptor: bool,
}

/// Everything the demo runs, so steps can be added as methods.
pub struct Demo {
    pub args: DemoArgs,
    pub interceptor: Option<Interceptor>,
    pub dovecot: Dovecot,
    pub topo: Topology,
    pub checks_ok: u64,
    pub checks_failed: u64,
    pub checks_by_user: Vec<(String, u64)>,
    /// Dovecot logins per user before the polling clients started.
    pub logins_before: Vec<(String, usize)>,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if !args.skip_setup {
        run::setup()?;
    }
    let bin = if args.skip_build {
        run::daemon_bin()?
    } else {
        run::build_daemon()?
    };

    println!(
        "== building the topology: client 198.51.100.2 -> router (rc0) -> Dovecot 203.0.113.2"
    );
    let topo = Topology::new()?;
    let users: Vec<(String, String)> = (0..args.users)
        .map(|i| (format!("user{i:02}"), format!("secret-{i:02}")))
        .collect();
    let dovecot = Dovecot::start_with(
        &topo,
        DovecotOptions {
            users,
            ..Default::default()
        },
    )?;
    let interceptor = if args.no_interceptor {
        println!("== --no-interceptor: clients go straight through the router's kernel");
        None
    } else {
        println!(
            "== starting {} on rc0 in {}",
            bin.display(),
            topo.ns(e2e::Node::Router)
        );
        let has = |flag: &str| args.daemon_args.iter().any(|a| a.starts_with(flag));
        let mut extra_args = Vec::new();
        if !has("--mode") {
            extra_args.extend(["--mode".to_string(), "attenuate".to_string()]);
        }
        if !has("--interval") {
            extra_args.extend(["--interval".to_string(), args.interval.clone()]);
        }
        extra_args.extend(args.daemon_args.iter().cloned());
        println!("   pop3-interceptor run {}", extra_args.join(" "));
        let opts = InterceptorOptions {
            bin: Some(bin),
            extra_args,
            ..Default::default()
        };
        Some(Interceptor::start_with(&topo, opts).context("starting the interceptor")?)
    };
    let mut demo = Demo {
        args,
        interceptor,
        dovecot,
        topo,
        checks_ok: 0,
        checks_failed: 0,
        checks_by_user: Vec::new(),
        logins_before: Vec::new(),
    };
    demo.scenario()?;
    demo.report()?;
    Ok(ExitCode::SUCCESS)
}

impl Demo {
    fn users(&self) -> Vec<(String, String)> {
        self.dovecot.users().to_vec()
    }

    /// The steps of the demo. Add new ones here.
    pub fn scenario(&mut self) -> Result<()> {
        self.show_one_session()?;
        self.polling_clients()?;
        // Hook: e.g. deliver mail mid-run and show the next check sees it,
        // wrong passwords, a daemon kill -9 (fail-open), ...
        Ok(())
    }

    /// One poplib session, with the message it retrieves, and Dovecot's login line for it.
    pub fn show_one_session(&mut self) -> Result<()> {
        let (user, pass) = self.users()[0].clone();
        self.dovecot.deliver(
            &user,
            &make_message(
                "postmaster@p3i.test.example",
                &user,
                "welcome",
                "Hello from the demo.",
            ),
        )?;
        println!(
            "== one POP3 session by {user} (Python poplib) from the client namespace; it reads and \
             deletes its mail:"
        );
        let opts = PoplibOptions {
            capa: true,
            dele: vec![1],
            ..Default::default()
        };
        let t = clients::poplib(&self.topo, server_pop3_v4(), &user, &pass, &opts)?;
        for l in t.normalized().lines() {
            println!("   {l}");
        }
        self.dovecot
            .wait_login_count(&user, 1, Duration::from_secs(5))
            .ok();
        if let Some(l) = self.dovecot.logins_for(&user).last() {
            println!("   Dovecot logged: {}", l.line);
        }
        Ok(())
    }

    /// `users` x `checks` empty-mailbox checks, alternating curl and poplib.
    pub fn polling_clients(&mut self) -> Result<()> {
        let users = self.users();
        println!(
            "== {} users x {} checks (curl and poplib alternately), {} ms between rounds",
            users.len(),
            self.args.checks,
            self.args.pause_ms
        );
        self.checks_by_user = users.iter().map(|(u, _)| (u.clone(), 0)).collect();
        // Dovecot's log process writes asynchronously.
        std::thread::sleep(Duration::from_millis(300));
        self.logins_before = users
            .iter()
            .map(|(u, _)| (u.clone(), self.dovecot.login_count(u)))
            .collect();
        let start = Instant::now();
        for round in 0..self.args.checks {
            for (i, (u, p)) in users.iter().enumerate() {
                let ok = if (round as usize + i).is_multiple_of(2) {
                    clients::curl_list(&self.topo, server_pop3_v4(), u, p).is_ok()
                } else {
                    let opts = PoplibOptions {
                        retr: false,
                        ..Default::default()
                    };
                    clients::poplib(&self.topo, server_pop3_v4(), u, p, &opts)
                        .map(|t| t.ok())
                        .unwrap_or(false)
                };
                if ok {
                    self.checks_ok += 1;
                    self.checks_by_user[i].1 += 1;
                } else {
                    self.checks_failed += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(self.args.pause_ms));
        }
        println!("   done in {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    }

    /// What the clients, Dovecot and the interceptor each saw. Add lines here.
    pub fn report(&mut self) -> Result<()> {
        // Dovecot's log process writes asynchronously.
        std::thread::sleep(Duration::from_millis(500));
        println!("== results of the polling clients");
        println!(
            "{:<10} {:>14} {:>18} {:>18} {:>18}",
            "user", "client checks", "reached Dovecot", "answered at edge", "login addresses"
        );
        let (mut total_checks, mut total_logins) = (0u64, 0usize);
        for (u, n) in &self.checks_by_user {
            let before = self
                .logins_before
                .iter()
                .find(|(b, _)| b == u)
                .map_or(0, |(_, c)| *c);
            let logins = self.dovecot.logins_for(u);
            let polled = logins.len().saturating_sub(before);
            total_checks += n;
            total_logins += polled;
            let mut rips: Vec<String> = logins[before.min(logins.len())..]
                .iter()
                .map(|l| l.rip.clone())
                .collect();
            rips.sort();
            rips.dedup();
            println!(
                "{u:<10} {n:>14} {polled:>18} {:>18} {:>18}",
                n.saturating_sub(polled as u64),
                rips.join(",")
            );
        }
        println!(
            "{:<10} {total_checks:>14} {total_logins:>18} {:>18}",
            "total",
            total_checks.saturating_sub(total_logins as u64)
        );
        println!(
            "checks by clients: {} ok, {} failed. \"reached Dovecot\" counts Dovecot's Login: \
             lines during the polling; every other successful check was answered at the edge.",
            self.checks_ok, self.checks_failed
        );
        if total_checks > 0 {
            println!(
                "{:.0}% of the checks never reached the mail server",
                100.0 * total_checks.saturating_sub(total_logins as u64) as f64
                    / total_checks as f64
            );
        }
        if let Some(icpt) = self.interceptor.as_mut() {
            let pin = icpt.pin_dir().display().to_string();
            // The daemon publishes its counters to the pinned maps once a second.
            std::thread::sleep(Duration::from_millis(1200));
            if let Ok(out) = icpt.cli(&["status", "--pin-dir", &pin])
                && out.success()
            {
                println!("== pop3-interceptor status:");
                print!("{}", out.stdout_str());
            }
            // What an operator sees with the tools they already have.
            let users = format!("{pin}/USERS");
            let mut bpftool = std::process::Command::new("bpftool");
            bpftool.args(["map", "dump", "pinned", &users]);
            if let Ok(out) = bpftool.output() {
                println!("== bpftool map dump pinned {users}:");
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
            // The daemon logs its engine counters when it stops.
            let (_, clean) = icpt.terminate(Duration::from_secs(10));
            let log = icpt.log_text();
            match log.lines().find_map(|l| {
                let i = l.find("engine=Some(Counters {")?;
                let rest = &l[i + "engine=Some(Counters {".len()..];
                Some(
                    rest[..rest.find('}').unwrap_or(rest.len())]
                        .trim()
                        .to_string(),
                )
            }) {
                Some(c) => {
                    println!("== pop3-interceptor engine counters (logged at SIGTERM):");
                    for kv in c.split(',') {
                        if let Some((k, v)) = kv.split_once(':') {
                            println!("   {:<26} {}", k.trim(), v.trim());
                        }
                    }
                }
                None => {
                    println!(
                        "== pop3-interceptor log (last lines; no engine counters{}):",
                        if clean {
                            ""
                        } else {
                            ", it did not stop cleanly"
                        }
                    );
                    println!("{}", icpt.log_tail(15));
                }
            }
            println!("(log: {}, pins: {pin})", icpt.log_path().display());
        }
        Ok(())
    }
}
