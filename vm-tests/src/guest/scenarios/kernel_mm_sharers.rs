//! kernel-mm-sharers: the processes killed with a victim are still exactly those sharing
//! its mm. __oom_kill_process() kills every other process whose mm is the victim's
//! (clone(CLONE_VM) without CLONE_THREAD), so that the OOM reaper may empty it; to find
//! them it walked every process on every kill. The series walks only when the mm has a
//! user besides the victim (mm_users > 1).
//!
//! * Three processes sharing one mm (the bench's sleepers: clone(CLONE_VM) children of a
//!   `guest sleepers` process, which sits in the root cgroup and shares it too) in their
//!   own cgroup: one OOM of that cgroup kills one of them, reported, and the walk kills
//!   the other two and their parent, outside the cgroup, unreported.
//! * A lone 8 MiB process beside a 4 MiB one: the OOM kills the big one only.
//!
//! A process of its own in a third cgroup lives through both. Each OOM is declared with
//! bpf_out_of_memory() on its cgroup with no handler attached: the kernel's own killer
//! chooses.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{ensure, Result};
use nix::libc;

use crate::guest::bench;
use crate::guest::kutil::{self, expect_oom_kills, Action, Handler};
use crate::guest::util::{describe_status, wait_until, Cgroup, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-mm-sharers", run).timeout_s(120)
}

const SHARERS: usize = 3;

fn run() -> Result<()> {
    // Loaded for its declare_oom program; never attached.
    let declarer = Handler::load(Action::Defer, 0, 0)?;
    let elsewhere = Cgroup::create("kernel-mm-sharers-elsewhere")?;
    let mut bystander = kutil::fixed_hog(&elsewhere, 4)?;

    let shared = Cgroup::create("kernel-mm-sharers")?;
    let mut parents = bench::spawn_sleepers(&[(shared.dir().to_path_buf(), SHARERS)])?;
    ensure!(parents.len() == 1, "{} sleepers processes", parents.len());
    let sharers = shared.procs()?;
    ensure!(
        sharers.len() == SHARERS,
        "{} holds {sharers:?}, expected {SHARERS} processes",
        shared.path()
    );
    let kills = bench::vmstat("oom_kill")?;
    let mut kmsg = Kmsg::mark()?;
    declare_oom(&declarer, &shared)?;
    wait_until(
        Duration::from_secs(30),
        "every process sharing the victim's mm to die",
        || shared.procs().is_ok_and(|p| p.is_empty()),
    )?;
    let parent = &mut parents[0];
    wait_until(
        Duration::from_secs(30),
        "the sharers' parent, in the root cgroup, to die",
        || matches!(parent.try_wait(), Ok(Some(_))),
    )?;
    let status = parent.wait()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the sharers' parent ended otherwise than by SIGKILL: {}",
        describe_status(status)
    );
    // memory.events counts the kill in the memcg of the mm's owner, the parent's: the
    // guest's count is the one to read.
    let counted = bench::vmstat("oom_kill")? - kills;
    ensure!(
        counted == 1,
        "/proc/vmstat oom_kill grew by {counted}, expected 1"
    );
    // The kill is reported before the walk: with all dead, the line is there.
    let reported = KillLog::read(&mut kmsg, &[])?.killed_pids();
    ensure!(
        reported.len() == 1 && sharers.contains(&reported[0]),
        "kills reported {reported:?}, expected one of the sharers {sharers:?}"
    );
    println!(
        "one OOM: sharer {} reported killed, the other {} and their parent killed with it",
        reported[0],
        SHARERS - 1
    );

    let lone = Cgroup::create("kernel-mm-sharers-lone")?;
    let mut big = kutil::fixed_hog(&lone, 8)?;
    let mut small = kutil::fixed_hog(&lone, 4)?;
    let before = lone.events()?;
    let mut kmsg = Kmsg::mark()?;
    declare_oom(&declarer, &lone)?;
    big.wait_killed(Duration::from_secs(30))?;
    let log = KillLog::read(&mut kmsg, &[big.pid()])?;
    log.expect_only_killed(big.pid(), "8 MiB process")?;
    log.expect_kernel_killed(big.pid(), "8 MiB process")?;
    expect_oom_kills(&lone, &before, 1)?;
    // Time for a stray SIGKILL to land.
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        small.is_alive(),
        "the 4 MiB process {} died too",
        small.pid()
    );
    ensure!(
        bystander.is_alive(),
        "the process in {} died",
        elsewhere.path()
    );
    println!("a lone victim died alone; its neighbour and the bystander live");
    Ok(())
}

/// Declares an OOM of `cgroup`'s memcg, which the kernel's own killer must resolve.
fn declare_oom(declarer: &Handler, cgroup: &Cgroup) -> Result<()> {
    let d = declarer.declare_oom(cgroup.id()?, 0, 1)?;
    ensure!(
        d.prog_ret == 0 && d.ret[0] == 1,
        "the OOM of {} freed nothing: {d:?}",
        cgroup.path()
    );
    Ok(())
}
