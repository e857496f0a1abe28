//! `policyd load --metrics-file` and `policyd metrics`: the handler's counters, as
//! Prometheus reads them.
//!
//! /app holds /app/a (priority 10) and /app/b (priority 20); policyd is attached to /app
//! and keeps /run/metrics/policyd.prom. Each OOM comes from lowering /app's memory.max
//! (pdutil::squeeze), so a's hog dies every time.
//!
//! 1. At attach the file exists, names the handler (attach="/app", policy priority) and
//!    counts no OOM. Idle, it is not rewritten (same inode and mtime after 3 s).
//! 2. After each of two OOMs the file catches up by itself: kills = n, decisions for
//!    /app/a killed = n, OOMs = kills + awaits + deferrals + dry runs, the histogram's
//!    count = OOMs and its +Inf bucket too, awaits = the awaited decisions for /app/a, no
//!    dropped event; and `policyd metrics` prints exactly the file's text.
//! 3. SIGTERM: policyd detaches and removes the file.
//!
//! The final text goes to the host as a `metrics` record: the host reads it with
//! prometheus-client's parser and fails the scenario if that rejects it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{self, Cgroup, Hog, HogSpec};
use crate::guest::Scenario;
use crate::records::{MetricsText, Record};

pub fn scenario() -> Scenario {
    Scenario::new("policyd-metrics", run)
        .needs_policyd()
        .timeout_s(120)
}

const CONFIG: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/app/a"
priority = 10

[[rule]]
cgroup = "/app/b"
priority = 20
"#;

const DIR: &str = "/run/metrics";
const FILE: &str = "/run/metrics/policyd.prom";

/// Samples of an exposition by series (`name{labels}`), values as floats.
fn samples(text: &str) -> Result<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("no value in the sample line {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .with_context(|| format!("value of {line:?} is not a number"))?,
        };
        ensure!(
            out.insert(series.to_owned(), value).is_none(),
            "series {series} twice"
        );
    }
    Ok(out)
}

fn get(s: &HashMap<String, f64>, series: &str) -> Result<f64> {
    s.get(series)
        .copied()
        .with_context(|| format!("no series {series}"))
}

/// The per-handler counter `name` of the handler on /app.
fn of_app(s: &HashMap<String, f64>, name: &str) -> Result<f64> {
    get(s, &format!("{name}{{attach=\"/app\"}}"))
}

/// Checks the file after `n` OOMs that each killed a's hog; returns its text.
fn expect_counts(n: u64, a_id: u64) -> Result<String> {
    let text = util::read_file(FILE)?;
    let s = samples(&text).with_context(|| format!("{FILE}:\n{text}"))?;
    let check = || -> Result<()> {
        let kills = of_app(&s, "policyd_kills_total")?;
        let ooms = of_app(&s, "policyd_ooms_total")?;
        let awaits = of_app(&s, "policyd_awaits_total")?;
        let deferrals = of_app(&s, "policyd_deferrals_total")?;
        let dry_runs = of_app(&s, "policyd_dry_runs_total")?;
        ensure!(
            kills == n as f64,
            "policyd_kills_total is {kills}, expected {n}"
        );
        let series = |outcome: &str| {
            format!(
                "policyd_decisions_total{{attach=\"/app\",cgroup=\"/app/a\",cgroup_id=\"{a_id}\",\
                 outcome=\"{outcome}\"}}"
            )
        };
        let killed = get(&s, &series("killed"))?;
        ensure!(
            killed == n as f64,
            "{} is {killed}, expected {n}",
            series("killed")
        );
        ensure!(
            ooms == kills + awaits + deferrals + dry_runs,
            "OOMs {ooms} != kills {kills} + awaits {awaits} + deferrals {deferrals} + dry \
             runs {dry_runs}"
        );
        let awaited = s.get(&series("awaited")).copied().unwrap_or(0.0);
        ensure!(
            awaited == awaits,
            "{awaits} awaits counted, {awaited} awaited decisions for /app/a"
        );
        let count = of_app(&s, "policyd_handler_seconds_count")?;
        let inf = get(
            &s,
            "policyd_handler_seconds_bucket{attach=\"/app\",le=\"+Inf\"}",
        )?;
        ensure!(
            count == ooms && inf == ooms,
            "histogram count {count} and +Inf bucket {inf}, expected the {ooms} OOMs"
        );
        let sum = of_app(&s, "policyd_handler_seconds_sum")?;
        let max = of_app(&s, "policyd_handler_max_seconds")?;
        ensure!(
            sum > 0.0 && max > 0.0 && max <= sum,
            "handler time: sum {sum} s, max {max} s"
        );
        ensure!(
            of_app(&s, "policyd_events_dropped_total")? == 0.0,
            "events dropped"
        );
        ensure!(
            of_app(&s, "policyd_kill_failures_total")? == 0.0,
            "kill failures"
        );
        println!(
            "after {n} OOM(s): {ooms} handler runs, {kills} kills, {awaits} awaits, handler \
             time {:.2} ms in all, {:.2} ms at most",
            sum * 1e3,
            max * 1e3
        );
        Ok(())
    };
    check().with_context(|| format!("{FILE}:\n{text}"))?;
    Ok(text)
}

/// Waits until the file and `policyd metrics` agree (the daemon writes after it has
/// read the OOM's events, which may still be on their way), then returns the text.
fn settled() -> Result<String> {
    let mut last = (String::new(), String::new());
    let agreed = util::wait_until(
        Duration::from_secs(20),
        "the file to match policyd metrics",
        || {
            let file = fs::read_to_string(FILE).unwrap_or_default();
            let cli = pdutil::run_quiet(&["metrics"])
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let same = !file.is_empty() && file == cli;
            last = (file, cli);
            same
        },
    );
    if agreed.is_err() {
        bail!(
            "{FILE} and `policyd metrics` still differ after 20 s\n--- file:\n{}\n--- policyd \
             metrics:\n{}",
            last.0,
            last.1
        );
    }
    Ok(last.0)
}

fn oom(pd: &mut Policyd, app: &Cgroup, a_cg: &Cgroup, b_cg: &Cgroup) -> Result<()> {
    let mut a = Hog::start(a_cg, &HogSpec::fixed(44), pdutil::READY_TIMEOUT)?;
    let mut b = Hog::start(b_cg, &HogSpec::fixed(52), pdutil::READY_TIMEOUT)?;
    pdutil::squeeze(app, 10)?;
    a.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_killing_decision(Duration::from_secs(10))?;
    d.expect(&[("victim_cgroup", "/app/a"), ("outcome", "killed")])?;
    expect_alive(&mut b, "b's hog")?;
    app.set("memory.max", "max")?;
    Ok(())
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let app = Cgroup::create("app")?;
    let a_cg = app.child("a")?;
    let b_cg = app.child("b")?;
    let a_id = a_cg.id()?;
    fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
    let config = pdutil::write_config("metrics", CONFIG)?;
    let mut pd = Policyd::load(&[
        "--config",
        &config,
        "--cgroup",
        "/app",
        "--metrics-file",
        FILE,
    ])?;

    // 1. At attach.
    let text = settled()?;
    let s = samples(&text)?;
    ensure!(
        get(&s, "policyd_handlers")? == 1.0,
        "policyd_handlers:\n{text}"
    );
    get(
        &s,
        "policyd_handler_info{attach=\"/app\",handler=\"policyd_priority\",policy=\"priority\",\
         dry_run=\"false\"}",
    )
    .with_context(|| format!("{FILE}:\n{text}"))?;
    ensure!(
        of_app(&s, "policyd_ooms_total")? == 0.0,
        "OOMs before any:\n{text}"
    );
    let before = fs::metadata(FILE)?;
    std::thread::sleep(Duration::from_secs(3));
    let after = fs::metadata(FILE)?;
    ensure!(
        (before.ino(), before.mtime_nsec(), before.mtime())
            == (after.ino(), after.mtime_nsec(), after.mtime()),
        "{FILE} was rewritten while nothing happened"
    );
    println!("idle: {FILE} untouched for 3 s");

    // 2. Two OOMs.
    let mut text = String::new();
    for n in 1..=2 {
        oom(&mut pd, &app, &a_cg, &b_cg)?;
        settled()?;
        text = expect_counts(n, a_id)?;
    }
    util::emit_json(&Record::Metrics(MetricsText {
        what: format!("{FILE} after two OOMs"),
        text,
    }));

    // 3. Detach.
    pd.stop()?;
    ensure!(
        !std::path::Path::new(FILE).exists(),
        "{FILE} is still there after policyd detached"
    );
    println!("metrics: file and `policyd metrics` agree, counters add up, file gone at exit");
    Ok(())
}
