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

use anyhow::Result;

use crate::guest::layout::{Layout, LayoutSpec, Oom};
use crate::guest::util::HogSpec;
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
    let immortals: Vec<String> = (0..IMMORTALS).map(|i| format!("immortal{i}")).collect();
    let mut cgroups = vec!["service", "batch"];
    cgroups.extend(immortals.iter().map(String::as_str));
    let mut l = Layout::load(&LayoutSpec {
        name: "passes-over",
        parent: "pile",
        memory_max: "128M",
        cgroups: &cgroups,
        config: CONFIG,
        policyd_options: &[],
    })?;
    // The biggest task, priority 1000: the kernel's own choice.
    l.start("service", "service", &HogSpec::fixed(72))?;
    // Priority 1, but nothing to kill; all must survive.
    for cg in &immortals {
        l.start(cg, cg, &HogSpec::fixed(2).oom_score_adj(-1000))?;
    }

    let candidates = (IMMORTALS + 2).to_string();
    let tried = (IMMORTALS + 1).to_string();
    let unkillable = IMMORTALS.to_string();
    let (d, _) = l.oom(&Oom {
        start: &[("batch", "batch", HogSpec::growing(8))],
        victims: &["batch"],
        decision: &[
            ("priority", "50"),
            ("reason", "lowest-priority"),
            ("candidates", &candidates),
            ("tried", &tried),
            ("unkillable", &unkillable),
            ("exiting", "0"),
            ("empty", "0"),
            ("refused", "0"),
            ("runner_up", "/pile/service"),
            ("runner_up_priority", "1000"),
        ],
        oom_kills: &[("batch", 1), ("service", 0)],
    })?;
    l.stop()?;
    println!("{IMMORTALS} unkillable candidates passed over, the batch job died: {d}");
    Ok(())
}
