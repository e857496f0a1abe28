//! policyd: command dispatch and logging setup. The commands themselves are
//! in `policyd::commands`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use policyd::cli::{Cli, Command};
use policyd::logging::{self, LogFormat};
use policyd::{commands, guard, journal, metrics, status};

/// `policyd load` and `policyd trace` (`daemon` is their log format) log
/// info lines by default, on stdout: their log is their output
/// (`policyd load | grep decision`); `load` run by systemd with its output
/// in the journal logs there natively instead, with structured fields
/// (`--log-format json` still wins). The
/// other commands log warnings and errors to stderr, as text.
fn init_tracing(verbose: u8, daemon: Option<LogFormat>) {
    let level = match verbose {
        0 if daemon.is_some() => "info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // RUST_LOG, when set, wins over -v.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let subscriber = match daemon {
        Some(LogFormat::Journal) => journal::subscriber(filter),
        Some(format) => logging::subscriber(
            format,
            filter,
            std::io::stdout,
            std::io::stdout().is_terminal(),
        ),
        None => logging::subscriber(
            LogFormat::Text,
            filter,
            std::io::stderr,
            std::io::stderr().is_terminal(),
        ),
    };
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
}

fn run(cli: Cli, started: Instant) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::List => print!("{}", commands::list()),
        Command::Check(args) => {
            let report = commands::check(&args);
            print!("{}", report.stdout);
            eprint!("{}", report.stderr);
            if !report.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Explain(args) => {
            let text = commands::explain(&args, cli.cgroup_root.as_deref(), &cli.proc_root)?;
            print!("{text}");
        }
        Command::Load(args) => {
            commands::load(&args, cli.cgroup_root.as_deref(), &cli.proc_root, started)?
        }
        Command::Trace(args) => commands::trace(cli.cgroup_root.as_deref(), args.log_format)?,
        Command::Metrics => {
            guard::note_private_cgroup_namespace(&cli.proc_root);
            print!(
                "{}",
                metrics::run(cli.cgroup_root.as_deref(), &cli.proc_root)?
            );
        }
        Command::Status(args) => {
            guard::note_private_cgroup_namespace(&cli.proc_root);
            status::run(&args, cli.cgroup_root.as_deref(), &cli.proc_root)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // `load` accounts for its start-up from here.
    let started = Instant::now();
    let mut cli = Cli::parse();
    let daemon = match &mut cli.command {
        Command::Load(args) => {
            if args.log_format == LogFormat::Text && journal::connected() {
                args.log_format = LogFormat::Journal;
            }
            Some(args.log_format)
        }
        Command::Trace(args) => Some(args.log_format),
        _ => None,
    };
    init_tracing(cli.verbose, daemon);
    match run(cli, started) {
        Ok(code) => {
            let _ = std::io::stdout().flush();
            code
        }
        // In the journal, at priority err like every other error.
        Err(e) if daemon == Some(LogFormat::Journal) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("policyd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
