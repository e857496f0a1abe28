//! Watching a cgroup2 hierarchy for cgroups that appear and disappear, and
//! for changes to a cgroup's xattrs or owner.
//!
//! On cgroup2 one fanotify mark on the superblock reports every cgroup: a
//! mkdir or rmdir as its parent's file handle and the name, an attribute
//! change as the cgroup's own handle. A kernfs handle is the node's id,
//! which is the cgroup id: the caller's id → path map names it, no path is
//! opened and no second map is kept. The mark is
//! placed before the tree is read, so nothing made meanwhile is missed, and
//! it costs the same at ten cgroups as at ten thousand. Elsewhere (a test's
//! directory tree) or where fanotify is refused (no CAP_SYS_ADMIN, a kernel
//! without FAN_REPORT_DFID_NAME), one inotify watch per cgroup directory,
//! added as the tree is read and as directories appear.
//!
//! setxattr(2) and removexattr(2) on cgroupfs go through the VFS like on any
//! file system: `__vfs_setxattr_noperm()` and `__vfs_removexattr_locked()`
//! (fs/xattr.c) call `fsnotify_xattr()`, an FS_ATTRIB event on the inode,
//! which both report on the directory itself; chown(2) reports it through
//! `notify_change()`. Only SELinux's security label is set behind the VFS's
//! back (`kernfs_xattr_set()`), and policyd reads no security.* xattr. Every
//! cgroup2 mount, a container's included, shares one superblock
//! (`kernfs_test_super()` compares root and namespace tag, and cgroup sets
//! no tag), so a change through any of them reaches the mark or the watches.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::libc;

use crate::cgroupfs::child_cgroup_path;

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
    root: PathBuf,
    how: How,
    buf: Vec<u8>,
    warned_limit: bool,
}

enum How {
    /// The fanotify group with its one mark.
    Fanotify(OwnedFd),
    Inotify {
        inotify: Inotify,
        dirs: HashMap<WatchDescriptor, String>,
    },
}

/// A fanotify group with one mark on the file system mounted at `root`, for
/// mkdir, rmdir and attribute changes of directories.
fn fanotify_mark(root: &Path) -> io::Result<OwnedFd> {
    let flags =
        libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME;
    // SAFETY: plain syscall; a valid fd it returns is ours to own.
    let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fanotify_init returned a new fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(root.as_os_str().as_bytes())?;
    let mask = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_ATTRIB | libc::FAN_ONDIR;
    // SAFETY: fd is a fanotify group, path a NUL-terminated string.
    let ret = unsafe {
        libc::fanotify_mark(
            fd.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            mask,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// What one fanotify event says, as far as policyd reads it: the mask, the
/// directory's kernfs id (the parent for a mkdir or rmdir, the directory
/// itself for an attribute change) and the name of a mkdir or rmdir ("."
/// for an attribute change).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FanEvent {
    mask: u64,
    dir: Option<u64>,
    name: Option<OsString>,
}

/// The file handle type kernfs encodes: 8 bytes, the node's id.
const FILEID_KERNFS: i32 = 0xfe;

/// The events in `buf` (one read(2) of a fanotify group made with
/// FAN_REPORT_DFID_NAME). Records it cannot read are left out.
fn fan_events(buf: &[u8]) -> Vec<FanEvent> {
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_ne_bytes(x.try_into().expect("4 bytes")))
    };
    let mut events = Vec::new();
    let mut rest = buf;
    // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8,
    // metadata_len u16, mask u64, fd i32, pid i32.
    while let (Some(event_len), Some(meta_len)) = (u32_at(rest, 0), u16_at(rest, 6)) {
        let (event_len, meta_len) = (event_len as usize, usize::from(meta_len));
        if event_len < 24 || meta_len < 24 || event_len > rest.len() || meta_len > event_len {
            break;
        }
        let event = &rest[..event_len];
        let mask = u64::from_ne_bytes(event[8..16].try_into().expect("8 bytes"));
        let mut ev = FanEvent {
            mask,
            dir: None,
            name: None,
        };
        // Info records: type u8, pad u8, len u16; then fsid (8 bytes),
        // struct file_handle (handle_bytes u32, handle_type i32, bytes) and,
        // for DFID_NAME, the NUL-terminated name.
        let mut at = meta_len;
        while let (Some(&kind), Some(len)) = (event.get(at), u16_at(event, at + 2)) {
            let len = usize::from(len);
            let Some(record) = event.get(at..at + len).filter(|_| len >= 4) else {
                break;
            };
            let dfid = u32::from(libc::FAN_EVENT_INFO_TYPE_DFID);
            let dfid_name = u32::from(libc::FAN_EVENT_INFO_TYPE_DFID_NAME);
            if u32::from(kind) == dfid || u32::from(kind) == dfid_name {
                let bytes = u32_at(record, 12).map(|b| b as usize);
                let kind_of_handle = u32_at(record, 16).map(|t| t as i32);
                if let (Some(8), Some(FILEID_KERNFS)) = (bytes, kind_of_handle) {
                    ev.dir = record
                        .get(20..28)
                        .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
                }
                if u32::from(kind) == dfid_name {
                    let name = bytes.and_then(|b| record.get(20 + b..)).unwrap_or_default();
                    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                    ev.name = Some(OsString::from_vec(name[..end].to_vec()));
                }
            }
            at += len;
        }
        events.push(ev);
        rest = &rest[event_len..];
    }
    events
}

impl CgroupWatcher {
    /// A watcher of the hierarchy mounted at `root`. On cgroup2 it watches
    /// every cgroup from now on; elsewhere it watches nothing yet:
    /// [`watch`](Self::watch) each cgroup as the tree is read (see
    /// [`crate::cgroupfs::CgroupTree::read_with`]), one walk for both.
    pub fn new(root: &Path) -> io::Result<Self> {
        let how = if crate::tree_walk::is_cgroup2(root) {
            match fanotify_mark(root) {
                Ok(fd) => Some(How::Fanotify(fd)),
                Err(e) => {
                    tracing::info!(
                        "fanotify refused a mark on {} ({e}): watching each cgroup with                          inotify instead (slower to start; see                          /proc/sys/fs/inotify/max_user_watches)",
                        root.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        match how {
            Some(how) => Ok(CgroupWatcher::with(root, how)),
            None => CgroupWatcher::inotify(root),
        }
    }

    /// A watcher that watches each cgroup with inotify, on cgroup2 too: the
    /// fallback, and what the scenario comparing the two runs.
    pub fn inotify(root: &Path) -> io::Result<Self> {
        let how = How::Inotify {
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
        };
        Ok(CgroupWatcher::with(root, how))
    }

    fn with(root: &Path, how: How) -> Self {
        CgroupWatcher {
            root: root.to_owned(),
            how,
            buf: vec![0; 64 * 1024],
            warned_limit: false,
        }
    }

    /// How it watches, for the log: "fanotify" or "inotify".
    pub fn kind(&self) -> &'static str {
        match self.how {
            How::Fanotify(_) => "fanotify",
            How::Inotify { .. } => "inotify",
        }
    }

    /// Whether cgroups made between the tree read and their watch can be
    /// missed (inotify: each watch comes after its cgroup was listed).
    pub fn watches_after_reading(&self) -> bool {
        matches!(self.how, How::Inotify { .. })
    }

    /// Watch the cgroup at `path` (not the cgroups below it): inotify only,
    /// the mark covers every cgroup. False if it has gone; a watch the kernel
    /// refuses (the watch limit) is logged once.
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
        let dir = self.dir(path);
        if let How::Inotify { inotify, dirs } = &mut self.how {
            let mask =
                WatchMask::CREATE | WatchMask::DELETE | WatchMask::ATTRIB | WatchMask::ONLYDIR;
            let wd = inotify.watches().add(dir, mask)?;
            dirs.insert(wd, path.to_owned());
        }
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

    /// Watch the new cgroup at `path` (inotify) and return it, and the
    /// cgroups made below it before the watch, as created (parents first);
    /// nothing if it has gone again.
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

    /// The changes queued so far (non-blocking). `path_of` names a cgroup
    /// by id as of the changes applied before (fanotify events carry ids).
    /// (inotify) New cgroups are watched before they are returned, and a new
    /// cgroup's existing children (created before its watch) are returned
    /// too.
    pub fn read(&mut self, path_of: &dyn Fn(u64) -> Option<String>) -> io::Result<Vec<Change>> {
        let mut changes = Vec::new();
        // Cgroups made in this read, not applied yet: parents of later events.
        let mut made = HashMap::new();
        loop {
            let read = match self.how {
                How::Fanotify(_) => self.read_fanotify(path_of, &mut made),
                How::Inotify { .. } => self.read_inotify(),
            };
            let batch = match read {
                Ok(batch) => batch,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(changes),
                Err(e) => return Err(e),
            };
            if batch.is_empty() {
                return Ok(changes);
            }
            changes.extend(batch);
        }
    }

    fn read_fanotify(
        &mut self,
        path_of: &dyn Fn(u64) -> Option<String>,
        made: &mut HashMap<u64, String>,
    ) -> io::Result<Vec<Change>> {
        let n = nix::unistd::read(self.as_fd().as_raw_fd(), &mut self.buf)?;
        let events = fan_events(&self.buf[..n]);
        let mut changes = Vec::new();
        for ev in events {
            if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
                changes.push(Change::Overflow);
                continue;
            }
            // Files (chown of cgroup.procs on delegation) are no cgroups.
            if ev.mask & libc::FAN_ONDIR == 0 {
                continue;
            }
            let dir = ev
                .dir
                .and_then(|id| made.get(&id).cloned().or_else(|| path_of(id)));
            let Some(dir) = dir else {
                // Under a cgroup the tree read left out (its name), or gone.
                continue;
            };
            // An event on a directory itself names it ".".
            let Some(name) = ev.name.filter(|n| n.as_bytes() != b".") else {
                if ev.mask & libc::FAN_ATTRIB != 0 {
                    changes.push(Change::Attrib(dir));
                }
                continue;
            };
            let Some(path) = self.child_path(&dir, &name) else {
                continue;
            };
            // Queued events of one name merge: a mkdir and rmdir of it come
            // as one, in an order it does not tell. Removed, then created if
            // it is there now, is right whatever happened.
            if ev.mask & libc::FAN_DELETE != 0 {
                made.retain(|_, p| *p != path);
                changes.push(Change::Removed(path.clone()));
            }
            if ev.mask & libc::FAN_CREATE != 0 {
                // Its id, for the events of cgroups made below it.
                if let Ok(m) = fs::symlink_metadata(self.dir(&path)) {
                    made.insert(m.ino(), path.clone());
                    changes.push(Change::Created(path));
                }
            }
        }
        Ok(changes)
    }

    fn read_inotify(&mut self) -> io::Result<Vec<Change>> {
        let How::Inotify { inotify, dirs } = &mut self.how else {
            unreachable!("read_inotify reads an inotify instance");
        };
        let mut buf = std::mem::take(&mut self.buf);
        let events: io::Result<Vec<(WatchDescriptor, EventMask, Option<OsString>)>> =
            inotify.read_events(&mut buf).map(|events| {
                events
                    .map(|e| (e.wd, e.mask, e.name.map(OsStr::to_owned)))
                    .collect()
            });
        self.buf = buf;
        let mut named = Vec::new();
        for (wd, mask, name) in events? {
            if mask.contains(EventMask::Q_OVERFLOW) {
                named.push((mask, None, None));
                continue;
            }
            if mask.contains(EventMask::IGNORED) {
                dirs.remove(&wd);
                continue;
            }
            named.push((mask, dirs.get(&wd).cloned(), name));
        }
        let mut changes = Vec::new();
        for (mask, dir, name) in named {
            if mask.contains(EventMask::Q_OVERFLOW) {
                changes.push(Change::Overflow);
                continue;
            }
            // The directory's own watch (no name); the same event on a
            // child, named in its parent's watch, is left to the child's.
            if mask.contains(EventMask::ATTRIB) {
                if let (None, Some(path)) = (&name, dir) {
                    changes.push(Change::Attrib(path));
                }
                continue;
            }
            let (Some(parent), Some(name), true) = (dir, name, mask.contains(EventMask::ISDIR))
            else {
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
        Ok(changes)
    }

    /// Directories an inotify watcher watches.
    #[cfg(test)]
    fn inotify_watches(&self) -> usize {
        match &self.how {
            How::Fanotify(_) => 0,
            How::Inotify { dirs, .. } => dirs.len(),
        }
    }
}

impl AsFd for CgroupWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.how {
            How::Fanotify(fd) => fd.as_fd(),
            How::Inotify { inotify, .. } => inotify.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::{CgroupTree, Detail};

    /// One event as the kernel writes it: metadata, then a DFID or
    /// DFID_NAME record with a kernfs handle, padded to 4 bytes.
    fn fan_record(mask: u64, dir: Option<u64>, name: Option<&[u8]>) -> Vec<u8> {
        let mut info = Vec::new();
        if let Some(id) = dir {
            let kind = if name.is_some() {
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            } else {
                libc::FAN_EVENT_INFO_TYPE_DFID
            };
            let mut body = vec![0u8; 8]; // fsid
            body.extend(8u32.to_ne_bytes());
            body.extend(FILEID_KERNFS.to_ne_bytes());
            body.extend(id.to_ne_bytes());
            if let Some(name) = name {
                body.extend(name);
                body.push(0);
            }
            while (body.len() + 4) % 4 != 0 {
                body.push(0);
            }
            info.extend([kind, 0]);
            info.extend(u16::try_from(body.len() + 4).unwrap().to_ne_bytes());
            info.extend(body);
        }
        let len = 24 + info.len();
        let mut ev = Vec::new();
        ev.extend(u32::try_from(len).unwrap().to_ne_bytes());
        ev.extend([libc::FANOTIFY_METADATA_VERSION, 0]);
        ev.extend(24u16.to_ne_bytes());
        ev.extend(mask.to_ne_bytes());
        ev.extend((-1i32).to_ne_bytes()); // FAN_NOFD
        ev.extend(1234i32.to_ne_bytes());
        ev.extend(info);
        ev
    }

    #[test]
    fn reads_kernfs_handles_and_names_from_fanotify_events() {
        let mkdir = libc::FAN_CREATE | libc::FAN_ONDIR;
        let attrib = libc::FAN_ATTRIB | libc::FAN_ONDIR;
        let mut buf = fan_record(mkdir, Some(5), Some(b"app.scope"));
        buf.extend(fan_record(attrib, Some(7), Some(b".")));
        buf.extend(fan_record(libc::FAN_Q_OVERFLOW, None, None));
        // A name of a length that needs no padding but the NUL's.
        buf.extend(fan_record(
            libc::FAN_DELETE | libc::FAN_ONDIR,
            Some(1),
            Some(b"abc"),
        ));
        let events = fan_events(&buf);
        let want = [
            FanEvent {
                mask: mkdir,
                dir: Some(5),
                name: Some("app.scope".into()),
            },
            FanEvent {
                mask: attrib,
                dir: Some(7),
                name: Some(".".into()),
            },
            FanEvent {
                mask: libc::FAN_Q_OVERFLOW,
                dir: None,
                name: None,
            },
            FanEvent {
                mask: libc::FAN_DELETE | libc::FAN_ONDIR,
                dir: Some(1),
                name: Some("abc".into()),
            },
        ];
        assert_eq!(events, want);
        // A read cut short, or a record that claims more than there is:
        // the whole events before it, and no panic.
        for cut in 0..buf.len() {
            let got = fan_events(&buf[..cut]);
            assert!(want.starts_with(&got), "cut at {cut}: {got:?}");
        }
        let mut bad = fan_record(mkdir, Some(5), Some(b"x"));
        bad[26] = 0xff; // the record's length, past the event
        assert_eq!(fan_events(&bad)[0].dir, None);
    }

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
        assert_eq!(w.inotify_watches(), 3);
        assert_eq!(w.read(&|_| None).unwrap(), []);

        fs::create_dir(root.join("a/c")).unwrap();
        fs::write(root.join("a/file"), "x").unwrap(); // not a cgroup: ignored
                                                      // A directory with children created before its watch exists.
        fs::create_dir_all(root.join("n/m/k")).unwrap();
        let changes = w.read(&|_| None).unwrap();
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
        let changes = w.read(&|_| None).unwrap();
        assert_eq!(changes, [Change::Removed("/a/b".into())]);

        // A change of a directory's attributes, once (not again from its
        // parent's watch); a file's in it is no cgroup's.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("a/c"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(root.join("a/file"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(w.read(&|_| None).unwrap(), [Change::Attrib("/a/c".into())]);

        // New directories below a new one are watched too.
        fs::create_dir(root.join("n/m/k/deep")).unwrap();
        assert_eq!(
            w.read(&|_| None).unwrap(),
            [Change::Created("/n/m/k/deep".into())]
        );

        // A name no rule can hold (not UTF-8) is left out, with its
        // children, as the tree read leaves it out; the rest goes on.
        use std::os::unix::ffi::OsStrExt;
        let bad = root.join("a").join(OsStr::from_bytes(b"x\xff"));
        fs::create_dir_all(bad.join("below")).unwrap();
        fs::create_dir(root.join("a/fine")).unwrap();
        assert_eq!(
            w.read(&|_| None).unwrap(),
            [Change::Created("/a/fine".into())]
        );
    }
}
