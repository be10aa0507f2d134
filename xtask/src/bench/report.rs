//! The bench's tables: every path's rows with their ratios against `direct` and `nginx`, and
//! the attenuation targets (against `direct` and against the ideal responder).

use super::{Measurement, Path, Scenario};
use crate::loadgen::LoadReport;
use crate::stats::median;

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

/// Whether `a` and `b` are rounds of one row: the same path, workers and load.
fn same_row(a: &Measurement, b: &Measurement) -> bool {
    a.path == b.path && a.workers == b.workers && a.scenario.name() == b.scenario.name()
}

/// One row per path, workers and load: each figure the median over the row's rounds, the
/// sessions and errors their sum. The tables, targets and charts use these.
pub fn medians(ms: &[Measurement]) -> Vec<Measurement> {
    let mut rows: Vec<Measurement> = Vec::new();
    for m in ms {
        if rows.iter().any(|r| same_row(r, m)) {
            continue;
        }
        let rounds: Vec<&Measurement> = ms.iter().filter(|o| same_row(o, m)).collect();
        let med = |f: fn(&Measurement) -> f64| median(rounds.iter().map(|m| f(m)).collect());
        let mut row = m.clone();
        let r = &mut row.report;
        r.sessions_per_s = med(|m| m.report.sessions_per_s);
        r.p50_us = med(|m| m.report.p50_us as f64).round() as u64;
        r.p99_us = med(|m| m.report.p99_us as f64).round() as u64;
        r.mb_per_s = med(|m| m.report.mb_per_s);
        r.sessions = rounds.iter().map(|m| m.report.sessions).sum();
        r.errors = rounds.iter().map(|m| m.report.errors).sum();
        r.timeouts = rounds.iter().map(|m| m.report.timeouts).sum();
        let cpu: Vec<f64> = rounds.iter().filter_map(|m| m.cpu_us_per_session).collect();
        row.cpu_us_per_session = (!cpu.is_empty()).then(|| median(cpu));
        rows.push(row);
    }
    rows
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
pub fn print_paths(ms: &[Measurement], rounds: u64) {
    println!();
    if rounds > 1 {
        println!(
            "paths: direct, peers and relay the median of {rounds} rounds (errors summed); \
             attenuated and wN one run"
        );
    }
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

/// The relays' figure in each round against direct's and nginx's of the same round (check
/// p50; RETR MB/s): how far the medians' ratios can be trusted.
pub fn print_rounds(ms: &[Measurement]) {
    if ms.iter().all(|m| m.round == 1) || !ms.iter().any(|m| m.path == Path::Relay) {
        return;
    }
    println!();
    println!("per round: check p50 and RETR MB/s against the same round's direct and nginx");
    let figure = |m: &Measurement| match m.scenario.mode {
        "retr" => m.report.mb_per_s,
        _ => m.report.p50_us as f64,
    };
    for sc in loads(ms) {
        for path in [Path::Relay, Path::IdealRelay] {
            let mut against = [(Path::Direct, String::new()), (Path::Nginx, String::new())];
            for m in ms
                .iter()
                .filter(|m| m.path == path && m.workers.unwrap_or(1) == 1)
                .filter(|m| m.scenario.name() == sc.name())
            {
                for (base, line) in &mut against {
                    let same_round = ms.iter().find(|b| {
                        b.path == *base && b.round == m.round && b.scenario.name() == sc.name()
                    });
                    *line += &format!(" {:>6}", ratio(figure(m), same_round.map(figure)));
                }
            }
            let [(_, direct), (_, nginx)] = against;
            if !direct.is_empty() {
                println!(
                    "{:<16} {:<12} /direct{direct}   /nginx{nginx}",
                    sc.name(),
                    path.label()
                );
            }
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

#[cfg(test)]
mod tests {
    use super::{Measurement, Path, Scenario, medians};

    fn row(path: Path, round: u64, p50_us: u64, errors: u64) -> Measurement {
        let mut m = Measurement {
            path,
            round,
            scenario: Scenario {
                mode: "check",
                concurrency: 16,
            },
            report: Default::default(),
            cpu_us_per_session: Some(p50_us as f64 / 10.0),
            workers: None,
        };
        m.report.p50_us = p50_us;
        m.report.errors = errors;
        m
    }

    #[test]
    fn a_row_is_the_median_of_its_rounds_and_rows_stay_apart() {
        let ms = [
            row(Path::Relay, 1, 900, 0),
            row(Path::Nginx, 1, 5_000, 0),
            row(Path::Relay, 2, 1_000, 1),
            row(Path::Relay, 3, 3_000, 2),
            row(Path::Nginx, 2, 6_000, 0),
        ];
        let rows = medians(&ms);
        assert_eq!(rows.len(), 2);
        let (relay, nginx) = (&rows[0], &rows[1]);
        assert_eq!((relay.path, relay.report.p50_us), (Path::Relay, 1_000));
        assert_eq!(relay.report.errors, 3);
        assert_eq!(relay.cpu_us_per_session, Some(100.0));
        // An even count: the mean of the middle two.
        assert_eq!((nginx.path, nginx.report.p50_us), (Path::Nginx, 5_500));
    }
}
