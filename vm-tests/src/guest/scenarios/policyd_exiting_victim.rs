//! One OOM, one kill: while policyd's victim is still giving its memory back, an OOM that
//! strikes again must be resolved by waiting for it (outcome awaited), never by killing a
//! second task (design brief §3 (a)).
//!
//! The victim is small (20 MiB) and is not the task that runs into the limit, so the OOM
//! path runs again and again while it exits:
//!
//! 1. /ev's memory.max is lowered 10 MiB below its usage: the writing task retries until
//!    the usage fits.
//! 2. A task that touches 24 MiB runs into memory.max; it fits once the victim is gone.
//!
//! Each time the victim (priority 10) must be the only task killed; the bystander
//! (priority 50) and the allocating task (priority 90) live.
//!
//! 3. The `largest` policy, 80 and 60 MiB in two cgroups, memory.max lowered 45 MiB below
//!    the usage: the 80 MiB task dies, and while its memory comes back its cgroup drops
//!    below the other one in the ranking; the next OOM must still wait for it.

use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::guest::pdutil::{self, KillLog, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-exiting-victim", run)
        .needs_policyd()
        .timeout_s(120)
}

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/ev/victim"
priority = 10

[[rule]]
cgroup = "/ev/bystander"
priority = 50

[[rule]]
cgroup = "/ev/alloc"
priority = 90
"#;

const VICTIM_MIB: u64 = 20;

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let ev = Cgroup::create("ev")?;
    let victim_cg = ev.child("victim")?;
    let bystander_cg = ev.child("bystander")?;
    let alloc_cg = ev.child("alloc")?;
    let config = pdutil::write_config("exiting-victim", CONFIG)?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--cgroup", "/ev"])?;
    let mut bystander = Hog::start(&bystander_cg, &HogSpec::fixed(30), pdutil::READY_TIMEOUT)?;
    let mut failures = Vec::new();

    // 1. Lowering memory.max.
    let mut victim = Hog::start(
        &victim_cg,
        &HogSpec::fixed(VICTIM_MIB),
        pdutil::READY_TIMEOUT,
    )?;
    println!(
        "round 1: victim {} ({VICTIM_MIB} MiB, priority 10), bystander {} (30 MiB, priority \
         50); memory.max lowered below the usage",
        victim.pid(),
        bystander.pid()
    );
    let before = pdutil::oom_kills(&ev)?;
    let mut kmsg = Kmsg::mark()?;
    pdutil::squeeze(&ev, 10)?;
    victim.wait_killed(pdutil::OOM_TIMEOUT)?;
    if let Err(e) = one_kill(
        &mut pd,
        &mut kmsg,
        &ev,
        before,
        victim.pid(),
        &mut [&mut bystander],
    ) {
        failures.push(format!("round 1 (memory.max lowered): {e:#}"));
    }
    ev.set("memory.max", "max")?;

    // 2. A task running into memory.max.
    if !bystander.is_alive() {
        bystander = Hog::start(&bystander_cg, &HogSpec::fixed(30), pdutil::READY_TIMEOUT)?;
    }
    let mut victim = Hog::start(
        &victim_cg,
        &HogSpec::fixed(VICTIM_MIB),
        pdutil::READY_TIMEOUT,
    )?;
    let limit = ev.read_u64("memory.current")? + (14 << 20);
    ev.set("memory.max", limit.to_string())?;
    let before = pdutil::oom_kills(&ev)?;
    let mut kmsg = Kmsg::mark()?;
    let mut alloc = Hog::spawn(&alloc_cg, &HogSpec::fixed(24))?;
    println!(
        "round 2: victim {} ({VICTIM_MIB} MiB, priority 10), bystander {} (30 MiB, priority \
         50), alloc {} touching 24 MiB (priority 90) with 14 MiB left under memory.max",
        victim.pid(),
        bystander.pid(),
        alloc.pid()
    );
    victim.wait_killed(pdutil::OOM_TIMEOUT)?;
    let ready = alloc.wait_ready(pdutil::OOM_TIMEOUT);
    let result = ready.and_then(|()| {
        let others = &mut [&mut alloc, &mut bystander];
        one_kill(&mut pd, &mut kmsg, &ev, before, victim.pid(), others)
    });
    if let Err(e) = result {
        failures.push(format!("round 2 (a task runs into memory.max): {e:#}"));
    }
    drop(alloc);
    bystander_cg.kill_all()?;
    ev.set("memory.max", "max")?;
    pd.stop()?;

    // 3. `largest`, whose ranking changes while the victim frees its memory.
    let mut pd = Policyd::load(&["largest", "--config", &config, "--cgroup", "/ev"])?;
    let mut big = Hog::start(&victim_cg, &HogSpec::fixed(80), pdutil::READY_TIMEOUT)?;
    let mut second = Hog::start(&bystander_cg, &HogSpec::fixed(60), pdutil::READY_TIMEOUT)?;
    println!(
        "round 3 (largest): {} (80 MiB) in /ev/victim, {} (60 MiB) in /ev/bystander; \
         memory.max lowered 45 MiB below the usage",
        big.pid(),
        second.pid()
    );
    let before = pdutil::oom_kills(&ev)?;
    let mut kmsg = Kmsg::mark()?;
    pdutil::squeeze(&ev, 45)?;
    big.wait_killed(pdutil::OOM_TIMEOUT)?;
    if let Err(e) = one_kill(
        &mut pd,
        &mut kmsg,
        &ev,
        before,
        big.pid(),
        &mut [&mut second],
    ) {
        failures.push(format!(
            "round 3 (largest; the victim's cgroup shrinks below the next one's while it \
             exits): {e:#}"
        ));
    }
    if !failures.is_empty() {
        let rounds: Vec<&str> = failures
            .iter()
            .map(|f| f.split(':').next().unwrap_or(""))
            .collect();
        bail!(
            "more than one kill for one OOM while the victim was exiting, in {}\n{}",
            rounds.join(", "),
            failures.join("\n")
        );
    }
    pd.stop()?;
    println!("each OOM killed its one victim and awaited it after that");
    Ok(())
}

/// Exactly one kill since `before` (memory.events and the kernel log), of `victim`; every
/// other decision awaited it; the `others` still run.
fn one_kill(
    pd: &mut Policyd,
    kmsg: &mut Kmsg,
    ev: &Cgroup,
    before: u64,
    victim: i32,
    others: &mut [&mut Hog],
) -> Result<()> {
    // The OOM is over once the victim is gone and nothing else died for a moment.
    std::thread::sleep(Duration::from_millis(500));
    let first = pd.next_decision(Duration::from_secs(10))?;
    let pid = victim.to_string();
    first.expect(&[("pid", &pid), ("outcome", "killed"), ("killed", "1")])?;
    let rest = pd.take_decisions();
    let awaited = rest.iter().filter(|d| d.outcome() == "awaited").count();
    let other: Vec<&pdutil::Decision> = rest.iter().filter(|d| d.outcome() != "awaited").collect();
    let log = KillLog::read(kmsg)?;
    let kills = pdutil::oom_kills(ev)? - before;
    println!("{awaited} later decisions awaited the victim");
    ensure!(
        other.is_empty() && kills == 1 && log.killed_pids() == vec![victim],
        "{kills} OOM kills (kernel log: {:?}) where one was due; after killing {victim}, \
         {awaited} decisions awaited it, then:\n{}\nkernel log:\n{}",
        log.killed_pids(),
        other
            .iter()
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n"),
        log.text()
    );
    for hog in others {
        ensure!(hog.is_alive(), "task {} died", hog.pid());
    }
    Ok(())
}
