//! Cgroup ids to paths, for events that carry ids: cgroups removed since
//! keep their names a while, so a late event about one still names it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::cgroupfs::CgroupTree;

/// How many removed cgroups keep their name for late events. A cgroup
/// removed longer ago is logged as "cgroup#<id>": its name is forgotten so
/// that a node churning pods does not grow policyd without bound.
pub const REMOVED_NAMES: usize = 4096;

pub struct CgroupNames {
    root: PathBuf,
    /// Id → path, including the last REMOVED_NAMES removed cgroups (ids are
    /// never reused).
    names: HashMap<u64, String>,
    /// Removed cgroups still in `names`, oldest first.
    removed: VecDeque<u64>,
}

impl CgroupNames {
    pub fn from_tree(tree: &CgroupTree) -> Self {
        CgroupNames {
            root: tree.root_dir().to_owned(),
            names: tree
                .nodes()
                .iter()
                .map(|n| (n.id, n.path.clone()))
                .collect(),
            removed: VecDeque::new(),
        }
    }

    /// The tree was read again: cgroups gone since keep their names a
    /// while, as if removed now.
    pub fn refresh(&mut self, tree: &CgroupTree) {
        let live: HashMap<u64, &str> = tree.nodes().iter().map(|n| (n.id, &*n.path)).collect();
        let gone: Vec<u64> = self
            .names
            .keys()
            .filter(|id| !live.contains_key(id) && !self.removed.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.forget_later(id);
        }
        // Most are unchanged: keep their strings rather than churn the heap.
        for (id, path) in live {
            if self.names.get(&id).map(String::as_str) != Some(path) {
                self.names.insert(id, path.to_owned());
            }
        }
    }

    pub fn insert(&mut self, id: u64, path: &str) {
        self.names.insert(id, path.to_owned());
    }

    /// Cgroup `id` was removed: keep its name for the next REMOVED_NAMES removals.
    pub fn forget_later(&mut self, id: u64) {
        self.removed.push_back(id);
        if self.removed.len() > REMOVED_NAMES {
            if let Some(old) = self.removed.pop_front() {
                self.names.remove(&old);
            }
        }
    }

    /// The path of cgroup `id`, if known (removed ones a while).
    pub fn get(&self, id: u64) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// The path of cgroup `id`; re-reads the tree once on a miss.
    pub fn name(&mut self, id: u64) -> String {
        if let Some(p) = self.names.get(&id) {
            return p.clone();
        }
        if let Ok(tree) = CgroupTree::read(&self.root) {
            for n in tree.nodes() {
                self.names.entry(n.id).or_insert_with(|| n.path.clone());
            }
        }
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("cgroup#{id}"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeCgroupfs;

    #[test]
    fn removed_cgroups_keep_their_names_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let cg = FakeCgroupfs::new(dir.path());
        cg.cgroup("/a", 0, &[]);
        let tree = CgroupTree::read(cg.root()).unwrap();
        let mut names = CgroupNames::from_tree(&tree);
        let first = 1_000_000;
        for id in first..first + REMOVED_NAMES as u64 + 1 {
            names.insert(id, &format!("/gone{id}"));
            names.forget_later(id);
        }
        // The oldest removal is forgotten, the later ones still named.
        assert_eq!(names.name(first), format!("cgroup#{first}"));
        assert_eq!(names.name(first + 1), format!("/gone{}", first + 1));
        assert_eq!(names.names.len(), REMOVED_NAMES + tree.len());

        // A cgroup gone by the next read of the tree counts as removed then.
        let a = tree.get(tree.find("/a").unwrap()).id;
        std::fs::remove_dir_all(cg.root().join("a")).unwrap();
        let tree = CgroupTree::read(cg.root()).unwrap();
        names.refresh(&tree);
        assert_eq!(names.removed.back(), Some(&a));
        assert_eq!(names.name(a), "/a");
    }
}
