//! CPU time of a process under load, from /proc: utime + stime of the whole thread group
//! (`/proc/<pid>/stat`) and of its direct children (nginx's workers), read before and after
//! a run.

use std::time::Duration;

use anyhow::{Context, Result};

/// utime + stime of one process (all its threads), from `/proc/<pid>/stat`.
fn process_cpu(stat: &str) -> Option<(u32, u64)> {
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

/// CPU time used so far by `pid` and its direct children.
pub fn tree_cpu(pid: u32) -> Result<Duration> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (_, mut ticks) = process_cpu(&own).context("parsing /proc/<pid>/stat")?;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let name = e.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if let Some((ppid, t)) = process_cpu(&stat)
            && ppid == pid
        {
            ticks += t;
        }
    }
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_name_with_spaces_and_parens() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0";
        assert_eq!(process_cpu(stat), Some((7, 281)));
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let pid = std::process::id();
        let before = tree_cpu(pid).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(tree_cpu(pid).unwrap() > before, "{x}");
    }
}
