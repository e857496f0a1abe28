//! Per-task facts from `/proc` that victim choice needs: resident memory,
//! swap and page tables, `oom_score_adj`, `oom_score`, start time, and
//! whether a pid is a kernel thread or exiting.
//!
//! The proc root is a path so tests can use a fake one (see
//! [`crate::testing::FakeProcfs`]).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// `OOM_SCORE_ADJ_MIN`: the kernel never kills such a task.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;
/// `PF_KTHREAD` in the flags field of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// One process, as `/proc/<pid>` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    pub pid: u32,
    pub comm: String,
    /// Resident set size: `/proc/<pid>/statm` resident pages × page size
    /// (swap is not counted).
    pub rss_bytes: u64,
    pub oom_score_adj: i32,
    /// `/proc/<pid>/oom_score`: the kernel's oom_badness() scaled to 0..=2000.
    pub oom_score: Option<u64>,
    pub kernel_thread: bool,
    /// `VmSwap` of `/proc/<pid>/status`.
    pub swap_bytes: u64,
    /// `VmPTE` of `/proc/<pid>/status`: page tables.
    pub pgtables_bytes: u64,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22):
    /// the order of the kernel's process list.
    pub start_ticks: u64,
    /// A zombie, or exiting with its memory gone (no mm): nothing to kill.
    pub exiting: bool,
}

impl TaskInfo {
    /// Why the kernel would refuse to kill this task, if it would.
    pub fn unkillable_reason(&self) -> Option<&'static str> {
        if self.kernel_thread {
            Some("kernel thread")
        } else if self.pid == 1 {
            Some("init")
        } else if self.oom_score_adj <= OOM_SCORE_ADJ_MIN {
            Some("oom_score_adj -1000")
        } else if self.exiting {
            Some("exiting (no memory left)")
        } else {
            None
        }
    }
}

/// Somewhere to look tasks up: `/proc`, or a table in tests.
pub trait TaskSource {
    /// The task `pid`, or `None` if it has exited.
    fn task(&self, pid: u32) -> Option<TaskInfo>;
}

/// A proc filesystem at some root (normally `/proc`).
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
    page_size: u64,
}

impl ProcFs {
    /// `/proc` with the system's page size.
    pub fn system() -> ProcFs {
        ProcFs::new("/proc")
    }

    /// A proc tree at `root`, with the system's page size.
    pub fn new(root: impl Into<PathBuf>) -> ProcFs {
        ProcFs::with_page_size(root, system_page_size())
    }

    pub fn with_page_size(root: impl Into<PathBuf>, page_size: u64) -> ProcFs {
        ProcFs {
            root: root.into(),
            page_size,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self, pid: u32, file: &str) -> Option<String> {
        fs::read_to_string(self.root.join(pid.to_string()).join(file)).ok()
    }
}

impl TaskSource for ProcFs {
    fn task(&self, pid: u32) -> Option<TaskInfo> {
        // statm is the one file every live task has; without it the task is gone.
        let statm = self.read(pid, "statm")?;
        let mut statm = statm.split_whitespace().map(|v| v.parse::<u64>().ok());
        let size_pages = statm.next()??;
        let resident_pages = statm.next()??;
        let stat = self
            .read(pid, "stat")
            .map(|s| parse_stat(&s))
            .unwrap_or_default();
        let kernel_thread = stat.flags.is_some_and(|f| f & PF_KTHREAD != 0);
        let status = self.read(pid, "status").unwrap_or_default();
        let kib = |key: &str| status_kib(&status, key).unwrap_or(0).saturating_mul(1024);
        let comm = self
            .read(pid, "comm")
            .map(|c| c.trim_end_matches('\n').to_owned())
            .or(stat.comm)
            .unwrap_or_default();
        let oom_score_adj = self
            .read(pid, "oom_score_adj")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let oom_score = self
            .read(pid, "oom_score")
            .and_then(|s| s.trim().parse().ok());
        Some(TaskInfo {
            pid,
            comm,
            rss_bytes: resident_pages.saturating_mul(self.page_size),
            oom_score_adj,
            oom_score,
            kernel_thread,
            swap_bytes: kib("VmSwap:"),
            pgtables_bytes: kib("VmPTE:"),
            start_ticks: stat.start_ticks.unwrap_or(0),
            exiting: !kernel_thread
                && (size_pages == 0 || matches!(stat.state, Some('Z') | Some('X'))),
        })
    }
}

/// What policyd reads of `/proc/<pid>/stat`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stat {
    comm: Option<String>,
    state: Option<char>,
    flags: Option<u64>,
    start_ticks: Option<u64>,
}

/// comm is in parentheses and may itself contain spaces and parentheses, so
/// the fields after it are counted from the last ')'.
fn parse_stat(stat: &str) -> Stat {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return Stat::default();
    };
    // After comm: state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8)
    // flags(9) ... starttime(22).
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    Stat {
        comm: stat.get(open + 1..close).map(str::to_owned),
        state: rest.first().and_then(|s| s.chars().next()),
        flags: rest.get(6).and_then(|f| f.parse().ok()),
        start_ticks: rest.get(19).and_then(|f| f.parse().ok()),
    }
}

/// The value of a "Key:   123 kB" line of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn system_page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => size as u64,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 2097216 0 0";
        let parsed = parse_stat(stat);
        assert_eq!(parsed.comm.as_deref(), Some("a) b (c)"));
        assert_eq!(parsed.flags, Some(2097216));
        assert_eq!(parsed.state, Some('S'));
        assert_eq!(parsed.start_ticks, None);
        assert_eq!(2097216 & PF_KTHREAD, PF_KTHREAD);
        assert_eq!(parse_stat("garbage"), Stat::default());
        let full = "7 (x) Z 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5123 0 0";
        let parsed = parse_stat(full);
        assert_eq!((parsed.state, parsed.start_ticks), (Some('Z'), Some(5123)));
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\tx\nVmPTE:\t      48 kB\nVmSwap:\t       0 kB\n";
        assert_eq!(status_kib(status, "VmPTE:"), Some(48));
        assert_eq!(status_kib(status, "VmSwap:"), Some(0));
        assert_eq!(status_kib(status, "VmRSS:"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let t = ProcFs::system().task(me).expect("own /proc entry");
        assert_eq!(t.pid, me);
        assert!(t.rss_bytes > 0);
        assert!(!t.kernel_thread);
        assert!(t.oom_score.is_some());
        assert!(!t.comm.is_empty());
        assert!(t.pgtables_bytes > 0 && t.start_ticks > 0 && !t.exiting);
    }

    #[test]
    fn unkillable_reasons() {
        let t = |pid, adj, kthread| TaskInfo {
            pid,
            comm: "x".into(),
            rss_bytes: 1,
            oom_score_adj: adj,
            oom_score: None,
            kernel_thread: kthread,
            swap_bytes: 0,
            pgtables_bytes: 0,
            start_ticks: 0,
            exiting: false,
        };
        assert_eq!(t(10, 0, false).unkillable_reason(), None);
        assert_eq!(t(10, -999, false).unkillable_reason(), None);
        assert_eq!(
            t(10, -1000, false).unkillable_reason(),
            Some("oom_score_adj -1000")
        );
        assert_eq!(t(2, 0, true).unkillable_reason(), Some("kernel thread"));
        assert_eq!(t(1, 0, false).unkillable_reason(), Some("init"));
    }
}
