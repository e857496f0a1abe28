//! The two other killing policies on one layout, each against what it promises:
//!
//! * `badness` is the kernel's oom_badness() in BPF: on the same layout it must kill the
//!   task the kernel's own killer kills with no handler attached (run first, as the
//!   reference), rules ignored, oom_score_adj included.
//! * `largest` kills in the non-protected cgroup that uses the most memory, priorities
//!   ignored: with kill = "task", that cgroup's largest task.
//!
//! /lab, rebuilt for each run, holds
//!   /lab/db    protected, one task of 72 MiB: the biggest task and the biggest cgroup;
//!   /lab/pair  priority 900, tasks of 44 and 20 MiB: the biggest unprotected cgroup;
//!   /lab/solo  priority 1, one task of 44 MiB with oom_score_adj 500: the highest
//!              oom_badness() (RSS plus half the memcg's limit).
//! Each OOM comes from lowering /lab's memory.max below its usage (see pdutil::squeeze
//! for the sizes).

use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::guest::pdutil::{self, expect_oom_kills, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-largest-badness", run)
        .needs_policyd()
        .timeout_s(150)
}

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/lab/db"
protect = true

[[rule]]
cgroup = "/lab/pair"
priority = 900

[[rule]]
cgroup = "/lab/solo"
priority = 1
"#;

struct Layout {
    lab: Cgroup,
    db_cg: Cgroup,
    pair_cg: Cgroup,
    solo_cg: Cgroup,
    /// (role, hog), in the order they started.
    hogs: Vec<(&'static str, Hog)>,
}

impl Layout {
    /// The cgroups, before policyd starts: it finds their rules when it attaches.
    fn create() -> Result<Layout> {
        let lab = Cgroup::create("lab")?;
        lab.set("memory.max", "max")?;
        Ok(Layout {
            db_cg: lab.child("db")?,
            pair_cg: lab.child("pair")?,
            solo_cg: lab.child("solo")?,
            lab,
            hogs: Vec::new(),
        })
    }

    /// The tasks.
    fn start(&mut self) -> Result<()> {
        let t = pdutil::READY_TIMEOUT;
        self.hogs = vec![
            ("db", Hog::start(&self.db_cg, &HogSpec::fixed(72), t)?),
            (
                "pair-big",
                Hog::start(&self.pair_cg, &HogSpec::fixed(44), t)?,
            ),
            (
                "pair-small",
                Hog::start(&self.pair_cg, &HogSpec::fixed(20), t)?,
            ),
            (
                "solo",
                Hog::start(&self.solo_cg, &HogSpec::fixed(44).oom_score_adj(500), t)?,
            ),
        ];
        for (role, h) in &self.hogs {
            println!("  {role}: pid {}", h.pid());
        }
        Ok(())
    }

    /// Squeezes /lab and returns the role of the one task that died.
    fn oom(&mut self) -> Result<(&'static str, i32)> {
        let mut kmsg = Kmsg::mark()?;
        pdutil::squeeze(&self.lab, 10)?;
        let mut dead = Vec::new();
        wait_first_death(&mut self.hogs, &mut dead)?;
        // Anything else dying would show up by now: the OOM is over when the write returned.
        std::thread::sleep(Duration::from_millis(300));
        for (role, h) in &mut self.hogs {
            if !h.is_alive() && !dead.iter().any(|(r, _)| r == role) {
                dead.push((role, h.pid()));
            }
        }
        let log = KillLog::read(
            &mut kmsg,
            &dead.iter().map(|&(_, pid)| pid).collect::<Vec<_>>(),
        )?;
        ensure!(
            dead.len() == 1,
            "{} tasks died ({dead:?}), expected one; kernel log:\n{}",
            dead.len(),
            log.text()
        );
        let (role, pid) = dead[0];
        log.expect_only_killed(pid, role)?;
        expect_oom_kills(&self.lab, 1)?;
        Ok((role, pid))
    }

    fn pid(&self, role: &str) -> i32 {
        self.hogs
            .iter()
            .find(|(r, _)| *r == role)
            .map_or(0, |(_, h)| h.pid())
    }

    /// Kills the layout and removes /lab.
    fn tear_down(self) -> Result<()> {
        drop(self.hogs);
        drop((self.db_cg, self.pair_cg, self.solo_cg));
        self.lab.remove()
    }
}

/// Waits until one of `hogs` has died (by SIGKILL) and records it in `dead`.
fn wait_first_death(
    hogs: &mut [(&'static str, Hog)],
    dead: &mut Vec<(&'static str, i32)>,
) -> Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < pdutil::OOM_TIMEOUT {
        for (role, h) in hogs.iter_mut() {
            if !h.is_alive() {
                dead.push((role, h.pid()));
            }
        }
        if !dead.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no task of /lab died within {:?}", pdutil::OOM_TIMEOUT)
}

/// A policy's run on the layout: the role it must kill, why, and the decision fields
/// besides those every kill here has (policy, scope, victim_cgroup, pid, outcome, killed).
struct PolicyRun<'a> {
    policy: &'a str,
    kills: &'a str,
    why: &'a str,
    decision: &'a [(&'a str, &'a str)],
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let config = pdutil::write_config("largest-badness", CONFIG)?;

    // 1. The reference: no handler, the kernel's own killer.
    println!("kernel default (no handler):");
    let mut l = Layout::create()?;
    l.start()?;
    let (kernel_role, _) = l.oom()?;
    println!("the kernel killed {kernel_role}");
    l.tear_down()?;

    // 2. badness: the same choice, made in BPF. 3. largest: the biggest unprotected
    // cgroup, its largest task.
    let runs = [
        PolicyRun {
            policy: "badness",
            kills: kernel_role,
            why: "the kernel's own killer's choice",
            decision: &[("reason", "badness")],
        },
        PolicyRun {
            policy: "largest",
            kills: "pair-big",
            why: "the largest task of /lab/pair, the largest unprotected cgroup",
            // solo (44 MiB) ranks next; the protected db (72 MiB) not at all.
            decision: &[("reason", "largest-usage"), ("runner_up", "/lab/solo")],
        },
    ];
    for PolicyRun {
        policy,
        kills,
        why,
        decision,
    } in runs
    {
        println!("policyd load {policy}:");
        let mut l = Layout::create()?;
        let mut pd = Policyd::load(&[policy, "--config", &config, "--cgroup", "/"])?;
        l.start()?;
        let (role, pid) = l.oom()?;
        let d = pd.next_decision(Duration::from_secs(10))?;
        ensure!(
            role == kills,
            "{policy} killed {role} (pid {pid}), expected {kills} (pid {}), {why}; \
             decision: {d}",
            l.pid(kills)
        );
        let pid_s = pid.to_string();
        let cgroup = format!("/lab/{}", role.split('-').next().unwrap_or(role));
        let mut want = vec![
            ("policy", policy),
            ("scope", "/lab"),
            ("victim_cgroup", cgroup.as_str()),
            ("pid", &pid_s),
            ("outcome", "killed"),
            ("killed", "1"),
        ];
        want.extend_from_slice(decision);
        d.expect(&want)?;
        for cg in [&l.db_cg, &l.pair_cg, &l.solo_cg] {
            expect_oom_kills(cg, u64::from(cg.path() == cgroup))?;
        }
        println!("{policy} killed {role}, {why}: {d}");
        l.tear_down()?;
        pd.stop()?;
    }
    Ok(())
}
