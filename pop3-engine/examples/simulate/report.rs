//! The report: one row of figures per scenario, as a Markdown table and as JSON.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::SimulateArgs;

/// One scenario's figures.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub notifications: bool,
    pub checks: u64,
    pub server_logins: u64,
    pub checks_cut: f64,
    pub busy_checks_per_sec: f64,
    pub busy_logins_per_sec: f64,
    pub delay_p50_secs: f64,
    pub delay_p99_secs: f64,
    pub delay_max_secs: f64,
    pub messages_delivered: u64,
    pub messages_waiting_at_end: u64,
    pub engine_heap_bytes: i64,
    pub table_entries: usize,
    pub interval_at_end_secs: u64,
    pub rule_decisions: Vec<(String, u64)>,
}

/// Prints the rows as a table and writes them to `--json` (`started`: when the run began).
pub fn print(args: &SimulateArgs, rows: &[Row], started: Instant) -> Result<()> {
    println!(
        "{} users, {} min of warm-up then the busy hour, server capacity {} logins/s, seed {}\n",
        args.users, args.warmup_minutes, args.server_capacity, args.seed
    );
    println!(
        "| scenario | checks cut | checks/s | server logins/s | added delay p50 / p99 / max | engine heap |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} % | {:.1} | {:.1} | {:.0} s / {:.0} s / {:.0} s | {:.1} MB |",
            r.scenario,
            r.checks_cut * 100.0,
            r.busy_checks_per_sec,
            r.busy_logins_per_sec,
            r.delay_p50_secs,
            r.delay_p99_secs,
            r.delay_max_secs,
            r.engine_heap_bytes as f64 / 1e6,
        );
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(rows)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!(
        "\nwrote {} in {:.1} s",
        args.json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
