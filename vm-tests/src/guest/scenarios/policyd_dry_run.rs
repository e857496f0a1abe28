//! `policyd load --dry-run`: the policy decides and logs, the kernel's own killer kills.
//!
//! Same layout as policyd-priority-memcg: /app (memory.max 96M) with a big service
//! (priority 500) and a growing hog (priority 10). The kernel kills the service, its own
//! choice (the biggest task); policyd's decision line names what it would have killed,
//! the hog, with outcome dry-run; the next line reports the kernel's kill of the service
//! (decided by the kernel, in the same OOM of /app). `policyd status` shows the handler as
//! a dry run.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd, ServiceAndHog};
use crate::guest::util::KillLog;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-dry-run", run)
        .needs_policyd()
        .timeout_s(120)
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let layout = ServiceAndHog::create("dry-run", Some(96))?;
    let config = layout.config.as_str();
    let mut pd = Policyd::load(&[
        "priority",
        "--config",
        config,
        "--cgroup",
        "/app",
        "--dry-run",
    ])?;
    let h = pdutil::status_at("/app")?.context("policyd status lists no handler at /app")?;
    ensure!(
        h["dry_run"] == true,
        "policyd status --json does not show a dry run: {h:#}"
    );

    let (mut service, mut kmsg, mut hog) = layout.start(56)?;

    service.wait_killed(pdutil::OOM_TIMEOUT)?;
    // The hog stops growing short of the limit (see ServiceAndHog::start).
    expect_alive(&mut hog, "hog (policyd only said it would kill it)")?;
    expect_oom_kills(&layout.hog_cg, 0)?;
    expect_oom_kills(&layout.service_cg, 1)?;

    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = hog.pid().to_string();
    d.expect(&[
        ("scope", "/app"),
        ("victim_cgroup", "/app/hog"),
        ("pid", &pid),
        ("priority", "10"),
        ("reason", "lowest-priority"),
        ("outcome", "dry-run"),
        ("killed", "0"),
    ])?;
    // The kernel's own kill, logged after the decision that left it to the kernel.
    let kill = pd.next_kill(Duration::from_secs(10))?;
    kill.expect(&[
        ("pid", &service.pid().to_string()),
        ("cgroup", "/app/service"),
        ("kind", "chosen"),
        ("decided_by", "kernel"),
        ("scope", "/app"),
        ("constraint", "CONSTRAINT_MEMCG"),
    ])?;
    let log = KillLog::read(&mut kmsg, &[service.pid()])?;
    log.expect_kernel_killed(service.pid(), "service")?;
    log.expect_only_killed(service.pid(), "service")?;
    let h = pdutil::status_at("/app")?.context("the handler vanished from policyd status")?;
    let c = &h["counters"];
    ensure!(
        c["dry_runs"].as_u64() >= Some(1) && c["kills"].as_u64() == Some(0),
        "counters after a dry-run OOM: {c}"
    );
    pd.stop()?;
    println!("dry run: the kernel killed the service; policyd said: {d}");
    Ok(())
}
