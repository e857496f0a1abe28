//! The two reads of the cgroup tree agree: the policy object's BPF iterator
//! (policyd/tree_walk.rs, `CgroupTree::from_walk`) and the file system read
//! (`CgroupTree::read_with`, which `policyd explain` and fake trees use) give the
//! same cgroups, ids, paths, parents, order, xattrs and problems on one real tree.
//!
//! The tree /tw has names systemd escapes (`\x2d`), unicode, spaces, a name that is
//! not UTF-8 (left out, with the same problem, by both), children made in an order
//! other than their names', a threaded subtree, a 24-level chain, a removed cgroup, and
//! every xattr policyd reads plus one it does not, and one set then removed.
//! Then a walk that does not fit in its ring buffer must fail, saying so, for
//! policyd to fall back to the file system read.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use policyd::cgroupfs::{CgroupTree, Detail};
use policyd::loader::{PolicyObject, Settings};
use policyd::tree_walk;
use policyd::PolicyName;
use rustix::fs::XattrFlags;

use crate::guest::util::{self, Cgroup};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-tree-walk", run)
        .needs_policyd()
        .timeout_s(300)
}

const ROOT: &str = "/sys/fs/cgroup";

/// (path below /tw, xattrs set on it).
const ODD: &[(&str, &[(&str, &str)])] = &[
    (r"system.slice", &[]),
    (
        r"system.slice/getty@tty1.service",
        &[("user.oomd_omit", "1")],
    ),
    (
        r"system.slice/systemd-journald\x2dvarlink.socket",
        &[("user.oomd_avoid", "1")],
    ),
    (
        r"system.slice/foo\x2dbar.mount",
        &[("user.oomd_prefer", "1")],
    ),
    ("ünïcödé 日本", &[("trusted.policyd.priority", "5")]),
    ("with space", &[("user.not-policyd", "x")]),
    (" leading", &[]),
    ("trailing ", &[]),
    (
        "a.b-c_d@1.service",
        &[("trusted.policyd.priority", "7"), ("user.oomd_avoid", "1")],
    ),
    ("dom", &[]),
    ("dom/t1", &[]),
    ("dom/t1/t2", &[("user.oomd_prefer", "1")]),
    ("dom/t1/t3", &[]),
    ("removed-xattr", &[("user.oomd_omit", "1")]),
];

fn run() -> Result<()> {
    let top = Cgroup::create("tw")?;
    let dir = |rel: &str| top.dir().join(rel);
    for (rel, xattrs) in ODD {
        fs::create_dir(dir(rel)).with_context(|| format!("creating /tw/{rel}"))?;
        for (name, value) in *xattrs {
            rustix::fs::setxattr(dir(rel), *name, value.as_bytes(), XattrFlags::empty())
                .with_context(|| format!("setting {name} on /tw/{rel}"))?;
        }
    }
    util::write_file(dir("dom/t1").join("cgroup.type"), "threaded")?;
    for t in ["dom/t1/t2", "dom/t1/t3"] {
        util::write_file(dir(t).join("cgroup.type"), "threaded")?;
    }
    rustix::fs::removexattr(dir("removed-xattr"), "user.oomd_omit")?;
    // Not UTF-8: left out, its child with it.
    let bad = top.dir().join(OsStr::from_bytes(b"bad\xff"));
    fs::create_dir_all(bad.join("child"))?;
    // Made last first: the walk meets them in creation order, the file system read
    // in name order.
    fs::create_dir(dir("order"))?;
    for i in (0..200).rev() {
        fs::create_dir(dir(&format!("order/n{i:03}")))?;
    }
    let mut chain = String::from("chain");
    fs::create_dir(dir(&chain))?;
    for level in 1..24 {
        chain.push_str(&format!("/l{level}"));
        fs::create_dir(dir(&chain))?;
    }
    fs::create_dir(dir("gone"))?;
    fs::remove_dir(dir("gone"))?;

    let root = Path::new(ROOT);
    let cgroups = tree_walk::cgroups_below(root).context("/sys/fs/cgroup is cgroup2")?;
    let mut obj = load(Some(cgroups))?;
    obj.attach_tree_walker(root);

    let t = Instant::now();
    let records = obj
        .walk_tree()
        .context("no tree walker on /sys/fs/cgroup")?
        .context("walking the tree")?;
    let records_len = records.len();
    let walked = CgroupTree::from_walk(root, records, &mut |_| {})?;
    let walk_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let listed = CgroupTree::read_with(root, Detail::Rules, &mut |_| {})?;
    let list_s = t.elapsed().as_secs_f64();
    println!(
        "{} cgroups: walked in {walk_s:.3} s ({} records), listed in {list_s:.3} s",
        listed.len(),
        records_len
    );

    // Not vacuous: the odd cgroups are there, with their xattrs, and the bad one is
    // a problem of both.
    for (rel, xattrs) in ODD {
        let path = format!("/tw/{rel}");
        let idx = walked
            .find(&path)
            .with_context(|| format!("the walk has no {path}"))?;
        // Removed again, or not one of policyd's: none in force.
        let policyd_reads =
            *rel != "removed-xattr" && xattrs.iter().any(|(n, _)| *n != "user.not-policyd");
        ensure!(
            (walked.get(idx).xattrs != Default::default()) == policyd_reads,
            "{path}: xattrs {:?} from the walk",
            walked.get(idx).xattrs
        );
    }
    ensure!(
        walked.find("/tw/dom/t1/t2").is_some() && walked.find(&format!("/tw/{chain}")).is_some(),
        "the walk misses the threaded subtree or the end of the chain"
    );
    ensure!(
        walked.find("/tw/gone").is_none(),
        "the walk has a removed cgroup"
    );
    ensure!(
        walked
            .problems()
            .iter()
            .any(|p| p.path == "/tw/bad\u{fffd}"),
        "the walk does not report the name that is not UTF-8: {:?}",
        walked.problems()
    );

    // Equal, node for node.
    for (i, (w, l)) in walked.nodes().iter().zip(listed.nodes()).enumerate() {
        if w != l {
            bail!("node {i} differs:\n  walk:       {w:?}\n  file system: {l:?}");
        }
    }
    ensure!(
        walked.len() == listed.len(),
        "the walk has {} cgroups, the file system {}",
        walked.len(),
        listed.len()
    );
    ensure!(
        walked.problems() == listed.problems(),
        "problems differ:\n  walk: {:?}\n  file system: {:?}",
        walked.problems(),
        listed.problems()
    );
    println!(
        "equal: {} cgroups (ids, paths, parents, children, order, xattrs), {} problems",
        walked.len(),
        walked.problems().len()
    );

    // A ring sized for no cgroups (64 KiB) and 1,500 more cgroups than that holds.
    fs::create_dir(dir("many"))?;
    for i in 0..1500 {
        fs::create_dir(dir(&format!("many/m{i:04}")))?;
    }
    let mut small = load(Some(0))?;
    small.attach_tree_walker(root);
    match small.walk_tree().context("no tree walker")? {
        Ok(records) => bail!(
            "a walk of {} cgroups fit in a 64 KiB ring buffer",
            records.len()
        ),
        Err(e) => {
            let msg = format!("{e:#}");
            ensure!(
                msg.contains("restart policyd to size it for this many cgroups"),
                "{msg}"
            );
            println!("too small a ring: {msg}");
        }
    }
    Ok(())
}

fn load(tree_cgroups: Option<u64>) -> Result<PolicyObject> {
    PolicyObject::open_load(&Settings {
        policy: PolicyName::Priority,
        dry_run: true,
        max_cgroups: 1024,
        walk_steps: policyd::abi::WALK_STEPS,
        tree_cgroups,
    })
}
