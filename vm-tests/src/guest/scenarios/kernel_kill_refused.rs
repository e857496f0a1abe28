//! bpf_oom_kill_process() refuses what the kernel would never kill, each with its own
//! error, and the OOM then falls through to the kernel's killer, which kills the biggest
//! task of the memcg: init (-EPERM), a kernel thread (-EINVAL), a task with oom_score_adj
//! -1000 (-EACCES) and a task outside the OOMing memcg (-EXDEV).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::libc::{EACCES, EINVAL, EPERM, EXDEV};

use crate::guest::kutil::{self, expect_log, expect_oom_kills, show, Action, Handler};
use crate::guest::util::{self, Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-kill-refused", run).timeout_s(120)
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let cg = Cgroup::create("kernel-kill-refused")?;
    cg.set("memory.max", "64M")?;
    let outside = Cgroup::create("kernel-kill-refused-outside")?;

    let mut small = kutil::fixed_hog(&cg, 8)?;
    let mut unkillable = Hog::start(
        &cg,
        &HogSpec::fixed(4).oom_score_adj(-1000),
        Duration::from_secs(30),
    )?;
    let mut outsider = kutil::fixed_hog(&outside, 4)?;
    let kthreadd = util::read_file("/proc/2/comm").context("pid 2")?;
    ensure!(
        kthreadd.trim() == "kthreadd",
        "pid 2 is {:?}, not kthreadd",
        kthreadd.trim()
    );

    let mut h = Handler::load(Action::KillTarget, 1, 1)?;
    let _link = h.attach(&cg)?;
    let cases = [
        (1, -EPERM, "init (pid 1)"),
        (2, -EINVAL, "the kernel thread kthreadd (pid 2)"),
        (unkillable.pid(), -EACCES, "a hog with oom_score_adj -1000"),
        (outsider.pid(), -EXDEV, "a hog outside the OOMing memcg"),
    ];
    for (target, want, what) in cases {
        h.set(Action::KillTarget, target, 1);
        let calls = h.stats().calls;
        let before = cg.events()?;
        let mut kmsg = Kmsg::mark()?;
        let mut big = kutil::growing_hog(&cg, 16)?;
        big.wait_killed(Duration::from_secs(40))
            .with_context(|| format!("after the handler targeted {what}"))?;

        let s = h.stats();
        println!("target {target} ({what}): {}", show(&s));
        ensure!(s.calls > calls, "{what}: the handler was not called");
        ensure!(
            s.last_kill_err == want,
            "{what}: bpf_oom_kill_process() returned {}, expected {want}",
            s.last_kill_err
        );
        ensure!(s.kills == 0, "{what}: handler kills = {}", s.kills);
        ensure!(s.freed_after == 0, "{what}: oc->bpf_memory_freed set");
        expect_oom_kills(&cg, &before, 1).with_context(|| what.to_string())?;
        expect_log(
            &kmsg.since()?,
            &format!("Memory cgroup out of memory: Killed process {} ", big.pid()),
        )?;
        for (hog, name) in [
            (&mut small, "small hog"),
            (&mut unkillable, "oom_score_adj -1000 hog"),
            (&mut outsider, "hog outside the memcg"),
        ] {
            ensure!(hog.is_alive(), "{what}: the {name} {} died", hog.pid());
        }
    }
    println!("every refusal fell through to the kernel, which killed the growing hog");
    Ok(())
}
