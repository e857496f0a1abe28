//! Linux 7.3: a PSI trigger armed without CAP_SYS_RESOURCE fires on stall that ended
//! before it was armed. This is why policyd arms no pressure trigger without that
//! capability (`arm_all` in policyd/pressure.rs) and its unit keeps it; bench-thrash
//! found it (issue #12: policyd killed jobs that had barely stalled).
//!
//! The mechanism (kernel/sched/psi.c): psi_trigger_create() starts every trigger's first
//! window at `total[PSI_POLL]`, the totals only the rtpoll worker advances, and only for
//! a group with a privileged trigger. A privileged trigger goes to that worker, which
//! resets its window to the current total when it starts polling
//! (init_rtpoll_triggers()). An unprivileged one goes to the averages worker, whose
//! update_triggers() measures its growth on `total[PSI_AVGS]` from that stale start: all
//! the group's stall since its creation. It fires at the first averages update (every
//! 2 s) that sees any new stall, however small.
//!
//! The scenario: a hog in /psi-bug throttled under memory.high (penalty sleeps, a memory
//! stall) until the group's `full` total passes `HISTORY_US`; then memory.high lifted,
//! the hog grows to `HOG_MIB` and sleeps, and the totals stay still for a window: the
//! stall is over. A
//! trigger `full 100000 2000000` (unprivileged writers may only use 2 s windows) armed by
//! a helper without CAP_SYS_RESOURCE, then a nudge (a short task charging over
//! memory.high, a stall far under the threshold): the trigger fires. The same trigger
//! armed with CAP_SYS_RESOURCE, the same nudge: no event; then the group stalls again and
//! it fires, so it was watching. About 23 s under TCG, boot included.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use policyd::pressure::{process_has_cap, CAP_SYS_RESOURCE};

use crate::guest::util::{spawn_in, Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-psi-unprivileged-trigger", run).timeout_s(120)
}

const TRIGGER: &str = "full 100000 2000000";
const THRESHOLD_US: u64 = 100_000;
/// The group's stall before any trigger is armed: ten thresholds.
const HISTORY_US: u64 = 10 * THRESHOLD_US;
/// What the hog holds once memory.high is lifted. Large, so that the nudge's few charge
/// batches (64 pages each) over memory.high are under 1% of it: the kernel's over-high
/// penalty (overage ratio squared × 64 × HZ jiffies) then stays under HZ/100 and
/// nobody sleeps. (A 1 MiB hog as the nudge went 3 MiB over 192: 0.33 s of stall.)
const HOG_MIB: u64 = 128;
/// Two averages updates: an event due would have come.
const EVENT_WAIT: Duration = Duration::from_secs(5);
const WHAT_IT_MEANS: &str = "if Linux no longer fires an unprivileged trigger on past stall, \
     policyd's CAP_SYS_RESOURCE requirement for [[pressure]] and [swap] (arm_all in \
     policyd/pressure.rs, deploy/ unit) can be relaxed";

fn run() -> Result<()> {
    let cg = Cgroup::create("psi-bug")?;
    let pressure = cg.dir().join("memory.pressure");
    let pressure = pressure
        .to_str()
        .context("a cgroup path that is not UTF-8")?;

    // The past stall: the hog grows 256 KiB at a time against memory.high.
    cg.set("memory.high", "8M")?;
    let mut hog = Hog::start(
        &cg,
        &HogSpec::growing(4).step_kib(256).up_to(HOG_MIB),
        Duration::from_secs(30),
    )?;
    let started = Instant::now();
    while full_total(pressure)? < HISTORY_US {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "/psi-bug stalled only {} us in 30 s under memory.high (hog alive: {})",
            full_total(pressure)?,
            hog.is_alive()
        );
        thread::sleep(Duration::from_millis(100));
    }
    cg.set("memory.high", "max")?;
    let history = still(pressure)?;
    println!("/psi-bug stalled {history} us, then nothing for 2.5 s; no trigger armed so far");

    let unprivileged = Trigger::arm(pressure, false)?;
    nudge(&cg)?;
    let fired = unprivileged.wait_event(EVENT_WAIT)?;
    unprivileged.close()?;
    let nudged = new_stall(pressure, history)?;
    println!("armed without CAP_SYS_RESOURCE, nudged: {nudged} us of new stall");
    let Some(after) = fired else {
        bail!(
            "a trigger `{TRIGGER}` armed without CAP_SYS_RESOURCE stayed quiet {} s after \
             {history} us of past stall and a {nudged} us nudge: {WHAT_IT_MEANS}",
            EVENT_WAIT.as_secs()
        );
    };
    println!(
        "it fired {:.1} s after the nudge, on stall that ended before it was armed",
        after.as_secs_f64()
    );

    let before = still(pressure)?;
    let privileged = Trigger::arm(pressure, true)?;
    nudge(&cg)?;
    let fired = privileged.wait_event(EVENT_WAIT)?;
    let nudged = new_stall(pressure, before)?;
    println!("armed with CAP_SYS_RESOURCE, nudged: {nudged} us of new stall");
    if let Some(after) = fired {
        bail!(
            "the same trigger armed with CAP_SYS_RESOURCE fired {:.1} s after a {nudged} us \
             nudge, on past stall too: policyd's pressure rules cannot trust a trigger's \
             first window on this kernel at all",
            after.as_secs_f64()
        );
    }
    println!("no event in {} s", EVENT_WAIT.as_secs());
    // A trigger that never fires would pass the check above: real stall must fire it.
    let stall_before = full_total(pressure)?;
    cg.set(
        "memory.high",
        (cg.read_u64("memory.current")? + (1 << 20)).to_string(),
    )?;
    let grower = Hog::start(
        &cg,
        &HogSpec::growing(1).step_kib(256).up_to(16),
        Duration::from_secs(30),
    )?;
    let fired = privileged.wait_event(Duration::from_secs(20))?;
    let stalled = full_total(pressure)? - stall_before;
    privileged.close()?;
    let Some(after) = fired else {
        bail!(
            "the privileged trigger stayed quiet through {stalled} us of new stall: it \
             does not watch, and its silence above proves nothing"
        );
    };
    println!(
        "real stall fired it {:.1} s later ({stalled} us of new stall)",
        after.as_secs_f64()
    );
    drop(grower);
    drop(hog);
    cg.remove()
}

/// The `full` total of a pressure file, in µs. Reading it also folds the group's stall
/// into the averages' totals, which the averages worker compares for new stall.
fn full_total(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find(|l| l.starts_with("full"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no full total in {path}: {text:?}"))
}

/// Waits until the `full` total stays the same over a whole window; returns it.
fn still(path: &str) -> Result<u64> {
    let started = Instant::now();
    let mut last = full_total(path)?;
    loop {
        thread::sleep(Duration::from_millis(2500));
        let now = full_total(path)?;
        if now == last {
            return Ok(now);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{path} still stalls 30 s after memory.high was lifted ({last} -> {now} us)"
        );
        last = now;
    }
}

/// A little new stall in the group: busybox dd with a 512 KiB buffer run in it with
/// memory.high at the group's usage, so that its charges go over it (reclaim, which
/// finds nothing to free without swap, in a memory stall; no penalty sleep for so small
/// an overage, see `HOG_MIB`). Less than the 64 pages a CPU keeps charged in advance
/// would go unnoticed (`busybox true` made no stall). No pressure file is read
/// until the trigger had its chance: a read folds the new stall into the averages, and
/// the averages worker would then see none.
fn nudge(cg: &Cgroup) -> Result<()> {
    cg.set("memory.high", cg.read_u64("memory.current")?.to_string())?;
    let mut dd = Command::new("/bin/busybox");
    dd.args(["dd", "if=/dev/zero", "of=/dev/null", "bs=512K", "count=1"])
        .stderr(Stdio::null());
    let status = spawn_in(cg, &mut dd, None)?
        .wait()
        .context("waiting for busybox dd")?;
    ensure!(status.success(), "busybox dd in {}: {status}", cg.path());
    cg.set("memory.high", "max")
}

/// The stall since `before` (the nudge's): far under the threshold, or the test proves
/// nothing.
fn new_stall(pressure: &str, before: u64) -> Result<u64> {
    let stall = full_total(pressure)? - before;
    ensure!(
        stall > 0,
        "the nudge made no stall in {pressure}: the averages worker would see nothing new"
    );
    ensure!(
        stall < THRESHOLD_US / 2,
        "the nudge stalled {stall} us, too close to the trigger's {THRESHOLD_US} us to tell past stall from new"
    );
    Ok(stall)
}

/// `guest psi-trigger`, started with or without CAP_SYS_RESOURCE.
struct Trigger {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Trigger {
    fn arm(path: &str, privileged: bool) -> Result<Trigger> {
        let exe = std::env::current_exe().context("locating the vm-tests binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["guest", "psi-trigger", path, TRIGGER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if !privileged {
            // Root's capabilities after exec are its bounding set: without it there, the
            // helper has it neither permitted nor effective.
            // SAFETY: prctl(2) is async-signal-safe and touches only this process.
            unsafe {
                cmd.pre_exec(|| {
                    let cap = nix::libc::c_ulong::from(CAP_SYS_RESOURCE);
                    if nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = spawn_in(&Cgroup::root(), &mut cmd, None)?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let armed = lines
            .recv_timeout(Duration::from_secs(30))
            .context("the trigger helper said nothing")?;
        let want = format!("armed cap_sys_resource={}", u8::from(privileged));
        ensure!(
            armed == want,
            "the trigger helper said {armed:?}, not {want:?}"
        );
        Ok(Trigger {
            child,
            stdin,
            lines,
        })
    }

    /// How long until the trigger's next event, if one comes within `timeout`.
    fn wait_event(&self, timeout: Duration) -> Result<Option<Duration>> {
        let started = Instant::now();
        match self.lines.recv_timeout(timeout) {
            Ok(line) if line == "fired" => Ok(Some(started.elapsed())),
            Ok(line) => bail!("the trigger helper said {line:?}"),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the trigger helper ended"),
        }
    }

    /// Ends the helper (its stdin closes), which removes the trigger.
    fn close(self) -> Result<()> {
        let Trigger {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let status = child.wait().context("waiting for the trigger helper")?;
        ensure!(status.success(), "the trigger helper failed: {status}");
        Ok(())
    }
}

/// The body of `vm-tests guest psi-trigger PATH TRIGGER`: arms the trigger, says with
/// which capability, then prints "fired" at each event until stdin closes.
pub fn run_trigger(path: &str, trigger: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    file.write_all(trigger.as_bytes())
        .with_context(|| format!("writing {trigger:?} to {path}"))?;
    let cap = process_has_cap(CAP_SYS_RESOURCE).context("no CapEff in /proc/self/status")?;
    println!("armed cap_sys_resource={}", u8::from(cap));
    let stdin = std::io::stdin();
    loop {
        let mut fds = [
            PollFd::new(file.as_fd(), PollFlags::POLLPRI),
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
        ];
        poll(&mut fds, PollTimeout::NONE).context("poll")?;
        let trig = fds[0].revents().unwrap_or(PollFlags::empty());
        let input = fds[1].revents().unwrap_or(PollFlags::empty());
        if trig.contains(PollFlags::POLLERR) {
            bail!("{path}: the trigger is gone (POLLERR)");
        }
        if trig.contains(PollFlags::POLLPRI) {
            println!("fired");
        }
        if !input.is_empty() {
            let mut buf = [0u8; 64];
            if stdin.lock().read(&mut buf)? == 0 {
                return Ok(());
            }
        }
    }
}
