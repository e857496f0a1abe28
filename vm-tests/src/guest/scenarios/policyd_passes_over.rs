//! The policy looks at every eligible cgroup, best first, until one dies: cgroups ranked
//! cheapest that hold nothing killable are passed over, however many there are, and the
//! kernel's own killer (which would kill the biggest, the valuable service) never runs
//! while a cheaper cgroup has something to kill.
//!
//! /pile (memory.max 128M) holds seven priority-1 cgroups whose only task has
//! oom_score_adj -1000, the priority-50 batch job that grows into the limit, and the
//! priority-1000 service, the biggest task (the kernel's own choice). More unkillable
//! candidates rank before the batch job than a decision event reports (4): before the
//! search covered every candidate, the handler gave up after those and the kernel killed
//! the service.

use std::time::Duration;

use anyhow::Result;

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-passes-over", run)
        .needs_policyd()
        .timeout_s(150)
}

/// Cgroups ranked before the batch job whose only task cannot be killed.
const IMMORTALS: usize = 7;

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/pile/immortal*"
priority = 1

[[rule]]
cgroup = "/pile/batch"
priority = 50

[[rule]]
cgroup = "/pile/service"
priority = 1000
"#;

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let pile = Cgroup::create("pile")?;
    pile.set("memory.max", "128M")?;
    let service_cg = pile.child("service")?;
    let batch_cg = pile.child("batch")?;
    let immortal_cgs = (0..IMMORTALS)
        .map(|i| pile.child(&format!("immortal{i}")))
        .collect::<Result<Vec<_>>>()?;
    let config = pdutil::write_config("passes-over", CONFIG)?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--cgroup", "/pile"])?;

    let mut service = Hog::start(&service_cg, &HogSpec::fixed(72), pdutil::READY_TIMEOUT)?;
    let mut immortals = Vec::new();
    for cg in &immortal_cgs {
        let spec = HogSpec::fixed(2).oom_score_adj(-1000);
        immortals.push(Hog::start(cg, &spec, pdutil::READY_TIMEOUT)?);
    }
    let mut kmsg = Kmsg::mark()?;
    let mut batch = Hog::start(&batch_cg, &HogSpec::growing(8), pdutil::READY_TIMEOUT)?;
    println!(
        "service {} (72 MiB, priority 1000), {IMMORTALS} priority-1 cgroups of 2 MiB with only \
         oom_score_adj -1000 tasks, batch {} (growing, priority 50) in /pile (max 128M)",
        service.pid(),
        batch.pid()
    );

    batch.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = batch.pid().to_string();
    let candidates = (IMMORTALS + 2).to_string();
    let tried = (IMMORTALS + 1).to_string();
    let unkillable = IMMORTALS.to_string();
    d.expect(&[
        ("scope", "/pile"),
        ("victim_cgroup", "/pile/batch"),
        ("pid", &pid),
        ("priority", "50"),
        ("reason", "lowest-priority"),
        ("outcome", "killed"),
        ("killed", "1"),
        ("candidates", &candidates),
        ("tried", &tried),
        ("unkillable", &unkillable),
        ("exiting", "0"),
        ("empty", "0"),
        ("refused", "0"),
        ("runner_up", "/pile/service"),
        ("runner_up_priority", "1000"),
    ])?;
    expect_alive(&mut service, "priority-1000 service")?;
    for (i, hog) in immortals.iter_mut().enumerate() {
        expect_alive(
            hog,
            &format!("oom_score_adj -1000 task of /pile/immortal{i}"),
        )?;
    }
    expect_oom_kills(&batch_cg, 1)?;
    expect_oom_kills(&service_cg, 0)?;
    let log = KillLog::read(&mut kmsg, &[batch.pid()])?;
    log.expect_only_killed(batch.pid(), "batch hog")?;
    pd.stop()?;
    println!("{IMMORTALS} unkillable candidates passed over, the batch job died: {d}");
    Ok(())
}
