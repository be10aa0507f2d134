//! The bench's runs: the load generator against one path at a time, with the CPU time of
//! the process on the path, and the daemon started in each of its modes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::interceptor::NO_PER_SOURCE_LIMITS;
use e2e::topology::server_pop3_v4;
use e2e::{Dovecot, Interceptor, InterceptorOptions, Node, Topology};
use serde::Serialize;

use super::{
    BENCH_PASS, BENCH_PREFIX, BIG_USER, BenchArgs, Measurement, Path, Scenario, cpu, peers,
    scenarios,
};
use crate::loadgen::LoadReport;

pub(super) struct Bench<'a> {
    pub args: &'a BenchArgs,
    pub topo: &'a Topology,
    /// The release xtask binary that runs the load generator.
    pub exe: PathBuf,
}

impl Bench<'_> {
    /// Runs `sc` against `target` from the client namespace, stopping after `max_sessions`
    /// check sessions if given.
    pub fn loadgen(
        &self,
        target: SocketAddr,
        sc: &Scenario,
        max_sessions: Option<u64>,
    ) -> Result<LoadReport> {
        let exe = self.exe.display().to_string();
        let mut args: Vec<String> = vec![
            exe,
            "loadgen".into(),
            "--json".into(),
            "--target".into(),
            target.to_string(),
            "--mode".into(),
            sc.mode.into(),
            "--pass".into(),
            BENCH_PASS.into(),
            "--concurrency".into(),
            sc.concurrency.to_string(),
        ];
        let limit = if sc.mode == "retr" {
            args.extend(["--user".into(), BIG_USER.into()]);
            args.extend(["--duration".into(), "60s".into()]);
            args.extend(["--max-sessions".into(), self.args.retr_count.to_string()]);
            Duration::from_secs(120)
        } else {
            args.extend(["--user-prefix".into(), BENCH_PREFIX.into()]);
            args.extend(["--user-count".into(), self.args.users.to_string()]);
            args.extend([
                "--duration".into(),
                format!("{}ms", self.args.duration.as_millis()),
            ]);
            if let Some(n) = max_sessions {
                args.extend(["--max-sessions".into(), n.to_string()]);
            }
            self.args.duration + Duration::from_secs(60)
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .topo
            .exec_with(Node::Client, &argv, None, limit)?
            .check("loadgen")?;
        let r: LoadReport = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("loadgen output: {}", out.stdout_str()))?;
        Ok(r)
    }

    /// Runs every scenario of `path` against `target` (the daemon's with `workers`);
    /// `cpu_pid` is the process on the path whose CPU time each run costs.
    pub fn measure(
        &self,
        (path, workers): (Path, Option<usize>),
        target: SocketAddr,
        cpu_pid: Option<u32>,
        out: &mut Vec<Measurement>,
    ) -> Result<()> {
        let loads = match workers {
            Some(n) if n > 1 => super::workers::scenarios(&self.args.workers_concurrency),
            _ => scenarios(self.args, path),
        };
        for sc in loads {
            let label = super::workers::label(path, workers);
            eprint!("bench: {label:<10} {:<16} ... ", sc.name());
            let before = cpu_pid.map(cpu::tree_cpu).transpose()?;
            let r = self.loadgen(target, &sc, None)?;
            let used = match (cpu_pid, before) {
                (Some(pid), Some(b)) => Some(cpu::tree_cpu(pid)?.saturating_sub(b)),
                _ => None,
            };
            let cpu_us_per_session = used.map(|u| u.as_secs_f64() * 1e6 / r.sessions.max(1) as f64);
            eprintln!(
                "{} sessions, {} errors, {:.0}/s, p50 {} us, p99 {} us{}{}",
                r.sessions,
                r.errors,
                r.sessions_per_s,
                r.p50_us,
                r.p99_us,
                cpu_us_per_session
                    .map(|c| format!(", {c:.0} us CPU/session"))
                    .unwrap_or_default(),
                if sc.mode == "retr" {
                    format!(", {:.1} MB/s", r.mb_per_s)
                } else {
                    String::new()
                }
            );
            if !r.first_errors.is_empty() {
                eprintln!("bench:   errors: {:?}", r.first_errors);
            }
            out.push(Measurement {
                path,
                round: 1,
                scenario: sc,
                report: r,
                cpu_us_per_session,
                workers,
            });
        }
        Ok(())
    }

    /// The peers' rows: nginx's mail proxy, the ideal relay, then the ideal responder, each
    /// alone on the path.
    pub fn measure_peers(&self, out: &mut Vec<Measurement>) -> Result<()> {
        let dir = self.topo.dir().join("peers");
        let nginx = peers::start_nginx(self.topo, &dir).context("starting nginx's mail proxy")?;
        self.measure((Path::Nginx, None), nginx.addr, Some(nginx.pid()), out)?;
        drop(nginx);
        let relay = peers::start_ideal_relay(self.topo, &self.exe, &dir)
            .context("starting the ideal relay")?;
        self.measure((Path::IdealRelay, None), relay.addr, Some(relay.pid()), out)?;
        drop(relay);
        let ideal = peers::start_ideal(self.topo, &self.exe, &dir)
            .context("starting the ideal responder")?;
        self.measure((Path::Ideal, None), ideal.addr, Some(ideal.pid()), out)
    }

    /// The daemon's arguments for `mode` with `workers`, the bench's own first.
    fn daemon_opts(&self, bin: &std::path::Path, mode: &str, workers: usize) -> InterceptorOptions {
        let mut extra_args = vec!["--mode".to_string(), mode.to_string()];
        extra_args.extend(["--workers".to_string(), workers.to_string()]);
        extra_args.extend(["--dataplane".to_string(), self.args.dataplane.clone()]);
        // The load generator is one subscriber: the per-source limits are not for it.
        extra_args.extend(NO_PER_SOURCE_LIMITS.map(String::from));
        if mode == "attenuate"
            && !self
                .args
                .daemon_args
                .iter()
                .any(|a| a.starts_with("--interval"))
        {
            // Far longer than the run: every check after the warm-up may be attenuated.
            extra_args.extend(["--interval".to_string(), "15m".to_string()]);
        }
        extra_args.extend(self.args.daemon_args.iter().cloned());
        InterceptorOptions {
            bin: Some(bin.to_path_buf()),
            extra_args,
            ..Default::default()
        }
    }

    /// The relay rows: the daemon in relay mode with `workers`.
    pub fn measure_relay(
        &self,
        bin: &std::path::Path,
        workers: usize,
        out: &mut Vec<Measurement>,
    ) -> Result<()> {
        let mut icpt = Interceptor::start_with(self.topo, self.daemon_opts(bin, "relay", workers))
            .context("starting the interceptor (relay)")?;
        let path = (Path::Relay, Some(workers));
        let res = self.measure(path, server_pop3_v4(), Some(icpt.pid()), out);
        icpt.terminate(Duration::from_secs(10));
        res
    }

    /// The attenuation rows: the daemon in attenuate mode with `workers`, its table warmed
    /// by one check per user, then the attenuated checks; Dovecot's log says how many logins
    /// they cost.
    pub fn measure_attenuated(
        &self,
        bin: &std::path::Path,
        dovecot: &Dovecot,
        workers: usize,
        out: &mut Vec<Measurement>,
    ) -> Result<AttenuationCheck> {
        let opts = self.daemon_opts(bin, "attenuate", workers);
        let mut icpt = Interceptor::start_with(self.topo, opts)
            .context("starting the interceptor (attenuate)")?;
        let first = out.len();
        let res = (|| -> Result<AttenuationCheck> {
            let settle = |at_least: usize| {
                // Dovecot's log process writes asynchronously.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while dovecot.logins().len() < at_least && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(500));
                dovecot.logins().len()
            };
            let before = settle(0);
            let users = self.args.users;
            eprint!("bench: {:<10} {:<16} ... ", "attenuated", "warm-up, 1/user");
            let one = Scenario {
                mode: "check",
                concurrency: 1,
            };
            let warm = self.loadgen(server_pop3_v4(), &one, Some(users))?;
            eprintln!("{} sessions, {} errors", warm.sessions, warm.errors);
            if warm.sessions != users || warm.errors != 0 {
                bail!(
                    "warm-up: {} sessions and {} errors for {users} users: {:?}",
                    warm.sessions,
                    warm.errors,
                    warm.first_errors
                );
            }
            let warmed = settle(before + users as usize);
            let path = (Path::Attenuated, Some(workers));
            self.measure(path, server_pop3_v4(), Some(icpt.pid()), out)?;
            let after = settle(0);
            Ok(AttenuationCheck {
                workers,
                warm_sessions: warm.sessions,
                warm_logins: warmed - before,
                sessions: out[first..].iter().map(|m| m.report.sessions).sum(),
                logins: after - warmed,
                engine_counters: None,
                fill_ring_empty: None,
                syns_refused: None,
                challenge_acks: None,
            })
        })();
        icpt.terminate(Duration::from_secs(10));
        let mut check = res?;
        let log = icpt.log_text();
        check.fill_ring_empty = logged_count(&log, "fill_ring_empty");
        check.syns_refused = [
            "conns_refused_full",
            "conns_refused_source_conns",
            "conns_refused_source_half_open",
            "conns_refused_source_rate",
        ]
        .into_iter()
        .map(|field| logged_count(&log, field))
        .sum();
        check.challenge_acks = logged_count(&log, "challenge_acks");
        check.engine_counters = icpt.log_text().lines().find_map(|l| {
            let i = l.find("engine=Some(")?;
            let rest = &l[i + "engine=Some(".len()..];
            Some(rest[..rest.find(')').unwrap_or(rest.len())].to_string())
        });
        Ok(check)
    }
}

/// What Dovecot saw of the attenuated runs.
#[derive(Debug, Default, Serialize)]
pub(super) struct AttenuationCheck {
    /// Warm-up sessions (one per user, passed through to Dovecot).
    warm_sessions: u64,
    /// The daemon's `--workers` (the workers share one table: one warm-up check per user
    /// for any number of them).
    workers: usize,
    /// Dovecot logins during the warm-up.
    warm_logins: usize,
    /// Check sessions completed in the attenuated runs.
    sessions: u64,
    /// Dovecot logins during the attenuated runs (target: about 0).
    logins: usize,
    /// The daemon's engine counters, as logged at SIGTERM.
    engine_counters: Option<String>,
    /// Frames the kernel dropped because the daemon's AF_XDP fill ring was empty (its
    /// `DataplaneStats`, logged at SIGTERM): each one is a TCP loss a client recovers from
    /// only by retransmitting.
    fill_ring_empty: Option<u64>,
    /// SYNs the daemon refused with an RST (connection limits; its `DataplaneStats`):
    /// a client sees each as a reset `connect`.
    syns_refused: Option<u64>,
    /// Segments out of the window (RFC 5961) answered with a challenge ACK.
    challenge_acks: Option<u64>,
}

/// The counter `field` of the daemon's stats as logged at SIGTERM (`field: N`, once per
/// worker on one line), summed over the workers.
fn logged_count(log: &str, field: &str) -> Option<u64> {
    let pattern = format!("{field}: ");
    log.lines().find(|l| l.contains(&pattern)).map(|line| {
        line.match_indices(&pattern)
            .filter_map(|(at, _)| {
                let rest = &line[at + pattern.len()..];
                rest[..rest.find(|c: char| !c.is_ascii_digit())?]
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    })
}

/// What the attenuated runs cost Dovecot, and the daemon's counters.
pub(super) fn print_attenuation_check(a: &AttenuationCheck) {
    println!(
        "  {} worker(s): Dovecot logins: warm-up {} for {} sessions; attenuated runs {} for {} sessions",
        a.workers, a.warm_logins, a.warm_sessions, a.logins, a.sessions
    );
    if let Some(c) = &a.engine_counters {
        println!("  daemon engine counters at exit: {c}");
    }
    if let Some(n) = a.fill_ring_empty {
        println!(
            "  frames dropped by the kernel for want of a fill-ring frame (attenuate runs): {n}"
        );
    }
    if let (Some(refused), Some(challenged)) = (a.syns_refused, a.challenge_acks) {
        println!("  SYNs refused with an RST: {refused}; challenge ACKs: {challenged}");
    }
}

#[cfg(test)]
mod tests {
    use super::logged_count;

    #[test]
    fn logged_counts_are_summed_over_the_workers() {
        let log = "INFO started\n\
                   INFO stopping stats=[DataplaneStats { challenge_acks: 2, fill_ring_empty: 0 }, \
                   DataplaneStats { challenge_acks: 5, fill_ring_empty: 1 }]\n";
        assert_eq!(logged_count(log, "challenge_acks"), Some(7));
        assert_eq!(logged_count(log, "fill_ring_empty"), Some(1));
        assert_eq!(logged_count(log, "conns_refused_full"), None);
    }
}
