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

use serde::Serialize;

use crate::abi::USAGE_SHIFT;
use crate::cgroupfs::{Cgroup, CgroupTree};
use crate::config::KillMode;
use crate::policy::PolicyName;
use crate::procfs::{TaskInfo, TaskSource};
use crate::resolve::{Effective, Source};
use crate::sizes::{format_bytes, format_pair};

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
    /// `memory.current` in bytes (`None` for the root cgroup).
    pub memory_current: Option<u64>,
    /// Processes directly in this cgroup.
    pub nr_procs: usize,
    pub source: Source,
    pub eligible: bool,
    /// 1-based position among eligible candidates; `None` when not eligible.
    pub rank: Option<usize>,
    /// Why it ranks before the next candidate, or why it is not eligible.
    pub reason: String,
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
    pub reason: String,
}

/// A task that stays alive in the victim cgroup, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spared {
    pub pid: u32,
    pub reason: String,
}

/// A candidate passed over because nothing in it could be killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub id: u64,
    pub path: String,
    pub reason: String,
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
    pub reason: String,
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
    /// One sentence: what happens.
    pub outcome: String,
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
    let mut others: Vec<(usize, String)> = Vec::new();
    for idx in tree.subtree(scope) {
        let node = tree.get(idx);
        let eff = &effective[idx];
        let not_eligible = if node.is_root() {
            Some("root cgroup: never a candidate".to_owned())
        } else if node.threaded {
            Some("threaded: its processes count in its domain cgroup".to_owned())
        } else if eff.protect {
            Some("protected".to_owned())
        } else if !node.populated {
            Some("not populated".to_owned())
        } else if node.procs.is_empty() {
            Some("no processes (only its descendants have some)".to_owned())
        } else if policy == PolicyName::Largest
            && node.children.iter().any(|&c| {
                let child = tree.get(c);
                child.populated && !child.threaded
            })
        {
            Some("not a leaf (a child cgroup is populated)".to_owned())
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
        by_priority
            .then(usage_units(nb).cmp(&usage_units(na)))
            .then(na.id.cmp(&nb.id))
    };
    eligible.sort_by(order);

    let candidate = |idx: usize, eligible: bool, rank: Option<usize>, reason: String| {
        let node = tree.get(idx);
        let eff = &effective[idx];
        Candidate {
            id: node.id,
            path: node.path.clone(),
            priority: eff.priority,
            protect: eff.protect,
            kill: eff.kill,
            memory_current: node.memory_current,
            nr_procs: node.procs.len(),
            source: eff.source.clone(),
            eligible,
            rank,
            reason,
        }
    };

    let mut out = Vec::with_capacity(eligible.len() + others.len());
    for (i, &idx) in eligible.iter().enumerate() {
        let reason = match eligible.get(i + 1) {
            Some(&next) => why_before(policy, tree, effective, idx, next),
            None if i == 0 => "only eligible candidate".to_owned(),
            None => "ranks last".to_owned(),
        };
        out.push(candidate(idx, true, Some(i + 1), reason));
    }
    for (idx, reason) in others {
        out.push(candidate(idx, false, None, reason));
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
) -> String {
    let (na, nb) = (tree.get(a), tree.get(b));
    let (pa, pb) = (eff[a].priority, eff[b].priority);
    if policy == PolicyName::Priority && pa != pb {
        return format!("priority {pa} < {pb} of {}", nb.path);
    }
    let same = if policy == PolicyName::Priority {
        format!("same priority {pa}; ")
    } else {
        String::new()
    };
    if usage_units(na) != usage_units(nb) {
        let (ua, ub) = format_pair(usage(na), usage(nb));
        return format!("{same}larger usage {ua} vs {ub} of {}", nb.path);
    }
    let and_usage = if same.is_empty() {
        "same usage in whole MiB; ".to_owned()
    } else {
        format!("same priority {pa} and usage in whole MiB; ")
    };
    format!(
        "{and_usage}lower cgroup id {} < {} of {}",
        na.id, nb.id, nb.path
    )
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
                reason: "exited".to_owned(),
            }),
            Some(t) => match t.unkillable_reason() {
                Some(why) => spared.push(Spared {
                    pid,
                    reason: why.to_owned(),
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
                reason: format!(
                    "smaller RSS {} vs {}",
                    format_pair(t.rss_bytes, largest).0,
                    format_pair(t.rss_bytes, largest).1
                ),
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
        outcome: String::new(),
    };
    match policy {
        PolicyName::Observe => {
            ex.outcome = "observe: policyd kills nothing; the kernel's own OOM killer picks the \
                          task with the highest oom_badness (see /proc/<pid>/oom_score)"
                .to_owned();
        }
        PolicyName::Badness => explain_badness(&mut ex, tree, scope, tasks, totalpages),
        PolicyName::Priority | PolicyName::Largest => {
            ex.candidates = rank_cgroups(policy, tree, effective, scope);
            for c in ex.candidates.iter().filter(|c| c.eligible) {
                let idx = tree.find_id(c.id).expect("candidate comes from the tree");
                let (killed, spared) = pick_tasks(c.kill, &tree.get(idx).procs, tasks);
                if killed.is_empty() {
                    let why: Vec<String> = spared
                        .iter()
                        .map(|s| format!("pid {} {}", s.pid, s.reason))
                        .collect();
                    ex.skipped.push(Skipped {
                        id: c.id,
                        path: c.path.clone(),
                        reason: format!("nothing killable: {}", why.join(", ")),
                    });
                    continue;
                }
                let mut reason = match c.rank {
                    Some(1) => c.reason.clone(),
                    _ => format!(
                        "{} (the {} higher-ranked candidate(s) had nothing killable)",
                        c.reason,
                        ex.skipped.len()
                    ),
                };
                if c.kill == KillMode::Task {
                    let t = &killed[0];
                    reason.push_str(&format!(
                        "; kill = task: pid {} ({}) has the largest RSS, {}",
                        t.pid,
                        t.comm,
                        format_bytes(t.rss_bytes)
                    ));
                } else {
                    reason.push_str(&format!(
                        "; kill = cgroup: all {} killable task(s)",
                        killed.len()
                    ));
                }
                ex.victim = Some(Victim {
                    cgroup_id: c.id,
                    cgroup: c.path.clone(),
                    kill: c.kill,
                    tasks: killed,
                    spared,
                    reason,
                });
                break;
            }
            ex.outcome = match &ex.victim {
                Some(v) => {
                    let pids: Vec<String> = v.tasks.iter().map(|t| t.pid.to_string()).collect();
                    format!(
                        "kill {} in {}: pid {}",
                        if v.kill == KillMode::Task {
                            "one task"
                        } else {
                            "the whole cgroup"
                        },
                        v.cgroup,
                        pids.join(", ")
                    )
                }
                None if ex.skipped.is_empty() => {
                    "no eligible cgroup in scope: policyd defers to the kernel's own OOM killer"
                        .to_owned()
                }
                None => "no candidate had a killable task: policyd defers to the kernel's own OOM \
                         killer"
                    .to_owned(),
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
    let mut ranked: Vec<RankedTask> = Vec::new();
    for idx in tree.subtree(scope) {
        let node = tree.get(idx);
        for &pid in &node.procs {
            let Some(task) = tasks.task(pid) else {
                continue;
            };
            let unkillable = task.unkillable_reason();
            ranked.push(RankedTask {
                points: badness_points(&task, totalpages),
                task,
                cgroup: node.path.clone(),
                cgroup_id: node.id,
                eligible: unkillable.is_none(),
                rank: None,
                reason: unkillable.unwrap_or_default().to_owned(),
            });
        }
    }
    // The kernel keeps the last of equal scores in its process list, which
    // is in order of creation.
    let later = |t: &RankedTask| (t.task.start_ticks, t.task.pid);
    ranked.sort_by(|a, b| {
        b.eligible
            .cmp(&a.eligible)
            .then(b.points.cmp(&a.points))
            .then(later(b).cmp(&later(a)))
    });
    let n_eligible = ranked.iter().filter(|t| t.eligible).count();
    for i in 0..n_eligible {
        ranked[i].rank = Some(i + 1);
        ranked[i].reason = match ranked.get(i + 1).filter(|n| n.eligible) {
            Some(next) if ranked[i].points != next.points => format!(
                "badness {} > {} of pid {}",
                ranked[i].points, next.points, next.task.pid
            ),
            Some(next) => format!(
                "same badness {}; started after pid {}",
                next.points, next.task.pid
            ),
            None if i == 0 => "only killable task".to_owned(),
            None => "ranks last".to_owned(),
        };
    }
    if let Some(top) = ranked.first().filter(|t| t.eligible) {
        ex.victim = Some(Victim {
            cgroup_id: top.cgroup_id,
            cgroup: top.cgroup.clone(),
            kill: KillMode::Task,
            tasks: vec![top.task.clone()],
            spared: Vec::new(),
            reason: format!(
                "{} (kernel oom_badness: RSS + swap + page tables in pages, plus oom_score_adj \
                 thousandths of {totalpages} pages)",
                top.reason
            ),
        });
        ex.outcome = format!(
            "kill pid {} ({}) in {}",
            top.task.pid, top.task.comm, top.cgroup
        );
    } else {
        ex.outcome = "no killable task in scope: the kernel's own OOM killer decides".to_owned();
    }
    ex.tasks = ranked;
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

    fn policies_toml() -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies.toml")).unwrap()
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

    fn ranked(ex: &Explanation) -> Vec<(&str, &str)> {
        ex.candidates
            .iter()
            .filter(|c| c.eligible)
            .map(|c| (c.path.as_str(), c.reason.as_str()))
            .collect()
    }

    fn not_eligible(ex: &Explanation) -> Vec<(&str, &str)> {
        ex.candidates
            .iter()
            .filter(|c| !c.eligible)
            .map(|c| (c.path.as_str(), c.reason.as_str()))
            .collect()
    }

    fn victim_pids(ex: &Explanation) -> Vec<u32> {
        ex.victim
            .as_ref()
            .map(|v| v.tasks.iter().map(|t| t.pid).collect())
            .unwrap_or_default()
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
            [
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
            ]
        );
        assert_eq!(
            not_eligible(&ex),
            [
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
            ]
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
            v.reason,
            "same priority 10; larger usage 300 MiB vs 100 MiB of /demo/batch/j1; kill = cgroup: all 1 killable task(s)"
        );
        assert_eq!(
            ex.outcome,
            "kill the whole cgroup in /demo/batch/j2: pid 310"
        );
        assert!(ex.skipped.is_empty() && ex.tasks.is_empty());
    }

    #[test]
    fn memcg_oom_is_scoped_to_the_subtree() {
        let f = Fixture::demo();
        let ex = f.explain(&policies_toml(), PolicyName::Priority, "/demo/web");
        assert_eq!(ex.scope.kind, ScopeKind::Memcg);
        assert_eq!(ranked(&ex), [("/demo/web", "only eligible candidate")]);
        assert!(not_eligible(&ex).is_empty());
        let v = ex.victim.as_ref().unwrap();
        // kill = task: the largest RSS (nginx 201 with 140 MiB over 200 with 50 MiB).
        assert_eq!(victim_pids(&ex), [201]);
        assert_eq!(
            v.spared,
            [Spared {
                pid: 200,
                reason: "smaller RSS 50 MiB vs 140 MiB".into()
            }]
        );
        assert_eq!(
            v.reason,
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
        assert_eq!(not_eligible(&ex), [("/demo/db", "protected")]);
        assert_eq!(ex.victim, None);
        assert_eq!(
            ex.outcome,
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
            [
                ("/", "root cgroup: never a candidate"),
                ("/empty", "not populated"),
                ("/parked", "not populated")
            ]
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
                &*format!("same priority 100; larger usage 101 MiB vs 100 MiB of {lo}")
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
        assert_eq!(r[2], (hi, "ranks last"));
        assert_eq!(ex.victim.unwrap().cgroup, "/c");

        // Priority beats usage.
        let c = config("[[rule]]\ncgroup = \"/c\"\npriority = 101\n");
        let ex = f.explain(&c, PolicyName::Priority, "/");
        assert_eq!(ex.victim.unwrap().cgroup, lo);
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
        assert_eq!(
            ex.skipped,
            [Skipped {
                id: f.id("/cheap"),
                path: "/cheap".into(),
                reason: "nothing killable: pid 10 oom_score_adj -1000, pid 11 kernel thread".into()
            }]
        );
        let v = ex.victim.as_ref().unwrap();
        assert_eq!(v.cgroup, "/mid");
        // Equal RSS: the lower pid (oom_score_adj plays no part in kill = task).
        assert_eq!(victim_pids(&ex), [22]);
        assert_eq!(
            v.spared,
            [
                Spared {
                    pid: 20,
                    reason: "exited".into()
                },
                Spared {
                    pid: 21,
                    reason: "oom_score_adj -1000".into()
                },
                Spared {
                    pid: 23,
                    reason: "smaller RSS 2 MiB vs 2 MiB".into()
                },
            ]
        );
        assert!(v.reason.starts_with(
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
            ex.outcome,
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
            [
                ("/svc/child", "larger usage 500 MiB vs 400 MiB of /web"),
                ("/web", "larger usage 400 MiB vs 100 MiB of /batch"),
                ("/batch", "ranks last"),
            ]
        );
        assert_eq!(
            not_eligible(&ex),
            [
                ("/", "root cgroup: never a candidate"),
                ("/db", "protected"),
                ("/svc", "not a leaf (a child cgroup is populated)"),
            ]
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
                    "threaded: its processes count in its domain cgroup"
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
        let rows: Vec<(u32, Option<usize>, &str)> = ex
            .tasks
            .iter()
            .map(|t| (t.task.pid, t.rank, t.reason.as_str()))
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
        );
        let v = ex.victim.as_ref().unwrap();
        assert_eq!((v.cgroup.as_str(), v.kill), ("/a", KillMode::Task));
        assert_eq!(victim_pids(&ex), [10]);
        assert_eq!(
            v.reason,
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
        assert!(ex.outcome.starts_with("observe: policyd kills nothing"));
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
    }
}
