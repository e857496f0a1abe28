//! The kernel's own memcg OOM killer, no BPF handler: while its victim is still exiting,
//! an OOM that strikes again must not kill a second task (oom_evaluate_task() aborts on a
//! victim without MMF_OOM_SKIP). The victim here is not the task that allocates: a big
//! idle hog (the kernel's pick) and a smaller one that touches its memory and runs into
//! memory.max. The allocating hog keeps retrying its charge while the victim exits, so
//! the OOM path runs again during the exit; once the victim's memory is back, the small
//! hog fits and must live.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::kutil::{self, expect_oom_kills};
use crate::guest::util::{Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-default-exiting-victim", run).timeout_s(90)
}

/// (idle victim, allocating hog) MiB, in a 64 MiB memcg: the two do not fit together,
/// the allocating hog alone does, and the idle one is the bigger when the OOM strikes.
/// A victim above ~38 MiB has part of its memory freed while exit_mmap() still unmaps
/// (its mmu_gather batches fill up); a smaller one has all of it freed only at
/// tlb_finish_mmu(), after MMF_OOM_SKIP: both ways must hold.
const ROUNDS: &[(u64, u64)] = &[(40, 30), (40, 30), (34, 32), (34, 32), (34, 32)];

fn run() -> Result<()> {
    let cg = Cgroup::create("kernel-default-exiting-victim")?;
    cg.set("memory.max", "64M")?;
    for (i, &(victim_mib, alloc_mib)) in ROUNDS.iter().enumerate() {
        let round = i + 1;
        let before = cg.events()?;
        let mut kmsg = Kmsg::mark()?;
        let mut big = kutil::fixed_hog(&cg, victim_mib)?;
        let mut small = Hog::spawn(&cg, &HogSpec::fixed(alloc_mib))?;
        println!(
            "round {round}: big idle hog {} ({victim_mib} MiB), small hog {} touching \
             {alloc_mib} MiB",
            big.pid(),
            small.pid()
        );
        big.wait_killed(Duration::from_secs(30))?;
        let ready = small.wait_ready(Duration::from_secs(30));
        let log = kmsg.since()?;
        let kills: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("Killed process"))
            .collect();
        println!("round {round}: kernel kills: {kills:#?}");
        ready.map_err(|e| {
            e.context(format!(
                "round {round}: the kernel killed the small hog {} too, while its first \
                 victim {} was still exiting",
                small.pid(),
                big.pid()
            ))
        })?;
        ensure!(small.is_alive(), "round {round}: the small hog died");
        expect_oom_kills(&cg, &before, 1)?;
    }
    Ok(())
}
