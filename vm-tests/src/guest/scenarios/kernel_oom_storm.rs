//! 50 memcg OOMs in a row, the handler attached and detached in turn: attached, it kills a
//! fresh small hog each round (not the kernel's pick); detached, the kernel kills the
//! biggest. Every round's victim and the cumulative oom_kill count are checked; the host
//! checks that the kernel log stays clean (no WARNING, lockdep report, ...) through the
//! attach/detach churn.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::guest::kutil::{self, show, Action, Handler};
use crate::guest::util::{Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-oom-storm", run).timeout_s(180)
}

const ROUNDS: u64 = 50;
/// An idle hog lives through the whole storm. Each round a fresh hog grows into
/// memory.max and is the victim (the allocating task: a victim that is not leaves the
/// allocator retrying during its exit, which kernel-handler-awaits-retry covers).
const IDLE_MIB: u64 = 6;
/// Handler attached: the growing hog stays smaller than the idle one (about 3 MiB), so
/// the handler's victim is not the kernel's pick.
const ATTACHED_MAX: &str = "10M";
/// Handler detached: the growing hog gets bigger than the idle one (about 9 MiB), so it
/// is the kernel's pick.
const DETACHED_MAX: &str = "16M";

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let _quiet = kutil::QuietConsole::new()?;
    let cg = Cgroup::create("kernel-oom-storm")?;
    cg.set("memory.max", DETACHED_MAX)?;
    let mut idle = kutil::fixed_hog(&cg, IDLE_MIB)?;
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
        cg.set(
            "memory.max",
            if attached { ATTACHED_MAX } else { DETACHED_MAX },
        )?;
        let link = if attached { Some(h.attach(&cg)?) } else { None };
        let before = h.stats();
        let mut grower = Hog::start(&cg, &HogSpec::growing(1).gated(), Duration::from_secs(30))?;
        h.set(Action::KillTarget, grower.pid(), 1);
        grower.release()?;
        grower
            .wait_killed(Duration::from_secs(30))
            .with_context(ctx)?;
        ensure!(
            idle.is_alive(),
            "{}: the idle hog {} died",
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
