//! `kill = "cgroup"`: once a batch cgroup is chosen, every process in it dies, not just
//! the largest: a job is never left half-dead.
//!
//! /b (memory.max 96M): /b/batch (priority 5, kill = "cgroup") runs three processes, two
//! small fixed ones and one growing into the limit; /b/web (priority 50) holds the most
//! memory. All three batch processes die, web lives.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd};
use crate::guest::util::{wait_until, Cgroup, Hog, HogSpec, KillLog, Kmsg};
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
    pdutil::quiet_oom_reports()?;
    let b = Cgroup::create("b")?;
    b.set("memory.max", "96M")?;
    let batch_cg = b.child("batch")?;
    let web_cg = b.child("web")?;
    let config = pdutil::write_config("kill-cgroup", CONFIG)?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--cgroup", "/b"])?;

    let mut web = Hog::start(&web_cg, &HogSpec::fixed(48), pdutil::READY_TIMEOUT)?;
    let mut kmsg = Kmsg::mark()?;
    let mut step1 = Hog::start(&batch_cg, &HogSpec::fixed(6), pdutil::READY_TIMEOUT)?;
    let mut step2 = Hog::start(&batch_cg, &HogSpec::fixed(6), pdutil::READY_TIMEOUT)?;
    let mut main = Hog::start(&batch_cg, &HogSpec::growing(8), pdutil::READY_TIMEOUT)?;
    println!(
        "web {} (48 MiB, priority 50); batch (priority 5, kill = cgroup): {} and {} (6 MiB \
         each), {} (growing)",
        web.pid(),
        step1.pid(),
        step2.pid(),
        main.pid()
    );

    for hog in [&mut main, &mut step1, &mut step2] {
        hog.wait_killed(pdutil::OOM_TIMEOUT)?;
    }
    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = main.pid().to_string();
    d.expect(&[
        ("scope", "/b"),
        ("victim_cgroup", "/b/batch"),
        // The largest task is named; all three are killed.
        ("pid", &pid),
        ("priority", "5"),
        ("reason", "lowest-priority"),
        ("outcome", "killed"),
        ("killed", "3"),
        ("runner_up", "/b/web"),
    ])?;
    expect_alive(&mut web, "web (priority 50)")?;
    expect_oom_kills(&batch_cg, 3)?;
    expect_oom_kills(&web_cg, 0)?;
    // A task leaves its cgroup at its very last context switch, which can come after
    // its parent has reaped it.
    wait_until(Duration::from_secs(10), "/b/batch to be empty", || {
        batch_cg.populated().is_ok_and(|p| !p)
    })
    .with_context(|| format!("/b/batch still has processes: {:?}", batch_cg.procs()))?;
    let log = KillLog::read(&mut kmsg, &[main.pid(), step1.pid(), step2.pid()])?;
    let mut killed = log.killed_pids();
    killed.sort_unstable();
    let mut want = vec![main.pid(), step1.pid(), step2.pid()];
    want.sort_unstable();
    ensure!(
        killed == want,
        "the kernel log reports kills of {killed:?}, expected the three batch processes \
         {want:?}:\n{}",
        log.text()
    );
    ensure!(
        log.killed_pids().first() == Some(&main.pid()),
        "the largest batch process {} was not killed first: {:?}",
        main.pid(),
        log.killed_pids()
    );
    pd.stop()?;
    println!("the whole batch cgroup died, web lived: {d}");
    Ok(())
}
