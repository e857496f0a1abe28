//! The `[swap]` limit (issue #12): with swap and memory both used over it, the system's
//! memory stall wakes policyd, which declares an OOM; the policy, not the swap size,
//! picks the victim.
//!
//! `policyd-swap-limit`: a 64 MiB zram swap; a ramfs file (unswappable, so what it holds
//! stays out of MemAvailable) leaves 35% of the guest's memory available. /swap has
//! memory.max 16 MiB and holds a service (priority 500, 8 MiB), a bystander (priority
//! 10, 1 MiB) and a job (priority 20) that grows into swap. With `[swap] limit = "50%"`:
//!
//! * once swap passes 50%, the job's reclaim stall wakes policyd and it declares one
//!   system-wide OOM: the bystander dies (lowest priority, the least swap), and the
//!   decision line's trigger says "swap ... limit 50%";
//! * back-off: the job keeps growing into swap (the limit holds, the system stalls) and
//!   nothing more is declared; when it stops, the quiet ends the episode;
//! * idle with the limit still holding, policyd makes no context switch: nothing wakes
//!   it;
//! * the next stall (a late task in /swap/late, priority 30, growing under memory.max)
//!   is a new episode: the job dies, not the late task that stalled; the service lives.

use std::io::Write as _;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::libc;
use policyd::swap_limit::MemInfo;

use crate::guest::bench::proc_usage;
use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, ZramSwap};
use crate::guest::Scenario;

const SWAP_MIB: u64 = 64;
const LIMIT: &str = "50%";
/// MemAvailable left by the ramfs filler, as a share of MemTotal: under 50%.
const AVAILABLE_PCT: u64 = 35;
const FILL_DIR: &str = "/tmp/swap-fill";
const DECLARE_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the idle guest is watched for policyd's wake-ups.
const IDLE: Duration = Duration::from_secs(3);

pub fn scenario() -> Scenario {
    Scenario::new("policyd-swap-limit", run)
        .needs_policyd()
        .timeout_s(180)
}

fn meminfo() -> Result<MemInfo> {
    MemInfo::read(std::path::Path::new("/proc/meminfo"))
}

/// The system's `some` memory stall so far, in microseconds.
fn system_stall_us() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/pressure/memory")?;
    text.lines()
        .find(|l| l.starts_with("some"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no some total in /proc/pressure/memory: {text:?}"))
}

/// Fills a ramfs file until MemAvailable is `AVAILABLE_PCT`% of MemTotal; ramfs pages
/// are neither reclaimable nor swappable.
fn fill_memory() -> Result<u64> {
    std::fs::create_dir_all(FILL_DIR)?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dir, fstype) = (c("ramfs"), c(FILL_DIR), c("ramfs"));
    // SAFETY: valid NUL-terminated strings; no data.
    if unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mount -t ramfs ramfs {FILL_DIR}"));
    }
    let m = meminfo()?;
    let target = m.mem_total * AVAILABLE_PCT / 100;
    let mib = m.mem_available.saturating_sub(target) / 1024;
    let mut f = std::fs::File::create(format!("{FILL_DIR}/fill"))?;
    let chunk = vec![0x5a_u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk).context("filling ramfs")?;
    }
    Ok(mib)
}

/// The next decision, saying every 2 s how full swap and memory are meanwhile.
fn wait_decision(pd: &mut Policyd, swap: &Cgroup) -> Result<pdutil::Decision> {
    let started = Instant::now();
    loop {
        match pd.next_decision(Duration::from_secs(2)) {
            Ok(d) => return Ok(d),
            Err(e) if started.elapsed() > DECLARE_TIMEOUT => return Err(e),
            Err(_) => {
                let m = meminfo()?;
                println!(
                    "  waiting: {m:?}, /swap memory.current {} KiB, memory.swap.current {} \
                     KiB, events {:?}, system some stall {} us",
                    swap.read_u64("memory.current")? / 1024,
                    swap.read_u64("memory.swap.current")? / 1024,
                    swap.read("memory.events")?.replace('\n', " "),
                    system_stall_us()?
                );
            }
        }
    }
}

/// zram swap on, the config written, and policyd started with `extra` and armed.
fn start(name: &str, extra: &[&str]) -> Result<(ZramSwap, Policyd)> {
    pdutil::quiet_oom_reports()?;
    let zram = ZramSwap::on(SWAP_MIB)?;
    let config = pdutil::write_config(
        name,
        &format!(
            r#"
policy = "priority"

[[rule]]
cgroup = "/swap/service"
priority = 500

[[rule]]
cgroup = "/swap/job"
priority = 20

[[rule]]
cgroup = "/swap/bystander"
priority = 10

[[rule]]
cgroup = "/swap/late"
priority = 30

[swap]
limit = "{LIMIT}"
"#
        ),
    )?;
    let mut args = vec!["priority", "--config", &config];
    args.extend(extra);
    let mut pd = Policyd::load(&args)?;
    pd.wait_line(Duration::from_secs(10), "the swap limit armed", |l| {
        l.is(
            "INFO",
            "swap limit armed: checked whenever the system stalls on memory",
        )
    })?
    .expect(
        "swap limit armed",
        &[("cgroup", "/"), ("trigger", "some 10000 1000000")],
    )?;
    Ok((zram, pd))
}

/// What both runs put in /swap (memory.max 16 MiB) before the job starts. Every Cgroup
/// is kept: dropping one removes it, killing what runs in it.
struct Layout {
    swap: Cgroup,
    _service_cg: Cgroup,
    service: Hog,
    _bystander_cg: Cgroup,
    bystander: Hog,
}

/// /swap with a service (8 MiB) and a bystander (1 MiB, priority 10) running.
fn layout() -> Result<Layout> {
    let swap = Cgroup::create("swap")?;
    swap.set("memory.max", (16u64 << 20).to_string())?;
    let service_cg = swap.child("service")?;
    let service = Hog::start(&service_cg, &HogSpec::fixed(8), pdutil::READY_TIMEOUT)?;
    let bystander_cg = swap.child("bystander")?;
    let bystander = Hog::start(&bystander_cg, &HogSpec::fixed(1), pdutil::READY_TIMEOUT)?;
    Ok(Layout {
        swap,
        _service_cg: service_cg,
        service,
        _bystander_cg: bystander_cg,
        bystander,
    })
}

/// The job: 10 MiB/s up to 64 MiB, 57 MiB in swap at the end (89%), never all of it, so
/// no real OOM comes.
fn job_spec() -> HogSpec {
    HogSpec::growing(4).step_kib(256).delay_us(25_000).up_to(64)
}

fn run() -> Result<()> {
    let (zram, mut pd) = start("swap-limit", &[])?;

    let filled = fill_memory()?;
    let Layout {
        swap,
        _service_cg,
        mut service,
        _bystander_cg,
        mut bystander,
    } = layout()?;
    let before = swap.events()?;
    let mark = pd.mark();
    let spec = job_spec();
    let started = Instant::now();
    let job_cg = swap.child("job")?;
    let mut job = Hog::start(&job_cg, &spec, pdutil::READY_TIMEOUT)?;

    // Episode 1: the bystander, lowest priority, dies, however little swap it holds.
    let first = wait_decision(&mut pd, &swap)?;
    let took = started.elapsed();
    let trigger = first.get("trigger")?;
    ensure!(
        trigger.starts_with("swap ") && trigger.ends_with(&format!("limit {LIMIT}")),
        "the decision's trigger is not the swap limit: {first}"
    );
    first.expect(&[
        ("scope", "global"),
        ("victim_cgroup", "/swap/bystander"),
        ("pid", &bystander.pid().to_string()),
        ("priority", "10"),
        ("outcome", "killed"),
    ])?;
    bystander.wait_killed(Duration::from_secs(10))?;

    // Back-off: the job goes on swapping, the limit holds, nothing more is declared.
    let stall0 = system_stall_us()?;
    let watched = Instant::now();
    pd.wait_line(
        Duration::from_secs(30),
        "the end of the swap episode",
        |l| l.message.starts_with("swap limit relieved"),
    )?;
    let watched = watched.elapsed();
    let stalled = Duration::from_micros(system_stall_us()? - stall0);
    let m = meminfo()?;
    let used = |free: u64, total: u64| 100 * (total - free) / total;
    ensure!(
        used(m.swap_free, m.swap_total) > 50 && used(m.mem_available, m.mem_total) > 50,
        "the limit no longer holds after the job stopped ({m:?}): this run cannot show the \
         back-off"
    );
    ensure!(
        stalled > Duration::from_millis(200),
        "the system stalled only {stalled:?} in the {watched:?} after the first kill: the \
         episode did not go on, so this run cannot show the back-off"
    );
    let decisions = pd.decisions_since(mark)?;
    ensure!(
        decisions.len() == 1,
        "{} decisions in one swap episode, expected 1: {}",
        decisions.len(),
        pdutil::one_per_line(&decisions)
    );
    expect_alive(&mut job, "job (the episode's one kill was the bystander)")?;

    // Idle, the limit holding: nothing wakes policyd.
    let pid = u32::try_from(pd.pid()).context("policyd's pid")?;
    let u0 = proc_usage(pid)?;
    sleep(IDLE);
    let u1 = proc_usage(pid)?;
    let wakeups = u1.voluntary_switches - u0.voluntary_switches;
    ensure!(
        wakeups == 0,
        "policyd woke {wakeups} times in {IDLE:?} of idle (swap {}% and memory {}% used)",
        used(m.swap_free, m.swap_total),
        used(m.mem_available, m.mem_total)
    );

    // Episode 2: a new stall, the limit still holds: the job ranks lowest, whoever
    // stalls.
    let mark2 = pd.mark();
    let late_spec = HogSpec::growing(1).step_kib(256).delay_us(20_000).up_to(12);
    let late_cg = swap.child("late")?;
    let mut late = Hog::start(&late_cg, &late_spec, pdutil::READY_TIMEOUT)?;
    let second = wait_decision(&mut pd, &swap)?;
    ensure!(
        second.get("trigger")?.starts_with("swap "),
        "the second decision's trigger is not the swap limit: {second}"
    );
    second.expect(&[
        ("victim_cgroup", "/swap/job"),
        ("pid", &job.pid().to_string()),
        ("outcome", "killed"),
    ])?;
    job.wait_killed(Duration::from_secs(10))?;
    expect_alive(&mut service, "service (priority 500)")?;
    expect_alive(
        &mut late,
        "late task (priority 30: it stalled, the job ranked lower)",
    )?;
    ensure!(
        pd.decisions_since(mark2)?.len() == 1,
        "more than one decision in the second episode"
    );
    let after = swap.events()?;
    ensure!(
        after.oom_kill - before.oom_kill == 2 && after.oom == before.oom,
        "/swap memory.events: oom {} -> {}, oom_kill {} -> {}; expected +0 (system-wide \
         OOMs) and +2",
        before.oom,
        after.oom,
        before.oom_kill,
        after.oom_kill
    );
    pd.stop()?;
    std::fs::remove_file(format!("{FILL_DIR}/fill"))?;
    println!(
        "swap limit {LIMIT} of {} MiB zram ({filled} MiB in ramfs): first decision {:.1} s \
         after the job started: {first}; back-off: 1 decision while the system stalled {:.2} s \
         in {:.1} s; idle with the limit holding: {wakeups} wake-ups in {IDLE:?}; second \
         episode killed the job, not the late task that stalled",
        zram.mib(),
        took.as_secs_f64(),
        stalled.as_secs_f64(),
        watched.as_secs_f64()
    );
    Ok(())
}

pub fn dry_run() -> Scenario {
    Scenario::new("policyd-swap-dry-run", run_dry_run)
        .needs_policyd()
        .timeout_s(150)
}

/// `policyd-swap-dry-run`: the first episode of `policyd-swap-limit` under `--dry-run`:
/// one line says the OOM policyd would declare and the bystander the policy would kill;
/// nothing is declared and nobody dies.
fn run_dry_run() -> Result<()> {
    let (_zram, mut pd) = start("swap-dry-run", &["--dry-run"])?;
    fill_memory()?;
    let Layout {
        swap,
        _service_cg,
        mut service,
        _bystander_cg,
        mut bystander,
    } = layout()?;
    let before = swap.events()?;
    let mark = pd.mark();
    let spec = job_spec();
    let job_cg = swap.child("job")?;
    let mut job = Hog::start(&job_cg, &spec, pdutil::READY_TIMEOUT)?;

    let line = pd.wait_line(DECLARE_TIMEOUT, "the dry run's swap line", |l| {
        l.is("INFO", "dry run: swap limit held")
    })?;
    line.expect("dry run", &[("cgroup", "/")])?;
    let limit = line.field("limit").unwrap_or_default();
    ensure!(
        limit.starts_with("swap ") && limit.ends_with(&format!("limit {LIMIT}")),
        "the dry run's limit is not the swap limit: {line}"
    );
    let said = format!("kill one task in /swap/bystander: pid {}", bystander.pid());
    ensure!(
        line.message.contains("would declare an OOM (system-wide)") && line.message.contains(&said),
        "the dry run does not say it would declare a system-wide OOM and {said}: {line}"
    );
    // The job grows on into swap: still no decision, nobody killed.
    sleep(Duration::from_secs(4));
    ensure!(
        pd.decisions_since(mark)?.is_empty(),
        "a dry run made decisions: {}",
        pdutil::one_per_line(&pd.decisions_since(mark)?)
    );
    expect_alive(&mut bystander, "bystander (dry run)")?;
    expect_alive(&mut job, "job (dry run)")?;
    expect_alive(&mut service, "service")?;
    let after = swap.events()?;
    ensure!(
        after.oom == before.oom && after.oom_kill == before.oom_kill,
        "a dry run declared an OOM: /swap memory.events oom {} -> {}, oom_kill {} -> {}",
        before.oom,
        after.oom,
        before.oom_kill,
        after.oom_kill
    );
    drop(job);
    pd.stop()?;
    std::fs::remove_file(format!("{FILL_DIR}/fill"))?;
    println!("{}", line.message);
    Ok(())
}
