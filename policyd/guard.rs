//! What `policyd load` checks about where it runs and does to itself,
//! before it attaches anything: that it sees the host's cgroup tree
//! ([`cgroup_namespace`]), and that the OOM killer never picks policyd
//! ([`protect_self`]) nor, through the policy, its cgroup ([`own_cgroup`]).
//!
//! Everything reads `<proc root>/self/...`, so tests point it at a fake
//! proc tree (the hidden global `--proc-root`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use nix::errno::Errno;
use nix::sys::mman::{mlockall, MlockAllFlags};
use tracing::Level;

use crate::procfs::OOM_SCORE_ADJ_MIN;

/// `PROC_CGROUP_INIT_INO`: the inode number of the initial (host) cgroup
/// namespace, fixed by the kernel (include/linux/proc_ns.h).
pub const PROC_CGROUP_INIT_INO: u64 = 0xEFFF_FFFB;

/// Which cgroup namespace `<proc root>/self/ns/cgroup` says we are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupNamespace {
    /// The host's: the cgroup2 mount shows the whole tree.
    Init,
    /// Another one (a container's), with its inode number.
    Private(u64),
    /// No such file: a kernel without cgroup namespaces, so the host's.
    Unsupported,
    /// The file is there but could not be read: why.
    Unknown(String),
}

/// The cgroup namespace of the process whose proc tree is `proc_root`.
pub fn cgroup_namespace(proc_root: &Path) -> CgroupNamespace {
    let link = proc_root.join("self/ns/cgroup");
    // The link's text is "cgroup:[INODE]"; stat-ing through it gives the
    // same inode number, which covers a proc that says something else.
    let from_link = fs::read_link(&link).ok().and_then(|target| {
        let text = target.to_str()?;
        text.strip_prefix("cgroup:[")?
            .strip_suffix(']')?
            .parse::<u64>()
            .ok()
    });
    let ino = match from_link {
        Some(ino) => ino,
        None => match fs::metadata(&link) {
            Ok(meta) => meta.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return CgroupNamespace::Unsupported,
            Err(e) => return CgroupNamespace::Unknown(format!("{}: {e}", link.display())),
        },
    };
    if ino == PROC_CGROUP_INIT_INO {
        CgroupNamespace::Init
    } else {
        CgroupNamespace::Private(ino)
    }
}

/// What a private cgroup namespace costs, for the messages below.
const CGROUPNS_HINT: &str = "run policyd in the host's cgroup namespace (e.g. `docker run \
     --cgroupns=host`; in Kubernetes hostPID is not enough, the pod needs the host's cgroup \
     namespace too; a systemd service or a shell on the host already is)";

/// `policyd load` refuses to run in a private cgroup namespace: its cgroup2
/// mount would show only the container's subtree, under paths that are not
/// the ones the rules name, so it would protect and rank the wrong cgroups.
pub fn require_host_cgroup_namespace(proc_root: &Path) -> Result<()> {
    match cgroup_namespace(proc_root) {
        CgroupNamespace::Init | CgroupNamespace::Unsupported => Ok(()),
        CgroupNamespace::Private(ino) => anyhow::bail!(
            "policyd runs in a private cgroup namespace (cgroup:[{ino}], the host's is \
             cgroup:[{PROC_CGROUP_INIT_INO}]): it would see only part of the cgroup tree, under \
             paths that are not the ones its rules name; {CGROUPNS_HINT}"
        ),
        CgroupNamespace::Unknown(why) => {
            tracing::warn!(
                "cannot tell whether policyd runs in the host's cgroup namespace ({why}); going \
                 on as if it did"
            );
            Ok(())
        }
    }
}

/// For commands that only look (`status`): a note, on stderr, when a
/// private cgroup namespace hides part of the tree.
pub fn note_private_cgroup_namespace(proc_root: &Path) {
    if let CgroupNamespace::Private(ino) = cgroup_namespace(proc_root) {
        tracing::warn!(
            "note: policyd runs in a private cgroup namespace (cgroup:[{ino}]): cgroup paths are \
             this namespace's, and handlers on cgroups outside it show as cgroup#ID; to see \
             them all, {CGROUPNS_HINT}"
        );
    }
}

/// Make policyd the last thing the kernel kills and keep it in memory:
/// oom_score_adj -1000 (the kernel's killer, and bpf_oom_kill_process(),
/// never pick such a task), then every page locked as it is touched. Each
/// logs one info line. Failing to set oom_score_adj is an error: `load`
/// runs as root, so it means something is wrong. Failing to lock memory
/// is only a warning, see [`lock_memory`].
pub fn protect_self(proc_root: &Path) -> Result<()> {
    set_oom_score_adj(proc_root)?;
    lock_memory();
    Ok(())
}

/// Write -1000 to `<proc root>/self/oom_score_adj`.
pub fn set_oom_score_adj(proc_root: &Path) -> Result<()> {
    let path = proc_root.join("self/oom_score_adj");
    let written = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(OOM_SCORE_ADJ_MIN.to_string().as_bytes()));
    if let Err(e) = written {
        let errno = e
            .raw_os_error()
            .map_or_else(|| e.to_string(), |n| Errno::from_raw(n).to_string());
        anyhow::bail!(
            "cannot protect policyd from the OOM killer: writing {OOM_SCORE_ADJ_MIN} to {} failed \
             with {errno}; policyd load must run as root (lowering oom_score_adj needs \
             CAP_SYS_RESOURCE)",
            path.display()
        );
    }
    tracing::info!(
        "oom_score_adj {OOM_SCORE_ADJ_MIN}: the OOM killer never picks policyd ({})",
        path.display()
    );
    Ok(())
}

/// mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT): under memory pressure
/// policyd's pages are not reclaimed, so logging a decision or adding a
/// new cgroup's entry never waits on swap-in or page cache refaults.
/// MCL_ONFAULT locks pages as they are touched instead of populating every
/// mapping up front (thread stacks, reserved heap), so RSS stays what
/// policyd uses.
///
/// A failure (EPERM or ENOMEM: RLIMIT_MEMLOCK without CAP_IPC_LOCK) is a
/// warning and policyd goes on: OOM decisions are made in the kernel by
/// the BPF handler, which needs nothing from policyd's memory; what could
/// be slowed is only the logging and the rules map updates. Refusing to
/// start would leave the machine with no policy at all, which is worse.
pub fn lock_memory() {
    let flags = MlockAllFlags::MCL_CURRENT
        | MlockAllFlags::MCL_FUTURE
        | MlockAllFlags::from_bits_retain(nix::libc::MCL_ONFAULT);
    let (level, message) = lock_memory_outcome(mlockall(flags));
    if level == Level::INFO {
        tracing::info!("{message}");
    } else {
        tracing::warn!("{message}");
    }
}

/// The log line for mlockall's result.
fn lock_memory_outcome(result: nix::Result<()>) -> (Level, String) {
    match result {
        Ok(()) => (
            Level::INFO,
            "memory locked (mlockall MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT): policyd's pages stay \
             in RAM"
                .to_owned(),
        ),
        Err(e @ (Errno::EPERM | Errno::ENOMEM)) => (
            Level::WARN,
            format!(
                "cannot lock policyd's memory (mlockall: {e}): RLIMIT_MEMLOCK is too low and \
                 CAP_IPC_LOCK is missing; going on, since OOM decisions are made in the kernel, \
                 but under memory pressure policyd's logging and cgroup updates may stall on \
                 page faults (raise the limit, e.g. LimitMEMLOCK=infinity, or run as root)"
            ),
        ),
        Err(e) => (
            Level::WARN,
            format!(
                "cannot lock policyd's memory (mlockall: {e}); going on, since OOM decisions are \
                 made in the kernel, but under memory pressure policyd's logging and cgroup \
                 updates may stall on page faults"
            ),
        ),
    }
}

/// policyd's own cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCgroup {
    /// Relative to the cgroup2 mount, "/a/b".
    pub path: String,
    /// Kernel cgroup id (the directory's inode number).
    pub id: u64,
}

/// The cgroup that `<proc root>/self/cgroup` puts policyd in (its cgroup2
/// "0::" line), looked up under `cgroup_root`. `None` for the root cgroup,
/// which is never a candidate anyway. The error says why it could not be
/// found.
pub fn own_cgroup(proc_root: &Path, cgroup_root: &Path) -> Result<Option<OwnCgroup>, String> {
    let file = proc_root.join("self/cgroup");
    let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Err(format!("{} has no cgroup2 (\"0::\") line", file.display()));
    };
    let path = crate::cgroupfs::normalise_path(path);
    if path == "/" {
        return Ok(None);
    }
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    let meta = fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(Some(OwnCgroup {
        path,
        id: meta.ino(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn proc_with_ns(target: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("self/ns")).unwrap();
        if let Some(t) = target {
            symlink(t, dir.path().join("self/ns/cgroup")).unwrap();
        }
        dir
    }

    #[test]
    fn tells_the_host_namespace_from_a_private_one() {
        let host = proc_with_ns(Some("cgroup:[4026531835]"));
        assert_eq!(cgroup_namespace(host.path()), CgroupNamespace::Init);
        assert!(require_host_cgroup_namespace(host.path()).is_ok());

        let container = proc_with_ns(Some("cgroup:[4026532510]"));
        assert_eq!(
            cgroup_namespace(container.path()),
            CgroupNamespace::Private(4026532510)
        );
        let err = require_host_cgroup_namespace(container.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "policyd runs in a private cgroup namespace (cgroup:[4026532510], the host's is \
                 cgroup:[4026531835])"
            ),
            "{err}"
        );
        assert!(err.contains("host's cgroup namespace"), "{err}");
        assert!(err.contains("--cgroupns=host"), "{err}");

        // No ns/cgroup: a kernel without cgroup namespaces. Not refused.
        let old = proc_with_ns(None);
        assert_eq!(cgroup_namespace(old.path()), CgroupNamespace::Unsupported);
        assert!(require_host_cgroup_namespace(old.path()).is_ok());

        // Not in the link's usual form: the inode of what it points to.
        let odd = proc_with_ns(Some("elsewhere"));
        fs::write(odd.path().join("self/ns/elsewhere"), "").unwrap();
        let ino = fs::metadata(odd.path().join("self/ns/elsewhere"))
            .unwrap()
            .ino();
        assert_eq!(cgroup_namespace(odd.path()), CgroupNamespace::Private(ino));
    }

    #[test]
    fn agrees_with_stat_on_the_real_proc() {
        let ns = cgroup_namespace(Path::new("/proc"));
        match fs::metadata("/proc/self/ns/cgroup") {
            Ok(m) if m.ino() == PROC_CGROUP_INIT_INO => assert_eq!(ns, CgroupNamespace::Init),
            Ok(m) => assert_eq!(ns, CgroupNamespace::Private(m.ino())),
            Err(_) => assert_eq!(ns, CgroupNamespace::Unsupported),
        }
    }

    #[test]
    fn sets_its_own_oom_score_adj_to_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("self")).unwrap();
        let adj = dir.path().join("self/oom_score_adj");
        fs::write(&adj, "0\n").unwrap();
        set_oom_score_adj(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&adj).unwrap(), "-1000");

        // No such file (not procfs, or it refuses): an error naming the
        // file and the errno, never a silent go-on.
        let err = set_oom_score_adj(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot protect policyd from the OOM killer: writing -1000 to "),
            "{err}"
        );
        assert!(
            err.contains("nope/self/oom_score_adj failed with ENOENT"),
            "{err}"
        );
        assert!(err.contains("must run as root"), "{err}");
    }

    #[test]
    fn a_memory_lock_refused_by_the_rlimit_is_a_warning() {
        let (level, msg) = lock_memory_outcome(Ok(()));
        assert_eq!(level, Level::INFO);
        assert!(msg.starts_with("memory locked (mlockall"), "{msg}");
        for errno in [Errno::EPERM, Errno::ENOMEM] {
            let (level, msg) = lock_memory_outcome(Err(errno));
            assert_eq!(level, Level::WARN);
            assert!(msg.contains(&format!("mlockall: {errno}")), "{msg}");
            assert!(msg.contains("RLIMIT_MEMLOCK"), "{msg}");
            assert!(msg.contains("going on"), "{msg}");
        }
        let (level, msg) = lock_memory_outcome(Err(Errno::EINVAL));
        assert_eq!(level, Level::WARN);
        assert!(msg.contains("mlockall: EINVAL"), "{msg}");
    }

    #[test]
    fn finds_its_own_cgroup() {
        use crate::testing::FakeCgroupfs;
        let dir = tempfile::tempdir().unwrap();
        let cg = FakeCgroupfs::new(dir.path().join("cg"));
        cg.cgroup("/system.slice/policyd.service", 0, &[]);
        let proc_root = dir.path().join("proc");
        fs::create_dir_all(proc_root.join("self")).unwrap();
        let write = |text: &str| fs::write(proc_root.join("self/cgroup"), text).unwrap();

        // A hybrid system lists the v1 hierarchies too; only "0::" counts.
        write("4:memory:/elsewhere\n0::/system.slice/policyd.service\n");
        let own = own_cgroup(&proc_root, cg.root()).unwrap().unwrap();
        assert_eq!(own.path, "/system.slice/policyd.service");
        let ino = fs::metadata(cg.root().join("system.slice/policyd.service"))
            .unwrap()
            .ino();
        assert_eq!(own.id, ino);

        // The root cgroup: nothing to protect.
        write("0::/\n");
        assert_eq!(own_cgroup(&proc_root, cg.root()), Ok(None));

        // Not found: an error saying where it looked.
        write("0::/gone.scope\n");
        let err = own_cgroup(&proc_root, cg.root()).unwrap_err();
        assert!(err.contains("gone.scope"), "{err}");
        write("1:name=systemd:/\n");
        let err = own_cgroup(&proc_root, cg.root()).unwrap_err();
        assert!(err.ends_with("has no cgroup2 (\"0::\") line"), "{err}");
    }
}
