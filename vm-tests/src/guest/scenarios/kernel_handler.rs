//! A BPF OOM handler attached to a memcg with memory.max, and what the kernel makes of its
//! answer on that memcg's OOM:
//! - kernel-handler-kills-chosen: it kills a small task of its choice (the one allocating)
//!   and returns 1; the OOM is handled, the big task (the kernel's pick) lives, and the
//!   report names the handler;
//! - kernel-handler-defers: it does nothing and returns 0; the kernel kills the big task;
//! - kernel-handler-claims-without-kill: it returns 1 without killing; the kernel does not
//!   believe it (oc->bpf_memory_freed stays false) and kills the big task, with no hang.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::guest::kutil::{
    self, expect_log, expect_no_log, expect_oom_kills, show, Action, Handler, HANDLER_KILL_LINE,
    HANDLER_REPORT_LINE,
};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn kills_chosen() -> Scenario {
    Scenario::new("kernel-handler-kills-chosen", run_kills_chosen).timeout_s(90)
}

pub fn defers() -> Scenario {
    Scenario::new("kernel-handler-defers", run_defers).timeout_s(90)
}

pub fn claims_without_kill() -> Scenario {
    Scenario::new(
        "kernel-handler-claims-without-kill",
        run_claims_without_kill,
    )
    .timeout_s(90)
}

fn run_kills_chosen() -> Result<()> {
    let cg = Cgroup::create("kernel-handler-kills-chosen")?;
    cg.set("memory.max", "64M")?;
    // The kernel's pick: a big idle hog. The small hog, the handler's pick, is the one
    // that runs into memory.max: a victim that is not the allocating task would leave the
    // allocator retrying while the victim exits, and Linux 7.3's memcg OOM killer does not
    // see exiting victims (see kernel-default-exiting-victim).
    let mut big = kutil::fixed_hog(&cg, 48)?;
    let mut h = Handler::load(Action::Defer, 0, 0)?;
    let link = h.attach(&cg)?;
    let before = cg.events()?;
    let mut kmsg = Kmsg::mark()?;

    let mut small = Hog::start(&cg, &HogSpec::growing(4).gated(), Duration::from_secs(30))?;
    h.set(Action::KillTarget, small.pid(), 1);
    small.release()?;
    println!(
        "handler on {} kills the small growing hog {}; big idle hog {} (48 MiB)",
        cg.path(),
        small.pid(),
        big.pid()
    );
    small.wait_killed(Duration::from_secs(40))?;
    ensure!(big.is_alive(), "the big hog {} died too", big.pid());

    let s = h.stats();
    println!("handler: {}", show(&s));
    expect_oom_kills(&cg, &before, 1)?;
    ensure!(s.calls >= 1, "the handler was never called");
    ensure!(s.kills == 1, "handler kills = {}, expected 1", s.kills);
    ensure!(s.last_kill_err == 0, "last_kill_err = {}", s.last_kill_err);
    ensure!(
        s.last_victim == small.pid(),
        "last_victim = {}, expected the small hog {}",
        s.last_victim,
        small.pid()
    );
    ensure!(
        s.freed_before == 0,
        "oc->bpf_memory_freed was already set when the handler started"
    );
    ensure!(
        s.freed_after == 1,
        "oc->bpf_memory_freed not set after a successful bpf_oom_kill_process()"
    );
    ensure!(
        s.last_oom_memcg == cg.id()?,
        "last_oom_memcg = {}, expected {} ({})",
        s.last_oom_memcg,
        cg.id()?,
        cg.path()
    );
    ensure!(
        s.last_link_cgroup == cg.id()?,
        "last_link_cgroup = {}, expected {} ({})",
        s.last_link_cgroup,
        cg.id()?,
        cg.path()
    );

    let log = kmsg.since()?;
    expect_log(&log, HANDLER_REPORT_LINE)?;
    expect_log(&log, &format!("{HANDLER_KILL_LINE} {} ", small.pid()))?;
    expect_no_log(&log, &format!("Killed process {} ", big.pid()))?;
    drop(link);
    Ok(())
}

fn run_defers() -> Result<()> {
    kernel_decides("kernel-handler-defers", Action::Defer, 0)
}

fn run_claims_without_kill() -> Result<()> {
    kernel_decides("kernel-handler-claims-without-kill", Action::ClaimOnly, 1)
}

/// The handler runs but frees nothing: the kernel's killer must kill the big hog.
fn kernel_decides(name: &str, action: Action, claim: i32) -> Result<()> {
    let cg = Cgroup::create(name)?;
    cg.set("memory.max", "64M")?;
    let mut small = kutil::fixed_hog(&cg, 8)?;
    // target_pid names the small hog: if the action were mistaken for a kill, it would die.
    let h = Handler::load(action, small.pid(), claim)?;
    let link = h.attach(&cg)?;
    let before = cg.events()?;
    let mut kmsg = Kmsg::mark()?;

    let mut big = kutil::growing_hog(&cg, 16)?;
    println!(
        "handler on {} ({action:?}, returns {claim}); small hog {} (8 MiB), big hog {} (growing)",
        cg.path(),
        small.pid(),
        big.pid()
    );
    big.wait_killed(Duration::from_secs(40))?;
    ensure!(small.is_alive(), "the small hog {} died too", small.pid());

    let s = h.stats();
    println!("handler: {}", show(&s));
    expect_oom_kills(&cg, &before, 1)?;
    ensure!(s.calls >= 1, "the handler was never called");
    ensure!(s.kills == 0, "handler kills = {}, expected 0", s.kills);
    ensure!(
        s.freed_after == 0,
        "oc->bpf_memory_freed set although the handler freed nothing"
    );
    ensure!(
        s.last_oom_memcg == cg.id()?,
        "last_oom_memcg = {}, expected {}",
        s.last_oom_memcg,
        cg.id()?
    );

    let log = KillLog::read(&mut kmsg, &[big.pid()])?.lines;
    expect_log(
        &log,
        &format!("Memory cgroup out of memory: Killed process {} ", big.pid()),
    )?;
    expect_no_log(&log, "BPF OOM handler")?;
    drop(link);
    Ok(())
}
