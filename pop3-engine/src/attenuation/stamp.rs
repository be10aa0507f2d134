//! Compact times for the user table: an [`Instant`] in 8 bytes, counted from the table's
//! [`Epoch`].
//!
//! The epoch is a time the caller passed in (the engine reads no clock), kept by the
//! table that owns the stamps: nothing is process-wide.

use std::{
    fmt,
    num::NonZeroU64,
    time::{Duration, Instant},
};

/// The origin of a table's [`Stamp`]s.
#[derive(Clone, Copy, Debug)]
pub struct Epoch(Instant);

/// An [`Instant`] in 8 bytes (`Option<Stamp>` too): signed nanoseconds from an [`Epoch`],
/// stored with a bias so that the order is kept and zero is free for `None`. Exact
/// within +-292 years of the epoch; farther Instants are clamped to that range.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(NonZeroU64);

const BIAS: u64 = 1 << 63;

impl Epoch {
    pub fn new(origin: Instant) -> Self {
        Self(origin)
    }

    /// `t` as a stamp from this epoch.
    pub fn stamp(self, t: Instant) -> Stamp {
        let nanos: i64 = match t.checked_duration_since(self.0) {
            Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            // At least i64::MIN + 1: i64::MIN would be the biased zero.
            None => i64::try_from((self.0 - t).as_nanos()).map_or(-i64::MAX, |n| -n),
        };
        Stamp(NonZeroU64::new(nanos as u64 ^ BIAS).expect("nanos > i64::MIN"))
    }

    /// The instant of a stamp made from this epoch.
    pub fn instant(self, stamp: Stamp) -> Instant {
        let nanos = stamp.nanos();
        let d = Duration::from_nanos(nanos.unsigned_abs());
        if nanos >= 0 { self.0 + d } else { self.0 - d }
    }
}

impl Stamp {
    fn nanos(self) -> i64 {
        (self.0.get() ^ BIAS) as i64
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch{:+}ns", self.nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_keep_instants_exactly_and_in_order() {
        let t = Instant::now();
        let epoch = Epoch::new(t + Duration::from_secs(7));
        let times = [
            t - Duration::from_nanos(1_234_567_891),
            t - Duration::from_nanos(1),
            t,
            t + Duration::from_nanos(1),
            t + Duration::from_secs(86_400 * 365),
        ];
        for w in times.windows(2) {
            assert!(epoch.stamp(w[0]) < epoch.stamp(w[1]));
        }
        for t in times {
            assert_eq!(epoch.instant(epoch.stamp(t)), t);
        }
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }
}
