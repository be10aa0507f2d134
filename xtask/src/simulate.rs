//! `cargo xtask simulate [ARGS]`: runs pop3-engine's `simulate` example in release (the
//! synthetic ISP lives there, beside the engine it drives, with the counting allocator
//! that measures the engine's heap); `cargo xtask simulate --help` lists its options.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::run;

#[derive(Args)]
pub struct SimulateArgs {
    /// Passed to the simulation (`--users`, `--seed`, `--only`, `--json`, ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(a: SimulateArgs) -> Result<ExitCode> {
    let status = run::engine_testing("run")
        .args(["--example", "simulate", "--"])
        .args(&a.args)
        .status()
        .context("running the simulate example")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
