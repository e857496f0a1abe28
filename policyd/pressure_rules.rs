//! `[[pressure]]` tables of the configuration: when memory pressure on a
//! cgroup declares an OOM there, before any allocation fails.
//!
//! ```toml
//! [[pressure]]
//! cgroup = "/batch.slice"    # pattern, as for [[rule]]
//! stall = "some"             # some | full (default full, as systemd-oomd)
//! limit = "40%"              # share of the duration spent stalled
//! duration = "10s"           # how long it must hold (500ms..=1h)
//! ```
//!
//! The limit and duration mean what systemd-oomd's
//! `ManagedOOMMemoryPressureLimit=` and `ManagedOOMMemoryPressureDurationSec=`
//! mean; [`crate::pressure`] turns them into PSI triggers. policies.toml
//! documents them for users.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::matcher::{CgroupPattern, PatternError};

/// Longest window the kernel accepts for a PSI trigger.
pub const MAX_WINDOW: Duration = Duration::from_secs(10);
/// Shortest window the kernel accepts for a PSI trigger, and so the shortest
/// duration.
pub const MIN_DURATION: Duration = Duration::from_millis(500);
/// Longest duration: a limit that must hold for longer than an hour is
/// better left to the kernel's OOM killer.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Which line of `memory.pressure`: some task stalled, or all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Stall {
    Some,
    /// systemd-oomd's choice.
    #[default]
    Full,
}

impl Stall {
    pub const fn as_str(self) -> &'static str {
        match self {
            Stall::Some => "some",
            Stall::Full => "full",
        }
    }
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A share of time, in hundredths of a percent (systemd's precision):
/// 4000 = 40%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Percent(u32);

impl Percent {
    pub const fn from_basis_points(bp: u32) -> Percent {
        Percent(bp)
    }

    pub const fn basis_points(self) -> u32 {
        self.0
    }

    /// `share` of `window`, in microseconds, at least 1.
    pub fn of(self, window: Duration) -> u64 {
        (window.as_micros() as u64 * u64::from(self.0) / 10_000).max(1)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}%")
        } else if frac % 10 == 0 {
            write!(f, "{whole}.{}%", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

/// One validated `[[pressure]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PressureRule {
    /// Position among the file's pressure tables (file order = match order).
    pub index: usize,
    /// Line of its `cgroup = ...` key, for messages.
    pub line: usize,
    pub pattern: CgroupPattern,
    pub stall: Stall,
    pub limit: Percent,
    pub duration: Duration,
}

impl PressureRule {
    /// The PSI trigger's window: the duration, or for a duration longer than
    /// the kernel allows ([`MAX_WINDOW`]) an equal part of it, of which
    /// [`PressureRule::windows`] in a row make the duration.
    pub fn window(&self) -> Duration {
        self.duration / self.windows()
    }

    /// Consecutive trigger windows over the limit that make the duration.
    pub fn windows(&self) -> u32 {
        let n = self.duration.as_micros().div_ceil(MAX_WINDOW.as_micros());
        n.max(1) as u32
    }

    /// What is written to `memory.pressure` to arm the trigger:
    /// `<some|full> <stall us> <window us>`.
    pub fn trigger_spec(&self) -> String {
        let window = self.window();
        format!(
            "{} {} {}",
            self.stall,
            self.limit.of(window),
            window.as_micros()
        )
    }

    /// How decisions name it: "memory.pressure some 40%/10s".
    pub fn describe(&self) -> String {
        format!(
            "memory.pressure {} {}/{}",
            self.stall,
            self.limit,
            humantime::format_duration(self.duration)
        )
    }
}

/// What is wrong with a `[[pressure]]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PressureError {
    #[error("stall must be \"some\" (some task stalled) or \"full\" (all of them), got \"{0}\"")]
    UnknownStall(String),
    #[error(
        "limit must be a percentage above 0% and at most 100% with up to two decimals, like \
         \"40%\" or \"12.5%\", got \"{0}\""
    )]
    Limit(String),
    #[error(
        "duration must be between 500ms and 1h (a number and a unit: \"500ms\", \"10s\", \
         \"2min\"), got \"{0}\""
    )]
    Duration(String),
    #[error(
        "duplicate [[pressure]] for cgroup \"{pattern}\" (first at line {first_line}); only the \
         first would ever apply, merge the two"
    )]
    Duplicate { pattern: String, first_line: usize },
}

/// A `[[pressure]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPressure {
    cgroup: Spanned<String>,
    stall: Option<Spanned<String>>,
    limit: Spanned<String>,
    duration: Spanned<String>,
}

/// What is wrong with a `[[pressure]]` table; the configuration places it
/// in the file.
#[derive(Debug)]
pub(crate) enum Problem {
    Pattern(PatternError),
    Pressure(PressureError),
}

/// Validate the `[[pressure]]` tables; `line_of` turns a byte offset of the
/// file into its line. Problems go to `report`, at their byte range; the
/// valid tables are returned in file order.
pub(crate) fn validate(
    raw: &[Spanned<RawPressure>],
    line_of: &dyn Fn(usize) -> usize,
    report: &mut dyn FnMut(std::ops::Range<usize>, Problem),
) -> Vec<PressureRule> {
    let mut out: Vec<PressureRule> = Vec::with_capacity(raw.len());
    for (index, spanned) in raw.iter().enumerate() {
        let r = spanned.get_ref();
        let line = line_of(r.cgroup.span().start);
        let pattern = match CgroupPattern::parse(r.cgroup.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                report(r.cgroup.span(), Problem::Pattern(e));
                None
            }
        };
        let stall = match r.stall.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None => Some(Stall::default()),
            Some(("some", _)) => Some(Stall::Some),
            Some(("full", _)) => Some(Stall::Full),
            Some((other, span)) => {
                report(
                    span,
                    Problem::Pressure(PressureError::UnknownStall(other.to_owned())),
                );
                None
            }
        };
        let limit = parse_percent(r.limit.get_ref()).or_else(|| {
            report(
                r.limit.span(),
                Problem::Pressure(PressureError::Limit(r.limit.get_ref().clone())),
            );
            None
        });
        let duration = parse_duration(r.duration.get_ref()).or_else(|| {
            report(
                r.duration.span(),
                Problem::Pressure(PressureError::Duration(r.duration.get_ref().clone())),
            );
            None
        });
        if let Some(p) = &pattern {
            if let Some(first) = out.iter().find(|e| e.pattern.as_str() == p.as_str()) {
                report(
                    r.cgroup.span(),
                    Problem::Pressure(PressureError::Duplicate {
                        pattern: p.to_string(),
                        first_line: first.line,
                    }),
                );
            }
        }
        if let (Some(pattern), Some(stall), Some(limit), Some(duration)) =
            (pattern, stall, limit, duration)
        {
            out.push(PressureRule {
                index,
                line,
                pattern,
                stall,
                limit,
                duration,
            });
        }
    }
    out
}

/// "40%", "12.5%", "0.25%": above 0, at most 100, at most two decimals.
pub(crate) fn parse_percent(s: &str) -> Option<Percent> {
    let num = s.trim().strip_suffix('%')?.trim_end();
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty()
        || frac.len() > 2
        || !(whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let frac: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().ok()?
    };
    let bp = whole.checked_mul(100)?.checked_add(frac)?;
    (1..=10_000).contains(&bp).then_some(Percent(bp))
}

fn parse_duration(s: &str) -> Option<Duration> {
    let d = humantime::parse_duration(s.trim()).ok()?;
    (MIN_DURATION..=MAX_DURATION).contains(&d).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn rules(text: &str) -> Vec<PressureRule> {
        Config::parse(text, "p.toml").unwrap().pressure
    }

    fn error(text: &str) -> String {
        match Config::parse(text, "p.toml") {
            Err(ConfigError::Invalid(d)) => {
                assert_eq!(d.len(), 1, "expected one error, got {d:#?}");
                d[0].to_string()
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_table_becomes_a_trigger() {
        let r = rules(
            "[[pressure]]\ncgroup = \"/batch.slice\"\nstall = \"some\"\nlimit = \"40%\"\n\
             duration = \"10s\"\n",
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].trigger_spec(), "some 4000000 10000000");
        assert_eq!(r[0].windows(), 1);
        assert_eq!(r[0].describe(), "memory.pressure some 40%/10s");
        assert!(r[0].pattern.matches("/batch.slice"));
    }

    #[test]
    fn full_is_the_default_stall_as_in_systemd_oomd() {
        let r = rules("[[pressure]]\ncgroup = \"/\"\nlimit = \"12.5%\"\nduration = \"2s\"\n");
        assert_eq!(r[0].stall, Stall::Full);
        assert_eq!(r[0].trigger_spec(), "full 250000 2000000");
        assert_eq!(r[0].describe(), "memory.pressure full 12.5%/2s");
    }

    #[test]
    fn a_duration_beyond_the_kernels_window_is_split_into_equal_windows() {
        let r = rules("[[pressure]]\ncgroup = \"/a\"\nlimit = \"60%\"\nduration = \"30s\"\n");
        assert_eq!(
            (r[0].windows(), r[0].window()),
            (3, Duration::from_secs(10))
        );
        assert_eq!(r[0].trigger_spec(), "full 6000000 10000000");
        let r = rules("[[pressure]]\ncgroup = \"/a\"\nlimit = \"60%\"\nduration = \"25s\"\n");
        assert_eq!(
            (r[0].windows(), r[0].window()),
            (3, Duration::from_nanos(8_333_333_333))
        );
        // At the kernel's limit exactly: one window.
        let r = rules("[[pressure]]\ncgroup = \"/a\"\nlimit = \"60%\"\nduration = \"10s\"\n");
        assert_eq!(r[0].windows(), 1);
    }

    #[test]
    fn the_smallest_limit_still_asks_for_a_stall() {
        let r = rules("[[pressure]]\ncgroup = \"/a\"\nlimit = \"0.01%\"\nduration = \"500ms\"\n");
        assert_eq!(r[0].trigger_spec(), "full 50 500000");
        assert_eq!(r[0].describe(), "memory.pressure full 0.01%/500ms");
    }

    #[test]
    fn bad_values_are_placed_and_explained() {
        let head = "[[pressure]]\ncgroup = \"/a\"\n";
        assert_eq!(
            error(&format!("{head}limit = \"40\"\nduration = \"10s\"\n")),
            "p.toml:3:9: limit must be a percentage above 0% and at most 100% with up to two \
             decimals, like \"40%\" or \"12.5%\", got \"40\""
        );
        for limit in ["0%", "100.01%", "101%", "-5%", "1.234%", "%", "4 0%"] {
            assert!(
                error(&format!("{head}limit = \"{limit}\"\nduration = \"10s\"\n"))
                    .starts_with("p.toml:3:9: limit must be"),
                "{limit}"
            );
        }
        assert_eq!(
            error(&format!("{head}limit = \"40%\"\nduration = \"100ms\"\n")),
            "p.toml:4:12: duration must be between 500ms and 1h (a number and a unit: \
             \"500ms\", \"10s\", \"2min\"), got \"100ms\""
        );
        assert!(
            error(&format!("{head}limit = \"40%\"\nduration = \"2h\"\n"))
                .starts_with("p.toml:4:12: duration must be")
        );
        assert!(
            error(&format!("{head}limit = \"40%\"\nduration = \"10\"\n"))
                .starts_with("p.toml:4:12: duration must be")
        );
        assert_eq!(
            error(&format!(
                "{head}stall = \"partial\"\nlimit = \"40%\"\nduration = \"10s\"\n"
            )),
            "p.toml:3:9: stall must be \"some\" (some task stalled) or \"full\" (all of them), \
             got \"partial\""
        );
        assert!(error("[[pressure]]\ncgroup = \"/a\"\nduration = \"10s\"\n")
            .contains("missing field `limit`"));
        assert!(error(&format!(
            "{head}limit = \"40%\"\nduration = \"10s\"\nswap = true\n"
        ))
        .contains("unknown field `swap`"));
    }

    #[test]
    fn every_problem_is_reported_and_duplicates_are_errors() {
        let text = "[[pressure]]\ncgroup = \"/a\"\nlimit = \"40%\"\nduration = \"10s\"\n\
                    [[pressure]]\ncgroup = \"/a\"\nlimit = \"50%\"\nduration = \"1s\"\n\
                    [[pressure]]\ncgroup = \"/b/***\"\nlimit = \"x\"\nduration = \"1s\"\n";
        let Err(ConfigError::Invalid(d)) = Config::parse(text, "p.toml") else {
            panic!("expected errors");
        };
        let lines: Vec<String> = d
            .iter()
            .map(|d| format!("{}:{}", d.line, d.column))
            .collect();
        assert_eq!(lines, ["6:10", "10:10", "11:9"], "{d:#?}");
        assert!(d[0]
            .to_string()
            .contains("duplicate [[pressure]] for cgroup \"/a\" (first at line 2)"));
    }
}
