//! The guest side: the scenario registry and the `vm-tests guest ...` commands that /init
//! runs inside the test VM. The host reads the same registry to list and filter scenarios.
//!
//! Adding a scenario: write `scenarios/<name>.rs` with a `pub fn scenario() -> Scenario`,
//! and add it to `scenarios::all()` (with `.bench()` if it is a benchmark). Its `run`
//! returns Err to fail; the kernel log is checked by the host after every scenario
//! (WARNING, BUG, lockdep, ... fail it too).

pub mod bench;
pub mod kutil;
pub mod layout;
pub mod pdutil;
pub mod scenarios;
pub mod util;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::protocol;

/// The kernel a scenario boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boots {
    /// The test kernel: Linux 7.3 with our series (vm-tests/kernel.sh).
    TestKernel,
    /// Debian's own Linux 7.3 image, without our series (vm-tests/deps.sh
    /// stock_kernel): what policyd's tracing must work on.
    StockKernel,
    /// Alternately Linux 7.3 built from the same source and config without the series
    /// (vm-tests/kernel.sh vanilla) and the test kernel, a few boots of each in one
    /// benchmark: what the series costs, as ratios between kernels. Benchmarks only.
    VanillaAndTest,
}

/// What a scenario is for, which decides the command that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Passes or fails; run by `test`.
    Test,
    /// Reports numbers and takes many minutes; run only by `bench`.
    Bench,
}

/// One guest test: booted alone in a fresh VM.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Unique, kebab-case; `test FILTER` selects by substring.
    pub name: &'static str,
    pub kind: Kind,
    /// The host kills the VM after this many seconds (boot included).
    pub timeout_s: u64,
    /// Guest RAM.
    pub mem_mb: u32,
    /// The run needs /bin/policyd in the initramfs.
    pub needs_policyd: bool,
    pub boots: Boots,
    /// Boots the Debian guest, systemd as PID 1, instead of the busybox initramfs
    /// (host/debian.rs): policyd comes as its .deb, for the scenario to install.
    pub debian: bool,
    /// Under TCG, the guest's clock counts instructions (QEMU's -icount): what the
    /// scenario times is the guest's work, not the host's load.
    pub counts_instructions: bool,
    /// Under TCG, both vCPUs run in one host thread, taking turns between translated
    /// blocks. With a thread per vCPU, an IPI from one vCPU to the other sometimes waits
    /// up to the sender's next timer tick (4 ms at HZ=250) in the xAPIC ICR write: in
    /// the decision bench, 41 of 333 IPIs sent during OOMs took 0.2-3.7 ms in
    /// default_send_IPI_single_phys(), and none of 246 with one thread (2026-11-30). A
    /// scenario that times one CPU's work to the millisecond opts in; one that measures
    /// parallel work must not.
    pub one_tcg_thread: bool,
    pub run: fn() -> Result<()>,
}

#[allow(dead_code)] // builder methods for scenarios that need them
impl Scenario {
    /// A test with the defaults: 180 s, 512 MiB, no policyd.
    pub const fn new(name: &'static str, run: fn() -> Result<()>) -> Scenario {
        Scenario {
            name,
            kind: Kind::Test,
            timeout_s: 180,
            mem_mb: 512,
            needs_policyd: false,
            boots: Boots::TestKernel,
            debian: false,
            counts_instructions: false,
            one_tcg_thread: false,
            run,
        }
    }

    /// Makes it a benchmark: declared in `scenarios::all()`, where it is listed.
    pub const fn bench(mut self) -> Scenario {
        self.kind = Kind::Bench;
        self
    }

    pub const fn timeout_s(mut self, seconds: u64) -> Scenario {
        self.timeout_s = seconds;
        self
    }

    pub const fn mem_mb(mut self, mb: u32) -> Scenario {
        self.mem_mb = mb;
        self
    }

    pub const fn needs_policyd(mut self) -> Scenario {
        self.needs_policyd = true;
        self
    }

    pub const fn counts_instructions(mut self) -> Scenario {
        self.counts_instructions = true;
        self
    }

    pub const fn one_tcg_thread(mut self) -> Scenario {
        self.one_tcg_thread = true;
        self
    }

    /// Boots Debian's stock kernel instead of the test kernel.
    pub const fn on_stock_kernel(mut self) -> Scenario {
        self.boots = Boots::StockKernel;
        self
    }

    /// Boots the vanilla and the test kernel by turns (see [`Boots::VanillaAndTest`]).
    pub const fn on_vanilla_and_test_kernel(mut self) -> Scenario {
        self.boots = Boots::VanillaAndTest;
        self
    }

    /// Runs in the Debian guest under systemd (see [`Scenario::debian`]).
    pub const fn debian(mut self) -> Scenario {
        self.debian = true;
        self
    }
}

/// The scenario called `name`, with the known names in the error.
pub fn find(name: &str) -> Result<Scenario> {
    let all = scenarios::all();
    match all.iter().find(|s| s.name == name) {
        Some(s) => Ok(*s),
        None => bail!(
            "no scenario named {name:?}; known: {}",
            all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[derive(Subcommand)]
pub enum GuestCmd {
    /// List the scenarios.
    List,
    /// Run one scenario (only inside the test VM).
    Run { name: String },
    /// Allocate and touch memory: N MiB, then sleep, or keep growing with --grow.
    Hog {
        #[arg(long)]
        mib: u64,
        #[arg(long)]
        grow: bool,
        #[arg(long)]
        step_kib: Option<u64>,
        #[arg(long)]
        delay_us: Option<u64>,
        /// Stop growing at this many MiB in all.
        #[arg(long)]
        max_mib: Option<u64>,
        /// After the initial MiB, wait for a line on stdin before growing.
        #[arg(long)]
        gated: bool,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        oom_score_adj: i32,
        /// Compressible page contents, and every held page touched again before each
        /// step (after the last one too, every --delay-us): a working set.
        #[arg(long)]
        working_set: bool,
    },
    /// bench-kernel-cost's loops, timed in a fresh process (whose fork copies only a
    /// small address space): FORKS fork+exit+wait, then MMAPS mmap+touch+munmap.
    KernelLoops {
        #[arg(long)]
        forks: usize,
        #[arg(long)]
        mmaps: usize,
    },
    /// bench-decision's sleeping processes: COUNT in each CGROUP-DIR (see
    /// bench::spawn_sleepers).
    Sleepers {
        /// CGROUP-DIR COUNT pairs.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Map, touch and unmap MIB MiB of 4 KiB pages, ROUNDS times; print the time it took.
    Churn {
        #[arg(long)]
        mib: u64,
        #[arg(long)]
        rounds: u32,
    },
    /// Write TRIGGER to the pressure file PATH, say whether with CAP_SYS_RESOURCE, then
    /// print "fired" at each event until stdin closes.
    PsiTrigger { path: String, trigger: String },
}

pub fn main(cmd: GuestCmd) -> Result<()> {
    match cmd {
        GuestCmd::List => {
            for s in scenarios::all() {
                println!("{}", s.name);
            }
            Ok(())
        }
        GuestCmd::Run { name } => run(&name),
        GuestCmd::Hog {
            mib,
            grow,
            step_kib,
            delay_us,
            max_mib,
            gated,
            oom_score_adj,
            working_set,
        } => util::run_hog(&util::HogSpec {
            mib,
            grow,
            step_kib,
            delay_us,
            max_mib,
            gated,
            oom_score_adj,
            working_set,
        }),
        GuestCmd::KernelLoops { forks, mmaps } => {
            scenarios::bench_kernel_cost::run_loops(forks, mmaps)
        }
        GuestCmd::Churn { mib, rounds } => util::run_churn(mib, rounds),
        GuestCmd::Sleepers { groups } => bench::run_sleepers(&groups),
        GuestCmd::PsiTrigger { path, trigger } => {
            scenarios::kernel_psi_unprivileged_trigger::run_trigger(&path, &trigger)
        }
    }
}

fn run(name: &str) -> Result<()> {
    let scenario = find(name)?;
    // Scenarios create cgroups and start OOMs: never on a machine that is not the test VM.
    let cmdline = util::read_file("/proc/cmdline")?;
    let arg = format!("{}{name}", protocol::NAME_ARG);
    if !cmdline.split_whitespace().any(|a| a == arg) {
        bail!("refusing to run scenario {name} outside the test VM (no {arg} on the kernel command line)");
    }
    // The runner must survive every OOM it provokes; hogs set their own value.
    util::write_file("/proc/self/oom_score_adj", "-1000")
        .context("protecting the runner from the OOM killer")?;
    match (scenario.run)() {
        Ok(()) => {
            println!("scenario {name}: ok");
            Ok(())
        }
        Err(e) => {
            println!("{}{e:#}", protocol::ERROR);
            Err(e.context(format!("scenario {name}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_unique_and_plain() {
        let all = scenarios::all();
        let mut names: Vec<_> = all.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate scenario names");
        for s in &all {
            assert!(
                !s.name.is_empty() && s.name != protocol::PROBE,
                "bad name {:?}",
                s.name
            );
            assert!(
                s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{:?}: use [a-zA-Z0-9_-] only (it goes on the kernel command line and into file names)",
                s.name
            );
            assert!(
                s.timeout_s > 0 && s.mem_mb >= 64,
                "{}: timeout or memory too small",
                s.name
            );
        }
    }
}
