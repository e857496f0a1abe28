//! A cgroup policyd has no rules entry for yet (created between two of its wake-ups:
//! here policyd is stopped while it happens) is judged by its nearest ancestor with an
//! entry, however deep. /dw/deep has priority 1 and /dw/other 50; 40 new levels below
//! /dw/deep put their leaf, at level 42, first. The handler once gave up after 32 levels
//! and used the defaults (priority 100): it killed in /dw/other, where `policyd explain`
//! said the leaf.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;

use crate::guest::bench::{self as bc, kill_reap, start_hog, HogMode, Stopwatch};
use crate::guest::pdutil::{self, Policyd};
use crate::guest::util::Cgroup;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-deep-new-cgroup", run)
        .needs_policyd()
        .timeout_s(120)
}

/// More than the 32 levels the handler's walk used to stop at.
const NEW_LEVELS: usize = 40;

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let watch = Stopwatch::load()?;
    let scope = Cgroup::create("dw")?;
    let deep = scope.child("deep")?;
    let other = scope.child("other")?;
    let config = pdutil::write_config(
        "deep-new-cgroup",
        &format!(
            "policy = \"priority\"\ndefault_priority = 100\n\n\
             [[rule]]\ncgroup = \"{}\"\npriority = 1\n\n\
             [[rule]]\ncgroup = \"{}\"\npriority = 50\n",
            deep.path(),
            other.path()
        ),
    )?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--cgroup", &scope.path()])?;
    let mut bystander = start_hog("other", &other, HogMode::Fixed(16))?;

    pd.signal(Signal::SIGSTOP)?;
    let mut chain: Vec<Cgroup> = Vec::with_capacity(NEW_LEVELS);
    for i in 1..=NEW_LEVELS {
        let next = chain.last().unwrap_or(&deep).child(&format!("l{i}"))?;
        chain.push(next);
    }
    let leaf = chain.last().context("no new levels")?;
    let level = leaf.path().matches('/').count();
    ensure!(
        level == NEW_LEVELS + 2,
        "{} is at level {level}",
        leaf.path()
    );
    let mut victim = start_hog("deep", leaf, HogMode::Fixed(8))?;

    let oom = watch.oom(&scope)?;
    let died = bc::wait_exit(&mut victim, Duration::from_secs(20))?;
    let bystander_alive = bystander.try_wait().context("waitpid")?.is_none();
    pd.signal(Signal::SIGCONT)?;
    ensure!(
        oom.ret == 1 && died.is_some() && bystander_alive,
        "OOM of {} with policyd stopped: freed {}, the level-{level} hog {}, the hog in {} \
         (priority 50) {}",
        scope.path(),
        oom.ret,
        if died.is_some() { "died" } else { "lives" },
        other.path(),
        if bystander_alive { "lives" } else { "died" }
    );
    let d = pd.next_decision(pdutil::OOM_TIMEOUT)?;
    d.expect(&[
        ("policy", "priority"),
        ("victim_cgroup", &leaf.path()),
        ("priority", "1"),
        ("runner_up", &other.path()),
    ])?;
    println!(
        "a new cgroup at level {level}, {NEW_LEVELS} levels below its nearest entry, \
         inherited priority 1: {d}"
    );

    kill_reap(&mut bystander);
    pd.stop()?;
    // Leaves first: rmdir needs an empty cgroup.
    while let Some(cg) = chain.pop() {
        cg.remove()?;
    }
    Ok(())
}
