//! The bench's tables: every path's rows with their ratios against `direct` and `nginx`, and
//! the attenuation targets (against `direct` and against the ideal responder).

use super::{Measurement, Path, Scenario};
use crate::loadgen::LoadReport;

/// The measurement of `path` (the daemon's with one worker) under the load of `sc`.
pub fn find<'a>(ms: &'a [Measurement], path: Path, sc: &Scenario) -> Option<&'a Measurement> {
    find_workers(ms, path, 1, sc)
}

/// The measurement of `path` with the daemon's `workers` (1 for the paths without it)
/// under the load of `sc`.
pub fn find_workers<'a>(
    ms: &'a [Measurement],
    path: Path,
    workers: usize,
    sc: &Scenario,
) -> Option<&'a Measurement> {
    ms.iter().find(|m| {
        m.path == path
            && m.workers.unwrap_or(1) == workers
            && m.scenario.mode == sc.mode
            && m.scenario.concurrency == sc.concurrency
    })
}

/// `v / base` as "0.85x", or "-" when either is missing or the base is zero.
fn ratio(v: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".to_string(),
    }
}

/// The distinct loads measured, in the order they ran.
fn loads(ms: &[Measurement]) -> Vec<&Scenario> {
    let mut v: Vec<&Scenario> = Vec::new();
    for m in ms {
        if !v.iter().any(|s| s.name() == m.scenario.name()) {
            v.push(&m.scenario);
        }
    }
    v
}

/// One table row per load and path: each figure, then its ratio against direct and nginx.
pub fn print_paths(ms: &[Measurement]) {
    println!();
    println!(
        "{:<16} {:<10} {:>9} {:>6} {:>6} {:>9} {:>6} {:>6} {:>9} {:>6} {:>6} {:>6} {:>9}",
        "load",
        "path",
        "sess/s",
        "/dir",
        "/nginx",
        "p50 us",
        "/dir",
        "/nginx",
        "p99 us",
        "/dir",
        "/nginx",
        "errors",
        "CPU us/s."
    );
    type Figure = fn(&LoadReport) -> f64;
    let figures: [Figure; 3] = [
        |r| r.sessions_per_s,
        |r| r.p50_us as f64,
        |r| r.p99_us as f64,
    ];
    let retr_figures: [Figure; 3] = [
        |r| r.mb_per_s,
        |r| r.p50_us as f64 / 1000.0,
        |r| r.p99_us as f64 / 1000.0,
    ];
    for sc in loads(ms) {
        if sc.mode == "retr" {
            println!(
                "{:<16} (MB/s, p50 ms and p99 ms of whole sessions)",
                sc.name()
            );
        }
        let figs = if sc.mode == "retr" {
            &retr_figures
        } else {
            &figures
        };
        let base = |p: Path| find(ms, p, sc).map(|m| &m.report);
        for path in Path::ALL {
            let Some(m) = find(ms, path, sc) else {
                continue;
            };
            let mut line = format!("{:<16} {:<10}", sc.name(), path.label());
            for f in figs {
                let v = f(&m.report);
                line += &format!(
                    " {v:>9.1} {:>6} {:>6}",
                    ratio(v, base(Path::Direct).map(f)),
                    ratio(v, base(Path::Nginx).map(f))
                );
            }
            line += &format!(" {:>6}", m.report.errors);
            if let Some(c) = m.cpu_us_per_session {
                line += &format!(" {c:>9.0}");
            }
            println!("{line}");
        }
    }
}

/// The attenuation targets: against direct, sessions/s >= 3x and p50 <= 0.5x; against the
/// ideal responder, sessions/s >= 1.0x and CPU per session <= 1.0x.
pub fn print_attenuation_targets(ms: &[Measurement]) {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!("attenuation targets:");
    for m in ms
        .iter()
        .filter(|m| m.path == Path::Attenuated && m.workers == Some(1))
    {
        let (sc, t) = (&m.scenario, &m.report);
        if let Some(d) = find(ms, Path::Direct, sc).map(|d| &d.report) {
            let speed = t.sessions_per_s / d.sessions_per_s.max(f64::MIN_POSITIVE);
            let lat = t.p50_us as f64 / d.p50_us.max(1) as f64;
            println!(
                "  {:<12} vs direct: sessions/s {:>8.0} vs {:>6.0} = {:>5.2}x (target >= 3x: {}); \
                 p50 {:>6} us vs {:>6} us = {:.2}x (target <= 0.5x: {})",
                sc.name(),
                t.sessions_per_s,
                d.sessions_per_s,
                speed,
                verdict(speed >= 3.0),
                t.p50_us,
                d.p50_us,
                lat,
                verdict(lat <= 0.5)
            );
        }
        if let Some(i) = find(ms, Path::Ideal, sc) {
            let speed = t.sessions_per_s / i.report.sessions_per_s.max(f64::MIN_POSITIVE);
            let cpu = match (m.cpu_us_per_session, i.cpu_us_per_session) {
                (Some(a), Some(b)) if b > 0.0 => format!(
                    "CPU/session {a:.0} us vs {b:.0} us = {:.2}x (target <= 1.0x: {})",
                    a / b,
                    verdict(a <= b)
                ),
                _ => "CPU/session -".to_string(),
            };
            println!(
                "  {:<12} vs ideal:  sessions/s {:>8.0} vs {:>6.0} = {:>5.2}x (target >= 1.0x: {}); {cpu}",
                sc.name(),
                t.sessions_per_s,
                i.report.sessions_per_s,
                speed,
                verdict(speed >= 1.0),
            );
        }
    }
}
