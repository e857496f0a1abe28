//! Candidate ranking and victim choice: the userspace twin of the BPF
//! policies, used by `policyd explain` to predict what the kernel side will
//! kill (and by tests to pin the semantics down).
//!
//! `priority` (the default):
//! * scope: the OOMing memcg's subtree, or the whole tree for a global OOM;
//! * candidates: populated cgroups in scope that directly contain processes,
//!   except the root cgroup and protected cgroups;
//! * order: lowest effective priority first; ties → larger `memory.current`,
//!   compared in whole MiB (usage moves by a few pages between a prediction
//!   and the OOM); ties → lower cgroup id (deterministic);
//! * the first candidate with something killable is the victim: with
//!   `kill = "task"` its task with the largest RSS, with `kill = "cgroup"`
//!   every task in it. Init, kernel threads and tasks with
//!   `oom_score_adj = -1000` are never killed; a candidate left with nothing
//!   killable is skipped. No victim → the kernel's own OOM killer decides.
//!
//! A threaded cgroup is never a candidate: its processes belong to its
//! threaded domain (whose `cgroup.procs` lists them), which is.
//!
//! Before priorities (and under `largest` before usage), the preferences of
//! xattrs ([`crate::resolve`], step 4): `user.oomd_prefer` cgroups first,
//! `user.oomd_avoid` ones last.
//!
//! `largest`: like `priority` with priorities ignored, among populated leaf
//! cgroups (no populated child but threaded ones): largest `memory.current` first, ties → lower
//! cgroup id. Protect and kill modes still apply.
//!
//! `badness`: the kernel's oom_badness(): every task in scope by its points,
//! RSS + swap + page tables in pages, plus `oom_score_adj` thousandths of
//! the OOM's total pages (`memory.max` of the scope for a memcg OOM, RAM +
//! swap for a global one); highest first, and between equals the one the
//! kernel meets last in its process list (the latest started). Rules are
//! ignored and one task is killed. `/proc/<pid>/oom_score` is this score
//! scaled to 0..=2000 against the machine's total, too coarse to break ties.
//!
//! `observe`: no victim; the kernel's own killer decides.

use std::cmp::Ordering;
use std::path::Path;

use serde::Serialize;

use crate::abi::USAGE_SHIFT;
use crate::cgroupfs::{Cgroup, CgroupTree};
use crate::config::KillMode;
use crate::owner::Owner;
use crate::policy::PolicyName;
use crate::procfs::{TaskInfo, TaskSource};
use crate::reason::{
    outcome_and_why, reason_and_why, KillChoice, Outcome, Reason, Spared, VictimReason,
};
use crate::resolve::{Effective, Source, XattrSource};
use crate::xattrs::Pref;

/// Global OOM (the root cgroup's subtree) or a memcg's own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Global,
    Memcg,
}

/// Where the OOM happened: the cgroups considered are this one's subtree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scope {
    pub kind: ScopeKind,
    pub path: String,
    pub id: u64,
}

/// One cgroup in scope, with its place in the ranking (or why it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub id: u64,
    pub path: String,
    pub priority: u32,
    pub protect: bool,
    pub kill: KillMode,
    pub pref: Pref,
    /// `memory.current` in bytes (`None` for the root cgroup).
    pub memory_current: Option<u64>,
    /// Processes directly in this cgroup.
    pub nr_procs: usize,
    pub source: Source,
    /// xattrs over the rules (see [`crate::resolve`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<XattrSource>,
    pub eligible: bool,
    /// 1-based position among eligible candidates; `None` when not eligible.
    pub rank: Option<usize>,
    /// Why it ranks before the next candidate, or why it is not eligible.
    #[serde(flatten, serialize_with = "reason_and_why")]
    pub why: Reason,
    /// The unit, pod or container the path belongs to.
    #[serde(skip_serializing_if = "Owner::is_empty")]
    pub owner: Owner,
}

/// One task in scope, for the `badness` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankedTask {
    #[serde(flatten)]
    pub task: TaskInfo,
    /// The kernel's oom_badness() points.
    pub points: i64,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub eligible: bool,
    pub rank: Option<usize>,
    /// Why it ranks before the next task, or why it is not killable.
    #[serde(flatten, serialize_with = "reason_and_why")]
    pub why: Reason,
}

/// A candidate passed over because nothing in it could be killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub id: u64,
    pub path: String,
    /// [`Reason::NothingKillable`].
    #[serde(flatten, serialize_with = "reason_and_why")]
    pub why: Reason,
}

/// What the policy kills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Victim {
    pub cgroup_id: u64,
    pub cgroup: String,
    pub kill: KillMode,
    /// The tasks killed: one for `kill = "task"`, all killable ones for `"cgroup"`.
    pub tasks: Vec<TaskInfo>,
    /// Tasks in the cgroup that are left alone, with the reason.
    pub spared: Vec<Spared>,
    #[serde(flatten, serialize_with = "reason_and_why")]
    pub why: VictimReason,
}

/// The full prediction for one OOM: `policyd explain`'s output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub policy: PolicyName,
    /// Which implementation of the ranking answered: [`MODEL`].
    pub model: &'static str,
    pub scope: Scope,
    /// Eligible candidates in rank order (victim first), then the rest of
    /// the scope in tree order. Empty for `badness` and `observe`.
    pub candidates: Vec<Candidate>,
    /// Tasks by badness (`badness` only).
    pub tasks: Vec<RankedTask>,
    /// Candidates passed over because nothing in them was killable.
    pub skipped: Vec<Skipped>,
    pub victim: Option<Victim>,
    /// What happens.
    #[serde(flatten, serialize_with = "outcome_and_why")]
    pub outcome: Outcome,
}

/// What [`explain`] is: the handler's ranking rewritten in user space (so
/// that it needs neither root nor a patched kernel), held equal to the BPF
/// by vm-tests' `policyd-explain-differential`.
pub const MODEL: &str = "user space";

fn usage(c: &Cgroup) -> u64 {
    c.memory_current.unwrap_or(0)
}

/// Usage as the ranking compares it: in whole MiB, like the BPF handler.
fn usage_units(c: &Cgroup) -> u64 {
    usage(c) >> USAGE_SHIFT
}

/// Rank the cgroups in the subtree of `scope` (an index into `tree`) under
/// `policy`. `effective` is index-aligned with the tree
/// ([`crate::resolve::resolve_tree`]). Empty for `badness` and `observe`,
/// which do not rank cgroups.
pub fn rank_cgroups(
    policy: PolicyName,
    tree: &CgroupTree,
    effective: &[Effective],
    scope: usize,
) -> Vec<Candidate> {
    if !matches!(policy, PolicyName::Priority | PolicyName::Largest) {
        return Vec::new();
    }
    let mut eligible: Vec<usize> = Vec::new();
    let mut others: Vec<(usize, Reason)> = Vec::new();
    for idx in tree.subtree(scope) {
        let node = tree.get(idx);
        let eff = &effective[idx];
        let not_eligible = if node.is_root() {
            Some(Reason::RootCgroup)
        } else if node.threaded {
            Some(Reason::Threaded)
        } else if eff.protect {
            Some(Reason::Protected)
        } else if !node.populated {
            Some(Reason::NotPopulated)
        } else if node.procs.is_empty() {
            Some(Reason::NoOwnProcesses)
        } else if policy == PolicyName::Largest
            && node.children.iter().any(|&c| {
                let child = tree.get(c);
                child.populated && !child.threaded
            })
        {
            Some(Reason::NotALeaf)
        } else {
            None
        };
        match not_eligible {
            Some(reason) => others.push((idx, reason)),
            None => eligible.push(idx),
        }
    }

    let order = |&a: &usize, &b: &usize| -> Ordering {
        let (na, nb) = (tree.get(a), tree.get(b));
        let by_priority = match policy {
            PolicyName::Priority => effective[a].priority.cmp(&effective[b].priority),
            _ => Ordering::Equal,
        };
        let by_pref = effective[a].pref.rank().cmp(&effective[b].pref.rank());
        by_pref
            .then(by_priority)
            .then(usage_units(nb).cmp(&usage_units(na)))
            .then(na.id.cmp(&nb.id))
    };
    eligible.sort_by(order);

    let candidate = |idx: usize, eligible: bool, rank: Option<usize>, why: Reason| {
        let node = tree.get(idx);
        let eff = &effective[idx];
        Candidate {
            id: node.id,
            path: node.path.clone(),
            priority: eff.priority,
            protect: eff.protect,
            kill: eff.kill,
            pref: eff.pref,
            memory_current: node.memory_current,
            nr_procs: node.procs.len(),
            source: eff.source.clone(),
            xattrs: eff.xattrs.clone(),
            eligible,
            rank,
            why,
            owner: Owner::of(&node.path),
        }
    };

    let mut out = Vec::with_capacity(eligible.len() + others.len());
    for (i, &idx) in eligible.iter().enumerate() {
        let why = match eligible.get(i + 1) {
            Some(&next) => why_before(policy, tree, effective, idx, next),
            None if i == 0 => Reason::OnlyCandidate,
            None => Reason::RanksLast,
        };
        out.push(candidate(idx, true, Some(i + 1), why));
    }
    for (idx, why) in others {
        out.push(candidate(idx, false, None, why));
    }
    out
}

/// Why eligible cgroup `a` ranks right before `b`.
fn why_before(
    policy: PolicyName,
    tree: &CgroupTree,
    eff: &[Effective],
    a: usize,
    b: usize,
) -> Reason {
    let (na, nb) = (tree.get(a), tree.get(b));
    let (pa, pb) = (eff[a].priority, eff[b].priority);
    let next = nb.path.clone();
    if eff[a].pref != eff[b].pref {
        return Reason::Preference {
            pref: eff[a].pref,
            next_pref: eff[b].pref,
            next,
        };
    }
    if policy == PolicyName::Priority && pa != pb {
        return Reason::LowerPriority {
            priority: pa,
            next_priority: pb,
            next,
        };
    }
    let priority = (policy == PolicyName::Priority).then_some(pa);
    if usage_units(na) != usage_units(nb) {
        return Reason::LargerUsage {
            priority,
            usage_bytes: usage(na),
            next_usage_bytes: usage(nb),
            next,
        };
    }
    Reason::LowerCgroupId {
        priority,
        id: na.id,
        next_id: nb.id,
        next,
    }
}

/// The tasks of a chosen cgroup that `kill` would kill, and those spared.
pub fn pick_tasks(
    kill: KillMode,
    procs: &[u32],
    tasks: &dyn TaskSource,
) -> (Vec<TaskInfo>, Vec<Spared>) {
    let mut killable = Vec::new();
    let mut spared = Vec::new();
    for &pid in procs {
        match tasks.task(pid) {
            None => spared.push(Spared {
                pid,
                why: Reason::Exited,
            }),
            Some(t) => match t.unkillable() {
                Some(why) => spared.push(Spared {
                    pid,
                    why: why.into(),
                }),
                None => killable.push(t),
            },
        }
    }
    match kill {
        KillMode::Cgroup => {
            killable.sort_by_key(|t| t.pid);
            (killable, spared)
        }
        KillMode::Task => {
            // Largest RSS; ties → lower pid.
            killable.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
            let mut rest = killable.split_off(killable.len().min(1));
            rest.sort_by_key(|t| t.pid);
            let largest = killable.first().map(|t| t.rss_bytes).unwrap_or(0);
            spared.extend(rest.into_iter().map(|t| Spared {
                pid: t.pid,
                why: Reason::SmallerRss {
                    rss_bytes: t.rss_bytes,
                    largest_rss_bytes: largest,
                },
            }));
            spared.sort_by_key(|s| s.pid);
            (killable, spared)
        }
    }
}

/// Predict what `policy` kills for an OOM in the subtree of `scope`, whose
/// size in pages (the kernel's `oc->totalpages`) is `totalpages`.
pub fn explain(
    policy: PolicyName,
    tree: &CgroupTree,
    effective: &[Effective],
    scope: usize,
    tasks: &dyn TaskSource,
    totalpages: u64,
) -> Explanation {
    let scope_node = tree.get(scope);
    let scope_info = Scope {
        kind: if scope_node.is_root() {
            ScopeKind::Global
        } else {
            ScopeKind::Memcg
        },
        path: scope_node.path.clone(),
        id: scope_node.id,
    };
    let mut ex = Explanation {
        policy,
        model: MODEL,
        scope: scope_info,
        candidates: Vec::new(),
        tasks: Vec::new(),
        skipped: Vec::new(),
        victim: None,
        outcome: Outcome::Observe,
    };
    match policy {
        PolicyName::Observe => {}
        PolicyName::Badness => explain_badness(&mut ex, tree, scope, tasks, totalpages),
        PolicyName::Priority | PolicyName::Largest => {
            ex.candidates = rank_cgroups(policy, tree, effective, scope);
            for c in ex.candidates.iter().filter(|c| c.eligible) {
                let idx = tree.find_id(c.id).expect("candidate comes from the tree");
                let (killed, spared) = pick_tasks(c.kill, &tree.get(idx).procs, tasks);
                if killed.is_empty() {
                    ex.skipped.push(Skipped {
                        id: c.id,
                        path: c.path.clone(),
                        why: Reason::NothingKillable { spared },
                    });
                    continue;
                }
                let kill = match c.kill {
                    KillMode::Task => KillChoice::LargestRss {
                        pid: killed[0].pid,
                        comm: killed[0].comm.clone(),
                        rss_bytes: killed[0].rss_bytes,
                    },
                    KillMode::Cgroup => KillChoice::WholeCgroup {
                        tasks: killed.len(),
                    },
                };
                ex.victim = Some(Victim {
                    cgroup_id: c.id,
                    cgroup: c.path.clone(),
                    kill: c.kill,
                    tasks: killed,
                    spared,
                    why: VictimReason {
                        rank: c.why.clone(),
                        passed_over: ex.skipped.len(),
                        kill,
                    },
                });
                break;
            }
            ex.outcome = match &ex.victim {
                Some(v) => Outcome::KillInCgroup {
                    kill: v.kill,
                    cgroup: v.cgroup.clone(),
                    pids: v.tasks.iter().map(|t| t.pid).collect(),
                },
                None if ex.skipped.is_empty() => Outcome::NoEligibleCgroup,
                None => Outcome::NoKillableCandidate,
            };
        }
    }
    ex
}

/// The kernel's oom_badness() of `t` in an OOM of `totalpages` pages.
pub fn badness_points(t: &TaskInfo, totalpages: u64) -> i64 {
    const PAGE: u64 = 4096;
    let pages = t.rss_bytes / PAGE + t.swap_bytes / PAGE + t.pgtables_bytes / PAGE;
    pages as i64 + i64::from(t.oom_score_adj) * (totalpages / 1000) as i64
}

fn explain_badness(
    ex: &mut Explanation,
    tree: &CgroupTree,
    scope: usize,
    tasks: &dyn TaskSource,
    totalpages: u64,
) {
    // (task, its points, its cgroup's index in the tree)
    let mut scored: Vec<(TaskInfo, i64, usize)> = Vec::new();
    for idx in tree.subtree(scope) {
        for &pid in &tree.get(idx).procs {
            if let Some(task) = tasks.task(pid) {
                let points = badness_points(&task, totalpages);
                scored.push((task, points, idx));
            }
        }
    }
    // Killable first. The kernel keeps the last of equal scores in its
    // process list, which is in order of creation.
    let killable = |t: &TaskInfo| t.unkillable().is_none();
    let later = |t: &TaskInfo| (t.start_ticks, t.pid);
    scored.sort_by(|(a, a_points, _), (b, b_points, _)| {
        killable(b)
            .cmp(&killable(a))
            .then(b_points.cmp(a_points))
            .then(later(b).cmp(&later(a)))
    });
    let n_eligible = scored.iter().take_while(|(t, ..)| killable(t)).count();
    let whys: Vec<Reason> = (0..scored.len())
        .map(|i| {
            let (task, points, _) = &scored[i];
            if let Some(unkillable) = task.unkillable() {
                return unkillable.into();
            }
            match scored[..n_eligible].get(i + 1) {
                Some((next, next_points, _)) if points != next_points => Reason::HigherBadness {
                    points: *points,
                    next_points: *next_points,
                    next_pid: next.pid,
                },
                Some((next, next_points, _)) => Reason::StartedAfter {
                    points: *next_points,
                    next_pid: next.pid,
                },
                None if i == 0 => Reason::OnlyKillableTask,
                None => Reason::RanksLast,
            }
        })
        .collect();
    ex.tasks = scored
        .into_iter()
        .zip(whys)
        .enumerate()
        .map(|(i, ((task, points, idx), why))| {
            let node = tree.get(idx);
            RankedTask {
                task,
                points,
                cgroup: node.path.clone(),
                cgroup_id: node.id,
                eligible: i < n_eligible,
                rank: (i < n_eligible).then_some(i + 1),
                why,
            }
        })
        .collect();
    match ex.tasks.first().filter(|t| t.eligible) {
        Some(top) => {
            ex.victim = Some(Victim {
                cgroup_id: top.cgroup_id,
                cgroup: top.cgroup.clone(),
                kill: KillMode::Task,
                tasks: vec![top.task.clone()],
                spared: Vec::new(),
                why: VictimReason {
                    rank: top.why.clone(),
                    passed_over: 0,
                    kill: KillChoice::Badness { totalpages },
                },
            });
            ex.outcome = Outcome::KillTask {
                pid: top.task.pid,
                comm: top.task.comm.clone(),
                cgroup: top.cgroup.clone(),
            };
        }
        None => ex.outcome = Outcome::NoKillableTask,
    }
}

/// `PAGE_COUNTER_MAX` on 64-bit: what `memory.max = max` holds, in pages.
const PAGE_COUNTER_MAX: u64 = (i64::MAX as u64) / 4096;

/// The size of an OOM of the cgroup at `dir` in pages, as the kernel's
/// `oc->totalpages` counts it (for oom_badness()): RAM and swap for a global
/// OOM, the cgroup's `memory.max` (and what swap it may use) for its own.
pub fn oom_totalpages(dir: &Path, global: bool, proc_root: &Path) -> u64 {
    let meminfo = std::fs::read_to_string(proc_root.join("meminfo")).unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let swap_pages = kib("SwapTotal:") / 4;
    if global {
        return (kib("MemTotal:") / 4 + swap_pages).max(1);
    }
    let pages = |file: &str| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        match text.trim() {
            "max" | "" => PAGE_COUNTER_MAX,
            v => v.parse::<u64>().map_or(PAGE_COUNTER_MAX, |b| b / 4096),
        }
    };
    let swap = if swap_pages > 0 {
        pages("memory.swap.max").min(swap_pages)
    } else {
        0
    };
    pages("memory.max").saturating_add(swap).max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::resolve::resolve_tree;
    use crate::testing::{demo_layout, FakeCgroupfs, FakeProcfs, FakeTask, MIB};

    /// A 1 GiB OOM.
    const TOTALPAGES: u64 = 262_144;

    /// The demo's config, whose rules the demo layout follows.
    fn policies_toml() -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests/demo.toml")).unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        tree: CgroupTree,
        procs: crate::procfs::ProcFs,
    }

    impl Fixture {
        fn demo() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let (cg, procs) = demo_layout(&dir.path().join("cg"), &dir.path().join("proc"));
            Fixture {
                tree: CgroupTree::read(cg.root()).unwrap(),
                procs: procs.procfs(),
                _dir: dir,
            }
        }

        /// A tree built by `build` (cgroup root, proc root).
        fn new(build: impl FnOnce(&FakeCgroupfs, &FakeProcfs)) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let cg = FakeCgroupfs::new(dir.path().join("cg"));
            let procs = FakeProcfs::new(dir.path().join("proc"));
            build(&cg, &procs);
            Fixture {
                tree: CgroupTree::read(cg.root()).unwrap(),
                procs: procs.procfs(),
                _dir: dir,
            }
        }

        fn explain(&self, config: &Config, policy: PolicyName, scope: &str) -> Explanation {
            let eff = resolve_tree(config, &self.tree);
            explain(
                policy,
                &self.tree,
                &eff,
                self.tree.lookup(scope).unwrap(),
                &self.procs,
                TOTALPAGES,
            )
        }

        fn id(&self, path: &str) -> u64 {
            self.tree.get(self.tree.find(path).unwrap()).id
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    /// Eligible candidates: (path, why as text).
    fn ranked(ex: &Explanation) -> Vec<(&str, String)> {
        ex.candidates
            .iter()
            .filter(|c| c.eligible)
            .map(|c| (c.path.as_str(), c.why.to_string()))
            .collect()
    }

    fn not_eligible(ex: &Explanation) -> Vec<(&str, String)> {
        ex.candidates
            .iter()
            .filter(|c| !c.eligible)
            .map(|c| (c.path.as_str(), c.why.to_string()))
            .collect()
    }

    /// Expected (path, text) pairs, comparable with [`ranked`]'s.
    fn texts<'a, const N: usize>(pairs: [(&'a str, &str); N]) -> Vec<(&'a str, String)> {
        pairs.map(|(p, why)| (p, why.to_owned())).to_vec()
    }

    /// The victim cgroup's spared tasks: (pid, why as text).
    fn spared(v: &Victim) -> Vec<(u32, String)> {
        v.spared
            .iter()
            .map(|s| (s.pid, s.why.to_string()))
            .collect()
    }

    fn victim_pids(ex: &Explanation) -> Vec<u32> {
        ex.victim
            .as_ref()
            .map(|v| v.tasks.iter().map(|t| t.pid).collect())
            .unwrap_or_default()
    }

    #[test]
    fn xattr_preferences_rank_before_priorities() {
        let f = Fixture::demo();
        let mut eff = resolve_tree(&policies_toml(), &f.tree);
        let idx = |p: &str| f.tree.find(p).unwrap();
        eff[idx("/system.slice/sshd.service")].pref = Pref::Prefer;
        eff[idx("/demo/batch/j2")].pref = Pref::Avoid;
        let root = f.tree.lookup("/").unwrap();
        let ex = explain(
            PolicyName::Priority,
            &f.tree,
            &eff,
            root,
            &f.procs,
            TOTALPAGES,
        );
        assert_eq!(
            ranked(&ex),
            texts([
                (
                    "/system.slice/sshd.service",
                    "preference prefer before none of /demo/batch/j1"
                ),
                ("/demo/batch/j1", "priority 10 < 500 of /demo/web"),
                (
                    "/demo/web",
                    "preference none before avoid of /demo/batch/j2"
                ),
                ("/demo/batch/j2", "ranks last"),
            ])
        );
        assert_eq!(ex.victim.unwrap().cgroup, "/system.slice/sshd.service");
        // `largest` honours them too: the avoided biggest cgroup goes last.
        let ex = explain(
            PolicyName::Largest,
            &f.tree,
            &eff,
            root,
            &f.procs,
            TOTALPAGES,
        );
        let order: Vec<&str> = ranked(&ex).into_iter().map(|(p, _)| p).collect();
        assert_eq!(order.first(), Some(&"/system.slice/sshd.service"));
        assert_eq!(order.last(), Some(&"/demo/batch/j2"));
    }

    #[test]
    fn demo_global_oom() {
        let f = Fixture::demo();
        let ex = f.explain(&policies_toml(), PolicyName::Priority, "/");
        assert_eq!(
            ex.scope,
            Scope {
                kind: ScopeKind::Global,
                path: "/".into(),
                id: f.id("/")
            }
        );
        assert_eq!(
            ranked(&ex),
            texts([
                (
                    "/demo/batch/j2",
                    "same priority 10; larger usage 300 MiB vs 100 MiB of /demo/batch/j1"
                ),
                ("/demo/batch/j1", "priority 10 < 500 of /demo/web"),
                (
                    "/demo/web",
                    "priority 500 < 1000 of /system.slice/sshd.service"
                ),
                ("/system.slice/sshd.service", "ranks last"),
            ])
        );
        assert_eq!(
            not_eligible(&ex),
            texts([
                ("/", "root cgroup: never a candidate"),
                ("/demo", "no processes (only its descendants have some)"),
                (
                    "/demo/batch",
                    "no processes (only its descendants have some)"
                ),
                ("/demo/db", "protected"),
                (
                    "/system.slice",
                    "no processes (only its descendants have some)"
                ),
            ])
        );
        let ranks: Vec<Option<usize>> = ex.candidates.iter().map(|c| c.rank).take(5).collect();
        assert_eq!(ranks, [Some(1), Some(2), Some(3), Some(4), None]);

        let v = ex.victim.as_ref().unwrap();
        assert_eq!(
            (v.cgroup.as_str(), v.cgroup_id, v.kill),
            ("/demo/batch/j2", f.id("/demo/batch/j2"), KillMode::Cgroup)
        );
        assert_eq!(victim_pids(&ex), [310]);
        assert_eq!(
            v.why.to_string(),
            "same priority 10; larger usage 300 MiB vs 100 MiB of /demo/batch/j1; kill = cgroup: all 1 killable task(s)"
        );
        assert_eq!(
            ex.outcome.to_string(),
            "kill the whole cgroup in /demo/batch/j2: pid 310"
        );
        assert!(ex.skipped.is_empty() && ex.tasks.is_empty());
    }

    #[test]
    fn memcg_oom_is_scoped_to_the_subtree() {
        let f = Fixture::demo();
        let ex = f.explain(&policies_toml(), PolicyName::Priority, "/demo/web");
        assert_eq!(ex.scope.kind, ScopeKind::Memcg);
        assert_eq!(
            ranked(&ex),
            texts([("/demo/web", "only eligible candidate")])
        );
        assert!(not_eligible(&ex).is_empty());
        let v = ex.victim.as_ref().unwrap();
        // kill = task: the largest RSS (nginx 201 with 140 MiB over 200 with 50 MiB).
        assert_eq!(victim_pids(&ex), [201]);
        assert_eq!(
            spared(v),
            [(200, "smaller RSS 50 MiB vs 140 MiB".to_owned())]
        );
        assert_eq!(
            v.why.to_string(),
            "only eligible candidate; kill = task: pid 201 (nginx) has the largest RSS, 140 MiB"
        );

        // OOM of /demo: batch before web, db never.
        let ex = f.explain(&policies_toml(), PolicyName::Priority, "/demo");
        let order: Vec<&str> = ranked(&ex).into_iter().map(|(p, _)| p).collect();
        assert_eq!(order, ["/demo/batch/j2", "/demo/batch/j1", "/demo/web"]);
        assert!(not_eligible(&ex)
            .iter()
            .all(|(p, _)| p.starts_with("/demo")));
    }

    #[test]
    fn protected_is_never_chosen() {
        let f = Fixture::demo();
        // The db is the biggest user by far, yet an OOM of its own cgroup
        // finds nothing to kill: the kernel decides.
        let ex = f.explain(&policies_toml(), PolicyName::Priority, "/demo/db");
        assert_eq!(ranked(&ex), []);
        assert_eq!(not_eligible(&ex), texts([("/demo/db", "protected")]));
        assert_eq!(ex.victim, None);
        assert_eq!(
            ex.outcome.to_string(),
            "no eligible cgroup in scope: policyd defers to the kernel's own OOM killer"
        );

        // Even at the lowest priority of all, protect wins; and a child rule
        // can un-protect with protect = false.
        let c = config(
            "[[rule]]\ncgroup = \"/demo/web\"\nprotect = true\n\
             [[rule]]\ncgroup = \"/demo/batch/j1\"\nprotect = false\npriority = 900\n\
             [[rule]]\ncgroup = \"/demo/**\"\nprotect = true\n\
             [[rule]]\ncgroup = \"/**\"\npriority = 0\n",
        );
        let ex = f.explain(&c, PolicyName::Priority, "/");
        let order: Vec<&str> = ranked(&ex).into_iter().map(|(p, _)| p).collect();
        assert_eq!(order, ["/system.slice/sshd.service", "/demo/batch/j1"]);
        assert!(!order.contains(&"/demo/db") && !order.contains(&"/demo/web"));
    }

    #[test]
    fn nothing_eligible_means_no_victim() {
        let f = Fixture::new(|cg, procs| {
            cg.cgroup("/empty", 50 * MIB, &[]).cgroup("/parked", 0, &[]);
            cg.events("/parked", false);
            // Root-cgroup processes are never candidates.
            std::fs::write(cg.root().join("cgroup.procs"), "7\n").unwrap();
            procs.task(FakeTask::new(7, "rooty", 100 * MIB));
        });
        let ex = f.explain(&Config::default(), PolicyName::Priority, "/");
        assert_eq!(ranked(&ex), []);
        assert_eq!(
            not_eligible(&ex),
            texts([
                ("/", "root cgroup: never a candidate"),
                ("/empty", "not populated"),
                ("/parked", "not populated")
            ])
        );
        assert_eq!(ex.victim, None);
        let ex = f.explain(&Config::default(), PolicyName::Largest, "/");
        assert_eq!(ex.victim, None);
    }

    #[test]
    fn ties_break_on_usage_in_mib_then_lower_id() {
        let f = Fixture::new(|cg, procs| {
            cg.cgroup("/a", 100 * MIB, &[10])
                .cgroup("/b", 100 * MIB + 1, &[20])
                .cgroup("/c", 101 * MIB, &[30]);
            for pid in [10, 20, 30] {
                procs.task(FakeTask::new(pid, "t", MIB));
            }
        });
        let ex = f.explain(&Config::default(), PolicyName::Priority, "/");
        let (ida, idb) = (f.id("/a"), f.id("/b"));
        let (lo, hi) = if ida < idb {
            ("/a", "/b")
        } else {
            ("/b", "/a")
        };
        let r = ranked(&ex);
        assert_eq!(
            r[0],
            (
                "/c",
                format!("same priority 100; larger usage 101 MiB vs 100 MiB of {lo}")
            )
        );
        // /a and /b differ by one byte: a tie in whole MiB, broken by the cgroup id.
        assert_eq!(r[1].0, lo);
        assert_eq!(
            r[1].1,
            format!(
                "same priority 100 and usage in whole MiB; lower cgroup id {} < {} of {hi}",
                ida.min(idb),
                ida.max(idb)
            )
        );
        assert_eq!(r[2], (hi, "ranks last".to_owned()));
        assert_eq!(ex.victim.unwrap().cgroup, "/c");

        // Priority beats usage.
        let c = config("[[rule]]\ncgroup = \"/c\"\npriority = 101\n");
        let ex = f.explain(&c, PolicyName::Priority, "/");
        assert_eq!(ex.victim.unwrap().cgroup, lo);
    }

    /// The BPF walks from a cgroup it has no entry for up to its root, as
    /// deep as the cgroup is (it once stopped after 32 levels and fell back
    /// to the defaults): inheritance here has no depth cap either.
    #[test]
    fn inheritance_reaches_cgroups_deeper_than_32_levels() {
        let leaf: String = (1..=40).map(|i| format!("/l{i}")).collect();
        let leaf = format!("/deep{leaf}");
        let f = Fixture::new(|cg, procs| {
            cg.cgroup(&leaf, 10 * MIB, &[10])
                .cgroup("/shallow", 200 * MIB, &[20]);
            procs
                .task(FakeTask::new(10, "deep", 10 * MIB))
                .task(FakeTask::new(20, "shallow", 200 * MIB));
        });
        let level = f
            .tree
            .get(f.tree.find(&leaf).unwrap())
            .path
            .matches('/')
            .count();
        assert_eq!(level, 41);
        let c = config("[[rule]]\ncgroup = \"/deep\"\npriority = 1\n");
        let ex = f.explain(&c, PolicyName::Priority, "/");
        let deep = ex.candidates.iter().find(|c| c.path == leaf).unwrap();
        assert_eq!(deep.priority, 1);
        assert_eq!(ex.victim.unwrap().cgroup, leaf);
    }

    #[test]
    fn unkillable_tasks_are_spared_and_empty_candidates_skipped() {
        let f = Fixture::new(|cg, procs| {
            cg.cgroup("/cheap", 900 * MIB, &[10, 11])
                .cgroup("/mid", 10 * MIB, &[20, 21, 22, 23])
                .cgroup("/dear", 10 * MIB, &[30]);
            procs.task(FakeTask {
                oom_score_adj: -1000,
                ..FakeTask::new(10, "immortal", 800 * MIB)
            });
            procs.task(FakeTask {
                kernel_thread: true,
                ..FakeTask::new(11, "kworker", 0)
            });
            // 20 exited (no /proc entry); 21 is the largest but unkillable.
            procs.task(FakeTask {
                oom_score_adj: -1000,
                ..FakeTask::new(21, "guard", 9 * MIB)
            });
            procs.task(FakeTask::new(22, "w", 2 * MIB));
            procs.task(FakeTask {
                oom_score_adj: 500,
                ..FakeTask::new(23, "w", 2 * MIB)
            });
            procs.task(FakeTask::new(30, "d", MIB));
        });
        let c = config(
            "[[rule]]\ncgroup = \"/cheap\"\npriority = 1\n\
             [[rule]]\ncgroup = \"/mid\"\npriority = 2\n",
        );
        let ex = f.explain(&c, PolicyName::Priority, "/");
        let skipped: Vec<(u64, &str, String)> = ex
            .skipped
            .iter()
            .map(|s| (s.id, s.path.as_str(), s.why.to_string()))
            .collect();
        assert_eq!(
            skipped,
            [(
                f.id("/cheap"),
                "/cheap",
                "nothing killable: pid 10 oom_score_adj -1000, pid 11 kernel thread".to_owned()
            )]
        );
        let v = ex.victim.as_ref().unwrap();
        assert_eq!(v.cgroup, "/mid");
        // Equal RSS: the lower pid (oom_score_adj plays no part in kill = task).
        assert_eq!(victim_pids(&ex), [22]);
        assert_eq!(
            spared(v),
            [
                (20, "exited".to_owned()),
                (21, "oom_score_adj -1000".to_owned()),
                (23, "smaller RSS 2 MiB vs 2 MiB".to_owned()),
            ]
        );
        assert!(v.why.to_string().starts_with(
            "priority 2 < 100 of /dear (the 1 higher-ranked candidate(s) had nothing killable)"
        ));

        // kill = cgroup takes every killable task and spares the rest.
        let c = config("[[rule]]\ncgroup = \"/mid\"\npriority = 2\nkill = \"cgroup\"\n");
        let ex = f.explain(&c, PolicyName::Priority, "/mid");
        assert_eq!(victim_pids(&ex), [22, 23]);
        let spared: Vec<u32> = ex.victim.unwrap().spared.iter().map(|s| s.pid).collect();
        assert_eq!(spared, [20, 21]);

        // Nothing killable anywhere in scope: defer.
        let ex = f.explain(&c, PolicyName::Priority, "/cheap");
        assert_eq!(ex.victim, None);
        assert_eq!(
            ex.outcome.to_string(),
            "no candidate had a killable task: policyd defers to the kernel's own OOM killer"
        );
    }

    #[test]
    fn largest_ignores_priority_but_honours_protect() {
        let f = Fixture::new(|cg, procs| {
            cg.cgroup("/web", 400 * MIB, &[10])
                .cgroup("/batch", 100 * MIB, &[20])
                .cgroup("/db", 900 * MIB, &[30])
                .cgroup("/svc", 950 * MIB, &[40])
                .cgroup("/svc/child", 500 * MIB, &[50]);
            for pid in [10, 20, 30, 40, 50] {
                procs.task(FakeTask::new(pid, "t", MIB));
            }
        });
        let c = config(
            "[[rule]]\ncgroup = \"/web\"\npriority = 9000\n\
             [[rule]]\ncgroup = \"/batch\"\npriority = 1\nkill = \"cgroup\"\n\
             [[rule]]\ncgroup = \"/db\"\nprotect = true\n",
        );
        let ex = f.explain(&c, PolicyName::Largest, "/");
        assert_eq!(
            ranked(&ex),
            texts([
                ("/svc/child", "larger usage 500 MiB vs 400 MiB of /web"),
                ("/web", "larger usage 400 MiB vs 100 MiB of /batch"),
                ("/batch", "ranks last"),
            ])
        );
        assert_eq!(
            not_eligible(&ex),
            texts([
                ("/", "root cgroup: never a candidate"),
                ("/db", "protected"),
                ("/svc", "not a leaf (a child cgroup is populated)"),
            ])
        );
        assert_eq!(ex.victim.as_ref().unwrap().cgroup, "/svc/child");
        // The priority policy on the same tree picks /batch, and kills all of it.
        let ex = f.explain(&c, PolicyName::Priority, "/");
        let v = ex.victim.unwrap();
        assert_eq!((v.cgroup.as_str(), v.kill), ("/batch", KillMode::Cgroup));
    }

    #[test]
    fn a_threaded_subtree_is_its_domains_candidate() {
        // /app's process lives in its threaded child /app/t (the kernel lists it
        // in /app's cgroup.procs); /other is a plain leaf.
        let f = Fixture::new(|cg, procs| {
            cg.cgroup("/app", 30 * MIB, &[10])
                .cgroup("/app/t", 0, &[])
                .threaded("/app/t")
                .events("/app/t", true)
                .events("/app", true)
                .cgroup("/other", 20 * MIB, &[20]);
            procs.task(FakeTask::new(10, "app", 25 * MIB));
            procs.task(FakeTask::new(20, "other", 15 * MIB));
        });
        for policy in [PolicyName::Priority, PolicyName::Largest] {
            let ex = f.explain(&Config::default(), policy, "/");
            assert_eq!(ex.victim.as_ref().unwrap().cgroup, "/app", "{policy}");
            assert!(
                not_eligible(&ex).contains(&(
                    "/app/t",
                    "threaded: its processes count in its domain cgroup".to_owned()
                )),
                "{policy}: {:?}",
                not_eligible(&ex)
            );
        }
    }

    #[test]
    fn badness_ranks_tasks_like_the_kernel() {
        let f = Fixture::new(|cg, procs| {
            cg.cgroup("/a", 0, &[10, 11, 12]).cgroup("/b", 0, &[20, 21]);
            std::fs::write(cg.root().join("cgroup.procs"), "1\n").unwrap();
            procs.task(FakeTask::new(1, "init", 50 * MIB));
            // 1 MiB, but oom_score_adj 500 adds half of the OOM's pages.
            procs.task(FakeTask {
                oom_score_adj: 500,
                ..FakeTask::new(10, "x", MIB)
            });
            procs.task(FakeTask {
                pgtables_bytes: 64 * 1024,
                ..FakeTask::new(11, "big", 5 * MIB)
            });
            procs.task(FakeTask {
                exiting: true,
                ..FakeTask::new(12, "zombie", 0)
            });
            procs.task(FakeTask {
                oom_score_adj: -1000,
                ..FakeTask::new(20, "adj", 90 * MIB)
            });
            // As many pages as pid 11, swap included, and started after it.
            procs.task(FakeTask {
                swap_bytes: 2 * MIB,
                pgtables_bytes: 64 * 1024,
                ..FakeTask::new(21, "big2", 3 * MIB)
            });
        });
        let ex = f.explain(&policies_toml(), PolicyName::Badness, "/");
        assert!(ex.candidates.is_empty());
        let rows: Vec<(u32, Option<usize>, String)> = ex
            .tasks
            .iter()
            .map(|t| (t.task.pid, t.rank, t.why.to_string()))
            .collect();
        // TOTALPAGES / 1000 = 262 pages per unit of oom_score_adj.
        assert_eq!(
            rows,
            [
                (10, Some(1), "badness 131256 > 1296 of pid 21"),
                (21, Some(2), "same badness 1296; started after pid 11"),
                (11, Some(3), "ranks last"),
                (1, None, "init"),
                (12, None, "exiting (no memory left)"),
                (20, None, "oom_score_adj -1000"),
            ]
            .map(|(pid, rank, why)| (pid, rank, why.to_owned()))
        );
        let v = ex.victim.as_ref().unwrap();
        assert_eq!((v.cgroup.as_str(), v.kill), ("/a", KillMode::Task));
        assert_eq!(victim_pids(&ex), [10]);
        assert_eq!(
            v.why.to_string(),
            "badness 131256 > 1296 of pid 21 (kernel oom_badness: RSS + swap + page tables in \
             pages, plus oom_score_adj thousandths of 262144 pages)"
        );

        let ex = f.explain(&policies_toml(), PolicyName::Badness, "/b");
        assert_eq!(victim_pids(&ex), [21]);
    }

    #[test]
    fn observe_never_kills() {
        let f = Fixture::demo();
        let ex = f.explain(&policies_toml(), PolicyName::Observe, "/");
        assert_eq!(ex.victim, None);
        assert!(ex.candidates.is_empty() && ex.tasks.is_empty());
        assert!(ex
            .outcome
            .to_string()
            .starts_with("observe: policyd kills nothing"));
    }

    #[test]
    fn pick_tasks_from_any_source() {
        struct Table(HashMap<u32, TaskInfo>);
        impl TaskSource for Table {
            fn task(&self, pid: u32) -> Option<TaskInfo> {
                self.0.get(&pid).cloned()
            }
        }
        let t = |pid, rss| TaskInfo {
            pid,
            comm: "t".into(),
            rss_bytes: rss,
            oom_score_adj: 0,
            oom_score: None,
            kernel_thread: false,
            swap_bytes: 0,
            pgtables_bytes: 0,
            start_ticks: 0,
            exiting: false,
        };
        let table = Table(
            [(5, t(5, 10)), (6, t(6, 30)), (7, t(7, 30))]
                .into_iter()
                .collect(),
        );
        let (killed, spared) = pick_tasks(KillMode::Task, &[7, 5, 6, 8], &table);
        assert_eq!(killed.iter().map(|t| t.pid).collect::<Vec<_>>(), [6]);
        assert_eq!(spared.iter().map(|s| s.pid).collect::<Vec<_>>(), [5, 7, 8]);
        let (killed, _) = pick_tasks(KillMode::Cgroup, &[7, 5, 6, 8], &table);
        assert_eq!(killed.iter().map(|t| t.pid).collect::<Vec<_>>(), [5, 6, 7]);
        let (killed, spared) = pick_tasks(KillMode::Task, &[], &table);
        assert!(killed.is_empty() && spared.is_empty());
    }

    #[test]
    fn json_shape() {
        let f = Fixture::demo();
        let ex = f.explain(&policies_toml(), PolicyName::Priority, "/demo");
        let j = serde_json::to_value(&ex).unwrap();
        assert_eq!(j["policy"], "priority");
        assert_eq!(j["model"], "user space");
        assert_eq!(j["scope"]["kind"], "memcg");
        assert_eq!(j["scope"]["path"], "/demo");
        assert_eq!(j["victim"]["cgroup"], "/demo/batch/j2");
        assert_eq!(j["victim"]["cgroup_id"], f.id("/demo/batch/j2"));
        assert_eq!(j["victim"]["kill"], "cgroup");
        assert_eq!(j["victim"]["tasks"][0]["pid"], 310);
        assert_eq!(j["victim"]["tasks"][0]["rss_bytes"], 290 * MIB);
        assert_eq!(j["candidates"][0]["source"]["kind"], "rule");
        assert_eq!(j["candidates"][0]["source"]["pattern"], "/demo/batch/**");
        assert_eq!(j["candidates"][0]["memory_current"], 300 * MIB);

        // Every reason twice: the sentence, as explain has always printed
        // it, and the data under `why`.
        let first = &j["candidates"][0];
        assert_eq!(
            first["reason"],
            "same priority 10; larger usage 300 MiB vs 100 MiB of /demo/batch/j1"
        );
        assert_eq!(
            first["why"],
            serde_json::json!({
                "kind": "larger_usage",
                "priority": 10,
                "usage_bytes": 300 * MIB,
                "next_usage_bytes": 100 * MIB,
                "next": "/demo/batch/j1",
            })
        );
        let db = j["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["path"] == "/demo/db")
            .unwrap();
        assert_eq!(
            (&db["reason"], &db["why"]["kind"]),
            (&"protected".into(), &"protected".into())
        );
        assert_eq!(
            j["victim"]["reason"],
            "same priority 10; larger usage 300 MiB vs 100 MiB of /demo/batch/j1; kill = cgroup: \
             all 1 killable task(s)"
        );
        assert_eq!(j["victim"]["why"]["rank"], first["why"]);
        assert_eq!(j["victim"]["why"]["passed_over"], 0);
        assert_eq!(
            j["victim"]["why"]["kill"],
            serde_json::json!({"kind": "whole_cgroup", "tasks": 1})
        );
        assert_eq!(
            j["outcome"],
            "kill the whole cgroup in /demo/batch/j2: pid 310"
        );
        assert_eq!(
            j["outcome_why"],
            serde_json::json!({
                "kind": "kill_in_cgroup",
                "kill": "cgroup",
                "cgroup": "/demo/batch/j2",
                "pids": [310],
            })
        );
    }

    #[test]
    fn json_of_spared_skipped_and_tasks() {
        let f = Fixture::new(|cg, procs| {
            cg.cgroup("/a", 10 * MIB, &[10, 11]).cgroup("/b", 0, &[20]);
            procs.task(FakeTask {
                kernel_thread: true,
                ..FakeTask::new(10, "k", 0)
            });
            procs.task(FakeTask::new(20, "t", MIB));
        });
        let c = config("[[rule]]\ncgroup = \"/a\"\npriority = 1\n");
        let ex = f.explain(&c, PolicyName::Priority, "/");
        let j = serde_json::to_value(&ex).unwrap();
        let skipped = &j["skipped"][0];
        assert_eq!(skipped["path"], "/a");
        assert_eq!(
            skipped["reason"],
            "nothing killable: pid 10 kernel thread, pid 11 exited"
        );
        assert_eq!(skipped["why"]["kind"], "nothing_killable");
        assert_eq!(
            skipped["why"]["spared"],
            serde_json::json!([
                {"pid": 10, "reason": "kernel thread", "why": {"kind": "kernel_thread"}},
                {"pid": 11, "reason": "exited", "why": {"kind": "exited"}},
            ])
        );
        assert_eq!(j["victim"]["why"]["passed_over"], 1);

        let ex = f.explain(&c, PolicyName::Badness, "/");
        let j = serde_json::to_value(&ex).unwrap();
        assert_eq!(j["tasks"][0]["pid"], 20);
        assert_eq!(j["tasks"][0]["reason"], "only killable task");
        assert_eq!(j["tasks"][0]["why"]["kind"], "only_killable_task");
        assert_eq!(j["tasks"][1]["why"]["kind"], "kernel_thread");
        assert_eq!(
            j["victim"]["why"]["kill"],
            serde_json::json!({"kind": "badness", "totalpages": TOTALPAGES})
        );
        assert_eq!(j["outcome_why"]["kind"], "kill_task");
    }
}
