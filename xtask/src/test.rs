//! `cargo xtask test`: set-up, release build, unit tests, a fuzz smoke, privileged e2e
//! tests.

use std::process::ExitCode;

use anyhow::Result;
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
                            ignored: 0,
                        });
                        results.push(format!("fuzz: {}", o.line()));
                    }
                }
                Err(e) => {
                    eprintln!("xtask: fuzz smoke: {e:#}");
                    totals.add(TestTotals {
                        passed: 0,
                        failed: fuzz::TARGETS.len() as u64,
                        ignored: 0,
                    });
                    results.push(format!("fuzz: did not run: {e:#}"));
                }
            }
        }
    }

    if let Some(bin) = bin {
        if !rustix::process::geteuid().is_root() {
            eprintln!("xtask: the e2e tests create network namespaces: run as root");
            ok = false;
        } else {
            let mut cmd = run::cargo();
            cmd.args(["test", "-p", "pop3-interceptor-e2e", "--"])
                .arg("--test-threads=1")
                .env(e2e::interceptor::BIN_ENV, &bin);
            if let Some(f) = &a.filter {
                cmd.arg(f);
            }
            let (good, t, lines) = run::cargo_test("e2e tests", &mut cmd)?;
            ok &= good;
            totals.add(t);
            results.extend(lines.into_iter().map(|l| format!("e2e: {l}")));
        }
    }

    println!();
    println!("xtask test: cargo test results:");
    for l in &results {
        println!("  {l}");
    }
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if ok && totals.failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
