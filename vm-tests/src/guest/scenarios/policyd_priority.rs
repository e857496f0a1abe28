//! The `priority` policy's promise: the lowest-priority cgroup dies, not the biggest one.
//!
//! A valuable service (priority 500) holds most of the memory; a cheap hog (priority 10)
//! grows until the OOM. The kernel alone would kill the service (the biggest task);
//! policyd must kill the hog and leave the service alone, for a cgroup's own memory.max
//! OOM (`policyd-priority-memcg`, handler attached to that cgroup, checked through
//! `policyd status` too) and for the whole guest running out (`policyd-priority-global`,
//! handler attached system-wide).

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::layout::PolicyKill;
use crate::guest::pdutil::{self, Policyd, ServiceAndHog};
use crate::guest::Scenario;

pub fn memcg() -> Scenario {
    Scenario::new("policyd-priority-memcg", run_memcg)
        .needs_policyd()
        .timeout_s(120)
}

pub fn global() -> Scenario {
    Scenario::new("policyd-priority-global", run_global)
        .needs_policyd()
        .mem_mb(256)
        .timeout_s(120)
}

/// The handler on /app (memory.max 96M): status shows it there; the hog dies.
fn run_memcg() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let layout = ServiceAndHog::create("priority-memcg", Some(96))?;
    let mut pd = Policyd::load(&["priority", "--config", &layout.config, "--cgroup", "/app"])?;

    // Loaded: status names the handler, where it is, who holds it, and no kills yet.
    let h = pdutil::status_at("/app")?.context("policyd status --json lists no handler at /app")?;
    check_status(&h, pd.pid())?;
    ensure!(
        h["counters"]["kills"].as_u64() == Some(0),
        "counters before any OOM: {}",
        h["counters"]
    );
    ensure!(
        pdutil::status()?.len() == 1,
        "more than one handler attached"
    );

    let (mut service, mut kmsg, mut hog) = layout.start(56)?;
    let (d, log) = PolicyKill {
        victims: vec![("hog", &mut hog)],
        survivors: vec![("service (priority 500, the biggest)", &mut service)],
        timeout: pdutil::OOM_TIMEOUT,
        decision: &[
            ("policy", "priority"),
            ("scope", "/app"),
            ("victim_cgroup", "/app/hog"),
            ("priority", "10"),
            ("reason", "lowest-priority"),
            ("runner_up", "/app/service"),
            ("runner_up_priority", "500"),
        ],
        oom_kills: vec![
            (&layout.hog_cg, 1),
            (&layout.service_cg, 0),
            (&layout.app, 1),
        ],
    }
    .check(&mut pd, &mut kmsg)?;
    ensure!(
        log.lines
            .iter()
            .any(|l| l.contains("oom victim chosen by BPF OOM handler \"policyd_priority\"")),
        "the OOM report does not name policyd_priority:\n{}",
        log.text()
    );

    // The counters moved with the OOM.
    let h = pdutil::status_at("/app")?.context("the handler vanished from policyd status")?;
    check_status(&h, pd.pid())?;
    let c = &h["counters"];
    ensure!(
        c["kills"].as_u64() >= Some(1) && c["ooms"].as_u64() >= Some(1),
        "counters after the OOM: {c}"
    );

    pd.stop()?;
    ensure!(
        pdutil::status_at("/app")?.is_none(),
        "policyd status still lists a handler at /app after policyd stopped"
    );
    println!("priority beat size on a memcg OOM: {d}");
    Ok(())
}

/// The verifier's work on the priority handler, at most. Its load time under TCG follows
/// it (1.2 s at 25,306 instructions, 0.2 s at 3,671): a path explosion in the handler fails
/// here instead of only slowing every start-up.
const VERIFIED_INSNS_MAX: u64 = 10_000;

/// What `policyd status --json` must say about policyd's handler on /app.
fn check_status(h: &serde_json::Value, owner: i32) -> Result<()> {
    ensure!(
        h["cgroup"] == "/app"
            && h["system_wide"] == false
            && h["policy"] == "priority"
            && h["name"] == "policyd_priority"
            && h["dry_run"] == false,
        "policyd status --json: unexpected handler {h:#}"
    );
    let owners: Vec<i64> = h["owners"]
        .as_array()
        .map(|o| o.iter().filter_map(|o| o["pid"].as_i64()).collect())
        .unwrap_or_default();
    ensure!(
        owners == vec![i64::from(owner)],
        "policyd status --json: owners {owners:?}, expected policyd's pid {owner}"
    );
    let insns = h["verified_insns"]
        .as_u64()
        .context("policyd status --json: the handler has no verified_insns")?;
    ensure!(
        insns <= VERIFIED_INSNS_MAX,
        "the verifier went through {insns} instructions of the handler, more than \
         {VERIFIED_INSNS_MAX}: look for a loop whose values it follows as constants"
    );
    println!("handler: {insns} instructions verified");
    Ok(())
}

/// No memory.max anywhere: the guest's RAM runs out, the system-wide handler decides.
fn run_global() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let layout = ServiceAndHog::create("priority-global", None)?;
    let mut pd = Policyd::load(&["priority", "--config", &layout.config])?;

    // The service takes 60% of what is free, so the hog, growing into the rest, stays
    // smaller: the kernel's own choice would be the service.
    let free_mib = pdutil::mem_free_mib()?;
    let service_mib = free_mib * 6 / 10;
    println!("{free_mib} MiB free");
    let (mut service, mut kmsg, mut hog) = layout.start(service_mib)?;

    let (d, log) = PolicyKill {
        victims: vec![("hog", &mut hog)],
        survivors: vec![("service (priority 500, the biggest)", &mut service)],
        timeout: Duration::from_secs(60),
        decision: &[
            ("policy", "priority"),
            ("scope", "global"),
            ("victim_cgroup", "/app/hog"),
            ("reason", "lowest-priority"),
            ("runner_up", "/app/service"),
        ],
        oom_kills: vec![(&layout.hog_cg, 1), (&layout.service_cg, 0)],
    }
    .check(&mut pd, &mut kmsg)?;
    ensure!(
        !log.lines
            .iter()
            .any(|l| l.contains("Memory cgroup out of memory")),
        "a memcg OOM happened where only a global one should:\n{}",
        log.text()
    );
    pd.stop()?;
    println!("priority beat size on a global OOM: {d}");
    Ok(())
}
