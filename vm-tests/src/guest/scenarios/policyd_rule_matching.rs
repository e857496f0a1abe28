//! How rules reach cgroups that no rule names, in the kernel's decision (not only in
//! `policyd explain`):
//!
//! 1. Inheritance: /app/batch has a rule (priority 5); its child /app/batch/job1 has none
//!    and inherits 5, so it dies before its bigger cousin /app/web (priority 50).
//! 2. A glob and a cgroup created after `policyd load`: `/app/jobs/*` (priority 1) must
//!    reach /app/jobs/j7, made while policyd runs. policyd learns of it through inotify and
//!    writes its entry; without that entry the BPF side would give j7 the settings of its
//!    parent /app/jobs (default priority 100) and web (50) would die instead.

use std::time::Duration;

use anyhow::Result;

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
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
    pdutil::quiet_oom_reports()?;
    let app = Cgroup::create("app")?;
    app.set("memory.max", "96M")?;
    let web_cg = app.child("web")?;
    let job1_cg = app.child("batch/job1")?;
    let jobs_cg = app.child("jobs")?;
    let config = pdutil::write_config("rule-matching", CONFIG)?;
    // -vv: the daemon logs (at debug level) each new cgroup it adds to the rules map.
    let mut pd = Policyd::load(&["-vv", "priority", "--config", &config, "--cgroup", "/app"])?;

    let mut web = Hog::start(&web_cg, &HogSpec::fixed(56), pdutil::READY_TIMEOUT)?;

    // 1. Inheritance.
    let mut kmsg = Kmsg::mark()?;
    let mut job1 = Hog::start(&job1_cg, &HogSpec::growing(8), pdutil::READY_TIMEOUT)?;
    println!(
        "web {} (56 MiB, priority 50), /app/batch/job1 {} (growing, no rule; /app/batch has \
         priority 5)",
        web.pid(),
        job1.pid()
    );
    job1.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = job1.pid().to_string();
    d.expect(&[
        ("victim_cgroup", "/app/batch/job1"),
        ("pid", &pid),
        ("priority", "5"),
        ("reason", "lowest-priority"),
        ("outcome", "killed"),
        ("runner_up", "/app/web"),
        ("runner_up_priority", "50"),
    ])?;
    expect_alive(&mut web, "web (priority 50, the biggest)")?;
    expect_oom_kills(&job1_cg, 1)?;
    expect_oom_kills(&web_cg, 0)?;
    let log = KillLog::read(&mut kmsg, &[job1.pid()])?;
    log.expect_only_killed(job1.pid(), "job1")?;
    println!("job1 inherited priority 5 from /app/batch: {d}");

    // 2. A cgroup the glob matches, created after load.
    let j7_cg = jobs_cg.child("j7")?;
    pd.wait_line(
        Duration::from_secs(10),
        "policyd to add /app/jobs/j7 to its rules map",
        |l| l.message.contains("new cgroup /app/jobs/j7 ") && l.message.contains("priority 1 "),
    )?;
    let mut kmsg = Kmsg::mark()?;
    let mut j7 = Hog::start(&j7_cg, &HogSpec::growing(8), pdutil::READY_TIMEOUT)?;
    println!(
        "/app/jobs/j7 {} (created after load, growing; /app/jobs/* has priority 1)",
        j7.pid()
    );
    j7.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = j7.pid().to_string();
    d.expect(&[
        ("victim_cgroup", "/app/jobs/j7"),
        ("pid", &pid),
        ("priority", "1"),
        ("reason", "lowest-priority"),
        ("outcome", "killed"),
        ("runner_up", "/app/web"),
    ])?;
    expect_alive(&mut web, "web (priority 50, the biggest)")?;
    expect_oom_kills(&j7_cg, 1)?;
    expect_oom_kills(&web_cg, 0)?;
    let log = KillLog::read(&mut kmsg, &[j7.pid()])?;
    log.expect_only_killed(j7.pid(), "j7")?;
    pd.stop()?;
    println!("the glob reached a cgroup made after load: {d}");
    Ok(())
}
