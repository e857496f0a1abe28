//! Storm correctness: a valuable "service" holding half of the guest's RAM and a cheap
//! "hog" that allocates until something gives, under three contenders in the same boot:
//!
//! - kernel: no handler, the kernel's oom_badness() decides;
//! - earlyoom: Debian's earlyoom 1.7 as a user would run it,
//!   `earlyoom --prefer '^hog$' --avoid '^service$'` with its default thresholds,
//!   started before the storm and stopped after it;
//! - policyd: `policyd load priority` with the service's cgroup at priority 1000 and the
//!   hog's at 1.
//!
//! The service is the largest task, so the kernel's own choice is the service. Three
//! global storms (no memory.max anywhere): the hog touching 1 MiB after 1 MiB as fast as
//! it can ("fast"), with a pause after each MiB ("slow"), and mapping 16 MiB at a time
//! with MAP_POPULATE ("burst": the kernel faults the memory in, several times faster than
//! user space touching it under TCG, closer to how fast a storm grows on hardware relative
//! to a poller's interval). A fourth, "memcg", is the fast storm under a memory.max on the
//! cgroup holding both, one and a half times the service: the OOM of a container or a
//! systemd slice, which a MemAvailable poller never sees. Trials go round-robin over the
//! contenders so that a disturbance of the host hits them alike.
//!
//! Per trial: did the service survive, which processes died and who killed them, the time
//! from the hog's start to its death, and to recovery: the hog dead and the room back to
//! 90% of what it was before the storm (MemAvailable; for memcg, memory.max minus
//! memory.current).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest::bench::{
    self as bc, emit_env, kill_reap, meminfo_kib, parse_kill_line, start_hog, vmstat, Earlyoom,
    HogMode,
};
use crate::guest::pdutil::Policyd;
use crate::guest::util::{self, Cgroup, Kmsg};
use crate::guest::Scenario;
use crate::records::{self, Record, StormDone, StormSetup, StormTrial, StormVariant};

pub fn scenario() -> Scenario {
    Scenario::new("bench-storm", run)
        .mem_mb(384)
        .timeout_s(5400)
        .needs_policyd()
}

/// The service's share of MemTotal.
const SERVICE_SHARE: f64 = 0.50;
/// Pause of the slow hog after each MiB.
const SLOW_DELAY_US: u64 = 10_000;
/// What the burst hog maps (and the kernel faults in) per system call.
const BURST_CHUNK_MIB: usize = 16;

/// How the hog allocates.
#[derive(Clone, Copy, Debug)]
enum Storm {
    /// `guest hog --grow`: touch 1 MiB page by page, pause, repeat.
    Touch { delay_us: u64 },
    /// A forked hog mapping chunks with MAP_POPULATE (bench::fork_burst_hog).
    Populate { chunk_mib: usize },
}

/// Where the storm runs out of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The whole guest.
    Global,
    /// The cgroup holding service and hog, limited to MEMCG_LIMIT_SHARE of the service.
    Memcg,
}

/// memory.max of the memcg storm, relative to the service's size.
const MEMCG_LIMIT_SHARE: f64 = 1.5;

const VARIANTS: [(&str, Storm, Scope); 4] = [
    ("fast", Storm::Touch { delay_us: 0 }, Scope::Global),
    (
        "slow",
        Storm::Touch {
            delay_us: SLOW_DELAY_US,
        },
        Scope::Global,
    ),
    (
        "burst",
        Storm::Populate {
            chunk_mib: BURST_CHUNK_MIB,
        },
        Scope::Global,
    ),
    ("memcg", Storm::Touch { delay_us: 0 }, Scope::Memcg),
];

impl Storm {
    fn describe(self) -> String {
        match self {
            Storm::Touch { delay_us: 0 } => {
                "touches 1 MiB after 1 MiB from user space, no pause".into()
            }
            Storm::Touch { delay_us } => format!(
                "touches 1 MiB from user space, then pauses {} ms",
                delay_us / 1000
            ),
            Storm::Populate { chunk_mib } => format!(
                "maps {chunk_mib} MiB at a time with MAP_POPULATE (the kernel faults it in)"
            ),
        }
    }

    fn start(self, cg: &Cgroup) -> Result<HogProc> {
        Ok(match self {
            Storm::Touch { delay_us } => {
                HogProc::Exec(start_hog("hog", cg, HogMode::Grow { delay_us })?)
            }
            Storm::Populate { chunk_mib } => {
                HogProc::Forked(bc::fork_burst_hog("hog", cg, chunk_mib)?)
            }
        })
    }
}

/// The hog of one trial.
enum HogProc {
    Exec(Child),
    Forked(bc::Forked),
}

impl HogProc {
    fn id(&self) -> u32 {
        match self {
            HogProc::Exec(c) => c.id(),
            HogProc::Forked(f) => f.id(),
        }
    }

    fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self {
            HogProc::Exec(c) => Ok(c.try_wait()?),
            HogProc::Forked(f) => f.try_wait(),
        }
    }

    fn kill(&mut self) {
        match self {
            HogProc::Exec(c) => kill_reap(c),
            HogProc::Forked(f) => f.kill_reap(),
        }
    }
}
/// A trial whose hog is not dead by then is recorded as a timeout.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(120);
/// After the hog died: how long memory may take to come back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// After recovery: how long we keep watching for late kills.
const LINGER: Duration = Duration::from_millis(1000);

const EARLYOOM_ARGS: &[&str] = &["--prefer", "^hog$", "--avoid", "^service$"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Kernel,
    Earlyoom,
    Policyd,
}

impl Contender {
    const ALL: [Contender; 3] = [Contender::Kernel, Contender::Earlyoom, Contender::Policyd];

    fn name(self) -> &'static str {
        match self {
            Contender::Kernel => "kernel",
            Contender::Earlyoom => "earlyoom",
            Contender::Policyd => "policyd",
        }
    }
}

struct Setup {
    /// Holds service_cg and hog_cg; the memcg storm limits it.
    parent: Cgroup,
    service_cg: Cgroup,
    hog_cg: Cgroup,
    config: PathBuf,
    service_mib: u64,
    service: Option<Child>,
    service_starts: u32,
}

fn run() -> Result<()> {
    emit_env("bench-storm")?;
    // The console stays quiet; OOM reports keep their task list (a user's default).
    bc::quiet_kernel(true)?;
    let quick = util::quick();
    // Quick: one storm of each kind per contender.
    let trials = if quick { 1 } else { 20 };

    let parent = Cgroup::create("bench-storm")?;
    let service_cg = parent.child("service")?;
    let hog_cg = parent.child("hog")?;
    let config = Path::new("/run/bench-storm.toml").to_path_buf();
    util::write_file(
        &config,
        format!(
            "policy = \"priority\"\ndefault_priority = 100\n\n\
             [[rule]]\ncgroup = \"{}\"\npriority = 1000\n\n\
             [[rule]]\ncgroup = \"{}\"\npriority = 1\n",
            service_cg.path(),
            hog_cg.path()
        ),
    )?;

    let total_kib = meminfo_kib("MemTotal")?;
    let service_mib = (total_kib as f64 * SERVICE_SHARE / 1024.0) as u64;
    let memcg_limit_mib = (service_mib as f64 * MEMCG_LIMIT_SHARE) as u64;
    let rates: Vec<f64> = VARIANTS
        .iter()
        .map(|(_, storm, _)| alloc_rate(&hog_cg, *storm))
        .collect::<Result<_>>()?;
    println!(
        "MemTotal {} MiB, service {service_mib} MiB, hogs allocate {rates:.0?} MiB/s",
        total_kib / 1024
    );

    let mut s = Setup {
        parent,
        service_cg,
        hog_cg,
        config,
        service_mib,
        service: None,
        service_starts: 0,
    };
    ensure_service(&mut s)?;
    thread::sleep(Duration::from_millis(500));
    let avail_with_service = meminfo_kib("MemAvailable")? / 1024;
    util::emit_json(&Record::StormSetup(StormSetup {
        mem_total_mib: total_kib / 1024,
        service_mib,
        mem_available_with_service_mib: avail_with_service,
        kernel_would_pick_service: avail_with_service < service_mib,
        hog_touch_rate_mib_s: rates[0],
        slow_delay_us: SLOW_DELAY_US,
        memcg_limit_mib,
        variants: VARIANTS
            .iter()
            .zip(&rates)
            .map(|((name, storm, scope), rate)| StormVariant {
                name: name.to_string(),
                hog: storm.describe(),
                scope: describe_scope(*scope, memcg_limit_mib),
                alloc_rate_mib_s: *rate,
            })
            .collect(),
        trials_per_contender: VARIANTS
            .iter()
            .map(|(name, _, _)| (name.to_string(), trials))
            .collect(),
        earlyoom_args: EARLYOOM_ARGS.iter().map(|a| a.to_string()).collect(),
    }));

    let started = Instant::now();
    for (variant, storm, scope) in VARIANTS {
        let limit = match scope {
            Scope::Global => "max".to_string(),
            Scope::Memcg => format!("{memcg_limit_mib}M"),
        };
        s.parent.set("memory.max", &limit)?;
        let mut by_contender: Vec<(Contender, Vec<StormTrial>)> =
            Contender::ALL.iter().map(|c| (*c, Vec::new())).collect();
        for trial in 0..trials {
            for (contender, out) in by_contender.iter_mut() {
                let rec = run_trial(&mut s, *contender, storm, scope).with_context(|| {
                    format!("{variant} storm, {} trial {trial}", contender.name())
                })?;
                println!(
                    "storm {variant} {} #{trial}: {} ({:.0} s in)",
                    contender.name(),
                    serde_json::to_string(&rec)?,
                    started.elapsed().as_secs_f64()
                );
                out.push(rec);
            }
        }
        for (contender, out) in by_contender {
            util::emit_json(&Record::Storm(records::Storm {
                variant: variant.to_string(),
                hog: storm.describe(),
                scope: describe_scope(scope, memcg_limit_mib),
                contender: contender.name().to_owned(),
                trials: out,
            }));
        }
    }
    s.parent.set("memory.max", "max")?;
    if let Some(mut svc) = s.service.take() {
        kill_reap(&mut svc);
    }
    util::emit_json(&Record::StormDone(StormDone {
        service_starts: s.service_starts,
    }));
    Ok(())
}

fn describe_scope(scope: Scope, memcg_limit_mib: u64) -> String {
    match scope {
        Scope::Global => "global OOM".into(),
        Scope::Memcg => {
            format!("memcg OOM, memory.max {memcg_limit_mib} MiB on the cgroup of service and hog")
        }
    }
}

/// The room the storm eats into, in KiB: MemAvailable for a global storm, what is left
/// under the limit for a memcg storm.
fn room_kib(s: &Setup, scope: Scope) -> Result<u64> {
    match scope {
        Scope::Global => meminfo_kib("MemAvailable"),
        Scope::Memcg => {
            let max = s.parent.read_u64("memory.max")?;
            let current = s.parent.read_u64("memory.current")?;
            Ok(max.saturating_sub(current) / 1024)
        }
    }
}

/// MiB/s at which a hog of `storm` allocates here: the time its VmRSS takes to reach
/// 64 MiB, once, from its start.
fn alloc_rate(cg: &Cgroup, storm: Storm) -> Result<f64> {
    let t = Instant::now();
    let mut hog = storm.start(cg)?;
    let deadline = t + Duration::from_secs(60);
    loop {
        let rss = bc::proc_usage(hog.id()).map(|u| u.rss_kib).unwrap_or(0);
        if rss >= 64 << 10 {
            break;
        }
        if Instant::now() >= deadline {
            hog.kill();
            bail!("a {storm:?} hog did not reach 64 MiB within 60 s");
        }
        thread::sleep(Duration::from_millis(2));
    }
    let rate = 64.0 / t.elapsed().as_secs_f64();
    hog.kill();
    Ok(rate)
}

/// The /proc/meminfo fields that say where memory is, in KiB.
fn meminfo_snapshot() -> Result<BTreeMap<String, Option<u64>>> {
    let text = util::read_file("/proc/meminfo")?;
    let mut m = BTreeMap::new();
    for key in [
        "MemFree",
        "MemAvailable",
        "AnonPages",
        "Shmem",
        "Slab",
        "KernelStack",
        "PageTables",
        "Percpu",
    ] {
        m.insert(key.into(), bc::status_field(&text, key));
    }
    Ok(m)
}

/// Starts the service if it is not running (it died in the previous trial).
fn ensure_service(s: &mut Setup) -> Result<()> {
    if let Some(svc) = s.service.as_mut() {
        if svc.try_wait()?.is_none() {
            return Ok(());
        }
    }
    s.service = Some(start_hog(
        "service",
        &s.service_cg,
        HogMode::Fixed(s.service_mib),
    )?);
    s.service_starts += 1;
    Ok(())
}

enum Running {
    None,
    Earlyoom(Earlyoom),
    Policyd(Policyd),
}

fn run_trial(
    s: &mut Setup,
    contender: Contender,
    storm: Storm,
    scope: Scope,
) -> Result<StormTrial> {
    ensure_service(s)?;
    let service_pid = s.service.as_ref().unwrap().id();

    let mut setup_s = 0.0;
    let mut running = match contender {
        Contender::Kernel => Running::None,
        Contender::Earlyoom => {
            let t = Instant::now();
            let e = Earlyoom::start(EARLYOOM_ARGS)?;
            setup_s = t.elapsed().as_secs_f64();
            Running::Earlyoom(e)
        }
        Contender::Policyd => {
            let p = Policyd::start(
                &["priority", "--config", &s.config.to_string_lossy()],
                false,
            )?;
            setup_s = p.attach_time().map_or(0.0, |t| t.as_secs_f64());
            Running::Policyd(p)
        }
    };
    // The baseline: the service and the contender running, the previous trial's memory
    // given back.
    thread::sleep(Duration::from_millis(300));
    let baseline_kib = room_kib(s, scope)?;
    let eo_from = match &running {
        Running::Earlyoom(e) => e.lines.len(),
        _ => 0,
    };
    let pd_from = match &mut running {
        Running::Policyd(p) => p.mark(),
        _ => 0,
    };

    let mut kmsg = Kmsg::mark()?;
    let oom_kills_before = vmstat("oom_kill")?;
    let t0 = Instant::now();
    let mut hog = storm.start(&s.hog_cg)?;
    let hog_pid = hog.id();

    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    let mut hog_status = None;
    let mut service_status = None;
    let mut hog_dead = None;
    let mut service_dead = None;
    let mut timed_out = false;
    let mut hog_rss_kib = 0;
    let mut last_sample = t0;
    // Until the hog is dead.
    while hog_status.is_none() {
        if let Some(st) = hog.try_wait()? {
            hog_status = Some(st);
            hog_dead = Some(Instant::now());
            break;
        }
        if last_sample.elapsed() >= Duration::from_millis(20) {
            last_sample = Instant::now();
            if let Ok(u) = bc::proc_usage(hog_pid) {
                hog_rss_kib = hog_rss_kib.max(u.rss_kib);
            }
        }
        if service_status.is_none() {
            if let Some(st) = s.service.as_mut().unwrap().try_wait()? {
                service_status = Some(st);
                service_dead = Some(Instant::now());
            }
        }
        if t0.elapsed() > TRIAL_TIMEOUT {
            timed_out = true;
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    if timed_out {
        hog.kill();
    }
    let available_at_hog_death_kib = room_kib(s, scope)?;
    // Where the memory is when the hog is gone (to explain slow recoveries).
    let at_death = meminfo_snapshot()?;
    let mut at_recovery = None;
    // Until memory is back.
    let mut recovered = None;
    if hog_dead.is_some() {
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        while Instant::now() < deadline {
            if room_kib(s, scope)? * 10 >= baseline_kib * 9 {
                recovered = Some(Instant::now());
                at_recovery = Some(meminfo_snapshot()?);
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
    // Late kills.
    let linger_end = Instant::now() + LINGER;
    while Instant::now() < linger_end {
        if service_status.is_none() {
            if let Some(st) = s.service.as_mut().unwrap().try_wait()? {
                service_status = Some(st);
                service_dead = Some(Instant::now());
            }
        }
        thread::sleep(Duration::from_millis(10));
    }

    let mut earlyoom_signals = Vec::new();
    let mut handler_us = Vec::new();
    let mut decisions = 0;
    match running {
        Running::None => {}
        Running::Earlyoom(e) => {
            earlyoom_signals = e.signalled(eo_from);
            e.stop();
        }
        Running::Policyd(mut p) => {
            for d in p.decisions_since(pd_from)? {
                decisions += 1;
                handler_us.push(d.handler_us);
            }
            p.stop()?;
        }
    }

    // Who died, and by whose hand.
    let log = kmsg.since()?;
    let kernel_kills: Vec<(String, u32, String)> =
        log.iter().filter_map(|l| parse_kill_line(l)).collect();
    let oom_kills = vmstat("oom_kill")? - oom_kills_before;
    let killer_of = |pid: u32, status: Option<std::process::ExitStatus>| -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let status = status?;
        if let Some((k, _, _)) = kernel_kills.iter().find(|(_, p, _)| *p == pid) {
            return Some(k.clone());
        }
        if earlyoom_signals.iter().any(|(_, p)| *p == pid) {
            return Some("earlyoom".into());
        }
        Some(match status.signal() {
            Some(sig) => format!("signal {sig}"),
            None => format!("exit {}", status.code().unwrap_or(-1)),
        })
    };
    let hog_killed_by = if timed_out {
        Some("timeout".to_string())
    } else {
        killer_of(hog_pid, hog_status)
    };
    let service_killed_by = killer_of(service_pid, service_status);
    let mut victims: Vec<String> = Vec::new();
    if service_status.is_some() {
        victims.push("service".into());
    }
    if hog_status.is_some() {
        victims.push("hog".into());
    }
    // Anything else the kernel killed (never expected: only the two are candidates).
    for (_, pid, comm) in &kernel_kills {
        if *pid != hog_pid && *pid != service_pid {
            victims.push(format!("{comm}({pid})"));
        }
    }

    Ok(StormTrial {
        service_survived: service_status.is_none(),
        service_killed_by,
        hog_killed_by,
        victims,
        kernel_oom_kills: oom_kills,
        earlyoom_signals: earlyoom_signals
            .iter()
            .map(|(s, p)| format!("{s} {p}"))
            .collect(),
        policyd_decisions: decisions,
        policyd_handler_us: handler_us,
        hog_dead_ms: hog_dead.map(ms),
        service_dead_ms: service_dead.map(ms),
        recovered_ms: recovered.map(ms),
        timed_out,
        baseline_available_mib: baseline_kib / 1024,
        available_at_hog_death_mib: available_at_hog_death_kib / 1024,
        meminfo_at_hog_death_kib: at_death,
        meminfo_at_recovery_kib: at_recovery,
        hog_peak_rss_mib: hog_rss_kib / 1024,
        contender_setup_s: setup_s,
    })
}
