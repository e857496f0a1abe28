//! `policyd load --watch-config` on a Kubernetes ConfigMap volume: kubelet's atomic
//! `..data` symlink swap reloads the rules by itself, no signal, with the handler never
//! detached (same link before and after), exactly as SIGHUP does (policyd-reload).
//!
//! /tmp/cm is laid out as kubelet lays out a ConfigMap volume: policies.toml ->
//! ..data/policies.toml, ..data -> ..<timestamp>/, each update a new timestamped
//! directory and a `..data_tmp` symlink renamed over `..data`. /app holds /app/a and
//! /app/b, fresh hogs each round, a the smaller; each OOM comes from lowering /app's
//! memory.max.
//!
//! 1. a = 10, b = 20: a dies.
//! 2. swap to a = 30, b = 20: policyd logs the change and "reloaded"; b dies.
//! 3. swap to a broken file that would say a = 5: rejected, the rules of 2 stay; b dies.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{self, Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-watch-config", run)
        .needs_policyd()
        .timeout_s(120)
}

const VOLUME: &str = "/tmp/cm";

fn config(a: &str, b: u32) -> String {
    format!(
        "policy = \"priority\"\n\n[[rule]]\ncgroup = \"/app/a\"\npriority = {a}\n\n\
         [[rule]]\ncgroup = \"/app/b\"\npriority = {b}\n"
    )
}

/// What kubelet's AtomicWriter does for generation `gen` of the ConfigMap.
fn publish(gen: u32, text: &str) -> Result<()> {
    let dir = Path::new(VOLUME);
    let data = format!("..2026_11_29_02_00_0{gen}.00000000{gen}");
    fs::create_dir_all(dir.join(&data)).context("creating the generation's directory")?;
    util::write_file(dir.join(&data).join("policies.toml"), text)?;
    let tmp = dir.join("..data_tmp");
    symlink(&data, &tmp).context("creating ..data_tmp")?;
    fs::rename(&tmp, dir.join("..data")).context("renaming ..data_tmp over ..data")?;
    let link = dir.join("policies.toml");
    if fs::symlink_metadata(&link).is_err() {
        symlink("..data/policies.toml", &link).context("creating policies.toml")?;
    }
    println!("published generation {gen} ({data})");
    Ok(())
}

/// Squeezes /app with fresh hogs (a 44 MiB, b 52 MiB) and checks that the hog in
/// `victim` ("a" or "b") died, and only it.
fn oom(pd: &mut Policyd, app: &Cgroup, a_cg: &Cgroup, b_cg: &Cgroup, victim: &str) -> Result<()> {
    let mut a = Hog::start(a_cg, &HogSpec::fixed(44), pdutil::READY_TIMEOUT)?;
    let mut b = Hog::start(b_cg, &HogSpec::fixed(52), pdutil::READY_TIMEOUT)?;
    pdutil::squeeze(app, 10)?;
    let (dead, alive) = if victim == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.wait_killed(pdutil::OOM_TIMEOUT)?;
    let d = pd.next_killing_decision(Duration::from_secs(10))?;
    let cgroup = format!("/app/{victim}");
    d.expect(&[("victim_cgroup", &cgroup), ("outcome", "killed")])?;
    expect_alive(alive, "the other hog")?;
    println!("{d}");
    app.set("memory.max", "max")?;
    Ok(())
}

fn link_id() -> Result<u64> {
    pdutil::status_at("/app")?.context("no handler on /app in policyd status")?["link_id"]
        .as_u64()
        .context("policyd status --json has no link_id")
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let app = Cgroup::create("app")?;
    let a_cg = app.child("a")?;
    let b_cg = app.child("b")?;
    publish(1, &config("10", 20))?;
    let path = format!("{VOLUME}/policies.toml");
    let mut pd = Policyd::load(&["--config", &path, "--watch-config", "--cgroup", "/app"])?;
    let link = link_id()?;

    // 1.
    oom(&mut pd, &app, &a_cg, &b_cg, "a")?;

    // 2. A valid update: reloaded without a signal.
    publish(2, &config("30", 20))?;
    pd.wait_line(
        Duration::from_secs(30),
        "policyd noticing the ConfigMap update",
        |l| l.message.contains("changed: reloading"),
    )?;
    ensure!(
        pd.reload_outcome()?,
        "policyd did not reload the valid update"
    );
    ensure!(
        link_id()? == link,
        "the handler was re-attached, not updated in place"
    );
    oom(&mut pd, &app, &a_cg, &b_cg, "b")?;

    // 3. A broken update: rejected, the running rules stay.
    publish(3, &config("\"low\"", 20))?;
    ensure!(
        !pd.reload_outcome()?,
        "policyd reloaded a config with priority = \"low\""
    );
    ensure!(pd.is_running(), "policyd exited after an invalid update");
    oom(&mut pd, &app, &a_cg, &b_cg, "b")?;

    ensure!(link_id()? == link, "the handler was re-attached");
    pd.stop()?;
    println!("ConfigMap updates reloaded by themselves; a broken one kept the old rules");
    Ok(())
}
