//! SIGHUP re-reads the config while the handler stays attached: a valid change takes
//! effect for the very next OOM; an invalid file is rejected as a whole and the running
//! rules stay.
//!
//! /app holds /app/a and /app/b, fresh hogs each round (the victim is always the smaller
//! of the two, so size never explains a choice), and each OOM comes from lowering /app's
//! memory.max below its usage: one OOM on a layout that holds still (see pdutil::squeeze
//! for the sizes).
//!
//! 1. a = 10, b = 20: a dies.
//! 2. rewrite to a = 30, b = 20, SIGHUP, "reloaded": b dies.
//! 3. rewrite to a broken file that would say a = 5, SIGHUP: an error, policyd runs on,
//!    and b (20 under the old rules) dies again, not a.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, KillLog, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-reload", run)
        .needs_policyd()
        .timeout_s(120)
}

fn config(a: u32, b: u32) -> String {
    format!(
        "policy = \"priority\"\n\n[[rule]]\ncgroup = \"/app/a\"\npriority = {a}\n\n\
         [[rule]]\ncgroup = \"/app/b\"\npriority = {b}\n"
    )
}

/// Would mean a = 5 if policyd applied what it could read of it.
const BROKEN: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/app/a"
priority = 5

[[rule]]
cgroup = "/app/b"
priority = "high"
"#;

struct Round {
    a: Hog,
    b: Hog,
}

/// Fresh hogs: a with `a_mib`, b with `b_mib`.
fn start_round(a_cg: &Cgroup, b_cg: &Cgroup, a_mib: u64, b_mib: u64) -> Result<Round> {
    let a = Hog::start(a_cg, &HogSpec::fixed(a_mib), pdutil::READY_TIMEOUT)?;
    let b = Hog::start(b_cg, &HogSpec::fixed(b_mib), pdutil::READY_TIMEOUT)?;
    println!("a {} ({a_mib} MiB), b {} ({b_mib} MiB)", a.pid(), b.pid());
    Ok(Round { a, b })
}

/// Squeezes /app, checks the decision and that exactly `victim` died, then cleans up.
fn oom(
    pd: &mut Policyd,
    app: &Cgroup,
    victim_cg: &Cgroup,
    victim: &mut Hog,
    survivor: &mut Hog,
    priority: u32,
) -> Result<()> {
    let kills_before = pdutil::oom_kills(victim_cg)?;
    let app_before = pdutil::oom_kills(app)?;
    let mut kmsg = Kmsg::mark()?;
    pdutil::squeeze(app, 10)?;
    victim.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = victim.pid().to_string();
    let prio = priority.to_string();
    d.expect(&[
        ("victim_cgroup", &victim_cg.path()),
        ("pid", &pid),
        ("priority", &prio),
        ("reason", "lowest-priority"),
        ("outcome", "killed"),
        ("killed", "1"),
    ])?;
    expect_alive(survivor, "other hog")?;
    expect_oom_kills(victim_cg, kills_before + 1)?;
    expect_oom_kills(app, app_before + 1)?;
    let log = KillLog::read(&mut kmsg)?;
    ensure!(
        log.killed_pids() == vec![victim.pid()],
        "kills reported: {:?}, expected only {}:\n{}",
        log.killed_pids(),
        victim.pid(),
        log.text()
    );
    println!("{d}");
    app.set("memory.max", "max")?;
    Ok(())
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let app = Cgroup::create("app")?;
    let a_cg = app.child("a")?;
    let b_cg = app.child("b")?;
    let path = pdutil::write_config("reload", &config(10, 20))?;
    let mut pd = Policyd::load(&["priority", "--config", &path, "--cgroup", "/app"])?;

    // 1. a = 10, b = 20.
    let mut r = start_round(&a_cg, &b_cg, 44, 52)?;
    oom(&mut pd, &app, &a_cg, &mut r.a, &mut r.b, 10)?;
    drop(r);

    // 2. a = 30, b = 20.
    pdutil::write_config("reload", &config(30, 20))?;
    ensure!(pd.reload()?, "policyd did not reload the valid config");
    let mut r = start_round(&a_cg, &b_cg, 52, 44)?;
    oom(&mut pd, &app, &b_cg, &mut r.b, &mut r.a, 20)?;
    drop(r);

    // 3. A broken file: rejected, the rules of step 2 stay.
    pdutil::write_config("reload", BROKEN)?;
    ensure!(
        !pd.reload()?,
        "policyd reloaded a config with priority = \"high\""
    );
    ensure!(
        pd.log()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("/tmp/reload.toml")),
        "no ERROR line naming /tmp/reload.toml in policyd's log"
    );
    ensure!(pd.is_running(), "policyd exited after an invalid reload");
    let mut r = start_round(&a_cg, &b_cg, 52, 44)?;
    oom(&mut pd, &app, &b_cg, &mut r.b, &mut r.a, 20)?;
    drop(r);

    pd.stop()?;
    println!("reload took effect; an invalid reload kept the old rules");
    Ok(())
}
