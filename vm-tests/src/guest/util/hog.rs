//! Memory hogs: this binary's `guest hog`, touching memory inside a cgroup until told or
//! killed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{describe_status, spawn_in, wait_until, write_file, Cgroup};

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
    /// Pages hold data zram compresses about 3:1 (a page of zeroes would cost it
    /// nothing), and every page held is touched again before each step, and every
    /// `delay_us` once grown: a working set that must come back from swap, as a real
    /// job's does, so that a machine short of memory thrashes.
    pub working_set: bool,
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

    pub fn working_set(mut self) -> HogSpec {
        self.working_set = true;
        self
    }

    pub fn args(&self) -> Vec<String> {
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
        if self.working_set {
            args.push("--working-set".into());
        }
        args
    }
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

/// What a hog prints once its initial memory is resident.
pub const HOG_READY: &str = "hog ready";

/// The body of `vm-tests guest hog`: never returns unless setup fails.
pub fn run_hog(spec: &HogSpec) -> Result<()> {
    write_file("/proc/self/oom_score_adj", spec.oom_score_adj.to_string())?;
    if spec.working_set {
        return run_working_set(spec);
    }
    touch_mib(spec.mib)?;
    let (step, max) = ready_then_growth(spec)?;
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

/// Says the hog is ready, waits at the gate if it has one; then how it grows: bytes per
/// step, and the most it holds.
fn ready_then_growth(spec: &HogSpec) -> Result<(u64, u64)> {
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
    Ok((step, max))
}

/// [`run_hog`] with [`HogSpec::working_set`].
fn run_working_set(spec: &HogSpec) -> Result<()> {
    let mut set = WorkingSet::default();
    for _ in 0..spec.mib {
        set.grow(1 << 20)?;
    }
    let (step, max) = ready_then_growth(spec)?;
    let delay = Duration::from_micros(spec.delay_us.unwrap_or(0));
    loop {
        set.touch_all();
        if spec.grow && set.bytes < max {
            set.grow(step as usize)?;
        } else if delay.is_zero() {
            // Nothing left to do: never spin.
            thread::sleep(Duration::from_secs(3600));
        }
        thread::sleep(delay);
    }
}

/// The pages of a working-set hog.
#[derive(Default)]
struct WorkingSet {
    regions: Vec<(std::ptr::NonNull<std::ffi::c_void>, usize)>,
    bytes: u64,
    seed: u64,
}

impl WorkingSet {
    /// Bytes of each page filled with pseudo-random data; the rest stays zero.
    const FILLED: usize = 1024;

    fn grow(&mut self, len: usize) -> Result<()> {
        let ptr = map_touched(len, true)?;
        let base = ptr.as_ptr().cast::<u64>();
        for page in (0..len).step_by(4096) {
            for word in 0..Self::FILLED / 8 {
                // xorshift64: cheap, and lzo-rle finds nothing to repeat in it.
                self.seed ^= self.seed << 13;
                self.seed ^= self.seed >> 7;
                self.seed ^= self.seed << 17;
                self.seed = self.seed.max(1);
                // SAFETY: within the `len` bytes just mapped.
                unsafe { base.add(page / 8 + word).write_volatile(self.seed) };
            }
        }
        self.regions.push((ptr, len));
        self.bytes += len as u64;
        Ok(())
    }

    /// Writes one byte of every page: each comes back from swap if it was out.
    fn touch_all(&self) {
        for (ptr, len) in &self.regions {
            let base = ptr.as_ptr().cast::<u8>();
            for off in (0..*len).step_by(4096) {
                // SAFETY: within a mapping of `len` bytes this hog never unmaps.
                unsafe {
                    let p = base.add(off);
                    p.write_volatile(p.read_volatile().wrapping_add(1));
                }
            }
        }
    }
}

/// What one `guest churn` took: its CPU time (utime + stime: the charge path and any
/// tracer on it run in the faulting task) and its wall time.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    pub cpu_ns: u64,
    pub wall_ns: u64,
}

impl Churn {
    /// Runs `guest churn` in `cgroup` and waits for it.
    pub fn run(cgroup: &Cgroup, mib: u64, rounds: u32) -> Result<Churn> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["guest", "churn", "--mib", &mib.to_string()])
            .args(["--rounds", &rounds.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let child = spawn_in(cgroup, &mut cmd, Some(0))?;
        let out = child
            .wait_with_output()
            .context("waiting for guest churn")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("guest churn {}: {text}", describe_status(out.status));
        }
        let field = |key: &str| -> Result<u64> {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in guest churn's output {text:?}"))
        };
        Ok(Churn {
            cpu_ns: field("cpu_ns=")?,
            wall_ns: field("wall_ns=")?,
        })
    }
}

/// The body of `vm-tests guest churn`: every round maps `mib` MiB without huge pages,
/// writes every page (a fault and a memcg charge each) and unmaps it (uncharged again).
pub fn run_churn(mib: u64, rounds: u32) -> Result<()> {
    use nix::sys::mman::munmap;
    use nix::sys::resource::{getrusage, UsageWho};
    let len = usize::try_from(mib << 20).context("--mib too large")?;
    anyhow::ensure!(len > 0, "--mib 0");
    let cpu = || -> Result<u64> {
        let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
        let ns = |t: nix::sys::time::TimeVal| {
            t.tv_sec() as u64 * 1_000_000_000 + t.tv_usec() as u64 * 1000
        };
        Ok(ns(u.user_time()) + ns(u.system_time()))
    };
    let (cpu0, wall0) = (cpu()?, Instant::now());
    for _ in 0..rounds {
        // 4 KiB pages, the charge path's worst case: a huge page is one charge.
        let ptr = map_touched(len, false)?;
        // SAFETY: the mapping map_touched made, unmapped once and never used again.
        unsafe { munmap(ptr, len).context("munmap")? };
    }
    println!(
        "cpu_ns={} wall_ns={}",
        cpu()? - cpu0,
        wall0.elapsed().as_nanos()
    );
    Ok(())
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
    map_touched(len, true).map(drop)
}

/// A fresh private anonymous mapping of `len` bytes with every page written (a fault
/// and a memcg charge each); without `huge_pages`, 4 KiB pages only.
fn map_touched(len: usize, huge_pages: bool) -> Result<std::ptr::NonNull<std::ffi::c_void>> {
    use nix::sys::mman::{madvise, mmap_anonymous, MapFlags, MmapAdvise, ProtFlags};
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
        if !huge_pages {
            // EINVAL: a kernel without THP, whose pages are all 4 KiB.
            match madvise(ptr, len, MmapAdvise::MADV_NOHUGEPAGE) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => return Err(e).context("madvise(MADV_NOHUGEPAGE)"),
            }
        }
        let base = ptr.as_ptr().cast::<u8>();
        for off in (0..len).step_by(4096) {
            base.add(off).write_volatile(1);
        }
        Ok(ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
