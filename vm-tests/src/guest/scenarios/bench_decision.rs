//! Decision cost: how long out_of_memory() takes from entry to the victim being killed,
//! under the kernel's own killer and under each policyd policy, as the number of cgroups
//! and tasks in the OOMing memcg grows.
//!
//! The stopwatch is vm-tests/bpf/bench.bpf.c: a SEC("syscall") program that reads
//! bpf_ktime_get_ns(), calls bpf_out_of_memory(memcg of /bench-dc, 0,
//! BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK) and reads the clock again, so every contender is timed
//! by the same code around the whole of out_of_memory(): the handler (if attached) or
//! select_bad_process(), then oom_kill_process().
//!
//! Layout: /bench-dc/c0000 ... c{N-1}; M-1 sleeping processes (forked busybox subshells,
//! oom_score_adj 0, see bench::spawn_blockers) spread round-robin over them, and one
//! "victim" of VICTIM_MIB MiB in c0000. The victim is everyone's choice: the largest task
//! (kernel, badness), in the largest cgroup (largest), which the config gives priority 1
//! against the default 100 (priority). Each OOM kills it; it is started again before the
//! next one.
//!
//! Every OOM prints the kernel's OOM report (dump_header(): a stack dump and the memcg's
//! memory.stat) unless the report is rate limited (10 per 5 s). To time every contender
//! with the report, OOMs are spaced at least OOM_SPACING apart, and each sample records
//! whether the report was printed. oom_dump_tasks is 0 (no per-task list) and the console
//! log level 1, so printk formats into the log buffer but the serial console stays quiet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::guest::bench::{
    self as bc, emit_env, kill_reap, meminfo_kib, parse_kill_line, start_hog, vmstat, HogMode,
    KmsgTs, OomPhases, Stopwatch,
};
use crate::guest::pdutil::Policyd;
use crate::guest::util::{self, Cgroup};
use crate::guest::Scenario;
use crate::records::{DecisionSamples, DecisionSetup, DecisionSize, Record};
use crate::stats::percentile;

pub fn scenario() -> Scenario {
    Scenario::new("bench-decision", run)
        .mem_mb(2048)
        .timeout_s(7200)
        .needs_policyd()
}

const VICTIM_MIB: u64 = 8;
/// Keeps every OOM report out of the rate limit (10 per 5 s).
const OOM_SPACING: Duration = Duration::from_millis(550);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Kernel,
    Policy(&'static str),
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Kernel => "kernel",
            Contender::Policy(p) => p,
        }
    }
}

struct Plan {
    cgroups: &'static [usize],
    tasks: &'static [usize],
    /// When not empty: only these (cgroups, tasks) pairs of the grid.
    cgroups_tasks: &'static [(usize, usize)],
    contenders: Vec<Contender>,
    rounds: usize,
    per_block: usize,
}

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            cgroups: &[10, 100],
            tasks: &[100, 1000],
            contenders: vec![
                Contender::Kernel,
                Contender::Policy("priority"),
                Contender::Policy("largest"),
                Contender::Policy("badness"),
            ],
            rounds: 1,
            per_block: 2,
            cgroups_tasks: &[(10, 100), (100, 1000)],
        }
    } else {
        Plan {
            cgroups: &[10, 100, 1000],
            tasks: &[100, 1000, 10000],
            contenders: vec![
                Contender::Kernel,
                Contender::Policy("priority"),
                Contender::Policy("largest"),
                Contender::Policy("badness"),
                Contender::Policy("observe"),
            ],
            rounds: 4,
            per_block: 5,
            cgroups_tasks: &[],
        }
    }
}

fn run() -> Result<()> {
    emit_env("bench-decision")?;
    bc::quiet_kernel(false)?;
    // 10000 tasks and their parents need room below the kernel's defaults.
    util::write_file("/proc/sys/kernel/threads-max", "65536")?;
    util::write_file("/proc/sys/kernel/pid_max", "65536")?;
    let quick = util::quick();
    let plan = plan(quick);
    let watch = Stopwatch::load()?;
    let config = Path::new("/run/bench-decision.toml");
    util::write_file(
        config,
        "policy = \"priority\"\ndefault_priority = 100\n\n\
         [[rule]]\ncgroup = \"/bench-dc/c0000\"\npriority = 1\n",
    )?;
    util::emit_json(&Record::DecisionSetup(DecisionSetup {
        victim_mib: VICTIM_MIB,
        oom_spacing_ms: OOM_SPACING.as_millis() as u64,
        rounds: plan.rounds,
        per_block: plan.per_block,
        samples_per_contender: plan.rounds * plan.per_block,
        cgroups: plan.cgroups.to_vec(),
        tasks: plan.tasks.to_vec(),
        only: plan.cgroups_tasks.to_vec(),
        contenders: plan
            .contenders
            .iter()
            .map(|c| c.name().to_owned())
            .collect(),
    }));

    let started = Instant::now();
    for &ncg in plan.cgroups {
        let parent = Cgroup::create("bench-dc")?;
        let t = Instant::now();
        let cgs = bc::make_children(&parent, (0..ncg).map(|i| format!("c{i:04}")))?;
        println!("{ncg} cgroups in {:.1} s", t.elapsed().as_secs_f64());
        let mut spawners: Vec<Child> = Vec::new();
        let mut placed = vec![0usize; ncg];
        let mut have = 0usize;
        for &ntasks in plan.tasks {
            if !plan.cgroups_tasks.is_empty() && !plan.cgroups_tasks.contains(&(ncg, ntasks)) {
                continue;
            }
            // ntasks - 1 sleepers and the victim.
            let want = ntasks - 1;
            let before_kib = meminfo_kib("MemAvailable")?;
            let t = Instant::now();
            let added = want - have;
            add_sleepers(&cgs, &mut placed, &mut spawners, added)?;
            have = want;
            let spawn_s = t.elapsed().as_secs_f64();
            thread::sleep(Duration::from_millis(500));
            let after_kib = meminfo_kib("MemAvailable")?;
            let in_scope = parent.read_u64("pids.current")?;
            println!(
                "{ncg} cgroups, {ntasks} tasks: {in_scope} in scope, spawned in {spawn_s:.1} s, \
                 MemAvailable {} MiB ({:.0} s in)",
                after_kib / 1024,
                started.elapsed().as_secs_f64()
            );
            let measured = measure(&watch, &plan, &parent, &cgs[0], config)
                .with_context(|| format!("{ncg} cgroups, {ntasks} tasks"))?;
            util::emit_json(&Record::Decision(DecisionSize {
                cgroups: ncg,
                tasks: ntasks,
                results: measured.results,
                policyd_start_s: measured.policyd_start_s,
                problems: measured.problems,
                sleepers_in_scope: in_scope,
                spawn_s,
                added_tasks: added,
                mem_per_added_task_kib: before_kib.saturating_sub(after_kib) as f64
                    / added.max(1) as f64,
                mem_available_mib: after_kib / 1024,
            }));
        }
        bc::kill_in_batches(&cgs.iter().collect::<Vec<_>>(), 300)?;
        for mut s in spawners {
            kill_reap(&mut s);
        }
        drop(cgs);
        parent.remove()?;
    }
    Ok(())
}

/// Adds `count` sleepers, round-robin over `cgs` continuing from `placed`.
fn add_sleepers(
    cgs: &[Cgroup],
    placed: &mut [usize],
    spawners: &mut Vec<Child>,
    count: usize,
) -> Result<()> {
    let n = cgs.len();
    let total: usize = placed.iter().sum();
    let mut add = vec![0usize; n];
    for j in total..total + count {
        add[j % n] += 1;
    }
    let groups: Vec<(PathBuf, usize)> = cgs
        .iter()
        .zip(&add)
        .map(|(cg, k)| (cg.dir().to_path_buf(), *k))
        .collect();
    spawners.push(bc::spawn_blockers(&groups)?);
    for (p, k) in placed.iter_mut().zip(add) {
        *p += k;
    }
    Ok(())
}

/// One sample: one declared OOM.
struct Sample {
    ns: u64,
    phases: OomPhases,
    handler_us: Option<u64>,
    dumped: bool,
    ok: bool,
}

/// What one grid point measured, per contender.
struct Measured {
    results: BTreeMap<String, DecisionSamples>,
    policyd_start_s: Vec<f64>,
    problems: Vec<String>,
}

fn measure(
    watch: &Stopwatch,
    plan: &Plan,
    scope: &Cgroup,
    victim_cg: &Cgroup,
    config: &Path,
) -> Result<Measured> {
    let mut samples: Vec<(Contender, Vec<Sample>)> =
        plan.contenders.iter().map(|c| (*c, Vec::new())).collect();
    let mut policyd_start_s = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut last_oom = Instant::now() - OOM_SPACING;
    let n_contenders = samples.len();
    for round in 0..plan.rounds {
        // Each round starts with the next contender: none is always first after a change.
        for k in 0..n_contenders {
            let (contender, out) = &mut samples[(round + k) % n_contenders];
            let mut daemon = match contender {
                Contender::Kernel => None,
                Contender::Policy(p) => {
                    let d = Policyd::start(&[p, "--config", &config.to_string_lossy()], false)?;
                    policyd_start_s.push(d.attach_time().map_or(0.0, |t| t.as_secs_f64()));
                    Some(d)
                }
            };
            let from = daemon.as_mut().map_or(0, Policyd::mark);
            // One warm-up OOM per block, not recorded: the first OOM after a change
            // (new tasks, a new handler) runs on cold caches.
            for i in 0..=plan.per_block {
                let warmup = i == 0;
                let mut victim = start_hog("victim", victim_cg, HogMode::Fixed(VICTIM_MIB))?;
                let vpid = victim.id();
                let wait = OOM_SPACING.saturating_sub(last_oom.elapsed());
                thread::sleep(wait);
                let kills = vmstat("oom_kill")?;
                let mut kmsg = KmsgTs::mark()?;
                last_oom = Instant::now();
                let t = watch.oom(scope)?;
                let st = bc::wait_exit(&mut victim, Duration::from_secs(20))?;
                let log = kmsg.since()?;
                let phases = OomPhases::from_log(&log, &t);
                let dumped = log.iter().any(|r| r.text.contains("invoked oom-killer"));
                let killed: Vec<(String, u32, String)> = log
                    .iter()
                    .filter_map(|r| parse_kill_line(&r.text))
                    .collect();
                let kill_delta = vmstat("oom_kill")? - kills;
                let expect_killer = match contender {
                    Contender::Kernel | Contender::Policy("observe") => "kernel",
                    _ => "policyd",
                };
                let ok = st.is_some()
                    && t.ret == 1
                    && kill_delta == 1
                    && killed.len() == 1
                    && killed[0].1 == vpid
                    && killed[0].0.starts_with(expect_killer);
                if !ok {
                    problems.push(format!(
                        "{} round {round} #{i}: ret {} oom_kill +{kill_delta}, victim {vpid} {}, \
                         kills {killed:?}",
                        contender.name(),
                        t.ret,
                        if st.is_some() { "dead" } else { "alive" }
                    ));
                    println!("PROBLEM {}", problems.last().unwrap());
                }
                kill_reap(&mut victim);
                if warmup {
                    continue;
                }
                out.push(Sample {
                    ns: t.ns,
                    phases,
                    handler_us: None,
                    dumped,
                    ok,
                });
            }
            if let Some(mut d) = daemon {
                // Each OOM gives one decision line; attach its handler time to the sample
                // (the first line is the warm-up's).
                let n = plan.per_block;
                d.wait_decisions(from, n + 1, Duration::from_secs(20));
                let times: Vec<Option<u64>> = d
                    .decisions_since(from)?
                    .iter()
                    .skip(1)
                    .map(|d| Some(d.handler_us))
                    .collect();
                if times.len() != n {
                    problems.push(format!(
                        "{}: {} decision lines for {n} OOMs",
                        contender.name(),
                        times.len()
                    ));
                }
                let first = out.len() - n;
                for (s, us) in out[first..].iter_mut().zip(times) {
                    s.handler_us = us;
                }
                d.stop()?;
            }
        }
    }
    let mut results = BTreeMap::new();
    for (c, v) in &samples {
        results.insert(
            c.name().to_string(),
            DecisionSamples {
                oom_ns: v.iter().map(|s| s.ns).collect(),
                to_kill_ns: v.iter().map(|s| s.phases.killed_ns).collect(),
                report_start_ns: v.iter().map(|s| s.phases.report_start_ns).collect(),
                report_ns: v.iter().map(|s| s.phases.report_ns()).collect(),
                handler_us: v.iter().map(|s| s.handler_us).collect(),
                report_printed: v.iter().map(|s| s.dumped).collect(),
                ok: v.iter().map(|s| s.ok).collect(),
            },
        );
        let ms: Vec<f64> = v.iter().map(|s| s.ns as f64 / 1e6).collect();
        let kill: Vec<f64> = v
            .iter()
            .filter_map(|s| s.phases.killed_ns)
            .map(|n| n as f64 / 1e6)
            .collect();
        let report: Vec<f64> = v
            .iter()
            .filter_map(|s| s.phases.report_ns())
            .map(|n| n as f64 / 1e6)
            .collect();
        let ms_at = |v: &[f64], p: f64| percentile(v, p).map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "  {:>8}: median {} ms (p10 {}, p90 {}), to kill {}, report {}, {} samples",
            c.name(),
            ms_at(&ms, 50.0),
            ms_at(&ms, 10.0),
            ms_at(&ms, 90.0),
            ms_at(&kill, 50.0),
            ms_at(&report, 50.0),
            ms.len()
        );
    }
    ensure!(
        samples.iter().all(|(_, v)| !v.is_empty()),
        "no samples taken"
    );
    Ok(Measured {
        results,
        policyd_start_s,
        problems,
    })
}
