//! `./vm-tests/run demo`: one OOM, told twice. The layout follows the demo's own config,
//! vm-tests/demo.toml (/etc/policyd/demo.toml in the guest):
//!
//!   /demo/db         protect = true                  the database, 60 MiB, the biggest
//!   /demo/web        priority 500                    the web tier, 30 MiB
//!   /demo/batch/job  /demo/batch/** priority 10,     a batch job: a 4 MiB helper and a
//!                    kill = "cgroup"                 worker that grows until /demo is full
//!
//! /demo may use 128 MiB. First with no handler: the kernel kills the biggest task, the
//! database. Then the same again under `policyd load priority`: the batch job dies, all of
//! it, and db and web live. Both outcomes are asserted, not just told.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd};
use crate::guest::util::{story, Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("demo", run).needs_policyd().timeout_s(150)
}

const LIMIT_MIB: u64 = 128;
const DB_MIB: u64 = 60;
const WEB_MIB: u64 = 30;
const HELPER_MIB: u64 = 4;
const WORKER_MAX_MIB: u64 = 64;

/// /demo and the cgroups inside it.
struct Cgroups {
    demo: Cgroup,
    db: Cgroup,
    web: Cgroup,
    job: Cgroup,
}

impl Cgroups {
    fn create() -> Result<Cgroups> {
        let demo = Cgroup::create("demo")?;
        demo.set("memory.max", format!("{LIMIT_MIB}M"))?;
        Ok(Cgroups {
            db: demo.child("db")?,
            web: demo.child("web")?,
            job: demo.child("batch/job")?,
            demo,
        })
    }

    fn remove(self) -> Result<()> {
        let Cgroups { demo, db, web, job } = self;
        drop((db, web, job));
        demo.remove()
    }
}

/// The tasks: once the worker is ready it grows until /demo is full.
struct Tasks {
    db: Hog,
    web: Hog,
    helper: Hog,
    worker: Hog,
}

impl Tasks {
    fn start(cgroups: &Cgroups) -> Result<Tasks> {
        let t = pdutil::READY_TIMEOUT;
        let db = Hog::start(&cgroups.db, &HogSpec::fixed(DB_MIB), t)?;
        let web = Hog::start(&cgroups.web, &HogSpec::fixed(WEB_MIB), t)?;
        let helper = Hog::start(&cgroups.job, &HogSpec::fixed(HELPER_MIB), t)?;
        // It stops short of the limit on its own: past the OOM, it does not refill what
        // the kernel's kill freed (run 1) before the scenario has looked.
        let worker_spec = HogSpec::growing(8).up_to(WORKER_MAX_MIB);
        let worker = Hog::start(&cgroups.job, &worker_spec, t)?;
        println!(
            "db {} ({DB_MIB} MiB), web {} ({WEB_MIB} MiB), batch job: helper {} ({HELPER_MIB} \
             MiB), worker {} (growing), /demo memory.max {LIMIT_MIB} MiB",
            db.pid(),
            web.pid(),
            helper.pid(),
            worker.pid()
        );
        Ok(Tasks {
            db,
            web,
            helper,
            worker,
        })
    }
}

/// "60 MiB" from the anon-rss of a kernel "Killed process" line.
fn killed_rss(line: &str) -> Option<String> {
    let rest = &line[line.find("anon-rss:")? + "anon-rss:".len()..];
    let kib: u64 = rest.split("kB").next()?.parse().ok()?;
    Some(format!("{} MiB", (kib + 512) / 1024))
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    story(format!(
        "One OOM, told twice. /demo may use {LIMIT_MIB} MiB; inside it, with the rules of the \
         shipped policies.toml:"
    ));
    story(format!(
        "  /demo/db         the database   {DB_MIB} MiB   protect = true"
    ));
    story(format!(
        "  /demo/web        the web tier   {WEB_MIB} MiB   priority 500"
    ));
    story(
        "  /demo/batch/job  a batch job    grows    priority 10, kill = \"cgroup\" (2 processes)",
    );

    // 1. No handler: the kernel's own choice.
    let mut kmsg = Kmsg::mark()?;
    let c1 = Cgroups::create()?;
    let mut d1 = Tasks::start(&c1)?;
    d1.db.wait_killed(pdutil::OOM_TIMEOUT).context(
        "with no handler, the kernel was expected to kill the database (the biggest task)",
    )?;
    expect_alive(
        &mut d1.worker,
        "the batch job's worker under the kernel default",
    )?;
    expect_alive(&mut d1.web, "web")?;
    expect_oom_kills(&c1.db, 1)?;
    let db_pid = d1.db.pid();
    let log = KillLog::read(&mut kmsg, &[db_pid])?;
    let line = log
        .kill_line(db_pid)
        .with_context(|| format!("no kernel report of killing db {db_pid}:\n{}", log.text()))?;
    ensure!(
        line.contains("Memory cgroup out of memory") && !log.bpf_chose_any(),
        "db's kill was not the kernel's own: {line}"
    );
    let db_rss = killed_rss(line).unwrap_or_else(|| format!("{DB_MIB} MiB"));
    story(format!(
        "Run 1, kernel default (no handler): the job grows until /demo is full; the kernel \
         killed /demo/db (pid {db_pid}, {db_rss}), its biggest task: the database."
    ));
    drop(d1);
    c1.remove()?;

    // 2. The same under policyd. The cgroups come first, so that policyd finds their
    // rules when it attaches rather than racing the tasks (policyd-rule-matching covers
    // cgroups that appear later).
    let c2 = Cgroups::create()?;
    let mut pd = Policyd::load(&["priority", "--config", pdutil::DEMO_CONFIG])?;
    let mut kmsg = Kmsg::mark()?;
    let mut d2 = Tasks::start(&c2)?;
    d2.worker.wait_killed(pdutil::OOM_TIMEOUT).context(
        "under policyd, the batch job's worker was expected to die (priority 10, the lowest)",
    )?;
    d2.helper.wait_killed(Duration::from_secs(10)).context(
        "under policyd, the batch job's helper was expected to die with it (kill = cgroup)",
    )?;
    expect_alive(&mut d2.db, "database (protected)")?;
    expect_alive(&mut d2.web, "web tier (priority 500)")?;
    expect_oom_kills(&c2.job, 2)?;
    expect_oom_kills(&c2.db, 0)?;
    expect_oom_kills(&c2.web, 0)?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    let worker_pid = d2.worker.pid();
    d.expect(&[
        ("policy", "priority"),
        ("scope", "/demo"),
        ("victim_cgroup", "/demo/batch/job"),
        ("pid", &worker_pid.to_string()),
        ("priority", "10"),
        ("reason", "lowest-priority"),
        ("outcome", "killed"),
        ("killed", "2"),
    ])?;
    let log = KillLog::read(&mut kmsg, &[worker_pid, d2.helper.pid()])?;
    let mut killed = log.killed_pids();
    killed.sort_unstable();
    let mut want = vec![worker_pid, d2.helper.pid()];
    want.sort_unstable();
    ensure!(
        killed == want,
        "under policyd the kernel log reports kills of {killed:?}, expected only the batch \
         job {want:?}:\n{}",
        log.text()
    );
    story(format!(
        "Run 2, policyd load priority: the same OOM; policyd killed the whole batch job \
         (worker pid {worker_pid}, helper pid {}); db and web live on.",
        d2.helper.pid()
    ));
    story(format!(
        "  policyd's log: decision victim_cgroup={} pid={} priority={} reason={} outcome={} \
         killed={} handler_us={}",
        d.victim_cgroup(),
        d.get("pid")?,
        d.get("priority")?,
        d.get("reason")?,
        d.outcome,
        d.get("killed")?,
        d.get("handler_us")?
    ));
    story("Side by side:");
    story(format!(
        "  kernel default:   killed db (pid {db_pid}, {db_rss}) — the database"
    ));
    story(format!(
        "  policyd priority: killed /demo/batch/job (pid {worker_pid} + its helper) — batch \
         job, priority 10, lowest; db and web untouched"
    ));
    drop(d2);
    c2.remove()?;
    pd.stop()?;
    Ok(())
}
