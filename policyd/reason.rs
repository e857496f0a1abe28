//! Why `explain` ranks, spares, passes over and kills what it does, as data
//! ([`Reason`], [`VictimReason`], [`Outcome`]); the sentences people read
//! are made from it only when shown (`Display`, and JSON's `reason`).
//!
//! In JSON each one is two keys: the sentence (`reason`, or `outcome`), as
//! explain has always printed it, and the data (`why`, or `outcome_why`),
//! tagged by `kind` with stable snake_case names.

use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::config::KillMode;
use crate::procfs::Unkillable;
use crate::sizes::{format_bytes, format_pair};
use crate::xattrs::Pref;

/// Why a cgroup or task ranks where it does, or has no rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    // An eligible cgroup, compared with the `next` one in rank.
    /// Ranked by xattr preference (prefer first, avoid last) before priorities.
    Preference {
        pref: Pref,
        next_pref: Pref,
        next: String,
    },
    LowerPriority {
        priority: u32,
        next_priority: u32,
        next: String,
    },
    /// Same priority (`priority`, for the priority policy) and more memory.
    LargerUsage {
        priority: Option<u32>,
        usage_bytes: u64,
        next_usage_bytes: u64,
        next: String,
    },
    /// Same priority and usage in whole MiB: the lower cgroup id goes first.
    LowerCgroupId {
        priority: Option<u32>,
        id: u64,
        next_id: u64,
        next: String,
    },
    OnlyCandidate,
    RanksLast,
    // A cgroup that is never a candidate.
    RootCgroup,
    /// Its processes count in its threaded domain.
    Threaded,
    Protected,
    NotPopulated,
    /// Only its descendants have processes.
    NoOwnProcesses,
    /// `largest` only: a child cgroup is populated.
    NotALeaf,
    /// An eligible cgroup whose every task is spared.
    NothingKillable {
        spared: Vec<Spared>,
    },
    // A task, by badness, compared with the next one in rank.
    HigherBadness {
        points: i64,
        next_points: i64,
        next_pid: u32,
    },
    /// Equal points: the kernel keeps the one it meets last, started later.
    StartedAfter {
        points: i64,
        next_pid: u32,
    },
    OnlyKillableTask,
    // A task that is not killed.
    KernelThread,
    Init,
    OomScoreAdjMin,
    /// A zombie, or exiting with no memory left.
    Exiting,
    /// Gone from /proc.
    Exited,
    /// `kill = "task"` kills the task with the largest RSS.
    SmallerRss {
        rss_bytes: u64,
        largest_rss_bytes: u64,
    },
}

impl From<Unkillable> for Reason {
    fn from(u: Unkillable) -> Self {
        match u {
            Unkillable::KernelThread => Reason::KernelThread,
            Unkillable::Init => Reason::Init,
            Unkillable::OomScoreAdjMin => Reason::OomScoreAdjMin,
            Unkillable::Exiting => Reason::Exiting,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Preference {
                pref,
                next_pref,
                next,
            } => write!(f, "preference {pref} before {next_pref} of {next}"),
            Reason::LowerPriority {
                priority,
                next_priority,
                next,
            } => write!(f, "priority {priority} < {next_priority} of {next}"),
            Reason::LargerUsage {
                priority,
                usage_bytes,
                next_usage_bytes,
                next,
            } => {
                if let Some(p) = priority {
                    write!(f, "same priority {p}; ")?;
                }
                let (this, other) = format_pair(*usage_bytes, *next_usage_bytes);
                write!(f, "larger usage {this} vs {other} of {next}")
            }
            Reason::LowerCgroupId {
                priority,
                id,
                next_id,
                next,
            } => {
                match priority {
                    Some(p) => write!(f, "same priority {p} and usage in whole MiB; ")?,
                    None => write!(f, "same usage in whole MiB; ")?,
                }
                write!(f, "lower cgroup id {id} < {next_id} of {next}")
            }
            Reason::OnlyCandidate => f.write_str("only eligible candidate"),
            Reason::RanksLast => f.write_str("ranks last"),
            Reason::RootCgroup => f.write_str("root cgroup: never a candidate"),
            Reason::Threaded => f.write_str("threaded: its processes count in its domain cgroup"),
            Reason::Protected => f.write_str("protected"),
            Reason::NotPopulated => f.write_str("not populated"),
            Reason::NoOwnProcesses => f.write_str("no processes (only its descendants have some)"),
            Reason::NotALeaf => f.write_str("not a leaf (a child cgroup is populated)"),
            Reason::NothingKillable { spared } => {
                f.write_str("nothing killable: ")?;
                for (i, s) in spared.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}pid {} {}", s.pid, s.why)?;
                }
                Ok(())
            }
            Reason::HigherBadness {
                points,
                next_points,
                next_pid,
            } => write!(f, "badness {points} > {next_points} of pid {next_pid}"),
            Reason::StartedAfter { points, next_pid } => {
                write!(f, "same badness {points}; started after pid {next_pid}")
            }
            Reason::OnlyKillableTask => f.write_str("only killable task"),
            Reason::KernelThread => f.write_str("kernel thread"),
            Reason::Init => f.write_str("init"),
            Reason::OomScoreAdjMin => f.write_str("oom_score_adj -1000"),
            Reason::Exiting => f.write_str("exiting (no memory left)"),
            Reason::Exited => f.write_str("exited"),
            Reason::SmallerRss {
                rss_bytes,
                largest_rss_bytes,
            } => {
                let (this, largest) = format_pair(*rss_bytes, *largest_rss_bytes);
                write!(f, "smaller RSS {this} vs {largest}")
            }
        }
    }
}

/// A task that stays alive in a chosen cgroup, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spared {
    pub pid: u32,
    #[serde(flatten, serialize_with = "reason_and_why")]
    pub why: Reason,
}

/// Which tasks of the victim cgroup die, and why those.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KillChoice {
    /// `kill = "task"`: the one with the largest RSS.
    LargestRss {
        pid: u32,
        comm: String,
        rss_bytes: u64,
    },
    /// `kill = "cgroup"`: every killable task.
    WholeCgroup { tasks: usize },
    /// `badness`: the task with the most points of the kernel's
    /// oom_badness() in an OOM of `totalpages` pages.
    Badness { totalpages: u64 },
}

/// Why the victim dies: its rank, how many candidates before it had nothing
/// killable, and which of its tasks are killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VictimReason {
    pub rank: Reason,
    pub passed_over: usize,
    pub kill: KillChoice,
}

impl fmt::Display for VictimReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rank)?;
        if self.passed_over > 0 {
            write!(
                f,
                " (the {} higher-ranked candidate(s) had nothing killable)",
                self.passed_over
            )?;
        }
        match &self.kill {
            KillChoice::LargestRss {
                pid,
                comm,
                rss_bytes,
            } => write!(
                f,
                "; kill = task: pid {pid} ({comm}) has the largest RSS, {}",
                format_bytes(*rss_bytes)
            ),
            KillChoice::WholeCgroup { tasks } => {
                write!(f, "; kill = cgroup: all {tasks} killable task(s)")
            }
            KillChoice::Badness { totalpages } => write!(
                f,
                " (kernel oom_badness: RSS + swap + page tables in pages, plus oom_score_adj \
                 thousandths of {totalpages} pages)"
            ),
        }
    }
}

/// What happens on the OOM explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// `observe`: the kernel's own killer decides.
    Observe,
    /// A cgroup policy kills `pids` of `cgroup`, one task or all of them.
    KillInCgroup {
        kill: KillMode,
        cgroup: String,
        pids: Vec<u32>,
    },
    /// No cgroup in scope was eligible: the kernel decides.
    NoEligibleCgroup,
    /// Every eligible cgroup had nothing killable: the kernel decides.
    NoKillableCandidate,
    /// `badness` kills this task.
    KillTask {
        pid: u32,
        comm: String,
        cgroup: String,
    },
    /// `badness` found no killable task: the kernel decides.
    NoKillableTask,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Observe => f.write_str(
                "observe: policyd kills nothing; the kernel's own OOM killer picks the task with \
                 the highest oom_badness (see /proc/<pid>/oom_score)",
            ),
            Outcome::KillInCgroup { kill, cgroup, pids } => {
                let what = match kill {
                    KillMode::Task => "one task",
                    KillMode::Cgroup => "the whole cgroup",
                };
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(f, "kill {what} in {cgroup}: pid {}", pids.join(", "))
            }
            Outcome::NoEligibleCgroup => f.write_str(
                "no eligible cgroup in scope: policyd defers to the kernel's own OOM killer",
            ),
            Outcome::NoKillableCandidate => f.write_str(
                "no candidate had a killable task: policyd defers to the kernel's own OOM killer",
            ),
            Outcome::KillTask { pid, comm, cgroup } => {
                write!(f, "kill pid {pid} ({comm}) in {cgroup}")
            }
            Outcome::NoKillableTask => {
                f.write_str("no killable task in scope: the kernel's own OOM killer decides")
            }
        }
    }
}

/// `value` as two JSON keys: its sentence under `text_key`, its data under
/// `data_key`.
fn text_and_data<T, S>(value: &T, text_key: &str, data_key: &str, s: S) -> Result<S::Ok, S::Error>
where
    T: fmt::Display + Serialize,
    S: Serializer,
{
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry(text_key, &value.to_string())?;
    map.serialize_entry(data_key, value)?;
    map.end()
}

/// For a flattened [`Reason`] or [`VictimReason`]: `reason` and `why`.
pub fn reason_and_why<T, S>(value: &T, s: S) -> Result<S::Ok, S::Error>
where
    T: fmt::Display + Serialize,
    S: Serializer,
{
    text_and_data(value, "reason", "why", s)
}

/// For a flattened [`Outcome`]: `outcome` and `outcome_why`.
pub fn outcome_and_why<S: Serializer>(value: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    text_and_data(value, "outcome", "outcome_why", s)
}
