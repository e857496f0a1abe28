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
use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::bpf::skel::types::policyd_kill;
use crate::matcher::{CgroupPattern, PatternError};
use crate::policy::{PolicyName, UnknownPolicy};
use crate::pressure_rules::{self, PressureError, PressureRule, Problem, RawPressure};
use crate::swap_limit::{self, RawSwap, SwapError, SwapLimit};

/// Where `policyd` looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/policyd/policies.toml";
/// Highest allowed priority (lowest is 0).
pub const MAX_PRIORITY: u32 = 10_000;
/// `default_priority` when the file does not set it.
pub const DEFAULT_PRIORITY: u32 = 100;
/// Largest configuration file policyd reads (1 MiB); real ones are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What a configuration file's owner and mode must be, beyond being a
/// regular file of at most [`MAX_CONFIG_BYTES`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ownership {
    /// Any owner and mode: `check` and `explain` only read the file, and
    /// anyone may run them.
    #[default]
    Any,
    /// Owned by root and not writable by group or others: `load` (root)
    /// lets the file decide what dies, so only root may be able to change it.
    Root,
}

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

    /// `enum policyd_kill` (bpf/policies/policyd.h, through the skeleton):
    /// the number a rule's `kill` holds for the BPF handler.
    pub const fn abi(self) -> u8 {
        let kill = match self {
            KillMode::Task => policyd_kill::POLICYD_KILL_TASK,
            KillMode::Cgroup => policyd_kill::POLICYD_KILL_CGROUP,
        };
        kill.0 as u8
    }

    /// The kill mode an `enum policyd_kill` number stands for.
    pub fn from_abi(v: u8) -> Option<KillMode> {
        [KillMode::Task, KillMode::Cgroup]
            .into_iter()
            .find(|k| k.abi() == v)
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
    /// Set `memory.oom.group` on the cgroups this rule matches (not inherited):
    /// the kernel then kills all of such a cgroup whenever it kills a task
    /// below it, for policyd or on its own (see [`crate::oom_group`]).
    pub oom_group: bool,
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
    /// `[[pressure]]` tables, in file order: the first matching one applies.
    pub pressure: Vec<PressureRule>,
    /// The `[swap]` table, if any.
    pub swap: Option<SwapLimit>,
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
            pressure: Vec::new(),
            swap: None,
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
    #[error("the file is not UTF-8 text (byte 0x{byte:02x} here); TOML files are UTF-8")]
    NotUtf8 { byte: u8 },
    #[error(transparent)]
    Pressure(#[from] PressureError),
    #[error(transparent)]
    Swap(#[from] SwapError),
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
    #[error(
        "config file {} is {kind}, not a regular file; policyd reads its configuration only \
         from a regular file",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "config file {} is {size}, over the limit of {MAX_CONFIG_BYTES} bytes (1 MiB); a policyd \
         configuration is a few KiB: is this the right file?",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        /// "N bytes", or "at least N bytes" when it grew while being read.
        size: String,
    },
    #[error(
        "config file {} {problem}: whoever can write it decides what policyd kills; fix it with \
         `chown root:root {} && chmod go-w {}` (or pass --insecure-config, for tests and \
         development only)",
        path.display(), path.display(), path.display()
    )]
    Insecure { path: PathBuf, problem: String },
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
            _ => &[],
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
    #[serde(default)]
    pressure: Vec<Spanned<RawPressure>>,
    swap: Option<Spanned<RawSwap>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    cgroup: Spanned<String>,
    priority: Option<Spanned<i64>>,
    protect: Option<Spanned<bool>>,
    kill: Option<Spanned<String>>,
    oom_group: Option<Spanned<bool>>,
}

/// Read and validate a configuration (see [`Config::load_checked`]),
/// logging its warnings, with a hint when the file is missing: what every
/// command that acts on a config does.
pub fn load_logged(path: &Path, ownership: Ownership) -> anyhow::Result<Config> {
    match Config::load_checked(path, ownership) {
        Ok(config) => {
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            Ok(config)
        }
        Err(e) if e.is_not_found() => Err(anyhow::anyhow!(
            "config file {} not found; pass --config FILE to use another one \
             (policies.toml in the policyd sources documents every key)",
            path.display()
        )),
        Err(e) => Err(e.into()),
    }
}

impl Config {
    /// Read and validate `path`, with no requirement on its owner (what
    /// `check` and `explain` do).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_checked(path, Ownership::Any)
    }

    /// Read and validate `path`: a regular file (never a FIFO, which could
    /// block the daemon, nor a device) of at most [`MAX_CONFIG_BYTES`],
    /// whose owner and mode `ownership` accepts. The one place policyd
    /// reads a configuration file.
    pub fn load_checked(path: &Path, ownership: Ownership) -> Result<Config, ConfigError> {
        let bytes = read_config_file(path, ownership)?;
        let mut config = Config::parse_bytes(&bytes, &path.display().to_string())?;
        config.path = path.to_owned();
        Ok(config)
    }

    /// Validate `bytes`, which must be UTF-8; `file_name` is what messages
    /// call the file.
    pub fn parse_bytes(bytes: &[u8], file_name: &str) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::parse(text, file_name),
            Err(e) => {
                let valid = &bytes[..e.valid_up_to()];
                // Everything before the bad byte is valid UTF-8.
                let prefix = std::str::from_utf8(valid).unwrap_or_default();
                let (line, column) = line_column(prefix, prefix.len());
                Err(ConfigError::Invalid(vec![Diagnostic {
                    file: file_name.to_owned(),
                    line,
                    column,
                    kind: DiagnosticKind::NotUtf8 {
                        byte: bytes[e.valid_up_to()],
                    },
                }]))
            }
        }
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

            let oom_group = r.oom_group.as_ref().is_some_and(|g| *g.get_ref());
            if r.priority.is_none()
                && r.protect.is_none()
                && r.kill.is_none()
                && r.oom_group.is_none()
            {
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
                oom_group,
            });
        }

        let pressure = pressure_rules::validate(
            &raw.pressure,
            &|offset| line_column(text, offset).0,
            &mut |span, problem| {
                errors.push(at(
                    span,
                    match problem {
                        Problem::Pattern(e) => e.into(),
                        Problem::Pressure(e) => DiagnosticKind::Pressure(e),
                    },
                ))
            },
        );

        let swap = raw.swap.as_ref().and_then(|s| {
            swap_limit::validate(
                s.get_ref(),
                line_column(text, s.span().start).0,
                &mut |span, problem| {
                    errors.push(at(
                        span,
                        match problem {
                            swap_limit::Problem::Pattern(e) => e.into(),
                            swap_limit::Problem::Swap(e) => DiagnosticKind::Swap(e),
                        },
                    ))
                },
            )
        });

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
            pressure,
            swap,
            warnings,
        })
    }

    /// The first rule (in file order) whose pattern matches `path`.
    pub fn first_match(&self, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.pattern.matches(path))
    }
}

/// The contents of the configuration file at `path`, checked as
/// [`Config::load_checked`] says.
fn read_config_file(path: &Path, ownership: Ownership) -> Result<Vec<u8>, ConfigError> {
    let read_error = |error| ConfigError::Read {
        path: path.to_owned(),
        error,
    };
    // Look before opening: opening a device can have effects of its own.
    check_file_type(path, &std::fs::metadata(path).map_err(read_error)?)?;
    // O_NONBLOCK: should a FIFO replace the file after the look above,
    // opening and reading it still return at once.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(read_error)?;
    // What was opened is what counts.
    let meta = file.metadata().map_err(read_error)?;
    check_file_type(path, &meta)?;
    let too_large = |size: String| ConfigError::TooLarge {
        path: path.to_owned(),
        size,
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large(format!("{} bytes", meta.len())));
    }
    if ownership == Ownership::Root {
        check_ownership(path, &meta)?;
    }
    // One byte more than the limit tells a file that grew past it.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(format!("at least {} bytes", bytes.len())));
    }
    Ok(bytes)
}

fn check_file_type(path: &Path, meta: &Metadata) -> Result<(), ConfigError> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    };
    Err(ConfigError::NotRegular {
        path: path.to_owned(),
        kind,
    })
}

/// Owned by root, not writable by group or others.
fn check_ownership(path: &Path, meta: &Metadata) -> Result<(), ConfigError> {
    let mode = meta.mode() & 0o7777;
    let problem = if meta.uid() != 0 {
        format!("is owned by uid {}, not root", meta.uid())
    } else if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        format!("is writable by {who} (mode {mode:04o})")
    } else {
        return Ok(());
    };
    Err(ConfigError::Insecure {
        path: path.to_owned(),
        problem,
    })
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
    let mut offset = offset.min(text.len());
    // Inside a character: count from its start.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

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
            "3:3: unknown field `prio`, expected one of `cgroup`, `priority`, `protect`, `kill`, \
             `oom_group`"
        );
        assert_eq!(
            error("policy = \"priority\"\npolcy = 1\n"),
            "2:1: unknown field `polcy`, expected one of `policy`, `default_priority`, `rule`, `pressure`, `swap`"
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

    /// A file in a fresh directory with `bytes` and permission bits `mode`.
    fn file_with(bytes: &[u8], mode: u32) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.toml");
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::load(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "config file {} is a directory, not a regular file; policyd reads its \
                 configuration only from a regular file",
                dir.path().display()
            )
        );
        // A FIFO with no writer: opening it for reading would block, so it
        // is refused before it is opened.
        let fifo = dir.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        for ownership in [Ownership::Any, Ownership::Root] {
            let err = Config::load_checked(&fifo, ownership).unwrap_err();
            assert!(matches!(
                err,
                ConfigError::NotRegular {
                    kind: "a FIFO (named pipe)",
                    ..
                }
            ));
        }
        let err = Config::load(Path::new("/dev/null")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/dev/null is a character device, not a regular file"),
            "{err}"
        );
        assert!(!err.is_not_found());
    }

    #[test]
    fn refuses_a_file_over_one_mebibyte() {
        // Exactly the limit is fine: a valid file of comments.
        let line = format!("#{}\n", "x".repeat(1022));
        let text = line.repeat((MAX_CONFIG_BYTES / 1024) as usize);
        assert_eq!(text.len() as u64, MAX_CONFIG_BYTES);
        let (_dir, path) = file_with(text.as_bytes(), 0o644);
        assert!(Config::load(&path).unwrap().rules.is_empty());

        let (_dir, path) = file_with(format!("{text}\n").as_bytes(), 0o644);
        let err = Config::load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "config file {} is 1048577 bytes, over the limit of 1048576 bytes (1 MiB); a \
                 policyd configuration is a few KiB: is this the right file?",
                path.display()
            )
        );
    }

    #[test]
    fn root_ownership_is_enforced_only_when_asked() {
        let text = b"[[rule]]\ncgroup = \"/a\"\npriority = 1\n";
        let insecure = |path: &Path| match Config::load_checked(path, Ownership::Root) {
            Err(e @ ConfigError::Insecure { .. }) => e.to_string(),
            other => panic!("expected an ownership error, got {other:?}"),
        };
        for mode in [0o644, 0o664, 0o646, 0o666] {
            let (_dir, path) = file_with(text, mode);
            // check and explain read anything readable.
            assert_eq!(Config::load(&path).unwrap().rules.len(), 1);
            if !is_root() {
                let e = insecure(&path);
                let uid = nix::unistd::geteuid();
                assert!(
                    e.contains(&format!("is owned by uid {uid}, not root")),
                    "{e}"
                );
                continue;
            }
            if mode == 0o644 {
                assert!(Config::load_checked(&path, Ownership::Root).is_ok());
                // The same file owned by someone else.
                nix::unistd::chown(&path, Some(1000.into()), None).unwrap();
                let e = insecure(&path);
                assert!(e.contains("is owned by uid 1000, not root"), "{e}");
                continue;
            }
            let who = match mode {
                0o664 => "its group (mode 0664)",
                0o646 => "others (mode 0646)",
                _ => "its group and others (mode 0666)",
            };
            let p = path.display();
            assert_eq!(
                insecure(&path),
                format!(
                    "config file {p} is writable by {who}: whoever can write it decides what \
                     policyd kills; fix it with `chown root:root {p} && chmod go-w {p}` (or \
                     pass --insecure-config, for tests and development only)"
                )
            );
        }
    }

    #[test]
    fn reports_bytes_that_are_not_utf8_where_they_are() {
        let err = Config::parse_bytes(b"policy = \"priority\"\n# caf\xc3\xa9 \xff\n", "p.toml")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:2:8: the file is not UTF-8 text (byte 0xff here); TOML files are UTF-8"
        );
        let (_dir, path) = file_with(b"\xfe", 0o644);
        let err = Config::load(&path).unwrap_err();
        assert_eq!(err.diagnostics().len(), 1);
        assert_eq!(
            (err.diagnostics()[0].line, err.diagnostics()[0].column),
            (1, 1)
        );
    }

    #[test]
    fn line_column_inside_a_character_counts_from_its_start() {
        assert_eq!(line_column("é", 1), (1, 1));
        assert_eq!(line_column("aé", 2), (1, 2));
    }

    /// Every diagnostic of parsing `bytes` points into the text: a line
    /// that exists, a column at most one past that line's end.
    fn diagnostics_point_into(bytes: &[u8]) -> Result<(), TestCaseError> {
        let diagnostics = match Config::parse_bytes(bytes, "f.toml") {
            Ok(c) => c.warnings,
            Err(ConfigError::Invalid(d)) => {
                prop_assert!(!d.is_empty());
                d
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let text = String::from_utf8_lossy(bytes);
        // Lines as line_column counts them: split at '\n' only.
        let lines: Vec<&str> = text.split('\n').collect();
        for d in diagnostics {
            prop_assert!(d.line >= 1 && d.line <= lines.len(), "{d} in {text:?}");
            let width = lines[d.line - 1].chars().count();
            prop_assert!(d.column >= 1 && d.column <= width + 1, "{d} in {text:?}");
            let place = format!("f.toml:{}:{}: ", d.line, d.column);
            prop_assert!(d.to_string().starts_with(&place));
        }
        Ok(())
    }

    /// Pieces of plausible and broken configuration.
    const FRAGMENTS: &[&str] = &[
        "[[rule]]",
        "[rule]",
        "[[rule]",
        "cgroup = \"/a/**\"",
        "cgroup = \"/demo/*/x\"",
        "cgroup = \"\"",
        "cgroup = \"a//b\"",
        "cgroup = 5",
        "cgroup = \"/a**\"",
        "priority = 10",
        "priority = -1",
        "priority = 99999999999999999999",
        "protect = true",
        "protect = \"yes\"",
        "kill = \"cgroup\"",
        "kill = \"all\"",
        "policy = \"largest\"",
        "policy = \"nope\"",
        "default_priority = 7",
        "default_priority = 1e3",
        "unknown = 1",
        "rule = [{ cgroup = \"/x\", priority = 1 }]",
        "\"",
        "'''",
        "\"\"\"",
        "[",
        "]",
        "=",
        "{",
        "}",
        ",",
        "é",
        "ünï",
        "\t",
        "# comment",
        "\\",
        "\u{0}",
        "\r",
        "🦀",
    ];

    proptest! {
        /// Whatever the bytes, parsing returns (never panics), and every
        /// error and warning names a line and column inside the text.
        #[test]
        fn any_bytes_parse_without_panic_to_positioned_diagnostics(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            diagnostics_point_into(&bytes)?;
        }

        /// The same for text made of configuration pieces, which gets far
        /// past the TOML syntax check.
        #[test]
        fn toml_like_text_parses_to_positioned_diagnostics(
            pieces in proptest::collection::vec(
                (
                    proptest::sample::select(FRAGMENTS),
                    proptest::sample::select(&["\n", "\n", " ", "", "\r\n", "\n\n"][..]),
                ),
                0..24,
            ),
        ) {
            let text: String = pieces.iter().flat_map(|(f, sep)| [*f, *sep]).collect();
            diagnostics_point_into(text.as_bytes())?;
        }
    }

    #[test]
    fn repository_default_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.policy, PolicyName::Priority);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // A real machine's default: nothing of the demo's layout.
        assert!(
            c.rules
                .iter()
                .all(|r| !r.pattern.as_str().starts_with("/demo")),
            "demo rules in the shipped default"
        );
        let rule = |p: &str| c.rules.iter().find(|r| r.pattern.as_str() == p).unwrap();
        assert_eq!(
            rule("/system.slice/systemd-journald.service").protect,
            Some(true)
        );
        assert_eq!(rule("/system.slice/**").priority, Some(1000));
        assert_eq!(rule("/machine.slice/**").kill, Some(KillMode::Cgroup));
    }

    #[test]
    fn demo_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests/demo.toml");
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
