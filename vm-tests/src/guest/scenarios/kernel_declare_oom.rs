//! bpf_out_of_memory() from a SEC("syscall") program declares an OOM that the handlers and
//! the kernel resolve as a real one: on a memcg far from its limit (resolved by the
//! memcg's handler), with BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK, with bad flags (-EINVAL, nothing
//! runs), and system-wide (cgroup_id 0: only the root's handler runs, whether it was
//! attached to the root cgroup by fd or without a cgroup).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::libc;

use crate::guest::kutil::{
    self, expect_log, expect_oom_kills, show, Action, Handler, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK,
    HANDLER_KILL_LINE, HANDLER_REPORT_LINE,
};
use crate::guest::util::{Cgroup, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-declare-oom", run).timeout_s(90)
}

fn run() -> Result<()> {
    let m = Cgroup::create("kernel-declare-oom")?;
    m.set("memory.max", "256M")?;
    let x = Cgroup::create("kernel-declare-oom-global")?;
    let m_id = m.id()?;
    let mut bystander = kutil::fixed_hog(&m, 4)?;

    let mut hm = Handler::load(Action::KillTarget, 0, 1)?;
    let mut hroot = Handler::load(Action::Defer, 0, 0)?;
    let _lm = hm.attach(&m)?;
    let root_id = Cgroup::root().id()?;
    let mut lroot = hroot.attach(&Cgroup::root())?;

    // Plain, then waiting on oom_lock: each resolved by the memcg's handler.
    for (flags, what) in [
        (0, "no flags"),
        (
            BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK,
            "BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK",
        ),
    ] {
        let mut target = kutil::fixed_hog(&m, 8)?;
        hm.set(Action::KillTarget, target.pid(), 1);
        let (cm, croot) = (hm.stats(), hroot.stats());
        let before = m.events()?;
        let mut kmsg = Kmsg::mark()?;
        let d = hm.declare_oom(m_id, flags, 1)?;
        let s = hm.stats();
        println!("memcg OOM declared ({what}): {d}; handler: {}", show(&s));
        ensure!(
            d.prog_ret == 0,
            "{what}: declare_oom returned {}",
            d.prog_ret
        );
        ensure!(
            d.ret[0] == 1,
            "{what}: bpf_out_of_memory() returned {}, expected 1",
            d.ret[0]
        );
        target.wait_killed(Duration::from_secs(10))?;
        ensure!(
            s.calls == cm.calls + 1 && s.kills == cm.kills + 1 && s.last_victim == target.pid(),
            "{what}: the memcg handler did not kill {} exactly once",
            target.pid()
        );
        ensure!(
            s.last_oom_memcg == m_id,
            "{what}: last_oom_memcg {} != {m_id}",
            s.last_oom_memcg
        );
        ensure!(
            hroot.stats().calls == croot.calls,
            "{what}: the root handler ran although the memcg's handler freed memory"
        );
        expect_oom_kills(&m, &before, 1)?;
        expect_log(&kmsg.since()?, HANDLER_REPORT_LINE)?;
        ensure!(bystander.is_alive(), "{what}: the bystander died");
    }

    // Bad flags: refused before anything runs.
    {
        let target = kutil::fixed_hog(&m, 8)?;
        hm.set(Action::KillTarget, target.pid(), 1);
        let calls = hm.stats().calls;
        let before = m.events()?;
        for flags in [1 << 1, 1 << 63] {
            let d = hm.declare_oom(m_id, flags, 1)?;
            println!("flags {flags:#x}: {d}");
            ensure!(
                d.ret[0] == -libc::EINVAL,
                "flags {flags:#x}: bpf_out_of_memory() returned {}, expected -EINVAL",
                d.ret[0]
            );
        }
        ensure!(hm.stats().calls == calls, "bad flags: the handler ran");
        expect_oom_kills(&m, &before, 0)?;
        drop(target);
    }

    // System-wide: only the root's handler, attached either way to the root cgroup.
    for (form, link_cgroup) in [
        ("a BPF_F_CGROUP_FD link to the root cgroup", root_id),
        ("a link without a cgroup", 0),
    ] {
        if link_cgroup == 0 {
            drop(lroot);
            lroot = kutil::try_attach_system_wide(hroot.skel())
                .context("attaching the root handler without a cgroup")?;
        }
        let mut target = kutil::fixed_hog(&x, 8)?;
        hroot.set(Action::KillTarget, target.pid(), 1);
        hm.set(Action::KillTarget, bystander.pid(), 1);
        let (cm, croot) = (hm.stats(), hroot.stats());
        let before = x.events()?;
        let mut kmsg = Kmsg::mark()?;
        let d = hroot.declare_oom(0, 0, 1)?;
        let s = hroot.stats();
        println!(
            "global OOM declared, root handler on {form}: {d}; {}",
            show(&s)
        );
        ensure!(
            d.ret[0] == 1,
            "global ({form}): bpf_out_of_memory() returned {}, expected 1",
            d.ret[0]
        );
        target.wait_killed(Duration::from_secs(10))?;
        ensure!(
            s.calls == croot.calls + 1 && s.kills == croot.kills + 1,
            "global ({form}): the root handler did not kill exactly once"
        );
        ensure!(
            s.last_oom_memcg == 0,
            "global ({form}): last_oom_memcg {} != 0",
            s.last_oom_memcg
        );
        ensure!(
            s.last_link_cgroup == link_cgroup,
            "global ({form}): st_link->cgroup id {}, expected {link_cgroup}",
            s.last_link_cgroup
        );
        ensure!(
            hm.stats().calls == cm.calls,
            "global ({form}): the handler of {} ran on a system-wide OOM",
            m.path()
        );
        expect_oom_kills(&x, &before, 1)?;
        let log = kmsg.since()?;
        expect_log(&log, HANDLER_REPORT_LINE)?;
        expect_log(&log, &format!("{HANDLER_KILL_LINE} {} ", target.pid()))?;
        expect_log(&log, ",global_oom")?;
        ensure!(bystander.is_alive(), "global ({form}): the bystander died");
    }
    drop(lroot);
    Ok(())
}
