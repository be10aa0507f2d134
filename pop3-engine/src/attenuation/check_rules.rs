//! Where one check of a user with a table entry goes: the patent's time rule and its
//! optional rules (LOGIN-DELAY, periodicity, fast-check reward, one-in-m), applied to
//! the entry in that order. Pure: the time and the n in force are passed in.
//!
//! Only a check with the password the server last accepted counts as the user's: it
//! alone is recorded (time, interval history) and judged by the rules, so nobody who
//! merely knows a username can shape what its owner gets.

use std::time::{Duration, Instant};

use super::{
    config::{Config, LoginDelayAction},
    periodicity::{Rhythm, scaled_interval},
    table::{EntryMut, FastCheckVerdict},
};

/// One check as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// When it arrived.
    pub now: Instant,
    /// The n in force for the user (raised by load, or the demand rule's).
    pub interval: Duration,
    /// n without the load-adaptive rule, to count what that rule decided.
    pub base_interval: Duration,
    /// The password is the one the server last accepted.
    pub password_ok: bool,
    /// Another session of the user is in TRANSACTION (the server decides then).
    pub in_session: bool,
}

/// Where the check goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `+OK` at the edge.
    Local {
        /// From a view older than the user's n, which the session must not refresh
        /// behind the client's back.
        trust_view: bool,
    },
    /// To the server.
    Server,
    /// `-ERR [LOGIN-DELAY]`.
    Refuse,
}

/// The rules' decision and which rule made it, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Where the check goes.
    pub outcome: Outcome,
    /// The fast-check reward's verdict (after the periodicity rule's veto).
    pub fast_check: FastCheckVerdict,
    /// Passed through by the one-in-m rule.
    pub one_in_m: bool,
    /// The periodicity rule's judgement when it changed the outcome.
    pub periodicity: Option<Rhythm>,
    /// Decided by LOGIN-DELAY (answered locally or refused).
    pub login_delay: bool,
    /// Answered locally only because load raised n.
    pub load_held: bool,
}

impl Decision {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            fast_check: FastCheckVerdict::AsUsual,
            one_in_m: false,
            periodicity: None,
            login_delay: false,
            load_held: false,
        }
    }
}

/// Applies the rules of `config` to the check of `e`'s user.
pub fn decide(e: &mut EntryMut<'_>, check: Check, config: &Config) -> Decision {
    let now = check.now;
    if !check.password_ok {
        return Decision::new(Outcome::Server);
    }
    let since = now.saturating_duration_since(e.last_check());
    if check.in_session {
        e.record_check(now, since);
        return Decision::new(Outcome::Server);
    }
    // RFC 2449: LOGIN-DELAY is the least time between two logins; a check sooner than
    // that after the server's last login for this user (the view's) gets the operator's
    // answer, and once it has passed the usual rules decide again.
    let since_login = e.verified().map(|v| now.saturating_duration_since(v));
    if let Some(delay) = config.login_delay
        && since_login.is_some_and(|s| s < delay.delay)
    {
        let outcome = match delay.action {
            LoginDelayAction::Refuse => Outcome::Refuse,
            LoginDelayAction::Local => {
                e.record_check(now, since);
                Outcome::Local { trust_view: true }
            }
        };
        return Decision {
            login_delay: true,
            ..Decision::new(outcome)
        };
    }
    let rhythm = config
        .periodicity
        .map_or(Rhythm::Unknown, |_| e.history.classify(since));
    e.record_check(now, since);
    let factor = config.periodicity.map_or(1, |f| f.get());
    let interval = scaled_interval(check.interval, rhythm, factor);
    let fresh = e.fresh(now, interval);
    let fresh_unscaled = e.fresh(now, check.interval);
    let mut d = Decision::new(Outcome::Server);
    if fresh != fresh_unscaled {
        d.periodicity = Some(rhythm);
    }
    if let Some(rule) = &config.fast_check {
        d.fast_check = e.fast_check(rule, now, fresh);
        // "Fast automated checks are attenuated ruthlessly": no reward for a poller.
        if d.fast_check == FastCheckVerdict::Rewarded && rhythm == Rhythm::Metronomic {
            (d.fast_check, d.periodicity) = (FastCheckVerdict::Penalized, Some(rhythm));
        }
    }
    let mut local = match d.fast_check {
        FastCheckVerdict::AsUsual => fresh,
        FastCheckVerdict::Rewarded => false,
        FastCheckVerdict::Penalized => true,
    };
    // The patent's one-in-m rule: every m-th check that could be answered here goes
    // to the server anyway.
    if local
        && d.fast_check == FastCheckVerdict::AsUsual
        && let Some(m) = config.one_in_m
    {
        e.local_streak = e.local_streak.saturating_add(1);
        if u32::from(e.local_streak) >= m.get().min(u8::MAX.into()) {
            e.local_streak = 0;
            (local, d.one_in_m) = (false, true);
        }
    }
    if local {
        d.load_held = fresh_unscaled && !e.fresh(now, check.base_interval);
        d.outcome = Outcome::Local {
            trust_view: !fresh_unscaled,
        };
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attenuation::{
        Salt, UserKey, UserTable,
        config::{FastCheck, LoginDelay},
    };
    use std::{num::NonZeroU32, sync::Arc};

    const N: Duration = Duration::from_secs(600);

    /// A user whose empty maildrop the server showed at `t0`.
    fn user(t0: Instant) -> (UserTable, Arc<UserKey>) {
        let mut table = UserTable::new(10, Duration::from_secs(7200), 1 << 20, t0);
        let key = UserKey {
            server: "203.0.113.5:110".parse().unwrap(),
            user: "alice".into(),
        };
        let v = Salt::new([7; 4]).verifier(key.server, b"alice", b"pw");
        let key = table.entry(key, t0, v).unwrap();
        table.set_view(&key, t0, t0, None);
        (table, key)
    }

    fn check(table: &mut UserTable, key: &Arc<UserKey>, at: Instant, config: &Config) -> Decision {
        let c = Check {
            now: at,
            interval: N,
            base_interval: N,
            password_ok: true,
            in_session: false,
        };
        table.update(key, at, |e| decide(e, c, config)).unwrap()
    }

    const LOCAL: Outcome = Outcome::Local { trust_view: false };

    #[test]
    fn a_wrong_password_is_not_recorded_and_goes_to_the_server() {
        let t0 = Instant::now();
        let (mut table, key) = user(t0);
        let c = Check {
            now: t0 + Duration::from_secs(5),
            interval: N,
            base_interval: N,
            password_ok: false,
            in_session: false,
        };
        let config = Config {
            login_delay: Some(LoginDelay {
                delay: Duration::from_secs(60),
                action: LoginDelayAction::Refuse,
            }),
            ..Config::default()
        };
        let d = table
            .update(&key, c.now, |e| decide(e, c, &config))
            .unwrap();
        assert_eq!(d.outcome, Outcome::Server);
        assert_eq!(table.get(&key).unwrap().last_check(), t0);
    }

    #[test]
    fn login_delay_refuses_or_answers_early_checks_only() {
        let t0 = Instant::now();
        for (action, early) in [
            (LoginDelayAction::Refuse, Outcome::Refuse),
            (LoginDelayAction::Local, Outcome::Local { trust_view: true }),
        ] {
            let (mut table, key) = user(t0);
            let config = Config {
                login_delay: Some(LoginDelay {
                    delay: Duration::from_secs(60),
                    action,
                }),
                ..Config::default()
            };
            let at = |s| t0 + Duration::from_secs(s);
            let d = check(&mut table, &key, at(30), &config);
            assert_eq!((d.outcome, d.login_delay), (early, true));
            // The delay runs from the server's last login, whatever came between: once
            // it is over, the usual rules decide (the view is inside n).
            let d = check(&mut table, &key, at(61), &config);
            assert_eq!((d.outcome, d.login_delay), (LOCAL, false));
        }
    }

    #[test]
    fn periodicity_stretches_n_for_pollers_and_shortens_it_for_people() {
        let t0 = Instant::now();
        let config = Config {
            periodicity: NonZeroU32::new(2),
            ..Config::default()
        };
        // A poller every 100 s whose view is as old as n: held.
        let (mut table, key) = user(t0);
        for i in 1..=5 {
            let d = check(&mut table, &key, t0 + Duration::from_secs(100 * i), &config);
            assert_eq!(d.outcome, LOCAL);
        }
        let d = check(&mut table, &key, t0 + Duration::from_secs(600), &config);
        assert_eq!(d.outcome, Outcome::Local { trust_view: true });
        assert_eq!(d.periodicity, Some(Rhythm::Metronomic));
        // A person checking at odd times with a 6-minute-old view (n/2 is 5): passed.
        let (mut table, key) = user(t0);
        for s in [20, 50] {
            check(&mut table, &key, t0 + Duration::from_secs(s), &config);
        }
        let d = check(&mut table, &key, t0 + Duration::from_secs(360), &config);
        assert_eq!(
            (d.outcome, d.periodicity),
            (Outcome::Server, Some(Rhythm::Irregular))
        );
    }

    #[test]
    fn a_metronomic_fast_poller_is_never_rewarded() {
        let t0 = Instant::now();
        let fast = FastCheck {
            count: NonZeroU32::new(3).unwrap(),
            window: Duration::from_secs(30),
            penalty: Duration::from_secs(300),
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Without the rule: rewarded at 15 s and again once the penalty is over; with
        // it never (three equal intervals are known by then).
        for (periodicity, rewarded) in [(None, 2), (NonZeroU32::new(2), 0)] {
            let config = Config {
                fast_check: Some(fast),
                periodicity,
                ..Config::default()
            };
            let (mut table, key) = user(t0);
            // A poller every 5 s, for as long as its view is fresh.
            let decisions: Vec<_> = (1..=118)
                .map(|i| check(&mut table, &key, at(5000 * i), &config))
                .collect();
            let got = decisions
                .iter()
                .filter(|d| d.fast_check == FastCheckVerdict::Rewarded)
                .count();
            assert_eq!(got, rewarded, "{periodicity:?}");
        }
        // A person pressing "check" at uneven times is rewarded with the periodicity
        // rule on.
        let config = Config {
            fast_check: Some(fast),
            periodicity: NonZeroU32::new(2),
            ..Config::default()
        };
        let (mut table, key) = user(t0);
        let outcomes: Vec<_> = [20_000, 21_000, 27_000]
            .map(|ms| check(&mut table, &key, at(ms), &config).outcome)
            .to_vec();
        assert_eq!(outcomes, [LOCAL, LOCAL, Outcome::Server]);
    }

    #[test]
    fn one_in_m_past_255_acts_as_255() {
        let t0 = Instant::now();
        let (mut table, key) = user(t0);
        let config = Config {
            one_in_m: NonZeroU32::new(1000),
            ..Config::default()
        };
        let passed: Vec<bool> = (1..=255)
            .map(|ms| check(&mut table, &key, t0 + Duration::from_millis(ms), &config).one_in_m)
            .collect();
        assert_eq!(passed.iter().filter(|p| **p).count(), 1);
        assert!(passed[254]);
    }

    #[test]
    fn load_held_counts_only_what_the_raised_n_kept_local() {
        let t0 = Instant::now();
        let (mut table, key) = user(t0);
        let c = Check {
            now: t0 + Duration::from_secs(900),
            interval: Duration::from_secs(1200),
            base_interval: N,
            password_ok: true,
            in_session: false,
        };
        let d = table
            .update(&key, c.now, |e| decide(e, c, &Config::default()))
            .unwrap();
        assert_eq!((d.outcome, d.load_held), (LOCAL, true));
        let c = Check {
            now: t0 + Duration::from_secs(1300),
            ..c
        };
        let d = table
            .update(&key, c.now, |e| decide(e, c, &Config::default()))
            .unwrap();
        assert_eq!((d.outcome, d.load_held), (Outcome::Server, false));
    }
}
