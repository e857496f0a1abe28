//! `policyd trace`: every OOM kill reported as the kernel made it, with no policy attached.
//!
//! * trace-kernel-kill: a memcg OOM decided by the kernel's own killer. /trace-kill
//!   (memory.max 64M) holds a 40 MiB sleeper in /trace-kill/idle, idle for longer than the
//!   culprit window (5 s), and a grower in /trace-kill/grower that runs into the limit: the
//!   kernel kills the sleeper (the largest), so victim and trigger differ, and the kill
//!   line must name both, the scope, the constraint, memory.events and, as the culprit,
//!   the grower's cgroup, not the victim's. Before the OOM the tracer must not wake up at
//!   all.
//! * trace-oom-group: memory.oom.group=1: the kernel kills every task of the cgroup; one
//!   kill line each, the largest `chosen`, the others `with-chosen`.
//! * trace-kubelet-layout: a BestEffort pod's container in kubelet's systemd-driver layout
//!   (containerd) runs into its limit: the kill line names the pod (uid, QoS class) and the
//!   container, as the victim's and the trigger's owner.
//! * trace-stock-kernel: trace-kernel-kill on Debian's own 7.3 kernel, which has no BPF
//!   OOM patches: the observing half of policyd must not need them. Without our 0002 that
//!   kernel may kill the grower too, right after the sleeper, while the sleeper's memory
//!   is still on its way: every kill must then have its line, in the kernel's order.
//!   `policyd load` must then refuse, saying the kernel lacks BPF OOM struct_ops.
//!
//! Each kill line's memory must equal, to the kB, what the kernel's own "Killed process"
//! line says: both read the same counters of a task that no longer runs.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::guest::bench::proc_usage;
use crate::guest::pdutil::{self, Policyd};
use crate::guest::util::{self, Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

const MIB: u64 = 1 << 20;

pub fn kernel_kill() -> Scenario {
    Scenario::new("trace-kernel-kill", || run_kernel_kill(false)).needs_policyd()
}

pub fn oom_group() -> Scenario {
    Scenario::new("trace-oom-group", run_oom_group).needs_policyd()
}

pub fn kubelet_layout() -> Scenario {
    Scenario::new("trace-kubelet-layout", run_kubelet_layout).needs_policyd()
}

pub fn stock_kernel() -> Scenario {
    Scenario::new("trace-stock-kernel", || run_kernel_kill(true))
        .needs_policyd()
        .on_stock_kernel()
        .timeout_s(300)
}

fn comm(pid: i32) -> Result<String> {
    Ok(util::read_file(format!("/proc/{pid}/comm"))?
        .trim()
        .to_owned())
}

/// How often `pid` went to sleep and was woken up, so far.
fn wakeups(pid: i32) -> Result<u64> {
    Ok(proc_usage(pid as u32)?.voluntary_switches)
}

/// The number after `key` in the kernel's "Killed process" line, in kB ("anon-rss:41164kB").
fn killed_kb(line: &str, key: &str) -> Result<u64> {
    let rest = line
        .split_once(key)
        .with_context(|| format!("no {key} in {line:?}"))?
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().with_context(|| format!("{key} in {line:?}"))
}

/// Fails unless `kill` reports the memory the kernel's "Killed process" line for it does.
fn expect_kernel_sizes(kill: &pdutil::Kill, log: &KillLog) -> Result<()> {
    let line = log
        .kill_line(kill.pid as i32)
        .with_context(|| format!("no \"Killed process {}\" in the kernel log", kill.pid))?;
    let got = [
        ("anon-rss:", kill.anon_rss_bytes / 1024),
        ("file-rss:", kill.file_rss_bytes / 1024),
        ("shmem-rss:", kill.shmem_rss_bytes / 1024),
        ("pgtables:", kill.pgtables_bytes / 1024),
    ];
    for (key, kb) in got {
        let want = killed_kb(line, key)?;
        ensure!(
            kb == want,
            "{key} {kb} kB in the kill line, {want} kB in the kernel's: {kill}\n  {line}"
        );
    }
    Ok(())
}

/// Growth older than this before an OOM does not make a culprit (policyd's
/// culprit::WINDOW_NS), with a margin for the sleeper's last charges.
const CULPRIT_WINDOW: Duration = Duration::from_millis(5500);

/// Fails unless `kill` names `culprit` first, having grown by more than 8 MiB, says it is
/// not the victim, and does not name `idle` at all.
fn expect_culprit(kill: &pdutil::Kill, culprit: &str, idle: &str) -> Result<()> {
    let culprits = kill
        .culprits
        .as_ref()
        .with_context(|| format!("no culprits in the kill line: {kill}"))?;
    let first = culprits
        .first()
        .with_context(|| format!("nobody grew before the OOM, the kill line says: {kill}"))?;
    ensure!(
        first.cgroup == culprit && first.growth_bytes > 8 * MIB,
        "the culprit should be {culprit}, grown by more than 8 MiB: {kill}"
    );
    ensure!(
        kill.culprit_is_victim == Some(false),
        "culprit_is_victim should be false: {kill}"
    );
    ensure!(
        culprits.iter().all(|c| c.cgroup != idle),
        "{idle} was idle for {} s before the OOM, yet a culprit: {kill}",
        CULPRIT_WINDOW.as_secs_f64()
    );
    Ok(())
}

fn run_kernel_kill(stock: bool) -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let release = util::read_file("/proc/sys/kernel/osrelease")?;
    println!("kernel {}", release.trim());
    let cg = Cgroup::create("trace-kill")?;
    cg.set("memory.max", "64M")?;
    let (idle_cg, grower_cg) = (cg.child("idle")?, cg.child("grower")?);
    let mut trace = Policyd::trace()?;
    let mut kmsg = Kmsg::mark()?;
    let mut sleeper = Hog::start(&idle_cg, &HogSpec::fixed(40), Duration::from_secs(30))?;
    let sleeper_comm = comm(sleeper.pid())?;
    let sleeper_ready = Instant::now();

    // Idle: the tracer sleeps in poll(2) until a kill is reported, and keeps no timer for
    // its growth window.
    std::thread::sleep(Duration::from_millis(500));
    let before = wakeups(trace.pid())?;
    std::thread::sleep(Duration::from_secs(3));
    let idle_wakeups = wakeups(trace.pid())? - before;
    ensure!(
        idle_wakeups == 0,
        "policyd trace woke up {idle_wakeups} time(s) in 3 s with no OOM"
    );
    // The sleeper's 40 MiB must be older than the culprit window when the OOM comes.
    std::thread::sleep(CULPRIT_WINDOW.saturating_sub(sleeper_ready.elapsed()));

    let mut grower = Hog::start(
        &grower_cg,
        &HogSpec::growing(1).up_to(30),
        Duration::from_secs(30),
    )?;
    println!(
        "sleeper {} (40 MiB) in {}, grower {} (up to 30 MiB) in {}",
        sleeper.pid(),
        idle_cg.path(),
        grower.pid(),
        grower_cg.path()
    );
    sleeper.wait_killed(pdutil::OOM_TIMEOUT)?;
    let (pid, trigger) = (sleeper.pid().to_string(), grower.pid().to_string());
    let kill = trace.next_kill(Duration::from_secs(10))?;
    kill.expect(&[
        ("pid", &pid),
        ("comm", &sleeper_comm),
        ("cgroup", "/trace-kill/idle"),
        ("kind", "chosen"),
        ("decided_by", "kernel"),
        ("scope", "/trace-kill"),
        ("constraint", "CONSTRAINT_MEMCG"),
        ("trigger_pid", &trigger),
        ("trigger_cgroup", "/trace-kill/grower"),
    ])?;
    expect_culprit(&kill, "/trace-kill/grower", "/trace-kill/idle")?;
    ensure!(
        (38 * MIB..=46 * MIB).contains(&kill.rss_bytes),
        "rss {} bytes for a 40 MiB task: {kill}",
        kill.rss_bytes
    );
    let events = kill
        .memory_events
        .context("no memory.events in the kill line")?;
    ensure!(
        events.oom >= 1 && events.oom_kill >= 1,
        "memory.events in the kill line: {events:?}"
    );
    let mut kills = vec![kill];
    // The grower stops at 30 MiB within a second; a second kill comes sooner.
    std::thread::sleep(Duration::from_secs(2));
    if stock && !grower.is_alive() {
        kills.push(trace.next_kill(Duration::from_secs(10))?);
        kills[1].expect(&[("pid", &trigger), ("decided_by", "kernel")])?;
        println!("the stock kernel also killed the grower while the sleeper exited");
    } else {
        ensure!(grower.is_alive(), "the grower {} died too", grower.pid());
        ensure!(
            events.oom_kill == 1,
            "memory.events in the kill line: {events:?}"
        );
    }
    let pids: Vec<i32> = kills.iter().map(|k| k.pid as i32).collect();
    let log = KillLog::read(&mut kmsg, &pids)?;
    log.expect_kernel_killed(sleeper.pid(), "sleeper")?;
    ensure!(
        log.killed_pids() == pids,
        "the kernel killed {:?}, the kill lines say {pids:?}",
        log.killed_pids()
    );
    for k in &kills {
        expect_kernel_sizes(k, &log)?;
    }
    trace.stop()?;
    println!("traced: {}", kills[0].summary());
    if stock {
        // A kernel without the series: `policyd load` says so, not how its object failed.
        let config = pdutil::write_config("stock", "policy = \"priority\"\n")?;
        let refused = match Policyd::load(&["priority", "--config", &config]) {
            Ok(pd) => {
                pd.stop()?;
                bail!("policyd load attached on a kernel without BPF OOM struct_ops");
            }
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            refused.contains("lacks BPF OOM struct_ops"),
            "policyd load on the stock kernel did not say it lacks BPF OOM struct_ops: {refused}"
        );
        println!("policyd load refused: the kernel lacks BPF OOM struct_ops");
    }
    Ok(())
}

fn run_oom_group() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let cg = Cgroup::create("trace-group")?;
    cg.set("memory.max", "64M")?;
    cg.set("memory.oom.group", "1")?;
    let mut trace = Policyd::trace()?;
    let mut kmsg = Kmsg::mark()?;
    let mut small = Vec::new();
    for _ in 0..2 {
        small.push(Hog::start(
            &cg,
            &HogSpec::fixed(4),
            Duration::from_secs(30),
        )?);
    }
    let mut grower = Hog::start(&cg, &HogSpec::growing(8), Duration::from_secs(30))?;
    grower.wait_killed(pdutil::OOM_TIMEOUT)?;
    for hog in &mut small {
        hog.wait_killed(Duration::from_secs(10))?;
    }
    let mut kills = Vec::new();
    for _ in 0..3 {
        kills.push(trace.next_kill(Duration::from_secs(10))?);
    }
    let chosen: Vec<_> = kills
        .iter()
        .filter(|k| k.line.field("kind").as_deref() == Some("chosen"))
        .collect();
    ensure!(
        chosen.len() == 1 && chosen[0].pid == grower.pid() as u32,
        "expected one `chosen` kill, the grower {}: {}",
        grower.pid(),
        pdutil::one_per_line(&kills)
    );
    let mut others: Vec<u32> = kills
        .iter()
        .filter(|k| k.line.field("kind").as_deref() == Some("with-chosen"))
        .map(|k| k.pid)
        .collect();
    others.sort_unstable();
    let mut want: Vec<u32> = small.iter().map(|h| h.pid() as u32).collect();
    want.sort_unstable();
    ensure!(
        others == want,
        "with-chosen kills {others:?}, expected the small hogs {want:?}"
    );
    for k in &kills {
        k.expect(&[
            ("cgroup", "/trace-group"),
            ("decided_by", "kernel"),
            ("scope", "/trace-group"),
        ])?;
    }
    let events = cg.events()?;
    ensure!(events.oom_group_kill == 1, "memory.events: {events:?}");
    let log = KillLog::read(&mut kmsg, &[grower.pid()])?;
    log.expect_kernel_killed(grower.pid(), "grower")?;
    trace.stop()?;
    println!("traced the group kill: 3 kill lines");
    Ok(())
}

const POD_UID: &str = "0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab";
const CONTAINER_ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

fn run_kubelet_layout() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let pod_slice = format!("kubepods-besteffort-pod{}.slice", POD_UID.replace('-', "_"));
    let container = Cgroup::create(&format!(
        "kubepods.slice/kubepods-besteffort.slice/{pod_slice}/cri-containerd-{CONTAINER_ID}.scope"
    ))?;
    container.set("memory.max", "32M")?;
    let mut trace = Policyd::trace()?;
    let mut grower = Hog::start(&container, &HogSpec::growing(4), Duration::from_secs(30))?;
    grower.wait_killed(pdutil::OOM_TIMEOUT)?;
    let kill = trace.next_kill(Duration::from_secs(10))?;
    let path = container.path();
    kill.expect(&[
        ("pid", &grower.pid().to_string()),
        ("cgroup", &path),
        ("scope", &path),
        ("pod_uid", POD_UID),
        ("pod_qos", "besteffort"),
        ("container_runtime", "containerd"),
        ("container_id", CONTAINER_ID),
        ("unit", "-"),
    ])?;
    let owner = format!("pod {POD_UID} (besteffort) container containerd:3f2a9c1b7d4e");
    kill.expect(&[("trigger_owner", &owner)])?;
    ensure!(
        kill.summary().contains(&owner),
        "the summary does not name the pod: {}",
        kill.summary()
    );
    trace.stop()?;
    println!("traced: {}", kill.summary());
    Ok(())
}
