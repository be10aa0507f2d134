//! `cargo xtask test`: set-up, release build, unit tests, a fuzz smoke, privileged e2e
//! tests.
//!
//! Only the e2e test binaries need root (they create network namespaces and attach
//! programs). Run by another user, cargo builds as that user and runs those binaries
//! through `sudo -E`, as aya-template's runner does; as root (CI) they run directly.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    fuzz,
    run::{self, TestTotals},
};

/// Seconds of each fuzz target in the smoke run.
const FUZZ_SMOKE_SECS: u64 = 20;

#[derive(Args)]
pub struct TestArgs {
    /// Do not run scripts/setup.sh first.
    #[arg(long)]
    skip_setup: bool,
    /// Only the e2e tests (still builds the daemon).
    #[arg(long)]
    e2e_only: bool,
    /// Only the unit tests and the fuzz smoke (no daemon build, no root needed).
    #[arg(long, conflicts_with = "e2e_only")]
    unit_only: bool,
    /// Skip the fuzz smoke (20 s of each cargo-fuzz target, on nightly).
    #[arg(long)]
    no_fuzz: bool,
    /// Passed to the e2e test binaries as a name filter.
    filter: Option<String>,
}

pub fn run(a: TestArgs) -> Result<ExitCode> {
    if !a.skip_setup {
        run::setup()?;
    }
    let mut totals = TestTotals::default();
    let mut results = Vec::new();
    let mut ok = true;

    let bin = if a.unit_only {
        None
    } else {
        Some(run::build_daemon()?)
    };

    if !a.e2e_only {
        // The eBPF crate targets bpfel-unknown-none (built by interceptor-user's build.rs) and
        // the e2e crate needs root: neither is a unit-test target.
        let (good, t, lines) = run::cargo_test(
            "unit tests",
            run::cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "pop3-interceptor-e2e",
                "--exclude",
                "pop3-interceptor-ebpf",
                // The measurement binaries' allocator and the simulation's own test.
                "--features",
                "pop3-engine/testing",
            ]),
        )?;
        ok &= good;
        totals.add(t);
        results.extend(lines.into_iter().map(|l| format!("unit: {l}")));

        if !a.no_fuzz {
            // Each target counts as one test: passed when it ran its time without a crash.
            match fuzz::run_all(&fuzz::TARGETS, FUZZ_SMOKE_SECS) {
                Ok(outcomes) => {
                    for o in outcomes {
                        let good = o.ok();
                        totals.add(TestTotals {
                            passed: u64::from(good),
                            failed: u64::from(!good),
                            ..TestTotals::default()
                        });
                        results.push(format!("fuzz: {}", o.line()));
                    }
                }
                Err(e) => {
                    eprintln!("xtask: fuzz smoke: {e:#}");
                    totals.add(TestTotals {
                        passed: 0,
                        failed: fuzz::TARGETS.len() as u64,
                        ..TestTotals::default()
                    });
                    results.push(format!("fuzz: did not run: {e:#}"));
                }
            }
        }
    }

    if let Some(bin) = bin {
        let mut cmd = run::cargo();
        // Every suite runs even after one fails: a failure must not hide the others'.
        cmd.args(["test", "--no-fail-fast", "-p", "pop3-interceptor-e2e", "--"])
            .arg("--test-threads=1")
            .env(e2e::interceptor::BIN_ENV, &bin);
        if let Some(f) = &a.filter {
            cmd.arg(f);
        }
        if !rustix::process::geteuid().is_root() {
            run_as_root(&mut cmd)?;
        }
        let (good, t, lines) = run::cargo_test("e2e tests", &mut cmd)?;
        ok &= good;
        totals.add(t);
        results.extend(lines.into_iter().map(|l| format!("e2e: {l}")));
    }

    println!();
    println!("xtask test: cargo test results:");
    for l in &results {
        println!("  {l}");
    }
    println!("{}", totals.summary());
    if ok && totals.failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// Makes `cmd` (a `cargo test`) run its test binaries through `sudo -E`: cargo's runner for
/// the host target, set for this command only, so other builds and tests stay unprivileged.
fn run_as_root(cmd: &mut Command) -> Result<()> {
    if which("sudo").is_none() {
        bail!("the e2e tests need root: run as root, or install sudo");
    }
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("rustc -vV")?;
    let info = String::from_utf8_lossy(&out.stdout);
    let host = info
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("no host triple in `rustc -vV`")?;
    cmd.env(runner_var(host), "sudo -E");
    Ok(())
}

/// Cargo's runner variable for `triple` (`CARGO_TARGET_<TRIPLE>_RUNNER`).
fn runner_var(triple: &str) -> String {
    format!(
        "CARGO_TARGET_{}_RUNNER",
        triple.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// `program` on `PATH`, if there.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runner_variable_is_named_as_cargo_reads_it() {
        assert_eq!(
            super::runner_var("x86_64-unknown-linux-gnu"),
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER"
        );
        assert_eq!(
            super::runner_var("thumbv7m-none-eabi.json"),
            "CARGO_TARGET_THUMBV7M_NONE_EABI_JSON_RUNNER"
        );
    }
}
