//! The patent's periodicity rule: telling automated polling from a person by how
//! regular the intervals between a user's checks are.
//!
//! "If the time interval T between the quickly repeated checks is metronomically
//! regular, then it is adjudged to be nothing more than automated checking. [...] if
//! [it] varies substantially, then it is adjudged to be manual." A user's last
//! [`HISTORY`] intervals are kept in 4 bytes; with the interval of the check being
//! decided, [`HISTORY`] + 1 intervals are judged:
//!
//! - **Metronomic** when every interval is within [`JITTER_PERCENT`] % of their mean
//!   (at least [`MIN_JITTER`]): a client's timer, whatever the network adds to it.
//! - **Irregular** when their coefficient of variation (standard deviation over mean)
//!   is at least [`IRREGULAR_CV_PERCENT`] %: bursts and pauses, as people check.
//! - **Unknown** otherwise, and while fewer intervals are known or one is longer than
//!   the history holds ([`MAX_INTERVAL`]): the usual rules decide.

use std::time::Duration;

/// Intervals kept per user (besides the one being decided).
pub const HISTORY: usize = 2;
/// Intervals within this share of their mean count as the same period.
pub const JITTER_PERCENT: u32 = 10;
/// The least jitter allowed, for fast polling (network and scheduling noise).
pub const MIN_JITTER: Duration = Duration::from_millis(250);
/// A coefficient of variation from this share up is a person's.
pub const IRREGULAR_CV_PERCENT: u32 = 50;
/// Intervals are kept in eighths of a second in a `u16`: longer ones are not judged.
pub const MAX_INTERVAL: Duration = Duration::from_millis(125 * (u16::MAX as u64 - 1));

/// What the intervals between a user's checks look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rhythm {
    /// Not enough known, or neither regular nor irregular enough.
    Unknown,
    /// Automated polling: attenuated harder.
    Metronomic,
    /// A person checking: favoured.
    Irregular,
}

/// A user's last [`HISTORY`] check intervals, oldest first, in eighths of a second
/// (0: not known yet; `u16::MAX`: too long to judge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckHistory([u16; HISTORY]);

fn eighths(d: Duration) -> u16 {
    if d >= MAX_INTERVAL {
        u16::MAX
    } else {
        // At least 1: zero means unknown, and two checks in the same instant are fast.
        (d.as_millis() / 125).max(1) as u16
    }
}

impl CheckHistory {
    /// Records the interval of a check (the time since the user's previous one).
    pub fn push(&mut self, interval: Duration) {
        self.0.rotate_left(1);
        self.0[HISTORY - 1] = eighths(interval);
    }

    /// The rhythm of the kept intervals followed by `current`, the interval of the
    /// check being decided.
    pub fn classify(&self, current: Duration) -> Rhythm {
        let mut all = [0u16; HISTORY + 1];
        all[..HISTORY].copy_from_slice(&self.0);
        all[HISTORY] = eighths(current);
        if all.iter().any(|&i| i == 0 || i == u16::MAX) {
            return Rhythm::Unknown;
        }
        let n = all.len() as f64;
        let mean = all.iter().map(|&i| f64::from(i)).sum::<f64>() / n;
        let jitter = (mean * f64::from(JITTER_PERCENT) / 100.0)
            .max(MIN_JITTER.as_secs_f64() * 8.0)
            // The rounding to eighths on both sides.
            + 1.0;
        if all.iter().all(|&i| (f64::from(i) - mean).abs() <= jitter) {
            return Rhythm::Metronomic;
        }
        let variance = all
            .iter()
            .map(|&i| (f64::from(i) - mean).powi(2))
            .sum::<f64>()
            / n;
        if variance.sqrt() >= mean * f64::from(IRREGULAR_CV_PERCENT) / 100.0 {
            Rhythm::Irregular
        } else {
            Rhythm::Unknown
        }
    }
}

/// The n of a user with this rhythm under the periodicity rule: `factor` times n for
/// automated polling, n over `factor` for a person.
pub fn scaled_interval(interval: Duration, rhythm: Rhythm, factor: u32) -> Duration {
    match rhythm {
        Rhythm::Unknown => interval,
        Rhythm::Metronomic => interval.saturating_mul(factor),
        Rhythm::Irregular => interval / factor.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn judge(intervals: &[f64]) -> Rhythm {
        let (last, before) = intervals.split_last().unwrap();
        let mut h = CheckHistory::default();
        for &i in before {
            h.push(secs(i));
        }
        h.classify(secs(*last))
    }

    #[test]
    fn too_few_or_too_long_intervals_are_not_judged() {
        assert_eq!(judge(&[300.0]), Rhythm::Unknown);
        assert_eq!(judge(&[300.0, 300.0]), Rhythm::Unknown);
        assert_eq!(judge(&[300.0, 300.0, 9000.0]), Rhythm::Unknown);
        assert_eq!(judge(&[300.0, 300.0, 300.0]), Rhythm::Metronomic);
    }

    #[test]
    fn pollers_with_network_jitter_are_metronomic() {
        assert_eq!(judge(&[5.0, 5.1, 4.9]), Rhythm::Metronomic);
        assert_eq!(judge(&[1.0, 1.2, 0.9]), Rhythm::Metronomic);
        assert_eq!(judge(&[600.0, 612.0, 590.0]), Rhythm::Metronomic);
    }

    #[test]
    fn bursts_and_human_checks_are_irregular() {
        // A person pressing "check" again and again, then waiting.
        assert_eq!(judge(&[2.0, 3.5, 40.0]), Rhythm::Irregular);
        assert_eq!(judge(&[8.0, 30.0, 3.0]), Rhythm::Irregular);
        assert_eq!(judge(&[1800.0, 60.0, 700.0]), Rhythm::Irregular);
    }

    #[test]
    fn middling_variation_is_left_to_the_usual_rules() {
        assert_eq!(judge(&[5.0, 6.0, 4.0]), Rhythm::Unknown);
    }

    #[test]
    fn the_factor_stretches_pollers_and_shortens_people() {
        let n = Duration::from_secs(600);
        assert_eq!(scaled_interval(n, Rhythm::Metronomic, 3), n * 3);
        assert_eq!(scaled_interval(n, Rhythm::Irregular, 3), n / 3);
        assert_eq!(scaled_interval(n, Rhythm::Unknown, 3), n);
    }

    proptest! {
        /// Any period from a quarter second to two hours, with jitter up to 5 % of it
        /// (or 0.1 s), is found metronomic.
        #[test]
        fn jittered_periods_are_metronomic(
            period in 0.25f64..7000.0,
            jitter in proptest::collection::vec(-1.0f64..1.0, HISTORY + 1),
        ) {
            let slack = (period * 0.05).max(0.1);
            let intervals: Vec<f64> = jitter.iter().map(|j| period + j * slack).collect();
            prop_assert_eq!(judge(&intervals), Rhythm::Metronomic);
        }

        /// A burst of checks seconds apart followed by a pause at least ten times
        /// longer is never taken for a poller.
        #[test]
        fn bursts_are_never_metronomic(
            burst in proptest::collection::vec(0.5f64..5.0, HISTORY),
            pause in 10.0f64..100.0,
        ) {
            let mut intervals = burst.clone();
            intervals.push(burst.iter().cloned().fold(0.0, f64::max) * pause);
            prop_assert_eq!(judge(&intervals), Rhythm::Irregular);
        }
    }
}
