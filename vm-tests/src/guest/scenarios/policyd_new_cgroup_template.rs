//! A cgroup created while policyd cannot resolve it (stopped here; in life, the
//! milliseconds before its fanotify wake-up) is judged by its nearest resolved
//! ancestor's template for new cgroups below it, where the rules give every such
//! cgroup the same settings. /nt/batch itself has the default priority 100, but
//! `/nt/batch/*/**` gives priority 1 to anything below it: a new job there dies
//! before the hog in /nt/svc (priority 50). Below /nt/web, `/nt/web/*.scope` matches
//! some names and not others: there is no template, a new app.scope is judged by
//! /nt/web's own settings (100) until policyd resolves it, so /nt/svc dies, and the
//! decision counts it as unresolved.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;

use crate::guest::bench::{self as bc, kill_reap, start_hog, HogMode, Stopwatch};
use crate::guest::pdutil::{self, Policyd};
use crate::guest::util::Cgroup;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-new-cgroup-template", run)
        .needs_policyd()
        .timeout_s(120)
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let watch = Stopwatch::load()?;
    let scope = Cgroup::create("nt")?;
    let batch = scope.child("batch")?;
    let web = scope.child("web")?;
    let svc = scope.child("svc")?;
    let config = pdutil::write_config(
        "new-cgroup-template",
        &format!(
            "policy = \"priority\"\ndefault_priority = 100\n\n\
             [[rule]]\ncgroup = \"{}/*/**\"\npriority = 1\nkill = \"cgroup\"\n\n\
             [[rule]]\ncgroup = \"{}/*.scope\"\npriority = 2\n\n\
             [[rule]]\ncgroup = \"{}\"\npriority = 50\n",
            batch.path(),
            web.path(),
            svc.path()
        ),
    )?;
    let mut pd = Policyd::load(&["priority", "--config", &config, "--cgroup", &scope.path()])?;
    let mut bystander = start_hog("svc", &svc, HogMode::Fixed(16))?;

    pd.signal(Signal::SIGSTOP)?;
    // Exact: the template of /nt/batch.
    let job = batch.child("job")?;
    let mut victim = start_hog("job", &job, HogMode::Fixed(8))?;
    let oom = watch.oom(&scope)?;
    let died = bc::wait_exit(&mut victim, Duration::from_secs(20))?;
    let bystander_alive = bystander.try_wait().context("waitpid")?.is_none();
    ensure!(
        oom.ret == 1 && died.is_some() && bystander_alive,
        "OOM of {} with policyd stopped: freed {}, the hog in the new {} (template priority \
         1) {}, the hog in {} (priority 50) {}",
        scope.path(),
        oom.ret,
        job.path(),
        if died.is_some() { "died" } else { "lives" },
        svc.path(),
        if bystander_alive { "lives" } else { "died" }
    );

    // Depends on the name: /nt/web's own settings, as before templates.
    let app = web.child("app.scope")?;
    let mut app_hog = start_hog("app", &app, HogMode::Fixed(8))?;
    let oom2 = watch.oom(&scope)?;
    let svc_died = bc::wait_exit(&mut bystander, Duration::from_secs(20))?;
    let app_alive = app_hog.try_wait().context("waitpid")?.is_none();
    pd.signal(Signal::SIGCONT)?;
    ensure!(
        oom2.ret == 1 && svc_died.is_some() && app_alive,
        "second OOM of {} with policyd stopped: freed {}, the hog in {} (priority 50) {}, \
         the hog in the new {} (no template: /nt/web's 100) {}",
        scope.path(),
        oom2.ret,
        svc.path(),
        if svc_died.is_some() { "died" } else { "lives" },
        app.path(),
        if app_alive { "lives" } else { "died" }
    );

    let d = pd.next_decision(pdutil::OOM_TIMEOUT)?;
    d.expect(&[
        ("victim_cgroup", &job.path()),
        ("priority", "1"),
        ("runner_up", &svc.path()),
        ("unresolved", "0"),
    ])?;
    println!("a new cgroup below {}, by its template: {d}", batch.path());
    let d = pd.next_decision(pdutil::OOM_TIMEOUT)?;
    d.expect(&[
        ("victim_cgroup", &svc.path()),
        ("priority", "50"),
        ("runner_up", &app.path()),
        ("unresolved", "1"),
    ])?;
    println!("a new cgroup below {}, no template: {d}", web.path());

    kill_reap(&mut app_hog);
    pd.stop()?;
    for cg in [job, app] {
        cg.remove()?;
    }
    Ok(())
}
