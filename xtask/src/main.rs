//! `cargo xtask <command>`: the project's test, demo and benchmark entry points.
//!
//! - `test`:  set-up, release build of the daemon, unit tests, then the privileged e2e tests.
//! - `demo`:  a topology + Dovecot + the interceptor, polling clients, and what each side saw.
//! - `bench`: check sessions and RETR throughput, direct vs through the interceptor.
//! - `soak`:  a population of clients with real deliveries: direct, time rule, notifications.
//! - `fuzz`:  the cargo-fuzz targets of fuzz/ (nightly), with their figures.
//! - `simulate`: the attenuation engine in virtual time with a synthetic ISP, per rule.
//! - `loadgen` (internal): the bench's tokio load generator, run inside the client namespace.
//! - `ideal-responder` (internal): the bench's ceiling, a POP3 responder on kernel TCP.

mod accept_loop;
mod bench;
mod demo;
mod fuzz;
mod ideal_relay;
mod ideal_responder;
mod loadgen;
mod other_traffic;
mod run;
mod simulate;
mod soak;
mod stats;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "pop3-interceptor developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Set up the machine, build, run unit tests and the privileged end-to-end tests.
    Test(test::TestArgs),
    /// Show POP3 sessions intercepted and relayed, with counts from both sides.
    Demo(demo::DemoArgs),
    /// Measure check sessions/s, latency and RETR throughput, direct vs through.
    Bench(bench::BenchArgs),
    /// A population of POP3 clients with real deliveries, direct vs through the interceptor
    /// with and without new-mail notifications: checks reaching Dovecot, losses, delays.
    Soak(soak::SoakArgs),
    /// Run the cargo-fuzz targets (codec, frame, engine) on nightly; fails on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// Drive the engine in virtual time with a synthetic ISP, each rule on and off.
    Simulate(simulate::SimulateArgs),
    /// (internal) POP3 load generator; prints JSON. Run by `bench` inside the client netns.
    #[command(hide = true)]
    Loadgen(loadgen::LoadgenArgs),
    /// (internal) POP3 responder that accepts any login and answers "+OK 0 0". Run by `bench`
    /// inside the server netns.
    #[command(hide = true)]
    IdealResponder(ideal_responder::IdealResponderArgs),
    /// (internal) Copies bytes between each client and the mail server on kernel TCP. Run
    /// by `bench` inside the router netns.
    #[command(hide = true)]
    IdealRelay(ideal_relay::IdealRelayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Test(a) => test::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Soak(a) => soak::run(a),
        Cmd::Fuzz(a) => fuzz::run(a),
        Cmd::Simulate(a) => simulate::run(a),
        Cmd::Loadgen(a) => loadgen::run(a),
        Cmd::IdealResponder(a) => ideal_responder::run(a),
        Cmd::IdealRelay(a) => ideal_relay::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
