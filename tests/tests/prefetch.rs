//! The edge cache's prefetch with the real Dovecot: in a lull, the daemon logs into
//! Dovecot as its master user (`alice*edge`), copies alice's new mail into the cache,
//! and her later sessions get it from the edge, byte for byte as Dovecot sends it.
//! Dovecot's own log tells the logins apart (`master=<edge>`) and its logout lines
//! (`retr=N/BYTES`) whether a body came from it. Run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test prefetch -- --test-threads=1`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use pop3_interceptor_e2e::clients::{self, FetchmailOptions, PoplibOptions};
use pop3_interceptor_e2e::dovecot::{DovecotOptions, make_large_message, make_message};
use pop3_interceptor_e2e::env::Env;
use pop3_interceptor_e2e::topology::{ROUTER_SERVER_V4, server_pop3_v4};
use pop3_interceptor_e2e::util::wait_for;
use pop3_interceptor_e2e::{Dovecot, Node};

const MASTER: &str = "edge";
const MASTER_PASSWORD: &str = "edge-master-pw";
const METRICS: &str = "127.0.0.1:9117";
const SECRET: &str = "n0tify-s3cret";

fn dovecot() -> DovecotOptions {
    DovecotOptions {
        master_user: Some((MASTER.into(), MASTER_PASSWORD.into())),
        ..Default::default()
    }
}

/// Starts the daemon (every check passes through: n = 0) with the cache in
/// `cache` and a `[prefetch]` table of `prefetch` (master user and password added).
fn start(env: &mut Env, cache: &Path, password: &str, prefetch: &str, extra: &[&str]) {
    let config = env.topo.dir().join("prefetch.toml");
    std::fs::write(
        &config,
        format!(
            "cache-dir = \"{}\"\n[prefetch]\nmaster-user = \"{MASTER}\"\n\
             master-password = \"{password}\"\n{prefetch}",
            cache.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let mut args = vec![
        "--config",
        &config,
        "--interval",
        "0s",
        "--metrics",
        METRICS,
    ];
    args.extend_from_slice(extra);
    env.start_daemon(&args);
}

/// Waits until the metrics satisfy `done`.
fn metrics_until(
    env: &Env,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    wait_for(
        what,
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let m = env.scrape(METRICS);
            done(&m).then_some(m)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", env.scrape(METRICS), env.ic().log_tail(30)))
}

fn metric(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(&format!("pop3_interceptor_{name}"))
        .copied()
        .unwrap_or(0.0)
}

/// Dovecot's session id of each `Login:` of `user`, and whether the master user made
/// it (its session's log lines say `auth=<edge>`), once Dovecot logged its end.
fn logins(dc: &Dovecot, user: &str) -> Vec<(String, bool)> {
    dc.logins_for(user)
        .into_iter()
        .map(|login| {
            let session = login.line.split("session=<").nth(1).unwrap_or("");
            let session = session.split('>').next().unwrap_or("").to_owned();
            retr_of(dc, &session);
            let master = format!("<{session}> auth=<{MASTER}>");
            let master = !dc.log_lines_matching(&master).is_empty();
            (session, master)
        })
        .collect()
}

/// The `retr=N/BYTES` of the session `session`, once Dovecot logged its end.
fn retr_of(dc: &Dovecot, session: &str) -> String {
    wait_for(
        "a logout line",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let line = dc
                .log_lines_matching("retr=")
                .into_iter()
                .find(|line| line.contains(&format!("<{session}>")))?;
            let at = line.find("retr=")?;
            Some(line[at..].split(',').next()?.to_owned())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", dc.log_text()))
}

/// `pop3-interceptor status` as an operator reads it.
fn status(env: &Env) -> String {
    let pin_dir = env.ic().pin_dir().to_str().unwrap().to_owned();
    let out = env.ic().cli(&["status", "--pin-dir", &pin_dir]).unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    out.stdout_str()
}

/// The files under the cache folder and their total size.
fn cached(dir: &Path) -> (usize, u64) {
    let mut files = (0, 0);
    for user in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(user.path().join("new"))
            .into_iter()
            .flatten()
            .flatten()
        {
            files.0 += 1;
            files.1 += file.metadata().unwrap().len();
        }
    }
    files
}

fn deliver(dc: &Dovecot, user: &str) {
    let one = make_message(
        "a@example.org",
        "alice@example.org",
        "one",
        "first\r\n.a line that starts with a dot\r\n..and two\r\n",
    );
    dc.deliver(user, &one).unwrap();
    dc.deliver(
        user,
        &make_message("b@example.org", "alice@example.org", "two", "second"),
    )
    .unwrap();
    dc.deliver(user, &make_large_message("alice@example.org", 300_000))
        .unwrap();
}

/// Asserts that `edge` is `direct`, naming the first line that differs (the
/// messages are too large to print whole).
fn same(edge: impl AsRef<[u8]>, direct: impl AsRef<[u8]>, what: &str) {
    let (edge, direct) = (edge.as_ref(), direct.as_ref());
    if edge != direct {
        let lines = |b: &[u8]| -> Vec<String> {
            b.split(|&c| c == b'\n')
                .map(|l| String::from_utf8_lossy(l).chars().take(200).collect())
                .collect()
        };
        let (e, d) = (lines(edge), lines(direct));
        let at = e
            .iter()
            .zip(&d)
            .position(|(a, b)| a != b)
            .unwrap_or(e.len().min(d.len()));
        panic!(
            "{what}: {} bytes through the edge, {} direct; line {at}: {:?} against {:?}",
            edge.len(),
            direct.len(),
            e.get(at),
            d.get(at)
        );
    }
}

/// What poplib (without its greeting line: the edge greets as itself), curl and
/// fetchmail get for alice's three messages.
fn clients_see(env: &Env) -> (String, Vec<Vec<u8>>, Vec<u8>) {
    let pass = env.dc.password("alice").unwrap();
    let poplib = clients::poplib(
        &env.topo,
        server_pop3_v4(),
        "alice",
        pass,
        &PoplibOptions::default(),
    )
    .unwrap();
    assert!(poplib.ok(), "{}", poplib.normalized());
    let curl = (1..=3)
        .map(|n| clients::curl_retr(&env.topo, server_pop3_v4(), "alice", pass, n).unwrap())
        .collect();
    let fetchmail = clients::fetchmail(
        &env.topo,
        server_pop3_v4(),
        "alice",
        pass,
        &FetchmailOptions::default(),
    )
    .unwrap();
    assert!(fetchmail.ok(), "{}", fetchmail.output);
    let poplib: String = poplib
        .normalized()
        .lines()
        .filter(|line| !line.starts_with("welcome: "))
        .map(|line| format!("{line}\n"))
        .collect();
    (poplib, curl, fetchmail.delivered)
}

fn in_cache(env: &Env) -> PathBuf {
    env.topo.dir().join("cache")
}

#[test]
fn mail_prefetched_in_a_lull_is_served_by_the_edge_to_poplib_curl_and_fetchmail() {
    let mut env = Env::direct(dovecot());
    deliver(&env.dc, "alice");
    let direct = clients_see(&env);
    let cache = in_cache(&env);
    let lull = "window = \"00:00-24:00\"\nevery = \"1s\"\n";
    start(&mut env, &cache, MASTER_PASSWORD, lull, &[]);

    // The edge has seen alice once (a check without RETR); then, in the lull, it
    // fetches her three messages as the master user.
    assert!(env.check("alice").starts_with("3 "));
    let m = metrics_until(&env, "three messages prefetched", |m| {
        metric(m, "prefetch_messages_total") >= 3.0
    });
    let (files, bytes) = cached(&cache);
    assert_eq!(files, 3);
    assert_eq!(metric(&m, "bytes_prefetched_total"), bytes as f64);
    assert_eq!(metric(&m, "prefetch_messages_total"), 3.0, "never twice");
    assert_eq!(metric(&m, "prefetch_failures_total"), 0.0);
    assert_eq!(metric(&m, "prefetch_lull"), 1.0);
    let masters: Vec<String> = logins(&env.dc, "alice")
        .into_iter()
        .filter_map(|(session, master)| master.then_some(session))
        .collect();
    assert!(!masters.is_empty(), "{}", env.dc.log_text());
    assert!(retr_of(&env.dc, &masters[0]).starts_with("retr=3/"));
    assert_eq!(
        env.dc.message_count("alice"),
        3,
        "the prefetch deletes nothing"
    );

    // Every client gets exactly what Dovecot sent directly; the bodies come from the
    // edge: each of alice's own sessions since shows retr=0/0 in Dovecot's log.
    let before = logins(&env.dc, "alice").len();
    let edge = clients_see(&env);
    same(&edge.0, &direct.0, "poplib");
    for (n, (edge, direct)) in edge.1.iter().zip(&direct.1).enumerate() {
        same(edge, direct, &format!("curl RETR {}", n + 1));
    }
    same(&edge.2, &direct.2, "fetchmail");
    let own: Vec<String> = logins(&env.dc, "alice")[before..]
        .iter()
        .filter(|(_, master)| !master)
        .map(|(session, _)| session.clone())
        .collect();
    assert_eq!(own.len(), 5, "poplib, three curls, fetchmail");
    for session in &own {
        assert_eq!(retr_of(&env.dc, session), "retr=0/0", "{session}");
    }
    let m = env.scrape(METRICS);
    assert!(metric(&m, "cache_hits_total") >= 9.0, "{m:?}");
    // The pinned STATS map is refreshed once a second. (Every second alice is looked
    // at again: runs that find nothing new.)
    wait_for(
        "status",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let status = status(&env);
            status
                .contains(&format!("0 failed; 3 messages, {bytes} bytes prefetched"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", status(&env)));
}

#[test]
fn wrong_master_credentials_or_a_dead_server_are_counted_errors_and_checks_still_work() {
    let mut env = Env::direct(dovecot());
    deliver(&env.dc, "alice");
    let cache = in_cache(&env);
    let lull = "window = \"00:00-24:00\"\nevery = \"1s\"\nretry = \"1s\"\n";
    start(&mut env, &cache, "not-the-master-pw", lull, &[]);
    assert!(env.check("alice").starts_with("3 "));
    metrics_until(&env, "a failed prefetch", |m| {
        metric(m, "prefetch_failures_total") >= 1.0
    });
    let log = env.ic().log_text();
    assert!(log.contains("master-user login was refused"), "{log}");
    assert!(
        !log.contains("not-the-master-pw"),
        "the password is never logged"
    );
    assert_eq!(cached(&cache), (0, 0));

    // Dovecot down: each try is another counted failure, the daemon carries on.
    let failed = metric(&env.scrape(METRICS), "prefetch_failures_total");
    env.dc.stop().unwrap();
    metrics_until(&env, "failures while Dovecot is down", |m| {
        metric(m, "prefetch_failures_total") >= failed + 2.0
    });
    assert!(env.ic_mut().is_running());
    env.dc.restart().unwrap();
    assert!(env.check("alice").starts_with("3 "), "checks still work");
    let m = env.scrape(METRICS);
    assert_eq!(metric(&m, "prefetch_messages_total"), 0.0);
    assert_eq!(cached(&cache), (0, 0));
    let status = status(&env);
    assert!(status.contains("failed"), "{status}");
}

#[test]
fn outside_the_window_nothing_is_prefetched_until_a_notification_asks() {
    let mut env = Env::direct(dovecot());
    deliver(&env.dc, "alice");
    let cache = in_cache(&env);
    // A window that does not hold the present hour; a load threshold lets
    // notifications through outside it.
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600)
        % 24;
    let window = format!(
        "window = \"{:02}:00-{:02}:00\"\nmax-load = 1.0\nevery = \"1s\"\n",
        (hour + 2) % 24,
        (hour + 3) % 24
    );
    let secret = env.topo.dir().join("notify.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let listen = format!("{ROUTER_SERVER_V4}:8110");
    start(
        &mut env,
        &cache,
        MASTER_PASSWORD,
        &window,
        &[
            "--notify-listen",
            &listen,
            "--notify-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert!(env.check("alice").starts_with("3 "));
    std::thread::sleep(Duration::from_secs(4));
    let m = env.scrape(METRICS);
    assert_eq!(metric(&m, "prefetch_runs_total"), 0.0, "{m:?}");
    assert_eq!(metric(&m, "prefetch_lull"), 0.0);
    assert_eq!(cached(&cache), (0, 0));
    assert!(logins(&env.dc, "alice").iter().all(|(_, master)| !master));
    let status = status(&env);
    assert!(status.contains("prefetch: outside-window"), "{status}");

    // New mail for alice, says Dovecot: the edge fetches it now.
    let body = br#"{"user": "alice"}"#;
    let request = format!(
        "POST /notify HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {SECRET}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = env
        .topo
        .connect(
            Node::Server,
            listen.parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
    std::io::Write::write_all(&mut stream, &[request.as_bytes(), body].concat()).unwrap();
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut reply);
    assert!(reply.starts_with("HTTP/1.1 2"), "{reply}");
    metrics_until(&env, "the notified prefetch", |m| {
        metric(m, "prefetch_messages_total") >= 3.0
    });
    assert_eq!(cached(&cache).0, 3);
    assert!(logins(&env.dc, "alice").iter().any(|(_, master)| *master));
}

#[test]
fn a_full_cache_folder_holds_its_bounds_and_evicts_the_least_recently_used() {
    let mut env = Env::direct(dovecot());
    // 1 MiB a user holds two of these; 2 MiB in all holds two users' two.
    let users = [("alice", 3), ("bob", 2), ("carol", 2)];
    for (user, count) in users {
        for _ in 0..count {
            let message = make_large_message("x@example.org", 400_000);
            env.dc.deliver(user, &message).unwrap();
        }
    }
    let cache = in_cache(&env);
    let lull = "window = \"00:00-24:00\"\nevery = \"1s\"\n";
    let limits = ["--cache-user-mb", "1", "--cache-total-mb", "2"];
    start(&mut env, &cache, MASTER_PASSWORD, lull, &limits);
    // One user after the other: alice's third message does not fit her 1 MiB; carol's
    // mail evicts alice's, the least recently used.
    for (i, (user, count)) in users.iter().enumerate() {
        assert!(env.check(user).starts_with(&format!("{count} ")));
        metrics_until(&env, "the user's prefetch", |m| {
            metric(m, "prefetch_messages_total") >= 2.0 * (i + 1) as f64
        });
    }
    let m = metrics_until(&env, "an eviction", |m| {
        metric(m, "cache_evictions_total") >= 1.0
    });
    let (files, bytes) = cached(&cache);
    assert!(bytes <= 2 << 20, "{bytes}");
    assert_eq!(metric(&m, "cache_bytes"), bytes as f64);
    assert_eq!(files, 4, "bob's and carol's two");
    assert_eq!(metric(&m, "cache_evictions_total"), 1.0);
    // Evicted before she came for it, alice's mail is not fetched again (which would
    // only evict another user's).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(metric(&env.scrape(METRICS), "prefetch_messages_total"), 6.0);

    // bob's bodies come from the edge, alice's from Dovecot; all of them whole.
    let pass = |user| env.dc.password(user).unwrap();
    for (user, retr) in [("bob", "retr=0/0"), ("alice", "retr=3/")] {
        let before = logins(&env.dc, user).len();
        let t = clients::poplib(
            &env.topo,
            server_pop3_v4(),
            user,
            pass(user),
            &PoplibOptions::default(),
        )
        .unwrap();
        assert!(t.ok(), "{}", t.normalized());
        let session = logins(&env.dc, user)[before..]
            .iter()
            .find(|(_, master)| !master)
            .map(|(session, _)| session.clone())
            .unwrap();
        assert!(retr_of(&env.dc, &session).starts_with(retr), "{user}");
    }
}

/// A user whose maildrop the edge saw empty is looked at by every scan, and the daemon
/// goes on answering: a scan once asked the user table for n while holding that user's
/// shard lock, waited for it for good, and the dataplane waited behind the scan.
#[test]
fn scans_over_a_user_seen_with_an_empty_maildrop_leave_the_daemon_answering() {
    let mut env = Env::direct(dovecot());
    let cache = in_cache(&env);
    let lull = "window = \"00:00-24:00\"\nevery = \"1s\"\n";
    start(&mut env, &cache, MASTER_PASSWORD, lull, &[]);
    assert_eq!(env.check("alice"), "0 0");
    let runs = metric(&env.scrape(METRICS), "prefetch_runs_total");
    metrics_until(&env, "two more scans", |m| {
        metric(m, "prefetch_runs_total") >= runs + 2.0
    });
    assert_eq!(env.check("alice"), "0 0", "checks are still answered");
}
