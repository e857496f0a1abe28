//! The order of handlers: H1 on the subtree cgroup /A, H2 on the root (system-wide), two
//! independent loads of the test handler. A memcg OOM in /A/B runs H1 first, then, only if
//! H1 freed nothing, H2. A global OOM runs only H2.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::kutil::{self, expect_oom_kills, show, Action, Handler};
use crate::guest::util::{Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    // Small RAM: the global OOM comes quickly.
    Scenario::new("kernel-handler-hierarchy", run)
        .mem_mb(256)
        .timeout_s(120)
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let a = Cgroup::create("kernel-hierarchy-A")?;
    let b = a.child("B")?;
    b.set("memory.max", "64M")?;
    let (a_id, b_id, root_id) = (a.id()?, b.id()?, Cgroup::root().id()?);

    let mut h1 = Handler::load(Action::Defer, 0, 0)?;
    let mut h2 = Handler::load(Action::Defer, 0, 0)?;
    let _l1 = h1.attach(&a)?;
    let _l2 = h2.attach(&Cgroup::root())?;
    println!(
        "H1 on {} (id {a_id}), H2 on / ; OOMs in {} (id {b_id})",
        a.path(),
        b.path()
    );

    // Each round: a big idle hog (the kernel's pick) and a small one that grows into
    // memory.max, the handlers' pick (the victim is the allocating task: see
    // kernel-default-exiting-victim for why).
    // 1. H1 defers, H2 kills the small hog.
    {
        let mut big = kutil::fixed_hog(&b, 48)?;
        let (c1, c2) = (h1.stats(), h2.stats());
        let before = b.events()?;
        let mut small = Hog::start(&b, &HogSpec::growing(4).gated(), Duration::from_secs(30))?;
        h1.set(Action::Defer, small.pid(), 0);
        h2.set(Action::KillTarget, small.pid(), 1);
        small.release()?;
        small.wait_killed(Duration::from_secs(40))?;
        ensure!(
            big.is_alive(),
            "round 1: the big hog {} died too",
            big.pid()
        );
        let (s1, s2) = (h1.stats(), h2.stats());
        println!("round 1 (H1 defers): H1 {}", show(&s1));
        println!("round 1 (H1 defers): H2 {}", show(&s2));
        expect_oom_kills(&b, &before, 1)?;
        ensure!(s1.calls > c1.calls, "round 1: H1 was not called");
        ensure!(
            s1.last_link_cgroup == a_id,
            "round 1: H1 last_link_cgroup = {}, expected {a_id} (/A)",
            s1.last_link_cgroup
        );
        ensure!(
            s1.last_oom_memcg == b_id,
            "round 1: H1 last_oom_memcg = {}, expected {b_id} (/A/B)",
            s1.last_oom_memcg
        );
        ensure!(s1.kills == 0, "round 1: H1 killed");
        ensure!(
            s2.calls > c2.calls,
            "round 1: H2 was not called after H1 deferred"
        );
        // A link to the root cgroup: st_link->cgroup is the root (NULL only for a link
        // created without BPF_F_CGROUP_FD; bpf_oom.h), system-wide either way.
        ensure!(
            s2.last_link_cgroup == root_id,
            "round 1: H2 last_link_cgroup = {}, expected {root_id} (the root cgroup)",
            s2.last_link_cgroup
        );
        ensure!(
            s2.last_oom_memcg == b_id,
            "round 1: H2 last_oom_memcg = {}, expected {b_id}",
            s2.last_oom_memcg
        );
        ensure!(
            s2.kills == 1 && s2.last_victim == small.pid(),
            "round 1: H2 kills {} last_victim {}, expected 1 and {}",
            s2.kills,
            s2.last_victim,
            small.pid()
        );
    }

    // 2. H1 kills the small hog: H2 is not asked.
    {
        let mut big = kutil::fixed_hog(&b, 48)?;
        let (c1, c2) = (h1.stats(), h2.stats());
        let before = b.events()?;
        let mut small = Hog::start(&b, &HogSpec::growing(4).gated(), Duration::from_secs(30))?;
        h1.set(Action::KillTarget, small.pid(), 1);
        h2.set(Action::KillTarget, small.pid(), 1);
        small.release()?;
        small.wait_killed(Duration::from_secs(40))?;
        ensure!(
            big.is_alive(),
            "round 2: the big hog {} died too",
            big.pid()
        );
        let (s1, s2) = (h1.stats(), h2.stats());
        println!("round 2 (H1 kills): H1 {}", show(&s1));
        println!("round 2 (H1 kills): H2 {}", show(&s2));
        expect_oom_kills(&b, &before, 1)?;
        ensure!(
            s1.kills == c1.kills + 1 && s1.last_victim == small.pid(),
            "round 2: H1 did not kill the small hog {}",
            small.pid()
        );
        ensure!(
            s2.calls == c2.calls,
            "round 2: H2 was called {} time(s) although H1 handled the OOM",
            s2.calls - c2.calls
        );
    }

    // 3. A global OOM from a cgroup outside /A: only H2 runs.
    {
        let g = Cgroup::create("kernel-hierarchy-G")?;
        h1.set(Action::KillTarget, 1, 1);
        h2.set(Action::Defer, 0, 0);
        let (c1, c2) = (h1.stats(), h2.stats());
        let before = g.events()?;
        let mut grower = kutil::growing_hog(&g, 16)?;
        grower.wait_killed(Duration::from_secs(45))?;
        let (s1, s2) = (h1.stats(), h2.stats());
        println!("round 3 (global): H1 {}", show(&s1));
        println!("round 3 (global): H2 {}", show(&s2));
        expect_oom_kills(&g, &before, 1)?;
        ensure!(
            s1.calls == c1.calls,
            "round 3: H1 (on /A) was called on a global OOM"
        );
        ensure!(
            s2.calls > c2.calls,
            "round 3: H2 was not called on a global OOM"
        );
        ensure!(
            s2.last_oom_memcg == 0,
            "round 3: H2 last_oom_memcg = {}, expected 0 (global)",
            s2.last_oom_memcg
        );
    }
    Ok(())
}
