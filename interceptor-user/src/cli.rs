//! Command-line interface of the `pop3-interceptor` binary.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::{
    choice::{DataplaneKind, TcAttach, XdpMode},
    dataplane::workers::WorkerCount,
    settings::EngineMode,
    status::SortBy,
};

/// Cuts empty POP3 checks off at the edge router: XDP -> AF_XDP -> userspace TCP ->
/// attenuation engine -> real mail server.
#[derive(Debug, Parser)]
#[command(name = "pop3-interceptor", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to an interface and intercept POP3 until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Show the attach point, counters, attenuated users and sessions from the pinned maps.
    Status(StatusArgs),
    /// Remove a stale XDP attachment and pins left by a killed daemon.
    Detach(DetachArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Folder on a bpffs where the daemon pinned its maps.
    #[arg(long, default_value = common::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How to order the users.
    #[arg(long, value_enum, default_value_t = SortBy::LastCheck)]
    pub sort: SortBy,
    /// Only this user (matched byte for byte, as the client sent it) and their sessions.
    #[arg(long, value_name = "NAME")]
    pub user: Option<std::ffi::OsString>,
    /// Show at most N users and N sessions, with a count of the rest (0: all).
    #[arg(long, value_name = "N", default_value_t = crate::status::DEFAULT_LIMIT)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The interface the daemon was attached to.
    #[arg(long)]
    pub iface: String,
    /// Folder on a bpffs where the daemon pinned its maps.
    #[arg(long, default_value = common::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Flags of `run`. Each one overrides the same key of the `--config` file; the defaults
/// are listed in README.md and in `packaging/pop3-interceptor.toml`.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML config file with any of the settings below (same names, kebab-case).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The subscriber-facing interface to attach to.
    #[arg(long)]
    pub iface: Option<String>,
    /// Dataplane: `xdp`, `tc`, or `auto` (tc on veth, where XDP slows all other traffic,
    /// and where XDP cannot attach) [default: auto].
    #[arg(long, value_enum)]
    pub dataplane: Option<DataplaneKind>,
    /// XDP attach mode; `auto` is generic on veth, else native where the driver has it
    /// [default: auto].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Dataplane worker threads, each with its own frame queues, TCP stacks and engine
    /// (one user table and one set of connection limits for all), pinned to a core when
    /// more than one: a number, or `auto` (one per RX queue of the interface, at most one
    /// per CPU) [default: 1].
    #[arg(long)]
    pub workers: Option<WorkerCount>,
    /// How the TC dataplane attaches: a TCX link, or a clsact filter through netlink (for
    /// kernels before 6.6); `auto` is TCX where the kernel has it [default: auto].
    #[arg(long, value_enum)]
    pub tc_attach: Option<TcAttach>,
    /// Intercepted TCP ports [default: 110].
    #[arg(long, value_delimiter = ',')]
    pub ports: Option<Vec<u16>>,
    /// Mail-server prefixes to intercept (CIDR); none means any destination.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub servers: Option<Vec<IpNet>>,
    /// Folder on a bpffs for the pinned maps [default: /sys/fs/bpf/pop3-interceptor].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Keep the pinned maps after exit.
    #[arg(long)]
    pub keep_pins: bool,
    /// `attenuate` answers empty checks locally; `relay` only relays [default: attenuate].
    #[arg(long, value_enum)]
    pub mode: Option<EngineMode>,
    /// How long a mailbox the server said is empty is trusted, e.g. 5s, 90s, 15m; with
    /// --interval-max, the n under no load [default: 15m].
    #[arg(long, alias = "interval-min", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// The patent's load-adaptive n: under load n rises from --interval (alias
    /// --interval-min) up to this [default: off].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval_max: Option<Duration>,
    /// Upstream login latency that counts as full load for --interval-max [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub load_latency: Option<Duration>,
    /// Checks per second that count as full load for --interval-max [default: not used].
    #[arg(long, value_name = "PER_SEC")]
    pub load_check_rate: Option<NonZeroU32>,
    /// Usernames never attenuated (always passed through to the server).
    #[arg(long, value_delimiter = ',')]
    pub opt_out: Option<Vec<String>>,
    /// Most users in the attenuation table [default: 1000000].
    #[arg(long)]
    pub table_size: Option<usize>,
    /// Close a POP3 session idle for this long (RFC 1939: at least 10m) [default: 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub autologout: Option<Duration>,
    /// Re-learn a mail server's capabilities (STLS, SASL, XCLIENT) once they are this old [default: 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub caps_ttl: Option<Duration>,
    /// Timeout for the TCP handshake with the mail server [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// How long the mail server may stay silent when it owes an answer [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub response_timeout: Option<Duration>,
    /// Most concurrent intercepted connections [default: 4096].
    #[arg(long)]
    pub max_conns: Option<usize>,
    /// Drop a connection with no packets for this long [default: 15m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Connections one client address may have open at once, half-open ones included;
    /// 0 = no limit [default: 128].
    #[arg(long)]
    pub max_conns_per_source: Option<u32>,
    /// Connections one client address may have in their handshake at once; 0 = no limit
    /// [default: 32].
    #[arg(long)]
    pub max_half_open_per_source: Option<u32>,
    /// New connections per second one client address may open (bursts of as many);
    /// 0 = no limit [default: 100].
    #[arg(long)]
    pub syn_rate_per_source: Option<u32>,
    /// Also intercept private destinations (10/8, 100.64/10, 172.16/12, 192.168/16, fc00::/7).
    #[arg(long)]
    pub intercept_private: bool,
    /// Reap a half-closed connection (CLOSE_WAIT, FIN_WAIT_2, ...) after this long, however
    /// many keep-alive ACKs it gets [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub fin_timeout: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9110 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Accept new-mail notifications from mail servers at http://ADDR/notify (the demand
    /// rule; needs --notify-secret-file) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub notify_listen: Option<SocketAddr>,
    /// File holding the shared secret notifications must carry (bearer token or basic-auth password).
    #[arg(long, value_name = "PATH")]
    pub notify_secret_file: Option<PathBuf>,
    /// Most notification requests per second [default: 1000].
    #[arg(long)]
    pub notify_rate: Option<NonZeroU32>,
    /// Fan notifications out to the other edges through this NATS broker, e.g.
    /// nats://203.0.113.5:4222: publish those taken over HTTP, apply those received
    /// (needs --notify-listen; every edge shares the secret) [default: off].
    #[arg(long, value_name = "URL")]
    pub notify_nats: Option<String>,
    /// The NATS subject notifications travel on [default: pop3-interceptor.new-mail].
    #[arg(long, value_name = "SUBJECT")]
    pub notify_subject: Option<String>,
    /// How long a verified mailbox is trusted for users of a server that notifies [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub notify_interval: Option<Duration>,
    /// A server that sent no notification for this long is treated as not notifying [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub notify_silence: Option<Duration>,
    /// The patent's one-in-m rule: of M consecutive checks of a user that could be answered
    /// at the edge, the M-th goes to the server anyway [default: off].
    #[arg(long, value_name = "M")]
    pub one_in_m: Option<NonZeroU32>,
    /// The patent's fast-check reward: K checks of a user within WINDOW, e.g. `3/20s`; the
    /// K-th goes to the server, then fast checks stay at the edge for --fast-check-penalty
    /// [default: off].
    #[arg(long, value_name = "K/WINDOW", value_parser = fast_check_spec)]
    pub fast_check: Option<FastCheckSpec>,
    /// How long fast checks stay at the edge after a rewarded one [default: 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub fast_check_penalty: Option<Duration>,
    /// The patent's periodicity rule: n times FACTOR for users whose checks are
    /// metronomic (automated), n over FACTOR for irregular ones (people); pollers get
    /// no fast-check reward [default: off].
    #[arg(long, value_name = "FACTOR")]
    pub periodicity: Option<NonZeroU32>,
    /// RFC 2449 LOGIN-DELAY advertised in CAPA, in seconds (or e.g. 2m) [default: off].
    #[arg(long, value_name = "SECS", value_parser = whole_seconds)]
    pub login_delay: Option<Duration>,
    /// What a check sooner than --login-delay gets: `local` (answered from the view
    /// held) or `refuse` (`-ERR [LOGIN-DELAY]`) [default: local].
    #[arg(long, value_enum)]
    pub login_delay_action: Option<LoginDelayChoice>,
    /// Most memory for the maildrop snapshots of clients that keep their mail on the
    /// server, in MiB; past it such users reach the server [default: 64].
    #[arg(long, value_name = "MIB")]
    pub maildrop_budget_mb: Option<usize>,
    /// The edge cache's folder: RETRs of passed-through sessions are answered from the
    /// copies kept there when the server's UIDL and size match [default: off].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the edge cache keeps for one user, in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub cache_user_mb: Option<u64>,
    /// Most bytes the edge cache keeps in all, in MiB [default: 10240].
    #[arg(long, value_name = "MIB")]
    pub cache_total_mb: Option<u64>,
    /// Users mirrored in the pinned USERS map for bpftool and `status` [default: 65536].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub mirror_size: Option<u32>,
}

/// `--login-delay-action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LoginDelayChoice {
    /// Answered at the edge from the view held.
    #[default]
    Local,
    /// `-ERR [LOGIN-DELAY]`.
    Refuse,
}

/// A positive whole number of seconds: `60` or `1m` (also the config file's form).
pub fn whole_seconds(text: &str) -> Result<Duration, String> {
    let d = match text.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?}: {e}"))?,
    };
    if d.subsec_nanos() != 0 || d.is_zero() {
        return Err(format!("{text:?}: a positive whole number of seconds"));
    }
    Ok(d)
}

/// `K/WINDOW` of `--fast-check`: K checks within WINDOW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastCheckSpec {
    pub count: NonZeroU32,
    pub window: Duration,
}

/// Reads `K/WINDOW`, e.g. `3/20s` (also the config file's form).
pub fn fast_check_spec(text: &str) -> Result<FastCheckSpec, String> {
    let (count, window) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: write K/WINDOW, e.g. 3/20s"))?;
    let count = count
        .trim()
        .parse::<NonZeroU32>()
        .map_err(|e| format!("{text:?}: K: {e}"))?;
    if count.get() < 2 {
        return Err(format!("{text:?}: K must be at least 2"));
    }
    let window = humantime::parse_duration(window.trim()).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(FastCheckSpec { count, window })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_login_delays_in_whole_seconds() {
        assert_eq!(whole_seconds("60"), Ok(Duration::from_secs(60)));
        assert_eq!(whole_seconds("2m"), Ok(Duration::from_secs(120)));
        for bad in ["0", "1.5s", "-3", "soon"] {
            assert!(whole_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_fast_check_specs() {
        let spec = fast_check_spec("3/20s").unwrap();
        assert_eq!(
            (spec.count.get(), spec.window),
            (3, Duration::from_secs(20))
        );
        assert_eq!(
            fast_check_spec(" 2 / 1m").unwrap().window,
            Duration::from_secs(60)
        );
        for bad in ["3", "1/20s", "0/20s", "x/20s", "3/soon", ""] {
            assert!(fast_check_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_into_settings_overrides() {
        let cli = Cli::try_parse_from([
            "pop3-interceptor",
            "run",
            "--iface",
            "eth1",
            "--interval",
            "90s",
            "--servers",
            "203.0.113.0/24,2001:db8::/32",
            "--opt-out",
            "alice,bob",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed as run");
        };
        assert_eq!(args.iface.as_deref(), Some("eth1"));
        assert_eq!(args.interval, Some(Duration::from_secs(90)));
        assert_eq!(args.servers.unwrap().len(), 2);
        assert_eq!(args.opt_out.unwrap(), ["alice", "bob"]);
        assert!(Cli::try_parse_from(["pop3-interceptor", "run", "--interval", "soon"]).is_err());
    }
}
