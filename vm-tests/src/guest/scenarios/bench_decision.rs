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
//! Layout: /bench-dc/c0000 ... c{N-1}; M-1 sleeping processes (clone(CLONE_VM) children
//! of a small process, oom_score_adj 0, see bench::spawn_sleepers) spread round-robin over
//! them, and one "victim" of VICTIM_MIB MiB in c0000. The victim is everyone's choice: the largest task
//! (kernel, badness), in the largest cgroup (largest), which the config gives priority 1
//! against the default 100 (priority). Each OOM kills it; it is started again before the
//! next one. At 10,000 cgroups a second stopwatch declares a global OOM (the root's
//! handler, `for_each_process()` for the kernel) in the same blocks, alternating with the
//! memcg OOMs: the victim is then the largest task and cgroup of the whole guest.
//!
//! `vmtest_decision_only=10000x10000,10000x50000` on the kernel command line (the host's
//! VMTEST_DECISION_ONLY) measures only those sizes of the plan.
//!
//! Every OOM prints the kernel's OOM report (dump_header(): a stack dump and the memcg's
//! memory.stat) unless the report is rate limited (10 per 5 s). To time every contender
//! with the report, OOMs are spaced at least OOM_SPACING apart, and each sample records
//! whether the report was printed. oom_dump_tasks is 0 (no per-task list) and the console
//! log level 1, so printk formats into the log buffer but the serial console stays quiet.
//!
//! Under TCG both vCPUs run in one host thread. A kill wakes its victim, and the memcg's
//! OOM event a kworker, often on the other vCPU; with a host thread per vCPU that IPI
//! could hold the OOMing vCPU up to a timer tick (see Scenario::one_tcg_thread), in
//! about half the 10 ms OOMs. Real hardware delivers it in a microsecond.

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
        // 50,000 sleepers take about 1.5 GiB of kernel memory.
        .mem_mb(4096)
        .timeout_s(10800)
        .needs_policyd()
        // See the module's comment.
        .one_tcg_thread()
}

const VICTIM_MIB: u64 = 8;
/// Keeps every OOM report out of the rate limit (10 per 5 s).
const OOM_SPACING: Duration = Duration::from_millis(550);
/// policyd attaches in about 1 s at 10,000 cgroups under TCG; room for a loaded host.
const START_TIMEOUT: Duration = Duration::from_secs(600);

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
    cgroups_tasks: Vec<(usize, usize)>,
    /// Sizes measured under a global OOM too, both scopes in `global_rounds` rounds (fewer
    /// than `rounds`: the kernel's own OOMs there take up to a second each).
    global: &'static [(usize, usize)],
    global_rounds: usize,
    contenders: Vec<Contender>,
    rounds: usize,
    per_block: usize,
}

impl Plan {
    fn wants(&self, cgroups: usize, tasks: usize) -> bool {
        self.cgroups_tasks.is_empty() || self.cgroups_tasks.contains(&(cgroups, tasks))
    }

    fn scopes(&self, cgroups: usize, tasks: usize) -> (&'static [Scope], usize) {
        if self.global.contains(&(cgroups, tasks)) {
            (&[Scope::Memcg, Scope::Global], self.global_rounds)
        } else {
            (&[Scope::Memcg], self.rounds)
        }
    }

    /// Keeps only the sizes `only` names ("CGROUPSxTASKS,..."), each of which must be one
    /// of the plan's.
    fn restrict(&mut self, only: &str) -> Result<()> {
        let mut keep = Vec::new();
        for item in only.split(',') {
            let arg = crate::protocol::DECISION_ONLY_ARG;
            let size = item
                .split_once('x')
                .and_then(|(c, t)| Some((c.parse().ok()?, t.parse().ok()?)))
                .with_context(|| {
                    format!("{arg}{only}: {item:?} is not CGROUPSxTASKS (e.g. 10000x50000)")
                })?;
            let in_grid = self.cgroups.contains(&size.0) && self.tasks.contains(&size.1);
            ensure!(
                in_grid && self.wants(size.0, size.1),
                "{arg}{only}: {}x{} is not a size of this plan",
                size.0,
                size.1
            );
            keep.push(size);
        }
        self.cgroups_tasks = keep;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Memcg,
    Global,
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
            cgroups_tasks: vec![(10, 100), (100, 1000)],
            global: &[],
            global_rounds: 1,
        }
    } else {
        Plan {
            cgroups: &[10, 100, 1000, 10000],
            tasks: &[100, 1000, 10000, 50000],
            contenders: vec![
                Contender::Kernel,
                Contender::Policy("priority"),
                Contender::Policy("largest"),
                Contender::Policy("badness"),
                Contender::Policy("observe"),
            ],
            rounds: 4,
            per_block: 5,
            cgroups_tasks: vec![
                (10, 100),
                (10, 1000),
                (10, 10000),
                (100, 100),
                (100, 1000),
                (100, 10000),
                (1000, 100),
                (1000, 1000),
                (1000, 10000),
                (10000, 10000),
                (10000, 50000),
            ],
            global: &[(10000, 10000), (10000, 50000)],
            global_rounds: 3,
        }
    }
}

fn run() -> Result<()> {
    emit_env("bench-decision")?;
    bc::quiet_kernel(false)?;
    // 50,000 sleepers need room above the kernel's defaults (32768 pids; threads-max
    // from the guest's RAM).
    util::write_file("/proc/sys/kernel/threads-max", "131072")?;
    util::write_file("/proc/sys/kernel/pid_max", "131072")?;
    let quick = util::quick();
    let mut plan = plan(quick);
    let cmdline = util::read_file("/proc/cmdline")?;
    if let Some(only) = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix(crate::protocol::DECISION_ONLY_ARG))
    {
        plan.restrict(only)?;
        println!("only the sizes {only}");
    }
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
        only: plan.cgroups_tasks.clone(),
        global: plan.global.to_vec(),
        global_rounds: plan.global_rounds,
        contenders: plan
            .contenders
            .iter()
            .map(|c| c.name().to_owned())
            .collect(),
    }));

    let started = Instant::now();
    for &ncg in plan.cgroups {
        if !plan.tasks.iter().any(|&t| plan.wants(ncg, t)) {
            continue;
        }
        let parent = Cgroup::create("bench-dc")?;
        let t = Instant::now();
        let cgs = bc::make_children(&parent, (0..ncg).map(|i| format!("c{i:04}")))?;
        println!("{ncg} cgroups in {:.1} s", t.elapsed().as_secs_f64());
        let mut spawners: Vec<Child> = Vec::new();
        let mut placed = vec![0usize; ncg];
        let mut have = 0usize;
        for &ntasks in plan.tasks {
            if !plan.wants(ncg, ntasks) {
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
            let (scopes, rounds) = plan.scopes(ncg, ntasks);
            let measured = measure(&watch, &plan, scopes, rounds, &parent, &cgs[0], config)
                .with_context(|| format!("{ncg} cgroups, {ntasks} tasks"))?;
            for (scope, m) in scopes.iter().zip(measured) {
                util::emit_json(&Record::Decision(DecisionSize {
                    cgroups: ncg,
                    tasks: ntasks,
                    global: *scope == Scope::Global,
                    rounds,
                    results: m.results,
                    policyd_start_s: m.policyd_start_s,
                    problems: m.problems,
                    sleepers_in_scope: in_scope,
                    spawn_s,
                    added_tasks: added,
                    mem_per_added_task_kib: before_kib.saturating_sub(after_kib) as f64
                        / added.max(1) as f64,
                    mem_available_mib: after_kib / 1024,
                }));
            }
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
    spawners.extend(bc::spawn_sleepers(&groups)?);
    for (p, k) in placed.iter_mut().zip(add) {
        *p += k;
    }
    Ok(())
}

/// One sample: one declared OOM.
struct Sample {
    ns: u64,
    /// From the call to the victim marked, on the stopwatch's clock.
    marked_ns: Option<u64>,
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

/// Measures `scopes` in the same blocks: each of a block's OOMs declares them in turn.
fn measure(
    watch: &Stopwatch,
    plan: &Plan,
    scopes: &[Scope],
    rounds: usize,
    memcg_scope: &Cgroup,
    victim_cg: &Cgroup,
    config: &Path,
) -> Result<Vec<Measured>> {
    let root = Cgroup::root();
    // samples[scope][contender]
    let mut samples: Vec<Vec<(Contender, Vec<Sample>)>> = scopes
        .iter()
        .map(|_| plan.contenders.iter().map(|c| (*c, Vec::new())).collect())
        .collect();
    let mut policyd_start_s = Vec::new();
    let mut problems: Vec<Vec<String>> = scopes.iter().map(|_| Vec::new()).collect();
    let mut last_oom = Instant::now() - OOM_SPACING;
    let n_contenders = plan.contenders.len();
    for round in 0..rounds {
        // Each round starts with the next contender: none is always first after a change.
        for k in 0..n_contenders {
            let ci = (round + k) % n_contenders;
            let contender = plan.contenders[ci];
            let mut daemon = match contender {
                Contender::Kernel => None,
                Contender::Policy(p) => {
                    let d = Policyd::start_within(
                        &[p, "--config", &config.to_string_lossy()],
                        false,
                        START_TIMEOUT,
                    )?;
                    policyd_start_s.push(d.attach_time().map_or(0.0, |t| t.as_secs_f64()));
                    Some(d)
                }
            };
            let from = daemon.as_mut().map_or(0, Policyd::mark);
            // Which scope's sample each OOM gave, in order (None: a warm-up).
            let mut taken: Vec<(usize, Option<usize>)> = Vec::new();
            // One warm-up OOM per block and scope, not recorded: the first OOM after a
            // change (new tasks, a new handler) runs on cold caches.
            for i in 0..=plan.per_block {
                for (si, scope) in scopes.iter().enumerate() {
                    let warmup = i == 0;
                    let mut victim = start_hog("victim", victim_cg, HogMode::Fixed(VICTIM_MIB))?;
                    let vpid = victim.id();
                    let wait = OOM_SPACING.saturating_sub(last_oom.elapsed());
                    thread::sleep(wait);
                    let kills = vmstat("oom_kill")?;
                    let mut kmsg = KmsgTs::mark()?;
                    last_oom = Instant::now();
                    let t = watch.oom(match scope {
                        Scope::Memcg => memcg_scope,
                        Scope::Global => &root,
                    })?;
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
                        && t.marked_ns.is_some()
                        && kill_delta == 1
                        && killed.len() == 1
                        && killed[0].1 == vpid
                        && killed[0].0.starts_with(expect_killer);
                    if !ok {
                        problems[si].push(format!(
                            "{} {scope:?} round {round} #{i}: ret {} oom_kill +{kill_delta}, \
                             victim {vpid} {}{}, kills {killed:?}",
                            contender.name(),
                            t.ret,
                            if t.marked_ns.is_some() {
                                ""
                            } else {
                                " (no victim marked)"
                            },
                            if st.is_some() { "dead" } else { "alive" }
                        ));
                        println!("PROBLEM {}", problems[si].last().unwrap());
                    }
                    kill_reap(&mut victim);
                    if warmup {
                        taken.push((si, None));
                        continue;
                    }
                    let out = &mut samples[si][ci].1;
                    taken.push((si, Some(out.len())));
                    out.push(Sample {
                        ns: t.ns,
                        marked_ns: t.marked_ns,
                        phases,
                        handler_us: None,
                        dumped,
                        ok,
                    });
                }
            }
            if let Some(mut d) = daemon {
                // Each OOM gives one decision line, in order: attach its handler time to
                // the OOM's sample.
                d.wait_decisions(from, taken.len(), Duration::from_secs(20));
                let lines = d.decisions_since(from)?;
                if lines.len() != taken.len() {
                    problems[0].push(format!(
                        "{}: {} decision lines for {} OOMs",
                        contender.name(),
                        lines.len(),
                        taken.len()
                    ));
                }
                for (line, (si, at)) in lines.iter().zip(&taken) {
                    if let Some(j) = at {
                        samples[*si][ci].1[*j].handler_us = Some(line.handler_us);
                    }
                }
                d.stop()?;
            }
        }
    }
    scopes
        .iter()
        .zip(samples)
        .zip(problems)
        .map(|((scope, samples), problems)| {
            println!("  {scope:?} OOM:");
            summarize(samples, policyd_start_s.clone(), problems)
        })
        .collect()
}

fn summarize(
    samples: Vec<(Contender, Vec<Sample>)>,
    policyd_start_s: Vec<f64>,
    problems: Vec<String>,
) -> Result<Measured> {
    let mut results = BTreeMap::new();
    for (c, v) in &samples {
        results.insert(
            c.name().to_string(),
            DecisionSamples {
                oom_ns: v.iter().map(|s| s.ns).collect(),
                to_kill_ns: v.iter().map(|s| s.marked_ns).collect(),
                kill_line_ns: v.iter().map(|s| s.phases.kill_line_ns).collect(),
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
            .filter_map(|s| s.marked_ns)
            .map(|n| n as f64 / 1e6)
            .collect();
        let report: Vec<f64> = v
            .iter()
            .filter_map(|s| s.phases.report_ns())
            .map(|n| n as f64 / 1e6)
            .collect();
        let handler: Vec<f64> = v
            .iter()
            .filter_map(|s| s.handler_us)
            .map(|us| us as f64 / 1e3)
            .collect();
        let ms_at = |v: &[f64], p: f64| percentile(v, p).map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "  {:>8}: median {} ms (p10 {}, p90 {}), to kill {}, report {}, handler {}, \
             {} samples",
            c.name(),
            ms_at(&ms, 50.0),
            ms_at(&ms, 10.0),
            ms_at(&ms, 90.0),
            ms_at(&kill, 50.0),
            ms_at(&report, 50.0),
            ms_at(&handler, 50.0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keeps_named_sizes_of_the_plan() {
        let mut p = plan(false);
        p.restrict("10000x10000,10000x50000").unwrap();
        assert_eq!(p.cgroups_tasks, vec![(10000, 10000), (10000, 50000)]);
        assert!(!p.wants(1000, 10000));
        assert_eq!(p.scopes(10000, 50000).0, &[Scope::Memcg, Scope::Global]);
        assert_eq!(p.scopes(10, 100), (&[Scope::Memcg][..], p.rounds));
    }

    #[test]
    fn only_rejects_what_the_plan_does_not_measure() {
        let err = |only: &str| plan(false).restrict(only).unwrap_err().to_string();
        assert!(err("10000x100").contains("not a size of this plan"));
        assert!(err("10000*100").contains("is not CGROUPSxTASKS"));
        assert!(err("").contains("is not CGROUPSxTASKS"));
        // The quick plan has none of the large sizes.
        assert!(plan(true)
            .restrict("10000x10000")
            .unwrap_err()
            .to_string()
            .contains("not a size of this plan"));
    }
}
