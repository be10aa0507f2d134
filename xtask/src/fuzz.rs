//! `cargo xtask fuzz [--secs N] [TARGET...]`: the cargo-fuzz targets of `fuzz/`, one
//! after the other, with their figures; fails if any crashed.
//!
//! Each target runs on the nightly toolchain (`cargo +nightly fuzz run`) from its
//! committed seeds (`fuzz/corpus/TARGET`, only read) into a scratch corpus under
//! `fuzz/target/corpus/TARGET`, so the worktree stays clean. A crash leaves its input in
//! `fuzz/artifacts/TARGET/`; each run's full libFuzzer output is in `fuzz/target/logs/`.

use std::{
    fs,
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context, Result};
use clap::Args;

use crate::run;

/// The fuzz targets, in the order they run.
pub const TARGETS: [&str; 3] = ["codec", "frame", "engine"];

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Targets to run (default: all of codec, frame, engine).
    targets: Vec<String>,
}

/// What one target's run did.
pub struct Outcome {
    pub target: &'static str,
    pub secs: u64,
    /// Inputs executed.
    pub runs: Option<u64>,
    /// Coverage counters (libFuzzer's `cov`) and features (`ft`) reached.
    pub cov: Option<u64>,
    pub ft: Option<u64>,
    /// Inputs in the corpus at the end.
    pub corpus: Option<u64>,
    /// The input that crashed it, if one did.
    pub crash: Option<String>,
    /// libFuzzer stopped for another reason than its time limit (or never ran).
    pub failed: bool,
    pub log: PathBuf,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        !self.failed && self.crash.is_none()
    }

    /// One line for a summary.
    pub fn line(&self) -> String {
        let num = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        let crashes = if self.crash.is_some() || self.failed {
            "1 crash"
        } else {
            "0 crashes"
        };
        let mut line = format!(
            "{}: {} s, {} runs, cov {}, ft {}, corpus {}, {crashes}",
            self.target,
            self.secs,
            num(self.runs),
            num(self.cov),
            num(self.ft),
            num(self.corpus),
        );
        if let Some(crash) = &self.crash {
            line += &format!(" ({crash})");
        } else if self.failed {
            line += &format!(" (see {})", self.log.display());
        }
        line
    }
}

pub fn run(a: FuzzArgs) -> Result<ExitCode> {
    let targets: Vec<&'static str> = if a.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        a.targets
            .iter()
            .map(|t| {
                TARGETS
                    .into_iter()
                    .find(|k| k == t)
                    .with_context(|| format!("no fuzz target {t} (there are {TARGETS:?})"))
            })
            .collect::<Result<_>>()?
    };
    let outcomes = run_all(&targets, a.secs)?;
    println!();
    println!("xtask fuzz:");
    for o in &outcomes {
        println!("  {}", o.line());
    }
    Ok(if outcomes.iter().all(Outcome::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Installs cargo-fuzz if needed, builds the targets, runs each for `secs` seconds.
pub fn run_all(targets: &[&'static str], secs: u64) -> Result<Vec<Outcome>> {
    ensure_cargo_fuzz()?;
    run::step("fuzz build", nightly_fuzz().arg("build"))?;
    targets.iter().map(|t| run_target(t, secs)).collect()
}

/// `cargo +nightly fuzz` in the workspace root. The rustup proxy picks the toolchain,
/// whatever toolchain runs xtask itself.
fn nightly_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.args(["+nightly", "fuzz"])
        .current_dir(run::root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    c
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    run::step(
        "install cargo-fuzz",
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
    )
}

fn run_target(target: &'static str, secs: u64) -> Result<Outcome> {
    let fuzz = run::root().join("fuzz");
    let scratch = fuzz.join("target/corpus").join(target);
    let logs = fuzz.join("target/logs");
    fs::create_dir_all(&scratch)?;
    fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{target}.log"));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = nightly_fuzz();
    cmd.args(["run", target])
        .arg(&scratch)
        .arg(fuzz.join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        // An input that takes this long is a hang: report it like a crash.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stdout(out.try_clone()?)
        .stderr(out);
    eprintln!("xtask: fuzz {target} for {secs} s (log: {})", log.display());
    let status = cmd
        .status()
        .with_context(|| format!("starting fuzz {target}"))?;
    let text = fs::read_to_string(&log)?;
    let mut outcome = parse_log(target, secs, &text, log);
    outcome.failed = !status.success();
    if !outcome.ok() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  | {line}");
        }
    }
    Ok(outcome)
}

/// Reads libFuzzer's figures: its status lines (`#N ... cov: C ft: F corp: K/...`), the
/// final stats and the crash artifact line.
fn parse_log(target: &'static str, secs: u64, text: &str, log: PathBuf) -> Outcome {
    let mut o = Outcome {
        target,
        secs,
        runs: None,
        cov: None,
        ft: None,
        corpus: None,
        crash: None,
        failed: false,
        log,
    };
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        let word = rest.split_whitespace().next()?;
        word.split('/').next()?.parse().ok()
    };
    for line in text.lines() {
        if let Some(n) = line
            .strip_prefix('#')
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
        {
            o.runs = Some(n);
            o.cov = field(line, "cov: ").or(o.cov);
            o.ft = field(line, "ft: ").or(o.ft);
            o.corpus = field(line, "corp: ").or(o.corpus);
        }
        if let Some(n) = field(line, "stat::number_of_executed_units: ") {
            o.runs = Some(n);
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            o.crash = Some(path.trim().to_owned());
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures_and_the_crash_input() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 3/30b exec/s: 0 rss: 30Mb\n\
                   #353828\tDONE   cov: 505 ft: 2021 corp: 358/53Kb lim: 1340 exec/s: 11413\n\
                   stat::number_of_executed_units: 353829\n";
        let o = parse_log("codec", 30, log, PathBuf::new());
        assert_eq!(
            (o.runs, o.cov, o.ft, o.corpus),
            (Some(353829), Some(505), Some(2021), Some(358))
        );
        assert!(o.ok());
        let crashed = format!(
            "{log}artifact_prefix='a/'; Test unit written to fuzz/artifacts/codec/crash-1\n"
        );
        let o = parse_log("codec", 30, &crashed, PathBuf::new());
        assert_eq!(o.crash.as_deref(), Some("fuzz/artifacts/codec/crash-1"));
        assert!(!o.ok());
        assert!(o.line().ends_with("1 crash (fuzz/artifacts/codec/crash-1)"));
    }
}
