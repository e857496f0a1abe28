//! The life of a cgroup struct_ops link: one handler per cgroup (-EEXIST for a second),
//! link info and fdinfo name the cgroup, and the handler goes away when the link fd is
//! closed, when the process holding it is killed, and when its cgroup is removed (the fd
//! then reports POLLHUP and still names the cgroup). After each, OOMs go to the kernel.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult, Pid};

use crate::guest::kutil::{
    self, expect_oom_kills, fdinfo, fdinfo_value, link_info, poll_fd, show, try_attach,
    try_attach_system_wide, Action, Handler,
};
use crate::guest::util::Cgroup;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-attach-lifecycle", run).timeout_s(120)
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let c = Cgroup::create("kernel-attach-lifecycle")?;
    c.set("memory.max", "64M")?;
    let c_id = c.id()?;
    let mut h = Handler::load(Action::KillTarget, 0, 1)?;
    let other = Handler::load(Action::KillTarget, 0, 1)?;

    // Attached: link info and fdinfo name the cgroup.
    let l1 = h.attach(&c)?;
    let info = link_info(&l1)?;
    println!("link {info:?}");
    ensure!(
        info.link_type == libbpf_rs::libbpf_sys::BPF_LINK_TYPE_STRUCT_OPS,
        "link type {} is not struct_ops",
        info.link_type
    );
    ensure!(info.map_id != 0, "an attached link shows no map id");
    ensure!(
        info.cgroup_id == c_id,
        "link info cgroup_id = {}, expected {c_id} ({})",
        info.cgroup_id,
        c.path()
    );
    let text = fdinfo(&l1)?;
    ensure!(
        fdinfo_value(&text, "cgroup_id") == Some(c_id.to_string()),
        "fdinfo does not show cgroup_id {c_id}:\n{text}"
    );

    // One handler per cgroup, whether the second comes from the same map or another one.
    expect_eexist(try_attach(h.skel(), &c), "the same map again")?;
    expect_eexist(try_attach(other.skel(), &c), "a second handler")?;

    // Closing the link detaches: the kernel decides the next OOM.
    drop(l1);
    kernel_decides(&c, &mut h, "after closing the link fd")?;

    // A link held by a process that is killed goes with it.
    let child = attach_in_child(&h, &c)?;
    expect_eexist(
        try_attach(h.skel(), &c),
        "while a child process holds a link",
    )?;
    kill(child, Signal::SIGKILL).context("killing the attaching child")?;
    match waitpid(child, None).context("waiting for the attaching child")? {
        WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
        other => bail!("the attaching child ended with {other:?}"),
    }
    kernel_decides(&c, &mut h, "after the process holding the link was killed")?;
    // ... and the cgroup is free for a new handler.
    drop(
        h.attach(&c)
            .context("attaching again after the holder died")?,
    );

    // Removing the cgroup detaches the link: POLLHUP, and the cgroup id stays in its info.
    let d = Cgroup::create("kernel-attach-lifecycle-gone")?;
    let d_id = d.id()?;
    let l3 = h.attach(&d)?;
    ensure!(
        link_info(&l3)?.cgroup_id == d_id,
        "link info does not name {}",
        d.path()
    );
    let revents = poll_fd(&l3, libc::POLLIN, Duration::ZERO)?;
    ensure!(
        revents & libc::POLLHUP == 0,
        "an attached link polls as hung up ({revents:#x})"
    );
    d.remove()?;
    let revents = poll_fd(&l3, libc::POLLIN, Duration::from_secs(10))?;
    ensure!(
        revents & libc::POLLHUP != 0,
        "no POLLHUP on the link fd within 10 s of removing its cgroup (revents {revents:#x})"
    );
    let info = link_info(&l3)?;
    println!("after rmdir: link {info:?}");
    ensure!(
        info.cgroup_id == d_id,
        "a detached link's info shows cgroup_id {}, expected {d_id}",
        info.cgroup_id
    );
    ensure!(
        info.map_id == 0,
        "a detached link still shows map {}",
        info.map_id
    );
    let text = fdinfo(&l3)?;
    ensure!(
        fdinfo_value(&text, "cgroup_id") == Some(d_id.to_string()),
        "fdinfo of the detached link does not show cgroup_id {d_id}:\n{text}"
    );

    // System-wide, two ways: a link without a cgroup (what libbpf's
    // bpf_map__attach_struct_ops() creates) and a BPF_F_CGROUP_FD link to the root cgroup
    // both attach to the root cgroup, so each excludes the other.
    let root = Cgroup::root();
    let lr = h.attach(&root)?;
    let info = link_info(&lr)?;
    ensure!(
        info.cgroup_id == root.id()?,
        "a link to the root cgroup shows cgroup_id {}, expected {}",
        info.cgroup_id,
        root.id()?
    );
    expect_eexist(
        try_attach_system_wide(other.skel()),
        "a link without a cgroup while the root cgroup has a handler",
    )?;
    drop(lr);
    let ls = try_attach_system_wide(h.skel()).context("attaching without a cgroup")?;
    let info = link_info(&ls)?;
    ensure!(
        info.cgroup_id == 0 && info.map_id != 0,
        "a link without a cgroup shows {info:?}, expected cgroup_id 0 and a map"
    );
    let text = fdinfo(&ls)?;
    ensure!(
        fdinfo_value(&text, "cgroup_id").is_none(),
        "fdinfo of a link without a cgroup shows a cgroup_id:\n{text}"
    );
    expect_eexist(
        try_attach(other.skel(), &root),
        "the root cgroup while a handler without a cgroup is attached",
    )?;
    drop(ls);

    ensure!(
        h.stats().calls == 0,
        "the handler ran although it was never attached at OOM time: {}",
        show(&h.stats())
    );
    Ok(())
}

fn expect_eexist(result: std::io::Result<OwnedFd>, what: &str) -> Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            println!("attaching {what}: EEXIST, as expected");
            Ok(())
        }
        Err(e) => bail!("attaching {what}: {e}, expected EEXIST"),
        Ok(_) => bail!("attaching {what} succeeded, expected EEXIST"),
    }
}

/// A memcg OOM with a small hog (the handler's target) and a growing one: with no handler
/// attached, the kernel kills the growing hog and the handler is not called.
fn kernel_decides(c: &Cgroup, h: &mut Handler, when: &str) -> Result<()> {
    let mut small = kutil::fixed_hog(c, 8)?;
    h.set(Action::KillTarget, small.pid(), 1);
    let calls = h.stats().calls;
    let before = c.events()?;
    let mut big = kutil::growing_hog(c, 16)?;
    big.wait_killed(Duration::from_secs(40))
        .with_context(|| when.to_string())?;
    ensure!(
        small.is_alive(),
        "{when}: the small hog {} died",
        small.pid()
    );
    expect_oom_kills(c, &before, 1).with_context(|| when.to_string())?;
    let s = h.stats();
    ensure!(
        s.calls == calls,
        "{when}: the detached handler was still called: {}",
        show(&s)
    );
    println!("{when}: the kernel killed the growing hog {}", big.pid());
    Ok(())
}

/// Forks a child that attaches `h` to `cgroup` and then waits to be killed, holding the
/// only fd of the link. Returns once the child reports that it attached.
fn attach_in_child(h: &Handler, cgroup: &Cgroup) -> Result<Pid> {
    use std::os::fd::AsFd;
    let dir = std::fs::File::open(cgroup.dir())
        .with_context(|| format!("opening {}", cgroup.dir().display()))?;
    let map_fd = h.skel().maps.oom_test_ops.as_fd().as_raw_fd();
    let (rd, wr) = pipe().context("pipe")?;
    // SAFETY: the child only makes raw syscalls (bpf, write, pause, _exit).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let report: u8 =
                match kutil::link_create(map_fd, dir.as_raw_fd(), kutil::BPF_F_CGROUP_FD) {
                    Ok(fd) => {
                        std::mem::forget(fd);
                        0
                    }
                    Err(e) => e.raw_os_error().unwrap_or(255).clamp(1, 255) as u8,
                };
            // SAFETY: raw syscalls on fds this process owns.
            unsafe {
                libc::write(wr.as_raw_fd(), (&report as *const u8).cast(), 1);
                if report != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            if poll_fd(&rd, libc::POLLIN, Duration::from_secs(10))? & libc::POLLIN == 0 {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                bail!("the attaching child {child} did not report within 10 s");
            }
            let mut byte = [0u8; 1];
            let n = nix::unistd::read(rd.as_raw_fd(), &mut byte).context("reading the pipe")?;
            if n != 1 || byte[0] != 0 {
                let _ = waitpid(child, None);
                bail!(
                    "the child could not attach: {}",
                    std::io::Error::from_raw_os_error(byte[0] as i32)
                );
            }
            println!("child {child} attached a handler to {}", cgroup.path());
            Ok(child)
        }
    }
}
