//! The systemd unit's privileges are enough, and each one is needed.
//!
//! The daemon is started the way `packaging/pop3-interceptor.service` starts it, without
//! systemd: `prlimit` applies `LimitMEMLOCK=`, `setpriv` cuts the capability bounding set to
//! `CapabilityBoundingSet=` (uid 0 then has exactly those), both read from the unit file.
//!
//! Run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test service -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::time::Duration;

use pop3_interceptor_e2e::interceptor::interceptor_bin;
use pop3_interceptor_e2e::util::{set_mode, workspace_root};
use pop3_interceptor_e2e::{
    DovecotOptions, Env, Interceptor, InterceptorOptions, Topology, TopologyOptions,
};

fn unit() -> String {
    let path = workspace_root().join("packaging/pop3-interceptor.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `Key=` in the unit (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .trim()
        .to_owned()
}

/// `CAP_BPF CAP_NET_ADMIN` -> `["bpf", "net_admin"]`.
fn unit_caps(unit: &str) -> Vec<String> {
    unit_value(unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// How the test applies the unit's `LimitMEMLOCK=`.
#[derive(Clone, Debug)]
enum Memlock {
    /// `prlimit --memlock=N:N` (N in bytes, or `unlimited`).
    Limit(String),
    /// Where this test may not raise the hard limit (no CAP_SYS_RESOURCE, as in some
    /// containers; systemd as PID 1 can): CAP_IPC_LOCK, which makes the kernel skip the
    /// UMEM charge just as an infinite limit does.
    IpcLock,
}

/// Whether this process may set `RLIMIT_MEMLOCK` to `value`.
fn can_set_memlock(value: &str) -> bool {
    std::process::Command::new("prlimit")
        .arg(format!("--memlock={value}:{value}"))
        .arg("true")
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A script that execs the daemon with `caps` only and the memlock limit (pid preserved).
fn wrapper(dir: &Path, name: &str, caps: &[String], memlock: &Memlock) -> PathBuf {
    let bin = interceptor_bin().unwrap();
    let mut bounding: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let prlimit = match memlock {
        Memlock::Limit(v) => format!("prlimit --memlock={v}:{v} "),
        Memlock::IpcLock => {
            bounding.push_str(",+ipc_lock");
            String::new()
        }
    };
    let script = format!(
        "#!/bin/sh\nexec {prlimit}setpriv --inh-caps=-all --bounding-set=-all{bounding} -- {} \"$@\"\n",
        bin.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    set_mode(&path, 0o755).unwrap();
    path
}

/// The daemon run by `bin`.
fn options(bin: PathBuf) -> InterceptorOptions {
    InterceptorOptions {
        bin: Some(bin),
        // The expectations below are the AF_XDP ones (UMEM, memlock); on veth the
        // default would be the TC dataplane.
        extra_args: vec!["--dataplane".into(), "xdp".into()],
        ready_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

/// Starts the daemon run by `bin`, which may fail to start.
fn start(topo: &Topology, bin: PathBuf) -> anyhow::Result<Interceptor> {
    Interceptor::start_with(topo, options(bin))
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    let unit = unit();
    let caps = unit_caps(&unit);
    assert_eq!(
        caps,
        ["bpf", "net_admin", "net_raw", "perfmon"],
        "the documented set"
    );
    assert_eq!(
        unit_value(&unit, "AmbientCapabilities"),
        unit_value(&unit, "CapabilityBoundingSet")
    );
    let limit = match unit_value(&unit, "LimitMEMLOCK").as_str() {
        "infinity" => "unlimited".to_owned(),
        other => other.to_owned(),
    };
    let memlock = if can_set_memlock(&limit) {
        Memlock::Limit(limit)
    } else {
        eprintln!("cannot set LimitMEMLOCK={limit} here: CAP_IPC_LOCK stands in for it");
        Memlock::IpcLock
    };
    // Four RX queues: four AF_XDP sockets with an 8 MiB UMEM each.
    let mut env = Env::direct_with(TopologyOptions { rc0_queues: 4 }, DovecotOptions::default());
    let dir = env.topo.dir().to_path_buf();

    // Each capability left out: the daemon cannot start, and says so.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let bin = wrapper(&dir, &format!("without-{missing}.sh"), &fewer, &memlock);
        let err = start(&env.topo, bin).expect_err(&format!("started without CAP_{missing}"));
        let err = format!("{err:#}");
        eprintln!("without CAP_{}: {err}", missing.to_uppercase());
        let why = match missing.as_str() {
            // Creating the maps; XSKMAP is a "net" map type.
            "bpf" | "net_admin" => "Operation not permitted",
            // socket(AF_XDP) is the first step of the UMEM set-up.
            "net_raw" => "AF_XDP umem on queue 0: Operation not permitted",
            // The verifier refuses the program's packet-pointer arithmetic.
            "perfmon" => "prohibited for !root",
            other => panic!("no expectation for CAP_{other}"),
        };
        assert!(err.contains(why), "without CAP_{missing}: {err}");
    }
    // The unit's set with the usual 8 MiB memlock limit instead of LimitMEMLOCK: the
    // UMEMs do not fit.
    let bin = wrapper(
        &dir,
        "memlock-8m.sh",
        &caps,
        &Memlock::Limit("8388608".into()),
    );
    let err = start(&env.topo, bin).expect_err("started with 32 MiB of UMEM under an 8 MiB limit");
    let err = format!("{err:#}");
    eprintln!("with LimitMEMLOCK=8M: {err}");
    assert!(err.contains("No buffer space available"), "{err}");

    // Exactly the unit's privileges: it attaches, attenuates, and detaches on SIGTERM.
    let bin = wrapper(&dir, "as-the-unit.sh", &caps, &memlock);
    env.start_daemon_with(options(bin));
    for _ in 0..3 {
        env.check("alice");
    }
    assert_eq!(
        env.dc.login_count("alice"),
        1,
        "two of three checks answered at the edge"
    );
    let ic = env.ic_mut();
    let pin_dir = ic.pin_dir().to_path_buf();
    let (exit, by_itself) = ic.terminate(Duration::from_secs(10));
    assert!(by_itself && exit.is_some_and(|s| s.success()), "{exit:?}");
    let left: Vec<_> = std::fs::read_dir(&pin_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pins left behind: {left:?}");
}
