//! vm-tests: builds the policyd test kernel, boots it in QEMU with a busybox initramfs and
//! runs guest scenarios. The same static binary is the host harness and, as /bin/vm-tests,
//! the guest's scenario runner (`vm-tests guest ...`).

mod guest;
mod host;
mod protocol;
mod records;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vm-tests",
    about = "Test policyd on its patched kernel in QEMU"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the test kernel (or reuse the cached build); prints the bzImage path.
    Kernel,
    /// Regenerate bpf/vmlinux/x86_64/vmlinux.h from the test kernel's BTF.
    #[command(name = "vmlinux-h")]
    VmlinuxH {
        /// Only check that the committed file is current.
        #[arg(long)]
        check: bool,
    },
    /// Host tests, then one QEMU boot per guest scenario whose name contains FILTER.
    Test {
        filter: Option<String>,
        /// Copy the guest console to stdout while it runs.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Tell the story of one OOM under policyd and under the kernel default; `demo pressure`:
    /// of memory pressure without and with a pressure rule.
    Demo { name: Option<String> },
    /// Run the benchmark scenarios whose name contains FILTER; report in target/vm-tests/bench.md.
    Bench {
        filter: Option<String>,
        /// Shorter runs (scenarios see vmtest_quick=1 on their kernel command line).
        #[arg(long)]
        quick: bool,
        /// Run nothing: write bench.md again from the last bench.json.
        #[arg(long, conflicts_with_all = ["quick", "filter", "leave_out"])]
        report_only: bool,
        /// Leave out the benchmark NAME (repeatable); the report says so.
        #[arg(long, value_name = "NAME")]
        leave_out: Vec<String>,
    },
    /// List the guest scenarios.
    List,
    /// Inside the test VM: run scenarios and memory hogs.
    #[command(subcommand, hide = true)]
    Guest(guest::GuestCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Kernel => host::kernel_command(&[]),
        Cmd::VmlinuxH { check } => host::kernel_command(if check {
            &["vmlinux-h", "--check"]
        } else {
            &["vmlinux-h"]
        }),
        Cmd::Test { filter, verbose } => host::test(filter.as_deref().unwrap_or(""), verbose),
        Cmd::Demo { name } => host::demo(name.as_deref()),
        Cmd::Bench {
            filter,
            quick,
            report_only,
            leave_out,
        } => {
            if report_only {
                host::bench_report_only()
            } else {
                host::bench(filter.as_deref().unwrap_or(""), quick, &leave_out)
            }
        }
        Cmd::List => {
            host::list();
            Ok(true)
        }
        Cmd::Guest(cmd) => guest::main(cmd).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vm-tests: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
