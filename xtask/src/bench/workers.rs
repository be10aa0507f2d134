//! The worker-count dimension of the bench: the daemon's relay and attenuated rows with
//! `--workers N` beside its one-worker rows, at the same concurrencies, in one table with
//! the ratio N workers / 1 worker.

use super::{Measurement, Path, Scenario, report};

/// The check loads of the extra workers' rows.
pub fn scenarios(concurrency: &[u16]) -> Vec<Scenario> {
    concurrency
        .iter()
        .map(|&c| Scenario {
            mode: "check",
            concurrency: c.into(),
        })
        .collect()
}

/// A row's path with its worker count when there are several (`relay w2`).
pub fn label(path: Path, workers: Option<usize>) -> String {
    match workers {
        Some(n) if n > 1 => format!("{} w{n}", path.label()),
        _ => path.label().to_string(),
    }
}

/// Side by side: each extra worker count's rows against the same load with one worker.
pub fn print(ms: &[Measurement]) {
    let extra: Vec<&Measurement> = ms
        .iter()
        .filter(|m| m.workers.is_some_and(|n| n > 1))
        .collect();
    if extra.is_empty() {
        return;
    }
    println!();
    println!("dataplane workers (same loads; 1w the relay's median, the rest one run):");
    println!(
        "{:<12} {:<14} {:>9} {:>9} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>6}",
        "load",
        "path",
        "1w sess/s",
        "Nw sess/s",
        "Nw/1w",
        "1w p50",
        "Nw p50",
        "Nw/1w",
        "1w p99",
        "Nw p99",
        "Nw/1w"
    );
    for m in extra {
        let Some(one) = report::find_workers(ms, m.path, 1, &m.scenario) else {
            continue;
        };
        let (a, b) = (&one.report, &m.report);
        let ratio = |n: f64, d: f64| {
            if d > 0.0 {
                format!("{:.2}x", n / d)
            } else {
                "-".to_string()
            }
        };
        println!(
            "{:<12} {:<14} {:>9.0} {:>9.0} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>6}",
            m.scenario.name(),
            label(m.path, m.workers),
            a.sessions_per_s,
            b.sessions_per_s,
            ratio(b.sessions_per_s, a.sessions_per_s),
            a.p50_us,
            b.p50_us,
            ratio(b.p50_us as f64, a.p50_us as f64),
            a.p99_us,
            b.p99_us,
            ratio(b.p99_us as f64, a.p99_us as f64),
        );
    }
}
