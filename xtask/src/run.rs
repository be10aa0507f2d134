//! Running cargo and scripts from xtask.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// The cargo that runs us (`$CARGO`), else `cargo`.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// `cargo SUBCOMMAND` of pop3-engine in release with its `testing` feature: the build of
/// its measurements and its simulation.
pub fn engine_testing(subcommand: &str) -> Command {
    let mut c = cargo();
    c.args([
        subcommand,
        "--release",
        "--quiet",
        "-p",
        "pop3-engine",
        "--features",
        "testing",
    ]);
    c
}

/// The target folder cargo uses (honours CARGO_TARGET_DIR and .cargo/config.toml).
pub fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(PathBuf::from(
        v["target_directory"]
            .as_str()
            .context("no target_directory")?,
    ))
}

/// The release daemon binary: `$POP3I_BIN` if set, else `<target>/release/pop3-interceptor`.
pub fn daemon_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(e2e::interceptor::BIN_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(target_dir()?.join("release").join("pop3-interceptor"))
}

/// Runs a command with inherited stdio; fails on a non-zero exit.
pub fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {what}: {cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// `bash scripts/setup.sh`.
pub fn setup() -> Result<()> {
    step(
        "setup",
        Command::new("bash")
            .arg(root().join("scripts/setup.sh"))
            .current_dir(root()),
    )
}

/// `cargo build --release -p pop3-interceptor`; returns the binary path.
pub fn build_daemon() -> Result<PathBuf> {
    step(
        "build",
        cargo().args(["build", "--release", "-p", "pop3-interceptor"]),
    )?;
    let bin = target_dir()?.join("release").join("pop3-interceptor");
    if !bin.exists() {
        bail!("{} missing after the build", bin.display());
    }
    Ok(bin)
}

/// Totals of cargo's `test result:` lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// `cargo test` runs that failed with no test failed: a build error, or a test binary
    /// that crashed before its result line.
    pub broken: u64,
}

impl TestTotals {
    pub fn add(&mut self, o: TestTotals) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
        self.broken += o.broken;
    }

    /// The summary line: counts of tests, and of runs that failed outside any test.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "summary: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        );
        if self.broken > 0 {
            line += &format!(
                ", and {} cargo test run(s) FAILED outside any test (a build error or a \
                 crashed test binary: see the output above)",
                self.broken
            );
        }
        line
    }
}

/// Runs `cargo test ...`, copying its stdout through line by line, and adds up its
/// `test result:` lines. Returns (success, totals, the result lines).
pub fn cargo_test(what: &str, cmd: &mut Command) -> Result<(bool, TestTotals, Vec<String>)> {
    eprintln!("xtask: {what}: {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let out = child.stdout.take().expect("piped");
    let mut totals = TestTotals::default();
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(t) = parse_result_line(&line) {
            totals.add(t);
            lines.push(line.trim().to_string());
        }
    }
    let st = child.wait()?;
    if !st.success() && totals.failed == 0 {
        totals.broken += 1;
        lines.push(format!(
            "cargo test failed ({st}) with no test failed: a build error or a crashed test binary"
        ));
    }
    Ok((st.success(), totals, lines))
}

/// `test result: ok. 14 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; ...`
fn parse_result_line(line: &str) -> Option<TestTotals> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut t = TestTotals::default();
    for part in rest.split([';', '.']) {
        let mut w = part.split_whitespace();
        let (Some(n), Some(k)) = (w.next(), w.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match k {
            "passed" => t.passed = n,
            "failed" => t.failed = n,
            "ignored" => t.ignored = n,
            _ => {}
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_result_line() {
        let t = parse_result_line(
            "test result: ok. 14 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.00s",
        )
        .unwrap();
        assert_eq!((t.passed, t.failed, t.ignored), (14, 1, 2));
        assert!(parse_result_line("running 3 tests").is_none());
    }

    #[test]
    fn the_summary_tells_a_run_that_failed_outside_any_test() {
        let mut t = TestTotals {
            passed: 3,
            ..TestTotals::default()
        };
        assert_eq!(t.summary(), "summary: 3 passed, 0 failed, 0 skipped");
        t.broken = 1;
        assert!(
            t.summary().contains("1 cargo test run(s) FAILED"),
            "{}",
            t.summary()
        );
    }
}
