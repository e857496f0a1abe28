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

use crate::guest::layout::{Layout, LayoutSpec, Oom};
use crate::guest::pdutil::{self, expect_alive, expect_oom_kills};
use crate::guest::util::{HogSpec, KillLog, Kmsg};
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
    let mut l = Layout::load(&LayoutSpec {
        name: "protect",
        parent: "guard",
        memory_max: "96M",
        cgroups: &["db", "db2", "small"],
        config: CONFIG,
        policyd_options: &[],
    })?;
    l.start("db", "db", &HogSpec::fixed(56))?;

    // 1. Protected and biggest vs unprotected, small and valuable: the small one dies.
    let (d, _) = l.oom(&Oom {
        start: &[("small", "small", HogSpec::growing(8))],
        victims: &["small"],
        decision: &[
            ("priority", "900"),
            // The protected db is not even a candidate.
            ("candidates", "1"),
            ("runner_up", "-"),
        ],
        oom_kills: &[("small", 1), ("db", 0)],
    })?;
    println!("protected db spared, small cgroup killed: {d}");

    // 2. Only protected cgroups left in scope: the policy defers, the kernel kills.
    let mut kmsg = Kmsg::mark()?;
    // Capped above the room db leaves, below the limit: it does not refill what db frees.
    l.start("db2", "db2", &HogSpec::growing(8).up_to(64))?;
    let db = l.task("db")?;
    db.wait_killed(pdutil::OOM_TIMEOUT)?;
    let db_pid = db.pid();
    expect_alive(l.task("db2")?, "db2 (the kernel's one victim is db)")?;
    let d = l.pd.next_decision(Duration::from_secs(10))?;
    d.expect(&[
        ("scope", "/guard"),
        ("victim_cgroup", "-"),
        ("pid", "0"),
        ("reason", "no-candidate"),
        ("outcome", "deferred"),
        ("killed", "0"),
        ("candidates", "0"),
    ])?;
    expect_oom_kills(l.cgroup("db")?, 1)?;
    let log = KillLog::read(&mut kmsg, &[db_pid])?;
    log.expect_kernel_killed(db_pid, "db")?;
    ensure!(l.pd.is_running(), "policyd exited after deferring an OOM");
    l.stop()?;
    println!("only protected cgroups left: policy deferred, the kernel killed db: {d}");
    Ok(())
}
