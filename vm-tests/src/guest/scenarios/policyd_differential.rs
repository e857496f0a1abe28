//! `policyd explain` against the handler, over random layouts: for each policy that
//! chooses (priority, largest, badness), LAYOUTS random cgroup trees in one boot, each
//! explained (`explain --json`) and then put through a declared OOM (bpf_out_of_memory()
//! on the layout's cgroup, or system-wide) that the attached policy resolves for real.
//! The cgroup and task that explain names must be the ones the handler kills, or both
//! must leave the OOM to the kernel.
//!
//! Layouts nest up to three levels, with ties in priority and in usage (hogs of 1, 2 and
//! 4 MiB), protect and kill inherited or overridden, `*` and `**` rules, tasks that cannot
//! be killed (oom_score_adj -1000), empty cgroups, processes in a non-leaf cgroup (one
//! that enables no controller for its children), threaded subtrees below such a cgroup,
//! exited processes not yet reaped (zombies), xattrs (user.oomd_omit, user.oomd_avoid,
//! user.oomd_prefer, both of the last two, trusted.policyd.priority; some on cgroups
//! chowned to an unprivileged uid, whose user. xattrs do not count), and memcg and
//! global scope. Names pick the rules: the config is fixed, so that a layout is only
//! its tree.
//!
//! A disagreement prints the layout (seed and tree), explain's answer and the decision
//! line; the scenario fails on any.

use std::fmt::Write as _;
use std::fs;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::unistd::{Gid, Uid};
use policyd::abi::Outcome;
use policyd::xattrs;
use rustix::fs::XattrFlags;

use crate::guest::kutil::{Action, Handler, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK};
use crate::guest::pdutil::{self, Decision, Policyd};
use crate::guest::util::{self, Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-explain-differential", run)
        .needs_policyd()
        .timeout_s(2400)
}

/// Layouts per policy.
const LAYOUTS: u64 = 200;

/// The rules every layout is judged by; a cgroup's name prefix chooses its rule.
const CONFIG: &str = r#"
default_priority = 100

[[rule]]
cgroup = "/diff/**/prot-*"
protect = true

[[rule]]
cgroup = "/diff/**/free-*"
protect = false
priority = 30

[[rule]]
cgroup = "/diff/**/kc-*"
kill = "cgroup"

[[rule]]
cgroup = "/diff/**/p10-*"
priority = 10

[[rule]]
cgroup = "/diff/*/p90*"
priority = 90
"#;

/// Name prefixes: the rules above, and "x" that no rule matches (inherits).
const PREFIXES: [&str; 7] = ["p10", "p90", "prot", "free", "kc", "x", "x"];
/// Hog sizes (MiB): equal sizes make usage ties.
const SIZES: [u64; 4] = [1, 2, 2, 4];
/// oom_score_adj of a hog: mostly 0, sometimes unkillable, sometimes preferred.
const ADJS: [i32; 6] = [0, 0, 0, 0, -1000, 500];
/// xattrs a cgroup may carry (most carry none).
const XATTRS: [&[(&str, &str)]; 8] = [
    &[(xattrs::OMIT, "1")],
    &[(xattrs::AVOID, "1")],
    &[(xattrs::PREFER, "1")],
    &[(xattrs::AVOID, "1"), (xattrs::PREFER, "1")],
    &[(xattrs::PRIORITY, "5")],
    &[(xattrs::PRIORITY, "95")],
    &[(xattrs::PRIORITY, "10000"), (xattrs::PREFER, "1")],
    &[(xattrs::OMIT, "0"), (xattrs::AVOID, "0")],
];
/// Owner of the cgroups made untrusted.
const UNPRIVILEGED: u32 = 1000;

#[derive(Debug)]
struct Node {
    name: String,
    parent: Option<usize>,
    /// (MiB, oom_score_adj) of each task directly in this cgroup.
    tasks: Vec<(u64, i32)>,
    /// Enables no controller for its children, so that it may hold processes itself
    /// while it has children.
    no_memory_below: bool,
    /// A threaded cgroup (below a parent that enables no controller): its processes
    /// belong to its threaded domain.
    threaded: bool,
    /// Holds an exited, unreaped process (a zombie) too.
    zombie: bool,
    /// Set on the cgroup before the explain and the OOM.
    xattrs: &'static [(&'static str, &'static str)],
    /// Owned by an unprivileged uid: its user. xattrs do not count.
    untrusted: bool,
}

#[derive(Debug)]
struct Layout {
    seed: u64,
    global: bool,
    nodes: Vec<Node>,
}

impl Layout {
    fn generate(seed: u64) -> Layout {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(2..=6);
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        let mut depth: Vec<usize> = Vec::with_capacity(n);
        for i in 0..n {
            let parents: Vec<usize> = (0..i).filter(|&p| depth[p] < 3).collect();
            let parent = if parents.is_empty() || rng.bool() {
                None
            } else {
                Some(parents[rng.usize(..parents.len())])
            };
            depth.push(parent.map_or(1, |p| depth[p] + 1));
            let tasks = (0..rng.usize(0..=2))
                .map(|_| {
                    (
                        SIZES[rng.usize(..SIZES.len())],
                        ADJS[rng.usize(..ADJS.len())],
                    )
                })
                .collect();
            nodes.push(Node {
                name: format!("{}-{i}", PREFIXES[rng.usize(..PREFIXES.len())]),
                parent,
                tasks,
                no_memory_below: false,
                threaded: false,
                zombie: rng.u8(..4) == 0,
                xattrs: if rng.bool() {
                    XATTRS[rng.usize(..XATTRS.len())]
                } else {
                    &[]
                },
                untrusted: rng.u8(..5) == 0,
            });
        }
        // A cgroup with children holds processes only if it enables no controller below.
        for i in 0..n {
            let has_children = nodes.iter().any(|c| c.parent == Some(i));
            if has_children && !nodes[i].tasks.is_empty() {
                if rng.u8(..4) == 0 {
                    nodes[i].no_memory_below = true;
                } else {
                    nodes[i].tasks.clear();
                }
            }
        }
        // Below a cgroup without the memory controller, none can be enabled either.
        for i in 0..n {
            if nodes[i]
                .parent
                .is_some_and(|p| ancestors_without_memory(&nodes, p))
            {
                nodes[i].no_memory_below = nodes.iter().any(|c| c.parent == Some(i));
            }
        }
        // Half of the cgroups without controllers below make their children threaded
        // (children of a threaded cgroup are threaded too).
        let threads_below: Vec<bool> = nodes
            .iter()
            .map(|node| node.no_memory_below && rng.bool())
            .collect();
        for i in 0..n {
            nodes[i].threaded = nodes[i]
                .parent
                .is_some_and(|p| nodes[p].threaded || threads_below[p]);
        }
        // A zombie, like any process, only where processes may be.
        for i in 0..n {
            let has_children = nodes.iter().any(|c| c.parent == Some(i));
            if has_children && !nodes[i].no_memory_below && !nodes[i].threaded {
                nodes[i].zombie = false;
            }
        }
        let global = rng.u8(..4) == 0;
        if global {
            // A global OOM that leaves the kernel nothing to kill panics the machine
            // ("System is deadlocked on memory"): a protected spare it can always kill.
            nodes.push(Node {
                name: format!("prot-spare-{n}"),
                parent: None,
                tasks: vec![(1, 0)],
                no_memory_below: false,
                threaded: false,
                zombie: rng.u8(..4) == 0,
                xattrs: &[],
                untrusted: false,
            });
        }
        Layout {
            seed,
            global,
            nodes,
        }
    }

    /// "/a/b" below the layout's own cgroup.
    fn rel(&self, i: usize) -> String {
        match self.nodes[i].parent {
            Some(p) => format!("{}/{}", self.rel(p), self.nodes[i].name),
            None => self.nodes[i].name.clone(),
        }
    }

    fn describe(&self, top: &str) -> String {
        let mut out = format!(
            "layout seed {:#x}, {} OOM of {top}:\n",
            self.seed,
            if self.global { "global" } else { "memcg" }
        );
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let _ = writeln!(
                out,
                "  {top}/{}{}{}{}{}{} tasks (MiB, adj) {:?}",
                self.rel(i),
                if n.untrusted { " [uid 1000]" } else { "" },
                if n.xattrs.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", n.xattrs)
                },
                if n.no_memory_below {
                    " [no controllers below]"
                } else {
                    ""
                },
                if n.threaded { " [threaded]" } else { "" },
                if n.zombie { " [zombie]" } else { "" },
                n.tasks
            );
        }
        out
    }
}

fn ancestors_without_memory(nodes: &[Node], mut i: usize) -> bool {
    loop {
        if nodes[i].no_memory_below {
            return true;
        }
        match nodes[i].parent {
            Some(p) => i = p,
            None => return false,
        }
    }
}

/// The layout, built: its cgroup and the processes in it.
struct Built {
    top: Cgroup,
    hogs: Vec<Hog>,
    /// Exited, not reaped until the layout is taken down.
    zombies: Vec<Child>,
}

fn build(layout: &Layout, n: u64) -> Result<Built> {
    let top = Cgroup::create(&format!("diff/l{n}"))?;
    top.set("memory.max", "1G")?;
    top.set("cgroup.subtree_control", "+memory")?;
    for i in 0..layout.nodes.len() {
        let dir = top.dir().join(layout.rel(i));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let node = &layout.nodes[i];
        if node.threaded {
            util::write_file(dir.join("cgroup.type"), "threaded")?;
        }
        let has_children = layout.nodes.iter().any(|c| c.parent == Some(i));
        let under_no_memory = node
            .parent
            .is_some_and(|p| ancestors_without_memory(&layout.nodes, p));
        if has_children && !node.no_memory_below && !under_no_memory {
            util::write_file(dir.join("cgroup.subtree_control"), "+memory")?;
        }
        if node.untrusted {
            let (uid, gid) = (Uid::from_raw(UNPRIVILEGED), Gid::from_raw(UNPRIVILEGED));
            nix::unistd::chown(&dir, Some(uid), Some(gid))
                .with_context(|| format!("chown of {}", dir.display()))?;
        }
        for (name, value) in node.xattrs {
            rustix::fs::setxattr(&dir, *name, value.as_bytes(), XattrFlags::empty())
                .with_context(|| format!("setting {name}={value} on {}", dir.display()))?;
        }
    }
    let mut hogs = Vec::new();
    for i in 0..layout.nodes.len() {
        let cg = Cgroup::open(&format!("diff/l{n}/{}", layout.rel(i)))?;
        for &(mib, adj) in &layout.nodes[i].tasks {
            hogs.push(Hog::spawn(&cg, &HogSpec::fixed(mib).oom_score_adj(adj))?);
        }
    }
    let mut zombies = Vec::new();
    for i in (0..layout.nodes.len()).filter(|&i| layout.nodes[i].zombie) {
        let cg = Cgroup::open(&format!("diff/l{n}/{}", layout.rel(i)))?;
        let mut cmd = Command::new("/bin/busybox");
        cmd.arg("true");
        zombies.push(util::spawn_in(&cg, &mut cmd, None)?);
    }
    for hog in &mut hogs {
        hog.wait_ready(pdutil::READY_TIMEOUT)?;
    }
    for z in &zombies {
        let stat = format!("/proc/{}/stat", z.id());
        util::wait_until(pdutil::READY_TIMEOUT, "a zombie", || {
            fs::read_to_string(&stat).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        })?;
    }
    Ok(Built { top, hogs, zombies })
}

/// What explain says dies: (cgroup path, the task the handler reports, tasks killed).
type Predicted = Option<(String, i64, usize)>;

fn predicted(ex: &serde_json::Value) -> Result<Predicted> {
    let v = &ex["victim"];
    if v.is_null() {
        return Ok(None);
    }
    let cgroup = v["cgroup"].as_str().context("victim.cgroup")?.to_owned();
    let tasks = v["tasks"].as_array().context("victim.tasks")?;
    // The decision line names the largest task killed; ties go to the lower pid.
    let largest = tasks
        .iter()
        .map(|t| {
            (
                t["rss_bytes"].as_u64().unwrap_or(0),
                t["pid"].as_i64().unwrap_or(0),
            )
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, pid)| pid)
        .context("victim without tasks")?;
    Ok(Some((cgroup, largest, tasks.len())))
}

fn decided(d: &Decision) -> Result<Predicted> {
    match d.outcome {
        Outcome::Killed => Ok(Some((
            d.victim_cgroup().to_owned(),
            d.pid.into(),
            d.killed as usize,
        ))),
        Outcome::Deferred | Outcome::KillFailed => Ok(None),
        other => bail!("unexpected outcome {other}: {d}"),
    }
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let config = pdutil::write_config("differential", CONFIG)?;
    let declarer = Handler::load(Action::Defer, 0, 0)?;
    let diff = Cgroup::create("diff")?;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (p, policy) in ["priority", "largest", "badness"].into_iter().enumerate() {
        let start = Instant::now();
        let mut pd = Policyd::load(&[policy, "--config", &config])?;
        // The kernel's own killer acts on deferred global OOMs: never on policyd.
        util::write_file(format!("/proc/{}/oom_score_adj", pd.pid()), "-1000")?;
        let (mut disagreements, mut kills, mut deferrals) = (0, 0, 0);
        let (mut threaded, mut zombies, mut with_xattrs) = (0, 0, 0);
        for n in 0..LAYOUTS {
            let seed = 0xd1ff_0000 + ((p as u64) << 12) + n;
            let layout = Layout::generate(seed);
            if layout.nodes.iter().any(|node| node.threaded) {
                threaded += 1;
            }
            if layout.nodes.iter().any(|node| node.zombie) {
                zombies += 1;
            }
            if layout.nodes.iter().any(|node| !node.xattrs.is_empty()) {
                with_xattrs += 1;
            }
            let built = build(&layout, n)?;
            let top = built.top.path();
            ensure!(pd.reload()?, "policyd rejected the reload");
            let scope = if layout.global { "/" } else { top.as_str() };
            let ex = pdutil::run_json_quiet(&[
                "explain", "--json", "--config", &config, "--policy", policy, "--cgroup", scope,
            ])?;
            let cgroup_id = if layout.global { 0 } else { built.top.id()? };
            let declared = declarer.declare_oom(cgroup_id, BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK, 1)?;
            // 1 when something was killed, 0 when even the kernel found nothing.
            ensure!(
                declared.prog_ret == 0 && declared.ret[0] >= 0,
                "declaring an OOM of {scope}: {declared}"
            );
            let d = pd.next_decision(Duration::from_secs(30))?;
            let (want, got) = (predicted(&ex)?, decided(&d)?);
            if got.is_some() {
                kills += 1;
            } else {
                deferrals += 1;
            }
            if want != got {
                disagreements += 1;
                failures.push(format!(
                    "{policy}: {}explain: {want:?}\n{}\nhandler: {got:?}\n{}\n",
                    layout.describe(&top),
                    serde_json::to_string_pretty(&ex)?,
                    d.line
                ));
            }
            drop(built.hogs);
            for mut z in built.zombies {
                z.wait().context("reaping a zombie")?;
            }
            built.top.remove()?;
        }
        pd.stop()?;
        let line = format!(
            "{policy}: {LAYOUTS} layouts ({threaded} with a threaded subtree, {zombies} with a \
             zombie, {with_xattrs} with xattrs), \
             {disagreements} disagreements ({kills} kills, {deferrals} left to the kernel) in \
             {:.0} s",
            start.elapsed().as_secs_f64()
        );
        println!("{line}");
        report.push(line);
    }
    diff.remove()?;
    for f in &failures {
        println!("DISAGREEMENT {f}");
    }
    ensure!(
        failures.is_empty(),
        "explain and the handler disagree on {} layout(s):\n{}",
        failures.len(),
        report.join("\n")
    );
    println!("explain agrees with the handler:\n{}", report.join("\n"));
    Ok(())
}
