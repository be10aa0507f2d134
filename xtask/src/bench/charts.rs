//! The bench's SVG charts: check sessions/s, p50 and p99 latency against concurrency, one
//! line per path, drawn with `plotters`.

use std::path::{Path as FsPath, PathBuf};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::{Measurement, Path};
use crate::loadgen::LoadReport;

/// A path's line colour (the same in every chart).
fn colour(p: Path) -> RGBColor {
    match p {
        Path::Direct => RGBColor(0x33, 0x33, 0x33),
        Path::Nginx => RGBColor(0x2c, 0x7f, 0xb8),
        Path::Relay => RGBColor(0xe6, 0x55, 0x0d),
        Path::Attenuated => RGBColor(0x31, 0xa3, 0x54),
        Path::Ideal => RGBColor(0x75, 0x6b, 0xb1),
        Path::IdealRelay => RGBColor(0xbd, 0xbd, 0xbd),
    }
}

type Figure = fn(&LoadReport) -> f64;

/// Writes `check-sessions.svg`, `check-p50.svg` and `check-p99.svg` into `dir` (when there
/// are check rows) and returns their paths. `caption` says which run and machine.
pub fn write(ms: &[Measurement], dir: &FsPath, caption: &str) -> Result<Vec<PathBuf>> {
    let charts: [(&str, &str, Figure); 3] = [
        ("check-sessions.svg", "check sessions/s", |r| {
            r.sessions_per_s
        }),
        ("check-p50.svg", "check session p50 (ms)", |r| {
            r.p50_us as f64 / 1000.0
        }),
        ("check-p99.svg", "check session p99 (ms)", |r| {
            r.p99_us as f64 / 1000.0
        }),
    ];
    if !ms.iter().any(|m| m.scenario.mode == "check") {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (file, title, f) in charts {
        let path = dir.join(file);
        draw(ms, &path, title, caption, f)
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

/// One chart: `f` of every check row against concurrency, both axes logarithmic.
fn draw(
    ms: &[Measurement],
    file: &FsPath,
    title: &str,
    caption: &str,
    f: Figure,
) -> Result<(), Box<dyn std::error::Error>> {
    let checks: Vec<&Measurement> = ms.iter().filter(|m| m.scenario.mode == "check").collect();
    let max_c = checks
        .iter()
        .map(|m| m.scenario.concurrency)
        .max()
        .unwrap_or(1) as f64;
    let ys: Vec<f64> = checks
        .iter()
        .map(|m| f(&m.report))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 1.5;
    let hi = ys.iter().copied().fold(0.0, f64::max).max(1.0) * 1.5;

    let root = SVGBackend::new(file, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}  ({caption})"), ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((0.8..max_c * 1.25).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("concurrent sessions")
        .y_desc(title)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    for path in Path::ALL {
        let mut pts: Vec<(f64, f64)> = checks
            .iter()
            // One line per path: the daemon's with one worker.
            .filter(|m| m.path == path && m.workers.unwrap_or(1) == 1)
            .map(|m| (m.scenario.concurrency as f64, f(&m.report)))
            .filter(|(_, y)| *y > 0.0)
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = colour(path);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(path.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
