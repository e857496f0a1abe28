//! cgroup v2 directories: create, fill, read counters, remove.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{read_file, wait_until, write_file};

/// Where cgroup v2 is mounted in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The counters of a cgroup's memory.events file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    /// Parses the `key value` lines of memory.events; unknown keys are ignored.
    pub fn parse(text: &str) -> Result<Self> {
        let mut ev = MemoryEvents::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(key), Some(value)) = (it.next(), it.next()) else {
                continue;
            };
            let value: u64 = value
                .parse()
                .with_context(|| format!("memory.events line {line:?}"))?;
            match key {
                "low" => ev.low = value,
                "high" => ev.high = value,
                "max" => ev.max = value,
                "oom" => ev.oom = value,
                "oom_kill" => ev.oom_kill = value,
                "oom_group_kill" => ev.oom_group_kill = value,
                _ => {}
            }
        }
        Ok(ev)
    }
}

/// A cgroup v2 directory. One made with [`Cgroup::create`] is removed (after killing what
/// is left in it) when dropped; one from [`Cgroup::open`] is left alone.
#[derive(Debug)]
pub struct Cgroup {
    /// Path below the cgroup root, without leading '/', e.g. "batch/job1"; "" is the root.
    rel: String,
    dir: PathBuf,
    owned: bool,
}

impl Cgroup {
    /// The root cgroup.
    pub fn root() -> Cgroup {
        Cgroup {
            rel: String::new(),
            dir: PathBuf::from(CGROUP_ROOT),
            owned: false,
        }
    }

    /// An existing cgroup, e.g. `Cgroup::open("system.slice")`.
    pub fn open(rel: &str) -> Result<Cgroup> {
        let rel = rel.trim_matches('/').to_string();
        let dir = Path::new(CGROUP_ROOT).join(&rel);
        if !dir.is_dir() {
            bail!("cgroup {} does not exist", dir.display());
        }
        Ok(Cgroup {
            rel,
            dir,
            owned: false,
        })
    }

    /// Creates `rel` (e.g. "batch/job1") and any missing parents, enabling the memory
    /// controller in every ancestor's cgroup.subtree_control on the way. An already
    /// existing directory is reused.
    pub fn create(rel: &str) -> Result<Cgroup> {
        let rel = rel.trim_matches('/').to_string();
        if rel.is_empty() {
            bail!("Cgroup::create needs a path below the root");
        }
        let mut dir = PathBuf::from(CGROUP_ROOT);
        for part in rel.split('/') {
            write_file(dir.join("cgroup.subtree_control"), "+memory")?;
            dir.push(part);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        Ok(Cgroup {
            rel,
            dir,
            owned: true,
        })
    }

    /// A child of this cgroup, created like [`Cgroup::create`].
    pub fn child(&self, name: &str) -> Result<Cgroup> {
        Cgroup::create(&format!("{}/{}", self.rel, name))
    }

    /// The path as policies and the kernel name it: "/batch/job1", "/" for the root.
    pub fn path(&self) -> String {
        format!("/{}", self.rel)
    }

    /// The directory under /sys/fs/cgroup.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup id: the inode number of its directory (what BPF sees as cgroup id).
    pub fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.dir)
            .with_context(|| format!("stat {}", self.dir.display()))?
            .ino())
    }

    /// Writes one of the cgroup's control files, e.g. `set("memory.max", "64M")`.
    pub fn set(&self, file: &str, value: impl AsRef<[u8]>) -> Result<()> {
        write_file(self.dir.join(file), value)
    }

    /// Reads one of the cgroup's control files, trailing newline removed.
    pub fn read(&self, file: &str) -> Result<String> {
        Ok(read_file(self.dir.join(file))?.trim_end().to_string())
    }

    /// Reads a control file holding a single number, e.g. memory.current.
    pub fn read_u64(&self, file: &str) -> Result<u64> {
        let text = self.read(file)?;
        text.parse()
            .with_context(|| format!("{}/{file} holds {text:?}, not a number", self.dir.display()))
    }

    /// memory.events of this cgroup (counts include its descendants).
    pub fn events(&self) -> Result<MemoryEvents> {
        MemoryEvents::parse(&self.read("memory.events")?)
            .with_context(|| format!("parsing {}/memory.events", self.dir.display()))
    }

    /// The pids in cgroup.procs (this cgroup only, not its descendants).
    pub fn procs(&self) -> Result<Vec<i32>> {
        let text = self.read("cgroup.procs")?;
        text.lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .with_context(|| format!("cgroup.procs line {l:?}"))
            })
            .collect()
    }

    /// Whether any process lives in this cgroup or below (cgroup.events "populated").
    pub fn populated(&self) -> Result<bool> {
        Ok(self
            .read("cgroup.events")?
            .lines()
            .any(|l| l.trim() == "populated 1"))
    }

    /// SIGKILLs every process in the subtree through cgroup.kill and waits until it is empty.
    pub fn kill_all(&self) -> Result<()> {
        self.set("cgroup.kill", "1")?;
        wait_until(
            Duration::from_secs(10),
            &format!("{} to empty after cgroup.kill", self.path()),
            || !self.populated().unwrap_or(true),
        )
    }

    /// Kills what is left and removes the cgroup and its descendants, retrying while the
    /// kernel still holds them busy.
    pub fn remove(mut self) -> Result<()> {
        self.owned = false;
        self.remove_dir()
    }

    fn remove_dir(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.kill_all()?;
        remove_tree(&self.dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = self.remove_dir() {
                eprintln!("warning: cleaning up cgroup {}: {e:#}", self.path());
            }
        }
    }
}

/// rmdir()s a cgroup directory tree bottom-up, retrying EBUSY (dying tasks, children
/// still going offline) for up to 30 s per directory.
fn remove_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e)
                if start.elapsed() < Duration::from_secs(30)
                    && e.raw_os_error() == Some(nix::libc::EBUSY) =>
            {
                thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_events_parse() {
        let ev = MemoryEvents::parse(
            "low 0\nhigh 2\nmax 17\noom 1\noom_kill 1\noom_group_kill 0\nsock_throttled 0\n",
        )
        .unwrap();
        assert_eq!(
            ev,
            MemoryEvents {
                low: 0,
                high: 2,
                max: 17,
                oom: 1,
                oom_kill: 1,
                oom_group_kill: 0
            }
        );
        assert!(MemoryEvents::parse("oom x\n").is_err());
    }
}
