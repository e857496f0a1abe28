//! Per-task facts from `/proc` that victim choice needs: resident memory,
//! `oom_score_adj`, `oom_score`, and whether a pid is a kernel thread.
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
        let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let stat = self.read(pid, "stat");
        let (stat_comm, flags) = stat.as_deref().map(parse_stat).unwrap_or((None, None));
        let comm = self
            .read(pid, "comm")
            .map(|c| c.trim_end_matches('\n').to_owned())
            .or(stat_comm)
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
            kernel_thread: flags.is_some_and(|f| f & PF_KTHREAD != 0),
        })
    }
}

/// comm and flags from `/proc/<pid>/stat`. comm is in parentheses and may
/// itself contain spaces and parentheses, so split at the last ')'.
fn parse_stat(stat: &str) -> (Option<String>, Option<u64>) {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return (None, None);
    };
    let comm = stat.get(open + 1..close).map(str::to_owned);
    // After comm: state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    let flags = stat[close + 1..]
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse().ok());
    (comm, flags)
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
        assert_eq!(
            parse_stat(stat),
            (Some("a) b (c)".to_owned()), Some(2097216))
        );
        assert_eq!(2097216 & PF_KTHREAD, PF_KTHREAD);
        assert_eq!(parse_stat("garbage"), (None, None));
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
