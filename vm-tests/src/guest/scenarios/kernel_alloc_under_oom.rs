//! A handler that allocates during the OOM of the very memcg its allocation is charged to
//! completes: it creates task storage on its victim (a map created from inside the OOMing
//! cgroup, so charged to it, at its limit) and kills. Handlers run with reclaim disabled,
//! so the charge neither reclaims nor re-enters the OOM killer under oom_lock (a memcg OOM
//! there would wait for the oom_lock its own task holds); it is forced over the limit.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::kutil::{self, expect_oom_kills, show, Action, Handler};
use crate::guest::util::{write_file, Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-alloc-under-oom", run).timeout_s(150)
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let c = Cgroup::create("kernel-alloc-under-oom")?;
    c.set("memory.max", "64M")?;
    let c_id = c.id()?;

    // A BPF map is charged to the memcg of the task that creates it: load the handler from
    // inside the cgroup (the runner is oom_score_adj -1000, never a victim), then leave.
    let pid = std::process::id().to_string();
    c.set("cgroup.procs", &pid)
        .context("moving the runner into the cgroup to create the maps there")?;
    let loaded = Handler::load(Action::StoreThenKill, 0, 1);
    write_file("/sys/fs/cgroup/cgroup.procs", &pid)
        .context("moving the runner back to the root cgroup")?;
    let mut h = loaded?;
    let _link = h.attach(&c)?;

    for round in 1..=2 {
        // The big hog sits idle; the small one grows into memory.max and is the target,
        // so the OOM ends with its death and no second one follows.
        let mut big = kutil::fixed_hog(&c, 40)?;
        let mut small = Hog::start(&c, &HogSpec::growing(4).gated(), Duration::from_secs(30))?;
        h.set(Action::StoreThenKill, small.pid(), 1);
        let c0 = h.stats();
        let before = c.events()?;
        let mut kmsg = Kmsg::mark()?;
        small.release()?;
        small
            .wait_killed(Duration::from_secs(60))
            .with_context(|| format!("round {round}: the handler's OOM did not complete"))?;
        let s = h.stats();
        println!(
            "round {round}: {}; stored {} store_failed {}",
            show(&s),
            s.stored,
            s.store_failed
        );
        ensure!(
            s.stored == c0.stored + 1 && s.store_failed == c0.store_failed,
            "round {round}: creating task storage during the OOM failed (stored {} -> {}, \
             failed {} -> {})",
            c0.stored,
            s.stored,
            c0.store_failed,
            s.store_failed
        );
        ensure!(
            s.kills == c0.kills + 1 && s.last_victim == small.pid() && s.last_oom_memcg == c_id,
            "round {round}: the handler did not kill the small hog {} in the OOM of {}",
            small.pid(),
            c.path()
        );
        KillLog::read(&mut kmsg, &[small.pid()])?.expect_only_killed(small.pid(), "small hog")?;
        expect_oom_kills(&c, &before, 1)?;
        ensure!(big.is_alive(), "round {round}: the idle big hog died too");
        c.kill_all()?;
    }
    Ok(())
}
