//! At capacity (`policyd load --max-cgroups 16`): what the handler does with cgroups its
//! tables have no room for, and that policyd says so.
//!
//! /cap (priority 500) holds 24 cgroups a00..a23, each with a 1 MiB hog, and a rule gives
//! them priority 1. The rules map (16 entries) holds the defaults, /, /cap and a00..a12:
//! a13..a23 have no entry and take /cap's, priority 500, in the kernel. The candidates'
//! heap (16) holds the first 16 eligible cgroups in the kernel's walk, a00..a15: 8 are not
//! considered. a14 holds the biggest hog (6 MiB) but no entry, so it ranks at 500; a05
//! holds 3 MiB and its own entry: a05 dies. Three cgroups created then find the map full:
//! policyd says so once.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::kutil::{Action, Handler, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK};
use crate::guest::pdutil::{self, expect_alive, LogLine, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-capacity", run)
        .needs_policyd()
        .timeout_s(150)
}

const CGROUPS: usize = 24;
const CONFIG: &str = r#"
[[rule]]
cgroup = "/cap"
priority = 500

[[rule]]
cgroup = "/cap/a*"
priority = 1
"#;

/// Requires a line already logged that satisfies `pred`.
fn expect_logged(pd: &mut Policyd, what: &str, pred: impl Fn(&LogLine) -> bool) -> Result<()> {
    ensure!(
        pd.log().iter().any(pred),
        "policyd logged no line saying {what}:\n{}",
        pdutil::lines_text(pd.log())
    );
    Ok(())
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let cap = Cgroup::create("cap")?;
    let mut cgroups = Vec::new();
    let mut hogs = Vec::new();
    for i in 0..CGROUPS {
        let cg = cap.child(&format!("a{i:02}"))?;
        let mib = match i {
            5 => 3,
            14 => 6,
            _ => 1,
        };
        hogs.push(Hog::spawn(&cg, &HogSpec::fixed(mib))?);
        cgroups.push(cg);
    }
    for hog in &mut hogs {
        hog.wait_ready(pdutil::READY_TIMEOUT)?;
    }
    let config = pdutil::write_config("capacity", CONFIG)?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--max-cgroups", "16"])?;
    expect_logged(&mut pd, "that 11 cgroups have no rules entry", |l| {
        l.is(
            "WARN",
            "more cgroups than the rules map holds (16): 11 cgroups inherit",
        )
    })?;

    let declarer = Handler::load(Action::Defer, 0, 0)?;
    let declared = declarer.declare_oom(cap.id()?, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK, 1)?;
    ensure!(
        declared.prog_ret == 0 && declared.ret[0] == 1,
        "declaring an OOM of /cap: {declared}"
    );
    let d = pd.next_decision(Duration::from_secs(30))?;
    let pid = hogs[5].pid().to_string();
    let candidates = CGROUPS.to_string();
    d.expect(&[
        ("scope", "/cap"),
        ("victim_cgroup", "/cap/a05"),
        ("pid", &pid),
        ("priority", "1"),
        ("outcome", "killed"),
        ("candidates", &candidates),
        ("tried", "1"),
    ])?;
    // Logged right before the decision line.
    expect_logged(&mut pd, "that 8 candidates were not considered", |l| {
        l.is(
            "WARN",
            "8 eligible cgroup(s) in scope were not considered for this OOM",
        ) && l.message.contains("--max-cgroups")
    })?;
    hogs[5].wait_killed(pdutil::OOM_TIMEOUT)?;
    expect_alive(
        &mut hogs[14],
        "the biggest hog, in a cgroup without a rules entry",
    )?;

    // New cgroups find the map full: said once, naming the first.
    let news = (0..3)
        .map(|i| cap.child(&format!("new{i}")))
        .collect::<Result<Vec<_>>>()?;
    pd.wait_line(
        Duration::from_secs(20),
        "the warning that the rules map is full",
        |l| l.is("WARN", "the rules map is full (16 entries") && l.message.contains("/cap/new0"),
    )?;
    let full = |pd: &mut Policyd| {
        pd.log()
            .iter()
            .filter(|l| l.message.contains("the rules map is full"))
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        full(&mut pd) == 1,
        "the full rules map was reported {} times for 3 new cgroups",
        full(&mut pd)
    );
    drop(news);
    pd.stop()?;
    println!(
        "at capacity: 11 cgroups without an entry took /cap's priority, 8 candidates were not \
         considered, both logged; a05 died: {d}"
    );
    Ok(())
}
