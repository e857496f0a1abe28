//! Reading a cgroup v2 hierarchy from a directory.
//!
//! The tree is read from a root directory given as a path (normally the
//! cgroup2 mount, see [`discover_mount`]), using only plain file reads, so
//! tests can build a fake hierarchy in a temporary directory (see
//! [`crate::testing`]). Per cgroup it records:
//!
//! * `id`: the inode number of the cgroup's directory, which on cgroup2 is the
//!   kernel's cgroup id (`cgroup_id()`, `bpf_get_current_cgroup_id()`), as
//!   its parent's listing gives it (`d_ino`);
//! * its preferences in xattrs ([`crate::xattrs`]);
//!
//! and, in a [`Detail::Full`] read only:
//!
//! * `memory.current` (absent on the root cgroup);
//! * the pids in `cgroup.procs` (processes directly in this cgroup);
//! * `populated` from `cgroup.events` ("populated 1"); where that file is
//!   absent (root cgroup, fake trees) it is computed: the cgroup or a
//!   descendant has processes.
//!
//! `policyd load` reads the tree at every start and reload and needs only ids
//! and xattrs: a [`Detail::Rules`] read skips the four files, which took four
//! fifths of its start-up at 2,000 cgroups (under TCG). On a cgroup2 mount it
//! builds the same tree from its policy's BPF walk instead
//! ([`CgroupTree::from_walk`], [`crate::tree_walk`]): listing each cgroup
//! directory took 13 of its 21 s at 10,000 cgroups.
//!
//! Nothing below the root makes the whole read fail: a cgroup that
//! disappears while being read is skipped (a debug line), and one policyd
//! cannot handle (a name that is not UTF-8, a path longer than PATH_MAX, a
//! directory it may not read) is left out or read in part, with one
//! warning per cgroup (see [`CgroupTree::problems`]). What is left out gets
//! no rules entry; the BPF policy gives it the entry of its nearest
//! ancestor that has one.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;

use crate::tree_walk::TreeRecord;
use crate::xattrs::Xattrs;

/// Where cgroup2 is mounted on systemd machines.
pub const DEFAULT_MOUNT: &str = "/sys/fs/cgroup";
/// Linux's PATH_MAX, terminating NUL included: a longer path cannot be
/// opened by name.
pub const PATH_MAX: usize = 4096;

/// A cgroup that a tree read left out or read only in part, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// "/a/b" (a name that is not UTF-8 shows with U+FFFD in its place).
    pub path: String,
    pub message: String,
}

impl Problem {
    /// Log it as a warning, once per process for each cgroup and message:
    /// the daemon re-reads the tree on every reload.
    pub fn warn_once(&self) {
        static SEEN: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
        let first = SEEN
            .lock()
            .map(|mut seen| seen.insert((self.path.clone(), self.message.clone())))
            .unwrap_or(true);
        if first {
            tracing::warn!("cgroup {}: {}", self.path, self.message);
        }
    }
}

/// "ENOENT: No such file or directory" where the error has an errno.
pub fn errno_text(e: &io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| e.to_string(), |n| Errno::from_raw(n).to_string())
}

/// The cgroup (or the file) is gone: removed since its parent was listed
/// (ENOENT), or removed while open (ENODEV).
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENODEV)
}

/// The path of the child `name` of the cgroup at `parent` ("/" or "/a"),
/// if policyd can handle it: rules are text, so the name must be UTF-8,
/// and the directory below `root_dir` must be short enough to open.
pub fn child_cgroup_path(root_dir: &Path, parent: &str, name: &OsStr) -> Result<String, Problem> {
    let join = |name: &str| {
        if parent == "/" {
            format!("/{name}")
        } else {
            format!("{parent}/{name}")
        }
    };
    let Some(utf8) = name.to_str() else {
        return Err(Problem {
            path: join(&name.to_string_lossy()),
            message: format!(
                "left out: its name is not UTF-8, so no rule can name it; it and its \
                 descendants get the settings of {parent}"
            ),
        });
    };
    let path = join(utf8);
    // root_dir + path, NUL included.
    let len = root_dir.as_os_str().len() + path.len() + 1;
    if len > PATH_MAX {
        return Err(Problem {
            message: format!(
                "left out: its directory's path is {len} bytes, over PATH_MAX ({PATH_MAX}); it \
                 and its descendants get the settings of {parent}"
            ),
            path,
        });
    }
    Ok(path)
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupfsError {
    #[error(
        "cgroup v2 is not mounted (no cgroup2 line in {mounts}); policyd needs the unified \
         hierarchy: mount it with `mount -t cgroup2 none /sys/fs/cgroup`, or pass \
         --cgroup-root DIR"
    )]
    NotMounted { mounts: String },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: cannot parse {what}: {text:?}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        text: String,
    },
    #[error("{} is not a directory (expected the cgroup2 mount)", path.display())]
    NotADirectory { path: PathBuf },
    #[error("no cgroup {path} under {}", root.display())]
    NoSuchCgroup { path: String, root: PathBuf },
    #[error(
        "the tree walk began at cgroup {walked:?}, not at {} (inode {ino})",
        path.display()
    )]
    WalkMismatch {
        path: PathBuf,
        ino: u64,
        walked: Option<u64>,
    },
}

/// Find the cgroup2 mount point from `/proc/self/mounts`.
pub fn discover_mount() -> Result<PathBuf, CgroupfsError> {
    let mounts = "/proc/self/mounts";
    let text = fs::read_to_string(mounts).map_err(|error| CgroupfsError::Io {
        path: mounts.into(),
        error,
    })?;
    cgroup2_mount_in(&text).ok_or_else(|| CgroupfsError::NotMounted {
        mounts: mounts.into(),
    })
}

/// The cgroup2 mount: `given` (`--cgroup-root`), or the one in
/// /proc/self/mounts.
pub fn root(given: Option<&Path>) -> Result<PathBuf, CgroupfsError> {
    match given {
        Some(p) => Ok(p.to_owned()),
        None => discover_mount(),
    }
}

/// The cgroup2 mount point named in `mounts` (the text of a mounts file).
/// Prefers [`DEFAULT_MOUNT`] when cgroup2 is mounted more than once.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    let found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_field(dir)))
        })
        .collect();
    found
        .iter()
        .find(|p| p.as_path() == Path::new(DEFAULT_MOUNT))
        .or_else(|| found.first())
        .cloned()
}

/// The kernel writes space, tab, newline and backslash in mount paths as
/// three-digit octal escapes (`\040`). Ours because procfs 0.18's mounts
/// parser undoes only some of them and leaves a space as `\040`.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                // At most \377: three octal digits always fit in u16.
                let v = digits
                    .iter()
                    .fold(0u16, |acc, d| acc * 8 + u16::from(d - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One cgroup of a [`CgroupTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Kernel cgroup id = inode number of the cgroup directory.
    pub id: u64,
    /// "/" for the root, "/a/b" below it (relative to the mount).
    pub path: String,
    /// Index of the parent in the tree; `None` for the root.
    pub parent: Option<usize>,
    /// Indexes of the children, sorted by name.
    pub children: Vec<usize>,
    /// `memory.current` in bytes; `None` where the file is absent (root).
    pub memory_current: Option<u64>,
    /// Pids listed in `cgroup.procs` (processes directly in this cgroup).
    pub procs: Vec<u32>,
    /// This cgroup or a descendant has processes.
    pub populated: bool,
    /// A threaded cgroup (`cgroup.type`): its processes are listed, and
    /// counted, in its threaded domain's `cgroup.procs`.
    pub threaded: bool,
    /// Its own preferences in xattrs (trusted ones only; see [`crate::xattrs`]).
    pub xattrs: Xattrs,
    /// `populated` came from cgroup.events rather than being computed.
    populated_from_events: bool,
    /// End (exclusive) of this cgroup's subtree in the tree's node order.
    subtree_end: usize,
}

impl Cgroup {
    pub fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    /// The last path element ("" for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

/// Where a tree read finds each cgroup's children.
enum Listing {
    /// In its directory.
    Dirs,
    /// In a BPF walk of the tree: (name, id) by parent id, and the ids of
    /// the cgroups with any xattr, the only ones whose xattrs are read.
    Walk {
        children: RefCell<HashMap<u64, Vec<(OsString, u64)>>>,
        with_xattrs: HashSet<u64>,
    },
}

/// What a tree read takes from each cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Ids, xattrs, memory usage, processes, populated, type: what ranking
    /// and `explain` need.
    Full,
    /// Ids and xattrs only, what rules need: the usage fields stay empty
    /// (`memory_current` `None`, no `procs`, not `populated`, not `threaded`).
    Rules,
}

/// A snapshot of a cgroup hierarchy. Nodes are in depth-first pre-order
/// (children sorted by name): a parent always comes before its children, and
/// a cgroup's subtree is a contiguous index range.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    root_dir: PathBuf,
    nodes: Vec<Cgroup>,
    problems: Vec<Problem>,
}

/// The tree's root directory must be there: below it, a vanished cgroup is
/// skipped, but without the root there is no tree.
fn root_metadata(root_dir: &Path) -> Result<fs::Metadata, CgroupfsError> {
    fs::metadata(root_dir).map_err(|error| CgroupfsError::Io {
        path: root_dir.to_owned(),
        error,
    })
}

impl CgroupTree {
    /// Read the whole hierarchy below `root_dir` (the cgroup2 mount).
    pub fn read(root_dir: &Path) -> Result<CgroupTree, CgroupfsError> {
        Self::read_with(root_dir, Detail::Full, &mut |_| {})
    }

    /// Read the hierarchy below `root_dir` with `detail`, calling
    /// `before_listing` with each cgroup's path just before its children are
    /// listed: a watch added there misses no child (earlier ones are listed).
    pub fn read_with(
        root_dir: &Path,
        detail: Detail,
        before_listing: &mut dyn FnMut(&str),
    ) -> Result<CgroupTree, CgroupfsError> {
        let meta = root_metadata(root_dir)?;
        if !meta.is_dir() {
            return Err(CgroupfsError::NotADirectory {
                path: root_dir.to_owned(),
            });
        }
        let mut tree = CgroupTree {
            root_dir: root_dir.to_owned(),
            nodes: Vec::new(),
            problems: Vec::new(),
        };
        // Root must be readable; below it, vanished cgroups are skipped.
        tree.read_all(meta.ino(), detail, &Listing::Dirs, before_listing)?;
        Ok(tree)
    }

    /// The tree a BPF walk found ([`crate::tree_walk`]), as
    /// [`read_with`](Self::read_with) reads it with [`Detail::Rules`]: the
    /// same nodes in the same order, the same problems, xattrs read only
    /// where the walk saw any. `root_dir` must be the cgroup the walk began at.
    pub fn from_walk(
        root_dir: &Path,
        records: Vec<TreeRecord>,
        before_listing: &mut dyn FnMut(&str),
    ) -> Result<CgroupTree, CgroupfsError> {
        let meta = root_metadata(root_dir)?;
        let root_id = records
            .first()
            .map(|r| r.id)
            .filter(|&id| id == meta.ino())
            .ok_or_else(|| CgroupfsError::WalkMismatch {
                path: root_dir.to_owned(),
                ino: meta.ino(),
                walked: records.first().map(|r| r.id),
            })?;
        let with_xattrs = records
            .iter()
            .filter(|r| r.has_xattrs)
            .map(|r| r.id)
            .collect();
        // Names move from the records into the listing, and from there into
        // the paths: at 10,000 cgroups every copy shows in the RSS.
        let mut children: HashMap<u64, Vec<(OsString, u64)>> = HashMap::new();
        for r in records.into_iter().skip(1) {
            children
                .entry(r.parent_id)
                .or_default()
                .push((r.name, r.id));
        }
        let mut tree = CgroupTree {
            root_dir: root_dir.to_owned(),
            nodes: Vec::new(),
            problems: Vec::new(),
        };
        let listing = Listing::Walk {
            children: RefCell::new(children),
            with_xattrs,
        };
        tree.read_all(root_id, Detail::Rules, &listing, before_listing)?;
        Ok(tree)
    }

    /// The root (inode `root_id`) and everything below it, children from `listing`.
    fn read_all(
        &mut self,
        root_id: u64,
        detail: Detail,
        listing: &Listing,
        before_listing: &mut dyn FnMut(&str),
    ) -> Result<(), CgroupfsError> {
        // Root must be readable; below it, vanished cgroups are skipped.
        let mut problems = Vec::new();
        let root = self
            .read_node(
                None,
                "/".to_owned(),
                root_id,
                detail,
                listing,
                &mut problems,
            )?
            .ok_or_else(|| CgroupfsError::NotADirectory {
                path: self.root_dir.clone(),
            })?;
        self.nodes.push(root);
        self.read_descendants(detail, listing, before_listing, &mut problems)?;
        self.compute_populated();
        for p in &problems {
            p.warn_once();
        }
        self.problems = problems;
        Ok(())
    }

    /// Cgroups this read left out or read in part (each logged once).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Read everything below the root, depth first (a loop, not recursion:
    /// a hostile tree can be thousands of cgroups deep).
    fn read_descendants(
        &mut self,
        detail: Detail,
        listing: &Listing,
        before_listing: &mut dyn FnMut(&str),
        problems: &mut Vec<Problem>,
    ) -> Result<(), CgroupfsError> {
        // Per open cgroup: its index and the children (name, id) still to
        // read, last to read first.
        before_listing("/");
        let mut stack = vec![(0, self.children_of(0, listing, problems))];
        while let Some((idx, names)) = stack.last_mut() {
            let idx = *idx;
            let Some((name, id)) = names.pop() else {
                self.nodes[idx].subtree_end = self.nodes.len();
                stack.pop();
                continue;
            };
            let path = match child_cgroup_path(&self.root_dir, &self.nodes[idx].path, &name) {
                Ok(path) => path,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            let Some(node) = self.read_node(Some(idx), path, id, detail, listing, problems)? else {
                continue;
            };
            let child = self.nodes.len();
            before_listing(&node.path);
            self.nodes.push(node);
            self.nodes[idx].children.push(child);
            let names = self.children_of(child, listing, problems);
            stack.push((child, names));
        }
        Ok(())
    }

    /// The subdirectories (child cgroups) of cgroup `idx` as (name, inode
    /// number), sorted by name in reverse.
    fn children_of(
        &self,
        idx: usize,
        listing: &Listing,
        problems: &mut Vec<Problem>,
    ) -> Vec<(OsString, u64)> {
        if let Listing::Walk { children, .. } = listing {
            // Each cgroup is listed once.
            let mut names = children
                .borrow_mut()
                .remove(&self.nodes[idx].id)
                .unwrap_or_default();
            names.sort_by(|a, b| b.cmp(a));
            return names;
        }
        let dir = self.fs_path(idx);
        let mut names = Vec::new();
        let listing = fs::read_dir(&dir).and_then(|entries| {
            for e in entries {
                let e = e?;
                // A cgroup's subdirectories are its children; do not follow symlinks.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    names.push((e.file_name(), e.ino()));
                }
            }
            Ok(())
        });
        match listing {
            Ok(()) => {}
            Err(e) if is_gone(&e) => names.clear(),
            Err(e) => problems.push(Problem {
                path: self.nodes[idx].path.clone(),
                message: format!(
                    "cannot list its children ({}); those not listed get its settings",
                    errno_text(&e)
                ),
            }),
        }
        names.sort_by(|a, b| b.cmp(a));
        names
    }

    /// Read the files `detail` asks for of cgroup `path`, whose directory
    /// has inode number `id`; `None` if it has gone. A file that cannot be
    /// read is taken as absent, with a problem.
    fn read_node(
        &self,
        parent: Option<usize>,
        path: String,
        id: u64,
        detail: Detail,
        listing: &Listing,
        problems: &mut Vec<Problem>,
    ) -> Result<Option<Cgroup>, CgroupfsError> {
        let dir = self.dir_of(&path);
        if detail == Detail::Rules {
            let xattrs = match listing {
                Listing::Walk { with_xattrs, .. } if !with_xattrs.contains(&id) => {
                    Xattrs::default()
                }
                _ => crate::xattrs::read(&dir, &path),
            };
            return Ok(Some(Cgroup {
                id,
                path,
                parent,
                children: Vec::new(),
                threaded: false,
                memory_current: None,
                procs: Vec::new(),
                xattrs,
                populated: false,
                populated_from_events: true,
                subtree_end: 0,
            }));
        }
        let mut unreadable = Vec::new();
        let mut read = |file: &str| match read_optional(&dir.join(file)) {
            Ok(text) => Ok(text),
            Err(e) if is_gone(&e) => Err(()),
            Err(e) => {
                unreadable.push(format!("{file} ({})", errno_text(&e)));
                Ok(None)
            }
        };
        let (Ok(memory), Ok(procs), Ok(events), Ok(kind)) = (
            read("memory.current"),
            read("cgroup.procs"),
            read("cgroup.events"),
            read("cgroup.type"),
        ) else {
            tracing::debug!("cgroup {path} went away while the tree was read");
            return Ok(None);
        };
        if !unreadable.is_empty() {
            problems.push(Problem {
                path: path.clone(),
                message: format!(
                    "cannot read {}; taken as absent (no memory usage or processes known)",
                    unreadable.join(", ")
                ),
            });
        }
        let memory_current = match memory {
            None => None,
            Some(text) => Some(
                text.trim()
                    .parse::<u64>()
                    .map_err(|_| CgroupfsError::Parse {
                        path: dir.join("memory.current"),
                        what: "memory.current",
                        text: text.trim().to_owned(),
                    })?,
            ),
        };
        let procs = match procs {
            None => Vec::new(),
            Some(text) => text
                .split_whitespace()
                .map(|pid| {
                    pid.parse::<u32>().map_err(|_| CgroupfsError::Parse {
                        path: dir.join("cgroup.procs"),
                        what: "a pid in cgroup.procs",
                        text: pid.to_owned(),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let events_populated = events.and_then(|text| {
            text.lines()
                .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                    ["populated", v] => Some(v == "1"),
                    _ => None,
                })
        });
        let threaded = kind.is_some_and(|k| k.trim() == "threaded");
        let xattrs = crate::xattrs::read(&dir, &path);
        Ok(Some(Cgroup {
            id,
            path,
            parent,
            children: Vec::new(),
            threaded,
            memory_current,
            procs,
            xattrs,
            populated: events_populated.unwrap_or(false),
            populated_from_events: events_populated.is_some(),
            subtree_end: 0,
        }))
    }

    /// Fill `populated` where cgroup.events did not say, bottom-up.
    fn compute_populated(&mut self) {
        for idx in (0..self.nodes.len()).rev() {
            let node = &self.nodes[idx];
            if !node.populated_from_events {
                let populated = !node.procs.is_empty()
                    || node.children.iter().any(|&c| self.nodes[c].populated);
                self.nodes[idx].populated = populated;
            }
        }
    }

    /// The directory this tree was read from.
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// All cgroups, parents before children.
    pub fn nodes(&self) -> &[Cgroup] {
        &self.nodes
    }

    pub fn get(&self, idx: usize) -> &Cgroup {
        &self.nodes[idx]
    }

    pub fn root(&self) -> &Cgroup {
        &self.nodes[0]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index of the cgroup at `path` ("/", "/a/b"; a trailing "/" is ignored).
    pub fn find(&self, path: &str) -> Option<usize> {
        let normalised = normalise_path(path);
        self.nodes.iter().position(|n| n.path == normalised)
    }

    /// Like [`find`](Self::find), with an error naming the root when absent.
    pub fn lookup(&self, path: &str) -> Result<usize, CgroupfsError> {
        self.find(path).ok_or_else(|| CgroupfsError::NoSuchCgroup {
            path: normalise_path(path),
            root: self.root_dir.clone(),
        })
    }

    /// Index of the cgroup with kernel id `id`.
    pub fn find_id(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Indexes of `idx` and all its descendants, parents first.
    pub fn subtree(&self, idx: usize) -> Range<usize> {
        idx..self.nodes[idx].subtree_end
    }

    /// Is `idx` inside the subtree of `ancestor` (or equal to it)?
    pub fn in_subtree(&self, ancestor: usize, idx: usize) -> bool {
        self.subtree(ancestor).contains(&idx)
    }

    /// The directory of the cgroup at index `idx`.
    pub fn fs_path(&self, idx: usize) -> PathBuf {
        self.dir_of(&self.nodes[idx].path)
    }

    fn dir_of(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            self.root_dir.clone()
        } else {
            self.root_dir.join(rel)
        }
    }
}

/// "/a/b/" → "/a/b", "" → "/", "a" → "/a".
pub fn normalise_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// File contents, or `None` if the file does not exist. Reading
/// `cgroup.procs` of a threaded cgroup fails with EOPNOTSUPP: also `None`.
fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeCgroupfs, MIB};

    #[test]
    fn finds_cgroup2_in_mounts() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n";
        assert_eq!(
            cgroup2_mount_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // Hybrid layout, and an escaped space in the mount point.
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      none /run/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(mounts),
            Some(PathBuf::from("/run/my cgroups"))
        );
        // Mounted twice: the standard place wins.
        let mounts = "none /mnt/cg cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // v1 only.
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert_eq!(cgroup2_mount_in(mounts), None);
        let err = CgroupfsError::NotMounted {
            mounts: "/proc/self/mounts".into(),
        };
        assert!(err.to_string().starts_with("cgroup v2 is not mounted"));
        assert!(err.to_string().contains("--cgroup-root"));
    }

    #[test]
    fn unescapes_mount_fields() {
        assert_eq!(unescape_mount_field(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount_field(r"/x\09"), r"/x\09");
        assert_eq!(unescape_mount_field(r"/x\"), r"/x\");
    }

    #[test]
    fn reads_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cg");
        let fake = FakeCgroupfs::new(&root);
        fake.cgroup("/b/y", 2 * MIB, &[20, 21])
            .cgroup("/a", 7, &[])
            .cgroup("/b/x", MIB, &[])
            .cgroup("/c", 0, &[30]);
        fake.events("/c", false); // cgroup.events wins over the computed state

        let tree = CgroupTree::read(&root).unwrap();
        let paths: Vec<&str> = tree.nodes().iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["/", "/a", "/b", "/b/x", "/b/y", "/c"]);

        let ino = |p: &str| {
            std::fs::metadata(root.join(p.trim_start_matches('/')))
                .unwrap()
                .ino()
        };
        for n in tree.nodes() {
            assert_eq!(n.id, ino(&n.path), "{}", n.path);
        }
        let b = tree.find("/b").unwrap();
        let y = tree.find("/b/y/").unwrap();
        assert_eq!(tree.get(y).parent, Some(b));
        assert_eq!(tree.get(y).name(), "y");
        assert_eq!(tree.get(b).children, vec![tree.find("/b/x").unwrap(), y]);
        assert_eq!(tree.get(y).procs, vec![20, 21]);
        assert_eq!(tree.get(y).memory_current, Some(2 * MIB));
        assert_eq!(tree.get(b).memory_current, None); // no file written for /b
        assert_eq!(tree.root().memory_current, None);
        assert!(tree.root().is_root());

        let populated: Vec<bool> = tree.nodes().iter().map(|n| n.populated).collect();
        //                    /     /a     /b    /b/x   /b/y  /c (events say 0)
        assert_eq!(populated, [true, false, true, false, true, false]);

        assert_eq!(tree.subtree(b), b..b + 3);
        assert_eq!(tree.subtree(0), 0..tree.len());
        assert!(tree.in_subtree(b, y));
        assert!(!tree.in_subtree(y, b));
        assert_eq!(tree.find_id(tree.get(y).id), Some(y));
        assert_eq!(tree.find("/nope"), None);
        assert_eq!(
            tree.lookup("nope/").unwrap_err().to_string(),
            format!("no cgroup /nope under {}", root.display())
        );
    }

    #[test]
    fn bad_files_are_errors_with_paths() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeCgroupfs::new(dir.path());
        fake.cgroup("/a", 1, &[1]);
        std::fs::write(dir.path().join("a/memory.current"), "lots\n").unwrap();
        let err = CgroupTree::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("a/memory.current: cannot parse memory.current: \"lots\""),
            "{err}"
        );

        let err = CgroupTree::read(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, CgroupfsError::Io { .. }));
        let err = CgroupTree::read(&dir.path().join("cgroup.procs")).unwrap_err();
        assert!(matches!(err, CgroupfsError::NotADirectory { .. }));
    }

    #[test]
    fn a_hostile_subtree_does_not_fail_the_read() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeCgroupfs::new(dir.path());
        fake.cgroup("/a/ok", MIB, &[10])
            .cgroup("/b/unreadable", MIB, &[20])
            .cgroup("/c", 0, &[]);
        // A name that is not UTF-8, with a child: both left out.
        let bad = dir.path().join("a").join(OsStr::from_bytes(b"bad\xff"));
        fs::create_dir_all(bad.join("child")).unwrap();
        // Files that cannot be read (root reads anything, so a symlink
        // loop stands in for EACCES): taken as absent.
        let unreadable = dir.path().join("b/unreadable");
        for f in ["cgroup.procs", "memory.current"] {
            fs::remove_file(unreadable.join(f)).unwrap();
            symlink(f, unreadable.join(f)).unwrap();
        }
        // A cgroup whose files are gone (removed mid-walk): no problem.
        fs::create_dir(dir.path().join("c/bare")).unwrap();

        let tree = CgroupTree::read(dir.path()).unwrap();
        let paths: Vec<&str> = tree.nodes().iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/", "/a", "/a/ok", "/b", "/b/unreadable", "/c", "/c/bare"]
        );
        let ok = tree.get(tree.find("/a/ok").unwrap());
        assert_eq!(
            (ok.memory_current, ok.procs.as_slice()),
            (Some(MIB), &[10][..])
        );
        let u = tree.get(tree.find("/b/unreadable").unwrap());
        assert_eq!((u.memory_current, u.procs.len()), (None, 0));

        let problems: Vec<(&str, String)> = tree
            .problems()
            .iter()
            .map(|p| (p.path.as_str(), p.message.clone()))
            .collect();
        let eloop = Errno::ELOOP;
        assert_eq!(
            problems,
            [
                (
                    "/a/bad\u{fffd}",
                    "left out: its name is not UTF-8, so no rule can name it; it and its \
                     descendants get the settings of /a"
                        .to_owned()
                ),
                (
                    "/b/unreadable",
                    format!(
                        "cannot read memory.current ({eloop}), cgroup.procs ({eloop}); taken as \
                         absent (no memory usage or processes known)"
                    )
                ),
            ]
        );
    }

    #[test]
    fn a_cgroup_too_deep_to_open_is_left_out() {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeCgroupfs::new(dir.path());
        fake.cgroup("/deep", 0, &[]);
        // 30 levels of 200-byte names: past PATH_MAX, so built relative to
        // directory fds, as a delegated subtree's owner could.
        let name = "d".repeat(200);
        let open = |at: Option<&OwnedFd>, name: &str| {
            let fd = openat(
                at.map(AsRawFd::as_raw_fd),
                name,
                OFlag::O_DIRECTORY | OFlag::O_RDONLY,
                Mode::empty(),
            )
            .unwrap();
            // SAFETY: openat just returned this fd and nothing else owns it.
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        let mut fd = open(None, dir.path().join("deep").to_str().unwrap());
        for _ in 0..30 {
            mkdirat(
                Some(fd.as_raw_fd()),
                name.as_str(),
                Mode::from_bits_truncate(0o755),
            )
            .unwrap();
            fd = open(Some(&fd), &name);
        }

        let tree = CgroupTree::read(dir.path()).unwrap();
        let deepest = tree.nodes().last().unwrap();
        let len = |path: &str| dir.path().as_os_str().len() + path.len() + 1;
        assert!(len(&deepest.path) <= PATH_MAX);
        assert!(len(&deepest.path) + 201 > PATH_MAX);
        assert_eq!(tree.problems().len(), 1, "{:?}", tree.problems());
        let p = &tree.problems()[0];
        assert_eq!(p.path, format!("{}/{name}", deepest.path));
        assert!(
            p.message.starts_with("left out: its directory's path is ")
                && p.message.contains(&format!(
                    "over PATH_MAX (4096); it and its descendants get the settings of {}",
                    deepest.path
                )),
            "{}",
            p.message
        );
    }

    #[test]
    fn vanished_is_enoent_or_enodev() {
        let gone = |errno| is_gone(&io::Error::from_raw_os_error(errno));
        assert!(gone(nix::libc::ENOENT));
        assert!(gone(nix::libc::ENODEV));
        assert!(!gone(nix::libc::EACCES));
        assert_eq!(
            errno_text(&io::Error::from_raw_os_error(nix::libc::EACCES)),
            "EACCES: Permission denied"
        );
    }

    #[test]
    fn child_paths_policyd_can_handle() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            child_cgroup_path(root, "/", OsStr::new("a")),
            Ok("/a".to_owned())
        );
        assert_eq!(
            child_cgroup_path(root, "/a", OsStr::new("b")),
            Ok("/a/b".to_owned())
        );
        // 14 bytes of root, the path, a NUL: 4096 at most.
        let parent = format!("/{}", "p".repeat(4076));
        assert!(child_cgroup_path(root, &parent, OsStr::new("abc")).is_ok());
        let err = child_cgroup_path(root, &parent, OsStr::new("abcd")).unwrap_err();
        assert!(
            err.message.contains("is 4097 bytes, over PATH_MAX"),
            "{err:?}"
        );
    }

    /// The records a BPF walk would give for the tree at `root`: parents
    /// first, children in an order other than their names'.
    fn walk_of(root: &Path) -> Vec<TreeRecord> {
        let mut out = Vec::new();
        let mut stack = vec![(root.to_owned(), 0u64)];
        while let Some((dir, parent_id)) = stack.pop() {
            let id = fs::metadata(&dir).unwrap().ino();
            out.push(TreeRecord {
                id,
                parent_id,
                level: 0,
                name: dir.file_name().unwrap_or_default().to_owned(),
                has_xattrs: false,
            });
            for e in fs::read_dir(&dir).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push((e.path(), id));
                }
            }
        }
        out
    }

    #[test]
    fn a_walk_gives_the_tree_the_file_system_read_gives() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cg");
        let fake = FakeCgroupfs::new(&root);
        fake.cgroup("/b/y", MIB, &[])
            .cgroup("/a", 0, &[])
            .cgroup("/b/x", 0, &[])
            .cgroup("/c d/\\x2d", 0, &[]);
        fs::create_dir_all(root.join("a").join(OsStr::from_bytes(b"bad\xff/child"))).unwrap();

        let mut seen = Vec::new();
        let walked =
            CgroupTree::from_walk(&root, walk_of(&root), &mut |p| seen.push(p.to_owned())).unwrap();
        let listed = CgroupTree::read_with(&root, Detail::Rules, &mut |_| {}).unwrap();
        assert_eq!(walked.nodes(), listed.nodes());
        assert_eq!(walked.problems(), listed.problems());
        assert_eq!(walked.problems().len(), 1);
        let paths: Vec<&str> = walked.nodes().iter().map(|n| n.path.as_str()).collect();
        assert_eq!(seen, paths, "one call per cgroup, parents first");

        // A walk of another cgroup than the root is refused.
        let err = CgroupTree::from_walk(&root, walk_of(&root.join("b")), &mut |_| {});
        assert!(
            matches!(err, Err(CgroupfsError::WalkMismatch { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn normalises_paths() {
        assert_eq!(normalise_path(""), "/");
        assert_eq!(normalise_path("/"), "/");
        assert_eq!(normalise_path("a/b/"), "/a/b");
        assert_eq!(normalise_path("//a//b"), "/a/b");
    }
}
