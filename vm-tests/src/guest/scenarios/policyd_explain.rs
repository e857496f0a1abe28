//! `policyd explain` predicts what the BPF policy kills: run just before the OOM, its
//! victim cgroup and task are the ones the handler then kills, and its ranking is the
//! handler's.
//!
//! /x holds three cgroups: /x/a (priority 300, 24 MiB), /x/b (priority 20, tasks of 12 and
//! 44 MiB) and /x/c (priority 20, 10 MiB). b and c tie on priority; b uses more memory and
//! ranks first; its larger task is the one to die (kill = "task"). The OOM comes from
//! lowering /x's memory.max, so the layout explain saw is the layout the handler sees
//! (see pdutil::squeeze for why the victim is that big).

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-explain-agrees", run)
        .needs_policyd()
        .timeout_s(120)
}

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/x/a"
priority = 300

[[rule]]
cgroup = "/x/b"
priority = 20

[[rule]]
cgroup = "/x/c"
priority = 20
"#;

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let x = Cgroup::create("x")?;
    let a_cg = x.child("a")?;
    let b_cg = x.child("b")?;
    let c_cg = x.child("c")?;
    let config = pdutil::write_config("explain", CONFIG)?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--cgroup", "/x"])?;

    let t = pdutil::READY_TIMEOUT;
    let mut a = Hog::start(&a_cg, &HogSpec::fixed(24), t)?;
    let mut b_small = Hog::start(&b_cg, &HogSpec::fixed(12), t)?;
    let mut b_big = Hog::start(&b_cg, &HogSpec::fixed(44), t)?;
    let mut c = Hog::start(&c_cg, &HogSpec::fixed(10), t)?;
    println!(
        "a {} (24 MiB, 300), b {} (12 MiB) + {} (44 MiB) (20), c {} (10 MiB, 20)",
        a.pid(),
        b_small.pid(),
        b_big.pid(),
        c.pid()
    );

    let ex = pdutil::run_json(&["explain", "--config", &config, "--cgroup", "/x", "--json"])?;
    let victim = &ex["victim"];
    let predicted_cgroup = victim["cgroup"]
        .as_str()
        .with_context(|| format!("explain --json has no victim.cgroup: {ex:#}"))?
        .to_string();
    let predicted_pids: Vec<i64> = victim["tasks"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["pid"].as_i64()).collect())
        .unwrap_or_default();
    let ranked: Vec<String> = ex["candidates"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["eligible"] == true)
                .filter_map(|c| c["path"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        victim["kill"] == "task" && predicted_pids.len() == 1,
        "explain predicts kill {} of tasks {predicted_pids:?}, expected one task",
        victim["kill"]
    );
    println!("explain: victim {predicted_cgroup} pid {predicted_pids:?}, ranking {ranked:?}");

    let mut kmsg = Kmsg::mark()?;
    pdutil::squeeze(&x, 10)?;
    let d = pd.next_decision(pdutil::OOM_TIMEOUT)?;

    // The handler did what explain said ...
    let killed_pid = i64::from(d.pid);
    ensure!(
        d.victim_cgroup() == predicted_cgroup && predicted_pids == vec![killed_pid],
        "explain predicted {predicted_cgroup} pid {predicted_pids:?}; the handler killed {} \
         pid {killed_pid}: {d}",
        d.victim_cgroup()
    );
    ensure!(
        ranked.len() == d.get("candidates")?.parse::<usize>()?
            && ranked.get(1) == Some(&d.get("runner_up")?),
        "explain ranked {ranked:?}; the handler saw {} candidates with runner-up {}",
        d.get("candidates")?,
        d.get("runner_up")?
    );
    b_big.wait_killed(Duration::from_secs(10))?;
    // ... and that is the right answer.
    let pid = b_big.pid().to_string();
    d.expect(&[
        ("scope", "/x"),
        ("victim_cgroup", "/x/b"),
        ("pid", &pid),
        ("priority", "20"),
        ("reason", "larger-usage"),
        ("outcome", "killed"),
        ("killed", "1"),
        ("runner_up", "/x/c"),
    ])?;
    ensure!(
        ranked == ["/x/b", "/x/c", "/x/a"],
        "explain ranked {ranked:?}, expected /x/b, /x/c, /x/a"
    );
    for (hog, role) in [
        (&mut a, "a"),
        (&mut b_small, "b's smaller task"),
        (&mut c, "c"),
    ] {
        expect_alive(hog, role)?;
    }
    expect_oom_kills(&b_cg, 1)?;
    expect_oom_kills(&x, 1)?;
    let log = KillLog::read(&mut kmsg, &[b_big.pid()])?;
    log.expect_only_killed(b_big.pid(), "victim")?;
    pd.stop()?;
    println!("explain agreed with the handler: {d}");
    Ok(())
}
