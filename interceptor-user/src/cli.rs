//! Command-line interface of the `pop3-interceptor` binary.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::ebpf::AttachMode;

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
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The subscriber-facing interface to attach to.
    #[arg(long)]
    pub iface: String,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
    /// Intercepted TCP ports.
    #[arg(long, value_delimiter = ',', default_value = "110")]
    pub ports: Vec<u16>,
    /// Mail-server prefixes to intercept (CIDR); none means any destination.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub servers: Vec<IpNet>,
    /// Folder on a bpffs for the pinned maps.
    #[arg(long, default_value = common::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Keep the pinned maps after exit.
    #[arg(long)]
    pub keep_pins: bool,
    /// Timeout for the TCP handshake with the mail server (e.g. 5s, 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub connect_timeout: Duration,
    /// Most concurrent intercepted connections.
    #[arg(long, default_value_t = 4096)]
    pub max_conns: usize,
    /// Drop a connection with no traffic for this long.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    pub idle_timeout: Duration,
}

/// Parses `500ms`, `5s`, `90s`, `15m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with a unit, like 5s or 15m"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(value)),
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
