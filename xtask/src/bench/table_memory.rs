//! Memory per attenuation-table entry: pop3-engine's `table_memory` tests run in release
//! (users with an empty maildrop, and users who leave mail on the server).

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Prints one measurement of memory per entry.
pub fn print_table_memory(m: &TableMemory) {
    println!(
        "  table memory, {} users (usernames of {} bytes): {:.0} B/entry requested from the \
         allocator, {:.0} B/entry in glibc malloc (target < 256: {})",
        m.users,
        m.username_len,
        m.requested_bytes_per_entry,
        m.malloc_bytes_per_entry,
        verdict(
            [m.requested_bytes_per_entry, m.malloc_bytes_per_entry],
            256.0
        )
    );
    println!(
        "  (size_of Entry {} B, UserKey {} B: with the timer list's 8 bytes of links they \
         make a 160-byte slot, allocated 4,096 at a time; the rest is the index, a hash \
         table of 4-byte slot numbers and control bytes; usernames of up to 22 bytes are \
         inside the key)",
        m.entry_struct_bytes, m.key_struct_bytes
    );
    let l = &m.leave_on_server;
    println!(
        "  a user with {} messages left on the server ({} users): {:.0} B requested, {:.0} B in \
         glibc malloc (target < 1024: {})",
        l.messages,
        l.users,
        l.requested_bytes_per_user,
        l.malloc_bytes_per_user,
        verdict(
            [l.requested_bytes_per_user, l.malloc_bytes_per_user],
            1024.0
        )
    );
    println!("  method: {}", m.method);
}

/// "met" when both views are under `target` bytes.
fn verdict(views: [f64; 2], target: f64) -> &'static str {
    if views.iter().all(|&b| b < target) {
        "met"
    } else {
        "MISSED"
    }
}

/// What [`table_memory`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct TableMemory {
    pub method: &'static str,
    pub users: usize,
    /// Net bytes requested from the allocator, per entry (strings included).
    pub requested_bytes_per_entry: f64,
    /// Net glibc in-use bytes (malloc overhead included), per entry.
    pub malloc_bytes_per_entry: f64,
    pub username_len: usize,
    /// `size_of::<Entry>()` and `size_of::<UserKey>()`: what each slot of the table holds
    /// before the timer list's links, the index and malloc's overheads.
    pub entry_struct_bytes: usize,
    pub key_struct_bytes: usize,
    pub elapsed_s: f64,
    pub leave_on_server: LeaveOnServer,
}

/// The same for users who leave mail on the server: each entry holds a maildrop snapshot
/// (STAT, LIST and UIDL as the server sent them).
#[derive(Debug, Clone, Serialize)]
pub struct LeaveOnServer {
    pub users: usize,
    /// Messages each user keeps on the server.
    pub messages: usize,
    pub requested_bytes_per_user: f64,
    pub malloc_bytes_per_user: f64,
}

/// Memory per attenuation-table entry with `users` users: runs pop3-engine's ignored
/// `table_memory` test (its counting allocator is that test binary's alone) in release
/// and reads the line it prints.
pub fn measure(users: usize) -> Result<TableMemory> {
    // One process per measurement: the counting allocator's totals are the process's, and a
    // measurement after another one in the same process reads several times too high.
    let run = |test: &str| -> Result<String> {
        let out = crate::run::engine_testing("test")
            .args([
                "--test",
                "table_memory",
                "--",
                "--ignored",
                "--nocapture",
                "--exact",
                test,
            ])
            .env("TABLE_USERS", users.to_string())
            .output()
            .context("running cargo test --test table_memory")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    };
    let stdout = run("table_memory_per_entry")? + &run("table_memory_per_leave_on_server_user")?;
    let line_of = |prefix: &str| stdout.lines().find_map(|l| l.strip_prefix(prefix));
    let (Some(line), Some(kept)) = (line_of("TABLE_MEMORY "), line_of("TABLE_MEMORY_SNAPSHOT "))
    else {
        bail!("the table_memory tests printed no result:\n{stdout}");
    };
    let field = |line: &str, name: &str| -> Result<f64> {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok(TableMemory {
        method: "pop3-engine's table_memory test: the AttenuationEngine driven through N check \
                 sessions, fake clock, counting global allocator (net live bytes after - before) \
                 and glibc mallinfo2",
        users: field(line, "users")? as usize,
        requested_bytes_per_entry: field(line, "requested")?,
        malloc_bytes_per_entry: field(line, "malloc")?,
        username_len: field(line, "username_len")? as usize,
        entry_struct_bytes: field(line, "entry")? as usize,
        key_struct_bytes: field(line, "key")? as usize,
        elapsed_s: field(line, "elapsed_s")?,
        leave_on_server: LeaveOnServer {
            users: field(kept, "users")? as usize,
            messages: field(kept, "messages")? as usize,
            requested_bytes_per_user: field(kept, "requested")?,
            malloc_bytes_per_user: field(kept, "malloc")?,
        },
    })
}
