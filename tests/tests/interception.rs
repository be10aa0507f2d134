//! Issue 2: transparent interception on the router's client-facing interface, end to end:
//! XDP -> AF_XDP (or TC -> TAP) -> smoltcp -> the real Dovecot, with real clients. The
//! tests that say what interception means run on both dataplanes (`rstest` cases).
//!
//! The daemon runs with `--mode relay` here, so every byte a client sees must be what
//! Dovecot sent. Run as root, one at a time (`cargo xtask test`).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::{Counter, HEARTBEAT_GRACE_NS};
use pop3_interceptor_e2e::clients::{self, FetchmailOptions, PoplibOptions, RawSession};
use pop3_interceptor_e2e::dovecot::{make_large_message, make_message};
use pop3_interceptor_e2e::interceptor::{NO_PER_SOURCE_LIMITS, dataplane_args};
use pop3_interceptor_e2e::raw::{self, RawLink, Seg, subscriber};
use pop3_interceptor_e2e::topology::{
    CLIENT_V4, CLIENT_V6, HOST_IFACE, ROUTER_SERVER_V4, ROUTER_SERVER_V6, SERVER_V4,
    server_pop3_v4, server_pop3_v6,
};
use pop3_interceptor_e2e::{Dovecot, Interceptor, Node, Topology, TopologyOptions};
use rstest::rstest;

/// The daemon in relay mode on `dataplane` (`xdp`: native, or `tc`).
fn relay(topo: &Topology, dataplane: &str) -> Interceptor {
    let mut args = vec!["--mode", "relay"];
    args.extend_from_slice(dataplane_args(dataplane));
    Interceptor::start(topo, &args).expect("interceptor")
}

/// A per-CPU counter of the pinned COUNTERS map, summed, read with the real bpftool.
fn counter(ic: &Interceptor, counter: Counter) -> u64 {
    ic.xdp_counter(counter).expect("bpftool COUNTERS")
}

/// A poplib session for `user` (password `<user>-pw`) that must succeed; its transcript.
fn poplib_ok(topo: &Topology, user: &str, opts: &PoplibOptions) -> String {
    let pass = format!("{user}-pw");
    let t = clients::poplib(topo, server_pop3_v4(), user, &pass, opts).unwrap();
    assert!(t.ok(), "{}", t.normalized());
    t.normalized()
}

fn last_login_rip(dc: &Dovecot, user: &str) -> String {
    dc.logins_for(user).last().expect("a login").rip.clone()
}

/// Runs the same client sessions against Dovecot with the interceptor detached and
/// attached; returns both transcripts.
fn both_ways<T>(topo: &Topology, dataplane: &str, session: impl Fn() -> T) -> (T, T, Interceptor) {
    let direct = session();
    let ic = relay(topo, dataplane);
    let through = session();
    (direct, through, ic)
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
#[case::tc_netlink("tc-netlink")]
fn curl_poplib_and_fetchmail_see_the_same_bytes_through_the_relay(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let message = make_message(
        "x@p3i.test.example",
        "alice",
        "relay",
        "one\n.starts with a dot\n..two dots\nlast",
    );
    dc.deliver("alice", &message).unwrap();
    dc.deliver("alice", &make_large_message("alice", 200_000))
        .unwrap();
    let addr = server_pop3_v4();

    let (direct, through, ic) = both_ways(&topo, dataplane, || {
        let list = clients::curl_list(&topo, addr, "alice", "alice-pw").unwrap();
        let first = clients::curl_retr(&topo, addr, "alice", "alice-pw", 1).unwrap();
        let second = clients::curl_retr(&topo, addr, "alice", "alice-pw", 2).unwrap();
        let opts = PoplibOptions {
            capa: true,
            ..Default::default()
        };
        let pop = clients::poplib(&topo, addr, "alice", "alice-pw", &opts).unwrap();
        let fetch = clients::fetchmail(
            &topo,
            addr,
            "alice",
            "alice-pw",
            &FetchmailOptions::default(),
        )
        .unwrap();
        assert!(pop.ok(), "{}", pop.normalized());
        assert!(fetch.ok(), "{}", fetch.output);
        (list, first, second, pop.normalized(), fetch.delivered)
    });
    assert_eq!(direct.0, through.0, "curl LIST");
    assert_eq!(direct.1, through.1, "curl RETR 1");
    assert_eq!(direct.2, through.2, "curl RETR 2 (200 KB)");
    assert_eq!(
        direct.3, through.3,
        "poplib transcript, greeting and CAPA included"
    );
    assert_eq!(direct.4, through.4, "fetchmail's delivered mail");

    // Proof of interception: the XDP program redirected the flows, and Dovecot saw the
    // sessions come from the router, not from the client.
    assert!(counter(&ic, Counter::Redirected) > 0);
    assert_eq!(last_login_rip(&dc, "alice"), ROUTER_SERVER_V4.to_string());
    let rips: Vec<String> = dc
        .logins_for("alice")
        .iter()
        .map(|l| l.rip.clone())
        .collect();
    assert!(rips.contains(&CLIENT_V4.to_string()), "{rips:?}");
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn poplib_dele_through_the_relay_deletes_exactly_what_was_asked(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    for subject in ["one", "two", "three"] {
        let m = make_message("x@p3i.test.example", "bob", subject, "body");
        dc.deliver("bob", &m).unwrap();
    }
    let _ic = relay(&topo, dataplane);
    let opts = PoplibOptions {
        dele: vec![2],
        ..Default::default()
    };
    let t = clients::poplib(&topo, server_pop3_v4(), "bob", "bob-pw", &opts).unwrap();
    assert!(t.ok(), "{}", t.normalized());
    assert_eq!(t.stat().map(|s| s.0), Some(3));
    assert_eq!(dc.message_count("bob"), 2);

    // A session cut off after DELE must not delete: the relay never sends QUIT for it.
    let opts = PoplibOptions {
        dele: vec![1],
        quit: false,
        ..Default::default()
    };
    let t = clients::poplib(&topo, server_pop3_v4(), "bob", "bob-pw", &opts).unwrap();
    assert!(t.get_str("dele 1").unwrap().starts_with("+OK"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dc.message_count("bob"), 2);
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn ipv6_client_reaches_the_ipv6_server_through_the_interceptor(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    dc.deliver(
        "alice",
        &make_message("x@p3i.test.example", "alice", "v6", "over IPv6"),
    )
    .unwrap();
    let addr = server_pop3_v6();
    let (direct, through, ic) = both_ways(&topo, dataplane, || {
        clients::poplib(&topo, addr, "alice", "alice-pw", &PoplibOptions::default())
            .unwrap()
            .normalized()
    });
    assert_eq!(direct, through);
    assert!(through.contains("over IPv6"), "{through}");
    assert!(counter(&ic, Counter::Redirected) > 0);
    let rips: Vec<String> = dc
        .logins_for("alice")
        .iter()
        .map(|l| l.rip.clone())
        .collect();
    assert_eq!(
        rips,
        [CLIENT_V6.to_string(), ROUTER_SERVER_V6.to_string()],
        "first direct, then from the router"
    );
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
#[case::tc_netlink("tc-netlink")]
fn after_kill_9_sessions_reach_dovecot_directly(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = relay(&topo, dataplane);
    let netlink = dataplane == "tc-netlink";
    poplib_ok(&topo, "alice", &PoplibOptions::default());
    assert_eq!(last_login_rip(&dc, "alice"), ROUTER_SERVER_V4.to_string());
    let links = || {
        topo.exec(Node::Router, &["ip", "-o", "link", "show"])
            .unwrap()
            .stdout_str()
    };
    let programs = || {
        topo.exec(Node::Router, &["bpftool", "net"])
            .unwrap()
            .stdout_str()
    };
    // The TC dataplane's TAP (pop3iN) lives exactly as long as the daemon's descriptor.
    assert_eq!(links().contains("pop3i"), dataplane != "xdp", "{}", links());
    if netlink {
        assert!(programs().contains("pop3_intercept_tc"), "{}", programs());
    }

    ic.kill9();
    if netlink {
        // The filter outlives the daemon, and passes everything once its heartbeat is stale.
        std::thread::sleep(Duration::from_nanos(HEARTBEAT_GRACE_NS) + Duration::from_secs(1));
    }
    poplib_ok(&topo, "alice", &PoplibOptions::default());
    assert_eq!(
        last_login_rip(&dc, "alice"),
        CLIENT_V4.to_string(),
        "fail-open: the session went straight to Dovecot"
    );
    assert!(
        !links().contains("pop3i"),
        "the TAP died with the daemon: {}",
        links()
    );
    // bpftool 7.1 (Debian 12) lists XDP links and netlink filters here but not TCX links:
    // for TCX the session above and the TAP being gone are the evidence.
    assert_eq!(
        programs().contains("pop3_intercept"),
        netlink,
        "only a netlink filter stays after the daemon: {}",
        programs()
    );
    if netlink {
        let pin_dir = ic.pin_dir().to_str().unwrap().to_string();
        let detach = ic
            .cli(&["detach", "--iface", "rc0", "--pin-dir", &pin_dir])
            .unwrap();
        assert!(detach.success(), "{detach:?}");
        assert!(!programs().contains("pop3_intercept"), "{}", programs());
    }
}

#[test]
fn sigterm_removes_the_netlink_filter() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let mut ic = relay(&topo, "tc-netlink");
    poplib_ok(&topo, "alice", &PoplibOptions::default());
    assert_eq!(last_login_rip(&dc, "alice"), ROUTER_SERVER_V4.to_string());
    let (exit, by_itself) = ic.terminate(Duration::from_secs(10));
    assert!(by_itself && exit.is_some_and(|s| s.success()), "{exit:?}");
    let net = topo
        .exec(Node::Router, &["bpftool", "net"])
        .unwrap()
        .stdout_str();
    assert!(!net.contains("pop3_intercept"), "filter left behind: {net}");
    poplib_ok(&topo, "alice", &PoplibOptions::default());
    assert_eq!(last_login_rip(&dc, "alice"), CLIENT_V4.to_string());
}

/// Runs `sessions` poplib checks of alice in the client namespace, each ended by the
/// client closing after the server's QUIT answer and FIN; prints, per session, how many
/// milliseconds the client's socket took to leave the kernel's table (LAST-ACK until the
/// server ACKs the client's FIN; -1: still there after 1.5 s).
const CLOSE_TIMES: &str = r#"
import poplib, sys, time
host, sessions = sys.argv[1], int(sys.argv[2])
def listed(port):
    rows = open("/proc/net/tcp").read().splitlines()[1:]
    return any(int(row.split()[1].split(":")[1], 16) == port for row in rows)
for _ in range(sessions):
    p = poplib.POP3(host, 110, timeout=10)
    port = p.sock.getsockname()[1]
    p.user("alice"); p.pass_("alice-pw"); p.stat(); p.quit()
    start = time.monotonic()
    while listed(port) and time.monotonic() - start < 1.5:
        time.sleep(0.002)
    print(-1 if listed(port) else round((time.monotonic() - start) * 1000))
"#;

/// The interceptor ACKs the client's FIN that answers its own: a client's close completes
/// at once, where it used to sit in LAST-ACK retransmitting its FIN to a flow the daemon had
/// already dropped (and that the classifier then passed to the real server).
#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn a_client_closing_after_quit_gets_its_fin_acked(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let _ic = relay(&topo, dataplane);
    let sessions = "8";
    let out = topo
        .exec_with(
            Node::Client,
            &[
                clients::python(),
                "-c",
                CLOSE_TIMES,
                &SERVER_V4.to_string(),
                sessions,
            ],
            None,
            Duration::from_secs(60),
        )
        .unwrap()
        .check("poplib sessions")
        .unwrap()
        .stdout_str();
    let times: Vec<i64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(times.len().to_string(), sessions, "{out}");
    // Linux retransmits an unanswered FIN after 200 ms at the earliest: a close that
    // completes well before that was ACKed the first time.
    assert!(
        times.iter().all(|&ms| (0..150).contains(&ms)),
        "milliseconds until each client socket closed: {times:?}"
    );
}

/// Back-to-back checks, 16 at a time, each from one of two fixed source ports: each
/// port's next SYN reaches the classifier within milliseconds of its previous flow's end,
/// while that flow's map entries are still due to be removed. Prints the sessions
/// completed, those reset, the connects refused here because the port was still closing,
/// and any other errors.
const REUSED_PORTS: &str = r#"
import errno, json, socket, sys, threading, time
server, client, sessions, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
threads, ports_each = 16, 2
deadline = time.monotonic() + seconds
lock = threading.Lock()
totals = {"done": 0, "resets": 0, "busy": 0, "other": []}

def run(ports):
    done, resets, busy, other = 0, 0, 0, []
    i = 0
    while i < sessions // threads and time.monotonic() < deadline:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(5)
        try:
            s.bind((client, ports[i % len(ports)]))
            i += 1
            s.connect((server, 110))
            f = s.makefile("rwb")
            for line in [None, b"USER alice", b"PASS alice-pw", b"STAT", b"QUIT"]:
                if line:
                    f.write(line + b"\r\n")
                    f.flush()
                reply = f.readline()
                if not reply.startswith(b"+OK"):
                    raise OSError("%r answered %r" % (line, reply))
            # The server closes first, so this port holds no TIME-WAIT and is free at once.
            while s.recv(4096):
                pass
            done += 1
        except ConnectionResetError:
            resets += 1
        except OSError as e:
            # EADDRNOTAVAIL: this port's last connection is still closing here (LAST-ACK).
            if e.errno == errno.EADDRNOTAVAIL:
                busy += 1
            else:
                other.append(repr(e))
        finally:
            s.close()
    with lock:
        totals["done"] += done
        totals["resets"] += resets
        totals["busy"] += busy
        totals["other"] += other

workers = [
    threading.Thread(target=run, args=([41000 + t * ports_each + p for p in range(ports_each)],))
    for t in range(threads)
]
for w in workers:
    w.start()
for w in workers:
    w.join()
totals["other"] = totals["other"][:5]
print(json.dumps(totals))
"#;

/// A client reusing its source ports back to back is never reset. A worker removes an
/// ended flow's `HALF_OPEN` entry up to 50 ms late; a new SYN of the same 4-tuple that the
/// classifier had just put there, still unread by the worker, lost its entry with it, and
/// the client's handshake ACK went to the real server, which reset it.
#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn a_client_reusing_its_ports_at_once_is_never_reset(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    // Attenuating, so that the checks after the first come fast; one subscriber's many
    // connections are not what the per-source limits are for.
    let mut args = vec!["--interval", "30s"];
    args.extend_from_slice(dataplane_args(dataplane));
    args.extend_from_slice(&NO_PER_SOURCE_LIMITS);
    let _ic = Interceptor::start(&topo, &args).expect("interceptor");
    let out = topo
        .exec_with(
            Node::Client,
            &[
                clients::python(),
                "-c",
                REUSED_PORTS,
                &SERVER_V4.to_string(),
                &CLIENT_V4.to_string(),
                "20000",
                "8",
            ],
            None,
            Duration::from_secs(60),
        )
        .unwrap()
        .check("reused-port sessions")
        .unwrap()
        .stdout_str();
    eprintln!("{dataplane}: {out}");
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("script output");
    assert_eq!(result["resets"], 0, "{out}");
    assert_eq!(result["other"].as_array().map(Vec::len), Some(0), "{out}");
    assert!(result["done"].as_u64().unwrap_or(0) >= 1000, "{out}");
}

#[rstest]
#[case::xdp("xdp")]
#[case::tc("tc")]
fn other_tcp_ports_pass_untouched(#[case] dataplane: &str) {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let ic = relay(&topo, dataplane);
    // An echo-like service on another port of the server.
    let log = topo.dir().join("other-port.log");
    let script = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('203.0.113.2', 2525)); s.listen(1); s.settimeout(20)\nc,a=s.accept(); c.sendall(('peer %s' % a[0]).encode() + b'\\r\\n'); c.close()";
    let _server = topo
        .spawn(Node::Server, &["python3", "-c", script], &log)
        .unwrap();
    let other = SocketAddr::new(SERVER_V4.into(), 2525);
    let matched_before = counter(&ic, Counter::Matched);
    let mut session = None;
    for _ in 0..50 {
        if let Ok(s) = RawSession::connect(&topo, Node::Client, other) {
            session = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut session = session.expect("port 2525 reachable while attached");
    let line = session.read_line().unwrap();
    assert_eq!(
        line,
        format!("peer {CLIENT_V4}\r\n"),
        "the kernel forwarded it"
    );
    assert_eq!(
        counter(&ic, Counter::Matched),
        matched_before,
        "the program left it alone"
    );
}

#[test]
fn every_session_is_intercepted_on_a_four_queue_interface() {
    let topo = Topology::with_options(TopologyOptions { rc0_queues: 4 }).unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let ic = relay(&topo, "xdp");
    assert!(
        ic.log_text().contains("queues=4"),
        "one AF_XDP socket per RX queue: {}",
        ic.log_tail(5)
    );
    let no_retr = PoplibOptions {
        retr: false,
        ..Default::default()
    };
    for _ in 0..20 {
        poplib_ok(&topo, "carol", &no_retr);
    }
    let rips: Vec<String> = dc
        .logins_for("carol")
        .iter()
        .map(|l| l.rip.clone())
        .collect();
    assert_eq!(rips.len(), 20);
    assert!(
        rips.iter().all(|r| r == &ROUTER_SERVER_V4.to_string()),
        "every session came through the interceptor: {rips:?}"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_100_kb_line_gets_err_and_memory_stays_bounded() {
    let topo = Topology::new().unwrap();
    let _dc = Dovecot::start(&topo).unwrap();
    let ic = relay(&topo, "xdp");
    // The fixture's pid is `ip netns exec`, which execs the daemon: same pid.
    let before = rss_kib(ic.pid());
    for _ in 0..5 {
        let mut line = vec![b'A'; 100 * 1024];
        line.extend_from_slice(b"\r\n");
        let reply = clients::raw_exchange(
            &topo,
            server_pop3_v4(),
            &line,
            Duration::from_secs(10),
            4096,
        )
        .unwrap();
        let text = reply.reply_str();
        assert!(text.starts_with("-ERR"), "{text:?}");
        assert!(reply.closed, "the connection closes after the -ERR");
    }
    let after = rss_kib(ic.pid());
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB for 500 KB of bad input"
    );
    // Still serving.
    poplib_ok(&topo, "alice", &PoplibOptions::default());
}

#[test]
fn a_stopped_mail_server_gets_sys_temp_within_the_timeout() {
    let topo = Topology::new().unwrap();
    let mut dc = Dovecot::start(&topo).unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay", "--connect-timeout", "2s"]).unwrap();
    dc.stop().unwrap();

    // Refused: the answer comes at once.
    let started = Instant::now();
    let mut session = RawSession::connect(&topo, Node::Client, server_pop3_v4()).unwrap();
    let line = session.read_line().unwrap();
    assert!(line.starts_with("-ERR [SYS/TEMP]"), "{line:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_, eof) = session.read_to_end_bounded(1024);
    assert!(eof, "the connection closes");

    // Unreachable (the server's link is down): the answer comes within the timeout.
    topo.exec(Node::Server, &["ip", "link", "set", HOST_IFACE, "down"])
        .unwrap();
    let started = Instant::now();
    let mut session = RawSession::connect(&topo, Node::Client, server_pop3_v4()).unwrap();
    session.set_timeout(Duration::from_secs(10)).unwrap();
    let line = session.read_line().unwrap();
    assert!(line.starts_with("-ERR [SYS/TEMP]"), "{line:?}");
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_silent_mail_server_gets_sys_temp_within_the_response_timeout() {
    let topo = Topology::new().unwrap();
    let mut dc = Dovecot::start(&topo).unwrap();
    dc.stop().unwrap();
    // Accepts connections and never says a word.
    let script = "import socket,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('203.0.113.2', 110)); s.listen(8)\nc,a=s.accept(); time.sleep(30)";
    let _silent = topo
        .spawn(
            Node::Server,
            &["python3", "-c", script],
            &topo.dir().join("silent.log"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ic = Interceptor::start(&topo, &["--mode", "relay", "--response-timeout", "2s"]).unwrap();
    let started = Instant::now();
    let mut session = RawSession::connect(&topo, Node::Client, server_pop3_v4()).unwrap();
    session.set_timeout(Duration::from_secs(10)).unwrap();
    let line = session.read_line().unwrap();
    assert!(line.starts_with("-ERR [SYS/TEMP]"), "{line:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(4500),
        "{waited:?}"
    );
}

#[test]
fn a_client_reading_slowly_never_makes_the_server_look_silent() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    let message = make_large_message("alice@p3i.test.example", 24 << 20);
    dc.deliver("alice", &message).unwrap();
    let _ic = Interceptor::start(&topo, &["--mode", "relay", "--response-timeout", "2s"]).unwrap();
    let mut s = RawSession::connect(&topo, Node::Client, server_pop3_v4()).unwrap();
    s.set_timeout(Duration::from_secs(20)).unwrap();
    s.read_line().unwrap();
    assert!(s.command("USER alice").unwrap().starts_with("+OK"));
    assert!(s.command("PASS alice-pw").unwrap().starts_with("+OK"));
    assert!(s.command("RETR 1").unwrap().starts_with("+OK"));
    // A command pipelined behind the body, and a client that takes a little, then
    // nothing for longer than the response timeout, again and again: each time the
    // daemon has paused the server for it, so the server's silence is not a failure.
    s.send(b"NOOP\r\n").unwrap();
    let mut taken = Vec::new();
    for _ in 0..5 {
        taken.extend(s.read_some(128 * 1024).unwrap());
        std::thread::sleep(Duration::from_millis(3500));
    }
    let rest = s
        .read_multiline()
        .expect("the whole body, no [SYS/TEMP] cut");
    let body = [taken, rest].concat();
    assert!(
        body.len() >= message.len(),
        "{} < {}",
        body.len(),
        message.len()
    );
    assert!(!String::from_utf8_lossy(&body).contains("[SYS/TEMP]"));
    assert!(s.read_line().unwrap().starts_with("+OK"), "NOOP answered");
    assert!(s.command("QUIT").unwrap().starts_with("+OK"));
}

/// A subscriber behind an access switch that tags (802.1Q, or QinQ): its SYN is taken over
/// and the SYN-ACK leaves with the same tags, outer first. On TC the kernel has moved the
/// outer tag into the skb's metadata before the classifier runs.
#[rstest]
#[case::xdp_one_tag("xdp", vec![100])]
#[case::tc_one_tag("tc", vec![100])]
#[case::xdp_qinq("xdp", vec![100, 200])]
#[case::tc_qinq("tc", vec![100, 200])]
fn a_vlan_tagged_client_is_answered_with_its_tags(
    #[case] dataplane: &str,
    #[case] vlans: Vec<u16>,
) {
    let topo = Topology::new().unwrap();
    let ic = relay(&topo, dataplane);
    let link = RawLink::client(&topo).unwrap();
    let ip = subscriber(72);
    raw::add_neighbour(&topo, ip.into(), link.mac).unwrap();
    let mut syn = Seg::syn(
        link.mac,
        raw::router_mac(&topo).unwrap(),
        SocketAddrV4::new(ip, 40001),
        SocketAddrV4::new(SERVER_V4, 110),
        1_000_000,
    );
    syn.vlans = vlans.clone();
    link.send(&syn.frame()).unwrap();
    let reply = link
        .recv_tcp(syn.dst, syn.src, Duration::from_secs(5))
        .expect("a SYN-ACK for the tagged SYN");
    assert!(reply.is_syn_ack(), "{reply:?}");
    assert_eq!(reply.vlans, vlans, "the client's tags kept, outer first");
    assert!(counter(&ic, Counter::Redirected) > 0);
}
