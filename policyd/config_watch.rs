//! `policyd load --watch-config`: reload when the configuration file is
//! replaced or rewritten, with no signal, as a Kubernetes pod needs.
//!
//! A ConfigMap mounted as a volume is a directory of symlinks:
//! `policies.toml -> ..data/policies.toml` and `..data -> ..<timestamp>`.
//! kubelet updates it by writing a new `..<timestamp>` directory and renaming
//! a new `..data` symlink over the old one, so the file's own inode never
//! changes and a watch on it would see nothing. So policyd watches the
//! directory that holds the path it was given, and reacts to
//!
//! * `..data` moved in (the ConfigMap swap);
//! * the file's own name moved in (an editor's or a tool's atomic rename)
//!   or closed after writing (an edit in place).
//!
//! One inotify fd, polled with the daemon's others: nothing wakes policyd
//! while the directory holds still.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use inotify::{EventMask, Inotify, WatchMask};

/// The symlink kubelet swaps when a ConfigMap volume changes.
pub const CONFIGMAP_DATA: &str = "..data";

pub struct ConfigWatcher {
    inotify: Inotify,
    name: OsString,
    buf: Vec<u8>,
}

impl ConfigWatcher {
    /// Watch the directory of `config` (as given, symlinks not followed).
    pub fn new(config: &Path) -> Result<Self> {
        let name = config
            .file_name()
            .with_context(|| format!("--watch-config: {} names no file", config.display()))?
            .to_owned();
        let dir = match config.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let inotify = Inotify::init().context("--watch-config: creating an inotify instance")?;
        let mask = WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::ONLYDIR;
        inotify
            .watches()
            .add(dir, mask)
            .with_context(|| format!("--watch-config: watching {}", dir.display()))?;
        Ok(ConfigWatcher {
            inotify,
            name,
            buf: vec![0; 4096],
        })
    }

    /// Whether the events queued so far (read without blocking) say the
    /// configuration may have changed.
    pub fn changed(&mut self) -> io::Result<bool> {
        let mut changed = false;
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(changed),
                Err(e) => return Err(e),
            };
            let mut any = false;
            for ev in events {
                any = true;
                changed |= concerns(&self.name, ev.mask, ev.name);
            }
            if !any {
                return Ok(changed);
            }
        }
    }
}

/// Whether an event on the watched directory concerns the file `name`.
fn concerns(name: &OsStr, mask: EventMask, event_name: Option<&OsStr>) -> bool {
    // Events were lost: assume the worst, a reload costs little.
    if mask.contains(EventMask::Q_OVERFLOW) {
        return true;
    }
    match event_name {
        Some(n) if n == CONFIGMAP_DATA => mask.contains(EventMask::MOVED_TO),
        Some(n) => n == name,
        None => false,
    }
}

impl AsFd for ConfigWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A ConfigMap volume as kubelet lays it out, at generation `gen`.
    fn configmap(dir: &Path, gen: u32, text: &str) {
        let data = dir.join(format!("..2026_11_29_00_00_0{gen}.000000000"));
        fs::create_dir(&data).unwrap();
        fs::write(data.join("policies.toml"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(data.file_name().unwrap(), &tmp).unwrap();
        fs::rename(&tmp, dir.join(CONFIGMAP_DATA)).unwrap();
        if !dir.join("policies.toml").exists() {
            symlink("..data/policies.toml", dir.join("policies.toml")).unwrap();
        }
    }

    #[test]
    fn sees_a_configmap_swap_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        configmap(dir.path(), 1, "default_priority = 1\n");
        let path = dir.path().join("policies.toml");
        let mut w = ConfigWatcher::new(&path).unwrap();
        assert!(!w.changed().unwrap(), "nothing happened yet");

        // Another file in the directory: not ours.
        fs::write(dir.path().join("other.toml"), "x").unwrap();
        assert!(!w.changed().unwrap());

        configmap(dir.path(), 2, "default_priority = 2\n");
        assert!(w.changed().unwrap(), "the ..data swap");
        assert_eq!(fs::read_to_string(&path).unwrap(), "default_priority = 2\n");
        assert!(!w.changed().unwrap(), "read once");
    }

    #[test]
    fn sees_a_plain_file_rewritten_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.toml");
        fs::write(&path, "default_priority = 1\n").unwrap();
        let mut w = ConfigWatcher::new(&path).unwrap();
        fs::write(&path, "default_priority = 2\n").unwrap();
        assert!(w.changed().unwrap(), "written in place");
        let new = dir.path().join(".policies.toml.new");
        fs::write(&new, "default_priority = 3\n").unwrap();
        // The temporary file's own close is about another name.
        assert!(!w.changed().unwrap());
        fs::rename(&new, &path).unwrap();
        assert!(w.changed().unwrap(), "renamed over");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let err = ConfigWatcher::new(Path::new("/nonexistent-policyd/p.toml"))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("watching /nonexistent-policyd"),
            "{err:#}"
        );
    }
}
