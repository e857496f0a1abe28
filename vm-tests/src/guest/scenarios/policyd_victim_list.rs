//! The handler's list of OOM victims at its cap. The handler looks for an earlier victim
//! still exiting among the victims a `tp_btf/mark_victim` program lists (128 at most); it
//! walks every process instead at the first OOM after load, and whenever more victims were
//! marked than the list holds, until a walk finds them within it again.
//! `policyd_victim_walks_total` counts the walks.
//!
//! /app/a (priority 10, kill = "cgroup") holds 140 sleeping processes and a hog; /app/b
//! (priority 20) a hog. policyd is attached to /app.
//!
//! 1. OOM 1 (squeeze /app): policyd kills all 141 tasks of /app/a, each marked a victim by
//!    the kernel: 13 more than the list holds. The OOM walked once (the first after load).
//! 2. OOM 2, a new hog in /app/a: by then the handler has walked again, in OOM 1's retries
//!    or in OOM 2 (walks >= 2): the overflow is not forgotten. a's hog dies, b's lives.
//! 3. OOM 3, the same: the list is whole again, with at most one victim pending: no walk.

use std::process::Child;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{self, spawn_sleep, Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-victim-list", run)
        .needs_policyd()
        .timeout_s(150)
}

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/app/a"
priority = 10
kill = "cgroup"

[[rule]]
cgroup = "/app/b"
priority = 20
"#;

/// The handler's list holds 128 (POLICYD_MAX_VICTIMS in policyd.bpf.c).
const LIST: usize = 128;
const SLEEPERS: usize = LIST + 12;

/// `policyd_victim_walks_total` of the handler on /app, from `policyd metrics`.
fn walks() -> Result<u64> {
    let out = pdutil::run_quiet(&["metrics"])?;
    ensure!(out.status.success(), "policyd metrics failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let series = "policyd_victim_walks_total{attach=\"/app\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .with_context(|| format!("no {series:?} in policyd metrics:\n{text}"))?
        .parse()
        .with_context(|| format!("{series:?} is not a count"))
}

/// Squeezes /app until a's hog dies; checks the decision and that b's hog lives.
fn oom(pd: &mut Policyd, app: &Cgroup, a: &mut Hog, b: &mut Hog, tasks: usize) -> Result<()> {
    pdutil::squeeze(app, 10)?;
    a.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_killing_decision(Duration::from_secs(20))?;
    d.expect(&[
        ("victim_cgroup", "/app/a"),
        ("outcome", "killed"),
        ("killed", &tasks.to_string()),
    ])?;
    expect_alive(b, "b's hog")?;
    app.set("memory.max", "max")?;
    Ok(())
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let app = Cgroup::create("app")?;
    let a_cg = app.child("a")?;
    let b_cg = app.child("b")?;
    let config = pdutil::write_config("victim-list", CONFIG)?;
    let mut pd = Policyd::load(&["--config", &config, "--cgroup", "/app"])?;
    ensure!(walks()? == 0, "the handler walked before any OOM");

    // Our children, so that each is reaped as it dies and leaves no zombie.
    let mut sleepers: Vec<Child> = (0..SLEEPERS)
        .map(|_| spawn_sleep(&a_cg))
        .collect::<Result<_>>()?;
    let mut b = Hog::start(&b_cg, &HogSpec::fixed(52), pdutil::READY_TIMEOUT)?;

    // 1.
    let mut a = Hog::start(&a_cg, &HogSpec::fixed(44), pdutil::READY_TIMEOUT)?;
    oom(&mut pd, &app, &mut a, &mut b, SLEEPERS + 1)?;
    for s in &mut sleepers {
        s.wait().context("reaping a sleeper")?;
    }
    util::wait_until(Duration::from_secs(10), "/app/a to empty", || {
        a_cg.read("cgroup.procs").is_ok_and(|p| p.trim().is_empty())
    })?;
    let after_1 = walks()?;
    println!(
        "OOM 1: {} victims marked at once, {after_1} walk(s)",
        SLEEPERS + 1
    );
    ensure!(after_1 >= 1, "OOM 1, the first after load, did not walk");

    // 2.
    let mut a = Hog::start(&a_cg, &HogSpec::fixed(44), pdutil::READY_TIMEOUT)?;
    oom(&mut pd, &app, &mut a, &mut b, 1)?;
    let after_2 = walks()?;
    println!("OOM 2: {after_2} walk(s) in all");
    ensure!(
        after_2 >= 2,
        "{} victims were marked at once, more than the list's {LIST}, but the handler \
         walked only {after_2} time(s): it trusted a list that had lost victims",
        SLEEPERS + 1
    );

    // 3.
    let mut a = Hog::start(&a_cg, &HogSpec::fixed(44), pdutil::READY_TIMEOUT)?;
    oom(&mut pd, &app, &mut a, &mut b, 1)?;
    let after_3 = walks()?;
    println!("OOM 3: {after_3} walk(s) in all");
    ensure!(
        after_3 == after_2,
        "OOM 3 walked every process ({after_2} -> {after_3}) with one victim pending: the \
         list did not recover from the overflow"
    );
    pd.stop()
}
