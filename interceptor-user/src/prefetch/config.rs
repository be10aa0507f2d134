//! The prefetch's settings (the `[prefetch]` table of the config file) and its
//! schedule: when a lull lets it fetch.

use std::{num::NonZeroU32, path::PathBuf, time::Duration};

use pop3_engine::{attenuation::LoadAdaptive, secret::Secret};
use serde::Deserialize;

/// The `[prefetch]` table. Only the config file holds it: the master password never
/// appears on a command line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PrefetchFile {
    /// The mail server's master user (Dovecot: a `master = yes` passdb).
    pub master_user: String,
    /// Its password.
    pub master_password: Redacted,
    /// What joins the user and the master user in the login name (Dovecot's
    /// `auth_master_user_separator`).
    pub master_separator: Option<String>,
    /// `HH:MM-HH:MM`: the time of day (UTC) prefetch runs in.
    pub window: Option<String>,
    /// `HH:MM-HH:MM` each: never prefetch then, whatever the load.
    pub busy_hours: Option<Vec<String>>,
    /// Prefetch only while the engine's load measure (0 to 1) is below this.
    pub max_load: Option<f64>,
    /// A prefetch run stops when the server takes longer than this to answer.
    #[serde(default, with = "humantime_serde")]
    pub max_latency: Option<Duration>,
    /// Messages fetched per second, at most.
    pub messages_per_second: Option<NonZeroU32>,
    /// Message bytes fetched per second, at most.
    pub bytes_per_second: Option<NonZeroU32>,
    /// How often the users are looked over.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// How long after a failed run the user is tried again.
    #[serde(default, with = "humantime_serde")]
    pub retry: Option<Duration>,
    /// Longest wait for one answer of the server.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// A file of `SERVER USER EDGE` lines: the user's home edge, which wins over where
    /// the user was last seen.
    pub profile: Option<PathBuf>,
    /// This edge's name in the profile file.
    pub edge: Option<String>,
    /// The length of a "day" for the windows (a test or benchmark compresses it).
    #[serde(default, with = "humantime_serde")]
    pub day_length: Option<Duration>,
}

/// Text that is never printed: `Debug` shows `<redacted>`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The prefetch's settings, checked, defaults applied.
#[derive(Clone, Debug)]
pub struct Config {
    pub master_user: String,
    pub master_password: Secret,
    pub separator: String,
    pub schedule: Schedule,
    /// Weighs the engine's load measure.
    pub load_rule: LoadAdaptive,
    pub max_latency: Duration,
    pub messages_per_second: NonZeroU32,
    pub bytes_per_second: NonZeroU32,
    pub every: Duration,
    pub retry: Duration,
    pub timeout: Duration,
    pub profile: Option<PathBuf>,
    pub edge: Option<String>,
}

impl Config {
    /// The `[prefetch]` table, if any, checked: it needs the cache (`cache`) and the
    /// attenuation engine's table of users (not `relay`).
    pub fn from_file(
        file: Option<PrefetchFile>,
        cache: bool,
        relay: bool,
        load_rule: LoadAdaptive,
    ) -> Result<Option<Self>, (&'static str, String)> {
        match file {
            None => Ok(None),
            Some(_) if !cache => Err((
                "prefetch",
                "needs --cache-dir: it fills the edge cache".into(),
            )),
            Some(_) if relay => Err((
                "prefetch",
                "needs --mode attenuate: it fetches for the users the engine has seen".into(),
            )),
            Some(file) => Self::resolve(file, load_rule)
                .map(Some)
                .map_err(|(key, message)| (key, format!("[prefetch] {message}"))),
        }
    }

    /// Checks `file`; `load_rule` weighs the engine's load measure. The error names
    /// the key at fault.
    pub fn resolve(
        file: PrefetchFile,
        load_rule: LoadAdaptive,
    ) -> Result<Self, (&'static str, String)> {
        let separator = file.master_separator.unwrap_or_else(|| "*".to_owned());
        if separator.is_empty() || !separator.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "master-separator",
                "one or more printable characters".into(),
            ));
        }
        if file.master_user.is_empty() || !file.master_user.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(("master-user", "printable characters, no spaces".into()));
        }
        let password = &file.master_password.0;
        if password.is_empty() || password.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(("master-password", "not empty, no control characters".into()));
        }
        let window = file
            .window
            .as_deref()
            .map(DayWindow::parse)
            .transpose()
            .map_err(|m| ("window", m))?;
        let busy = file
            .busy_hours
            .unwrap_or_default()
            .iter()
            .map(|w| DayWindow::parse(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ("busy-hours", m))?;
        if let Some(max) = file.max_load
            && !(max > 0.0 && max <= 1.0)
        {
            return Err(("max-load", "a load above 0, at most 1".into()));
        }
        if window.is_none() && file.max_load.is_none() {
            return Err((
                "window",
                "a lull needs a window, a max-load, or both: never prefetch at any hour".into(),
            ));
        }
        if file.profile.is_some() != file.edge.is_some() {
            return Err((
                "profile",
                "a profile file and this edge's name go together".into(),
            ));
        }
        let day_length = file.day_length.unwrap_or(DAY);
        if day_length < Duration::from_secs(24) {
            return Err(("day-length", "at least 24s".into()));
        }
        Ok(Self {
            master_user: file.master_user,
            master_password: Secret::from(file.master_password.0.as_bytes()),
            separator,
            schedule: Schedule {
                window,
                busy,
                max_load: file.max_load,
                day_length,
            },
            load_rule,
            max_latency: file.max_latency.unwrap_or(Duration::from_secs(2)),
            messages_per_second: file
                .messages_per_second
                .unwrap_or(NonZeroU32::new(20).expect("non-zero")),
            bytes_per_second: file
                .bytes_per_second
                .unwrap_or(NonZeroU32::new(4 << 20).expect("non-zero")),
            every: file.every.unwrap_or(Duration::from_secs(15 * 60)),
            retry: file.retry.unwrap_or(Duration::from_secs(300)),
            timeout: file.timeout.unwrap_or(Duration::from_secs(30)),
            profile: file.profile,
            edge: file.edge,
        })
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const DAY_SECS: u32 = 24 * 3600;

/// A span of the day, `from` (inclusive) to `to` (exclusive), in seconds after
/// midnight; it wraps past midnight when `to` is before `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayWindow {
    from: u32,
    to: u32,
}

impl DayWindow {
    /// `HH:MM-HH:MM`, `24:00` for the end of the day.
    pub fn parse(text: &str) -> Result<Self, String> {
        let error = || format!("{text:?}: HH:MM-HH:MM, e.g. 01:00-06:00");
        let (from, to) = text.split_once('-').ok_or_else(error)?;
        let at = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 3600 + m * 60)
        };
        let (from, to) = (at(from).ok_or_else(error)?, at(to).ok_or_else(error)?);
        if from == to {
            return Err(format!("{text:?}: an empty window"));
        }
        Ok(Self { from, to })
    }

    fn contains(&self, second: u32) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&second)
        } else {
            second >= self.from || second < self.to
        }
    }
}

/// Whether prefetch may run now, and if not why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Lull,
    BusyHour,
    OutsideWindow,
    Loaded,
}

impl Verdict {
    /// Its index in [`common::PREFETCH_STATES`], the words `status` shows.
    pub fn state(self) -> u64 {
        match self {
            Verdict::Lull => 1,
            Verdict::BusyHour => 2,
            Verdict::OutsideWindow => 3,
            Verdict::Loaded => 4,
        }
    }
}

/// When a lull lets the prefetch run.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    window: Option<DayWindow>,
    busy: Vec<DayWindow>,
    max_load: Option<f64>,
    day_length: Duration,
}

impl Schedule {
    /// The second of the (possibly compressed) day at `unix` (time since the epoch).
    fn second_of_day(&self, unix: Duration) -> u32 {
        let length = self.day_length.as_secs_f64();
        let phase = unix.as_secs_f64() % length / length;
        ((phase * f64::from(DAY_SECS)) as u32).min(DAY_SECS - 1)
    }

    /// Whether prefetch may run at `unix` under `load`. Never in a busy hour, nor
    /// at or above the load threshold. Outside the window only for `demand` (a
    /// new-mail notification) when a load threshold is set: then the load is what
    /// allows it.
    pub fn verdict(&self, unix: Duration, load: f64, demand: bool) -> Verdict {
        let second = self.second_of_day(unix);
        if self.busy.iter().any(|w| w.contains(second)) {
            return Verdict::BusyHour;
        }
        if self.max_load.is_some_and(|max| load >= max) {
            return Verdict::Loaded;
        }
        let in_window = self.window.is_none_or(|w| w.contains(second));
        if !(in_window || demand && self.max_load.is_some()) {
            return Verdict::OutsideWindow;
        }
        Verdict::Lull
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(window: Option<&str>, busy: &[&str], max_load: Option<f64>) -> Schedule {
        Schedule {
            window: window.map(|w| DayWindow::parse(w).unwrap()),
            busy: busy.iter().map(|w| DayWindow::parse(w).unwrap()).collect(),
            max_load,
            day_length: DAY,
        }
    }

    fn at(h: u64, m: u64) -> Duration {
        // Some day well after the epoch, at h:m UTC.
        Duration::from_secs(20_000 * 86_400 + h * 3600 + m * 60)
    }

    #[test]
    fn verdicts_name_their_state_for_status() {
        let words = [
            Verdict::Lull,
            Verdict::BusyHour,
            Verdict::OutsideWindow,
            Verdict::Loaded,
        ]
        .map(|v| common::PREFETCH_STATES[v.state() as usize]);
        assert_eq!(words, ["lull", "busy-hour", "outside-window", "loaded"]);
    }

    #[test]
    fn windows_parse_and_wrap_past_midnight() {
        let night = DayWindow::parse("22:30-06:00").unwrap();
        assert!(night.contains(23 * 3600));
        assert!(night.contains(3600));
        assert!(!night.contains(12 * 3600));
        assert!(!night.contains(6 * 3600));
        let all = DayWindow::parse("00:00-24:00").unwrap();
        assert!(all.contains(0) && all.contains(DAY_SECS - 1));
        for bad in [
            "",
            "1-2",
            "25:00-01:00",
            "01:60-02:00",
            "03:00-03:00",
            "a:b-c:d",
            "24:01-01:00",
        ] {
            assert!(DayWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_busy_hour_wins_over_window_and_load() {
        let s = schedule(Some("00:00-24:00"), &["18:00-19:00"], Some(0.5));
        assert_eq!(s.verdict(at(18, 30), 0.0, false), Verdict::BusyHour);
        assert_eq!(s.verdict(at(18, 30), 0.0, true), Verdict::BusyHour);
        assert_eq!(s.verdict(at(19, 0), 0.0, false), Verdict::Lull);
        assert_eq!(s.verdict(at(19, 0), 0.5, false), Verdict::Loaded);
    }

    #[test]
    fn outside_the_window_only_a_notification_under_a_load_threshold_runs() {
        let window_only = schedule(Some("01:00-05:00"), &[], None);
        assert_eq!(window_only.verdict(at(3, 0), 0.9, false), Verdict::Lull);
        assert_eq!(
            window_only.verdict(at(12, 0), 0.0, false),
            Verdict::OutsideWindow
        );
        assert_eq!(
            window_only.verdict(at(12, 0), 0.0, true),
            Verdict::OutsideWindow
        );
        let both = schedule(Some("01:00-05:00"), &[], Some(0.3));
        assert_eq!(both.verdict(at(12, 0), 0.1, false), Verdict::OutsideWindow);
        assert_eq!(both.verdict(at(12, 0), 0.1, true), Verdict::Lull);
        assert_eq!(both.verdict(at(12, 0), 0.3, true), Verdict::Loaded);
        let load_only = schedule(None, &[], Some(0.3));
        assert_eq!(load_only.verdict(at(12, 0), 0.1, false), Verdict::Lull);
    }

    #[test]
    fn a_compressed_day_maps_onto_the_hours() {
        let mut s = schedule(None, &["12:00-13:00"], Some(1.0));
        s.day_length = Duration::from_secs(240);
        // 240 s a day: 10 s an hour; 12:00 is 120 s into the day.
        assert_eq!(
            s.verdict(Duration::from_secs(2400 + 125), 0.0, false),
            Verdict::BusyHour
        );
        assert_eq!(
            s.verdict(Duration::from_secs(2400 + 131), 0.0, false),
            Verdict::Lull
        );
    }

    fn file(window: Option<&str>, max_load: Option<f64>) -> PrefetchFile {
        PrefetchFile {
            master_user: "edge".into(),
            master_password: Redacted("secret".into()),
            master_separator: None,
            window: window.map(Into::into),
            busy_hours: None,
            max_load,
            max_latency: None,
            messages_per_second: None,
            bytes_per_second: None,
            every: None,
            retry: None,
            timeout: None,
            profile: None,
            edge: None,
            day_length: None,
        }
    }

    fn rule() -> LoadAdaptive {
        LoadAdaptive {
            max: Duration::from_secs(900),
            latency: Duration::from_secs(1),
            check_rate: None,
        }
    }

    #[test]
    fn the_table_parses_from_the_config_file_and_needs_the_cache_and_the_engine() {
        let text = "iface = \"eth0\"\n[prefetch]\nmaster-user = \"edge\"\n\
                    master-password = \"m4ster\"\nwindow = \"20:00-17:00\"\n\
                    busy-hours = [\"17:00-20:00\"]\nevery = \"1m\"\n";
        let file: crate::settings::FileSettings = toml::from_str(text).unwrap();
        assert!(!format!("{file:?}").contains("m4ster"));
        let prefetch = file.prefetch.unwrap();
        let config = Config::from_file(Some(prefetch), true, false, rule())
            .unwrap()
            .unwrap();
        assert_eq!(config.master_password.expose(), b"m4ster");
        assert_eq!(config.every, Duration::from_secs(60));
        assert_eq!(
            config.schedule.busy,
            [DayWindow::parse("17:00-20:00").unwrap()]
        );
        let again = || {
            toml::from_str::<crate::settings::FileSettings>(text)
                .unwrap()
                .prefetch
        };
        assert_eq!(
            Config::from_file(again(), false, false, rule())
                .unwrap_err()
                .0,
            "prefetch"
        );
        assert_eq!(
            Config::from_file(again(), true, true, rule())
                .unwrap_err()
                .0,
            "prefetch"
        );
        assert!(
            Config::from_file(None, false, false, rule())
                .unwrap()
                .is_none()
        );
        let typo = text.replace("every", "evry");
        assert!(toml::from_str::<crate::settings::FileSettings>(&typo).is_err());
    }

    #[test]
    fn a_config_without_any_lull_or_with_a_bad_secret_is_refused() {
        assert_eq!(
            Config::resolve(file(None, None), rule()).unwrap_err().0,
            "window"
        );
        assert_eq!(
            Config::resolve(file(None, Some(1.5)), rule())
                .unwrap_err()
                .0,
            "max-load"
        );
        let mut f = file(Some("01:00-02:00"), None);
        f.master_password = Redacted("a\r\nDELE 1".into());
        assert_eq!(Config::resolve(f, rule()).unwrap_err().0, "master-password");
        let mut f = file(Some("01:00-02:00"), None);
        f.master_separator = Some(String::new());
        assert_eq!(
            Config::resolve(f, rule()).unwrap_err().0,
            "master-separator"
        );
        let ok = Config::resolve(file(Some("01:00-02:00"), None), rule()).unwrap();
        assert_eq!(ok.separator, "*");
        assert!(
            !format!("{ok:?}").contains("secret"),
            "the password is never printed"
        );
        let f = file(Some("01:00-02:00"), None);
        assert!(
            !format!("{f:?}").contains("secret"),
            "nor read from the file"
        );
    }
}
