//! The cgroup tree as the policy object's BPF iterator walks it (`read_tree`
//! in bpf/policies/policyd.bpf.c): one read(2) for the whole hierarchy below
//! the cgroup2 mount, where [`crate::cgroupfs`] lists every cgroup directory
//! and asks each for its xattrs. [`crate::cgroupfs::CgroupTree::from_walk`]
//! builds the same tree from it, reading xattrs only where a cgroup has any.
//!
//! The records come through the `tree` ring buffer, sized before load from
//! the root's `cgroup.stat` ([`ring_bytes`]); a walk that does not fit in it
//! is an error, and the caller reads the tree from the file system instead.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::mem::{offset_of, size_of};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::{
    CgroupIterOpts, CgroupIterOrder, Iter, IterOpts, Link, Map, MapCore, RingBufferBuilder,
};

use crate::abi::{Pod, PolicydTreeRecord};

/// The iterator program and its ring buffer in the policy object.
pub const PROG: &str = "read_tree";
pub const RING: &str = "tree";

/// One cgroup of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRecord {
    pub id: u64,
    /// 0 for the walk's first cgroup when it is the hierarchy's root.
    pub parent_id: u64,
    pub level: u32,
    pub name: OsString,
    /// Any xattr at all (of any namespace): only these are worth a listxattr.
    pub has_xattrs: bool,
}

/// Bytes of one record up to its name.
const HEAD: usize = offset_of!(PolicydTreeRecord, name);

/// Ring buffer bytes for a walk of `cgroups` cgroups and half as many more
/// created before the next reload, at 128 bytes a record (names up to 88
/// bytes on average; systemd's scopes for containers run to about 80), as a
/// power of two. A walk that outgrows it falls back to the file system, with
/// a warning.
pub fn ring_bytes(cgroups: u64) -> u32 {
    let records = cgroups + cgroups / 2 + 512;
    let bytes = (records * 128).next_power_of_two();
    // Kernel page size, and below the ring buffer's 2^32 limit.
    bytes.clamp(64 * 1024, 1 << 31) as u32
}

/// Cgroups in the hierarchy below `root` (the root included), from its
/// `cgroup.stat`; `None` where `root` is not a cgroup2 mount (a fake tree).
pub fn cgroups_below(root: &Path) -> Option<u64> {
    if !is_cgroup2(root) {
        return None;
    }
    let stat = std::fs::read_to_string(root.join("cgroup.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("nr_descendants "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map(|n| n + 1)
}

pub fn is_cgroup2(root: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    statfs(root).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// The iterator attached to the cgroup mounted at `root`, walking it and its
/// descendants parents first.
pub struct TreeWalker {
    link: Link,
}

impl TreeWalker {
    /// `None` (and a debug line) where `root` is not a cgroup2 mount: fake
    /// trees in tests, which only the file system read can read.
    pub fn attach(obj: &mut libbpf_rs::Object, root: &Path) -> Result<Option<TreeWalker>> {
        if !is_cgroup2(root) {
            tracing::debug!(
                "{} is not a cgroup2 mount: its tree is read from the file system",
                root.display()
            );
            return Ok(None);
        }
        let prog = obj
            .progs_mut()
            .find(|p| p.name() == PROG)
            .with_context(|| format!("the BPF object has no program {PROG}"))?;
        let dir = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        let mut opts = CgroupIterOpts::from_fd(dir.as_fd());
        opts.order = CgroupIterOrder::DescendantsPre;
        let link = prog
            .attach_iter_with_opts(IterOpts::Cgroup(opts))
            .with_context(|| {
                format!(
                    "attaching the cgroup tree iterator to {} (this kernel needs \
                     CONFIG_CGROUPS and BPF iterators)",
                    root.display()
                )
            })?;
        Ok(Some(TreeWalker { link }))
    }

    /// Walk the tree once: its records, parents first, the walk's root first.
    pub fn walk(&self, ring: &Map<'_>) -> Result<Vec<TreeRecord>> {
        let mut records = Vec::new();
        let mut end: Option<u32> = None;
        let mut short = 0usize;
        {
            let mut builder = RingBufferBuilder::new();
            builder
                .add(ring, |data: &[u8]| {
                    match parse(data) {
                        Some(Ok(r)) => records.push(r),
                        Some(Err(dropped)) => end = Some(dropped),
                        None => short += 1,
                    }
                    0
                })
                .context("the policy's `tree` map is not a ring buffer")?;
            let ring = builder.build().context("reading the `tree` ring buffer")?;
            let mut iter = Iter::new(&self.link).context("starting a cgroup tree walk")?;
            // The walk writes nothing to the iterator itself: one read runs it all.
            let mut buf = [0u8; 64];
            loop {
                match iter.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("walking the cgroup tree"),
                }
            }
            ring.consume().context("reading the `tree` ring buffer")?;
        }
        if short > 0 {
            bail!("{short} tree records shorter than their header ({HEAD} bytes)");
        }
        match end {
            Some(0) => {}
            Some(dropped) => bail!(
                "{dropped} cgroups did not fit in the tree walk's ring buffer ({} bytes, sized \
                 at start-up; restart policyd to size it for this many cgroups)",
                ring.max_entries()
            ),
            None => bail!(
                "the tree walk did not end in its ring buffer ({} bytes, full; restart policyd \
                 to size it for this many cgroups)",
                ring.max_entries()
            ),
        }
        if records.is_empty() {
            bail!("the tree walk found no cgroup, not even its root");
        }
        Ok(records)
    }
}

/// A record, `Err(dropped)` for the end of the walk, `None` if too short.
fn parse(data: &[u8]) -> Option<Result<TreeRecord, u32>> {
    let head = data.get(..HEAD)?;
    let mut full = vec![0u8; size_of::<PolicydTreeRecord>()];
    full[..HEAD].copy_from_slice(head);
    let rec = PolicydTreeRecord::from_bytes(&full)?;
    if rec.id == 0 {
        return Some(Err(rec.dropped));
    }
    let name = data.get(HEAD..HEAD + usize::from(rec.name_len))?;
    Some(Ok(TreeRecord {
        id: rec.id,
        parent_id: rec.parent_id,
        level: rec.level,
        name: OsString::from_vec(name.to_vec()),
        has_xattrs: rec.has_xattrs != 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_grows_with_the_tree_in_powers_of_two() {
        assert_eq!(ring_bytes(0), 65536);
        assert_eq!(ring_bytes(1_012), 256 * 1024);
        // 10,013 cgroups: 15,531 records of 128 bytes.
        assert_eq!(ring_bytes(10_013), 2 * 1024 * 1024);
        assert_eq!(ring_bytes(65_536), 16 * 1024 * 1024);
        assert_eq!(ring_bytes(u64::from(u32::MAX)), 1 << 31);
    }

    fn record(id: u64, parent: u64, name: &[u8], xattrs: bool) -> Vec<u8> {
        let mut rec = PolicydTreeRecord {
            id,
            parent_id: parent,
            level: 1,
            name_len: name.len() as u16,
            has_xattrs: u8::from(xattrs),
            ..Default::default()
        };
        rec.dropped = 0;
        let mut bytes = rec.as_bytes()[..HEAD].to_vec();
        bytes.extend_from_slice(name);
        bytes
    }

    #[test]
    fn parses_records_and_the_end() {
        let r = parse(&record(7, 1, b"a b\xff", true)).unwrap().unwrap();
        assert_eq!(
            r,
            TreeRecord {
                id: 7,
                parent_id: 1,
                level: 1,
                name: OsString::from_vec(b"a b\xff".to_vec()),
                has_xattrs: true,
            }
        );
        let mut end = record(0, 0, b"", false);
        end[offset_of!(PolicydTreeRecord, dropped)..][..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse(&end), Some(Err(3)));
        // A name longer than the record holds, and a short header.
        let mut cut = record(7, 1, b"abc", false);
        cut.pop();
        assert_eq!(parse(&cut), None);
        assert_eq!(parse(&[0u8; 8]), None);
    }
}
