//! `protect = true`: the policy never chooses a protected cgroup, however much memory it
//! holds, and with nothing but protected cgroups in scope it stands aside and the kernel's
//! own killer decides (the documented escape hatch: protection is a policy promise, not a
//! guarantee against the kernel).
//!
//! /guard (memory.max 96M) holds /guard/db (protected, 56 MiB, the biggest). First a small
//! cgroup with a HIGH priority (900) grows into the limit: it is the only candidate and
//! dies. Then a second protected cgroup grows instead: the policy defers (no candidate)
//! and the kernel kills its own choice, the biggest task: the database.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-protect", run)
        .needs_policyd()
        .timeout_s(120)
}

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/guard/db"
protect = true

[[rule]]
cgroup = "/guard/db2"
protect = true

[[rule]]
cgroup = "/guard/small"
priority = 900
"#;

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let guard = Cgroup::create("guard")?;
    guard.set("memory.max", "96M")?;
    let db_cg = guard.child("db")?;
    let db2_cg = guard.child("db2")?;
    let small_cg = guard.child("small")?;
    let config = pdutil::write_config("protect", CONFIG)?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--cgroup", "/guard"])?;

    let mut db = Hog::start(&db_cg, &HogSpec::fixed(56), pdutil::READY_TIMEOUT)?;

    // 1. Protected and biggest vs unprotected, small and valuable: the small one dies.
    let mut kmsg = Kmsg::mark()?;
    let mut small = Hog::start(&small_cg, &HogSpec::growing(8), pdutil::READY_TIMEOUT)?;
    println!(
        "db {} (56 MiB, protected), small {} (growing, priority 900) in /guard (max 96M)",
        db.pid(),
        small.pid()
    );
    small.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = small.pid().to_string();
    d.expect(&[
        ("scope", "/guard"),
        ("victim_cgroup", "/guard/small"),
        ("pid", &pid),
        ("priority", "900"),
        ("outcome", "killed"),
        ("killed", "1"),
        // The protected db is not even a candidate.
        ("candidates", "1"),
        ("runner_up", "-"),
    ])?;
    expect_alive(&mut db, "protected db")?;
    expect_oom_kills(&small_cg, 1)?;
    expect_oom_kills(&db_cg, 0)?;
    let log = KillLog::read(&mut kmsg, &[small.pid()])?;
    log.expect_only_killed(small.pid(), "small hog")?;
    println!("protected db spared, small cgroup killed: {d}");

    // 2. Only protected cgroups left in scope: the policy defers, the kernel kills.
    let mut kmsg = Kmsg::mark()?;
    // Capped above the room db leaves, below the limit: it does not refill what db frees.
    let db2_spec = HogSpec::growing(8).up_to(64);
    let mut db2 = Hog::start(&db2_cg, &db2_spec, pdutil::READY_TIMEOUT)?;
    println!(
        "db {} (56 MiB, protected), db2 {} (growing to 64 MiB, protected)",
        db.pid(),
        db2.pid()
    );
    db.wait_killed(pdutil::OOM_TIMEOUT)?;
    expect_alive(&mut db2, "db2 (the kernel's one victim is db)")?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    d.expect(&[
        ("scope", "/guard"),
        ("victim_cgroup", "-"),
        ("pid", "0"),
        ("reason", "no-candidate"),
        ("outcome", "deferred"),
        ("killed", "0"),
        ("candidates", "0"),
    ])?;
    expect_oom_kills(&db_cg, 1)?;
    let log = KillLog::read(&mut kmsg, &[db.pid()])?;
    ensure!(
        log.kill_line(db.pid())
            .is_some_and(|l| l.contains("Memory cgroup out of memory: Killed process")),
        "no \"Memory cgroup out of memory: Killed process {}\" (the kernel's own kill of db) \
         in the kernel log:\n{}",
        db.pid(),
        log.text()
    );
    ensure!(
        !log.bpf_chose_any(),
        "the OOM report says a BPF handler chose the victim, but the policy deferred:\n{}",
        log.text()
    );
    ensure!(pd.is_running(), "policyd exited after deferring an OOM");
    pd.stop()?;
    println!("only protected cgroups left: policy deferred, the kernel killed db: {d}");
    Ok(())
}
