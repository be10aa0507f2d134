//! The patent's edge cache with the real Dovecot: a copy kept at the edge answers a
//! RETR byte for byte, and only once Dovecot's own UIDL and size for that message, in
//! the user's session, match it. Dovecot's logout line (`retr=N/BYTES`) tells whether a
//! body came from it. The cache folder is filled here through the store the daemon
//! uses, as a prefetch would fill it. Run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e --test edge_cache -- --test-threads=1`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use pop3_interceptor::cache::store::{Limits, Store, UserId};
use pop3_interceptor_e2e::clients::{PoplibOptions, RawSession, poplib};
use pop3_interceptor_e2e::dovecot::make_message;
use pop3_interceptor_e2e::topology::server_pop3_v4;
use pop3_interceptor_e2e::util::wait_for;
use pop3_interceptor_e2e::{Dovecot, Interceptor, Node, Topology};
use serde_json::Value;

const LIMITS: Limits = Limits {
    per_user: 1 << 20,
    total: 4 << 20,
};

/// A message as Dovecot lists and sends it.
#[derive(Debug)]
struct Mail {
    uidl: String,
    /// The RETR answer as sent: status line, dot-stuffed body, `.` line.
    retr: Vec<u8>,
}

impl Mail {
    /// The message itself, as the cache keeps it: dot-stuffing and the `.` line removed,
    /// and the line end Dovecot adds to a message that does not end with one (its size,
    /// the octets of the status line, does not count it).
    fn message(&self) -> Vec<u8> {
        let status_end = self.retr.iter().position(|&b| b == b'\n').unwrap() + 1;
        let status = String::from_utf8_lossy(&self.retr[..status_end]);
        let octets: usize = status.split(' ').nth(1).unwrap().parse().unwrap();
        let body = &self.retr[status_end..self.retr.len() - 3];
        let mut message = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            message.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        message.truncate(octets);
        message
    }
}

fn login(topo: &Topology, node: Node) -> RawSession {
    login_as(topo, node, "alice")
}

/// A session of `user` (password `USER-pw`), logged in.
fn login_as(topo: &Topology, node: Node, user: &str) -> RawSession {
    let mut s = RawSession::connect(topo, node, server_pop3_v4()).unwrap();
    s.set_timeout(Duration::from_secs(20)).unwrap();
    s.read_line().unwrap();
    s.command(&format!("USER {user}")).unwrap();
    let pass = s.command(&format!("PASS {user}-pw")).unwrap();
    assert!(pass.starts_with("+OK"), "{pass}");
    s
}

fn retr(s: &mut RawSession, n: usize) -> Vec<u8> {
    let status = s.command(&format!("RETR {n}")).unwrap();
    let mut answer = status.clone().into_bytes();
    if status.starts_with("+OK") {
        answer.extend(s.read_multiline().unwrap());
    }
    answer
}

fn quit(mut s: RawSession) {
    let quit = s.command("QUIT").unwrap();
    assert!(quit.starts_with("+OK"), "{quit}");
}

/// Every message of alice's maildrop, read directly from Dovecot.
fn mails(topo: &Topology, node: Node) -> Vec<Mail> {
    mails_of(topo, node, "alice", usize::MAX)
}

/// The first `count` messages of `user`'s maildrop, read directly from Dovecot.
fn mails_of(topo: &Topology, node: Node, user: &str, count: usize) -> Vec<Mail> {
    let mut s = login_as(topo, node, user);
    s.send(b"UIDL\r\n").unwrap();
    s.read_line().unwrap();
    let listing = s.read_multiline().unwrap();
    let uidls: Vec<String> = String::from_utf8_lossy(&listing)
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(_, uid)| uid.to_owned()))
        .collect();
    let mails = uidls
        .into_iter()
        .take(count)
        .enumerate()
        .map(|(i, uidl)| Mail {
            uidl,
            retr: retr(&mut s, i + 1),
        })
        .collect();
    quit(s);
    mails
}

fn fill(dir: &Path, mails: &[Mail]) {
    fill_for(dir, "alice", mails);
}

/// Stores `mails` as `user`'s, as a prefetch would.
fn fill_for(dir: &Path, user: &str, mails: &[Mail]) {
    let mut store = Store::open(dir, LIMITS).unwrap();
    let id = UserId::new(server_pop3_v4(), user.as_bytes());
    for mail in mails {
        store
            .put(id, mail.uidl.as_bytes(), &mail.message())
            .unwrap();
    }
}

/// The cache file of `uidl`, if there is one.
fn cache_file(dir: &Path, uidl: &str) -> Option<PathBuf> {
    let prefix: String = uidl.bytes().map(|b| format!("{b:02x}")).collect::<String>() + ",";
    let users = std::fs::read_dir(dir).ok()?;
    users.flatten().find_map(|user| {
        let files = std::fs::read_dir(user.path().join("new")).ok()?;
        files.flatten().map(|f| f.path()).find(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with(&prefix)
        })
    })
}

/// Dovecot's `field=N/BYTES` (`retr`, `top`) of alice's sessions that ended, oldest
/// first.
fn logout_counts(dc: &Dovecot, field: &str) -> Vec<String> {
    let field = format!("{field}=");
    dc.log_lines_matching(&field)
        .into_iter()
        .filter(|line| line.contains("pop3(alice)"))
        .filter_map(|line| {
            let at = line.find(&field)?;
            Some(line[at..].split(',').next()?.to_owned())
        })
        .collect()
}

/// Waits for Dovecot to log the end of alice's `n`-th session; returns its `field=`.
fn nth_logout_of(dc: &Dovecot, n: usize, field: &str) -> String {
    for _ in 0..100 {
        if let Some(count) = logout_counts(dc, field).get(n - 1) {
            return count.clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no logout {n} in\n{}", dc.log_text());
}

/// The `retr=` of alice's `n`-th session.
fn nth_logout(dc: &Dovecot, n: usize) -> String {
    nth_logout_of(dc, n, "retr")
}

fn deliver_three(dc: &Dovecot) {
    for (subject, body) in [
        (
            "one",
            "first\r\n.a line that starts with a dot\r\n..and two\r\n",
        ),
        ("two", "second"),
        ("three", "third"),
    ] {
        let message = make_message("a@example.org", "alice@example.org", subject, body);
        dc.deliver("alice", &message).unwrap();
    }
}

/// Every check passes through (n = 0), so every session reaches Dovecot.
fn interceptor(topo: &Topology, cache: &Path) -> Interceptor {
    let cache = cache.to_str().unwrap();
    Interceptor::start(topo, &["--interval", "0s", "--cache-dir", cache]).unwrap()
}

/// The `formatted` entry of `user` in a `bpftool -j map dump` of USERS. The mirror runs on
/// the operator thread, a moment after the session: it gets two seconds.
fn users_entry(ic: &Interceptor, user: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let dump = ic.dump_map("USERS").unwrap();
        let entries = dump.as_array().expect("array dump").iter();
        let mut formatted =
            entries.map(|e| e.get("formatted").cloned().unwrap_or_else(|| e.clone()));
        match formatted.find(|e| e["key"]["user"] == user) {
            Some(entry) => return entry,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => panic!("{user} not in USERS: {dump}"),
        }
    }
}

/// After alice's session read every message of `mails` from the edge: the pinned USERS
/// map (read with the real bpftool) and `status` show what the cache holds and served.
fn operator_sees(ic: &Interceptor, mails: &[Mail]) {
    let bytes: usize = mails.iter().map(|m| m.message().len()).sum();
    let alice = users_entry(ic, "alice");
    assert_eq!(alice["value"]["cached_messages"], mails.len(), "{alice}");
    assert_eq!(alice["value"]["cached_bytes"], bytes, "{alice}");
    // STATS is published once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let pin_dir = ic.pin_dir().to_str().unwrap().to_owned();
    let args = ["status", "--json", "--pin-dir", &pin_dir, "--user", "alice"];
    let out = ic.cli(&args).unwrap().check("status --json").unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let engine = &status["engine"];
    assert_eq!(engine["cache_hits"], mails.len(), "{status}");
    assert_eq!(engine["cache_misses"], 0, "{status}");
    assert_eq!(engine["cache_bytes_served"], bytes, "{status}");
    assert_eq!(engine["cache_messages"], mails.len(), "{status}");
    assert_eq!(engine["cache_bytes"], bytes, "{status}");
    assert_eq!(engine["cache_evictions"], 0, "{status}");
    assert_eq!(engine["cache_sync_mismatches"], 0, "{status}");
    let users = status["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{status}");
    assert_eq!(users[0]["cached_messages"], mails.len(), "{status}");
    assert_eq!(users[0]["cached_bytes"], bytes, "{status}");
    let text = ic.cli(&["status", "--pin-dir", &pin_dir]).unwrap();
    let text = text.stdout_str();
    let totals = format!(
        "edge cache: {n} hits, 0 misses, {bytes} bytes served",
        n = mails.len()
    );
    assert!(text.contains(&totals), "{text}");
    assert!(
        text.contains(&format!(" {}/{bytes} ", mails.len())),
        "{text}"
    );
}

#[test]
fn a_cached_copy_is_served_byte_for_byte_checked_kept_across_a_restart_and_deleted_on_both_sides() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    deliver_three(&dc);
    let direct = mails(&topo, Node::Client);
    assert_eq!(direct.len(), 3);
    assert!(
        nth_logout(&dc, 1).starts_with("retr=3/"),
        "direct: from Dovecot"
    );
    let cache = topo.dir().join("cache");
    fill(&cache, &direct);

    // Served from the edge: byte for byte, and Dovecot sent no body.
    let ic = interceptor(&topo, &cache);
    let mut s = login(&topo, Node::Client);
    for (i, mail) in direct.iter().enumerate() {
        assert_eq!(retr(&mut s, i + 1), mail.retr, "message {}", i + 1);
    }
    quit(s);
    assert_eq!(nth_logout(&dc, 2), "retr=0/0");
    operator_sees(&ic, &direct);

    // Restarted, the daemon still has the copies.
    drop(ic);
    let _ic = interceptor(&topo, &cache);
    let mut s = login(&topo, Node::Client);
    assert_eq!(retr(&mut s, 2), direct[1].retr);
    quit(s);
    assert_eq!(nth_logout(&dc, 3), "retr=0/0");

    // A corrupted copy (same size, one byte changed) is deleted, not served.
    let file = cache_file(&cache, &direct[2].uidl).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();
    let mut s = login(&topo, Node::Client);
    assert_eq!(retr(&mut s, 3), direct[2].retr);
    quit(s);
    assert!(nth_logout(&dc, 4).starts_with("retr=1/"), "from Dovecot");
    assert!(!file.exists());

    // DELE through the edge: gone from Dovecot after QUIT, and from the cache.
    let mut s = login(&topo, Node::Client);
    assert!(s.command("DELE 1").unwrap().starts_with("+OK"));
    assert!(
        cache_file(&cache, &direct[0].uidl).is_some(),
        "not before QUIT"
    );
    quit(s);
    assert_eq!(dc.message_count("alice"), 2);
    assert_eq!(cache_file(&cache, &direct[0].uidl), None);
    assert!(cache_file(&cache, &direct[1].uidl).is_some());
}

#[test]
fn a_message_deleted_behind_the_edge_is_never_served_and_a_mismatch_drops_the_cache() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    deliver_three(&dc);
    let direct = mails(&topo, Node::Client);
    let cache = topo.dir().join("cache");
    fill(&cache, &direct);
    let _ic = interceptor(&topo, &cache);

    // Webmail (a session from the server's side) deletes message 1 after the prefetch.
    let mut webmail = login(&topo, Node::Server);
    assert!(webmail.command("DELE 1").unwrap().starts_with("+OK"));
    quit(webmail);
    // Through the edge, every number gets what Dovecot holds under it now: message 1
    // is what was 2, from the edge's copy of that UIDL; the deleted one never comes.
    let mut s = login(&topo, Node::Client);
    assert_eq!(retr(&mut s, 1), direct[1].retr);
    assert_eq!(retr(&mut s, 2), direct[2].retr);
    assert!(retr(&mut s, 3).starts_with(b"-ERR"));
    quit(s);
    assert_eq!(nth_logout(&dc, 3), "retr=0/0");

    // A copy of another size under a UIDL Dovecot lists: the edge is out of sync, and
    // the user's whole cache goes; the body comes from Dovecot.
    let mut other = Store::open(&cache, LIMITS).unwrap();
    let alice = UserId::new(server_pop3_v4(), b"alice");
    other
        .put(
            alice,
            direct[1].uidl.as_bytes(),
            b"Subject: not it\r\n\r\nx\r\n",
        )
        .unwrap();
    drop(other);
    // The running daemon indexed the folder at start: restart it to see the change.
    drop(_ic);
    let _ic = interceptor(&topo, &cache);
    let mut s = login(&topo, Node::Client);
    assert_eq!(retr(&mut s, 1), direct[1].retr);
    quit(s);
    assert!(nth_logout(&dc, 4).starts_with("retr=1/"));
    assert_eq!(
        cache_file(&cache, &direct[2].uidl),
        None,
        "all of alice's cache"
    );
}

/// Stored files in every shape Dovecot's RETR and TOP tell apart: bare LF and CRLF,
/// lines that start with `.`, headers without a blank line, a blank line without a body,
/// a last line without its line end, nothing at all.
const SHAPES: [&[u8]; 6] = [
    b"From: a@example.org\nSubject: lf\n\nfirst\n.dot\n..two\n\nlast\n",
    b"From: a@example.org\r\nSubject: crlf\r\n\r\none\r\n.two\r\nthree\r\n",
    b"From: a@example.org\nSubject: headers only\n",
    b"From: a@example.org\nSubject: empty body\n\n",
    b"From: a@example.org\nSubject: no end\n\nline one\nno line end",
    b"",
];
const TOP_LINES: [u32; 5] = [0, 1, 2, 3, 100];

/// `TOP n lines` of every message for every count in [`TOP_LINES`], as answered.
fn tops(s: &mut RawSession, count: usize) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    for n in 1..=count {
        for lines in TOP_LINES {
            let status = s.command(&format!("TOP {n} {lines}")).unwrap();
            let mut answer = status.clone().into_bytes();
            assert!(status.starts_with("+OK"), "TOP {n} {lines}: {status}");
            answer.extend(s.read_multiline().unwrap());
            answers.push(answer);
        }
    }
    answers
}

/// poplib's `top` of every message for every count in [`TOP_LINES`].
fn poplib_tops(topo: &Topology) -> String {
    let opts = PoplibOptions {
        retr: false,
        top: (1..=SHAPES.len() as u32)
            .flat_map(|n| TOP_LINES.map(|lines| (n, lines)))
            .collect(),
        ..PoplibOptions::default()
    };
    let transcript = poplib(topo, server_pop3_v4(), "alice", "alice-pw", &opts).unwrap();
    assert!(transcript.ok(), "{}", transcript.normalized());
    // Everything after the greeting (the edge greets with its own).
    let text = transcript.normalized();
    text.split_once('\n').unwrap().1.to_owned()
}

#[test]
fn retr_and_top_of_every_shape_are_answered_from_the_edge_as_dovecot_answers_them() {
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    for shape in SHAPES {
        dc.deliver("alice", shape).unwrap();
    }
    // Directly: every message, then every TOP, raw and through poplib.
    let direct = mails(&topo, Node::Client);
    assert_eq!(direct.len(), SHAPES.len());
    let mut s = login(&topo, Node::Client);
    let direct_tops = tops(&mut s, SHAPES.len());
    quit(s);
    let direct_poplib = poplib_tops(&topo);
    let asked = format!("top={}/", direct_tops.len());
    assert!(
        nth_logout_of(&dc, 2, "top").starts_with(&asked),
        "from Dovecot"
    );
    let cache = topo.dir().join("cache");
    fill(&cache, &direct);

    // Through the edge: the same bytes, and Dovecot sent none of them.
    let _ic = interceptor(&topo, &cache);
    let mut s = login(&topo, Node::Client);
    let edge_tops = tops(&mut s, SHAPES.len());
    for (i, mail) in direct.iter().enumerate() {
        let edge = retr(&mut s, i + 1);
        let (edge, direct) = (edge.escape_ascii(), mail.retr.escape_ascii());
        assert_eq!(edge.to_string(), direct.to_string(), "RETR {}", i + 1);
    }
    quit(s);
    assert_eq!(nth_logout(&dc, 4), "retr=0/0");
    for (i, (edge, direct)) in edge_tops.iter().zip(&direct_tops).enumerate() {
        let (n, lines) = (i / TOP_LINES.len() + 1, TOP_LINES[i % TOP_LINES.len()]);
        assert_eq!(
            edge.escape_ascii().to_string(),
            direct.escape_ascii().to_string(),
            "TOP {n} {lines}"
        );
    }
    assert_eq!(nth_logout_of(&dc, 4, "top"), "top=0/0");
    assert_eq!(poplib_tops(&topo), direct_poplib);
    assert_eq!(nth_logout_of(&dc, 5, "top"), "top=0/0");
}

/// Median of `samples` (sorted here).
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Both ways of the handshake serve every body from the edge: alice's maildrop is listed
/// once per session (UIDL and LIST; her later RETRs ask the server nothing, as the
/// engine's transcripts check), bob's is too large to keep listed (over 16 KiB), so each
/// of his RETRs still asks `UIDL n` and `LIST n` first. Prints the median time of a RETR
/// from the edge both ways, side by side in one run (timing is not asserted: the machine
/// is shared).
#[test]
fn retr_from_the_edge_with_the_sessions_listing_and_per_message() {
    const FETCHED: usize = 40;
    let topo = Topology::new().unwrap();
    let dc = Dovecot::start(&topo).unwrap();
    for (user, count) in [("alice", FETCHED), ("bob", 700)] {
        for i in 0..count {
            let body = format!("message {i} for {user}\r\n");
            let message = make_message("a@example.org", "x@example.org", "m", &body);
            dc.deliver(user, &message).unwrap();
        }
    }
    let cache = topo.dir().join("cache");
    for user in ["alice", "bob"] {
        fill_for(&cache, user, &mails_of(&topo, Node::Client, user, FETCHED));
    }
    let _ic = interceptor(&topo, &cache);
    let mut medians = Vec::new();
    for user in ["alice", "bob"] {
        let mut s = login_as(&topo, Node::Client, user);
        // The first RETR carries the session's handshake either way.
        assert!(retr(&mut s, 1).starts_with(b"+OK"));
        let mut took: Vec<Duration> = (2..=FETCHED)
            .map(|n| {
                let start = std::time::Instant::now();
                assert!(retr(&mut s, n).starts_with(b"+OK"), "RETR {n}");
                start.elapsed()
            })
            .collect();
        quit(s);
        medians.push(median(&mut took));
    }
    // Dovecot logs a session's logout after it answered QUIT: wait for both sessions'
    // lines (after the two sessions that filled the cache).
    let logouts: Vec<String> = wait_for(
        "the two sessions' logout lines",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let lines: Vec<String> = dc
                .log_lines_matching("retr=")
                .into_iter()
                .filter_map(|line| Some(line[line.find("retr=")?..].split(',').next()?.to_owned()))
                .collect();
            (lines.len() >= 4).then_some(lines)
        },
    )
    .unwrap();
    assert_eq!(
        logouts[logouts.len() - 2..],
        ["retr=0/0", "retr=0/0"],
        "every body from the edge"
    );
    println!(
        "median RETR from the edge: listed once {:?}, asked per message {:?} ({:.2}x)",
        medians[0],
        medians[1],
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
}
