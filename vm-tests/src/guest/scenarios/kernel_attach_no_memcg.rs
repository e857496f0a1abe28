//! A handler on a cgroup without the memory controller would never run (OOMs happen to
//! memcgs, and every cgroup on the way up from one has the controller), so attaching it
//! fails with ENOENT, the errno css_tryget_online_from_dir() gives for a cgroup without
//! the controller's css. /A has memory, /A/N does not (memory is not in /A's
//! cgroup.subtree_control): attaching to /A/N fails, and once /A enables memory for its
//! children the same attach succeeds and the handler runs on /A/N's OOM.

use std::fs;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::libc;

use crate::guest::kutil::{self, expect_oom_kills, link_info, show, try_attach, Action, Handler};
use crate::guest::util::{Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-attach-no-memcg", run).timeout_s(90)
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    // Cgroup::create enables memory on the way down to /A, not below it.
    let a = Cgroup::create("kernel-attach-no-memcg")?;
    let n_dir = a.dir().join("N");
    fs::create_dir(&n_dir).with_context(|| format!("creating {}", n_dir.display()))?;
    let n = Cgroup::open("kernel-attach-no-memcg/N")?;
    let controllers = n.read("cgroup.controllers")?;
    ensure!(
        !controllers.split_whitespace().any(|c| c == "memory"),
        "{} has the memory controller ({controllers:?}): the test needs one without",
        n.path()
    );

    let mut h = Handler::load(Action::KillTarget, 0, 1)?;
    match try_attach(h.skel(), &n) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            println!(
                "attaching to {} without memory: ENOENT, as expected",
                n.path()
            )
        }
        Err(e) => bail!(
            "attaching to {} without memory: {e}, expected ENOENT",
            n.path()
        ),
        Ok(fd) => bail!(
            "attaching to {} without memory succeeded ({:?}), expected ENOENT",
            n.path(),
            link_info(&fd)
        ),
    }

    // The same cgroup with memory: attaches, and its OOM runs the handler.
    a.set("cgroup.subtree_control", "+memory")?;
    n.set("memory.max", "32M")?;
    let link = h
        .attach(&n)
        .context("attaching once the memory controller is enabled")?;
    ensure!(
        link_info(&link)?.cgroup_id == n.id()?,
        "the link does not name {}",
        n.path()
    );
    let before = n.events()?;
    let mut hog = Hog::start(&n, &HogSpec::growing(4).gated(), Duration::from_secs(30))?;
    h.set(Action::KillTarget, hog.pid(), 1);
    hog.release()?;
    hog.wait_killed(Duration::from_secs(40))?;
    let s = h.stats();
    println!("{} with memory: handler {}", n.path(), show(&s));
    ensure!(
        s.kills == 1 && s.last_victim == hog.pid(),
        "the handler on {} did not kill its hog {}: {}",
        n.path(),
        hog.pid(),
        show(&s)
    );
    expect_oom_kills(&n, &before, 1)?;
    Ok(())
}
