//! Settings of the attenuation engine. Connecting to the mail server is the
//! dataplane's job (its timeout included), so nothing about sockets is here.

use std::{collections::HashSet, time::Duration};

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
