//! policyd's own footprint: what `policyd load priority` costs the machine while it waits
//! (idle, 1000 populated cgroups) and while it handles a burst of 100 OOMs.
//!
//! Read from /proc/<pid>/{status,stat}: VmRSS and VmHWM, utime+stime, voluntary and
//! involuntary context switches. An idle daemon that never wakes up shows 0 voluntary
//! switches and 0 CPU ticks over the idle period.
//!
//! Layout: /bench-fp/g0..g9/c00..c99 (1000 leaf cgroups, one sleeping process each) and
//! /bench-fp/victims with 100 sleeping processes at priority 1. The burst is 100
//! bpf_out_of_memory() calls on /bench-fp, back to back, each followed by the wait for its
//! victim (one of the 100) to be reaped, so that every OOM has a victim to kill.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest::bench::{
    self as bc, clock_ticks, emit_env, kill_reap, proc_usage, spawn_blockers, ProcUsage, Stopwatch,
};
use crate::guest::pdutil::Policyd;
use crate::guest::util::{self, spawn_in, Cgroup};
use crate::guest::Scenario;
use crate::records::{Footprint, FootprintAfter, FootprintBurst, FootprintIdle, Record};

pub fn scenario() -> Scenario {
    Scenario::new("bench-footprint", run)
        .mem_mb(1024)
        .timeout_s(1200)
        .needs_policyd()
}

const GROUPS: usize = 10;
const LEAVES_PER_GROUP: usize = 100;
const BURST: usize = 100;

fn run() -> Result<()> {
    emit_env("bench-footprint")?;
    bc::quiet_kernel(false)?;
    let quick = util::quick();
    let idle = Duration::from_secs(if quick { 5 } else { 60 });
    let ticks = clock_ticks();
    let watch = Stopwatch::load()?;

    let parent = Cgroup::create("bench-fp")?;
    let t = Instant::now();
    let mut leaves = Vec::new();
    for group in bc::make_children(&parent, (0..GROUPS).map(|g| format!("g{g}")))? {
        leaves.extend(bc::make_children(
            &group,
            (0..LEAVES_PER_GROUP).map(|c| format!("c{c:02}")),
        )?);
    }
    let groups: Vec<(PathBuf, usize)> = leaves.iter().map(|c| (c.dir().to_path_buf(), 1)).collect();
    let shell = spawn_blockers(&groups)?;
    // The victims are our children, so that we reap each as it dies.
    let victims_cg = parent.child("victims")?;
    let mut victims: Vec<Child> = (0..BURST)
        .map(|_| {
            let mut cmd = Command::new("/bin/busybox");
            cmd.args(["sleep", "1000000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            spawn_in(&victims_cg, &mut cmd, Some(0))
        })
        .collect::<Result<_>>()?;
    let cgroups = GROUPS * LEAVES_PER_GROUP + GROUPS + 2;
    println!(
        "{cgroups} cgroups, {} processes in {:.1} s",
        groups.len() + victims.len(),
        t.elapsed().as_secs_f64()
    );

    let config = Path::new("/run/bench-footprint.toml");
    util::write_file(
        config,
        format!(
            "policy = \"priority\"\ndefault_priority = 100\n\n\
             [[rule]]\ncgroup = \"{}\"\npriority = 1\n",
            victims_cg.path()
        ),
    )?;
    let mut daemon = Policyd::start(&["priority", "--config", &config.to_string_lossy()], false)?;
    let pid = daemon.pid() as u32;
    thread::sleep(Duration::from_secs(2));

    // Idle.
    let u0 = proc_usage(pid)?;
    thread::sleep(idle);
    let u1 = proc_usage(pid)?;
    println!("idle {:?}: {u0:?} -> {u1:?}", idle);

    // Burst.
    let from = daemon.mark();
    let t = Instant::now();
    let mut oom_ns = Vec::new();
    let mut kills = 0;
    for i in 0..BURST {
        let r = watch.oom(&parent)?;
        oom_ns.push(r.ns);
        if r.ret != 1 {
            bail!(
                "OOM {i} of the burst freed nothing (bpf_out_of_memory returned {})",
                r.ret
            );
        }
        // Reap the victim before the next OOM, which would otherwise wait for it
        // (bpf_oom_await_victim) instead of killing.
        let deadline = Instant::now() + Duration::from_secs(20);
        'reap: loop {
            for j in 0..victims.len() {
                if victims[j].try_wait()?.is_some() {
                    // try_wait() reaped it.
                    #[allow(clippy::zombie_processes)]
                    let _reaped = victims.swap_remove(j);
                    kills += 1;
                    break 'reap;
                }
            }
            if Instant::now() >= deadline {
                bail!("OOM {i} of the burst: no victim died within 20 s");
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
    let burst_s = t.elapsed().as_secs_f64();
    let logged = daemon.wait_decisions(from, BURST, Duration::from_secs(60));
    let logged_s = t.elapsed().as_secs_f64();
    let u2 = proc_usage(pid)?;
    // Idle again: the burst must leave nothing periodic behind.
    thread::sleep(Duration::from_secs(5));
    let u3 = proc_usage(pid)?;
    let handler_us: Vec<u64> = daemon
        .decisions_since(from)?
        .iter()
        .map(|d| d.handler_us)
        .collect();
    let start_s = daemon.attach_time().map_or(0.0, |t| t.as_secs_f64());
    daemon.stop().context("stopping policyd")?;

    let ms =
        |a: &ProcUsage, b: &ProcUsage| (b.cpu_ticks - a.cpu_ticks) as f64 * 1000.0 / ticks as f64;
    util::emit_json(&Record::Footprint(Footprint {
        cgroups,
        populated_cgroups: GROUPS * LEAVES_PER_GROUP + 1,
        policyd_start_s: start_s,
        clock_ticks_per_s: ticks,
        idle: FootprintIdle {
            seconds: idle.as_secs_f64(),
            rss_kib: u1.rss_kib,
            hwm_kib: u1.hwm_kib,
            threads: u1.threads,
            cpu_ms: ms(&u0, &u1),
            voluntary_switches: u1.voluntary_switches - u0.voluntary_switches,
            involuntary_switches: u1.involuntary_switches - u0.involuntary_switches,
        },
        burst: FootprintBurst {
            ooms: BURST,
            kills,
            decisions_logged: logged,
            wall_s: burst_s,
            all_logged_s: logged_s,
            cpu_ms: ms(&u1, &u2),
            voluntary_switches: u2.voluntary_switches - u1.voluntary_switches,
            involuntary_switches: u2.involuntary_switches - u1.involuntary_switches,
            rss_kib: u2.rss_kib,
            hwm_kib: u2.hwm_kib,
            oom_ns,
            handler_us,
        },
        after_burst_idle: FootprintAfter {
            seconds: 5.0,
            cpu_ms: ms(&u2, &u3),
            voluntary_switches: u3.voluntary_switches - u2.voluntary_switches,
        },
    }));

    let mut all: Vec<&Cgroup> = leaves.iter().collect();
    all.push(&victims_cg);
    bc::kill_in_batches(&all, 300)?;
    for mut p in std::iter::once(shell).chain(victims) {
        kill_reap(&mut p);
    }
    drop(leaves);
    parent.remove()?;
    Ok(())
}
