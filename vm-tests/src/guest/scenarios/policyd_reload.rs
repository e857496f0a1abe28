//! SIGHUP re-reads the config while the handler stays attached: a valid change takes
//! effect for the very next OOM; an invalid file is rejected as a whole and the running
//! rules stay.
//!
//! /app holds /app/a and /app/b, fresh hogs each round (the victim is always the smaller
//! of the two, so size never explains a choice), and each OOM comes from lowering /app's
//! memory.max below its usage: one OOM on a layout that holds still (see pdutil::squeeze
//! for the sizes).
//!
//! 1. a = 10, b = 20: a dies.
//! 2. rewrite to a = 30, b = 20, SIGHUP, "reloaded": b dies.
//! 3. rewrite to a broken file that would say a = 5, SIGHUP: an error, policyd runs on,
//!    and b (20 under the old rules) dies again, not a.
//! 4. rewrite to `policy = "largest"`, SIGHUP: the handler is swapped in place
//!    (bpf_link_update), never detached; the next OOM is decided by `largest`, so a, the
//!    bigger cgroup, dies although b has the lower priority.
//!
//! policyd takes its policy from the config (no policy on the command line), as step 4
//! needs. A squeeze retries its OOM while the victim exits, each retry awaiting it
//! (hundreds of times under TCG): policyd logs at most one awaited decision per victim,
//! then one "awaited again" line with the count.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Decision, LogLine, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-reload", run)
        .needs_policyd()
        .timeout_s(120)
}

fn config(policy: &str, a: u32, b: u32) -> String {
    format!(
        "policy = \"{policy}\"\n\n[[rule]]\ncgroup = \"/app/a\"\npriority = {a}\n\n\
         [[rule]]\ncgroup = \"/app/b\"\npriority = {b}\n"
    )
}

/// Would mean a = 5 if policyd applied what it could read of it.
const BROKEN: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/app/a"
priority = 5

[[rule]]
cgroup = "/app/b"
priority = "high"
"#;

struct Round {
    a: Hog,
    b: Hog,
}

/// Fresh hogs: a with `a_mib`, b with `b_mib`.
fn start_round(a_cg: &Cgroup, b_cg: &Cgroup, a_mib: u64, b_mib: u64) -> Result<Round> {
    let a = Hog::start(a_cg, &HogSpec::fixed(a_mib), pdutil::READY_TIMEOUT)?;
    let b = Hog::start(b_cg, &HogSpec::fixed(b_mib), pdutil::READY_TIMEOUT)?;
    println!("a {} ({a_mib} MiB), b {} ({b_mib} MiB)", a.pid(), b.pid());
    Ok(Round { a, b })
}

/// Squeezes /app, checks the decision (`want`, plus the victim's cgroup and pid) and
/// that exactly `victim` died, then cleans up.
fn oom(
    pd: &mut Policyd,
    app: &Cgroup,
    victim_cg: &Cgroup,
    victim: &mut Hog,
    survivor: &mut Hog,
    want: &[(&str, &str)],
) -> Result<()> {
    let kills_before = pdutil::oom_kills(victim_cg)?;
    let app_before = pdutil::oom_kills(app)?;
    let mut kmsg = Kmsg::mark()?;
    pdutil::squeeze(app, 10)?;
    victim.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_decision(Duration::from_secs(10))?;
    let pid = victim.pid().to_string();
    let cgroup = victim_cg.path();
    d.expect(&[
        ("victim_cgroup", &cgroup),
        ("pid", &pid),
        ("outcome", "killed"),
        ("killed", "1"),
    ])?;
    d.expect(want)?;
    expect_alive(survivor, "other hog")?;
    expect_oom_kills(victim_cg, kills_before + 1)?;
    expect_oom_kills(app, app_before + 1)?;
    let log = KillLog::read(&mut kmsg, &[victim.pid()])?;
    log.expect_only_killed(victim.pid(), "victim")?;
    println!("{d}");
    app.set("memory.max", "max")?;
    Ok(())
}

/// What a `priority` decision on a victim of `priority` says.
/// A decision that awaits an earlier victim.
fn awaited(l: &LogLine) -> bool {
    l.message == "decision" && l.field("outcome").as_deref() == Some("awaited")
}

fn lowest(priority: &str) -> [(&str, &str); 3] {
    [
        ("policy", "priority"),
        ("priority", priority),
        ("reason", "lowest-priority"),
    ]
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let app = Cgroup::create("app")?;
    let a_cg = app.child("a")?;
    let b_cg = app.child("b")?;
    let path = pdutil::write_config("reload", &config("priority", 10, 20))?;
    let mut pd = Policyd::load(&["--config", &path, "--cgroup", "/app"])?;

    // 1. a = 10, b = 20.
    let mut r = start_round(&a_cg, &b_cg, 44, 52)?;
    oom(&mut pd, &app, &a_cg, &mut r.a, &mut r.b, &lowest("10"))?;
    drop(r);

    // 2. a = 30, b = 20.
    pdutil::write_config("reload", &config("priority", 30, 20))?;
    ensure!(pd.reload()?, "policyd did not reload the valid config");
    let mut r = start_round(&a_cg, &b_cg, 52, 44)?;
    oom(&mut pd, &app, &b_cg, &mut r.b, &mut r.a, &lowest("20"))?;
    drop(r);

    // 3. A broken file: rejected, the rules of step 2 stay.
    pdutil::write_config("reload", BROKEN)?;
    ensure!(
        !pd.reload()?,
        "policyd reloaded a config with priority = \"high\""
    );
    ensure!(
        pd.log()
            .iter()
            .any(|l| l.level == "ERROR" && l.message.contains("/tmp/reload.toml")),
        "no ERROR line naming /tmp/reload.toml in policyd's log"
    );
    ensure!(pd.is_running(), "policyd exited after an invalid reload");
    let mut r = start_round(&a_cg, &b_cg, 52, 44)?;
    oom(&mut pd, &app, &b_cg, &mut r.b, &mut r.a, &lowest("20"))?;
    drop(r);

    // 4. Another policy: swapped into the same link.
    pdutil::write_config("reload", &config("largest", 30, 20))?;
    ensure!(pd.reload()?, "policyd did not reload the switch to largest");
    // Logged right after "reloaded", so it may still be on its way through the pipe.
    pd.wait_line(
        Duration::from_secs(30),
        "the line saying the policy changed to largest",
        |l| l.message.contains("policy priority -> largest"),
    )?;
    let handlers = pdutil::status()?;
    ensure!(
        handlers.len() == 1
            && handlers[0]["cgroup"] == "/app"
            && handlers[0]["policy"] == "largest",
        "after the switch, policyd status --json shows {handlers:#?}, expected one largest \
         handler on /app"
    );
    let mut r = start_round(&a_cg, &b_cg, 52, 44)?;
    oom(
        &mut pd,
        &app,
        &a_cg,
        &mut r.a,
        &mut r.b,
        &[("policy", "largest"), ("reason", "largest-usage")],
    )?;
    drop(r);

    expect_awaits_collapsed(&mut pd)?;
    pd.stop()?;
    println!("reloads took effect, an invalid one kept the old rules, the policy swapped live");
    Ok(())
}

/// Checks that the awaits of step 4's victim were logged as one decision plus a count,
/// adding up to no more than the handler counted.
fn expect_awaits_collapsed(pd: &mut Policyd) -> Result<()> {
    // /app is back at memory.max = max: no more OOMs, the handler's count is final.
    let h = pdutil::status_at("/app")?.context("the handler vanished from policyd status")?;
    let counted = h["counters"]["awaited"]
        .as_u64()
        .context("policyd status --json has no awaited counter")?;
    // The victim's first await is a decision line; the count of the others is logged
    // once the events have been quiet for a second.
    if counted >= 1 {
        let line = pd.wait_line(Duration::from_secs(10), "the awaited decision", awaited)?;
        // The victim's cgroup, /app/a, has priority 30 in step 4's rules.
        let d = Decision::from_line(&line).expect("an awaited decision")?;
        ensure!(
            d.victim_cgroup() == "/app/a" && d.priority == 30,
            "the awaited decision does not name /app/a with its priority 30: {d}"
        );
    }
    if counted > 1 {
        pd.wait_line(
            Duration::from_secs(10),
            "the \"awaited again\" count",
            |l| l.is("INFO", "awaited again"),
        )?;
    }
    // The handler's counters restarted with the switch to largest: count from there.
    let log = pd.log();
    let switch = log
        .iter()
        .position(|l| l.message.contains("policy priority -> largest"))
        .context("no policy switch in policyd's log")?;
    let log = &log[switch..];
    let decisions = log.iter().filter(|l| awaited(l)).count() as u64;
    let repeats: u64 = log
        .iter()
        .filter(|l| l.is("INFO", "awaited again"))
        .map(|l| {
            l.fields
                .get("times")
                .and_then(|n| n.as_u64())
                .unwrap_or(u64::MAX)
        })
        .sum();
    println!(
        "awaits: {counted} counted by the handler, {decisions} awaited decision line(s) plus \
         {repeats} in counts"
    );
    ensure!(
        decisions <= 1,
        "{decisions} awaited decision lines for the one victim since the policy switch"
    );
    ensure!(
        decisions + repeats <= counted,
        "the log accounts for {} awaits, the handler counted only {counted}",
        decisions + repeats
    );
    ensure!(
        counted <= decisions || repeats > 0,
        "the handler awaited {counted} times but the log shows only {decisions} awaited \
         decision(s) and no count"
    );
    Ok(())
}
