//! Soak: at least MIN_OOMS OOMs over at least DURATION, global and memcg, declared
//! (bpf_out_of_memory()) and real (a hog over its cgroup's memory.max), while another
//! thread creates and removes cgroups (CHURN_PER_S a second), policyd re-reads its config
//! every RELOAD_EVERY and swaps its policy (priority <-> largest) every SWAP_EVERY.
//!
//! /soak/svc is protected and /soak/high has priority 1000; a batch hog (priority 10,
//! the largest, in a new cgroup each time) is always there to die. Passes when every OOM
//! has its decision line, every victim is a batch hog, no decision events were lost, and
//! policyd's RSS at the end is within RSS_SLACK of what it was after the first OOMs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use policyd::abi::Outcome;

use crate::guest::kutil::{Action, Handler, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK};
use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{self, Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-soak", run)
        .needs_policyd()
        .timeout_s(900)
}

const DURATION: Duration = Duration::from_secs(300);
const MIN_OOMS: u64 = 500;
const CHURN_PER_S: u64 = 25;
const RELOAD_EVERY: Duration = Duration::from_secs(3);
const SWAP_EVERY: Duration = Duration::from_secs(10);
/// Every this many OOMs, a real one instead of a declared one.
const REAL_EVERY: u64 = 10;
/// How much policyd's RSS may grow between the first OOMs and the end.
const RSS_SLACK_KIB: u64 = 2048;

fn config(policy: &str) -> String {
    format!(
        r#"
policy = "{policy}"

[[rule]]
cgroup = "/soak/svc"
protect = true

[[rule]]
cgroup = "/soak/high"
priority = 1000

[[rule]]
cgroup = "/soak/batch/**"
priority = 10

[[rule]]
cgroup = "/soak/churn/**"
priority = 5
"#
    )
}

fn rss_kib(pid: i32) -> Result<u64> {
    let status = util::read_file(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in policyd's /proc status")
}

/// Creates and removes empty cgroups under `churn` until `stop`; counts them.
fn churn(churn: Cgroup, stop: Arc<AtomicBool>, created: Arc<AtomicU64>) -> Result<()> {
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let dir = churn.dir().join(format!("c{n}"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        n += 1;
        created.store(n, Ordering::Relaxed);
        // Paced from the start, so the time mkdir and rmdir take does not slow it.
        let due = start + Duration::from_secs(n) / CHURN_PER_S as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let soak = Cgroup::create("soak")?;
    let svc_cg = soak.child("svc")?;
    let high_cg = soak.child("high")?;
    let batch = soak.child("batch")?;
    let churn_cg = soak.child("churn")?;
    let mut svc = Hog::start(&svc_cg, &HogSpec::fixed(4), pdutil::READY_TIMEOUT)?;
    let mut high = Hog::start(&high_cg, &HogSpec::fixed(2), pdutil::READY_TIMEOUT)?;
    let mut policy = "priority";
    let path = pdutil::write_config("soak", &config(policy))?;
    let mut pd = Policyd::load(&["--config", &path])?;
    let declarer = Handler::load(Action::Defer, 0, 0)?;

    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicU64::new(0));
    let churner = {
        let (stop, created) = (stop.clone(), created.clone());
        let cg = Cgroup::open(&churn_cg.path())?;
        thread::spawn(move || churn(cg, stop, created))
    };

    let start = Instant::now();
    let (mut last_reload, mut last_swap) = (start, start);
    let (mut ooms, mut real, mut global, mut reloads, mut swaps) = (0u64, 0, 0, 0, 0);
    let (mut rss_start, mut rss_mid) = (None, None);
    while start.elapsed() < DURATION || ooms < MIN_OOMS {
        ensure!(
            !churner.is_finished(),
            "the cgroup churn thread stopped early"
        );
        if last_swap.elapsed() >= SWAP_EVERY {
            policy = if policy == "priority" {
                "largest"
            } else {
                "priority"
            };
            util::write_file(&path, config(policy))?;
            ensure!(pd.reload()?, "policyd rejected the swap to {policy}");
            (last_swap, last_reload) = (Instant::now(), Instant::now());
            swaps += 1;
        } else if last_reload.elapsed() >= RELOAD_EVERY {
            ensure!(pd.reload()?, "policyd rejected a reload");
            last_reload = Instant::now();
            reloads += 1;
        }

        let victim_cg = batch.child(&format!("b{ooms}"))?;
        let is_real = ooms % REAL_EVERY == REAL_EVERY - 1;
        let mut victim = if is_real {
            victim_cg.set("memory.max", "16M")?;
            real += 1;
            Hog::start(&victim_cg, &HogSpec::growing(4), pdutil::READY_TIMEOUT)?
        } else {
            let hog = Hog::start(&victim_cg, &HogSpec::fixed(8), pdutil::READY_TIMEOUT)?;
            let id = if ooms % 2 == 0 {
                global += 1;
                0
            } else {
                soak.id()?
            };
            let declared = declarer.declare_oom(id, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK, 1)?;
            ensure!(
                declared.prog_ret == 0 && declared.ret[0] == 1,
                "declared OOM {ooms}: {declared}"
            );
            hog
        };
        ooms += 1;
        let d = pd.next_decision(Duration::from_secs(30))?;
        let pid = victim.pid().to_string();
        let path = victim_cg.path();
        if d.outcome != Outcome::Killed || d.victim_cgroup() != path || d.get("pid")? != pid {
            bail!(
                "OOM {ooms} ({}, policy {policy}): expected the batch hog {pid} in {path} to \
                 die, got: {}",
                if is_real { "real" } else { "declared" },
                d.line
            );
        }
        victim.wait_killed(pdutil::OOM_TIMEOUT)?;
        drop(victim);
        victim_cg.remove()?;
        if ooms == 20 {
            rss_start = Some(rss_kib(pd.pid())?);
        }
        if rss_mid.is_none() && start.elapsed() >= DURATION / 2 {
            rss_mid = Some(rss_kib(pd.pid())?);
        }
    }
    stop.store(true, Ordering::Relaxed);
    churner
        .join()
        .map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
    let elapsed = start.elapsed().as_secs_f64();
    let rss_end = rss_kib(pd.pid())?;
    let rss_start = rss_start.context("fewer than 20 OOMs")?;
    let rss_mid = rss_mid.context("no RSS reading halfway")?;
    expect_alive(&mut svc, "protected service")?;
    expect_alive(&mut high, "priority-1000 service")?;
    let lost: Vec<&str> = pd
        .log()
        .iter()
        .filter(|l| l.message.contains("OOM decisions not logged"))
        .map(|l| l.raw.as_str())
        .collect();
    ensure!(lost.is_empty(), "decision events were lost: {lost:?}");
    let churned = created.load(Ordering::Relaxed);
    println!(
        "soak: {ooms} OOMs in {elapsed:.0} s ({real} real memcg, {global} declared global, {} \
         declared memcg), every victim a batch hog; {churned} cgroups created and removed \
         ({:.1}/s); {reloads} reloads and {swaps} policy swaps; policyd RSS {rss_start} KiB \
         after 20 OOMs, {rss_mid} KiB halfway, {rss_end} KiB at the end",
        ooms - real - global,
        churned as f64 / elapsed
    );
    ensure!(
        churned as f64 / elapsed >= 20.0,
        "only {churned} cgroups churned in {elapsed:.0} s"
    );
    ensure!(
        rss_end <= rss_start + RSS_SLACK_KIB,
        "policyd's RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
    pd.stop()?;
    Ok(())
}
