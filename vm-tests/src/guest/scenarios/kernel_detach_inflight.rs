//! Detach against a running handler: once BPF_LINK_DETACH, or the close of a link's last
//! fd, returns, no handler of that link is running or will kill. The handler is held inside
//! an OOM of its cgroup (it busy-waits for the test, holding oom_lock); detaching the link
//! meanwhile, either way, blocks until the test lets the handler go on, and returns only
//! after the handler's kill. The OOM that follows is the kernel's, with the detached handler
//! never called again.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::libbpf_sys;

use crate::guest::kutil::{
    self, expect_oom_kills, show, Action, Handler, Stats, HANDLER_KILL_LINE,
};
use crate::guest::util::{wait_until, Cgroup, Hog, HogSpec, KillLog, Kmsg};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-detach-inflight", run).timeout_s(240)
}

/// How long the detach must stay blocked while the handler runs before the test lets the
/// handler go on.
const HELD: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug)]
enum How {
    /// BPF_LINK_DETACH on a duplicate of the link fd.
    LinkDetach,
    /// close() of the link's only fd: the link's release.
    LastClose,
}

fn run() -> Result<()> {
    kutil::set_oom_dump_tasks(false)?;
    let c = Cgroup::create("kernel-detach-inflight")?;
    c.set("memory.max", "64M")?;
    let mut h = Handler::load(Action::SpinThenKill, 0, 1)?;
    for (round, how) in [How::LinkDetach, How::LastClose].into_iter().enumerate() {
        detach_while_running(&c, &mut h, round as u64 + 1, how)
            .with_context(|| format!("{how:?}"))?;
    }
    Ok(())
}

fn detach_while_running(c: &Cgroup, h: &mut Handler, round: u64, how: How) -> Result<()> {
    // The spin's own bound stays below the hung-task timeout (20 s) of the test kernel.
    h.arm_spin(Duration::from_secs(12));
    let link = h.attach(c)?;
    let mut small = kutil::fixed_hog(c, 8)?;
    h.set(Action::SpinThenKill, small.pid(), 1);
    let c0 = h.stats();
    let before = c.events()?;
    let mut kmsg = Kmsg::mark()?;
    let mut big = Hog::start(c, &HogSpec::growing(16), Duration::from_secs(30))?;

    wait_until(
        Duration::from_secs(40),
        "the handler to start waiting inside the OOM",
        || h.stats().spins == c0.spins + 1,
    )?;
    println!(
        "{how:?}: handler running inside the OOM: {}",
        show(&h.stats())
    );

    // The detaching thread reports when its syscall returned and what the handler had done
    // by then (the counters are read right after the syscall, in the same thread).
    let (tx, rx) = mpsc::channel::<(Instant, i32, Stats)>();
    let stats_of = StatsReader::new(h);
    let (fd, keep): (OwnedFd, Option<OwnedFd>) = match how {
        How::LinkDetach => (link.try_clone().context("dup of the link fd")?, Some(link)),
        How::LastClose => (link, None),
    };
    let detacher = std::thread::spawn(move || {
        let rc = match how {
            // SAFETY: a plain syscall on an fd this thread owns.
            How::LinkDetach => unsafe { libbpf_sys::bpf_link_detach(fd.as_raw_fd()) },
            How::LastClose => {
                drop(fd);
                0
            }
        };
        let s = stats_of.read();
        let _ = tx.send((Instant::now(), rc, s));
    });

    std::thread::sleep(HELD);
    if let Ok((_, rc, s)) = rx.try_recv() {
        h.release_spin();
        let _ = detacher.join();
        bail!(
            "the detach returned ({rc}) while the handler was still running: {}",
            show(&s)
        );
    }
    let released = Instant::now();
    h.release_spin();
    let (returned, rc, at_return) = rx
        .recv_timeout(Duration::from_secs(30))
        .context("the detach did not return within 30 s of the handler going on")?;
    detacher
        .join()
        .map_err(|_| anyhow::anyhow!("the detaching thread panicked"))?;
    ensure!(rc == 0, "BPF_LINK_DETACH failed: {rc}");
    println!(
        "{how:?}: stayed blocked for {} ms while the handler ran, returned {} ms after the \
         handler was let go; by then: {}",
        HELD.as_millis(),
        returned.duration_since(released).as_millis(),
        show(&at_return)
    );
    ensure!(
        at_return.spins_released == c0.spins_released + 1,
        "the handler stopped waiting on its own (timeout), not when the test let it go: {}",
        show(&at_return)
    );
    ensure!(
        at_return.kills == c0.kills + 1 && at_return.last_victim == small.pid(),
        "when the detach returned, the running handler had not finished its kill of {}: {}",
        small.pid(),
        show(&at_return)
    );
    small.wait_killed(Duration::from_secs(20))?;

    // Detached: the growing hog's next OOM is the kernel's, and the handler is not called.
    big.wait_killed(Duration::from_secs(60))
        .context("the kernel did not kill the growing hog after the detach")?;
    let s = h.stats();
    ensure!(
        s.calls == c0.calls + 1,
        "round {round}: the handler was called {} times; after its detach it must not run: {}",
        s.calls - c0.calls,
        show(&s)
    );
    let kills = KillLog::read(&mut kmsg, &[small.pid(), big.pid()])?;
    ensure!(
        kills.killed_pids() == vec![small.pid(), big.pid()],
        "the kernel log reports kills of {:?}, expected the handler's {} then the kernel's {}:\n{}",
        kills.killed_pids(),
        small.pid(),
        big.pid(),
        kills.text()
    );
    ensure!(
        kills
            .kill_line(small.pid())
            .is_some_and(|l| l.contains(HANDLER_KILL_LINE))
            && kills
                .kill_line(big.pid())
                .is_some_and(|l| l.contains("Memory cgroup out of memory: Killed process")),
        "the small hog was not the handler's kill or the growing hog not the kernel's:\n{}",
        kills.text()
    );
    expect_oom_kills(c, &before, 2)?;
    if let Some(link) = keep {
        let info = kutil::link_info(&link)?;
        ensure!(
            info.map_id == 0,
            "the detached link still shows map {}",
            info.map_id
        );
    }
    Ok(())
}

/// Reads a handler's counters from another thread: the .bss mapping outlives the thread
/// (the handler lives until the end of the scenario, and the thread is joined before).
struct StatsReader(*const Stats);

// SAFETY: the pointer is into the mmapped .bss of a handler that outlives the reader's
// thread; it is only read, with volatile loads.
unsafe impl Send for StatsReader {}

impl StatsReader {
    fn new(h: &Handler) -> StatsReader {
        let bss = h
            .skel()
            .maps
            .bss_data
            .as_deref()
            .expect(".bss is mmapped after load");
        StatsReader(&bss.stats)
    }

    fn read(&self) -> Stats {
        // SAFETY: see the Send impl.
        unsafe { std::ptr::read_volatile(self.0) }
    }
}
