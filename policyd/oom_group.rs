//! Rules with `oom_group = true`: policyd sets `memory.oom.group` to 1 on
//! the cgroups such a rule matches (itself, not what inherits from it), as
//! they are found and as they appear.
//!
//! With it set, the kernel's `oom_kill_process()` kills every task of that
//! cgroup, its descendants' included, whenever it kills one task below it:
//! when policyd's handler kills there (`bpf_oom_kill_process()` goes through
//! it) and when the kernel's own killer does. That is how a Kubernetes pod
//! dies whole: the handler ranks the pod's containers (the cgroups that hold
//! its processes), and the pod cgroup above them, grouped, takes them all.
//! Tasks with oom_score_adj -1000 are spared, as ever.
//!
//! policyd never sets it back to 0: a rule removed from the file leaves the
//! cgroups it grouped grouped until they are removed.

use std::fs;
use std::io;
use std::path::Path;

use crate::config::Config;
use crate::resolve::{Effective, Source};

/// Whether a rule with `oom_group = true` matched `e` itself.
pub fn wanted(config: &Config, e: &Effective) -> bool {
    match e.source {
        Source::Rule { index, .. } => config.rules.get(index).is_some_and(|r| r.oom_group),
        _ => false,
    }
}

/// Set `memory.oom.group` of the cgroup directory `dir`, unless it is set
/// already. Ok(true) if it wrote.
pub fn set(dir: &Path) -> io::Result<bool> {
    let file = dir.join("memory.oom.group");
    if fs::read_to_string(&file)?.trim() == "1" {
        return Ok(false);
    }
    fs::write(&file, "1")?;
    Ok(true)
}

/// [`set`] for cgroup `e` (mounted under `root`) if a rule wants it,
/// logging what it did or why it could not.
pub fn apply_one(config: &Config, root: &Path, e: &Effective) -> bool {
    if !wanted(config, e) {
        return false;
    }
    let dir = root.join(e.path.trim_start_matches('/'));
    match set(&dir) {
        Ok(wrote) => {
            if wrote {
                tracing::debug!("{}: memory.oom.group = 1 ({})", e.path, e.source);
            }
            wrote
        }
        // Removed meanwhile.
        Err(err) if err.kind() == io::ErrorKind::NotFound && !dir.exists() => false,
        Err(err) if err.raw_os_error() == Some(nix::errno::Errno::EROFS as i32) => {
            tracing::warn!(
                "{}: cannot set memory.oom.group ({err}) that {} asks for: the cgroup tree is \
                 read-only to policyd (a service with ProtectControlGroups=, or a container \
                 with /sys/fs/cgroup mounted read-only); an OOM kill there takes one task, not \
                 the whole cgroup",
                e.path,
                e.source
            );
            false
        }
        Err(err) => {
            tracing::warn!(
                "{}: cannot set memory.oom.group ({err}) that {} asks for: an OOM kill there \
                 takes one task, not the whole cgroup (is the memory controller enabled in its \
                 parent?)",
                e.path,
                e.source
            );
            false
        }
    }
}

/// [`apply_one`] for every cgroup of `effective`; logs how many it set.
pub fn apply(config: &Config, root: &Path, effective: &[Effective]) {
    let set = effective
        .iter()
        .filter(|e| apply_one(config, root, e))
        .count();
    if set > 0 {
        tracing::info!("memory.oom.group set on {set} cgroups (rules with oom_group = true)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::CgroupTree;
    use crate::resolve::resolve_tree;
    use crate::testing::FakeCgroupfs;

    #[test]
    fn sets_the_matched_cgroups_only() {
        let config = Config::parse(
            "[[rule]]\ncgroup = \"/kubepods/besteffort/*\"\npriority = 1\noom_group = true\n\n\
             [[rule]]\ncgroup = \"/kubepods/**\"\npriority = 100\n",
            "t.toml",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeCgroupfs::new(dir.path());
        fake.cgroup("/kubepods/besteffort/poda/c1", 1 << 20, &[10])
            .cgroup("/kubepods/burstable/podb/c2", 1 << 20, &[11]);
        let root = fake.root();
        let tree = CgroupTree::read(root).unwrap();
        let effective = resolve_tree(&config, &tree);
        for e in &effective {
            let file = root
                .join(e.path.trim_start_matches('/'))
                .join("memory.oom.group");
            fs::write(file, "0\n").unwrap();
        }
        apply(&config, root, &effective);
        let group = |p: &str| {
            fs::read_to_string(root.join(p).join("memory.oom.group"))
                .unwrap()
                .trim()
                .to_owned()
        };
        assert_eq!(group("kubepods/besteffort/poda"), "1");
        // Inherits the pod's priority, not its oom_group: the pod kills it.
        assert_eq!(group("kubepods/besteffort/poda/c1"), "0");
        assert_eq!(group("kubepods/besteffort"), "0");
        assert_eq!(group("kubepods/burstable/podb"), "0");
        // Set already: not written again.
        let pod = effective
            .iter()
            .find(|e| e.path == "/kubepods/besteffort/poda")
            .unwrap();
        assert!(!apply_one(&config, root, pod));
    }
}
