//! What the tracer's culprit tracking costs the charge path: `guest churn` (map, touch and
//! unmap CHURN_MIB MiB of 4 KiB pages, ROUNDS times: a page fault and a memcg charge per
//! page, a page_counter_try_charge() per 64 pages) in /bench-charge, with `policyd trace`
//! running and without, in the same boot.
//!
//! Blocks alternate, the order flipping from pair to pair so that a drift of the host
//! favours neither side: each pair is one block without the tracer and one with it,
//! PER_BLOCK churns each. A pair's ratio is the median CPU time (utime + stime of the
//! churn: the fentry program runs in the charging task) with the tracer over the median
//! without; the spread of the pairs' ratios is the noise. The tracer's voluntary context
//! switches while the churns charge show that it stays asleep: sampling needs no wake-up.

use std::time::Instant;

use anyhow::{ensure, Result};

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

fn run() -> Result<()> {
    emit_env("bench-charge")?;
    let quick = util::quick();
    let (pairs, per_block, rounds) = if quick { (6, 3, 4) } else { (12, 5, 8) };
    let cg = Cgroup::create("bench-charge")?;
    // Warm-up: page tables, the allocator's free lists, this binary's pages.
    Churn::run(&cg, CHURN_MIB, rounds)?;

    let mut rec = ChargeCost {
        churn_mib: CHURN_MIB,
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
                Some(pd)
            } else {
                None
            };
            let before = match &trace {
                Some(pd) => Some((proc_usage(pd.pid() as u32)?, Instant::now())),
                None => None,
            };
            for _ in 0..per_block {
                let c = Churn::run(&cg, CHURN_MIB, rounds)?;
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
    let r = percentile(&rec.pair_ratios, 50.0).unwrap_or(f64::NAN);
    println!(
        "median ratio {r:.4}; tracer wake-ups while charging: {:?}",
        rec.tracer_wakeups
    );
    util::emit_json(&Record::ChargeCost(rec));
    cg.remove()?;
    Ok(())
}
