//! The shape most policyd scenarios share, as data: cgroups under one parent with a
//! memory.max, policyd attached to that parent with a config, and OOMs made by starting
//! tasks (the last grows into the limit), each with what must come of it. [`Layout`]
//! builds and holds the cgroups and tasks by name; [`PolicyKill::check`] is the one check
//! of an OOM that policyd resolves: its decision line, which tasks die and which live,
//! the cgroups' oom_kill counters and the kernel's kill reports.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::pdutil::{self, expect_alive, expect_oom_kills, Decision, Policyd};
use super::util::{Cgroup, Hog, HogSpec, KillLog, Kmsg};

/// What one OOM that policyd resolves by killing must come to.
pub struct PolicyKill<'a> {
    /// The tasks that must die, as (role, hog): all of the chosen cgroup for kill =
    /// "cgroup". The decision line names the first, and the kernel reports it first.
    pub victims: Vec<(&'a str, &'a mut Hog)>,
    /// The tasks that must live.
    pub survivors: Vec<(&'a str, &'a mut Hog)>,
    /// How long the victims may take to die.
    pub timeout: Duration,
    /// The fields the decision line must have besides those of every kill: `pid` (the
    /// first victim's), `outcome=killed` and `killed` (how many victims).
    pub decision: &'a [(&'a str, &'a str)],
    /// The memory.events oom_kill each cgroup must count.
    pub oom_kills: Vec<(&'a Cgroup, u64)>,
}

impl PolicyKill<'_> {
    /// Waits for the victims to die and policyd's next decision, and checks both against
    /// the expectation; `kmsg` marks the kernel log just before the OOM's tasks started.
    /// Returns the decision and the kernel log, for a scenario's own further checks.
    pub fn check(self, pd: &mut Policyd, kmsg: &mut Kmsg) -> Result<(Decision, KillLog)> {
        let PolicyKill {
            mut victims,
            mut survivors,
            timeout,
            decision,
            oom_kills,
        } = self;
        let (_, named) = victims.first().context("a policy kill needs a victim")?;
        let named_pid = named.pid();
        for (_, hog) in &mut victims {
            hog.wait_killed(timeout)?;
        }
        let d = pd.next_decision(Duration::from_secs(10))?;
        let pid = named_pid.to_string();
        let killed = victims.len().to_string();
        let mut want = vec![
            ("pid", pid.as_str()),
            ("outcome", "killed"),
            ("killed", &killed),
        ];
        want.extend_from_slice(decision);
        d.expect(&want)?;
        for (role, hog) in &mut survivors {
            expect_alive(hog, role)?;
        }
        for (cg, kills) in oom_kills {
            expect_oom_kills(cg, kills)?;
        }
        let pids: Vec<i32> = victims.iter().map(|(_, hog)| hog.pid()).collect();
        let log = KillLog::read(kmsg, &pids)?;
        let mut killed = log.killed_pids();
        killed.sort_unstable();
        let mut want = pids.clone();
        want.sort_unstable();
        let roles: Vec<&str> = victims.iter().map(|&(role, _)| role).collect();
        ensure!(
            killed == want && log.killed_pids().first() == Some(&named_pid),
            "the kernel log reports kills of {:?}, expected those of {roles:?} {pids:?}, \
             {named_pid} first:\n{}",
            log.killed_pids(),
            log.text()
        );
        Ok((d, log))
    }
}

/// The cgroups of a layout under one parent, a policyd attached to the parent, and the
/// tasks started in it, by role.
pub struct Layout {
    /// The live tasks, in the order they started; victims leave it.
    tasks: Vec<Task>,
    pub pd: Policyd,
    /// The cgroups below the parent, by path relative to it ("batch/job1").
    cgroups: Vec<(String, Cgroup)>,
    parent: Cgroup,
}

/// A task of a [`Layout`].
struct Task {
    role: String,
    /// Its cgroup, relative to the parent.
    path: String,
    hog: Hog,
}

/// How to build a [`Layout`].
pub struct LayoutSpec<'a> {
    /// Names the config file (/tmp/<name>.toml).
    pub name: &'a str,
    /// The parent cgroup below the root, e.g. "app"; policyd attaches there.
    pub parent: &'a str,
    pub memory_max: &'a str,
    /// The cgroups below the parent, e.g. "batch/job1".
    pub cgroups: &'a [&'a str],
    pub config: &'a str,
    /// Options of `policyd` before `load`'s own, e.g. "-vv".
    pub policyd_options: &'a [&'a str],
}

/// One OOM in a [`Layout`]: the tasks that make it and what must come of it.
pub struct Oom<'a> {
    /// The tasks started for the OOM as (role, cgroup, what it does); the last usually
    /// grows into the limit.
    pub start: &'a [(&'a str, &'a str, HogSpec)],
    /// The roles that must die; the decision line names the first.
    pub victims: &'a [&'a str],
    /// The fields the decision line must have besides those of every kill in a layout:
    /// `scope` (the parent), `victim_cgroup` (the first victim's) and those
    /// [`PolicyKill::decision`] names.
    pub decision: &'a [(&'a str, &'a str)],
    /// The memory.events oom_kill each cgroup (relative to the parent) must count.
    pub oom_kills: &'a [(&'a str, u64)],
}

impl Layout {
    /// Creates the cgroups and the config, then runs `policyd load priority` on the parent.
    pub fn load(spec: &LayoutSpec) -> Result<Layout> {
        pdutil::quiet_oom_reports()?;
        let parent = Cgroup::create(spec.parent)?;
        parent.set("memory.max", spec.memory_max)?;
        let mut cgroups = Vec::new();
        for &path in spec.cgroups {
            cgroups.push((path.to_string(), parent.child(path)?));
        }
        let config = pdutil::write_config(spec.name, spec.config)?;
        let scope = parent.path();
        let mut args = spec.policyd_options.to_vec();
        args.extend(["priority", "--config", &config, "--cgroup", &scope]);
        Ok(Layout {
            tasks: Vec::new(),
            pd: Policyd::load(&args)?,
            cgroups,
            parent,
        })
    }

    /// Creates one more cgroup below the parent (while policyd runs).
    pub fn add_cgroup(&mut self, path: &str) -> Result<()> {
        let cg = self.parent.child(path)?;
        self.cgroups.push((path.to_string(), cg));
        Ok(())
    }

    /// The cgroup at `path` below the parent ("" for the parent).
    pub fn cgroup(&self, path: &str) -> Result<&Cgroup> {
        find_cgroup(&self.parent, &self.cgroups, path)
    }

    /// Starts `spec` in the cgroup at `path` as `role`, and waits until it holds its memory.
    pub fn start(&mut self, role: &str, path: &str, spec: &HogSpec) -> Result<()> {
        let hog = Hog::start(self.cgroup(path)?, spec, pdutil::READY_TIMEOUT)?;
        println!(
            "{role}: pid {} in {}/{path} ({} MiB{})",
            hog.pid(),
            self.parent.path(),
            spec.mib,
            if spec.grow { ", growing" } else { "" }
        );
        self.tasks.push(Task {
            role: role.to_string(),
            path: path.to_string(),
            hog,
        });
        Ok(())
    }

    /// The live task started as `role`.
    pub fn task(&mut self, role: &str) -> Result<&mut Hog> {
        self.tasks
            .iter_mut()
            .find(|t| t.role == role)
            .map(|t| &mut t.hog)
            .with_context(|| format!("no live task {role} in the layout"))
    }

    /// Marks the kernel log, starts `oom.start` and checks that policyd resolves the OOM
    /// as `oom` says (see [`PolicyKill::check`]); every other live task must survive.
    /// Returns the decision and the kernel log since the mark.
    pub fn oom(&mut self, oom: &Oom) -> Result<(Decision, KillLog)> {
        let mut kmsg = Kmsg::mark()?;
        for (role, path, spec) in oom.start {
            self.start(role, path, spec)?;
        }
        let oom_kills = oom
            .oom_kills
            .iter()
            .map(|&(path, kills)| Ok((find_cgroup(&self.parent, &self.cgroups, path)?, kills)))
            .collect::<Result<Vec<_>>>()?;
        let named = self
            .tasks
            .iter()
            .find(|t| oom.victims.first() == Some(&t.role.as_str()))
            .with_context(|| format!("victims {:?}: the first is no live task", oom.victims))?;
        let scope = self.parent.path();
        let victim_cgroup = format!("{scope}/{}", named.path);
        let mut decision = vec![("scope", scope.as_str()), ("victim_cgroup", &victim_cgroup)];
        decision.extend_from_slice(oom.decision);
        let (mut victims, survivors): (Vec<_>, Vec<_>) = self
            .tasks
            .iter_mut()
            .map(|t| (t.role.as_str(), &mut t.hog))
            .partition(|(role, _)| oom.victims.contains(role));
        ensure!(
            victims.len() == oom.victims.len(),
            "victims {:?}: not all are live tasks of the layout",
            oom.victims
        );
        victims.sort_by_key(|(role, _)| oom.victims.iter().position(|v| v == role));
        let result = PolicyKill {
            victims,
            survivors,
            timeout: pdutil::OOM_TIMEOUT,
            decision: &decision,
            oom_kills,
        }
        .check(&mut self.pd, &mut kmsg)?;
        self.tasks
            .retain(|t| !oom.victims.contains(&t.role.as_str()));
        Ok(result)
    }

    /// Stops policyd; the tasks and cgroups go with the layout.
    pub fn stop(self) -> Result<()> {
        self.pd.stop()
    }
}

/// The cgroup at `path` below `parent` ("" for `parent`) among `cgroups`.
fn find_cgroup<'a>(
    parent: &'a Cgroup,
    cgroups: &'a [(String, Cgroup)],
    path: &str,
) -> Result<&'a Cgroup> {
    if path.is_empty() {
        return Ok(parent);
    }
    cgroups
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, cg)| cg)
        .with_context(|| format!("no cgroup {path} in the layout of {}", parent.path()))
}
