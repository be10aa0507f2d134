//! Memory per attenuation-table entry, measured in a test binary of its own so that its
//! counting global allocator applies to nothing else. Ignored by default (it takes a few
//! seconds in release); run it with
//! `cargo test --release -p pop3-engine --test table_memory -- --ignored --nocapture`
//! (`TABLE_USERS=N` for another user count; `cargo xtask bench --table-only` runs this).
//! Run one measurement per process (name it with `--exact`, as the bench does): the
//! allocator's counts are the process's, and one taken after the other read several times
//! too high.
//!
//! The real [`AttenuationEngine`] is driven through complete check sessions (greeting,
//! USER, PASS, QUIT with the held STAT) for N distinct users against a scripted mail
//! server, with a fake clock (1 ms per session). All sessions are closed first, so what
//! remains is the table: its slots, index and timer list (and long usernames). Two views:
//! the bytes the engine asked the allocator for (live after minus live before, divided by
//! N), and glibc's in-use bytes (`mallinfo2`: `uordblks + hblkhd`), which add malloc's per-chunk
//! overhead and rounding. The test fails when either passes [`TARGET_BYTES`].
//!
//! A second measurement does the same for users who leave mail on the server: the scripted
//! server lists [`KEPT_MESSAGES`] messages (Dovecot's LIST and UIDL formats), so each entry
//! holds a maildrop snapshot; it fails past [`SNAPSHOT_TARGET_BYTES`] per user.

use std::time::{Duration, Instant};

use pop3_engine::{
    attenuation::{AttenuationEngine, Config, Entry, Salt, UserKey},
    session::{Action, ConnInfo, Event, Output, Pop3Engine},
    testing::alloc::{CountingAlloc, live_bytes},
};

/// Bytes per entry the table must stay under, in both views.
const TARGET_BYTES: f64 = 256.0;
/// Messages a leave-on-server user keeps on the server.
const KEPT_MESSAGES: usize = 20;
/// Bytes per leave-on-server user (entry and snapshot) the table must stay under.
const SNAPSHOT_TARGET_BYTES: f64 = 1024.0;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// The allocator's counts are the whole process's: one measurement at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// glibc's view of the heap in use (arena chunks + mmapped chunks), overhead included.
fn malloc_in_use() -> usize {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let mi = unsafe { libc::mallinfo2() };
    mi.uordblks + mi.hblkhd
}

/// What [`fill`] measured, per user (the first user, which warms the engine, excluded).
struct PerUser {
    requested: f64,
    malloc: f64,
    username_len: usize,
    elapsed_s: f64,
}

/// The scripted server's STAT, LIST and UIDL answers for a maildrop of `messages`.
fn maildrop(messages: usize) -> [Vec<u8>; 3] {
    let size = |n: usize| 2000 + 37 * n;
    let total: usize = (1..=messages).map(size).sum();
    let mut list = format!("+OK {messages} messages:\r\n");
    let mut uidl = "+OK\r\n".to_string();
    for n in 1..=messages {
        list += &format!("{n} {}\r\n", size(n));
        uidl += &format!("{n} {:08X}{:08X}\r\n", n + 100, 1_700_000_000);
    }
    list += ".\r\n";
    uidl += ".\r\n";
    [
        format!("+OK {messages} {total}\r\n").into_bytes(),
        list.into_bytes(),
        uidl.into_bytes(),
    ]
}

/// Drives `users` check sessions of distinct users through the engine, each seeing
/// `messages` messages and leaving them on the server, and measures what the table keeps.
fn fill(users: usize, messages: usize) -> PerUser {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let [stat, list, uidl] = maildrop(messages);
    let started = Instant::now();
    let server: std::net::SocketAddr = "203.0.113.2:110".parse().unwrap();
    let t0 = Instant::now();
    let mut engine = AttenuationEngine::new(Config::default(), Salt::new([1, 2, 3, 4]), t0);
    let mut out: Vec<Output> = Vec::with_capacity(64);
    let mut queue: std::collections::VecDeque<Output> =
        std::collections::VecDeque::with_capacity(64);
    let mut feed: Vec<Vec<u8>> = Vec::with_capacity(8);
    // Warm the engine's per-connection structures and the server record with one session
    // whose user is then measured too (so the loop below covers users 1..N).
    let name = |i: usize| format!("user{i:07}");
    let username_len = name(0).len();
    let mut before: Option<(isize, usize)> = None;
    for i in 0..users {
        if i == 1 {
            before = Some((live_bytes(), malloc_in_use()));
        }
        let now = t0 + Duration::from_millis(i as u64);
        let conn = i as u64;
        let client: std::net::SocketAddr = format!("198.51.100.2:{}", 1024 + (i % 60000))
            .parse()
            .unwrap();
        out.clear();
        engine.open(conn, ConnInfo { client, server }, now, &mut out);
        // The first session to a server connects at once (its greeting is learnt).
        queue.extend(out.drain(..));
        let user = format!("USER {}\r\n", name(i)).into_bytes();
        let client_lines: [&[u8]; 3] = [&user, b"PASS secret-pw\r\n", b"QUIT\r\n"];
        let mut closed = false;
        for line in client_lines {
            out.clear();
            engine.handle(conn, Event::ClientData(line), now, &mut out);
            queue.extend(out.drain(..));
            // A scripted mail server answers whatever the engine sends it.
            let mut guard = 0;
            while let Some(o) = queue.pop_front() {
                guard += 1;
                if guard > 100 {
                    panic!("table_memory: the engine did not settle for user {i}");
                }
                feed.clear();
                let mut connected = false;
                match o.action {
                    Action::ConnectUpstream => connected = true,
                    Action::ToUpstream(bytes) => {
                        for cmd in bytes.split_inclusive(|&b| b == b'\n') {
                            let verb = cmd
                                .split(|&b| b == b' ' || b == b'\r')
                                .next()
                                .unwrap_or_default()
                                .to_ascii_uppercase();
                            feed.push(match verb.as_slice() {
                                b"CAPA" => {
                                    b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n.\r\n".to_vec()
                                }
                                b"STAT" => stat.clone(),
                                b"LIST" => list.clone(),
                                b"UIDL" => uidl.clone(),
                                b"QUIT" => b"+OK Logging out.\r\n".to_vec(),
                                _ => b"+OK\r\n".to_vec(),
                            });
                        }
                    }
                    Action::CloseClient | Action::CloseUpstream => closed = true,
                    Action::ToClient(_) => {}
                    Action::CacheRead { .. } | Action::CacheForget { .. } => {
                        unreachable!("the edge cache is off")
                    }
                }
                if connected {
                    out.clear();
                    engine.handle(conn, Event::UpstreamConnected, now, &mut out);
                    queue.extend(out.drain(..));
                    feed.push(b"+OK Dovecot ready.\r\n".to_vec());
                }
                for answer in feed.drain(..) {
                    out.clear();
                    engine.handle(conn, Event::UpstreamData(&answer), now, &mut out);
                    queue.extend(out.drain(..));
                }
            }
        }
        if !closed {
            panic!("table_memory: session {i} did not end");
        }
        engine.close(conn, now);
        // The daemon drains the engine's change list for its table mirror all the time.
        drop(engine.take_changes());
    }
    let (live0, malloc0) = before.unwrap_or((0, 0));
    let live1 = live_bytes();
    let malloc1 = malloc_in_use();
    let counted = users.saturating_sub(1).max(1) as f64;
    let c = engine.counters();
    if engine.table().len() != users || c.checks_seen != users as u64 {
        panic!(
            "table_memory: expected {users} entries and checks, got {} and {:?}",
            engine.table().len(),
            c
        );
    }
    let mut kept = 0;
    engine.table().for_each(|_, e| {
        kept += usize::from(match e.view() {
            Some(Some(m)) => m.count() == Some(messages),
            Some(None) => messages == 0,
            None => false,
        });
    });
    if kept != users {
        panic!("table_memory: only {kept} of {users} entries hold the maildrop seen");
    }
    PerUser {
        requested: (live1 - live0) as f64 / counted,
        malloc: (malloc1 as f64 - malloc0 as f64) / counted,
        username_len,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}

fn users_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(2)
}

#[test]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
fn table_memory_per_entry() {
    let users = users_from_env("TABLE_USERS", 100_000);
    let m = fill(users, 0);
    // One line for `cargo xtask bench` to read.
    println!(
        "TABLE_MEMORY users={users} username_len={} requested={:.1} malloc={:.1} entry={} \
         key={} elapsed_s={:.2}",
        m.username_len,
        m.requested,
        m.malloc,
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<UserKey>(),
        m.elapsed_s
    );
    assert!(
        m.requested < TARGET_BYTES && m.malloc < TARGET_BYTES,
        "{:.1} B requested and {:.1} B in malloc per entry: over {TARGET_BYTES}",
        m.requested,
        m.malloc
    );
}

#[test]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
fn table_memory_per_leave_on_server_user() {
    // Few enough that every snapshot fits the default maildrop budget.
    let users = users_from_env("TABLE_SNAPSHOT_USERS", 10_000);
    let m = fill(users, KEPT_MESSAGES);
    println!(
        "TABLE_MEMORY_SNAPSHOT users={users} messages={KEPT_MESSAGES} requested={:.1} \
         malloc={:.1} elapsed_s={:.2}",
        m.requested, m.malloc, m.elapsed_s
    );
    assert!(
        m.requested < SNAPSHOT_TARGET_BYTES && m.malloc < SNAPSHOT_TARGET_BYTES,
        "{:.1} B requested and {:.1} B in malloc per user: over {SNAPSHOT_TARGET_BYTES}",
        m.requested,
        m.malloc
    );
}
