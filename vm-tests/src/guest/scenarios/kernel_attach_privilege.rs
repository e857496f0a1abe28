//! Attaching an OOM handler and declaring an OOM need CAP_SYS_ADMIN (in the initial user
//! namespace, which is the only one here). A thread left with only CAP_BPF + CAP_PERFMON,
//! enough to load the handler and run SEC("syscall") programs, gets EPERM from attaching
//! to a cgroup, attaching system-wide and replacing the handler of a link root made, and
//! bpf_out_of_memory() returns -EPERM without any OOM. A thread with CAP_BPF +
//! CAP_PERFMON + CAP_SYS_ADMIN and nothing else does all of it. Capabilities are per
//! thread: each case drops the rest in its own thread, the main thread keeps them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use libbpf_rs::MapCore;
use nix::libc;

use crate::guest::kutil::{
    self, expect_oom_kills, keep_only_caps, link_info, link_update, show, try_attach,
    try_attach_system_wide, Action, Handler, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN,
};
use crate::guest::util::Cgroup;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-attach-privilege", run).timeout_s(90)
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let c = Cgroup::create("kernel-attach-privilege")?;
    c.set("memory.max", "256M")?;
    let c_id = c.id()?;

    // Without CAP_SYS_ADMIN, next to a link root made.
    let owner = Handler::load(Action::Defer, 0, 0)?;
    let root_link = owner.attach(&c)?;
    let before = c.events()?;
    in_thread("CAP_BPF + CAP_PERFMON", || {
        keep_only_caps(&[CAP_BPF, CAP_PERFMON])?;
        let h = Handler::load(Action::KillTarget, 0, 1)
            .context("loading the handler with only CAP_BPF + CAP_PERFMON")?;
        expect_eperm(try_attach(h.skel(), &c), "attaching to the cgroup")?;
        expect_eperm(try_attach_system_wide(h.skel()), "attaching system-wide")?;
        let new_map = h.skel().maps.oom_test_ops.as_fd().as_raw_fd();
        match link_update(&root_link, new_map) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                println!("replacing the handler of root's link: EPERM, as expected")
            }
            Err(e) => bail!("replacing the handler of root's link: {e}, expected EPERM"),
            Ok(()) => bail!("replacing the handler of root's link succeeded, expected EPERM"),
        }
        let d = h.declare_oom(c_id, 0, 1)?;
        ensure!(
            d.prog_ret == 0 && d.ret[0] == -libc::EPERM,
            "declare_oom: {d}, expected bpf_out_of_memory() to return -EPERM"
        );
        println!("bpf_out_of_memory(): -EPERM, as expected");
        ensure!(
            h.stats().calls == 0,
            "the unprivileged handler ran: {}",
            show(&h.stats())
        );
        Ok(())
    })?;
    let d = kutil::events_since(&c, &before)?;
    ensure!(
        d.oom == 0 && d.oom_kill == 0,
        "an OOM happened in {} although every attempt failed: {d:?}",
        c.path()
    );
    ensure!(
        owner.stats().calls == 0,
        "root's handler ran: {}",
        show(&owner.stats())
    );
    let owner_map = owner.skel().maps.oom_test_ops.info().context("map info")?;
    ensure!(
        link_info(&root_link)?.map_id == owner_map.info.id,
        "root's link no longer runs root's handler"
    );
    drop(root_link);

    // With CAP_SYS_ADMIN added, and nothing else.
    let mut target = kutil::fixed_hog(&c, 8)?;
    let target_pid = target.pid();
    let before = c.events()?;
    in_thread("CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN", || {
        keep_only_caps(&[CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN])?;
        let first = Handler::load(Action::Defer, 0, 0)?;
        let h = Handler::load(Action::KillTarget, target_pid, 1)?;
        let link = first
            .attach(&c)
            .context("attaching with CAP_SYS_ADMIN to the cgroup")?;
        link_update(&link, h.skel().maps.oom_test_ops.as_fd().as_raw_fd())
            .context("replacing the handler with CAP_SYS_ADMIN")?;
        let d = h.declare_oom(c_id, 0, 1)?;
        let s = h.stats();
        println!("declared OOM with CAP_SYS_ADMIN: {d}; handler {}", show(&s));
        ensure!(
            d.prog_ret == 0 && d.ret[0] == 1,
            "declare_oom with CAP_SYS_ADMIN: {d}, expected bpf_out_of_memory() to return 1"
        );
        ensure!(
            s.kills == 1 && s.last_victim == target_pid,
            "the replacing handler did not kill {target_pid}: {}",
            show(&s)
        );
        ensure!(
            first.stats().calls == 0,
            "the replaced handler still ran: {}",
            show(&first.stats())
        );
        drop(link);
        let sys = try_attach_system_wide(h.skel()).context("attaching system-wide")?;
        drop(sys);
        Ok(())
    })?;
    target.wait_killed(Duration::from_secs(10))?;
    expect_oom_kills(&c, &before, 1)?;
    Ok(())
}

/// Runs `f` in a thread of its own, so that the capabilities it drops stay dropped there.
fn in_thread(what: &str, f: impl FnOnce() -> Result<()> + Send) -> Result<()> {
    thread::scope(|s| {
        s.spawn(f)
            .join()
            .map_err(|_| anyhow!("the thread panicked"))?
    })
    .with_context(|| format!("with {what} only"))
}

fn expect_eperm(result: io::Result<OwnedFd>, what: &str) -> Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            println!("{what}: EPERM, as expected");
            Ok(())
        }
        Err(e) => bail!("{what}: {e}, expected EPERM"),
        Ok(fd) => {
            let info = link_info(&fd.as_fd());
            bail!("{what} succeeded ({info:?}), expected EPERM")
        }
    }
}
