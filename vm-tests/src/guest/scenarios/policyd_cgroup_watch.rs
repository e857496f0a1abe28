//! The two cgroup watchers agree: one fanotify mark on the cgroup2 superblock (what
//! policyd uses) and one inotify watch per cgroup (its fallback) report the same
//! cgroups made, removed and changed, on one real tree, and both end with the truth.
//!
//! Both start before the tree /cw is made, and name cgroups by id as policyd does
//! (its id → path map, from the tree read and the changes applied since). Then:
//! a nested mkdir -p in one go (children made before any event is read), names systemd
//! escapes, unicode and spaces, one that is not UTF-8 (left out by both, with its
//! children); an xattr set and one removed, a chown; rmdirs, and the same name
//! removed and made again (fanotify merges those events and must still end right).
//! Then 300 cgroups in a burst. Changes are applied to a set of paths per watcher, as
//! the daemon applies them; the two sets, and the directories there, must be equal.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use policyd::cgroupfs::{CgroupTree, Detail};
use policyd::watch::{CgroupWatcher, Change};
use rustix::fs::XattrFlags;

use crate::guest::util::Cgroup;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-cgroup-watch", run).timeout_s(300)
}

const ROOT: &str = "/sys/fs/cgroup";
const BURST: usize = 300;

/// What one watcher has reported, applied as the daemon applies it.
#[derive(Default)]
struct Seen {
    cgroups: BTreeSet<String>,
    /// Id → path, as the daemon's names.
    ids: HashMap<u64, String>,
    attrib: BTreeSet<String>,
    overflows: usize,
}

impl Seen {
    fn apply(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Created(p) => {
                    if let Ok(m) = fs::symlink_metadata(format!("{ROOT}{p}")) {
                        self.ids.insert(m.ino(), p.clone());
                    }
                    self.cgroups.insert(p);
                }
                Change::Removed(p) => {
                    self.ids.retain(|_, q| *q != p);
                    self.cgroups.remove(&p);
                }
                Change::Attrib(p) => {
                    self.attrib.insert(p);
                }
                Change::Overflow => self.overflows += 1,
            }
        }
    }

    /// The cgroups below `top` it knows.
    fn below(&self, top: &str) -> BTreeSet<String> {
        let prefix = format!("{top}/");
        self.cgroups
            .iter()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// Reads both watchers until neither has anything more for a while.
fn drain(watchers: &mut [(&str, CgroupWatcher, Seen)]) -> Result<()> {
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) {
        for (name, w, seen) in watchers.iter_mut() {
            let ids = &seen.ids;
            let changes = w
                .read(&|id| ids.get(&id).cloned())
                .with_context(|| format!("reading the {name} watcher"))?;
            if !changes.is_empty() {
                quiet_since = Instant::now();
            }
            seen.apply(changes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The cgroup directories below `dir`, as paths relative to the mount.
fn truth(dir: &Path, out: &mut BTreeSet<String>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            let p = e.path();
            if let Some(rel) = p.strip_prefix(ROOT).ok().and_then(|r| r.to_str()) {
                out.insert(format!("/{rel}"));
                truth(&p, out)?;
            }
        }
    }
    Ok(())
}

fn check(watchers: &[(&str, CgroupWatcher, Seen)], top: &Cgroup, when: &str) -> Result<()> {
    let mut real = BTreeSet::new();
    truth(top.dir(), &mut real)?;
    // The non-UTF-8 name and its children are no cgroups to either watcher.
    real.retain(|p| !p.contains("/bad"));
    for (name, _, seen) in watchers {
        ensure!(seen.overflows == 0, "the {name} watcher overflowed {when}");
        let known = seen.below(&top.path());
        ensure!(
            known == real,
            "{when}, the {name} watcher knows {} cgroups below {}, there are {}: missing \
             {:?}, extra {:?}",
            known.len(),
            top.path(),
            real.len(),
            real.difference(&known).collect::<Vec<_>>(),
            known.difference(&real).collect::<Vec<_>>()
        );
    }
    let (a, b) = (&watchers[0].2, &watchers[1].2);
    ensure!(
        a.attrib == b.attrib,
        "{when}, attribute changes differ: {} {:?}, {} {:?}",
        watchers[0].0,
        a.attrib,
        watchers[1].0,
        b.attrib
    );
    println!(
        "{when}: both watchers know the {} cgroups below {}",
        real.len(),
        top.path()
    );
    Ok(())
}

fn run() -> Result<()> {
    let root = Path::new(ROOT);
    let fan = CgroupWatcher::new(root).context("the fanotify watcher")?;
    ensure!(
        fan.kind() == "fanotify",
        "on cgroup2 as root policyd's watcher is {}, not fanotify",
        fan.kind()
    );
    let mut ino = CgroupWatcher::inotify(root).context("the inotify watcher")?;
    let tree = CgroupTree::read_with(root, Detail::Rules, &mut |p| {
        ino.watch(p);
    })?;
    let mut watchers = [
        ("fanotify", fan, Seen::default()),
        ("inotify", ino, Seen::default()),
    ];
    for (_, _, seen) in watchers.iter_mut() {
        seen.cgroups = tree.nodes().iter().map(|n| n.path.clone()).collect();
        seen.ids = tree
            .nodes()
            .iter()
            .map(|n| (n.id, n.path.clone()))
            .collect();
    }

    let top = Cgroup::create("cw")?;
    let dir = |rel: &str| top.dir().join(rel);
    fs::create_dir_all(dir("a/b/c/d")).context("mkdir -p /cw/a/b/c/d")?;
    for rel in [
        r"system.slice",
        r"system.slice/systemd-journald\x2dvarlink.socket",
        "ünïcödé 日本",
        "with space",
        "gone",
        "again",
    ] {
        fs::create_dir(dir(rel)).with_context(|| format!("creating /cw/{rel}"))?;
    }
    let bad = top.dir().join(OsStr::from_bytes(b"bad\xff"));
    fs::create_dir_all(bad.join("below")).context("creating a non-UTF-8 cgroup")?;
    drain(&mut watchers)?;
    check(&watchers, &top, "after the odd tree")?;

    // On cgroups both know (inotify watches a new cgroup only once it reads its
    // mkdir: a change made before that is no event, and policyd reads the xattrs
    // when it adopts the cgroup).
    rustix::fs::setxattr(dir("a/b"), "user.oomd_avoid", b"1", XattrFlags::empty())?;
    rustix::fs::setxattr(
        dir("with space"),
        "trusted.policyd.priority",
        b"5",
        XattrFlags::empty(),
    )?;
    rustix::fs::removexattr(dir("with space"), "trusted.policyd.priority")?;
    rustix::fs::chown(
        dir("system.slice"),
        Some(rustix::fs::Uid::from_raw(1000)),
        None,
    )?;
    drain(&mut watchers)?;
    check(&watchers, &top, "after the xattr and owner changes")?;
    for want in ["/cw/a/b", "/cw/with space", "/cw/system.slice"] {
        for (name, _, seen) in &watchers {
            ensure!(
                seen.attrib.contains(want),
                "the {name} watcher did not report the attribute change of {want}: {:?}",
                seen.attrib
            );
        }
    }

    fs::remove_dir(dir("gone"))?;
    fs::remove_dir(dir("again"))?;
    fs::create_dir(dir("again"))?;
    fs::remove_dir(dir("a/b/c/d"))?;
    drain(&mut watchers)?;
    check(&watchers, &top, "after removing some and making one again")?;

    let burst = top.child("burst")?;
    let t = Instant::now();
    for i in 0..BURST {
        fs::create_dir(burst.dir().join(format!("pod{i:03}")))?;
        if i % 3 == 0 {
            fs::create_dir(burst.dir().join(format!("pod{i:03}/ctr")))?;
        }
    }
    println!(
        "{BURST} cgroups (and {} below them) in {:.2} s",
        BURST.div_ceil(3),
        t.elapsed().as_secs_f64()
    );
    drain(&mut watchers)?;
    check(&watchers, &top, "after the burst")?;

    fs::remove_dir(bad.join("below"))?;
    fs::remove_dir(&bad)?;
    for i in 0..BURST {
        let pod = burst.dir().join(format!("pod{i:03}"));
        if i % 3 == 0 {
            fs::remove_dir(pod.join("ctr"))?;
        }
        fs::remove_dir(pod)?;
    }
    drain(&mut watchers)?;
    check(&watchers, &top, "after removing the burst")?;
    Ok(())
}
