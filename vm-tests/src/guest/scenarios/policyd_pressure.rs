//! Pressure rules (`[[pressure]]`, issue #12): a memory pressure limit that holds declares
//! an OOM, and the attached policy picks the victim in its scope as for a real OOM.
//!
//! Layout: /press holds a valuable service (priority 500, 16 MiB, idle) and a job
//! (priority 20) that grows slowly. The scenario makes pressure without any real OOM by
//! setting /press's memory.high just above its usage: the growing job is throttled
//! (reclaim, then the kernel's over-high penalty sleeps), which the kernel counts as
//! memory stall in /press and, hierarchically, system-wide. With no swap nothing else
//! frees memory there, so the `some` stall passes 10% within a 1 s window at once, and
//! setting memory.high back to max ends it.
//!
//! * `policyd-pressure-memcg`: a rule on /press, created after policyd started (armed
//!   through its cgroup watch), declares an OOM of /press's memcg; the policy kills the
//!   job; /press's memory.events counts the declared OOM and its kill;
//! * `policyd-pressure-global`: a rule on / declares a system-wide OOM; same victim. This
//!   one runs with swap on zram: reclaim then swaps the job out (it must, the scenario
//!   checks swap was used) and the stall is that of a thrashing machine;
//! * `policyd-pressure-backoff`: a tiny bystander (priority 10) is the first victim, so
//!   the job keeps the pressure up: for 5 more windows policyd declares nothing (PSI
//!   shows the stall went on), then logs relief once memory.high is lifted, and the next
//!   episode declares again (killing the job);
//! * `policyd-pressure-dry-run`: `--dry-run` declares nothing (no OOM in memory.events,
//!   everyone alive) and says once per episode what it would have done, naming the job;
//! * `demo-pressure` (`./vm-tests/run demo pressure`): the same pressure, first with no
//!   pressure rule (the job stalls on and no OOM ever comes), then with one.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use policyd::pressure::CAP_SYS_RESOURCE;

use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{story, Cgroup, Hog, HogSpec, ZramSwap};
use crate::guest::Scenario;

/// The limit every scenario's rule sets, as decision lines name it.
const LIMIT: &str = "memory.pressure some 10%/1s";
/// How long a held limit may take to become a decision under TCG.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn memcg() -> Scenario {
    Scenario::new("policyd-pressure-memcg", run_memcg)
        .needs_policyd()
        .timeout_s(150)
}

pub fn global() -> Scenario {
    Scenario::new("policyd-pressure-global", run_global)
        .needs_policyd()
        .timeout_s(150)
}

pub fn backoff() -> Scenario {
    Scenario::new("policyd-pressure-backoff", run_backoff)
        .needs_policyd()
        .timeout_s(180)
}

pub fn dry_run() -> Scenario {
    Scenario::new("policyd-pressure-dry-run", run_dry_run)
        .needs_policyd()
        .timeout_s(150)
}

pub fn needs_cap() -> Scenario {
    Scenario::new("policyd-pressure-needs-cap", run_needs_cap)
        .needs_policyd()
        .timeout_s(120)
}

pub fn demo() -> Scenario {
    Scenario::new("demo-pressure", run_demo)
        .needs_policyd()
        .timeout_s(150)
}

struct Press {
    press: Cgroup,
    service_cg: Cgroup,
    job_cg: Cgroup,
    bystander_cg: Cgroup,
    config: String,
}

impl Press {
    /// Writes /tmp/<name>.toml, whose pressure rule is on `pressure_on`; its path.
    fn config(name: &str, pressure_on: &str) -> Result<String> {
        pdutil::write_config(
            name,
            &format!(
                r#"
policy = "priority"

[[rule]]
cgroup = "/press/service"
priority = 500

[[rule]]
cgroup = "/press/job"
priority = 20

[[rule]]
cgroup = "/press/bystander"
priority = 10

[[pressure]]
cgroup = "{pressure_on}"
stall = "some"
limit = "10%"
duration = "1s"
"#
            ),
        )
    }

    /// The cgroups, and the config of [`Press::config`].
    fn create(name: &str, pressure_on: &str) -> Result<Press> {
        let config = Press::config(name, pressure_on)?;
        let press = Cgroup::create("press")?;
        Ok(Press {
            service_cg: press.child("service")?,
            job_cg: press.child("job")?,
            bystander_cg: press.child("bystander")?,
            press,
            config,
        })
    }

    fn service(&self) -> Result<Hog> {
        Hog::start(&self.service_cg, &HogSpec::fixed(16), pdutil::READY_TIMEOUT)
    }

    /// Grows 256 KiB every 20 ms, up to 160 MiB: fast enough to pass memory.high at
    /// once, capped well inside the guest's RAM should throttling fail.
    fn job(&self) -> Result<Hog> {
        let spec = HogSpec::growing(4)
            .step_kib(256)
            .delay_us(20_000)
            .up_to(160);
        Hog::start(&self.job_cg, &spec, pdutil::READY_TIMEOUT)
    }

    /// memory.high 2 MiB above the current usage: whoever allocates in /press stalls.
    fn throttle(&self) -> Result<()> {
        let current = self.press.read_u64("memory.current")?;
        self.press
            .set("memory.high", (current + (2 << 20)).to_string())
    }

    fn unthrottle(&self) -> Result<()> {
        self.press.set("memory.high", "max")
    }

    /// /press's `some` stall so far (memory.pressure's total), in microseconds.
    fn some_stall_us(&self) -> Result<u64> {
        stall_total(&self.press.read("memory.pressure")?, "some")
    }
}

/// The `total=` of the `kind` line of a pressure file.
fn stall_total(text: &str, kind: &str) -> Result<u64> {
    text.lines()
        .find(|l| l.starts_with(kind))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no {kind} total in memory.pressure: {text:?}"))
}

/// Waits for the "pressure trigger armed" line of `cgroup`.
fn wait_armed(pd: &mut Policyd, cgroup: &str) -> Result<()> {
    let line = pd.wait_line(
        Duration::from_secs(10),
        &format!("the pressure trigger on {cgroup}"),
        |l| l.is("INFO", "pressure trigger armed") && l.field("cgroup").as_deref() == Some(cgroup),
    )?;
    line.expect(
        "pressure trigger armed",
        &[("limit", LIMIT), ("trigger", "some 100000 1000000")],
    )
}

fn run_memcg() -> Result<()> {
    declares_and_kills_the_job("pressure-memcg", "/press", "/press", None)
}

fn run_global() -> Result<()> {
    let swap = ZramSwap::on(128)?;
    declares_and_kills_the_job("pressure-global", "/", "global", Some(&swap))
}

/// Pressure on `pressure_on` declares an OOM whose decision has scope `scope` and kills
/// the job, not the service. With `swap`, the job must have been swapped out by then.
fn declares_and_kills_the_job(
    name: &str,
    pressure_on: &str,
    scope: &str,
    swap: Option<&ZramSwap>,
) -> Result<()> {
    pdutil::quiet_oom_reports()?;
    // policyd starts first: /press (fresh in this VM) appears later, and its trigger is
    // armed through policyd's cgroup watch.
    let mut pd = Policyd::load(&["priority", "--config", &Press::config(name, pressure_on)?])?;
    let l = Press::create(name, pressure_on)?;
    wait_armed(&mut pd, pressure_on)?;
    let mut service = l.service()?;
    let mut job = l.job()?;
    let before = l.press.events()?;
    let swapped_before = ZramSwap::pages_out()?;

    let started = Instant::now();
    l.throttle()?;
    let d = pd.next_decision(DECLARE_TIMEOUT)?;
    let took = started.elapsed();
    if let Some(swap) = swap {
        let out = ZramSwap::pages_out()? - swapped_before;
        ensure!(
            out > 0,
            "nothing was swapped to the {} MiB zram device before the declaration",
            swap.mib()
        );
        println!(
            "swapped out to zram before the declaration: {} KiB",
            out * 4
        );
    }
    let pid = job.pid().to_string();
    d.expect(&[
        ("trigger", &format!("pressure {LIMIT}")),
        ("scope", scope),
        ("victim_cgroup", "/press/job"),
        ("pid", &pid),
        ("priority", "20"),
        ("outcome", "killed"),
        ("killed", "1"),
    ])?;
    job.wait_killed(Duration::from_secs(10))?;
    expect_alive(&mut service, "service (priority 500)")?;
    let after = l.press.events()?;
    // A declared memcg OOM counts in its memcg's "oom" as a real one does; a
    // system-wide one in no memcg's.
    let ooms = if scope == "global" { 0 } else { 1 };
    ensure!(
        after.oom - before.oom == ooms && after.oom_kill - before.oom_kill == 1,
        "/press memory.events: oom {} -> {}, oom_kill {} -> {}; expected +{ooms} and +1",
        before.oom,
        after.oom,
        before.oom_kill,
        after.oom_kill
    );
    l.unthrottle()?;
    pd.stop()?;
    println!(
        "pressure on {pressure_on}: decision {:.1} s after memory.high was lowered: {d}",
        took.as_secs_f64()
    );
    Ok(())
}

fn run_backoff() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let l = Press::create("pressure-backoff", "/press")?;
    let mut pd = Policyd::load(&["priority", "--config", &l.config])?;
    wait_armed(&mut pd, "/press")?;
    let mut service = l.service()?;
    let mut bystander = Hog::start(&l.bystander_cg, &HogSpec::fixed(1), pdutil::READY_TIMEOUT)?;
    let mut job = l.job()?;
    let mark = pd.mark();

    // Episode 1: the bystander ranks lowest and dies; freeing its 1 MiB does not end
    // the pressure the job makes.
    l.throttle()?;
    let first = pd.next_decision(DECLARE_TIMEOUT)?;
    first.expect(&[
        ("trigger", &format!("pressure {LIMIT}")),
        ("victim_cgroup", "/press/bystander"),
        ("pid", &bystander.pid().to_string()),
        ("outcome", "killed"),
    ])?;
    bystander.wait_killed(Duration::from_secs(10))?;
    // Keep the episode going whatever the kill freed.
    l.throttle()?;
    let stall_before = l.some_stall_us()?;
    let watched = Instant::now();
    sleep(Duration::from_secs(5));
    let stalled = Duration::from_micros(l.some_stall_us()? - stall_before);
    let watched = watched.elapsed();
    ensure!(
        stalled.as_secs_f64() > watched.as_secs_f64() * 0.3,
        "the job stalled only {:.2} s of {:.2} s after the first kill: the episode did not go \
         on, so this run cannot show the back-off",
        stalled.as_secs_f64(),
        watched.as_secs_f64()
    );
    let decisions = pd.decisions_since(mark)?;
    ensure!(
        decisions.len() == 1,
        "{} decisions in one pressure episode (stalled {:.2} s of {:.2} s), expected 1: {}",
        decisions.len(),
        stalled.as_secs_f64(),
        watched.as_secs_f64(),
        pdutil::one_per_line(&decisions)
    );
    expect_alive(&mut job, "job (the episode's one kill was the bystander)")?;

    // Relief ends the episode.
    l.unthrottle()?;
    let relieved = Instant::now();
    pd.wait_line(Duration::from_secs(15), "relief on /press", |line| {
        line.is("INFO", "pressure relieved") && line.field("cgroup").as_deref() == Some("/press")
    })?;
    let relief_s = relieved.elapsed().as_secs_f64();

    // Episode 2 declares again: now the job ranks lowest.
    l.throttle()?;
    let second = pd.next_decision(DECLARE_TIMEOUT)?;
    second.expect(&[
        ("trigger", &format!("pressure {LIMIT}")),
        ("victim_cgroup", "/press/job"),
        ("pid", &job.pid().to_string()),
        ("outcome", "killed"),
    ])?;
    job.wait_killed(Duration::from_secs(10))?;
    expect_alive(&mut service, "service (priority 500)")?;
    l.unthrottle()?;
    pd.stop()?;
    println!(
        "back-off: 1 decision while /press stalled {:.2} s of {:.2} s after the kill; relief \
         logged {relief_s:.1} s after memory.high was lifted; the next episode killed the job",
        stalled.as_secs_f64(),
        watched.as_secs_f64()
    );
    Ok(())
}

fn run_dry_run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let l = Press::create("pressure-dry-run", "/press")?;
    let mut pd = Policyd::load(&["priority", "--config", &l.config, "--dry-run"])?;
    wait_armed(&mut pd, "/press")?;
    let mut service = l.service()?;
    let mut job = l.job()?;
    let before = l.press.events()?;
    let mark = pd.mark();

    l.throttle()?;
    let line = pd.wait_line(DECLARE_TIMEOUT, "the dry run's line", |line| {
        line.is("INFO", "dry run: pressure limit held")
    })?;
    line.expect("dry run", &[("cgroup", "/press"), ("limit", LIMIT)])?;
    let said = format!("kill one task in /press/job: pid {}", job.pid());
    ensure!(
        line.message.contains(&said),
        "the dry run does not say it would {said}: {line}"
    );
    // The episode goes on: no second line, nothing declared, nobody killed.
    sleep(Duration::from_secs(4));
    let later: Vec<String> = pd.log()[mark..]
        .iter()
        .filter(|l| l.message.contains("dry run: pressure") || l.message == "decision")
        .map(|l| l.raw.clone())
        .collect();
    ensure!(
        later.len() == 1,
        "a dry run logs one line per episode and declares nothing; got:\n{}",
        later.join("\n")
    );
    expect_alive(&mut job, "job (dry run)")?;
    expect_alive(&mut service, "service")?;
    let after = l.press.events()?;
    ensure!(
        after.oom == before.oom && after.oom_kill == before.oom_kill,
        "a dry run declared an OOM: /press memory.events oom {} -> {}, oom_kill {} -> {}",
        before.oom,
        after.oom,
        before.oom_kill,
        after.oom_kill
    );
    l.unthrottle()?;
    pd.wait_line(Duration::from_secs(15), "relief on /press", |line| {
        line.is("INFO", "pressure relieved")
    })?;
    pd.stop()?;
    println!("{}", line.message);
    Ok(())
}

/// Without CAP_SYS_RESOURCE a PSI trigger is unprivileged, and Linux 7.3 fires a new
/// one on its cgroup's past stall: policyd arms none and says why, and still attaches.
fn run_needs_cap() -> Result<()> {
    let l = Press::create("pressure-needs-cap", "/press")?;
    let mut pd =
        Policyd::load_without_caps(&["priority", "--config", &l.config], &[CAP_SYS_RESOURCE])?;
    let error = pd
        .wait_line(
            Duration::from_secs(10),
            "the error that pressure rules need CAP_SYS_RESOURCE",
            |line| line.is("ERROR", "lacks CAP_SYS_RESOURCE"),
        )?
        .message;
    ensure!(
        !pd.log()
            .iter()
            .any(|line| line.message == "pressure trigger armed"),
        "policyd without CAP_SYS_RESOURCE armed a pressure trigger"
    );
    println!("{error}");
    // A cgroup created later gets no trigger either.
    let later = l.press.child("later")?;
    sleep(Duration::from_secs(2));
    ensure!(
        !pd.log()
            .iter()
            .any(|line| line.message == "pressure trigger armed"),
        "policyd without CAP_SYS_RESOURCE armed a trigger on {}",
        later.path()
    );
    pd.stop()?;
    Ok(())
}

/// How long the demo lets the job stall without a pressure rule.
const DEMO_STALL: Duration = Duration::from_secs(8);

fn run_demo() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let l = Press::create("demo-pressure", "/press")?;
    story(
        "Memory pressure, told twice. /press holds a service (16 MiB, priority 500) and a job \
         (priority 20) that keeps growing; memory.high on /press, just above its usage, makes \
         the job stall on memory the way a thrashing machine does, but no allocation ever \
         fails, so the kernel never declares an OOM.",
    );

    // 1. Rules, but no pressure rule: nothing acts.
    let plain = pdutil::write_config(
        "demo-pressure-plain",
        std::fs::read_to_string(&l.config)?
            .split("[[pressure]]")
            .next()
            .context("the demo config")?,
    )?;
    let mut pd = Policyd::load(&["priority", "--config", &plain])?;
    let mut service = l.service()?;
    let mut job = l.job()?;
    let before = l.some_stall_us()?;
    l.throttle()?;
    sleep(DEMO_STALL);
    let stalled = Duration::from_micros(l.some_stall_us()? - before);
    expect_alive(&mut job, "job (no pressure rule: nothing acts)")?;
    ensure!(
        pd.decisions_since(0)?.is_empty() && l.press.events()?.oom == 0,
        "an OOM came without a pressure rule"
    );
    story(format!(
        "Run 1, policyd without a pressure rule: for {} s the job stalled {:.1} s on memory \
         ({:.0}% of the time) and nothing happened: no OOM, nobody killed.",
        DEMO_STALL.as_secs(),
        stalled.as_secs_f64(),
        100.0 * stalled.as_secs_f64() / DEMO_STALL.as_secs_f64()
    ));
    pd.stop()?;

    // 2. The same with `[[pressure]] cgroup = "/press" stall = "some" limit = "10%"
    // duration = "1s"`, the episode still going on.
    let started = Instant::now();
    let mut pd = Policyd::load(&["priority", "--config", &l.config])?;
    wait_armed(&mut pd, "/press")?;
    let d = pd.next_decision(DECLARE_TIMEOUT)?;
    let declared = started.elapsed();
    d.expect(&[
        ("trigger", &format!("pressure {LIMIT}")),
        ("victim_cgroup", "/press/job"),
        ("pid", &job.pid().to_string()),
        ("outcome", "killed"),
    ])?;
    job.wait_killed(Duration::from_secs(10))?;
    expect_alive(&mut service, "service (priority 500)")?;
    pd.wait_line(Duration::from_secs(15), "relief on /press", |line| {
        line.is("INFO", "pressure relieved")
    })?;
    let relieved = started.elapsed();
    story(format!(
        "Run 2, with [[pressure]] cgroup = \"/press\", stall = \"some\", limit = \"10%\", \
         duration = \"1s\": {:.1} s after policyd started it declared an OOM of /press; the \
         policy killed the job (pid {}, priority 20, the lowest), the service lives on; \
         pressure relieved at {:.1} s.",
        declared.as_secs_f64(),
        job.pid(),
        relieved.as_secs_f64()
    ));
    story(format!("  policyd's log: decision {}", d.summary()));
    l.unthrottle()?;
    pd.stop()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stall_total() {
        let text = "some avg10=1.00 avg60=0.50 avg300=0.10 total=123456\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=789\n";
        assert_eq!(stall_total(text, "some").unwrap(), 123456);
        assert_eq!(stall_total(text, "full").unwrap(), 789);
        assert!(stall_total("", "some").is_err());
    }
}
