//! The configuration file: schema, parsing and validation.
//!
//! ```toml
//! policy = "priority"        # priority | largest | badness | observe
//! default_priority = 100     # 0..=10000, for cgroups no rule reaches
//!
//! [[rule]]
//! cgroup = "/demo/db"        # pattern, see crate::matcher
//! protect = true             # never chosen as a victim
//!
//! [[rule]]
//! cgroup = "/demo/batch/**"
//! priority = 10              # 0..=10000, higher = more valuable
//! kill = "cgroup"            # task (largest task) | cgroup (all of it)
//! ```
//!
//! Rules are tried in file order and the first one whose pattern matches a
//! cgroup applies to it; what it leaves unset is inherited (see
//! [`crate::resolve`]). `policies.toml` at the repository root documents every
//! key for users.
//!
//! Every error carries the file name, line and column (`policies.toml:7:12:
//! priority must be between 0 and 10000, got 20000`); validation reports all
//! problems it finds, not just the first.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::matcher::{CgroupPattern, PatternError};
use crate::policy::{PolicyName, UnknownPolicy};

/// Where `policyd` looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/policyd/policies.toml";
/// Highest allowed priority (lowest is 0).
pub const MAX_PRIORITY: u32 = 10_000;
/// `default_priority` when the file does not set it.
pub const DEFAULT_PRIORITY: u32 = 100;

/// What to kill once a cgroup is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KillMode {
    /// The task with the largest RSS in the cgroup.
    #[default]
    Task,
    /// Every task in the cgroup.
    Cgroup,
}

impl KillMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            KillMode::Task => "task",
            KillMode::Cgroup => "cgroup",
        }
    }
}

impl fmt::Display for KillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KillMode {
    type Err = DiagnosticKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "task" => Ok(KillMode::Task),
            "cgroup" => Ok(KillMode::Cgroup),
            other => Err(DiagnosticKind::UnknownKill(other.to_owned())),
        }
    }
}

/// One validated `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Position among the file's rules, 0-based (file order = match order).
    pub index: usize,
    /// Line of the rule's `cgroup = ...` key, for messages.
    pub line: usize,
    pub pattern: CgroupPattern,
    pub priority: Option<u32>,
    pub protect: Option<bool>,
    pub kill: Option<KillMode>,
}

/// A parsed and validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, as given (used in messages); empty for built-in defaults.
    pub path: PathBuf,
    pub policy: PolicyName,
    pub default_priority: u32,
    /// In file order: the first matching rule wins.
    pub rules: Vec<Rule>,
    /// Things that are legal but probably not what the author meant.
    pub warnings: Vec<Diagnostic>,
}

impl Default for Config {
    /// No rules: every cgroup gets `default_priority`.
    fn default() -> Self {
        Config {
            path: PathBuf::new(),
            policy: PolicyName::DEFAULT,
            default_priority: DEFAULT_PRIORITY,
            rules: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// A problem at a place in the file. Displays as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub kind: DiagnosticKind,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = if self.kind.is_warning() {
            "warning: "
        } else {
            ""
        };
        write!(
            f,
            "{}:{}:{}: {severity}{}",
            self.file, self.line, self.column, self.kind
        )
    }
}

/// What is wrong (or, for the `Warn*` kinds, suspicious).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiagnosticKind {
    /// TOML syntax, a wrong type, an unknown or missing key.
    #[error("{0}")]
    Toml(String),
    #[error("{key} must be between 0 and {MAX_PRIORITY}, got {value}")]
    PriorityRange { key: &'static str, value: i64 },
    #[error(transparent)]
    UnknownPolicy(#[from] UnknownPolicy),
    #[error("kill must be \"task\" (largest task) or \"cgroup\" (every task in the cgroup), got \"{0}\"")]
    UnknownKill(String),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(
        "duplicate rule for cgroup \"{pattern}\" (first at line {first_line}); only the first \
         would ever apply, merge the two"
    )]
    DuplicatePattern { pattern: String, first_line: usize },
    #[error(
        "rule for \"{pattern}\" sets nothing; give it at least one of priority, protect or kill"
    )]
    EmptyRule { pattern: String },
    #[error(
        "rule for \"{pattern}\" sets protect = true together with {other}: a protected cgroup is \
         never chosen as a victim, so {other} would never apply; remove protect = true or remove \
         {other}"
    )]
    ProtectContradiction {
        pattern: String,
        other: &'static str,
    },
    #[error(
        "rule for \"{pattern}\" never applies: the earlier rule for \"{earlier}\" (line \
         {earlier_line}) matches that cgroup first; move it above"
    )]
    WarnShadowed {
        pattern: String,
        earlier: String,
        earlier_line: usize,
    },
    #[error("cgroup patterns are relative to the cgroup2 mount; did you mean \"{suggestion}\"?")]
    WarnMountPrefix { suggestion: String },
}

impl DiagnosticKind {
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            DiagnosticKind::WarnShadowed { .. } | DiagnosticKind::WarnMountPrefix { .. }
        )
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// One or more problems in the file, in file order.
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// True when the file does not exist (callers add a hint about `--config`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfigError::Read { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }

    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Read { .. } => &[],
        }
    }
}

struct DisplayLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

// The file as written. Values that need range or enum checks are taken as
// plain TOML types with their spans, so errors can point at them and say more
// than serde's "expected u32".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    policy: Option<Spanned<String>>,
    default_priority: Option<Spanned<i64>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    cgroup: Spanned<String>,
    priority: Option<Spanned<i64>>,
    protect: Option<Spanned<bool>>,
    kill: Option<Spanned<String>>,
}

impl Config {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        config.path = path.to_owned();
        Ok(config)
    }

    /// Validate `text`; `file_name` is what messages call the file.
    pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let at = |span: Range<usize>, kind: DiagnosticKind| {
            let (line, column) = line_column(text, span.start);
            Diagnostic {
                file: file_name.to_owned(),
                line,
                column,
                kind,
            }
        };

        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let kind = DiagnosticKind::Toml(clarify_toml_message(e.message()));
            ConfigError::Invalid(vec![at(e.span().unwrap_or(0..0), kind)])
        })?;

        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        let policy = match &raw.policy {
            None => PolicyName::DEFAULT,
            Some(p) => p.get_ref().parse().unwrap_or_else(|e: UnknownPolicy| {
                errors.push(at(p.span(), e.into()));
                PolicyName::DEFAULT
            }),
        };
        let default_priority = match &raw.default_priority {
            None => DEFAULT_PRIORITY,
            Some(v) => check_priority("default_priority", v).unwrap_or_else(|kind| {
                errors.push(at(v.span(), kind));
                DEFAULT_PRIORITY
            }),
        };

        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        for (index, spanned) in raw.rule.iter().enumerate() {
            let r = spanned.get_ref();
            let text_pattern = r.cgroup.get_ref();
            let line = line_column(text, r.cgroup.span().start).0;
            let pattern = match CgroupPattern::parse(text_pattern) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(at(r.cgroup.span(), e.into()));
                    continue;
                }
            };
            if let Some(rest) = pattern.as_str().strip_prefix("/sys/fs/cgroup") {
                if rest.is_empty() || rest.starts_with('/') {
                    let suggestion = if rest.is_empty() { "/" } else { rest };
                    warnings.push(at(
                        r.cgroup.span(),
                        DiagnosticKind::WarnMountPrefix {
                            suggestion: suggestion.to_owned(),
                        },
                    ));
                }
            }

            let priority = r.priority.as_ref().and_then(|v| {
                check_priority("priority", v)
                    .map_err(|kind| errors.push(at(v.span(), kind)))
                    .ok()
            });
            let kill = r.kill.as_ref().and_then(|k| {
                k.get_ref()
                    .parse()
                    .map_err(|kind| errors.push(at(k.span(), kind)))
                    .ok()
            });
            let protect = r.protect.as_ref().map(|p| *p.get_ref());

            if r.priority.is_none() && r.protect.is_none() && r.kill.is_none() {
                errors.push(at(
                    spanned.span(),
                    DiagnosticKind::EmptyRule {
                        pattern: pattern.to_string(),
                    },
                ));
            }
            if let (Some(p), true) = (&r.protect, protect == Some(true)) {
                let other = match (r.priority.is_some(), r.kill.is_some()) {
                    (true, true) => Some("priority and kill"),
                    (true, false) => Some("priority"),
                    (false, true) => Some("kill"),
                    (false, false) => None,
                };
                if let Some(other) = other {
                    errors.push(at(
                        p.span(),
                        DiagnosticKind::ProtectContradiction {
                            pattern: pattern.to_string(),
                            other,
                        },
                    ));
                }
            }

            if let Some(first) = rules
                .iter()
                .find(|e| e.pattern.as_str() == pattern.as_str())
            {
                errors.push(at(
                    r.cgroup.span(),
                    DiagnosticKind::DuplicatePattern {
                        pattern: pattern.to_string(),
                        first_line: first.line,
                    },
                ));
            } else if pattern.is_literal() {
                if let Some(earlier) = rules.iter().find(|e| e.pattern.matches(pattern.as_str())) {
                    warnings.push(at(
                        r.cgroup.span(),
                        DiagnosticKind::WarnShadowed {
                            pattern: pattern.to_string(),
                            earlier: earlier.pattern.to_string(),
                            earlier_line: earlier.line,
                        },
                    ));
                }
            }

            rules.push(Rule {
                index,
                line,
                pattern,
                priority,
                protect,
                kill,
            });
        }

        if !errors.is_empty() {
            errors.sort_by_key(|d| (d.line, d.column));
            return Err(ConfigError::Invalid(errors));
        }
        // Indexes are positions in the file; they stay dense because any
        // skipped (invalid) rule made the whole file an error above.
        Ok(Config {
            path: PathBuf::from(file_name),
            policy,
            default_priority,
            rules,
            warnings,
        })
    }

    /// The first rule (in file order) whose pattern matches `path`.
    pub fn first_match(&self, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.pattern.matches(path))
    }
}

fn check_priority(key: &'static str, v: &Spanned<i64>) -> Result<u32, DiagnosticKind> {
    let value = *v.get_ref();
    match u32::try_from(value) {
        Ok(p) if p <= MAX_PRIORITY => Ok(p),
        _ => Err(DiagnosticKind::PriorityRange { key, value }),
    }
}

/// serde's wording is about Rust types; say what the file should contain.
fn clarify_toml_message(message: &str) -> String {
    let message = message.trim_end();
    if message == "missing field `cgroup`" {
        return "this [[rule]] has no cgroup key; every rule needs cgroup = \"/path\"".to_owned();
    }
    message
        .replace("expected i64", "expected an integer")
        .replace(
            "number too large to fit in target type",
            "integer out of range",
        )
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<Diagnostic> {
        match Config::parse(text, "policies.toml") {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(ConfigError::Invalid(d)) => d,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    /// The single error in `text`, as "line:column: message".
    fn error(text: &str) -> String {
        let d = errors(text);
        assert_eq!(d.len(), 1, "expected one error, got {d:#?}");
        format!("{}:{}: {}", d[0].line, d[0].column, d[0].kind)
    }

    #[test]
    fn full_file() {
        let text = r#"
policy = "largest"
default_priority = 250

[[rule]]
cgroup = "/demo/db"
protect = true

[[rule]]
cgroup = "/demo/batch/**/"
priority = 10
kill = "cgroup"

[[rule]]
cgroup = "/demo/web"
priority = 500
protect = false
"#;
        let c = Config::parse(text, "x.toml").unwrap();
        assert_eq!(c.policy, PolicyName::Largest);
        assert_eq!(c.default_priority, 250);
        assert_eq!(c.rules.len(), 3);
        let r = &c.rules[1];
        assert_eq!((r.index, r.line), (1, 10));
        assert_eq!(r.pattern.as_str(), "/demo/batch/**");
        assert_eq!(
            (r.priority, r.protect, r.kill),
            (Some(10), None, Some(KillMode::Cgroup))
        );
        assert_eq!(c.rules[0].protect, Some(true));
        assert_eq!(c.rules[2].protect, Some(false));
        assert!(c.warnings.is_empty());
        assert_eq!(c.first_match("/demo/batch/j1").map(|r| r.index), Some(1));
        assert_eq!(c.first_match("/demo").map(|r| r.index), None);
    }

    #[test]
    fn defaults() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.policy, PolicyName::Priority);
        assert_eq!(c.default_priority, 100);
        assert!(c.rules.is_empty());
        let c = Config::parse("default_priority = 0\n", "x").unwrap();
        assert_eq!(c.default_priority, 0);
        let c = Config::parse("default_priority = 10000\n", "x").unwrap();
        assert_eq!(c.default_priority, 10000);
        // Inline-table form of the rule list works too.
        let c = Config::parse("rule = [{ cgroup = \"/a\", priority = 1 }]\n", "x").unwrap();
        assert_eq!(c.rules[0].priority, Some(1));
    }

    #[test]
    fn priority_out_of_range() {
        let text = "policy = \"priority\"\n\n[[rule]]\ncgroup = \"/demo/web\"\n\n\n\
                    priority = 20000\n";
        assert_eq!(
            error(text),
            "7:12: priority must be between 0 and 10000, got 20000"
        );
        let d = &errors(text)[0];
        assert_eq!(
            d.to_string(),
            "policies.toml:7:12: priority must be between 0 and 10000, got 20000"
        );
        assert_eq!(
            error("[[rule]]\ncgroup = \"/a\"\npriority = -1\n"),
            "3:12: priority must be between 0 and 10000, got -1"
        );
        assert_eq!(
            error("default_priority = 10001\n"),
            "1:20: default_priority must be between 0 and 10000, got 10001"
        );
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            error("[[rule]]\ncgroup = \"/a\"\npriority = \"high\"\n"),
            "3:12: invalid type: string \"high\", expected an integer"
        );
        assert_eq!(
            error("[[rule]]\ncgroup = \"/a\"\nprotect = \"yes\"\n"),
            "3:11: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            error("[[rule]]\ncgroup = 5\n"),
            "2:10: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            error("[[rule]]\ncgroup = \"/a\"\n  prio = 5\n"),
            "3:3: unknown field `prio`, expected one of `cgroup`, `priority`, `protect`, `kill`"
        );
        assert_eq!(
            error("policy = \"priority\"\npolcy = 1\n"),
            "2:1: unknown field `polcy`, expected one of `policy`, `default_priority`, `rule`"
        );
    }

    #[test]
    fn missing_cgroup() {
        assert_eq!(
            error("[[rule]]\ncgroup = \"/a\"\npriority = 1\n\n[[rule]]\npriority = 5\n"),
            "5:1: this [[rule]] has no cgroup key; every rule needs cgroup = \"/path\""
        );
    }

    #[test]
    fn toml_syntax() {
        let e = error("[[rule]\ncgroup = \"/a\"\n");
        assert!(e.starts_with("1:7: invalid table header"), "{e}");
        let e = error("policy = priority\n");
        assert!(e.starts_with("1:10: "), "{e}");
    }

    #[test]
    fn unknown_policy_and_kill() {
        assert_eq!(
            error("policy = \"oomd\"\n"),
            "1:10: unknown policy \"oomd\"; valid policies: priority, largest, badness, observe"
        );
        assert_eq!(
            error("[[rule]]\ncgroup = \"/a\"\nkill = \"process\"\n"),
            "3:8: kill must be \"task\" (largest task) or \"cgroup\" (every task in the cgroup), \
             got \"process\""
        );
    }

    #[test]
    fn bad_glob() {
        assert_eq!(
            error("[[rule]]\ncgroup = \"demo/db\"\nprotect = true\n"),
            "2:10: cgroup pattern \"demo/db\" must start with \"/\" (it is a path below the \
             cgroup2 mount, e.g. \"/system.slice/foo.service\")"
        );
        let e = error("[[rule]]\ncgroup = \"/demo/batch**\"\npriority = 1\n");
        assert!(
            e.starts_with("2:10: cgroup pattern \"/demo/batch**\": \"**\" must be a whole"),
            "{e}"
        );
        let e = error("[[rule]]\ncgroup = \"/a//b\"\npriority = 1\n");
        assert!(
            e.starts_with("2:10: cgroup pattern \"/a//b\" has an empty path element"),
            "{e}"
        );
        let e = error("[[rule]]\ncgroup = \"\"\npriority = 1\n");
        assert!(e.starts_with("2:10: cgroup pattern is empty"), "{e}");
    }

    #[test]
    fn duplicate_pattern() {
        // "/demo/web/" normalises to "/demo/web": still a duplicate.
        let text = "[[rule]]\ncgroup = \"/demo/web\"\npriority = 1\n\n\
                    [[rule]]\ncgroup = \"/demo/web/\"\npriority = 2\n";
        assert_eq!(
            error(text),
            "6:10: duplicate rule for cgroup \"/demo/web\" (first at line 2); only the first \
             would ever apply, merge the two"
        );
    }

    #[test]
    fn empty_rule() {
        assert_eq!(
            error("[[rule]]\ncgroup = \"/a\"\n\n[[rule]]\ncgroup = \"/b\"\nprotect = true\n"),
            "1:1: rule for \"/a\" sets nothing; give it at least one of priority, protect or kill"
        );
    }

    #[test]
    fn protect_contradictions() {
        assert_eq!(
            error("[[rule]]\ncgroup = \"/db\"\nprotect = true\npriority = 5\n"),
            "3:11: rule for \"/db\" sets protect = true together with priority: a protected \
             cgroup is never chosen as a victim, so priority would never apply; remove \
             protect = true or remove priority"
        );
        let e = error("[[rule]]\ncgroup = \"/db\"\nkill = \"cgroup\"\nprotect = true\n");
        assert!(e.starts_with("4:11: rule for \"/db\" sets protect = true together with kill:"));
        let e =
            error("[[rule]]\ncgroup = \"/db\"\nkill = \"cgroup\"\npriority = 1\nprotect = true\n");
        assert!(e.contains("together with priority and kill"), "{e}");
        // protect = false with other settings is fine: it un-protects a subtree.
        let c = Config::parse(
            "[[rule]]\ncgroup = \"/db\"\nprotect = false\npriority = 1\n",
            "x",
        );
        assert!(c.is_ok());
    }

    #[test]
    fn all_errors_reported_in_order() {
        let text = "default_priority = -5\n\
                    [[rule]]\ncgroup = \"/a\"\npriority = 99999\n\
                    [[rule]]\ncgroup = \"b\"\npriority = 1\n\
                    [[rule]]\ncgroup = \"/a\"\nkill = \"all\"\n";
        let d = errors(text);
        let got: Vec<(usize, usize)> = d.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(got, vec![(1, 20), (4, 12), (6, 10), (9, 10), (10, 8)]);
        assert!(matches!(
            d[0].kind,
            DiagnosticKind::PriorityRange {
                key: "default_priority",
                value: -5
            }
        ));
        assert!(matches!(
            d[1].kind,
            DiagnosticKind::PriorityRange {
                key: "priority",
                value: 99999
            }
        ));
        assert!(matches!(
            d[2].kind,
            DiagnosticKind::Pattern(PatternError::NotAbsolute(_))
        ));
        assert!(matches!(
            d[3].kind,
            DiagnosticKind::DuplicatePattern { first_line: 3, .. }
        ));
        assert!(matches!(d[4].kind, DiagnosticKind::UnknownKill(_)));
        let all = ConfigError::Invalid(d).to_string();
        assert_eq!(all.lines().count(), 5);
        assert!(all.starts_with("policies.toml:1:20: default_priority must be"));
    }

    #[test]
    fn warnings() {
        let text = "[[rule]]\ncgroup = \"/demo/**\"\npriority = 1\n\n\
                    [[rule]]\ncgroup = \"/demo/web\"\npriority = 2\n\n\
                    [[rule]]\ncgroup = \"/sys/fs/cgroup/system.slice\"\npriority = 3\n";
        let c = Config::parse(text, "p.toml").unwrap();
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            vec![
                "p.toml:6:10: warning: rule for \"/demo/web\" never applies: the earlier rule \
                 for \"/demo/**\" (line 2) matches that cgroup first; move it above",
                "p.toml:10:10: warning: cgroup patterns are relative to the cgroup2 mount; did \
                 you mean \"/system.slice\"?",
            ]
        );
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é = 1", 3), (1, 3));
        assert_eq!(line_column("", 0), (1, 1));
        let e = error("# ünïcödé\n[[rule]]\ncgroup = \"/a\"\npriority = 1\nprotect = 2\n");
        assert!(e.starts_with("5:11: "), "{e}");
    }

    #[test]
    fn load_missing_file() {
        let err = Config::load(Path::new("/nonexistent/policies.toml")).unwrap_err();
        assert!(err.is_not_found());
        assert!(err
            .to_string()
            .starts_with("cannot read config file /nonexistent/policies.toml:"));
    }

    #[test]
    fn repository_default_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.policy, PolicyName::Priority);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // The demo rules come first and say what the demo relies on.
        let demo: Vec<_> = c.rules.iter().take(3).map(|r| r.pattern.as_str()).collect();
        assert_eq!(demo, ["/demo/db", "/demo/web", "/demo/batch/**"]);
        assert_eq!(c.rules[0].protect, Some(true));
        assert_eq!(c.rules[1].priority, Some(500));
        assert_eq!(
            (c.rules[2].priority, c.rules[2].kill),
            (Some(10), Some(KillMode::Cgroup))
        );
    }
}
