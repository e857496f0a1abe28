//! The kernel's own OOM killer on a global OOM (guest RAM exhausted), with no BPF handler
//! attached: the biggest task dies, as oom_badness() says, and nothing else.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::kutil::{self, expect_log, expect_no_log, expect_oom_kills};
use crate::guest::util::{Cgroup, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-default-global", run)
        .mem_mb(256)
        .timeout_s(90)
}

fn run() -> Result<()> {
    // No memory.max: only the guest's RAM limits this cgroup.
    let cg = Cgroup::create("kernel-default-global")?;
    let before = cg.events()?;
    let mut kmsg = Kmsg::mark()?;

    let mut small = kutil::fixed_hog(&cg, 16)?;
    let mut big = kutil::growing_hog(&cg, 16)?;
    println!(
        "small hog {} (16 MiB), big hog {} (growing until the guest runs out)",
        small.pid(),
        big.pid()
    );

    big.wait_killed(Duration::from_secs(45))?;
    ensure!(small.is_alive(), "the small hog {} died too", small.pid());
    expect_oom_kills(&cg, &before, 1)?;
    let d = kutil::events_since(&cg, &before)?;
    ensure!(
        d.oom == 0,
        "memory.events oom grew by {} on a global OOM (it counts memcg OOMs only)",
        d.oom
    );

    let log = KillLog::read(&mut kmsg, &[big.pid()])?.lines;
    expect_log(
        &log,
        &format!("Out of memory: Killed process {} ", big.pid()),
    )?;
    expect_no_log(&log, "Memory cgroup out of memory")?;
    expect_no_log(&log, "BPF OOM handler")?;
    println!("the kernel killed the big hog on a global OOM; {d:?}");
    Ok(())
}
