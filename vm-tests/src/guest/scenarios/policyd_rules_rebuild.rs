//! Cgroups created after policyd built its rules table get their entries in a hash,
//! where the handler looks when the table has none; once there are
//! `kernel_rules::REBUILD_MIN_CREATED` of them (or a quarter of the table's), policyd
//! builds a new table of every cgroup and swaps it in with an empty hash, once no cgroup
//! has come for a second; when the settings of a cgroup of the table change, at once.
//!
//! /rb/keep (priority 100, a 16 MiB hog) is there when policyd loads. Then /rb/lo-000
//! (priority 10 by rule, an 8 MiB hog) and enough empty /rb/hi-NNN (priority 90) are
//! made: policyd says it rebuilt the table, and an OOM of /rb kills lo-000's hog, whose
//! rule is now in the new table (the new hash is empty). Then trusted.policyd.priority=5
//! on keep, a cgroup of the table: policyd rebuilds the table again, and the next OOM
//! kills keep's hog rather than a new one in lo-000.

use std::process::Child;
use std::time::Duration;

use anyhow::{ensure, Result};
use policyd::kernel_rules::REBUILD_MIN_CREATED;

use crate::guest::bench::{self as bc, start_hog, HogMode, Stopwatch};
use crate::guest::pdutil::{self, Decision, Policyd};
use crate::guest::util::Cgroup;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-rules-rebuild", run)
        .needs_policyd()
        .timeout_s(180)
}

/// Waits for policyd's line that it rebuilt the table; the cgroups it says were created
/// since the last one.
fn rebuilt(pd: &mut Policyd) -> Result<usize> {
    let line = pd.wait_line(Duration::from_secs(60), "the rules table rebuilt", |l| {
        l.is("DEBUG", "rules table rebuilt")
    })?;
    let created = line
        .message
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok());
    created.ok_or_else(|| anyhow::anyhow!("no count of new cgroups in {:?}", line.message))
}

/// Declares an OOM of `scope` and requires policyd to kill `victim`'s hog, in the cgroup
/// `victim` at `priority`; its decision.
fn oom_kills(
    pd: &mut Policyd,
    watch: &Stopwatch,
    scope: &Cgroup,
    victim: (&Cgroup, &mut Child),
    priority: &str,
) -> Result<Decision> {
    let (cgroup, hog) = victim;
    let oom = watch.oom(scope)?;
    let d = pd.next_decision(pdutil::OOM_TIMEOUT)?;
    d.expect(&[
        ("victim_cgroup", &cgroup.path()),
        ("priority", priority),
        ("outcome", "killed"),
    ])?;
    ensure!(
        oom.ret == 1 && bc::wait_exit(hog, pdutil::OOM_TIMEOUT)?.is_some(),
        "the OOM of {} freed {} and the hog in {} lives",
        scope.path(),
        oom.ret,
        cgroup.path()
    );
    Ok(d)
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let watch = Stopwatch::load()?;
    let scope = Cgroup::create("rb")?;
    let keep = scope.child("keep")?;
    let config = pdutil::write_config(
        "rules-rebuild",
        &format!(
            "policy = \"priority\"\ndefault_priority = 100\n\n\
             [[rule]]\ncgroup = \"{0}/lo-*\"\npriority = 10\n\n\
             [[rule]]\ncgroup = \"{0}/hi-*\"\npriority = 90\n",
            scope.path()
        ),
    )?;
    let mut pd = Policyd::load(&["-vv", "priority", "--config", &config])?;
    let mut kept = start_hog("keep", &keep, HogMode::Fixed(16))?;

    let lo = scope.child("lo-000")?;
    let mut victim = start_hog("lo", &lo, HogMode::Fixed(8))?;
    let mut his = Vec::new();
    for i in 1..=REBUILD_MIN_CREATED {
        his.push(scope.child(&format!("hi-{i:03}"))?);
    }
    let created = rebuilt(&mut pd)?;
    ensure!(
        created >= REBUILD_MIN_CREATED,
        "the table was rebuilt after {created} new cgroups, fewer than {REBUILD_MIN_CREATED}"
    );

    let d = oom_kills(&mut pd, &watch, &scope, (&lo, &mut victim), "10")?;
    println!("after {created} new cgroups, a new table: {d}");

    rustix::fs::setxattr(
        keep.dir(),
        "trusted.policyd.priority",
        b"5",
        rustix::fs::XattrFlags::empty(),
    )?;
    let again = rebuilt(&mut pd)?;
    let mut second = start_hog("lo", &lo, HogMode::Fixed(8))?;
    let d = oom_kills(&mut pd, &watch, &scope, (&keep, &mut kept), "5")?;
    bc::kill_reap(&mut second);
    println!(
        "trusted.policyd.priority=5 on {}: a new table ({again} new cgroups since), {d}",
        keep.path()
    );
    pd.stop()?;
    Ok(())
}
