//! Memory per attenuation-table entry, measured in a test binary of its own so that its
//! counting global allocator applies to nothing else. Ignored by default (it takes a few
//! seconds in release); run it with
//! `cargo test --release -p pop3-engine --test table_memory -- --ignored --nocapture`
//! (`TABLE_USERS=N` for another user count; `cargo xtask bench --table-only` runs this).
//!
//! The real [`AttenuationEngine`] is driven through complete check sessions (greeting,
//! USER, PASS, QUIT with the held STAT) for N distinct users against a scripted mail
//! server, with a fake clock (1 ms per session). All sessions are closed first, so what
//! remains is the table: map, timer list, keys (and long usernames). Two views: the bytes
//! the engine asked the allocator for (live after minus live before, divided by N), and
//! glibc's in-use bytes (`mallinfo2`: `uordblks + hblkhd`), which add malloc's per-chunk
//! overhead and rounding. The test fails when either passes [`TARGET_BYTES`].

use std::time::{Duration, Instant};

use pop3_engine::{
    attenuation::{AttenuationEngine, Config, Entry, Salt, UserKey},
    session::{Action, ConnInfo, Event, Output, Pop3Engine},
    testing::alloc::{CountingAlloc, live_bytes},
};

/// Bytes per entry the table must stay under, in both views.
const TARGET_BYTES: f64 = 256.0;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// glibc's view of the heap in use (arena chunks + mmapped chunks), overhead included.
fn malloc_in_use() -> usize {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let mi = unsafe { libc::mallinfo2() };
    mi.uordblks + mi.hblkhd
}

#[test]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
fn table_memory_per_entry() {
    let users: usize = std::env::var("TABLE_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
        .max(2);
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
                                b"STAT" => b"+OK 0 0\r\n".to_vec(),
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
    let verified = engine
        .table()
        .iter()
        .filter(|(_, e)| e.verified().is_some())
        .count();
    if verified != users {
        panic!("table_memory: only {verified} of {users} entries verified empty");
    }
    let requested = (live1 - live0) as f64 / counted;
    let malloc = (malloc1 as f64 - malloc0 as f64) / counted;
    // One line for `cargo xtask bench` to read.
    println!(
        "TABLE_MEMORY users={users} username_len={username_len} requested={requested:.1} \
         malloc={malloc:.1} entry={} key={} elapsed_s={:.2}",
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<UserKey>(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        requested < TARGET_BYTES && malloc < TARGET_BYTES,
        "{requested:.1} B requested and {malloc:.1} B in malloc per entry: over {TARGET_BYTES}"
    );
}
