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
    /// The patent's one-in-m rule: of m consecutive checks of a user that could be
    /// answered locally, the m-th goes to the server (`None`: off). At most 255 (the
    /// count is one byte of the user's entry); larger values act as 255.
    pub one_in_m: Option<std::num::NonZeroU32>,
    /// The patent's fast-check reward (`None`: off).
    pub fast_check: Option<FastCheck>,
    /// The patent's periodicity rule (`None`: off): n is multiplied by this factor for
    /// a user whose checks are metronomic (automated polling) and divided by it for a
    /// user whose checks are irregular (a person); see [`super::periodicity`].
    pub periodicity: Option<std::num::NonZeroU32>,
    /// The patent's load-adaptive n (`None`: n is always [`Config::interval`]).
    pub load_adaptive: Option<LoadAdaptive>,
    /// RFC 2449's LOGIN-DELAY (`None`: not advertised).
    pub login_delay: Option<LoginDelay>,
    /// The patent's edge cache: RETR in sessions that pass through is answered from
    /// the edge's copy when the server's `UIDL n` and `LIST n` match it, through
    /// [`crate::session::Action::CacheRead`].
    pub cache: bool,
}

/// The patent's load-adaptive n: between [`Config::interval`] (no load) and `max`
/// (full load), from what the engine measures; see [`super::load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadAdaptive {
    /// n under full load.
    pub max: Duration,
    /// Upstream login latency that counts as full load (a quarter of it counts as none).
    pub latency: Duration,
    /// Checks per second that count as full load (`None`: the rate is not used).
    pub check_rate: Option<std::num::NonZeroU32>,
}

/// RFC 2449's LOGIN-DELAY: the least time between two logins of a user to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginDelay {
    /// Advertised in CAPA, in whole seconds.
    pub delay: Duration,
    /// What a check sooner than that after the server's last login for the user (with
    /// the password the server accepted) gets.
    pub action: LoginDelayAction,
}

/// What a check earlier than the LOGIN-DELAY gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginDelayAction {
    /// Answered locally from the view held, however old n says it is (a user with no
    /// view, after new mail for instance, reaches the server).
    Local,
    /// `-ERR [LOGIN-DELAY]`: the client is told to wait.
    Refuse,
}

/// The patent's fast-check reward: a person who presses "check" again soon after a
/// check wants the server's answer; a client that polls that fast automatically does
/// not deserve it every time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastCheck {
    /// `count` checks of a user within `window`: the last of them goes to the server.
    /// At most 255 (one byte of the user's entry); larger values act as 255.
    pub count: std::num::NonZeroU32,
    /// How close together the checks must be.
    pub window: Duration,
    /// After a rewarded check, further checks of the user are answered at the edge for
    /// this long, even when its view is older than n ("ruthlessly", the patent says).
    pub penalty: Duration,
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
            one_in_m: None,
            fast_check: None,
            periodicity: None,
            load_adaptive: None,
            login_delay: None,
            cache: false,
        }
    }
}
