//! systemd-service: policyd as its users run it. In the Debian guest, systemd as PID 1:
//!
//! 1. `dpkg -i` the package: its postinst enables and starts policyd.service, sandboxed
//!    as the shipped unit says, logging to the journal natively (PRIORITY and POLICYD_*
//!    fields); StatusText names the policy. Started again without waiting, the unit is
//!    seen `activating` and, from the moment it is `active`, `policyd status` lists its
//!    handler: READY=1 comes only after the attach;
//! 2. an OOM in a test slice (a unit with MemoryMax=) is decided by policyd, and
//!    `journalctl -u policyd MESSAGE_ID=<decisions>` finds it with the victim's cgroup and
//!    pid, reason and outcome as fields; the unit's metrics file counts the kill;
//! 3. `systemctl reload` after a config change: the new rules count in StatusText, an
//!    `oom_group = true` rule sets memory.oom.group through the sandbox, and the same
//!    link (never detached, so never a moment without a handler);
//! 4. `kill -9` of policyd: systemd restarts it and it attaches again (a new link, one
//!    handler);
//! 5. with a drop-in setting `WatchdogSec=`, policyd pings the watchdog: systemd does
//!    not kill it over two and a half periods;
//! 6. `systemctl stop`: policyd detaches (`policyd status` lists no handler) and its
//!    metrics file is gone.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::guest::util::{self, describe_status};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("systemd-service", run)
        .debian()
        .timeout_s(900)
        .mem_mb(768)
}

const POLICYD: &str = "/usr/sbin/policyd";
const CONFIG: &str = "/etc/policyd/policies.toml";
/// Where the shipped unit has policyd keep its metrics (`--metrics-file`).
const METRICS: &str = "/run/policyd/metrics/policyd.prom";
/// policyd's MESSAGE_ID for OOM decisions (policyd::journal).
const DECISIONS: &str = policyd::journal::DECISION_MESSAGE_ID;
/// Starting, attaching or restarting policyd under TCG, with systemd's own work.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(120);
/// The watchdog timeout a drop-in sets: policyd must ping within it, again and again.
const WATCHDOG: Duration = Duration::from_secs(10);

fn run() -> Result<()> {
    let started = Instant::now();
    install()?;
    println!("install + start: {:.1} s", started.elapsed().as_secs_f64());

    let step = Instant::now();
    active_only_once_attached()?;
    println!("start, watched: {:.1} s", step.elapsed().as_secs_f64());

    let step = Instant::now();
    oom_in_a_test_slice()?;
    println!("OOM in a slice: {:.1} s", step.elapsed().as_secs_f64());

    let step = Instant::now();
    let link = reload_keeps_the_handler()?;
    println!("reload: {:.1} s", step.elapsed().as_secs_f64());

    let step = Instant::now();
    killed_is_restarted_and_reattached(link)?;
    println!("kill -9 and restart: {:.1} s", step.elapsed().as_secs_f64());

    let step = Instant::now();
    watchdog_is_fed()?;
    println!("watchdog: {:.1} s", step.elapsed().as_secs_f64());

    let step = Instant::now();
    stop_detaches()?;
    println!("stop: {:.1} s", step.elapsed().as_secs_f64());

    let _ = command(
        "systemd-analyze",
        &["security", "policyd.service", "--no-pager"],
    );
    Ok(())
}

/// Runs `program args`, prints it and what it said; fails unless it exits 0.
pub(super) fn command(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "$ {program} {} -> {}\n{stdout}{}",
        args.join(" "),
        describe_status(out.status),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{program} {} failed ({})",
        args.join(" "),
        describe_status(out.status)
    );
    Ok(stdout)
}

/// `systemctl show -p PROPERTY --value UNIT`, without echo (polled).
pub(super) fn show(unit: &str, property: &str) -> Result<String> {
    let out = Command::new("systemctl")
        .args(["show", "-p", property, "--value", unit])
        .output()
        .context("running systemctl show")?;
    ensure!(
        out.status.success(),
        "systemctl show -p {property} {unit} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(super) fn show_u64(unit: &str, property: &str) -> Result<u64> {
    let v = show(unit, property)?;
    v.parse()
        .with_context(|| format!("{unit} {property}={v:?} is not a number"))
}

/// policyd.service's journal entries matching `filters` (journalctl's FIELD=VALUE).
pub(super) fn journal(filters: &[&str]) -> Result<Vec<Value>> {
    let out = Command::new("journalctl")
        .args(["-u", "policyd.service", "-o", "json", "--no-pager"])
        .args(filters)
        .output()
        .context("running journalctl")?;
    ensure!(
        out.status.success(),
        "journalctl failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("journal entry {l:?}")))
        .collect()
}

pub(super) fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or("")
}

/// The first entry whose MESSAGE starts with `prefix`, after `since` earlier ones.
fn wait_for_entry(prefix: &str, skip: usize) -> Result<Value> {
    util::poll(
        SERVICE_TIMEOUT,
        &format!("policyd's journal entry {prefix:?}"),
        || {
            Ok(journal(&[])?
                .into_iter()
                .filter(|e| field(e, "MESSAGE").starts_with(prefix))
                .nth(skip))
        },
    )
}

/// `policyd status --json`: the attached handlers.
fn handlers() -> Result<Vec<Value>> {
    let out = command(POLICYD, &["status", "--json"])?;
    match serde_json::from_str(&out).context("policyd status --json is not JSON")? {
        Value::Array(h) => Ok(h),
        other => bail!("policyd status --json printed {other}, not an array"),
    }
}

/// The one handler attached, system-wide, held by `main_pid`; its link id.
fn the_handler_of(main_pid: u64) -> Result<u64> {
    let h = handlers()?;
    ensure!(
        h.len() == 1,
        "expected one handler, policyd status lists {}",
        h.len()
    );
    let h = &h[0];
    ensure!(
        h["system_wide"] == true,
        "the handler is not system-wide: {h}"
    );
    let owners: Vec<u64> = h["owners"]
        .as_array()
        .map(|o| o.iter().filter_map(|o| o["pid"].as_u64()).collect())
        .unwrap_or_default();
    ensure!(
        owners == [main_pid],
        "the handler is held by {owners:?}, not policyd.service's MainPID {main_pid}"
    );
    h["link_id"]
        .as_u64()
        .context("no link_id in policyd status")
}

fn status_text() -> Result<String> {
    show("policyd.service", "StatusText")
}

pub(super) fn install() -> Result<()> {
    command("dpkg", &["-i", "/run/vmtest/policyd.deb"])?;
    // dpkg returned: the postinst's start job is done, so the unit is up, or failed.
    let state = show("policyd.service", "ActiveState")?;
    let sub = show("policyd.service", "SubState")?;
    if state != "active" || sub != "running" {
        let _ = command("systemctl", &["status", "--no-pager", "policyd.service"]);
        let _ = command("journalctl", &["-u", "policyd.service", "--no-pager"]);
        bail!("after dpkg -i, policyd.service is {state} ({sub}), not active (running)");
    }
    ensure!(
        show("policyd.service", "UnitFileState")? == "enabled",
        "the package did not enable policyd.service"
    );
    let status = status_text()?;
    ensure!(
        status.starts_with("policy priority attached system-wide: "),
        "StatusText {status:?} does not say what is attached"
    );

    let attached = wait_for_entry("attached ", 0)?;
    // Native journal entries: a priority of our choosing and the fields as fields.
    ensure!(
        field(&attached, "PRIORITY") == "5" && field(&attached, "POLICYD_POLICY") == "priority",
        "the attached entry is not policyd's native journal entry: {attached}"
    );
    ensure!(
        field(&attached, "SYSLOG_IDENTIFIER") == "policyd",
        "no SYSLOG_IDENTIFIER=policyd: {attached}"
    );
    // The unit's system call filter lets policyd mark the cgroup file system: it does
    // not fall back to a watch per cgroup.
    ensure!(
        field(&attached, "POLICYD_CGROUP_WATCH") == "fanotify",
        "policyd.service watches cgroups with {:?}, not fanotify: {attached}",
        field(&attached, "POLICYD_CGROUP_WATCH")
    );
    // The packaged unit gives policyd all it needs: a sandbox that took some of it
    // away shows as a warning (the per-CPU counters' address needs CAP_SYSLOG).
    let warnings: Vec<String> = journal(&["-p", "warning"])?
        .iter()
        .map(|e| field(e, "MESSAGE").to_owned())
        .collect();
    ensure!(
        warnings.is_empty(),
        "policyd.service started with warnings:\n{}",
        warnings.join("\n")
    );
    let main_pid = show_u64("policyd.service", "MainPID")?;
    the_handler_of(main_pid)?;
    let adj = util::read_file(format!("/proc/{main_pid}/oom_score_adj"))?;
    ensure!(adj.trim() == "-1000", "policyd's oom_score_adj is {adj}");
    Ok(())
}

/// Starts policyd without waiting and watches the unit: `activating` while policyd
/// loads and attaches, and from the first moment it is `active`, its handler is there.
fn active_only_once_attached() -> Result<()> {
    command("systemctl", &["stop", "policyd.service"])?;
    ensure!(handlers()?.is_empty(), "a handler outlived systemctl stop");
    command("systemctl", &["start", "--no-block", "policyd.service"])?;
    let mut activating = 0;
    let state = util::poll(
        SERVICE_TIMEOUT,
        "policyd.service to leave activating",
        || {
            let state = show("policyd.service", "ActiveState")?;
            Ok(match state.as_str() {
                "activating" | "inactive" => {
                    activating += usize::from(state == "activating");
                    None
                }
                _ => Some(state),
            })
        },
    )?;
    ensure!(state == "active", "policyd.service is {state}, not active");
    // Before anything else: the handler must already be there.
    let main_pid = show_u64("policyd.service", "MainPID")?;
    the_handler_of(main_pid)?;
    ensure!(
        activating > 0,
        "policyd.service was never seen activating: it cannot have waited for READY=1"
    );
    let exec = show_u64("policyd.service", "ExecMainStartTimestampMonotonic")?;
    let active = show_u64("policyd.service", "ActiveEnterTimestampMonotonic")?;
    println!(
        "seen activating {activating} times; active {:.2} s after policyd started (load and \
         attach)",
        active.saturating_sub(exec) as f64 / 1e6
    );
    Ok(())
}

fn oom_in_a_test_slice() -> Result<()> {
    // A unit of its own in a slice of its own, limited to 48 MiB: the OOM is that
    // cgroup's, and the shipped config leaves it at the default priority.
    command(
        "systemd-run",
        &[
            "--unit=oomtest-hog",
            "--slice=oomtest.slice",
            "-p",
            "MemoryMax=48M",
            "/run/vmtest/vm-tests",
            "guest",
            "hog",
            "--mib",
            "4",
            "--grow",
        ],
    )?;
    // systemd-run returns once the unit is started: its MainPID is the hog.
    let hog_pid = show_u64("oomtest-hog.service", "MainPID")?;
    ensure!(hog_pid > 0, "oomtest-hog.service has no MainPID");
    let decision = util::poll(SERVICE_TIMEOUT, "policyd's decision in the journal", || {
        Ok(journal(&[&format!("MESSAGE_ID={DECISIONS}")])?
            .into_iter()
            .next())
    })?;
    println!("decision entry: {decision}");
    let victim_cgroup = "/oomtest.slice/oomtest-hog.service";
    let pid = hog_pid.to_string();
    for (name, want) in [
        ("POLICYD_VICTIM_CGROUP", victim_cgroup),
        ("POLICYD_VICTIM_PID", pid.as_str()),
        ("POLICYD_OUTCOME", "killed"),
        ("POLICYD_REASON", "lowest-priority"),
        ("POLICYD_SCOPE", victim_cgroup),
        ("PRIORITY", "5"),
    ] {
        ensure!(
            field(&decision, name) == want,
            "the decision's {name} is {:?}, not {want:?}",
            field(&decision, name)
        );
    }
    ensure!(
        field(&decision, "MESSAGE").starts_with(&format!("decision: killed pid {hog_pid} ")),
        "the decision's MESSAGE: {:?}",
        field(&decision, "MESSAGE")
    );
    util::wait_until(SERVICE_TIMEOUT, "oomtest-hog.service to end", || {
        show("oomtest-hog.service", "ActiveState").is_ok_and(|s| s != "active")
    })?;
    // What systemd saw: its unit's main process killed (systemd says `oom-kill` when it
    // noticed memory.events first, `signal` when the SIGKILL came first).
    let result = show("oomtest-hog.service", "Result")?;
    ensure!(
        result == "oom-kill" || result == "signal",
        "oomtest-hog.service ended with Result={result}"
    );
    metrics_count_the_kill(victim_cgroup)
}

/// The shipped unit's metrics file, rewritten after the OOM event: one kill by the
/// system-wide handler, and it was of the victim's cgroup.
fn metrics_count_the_kill(victim_cgroup: &str) -> Result<()> {
    let decision = format!("policyd_decisions_total{{attach=\"/\",cgroup=\"{victim_cgroup}\",");
    let text = util::poll(
        SERVICE_TIMEOUT,
        "the kill in policyd's metrics file",
        || {
            let Ok(text) = std::fs::read_to_string(METRICS) else {
                return Ok(None);
            };
            let counted = text
                .lines()
                .any(|l| l == "policyd_kills_total{attach=\"/\"} 1")
                && text
                    .lines()
                    .any(|l| l.starts_with(&decision) && l.ends_with(",outcome=\"killed\"} 1"));
            Ok(counted.then_some(text))
        },
    )
    .with_context(|| {
        format!(
            "{METRICS}:\n{}",
            std::fs::read_to_string(METRICS).unwrap_or_else(|e| e.to_string())
        )
    })?;
    println!(
        "{METRICS}: the kill counted ({} lines)",
        text.lines().count()
    );
    Ok(())
}

/// Returns the link id policyd holds after the reload.
fn reload_keeps_the_handler() -> Result<u64> {
    let main_pid = show_u64("policyd.service", "MainPID")?;
    let link = the_handler_of(main_pid)?;
    let before = status_text()?;
    // A unit for an oom_group rule to group: the shipped sandbox must let policyd
    // write memory.oom.group.
    command(
        "systemd-run",
        &[
            "--unit=oomtest-group",
            "--slice=oomtest.slice",
            "/bin/sleep",
            "infinity",
        ],
    )?;
    let mut config = util::read_file(CONFIG)?;
    config.push_str(
        "\n[[rule]]\ncgroup = \"/oomtest.slice/oomtest-group.service\"\noom_group = true\n\
         \n[[rule]]\ncgroup = \"/oomtest.slice/**\"\npriority = 5\n",
    );
    util::write_file(CONFIG, config)?;
    command("systemctl", &["reload", "policyd.service"])?;
    wait_for_entry("reloaded ", 0)?;
    let group = "/sys/fs/cgroup/oomtest.slice/oomtest-group.service/memory.oom.group";
    util::wait_until(
        SERVICE_TIMEOUT,
        "memory.oom.group set by the new rule",
        || std::fs::read_to_string(group).is_ok_and(|v| v.trim() == "1"),
    )?;
    command("systemctl", &["stop", "oomtest-group.service"])?;
    util::wait_until(SERVICE_TIMEOUT, "StatusText after the reload", || {
        status_text().is_ok_and(|s| s != before && s.starts_with("policy priority attached"))
    })?;
    let after = status_text()?;
    println!("StatusText: {before:?} -> {after:?}");
    let rules = |s: &str| -> Option<u64> { s.split(": ").nth(1)?.split(' ').next()?.parse().ok() };
    ensure!(
        rules(&after).is_some() && rules(&after) == rules(&before).map(|n| n + 2),
        "StatusText does not count the two added rules: {before:?} -> {after:?}"
    );
    ensure!(
        show_u64("policyd.service", "MainPID")? == main_pid
            && show_u64("policyd.service", "NRestarts")? == 0,
        "the reload restarted policyd"
    );
    let after_link = the_handler_of(main_pid)?;
    ensure!(
        after_link == link,
        "the reload replaced link {link} by {after_link}: the handler was detached"
    );
    Ok(link)
}

fn killed_is_restarted_and_reattached(old_link: u64) -> Result<()> {
    let old_pid = show_u64("policyd.service", "MainPID")?;
    let restarts = show_u64("policyd.service", "NRestarts")?;
    let attached_before = journal(&[])?
        .iter()
        .filter(|e| field(e, "MESSAGE").starts_with("attached "))
        .count();
    let pid = i32::try_from(old_pid).context("MainPID out of range")?;
    kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill -9 policyd")?;
    println!("sent SIGKILL to policyd (pid {old_pid})");
    util::wait_until(SERVICE_TIMEOUT, "policyd.service restarted", || {
        show_u64("policyd.service", "NRestarts").is_ok_and(|n| n > restarts)
            && show("policyd.service", "ActiveState").is_ok_and(|s| s == "active")
    })?;
    let new_pid = show_u64("policyd.service", "MainPID")?;
    ensure!(new_pid != old_pid, "MainPID is still {old_pid}");
    // Active again means attached again (READY=1 comes after the attach).
    wait_for_entry("attached ", attached_before)?;
    let link = the_handler_of(new_pid)?;
    ensure!(
        link != old_link,
        "link {old_link} survived its owner's death"
    );
    println!("restarted as pid {new_pid}, link {old_link} -> {link}");
    Ok(())
}

/// The shipped unit sets no watchdog (pinging it would wake an idle policyd); one set
/// by a drop-in is fed.
fn watchdog_is_fed() -> Result<()> {
    let dir = "/run/systemd/system/policyd.service.d";
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    util::write_file(
        format!("{dir}/watchdog.conf"),
        format!("[Service]\nWatchdogSec={}s\n", WATCHDOG.as_secs()),
    )?;
    command("systemctl", &["daemon-reload"])?;
    command("systemctl", &["restart", "policyd.service"])?;
    let pid = show_u64("policyd.service", "MainPID")?;
    let restarts = show_u64("policyd.service", "NRestarts")?;
    let usec = show("policyd.service", "WatchdogUSec")?;
    ensure!(
        usec == format!("{}s", WATCHDOG.as_secs()),
        "the drop-in did not set the watchdog: WatchdogUSec={usec}"
    );
    std::thread::sleep(WATCHDOG * 5 / 2);
    ensure!(
        show_u64("policyd.service", "MainPID")? == pid
            && show_u64("policyd.service", "NRestarts")? == restarts
            && show("policyd.service", "ActiveState")? == "active",
        "policyd did not survive {} s under WatchdogSec={}s: not pinged",
        (WATCHDOG * 5 / 2).as_secs(),
        WATCHDOG.as_secs()
    );
    the_handler_of(pid)?;
    Ok(())
}

fn stop_detaches() -> Result<()> {
    command("systemctl", &["stop", "policyd.service"])?;
    let h = handlers()?;
    ensure!(
        h.is_empty(),
        "after systemctl stop, policyd status lists {h:?}"
    );
    wait_for_entry("detached ", 0)?;
    let state = show("policyd.service", "ActiveState")?;
    ensure!(
        state == "inactive",
        "policyd.service is {state} after stop, not inactive"
    );
    ensure!(
        !std::path::Path::new(METRICS).exists(),
        "{METRICS} is still there after systemctl stop"
    );
    Ok(())
}
