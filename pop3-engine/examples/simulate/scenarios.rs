//! The scenarios: the time rule alone, each of the patent's other rules added to it, all
//! of them, and the same with new-mail notifications.

use std::num::NonZeroU32;
use std::time::Duration;

use pop3_engine::attenuation::{Config, FastCheck, LoadAdaptive, LoginDelay, LoginDelayAction};

/// One scenario: a name and the engine's settings.
pub fn scenarios() -> Vec<(&'static str, bool, Config)> {
    let base = Config {
        interval: Duration::from_secs(15 * 60),
        notify_interval: Duration::from_secs(60 * 60),
        ..Config::default()
    };
    let one_in_m = Config {
        one_in_m: NonZeroU32::new(10),
        ..base.clone()
    };
    let fast_check = Config {
        fast_check: Some(FastCheck {
            count: NonZeroU32::new(3).unwrap(),
            window: Duration::from_secs(30),
            penalty: Duration::from_secs(300),
        }),
        ..base.clone()
    };
    let periodicity = Config {
        periodicity: NonZeroU32::new(2),
        ..base.clone()
    };
    let load = Config {
        load_adaptive: Some(LoadAdaptive {
            max: Duration::from_secs(60 * 60),
            latency: Duration::from_millis(500),
            check_rate: None,
        }),
        ..base.clone()
    };
    let login_delay = Config {
        login_delay: Some(LoginDelay {
            delay: Duration::from_secs(1800),
            action: LoginDelayAction::Local,
        }),
        ..base.clone()
    };
    let all = Config {
        one_in_m: one_in_m.one_in_m,
        fast_check: fast_check.fast_check,
        periodicity: periodicity.periodicity,
        load_adaptive: load.load_adaptive,
        login_delay: login_delay.login_delay,
        ..base.clone()
    };
    vec![
        ("time rule n=15m", false, base.clone()),
        ("+ one-in-m 10", false, one_in_m),
        ("+ fast-check 3/30s", false, fast_check),
        ("+ periodicity 2", false, periodicity),
        ("+ load n 15m..1h", false, load),
        ("+ login-delay 1800 local", false, login_delay),
        ("all rules", false, all.clone()),
        ("notify: time rule", true, base),
        ("notify: all rules", true, all),
    ]
}
