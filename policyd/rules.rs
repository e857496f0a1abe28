//! What the kernel side reads: the resolved settings of every cgroup as
//! `struct policyd_rule` entries keyed by cgroup id, plus the defaults entry
//! (key [`abi::DEFAULTS_KEY`]) the handler falls back to.
//!
//! Patterns and inheritance stay in user space ([`crate::resolve`]); the
//! policy only looks ids up. For a cgroup policyd has not seen yet it walks
//! to the nearest ancestor with an entry and takes that entry's template for
//! new cgroups below it, or, where none is known, the ancestor's own
//! settings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::abi::{self, PolicydRule};
use crate::config::{Config, KillMode};
use crate::resolve::{Effective, Resolver};
use crate::xattrs::Pref;

/// A cgroup's own settings as a map value, without a template for new
/// cgroups below it.
pub fn own_rule(e: &Effective) -> PolicydRule {
    PolicydRule {
        priority: e.priority,
        protect: u8::from(e.protect),
        kill: e.kill.abi(),
        pref: e.pref.abi(),
        ..Default::default()
    }
}

/// The map value for a cgroup with these settings: its own, and what a
/// cgroup created below it gets until policyd resolves that one
/// ([`Resolver::below`]).
pub fn rule_of(config: &Config, e: &Effective) -> PolicydRule {
    let mut rule = own_rule(e);
    if let Ok(t) = Resolver::new(config).below(e) {
        rule.below_known = 1;
        rule.below_priority = t.priority;
        rule.below_protect = u8::from(t.protect);
        rule.below_kill = t.kill.abi();
        rule.below_pref = t.pref.abi();
    }
    rule
}

/// The defaults entry: what a cgroup no rule reaches gets.
pub fn defaults_rule(config: &Config) -> PolicydRule {
    PolicydRule {
        priority: config.default_priority,
        kill: KillMode::Task.abi(),
        pref: Pref::None.abi(),
        ..Default::default()
    }
}

/// Every entry of a rules map for `effective` (one per cgroup, see
/// [`crate::resolve::resolve_tree`]), the defaults entry first.
pub fn rule_entries<'a>(
    config: &Config,
    effective: impl IntoIterator<Item = &'a Effective>,
) -> Vec<(u64, PolicydRule)> {
    let effective = effective.into_iter();
    let mut out = Vec::with_capacity(effective.size_hint().0 + 1);
    out.push((abi::DEFAULTS_KEY, defaults_rule(config)));
    out.extend(effective.map(|e| (e.id, rule_of(config, e))));
    out
}

/// Make cgroup `id` protected in `entries` (from [`rule_entries`]) whatever
/// its rules say: policyd's own cgroup. Only that entry changes; its
/// descendants keep what they resolved to. Adds the entry if the tree
/// read had no such cgroup.
pub fn force_protect(entries: &mut Vec<(u64, PolicydRule)>, id: u64, config: &Config) {
    match entries.iter_mut().find(|(k, _)| *k == id) {
        Some((_, rule)) => rule.protect = 1,
        None => entries.push((
            id,
            PolicydRule {
                protect: 1,
                ..defaults_rule(config)
            },
        )),
    }
}

/// Settings by cgroup path, to compare two generations of rules.
pub type Snapshot = BTreeMap<String, PolicydRule>;

pub fn snapshot(effective: &[Effective]) -> Snapshot {
    effective
        .iter()
        .map(|e| (e.path.clone(), own_rule(e)))
        .collect()
}

/// A rules entry in words, for log lines.
pub fn describe(r: &PolicydRule) -> String {
    if r.protect != 0 {
        "protected".to_owned()
    } else {
        // An unknown number reads as the handler's fallback, `task`.
        let kill = KillMode::from_abi(r.kill).unwrap_or_default();
        match Pref::from_abi(r.pref) {
            Some(Pref::None) => format!("priority {} kill {kill}", r.priority),
            pref => format!(
                "{} priority {} kill {kill}",
                pref.map_or("pref?".to_owned(), |p| p.to_string()),
                r.priority
            ),
        }
    }
}

/// What a reload changes for cgroups that exist before and after: how many
/// changed, and a line for each of the first `limit` (then "... and N
/// more"). A protected cgroup stays "protected" whatever its priority.
pub fn describe_changes(old: &Snapshot, new: &Snapshot, limit: usize) -> (usize, Vec<String>) {
    let mut lines = Vec::new();
    let mut changed = 0usize;
    for (path, n) in new {
        let Some(o) = old.get(path) else { continue };
        let (before, after) = (describe(o), describe(n));
        if before != after {
            changed += 1;
            if lines.len() < limit {
                lines.push(format!("{path}: {before} -> {after}"));
            }
        }
    }
    if changed > lines.len() {
        let mut more = String::new();
        let _ = write!(more, "... and {} more", changed - lines.len());
        lines.push(more);
    }
    (changed, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::CgroupTree;
    use crate::resolve::resolve_tree;
    use crate::testing::demo_layout;

    fn demo_config() -> Config {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests/demo.toml");
        Config::load(&path).unwrap()
    }

    #[test]
    fn entries_for_the_demo_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (cg, _) = demo_layout(&dir.path().join("cg"), &dir.path().join("proc"));
        let tree = CgroupTree::read(cg.root()).unwrap();
        let config = demo_config();
        let eff = resolve_tree(&config, &tree);
        let entries = rule_entries(&config, &eff);

        // The defaults entry first, then one per cgroup (the root included).
        assert_eq!(entries.len(), tree.len() + 1);
        assert_eq!(
            entries[0],
            (
                0,
                PolicydRule {
                    priority: 100,
                    protect: 0,
                    kill: KillMode::Task.abi(),
                    pref: 0,
                    ..Default::default()
                }
            )
        );
        let by_path = |p: &str| {
            let id = tree.get(tree.find(p).unwrap()).id;
            let r = entries.iter().find(|(k, _)| *k == id).unwrap().1;
            // The cgroup's own settings; templates have tests of their own.
            PolicydRule {
                priority: r.priority,
                protect: r.protect,
                kill: r.kill,
                pref: r.pref,
                ..Default::default()
            }
        };
        let rule = |priority, protect, kill: KillMode| PolicydRule {
            priority,
            protect,
            kill: kill.abi(),
            pref: 0,
            ..Default::default()
        };
        assert_eq!(by_path("/demo/db"), rule(100, 1, KillMode::Task));
        assert_eq!(by_path("/demo/web"), rule(500, 0, KillMode::Task));
        assert_eq!(by_path("/demo/batch/j2"), rule(10, 0, KillMode::Cgroup));
        assert_eq!(
            by_path("/system.slice/sshd.service"),
            rule(1000, 0, KillMode::Task)
        );
        assert_eq!(by_path("/"), rule(100, 0, KillMode::Task));
        // Templates: the rule's below /demo/batch, the own settings below a
        // cgroup no rule reaches into, none where names decide.
        let entry = |p: &str| {
            let id = tree.get(tree.find(p).unwrap()).id;
            entries.iter().find(|(k, _)| *k == id).unwrap().1
        };
        let below = |r: PolicydRule| {
            (
                r.below_known,
                r.below_priority,
                r.below_protect,
                r.below_kill,
            )
        };
        let cgroup = KillMode::Cgroup.abi();
        assert_eq!(below(entry("/demo/batch")), (1, 10, 0, cgroup));
        assert_eq!(below(entry("/demo/web")), (1, 500, 0, KillMode::Task.abi()));
        assert_eq!(below(entry("/demo/db")), (1, 100, 1, KillMode::Task.abi()));
        assert_eq!(
            below(entry("/demo")).0,
            0,
            "/demo/db and /demo/web are names"
        );
        assert_eq!(below(entry("/")).0, 0);
        // No cgroup has id 0: the defaults key never collides.
        assert!(entries[1..].iter().all(|(k, _)| *k != abi::DEFAULTS_KEY));
    }

    #[test]
    fn forces_protection_on_one_cgroup_only() {
        let config = Config::parse(
            "[[rule]]\ncgroup = \"/svc/**\"\npriority = 5\nkill = \"cgroup\"\n",
            "t.toml",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cg = crate::testing::FakeCgroupfs::new(dir.path());
        cg.cgroup("/svc/policyd/child", 0, &[])
            .cgroup("/svc/other", 0, &[]);
        let tree = CgroupTree::read(cg.root()).unwrap();
        let eff = resolve_tree(&config, &tree);
        let id = |p: &str| tree.get(tree.find(p).unwrap()).id;
        let mut entries = rule_entries(&config, &eff);
        let before = entries.clone();
        force_protect(&mut entries, id("/svc/policyd"), &config);
        for (k, r) in &entries {
            let old = before.iter().find(|(b, _)| b == k).unwrap().1;
            if *k == id("/svc/policyd") {
                assert_eq!(*r, PolicydRule { protect: 1, ..old });
            } else {
                // Its child, sibling and parent keep their rules.
                assert_eq!(*r, old);
            }
        }
        // A cgroup the tree did not have gets an entry of its own.
        force_protect(&mut entries, 424_242, &config);
        assert_eq!(
            entries.last(),
            Some(&(
                424_242,
                PolicydRule {
                    protect: 1,
                    ..defaults_rule(&config)
                }
            ))
        );
    }

    #[test]
    fn defaults_follow_default_priority() {
        let config = Config::parse("default_priority = 7\n", "t.toml").unwrap();
        assert_eq!(defaults_rule(&config).priority, 7);
        assert_eq!(
            rule_entries(&config, &[]),
            vec![(0, defaults_rule(&config))]
        );
    }

    #[test]
    fn describes_changed_cgroups() {
        let r = |priority, protect, kill| PolicydRule {
            priority,
            protect,
            kill,
            pref: 0,
            ..Default::default()
        };
        let old: Snapshot = [
            ("/a".to_owned(), r(10, 0, 0)),
            ("/b".to_owned(), r(10, 0, 0)),
            ("/c".to_owned(), r(10, 0, 0)),
            ("/p".to_owned(), r(10, 1, 0)),
            ("/gone".to_owned(), r(1, 0, 0)),
        ]
        .into();
        let new: Snapshot = [
            ("/a".to_owned(), r(20, 0, 1)),
            ("/b".to_owned(), r(10, 1, 0)),
            ("/c".to_owned(), r(10, 0, 0)),
            // Protected before and after: no change worth a line.
            ("/p".to_owned(), r(77, 1, 0)),
            ("/new".to_owned(), r(1, 0, 0)),
        ]
        .into();
        let (n, lines) = describe_changes(&old, &new, 10);
        assert_eq!(n, 2);
        assert_eq!(
            lines,
            [
                "/a: priority 10 kill task -> priority 20 kill cgroup",
                "/b: priority 10 kill task -> protected"
            ]
        );
        let (n, lines) = describe_changes(&old, &new, 1);
        assert_eq!(n, 2);
        assert_eq!(
            lines,
            [
                "/a: priority 10 kill task -> priority 20 kill cgroup",
                "... and 1 more"
            ]
        );
    }
}
