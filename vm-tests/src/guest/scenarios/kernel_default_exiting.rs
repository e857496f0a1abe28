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

const ROUNDS: usize = 3;

fn run() -> Result<()> {
    let cg = Cgroup::create("kernel-default-exiting-victim")?;
    cg.set("memory.max", "64M")?;
    for round in 1..=ROUNDS {
        let before = cg.events()?;
        let mut kmsg = Kmsg::mark()?;
        let mut big = kutil::fixed_hog(&cg, 40)?;
        // 40 + 30 MiB do not fit in 64; 30 alone does.
        let mut small = Hog::spawn(&cg, &HogSpec::fixed(30))?;
        println!(
            "round {round}: big idle hog {} (40 MiB), small hog {} touching 30 MiB",
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
