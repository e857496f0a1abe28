//! What the tracer's culprit tracking costs the charge path: `guest churn` (map, touch and
//! unmap CHURN_MIB MiB of 4 KiB pages, half in the quick bench, ROUNDS times: a page fault
//! and a memcg charge per page, a page_counter_try_charge() per 64 pages) in
//! /bench-charge, with `policyd trace` running and without, in the same boot.
//!
//! Blocks alternate, the order flipping from pair to pair so that a drift of the host
//! favours neither side: each pair is one block without the tracer and one with it,
//! PER_BLOCK churns each. A pair's ratio is the median CPU time (utime + stime of the
//! churn: the fentry program runs in the charging task) with the tracer over the median
//! without; the spread of the pairs' ratios is the noise. The tracer's voluntary context
//! switches while the churns charge show that it stays asleep: sampling needs no wake-up.
//!
//! Under TCG on a shared host the pairs' ratios are noisy, so a last traced block measures
//! the cost directly, with kernel.bpf_stats_enabled on: the tracer's programs' run time and
//! run count (from /proc/<pid>/fdinfo) against the churns' CPU time in that block.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::guest::bench::{emit_env, proc_usage};
use crate::guest::pdutil::Policyd;
use crate::guest::util::{self, Cgroup, Churn};
use crate::guest::Scenario;
use crate::records::{ChargeCost, Record};
use crate::stats::percentile;

pub fn scenario() -> Scenario {
    Scenario::new("bench-charge", run)
        .mem_mb(1024)
        .timeout_s(3600)
        .needs_policyd()
}

const CHURN_MIB: u64 = 256;

fn median(v: &[u64]) -> f64 {
    let f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    percentile(&f, 50.0).unwrap_or(f64::NAN)
}

/// The run time (ns) and run count of every BPF program `pid` holds open.
fn bpf_prog_stats(pid: i32) -> Result<(u64, u64)> {
    let (mut ns, mut cnt) = (0, 0);
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = entry.with_context(|| format!("listing {dir}"))?.path();
        // Closed since listed: nothing to count.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            let (key, value) = line.split_once(':').unwrap_or((line, ""));
            let total = match key {
                "run_time_ns" => &mut ns,
                "run_cnt" => &mut cnt,
                _ => continue,
            };
            *total += value
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{}: {line:?}", path.display()))?;
        }
    }
    Ok((ns, cnt))
}

/// One traced block with kernel.bpf_stats_enabled on: what the tracer's programs ran.
fn stats_block(cg: &Cgroup, rec: &mut ChargeCost) -> Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let pd = Policyd::trace()?;
    util::write_file(STATS, "1")?;
    let before = bpf_prog_stats(pd.pid())?;
    for _ in 0..rec.per_block {
        rec.stats_cpu_ns += Churn::run(cg, rec.churn_mib, rec.rounds)?.cpu_ns;
    }
    let after = bpf_prog_stats(pd.pid())?;
    util::write_file(STATS, "0")?;
    pd.stop()?;
    rec.stats_pages = rec.churn_mib * 256 * u64::from(rec.rounds) * rec.per_block as u64;
    rec.bpf_run_ns = after.0 - before.0;
    rec.bpf_run_cnt = after.1 - before.1;
    ensure!(
        rec.bpf_run_cnt > 0,
        "the tracer's programs never ran while {} pages were charged",
        rec.stats_pages
    );
    Ok(())
}

fn run() -> Result<()> {
    emit_env("bench-charge")?;
    let quick = util::quick();
    let (pairs, per_block, rounds) = if quick { (4, 2, 1) } else { (16, 5, 2) };
    let churn_mib = if quick { CHURN_MIB / 2 } else { CHURN_MIB };
    let cg = Cgroup::create("bench-charge")?;
    // Warm-up: page tables, the allocator's free lists, this binary's pages.
    Churn::run(&cg, churn_mib, rounds)?;

    let mut rec = ChargeCost {
        churn_mib,
        rounds,
        pairs,
        per_block,
        ..ChargeCost::default()
    };
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for traced in order {
            let trace = if traced {
                let mut pd = Policyd::trace()?;
                let culprits = pd
                    .log()
                    .iter()
                    .find(|l| l.is("INFO", "tracing OOM kills"))
                    .and_then(|l| l.field("with_culprits"));
                ensure!(
                    culprits.as_deref() == Some("true"),
                    "policyd trace attached without its culprit tracking: {:?}",
                    pd.log()
                );
                // Past its first sleep in poll(2), which is no wake-up.
                std::thread::sleep(Duration::from_millis(500));
                Some(pd)
            } else {
                None
            };
            let before = match &trace {
                Some(pd) => Some((proc_usage(pd.pid() as u32)?, Instant::now())),
                None => None,
            };
            for _ in 0..per_block {
                let c = Churn::run(&cg, churn_mib, rounds)?;
                let (cpu, wall) = if traced {
                    (&mut rec.on_cpu_ns, &mut rec.on_wall_ns)
                } else {
                    (&mut rec.off_cpu_ns, &mut rec.off_wall_ns)
                };
                cpu.push(c.cpu_ns);
                wall.push(c.wall_ns);
                if traced {
                    on.push(c.cpu_ns)
                } else {
                    off.push(c.cpu_ns)
                }
            }
            if let (Some(pd), Some((usage, t))) = (trace, before) {
                let after = proc_usage(pd.pid() as u32)?;
                rec.tracer_wakeups
                    .push(after.voluntary_switches - usage.voluntary_switches);
                rec.tracer_block_s.push(t.elapsed().as_secs_f64());
                pd.stop()?;
            }
        }
        let ratio = median(&on) / median(&off);
        println!(
            "pair {pair}: traced/untraced CPU time {ratio:.4} ({:.0} / {:.0} ms)",
            median(&on) / 1e6,
            median(&off) / 1e6
        );
        rec.pair_ratios.push(ratio);
    }
    stats_block(&cg, &mut rec)?;
    let r = percentile(&rec.pair_ratios, 50.0).unwrap_or(f64::NAN);
    println!(
        "median ratio {r:.4}; tracer wake-ups while charging: {:?}; BPF: {} runs, {} ns, \
         {:.3}% of {} ms of churn CPU time",
        rec.tracer_wakeups,
        rec.bpf_run_cnt,
        rec.bpf_run_ns,
        rec.bpf_run_ns as f64 * 100.0 / rec.stats_cpu_ns.max(1) as f64,
        rec.stats_cpu_ns / 1_000_000
    );
    util::emit_json(&Record::ChargeCost(rec));
    cg.remove()?;
    Ok(())
}
