//! Helpers for guest scenarios: cgroups, memory hogs, waiting, the kernel log, and the
//! lines a scenario sends back to the host (story lines for the demo, JSON for benchmarks).
//!
//! Everything here runs inside the test VM as root, with cgroup v2 mounted at
//! /sys/fs/cgroup and the memory controller enabled in the root (see the /init script).

// A toolbox for scenarios: not every helper has a user at every point in time.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Where cgroup v2 is mounted in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Writes `value` to `path` in a single write(2), as sysfs, cgroupfs and procfs expect.
pub fn write_file(path: impl AsRef<Path>, value: impl AsRef<[u8]>) -> Result<()> {
    let path = path.as_ref();
    fs::write(path, value.as_ref()).with_context(|| {
        format!(
            "writing {:?} to {}",
            String::from_utf8_lossy(value.as_ref()),
            path.display()
        )
    })
}

/// Reads the whole of `path` as text.
pub fn read_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Calls `check` every 20 ms until it yields a value; fails on its first error, or after
/// `timeout` with an error naming `what` was awaited.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {:.1} s waiting for {what}",
                timeout.as_secs_f64()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// [`poll`] for a condition.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    poll(timeout, what, || Ok(cond().then_some(())))
}

/// A line of the demo's story: the host's `demo` command prints these, in order.
pub fn story(line: impl AsRef<str>) {
    println!("{}{}", crate::protocol::STORY, line.as_ref());
}

/// A benchmark result: the host's `bench` command collects these per scenario.
pub fn emit_json(record: &crate::records::Record) {
    let line = serde_json::to_string(record).expect("a record serializes");
    println!("{}{line}", crate::protocol::JSON);
}

/// True when the host asked for a shortened run (`bench --quick`).
pub fn quick() -> bool {
    fs::read_to_string("/proc/cmdline")
        .map(|c| {
            c.split_whitespace()
                .any(|a| a == crate::protocol::QUICK_ARG)
        })
        .unwrap_or(false)
}

/// The counters of a cgroup's memory.events file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    /// Parses the `key value` lines of memory.events; unknown keys are ignored.
    pub fn parse(text: &str) -> Result<Self> {
        let mut ev = MemoryEvents::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(key), Some(value)) = (it.next(), it.next()) else {
                continue;
            };
            let value: u64 = value
                .parse()
                .with_context(|| format!("memory.events line {line:?}"))?;
            match key {
                "low" => ev.low = value,
                "high" => ev.high = value,
                "max" => ev.max = value,
                "oom" => ev.oom = value,
                "oom_kill" => ev.oom_kill = value,
                "oom_group_kill" => ev.oom_group_kill = value,
                _ => {}
            }
        }
        Ok(ev)
    }
}

/// A cgroup v2 directory. One made with [`Cgroup::create`] is removed (after killing what
/// is left in it) when dropped; one from [`Cgroup::open`] is left alone.
#[derive(Debug)]
pub struct Cgroup {
    /// Path below the cgroup root, without leading '/', e.g. "batch/job1"; "" is the root.
    rel: String,
    dir: PathBuf,
    owned: bool,
}

impl Cgroup {
    /// The root cgroup.
    pub fn root() -> Cgroup {
        Cgroup {
            rel: String::new(),
            dir: PathBuf::from(CGROUP_ROOT),
            owned: false,
        }
    }

    /// An existing cgroup, e.g. `Cgroup::open("system.slice")`.
    pub fn open(rel: &str) -> Result<Cgroup> {
        let rel = rel.trim_matches('/').to_string();
        let dir = Path::new(CGROUP_ROOT).join(&rel);
        if !dir.is_dir() {
            bail!("cgroup {} does not exist", dir.display());
        }
        Ok(Cgroup {
            rel,
            dir,
            owned: false,
        })
    }

    /// Creates `rel` (e.g. "batch/job1") and any missing parents, enabling the memory
    /// controller in every ancestor's cgroup.subtree_control on the way. An already
    /// existing directory is reused.
    pub fn create(rel: &str) -> Result<Cgroup> {
        let rel = rel.trim_matches('/').to_string();
        if rel.is_empty() {
            bail!("Cgroup::create needs a path below the root");
        }
        let mut dir = PathBuf::from(CGROUP_ROOT);
        for part in rel.split('/') {
            write_file(dir.join("cgroup.subtree_control"), "+memory")?;
            dir.push(part);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        Ok(Cgroup {
            rel,
            dir,
            owned: true,
        })
    }

    /// A child of this cgroup, created like [`Cgroup::create`].
    pub fn child(&self, name: &str) -> Result<Cgroup> {
        Cgroup::create(&format!("{}/{}", self.rel, name))
    }

    /// The path as policies and the kernel name it: "/batch/job1", "/" for the root.
    pub fn path(&self) -> String {
        format!("/{}", self.rel)
    }

    /// The directory under /sys/fs/cgroup.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup id: the inode number of its directory (what BPF sees as cgroup id).
    pub fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.dir)
            .with_context(|| format!("stat {}", self.dir.display()))?
            .ino())
    }

    /// Writes one of the cgroup's control files, e.g. `set("memory.max", "64M")`.
    pub fn set(&self, file: &str, value: impl AsRef<[u8]>) -> Result<()> {
        write_file(self.dir.join(file), value)
    }

    /// Reads one of the cgroup's control files, trailing newline removed.
    pub fn read(&self, file: &str) -> Result<String> {
        Ok(read_file(self.dir.join(file))?.trim_end().to_string())
    }

    /// Reads a control file holding a single number, e.g. memory.current.
    pub fn read_u64(&self, file: &str) -> Result<u64> {
        let text = self.read(file)?;
        text.parse()
            .with_context(|| format!("{}/{file} holds {text:?}, not a number", self.dir.display()))
    }

    /// memory.events of this cgroup (counts include its descendants).
    pub fn events(&self) -> Result<MemoryEvents> {
        MemoryEvents::parse(&self.read("memory.events")?)
            .with_context(|| format!("parsing {}/memory.events", self.dir.display()))
    }

    /// The pids in cgroup.procs (this cgroup only, not its descendants).
    pub fn procs(&self) -> Result<Vec<i32>> {
        let text = self.read("cgroup.procs")?;
        text.lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .with_context(|| format!("cgroup.procs line {l:?}"))
            })
            .collect()
    }

    /// Whether any process lives in this cgroup or below (cgroup.events "populated").
    pub fn populated(&self) -> Result<bool> {
        Ok(self
            .read("cgroup.events")?
            .lines()
            .any(|l| l.trim() == "populated 1"))
    }

    /// SIGKILLs every process in the subtree through cgroup.kill and waits until it is empty.
    pub fn kill_all(&self) -> Result<()> {
        self.set("cgroup.kill", "1")?;
        wait_until(
            Duration::from_secs(10),
            &format!("{} to empty after cgroup.kill", self.path()),
            || !self.populated().unwrap_or(true),
        )
    }

    /// Kills what is left and removes the cgroup and its descendants, retrying while the
    /// kernel still holds them busy.
    pub fn remove(mut self) -> Result<()> {
        self.owned = false;
        self.remove_dir()
    }

    fn remove_dir(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.kill_all()?;
        remove_tree(&self.dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = self.remove_dir() {
                eprintln!("warning: cleaning up cgroup {}: {e:#}", self.path());
            }
        }
    }
}

/// rmdir()s a cgroup directory tree bottom-up, retrying EBUSY (dying tasks, children
/// still going offline) for up to 30 s per directory.
fn remove_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e)
                if start.elapsed() < Duration::from_secs(30)
                    && e.raw_os_error() == Some(nix::libc::EBUSY) =>
            {
                thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

/// What a [`Hog`] does: touch `mib` MiB, then either sleep or keep growing.
#[derive(Clone, Debug, Default)]
pub struct HogSpec {
    /// MiB allocated and touched before the hog reports ready.
    pub mib: u64,
    /// Keep allocating after the initial `mib`, `step_kib` at a time, until killed.
    pub grow: bool,
    /// Size of each growth step (default 1024 KiB).
    pub step_kib: Option<u64>,
    /// Pause between growth steps (default none).
    pub delay_us: Option<u64>,
    /// Stop growing (and sleep) once this many MiB are touched (default: never).
    pub max_mib: Option<u64>,
    /// Once ready, wait for [`Hog::release`] before growing, so that whatever must
    /// know the hog's pid (a handler's target) is set before it can reach an OOM.
    pub gated: bool,
    /// The hog's /proc/self/oom_score_adj (default 0; the runner itself is -1000).
    pub oom_score_adj: i32,
}

impl HogSpec {
    /// Touches `mib` MiB, then sleeps until killed.
    pub fn fixed(mib: u64) -> HogSpec {
        HogSpec {
            mib,
            ..HogSpec::default()
        }
    }

    /// Touches `mib` MiB, reports ready, then allocates without end.
    pub fn growing(mib: u64) -> HogSpec {
        HogSpec {
            mib,
            grow: true,
            ..HogSpec::default()
        }
    }

    pub fn step_kib(mut self, kib: u64) -> HogSpec {
        self.step_kib = Some(kib);
        self
    }

    pub fn delay_us(mut self, us: u64) -> HogSpec {
        self.delay_us = Some(us);
        self
    }

    /// Caps the growth at `mib` MiB in all. A hog that must push its cgroup into an OOM
    /// once, then stay alive without refilling what the OOM freed, stops between the
    /// two: above the room the others leave, below the limit on its own.
    pub fn up_to(mut self, mib: u64) -> HogSpec {
        self.max_mib = Some(mib);
        self
    }

    pub fn gated(mut self) -> HogSpec {
        self.gated = true;
        self
    }

    pub fn oom_score_adj(mut self, adj: i32) -> HogSpec {
        self.oom_score_adj = adj;
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "guest".into(),
            "hog".into(),
            "--mib".into(),
            self.mib.to_string(),
        ];
        if self.grow {
            args.push("--grow".into());
        }
        if let Some(k) = self.step_kib {
            args.extend(["--step-kib".into(), k.to_string()]);
        }
        if let Some(d) = self.delay_us {
            args.extend(["--delay-us".into(), d.to_string()]);
        }
        if let Some(m) = self.max_mib {
            args.extend(["--max-mib".into(), m.to_string()]);
        }
        if self.gated {
            args.push("--gated".into());
        }
        args.push(format!("--oom-score-adj={}", self.oom_score_adj));
        args
    }
}

/// Spawns `cmd` inside `cgroup` (moved there between fork and exec, so nothing it does is
/// charged elsewhere), with its oom_score_adj set to `adj` when given (children of the
/// runner otherwise inherit its -1000).
pub fn spawn_in(cgroup: &Cgroup, cmd: &mut Command, adj: Option<i32>) -> Result<Child> {
    let procs_path = cgroup.dir().join("cgroup.procs");
    let procs: OwnedFd = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?
        .into();
    let fd = procs.as_raw_fd();
    let adj_text = adj.map(|a| a.to_string().into_bytes());
    let adj_path = CString::new("/proc/self/oom_score_adj").unwrap();
    // SAFETY: only open(2), write(2) and close(2) on memory prepared before fork:
    // async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let zero = b"0";
            if nix::libc::write(fd, zero.as_ptr().cast(), zero.len()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(text) = &adj_text {
                let f = nix::libc::open(adj_path.as_ptr(), nix::libc::O_WRONLY);
                if f < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = nix::libc::write(f, text.as_ptr().cast(), text.len());
                nix::libc::close(f);
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {cmd:?} in {}", cgroup.path()))?;
    drop(procs);
    Ok(child)
}

/// A memory hog: this same binary running `guest hog`, started inside a cgroup (it is moved
/// there between fork and exec, so none of its memory is charged elsewhere). Dropping a Hog
/// kills it if it still runs.
pub struct Hog {
    child: Child,
    pid: i32,
    lines: mpsc::Receiver<String>,
    /// The gate of a gated hog, until released.
    gate: Option<ChildStdin>,
}

impl Hog {
    /// Starts a hog in `cgroup`; call [`Hog::wait_ready`] before relying on its memory.
    pub fn spawn(cgroup: &Cgroup, spec: &HogSpec) -> Result<Hog> {
        let exe = std::env::current_exe().context("locating the vm-tests binary")?;
        let mut cmd = Command::new(&exe);
        cmd.args(spec.args())
            .stdin(if spec.gated {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped());
        let mut child =
            spawn_in(cgroup, &mut cmd, None).with_context(|| format!("starting hog {spec:?}"))?;
        let gate = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        Ok(Hog {
            child,
            pid,
            lines,
            gate,
        })
    }

    /// Starts a hog and waits until its initial memory is touched.
    pub fn start(cgroup: &Cgroup, spec: &HogSpec, timeout: Duration) -> Result<Hog> {
        let mut hog = Hog::spawn(cgroup, spec)?;
        hog.wait_ready(timeout)?;
        Ok(hog)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the hog's "hog ready" line: its initial `mib` MiB are resident.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim() == HOG_READY => return Ok(()),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "hog {} not ready after {:.1} s",
                        self.pid,
                        timeout.as_secs_f64()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().context("waiting for the hog")?;
                    bail!(
                        "hog {} ended before it was ready: {}",
                        self.pid,
                        describe_status(status)
                    );
                }
            }
        }
    }

    /// Lets a gated hog start growing.
    pub fn release(&mut self) -> Result<()> {
        let mut gate = self
            .gate
            .take()
            .with_context(|| format!("hog {} is not gated, or already released", self.pid))?;
        gate.write_all(b"go\n")
            .with_context(|| format!("releasing hog {}", self.pid))
    }

    /// The exit status if the hog has ended (reaping it), None while it runs.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking hog {}", self.pid))
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits up to `timeout` for the hog to end; Ok only if SIGKILL ended it.
    pub fn wait_killed(&mut self, timeout: Duration) -> Result<()> {
        let mut status = None;
        wait_until(timeout, &format!("hog {} to be killed", self.pid), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        })?;
        let status = status.expect("set when the wait succeeded");
        if status.signal() != Some(nix::libc::SIGKILL) {
            bail!(
                "hog {} ended by {} instead of SIGKILL",
                self.pid,
                describe_status(status)
            );
        }
        Ok(())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// "exit code 3", "signal 9 (SIGKILL)".
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        None => format!("{status}"),
    }
}

/// What a hog prints once its initial memory is resident.
pub const HOG_READY: &str = "hog ready";

/// The body of `vm-tests guest hog`: never returns unless setup fails.
pub fn run_hog(spec: &HogSpec) -> Result<()> {
    write_file("/proc/self/oom_score_adj", spec.oom_score_adj.to_string())?;
    touch_mib(spec.mib)?;
    println!("{HOG_READY}");
    std::io::stdout().flush().ok();
    if spec.gated {
        let mut go = String::new();
        std::io::stdin()
            .read_line(&mut go)
            .context("waiting at the gate")?;
    }
    let step = spec.step_kib.unwrap_or(1024).max(4) * 1024;
    let max = spec.max_mib.map_or(u64::MAX, |m| m << 20);
    let mut held = spec.mib << 20;
    while spec.grow && held < max {
        touch_bytes(step as usize)?;
        held += step;
        if let Some(d) = spec.delay_us.filter(|d| *d > 0) {
            thread::sleep(Duration::from_micros(d));
        }
    }
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn touch_mib(mib: u64) -> Result<()> {
    for _ in 0..mib {
        touch_bytes(1 << 20)?;
    }
    Ok(())
}

/// Maps `len` anonymous bytes and writes to every page, so the memory is charged now.
/// The mapping is never unmapped: a hog only gives memory back by dying.
fn touch_bytes(len: usize) -> Result<()> {
    use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
    let size = std::num::NonZeroUsize::new(len).context("zero-sized allocation")?;
    // SAFETY: a fresh private anonymous mapping, written only within its bounds.
    unsafe {
        let ptr = mmap_anonymous(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
        .context("mmap")?;
        let base = ptr.as_ptr().cast::<u8>();
        for off in (0..len).step_by(4096) {
            base.add(off).write_volatile(1);
        }
    }
    Ok(())
}

/// A position in the kernel log; [`Kmsg::since`] returns what was logged after it:
/// `let mut kmsg = Kmsg::mark()?; ...; let lines = kmsg.since()?;`
pub struct Kmsg {
    file: fs::File,
}

impl Kmsg {
    /// Marks the current end of the kernel log.
    pub fn mark() -> Result<Kmsg> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("opening /dev/kmsg")?;
        file.seek(SeekFrom::End(0)).context("seeking /dev/kmsg")?;
        Ok(Kmsg { file })
    }

    /// The messages (text only) logged since the mark or the previous call.
    pub fn since(&mut self) -> Result<Vec<String>> {
        Ok(self.records()?.into_iter().map(|r| r.text).collect())
    }

    /// Waits up to `timeout` for a message that satisfies `pred`, logged since the mark
    /// or the previous call, and returns it; the messages read on the way are consumed.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        poll(timeout, &format!("{what} in the kernel log"), || {
            Ok(self.since()?.into_iter().find(|l| pred(l)))
        })
    }

    /// The records logged since the mark or the previous call, with their timestamps.
    pub fn records(&mut self) -> Result<Vec<KmsgRecord>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                // One record per read: "prio,seq,usec,flags;text\n" plus " KEY=value" lines.
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let first = rec.lines().next().unwrap_or("");
                    if let Some((head, text)) = first.split_once(';') {
                        let usec = head.split(',').nth(2).and_then(|u| u.parse().ok());
                        out.push(KmsgRecord {
                            usec: usec.unwrap_or(0),
                            text: text.to_string(),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten before we read them; carry on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                Err(e) => return Err(e).context("reading /dev/kmsg"),
            }
        }
        Ok(out)
    }
}

/// The kernel log since `kmsg`'s mark, for kill checks.
pub struct KillLog {
    pub lines: Vec<String>,
}

impl KillLog {
    /// Reads on until the log reports the kill of every pid in `victims`: the kernel
    /// writes that line just after the SIGKILL, so a victim other than the allocating
    /// task can be dead and reaped before its line is there.
    pub fn read(kmsg: &mut Kmsg, victims: &[i32]) -> Result<KillLog> {
        let mut log = KillLog { lines: Vec::new() };
        let what = format!("the kernel log to report the kill of {victims:?}");
        let reported = poll(Duration::from_secs(10), &what, || {
            log.lines.extend(kmsg.since()?);
            Ok(victims
                .iter()
                .all(|&pid| log.kill_line(pid).is_some())
                .then_some(()))
        });
        match reported {
            Ok(()) => Ok(log),
            Err(e) => bail!("{e:#}; the kernel log since the mark:\n{}", log.text()),
        }
    }

    /// The pids of every "Killed process N" report, in order.
    pub fn killed_pids(&self) -> Vec<i32> {
        self.lines
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("Killed process ")? + "Killed process ".len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect()
    }

    /// The "...: Killed process N (comm) ..." line of `pid`.
    pub fn kill_line(&self, pid: i32) -> Option<&str> {
        let wanted = format!("Killed process {pid} ");
        self.lines
            .iter()
            .find(|l| l.contains(&wanted))
            .map(String::as_str)
    }

    /// Fails unless `pid` (the `role`) is the one and only task the log reports killed.
    pub fn expect_only_killed(&self, pid: i32, role: &str) -> Result<()> {
        ensure!(
            self.killed_pids() == vec![pid],
            "the kernel log reports kills of {:?}, expected only the {role} {pid}:\n{}",
            self.killed_pids(),
            self.text()
        );
        Ok(())
    }

    /// Whether any OOM report says a BPF OOM handler chose the victim.
    pub fn bpf_chose_any(&self) -> bool {
        self.lines
            .iter()
            .any(|l| l.contains("oom victim chosen by BPF OOM handler"))
    }

    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// One kernel log record: its timestamp (local_clock(), µs since boot) and text.
#[derive(Clone, Debug)]
pub struct KmsgRecord {
    pub usec: u64,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_events_parse() {
        let ev = MemoryEvents::parse(
            "low 0\nhigh 2\nmax 17\noom 1\noom_kill 1\noom_group_kill 0\nsock_throttled 0\n",
        )
        .unwrap();
        assert_eq!(
            ev,
            MemoryEvents {
                low: 0,
                high: 2,
                max: 17,
                oom: 1,
                oom_kill: 1,
                oom_group_kill: 0
            }
        );
        assert!(MemoryEvents::parse("oom x\n").is_err());
    }

    #[test]
    fn hog_args() {
        let spec = HogSpec::growing(16)
            .step_kib(256)
            .delay_us(10)
            .oom_score_adj(500);
        assert_eq!(
            spec.args().join(" "),
            "guest hog --mib 16 --grow --step-kib 256 --delay-us 10 --oom-score-adj=500"
        );
        assert_eq!(
            HogSpec::growing(4).up_to(64).gated().args().join(" "),
            "guest hog --mib 4 --grow --max-mib 64 --gated --oom-score-adj=0"
        );
        assert_eq!(
            HogSpec::fixed(8).args().join(" "),
            "guest hog --mib 8 --oom-score-adj=0"
        );
    }

    #[test]
    fn kill_log_pids() {
        let log = KillLog {
            lines: vec![
                "oom victim chosen by BPF OOM handler \"policyd_priority\"".into(),
                "policyd: Killed process 212 (vm-tests) total-vm:1kB".into(),
                "Memory cgroup out of memory: Killed process 215 (vm-tests) total-vm:1kB".into(),
            ],
        };
        assert_eq!(log.killed_pids(), vec![212, 215]);
        assert!(log.bpf_chose_any());
        assert!(log.kill_line(21).is_none());
        assert!(log.kill_line(215).unwrap().starts_with("Memory cgroup"));
    }
}
