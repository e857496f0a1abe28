//! bpf_out_of_memory() from a SEC("syscall") program declares an OOM that the handlers and
//! the kernel resolve as a real one: on a memcg far from its limit (resolved by the
//! memcg's handler), with BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK, with bad flags (-EINVAL, nothing
//! runs), and system-wide (cgroup_id 0: only the root's handler runs, whether it was
//! attached to the root cgroup by fd or without a cgroup).
//!
//! Accounting is a real OOM's: a declared memcg OOM counts once in memory.events "oom"
//! (as mem_cgroup_oom() counts it) and its kill in "oom_kill"; a system-wide one counts in
//! no memcg's "oom". Where no allocation failed, it differs on purpose: with
//! vm.oom_kill_allocating_task set, the caller (who allocated nothing) is not the victim,
//! the biggest task is; and a system-wide OOM with nothing killable returns 0 instead of
//! panicking the machine.

use std::time::Duration;

use std::os::fd::AsRawFd;

use anyhow::{ensure, Context, Result};
use nix::libc;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};

use crate::guest::kutil::{
    self, expect_log, expect_oom_kills, show, Action, Handler, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK,
    HANDLER_KILL_LINE, HANDLER_REPORT_LINE,
};
use crate::guest::util::{write_file, Cgroup, KillLog, Kmsg, MemoryEvents};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-declare-oom", run).timeout_s(150)
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
        expect_oom_events(&m, &before, 1, what)?;
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
        expect_oom_events(&m, &before, 0, "bad flags")?;
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
        expect_oom_events(&x, &before, 0, &format!("global ({form})"))?;
        let log = kmsg.since()?;
        expect_log(&log, HANDLER_REPORT_LINE)?;
        expect_log(&log, &format!("{HANDLER_KILL_LINE} {} ", target.pid()))?;
        expect_log(&log, ",global_oom")?;
        ensure!(bystander.is_alive(), "global ({form}): the bystander died");
    }
    drop(lroot);

    allocating_task_is_not_the_caller(&hm, &x)?;

    // Nothing killable anywhere: the bystander goes, every process left is made
    // unkillable, and a system-wide OOM is declared with no handler attached.
    m.kill_all()?;
    drop(bystander);
    for pid in user_pids()? {
        // A process may exit meanwhile.
        let _ = write_file(format!("/proc/{pid}/oom_score_adj"), "-1000");
    }
    let mut kmsg = Kmsg::mark()?;
    let d = hm.declare_oom(0, 0, 1)?;
    println!("global OOM declared with nothing killable: {d}");
    ensure!(
        d.prog_ret == 0 && d.ret[0] == 0,
        "a declared global OOM with nothing killable: {d}, expected bpf_out_of_memory() = 0"
    );
    expect_log(&kmsg.since()?, "Out of memory and no killable processes")?;
    println!("the guest is still up: a declared OOM does not panic");
    Ok(())
}

/// Fails unless `cgroup` gained exactly `want` memory.events "oom" since `before`.
fn expect_oom_events(cgroup: &Cgroup, before: &MemoryEvents, want: u64, what: &str) -> Result<()> {
    let d = kutil::events_since(cgroup, before)?;
    ensure!(
        d.oom == want,
        "{what}: memory.events oom of {} grew by {}, expected {want} as for a real OOM",
        cgroup.path(),
        d.oom
    );
    Ok(())
}

/// With vm.oom_kill_allocating_task = 1, a real global OOM kills the allocating task. A
/// declared one has none: a child (oom_score_adj 0, killable) declares it, no handler is
/// attached, and the kernel kills the biggest task, a 128 MiB hog, not the child.
fn allocating_task_is_not_the_caller(h: &Handler, x: &Cgroup) -> Result<()> {
    let mut hog = kutil::fixed_hog(x, 128)?;
    let before = x.events()?;
    let mut kmsg = Kmsg::mark()?;
    write_file("/proc/sys/vm/oom_kill_allocating_task", "1")?;
    let outcome = declare_in_child(h);
    write_file("/proc/sys/vm/oom_kill_allocating_task", "0")?;
    let (status, ret) = outcome?;
    println!("oom_kill_allocating_task=1: the declaring child ended with {status:?}, ret {ret}");
    ensure!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "the child that declared a global OOM ended with {status:?}: the kernel took it for \
         the allocating task"
    );
    ensure!(ret == 1, "bpf_out_of_memory() returned {ret}, expected 1");
    hog.wait_killed(Duration::from_secs(20))
        .context("the kernel did not kill the biggest task for the declared OOM")?;
    let kills = KillLog::read(&mut kmsg, &[hog.pid()])?;
    kills.expect_only_killed(hog.pid(), "128 MiB hog")?;
    ensure!(
        kills
            .kill_line(hog.pid())
            .is_some_and(|l| !l.contains("oom_kill_allocating_task")),
        "the hog's kill was reported as oom_kill_allocating_task's:\n{}",
        kills.text()
    );
    expect_oom_kills(x, &before, 1)?;
    Ok(())
}

/// Forks a child that makes itself killable, declares a system-wide OOM through `h`'s
/// syscall program and reports bpf_out_of_memory()'s result through a pipe.
fn declare_in_child(h: &Handler) -> Result<(WaitStatus, i32)> {
    let (rd, wr) = pipe().context("pipe")?;
    // SAFETY: this scenario runs no other thread; the child makes syscalls, writes a file
    // and exits.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let ret = match write_file("/proc/self/oom_score_adj", "0") {
                Ok(()) => h.declare_oom(0, 0, 1).map(|d| d.ret[0]).unwrap_or(i32::MIN),
                Err(_) => i32::MIN + 1,
            };
            let bytes = ret.to_ne_bytes();
            // SAFETY: raw syscalls on fds this process owns.
            unsafe {
                libc::write(wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut buf = [0u8; 4];
            let mut f = std::fs::File::from(rd);
            let read = std::io::Read::read_exact(&mut f, &mut buf);
            let status = waitpid(child, None).context("waiting for the declaring child")?;
            match read {
                Ok(()) => Ok((status, i32::from_ne_bytes(buf))),
                Err(_) => Ok((status, i32::MIN + 2)),
            }
        }
    }
}

/// The pids of user space processes (kernel threads have an empty cmdline).
fn user_pids() -> Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}
