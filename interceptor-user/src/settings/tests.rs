use super::*;

fn with_file(toml: &str, args: RunArgs) -> Result<Settings, SettingsError> {
    let dir = std::env::temp_dir().join(format!("p3i-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", toml.len()));
    std::fs::write(&path, toml).unwrap();
    Settings::resolve(RunArgs {
        config: Some(path),
        ..args
    })
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let settings = Settings::resolve(RunArgs {
        iface: Some("eth1".into()),
        ..RunArgs::default()
    })
    .unwrap();
    assert_eq!(settings.ports, [110]);
    assert_eq!(settings.mode, EngineMode::Attenuate);
    assert_eq!(settings.engine.interval, Duration::from_secs(900));
    assert_eq!(settings.engine.autologout, Duration::from_secs(600));
    assert_eq!(settings.connect_timeout, Duration::from_secs(5));
    assert_eq!(settings.pin_dir, PathBuf::from(common::DEFAULT_PIN_DIR));
}

#[test]
fn flags_override_the_file() {
    let file = r#"
        iface = "eth0"
        interval = "5m"
        opt-out = ["carol"]
        servers = ["203.0.113.0/24"]
        mode = "relay"
    "#;
    let settings = with_file(
        file,
        RunArgs {
            interval: Some(Duration::from_secs(5)),
            ..RunArgs::default()
        },
    )
    .unwrap();
    assert_eq!(settings.iface, "eth0");
    assert_eq!(settings.engine.interval, Duration::from_secs(5));
    assert!(settings.engine.opt_out.contains("carol"));
    assert_eq!(settings.mode, EngineMode::Relay);
    assert_eq!(settings.servers.len(), 1);
}

#[test]
fn the_check_rules_are_read_from_the_file() {
    let file = r#"
        iface = "eth0"
        interval-min = "5m"
        interval-max = "1h"
        periodicity = 3
        login-delay = 300
        login-delay-action = "refuse"
    "#;
    let e = with_file(file, RunArgs::default()).unwrap().engine;
    assert_eq!(e.interval, Duration::from_secs(300));
    let load = e.load_adaptive.unwrap();
    assert_eq!(load.max, Duration::from_secs(3600));
    assert_eq!(load.latency, Duration::from_secs(1));
    assert_eq!(e.periodicity, NonZeroU32::new(3));
    let delay = e.login_delay.unwrap();
    assert_eq!(delay.delay, Duration::from_secs(300));
    assert_eq!(delay.action, attenuation::LoginDelayAction::Refuse);
    let err = with_file(
        "iface = \"eth0\"\ninterval = \"1h\"\ninterval-max = \"5m\"",
        RunArgs::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("interval-max"), "{err}");
    let err = with_file("iface = \"eth0\"\nlogin-delay = 0", RunArgs::default()).unwrap_err();
    assert!(err.to_string().contains("login-delay"), "{err}");
}

#[test]
fn bad_files_get_clear_errors() {
    let err = with_file("iface = \"eth0\"\nintervall = \"5m\"", RunArgs::default()).unwrap_err();
    assert!(err.to_string().contains("intervall"), "{err}");
    let err = with_file("iface = \"eth0\"\ninterval = \"soon\"", RunArgs::default()).unwrap_err();
    // The parser points at the key and the value.
    assert!(err.to_string().contains("interval = \"soon\""), "{err}");
    let err = Settings::resolve(RunArgs::default()).unwrap_err();
    assert!(matches!(err, SettingsError::NoInterface));
}

/// `packaging/pop3-interceptor.toml` parses, names every `run` option, and the values
/// it shows are the real defaults.
#[test]
fn the_packaged_example_config_parses_and_shows_the_defaults() {
    use clap::CommandFactory;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/pop3-interceptor.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let from_file = Settings::resolve(RunArgs {
        config: Some(path.clone()),
        ..RunArgs::default()
    })
    .unwrap();
    let defaults = Settings::resolve(RunArgs {
        iface: Some(from_file.iface.clone()),
        ..RunArgs::default()
    })
    .unwrap();
    let plain = |s: &Settings| {
        format!(
            "{:?}",
            Settings {
                config_file: None,
                ..s.clone()
            }
        )
    };
    assert_eq!(plain(&from_file), plain(&defaults));
    assert_eq!(from_file.metrics, None, "metrics are off by default");

    let cli = crate::cli::Cli::command();
    let run = cli.find_subcommand("run").unwrap();
    for arg in run.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if key == "config" || key == "log-format" {
            continue;
        }
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(documented, "{key} is not in {}", path.display());
    }
}

#[test]
fn the_fan_out_needs_the_endpoint_and_a_plain_subject() {
    let secret = std::env::temp_dir().join(format!("p3i-secret-{}", std::process::id()));
    std::fs::write(&secret, "s3cret\n").unwrap();
    let args = |listen: bool, subject: Option<&str>| RunArgs {
        iface: Some("eth1".into()),
        notify_listen: listen.then(|| "127.0.0.1:0".parse().unwrap()),
        notify_secret_file: Some(secret.clone()),
        notify_nats: Some("nats://203.0.113.5:4222".into()),
        notify_subject: subject.map(str::to_owned),
        ..RunArgs::default()
    };
    let fanout = Settings::resolve(args(true, None))
        .unwrap()
        .notify
        .unwrap()
        .fanout
        .unwrap();
    assert_eq!(fanout.subject, DEFAULT_SUBJECT);
    assert!(Settings::resolve(args(false, None)).is_err(), "no endpoint");
    let bad_url = RunArgs {
        notify_nats: Some("http://[::1".into()),
        ..args(true, None)
    };
    assert!(Settings::resolve(bad_url).is_err(), "not a NATS URL");
    for bad in ["", "a.*", "a.>", "a..b", "a b", ".a", "a\r\nPUB x 1"] {
        assert!(Settings::resolve(args(true, Some(bad))).is_err(), "{bad:?}");
    }
    assert!(Settings::resolve(args(true, Some("isp.edge-mail.new"))).is_ok());
}
