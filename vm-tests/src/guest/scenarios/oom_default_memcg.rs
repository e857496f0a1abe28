//! The kernel's own OOM killer on a memcg OOM, with no BPF handler attached: the baseline
//! every policy is compared with. A cgroup limited to 64 MiB holds an 8 MiB hog and one
//! that grows without end; the kernel must kill the big one, and only it.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::util::{Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("oom-default-memcg", run)
}

fn run() -> Result<()> {
    let cg = Cgroup::create("oom-default-memcg")?;
    cg.set("memory.max", "64M")?;
    let mut kmsg = Kmsg::mark()?;

    let mut small = Hog::start(&cg, &HogSpec::fixed(8), Duration::from_secs(30))?;
    let mut big = Hog::start(&cg, &HogSpec::growing(16), Duration::from_secs(30))?;
    println!(
        "small hog {} (8 MiB), big hog {} (growing) in {}",
        small.pid(),
        big.pid(),
        cg.path()
    );

    big.wait_killed(Duration::from_secs(60))?;
    ensure!(small.is_alive(), "the small hog {} died too", small.pid());

    let events = cg.events()?;
    ensure!(
        events.oom_kill == 1,
        "memory.events oom_kill = {}, expected 1 ({events:?})",
        events.oom_kill
    );

    let wanted = format!("Killed process {} ", big.pid());
    let log = kmsg.since()?;
    ensure!(
        log.iter()
            .any(|l| l.contains("Memory cgroup out of memory") && l.contains(&wanted)),
        "no \"Memory cgroup out of memory: {wanted}\" in the kernel log:\n{}",
        log.join("\n")
    );
    println!("the kernel killed the big hog; {events:?}");
    Ok(())
}
