//! The `[swap]` table: a swap-use limit, as systemd-oomd's
//! `ManagedOOMSwap=kill` with oomd.conf's `SwapUsedLimit=`.
//!
//! ```toml
//! [swap]
//! limit = "90%"     # swap and memory used (default 90%, as systemd-oomd)
//! cgroup = "/"      # the declared OOM's scope (default "/", system-wide)
//! ```
//!
//! The limit holds when both swap and memory are used over it, the test
//! systemd-oomd makes (oomd_mem_available_below() and oomd_swap_free_below()
//! in its src/oom/oomd-util.c): swap that is full of cold pages while memory
//! is plentiful is no reason to kill. [`crate::pressure`] checks it whenever
//! the system stalls on memory; policies.toml documents it for users.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use toml::Spanned;

use crate::matcher::{CgroupPattern, PatternError};
use crate::pressure_rules::{parse_percent, Percent};

/// systemd-oomd's default `SwapUsedLimit=`.
pub const DEFAULT_LIMIT: Percent = Percent::from_basis_points(9000);

/// The validated `[swap]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapLimit {
    /// Line of the `[swap]` header, for messages.
    pub line: usize,
    pub limit: Percent,
    /// The cgroup whose OOM is declared; "/" is system-wide.
    pub cgroup: String,
}

/// What is wrong with the `[swap]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    #[error(
        "limit must be a percentage above 0% and below 100% with up to two decimals, like \
         \"90%\" (at 100% swap free could never be under 0%), got \"{0}\""
    )]
    Limit(String),
    #[error(
        "the [swap] cgroup is the one cgroup whose OOM is declared, not a pattern: write a \
         path without \"*\", like \"/\" or \"/user.slice\", got \"{0}\""
    )]
    Pattern(String),
}

/// The `[swap]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSwap {
    limit: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
}

/// What is wrong with the table; the configuration places it in the file.
#[derive(Debug)]
pub(crate) enum Problem {
    Pattern(PatternError),
    Swap(SwapError),
}

/// Validate the `[swap]` table found at byte `at`; problems go to `report`
/// at their byte range.
pub(crate) fn validate(
    raw: &RawSwap,
    line: usize,
    report: &mut dyn FnMut(std::ops::Range<usize>, Problem),
) -> Option<SwapLimit> {
    let limit = match &raw.limit {
        None => Some(DEFAULT_LIMIT),
        Some(s) => parse_percent(s.get_ref())
            .filter(|p| p.basis_points() < 10_000)
            .or_else(|| {
                report(
                    s.span(),
                    Problem::Swap(SwapError::Limit(s.get_ref().clone())),
                );
                None
            }),
    };
    let cgroup = match &raw.cgroup {
        None => Some("/".to_owned()),
        Some(s) => match CgroupPattern::parse(s.get_ref()) {
            Err(e) => {
                report(s.span(), Problem::Pattern(e));
                None
            }
            Ok(p) if p.as_str().contains('*') => {
                report(
                    s.span(),
                    Problem::Swap(SwapError::Pattern(s.get_ref().clone())),
                );
                None
            }
            Ok(p) => Some(p.as_str().to_owned()),
        },
    };
    Some(SwapLimit {
        line,
        limit: limit?,
        cgroup: cgroup?,
    })
}

/// The lines of /proc/meminfo the limit reads, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub mem_total: u64,
    pub mem_available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl MemInfo {
    pub fn parse(text: &str) -> Result<MemInfo, String> {
        let field = |name: &str| -> Result<u64, String> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
                .ok_or_else(|| format!("no \"{name}: N kB\" line"))
        };
        Ok(MemInfo {
            mem_total: field("MemTotal")?,
            mem_available: field("MemAvailable")?,
            swap_total: field("SwapTotal")?,
            swap_free: field("SwapFree")?,
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<MemInfo> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        MemInfo::parse(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("parsing {}", path.display()))
    }
}

/// `used` of `total` in hundredths of a percent; 0 of nothing.
fn used_bp(free: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    total.saturating_sub(free).saturating_mul(10_000) / total
}

impl SwapLimit {
    /// Whether swap and memory are both used over the limit: swap free and
    /// MemAvailable both under (100% - limit) of their totals. No swap: never.
    pub fn holds(&self, m: &MemInfo) -> bool {
        let room = u64::from(10_000 - self.limit.basis_points());
        let below = |free: u64, total: u64| free.saturating_mul(10_000) < total * room;
        m.swap_total > 0 && below(m.swap_free, m.swap_total) && below(m.mem_available, m.mem_total)
    }

    /// How the configuration names it: "swap and memory used over 90%".
    pub fn describe(&self) -> String {
        format!("swap and memory used over {}", self.limit)
    }

    /// What was measured, for the decision line's trigger:
    /// "swap 93.1% of 64MiB used, memory 91.2% used, limit 90%".
    pub fn measured(&self, m: &MemInfo) -> String {
        let pct = |bp: u64| {
            let mut s = format!("{}", bp / 100);
            if bp % 100 != 0 {
                let _ = write!(s, ".{}", (bp % 100) / 10);
            }
            s
        };
        format!(
            "swap {}% of {}MiB used, memory {}% used, limit {}",
            pct(used_bp(m.swap_free, m.swap_total)),
            m.swap_total / 1024,
            pct(used_bp(m.mem_available, m.mem_total)),
            self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn swap(text: &str) -> Option<SwapLimit> {
        Config::parse(text, "p.toml").unwrap().swap
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

    fn mem(total: u64, available: u64, swap_total: u64, swap_free: u64) -> MemInfo {
        MemInfo {
            mem_total: total,
            mem_available: available,
            swap_total,
            swap_free,
        }
    }

    #[test]
    fn an_empty_table_is_systemd_oomds_default() {
        let s = swap("[swap]\n").expect("a [swap] table");
        assert_eq!(
            (s.limit, s.cgroup.as_str(), s.line),
            (DEFAULT_LIMIT, "/", 1)
        );
        assert_eq!(s.describe(), "swap and memory used over 90%");
        assert_eq!(swap("policy = \"priority\"\n"), None);
    }

    #[test]
    fn limit_and_scope_as_written() {
        let s =
            swap("policy = \"priority\"\n\n[swap]\nlimit = \"62.5%\"\ncgroup = \"/user.slice/\"\n")
                .unwrap();
        assert_eq!(s.limit.to_string(), "62.5%");
        assert_eq!((s.cgroup.as_str(), s.line), ("/user.slice", 3));
    }

    #[test]
    fn bad_values_are_placed_and_explained() {
        assert_eq!(
            error("[swap]\nlimit = \"100%\"\n"),
            "p.toml:2:9: limit must be a percentage above 0% and below 100% with up to two \
             decimals, like \"90%\" (at 100% swap free could never be under 0%), got \"100%\""
        );
        for limit in ["0%", "90", "-1%", "90.123%"] {
            assert!(
                error(&format!("[swap]\nlimit = \"{limit}\"\n")).starts_with("p.toml:2:9: limit"),
                "{limit}"
            );
        }
        assert_eq!(
            error("[swap]\ncgroup = \"/user.slice/*\"\n"),
            "p.toml:2:10: the [swap] cgroup is the one cgroup whose OOM is declared, not a \
             pattern: write a path without \"*\", like \"/\" or \"/user.slice\", got \
             \"/user.slice/*\""
        );
        assert!(error("[swap]\ncgroup = \"user.slice\"\n").starts_with("p.toml:2:10: "));
        assert!(error("[swap]\nlimit = \"90%\"\nduration = \"1s\"\n")
            .contains("unknown field `duration`"));
        assert!(error("[[swap]]\nlimit = \"90%\"\n").starts_with("p.toml:1:1: "));
    }

    #[test]
    fn holds_only_when_swap_and_memory_are_both_over_the_limit() {
        let s = swap("[swap]\nlimit = \"90%\"\n").unwrap();
        // 1 GiB RAM, 100 MiB swap (KiB).
        let (ram, sw) = (1 << 20, 100 << 10);
        assert!(
            s.holds(&mem(ram, ram / 20, sw, sw / 20)),
            "95% and 95% used"
        );
        assert!(
            !s.holds(&mem(ram, ram / 2, sw, sw / 20)),
            "swap full, memory plentiful"
        );
        assert!(
            !s.holds(&mem(ram, ram / 20, sw, sw / 2)),
            "memory short, swap half free"
        );
        // Exactly at the limit: not over it.
        assert!(!s.holds(&mem(ram, ram / 10, sw, sw / 10)));
        assert!(!s.holds(&mem(ram, 0, 0, 0)), "no swap: never");
        assert_eq!(
            s.measured(&mem(1_000_000, 88_000, 65_536, 4_506)),
            "swap 93.1% of 64MiB used, memory 91.2% used, limit 90%"
        );
    }

    #[test]
    fn reads_meminfo() {
        let text = "MemTotal:         487236 kB\nMemFree:          12000 kB\n\
                    MemAvailable:      40100 kB\nSwapCached:          0 kB\n\
                    SwapTotal:         65532 kB\nSwapFree:            100 kB\n";
        assert_eq!(
            MemInfo::parse(text).unwrap(),
            mem(487_236, 40_100, 65_532, 100)
        );
        assert_eq!(
            MemInfo::parse("MemTotal: 1 kB\n").unwrap_err(),
            "no \"MemAvailable: N kB\" line"
        );
    }
}
