//! One kill per OOM: once a handler has killed (or awaited) during an OOM, no handler
//! further up runs for it, even if that one returned 0. H1 on /A/B kills the small hog and
//! returns 0; H2 on /A would kill the big hog. The OOM of /A/B ends with exactly one
//! victim: H2 is never called, and the kernel's own selection, which gets the unclaimed
//! OOM, finds H1's victim exiting and waits for it instead of killing the big hog.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::kutil::{self, expect_oom_kills, show, Action, Handler};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-one-kill", run).timeout_s(120)
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let a = Cgroup::create("kernel-one-kill-A")?;
    let b = a.child("B")?;
    b.set("memory.max", "64M")?;
    let b_id = b.id()?;

    let mut h1 = Handler::load(Action::Defer, 0, 0)?;
    let mut h2 = Handler::load(Action::Defer, 0, 0)?;
    let _l1 = h1.attach(&b)?;
    let _l2 = h2.attach(&a)?;

    // Each round: a big idle hog (H2's pick, and the kernel's) and a small one growing
    // into memory.max (H1's pick). `claim` is what H1 returns after its kill.
    for claim in [0, 1] {
        let mut big = kutil::fixed_hog(&b, 48)?;
        let mut small = Hog::start(&b, &HogSpec::growing(4).gated(), Duration::from_secs(30))?;
        h1.set(Action::KillTarget, small.pid(), claim);
        h2.set(Action::KillTarget, big.pid(), 1);
        let (c1, c2) = (h1.stats(), h2.stats());
        let before = b.events()?;
        let mut kmsg = Kmsg::mark()?;
        small.release()?;
        small.wait_killed(Duration::from_secs(40))?;
        // A second kill, by H2 or the kernel, would follow within the same OOM.
        std::thread::sleep(Duration::from_secs(2));
        let (s1, s2) = (h1.stats(), h2.stats());
        println!("H1 returns {claim}: H1 {}", show(&s1));
        println!("H1 returns {claim}: H2 {}", show(&s2));
        let kills = KillLog::read(&mut kmsg, &[small.pid()])?;
        ensure!(
            big.is_alive(),
            "H1 returns {claim}: the big hog {} died too; kernel log:\n{}",
            big.pid(),
            kills.text()
        );
        kills.expect_only_killed(small.pid(), "the small hog")?;
        expect_oom_kills(&b, &before, 1)?;
        ensure!(
            s1.kills == c1.kills + 1 && s1.last_victim == small.pid(),
            "H1 returns {claim}: H1 did not kill the small hog {}",
            small.pid()
        );
        ensure!(
            s1.last_oom_memcg == b_id,
            "H1 returns {claim}: the OOM was not /A/B's (last_oom_memcg {})",
            s1.last_oom_memcg
        );
        ensure!(
            s2.calls == c2.calls,
            "H1 returns {claim}: H2 was called {} time(s) after H1 killed",
            s2.calls - c2.calls
        );
        println!(
            "H1 returns {claim}: one victim ({}), H2 not called",
            small.pid()
        );
    }
    Ok(())
}
