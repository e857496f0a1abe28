//! policyd: command dispatch and logging setup. The commands themselves are
//! in `policyd::commands`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use policyd::cli::{Cli, Command};
use policyd::{commands, guard, status};

/// `daemon`: `policyd load`, whose log is its output: info lines by default,
/// on stdout (`policyd load | grep decision`). The other commands log
/// warnings and errors to stderr.
fn init_tracing(verbose: u8, daemon: bool) {
    let level = match verbose {
        0 if daemon => "info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // RUST_LOG, when set, wins over -v.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // journald (or the terminal) already knows when a line was written.
        .without_time()
        .with_target(false);
    if daemon {
        builder
            .with_writer(std::io::stdout)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    } else {
        builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
        Command::Load(args) => commands::load(&args, cli.cgroup_root.as_deref(), &cli.proc_root)?,
        Command::Status(args) => {
            guard::note_private_cgroup_namespace(&cli.proc_root);
            status::run(&args, cli.cgroup_root.as_deref(), &cli.proc_root)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose, matches!(cli.command, Command::Load(_)));
    match run(cli) {
        Ok(code) => {
            let _ = std::io::stdout().flush();
            code
        }
        Err(e) => {
            eprintln!("policyd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
