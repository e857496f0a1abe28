//! What is attached: every BPF OOM handler, from the kernel's own lists
//! (no state file), with its cgroup, program, settings, counters and the
//! processes holding its link.
//!
//! 1. every struct_ops link (libbpf-rs's [`LinkInfoIter`]) whose map's value
//!    type is `struct bpf_struct_ops_bpf_oom_ops`;
//! 2. the link's cgroup id ([`loader::link_info_by_id`]: our kernel extends
//!    `bpf_link_info.struct_ops` with it) → path, by cgroup directory inode;
//! 3. the struct_ops map's value → handler name and program id; the
//!    program's maps ([`ProgInfoIter`]) → the handler's `.bss` and
//!    `.rodata`, whose BTF says where `stats`, `policy` and `dry_run` are;
//! 4. /proc/*/fdinfo → the processes holding the link, and when they started.
//!
//! Handlers without policyd's `.bss` (loaded by another tool) have no
//! counters.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, Result};
use libbpf_rs::btf::types::DataSec;
use libbpf_rs::btf::BtfType;
use libbpf_rs::libbpf_sys;
use libbpf_rs::query::{LinkInfoIter, LinkTypeInfo, ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::{Btf, MapCore, MapFlags, MapHandle};
use serde::Serialize;

use crate::abi::{self, Pod, PolicydMetrics, PolicydStats};
use crate::cgroupfs::{self, CgroupTree};
use crate::loader::{self, OomOpsLayout, RawCounters};
use crate::policy::PolicyName;
use crate::procfs::{self, ProcFs};

/// One attached BPF OOM handler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Handler {
    pub link_id: u32,
    /// The struct_ops map.
    pub map_id: u32,
    /// `bpf_oom_ops.name`, e.g. "policyd_priority".
    pub name: String,
    /// The policyd policy, when policyd loaded it.
    pub policy: Option<String>,
    pub cgroup_id: u64,
    /// Path relative to the cgroup2 mount; "/" is system-wide.
    pub cgroup: String,
    pub system_wide: bool,
    pub prog_ids: Vec<u32>,
    /// Instructions the kernel's verifier went through to load the handler
    /// (`bpf_prog_info.verified_insns`): what its load costs grows with
    /// them. `None` where the kernel does not say.
    pub verified_insns: Option<u32>,
    /// The policy's `dry_run` (policyd policies only).
    pub dry_run: Option<bool>,
    /// Processes holding the link open (usually the one that attached it).
    pub owners: Vec<Owner>,
    /// policyd's counters; `None` for handlers without them.
    pub counters: Option<Counters>,
    /// The same counters as the handler keeps them, with its histogram and
    /// decisions by victim (`policyd metrics`).
    #[serde(skip)]
    pub raw: Option<RawCounters>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Process start, RFC 3339 (UTC).
    pub since: Option<String>,
    /// Process start, seconds since the epoch.
    pub since_unix: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counters {
    pub ooms: u64,
    pub kills: u64,
    pub awaited: u64,
    pub deferred: u64,
    pub dry_runs: u64,
    pub kill_failures: u64,
    pub events_dropped: u64,
    /// Mean handler time, µs (0 without OOMs).
    pub handler_mean_us: f64,
    pub handler_max_us: f64,
}

impl From<&PolicydStats> for Counters {
    fn from(s: &PolicydStats) -> Self {
        let mean = if s.ooms == 0 {
            0.0
        } else {
            s.handler_ns_total as f64 / s.ooms as f64 / 1000.0
        };
        Counters {
            ooms: s.ooms,
            kills: s.kills,
            awaited: s.awaited,
            deferred: s.deferred,
            dry_runs: s.dry_runs,
            kill_failures: s.kill_failures,
            events_dropped: s.events_dropped,
            handler_mean_us: (mean * 10.0).round() / 10.0,
            handler_max_us: (s.handler_ns_max as f64 / 100.0).round() / 10.0,
        }
    }
}

/// Seconds since the epoch as RFC 3339 UTC, e.g. "2026-11-26T06:50:12Z".
pub fn rfc3339(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

// ---------------------------------------------------------------------------
// Link holders, from /proc
// ---------------------------------------------------------------------------

/// `link_id` from a `/proc/<pid>/fdinfo/<fd>` of a BPF link.
pub fn fdinfo_link_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "link_id").then(|| v.trim().parse().ok())?
    })
}

/// Which processes hold which BPF links: link id → pids. Looks only at fds
/// that are BPF links (`anon_inode:bpf_link`).
pub fn link_holders(proc_root: &Path) -> HashMap<u32, Vec<u32>> {
    let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(procs) = fs::read_dir(proc_root) else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_link =
                fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf_link");
            if !is_link {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            if let Some(id) = fs::read_to_string(info)
                .ok()
                .as_deref()
                .and_then(fdinfo_link_id)
            {
                let pids = out.entry(id).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    for pids in out.values_mut() {
        pids.sort_unstable();
    }
    out
}

/// Who `pid` is and since when; `boot_time` in seconds since the epoch.
fn owner(procs: &ProcFs, pid: u32, boot_time: Option<u64>) -> Owner {
    let stat = procs.stat(pid);
    let since_unix = boot_time
        .zip(stat.as_ref())
        .map(|(boot, stat)| procfs::start_unix(boot, stat.starttime));
    Owner {
        pid,
        comm: stat.map_or_else(|| "?".to_owned(), |s| s.comm),
        since: since_unix.map(rfc3339),
        since_unix,
    }
}

// ---------------------------------------------------------------------------
// Kernel queries
// ---------------------------------------------------------------------------

/// (link id, map id) of every struct_ops link, of any struct_ops type.
fn struct_ops_links() -> Result<Vec<(u32, u32)>> {
    let links: Vec<(u32, u32)> = LinkInfoIter::default()
        .filter_map(|link| match link.info {
            LinkTypeInfo::StructOps(ops) if ops.map_id != 0 => Some((link.id, ops.map_id)),
            _ => None,
        })
        .collect();
    if links.is_empty() {
        // The iterator ends alike at the end of the list and on an error:
        // ask once more, to tell "none" from "not allowed to look".
        let mut next = 0u32;
        // SAFETY: valid out pointer.
        let ret = unsafe { libbpf_sys::bpf_link_get_next_id(0, &mut next) };
        match -ret {
            nix::libc::EPERM | nix::libc::EACCES => {
                return Err(anyhow!(
                    "listing BPF links needs root (CAP_SYS_ADMIN): {}",
                    std::io::Error::from_raw_os_error(-ret)
                ))
            }
            0 | nix::libc::ENOENT => {}
            errno => {
                return Err(anyhow!(
                    "listing BPF links: {}",
                    std::io::Error::from_raw_os_error(errno)
                ))
            }
        }
    }
    Ok(links)
}

/// The value at key 0 of `map` (a struct_ops map, or a data section).
fn value0(map: &MapHandle) -> Option<Vec<u8>> {
    map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
}

/// What the kernel says of a handler's program.
#[derive(Debug, Default)]
struct ProgFacts {
    map_ids: Vec<u32>,
    /// 0: the kernel does not count them.
    verified_insns: u32,
}

/// The maps and verifier work of each program of `prog_ids`.
fn programs(prog_ids: &[u32]) -> HashMap<u32, ProgFacts> {
    if prog_ids.is_empty() {
        return HashMap::new();
    }
    let opts = ProgInfoQueryOptions::default().include_map_ids(true);
    ProgInfoIter::with_query_opts(opts)
        .filter(|p| prog_ids.contains(&p.id))
        .map(|p| {
            let facts = ProgFacts {
                map_ids: p.map_ids,
                verified_insns: p.verified_insns,
            };
            (p.id, facts)
        })
        .collect()
}

/// The offset and type name of variable `var` in the data section type
/// `value_type_id` of a map's BTF.
fn var_in(btf: &Btf<'_>, value_type_id: u32, var: &str) -> Option<(u32, String)> {
    let ty: BtfType<'_> = btf.type_by_id(value_type_id.into())?;
    DataSec::try_from(ty).ok()?;
    abi::datasec_var(btf, ty, var)
}

/// What policyd's handler says of itself, from the `.bss` and `.rodata` of
/// its program `prog_id`, which uses the maps `map_ids`.
#[derive(Debug, Default)]
struct HandlerData {
    stats: Option<PolicydStats>,
    metrics: Option<PolicydMetrics>,
    decisions: Option<Vec<(abi::PolicydDecisionKey, u64)>>,
    policy: Option<PolicyName>,
    dry_run: Option<bool>,
}

fn policyd_data(prog_id: u32, map_ids: &[u32]) -> HandlerData {
    let mut data = HandlerData::default();
    let Ok(btf) = Btf::from_prog_id(prog_id) else {
        return data;
    };
    for &id in map_ids {
        let Ok(map) = MapHandle::from_map_id(id) else {
            continue; // gone meanwhile
        };
        let Ok(info) = map.info() else { continue };
        let var = |name: &str| var_in(&btf, info.info.btf_value_type_id, name);
        let name = map.name().to_string_lossy();
        if name == "decisions" {
            data.decisions = loader::read_decisions(&map).ok();
        } else if name.ends_with(".bss") {
            let Some((off, tname)) = var("stats") else {
                continue;
            };
            if tname != "policyd_stats" {
                continue;
            }
            let Some(v) = value0(&map) else { continue };
            data.stats = v.get(off as usize..).and_then(PolicydStats::from_bytes);
            data.metrics = var("metrics")
                .filter(|(_, tname)| tname == "policyd_metrics")
                .and_then(|(off, _)| v.get(off as usize..).and_then(PolicydMetrics::from_bytes));
        } else if name.ends_with(".rodata") {
            let Some(v) = value0(&map) else {
                continue;
            };
            let byte = |(off, _): (u32, String)| v.get(off as usize).copied();
            data.dry_run = var("dry_run").and_then(byte).map(|b| b != 0);
            data.policy = var("policy").and_then(byte).and_then(PolicyName::from_abi);
        }
    }
    data
}

/// Every attached BPF OOM handler.
pub fn handlers(cgroup_root: Option<&Path>, proc_root: &Path) -> Result<Vec<Handler>> {
    let layout = OomOpsLayout::of_running_kernel()?;
    // (link id, struct_ops map id, cgroup id, the map's value) of each handler.
    let mut attached = Vec::new();
    for (link_id, map_id) in struct_ops_links()? {
        let Ok(map) = MapHandle::from_map_id(map_id) else {
            continue; // gone meanwhile
        };
        let Ok(info) = map.info() else { continue };
        if info.info.btf_vmlinux_value_type_id != layout.value_type_id {
            continue; // another kind of struct_ops (tcp_congestion_ops, sched_ext, ...)
        }
        let Ok(link) = loader::link_info_by_id(link_id) else {
            continue; // gone meanwhile
        };
        attached.push((link_id, map_id, link.cgroup_id, value0(&map)));
    }
    if attached.is_empty() {
        return Ok(Vec::new());
    }
    let prog_ids: Vec<u32> = attached
        .iter()
        .filter_map(|(.., value)| layout.prog_id(value.as_deref().unwrap_or_default()))
        .collect();
    let progs = programs(&prog_ids);

    // Cgroup paths: the cgroup id is the directory's inode number.
    let tree = cgroupfs::root(cgroup_root)
        .ok()
        .and_then(|root| CgroupTree::read(&root).ok());
    let holders = link_holders(proc_root);
    let procs = ProcFs::new(proc_root);
    let boot_time = procs.boot_time();
    let mut found: Vec<Handler> = attached
        .into_iter()
        .map(|(link_id, map_id, cgroup_id, value)| {
            let value = value.unwrap_or_default();
            let prog_id = layout.prog_id(&value);
            let facts = prog_id.and_then(|id| progs.get(&id));
            let data = prog_id
                .map(|id| policyd_data(id, facts.map_or(&[], |f| f.map_ids.as_slice())))
                .unwrap_or_default();
            // Only policyd's own handler has its counters and settings.
            let policy = data.policy.filter(|_| data.stats.is_some());
            let system_wide = cgroup_id <= 1;
            let cgroup = if system_wide {
                "/".to_owned()
            } else {
                tree.as_ref()
                    .and_then(|t| t.find_id(cgroup_id).map(|i| t.get(i).path.clone()))
                    .unwrap_or_else(|| format!("cgroup#{cgroup_id}"))
            };
            Handler {
                link_id,
                map_id,
                name: layout.name(&value),
                dry_run: policy.and(data.dry_run),
                policy: policy.map(|p| p.to_string()),
                cgroup_id,
                cgroup,
                system_wide,
                prog_ids: prog_id.into_iter().collect(),
                verified_insns: facts.map(|f| f.verified_insns).filter(|&n| n > 0),
                owners: holders
                    .get(&link_id)
                    .into_iter()
                    .flatten()
                    .map(|&pid| owner(&procs, pid, boot_time))
                    .collect(),
                counters: data.stats.as_ref().map(Counters::from),
                raw: data
                    .stats
                    .zip(data.metrics)
                    .map(|(stats, metrics)| RawCounters {
                        stats,
                        metrics,
                        decisions: data.decisions.unwrap_or_default(),
                    }),
            }
        })
        .collect();
    found.sort_by(|a, b| a.cgroup.cmp(&b.cgroup).then(a.link_id.cmp(&b.link_id)));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2061\n\
                          link_type:\tstruct_ops\nlink_id:\t7\nmap_id:\t42\ncgroup_id:\t1\n";
    const STAT: &str = "4242 (policyd (x) y) S 1 4242 4242 0 -1 4194560 1450 0 0 0 12 3 0 0 20 \
                        0 1 0 123456 19574784 1280 18446744073709551615 1 1 0 0 0 0 0 4096 0 \
                        0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn parses_fdinfo() {
        assert_eq!(fdinfo_link_id(FDINFO), Some(7));
        assert_eq!(fdinfo_link_id("pos:\t0\nflags:\t02\n"), None);
        // A map's fdinfo has map_id but no link_id.
        assert_eq!(fdinfo_link_id("map_type:\t27\nmap_id:\t42\n"), None);
    }

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_682_412), "2026-11-26T08:40:12Z");
    }

    #[test]
    fn finds_link_holders_in_a_fake_proc() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        let pid = proc.join("4242");
        fs::create_dir_all(pid.join("fd")).unwrap();
        fs::create_dir_all(pid.join("fdinfo")).unwrap();
        std::os::unix::fs::symlink("anon_inode:bpf_link", pid.join("fd/5")).unwrap();
        std::os::unix::fs::symlink("anon_inode:bpf-map", pid.join("fd/6")).unwrap();
        fs::write(pid.join("fdinfo/5"), FDINFO).unwrap();
        fs::write(pid.join("fdinfo/6"), "map_id:\t42\nlink_id:\t99\n").unwrap();
        fs::write(pid.join("stat"), STAT).unwrap();
        fs::create_dir_all(proc.join("self")).unwrap(); // not a pid: skipped
        fs::write(proc.join("stat"), "cpu 1\nbtime 1795000000\n").unwrap();

        let holders = link_holders(proc);
        assert_eq!(holders, HashMap::from([(7, vec![4242])]));
        let procs = ProcFs::new(proc);
        assert_eq!(procs.boot_time(), Some(1_795_000_000));
        // 123456 ticks at USER_HZ 100 after boot.
        let o = owner(&procs, 4242, procs.boot_time());
        assert_eq!(
            o,
            Owner {
                pid: 4242,
                comm: "policyd (x) y".into(),
                since: Some(rfc3339(1_795_001_234)),
                since_unix: Some(1_795_001_234),
            }
        );
    }
}
