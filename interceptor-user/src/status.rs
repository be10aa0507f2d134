//! `pop3-interceptor status`: what the daemon is doing, read from its pinned maps.
//!
//! It needs no connection to the daemon, works while it runs (from another shell or
//! namespace that sees the bpffs), and shows what a killed daemon left behind.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use common::{AttachInfo, DaemonStats, SessionKey, SessionValue, UserKey, UserValue, map_names};
use serde::Serialize;

use crate::{ebpf, mirror::text_str};

/// How `status` orders the users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Most recent check first.
    #[default]
    LastCheck,
    /// By username.
    User,
    /// Most checks answered locally first.
    Local,
}

/// Rows `status` shows unless `--limit` says otherwise: a screenful, where the map may
/// hold 65,536 users.
pub const DEFAULT_LIMIT: usize = 50;

/// Which users and sessions `status` shows, and in which order.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub sort: SortBy,
    /// Only this user (the exact bytes the client sent), with their sessions.
    pub user: Option<Vec<u8>>,
    /// At most this many users and this many sessions (`None`: all).
    pub limit: Option<usize>,
}

/// Everything `status` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    pub attach: Attach,
    /// The daemon still runs (its pid is alive).
    pub running: bool,
    pub xdp: std::collections::BTreeMap<&'static str, u64>,
    pub engine: Option<DaemonStats>,
    pub users: Vec<User>,
    /// Users that matched but are not in `users` because of the limit.
    pub users_left_out: usize,
    pub sessions: Vec<Session>,
    /// Sessions that matched but are not in `sessions` because of the limit.
    pub sessions_left_out: usize,
}

#[derive(Debug, Serialize)]
pub struct Attach {
    pub iface: String,
    pub ifindex: u32,
    pub mode: String,
    pub pid: u32,
    pub attached_at: u64,
    pub pin_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct User {
    pub server: String,
    pub user: String,
    pub state: String,
    pub attenuated_until: u64,
    pub last_verified_empty: u64,
    pub last_check: u64,
    pub checks_answered_locally: u64,
    pub checks_passed_through: u64,
    pub last_client: String,
    /// What the edge cache holds for the user.
    pub cached_messages: u64,
    pub cached_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Session {
    pub client: String,
    pub server: String,
    pub user: String,
    pub state: String,
}

fn open(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "reading {}: is the daemon running with --pin-dir {}? (or run as root)",
            path.display(),
            pin_dir.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

/// Whether a username as the mirror wrote it (`field`, escaped like the engine's
/// `UserName`) is exactly `user`, byte for byte.
fn is_user(field: &[std::ffi::c_char], user: &[u8]) -> bool {
    let shown = field.iter().take_while(|&&c| c != 0).map(|&c| c as u8);
    shown.eq(user.escape_ascii())
}

/// Keeps the first `limit` of `rows`; returns how many went.
fn cut<T>(rows: &mut Vec<T>, limit: Option<usize>) -> usize {
    let keep = limit.unwrap_or(usize::MAX).min(rows.len());
    rows.drain(keep..).count()
}

/// Reads the pinned maps under `pin_dir`.
pub fn read(pin_dir: &Path, query: &Query) -> anyhow::Result<Status> {
    let wanted = |user: &[std::ffi::c_char]| query.user.as_ref().is_none_or(|u| is_user(user, u));
    let info: Array<_, AttachInfo> = open(pin_dir, map_names::INFO)?.try_into()?;
    let info = info.get(&0, 0)?;
    let counters: PerCpuArray<_, u64> = open(pin_dir, map_names::COUNTERS)?.try_into()?;
    let xdp = ebpf::read_counters(&counters)?
        .into_iter()
        .map(|(counter, value)| (counter.name(), value))
        .collect();
    let stats: Array<_, DaemonStats> = open(pin_dir, map_names::STATS)?.try_into()?;
    let engine = stats.get(&0, 0).ok().filter(|s| s.updated_at != 0);
    let users_map: HashMap<_, UserKey, UserValue> = open(pin_dir, map_names::USERS)?.try_into()?;
    let mut users: Vec<User> = users_map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| wanted(&k.user))
        .map(|(k, v)| User {
            server: text_str(&k.server),
            user: text_str(&k.user),
            state: text_str(&v.state),
            attenuated_until: v.attenuated_until,
            last_verified_empty: v.last_verified_empty,
            last_check: v.last_check,
            checks_answered_locally: v.checks_answered_locally,
            checks_passed_through: v.checks_passed_through,
            last_client: text_str(&v.last_client),
            cached_messages: v.cached_messages,
            cached_bytes: v.cached_bytes,
        })
        .collect();
    match query.sort {
        SortBy::LastCheck => {
            users.sort_by(|a, b| b.last_check.cmp(&a.last_check).then(a.user.cmp(&b.user)))
        }
        SortBy::User => users.sort_by(|a, b| (&a.user, &a.server).cmp(&(&b.user, &b.server))),
        SortBy::Local => users.sort_by_key(|u| std::cmp::Reverse(u.checks_answered_locally)),
    }
    let sessions_map: HashMap<_, SessionKey, SessionValue> =
        open(pin_dir, map_names::SESSIONS)?.try_into()?;
    let mut sessions: Vec<Session> = sessions_map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| wanted(&v.user))
        .map(|(k, v)| Session {
            client: text_str(&k.client),
            server: text_str(&k.server),
            user: text_str(&v.user),
            state: text_str(&v.state),
        })
        .collect();
    sessions.sort_by(|a, b| a.client.cmp(&b.client));
    let users_left_out = cut(&mut users, query.limit);
    let sessions_left_out = cut(&mut sessions, query.limit);
    Ok(Status {
        running: pid_alive(info.pid),
        attach: Attach {
            iface: text_str(&info.iface),
            ifindex: info.ifindex,
            mode: text_str(&info.mode),
            pid: info.pid,
            attached_at: info.attached_at,
            pin_dir: pin_dir.to_owned(),
        },
        xdp,
        engine,
        users,
        users_left_out,
        sessions,
        sessions_left_out,
    })
}

/// Whether a process with this pid runs. A zombie (killed, not yet reaped by its parent)
/// or a dead process still has a `/proc/PID` entry but runs nothing: it counts as gone.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(proc_state(&stat), Some('Z' | 'X' | 'x')),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line: the field after the command name, which is
/// in parentheses and may itself contain spaces and parentheses.
fn proc_state(stat: &str) -> Option<char> {
    let (_, after) = stat.rsplit_once(')')?;
    after.trim_start().chars().next()
}

/// The table an operator reads.
pub fn render(status: &Status) -> String {
    let a = &status.attach;
    let mut out = format!(
        "attached to {} (ifindex {}, mode {}) by pid {} since {} ({})\npins: {}\n",
        a.iface,
        a.ifindex,
        a.mode,
        a.pid,
        utc(a.attached_at),
        if status.running {
            "running"
        } else {
            "NOT running: run `detach`"
        },
        a.pin_dir.display(),
    );
    let xdp: Vec<String> = status.xdp.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out += &format!("xdp: {}\n", xdp.join(", "));
    if let Some(e) = &status.engine {
        out += &format!(
            "checks: {} seen, {} answered locally, {} passed through; {} upstream logins avoided\n\
             sessions active {}, table entries {}, gc runs {}, users not mirrored {}\n",
            e.checks_seen,
            e.checks_answered_locally,
            e.checks_passed_through,
            e.upstream_logins_avoided,
            e.sessions_active,
            e.table_entries,
            e.gc_runs,
            e.users_not_mirrored,
        );
        let rules: Vec<String> = common::RULE_DECISIONS
            .iter()
            .zip(e.rule_decisions)
            .map(|((rule, decision), n)| format!("{rule} {decision} {n}"))
            .collect();
        out += &format!("n {}s; rules: {}\n", e.interval_secs, rules.join(", "));
        if e.cache_hits + e.cache_misses + e.cache_messages > 0 {
            out += &format!(
                "edge cache: {} hits, {} misses, {} bytes served; {} evictions, {} sync \
                 mismatches; holds {} messages, {} bytes\n",
                e.cache_hits,
                e.cache_misses,
                e.cache_bytes_served,
                e.cache_evictions,
                e.cache_sync_mismatches,
                e.cache_messages,
                e.cache_bytes,
            );
        }
        if e.prefetch_state != 0 {
            let state = common::PREFETCH_STATES
                .get(e.prefetch_state as usize)
                .unwrap_or(&"?");
            out += &format!(
                "prefetch: {state}; {} runs, {} failed; {} messages, {} bytes prefetched\n",
                e.prefetch_runs, e.prefetch_failures, e.prefetch_messages, e.bytes_prefetched,
            );
        }
    }
    out += &format!(
        "\n{:<24} {:<24} {:<12} {:<20} {:<20} {:>6} {:>6} {:>16}  {}\n",
        "USER",
        "SERVER",
        "STATE",
        "ATTENUATED UNTIL",
        "LAST CHECK",
        "LOCAL",
        "PASSED",
        "CACHED MSG/BYTES",
        "LAST CLIENT"
    );
    for u in &status.users {
        out += &format!(
            "{:<24} {:<24} {:<12} {:<20} {:<20} {:>6} {:>6} {:>16}  {}\n",
            u.user,
            u.server,
            u.state,
            if u.attenuated_until == 0 {
                "-".into()
            } else {
                utc(u.attenuated_until)
            },
            utc(u.last_check),
            u.checks_answered_locally,
            u.checks_passed_through,
            format!("{}/{}", u.cached_messages, u.cached_bytes),
            u.last_client,
        );
    }
    if status.users_left_out > 0 {
        out += &format!(
            "... {} more users not shown (--limit; --limit 0 shows all)\n",
            status.users_left_out
        );
    }
    if !status.sessions.is_empty() {
        out += &format!(
            "\n{:<48} {:<48} {:<24} {}\n",
            "CLIENT", "SERVER", "USER", "STATE"
        );
        for s in &status.sessions {
            out += &format!(
                "{:<48} {:<48} {:<24} {}\n",
                s.client, s.server, s.user, s.state
            );
        }
    }
    if status.sessions_left_out > 0 {
        out += &format!(
            "... {} more sessions not shown (--limit; --limit 0 shows all)\n",
            status.sessions_left_out
        );
    }
    out
}

/// Unix seconds as RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(unix: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_212_800), "2026-12-02T12:00:00Z");
    }

    #[test]
    fn a_user_matches_only_its_exact_bytes() {
        let field = |name: &[u8]| -> common::Text<{ common::USER_TEXT }> {
            crate::mirror::text(&pop3_engine::attenuation::UserName::from(name).to_string())
        };
        let raw: &[u8] = b"caf\xc3\xa9\x1b[2J'\"\\ x";
        assert!(is_user(&field(raw), raw));
        assert!(is_user(&field(b"alice"), b"alice"));
        for other in [&b"Alice"[..], b"alice ", b"alic", b"", b"caf\\xc3\\xa9"] {
            assert!(!is_user(&field(b"alice"), other), "{other:?}");
        }
        // The escaped text an operator sees is not the name itself.
        let shown = text_str(&field(b"caf\xc3\xa9"));
        assert_eq!(shown, "caf\\xc3\\xa9");
        assert!(!is_user(&field(b"caf\xc3\xa9"), shown.as_bytes()));
    }

    #[test]
    fn the_limit_cuts_and_counts() {
        let mut rows: Vec<u32> = (0..10).collect();
        assert_eq!(cut(&mut rows, Some(3)), 7);
        assert_eq!(rows, [0, 1, 2]);
        assert_eq!(cut(&mut rows, None), 0);
        assert_eq!(cut(&mut rows, Some(5)), 0);
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn a_zombie_is_not_a_running_daemon() {
        assert_eq!(proc_state("42 (pop3-interceptor) Z 1 42"), Some('Z'));
        assert_eq!(proc_state("42 (a) b) (c) R 1"), Some('R'));
        assert_eq!(proc_state("garbage"), None);
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
