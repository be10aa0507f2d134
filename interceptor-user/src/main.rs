use clap::Parser as _;
use pop3_interceptor::{
    cli::{Cli, Command, LogFormat},
    detach, run,
    signals::SignalFd,
    status,
};
use tracing_subscriber::EnvFilter;

/// Errors end as one line with their causes (`error: ...: ...`), for operators: never a
/// backtrace, even with RUST_BACKTRACE set.
fn main() -> std::process::ExitCode {
    match run_command() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command() -> anyhow::Result<()> {
    // Before any thread exists, so every thread inherits the blocked signals.
    let signals = SignalFd::new()?;
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Run(args) => run::run(*args, signals),
        Command::Status(args) => {
            let query = status::Query {
                sort: args.sort,
                user: args.user.map(std::os::unix::ffi::OsStringExt::into_vec),
                limit: (args.limit > 0).then_some(args.limit),
            };
            let status = status::read(&args.pin_dir, &query)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status::render(&status));
            }
            Ok(())
        }
        Command::Detach(args) => detach::detach(&args.iface, &args.pin_dir),
    }
}
