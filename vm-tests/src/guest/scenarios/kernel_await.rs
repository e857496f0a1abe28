//! An OOM while the previous victim is still exiting must not kill a second task: the
//! handler resolves it with bpf_oom_await_victim().
//!
//! Making "still exiting" deterministic: the victim V is traced (PTRACE_SEIZE with
//! PTRACE_O_TRACEEXIT), so once SIGKILLed it stops at PTRACE_EVENT_EXIT inside do_exit(),
//! still holding its mm, until the test lets it go; only the OOM reaper (2 s after the
//! kill) can take its memory meanwhile. Two OOMs are declared back to back on V's memcg
//! with the `declare_oom` syscall program: the first kills V, the second finds V exiting
//! and awaits it. Afterwards, once the reaper has taken V's memory, the handler can no
//! longer await V (-ESRCH) and the kernel, which skips reaped victims, picks another task.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::libc;

use crate::guest::kutil::{self, expect_oom_kills, show, Action, Handler};
use crate::guest::util::{Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-await-exiting-victim", run).timeout_s(90)
}

const VICTIM_MIB: u64 = 32;

fn run() -> Result<()> {
    // Far from its limit: the OOMs here are declared, not provoked.
    let cg = Cgroup::create("kernel-await-exiting-victim")?;
    cg.set("memory.max", "256M")?;
    let mut bystander = kutil::fixed_hog(&cg, 4)?;
    // A Hog for spawning and readiness only: from here on this code alone waits for V
    // (with __WALL), never Hog's methods, which know nothing of ptrace stops.
    let mut victim = Hog::spawn(&cg, &HogSpec::fixed(VICTIM_MIB))?;
    victim.wait_ready(Duration::from_secs(30))?;
    let v = victim.pid();
    seize(v)?;
    println!(
        "victim {v} ({VICTIM_MIB} MiB, traced with PTRACE_O_TRACEEXIT), bystander {}",
        bystander.pid()
    );

    let h = Handler::load(Action::AwaitOrKill, v, 1)?;
    let _link = h.attach(&cg)?;
    let before = cg.events()?;
    let full = cg.read_u64("memory.current")?;
    let mut kmsg = Kmsg::mark()?;

    let killed_at = Instant::now();
    let d = h.declare_oom(cg.id()?, 0, 2)?;
    let s = h.stats();
    println!("declare_oom x2: {d}; handler: {}", show(&s));

    // V must now sit in its exit stop: proof that OOM #2 met a victim still exiting.
    let msg = wait_exit_stop(v, Duration::from_secs(15))?;
    println!(
        "victim {v} is stopped at PTRACE_EVENT_EXIT (exit status {msg:#x}: {}), {:.0} ms after the kill",
        describe_wait(msg as i32),
        killed_at.elapsed().as_secs_f64() * 1000.0
    );

    ensure!(d.prog_ret == 0, "declare_oom returned {}", d.prog_ret);
    ensure!(
        d.ret == [1, 1],
        "bpf_out_of_memory() returned {:?}, expected [1, 1] (kill, then await)",
        d.ret
    );
    ensure!(s.kills == 1, "handler kills = {}, expected 1", s.kills);
    ensure!(
        s.last_victim == v,
        "last_victim = {}, expected {v}",
        s.last_victim
    );
    ensure!(s.awaits == 1, "handler awaits = {}, expected 1", s.awaits);
    ensure!(
        s.last_await_err == 0,
        "last_await_err = {}",
        s.last_await_err
    );
    ensure!(s.calls == 2, "handler calls = {}, expected 2", s.calls);
    expect_oom_kills(&cg, &before, 1)?;
    ensure!(
        bystander.is_alive(),
        "the bystander {} died",
        bystander.pid()
    );

    // Once more while V provably sits in its exit stop, if the reaper has not run yet
    // (it reaps 2 s after the kill; an await is only right while memory is on its way).
    if killed_at.elapsed() < Duration::from_millis(1200) {
        let d = h.declare_oom(cg.id()?, 0, 1)?;
        let s = h.stats();
        println!(
            "declare_oom during the exit stop: {d}; handler: {}",
            show(&s)
        );
        ensure!(
            d.ret[0] == 1,
            "bpf_out_of_memory() returned {}, expected 1",
            d.ret[0]
        );
        ensure!(
            s.awaits == 2 && s.kills == 1,
            "awaits {} kills {}, expected 2 and 1",
            s.awaits,
            s.kills
        );
        expect_oom_kills(&cg, &before, 1)?;
    } else {
        println!("(skipped the OOM during the exit stop: the reaper deadline was too close)");
    }

    // The reaper takes V's memory while V is still stopped; after that, awaiting V would
    // wait for nothing: -ESRCH, killing it again: -ESRCH, and the kernel picks the
    // bystander, skipping the reaped victim as oom_evaluate_task() does.
    let reaped = format!("oom_reaper: reaped process {v} ");
    kmsg.wait_for(
        Duration::from_secs(15),
        "the OOM reaper to take the victim's memory",
        |l| l.contains(&reaped),
    )?;
    // The reaper sets MMF_OOM_SKIP right after that line.
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "reaped {:.0} ms after the kill: memory.current {} -> {}",
        killed_at.elapsed().as_secs_f64() * 1000.0,
        full,
        cg.read_u64("memory.current")?
    );
    let d = h.declare_oom(cg.id()?, 0, 1)?;
    let s = h.stats();
    println!("declare_oom after the reaping: {d}; handler: {}", show(&s));
    ensure!(
        s.last_await_err == -libc::ESRCH,
        "await on a reaped victim returned {}, expected -ESRCH",
        s.last_await_err
    );
    ensure!(
        s.last_kill_err == -libc::ESRCH,
        "killing a reaped victim returned {}, expected -ESRCH",
        s.last_kill_err
    );
    ensure!(
        s.kills == 1,
        "handler kills = {}, expected still 1",
        s.kills
    );
    ensure!(
        d.ret[0] == 1,
        "bpf_out_of_memory() returned {}, expected 1 (the kernel killed)",
        d.ret[0]
    );
    bystander
        .wait_killed(Duration::from_secs(10))
        .context("the kernel's pick after the reaped victim")?;
    expect_oom_kills(&cg, &before, 2)?;

    // Let V finish dying and reap it.
    // SAFETY: plain ptrace request on our tracee.
    if unsafe { libc::ptrace(libc::PTRACE_CONT, v, 0, 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("PTRACE_CONT");
    }
    let status = wait_pid(v, Duration::from_secs(10))?;
    ensure!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the victim ended with {}, expected SIGKILL",
        describe_wait(status)
    );
    println!("victim {v} released and reaped: {}", describe_wait(status));
    Ok(())
}

fn seize(pid: i32) -> Result<()> {
    // SAFETY: plain ptrace request on our own child.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            0,
            libc::PTRACE_O_TRACEEXIT as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("PTRACE_SEIZE");
    }
    Ok(())
}

/// Waits (waitpid __WALL, polling) up to `timeout` for any state change of `pid`.
fn wait_pid(pid: i32, timeout: Duration) -> Result<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("waitpid");
        }
        if rc == pid {
            return Ok(status);
        }
        if start.elapsed() > timeout {
            bail!(
                "no state change of {pid} within {:.1} s",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the PTRACE_EVENT_EXIT stop of `pid`; returns the event message (the wait
/// status the task will exit with).
fn wait_exit_stop(pid: i32, timeout: Duration) -> Result<u64> {
    let status = wait_pid(pid, timeout)?;
    if !(libc::WIFSTOPPED(status) && status >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8))
    {
        bail!(
            "the killed victim {pid} did not stop at PTRACE_EVENT_EXIT: {}",
            describe_wait(status)
        );
    }
    let mut msg: libc::c_ulong = 0;
    // SAFETY: PTRACE_GETEVENTMSG writes one unsigned long.
    if unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, pid, 0, &mut msg) } < 0 {
        return Err(std::io::Error::last_os_error()).context("PTRACE_GETEVENTMSG");
    }
    Ok(msg as u64)
}

fn describe_wait(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else if libc::WIFSTOPPED(status) {
        format!("stopped, status {:#x}", status >> 8)
    } else {
        format!("raw status {status:#x}")
    }
}
