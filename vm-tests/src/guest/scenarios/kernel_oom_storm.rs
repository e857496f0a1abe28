//! 50 memcg OOMs in a row, the handler attached and detached in turn: attached, it kills a
//! fresh small hog each round (not the kernel's pick); detached, the kernel kills the big
//! one. Every round's
//! victim and the cumulative oom_kill count are checked; the host checks that the kernel
//! log stays clean (no WARNING, lockdep report, ...) through attach/detach churn.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::guest::kutil::{self, show, Action, Handler};
use crate::guest::util::{Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-oom-storm", run).timeout_s(180)
}

const ROUNDS: u64 = 50;
/// Idle hogs: a big one leaves a growing hog about 5 MiB (the handler's small victim), a
/// small one leaves it about 11 MiB (the kernel's big victim).
const LIMIT: &str = "16M";
const SMALL_MIB: u64 = 4;
const BIG_MIB: u64 = 10;

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let _quiet = kutil::QuietConsole::new()?;
    let cg = Cgroup::create("kernel-oom-storm")?;
    cg.set("memory.max", LIMIT)?;
    let mut h = Handler::load(Action::KillTarget, 0, 1)?;
    let start = cg.events()?;
    let started = Instant::now();

    for round in 1..=ROUNDS {
        let round_started = Instant::now();
        let attached = round % 2 == 1;
        let ctx = || {
            format!(
                "round {round} (handler {})",
                if attached { "attached" } else { "detached" }
            )
        };
        // The victim is always the hog that runs into memory.max (see
        // kernel-default-exiting-victim for why): attached, a small one growing next to a
        // big idle one (the kernel's pick); detached, a big one growing next to a small
        // idle one.
        let mut idle = kutil::fixed_hog(&cg, if attached { BIG_MIB } else { SMALL_MIB })?;
        let link = if attached { Some(h.attach(&cg)?) } else { None };
        let before = h.stats();
        let mut grower = Hog::spawn(&cg, &HogSpec::growing(1))?;
        h.set(Action::KillTarget, grower.pid(), 1);
        grower
            .wait_killed(Duration::from_secs(30))
            .with_context(ctx)?;
        ensure!(
            idle.is_alive(),
            "{}: the idle hog {} died too",
            ctx(),
            idle.pid()
        );
        let s = h.stats();
        if attached {
            ensure!(
                s.kills == before.kills + 1 && s.last_victim == grower.pid(),
                "{}: the handler did not kill the growing hog {}: {}",
                ctx(),
                grower.pid(),
                show(&s)
            );
        } else {
            ensure!(
                s.calls == before.calls,
                "{}: the detached handler was called: {}",
                ctx(),
                show(&s)
            );
        }
        let total = kutil::events_since(&cg, &start)?.oom_kill;
        ensure!(
            total == round,
            "{}: cumulative oom_kill {total}, expected {round}",
            ctx()
        );
        drop(link);
        println!(
            "round {round}: {} killed the growing hog {} ({:.0} ms)",
            if attached {
                "the handler"
            } else {
                "the kernel"
            },
            grower.pid(),
            round_started.elapsed().as_secs_f64() * 1000.0
        );
    }
    let s = h.stats();
    println!(
        "{ROUNDS} OOMs in {:.1} s; handler: {}",
        started.elapsed().as_secs_f64(),
        show(&s)
    );
    ensure!(
        s.kills == ROUNDS / 2,
        "handler kills {} != {}",
        s.kills,
        ROUNDS / 2
    );
    Ok(())
}
