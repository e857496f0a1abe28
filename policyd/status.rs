//! `policyd status`: every BPF OOM handler attached right now, whoever
//! attached it, found from the kernel's own lists (no state file):
//!
//! 1. every BPF link (`bpf_link_get_next_id`) of type struct_ops whose map's
//!    value type is `struct bpf_struct_ops_bpf_oom_ops`;
//! 2. the link info's cgroup id (our kernel extends
//!    `bpf_link_info.struct_ops` with it) → path, by cgroup directory inode;
//! 3. the struct_ops map's value → handler name and program id; the
//!    program's maps → the handler's `.bss` and `.rodata`, whose BTF says
//!    where `stats`, `policy` and `dry_run` are;
//! 4. /proc/*/fdinfo → the processes holding the link, and when they started.
//!
//! Handlers without policyd's `.bss` (loaded by another tool) are listed
//! with counters "n/a".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::btf::types::DataSec;
use libbpf_rs::btf::BtfType;
use libbpf_rs::libbpf_sys;
use libbpf_rs::Btf;
use serde::Serialize;

use crate::abi::{self, Pod, PolicydStats};
use crate::cgroupfs::{self, CgroupTree};
use crate::cli::StatusArgs;
use crate::loader::{self, OomOpsLayout};
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
    /// The policy's `dry_run` (policyd policies only).
    pub dry_run: Option<bool>,
    /// Processes holding the link open (usually the one that attached it).
    pub owners: Vec<Owner>,
    /// policyd's counters; `None` for handlers without them.
    pub counters: Option<Counters>,
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

// ---------------------------------------------------------------------------
// /proc parsing (pure functions, tested with fixture text)
// ---------------------------------------------------------------------------

/// `link_id` from a `/proc/<pid>/fdinfo/<fd>` of a BPF link.
pub fn fdinfo_link_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "link_id").then(|| v.trim().parse().ok())?
    })
}

/// Seconds since the epoch as RFC 3339 UTC, e.g. "2026-11-26T06:50:12Z".
pub fn rfc3339(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "42 s", "5 min 3 s", "2 h 5 min", "3 d 4 h".
pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
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
// Output
// ---------------------------------------------------------------------------

/// The text form. `now` (seconds since the epoch) dates the owners.
pub fn render_text(handlers: &[Handler], now: u64) -> String {
    let mut out = String::new();
    if handlers.is_empty() {
        out.push_str("no BPF OOM handlers attached\n");
        return out;
    }
    for (i, h) in handlers.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let scope = if h.system_wide {
            format!("{} (system-wide)", h.cgroup)
        } else {
            h.cgroup.clone()
        };
        let _ = writeln!(out, "{scope}: handler {}", h.name);
        let policy = match (&h.policy, h.dry_run) {
            (Some(p), Some(true)) => {
                format!("{p}, dry run (decides and logs; the kernel's killer kills)")
            }
            (Some(p), _) => format!("{p}, enforcing"),
            (None, _) => "- (not loaded by policyd)".to_owned(),
        };
        let _ = writeln!(out, "  policy:   {policy}");
        if h.owners.is_empty() {
            let _ = writeln!(out, "  owner:    no process holds the link (pinned?)");
        }
        for o in &h.owners {
            let since = match o.since_unix {
                Some(s) => format!(
                    ", since {} ({} ago)",
                    rfc3339(s),
                    duration_text(now.saturating_sub(s))
                ),
                None => String::new(),
            };
            let _ = writeln!(out, "  owner:    pid {} ({}){since}", o.pid, o.comm);
        }
        let progs: Vec<String> = h.prog_ids.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "  link:     id {}, struct_ops map {}, program {}, cgroup id {}",
            h.link_id,
            h.map_id,
            if progs.is_empty() {
                "-".to_owned()
            } else {
                progs.join(",")
            },
            h.cgroup_id
        );
        match &h.counters {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "  counters: {} OOMs: {} killed, {} awaited, {} deferred, {} dry runs, {} \
                     kill failures, {} events dropped",
                    c.ooms,
                    c.kills,
                    c.awaited,
                    c.deferred,
                    c.dry_runs,
                    c.kill_failures,
                    c.events_dropped
                );
                let _ = writeln!(
                    out,
                    "  handler:  mean {} µs, max {} µs",
                    c.handler_mean_us, c.handler_max_us
                );
            }
            None => {
                let _ = writeln!(out, "  counters: n/a");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Kernel queries
// ---------------------------------------------------------------------------

fn fd_from(ret: i32) -> io::Result<OwnedFd> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        // SAFETY: a new fd from libbpf, ours to close.
        Ok(unsafe { OwnedFd::from_raw_fd(ret) })
    }
}

fn ret(r: i32) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(())
    }
}

fn link_ids() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: valid out pointer.
        match ret(unsafe { libbpf_sys::bpf_link_get_next_id(id, &mut next) }) {
            Ok(()) => {
                ids.push(next);
                id = next;
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
    }
}

/// (type, struct_ops map id, cgroup id) of link `id`.
fn link_info(id: u32) -> io::Result<loader::LinkInfo> {
    // SAFETY: the id may be stale: then an error.
    let fd = fd_from(unsafe { libbpf_sys::bpf_link_get_fd_by_id(id) })?;
    loader::link_info(fd.as_fd())
}

fn map_info(fd: &OwnedFd) -> io::Result<libbpf_sys::bpf_map_info> {
    // SAFETY: plain C struct.
    let mut info: libbpf_sys::bpf_map_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_map_info>() as u32;
    // SAFETY: valid fd and buffer.
    ret(unsafe { libbpf_sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) })?;
    Ok(info)
}

fn map_name(info: &libbpf_sys::bpf_map_info) -> String {
    abi::c_string(info.name.iter().map(|&c| c as u8))
}

/// The value at key 0 of a map whose value is `value_size` bytes.
fn lookup0(fd: &OwnedFd, value_size: u32) -> io::Result<Vec<u8>> {
    let mut value = vec![0u8; value_size as usize];
    let key = 0u32;
    // SAFETY: key and value buffers of the map's sizes.
    ret(unsafe {
        libbpf_sys::bpf_map_lookup_elem(
            fd.as_raw_fd(),
            (&key as *const u32).cast(),
            value.as_mut_ptr().cast(),
        )
    })?;
    Ok(value)
}

fn prog_map_ids(prog_id: u32) -> io::Result<Vec<u32>> {
    // SAFETY: the id may be stale: then an error.
    let fd = fd_from(unsafe { libbpf_sys::bpf_prog_get_fd_by_id(prog_id) })?;
    let mut ids = [0u32; 32];
    // SAFETY: plain C struct.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    info.nr_map_ids = ids.len() as u32;
    info.map_ids = ids.as_mut_ptr() as u64;
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: valid fd, buffer, and map_ids room for nr_map_ids entries.
    ret(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) })?;
    let n = (info.nr_map_ids as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}

/// The data section type `value_type_id` of a map's BTF, and the offset and
/// type name of variable `var` in it.
fn var_in(btf: &Btf<'_>, value_type_id: u32, var: &str) -> Option<(u32, String)> {
    let ty: BtfType<'_> = btf.type_by_id(value_type_id.into())?;
    DataSec::try_from(ty).ok()?;
    abi::datasec_var(btf, ty, var)
}

/// What policyd's handler says of itself, from the `.bss` and `.rodata` of
/// its program `prog_id`.
#[derive(Debug, Default)]
struct HandlerData {
    stats: Option<PolicydStats>,
    policy: Option<PolicyName>,
    dry_run: Option<bool>,
}

fn policyd_data(prog_id: u32) -> HandlerData {
    let mut data = HandlerData::default();
    let Ok(map_ids) = prog_map_ids(prog_id) else {
        return data;
    };
    let Ok(btf) = Btf::from_prog_id(prog_id) else {
        return data;
    };
    for id in map_ids {
        // SAFETY: the id may be stale: then an error.
        let Ok(fd) = fd_from(unsafe { libbpf_sys::bpf_map_get_fd_by_id(id) }) else {
            continue;
        };
        let Ok(info) = map_info(&fd) else { continue };
        let name = map_name(&info);
        let var = |name: &str| var_in(&btf, info.btf_value_type_id, name);
        if name.ends_with(".bss") {
            let Some((off, tname)) = var("stats") else {
                continue;
            };
            if tname != "policyd_stats" {
                continue;
            }
            if let Ok(v) = lookup0(&fd, info.value_size) {
                data.stats = v.get(off as usize..).and_then(PolicydStats::from_bytes);
            }
        } else if name.ends_with(".rodata") {
            let Ok(v) = lookup0(&fd, info.value_size) else {
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
pub fn discover(cgroup_root: Option<&Path>, proc_root: &Path) -> Result<Vec<Handler>> {
    let layout = OomOpsLayout::of_running_kernel()?;
    let ids = link_ids().map_err(|e| match e.raw_os_error() {
        Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => {
            anyhow!("listing BPF links needs root (CAP_SYS_ADMIN): {e}")
        }
        _ => anyhow!("listing BPF links: {e}"),
    })?;

    let mut found = Vec::new();
    for id in ids {
        let Ok(loader::LinkInfo {
            link_type: ty,
            map_id,
            cgroup_id,
            ..
        }) = link_info(id)
        else {
            continue; // gone meanwhile
        };
        if ty != libbpf_sys::BPF_LINK_TYPE_STRUCT_OPS || map_id == 0 {
            continue;
        }
        // SAFETY: the id may be stale: then an error.
        let Ok(map) = fd_from(unsafe { libbpf_sys::bpf_map_get_fd_by_id(map_id) }) else {
            continue;
        };
        let Ok(info) = map_info(&map) else { continue };
        if info.btf_vmlinux_value_type_id != layout.value_type_id {
            continue; // another kind of struct_ops (tcp_congestion_ops, sched_ext, ...)
        }
        let value = lookup0(&map, info.value_size).unwrap_or_default();
        let prog_id = layout.prog_id(&value);
        let name = layout.name(&value);
        let data = prog_id.map(policyd_data).unwrap_or_default();
        // Only policyd's own handler has its counters and settings.
        let policy = data.policy.filter(|_| data.stats.is_some());
        let (stats, dry_run) = (data.stats, data.dry_run);
        found.push(Handler {
            link_id: id,
            map_id,
            name,
            dry_run: policy.and(dry_run),
            policy: policy.map(|p| p.to_string()),
            cgroup_id,
            cgroup: String::new(),
            system_wide: cgroup_id <= 1,
            prog_ids: prog_id.into_iter().collect(),
            owners: Vec::new(),
            counters: stats.as_ref().map(Counters::from),
        });
    }
    if found.is_empty() {
        return Ok(found);
    }

    // Cgroup paths: the cgroup id is the directory's inode number.
    let tree = cgroupfs::root(cgroup_root)
        .ok()
        .and_then(|root| CgroupTree::read(&root).ok());
    let holders = link_holders(proc_root);
    let procs = ProcFs::new(proc_root);
    let boot_time = procs.boot_time();
    for h in &mut found {
        h.cgroup = if h.system_wide {
            "/".to_owned()
        } else {
            tree.as_ref()
                .and_then(|t| t.find_id(h.cgroup_id).map(|i| t.get(i).path.clone()))
                .unwrap_or_else(|| format!("cgroup#{}", h.cgroup_id))
        };
        h.owners = holders
            .get(&h.link_id)
            .into_iter()
            .flatten()
            .map(|&pid| owner(&procs, pid, boot_time))
            .collect();
    }
    found.sort_by(|a, b| a.cgroup.cmp(&b.cgroup).then(a.link_id.cmp(&b.link_id)));
    Ok(found)
}

/// `policyd status [--json]`.
pub fn run(args: &StatusArgs, cgroup_root: Option<&Path>, proc_root: &Path) -> Result<()> {
    loader::route_libbpf_log();
    let handlers = match OomOpsLayout::supported() {
        Some(false) => {
            if args.json {
                println!("[]");
            } else {
                println!(
                    "no BPF OOM handlers attached ({})",
                    loader::no_oom_support_message()
                );
            }
            return Ok(());
        }
        _ => discover(cgroup_root, proc_root)?,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&handlers).context("encoding JSON")?;
        println!("{text}");
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        print!("{}", render_text(&handlers, now));
    }
    Ok(())
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
        assert_eq!(duration_text(42), "42 s");
        assert_eq!(duration_text(303), "5 min 3 s");
        assert_eq!(duration_text(7500), "2 h 5 min");
        assert_eq!(duration_text(3 * 86_400 + 4 * 3600 + 5), "3 d 4 h");
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

    fn handler() -> Handler {
        Handler {
            link_id: 7,
            map_id: 42,
            name: "policyd_priority".into(),
            policy: Some("priority".into()),
            cgroup_id: 1,
            cgroup: "/".into(),
            system_wide: true,
            prog_ids: vec![40],
            dry_run: Some(false),
            owners: vec![Owner {
                pid: 4242,
                comm: "policyd".into(),
                since: Some(rfc3339(1_795_682_412)),
                since_unix: Some(1_795_682_412),
            }],
            counters: Some(Counters::from(&PolicydStats {
                ooms: 3,
                kills: 4,
                awaited: 1,
                deferred: 1,
                dry_runs: 0,
                kill_failures: 0,
                events_dropped: 0,
                handler_ns_total: 123_000,
                handler_ns_max: 80_250,
            })),
        }
    }

    #[test]
    fn renders_text() {
        let other = Handler {
            link_id: 9,
            map_id: 50,
            name: "vm-tests".into(),
            policy: None,
            cgroup_id: 4711,
            cgroup: "/demo".into(),
            system_wide: false,
            prog_ids: vec![51],
            dry_run: None,
            owners: vec![],
            counters: None,
        };
        let text = render_text(&[handler(), other], 1_795_682_412 + 95);
        assert_eq!(
            text,
            "/ (system-wide): handler policyd_priority\n\
             \x20 policy:   priority, enforcing\n\
             \x20 owner:    pid 4242 (policyd), since 2026-11-26T08:40:12Z (1 min 35 s ago)\n\
             \x20 link:     id 7, struct_ops map 42, program 40, cgroup id 1\n\
             \x20 counters: 3 OOMs: 4 killed, 1 awaited, 1 deferred, 0 dry runs, 0 kill \
             failures, 0 events dropped\n\
             \x20 handler:  mean 41 µs, max 80.3 µs\n\
             \n\
             /demo: handler vm-tests\n\
             \x20 policy:   - (not loaded by policyd)\n\
             \x20 owner:    no process holds the link (pinned?)\n\
             \x20 link:     id 9, struct_ops map 50, program 51, cgroup id 4711\n\
             \x20 counters: n/a\n"
        );
        assert_eq!(render_text(&[], 0), "no BPF OOM handlers attached\n");
    }

    #[test]
    fn renders_json() {
        let json = serde_json::to_value(vec![handler()]).unwrap();
        assert_eq!(json[0]["cgroup"], "/");
        assert_eq!(json[0]["system_wide"], true);
        assert_eq!(json[0]["policy"], "priority");
        assert_eq!(json[0]["owners"][0]["pid"], 4242);
        assert_eq!(json[0]["owners"][0]["since"], "2026-11-26T08:40:12Z");
        assert_eq!(json[0]["counters"]["ooms"], 3);
        assert_eq!(json[0]["counters"]["handler_mean_us"], 41.0);
        assert_eq!(json[0]["counters"]["handler_max_us"], 80.3);
    }
}
