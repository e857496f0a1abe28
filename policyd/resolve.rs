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
//! 4. Then the cgroup's xattrs ([`crate::xattrs`], trusted ones only), each
//!    for the cgroup it is set on and every cgroup below it, whatever the
//!    rules there say, until a cgroup below sets its own:
//!    `trusted.policyd.priority` replaces the rules' priority;
//!    `user.oomd_omit` protects (a rule's `protect = true` protects whatever
//!    the xattrs say: protect only ever adds up); `user.oomd_avoid` ranks the
//!    cgroup after every cgroup without it, `user.oomd_prefer` before every
//!    cgroup without it, before priorities count (avoid wins over prefer).
//!    A false value (`0`) is the same as none, as for systemd-oomd.
//!
//! The kernel side gets one resolved entry per cgroup id; patterns and
//! inheritance never reach BPF.

use std::fmt;

use serde::Serialize;

use crate::cgroupfs::CgroupTree;
use crate::config::{Config, KillMode, Rule};
use crate::matcher::Below;
use crate::xattrs::{self, Pref, Xattrs};

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

/// An xattr in force on a cgroup, and the cgroup it is set on (this one or
/// an ancestor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XattrSource {
    pub name: &'static str,
    /// What it sets: "protect", "prefer", "avoid" or "priority N".
    pub sets: String,
    pub cgroup: String,
}

impl fmt::Display for XattrSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {} on {}", self.sets, self.name, self.cgroup)
    }
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
    /// Ranked first, last or neither, before priorities count.
    pub pref: Pref,
    /// Where the rules' settings came from.
    pub source: Source,
    /// The xattrs that override the rules here, in force from here or above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<XattrSource>,
    /// Where each field came from (for messages; not serialised).
    #[serde(skip)]
    pub origins: FieldOrigins,
    /// What the rules alone give (what a cgroup below inherits from them).
    #[serde(skip)]
    pub by_rules: (u32, bool),
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

    /// Settings for the cgroup at `path` with kernel id `id` and its own
    /// xattrs `own`, given its parent's effective settings (`None` for the
    /// root cgroup).
    pub fn resolve(
        &self,
        path: &str,
        id: u64,
        parent: Option<&Effective>,
        own: &Xattrs,
    ) -> Effective {
        self.resolve_by(self.config.first_match(path), path, id, parent, own)
    }

    /// [`Resolver::resolve`] where `rule` is known to be `path`'s first match.
    fn resolve_by(
        &self,
        rule: Option<&Rule>,
        path: &str,
        id: u64,
        parent: Option<&Effective>,
        own: &Xattrs,
    ) -> Effective {
        let mut e = self.resolve_rules(rule, path, id, parent);
        e.by_rules = (e.priority, e.protect);
        apply_xattrs(&mut e, parent, own);
        e
    }

    /// What every cgroup created below `parent` (any depth, any names,
    /// no xattrs of its own) resolves to, when that does not depend on the
    /// names: the first rule that matches any path below it matches every
    /// one (applied again one level down, it gives the same), or no rule
    /// does (it inherits `parent`'s settings as they are). `None` when it
    /// depends on them: `Err` with the first rule that matches some of
    /// them only.
    pub fn below(&self, parent: &Effective) -> Result<Effective, &'a Rule> {
        let first = (self.config.rules.iter())
            .map(|r| (r, r.pattern.below(&parent.path)))
            .find(|(_, b)| *b != Below::NoPath);
        let rule = match first {
            Some((rule, Below::SomePaths)) => return Err(rule),
            Some((rule, _)) => Some(rule),
            None => None,
        };
        // Any name stands for all of them here.
        let child = match parent.path.as_str() {
            "/" => "/new".to_owned(),
            p => format!("{p}/new"),
        };
        Ok(self.resolve_by(rule, &child, 0, Some(parent), &Xattrs::default()))
    }

    fn resolve_rules(
        &self,
        rule: Option<&Rule>,
        path: &str,
        id: u64,
        parent: Option<&Effective>,
    ) -> Effective {
        let (priority, protect, kill, origins) = match parent {
            Some(p) => (p.by_rules.0, p.by_rules.1, p.kill, p.origins.clone()),
            None => (
                self.config.default_priority,
                false,
                KillMode::Task,
                FieldOrigins::default(),
            ),
        };
        let Some(rule) = rule else {
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
                pref: Pref::None,
                source,
                xattrs: Vec::new(),
                origins,
                by_rules: (priority, protect),
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
            pref: Pref::None,
            source: Source::Rule {
                index: rule.index,
                line: rule.line,
                pattern: rule.pattern.to_string(),
                inherited,
            },
            xattrs: Vec::new(),
            origins,
            by_rules: (0, false),
        }
    }
}

/// Step 4 of the module's order: the xattrs in force at `e` (its own `own`,
/// else its parent's) over what the rules gave it.
fn apply_xattrs(e: &mut Effective, parent: Option<&Effective>, own: &Xattrs) {
    let here = |name: &'static str, sets: String| XattrSource {
        name,
        sets,
        cgroup: e.path.clone(),
    };
    let from_parent =
        |name: &str| parent.and_then(|p| p.xattrs.iter().find(|x| x.name == name).cloned());
    let omit = if own.omit {
        Some(here(xattrs::OMIT, "protect".to_owned()))
    } else {
        from_parent(xattrs::OMIT)
    };
    let pref = if own.avoid {
        Some(here(xattrs::AVOID, Pref::Avoid.to_string()))
    } else if own.prefer {
        Some(here(xattrs::PREFER, Pref::Prefer.to_string()))
    } else {
        from_parent(xattrs::AVOID).or_else(|| from_parent(xattrs::PREFER))
    };
    let priority = match own.priority {
        Some(p) => Some((p, here(xattrs::PRIORITY, format!("priority {p}")))),
        None => parent.and_then(|p| from_parent(xattrs::PRIORITY).map(|x| (p.priority, x))),
    };
    if omit.is_some() {
        e.protect = true;
    }
    if let Some(x) = &pref {
        e.pref = if x.name == xattrs::AVOID {
            Pref::Avoid
        } else {
            Pref::Prefer
        };
    }
    if let Some((p, _)) = &priority {
        e.priority = *p;
    }
    e.xattrs = [omit, pref, priority.map(|(_, x)| x)]
        .into_iter()
        .flatten()
        .collect();
}

/// Effective settings of every cgroup in `tree`, index-aligned with
/// [`CgroupTree::nodes`].
pub fn resolve_tree(config: &Config, tree: &CgroupTree) -> Vec<Effective> {
    let resolver = Resolver::new(config);
    let mut out: Vec<Effective> = Vec::with_capacity(tree.len());
    for node in tree.nodes() {
        // Pre-order: the parent is already resolved.
        let parent = node.parent.map(|p| &out[p]);
        let e = resolver.resolve(&node.path, node.id, parent, &node.xattrs);
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::CgroupTree;
    use crate::matcher::CgroupPattern;
    use crate::testing::FakeCgroupfs;
    use std::collections::BTreeMap;

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
        let none = Xattrs::default();
        let root = r.resolve("/", 1, None, &none);
        let demo = r.resolve("/demo", 2, Some(&root), &none);
        let batch = r.resolve("/demo/batch", 3, Some(&demo), &none);
        let job = r.resolve("/demo/batch/new-job", 99, Some(&batch), &none);
        assert_eq!((job.id, job.priority, job.kill), (99, 10, KillMode::Cgroup));
        assert_eq!(job.source.to_string(), "rule /demo/batch/** (line 13)");
        let prot = r.resolve("/prot", 6, Some(&root), &none);
        let child = r.resolve("/prot/child", 7, Some(&prot), &none);
        assert_eq!(
            child.source.to_string(),
            "rule /prot/child (line 27); protect from /prot"
        );
        assert!(child.protect);
        assert_eq!(child.origins.priority.as_deref(), Some("/prot/child"));
        assert_eq!(child.origins.kill, None);
        let web = r.resolve("/demo/web", 4, Some(&demo), &none);
        let w = r.resolve("/demo/web/w", 5, Some(&web), &none);
        assert_eq!(w.source.to_string(), "inherited from /demo/web");
        assert_eq!(root.source.to_string(), "default");
    }

    #[test]
    fn xattrs_override_rules_for_their_subtree() {
        let config = Config::parse(RULES, "t.toml").unwrap();
        let r = Resolver::new(&config);
        let none = Xattrs::default();
        let x = |omit, avoid, prefer, priority| Xattrs {
            omit,
            avoid,
            prefer,
            priority,
        };
        let root = r.resolve("/", 1, None, &none);
        let demo = r.resolve("/demo", 2, Some(&root), &x(false, true, false, Some(5)));
        assert_eq!(
            (demo.priority, demo.pref, demo.protect),
            (5, Pref::Avoid, false)
        );
        let names = |e: &Effective| e.xattrs.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(&demo),
            [
                "avoid from user.oomd_avoid on /demo",
                "priority 5 from trusted.policyd.priority on /demo"
            ]
        );
        // Below it, a rule's priority 500 gives way to the inherited xattr;
        // the rule is still the source of kill and of what the rules say.
        let web = r.resolve("/demo/web", 3, Some(&demo), &none);
        assert_eq!(
            (web.priority, web.pref, web.by_rules),
            (5, Pref::Avoid, (500, false))
        );
        assert_eq!(web.source.to_string(), "rule /demo/web (line 9)");
        // Its own xattrs replace the inherited ones, one by one.
        let w = r.resolve(
            "/demo/web/w",
            4,
            Some(&web),
            &x(false, false, true, Some(9000)),
        );
        assert_eq!((w.priority, w.pref), (9000, Pref::Prefer));
        // Below an xattr-free cgroup, the rules again: 500 inherited from the rule.
        let other = r.resolve("/free", 5, Some(&root), &none);
        let o = r.resolve("/free/o", 6, Some(&other), &none);
        assert!(o.xattrs.is_empty());
        // omit protects; a rule's protect cannot be undone by xattrs.
        let omitted = r.resolve("/demo/o", 7, Some(&demo), &x(true, false, true, None));
        assert!(omitted.protect);
        assert_eq!(
            omitted.xattrs[0].to_string(),
            "protect from user.oomd_omit on /demo/o"
        );
        let db = r.resolve("/demo/db", 8, Some(&demo), &x(false, false, true, Some(1)));
        assert!(db.protect, "a rule's protect wins");
        // avoid wins over prefer on the same cgroup.
        let both = r.resolve("/demo/b", 9, Some(&root), &x(false, true, true, None));
        assert_eq!(both.pref, Pref::Avoid);
        // A cgroup below web inherits web's rule (500), not the xattr, once
        // the xattrs are gone from /demo.
        let demo2 = r.resolve("/demo", 2, Some(&root), &none);
        let web2 = r.resolve("/demo/web", 3, Some(&demo2), &none);
        let w2 = r.resolve("/demo/web/w", 4, Some(&web2), &none);
        assert_eq!((w2.priority, w2.pref), (500, Pref::None));
    }

    /// A config of generated rules: (pattern elements, priority, protect, kill).
    type GenRule = (Vec<String>, Option<u32>, Option<bool>, Option<bool>);

    fn generated_config(default_priority: u32, rules: &[GenRule]) -> Config {
        let mut text = format!("default_priority = {default_priority}\n");
        let mut seen = std::collections::BTreeSet::new();
        for (elements, priority, protect, kill) in rules {
            let elements: Vec<String> = (elements.iter())
                .map(|e| {
                    if e == "**" {
                        e.clone()
                    } else {
                        e.replace("**", "*")
                    }
                })
                .collect();
            // What the config rejects: a pattern twice, a protected rule with
            // a priority or kill, a rule that sets nothing.
            let pattern = CgroupPattern::parse(&format!("/{}", elements.join("/"))).unwrap();
            if !seen.insert(pattern.to_string()) {
                continue;
            }
            text += &format!("[[rule]]\ncgroup = \"{pattern}\"\n");
            let (priority, kill) = match (priority, protect, kill) {
                (_, Some(true), _) => (&None, &None),
                (None, None, None) => (&Some(0), kill),
                _ => (priority, kill),
            };
            if let Some(p) = priority {
                text += &format!("priority = {p}\n");
            }
            if let Some(p) = protect {
                text += &format!("protect = {p}\n");
            }
            if let Some(k) = kill {
                text += &format!("kill = \"{}\"\n", if *k { "cgroup" } else { "task" });
            }
        }
        Config::parse(&text, "generated.toml").unwrap()
    }

    fn settings(e: &Effective) -> (u32, bool, KillMode, Pref) {
        (e.priority, e.protect, e.kill, e.pref)
    }

    proptest::proptest! {
        /// Whenever `below` gives a template, a cgroup created below the
        /// nearest resolved ancestor (with new cgroups between them, none
        /// with xattrs yet) resolves to exactly it.
        #[test]
        fn the_template_is_what_a_new_cgroup_resolves_to(
            default_priority in 0u32..3,
            rules in proptest::collection::vec(
                (
                    proptest::collection::vec("\\*\\*|\\*|[ab]|a\\*", 0..4),
                    proptest::option::of(0u32..4),
                    proptest::option::of(proptest::bool::ANY),
                    proptest::option::of(proptest::bool::ANY),
                ),
                0..5,
            ),
            // Existing cgroups (with their parents) and the xattrs of each.
            tree in proptest::collection::vec(
                (proptest::collection::vec("[ab]", 1..4), 0u8..16, proptest::option::of(0u32..4)),
                0..6,
            ),
            existing in proptest::collection::vec("[ab]", 0..3),
            new in proptest::collection::vec("[abc]|ab", 1..4),
        ) {
            let config = generated_config(default_priority, &rules);
            let r = Resolver::new(&config);
            let mut xattrs: BTreeMap<String, Xattrs> = BTreeMap::new();
            for (segments, bits, priority) in &tree {
                for depth in 1..=segments.len() {
                    xattrs.entry(format!("/{}", segments[..depth].join("/"))).or_default();
                }
                let x = Xattrs {
                    omit: bits & 1 != 0,
                    avoid: bits & 2 != 0,
                    prefer: bits & 4 != 0,
                    priority: if bits & 8 != 0 { *priority } else { None },
                };
                xattrs.insert(format!("/{}", segments.join("/")), x);
            }
            // Resolved the way policyd does it, parents first.
            let mut eff: BTreeMap<String, Effective> = BTreeMap::new();
            let root = r.resolve("/", 1, None, &Xattrs::default());
            eff.insert("/".to_owned(), root);
            for (path, x) in &xattrs {
                let parent = &eff[parent_of(path)];
                let e = r.resolve(path, 2, Some(parent), x);
                eff.insert(path.clone(), e);
            }
            // The nearest resolved ancestor of the new cgroups.
            let mut at = "/".to_owned();
            for s in &existing {
                let next = join(&at, s);
                if !eff.contains_key(&next) {
                    break;
                }
                at = next;
            }
            let Ok(template) = r.below(&eff[&at]) else {
                return Ok(());
            };
            let mut parent = eff[&at].clone();
            let mut path = at;
            for s in &new {
                path = join(&path, s);
                if eff.contains_key(&path) {
                    break; // not new: it has its own entry
                }
                let e = r.resolve(&path, 3, Some(&parent), &Xattrs::default());
                proptest::prop_assert_eq!(settings(&e), settings(&template), "{}", path);
                parent = e;
            }
        }
    }

    fn parent_of(path: &str) -> &str {
        match path.rfind('/') {
            Some(0) => "/",
            Some(i) => &path[..i],
            None => unreachable!("paths are absolute"),
        }
    }

    fn join(parent: &str, name: &str) -> String {
        if parent == "/" {
            format!("/{name}")
        } else {
            format!("{parent}/{name}")
        }
    }

    #[test]
    fn templates_where_the_names_do_not_matter() {
        let config = Config::parse(
            "default_priority = 100\n\
             [[rule]]\ncgroup = \"/batch/*/**\"\npriority = 1\nkill = \"cgroup\"\n\
             [[rule]]\ncgroup = \"/web/*.scope\"\npriority = 7\n\
             [[rule]]\ncgroup = \"/prot/**\"\nprotect = true\n",
            "t.toml",
        )
        .unwrap();
        let r = Resolver::new(&config);
        let none = Xattrs::default();
        let root = r.resolve("/", 1, None, &none);
        let batch = r.resolve("/batch", 2, Some(&root), &none);
        let web = r.resolve("/web", 3, Some(&root), &none);
        let free = r.resolve("/free", 4, Some(&root), &none);
        let avoid = Xattrs {
            avoid: true,
            priority: Some(9),
            ..Xattrs::default()
        };
        let prot = r.resolve("/prot", 5, Some(&root), &avoid);
        // /batch itself is plain; anything below it is the rule's.
        assert_eq!(settings(&batch), (100, false, KillMode::Task, Pref::None));
        let t = r.below(&batch).unwrap();
        assert_eq!(settings(&t), (1, false, KillMode::Cgroup, Pref::None));
        assert_eq!(t.source.to_string(), "rule /batch/*/** (line 3)");
        // Some names below /web match, others not: no template.
        assert_eq!(r.below(&web).unwrap_err().pattern.as_str(), "/web/*.scope");
        // Nothing can match below /free: its own settings.
        assert_eq!(settings(&r.below(&free).unwrap()), settings(&free));
        // The rules' protect, the xattrs in force from /prot.
        assert_eq!(
            settings(&r.below(&prot).unwrap()),
            (9, true, KillMode::Task, Pref::Avoid)
        );
        // The root: "/batch/*/**" matches some cgroups below it only.
        assert_eq!(r.below(&root).unwrap_err().line, 3);
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
