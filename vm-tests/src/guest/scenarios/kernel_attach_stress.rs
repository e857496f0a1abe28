//! Attach, update, detach and cgroup removal, all at once, for a bounded time: three
//! workers create cgroups and attach handlers to them (a second handler on the same cgroup
//! must get EEXIST), then update the link to another map, detach it, close it, or remove
//! the cgroup under it; a remover thread removes the workers' cgroups at random, racing
//! their attaches (which then fail with ENOENT, or succeed and are detached by the removal);
//! a declarer thread declares OOMs on them, so handlers run while all of this happens.
//!
//! Link creation registers the handler under the struct_ops update_mutex and only then
//! takes cgroup_mutex to list the link on its cgroup; the removal collects links under
//! cgroup_mutex and detaches them after dropping it: no path nests the two locks. The
//! host fails the scenario on any lockdep report, WARNING or hung task in the kernel log.
//! Here: every attach ends in success, EEXIST or ENOENT, every link whose cgroup went away
//! reports POLLHUP, and every kind of operation happened.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::libbpf_sys;
use nix::libc;

use crate::guest::kutil::{self, link_create, poll_fd, Action, Handler, BPF_F_CGROUP_FD};
use crate::guest::util::Cgroup;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-attach-stress", run).timeout_s(150)
}

const RUN_FOR: Duration = Duration::from_secs(20);
const WORKERS: usize = 3;

#[derive(Default)]
struct Counts {
    cgroups: AtomicU64,
    attached: AtomicU64,
    /// The cgroup was removed (by the remover) before or while attaching.
    attach_enoent: AtomicU64,
    second_eexist: AtomicU64,
    updated: AtomicU64,
    detached: AtomicU64,
    /// Links closed while attached.
    closed: AtomicU64,
    /// Links whose cgroup was removed while they were attached; each reported POLLHUP.
    removed_under_link: AtomicU64,
    removed_by_remover: AtomicU64,
    declared: AtomicU64,
    handler_calls: AtomicU64,
}

impl Counts {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

/// The workers' cgroups that still exist, for the remover and the declarer.
struct Live(Mutex<Vec<(PathBuf, u64)>>);

impl Live {
    fn push(&self, dir: PathBuf, id: u64) {
        self.0.lock().unwrap().push((dir, id));
    }
    /// Takes `dir` out if it is still listed: whoever takes it removes it.
    fn take(&self, dir: &Path) -> bool {
        let mut v = self.0.lock().unwrap();
        match v.iter().position(|(d, _)| d == dir) {
            Some(i) => {
                v.swap_remove(i);
                true
            }
            None => false,
        }
    }
    fn take_random(&self, rng: &mut fastrand::Rng) -> Option<PathBuf> {
        let mut v = self.0.lock().unwrap();
        if v.is_empty() {
            return None;
        }
        let i = rng.usize(..v.len());
        Some(v.swap_remove(i).0)
    }
    fn random_id(&self, rng: &mut fastrand::Rng) -> Option<u64> {
        let v = self.0.lock().unwrap();
        (!v.is_empty()).then(|| v[rng.usize(..v.len())].1)
    }
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let _quiet = kutil::QuietConsole::new()?;
    let parent = Cgroup::create("kernel-attach-stress")?;
    // Children get the memory controller, which a handler's cgroup needs.
    parent.set("cgroup.subtree_control", "+memory")?;
    let counts = Counts::default();
    let live = Live(Mutex::new(Vec::new()));
    let deadline = Instant::now() + RUN_FOR;

    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (counts, live, parent) = (&counts, &live, &parent);
                s.spawn(move || worker(w, parent, counts, live, deadline))
            })
            .collect();
        let remover = s.spawn(|| remover(&counts, &live, deadline));
        let declarer = s.spawn(|| declarer(&counts, &live, deadline));
        let mut errors = Vec::new();
        for (name, r) in workers
            .into_iter()
            .enumerate()
            .map(|(w, j)| (format!("worker {w}"), j.join()))
            .chain([
                ("remover".to_string(), remover.join()),
                ("declarer".to_string(), declarer.join()),
            ])
        {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{name}: {e:#}")),
                Err(_) => errors.push(format!("{name} panicked")),
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(())
    })?;

    let get = |c: &AtomicU64| c.load(Relaxed);
    println!(
        "in {} s: {} cgroups, {} attached, {} attaches ENOENT (cgroup removed meanwhile), \
         {} second attaches EEXIST, {} updates, {} detaches, {} closes, {} cgroups removed \
         under an attached link (each POLLHUP), {} removed by the remover, {} OOMs declared, \
         {} handler calls",
        RUN_FOR.as_secs(),
        get(&counts.cgroups),
        get(&counts.attached),
        get(&counts.attach_enoent),
        get(&counts.second_eexist),
        get(&counts.updated),
        get(&counts.detached),
        get(&counts.closed),
        get(&counts.removed_under_link),
        get(&counts.removed_by_remover),
        get(&counts.declared),
        get(&counts.handler_calls),
    );
    for (what, c) in [
        ("attaches", &counts.attached),
        ("second attaches refused with EEXIST", &counts.second_eexist),
        ("link updates", &counts.updated),
        ("detaches", &counts.detached),
        ("closes", &counts.closed),
        (
            "cgroup removals under an attached link",
            &counts.removed_under_link,
        ),
        ("removals by the racing remover", &counts.removed_by_remover),
        ("declared OOMs", &counts.declared),
        ("handler calls", &counts.handler_calls),
    ] {
        ensure!(get(c) > 0, "no {what} happened in {} s", RUN_FOR.as_secs());
    }
    Ok(())
}

fn open_dir(dir: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
}

fn attach(h: &Handler, dir: &fs::File) -> io::Result<OwnedFd> {
    link_create(
        h.skel().maps.oom_test_ops.as_fd().as_raw_fd(),
        dir.as_raw_fd(),
        BPF_F_CGROUP_FD,
    )
}

/// rmdir with the retries a just-emptied cgroup can need; false if it is already gone.
fn rmdir(dir: &Path) -> Result<bool> {
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < RUN_FOR => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).with_context(|| format!("rmdir {}", dir.display())),
        }
    }
}

fn expect_pollhup(link: &OwnedFd, what: &str) -> Result<()> {
    let revents = poll_fd(link, libc::POLLIN, Duration::from_secs(10))?;
    ensure!(
        revents & libc::POLLHUP != 0,
        "{what}: no POLLHUP on the link within 10 s (revents {revents:#x})"
    );
    Ok(())
}

fn worker(
    w: usize,
    parent: &Cgroup,
    counts: &Counts,
    live: &Live,
    deadline: Instant,
) -> Result<()> {
    let a = Handler::load(Action::Defer, 0, 0)?;
    let b = Handler::load(Action::Defer, 0, 0)?;
    let b_map = b.skel().maps.oom_test_ops.as_fd().as_raw_fd();
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let dir = parent.dir().join(format!("w{w}-{i}"));
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Counts::bump(&counts.cgroups);
        let id = fs::metadata(&dir)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .with_context(|| format!("stat {}", dir.display()))?;
        live.push(dir.clone(), id);
        let what = format!("{} (round {i})", dir.display());

        let fd = match open_dir(&dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Counts::bump(&counts.attach_enoent);
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("opening {what}")),
        };
        let link = match attach(&a, &fd) {
            Ok(link) => link,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                Counts::bump(&counts.attach_enoent);
                rmdir_if_mine(live, &dir)?;
                continue;
            }
            Err(e) => bail!("attaching to {what}: {e}, expected success or ENOENT"),
        };
        Counts::bump(&counts.attached);
        match attach(&b, &fd) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Counts::bump(&counts.second_eexist),
            // The remover took the cgroup: its release detached the first link.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => bail!("a second handler on {what}: {e}, expected EEXIST"),
            Ok(_) => bail!("a second handler on {what} attached, expected EEXIST"),
        }
        // Attached for a moment, for the declarer's OOMs and the remover to find it so.
        std::thread::sleep(Duration::from_millis(20));

        match i % 4 {
            0 => {
                // SAFETY: plain syscall wrapper on fds this thread owns.
                let rc = unsafe {
                    libbpf_sys::bpf_link_update(link.as_raw_fd(), b_map, std::ptr::null())
                };
                match rc {
                    0 => Counts::bump(&counts.updated),
                    // Detached by a racing removal of its cgroup.
                    rc if rc == -libc::ENOLINK => {}
                    rc => bail!(
                        "updating the link on {what}: {}",
                        io::Error::from_raw_os_error(-rc)
                    ),
                }
            }
            1 => {
                // SAFETY: plain syscall wrapper on an fd this thread owns.
                let rc = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
                ensure!(rc == 0, "detaching the link on {what}: {rc}");
                Counts::bump(&counts.detached);
            }
            // Closed while attached, below: the link's release detaches it.
            2 => Counts::bump(&counts.closed),
            _ => {
                // Removed with the link attached: the release detaches it.
                if rmdir_if_mine(live, &dir)? {
                    expect_pollhup(&link, &format!("{what}, removed under the link"))?;
                    Counts::bump(&counts.removed_under_link);
                }
            }
        }
        // Whatever happened, a link whose cgroup is gone is detached.
        if !dir.exists() {
            expect_pollhup(&link, &format!("{what}, removed"))?;
        }
        drop(link);
        rmdir_if_mine(live, &dir)?;
    }
    for h in [&a, &b] {
        counts.handler_calls.fetch_add(h.stats().calls, Relaxed);
    }
    Ok(())
}

fn rmdir_if_mine(live: &Live, dir: &Path) -> Result<bool> {
    if live.take(dir) {
        rmdir(dir)
    } else {
        Ok(false)
    }
}

fn remover(counts: &Counts, live: &Live, deadline: Instant) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    while Instant::now() < deadline {
        if let Some(dir) = live.take_random(&mut rng) {
            if rmdir(&dir)? {
                Counts::bump(&counts.removed_by_remover);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.u64(1..20)));
    }
    Ok(())
}

fn declarer(counts: &Counts, live: &Live, deadline: Instant) -> Result<()> {
    let h = Handler::load(Action::Defer, 0, 0)?;
    let mut rng = fastrand::Rng::with_seed(0xdec1);
    while Instant::now() < deadline {
        if let Some(id) = live.random_id(&mut rng) {
            let d = h.declare_oom(id, 0, 1)?;
            // -ENOENT: the cgroup went away first; -EBUSY: another OOM holds oom_lock;
            // 0: an empty cgroup has nothing to kill.
            ensure!(
                d.prog_ret == -libc::ENOENT
                    || (d.prog_ret == 0 && (d.ret[0] == 0 || d.ret[0] == -libc::EBUSY)),
                "declaring an OOM of cgroup {id}: {d}"
            );
            if d.prog_ret == 0 && d.ret[0] == 0 {
                Counts::bump(&counts.declared);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
