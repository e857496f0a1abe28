//! Watching a cgroup2 hierarchy for cgroups that appear and disappear
//! (inotify on every cgroup directory, added as directories appear), and
//! for changes to a cgroup's xattrs or owner.
//!
//! setxattr(2) and removexattr(2) on cgroupfs go through the VFS like on any
//! file system: `__vfs_setxattr_noperm()` and `__vfs_removexattr_locked()`
//! (fs/xattr.c) call `fsnotify_xattr()`, an FS_ATTRIB event on the inode,
//! which inotify reports as IN_ATTRIB on the directory's own watch; chown(2)
//! reports it through `notify_change()`. Only SELinux's security label is
//! set behind the VFS's back (`kernfs_xattr_set()`), and policyd reads no
//! security.* xattr. Every cgroup2 mount, a container's included, shares one
//! superblock (`kernfs_test_super()` compares root and namespace tag, and
//! cgroup sets no tag), so a change through any of them reaches these watches.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

/// A change in the cgroup tree; paths are relative to the mount ("/a/b").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created(String),
    Removed(String),
    /// Its xattrs or owner may have changed.
    Attrib(String),
    /// The kernel dropped events: the caller must re-read the whole tree.
    Overflow,
}

pub struct CgroupWatcher {
    inotify: Inotify,
    root: PathBuf,
    dirs: HashMap<WatchDescriptor, String>,
    buf: Vec<u8>,
    warned_limit: bool,
}

use crate::cgroupfs::child_cgroup_path;

impl CgroupWatcher {
    /// A watcher of the hierarchy mounted at `root` that watches nothing
    /// yet: [`watch`](Self::watch) each cgroup as the tree is read (see
    /// [`crate::cgroupfs::CgroupTree::read_with`]), one walk for both.
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(CgroupWatcher {
            inotify: Inotify::init()?,
            root: root.to_owned(),
            dirs: HashMap::new(),
            buf: vec![0; 64 * 1024],
            warned_limit: false,
        })
    }

    /// Watch the cgroup at `path` (not the cgroups below it). False if it
    /// has gone; a watch the kernel refuses (the watch limit) is logged once.
    pub fn watch(&mut self, path: &str) -> bool {
        match self.add_watch(path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                if !self.warned_limit {
                    tracing::warn!(
                        "cannot watch {path} for new cgroups ({e}; see \
                         /proc/sys/fs/inotify/max_user_watches): cgroups created below \
                         it inherit their parent's settings until the next reload"
                    );
                    self.warned_limit = true;
                }
                true
            }
        }
    }

    fn dir(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// The path of `parent`'s child `name`, or `None` (and a warning) when
    /// policyd cannot handle it: the tree read leaves it out too.
    fn child_path(&self, parent: &str, name: &OsStr) -> Option<String> {
        child_cgroup_path(&self.root, parent, name)
            .map_err(|problem| problem.warn_once())
            .ok()
    }

    fn add_watch(&mut self, path: &str) -> io::Result<()> {
        let mask = WatchMask::CREATE | WatchMask::DELETE | WatchMask::ATTRIB | WatchMask::ONLYDIR;
        let wd = self.inotify.watches().add(self.dir(path), mask)?;
        self.dirs.insert(wd, path.to_owned());
        Ok(())
    }

    /// Watch the cgroups below `path` (already watched), returning their
    /// paths, parents first. Cgroups that vanish meanwhile are skipped.
    fn add_tree(&mut self, path: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![path.to_owned()];
        while let Some(p) = stack.pop() {
            let Ok(entries) = fs::read_dir(self.dir(&p)) else {
                continue;
            };
            let mut children: Vec<String> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| self.child_path(&p, &e.file_name()))
                .collect();
            children.sort();
            for c in children.into_iter().rev() {
                if self.watch(&c) {
                    stack.push(c);
                }
            }
            if p != path {
                found.push(p);
            }
        }
        // Depth-first with a stack visits parents before children already,
        // but siblings come out reversed: sort keeps parents first.
        found.sort();
        found
    }

    /// Watch the new cgroup at `path` and return it, and the cgroups made
    /// below it before the watch, as created (parents first); nothing if it
    /// has gone again.
    pub fn adopt(&mut self, path: String) -> Vec<Change> {
        if !self.watch(&path) {
            return Vec::new();
        }
        // A directory's link count is 2 + its subdirectories (kernfs, like
        // tmpfs), so a new leaf, the common case, need not be listed.
        let below = match fs::symlink_metadata(self.dir(&path)) {
            Ok(m) if m.nlink() <= 2 => Vec::new(),
            Ok(_) => self.add_tree(&path),
            Err(_) => return Vec::new(),
        };
        let mut changes = vec![Change::Created(path)];
        changes.extend(below.into_iter().map(Change::Created));
        changes
    }

    /// The changes queued so far (non-blocking). New cgroups are watched
    /// before they are returned; a new cgroup's existing children (created
    /// before its watch) are returned too.
    pub fn read(&mut self) -> io::Result<Vec<Change>> {
        let mut changes = Vec::new();
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let events: Vec<(WatchDescriptor, EventMask, Option<OsString>)> =
                match self.inotify.read_events(&mut buf) {
                    Ok(events) => events
                        .map(|e| (e.wd, e.mask, e.name.map(OsStr::to_owned)))
                        .collect(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
                    Err(e) => {
                        self.buf = buf;
                        return Err(e);
                    }
                };
            self.buf = buf;
            if events.is_empty() {
                return Ok(changes);
            }
            for (wd, mask, name) in events {
                if mask.contains(EventMask::Q_OVERFLOW) {
                    changes.push(Change::Overflow);
                    continue;
                }
                if mask.contains(EventMask::IGNORED) {
                    self.dirs.remove(&wd);
                    continue;
                }
                // The directory's own watch (no name); the same event on a
                // child, named in its parent's watch, is left to the child's.
                if mask.contains(EventMask::ATTRIB) {
                    if let (None, Some(path)) = (&name, self.dirs.get(&wd)) {
                        changes.push(Change::Attrib(path.clone()));
                    }
                    continue;
                }
                let (Some(parent), Some(name), true) = (
                    self.dirs.get(&wd).cloned(),
                    name,
                    mask.contains(EventMask::ISDIR),
                ) else {
                    continue;
                };
                let Some(path) = self.child_path(&parent, &name) else {
                    continue;
                };
                if mask.contains(EventMask::CREATE) {
                    changes.extend(self.adopt(path));
                } else if mask.contains(EventMask::DELETE) {
                    changes.push(Change::Removed(path));
                }
            }
        }
    }

    /// Number of directories watched.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

impl AsFd for CgroupWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::{CgroupTree, Detail};

    /// A watcher of everything below `root`, set up as the daemon does.
    fn watch_all(root: &Path) -> CgroupWatcher {
        let mut w = CgroupWatcher::new(root).unwrap();
        CgroupTree::read_with(root, Detail::Rules, &mut |path| {
            w.watch(path);
        })
        .unwrap();
        w
    }

    /// inotify works on any directory tree, so a temporary one stands in
    /// for cgroupfs.
    #[test]
    fn reports_created_and_removed_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        let mut w = watch_all(root);
        assert_eq!(w.len(), 3);
        assert_eq!(w.read().unwrap(), []);

        fs::create_dir(root.join("a/c")).unwrap();
        fs::write(root.join("a/file"), "x").unwrap(); // not a cgroup: ignored
                                                      // A directory with children created before its watch exists.
        fs::create_dir_all(root.join("n/m/k")).unwrap();
        let changes = w.read().unwrap();
        assert_eq!(changes[0], Change::Created("/a/c".into()));
        assert!(
            changes.contains(&Change::Created("/n".into())),
            "{changes:?}"
        );
        assert!(
            changes.contains(&Change::Created("/n/m".into())),
            "{changes:?}"
        );
        assert!(
            changes.contains(&Change::Created("/n/m/k".into())),
            "{changes:?}"
        );
        let pos = |p: &str| changes.iter().position(|c| *c == Change::Created(p.into()));
        assert!(pos("/n") < pos("/n/m") && pos("/n/m") < pos("/n/m/k"));

        fs::remove_dir(root.join("a/b")).unwrap();
        let changes = w.read().unwrap();
        assert_eq!(changes, [Change::Removed("/a/b".into())]);

        // A change of a directory's attributes, once (not again from its
        // parent's watch); a file's in it is no cgroup's.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("a/c"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(root.join("a/file"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(w.read().unwrap(), [Change::Attrib("/a/c".into())]);

        // New directories below a new one are watched too.
        fs::create_dir(root.join("n/m/k/deep")).unwrap();
        assert_eq!(w.read().unwrap(), [Change::Created("/n/m/k/deep".into())]);

        // A name no rule can hold (not UTF-8) is left out, with its
        // children, as the tree read leaves it out; the rest goes on.
        use std::os::unix::ffi::OsStrExt;
        let bad = root.join("a").join(OsStr::from_bytes(b"x\xff"));
        fs::create_dir_all(bad.join("below")).unwrap();
        fs::create_dir(root.join("a/fine")).unwrap();
        assert_eq!(w.read().unwrap(), [Change::Created("/a/fine".into())]);
    }
}
