//! The daemon's settings: the `--config` TOML file overlaid with command-line flags.

mod file;

use std::{
    collections::HashSet,
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use pop3_engine::{attenuation, secret::Secret};
use serde::Deserialize;
use thiserror::Error;

pub use file::FileSettings;

use crate::{
    choice::{DataplaneKind, TcAttach, XdpMode},
    cli::RunArgs,
    dataplane::{sources::SourceLimits, workers::WorkerCount},
    fanout::FanoutConfig,
    notify::NotifyConfig,
};

/// Which POP3 engine terminates the sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EngineMode {
    /// The patent's attenuation engine: empty checks are answered at the edge.
    #[default]
    Attenuate,
    /// A transparent relay: every session reaches the server unchanged.
    Relay,
}

/// Everything `run` needs, defaults applied.
#[derive(Clone, Debug)]
pub struct Settings {
    pub iface: String,
    pub dataplane: DataplaneKind,
    pub xdp_mode: XdpMode,
    /// How many dataplane workers.
    pub workers: WorkerCount,
    pub tc_attach: TcAttach,
    pub ports: Vec<u16>,
    pub servers: Vec<IpNet>,
    pub pin_dir: PathBuf,
    pub keep_pins: bool,
    pub mode: EngineMode,
    pub engine: attenuation::Config,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_conns: usize,
    pub idle_timeout: Duration,
    /// Private destinations are intercepted too (they are excluded by default).
    pub intercept_private: bool,
    /// How long a half-closed connection may stay.
    pub fin_timeout: Duration,
    /// Per-subscriber limits on connections and SYNs.
    pub per_source: SourceLimits,
    /// Where to serve Prometheus metrics (`None`: not served).
    pub metrics: Option<SocketAddr>,
    /// Capacity of the pinned `USERS` map (users beyond it are not mirrored).
    pub mirror_size: u32,
    /// The new-mail notification endpoint (`None`: off).
    pub notify: Option<NotifyConfig>,
    /// Where the settings came from, for reloading the opt-out list.
    pub config_file: Option<PathBuf>,
    /// The edge cache's folder and limits (`None`: off).
    pub cache: Option<(PathBuf, crate::cache::store::Limits)>,
    /// The edge cache's prefetch (`None`: off).
    pub prefetch: Option<crate::prefetch::config::Config>,
}

/// A setting that cannot be used.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("no interface: pass --iface IF or set iface in the config file")]
    NoInterface,
}

impl Settings {
    /// The config file (if any) with the flags on top, then the defaults.
    pub fn resolve(args: RunArgs) -> Result<Self, SettingsError> {
        let file = match &args.config {
            Some(path) => FileSettings::load(path)?,
            None => FileSettings::default(),
        };
        let defaults = attenuation::Config::default();
        let interval = args.interval.or(file.interval).unwrap_or(defaults.interval);
        let load_adaptive = match args.interval_max.or(file.interval_max) {
            None => None,
            Some(max) if max < interval => {
                return Err(invalid("interval-max", "must be at least --interval"));
            }
            Some(max) => Some(attenuation::LoadAdaptive {
                max,
                latency: args
                    .load_latency
                    .or(file.load_latency)
                    .unwrap_or(Duration::from_secs(1)),
                check_rate: args.load_check_rate.or(file.load_check_rate),
            }),
        };
        let login_delay = match args.login_delay.map(Ok).or(file
            .login_delay
            .map(|secs| crate::cli::whole_seconds(&secs.to_string())))
        {
            None => None,
            Some(Err(message)) => return Err(invalid("login-delay", &message)),
            Some(Ok(delay)) => Some(attenuation::LoginDelay {
                delay,
                action: match args
                    .login_delay_action
                    .or(file.login_delay_action)
                    .unwrap_or_default()
                {
                    crate::cli::LoginDelayChoice::Local => attenuation::LoginDelayAction::Local,
                    crate::cli::LoginDelayChoice::Refuse => attenuation::LoginDelayAction::Refuse,
                },
            }),
        };
        let cache = args.cache_dir.or(file.cache_dir).map(|dir| {
            let mb = |mb: u64| mb.saturating_mul(1 << 20);
            let limits = crate::cache::store::Limits {
                per_user: mb(args.cache_user_mb.or(file.cache_user_mb).unwrap_or(256)),
                total: mb(args
                    .cache_total_mb
                    .or(file.cache_total_mb)
                    .unwrap_or(10 << 10)),
            };
            (dir, limits)
        });
        // The engine's load measure, weighed as the load-adaptive n weighs it.
        let load_rule = load_adaptive.unwrap_or(attenuation::LoadAdaptive {
            max: interval,
            latency: args
                .load_latency
                .or(file.load_latency)
                .unwrap_or(Duration::from_secs(1)),
            check_rate: args.load_check_rate.or(file.load_check_rate),
        });
        let relay = args.mode.or(file.mode) == Some(EngineMode::Relay);
        let prefetch = crate::prefetch::config::Config::from_file(
            file.prefetch,
            cache.is_some(),
            relay,
            load_rule,
        )
        .map_err(|(key, message)| invalid(key, &message))?;
        let engine = attenuation::Config {
            interval,
            opt_out: args
                .opt_out
                .or(file.opt_out)
                .map(|users| users.into_iter().collect::<HashSet<_>>())
                .unwrap_or_default(),
            table_size: args
                .table_size
                .or(file.table_size)
                .unwrap_or(defaults.table_size),
            autologout: args
                .autologout
                .or(file.autologout)
                .unwrap_or(defaults.autologout),
            gc_interval: defaults.gc_interval,
            caps_ttl: args.caps_ttl.or(file.caps_ttl).unwrap_or(defaults.caps_ttl),
            notify_interval: args
                .notify_interval
                .or(file.notify_interval)
                .unwrap_or(defaults.notify_interval),
            notify_silence: args
                .notify_silence
                .or(file.notify_silence)
                .unwrap_or(defaults.notify_silence),
            maildrop_budget: args
                .maildrop_budget_mb
                .or(file.maildrop_budget_mb)
                .map_or(defaults.maildrop_budget, |mb| mb << 20),
            one_in_m: args.one_in_m.or(file.one_in_m),
            fast_check: match args
                .fast_check
                .map(Ok)
                .or(file.fast_check.as_deref().map(crate::cli::fast_check_spec))
            {
                None => None,
                Some(Err(message)) => return Err(invalid("fast-check", &message)),
                Some(Ok(spec)) => Some(attenuation::FastCheck {
                    count: spec.count,
                    window: spec.window,
                    penalty: args
                        .fast_check_penalty
                        .or(file.fast_check_penalty)
                        .unwrap_or(Duration::from_secs(300)),
                }),
            },
            periodicity: args.periodicity.or(file.periodicity),
            load_adaptive,
            login_delay,
            cache: cache.is_some(),
        };
        let fanout = args
            .notify_nats
            .or(file.notify_nats)
            .map(|url| FanoutConfig {
                url,
                subject: args
                    .notify_subject
                    .or(file.notify_subject)
                    .unwrap_or_else(|| DEFAULT_SUBJECT.to_owned()),
            });
        if let Some(fanout) = &fanout
            && fanout
                .url
                .split(',')
                .any(|url| url.trim().parse::<async_nats::ServerAddr>().is_err())
        {
            return Err(invalid(
                "notify-nats",
                "a NATS URL, e.g. nats://203.0.113.5:4222 (several: comma-separated)",
            ));
        }
        if let Some(fanout) = &fanout
            && !valid_subject(&fanout.subject)
        {
            return Err(invalid(
                "notify-subject",
                "a NATS subject: dot-separated tokens of printable characters, no wildcards",
            ));
        }
        let notify = match (
            args.notify_listen.or(file.notify_listen),
            args.notify_secret_file.or(file.notify_secret_file),
        ) {
            (None, _) if fanout.is_some() => {
                return Err(invalid(
                    "notify-nats",
                    "the fan-out needs --notify-listen and its secret",
                ));
            }
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "notify-secret-file",
                    "--notify-listen needs a shared secret: never an open endpoint",
                ));
            }
            (Some(listen), Some(path)) => Some(NotifyConfig {
                listen,
                secret: read_secret(&path)?,
                rate: args
                    .notify_rate
                    .or(file.notify_rate)
                    .unwrap_or(NonZeroU32::new(1000).expect("non-zero")),
                fanout,
            }),
        };
        if engine.table_size == 0 {
            return Err(invalid("table-size", "must be at least 1"));
        }
        let ports = args
            .ports
            .or(file.ports)
            .unwrap_or(vec![common::DEFAULT_POP3_PORT]);
        if ports.is_empty() || ports.contains(&0) || ports.len() > common::MAX_PORTS as usize {
            return Err(invalid("ports", "1 to 64 non-zero TCP ports"));
        }
        Ok(Self {
            iface: args
                .iface
                .or(file.iface)
                .ok_or(SettingsError::NoInterface)?,
            dataplane: args
                .dataplane
                .or(file.dataplane)
                .unwrap_or(DataplaneKind::Auto),
            xdp_mode: args.xdp_mode.or(file.xdp_mode).unwrap_or(XdpMode::Auto),
            workers: args
                .workers
                .or(file.workers)
                .unwrap_or(WorkerCount::Fixed(std::num::NonZeroUsize::MIN)),
            tc_attach: args.tc_attach.or(file.tc_attach).unwrap_or(TcAttach::Auto),
            ports,
            servers: args.servers.or(file.servers).unwrap_or_default(),
            pin_dir: args
                .pin_dir
                .or(file.pin_dir)
                .unwrap_or_else(|| common::DEFAULT_PIN_DIR.into()),
            keep_pins: args.keep_pins || file.keep_pins.unwrap_or(false),
            mode: args.mode.or(file.mode).unwrap_or_default(),
            engine,
            connect_timeout: args
                .connect_timeout
                .or(file.connect_timeout)
                .unwrap_or(Duration::from_secs(5)),
            response_timeout: args
                .response_timeout
                .or(file.response_timeout)
                .unwrap_or(Duration::from_secs(30)),
            max_conns: args.max_conns.or(file.max_conns).unwrap_or(4096),
            idle_timeout: args
                .idle_timeout
                .or(file.idle_timeout)
                .unwrap_or(Duration::from_secs(15 * 60)),
            intercept_private: args.intercept_private || file.intercept_private.unwrap_or(false),
            fin_timeout: args
                .fin_timeout
                .or(file.fin_timeout)
                .unwrap_or(Duration::from_secs(60)),
            per_source: SourceLimits {
                max_conns: args
                    .max_conns_per_source
                    .or(file.max_conns_per_source)
                    .unwrap_or(128),
                max_half_open: args
                    .max_half_open_per_source
                    .or(file.max_half_open_per_source)
                    .unwrap_or(32),
                syn_rate: args
                    .syn_rate_per_source
                    .or(file.syn_rate_per_source)
                    .unwrap_or(100),
            },
            metrics: args.metrics.or(file.metrics),
            mirror_size: args
                .mirror_size
                .or(file.mirror_size)
                .unwrap_or(common::DEFAULT_MIRRORED_USERS),
            notify,
            config_file: args.config,
            cache,
            prefetch,
        })
    }
}

/// The subject notifications travel on by default.
pub const DEFAULT_SUBJECT: &str = "pop3-interceptor.new-mail";

/// A subject this edge may publish on: no wildcard, no empty token, no space or control.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 256
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && token.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// The first line of a secret file, which must not be empty.
fn read_secret(path: &Path) -> Result<Secret, SettingsError> {
    let text = std::fs::read(path).map_err(|source| SettingsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let secret = Secret::from(
        text.split(|&b| b == b'\n')
            .next()
            .unwrap_or_default()
            .trim_ascii(),
    );
    if secret.is_empty() {
        return Err(invalid("notify-secret-file", "the file holds no secret"));
    }
    Ok(secret)
}

fn invalid(key: &'static str, message: &str) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
