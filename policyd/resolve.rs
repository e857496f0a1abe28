//! Effective settings per cgroup: rules + inheritance + defaults.
//!
//! For each cgroup, from the root down:
//!
//! 1. The first rule in file order whose pattern matches the cgroup's path
//!    applies. Fields the rule sets (priority, protect, kill) are taken from
//!    it; fields it leaves unset come from the parent's effective settings.
//! 2. With no matching rule, the cgroup takes its parent's effective settings
//!    as they are, so it inherits from its nearest ancestor that a rule
//!    matched.
//! 3. The root cgroup has no parent: what no rule gives it is the defaults
//!    (`default_priority`, protect = false, kill = "task"), and so is
//!    everything below it that no rule reaches.
//!
//! Note what 1 implies: a rule with only `priority` below a protected cgroup
//! inherits `protect = true`; write `protect = false` to un-protect a subtree.
//!
//! The kernel side gets one resolved entry per cgroup id; patterns and
//! inheritance never reach BPF.

use std::fmt;

use serde::Serialize;

use crate::cgroupfs::CgroupTree;
use crate::config::{Config, KillMode};

/// Where a cgroup's effective settings came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A rule matched this cgroup.
    Rule {
        /// 0-based position among the file's rules.
        index: usize,
        /// Line of the rule's `cgroup` key.
        line: usize,
        pattern: String,
        /// Fields the rule left unset that an ancestor's rule supplied
        /// (fields that fell back to the defaults are not listed).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        inherited: Vec<InheritedField>,
    },
    /// No rule matched; settings are those of the ancestor at `from`, which a rule matched.
    Inherited { from: String },
    /// Neither this cgroup nor any ancestor matched a rule.
    Default,
}

/// A field a partial rule did not set, and the cgroup whose rule set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InheritedField {
    pub field: &'static str,
    pub from: String,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Rule {
                line,
                pattern,
                inherited,
                ..
            } => {
                write!(f, "rule {pattern} (line {line})")?;
                for i in inherited {
                    write!(f, "; {} from {}", i.field, i.from)?;
                }
                Ok(())
            }
            Source::Inherited { from } => write!(f, "inherited from {from}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// For each setting, the path of the cgroup whose matching rule set it;
/// `None` = the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldOrigins {
    pub priority: Option<String>,
    pub protect: Option<String>,
    pub kill: Option<String>,
}

/// The resolved settings of one cgroup: what the kernel side gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// Kernel cgroup id.
    pub id: u64,
    pub path: String,
    /// 0..=10000; higher = more valuable.
    pub priority: u32,
    /// Never chosen as a victim.
    pub protect: bool,
    pub kill: KillMode,
    pub source: Source,
    /// Where each field came from (for messages; not serialised).
    #[serde(skip)]
    pub origins: FieldOrigins,
}

impl Effective {
    /// The nearest cgroup (this one or an ancestor) that a rule matched.
    fn rule_origin(&self) -> Option<&str> {
        match &self.source {
            Source::Rule { .. } => Some(&self.path),
            Source::Inherited { from } => Some(from),
            Source::Default => None,
        }
    }
}

/// Resolves settings for cgroups one at a time (parents first), e.g. for a
/// cgroup created after the tree was read.
#[derive(Debug, Clone, Copy)]
pub struct Resolver<'a> {
    config: &'a Config,
}

impl<'a> Resolver<'a> {
    pub fn new(config: &'a Config) -> Self {
        Resolver { config }
    }

    /// Settings for the cgroup at `path` with kernel id `id`, given its
    /// parent's effective settings (`None` for the root cgroup).
    pub fn resolve(&self, path: &str, id: u64, parent: Option<&Effective>) -> Effective {
        let (priority, protect, kill, origins) = match parent {
            Some(p) => (p.priority, p.protect, p.kill, p.origins.clone()),
            None => (
                self.config.default_priority,
                false,
                KillMode::Task,
                FieldOrigins::default(),
            ),
        };
        let Some(rule) = self.config.first_match(path) else {
            let source = match parent.and_then(Effective::rule_origin) {
                Some(from) => Source::Inherited {
                    from: from.to_owned(),
                },
                None => Source::Default,
            };
            return Effective {
                id,
                path: path.to_owned(),
                priority,
                protect,
                kill,
                source,
                origins,
            };
        };

        let mut inherited = Vec::new();
        let mut pick = |field: &'static str, set: bool, from: Option<String>| {
            if set {
                Some(path.to_owned())
            } else {
                if let Some(from) = &from {
                    inherited.push(InheritedField {
                        field,
                        from: from.clone(),
                    });
                }
                from
            }
        };
        let origins = FieldOrigins {
            priority: pick("priority", rule.priority.is_some(), origins.priority),
            protect: pick("protect", rule.protect.is_some(), origins.protect),
            kill: pick("kill", rule.kill.is_some(), origins.kill),
        };
        Effective {
            id,
            path: path.to_owned(),
            priority: rule.priority.unwrap_or(priority),
            protect: rule.protect.unwrap_or(protect),
            kill: rule.kill.unwrap_or(kill),
            source: Source::Rule {
                index: rule.index,
                line: rule.line,
                pattern: rule.pattern.to_string(),
                inherited,
            },
            origins,
        }
    }
}

/// Effective settings of every cgroup in `tree`, index-aligned with
/// [`CgroupTree::nodes`].
pub fn resolve_tree(config: &Config, tree: &CgroupTree) -> Vec<Effective> {
    let resolver = Resolver::new(config);
    let mut out: Vec<Effective> = Vec::with_capacity(tree.len());
    for node in tree.nodes() {
        // Pre-order: the parent is already resolved.
        let parent = node.parent.map(|p| &out[p]);
        let e = resolver.resolve(&node.path, node.id, parent);
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::CgroupTree;
    use crate::testing::FakeCgroupfs;

    const RULES: &str = r#"
default_priority = 100

[[rule]]
cgroup = "/demo/db"
protect = true

[[rule]]
cgroup = "/demo/web"
priority = 500

[[rule]]
cgroup = "/demo/batch/**"
priority = 10
kill = "cgroup"

[[rule]]
cgroup = "/demo/db/replica"
protect = false
priority = 20

[[rule]]
cgroup = "/demo/*"
priority = 42

[[rule]]
cgroup = "/prot/child"
priority = 7

[[rule]]
cgroup = "/prot/**"
protect = true

[[rule]]
cgroup = "/k"
kill = "cgroup"

[[rule]]
cgroup = "/k/special"
priority = 3
"#;

    /// (priority, protect, kill) and the source, by path.
    fn resolved(config: &Config, paths: &[&str]) -> Vec<(String, (u32, bool, KillMode), Source)> {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeCgroupfs::new(dir.path());
        for p in paths {
            fake.cgroup(p, 0, &[]);
        }
        let tree = CgroupTree::read(dir.path()).unwrap();
        let eff = resolve_tree(config, &tree);
        assert_eq!(eff.len(), tree.len());
        for (e, n) in eff.iter().zip(tree.nodes()) {
            assert_eq!((e.id, &e.path), (n.id, &n.path));
        }
        eff.into_iter()
            .map(|e| (e.path, (e.priority, e.protect, e.kill), e.source))
            .collect()
    }

    fn rule(
        index: usize,
        line: usize,
        pattern: &str,
        inherited: &[(&'static str, &str)],
    ) -> Source {
        Source::Rule {
            index,
            line,
            pattern: pattern.into(),
            inherited: inherited
                .iter()
                .map(|&(field, from)| InheritedField {
                    field,
                    from: from.into(),
                })
                .collect(),
        }
    }

    fn inherited(from: &str) -> Source {
        Source::Inherited { from: from.into() }
    }

    #[test]
    fn first_match_inheritance_and_defaults() {
        use KillMode::*;
        let config = Config::parse(RULES, "t.toml").unwrap();
        let got = resolved(
            &config,
            &[
                "/demo/db/replica/x",
                "/demo/web/worker",
                "/demo/batch/j1/step",
                "/demo/other",
                "/prot/child/leaf",
                "/k/sub",
                "/k/special",
                "/free/a",
            ],
        );
        #[rustfmt::skip]
        let expected = vec![
            ("/",                   (100, false, Task),   Source::Default),
            ("/demo",               (100, false, Task),   Source::Default),
            // Earlier literal rules win over the later "/demo/*".
            ("/demo/batch",         (10,  false, Cgroup), rule(2, 13, "/demo/batch/**", &[])),
            // Matched by the rule itself, not inherited: "**" covers any depth.
            // protect is unset but no rule set it above either: nothing listed.
            ("/demo/batch/j1",      (10,  false, Cgroup), rule(2, 13, "/demo/batch/**", &[])),
            ("/demo/batch/j1/step", (10,  false, Cgroup), rule(2, 13, "/demo/batch/**", &[])),
            ("/demo/db",            (100, true,  Task),   rule(0, 5, "/demo/db", &[])),
            // Sets protect and priority; kill is the default, not from /demo/db's rule.
            ("/demo/db/replica",    (20,  false, Task),   rule(3, 18, "/demo/db/replica", &[])),
            ("/demo/db/replica/x",  (20,  false, Task),   inherited("/demo/db/replica")),
            ("/demo/other",         (42,  false, Task),   rule(4, 23, "/demo/*", &[])),
            ("/demo/web",           (500, false, Task),   rule(1, 9, "/demo/web", &[])),
            ("/demo/web/worker",    (500, false, Task),   inherited("/demo/web")),
            ("/free",               (100, false, Task),   Source::Default),
            ("/free/a",             (100, false, Task),   Source::Default),
            ("/k",                  (100, false, Cgroup), rule(7, 35, "/k", &[])),
            ("/k/special",          (3,   false, Cgroup), rule(8, 39, "/k/special", &[("kill", "/k")])),
            ("/k/sub",              (100, false, Cgroup), inherited("/k")),
            ("/prot",               (100, true,  Task),   rule(6, 31, "/prot/**", &[])),
            // A priority-only rule below a protected cgroup stays protected.
            ("/prot/child",         (7,   true,  Task),   rule(5, 27, "/prot/child", &[("protect", "/prot")])),
            ("/prot/child/leaf",    (7,   true,  Task),   rule(6, 31, "/prot/**", &[("priority", "/prot/child")])),
        ];
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(p, s, src)| (p.to_owned(), s, src))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn default_priority_and_root_rule() {
        let config = Config::parse("default_priority = 7\n", "t").unwrap();
        let got = resolved(&config, &["/a/b"]);
        assert!(got
            .iter()
            .all(|(_, s, src)| *s == (7, false, KillMode::Task) && *src == Source::Default));

        // A rule for "/" makes the root the origin of everything below it.
        let config = Config::parse("[[rule]]\ncgroup = \"/\"\npriority = 3\n", "t").unwrap();
        let got = resolved(&config, &["/a/b"]);
        assert_eq!(got[0].2, rule(0, 2, "/", &[]));
        assert_eq!(got[0].1, (3, false, KillMode::Task));
        assert_eq!(
            got[2],
            (
                "/a/b".to_owned(),
                (3, false, KillMode::Task),
                inherited("/")
            )
        );
    }

    #[test]
    fn resolves_a_new_cgroup_from_its_parent() {
        let config = Config::parse(RULES, "t.toml").unwrap();
        let r = Resolver::new(&config);
        let root = r.resolve("/", 1, None);
        let demo = r.resolve("/demo", 2, Some(&root));
        let batch = r.resolve("/demo/batch", 3, Some(&demo));
        let job = r.resolve("/demo/batch/new-job", 99, Some(&batch));
        assert_eq!((job.id, job.priority, job.kill), (99, 10, KillMode::Cgroup));
        assert_eq!(job.source.to_string(), "rule /demo/batch/** (line 13)");
        let prot = r.resolve("/prot", 6, Some(&root));
        let child = r.resolve("/prot/child", 7, Some(&prot));
        assert_eq!(
            child.source.to_string(),
            "rule /prot/child (line 27); protect from /prot"
        );
        assert!(child.protect);
        assert_eq!(child.origins.priority.as_deref(), Some("/prot/child"));
        assert_eq!(child.origins.kill, None);
        let web = r.resolve("/demo/web", 4, Some(&demo));
        let w = r.resolve("/demo/web/w", 5, Some(&web));
        assert_eq!(w.source.to_string(), "inherited from /demo/web");
        assert_eq!(root.source.to_string(), "default");
    }

    #[test]
    fn source_serialises_with_a_kind() {
        let json = serde_json::to_value(rule(2, 13, "/demo/batch/**", &[])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "rule", "index": 2, "line": 13, "pattern": "/demo/batch/**"})
        );
        let json = serde_json::to_value(inherited("/demo/web")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "inherited", "from": "/demo/web"})
        );
        assert_eq!(
            serde_json::to_value(Source::Default).unwrap(),
            serde_json::json!({"kind": "default"})
        );
    }
}
