//! `./vm-tests/run demo`: one OOM, told twice. The layout follows the demo rules of the
//! shipped policies.toml (/etc/policyd/policies.toml in the guest):
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

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, KillLog, Policyd};
use crate::guest::util::{story, Cgroup, Hog, HogSpec, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("demo", run).needs_policyd().timeout_s(150)
}

const LIMIT_MIB: u64 = 128;
const DB_MIB: u64 = 60;
const WEB_MIB: u64 = 30;
const HELPER_MIB: u64 = 4;

struct Demo {
    demo: Cgroup,
    db_cg: Cgroup,
    web_cg: Cgroup,
    job_cg: Cgroup,
    db: Hog,
    web: Hog,
    helper: Hog,
    worker: Hog,
}

impl Demo {
    /// Builds the layout; the worker starts growing at once.
    fn start() -> Result<Demo> {
        let demo = Cgroup::create("demo")?;
        demo.set("memory.max", format!("{LIMIT_MIB}M"))?;
        let db_cg = demo.child("db")?;
        let web_cg = demo.child("web")?;
        let job_cg = demo.child("batch/job")?;
        let t = pdutil::READY_TIMEOUT;
        let db = Hog::start(&db_cg, &HogSpec::fixed(DB_MIB), t)?;
        let web = Hog::start(&web_cg, &HogSpec::fixed(WEB_MIB), t)?;
        let helper = Hog::start(&job_cg, &HogSpec::fixed(HELPER_MIB), t)?;
        let worker = Hog::start(&job_cg, &HogSpec::growing(8), t)?;
        println!(
            "db {} ({DB_MIB} MiB), web {} ({WEB_MIB} MiB), batch job: helper {} ({HELPER_MIB} \
             MiB), worker {} (growing), /demo memory.max {LIMIT_MIB} MiB",
            db.pid(),
            web.pid(),
            helper.pid(),
            worker.pid()
        );
        Ok(Demo {
            demo,
            db_cg,
            web_cg,
            job_cg,
            db,
            web,
            helper,
            worker,
        })
    }

    fn tear_down(self) -> Result<()> {
        let Demo {
            demo,
            db_cg,
            web_cg,
            job_cg,
            db,
            web,
            helper,
            worker,
        } = self;
        drop((db, web, helper, worker));
        drop((db_cg, web_cg, job_cg));
        demo.remove()
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
    let mut d1 = Demo::start()?;
    d1.db.wait_killed(pdutil::OOM_TIMEOUT).context(
        "with no handler, the kernel was expected to kill the database (the biggest task)",
    )?;
    // The job grows on into the freed memory: stop it before it hits the limit again.
    let job_alive = d1.worker.is_alive();
    d1.job_cg.kill_all()?;
    ensure!(job_alive, "the batch job died too under the kernel default");
    expect_alive(&mut d1.web, "web")?;
    expect_oom_kills(&d1.db_cg, 1)?;
    let log = KillLog::read(&mut kmsg)?;
    let db_pid = d1.db.pid();
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
    d1.tear_down()?;

    // 2. The same under policyd.
    let mut pd = Policyd::load(&["priority", "--config", pdutil::SHIPPED_CONFIG])?;
    let mut kmsg = Kmsg::mark()?;
    let mut d2 = Demo::start()?;
    d2.worker.wait_killed(pdutil::OOM_TIMEOUT).context(
        "under policyd, the batch job's worker was expected to die (priority 10, the lowest)",
    )?;
    d2.helper.wait_killed(Duration::from_secs(10)).context(
        "under policyd, the batch job's helper was expected to die with it (kill = cgroup)",
    )?;
    expect_alive(&mut d2.db, "database (protected)")?;
    expect_alive(&mut d2.web, "web tier (priority 500)")?;
    expect_oom_kills(&d2.job_cg, 2)?;
    expect_oom_kills(&d2.db_cg, 0)?;
    expect_oom_kills(&d2.web_cg, 0)?;
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
    let log = KillLog::read(&mut kmsg)?;
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
        d.outcome(),
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
    d2.tear_down()?;
    pd.stop()?;
    Ok(())
}
