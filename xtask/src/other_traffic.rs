//! What the interceptor costs traffic that is not POP3: iperf3 from the client namespace to
//! the server namespace through the router, with no interceptor and with each dataplane and
//! XDP mode attached, side by side in one run (issue 12 point 8); and the programs' own
//! cost per frame, from `bpftool prog run` (`BPF_PROG_TEST_RUN`) over a batch of frames.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::topology::SERVER_V4;
use e2e::{Interceptor, InterceptorOptions, Node, Topology};
use serde::Serialize;

use crate::stats::median;

/// The daemon flags of each row; `None` is the router without an interceptor.
const ROWS: [(&str, Option<&[&str]>); 5] = [
    ("no interceptor", None),
    (
        "xdp native",
        Some(&["--dataplane", "xdp", "--xdp-mode", "native"]),
    ),
    (
        "xdp skb",
        Some(&["--dataplane", "xdp", "--xdp-mode", "skb"]),
    ),
    ("tc", Some(&["--dataplane", "tc"])),
    ("default (auto)", Some(&[])),
];
/// Rounds over all rows: the spread between rounds is the noise, and their median what
/// the rows are compared by (a 5 s iperf3 here wanders by 10-20% from one run to the next).
const ROUNDS: usize = 5;
/// Frames per `bpftool prog run`.
const PROG_RUN_REPEAT: &str = "1000000";

/// One iperf3 measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub row: String,
    pub round: usize,
    pub gbit_per_s: f64,
}

/// A program's own cost for one kind of frame.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub frame: String,
    pub ns_per_frame: u64,
}

/// Everything this module measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OtherTraffic {
    pub throughput: Vec<Throughput>,
    pub program_cost: Vec<ProgramCost>,
}

/// Runs every row `ROUNDS` times (interleaved) and the per-frame costs of both programs.
pub fn measure(topo: &Topology, bin: &Path, duration: Duration) -> Result<OtherTraffic> {
    let mut out = OtherTraffic::default();
    for round in 1..=ROUNDS {
        for (row, args) in ROWS {
            eprint!("bench: other traffic {row:<16} round {round} ... ");
            let daemon = match args {
                Some(args) => Some(start(topo, bin, args)?),
                None => None,
            };
            let gbit_per_s = iperf3(topo, duration)?;
            eprintln!("{gbit_per_s:.1} Gbit/s");
            if let Some(mut daemon) = daemon {
                daemon.terminate(Duration::from_secs(10));
            }
            out.throughput.push(Throughput {
                row: row.into(),
                round,
                gbit_per_s,
            });
        }
    }
    for (program, args) in [
        ("xdp", &["--dataplane", "xdp", "--xdp-mode", "skb"][..]),
        ("tc", &["--dataplane", "tc"][..]),
    ] {
        let mut daemon = start(topo, bin, args)?;
        let cost = program_cost(topo, daemon.pid(), program);
        daemon.terminate(Duration::from_secs(10));
        out.program_cost.extend(cost?);
    }
    Ok(out)
}

fn start(topo: &Topology, bin: &Path, args: &[&str]) -> Result<Interceptor> {
    let mut extra_args = vec!["--mode".to_string(), "relay".to_string()];
    extra_args.extend(args.iter().map(|a| a.to_string()));
    Interceptor::start_with(
        topo,
        InterceptorOptions {
            bin: Some(bin.to_path_buf()),
            extra_args,
            ..Default::default()
        },
    )
    .context("starting the interceptor")
}

/// One iperf3 run of `duration` (one server that serves one test and exits); Gbit/s the
/// server received.
fn iperf3(topo: &Topology, duration: Duration) -> Result<f64> {
    let log = topo.dir().join("iperf3-server.log");
    let _server = topo.spawn(
        Node::Server,
        &["iperf3", "-s", "-1", "-B", &SERVER_V4.to_string()],
        &log,
    )?;
    let secs = duration.as_secs().max(1).to_string();
    let limit = duration + Duration::from_secs(30);
    let mut last = String::new();
    // The server needs a moment to listen: retry the connection a few times.
    for _ in 0..20 {
        let out = topo.exec_with(
            Node::Client,
            &["iperf3", "-J", "-c", &SERVER_V4.to_string(), "-t", &secs],
            None,
            limit,
        )?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        last = out.stdout_str().chars().take(300).collect();
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("iperf3 gave no result: {last}")
}

/// `bpftool prog run` of the attached program over frames other traffic and POP3 send.
fn program_cost(topo: &Topology, daemon_pid: u32, program: &str) -> Result<Vec<ProgramCost>> {
    let id = program_id(daemon_pid, program)?.to_string();
    let mut costs = Vec::new();
    for (frame, port, flags) in [
        ("other TCP (iperf3 data)", 5201, 0x10),
        ("POP3 segment of a flow not ours", 110, 0x10),
    ] {
        let path = topo.dir().join(format!("frame-{port}.bin"));
        std::fs::write(&path, tcp_frame(port, flags))?;
        let path = path.display().to_string();
        let out = topo
            .exec(
                Node::Router,
                &[
                    "bpftool",
                    "prog",
                    "run",
                    "id",
                    &id,
                    "data_in",
                    &path,
                    "repeat",
                    PROG_RUN_REPEAT,
                ],
            )?
            .check("bpftool prog run")?;
        let text = out.stdout_str();
        let ns = text
            .split("duration (average): ")
            .nth(1)
            .and_then(|rest| rest.split("ns").next())
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("bpftool prog run said: {text}"))?;
        costs.push(ProgramCost {
            program: program.into(),
            frame: frame.into(),
            ns_per_frame: ns,
        });
    }
    Ok(costs)
}

/// The id of the daemon's own XDP or TC program, from its descriptors' fdinfo (other
/// daemons on this machine load programs of the same name).
fn program_id(pid: u32, program: &str) -> Result<u64> {
    // BPF_PROG_TYPE_XDP and BPF_PROG_TYPE_SCHED_CLS.
    let wanted = if program == "xdp" { "6" } else { "3" };
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if field("prog_type:").as_deref() == Some(wanted)
            && let Some(id) = field("prog_id:").and_then(|id| id.parse().ok())
        {
            return Ok(id);
        }
    }
    bail!("no {program} program among the descriptors of pid {pid}")
}

/// An Ethernet + IPv4 + TCP frame from the client to the server's `port` with `flags`.
fn tcp_frame(port: u16, flags: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let ip = [
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 2, 203, 0, 113, 2,
    ];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0xc3, 0x50]);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// The rows as ratios to the router without an interceptor: median against median, and
/// the span of each round against its own round's.
pub fn print(m: &OtherTraffic) {
    let rates =
        |row: &str| -> Vec<&Throughput> { m.throughput.iter().filter(|t| t.row == row).collect() };
    let base = rates(ROWS[0].0);
    let base_median = median(base.iter().map(|t| t.gbit_per_s).collect());
    let span = |v: &[f64], digits: usize| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.digits$}-{hi:.digits$}")
    };
    println!();
    println!("other traffic: iperf3 client -> server through the router ({ROUNDS} rounds)");
    println!(
        "| {:<16} | {:>11} | {:>6} | {:>25} | {:>15} |",
        "router", "Gbit/s", "median", "x no interceptor (median)", "x its round's"
    );
    println!(
        "| {:-<16} | {:->11} | {:->6} | {:->25} | {:->15} |",
        "", "", "", "", ""
    );
    for (row, _) in ROWS {
        let runs = rates(row);
        let gbit: Vec<f64> = runs.iter().map(|t| t.gbit_per_s).collect();
        let paired: Vec<f64> = runs
            .iter()
            .filter_map(|t| {
                let b = base.iter().find(|b| b.round == t.round)?;
                Some(t.gbit_per_s / b.gbit_per_s)
            })
            .collect();
        let row_median = median(gbit.clone());
        println!(
            "| {row:<16} | {:>11} | {row_median:>6.1} | {:>25.2} | {:>15} |",
            span(&gbit, 1),
            row_median / base_median,
            span(&paired, 2)
        );
    }
    println!();
    println!("program cost per frame (bpftool prog run, {PROG_RUN_REPEAT} repeats)");
    for c in &m.program_cost {
        println!("  {:<4} {:<34} {} ns", c.program, c.frame, c.ns_per_frame);
    }
}
