//! What the bench-* scenarios share: the OOM stopwatch (vm-tests/bpf/bench.bpf.c), named
//! processes placed in cgroups, earlyoom as a child process, /proc readers and the JSON
//! records the host turns into target/vm-tests/bench.{json,md}. policyd runs through
//! pdutil's `Policyd`, as in the tests.
//!
//! Benchmarks report; they do not judge. A scenario fails only when it cannot measure
//! (setup failed, a contender would not start); what it measured, good or bad, goes into
//! the JSON for the report.

// A toolbox: not every helper has a user in every bench scenario.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::mem::{size_of, MaybeUninit};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{OpenObject, ProgramInput};

use crate::guest::util::{self, spawn_in, Cgroup, Kmsg, KmsgRecord};
use crate::records::{Env, Record};

#[rustfmt::skip]
mod skel { include!(concat!(env!("OUT_DIR"), "/bench.skel.rs")); }
use skel::{BenchSkel, BenchSkelBuilder};

/// bpf_out_of_memory() flag: wait for a concurrent OOM instead of failing with -EBUSY.
pub const BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK: u64 = 1 << 0;

/// Where the named symlinks to this binary live (see [`named_exe`]).
const NAMES_DIR: &str = "/run/bench";

// ---------------------------------------------------------------------------------------
// The stopwatch
// ---------------------------------------------------------------------------------------

/// struct bench_oom_args in vm-tests/bpf/bench.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct OomArgs {
    cgroup_id: u64,
    flags: u64,
    start_ns: u64,
    ns: u64,
    marked_ns: u64,
    ret: i32,
    err: i32,
}

/// One declared OOM: how long bpf_out_of_memory() took and what it returned.
#[derive(Clone, Copy, Debug)]
pub struct TimedOom {
    /// CLOCK_MONOTONIC when bpf_out_of_memory() was called.
    pub start_ns: u64,
    pub ns: u64,
    /// From the call to the first victim marked (mark_oom_victim(), right after its
    /// SIGKILL), on the same clock; None if none was.
    pub marked_ns: Option<u64>,
    /// 1: memory was freed (someone was killed or awaited), 0: not.
    pub ret: i32,
}

/// The loaded `timed_oom` SEC("syscall") program.
pub struct Stopwatch {
    skel: BenchSkel<'static>,
}

impl Stopwatch {
    pub fn load() -> Result<Stopwatch> {
        // A scenario loads it once and then powers the VM off: the storage is leaked.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = BenchSkelBuilder::default()
            .open(storage)
            .context("opening the bench BPF object")?;
        let mut skel = open
            .load()
            .context("loading the bench BPF object (verifier log above)")?;
        libbpf_rs::skel::Skel::attach(&mut skel)
            .context("attaching the bench's mark_victim tracepoint program")?;
        Ok(Stopwatch { skel })
    }

    /// Declares an OOM of `cgroup`'s memcg (the root cgroup: a system-wide OOM), waiting
    /// for oom_lock if another OOM holds it, and times it.
    pub fn oom(&self, cgroup: &Cgroup) -> Result<TimedOom> {
        let cgroup_id = if cgroup.path() == "/" {
            0
        } else {
            cgroup.id()?
        };
        let mut args = OomArgs {
            cgroup_id,
            flags: BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK,
            ret: i32::MIN,
            ..Default::default()
        };
        // SAFETY: OomArgs is repr(C) plain data; the slice covers exactly it.
        let ctx = unsafe {
            std::slice::from_raw_parts_mut(
                (&mut args as *mut OomArgs).cast::<u8>(),
                size_of::<OomArgs>(),
            )
        };
        self.skel
            .progs
            .timed_oom
            .test_run(ProgramInput {
                context_in: Some(ctx),
                ..Default::default()
            })
            .context("running the timed_oom syscall program (BPF_PROG_TEST_RUN)")?;
        if args.err != 0 {
            bail!(
                "timed_oom: no memcg for cgroup {} ({})",
                cgroup.path(),
                args.err
            );
        }
        if args.ret < 0 {
            bail!(
                "bpf_out_of_memory() on {} failed: {}",
                cgroup.path(),
                std::io::Error::from_raw_os_error(-args.ret)
            );
        }
        Ok(TimedOom {
            start_ns: args.start_ns,
            ns: args.ns,
            marked_ns: (args.marked_ns != 0).then_some(args.marked_ns),
            ret: args.ret,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// A path that execs this binary under the command name `comm` (the kernel takes a task's
/// comm from the file name it was exec'd by), so that `ps`, the OOM report and earlyoom's
/// --prefer/--avoid see "hog" or "service" rather than "vm-tests".
pub fn named_exe(comm: &str) -> Result<PathBuf> {
    fs::create_dir_all(NAMES_DIR).with_context(|| format!("creating {NAMES_DIR}"))?;
    let link = Path::new(NAMES_DIR).join(comm);
    if !link.exists() {
        let exe = std::env::current_exe().context("locating the vm-tests binary")?;
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("linking {} to {}", link.display(), exe.display()))?;
    }
    Ok(link)
}

/// What a hog does once started (the `guest hog` subcommand of this binary).
#[derive(Clone, Copy, Debug)]
pub enum HogMode {
    /// Touch this many MiB, say so on stdout, then sleep.
    Fixed(u64),
    /// Touch 1 MiB at a time without end, pausing this many µs between steps (0: none).
    Grow { delay_us: u64 },
}

/// Starts this binary's memory hog as `comm` in `cgroup`, with oom_score_adj 0.
/// A [`HogMode::Fixed`] hog is returned once its memory is resident.
pub fn start_hog(comm: &str, cgroup: &Cgroup, mode: HogMode) -> Result<Child> {
    let mut cmd = Command::new(named_exe(comm)?);
    cmd.args(["guest", "hog", "--oom-score-adj=0"])
        .stdin(Stdio::null());
    match mode {
        HogMode::Fixed(mib) => {
            cmd.args(["--mib", &mib.to_string()]).stdout(Stdio::piped());
        }
        HogMode::Grow { delay_us } => {
            cmd.args(["--mib", "0", "--grow", "--step-kib", "1024"])
                .stdout(Stdio::null());
            if delay_us > 0 {
                cmd.args(["--delay-us", &delay_us.to_string()]);
            }
        }
    }
    let mut child = spawn_in(cgroup, &mut cmd, Some(0))?;
    if let HogMode::Fixed(mib) = mode {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the hog's ready line")?;
        if line.trim() != util::HOG_READY {
            let status = child.wait()?;
            bail!(
                "{comm} ({mib} MiB) in {} ended before it was ready: {}",
                cgroup.path(),
                util::describe_status(status)
            );
        }
    }
    Ok(child)
}

/// Child cgroups of `parent` with these names, the memory controller enabled for them.
/// Cgroup::create writes cgroup.subtree_control of every ancestor for each cgroup it
/// creates, which costs time in proportion to the subtree each time: a thousand children
/// made that way take minutes under TCG. These are not owned: removing `parent` (or an
/// ancestor) removes them.
pub fn make_children(
    parent: &Cgroup,
    names: impl IntoIterator<Item = String>,
) -> Result<Vec<Cgroup>> {
    parent.set("cgroup.subtree_control", "+memory")?;
    let base = parent.path();
    let base = base.trim_matches('/');
    names
        .into_iter()
        .map(|name| {
            let dir = parent.dir().join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
            Cgroup::open(&format!("{base}/{name}"))
        })
        .collect()
}

/// What blockers wait on: a FIFO nobody ever opens for writing.
const FIFO: &str = "/run/bench.fifo";

/// Starts `count` processes in each (cgroup directory, count) of `groups` that sleep
/// until killed: busybox subshells blocked opening a FIFO, forked without an exec (several
/// times cheaper than `sleep &` under TCG), with oom_score_adj 0. One busybox shell,
/// started in the root cgroup (outside every bench scope), forks one subshell per group,
/// which moves itself into its cgroup and forks the rest there: they inherit the cgroup.
/// (A migration per process instead, through cgroup.procs, takes the cgroup threadgroup
/// rwsem for writing each time and crawls under TCG: minutes for 10000.) Returns the shell
/// once every process is in place.
pub fn spawn_blockers(groups: &[(PathBuf, usize)]) -> Result<Child> {
    if !Path::new(FIFO).exists() {
        nix::unistd::mkfifo(FIFO, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("mkfifo {FIFO}"))?;
    }
    const SCRIPT: &str = "f=$1; shift; \
        while [ $# -gt 0 ]; do d=$1; k=$2; shift 2; \
          ( echo 0 >\"$d/cgroup.procs\" || exit 1; \
            i=1; while [ $i -lt $k ]; do { read x <$f; } & i=$((i+1)); done; \
            echo r; read x <$f ) & \
        done; read x <$f";
    let groups: Vec<&(PathBuf, usize)> = groups.iter().filter(|(_, k)| *k > 0).collect();
    let mut cmd = Command::new("/bin/busybox");
    cmd.args(["sh", "-c", SCRIPT, "sh", FIFO])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (dir, k) in &groups {
        cmd.arg(dir).arg(k.to_string());
    }
    let mut shell = spawn_in(&Cgroup::root(), &mut cmd, Some(0))?;
    let mut out = BufReader::new(shell.stdout.take().expect("piped stdout"));
    let mut ready = 0;
    let mut line = String::new();
    while ready < groups.len() {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            let st = shell.try_wait()?;
            kill_reap(&mut shell);
            bail!(
                "the blocker shell ended after {ready} of {} groups ({:?})",
                groups.len(),
                st.map(util::describe_status)
            );
        }
        if line.trim() == "r" {
            ready += 1;
        }
    }
    Ok(shell)
}

/// At most this many sleepers share one `guest sleepers` process's address space: the
/// kernel's oom_badness() gives each of them that space's RSS (its binary and their
/// stacks), which must stay far below a benchmark victim's (2048 stacks: 1 MiB).
const SLEEPERS_PER_SPAWNER: usize = 2048;
/// A sleeper's user stack: clone()'s trampoline and one syscall use a few dozen bytes.
const SLEEPER_STACK: usize = 512;
/// What a `guest sleepers` process prints once all its children exist.
const SLEEPERS_READY: &str = "sleepers ready";

/// Starts `count` sleeping processes in each (cgroup directory, count) of `groups`, with
/// oom_score_adj 0: the cheapest task the kernel's OOM scan evaluates in full. Each is
/// its own process (thread group), which `for_each_process()`, a memcg's task scan and
/// policyd's task iterators all visit, and whose `oom_badness()` is computed as for any
/// process (threads are not: the scans visit processes). They are clone(CLONE_VM)
/// children of a `guest sleepers` process and share its address space: no page tables or
/// memory map of their own, about 30 KiB of kernel memory each, where a forked busybox
/// subshell costs 90 KiB. Each `guest sleepers` process starts in the root cgroup (outside
/// every bench scope), moves itself into each of its cgroups in turn, clones its share
/// there (they inherit the cgroup: one migration per cgroup, not per process) and moves
/// back. Returns those processes once every sleeper exists.
pub fn spawn_sleepers(groups: &[(PathBuf, usize)]) -> Result<Vec<Child>> {
    let mut chunks: Vec<Vec<(PathBuf, usize)>> = vec![Vec::new()];
    let mut in_chunk = 0;
    for (dir, count) in groups {
        let mut left = *count;
        while left > 0 {
            if in_chunk == SLEEPERS_PER_SPAWNER {
                chunks.push(Vec::new());
                in_chunk = 0;
            }
            let k = left.min(SLEEPERS_PER_SPAWNER - in_chunk);
            chunks
                .last_mut()
                .expect("one chunk at least")
                .push((dir.clone(), k));
            in_chunk += k;
            left -= k;
        }
    }
    let mut spawners = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let mut cmd = Command::new(named_exe("sleepers")?);
        cmd.args(["guest", "sleepers"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (dir, k) in chunk {
            cmd.arg(dir).arg(k.to_string());
        }
        let mut child = spawn_in(&Cgroup::root(), &mut cmd, Some(0))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .context("reading a sleepers process's ready line")?;
        if line.trim() != SLEEPERS_READY {
            let st = child.wait()?;
            for mut s in spawners {
                kill_reap(&mut s);
            }
            bail!(
                "a sleepers process for {} cgroups ended before it was ready: {}",
                chunk.len(),
                util::describe_status(st)
            );
        }
        spawners.push(child);
    }
    Ok(spawners)
}

extern "C" fn sleep_forever(_: *mut nix::libc::c_void) -> nix::libc::c_int {
    loop {
        // SAFETY: pause(2) touches no memory; the raw call keeps glibc's cancellation
        // machinery (and its stack use) out of a 512-byte stack.
        unsafe {
            nix::libc::syscall(nix::libc::SYS_pause);
        }
    }
}

/// The `guest sleepers DIR COUNT...` subcommand: see [`spawn_sleepers`].
pub fn run_sleepers(args: &[String]) -> Result<()> {
    if args.is_empty() || args.len() % 2 != 0 {
        bail!("guest sleepers wants pairs of CGROUP-DIR COUNT, got {args:?}");
    }
    let mut groups = Vec::new();
    for pair in args.chunks(2) {
        let count: usize = pair[1]
            .parse()
            .with_context(|| format!("sleeper count {:?} for {}", pair[1], pair[0]))?;
        groups.push((PathBuf::from(&pair[0]), count));
    }
    let total: usize = groups.iter().map(|(_, k)| k).sum();
    // Touched here, in the root cgroup: the stacks are charged there, not to a bench
    // cgroup whose usage a policy ranks. u128: 16-byte aligned stack tops.
    let stacks: &'static mut [u128] =
        Box::leak(vec![1u128; total * SLEEPER_STACK / 16].into_boxed_slice());
    let home = Cgroup::root().dir().join("cgroup.procs");
    // Killed sleepers are reaped by the kernel, never left as zombies in the task list.
    // SAFETY: SIG_IGN installs no handler.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGCHLD,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .context("ignoring SIGCHLD")?;
    let flags = nix::libc::CLONE_VM
        | nix::libc::CLONE_FS
        | nix::libc::CLONE_FILES
        | nix::libc::CLONE_SIGHAND
        | nix::libc::CLONE_SYSVSEM
        | nix::libc::SIGCHLD;
    let mut next = 0usize;
    for (dir, count) in &groups {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, "0").with_context(|| format!("moving into {}", procs.display()))?;
        for _ in 0..*count {
            next += 1;
            let top = stacks[..next * SLEEPER_STACK / 16].as_mut_ptr_range().end;
            // SAFETY: the child runs sleep_forever on its own 512 bytes of a leaked,
            // never freed buffer, and touches nothing else of the shared memory.
            let pid =
                unsafe { nix::libc::clone(sleep_forever, top.cast(), flags, std::ptr::null_mut()) };
            if pid < 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!(
                        "clone() of sleeper {next} of {total} in {} (kernel.threads-max, \
                         kernel.pid_max, pids.max?)",
                        dir.display()
                    )
                });
            }
        }
    }
    fs::write(&home, "0").with_context(|| format!("moving back into {}", home.display()))?;
    println!("{SLEEPERS_READY}");
    loop {
        nix::unistd::pause();
    }
}

/// Kills the processes of `cgs` a few hundred at a time, waiting for each batch to be
/// gone. Thousands of processes that map the same binary, killed at once, queue up on its
/// i_mmap_rwsem while they unmap it; under TCG with lockdep the last ones wait longer than
/// the hung-task timeout (20 s), whose report would fail the run.
pub fn kill_in_batches(cgs: &[&Cgroup], max_procs: usize) -> Result<()> {
    let mut batch: Vec<&Cgroup> = Vec::new();
    let mut n = 0;
    let flush = |batch: &mut Vec<&Cgroup>| -> Result<()> {
        for cg in batch.iter() {
            cg.set("cgroup.kill", "1")?;
        }
        for cg in batch.iter() {
            util::wait_until(
                Duration::from_secs(300),
                &format!("{} to empty after cgroup.kill", cg.path()),
                || !cg.populated().unwrap_or(true),
            )?;
        }
        batch.clear();
        Ok(())
    };
    for cg in cgs {
        let procs = cg.read("cgroup.procs")?.lines().count();
        if procs == 0 {
            continue;
        }
        if n + procs > max_procs && !batch.is_empty() {
            flush(&mut batch)?;
            n = 0;
        }
        batch.push(cg);
        n += procs;
    }
    flush(&mut batch)
}

/// A child forked from this process without an exec (see [`fork_burst_hog`]).
pub struct Forked {
    pid: i32,
    status: Option<ExitStatus>,
}

impl Forked {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The exit status once it has ended (reaping it), None while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        if self.status.is_none() {
            let mut raw = 0;
            // SAFETY: waitpid on our own child, writing one int.
            let rc = unsafe { nix::libc::waitpid(self.pid, &mut raw, nix::libc::WNOHANG) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("waitpid {}", self.pid));
            }
            if rc == self.pid {
                self.status = Some(ExitStatus::from_raw(raw));
            }
        }
        Ok(self.status)
    }

    pub fn kill_reap(&mut self) {
        if self.status.is_none() {
            signal(self.id(), nix::sys::signal::Signal::SIGKILL);
            let mut raw = 0;
            // SAFETY: as in try_wait, blocking.
            unsafe { nix::libc::waitpid(self.pid, &mut raw, 0) };
            use std::os::unix::process::ExitStatusExt;
            self.status = Some(ExitStatus::from_raw(raw));
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        self.kill_reap();
    }
}

/// A hog that allocates as fast as the kernel can hand out memory: forked from this
/// process (no exec), it names itself `comm`, moves into `cgroup`, sets oom_score_adj 0,
/// then maps `chunk_mib` MiB at a time with MAP_POPULATE until it is killed. The kernel
/// faults each chunk in within one system call: under TCG several times faster than
/// touching page after page from user space, which is what the `guest hog` does.
pub fn fork_burst_hog(comm: &str, cgroup: &Cgroup, chunk_mib: usize) -> Result<Forked> {
    let procs = CString::new(
        cgroup
            .dir()
            .join("cgroup.procs")
            .as_os_str()
            .as_encoded_bytes(),
    )?;
    let adj = CString::new("/proc/self/oom_score_adj").unwrap();
    let name = CString::new(comm)?;
    let len = chunk_mib << 20;
    // SAFETY: the child only makes raw system calls on memory prepared before the fork
    // (async-signal-safe) and never returns; the parent only records the pid.
    let pid = unsafe { nix::libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            use nix::libc::*;
            prctl(PR_SET_NAME, name.as_ptr() as c_ulong, 0, 0, 0);
            let fd = open(procs.as_ptr(), O_WRONLY);
            if fd < 0 || write(fd, b"0".as_ptr().cast(), 1) != 1 {
                _exit(101);
            }
            close(fd);
            let fd = open(adj.as_ptr(), O_WRONLY);
            if fd < 0 || write(fd, b"0".as_ptr().cast(), 1) != 1 {
                _exit(102);
            }
            close(fd);
            loop {
                let p = mmap(
                    std::ptr::null_mut(),
                    len,
                    PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                    -1,
                    0,
                );
                if p == MAP_FAILED {
                    let ts = timespec {
                        tv_sec: 0,
                        tv_nsec: 1_000_000,
                    };
                    nanosleep(&ts, std::ptr::null_mut());
                }
            }
        }
    }
    Ok(Forked { pid, status: None })
}

/// Waits up to `timeout` for `child` to end; None if it still runs.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().context("waitpid")? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs `child` if it still runs and reaps it.
pub fn kill_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Sends `sig` to `pid`, ignoring a process that is gone.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// The lines a child prints on stdout (and stderr, if piped), collected by reader threads.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Starts a reader thread appending every line of `r`; `echo` copies them to the
    /// console with that prefix.
    pub fn follow(&self, r: impl Read + Send + 'static, echo: Option<&'static str>) {
        let store = self.0.clone();
        thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if let Some(prefix) = echo {
                    println!("{prefix}{line}");
                }
                store.lock().unwrap().push(line);
            }
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Lines from index `from` on.
    pub fn since(&self, from: usize) -> Vec<String> {
        let v = self.0.lock().unwrap();
        v.get(from..).map(<[String]>::to_vec).unwrap_or_default()
    }
}

/// Debian's earlyoom (the initramfs carries /usr/bin/earlyoom and its libraries).
pub struct Earlyoom {
    pub child: Child,
    pub lines: Lines,
}

impl Earlyoom {
    /// Starts it with `args` and waits for its first memory report: it is then polling.
    pub fn start(args: &[&str]) -> Result<Earlyoom> {
        let mut cmd = Command::new("/usr/bin/earlyoom");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_in(&Cgroup::root(), &mut cmd, Some(0))?;
        let lines = Lines::default();
        lines.follow(child.stdout.take().expect("piped stdout"), None);
        lines.follow(child.stderr.take().expect("piped stderr"), None);
        let reported = util::wait_until(Duration::from_secs(20), "earlyoom's report", || {
            lines.snapshot().iter().any(|l| l.contains("mem avail"))
        });
        if reported.is_err() {
            let status = child.try_wait()?;
            kill_reap(&mut child);
            bail!(
                "earlyoom did not report memory within 20 s ({:?}); output:\n{}",
                status.map(util::describe_status),
                lines.snapshot().join("\n")
            );
        }
        Ok(Earlyoom { child, lines })
    }

    /// The pids it signalled, from its "sending SIGTERM to process PID ..." lines.
    pub fn signalled(&self, from: usize) -> Vec<(String, u32)> {
        self.lines
            .since(from)
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("sending SIG")? + "sending ".len()..];
                let sig = rest.split_whitespace().next()?.to_string();
                let after = &rest[rest.find("process ")? + "process ".len()..];
                let pid = after
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()?;
                Some((sig, pid))
            })
            .collect()
    }

    pub fn stop(mut self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        if wait_exit(&mut self.child, Duration::from_secs(10))
            .ok()
            .flatten()
            .is_none()
        {
            kill_reap(&mut self.child);
        }
    }
}

impl Drop for Earlyoom {
    fn drop(&mut self) {
        kill_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------
// The kernel log, with timestamps
// ---------------------------------------------------------------------------------------

/// CLOCK_MONOTONIC now, in ns (the clock of bpf_ktime_get_ns()).
pub fn monotonic_ns() -> u64 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A reader of /dev/kmsg from a mark on, keeping each record's timestamp (local_clock(),
/// µs), and a way to relate that clock to CLOCK_MONOTONIC: [`KmsgTs::mark`] writes a
/// record right after reading CLOCK_MONOTONIC, and the difference of the two is the offset
/// (give or take one write(2)).
pub struct KmsgTs {
    kmsg: Kmsg,
}

const MARK: &str = "bench: clock mark ";

impl KmsgTs {
    /// Starts reading at the current end of the log, then logs a clock mark.
    pub fn mark() -> Result<KmsgTs> {
        use std::io::Write;
        let kmsg = Kmsg::mark()?;
        let mut w = fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .context("opening /dev/kmsg for writing")?;
        let now = monotonic_ns();
        w.write_all(format!("{MARK}{now}").as_bytes())
            .context("writing a clock mark to /dev/kmsg")?;
        Ok(KmsgTs { kmsg })
    }

    /// The records logged since the mark or the previous call.
    pub fn since(&mut self) -> Result<Vec<KmsgRecord>> {
        self.kmsg.records()
    }
}

/// Where one declared OOM spent its time, in ns from the call, from the kernel log's
/// timestamps: when out_of_memory() started printing the OOM report ("invoked
/// oom-killer"), when the report was done (the "oom-kill:constraint=" line that follows
/// it), and when the kill was logged ("Killed process", after the victim is marked: the
/// kill's own time is [`TimedOom::marked_ns`]). The kernel chooses
/// before it prints; a BPF handler chooses, then calls bpf_oom_kill_process(), which
/// prints. Resolution: 1 µs, plus the error of the clock offset (one write(2)).
#[derive(Clone, Copy, Debug, Default)]
pub struct OomPhases {
    pub report_start_ns: Option<u64>,
    pub report_end_ns: Option<u64>,
    pub kill_line_ns: Option<u64>,
}

impl OomPhases {
    /// From the records of one OOM (the clock mark first) and its [`TimedOom`].
    pub fn from_log(log: &[KmsgRecord], oom: &TimedOom) -> OomPhases {
        let Some(mark) = log.iter().find_map(|r| {
            let mono: u64 = r.text.strip_prefix(MARK)?.trim().parse().ok()?;
            Some((r.usec * 1000) as i64 - mono as i64)
        }) else {
            return OomPhases::default();
        };
        // Kernel log time of the call.
        let start = oom.start_ns as i64 + mark;
        let at = |needle: &str| -> Option<u64> {
            let r = log.iter().find(|r| r.text.contains(needle))?;
            Some(((r.usec * 1000) as i64 - start).max(0) as u64)
        };
        OomPhases {
            report_start_ns: at("invoked oom-killer"),
            report_end_ns: at("oom-kill:constraint="),
            kill_line_ns: at("Killed process "),
        }
    }

    /// Time spent printing the OOM report (0 when it was rate limited).
    pub fn report_ns(&self) -> Option<u64> {
        match (self.report_start_ns, self.report_end_ns) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            (None, None) => Some(0),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------

/// A `Key:   value kB` field of /proc/meminfo, in KiB.
pub fn meminfo_kib(key: &str) -> Result<u64> {
    let text = util::read_file("/proc/meminfo")?;
    status_field(&text, key).with_context(|| format!("no {key} in /proc/meminfo"))
}

/// The first number of a `Key: value` line in a /proc status-like text.
pub fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// A counter of /proc/vmstat, e.g. "oom_kill".
pub fn vmstat(key: &str) -> Result<u64> {
    let text = util::read_file("/proc/vmstat")?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .with_context(|| format!("no {key} in /proc/vmstat"))
}

/// What /proc says about one process's cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcUsage {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub threads: u64,
}

pub fn proc_usage(pid: u32) -> Result<ProcUsage> {
    let status = util::read_file(format!("/proc/{pid}/status"))?;
    let stat = util::read_file(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3; utime, stime are 14 and 15.
    let after = &stat[stat.rfind(')').context("odd /proc/pid/stat")? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i - 3)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat field {i}"))
    };
    let get = |k: &str| status_field(&status, k).unwrap_or(0);
    Ok(ProcUsage {
        rss_kib: get("VmRSS"),
        hwm_kib: get("VmHWM"),
        cpu_ticks: num(14)? + num(15)?,
        voluntary_switches: get("voluntary_ctxt_switches"),
        involuntary_switches: get("nonvoluntary_ctxt_switches"),
        threads: get("Threads"),
    })
}

/// Clock ticks per second (for utime/stime).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The pid in a kernel "Killed process PID (comm)" line, with the comm and the killer:
/// "kernel" for the kernel's own "Out of memory"/"Memory cgroup out of memory", else the
/// message a BPF handler passed to bpf_oom_kill_process() (e.g. "policyd").
pub fn parse_kill_line(line: &str) -> Option<(String, u32, String)> {
    let i = line.find("Killed process ")?;
    let prefix = line[..i].trim_end().trim_end_matches(':').trim();
    let killer = if prefix.ends_with("Out of memory")
        || prefix.ends_with("out of memory")
        || prefix.contains("oom_kill_allocating_task")
    {
        "kernel".to_string()
    } else {
        prefix.to_string()
    };
    let rest = &line[i + "Killed process ".len()..];
    let pid: u32 = rest.split_whitespace().next()?.parse().ok()?;
    let comm = rest
        .find('(')
        .and_then(|a| {
            rest[a + 1..]
                .find(')')
                .map(|b| rest[a + 1..a + 1 + b].to_string())
        })
        .unwrap_or_default();
    Some((killer, pid, comm))
}

/// Quiet kernel console and no task list in OOM reports: printk to the serial console
/// under TCG costs milliseconds per line and is not what a benchmark measures.
pub fn quiet_kernel(dump_tasks: bool) -> Result<()> {
    util::write_file(
        "/proc/sys/vm/oom_dump_tasks",
        if dump_tasks { "1" } else { "0" },
    )?;
    // console_loglevel 1: only KERN_EMERG reaches the console; the log buffer keeps all.
    util::write_file("/proc/sys/kernel/printk", "1")
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

/// Emits the `env` record every bench scenario starts with: what the guest is.
pub fn emit_env(scenario: &str) -> Result<()> {
    let uname = nix::sys::utsname::uname().context("uname")?;
    let version = util::read_file("/proc/version")?.trim().to_string();
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let clocksource =
        util::read_file("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
    util::emit_json(&Record::Env(Env {
        scenario: scenario.to_owned(),
        quick: util::quick(),
        kernel_release: uname.release().to_string_lossy().into_owned(),
        kernel_version: version,
        guest_cpus: cpus,
        guest_mem_total_kib: meminfo_kib("MemTotal")?,
        clocksource,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_lines() {
        assert_eq!(
            parse_kill_line(
                "Out of memory: Killed process 321 (service) total-vm:1kB, anon-rss:2kB"
            ),
            Some(("kernel".into(), 321, "service".into()))
        );
        assert_eq!(
            parse_kill_line("Memory cgroup out of memory: Killed process 9 (hog) total-vm:1kB"),
            Some(("kernel".into(), 9, "hog".into()))
        );
        assert_eq!(
            parse_kill_line("policyd: Killed process 77 (hog) total-vm:1kB"),
            Some(("policyd".into(), 77, "hog".into()))
        );
        assert_eq!(
            parse_kill_line("policyd: oom_badness: Killed process 8 (x) total-vm:1kB"),
            Some(("policyd: oom_badness".into(), 8, "x".into()))
        );
        assert_eq!(parse_kill_line("oom_reaper: reaped process 77 (hog)"), None);
    }

    #[test]
    fn status_fields() {
        assert_eq!(
            status_field("VmRSS:\t  1234 kB\nThreads:\t1\n", "VmRSS"),
            Some(1234)
        );
    }
}
