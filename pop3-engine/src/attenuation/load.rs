//! The patent's load-adaptive n: "low when network load is light and set higher when
//! network load peaks".
//!
//! The engine measures what the mail server's load does to it: how long the server
//! takes to answer a login, how many logins fail for the server's sake (a lost or
//! refused connection, `[SYS/TEMP]`, `[IN-USE]`), and how many checks arrive. Each is
//! a moving average over about [`HORIZON`], and each maps to a load from 0 to 1:
//!
//! - latency: 0 up to a quarter of [`LoadAdaptive::latency`], 1 from it on, linear between;
//! - failures: 0 up to none, 1 from [`FULL_ERROR_PERCENT`] % of logins on;
//! - check rate: linear from 0 to 1 at [`LoadAdaptive::check_rate`], when set.
//!
//! n is [`super::Config::interval`] plus the highest of these times the distance to
//! [`LoadAdaptive::max`]. Without measurements (no load) every average decays to 0,
//! so n returns to the minimum.

use std::time::{Duration, Instant};

use super::config::LoadAdaptive;

/// How far back the averages look (their time constant).
pub const HORIZON: Duration = Duration::from_secs(60);
/// The share of failed logins that counts as full load.
pub const FULL_ERROR_PERCENT: u32 = 20;

/// The engine's measurements of load.
#[derive(Clone, Debug, Default)]
pub struct LoadMeter {
    /// When the averages were last decayed.
    at: Option<Instant>,
    /// Decayed sums: logins tried, logins answered and their latency in seconds,
    /// failed logins, checks.
    logins: f64,
    answered: f64,
    latency: f64,
    failures: f64,
    checks: f64,
}

impl LoadMeter {
    fn decay(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            let k = (-dt / HORIZON.as_secs_f64()).exp();
            self.logins *= k;
            self.answered *= k;
            self.latency *= k;
            self.failures *= k;
            self.checks *= k;
        }
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }

    /// A login answered by the server after `latency`; `failed` when the failure is
    /// the server's (not a wrong password).
    pub fn login(&mut self, latency: Duration, failed: bool, now: Instant) {
        self.decay(now);
        self.logins += 1.0;
        self.answered += 1.0;
        self.latency += latency.as_secs_f64();
        self.failures += f64::from(u8::from(failed));
    }

    /// A login the server never answered (connection refused or lost).
    pub fn failure(&mut self, now: Instant) {
        self.decay(now);
        self.logins += 1.0;
        self.failures += 1.0;
    }

    /// A check arrived.
    pub fn check(&mut self, now: Instant) {
        self.decay(now);
        self.checks += 1.0;
    }

    /// The load from 0 (none) to 1 (full) at `now`.
    pub fn load(&self, rule: &LoadAdaptive, now: Instant) -> f64 {
        let k = self.at.map_or(1.0, |at| {
            (-now.saturating_duration_since(at).as_secs_f64() / HORIZON.as_secs_f64()).exp()
        });
        let full = rule.latency.as_secs_f64();
        let answered = self.answered;
        let latency = if answered > 0.0 {
            let mean = self.latency / answered;
            // A single old sample weighs less than steady evidence.
            ((mean - full / 4.0) / (full * 0.75)).clamp(0.0, 1.0) * (answered * k).min(1.0)
        } else {
            0.0
        };
        let failures = if self.logins > 0.0 {
            let share = self.failures / self.logins;
            (share * 100.0 / f64::from(FULL_ERROR_PERCENT)).min(1.0) * (self.failures * k).min(1.0)
        } else {
            0.0
        };
        let rate = rule.check_rate.map_or(0.0, |full| {
            let per_sec = self.checks * k / HORIZON.as_secs_f64();
            (per_sec / f64::from(full.get())).min(1.0)
        });
        latency.max(failures).max(rate)
    }

    /// n at `now`: from `min` (no load) to the rule's max (full load).
    pub fn interval(&self, min: Duration, rule: &LoadAdaptive, now: Instant) -> Duration {
        let max = rule.max.max(min);
        min + (max - min).mul_f64(self.load(rule, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_secs(300);

    fn rule(check_rate: Option<u32>) -> LoadAdaptive {
        LoadAdaptive {
            max: Duration::from_secs(1800),
            latency: Duration::from_secs(2),
            check_rate: check_rate.and_then(std::num::NonZeroU32::new),
        }
    }

    #[test]
    fn no_load_keeps_the_minimum() {
        let (m, t0) = (LoadMeter::default(), Instant::now());
        assert_eq!(m.interval(MIN, &rule(Some(10)), t0), MIN);
        let mut m = LoadMeter::default();
        for i in 0..100 {
            m.login(Duration::from_millis(5), false, t0 + Duration::from_secs(i));
        }
        assert_eq!(
            m.interval(MIN, &rule(None), t0 + Duration::from_secs(100)),
            MIN
        );
    }

    #[test]
    fn slow_logins_raise_n_and_it_falls_back_when_they_stop() {
        let (mut m, t0, r) = (LoadMeter::default(), Instant::now(), rule(None));
        for i in 0..30 {
            m.login(Duration::from_secs(3), false, t0 + Duration::from_secs(i));
        }
        let busy = t0 + Duration::from_secs(30);
        assert_eq!(m.interval(MIN, &r, busy), r.max);
        // Halfway between a quarter of the latency and all of it: halfway up.
        let mut half = LoadMeter::default();
        for i in 0..30 {
            half.login(
                Duration::from_millis(1250),
                false,
                t0 + Duration::from_secs(i),
            );
        }
        let n = half.interval(MIN, &r, busy).as_secs();
        assert!((1040..=1060).contains(&n), "{n}");
        // Fifteen minutes of quiet: back to the minimum, within a second.
        let quiet = m.interval(MIN, &r, busy + Duration::from_secs(900));
        assert!(quiet - MIN < Duration::from_secs(1), "{quiet:?}");
    }

    #[test]
    fn failures_and_check_rate_count_as_load() {
        let (t0, r) = (Instant::now(), rule(Some(10)));
        let mut m = LoadMeter::default();
        for i in 0..10 {
            m.login(Duration::from_millis(5), false, t0 + Duration::from_secs(i));
            m.failure(t0 + Duration::from_secs(i));
        }
        assert_eq!(m.interval(MIN, &r, t0 + Duration::from_secs(10)), r.max);
        let mut m = LoadMeter::default();
        // 20 checks a second for a minute: twice the full rate.
        for i in 0..1200 {
            m.check(t0 + Duration::from_millis(50 * i));
        }
        assert!(m.load(&r, t0 + Duration::from_secs(60)) > 0.99);
    }

    proptest! {
        /// Whatever is measured, n stays between the minimum and the maximum.
        #[test]
        fn n_stays_in_bounds(events in proptest::collection::vec((0u8..3, 0u64..5000, 0u64..100_000), 0..200)) {
            let (mut m, t0, r) = (LoadMeter::default(), Instant::now(), rule(Some(5)));
            for (kind, ms, at) in events {
                let now = t0 + Duration::from_millis(at);
                match kind {
                    0 => m.login(Duration::from_millis(ms), ms % 2 == 0, now),
                    1 => m.failure(now),
                    _ => m.check(now),
                }
                let n = m.interval(MIN, &r, now);
                prop_assert!(n >= MIN && n <= r.max, "{:?}", n);
            }
        }
    }
}
