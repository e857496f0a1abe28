//! A walk of the cgroup tree cut short: the handler's walk stops after POLICYD_WALK_STEPS
//! steps (two per cgroup, 4M cgroups), which no guest can hold, so `policyd load
//! --walk-steps` (a hidden test seam) lowers it.
//!
//! /walk holds six cgroups w0..w5, each with a hog, priority 500, except w5 at priority 1;
//! w2's hog is the biggest. With 4 steps the walk ranks /walk, w0, w1 and w2 and stops:
//! w2 dies, the decision says the walk was cut (`walk_cut`) with 3 candidates, and a
//! warning says cgroups were not considered. Loaded again without the seam, the next OOM
//! ranks all five left and kills in w5.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::kutil::{Action, Handler, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK};
use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-walk-cut", run)
        .needs_policyd()
        .timeout_s(150)
}

const CONFIG: &str = r#"
[[rule]]
cgroup = "/walk/w5"
priority = 1

[[rule]]
cgroup = "/walk/*"
priority = 500
"#;

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let walk = Cgroup::create("walk")?;
    let mut hogs = Vec::new();
    let mut cgroups = Vec::new();
    for i in 0..6 {
        let cg = walk.child(&format!("w{i}"))?;
        hogs.push(Hog::spawn(
            &cg,
            &HogSpec::fixed(if i == 2 { 4 } else { 1 }),
        )?);
        cgroups.push(cg);
    }
    for hog in &mut hogs {
        hog.wait_ready(pdutil::READY_TIMEOUT)?;
    }
    let config = pdutil::write_config("walk-cut", CONFIG)?;
    let declarer = Handler::load(Action::Defer, 0, 0)?;
    let declare = || -> Result<()> {
        let declared = declarer.declare_oom(walk.id()?, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK, 1)?;
        ensure!(
            declared.prog_ret == 0 && declared.ret[0] == 1,
            "declaring an OOM of /walk: {declared}"
        );
        Ok(())
    };

    // 1. Cut after /walk, w0, w1 and w2.
    let mut pd = Policyd::load(&["priority", "--config", &config, "--walk-steps", "4"])?;
    declare()?;
    let d = pd.next_decision(Duration::from_secs(30))?;
    let pid = hogs[2].pid().to_string();
    d.expect(&[
        ("victim_cgroup", "/walk/w2"),
        ("pid", &pid),
        ("priority", "500"),
        ("outcome", "killed"),
        ("candidates", "3"),
        ("walk_cut", "true"),
    ])?;
    ensure!(
        pd.log().iter().any(|l| l.is(
            "WARN",
            "the handler's walk of the cgroups in scope stopped short"
        ) && l.message.contains("were not considered for this OOM")),
        "policyd did not warn that the walk stopped short:\n{}",
        pdutil::lines_text(pd.log())
    );
    hogs[2].wait_killed(pdutil::OOM_TIMEOUT)?;
    expect_alive(&mut hogs[5], "w5's hog, past the cut")?;
    pd.stop()?;
    println!("cut after 4 steps: w2 died of the 3 ranked, with a warning: {d}");

    // 2. The whole walk: w5, priority 1, is found.
    let mut pd = Policyd::load(&["priority", "--config", &config])?;
    declare()?;
    let d = pd.next_decision(Duration::from_secs(30))?;
    let pid = hogs[5].pid().to_string();
    d.expect(&[
        ("victim_cgroup", "/walk/w5"),
        ("pid", &pid),
        ("priority", "1"),
        ("outcome", "killed"),
        ("candidates", "5"),
        ("walk_cut", "false"),
    ])?;
    hogs[5].wait_killed(pdutil::OOM_TIMEOUT)?;
    pd.stop()?;
    println!("the whole walk: w5 died: {d}");
    Ok(())
}
