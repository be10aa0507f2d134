//! What an operator sees. The pinned maps read with the real bpftool, the
//! `status` and `detach` commands, and reloading the opt-out list on SIGHUP.
//! Run as root, one at a time (`cargo xtask test`).

use std::time::Duration;

use pop3_interceptor_e2e::clients::RawSession;
use pop3_interceptor_e2e::topology::{CLIENT_V4, server_pop3_v4};
use pop3_interceptor_e2e::{DovecotOptions, Env, Interceptor, Node};
use serde_json::Value;

const INTERVAL_SECS: u64 = 4;
const INTERVAL: Duration = Duration::from_secs(INTERVAL_SECS);

/// The `formatted` entries of a `bpftool -j map dump` of a BTF map.
fn formatted(dump: &Value) -> Vec<Value> {
    dump.as_array()
        .expect("array dump")
        .iter()
        .map(|e| e.get("formatted").cloned().unwrap_or_else(|| e.clone()))
        .collect()
}

fn user_entry(ic: &Interceptor, user: &str) -> Option<Value> {
    formatted(&ic.dump_map("USERS").unwrap())
        .into_iter()
        .find(|e| e["key"]["user"] == user)
}

#[test]
fn bpftool_shows_attenuated_users_by_name_and_state() {
    let env = Env::attenuating(INTERVAL);
    let (dc, ic, topo) = (&env.dc, env.ic(), &env.topo);
    for _ in 0..3 {
        env.check("alice");
    }
    assert_eq!(
        dc.login_count("alice"),
        1,
        "one login, two checks answered locally"
    );

    let alice = user_entry(ic, "alice").expect("alice in USERS");
    assert_eq!(alice["key"]["server"], "203.0.113.2:110", "{alice}");
    assert_eq!(alice["value"]["state"], "attenuated", "{alice}");
    assert_eq!(alice["value"]["checks_answered_locally"], 2, "{alice}");
    assert_eq!(alice["value"]["checks_passed_through"], 1, "{alice}");
    let last_client = alice["value"]["last_client"].as_str().unwrap();
    assert!(last_client.starts_with(&format!("{CLIENT_V4}:")), "{alice}");
    assert!(alice["value"]["attenuated_until"].as_u64().unwrap() > 0);

    // Plain `bpftool map dump` (what an operator types) prints the name as text too.
    let plain = topo
        .exec(
            Node::Router,
            &[
                "bpftool",
                "map",
                "dump",
                "pinned",
                ic.pin_dir().join("USERS").to_str().unwrap(),
            ],
        )
        .unwrap();
    let text = plain.stdout_str();
    assert!(text.contains("\"user\": \"alice\""), "{text}");
    assert!(
        !text.to_lowercase().contains("alice-pw"),
        "no password in the map"
    );

    // After the interval the mirror shows alice as no longer attenuated.
    std::thread::sleep(Duration::from_secs(INTERVAL_SECS + 1));
    // A packet-free second passes the dataplane's housekeeping tick.
    let alice = user_entry(ic, "alice").expect("alice still known");
    assert_eq!(alice["value"]["state"], "pass-through", "{alice}");
    assert_eq!(alice["value"]["attenuated_until"], 0, "{alice}");
}

fn status_json(ic: &Interceptor, extra: &[&str]) -> Value {
    let pin_dir = ic.pin_dir().to_str().unwrap().to_owned();
    let mut args = vec!["status", "--json", "--pin-dir", &pin_dir];
    args.extend_from_slice(extra);
    let out = ic.cli(&args).unwrap().check("status --json").unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_agrees_with_the_engine_and_the_mail_server() {
    let env = Env::attenuating(INTERVAL);
    let (dc, ic) = (&env.dc, env.ic());
    for _ in 0..3 {
        assert_eq!(env.check("alice"), "0 0");
    }
    // Last checks are kept in whole seconds: make bob's the later one.
    std::thread::sleep(Duration::from_millis(1100));
    env.check("bob");
    // STATS is published once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let status = status_json(ic, &[]);
    let engine = &status["engine"];
    assert_eq!(engine["checks_seen"], 4, "{status}");
    assert_eq!(engine["checks_answered_locally"], 2, "{status}");
    assert_eq!(engine["checks_passed_through"], 2, "{status}");
    assert_eq!(engine["upstream_logins_avoided"], 2, "{status}");
    let logins = dc.login_count("alice") + dc.login_count("bob");
    assert_eq!(logins, 2, "what passed through is what Dovecot saw");
    assert_eq!(engine["table_entries"], 2, "{status}");
    assert_eq!(status["attach"]["iface"], "rc0");
    assert_eq!(status["running"], true);
    assert!(
        status["xdp"]["redirected"].as_u64().unwrap() > 0,
        "{status}"
    );
    let users = status["users"].as_array().unwrap();
    let alice = users.iter().find(|u| u["user"] == "alice").unwrap();
    assert_eq!(alice["checks_answered_locally"], 2);
    assert_eq!(alice["checks_passed_through"], 1);
    assert_eq!(alice["state"], "attenuated");
    assert_eq!(
        users[0]["user"], "bob",
        "sorted by last check, newest first"
    );

    let pin_dir = ic.pin_dir().to_str().unwrap().to_owned();
    let table = ic.cli(&["status", "--pin-dir", &pin_dir]).unwrap();
    let table = table.stdout_str();
    assert!(
        table.contains("alice") && table.contains("attenuated"),
        "{table}"
    );

    // At ISP scale: the newest few with a count of the rest, or one user by exact name.
    let top = status_json(ic, &["--limit", "1"]);
    let names = |s: &Value| -> Vec<String> {
        s["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&top), ["bob"], "{top}");
    assert_eq!(top["users_left_out"], 1, "{top}");
    let one = status_json(ic, &["--user", "alice"]);
    assert_eq!(names(&one), ["alice"], "{one}");
    assert_eq!(one["users_left_out"], 0, "{one}");
    for other in ["Alice", "alice ", "alic", "alice\\x00"] {
        let none = status_json(ic, &["--user", other]);
        assert!(names(&none).is_empty(), "{other:?}: {none}");
    }
    let table = ic
        .cli(&["status", "--pin-dir", &pin_dir, "--limit", "1"])
        .unwrap()
        .stdout_str();
    assert!(table.contains("bob") && !table.contains("alice"), "{table}");
    assert!(table.contains("... 1 more users not shown"), "{table}");
}

#[test]
fn detach_cleans_up_after_kill_9() {
    let mut env = Env::attenuating(INTERVAL);
    env.check("alice");
    let ic = env.ic_mut();
    let pin_dir = ic.pin_dir().to_str().unwrap().to_owned();

    let refused = ic
        .cli(&["detach", "--iface", "rc0", "--pin-dir", &pin_dir])
        .unwrap();
    assert!(!refused.success(), "detach refuses while the daemon runs");

    ic.kill9();
    let out = ic
        .cli(&["detach", "--iface", "rc0", "--pin-dir", &pin_dir])
        .unwrap();
    assert!(out.success(), "{}{}", out.stdout_str(), out.stderr_str());
    let net = env
        .topo
        .exec(Node::Router, &["bpftool", "net"])
        .unwrap()
        .stdout_str();
    assert!(!net.contains("pop3_intercept"), "{net}");
    assert!(!std::path::Path::new(&pin_dir).exists(), "pins removed");

    env.check("alice");
    let last = env.dc.logins_for("alice").last().unwrap().rip.clone();
    assert_eq!(last, CLIENT_V4.to_string(), "POP3 reaches Dovecot directly");
}

/// Right after a `kill -9` the dead daemon is a zombie until its parent
/// reaps it; it runs nothing, so `detach` must not refuse.
#[test]
fn detach_does_not_mistake_a_zombie_for_a_running_daemon() {
    let mut env = Env::attenuating(INTERVAL);
    let ic = env.ic_mut();
    let pin_dir = ic.pin_dir().to_str().unwrap().to_owned();
    ic.kill9_leave_zombie().unwrap();
    let out = ic
        .cli(&["detach", "--iface", "rc0", "--pin-dir", &pin_dir])
        .unwrap();
    assert!(out.success(), "{}{}", out.stdout_str(), out.stderr_str());
    assert!(!std::path::Path::new(&pin_dir).exists(), "pins removed");
}

#[test]
fn sighup_reloads_the_opt_out_list_without_dropping_sessions() {
    let mut env = Env::direct(DovecotOptions::default());
    let config = env.topo.dir().join("pop3-interceptor.toml");
    std::fs::write(&config, "opt-out = []\n").unwrap();
    let interval = format!("{INTERVAL_SECS}s");
    env.start_daemon(&[
        "--interval",
        &interval,
        "--config",
        config.to_str().unwrap(),
    ]);
    env.check("alice");
    env.check("alice");
    assert_eq!(env.dc.login_count("alice"), 1);

    // A session in progress across the reload.
    let mut carol = env.connect();
    assert!(carol.command("USER carol").unwrap().starts_with("+OK"));
    assert!(carol.command("PASS carol-pw").unwrap().starts_with("+OK"));

    std::fs::write(&config, "opt-out = [\"alice\"]\n").unwrap();
    pop3_interceptor_e2e::util::signal_pid(env.ic().pid(), libc::SIGHUP);
    env.ic()
        .wait_log("opt-out list reloaded", Duration::from_secs(10))
        .unwrap();

    assert!(carol.command("STAT").unwrap().starts_with("+OK 0 0"));
    assert!(carol.command("QUIT").unwrap().starts_with("+OK"));
    env.check("alice");
    env.check("alice");
    assert_eq!(
        env.dc.login_count("alice"),
        3,
        "an opted-out user reaches Dovecot at every check"
    );
}

/// `SESSIONS` lists a session while it lasts, with its user and state, and forgets it once
/// both sides have closed (the mirror shows only sessions that have lasted 50 ms, and
/// deletes only what it wrote).
#[test]
fn sessions_map_lists_a_live_session_until_it_ends() {
    let env = Env::attenuating(INTERVAL);
    let (ic, topo) = (env.ic(), &env.topo);
    env.check("alice");
    let sessions = || status_json(ic, &[])["sessions"].as_array().unwrap().clone();
    let mut live = RawSession::connect(topo, Node::Client, server_pop3_v4()).unwrap();
    assert!(live.read_line().unwrap().starts_with("+OK"));
    assert!(live.command("USER alice").unwrap().starts_with("+OK"));
    assert!(live.command("PASS alice-pw").unwrap().starts_with("+OK"));
    // The mirror runs ten times a second.
    std::thread::sleep(Duration::from_millis(500));
    let listed = sessions();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["user"], "alice", "{listed:?}");
    assert_eq!(listed[0]["state"], "local", "{listed:?}");
    assert!(
        listed[0]["client"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{CLIENT_V4}:")),
        "{listed:?}"
    );
    for _ in 0..3 {
        env.check("alice");
    }
    assert!(live.command("QUIT").unwrap().starts_with("+OK"));
    // Until the client closes too, the connection is there (FIN-WAIT-2), shown `closed`.
    drop(live);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sessions(), Vec::<Value>::new(), "every session ended");
}
