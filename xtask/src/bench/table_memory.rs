//! Memory per attenuation-table entry: pop3-engine's `table_memory` test run in release.

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
        if m.malloc_bytes_per_entry < 256.0 && m.requested_bytes_per_entry < 256.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  (size_of Entry {} B, UserKey {} B; the rest is the hash map's slots and control \
         bytes, the Arc header and the timer list's B-tree nodes; usernames of up to 22 bytes \
         are inside the key)",
        m.entry_struct_bytes, m.key_struct_bytes
    );
    println!("  method: {}", m.method);
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
    /// `size_of::<Entry>()` and `size_of::<UserKey>()`: what each map slot and each shared key
    /// hold before the map's, the timer list's and malloc's overheads.
    pub entry_struct_bytes: usize,
    pub key_struct_bytes: usize,
    pub elapsed_s: f64,
}

/// Memory per attenuation-table entry with `users` users: runs pop3-engine's ignored
/// `table_memory` test (its counting allocator is that test binary's alone) in release
/// and reads the line it prints.
pub fn measure(users: usize) -> Result<TableMemory> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "test",
            "--release",
            "--quiet",
            "-p",
            "pop3-engine",
            "--features",
            "testing",
            "--test",
            "table_memory",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .env("TABLE_USERS", users.to_string())
        .output()
        .context("running cargo test --test table_memory")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("TABLE_MEMORY ")) else {
        bail!(
            "the table_memory test printed no result:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let field = |name: &str| -> Result<f64> {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok(TableMemory {
        method: "pop3-engine's table_memory test: the AttenuationEngine driven through N check \
                 sessions, fake clock, counting global allocator (net live bytes after - before) \
                 and glibc mallinfo2",
        users: field("users")? as usize,
        requested_bytes_per_entry: field("requested")?,
        malloc_bytes_per_entry: field("malloc")?,
        username_len: field("username_len")? as usize,
        entry_struct_bytes: field("entry")? as usize,
        key_struct_bytes: field("key")? as usize,
        elapsed_s: field("elapsed_s")?,
    })
}
