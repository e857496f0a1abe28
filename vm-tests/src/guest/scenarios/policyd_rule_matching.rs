//! How rules reach cgroups that no rule names, in the kernel's decision (not only in
//! `policyd explain`):
//!
//! 1. Inheritance: /app/batch has a rule (priority 5); its child /app/batch/job1 has none
//!    and inherits 5, so it dies before its bigger cousin /app/web (priority 50).
//! 2. A glob and a cgroup created after `policyd load`: `/app/jobs/*` (priority 1) must
//!    reach /app/jobs/j7, made while policyd runs. policyd learns of it through fanotify and
//!    writes its entry; without that entry the BPF side would give j7 the settings of its
//!    parent /app/jobs (default priority 100) and web (50) would die instead.

use std::time::Duration;

use anyhow::Result;

use crate::guest::layout::{Layout, LayoutSpec, Oom};
use crate::guest::util::HogSpec;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-rule-matching", run)
        .needs_policyd()
        .timeout_s(120)
}

const CONFIG: &str = r#"
policy = "priority"
default_priority = 100

[[rule]]
cgroup = "/app/jobs/*"
priority = 1

[[rule]]
cgroup = "/app/batch"
priority = 5

[[rule]]
cgroup = "/app/web"
priority = 50
"#;

fn run() -> Result<()> {
    let mut l = Layout::load(&LayoutSpec {
        name: "rule-matching",
        parent: "app",
        memory_max: "96M",
        cgroups: &["web", "batch/job1", "jobs"],
        config: CONFIG,
        // The daemon logs (at debug level) each new cgroup it adds to the rules map.
        policyd_options: &["-vv"],
    })?;
    // web: priority 50, the biggest.
    l.start("web", "web", &HogSpec::fixed(56))?;

    // 1. Inheritance: /app/batch/job1 has no rule; /app/batch has priority 5.
    let (d, _) = l.oom(&Oom {
        start: &[("job1", "batch/job1", HogSpec::growing(8))],
        victims: &["job1"],
        decision: &[
            ("priority", "5"),
            ("reason", "lowest-priority"),
            ("runner_up", "/app/web"),
            ("runner_up_priority", "50"),
        ],
        oom_kills: &[("batch/job1", 1), ("web", 0)],
    })?;
    println!("job1 inherited priority 5 from /app/batch: {d}");

    // 2. A cgroup the glob matches (/app/jobs/* has priority 1), created after load.
    l.add_cgroup("jobs/j7")?;
    l.pd.wait_line(
        Duration::from_secs(10),
        "policyd to add /app/jobs/j7 to its rules map",
        |l| l.message.contains("new cgroup /app/jobs/j7 ") && l.message.contains("priority 1 "),
    )?;
    let (d, _) = l.oom(&Oom {
        start: &[("j7", "jobs/j7", HogSpec::growing(8))],
        victims: &["j7"],
        decision: &[
            ("priority", "1"),
            ("reason", "lowest-priority"),
            ("runner_up", "/app/web"),
        ],
        oom_kills: &[("jobs/j7", 1), ("web", 0)],
    })?;
    l.stop()?;
    println!("the glob reached a cgroup made after load: {d}");
    Ok(())
}
