//! Per-task facts from `/proc` that victim choice needs: resident memory,
//! swap and page tables, `oom_score_adj`, `oom_score`, start time, and
//! whether a pid is a kernel thread or exiting.
//!
//! The proc root is a path so tests can use a fake one (see
//! [`crate::testing::FakeProcfs`]). The `procfs` crate reads `stat` and
//! `statm`; the few single lines taken from other files are read here, where
//! procfs would want whole files it checks field by field.

use std::fs;
use std::path::{Path, PathBuf};

use procfs::process::Process;
pub use procfs::process::Stat;
use serde::Serialize;

/// `OOM_SCORE_ADJ_MIN`: the kernel never kills such a task.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;
/// `PF_KTHREAD` in the flags field of `/proc/<pid>/stat`.
const PF_KTHREAD: u32 = 0x0020_0000;

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
    pub fn unkillable(&self) -> Option<Unkillable> {
        if self.kernel_thread {
            Some(Unkillable::KernelThread)
        } else if self.pid == 1 {
            Some(Unkillable::Init)
        } else if self.oom_score_adj <= OOM_SCORE_ADJ_MIN {
            Some(Unkillable::OomScoreAdjMin)
        } else if self.exiting {
            Some(Unkillable::Exiting)
        } else {
            None
        }
    }
}

/// Why the kernel would refuse to kill a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unkillable {
    KernelThread,
    Init,
    /// `oom_score_adj` is [`OOM_SCORE_ADJ_MIN`].
    OomScoreAdjMin,
    /// A zombie, or exiting with its memory gone.
    Exiting,
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
        ProcFs::with_page_size(root, procfs::page_size())
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

    fn process(&self, pid: u32) -> Option<Process> {
        Process::new_with_root(self.root.join(pid.to_string())).ok()
    }

    /// `/proc/<pid>/stat` (comm, state, flags, start time), or `None` when
    /// `pid` has exited.
    pub fn stat(&self, pid: u32) -> Option<Stat> {
        self.process(pid)?.stat().ok()
    }

    /// Boot time, seconds since the epoch: `btime` of `/proc/stat`.
    pub fn boot_time(&self) -> Option<u64> {
        // procfs's KernelStats would want every cpu line, ctxt and
        // processes too, for this one line.
        let text = fs::read_to_string(self.root.join("stat")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// When a task whose stat says it started `start_ticks` after boot
/// started, in seconds since the epoch.
pub fn start_unix(boot_time: u64, start_ticks: u64) -> u64 {
    boot_time + start_ticks / procfs::ticks_per_second()
}

impl TaskSource for ProcFs {
    fn task(&self, pid: u32) -> Option<TaskInfo> {
        let process = self.process(pid)?;
        // statm is the one file every live task has; without it the task is gone.
        let statm = process.statm().ok()?;
        let stat = process.stat().ok();
        let kernel_thread = stat.as_ref().is_some_and(|s| s.flags & PF_KTHREAD != 0);
        let status = self.read(pid, "status").unwrap_or_default();
        let kib = |key: &str| status_kib(&status, key).unwrap_or(0).saturating_mul(1024);
        let comm = self
            .read(pid, "comm")
            .map(|c| c.trim_end_matches('\n').to_owned())
            .or_else(|| stat.as_ref().map(|s| s.comm.clone()))
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
            rss_bytes: statm.resident.saturating_mul(self.page_size),
            oom_score_adj,
            oom_score,
            kernel_thread,
            swap_bytes: kib("VmSwap:"),
            pgtables_bytes: kib("VmPTE:"),
            start_ticks: stat.as_ref().map_or(0, |s| s.starttime),
            exiting: !kernel_thread
                && (statm.size == 0 || stat.is_some_and(|s| matches!(s.state, 'Z' | 'X'))),
        })
    }
}

/// The value of a "Key:   123 kB" line of `/proc/<pid>/status`, in KiB.
/// procfs's Status would want some 25 other keys present for these two.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeProcfs, FakeTask};

    #[test]
    fn stat_with_odd_comm() {
        // comm may hold spaces and parentheses; without a comm file it is
        // read from stat.
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeProcfs::new(dir.path());
        fake.task(FakeTask {
            kernel_thread: true,
            ..FakeTask::new(42, "a) b (c)", 0)
        })
        .task(FakeTask {
            exiting: true,
            start_ticks: 5123,
            ..FakeTask::new(7, "x", 0)
        });
        std::fs::remove_file(dir.path().join("42/comm")).unwrap();
        let procs = fake.procfs();
        let t = procs.task(42).unwrap();
        assert_eq!((t.comm.as_str(), t.kernel_thread), ("a) b (c)", true));
        let stat = procs.stat(42).unwrap();
        assert_eq!((stat.state, stat.flags & PF_KTHREAD), ('S', PF_KTHREAD));
        let t = procs.task(7).unwrap();
        assert_eq!((t.exiting, t.start_ticks), (true, 5123));
        assert_eq!(procs.stat(7).unwrap().state, 'Z');
        // An unreadable stat leaves the defaults; statm still says it lives.
        std::fs::write(dir.path().join("7/stat"), "garbage").unwrap();
        assert!(procs.stat(7).is_none());
        let t = procs.task(7).unwrap();
        assert_eq!((t.start_ticks, t.kernel_thread), (0, false));
        assert_eq!(procs.task(8), None);
    }

    #[test]
    fn boot_time_from_proc_stat() {
        let dir = tempfile::tempdir().unwrap();
        let procs = ProcFs::new(dir.path());
        assert_eq!(procs.boot_time(), None);
        let stat = dir.path().join("stat");
        std::fs::write(
            &stat,
            "cpu  1 2 3\nintr 5\nctxt 9\nbtime 1795000000\nprocesses 10\n",
        )
        .unwrap();
        assert_eq!(procs.boot_time(), Some(1795000000));
        std::fs::write(&stat, "cpu 1\n").unwrap();
        assert_eq!(procs.boot_time(), None);
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
        assert_eq!(t(10, 0, false).unkillable(), None);
        assert_eq!(t(10, -999, false).unkillable(), None);
        assert_eq!(
            t(10, -1000, false).unkillable(),
            Some(Unkillable::OomScoreAdjMin)
        );
        assert_eq!(t(2, 0, true).unkillable(), Some(Unkillable::KernelThread));
        assert_eq!(t(1, 0, false).unkillable(), Some(Unkillable::Init));
    }
}
