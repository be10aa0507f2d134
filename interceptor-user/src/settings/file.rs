//! The config file's format: every `run` flag as an optional TOML key.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use super::{EngineMode, SettingsError};
use crate::{
    choice::{DataplaneKind, TcAttach, XdpMode},
    dataplane::workers::WorkerCount,
};

/// The config file. Every key is optional and named like the `run` flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSettings {
    pub iface: Option<String>,
    pub dataplane: Option<DataplaneKind>,
    pub xdp_mode: Option<XdpMode>,
    pub workers: Option<WorkerCount>,
    pub tc_attach: Option<TcAttach>,
    pub ports: Option<Vec<u16>>,
    pub servers: Option<Vec<IpNet>>,
    pub pin_dir: Option<PathBuf>,
    pub keep_pins: Option<bool>,
    pub mode: Option<EngineMode>,
    #[serde(default, with = "humantime_serde", alias = "interval-min")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub interval_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub load_latency: Option<Duration>,
    pub load_check_rate: Option<NonZeroU32>,
    pub opt_out: Option<Vec<String>>,
    pub table_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub autologout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub caps_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    pub max_conns: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub intercept_private: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub fin_timeout: Option<Duration>,
    pub max_conns_per_source: Option<u32>,
    pub max_half_open_per_source: Option<u32>,
    pub syn_rate_per_source: Option<u32>,
    pub metrics: Option<SocketAddr>,
    pub mirror_size: Option<u32>,
    pub notify_listen: Option<SocketAddr>,
    pub notify_secret_file: Option<PathBuf>,
    pub notify_rate: Option<NonZeroU32>,
    pub notify_nats: Option<String>,
    pub notify_subject: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub notify_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub notify_silence: Option<Duration>,
    pub maildrop_budget_mb: Option<usize>,
    pub cache_dir: Option<PathBuf>,
    pub cache_user_mb: Option<u64>,
    pub cache_total_mb: Option<u64>,
    /// The `[prefetch]` table: fills the edge cache in quiet hours.
    pub prefetch: Option<crate::prefetch::config::PrefetchFile>,
    pub one_in_m: Option<NonZeroU32>,
    pub fast_check: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub fast_check_penalty: Option<Duration>,
    pub periodicity: Option<NonZeroU32>,
    /// Seconds.
    pub login_delay: Option<u64>,
    pub login_delay_action: Option<crate::cli::LoginDelayChoice>,
}

impl FileSettings {
    /// Reads and parses the file at `path`; unknown keys are errors.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| SettingsError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }
}
