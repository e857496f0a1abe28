//! `kill = "cgroup"`: once a batch cgroup is chosen, every process in it dies, not just
//! the largest: a job is never left half-dead.
//!
//! /b (memory.max 96M): /b/batch (priority 5, kill = "cgroup") runs three processes, two
//! small fixed ones and one growing into the limit; /b/web (priority 50) holds the most
//! memory. All three batch processes die, web lives.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::guest::layout::{Layout, LayoutSpec, Oom};
use crate::guest::util::{wait_until, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-kill-cgroup", run)
        .needs_policyd()
        .timeout_s(120)
}

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/b/batch"
priority = 5
kill = "cgroup"

[[rule]]
cgroup = "/b/web"
priority = 50
"#;

fn run() -> Result<()> {
    let mut l = Layout::load(&LayoutSpec {
        name: "kill-cgroup",
        parent: "b",
        memory_max: "96M",
        cgroups: &["batch", "web"],
        config: CONFIG,
        policyd_options: &[],
    })?;
    l.start("web", "web", &HogSpec::fixed(48))?;
    let (d, _) = l.oom(&Oom {
        start: &[
            ("step1", "batch", HogSpec::fixed(6)),
            ("step2", "batch", HogSpec::fixed(6)),
            ("main", "batch", HogSpec::growing(8)),
        ],
        // The largest task is named and killed first; all three are killed.
        victims: &["main", "step1", "step2"],
        decision: &[
            ("priority", "5"),
            ("reason", "lowest-priority"),
            ("runner_up", "/b/web"),
        ],
        oom_kills: &[("batch", 3), ("web", 0)],
    })?;
    // A task leaves its cgroup at its very last context switch, which can come after
    // its parent has reaped it.
    let batch = l.cgroup("batch")?;
    wait_until(Duration::from_secs(10), "/b/batch to be empty", || {
        batch.populated().is_ok_and(|p| !p)
    })
    .with_context(|| format!("/b/batch still has processes: {:?}", batch.procs()))?;
    l.stop()?;
    println!("the whole batch cgroup died, web lived: {d}");
    Ok(())
}
