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
//!
//! Then the new-cgroup window: NEW_CGROUPS mkdirs in /bench-fp/new back to back (once
//! policyd has /bench-fp/new's own entry), as a node starting pods makes them, while
//! another thread looks each new cgroup's id up every millisecond, with the handler's own
//! search of policyd's rules (its `find_rule_of` program, through every rebuild of the
//! rules table the burst makes), until all have their own entry. Until
//! then an OOM judges a new cgroup by its nearest ancestor's template for cgroups below
//! it, exact wherever the rules give all of them the same settings: the run counts the
//! new cgroups for which that held right after their mkdir.
//!
//! Start-up and reload: `policyd load` to "attached", its CPU time and RSS by then, and
//! one SIGHUP reload, with the 1012 cgroups above and (full bench only) with MANY more,
//! STARTS_AT_SCALE times.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;

use crate::guest::bench::{
    self as bc, clock_ticks, emit_env, kill_reap, proc_usage, spawn_blockers, ProcUsage, Stopwatch,
};
use crate::guest::pdutil::{HandlerRules, Policyd};
use crate::guest::util::{self, spawn_sleep, Cgroup};
use crate::guest::Scenario;
use crate::records::{
    Footprint, FootprintAfter, FootprintBurst, FootprintIdle, FootprintNewCgroups,
    FootprintStartup, Record,
};

pub fn scenario() -> Scenario {
    Scenario::new("bench-footprint", run)
        .mem_mb(1024)
        .timeout_s(1200)
        .needs_policyd()
}

const GROUPS: usize = 10;
const LEAVES_PER_GROUP: usize = 100;
const BURST: usize = 100;
/// A burst of new cgroups, as a node starting pods makes them.
const NEW_CGROUPS: usize = 1000;
/// How long the new cgroups may wait for their rules entries before the run fails.
const NEW_CGROUPS_TIMEOUT: Duration = Duration::from_secs(60);
/// Empty cgroups added for the start-up at scale (full bench only): about 10,000 in all.
const MANY: usize = 9000;
/// Start-ups at scale, each with its reload: one varies by a tenth of a second with the
/// host's load under TCG.
const STARTS_AT_SCALE: usize = 3;
/// Start-up and reload at scale under a loaded TCG host take minutes, not seconds.
const SCALE_TIMEOUT: Duration = Duration::from_secs(300);

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
        .map(|_| spawn_sleep(&victims_cg))
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
    let new_cgroups = new_cgroup_window(&parent)?;
    let mut startup = vec![startup_and_reload(&mut daemon, cgroups, ticks, &u0)?];
    let handler_us: Vec<u64> = daemon
        .decisions_since(from)?
        .iter()
        .map(|d| d.handler_us)
        .collect();
    let start_s = daemon.attach_time().map_or(0.0, |t| t.as_secs_f64());
    daemon.stop().context("stopping policyd")?;
    if !util::quick() {
        startup.extend(startup_with_many(&parent, cgroups, config, ticks)?);
    }

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
        new_cgroups: Some(new_cgroups),
        startup,
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

/// Whether the handler would judge the cgroup at `dir` exactly now: it has its own entry,
/// or its nearest ancestor with one has a known template for cgroups below it (the walk
/// of the handler's rule_of()).
fn exact_template(rules: &HandlerRules, dir: &Path) -> Result<bool> {
    let mut at = Some(dir);
    let mut own = true;
    while let Some(d) = at.filter(|d| d.starts_with(util::CGROUP_ROOT)) {
        let id = fs::metadata(d)
            .with_context(|| format!("stat {}", d.display()))?
            .ino();
        if let Some(rule) = rules.find(id)? {
            return Ok(own || rule.below_known != 0);
        }
        own = false;
        at = d.parent();
    }
    Ok(false)
}

/// NEW_CGROUPS mkdirs below `parent`, back to back; for each, the time from mkdir's
/// return to its own entry among policyd's rules, polled every millisecond by a second
/// thread.
fn new_cgroup_window(parent: &Cgroup) -> Result<FootprintNewCgroups> {
    // What the handler finds, through every rebuild of the rules table the burst makes.
    let rules = HandlerRules::of_running_policyd()?;
    let poll_rules = HandlerRules::of_running_policyd()?;
    let dir = parent.child("new")?;
    // Pods' cgroups have the memory controller.
    dir.set("cgroup.subtree_control", "+memory")?;
    // Pods start below a parent that has long been there (kubepods.slice): the burst
    // begins once policyd has this one's entry, which carries the template for them.
    let new_id = fs::metadata(dir.dir())
        .with_context(|| format!("stat {}", dir.dir().display()))?
        .ino();
    let deadline = Instant::now() + NEW_CGROUPS_TIMEOUT;
    while rules.find(new_id)?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "{} has no rules entry after {NEW_CGROUPS_TIMEOUT:?}",
            dir.path()
        );
        thread::sleep(Duration::from_millis(1));
    }
    let (tx, rx) = mpsc::channel::<(u64, Instant)>();
    let poller = thread::spawn(move || -> Result<(Vec<u64>, u64)> {
        let mut pending: Vec<(u64, Instant)> = Vec::new();
        let mut delays_us = Vec::with_capacity(NEW_CGROUPS);
        let mut sweeps = 0u64;
        let deadline = Instant::now() + NEW_CGROUPS_TIMEOUT;
        while delays_us.len() < NEW_CGROUPS {
            pending.extend(rx.try_iter());
            let mut i = 0;
            while i < pending.len() {
                let (id, made) = pending[i];
                if poll_rules.find(id)?.is_some() {
                    delays_us.push(made.elapsed().as_micros() as u64);
                    pending.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            sweeps += 1;
            if Instant::now() > deadline {
                bail!(
                    "{} of {NEW_CGROUPS} new cgroups have no rules entry after {:?}",
                    NEW_CGROUPS - delays_us.len(),
                    NEW_CGROUPS_TIMEOUT
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok((delays_us, sweeps))
    });
    let t = Instant::now();
    let mut made = Vec::with_capacity(NEW_CGROUPS);
    let mut exact = 0;
    for i in 0..NEW_CGROUPS {
        let path = dir.dir().join(format!("n{i:04}"));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let at = Instant::now();
        let id = fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .ino();
        if exact_template(&rules, &path)? {
            exact += 1;
        }
        made.push(path);
        // Gone only when the poller gave up: its error says why.
        if tx.send((id, at)).is_err() {
            break;
        }
    }
    let burst_s = t.elapsed().as_secs_f64();
    drop(tx);
    let (delays_us, sweeps) = poller
        .join()
        .map_err(|_| anyhow!("the rules poller panicked"))??;
    for path in made.iter().rev() {
        fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))?;
    }
    dir.remove()?;
    let ms = |p: f64| {
        let v: Vec<f64> = delays_us.iter().map(|&us| us as f64 / 1000.0).collect();
        crate::stats::percentile(&v, p).unwrap_or(f64::NAN)
    };
    println!(
        "{NEW_CGROUPS} new cgroups in {burst_s:.2} s: own rules entry after p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms ({sweeps} sweeps); {exact} judged exactly \
         from mkdir on (a known template above them)",
        ms(50.0),
        ms(99.0),
        ms(100.0)
    );
    Ok(FootprintNewCgroups {
        count: NEW_CGROUPS,
        burst_s,
        delays_us,
        exact_at_mkdir: Some(exact),
        poll_sweeps: sweeps,
    })
}

/// What policyd's start-up cost (`at_start`: its usage once attached and idle) and one
/// SIGHUP reload of the same config.
fn startup_and_reload(
    daemon: &mut Policyd,
    cgroups: usize,
    ticks: u64,
    at_start: &ProcUsage,
) -> Result<FootprintStartup> {
    let pid = daemon.pid() as u32;
    let attach_s = daemon
        .attach_time()
        .context("policyd never logged that it attached")?
        .as_secs_f64();
    let before = proc_usage(pid)?;
    let t = Instant::now();
    daemon.signal(Signal::SIGHUP)?;
    ensure!(
        daemon.reload_outcome_within(SCALE_TIMEOUT)?,
        "policyd rejected its unchanged config on SIGHUP"
    );
    let reload_s = t.elapsed().as_secs_f64();
    let after = proc_usage(pid)?;
    let ms = |ticks_used: u64| ticks_used as f64 * 1000.0 / ticks as f64;
    let r = FootprintStartup {
        cgroups,
        attach_s,
        start_cpu_ms: ms(at_start.cpu_ticks),
        rss_kib: at_start.rss_kib,
        reload_s,
        reload_cpu_ms: ms(after.cpu_ticks - before.cpu_ticks),
        rss_after_reload_kib: after.rss_kib,
        phases: daemon
            .log()
            .iter()
            .filter(|l| l.level == "DEBUG" && PHASES.iter().any(|p| l.message.starts_with(p)))
            .map(|l| l.message.clone())
            .collect(),
        spawn_s: Some(daemon.spawn_time().as_secs_f64()),
    };
    println!("start-up and reload: {r:?}");
    Ok(r)
}

/// The beginnings of policyd's `-vv` lines that time its start-up and reloads.
const PHASES: [&str; 3] = ["policy object:", "start-up with", "new rules with"];

/// [`startup_and_reload`] of STARTS_AT_SCALE new `policyd load -vv`, one after another,
/// with MANY more (empty) cgroups: its log says where the time went.
fn startup_with_many(
    parent: &Cgroup,
    cgroups: usize,
    config: &Path,
    ticks: u64,
) -> Result<Vec<FootprintStartup>> {
    // With the default fs.inotify.max_user_watches: policyd's one fanotify mark covers
    // every cgroup (a watch per cgroup ran out near 2,800 here).
    let many = parent.child("many")?;
    let t = Instant::now();
    let mut dirs = Vec::with_capacity(MANY);
    for i in 0..MANY {
        let path = many.dir().join(format!("m{i:04}"));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        dirs.push(path);
    }
    println!("{MANY} more cgroups in {:.1} s", t.elapsed().as_secs_f64());
    let mut starts = Vec::with_capacity(STARTS_AT_SCALE);
    for _ in 0..STARTS_AT_SCALE {
        let mut daemon = Policyd::start_within(
            &["-vv", "priority", "--config", &config.to_string_lossy()],
            false,
            SCALE_TIMEOUT,
        )?;
        let watch = daemon
            .log()
            .iter()
            .find(|l| l.is("INFO", "attached"))
            .and_then(|l| l.field("cgroup_watch"));
        ensure!(
            watch.as_deref() == Some("fanotify"),
            "policyd watches the {MANY} cgroups with {watch:?}, not one fanotify mark"
        );
        thread::sleep(Duration::from_secs(2));
        let at_start = proc_usage(daemon.pid() as u32)?;
        starts.push(startup_and_reload(
            &mut daemon,
            cgroups + MANY + 1,
            ticks,
            &at_start,
        )?);
        daemon.stop().context("stopping policyd")?;
    }
    for path in dirs.iter().rev() {
        fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))?;
    }
    many.remove()?;
    Ok(starts)
}
