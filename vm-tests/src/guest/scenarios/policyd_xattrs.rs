//! systemd's, oomd's and orchestrators' preferences on cgroups (policyd/xattrs.rs),
//! each set or removed while policyd runs, after the cgroups exist: each must change the
//! victim of the next OOM as documented, once policyd has logged the change.
//!
//! /xa holds a (priority 10 by the config, 2 MiB), b and c (priority 50; 4 and 1 MiB).
//! OOMs of /xa are declared (bpf_out_of_memory()); the victim's hog is started again
//! after each one. In order: no xattr (a, lowest priority); user.oomd_omit on a (b: a is
//! protected, b larger than c); omit removed (a again); user.oomd_avoid on a (b: a ranks
//! last); user.oomd_prefer on c (c, before all); prefer removed and
//! trusted.policyd.priority=5 on b (b, priority 5); everything removed, c chowned to an
//! unprivileged uid and user.oomd_prefer set on it (ignored with a warning: a dies).
//! `policyd explain` names each xattr in force as the source of the setting.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::guest::kutil::{Action, Handler, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK};
use crate::guest::pdutil::{self, Decision, Policyd};
use crate::guest::util::{Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-xattrs", run)
        .needs_policyd()
        .timeout_s(120)
}

const CONFIG: &str = r#"
default_priority = 100

[[rule]]
cgroup = "/xa/a"
priority = 10

[[rule]]
cgroup = "/xa/*"
priority = 50
"#;

const UNPRIVILEGED: u32 = 1000;

struct Layout {
    top: Cgroup,
    cgroups: Vec<(&'static str, Cgroup, u64)>,
    hogs: Vec<Option<Hog>>,
}

impl Layout {
    fn dir(&self, name: &str) -> &Path {
        self.cgroups
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, cg, _)| cg.dir())
            .expect("a cgroup of the layout")
    }

    /// Start the hogs that are not running (the last victim's).
    fn refill(&mut self) -> Result<()> {
        for (i, (_, cg, mib)) in self.cgroups.iter().enumerate() {
            if self.hogs[i].as_mut().is_some_and(Hog::is_alive) {
                continue;
            }
            let mut hog = Hog::spawn(cg, &HogSpec::fixed(*mib))?;
            hog.wait_ready(pdutil::READY_TIMEOUT)?;
            self.hogs[i] = Some(hog);
        }
        Ok(())
    }
}

fn set(dir: &Path, name: &str, value: &str) -> Result<()> {
    rustix::fs::setxattr(dir, name, value.as_bytes(), rustix::fs::XattrFlags::empty())
        .with_context(|| format!("setting {name}={value} on {}", dir.display()))
}

fn remove(dir: &Path, name: &str) -> Result<()> {
    rustix::fs::removexattr(dir, name)
        .with_context(|| format!("removing {name} from {}", dir.display()))
}

/// Waits for policyd's line about `cgroup`'s changed settings; returns how long it took.
fn applied(pd: &mut Policyd, cgroup: &str, since: Instant) -> Result<Duration> {
    let want = format!("cgroup {cgroup}: xattrs changed");
    pd.wait_line(Duration::from_secs(10), &want, |l| {
        l.message.contains(&want)
    })?;
    Ok(since.elapsed())
}

/// Declares an OOM of /xa and checks what policyd killed.
fn oom(
    pd: &mut Policyd,
    declarer: &Handler,
    layout: &mut Layout,
    want: &[(&str, &str)],
) -> Result<Decision> {
    layout.refill()?;
    let declared = declarer.declare_oom(layout.top.id()?, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK, 1)?;
    ensure!(
        declared.prog_ret == 0 && declared.ret[0] >= 0,
        "declaring an OOM of /xa: {declared}"
    );
    let d = pd.next_killing_decision(pdutil::OOM_TIMEOUT)?;
    d.expect(want)?;
    let pid = i64::from(d.pid);
    let victim = layout
        .hogs
        .iter_mut()
        .find(|h| h.as_ref().is_some_and(|h| i64::from(h.pid()) == pid))
        .with_context(|| format!("the decision's pid is none of the hogs: {d}"))?;
    victim
        .take()
        .expect("found as Some")
        .wait_killed(pdutil::OOM_TIMEOUT)?;
    println!("  {} ({})", d.victim_cgroup(), d.get("reason")?);
    Ok(d)
}

/// `policyd explain --json` for /xa: the `xattrs` of candidate `cgroup`, as "name on cgroup".
fn explained_xattrs(config: &str, cgroup: &str) -> Result<Vec<String>> {
    let ex = pdutil::run_json_quiet(&["explain", "--json", "--config", config, "--cgroup", "/xa"])?;
    let c = ex["candidates"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["path"] == cgroup))
        .with_context(|| format!("explain lists no {cgroup}: {ex:#}"))?;
    Ok(c["xattrs"]
        .as_array()
        .map(|xs| {
            xs.iter()
                .map(|x| {
                    format!(
                        "{} on {}",
                        x["name"].as_str().unwrap_or("?"),
                        x["cgroup"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let config = pdutil::write_config("xattrs", CONFIG)?;
    let declarer = Handler::load(Action::Defer, 0, 0)?;
    let top = Cgroup::create("xa")?;
    top.set("memory.max", "1G")?;
    top.set("cgroup.subtree_control", "+memory")?;
    let cgroups = [("a", 2), ("b", 4), ("c", 1)]
        .into_iter()
        .map(|(n, mib)| Ok((n, Cgroup::create(&format!("xa/{n}"))?, mib)))
        .collect::<Result<Vec<_>>>()?;
    let mut layout = Layout {
        top,
        hogs: cgroups.iter().map(|_| None).collect(),
        cgroups,
    };
    let mut pd = Policyd::load(&["priority", "--config", &config])?;
    // The kernel's own killer never picks policyd (a deferred OOM goes to it).
    crate::guest::util::write_file(format!("/proc/{}/oom_score_adj", pd.pid()), "-1000")?;
    let mut latencies = Vec::new();
    let (a, b, c) = ("/xa/a", "/xa/b", "/xa/c");

    println!("no xattr:");
    oom(
        &mut pd,
        &declarer,
        &mut layout,
        &[("victim_cgroup", a), ("reason", "lowest-priority")],
    )?;

    println!("user.oomd_omit=1 on {a}:");
    let t = Instant::now();
    set(layout.dir("a"), "user.oomd_omit", "1")?;
    latencies.push(applied(&mut pd, a, t)?);
    ensure!(
        explained_xattrs(&config, a)? == ["user.oomd_omit on /xa/a"],
        "explain does not name user.oomd_omit as {a}'s protection"
    );
    oom(
        &mut pd,
        &declarer,
        &mut layout,
        &[("victim_cgroup", b), ("reason", "larger-usage")],
    )?;

    println!("user.oomd_omit removed from {a}:");
    let t = Instant::now();
    remove(layout.dir("a"), "user.oomd_omit")?;
    latencies.push(applied(&mut pd, a, t)?);
    oom(
        &mut pd,
        &declarer,
        &mut layout,
        &[("victim_cgroup", a), ("reason", "lowest-priority")],
    )?;

    println!("user.oomd_avoid=1 on {a}:");
    let t = Instant::now();
    set(layout.dir("a"), "user.oomd_avoid", "1")?;
    latencies.push(applied(&mut pd, a, t)?);
    oom(
        &mut pd,
        &declarer,
        &mut layout,
        &[("victim_cgroup", b), ("reason", "larger-usage")],
    )?;

    println!("user.oomd_prefer=1 on {c}:");
    let t = Instant::now();
    set(layout.dir("c"), "user.oomd_prefer", "1")?;
    latencies.push(applied(&mut pd, c, t)?);
    oom(
        &mut pd,
        &declarer,
        &mut layout,
        &[("victim_cgroup", c), ("reason", "preference")],
    )?;

    println!("user.oomd_prefer removed from {c}, trusted.policyd.priority=5 on {b}:");
    let t = Instant::now();
    remove(layout.dir("c"), "user.oomd_prefer")?;
    latencies.push(applied(&mut pd, c, t)?);
    let t = Instant::now();
    set(layout.dir("b"), "trusted.policyd.priority", "5")?;
    latencies.push(applied(&mut pd, b, t)?);
    ensure!(
        explained_xattrs(&config, b)? == ["trusted.policyd.priority on /xa/b"],
        "explain does not name trusted.policyd.priority as {b}'s priority"
    );
    let text = pdutil::run(&["explain", "--config", &config, "--cgroup", "/xa"])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    ensure!(
        text.contains("priority 5 from trusted.policyd.priority on /xa/b")
            && text.contains("avoid from user.oomd_avoid on /xa/a")
            && text.contains("rule /xa/* (line 9)"),
        "explain's text does not say where the settings came from:\n{text}"
    );
    oom(
        &mut pd,
        &declarer,
        &mut layout,
        &[
            ("victim_cgroup", b),
            ("priority", "5"),
            ("reason", "lowest-priority"),
        ],
    )?;

    println!("an untrusted user.oomd_prefer on {c}, owned by uid {UNPRIVILEGED}:");
    remove(layout.dir("a"), "user.oomd_avoid")?;
    applied(&mut pd, a, Instant::now())?;
    remove(layout.dir("b"), "trusted.policyd.priority")?;
    applied(&mut pd, b, Instant::now())?;
    let uid = nix::unistd::Uid::from_raw(UNPRIVILEGED);
    let gid = nix::unistd::Gid::from_raw(UNPRIVILEGED);
    nix::unistd::chown(layout.dir("c"), Some(uid), Some(gid)).context("chown of /xa/c")?;
    set(layout.dir("c"), "user.oomd_prefer", "1")?;
    let want =
        format!("ignoring user.oomd_prefer=\"1\" on cgroup {c}: its owner is uid {UNPRIVILEGED}");
    let warn = pd.wait_line(Duration::from_secs(10), &want, |l| {
        l.message.contains(&want)
    })?;
    ensure!(
        warn.level == "WARN",
        "the untrusted xattr is not a warning: {warn}"
    );
    ensure!(
        explained_xattrs(&config, c)?.is_empty(),
        "explain takes the untrusted xattr of {c} into account"
    );
    oom(
        &mut pd,
        &declarer,
        &mut layout,
        &[("victim_cgroup", a), ("reason", "lowest-priority")],
    )?;

    pd.stop()?;
    drop(layout.hogs);
    for (_, cg, _) in layout.cgroups {
        cg.remove()?;
    }
    layout.top.remove()?;
    let ms: Vec<String> = latencies
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "every xattr changed the victim as documented; from setxattr/removexattr to \
         policyd's rules entry: {} ms",
        ms.join(", ")
    );
    Ok(())
}
