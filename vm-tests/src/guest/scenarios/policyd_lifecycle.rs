//! The handler lives exactly as long as the policyd that attached it:
//!
//! 1. A second `policyd load` on a cgroup that already has a handler is refused with a
//!    message that says so and points at `policyd status` (non-zero exit, quickly), and
//!    leaves the first one attached and working.
//! 2. policyd SIGKILLed (no chance to detach itself): the kernel drops the handler with
//!    the link's last fd, `policyd status` no longer lists it, and the next OOM is the
//!    kernel's default again: the biggest task dies, not the lowest priority.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, expect_oom_kills, Policyd, ServiceAndHog};
use crate::guest::util::{self, describe_status, KillLog};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-lifecycle", run)
        .needs_policyd()
        .timeout_s(120)
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let layout = ServiceAndHog::create("lifecycle", Some(96))?;
    let config = layout.config.as_str();
    let first = Policyd::load(&["priority", "--config", config, "--cgroup", "/app"])?;

    // 1. A second load on /app.
    let mut second = Policyd::spawn(&["largest", "--config", config, "--cgroup", "/app"])?;
    let status = second
        .wait_exit(Duration::from_secs(40))
        .context("a second policyd load on /app did not give up")?;
    let output = pdutil::lines_text(second.log());
    ensure!(
        !status.success(),
        "the second policyd load on /app exited with {}",
        describe_status(status)
    );
    ensure!(
        output.contains("already attached to /app") && output.contains("policyd status"),
        "the second load's error does not say a handler is already attached to /app and \
         point at `policyd status`:\n{output}"
    );
    ensure!(
        !second.log().iter().any(|l| l.is("INFO", "attached")),
        "the second load logged an \"attached\" line:\n{output}"
    );
    let handlers = pdutil::status()?;
    ensure!(
        handlers.len() == 1
            && handlers[0]["cgroup"] == "/app"
            && handlers[0]["policy"] == "priority"
            && handlers[0]["owners"][0]["pid"].as_i64() == Some(i64::from(first.pid())),
        "after the refused load, policyd status --json shows {handlers:#?}, expected only \
         the first policyd's priority handler on /app"
    );
    println!(
        "second load refused: {}",
        output.lines().last().unwrap_or("")
    );

    // 2. SIGKILL: no detach by policyd itself.
    first.kill9()?;
    util::wait_until(
        Duration::from_secs(10),
        "the handler to disappear from policyd status",
        || pdutil::status().is_ok_and(|h| h.is_empty()),
    )?;

    let (mut service, mut kmsg, mut hog) = layout.start(56)?;
    service.wait_killed(pdutil::OOM_TIMEOUT)?;
    expect_alive(&mut hog, "hog (the kernel kills the biggest task)")?;
    expect_oom_kills(&layout.service_cg, 1)?;
    let log = KillLog::read(&mut kmsg, &[service.pid()])?;
    log.expect_kernel_killed(service.pid(), "service")?;
    // Not even a handler declining: none is attached.
    ensure!(
        !log.lines.iter().any(|l| l.contains("BPF OOM handler")),
        "the OOM report mentions a BPF OOM handler after policyd was killed:\n{}",
        log.text()
    );
    println!("after SIGKILL the kernel's default killed the service again");
    Ok(())
}
