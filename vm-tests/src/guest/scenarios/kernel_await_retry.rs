//! The real-life form of "an OOM while the previous victim is still exiting": the handler
//! kills an idle task, and the task that ran into memory.max goes on retrying its charge
//! while that victim exits, so the OOM path runs again during the exit. A handler that
//! awaits its exiting victim (bpf_oom_await_victim(), found by a css_task walk that
//! includes exiting tasks) resolves those OOMs, and nothing else dies: exactly one kill
//! per round, the allocating (and biggest) task lives.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::kutil::{
    self, expect_log, expect_no_log, expect_oom_kills, show, Action, Handler,
};
use crate::guest::util::{Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-handler-awaits-retry", run).timeout_s(90)
}

const ROUNDS: usize = 5;

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let cg = Cgroup::create("kernel-handler-awaits-retry")?;
    cg.set("memory.max", "64M")?;
    let mut h = Handler::load(Action::Defer, 0, 0)?;
    let _link = h.attach(&cg)?;
    let mut awaited = 0;
    for round in 1..=ROUNDS {
        let mut small = kutil::fixed_hog(&cg, 24)?;
        h.set(Action::AwaitOrKill, small.pid(), 1);
        let before_stats = h.stats();
        let before = cg.events()?;
        let mut kmsg = Kmsg::mark()?;
        // 24 + 48 MiB do not fit in 64: the big hog runs into memory.max while touching
        // its memory, when it is the bigger one (the kernel's pick); alone it fits.
        let mut big = Hog::spawn(&cg, &HogSpec::fixed(48))?;
        let ctx = || format!("round {round}");
        let ready = big.wait_ready(Duration::from_secs(40));
        if ready.is_err() {
            println!("round {round}: handler {}", show(&h.stats()));
        }
        ready.with_context(ctx)?;
        small
            .wait_killed(Duration::from_secs(10))
            .with_context(ctx)?;
        ensure!(
            big.is_alive(),
            "round {round}: the big hog {} died too",
            big.pid()
        );

        let s = h.stats();
        let awaits = s.awaits - before_stats.awaits;
        println!(
            "round {round}: handler killed the small hog {}, then awaited it {awaits} time(s): {}",
            small.pid(),
            show(&s)
        );
        awaited += awaits;
        expect_oom_kills(&cg, &before, 1).with_context(ctx)?;
        ensure!(
            s.kills == before_stats.kills + 1 && s.last_victim == small.pid(),
            "round {round}: the handler did not kill the small hog {} exactly once",
            small.pid()
        );
        let log = kmsg.since()?;
        expect_log(
            &log,
            &format!("{} {} ", kutil::HANDLER_KILL_LINE, small.pid()),
        )?;
        expect_no_log(&log, "Memory cgroup out of memory: Killed process")?;
    }
    println!(
        "{awaited} OOM(s) during a victim's exit were resolved by awaiting it ({ROUNDS} rounds)"
    );
    Ok(())
}
