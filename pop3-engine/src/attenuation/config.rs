//! Settings of the attenuation engine. Connecting to the mail server is the
//! dataplane's job (its timeout included), so nothing about sockets is here.

use std::{collections::HashSet, time::Duration};

use thiserror::Error;

/// What the operator chooses about attenuation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The patent's n: how long a mailbox verified empty by the server is trusted.
    pub interval: Duration,
    /// Usernames never attenuated: every command of their sessions reaches the server.
    pub opt_out: HashSet<String>,
    /// Most users kept in the table; bounds memory (see [`super::UserTable`]).
    pub table_size: usize,
    /// A session idle this long is closed (RFC 1939: at least 10 minutes).
    pub autologout: Duration,
    /// How often expired table entries are collected.
    pub gc_interval: Duration,
    /// How long a mail server's learnt capabilities are trusted before the next
    /// session that reaches it asks again (so a new STLS is offered within this).
    pub caps_ttl: Duration,
    /// The patent's demand rule: for users of a mail server that sends new-mail
    /// notifications, a mailbox verified empty is trusted this long (a safety net: the
    /// notification is what ends the attenuation), instead of `interval`.
    pub notify_interval: Duration,
    /// A server that sent no notification for this long is treated as not notifying
    /// again (its users fall back to `interval`).
    pub notify_silence: Duration,
    /// Most bytes of maildrop snapshots (for clients that leave mail on the server)
    /// held for all users together; past it, users get no snapshot and reach the server.
    pub maildrop_budget: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15 * 60),
            opt_out: HashSet::new(),
            table_size: 1_000_000,
            autologout: Duration::from_secs(10 * 60),
            gc_interval: Duration::from_secs(60),
            caps_ttl: Duration::from_secs(10 * 60),
            notify_interval: Duration::from_secs(60 * 60),
            notify_silence: Duration::from_secs(60 * 60),
            maildrop_budget: 64 << 20,
        }
    }
}

/// A duration setting that could not be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("bad duration {0:?}: use a whole number with ms, s, m or h, e.g. 5s, 90s, 15m")]
pub struct BadDuration(pub String);

/// Reads `500ms`, `5s`, `90s`, `15m` or `2h`, the forms of the daemon's duration flags
/// and of the config file.
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let bad = || BadDuration(text.to_owned());
    let text = text.trim();
    if let Some(millis) = text.strip_suffix("ms") {
        return millis.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    let unit = text.chars().last().ok_or_else(bad)?;
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return Err(bad()),
    };
    let count: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    count
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_forms() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "15", "m", "ms", "1.5m", "-1s", "5 d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
