//! Fake cgroup2 and proc trees in a directory, for tests (this crate's, the
//! CLI tests and any harness that wants to check `explain` without a kernel).
//!
//! They write the same plain files the kernel exposes, so the real readers
//! ([`crate::cgroupfs::CgroupTree`], [`crate::procfs::ProcFs`]) are what the
//! tests exercise. The helpers panic on I/O errors: they are for tests.

use std::fs;
use std::path::{Path, PathBuf};

use crate::procfs::ProcFs;

/// Page size the fake proc tree's `statm` values are counted in.
pub const FAKE_PAGE_SIZE: u64 = 4096;

/// A fake cgroup2 hierarchy rooted at a directory.
#[derive(Debug, Clone)]
pub struct FakeCgroupfs {
    root: PathBuf,
}

impl FakeCgroupfs {
    /// Create the root cgroup (an empty `cgroup.procs`) at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        fs::create_dir_all(&root).expect("create fake cgroup root");
        write(&root.join("cgroup.procs"), "");
        FakeCgroupfs { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Create the cgroup at `path` (and missing ancestors, with empty
    /// `cgroup.procs`), with `memory.current` = `memory_bytes` and the given
    /// pids in `cgroup.procs`.
    pub fn cgroup(&self, path: &str, memory_bytes: u64, procs: &[u32]) -> &Self {
        let dir = self.dir(path);
        let mut d = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            d.push(part);
            if !d.exists() {
                fs::create_dir(&d).expect("create fake cgroup");
                write(&d.join("cgroup.procs"), "");
            }
        }
        write(&dir.join("memory.current"), &format!("{memory_bytes}\n"));
        let list: String = procs.iter().map(|p| format!("{p}\n")).collect();
        write(&dir.join("cgroup.procs"), &list);
        self
    }

    /// Write `cgroup.events` for `path`, overriding the computed populated state.
    /// Make `path` a threaded cgroup: its own `cgroup.procs` cannot be read
    /// (absent here), its processes are listed in its domain's.
    pub fn threaded(&self, path: &str) -> &Self {
        let dir = self.dir(path);
        write(&dir.join("cgroup.type"), "threaded\n");
        fs::remove_file(dir.join("cgroup.procs")).expect("remove fake cgroup.procs");
        fs::remove_file(dir.join("memory.current")).expect("remove fake memory.current");
        self
    }

    pub fn events(&self, path: &str, populated: bool) -> &Self {
        let text = format!("populated {}\nfrozen 0\n", u8::from(populated));
        write(&self.dir(path).join("cgroup.events"), &text);
        self
    }
}

/// A fake `/proc` with just the files [`ProcFs`] reads.
#[derive(Debug, Clone)]
pub struct FakeProcfs {
    root: PathBuf,
}

/// One fake process.
#[derive(Debug, Clone)]
pub struct FakeTask<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub rss_bytes: u64,
    pub oom_score_adj: i32,
    pub oom_score: u64,
    pub kernel_thread: bool,
    /// Swap and page tables, for the badness score.
    pub swap_bytes: u64,
    pub pgtables_bytes: u64,
    /// When it started, in ticks after boot (0: its pid).
    pub start_ticks: u64,
    /// A zombie (no memory of its own left).
    pub exiting: bool,
}

impl<'a> FakeTask<'a> {
    /// An ordinary user process.
    pub fn new(pid: u32, comm: &'a str, rss_bytes: u64) -> Self {
        FakeTask {
            pid,
            comm,
            rss_bytes,
            oom_score_adj: 0,
            oom_score: 0,
            kernel_thread: false,
            swap_bytes: 0,
            pgtables_bytes: 0,
            start_ticks: 0,
            exiting: false,
        }
    }
}

impl FakeProcfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        fs::create_dir_all(&root).expect("create fake proc root");
        FakeProcfs { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A [`ProcFs`] reading this tree.
    pub fn procfs(&self) -> ProcFs {
        ProcFs::with_page_size(&self.root, FAKE_PAGE_SIZE)
    }

    /// Add a process. `rss_bytes` is rounded down to whole pages.
    pub fn task(&self, t: FakeTask<'_>) -> &Self {
        let dir = self.root.join(t.pid.to_string());
        fs::create_dir_all(&dir).expect("create fake /proc/<pid>");
        let pages = t.rss_bytes / FAKE_PAGE_SIZE;
        let size = if t.exiting { 0 } else { pages * 2 + 1 };
        write(&dir.join("statm"), &format!("{size} {pages} 0 0 0 0 0\n"));
        let flags: u64 = if t.kernel_thread {
            0x0020_0040
        } else {
            0x0040_0100
        };
        write(
            &dir.join("stat"),
            &format!(
                // All 52 fields, as the kernel writes them (procfs wants them).
                "{} ({}) {} 1 {} {} 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0 \
                 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
                t.pid,
                t.comm,
                if t.exiting { 'Z' } else { 'S' },
                t.pid,
                t.pid,
                if t.start_ticks == 0 {
                    u64::from(t.pid)
                } else {
                    t.start_ticks
                }
            ),
        );
        write(
            &dir.join("status"),
            &format!(
                "Name:\t{}\nVmPTE:\t{} kB\nVmSwap:\t{} kB\n",
                t.comm,
                t.pgtables_bytes / 1024,
                t.swap_bytes / 1024
            ),
        );
        write(&dir.join("comm"), &format!("{}\n", t.comm));
        write(
            &dir.join("oom_score_adj"),
            &format!("{}\n", t.oom_score_adj),
        );
        write(&dir.join("oom_score"), &format!("{}\n", t.oom_score));
        self
    }
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Mebibytes, for readable fixtures.
pub const MIB: u64 = 1 << 20;

/// `comm` as the NUL-padded C chars of an event's `victim_comm`.
pub fn c_comm(comm: &str) -> [i8; 16] {
    let mut out = [0; 16];
    for (c, &b) in out.iter_mut().zip(comm.as_bytes()) {
        *c = b as i8;
    }
    out
}

/// The demo layout of `vm-tests/demo.toml`, in fake trees under `cgroup_root`
/// and `proc_root`:
///
/// | cgroup           | memory.current | pids (RSS)                       |
/// |------------------|----------------|----------------------------------|
/// | /demo/db         | 500 MiB        | 100 postgres (480 MiB)           |
/// | /demo/web        | 200 MiB        | 200 nginx (50), 201 nginx (140)  |
/// | /demo/batch/j1   | 100 MiB        | 300 job1 (60), 301 job1 (30)     |
/// | /demo/batch/j2   | 300 MiB        | 310 job2 (290)                   |
/// | /system.slice/sshd.service | 10 MiB | 400 sshd (8)                   |
///
/// With demo.toml the priority policy kills all of /demo/batch/j2 in a
/// global OOM (priority 10, larger than j1).
pub fn demo_layout(cgroup_root: &Path, proc_root: &Path) -> (FakeCgroupfs, FakeProcfs) {
    let cg = FakeCgroupfs::new(cgroup_root);
    cg.cgroup("/demo/db", 500 * MIB, &[100])
        .cgroup("/demo/web", 200 * MIB, &[200, 201])
        .cgroup("/demo/batch/j1", 100 * MIB, &[300, 301])
        .cgroup("/demo/batch/j2", 300 * MIB, &[310])
        .cgroup("/system.slice/sshd.service", 10 * MIB, &[400]);
    let procs = FakeProcfs::new(proc_root);
    for (pid, comm, mib) in [
        (100, "postgres", 480),
        (200, "nginx", 50),
        (201, "nginx", 140),
        (300, "job1", 60),
        (301, "job1", 30),
        (310, "job2", 290),
        (400, "sshd", 8),
    ] {
        procs.task(FakeTask {
            oom_score: mib * 2,
            ..FakeTask::new(pid, comm, mib * MIB)
        });
    }
    (cg, procs)
}
