//! What the kernel series costs everyone else: a fork+exit loop (patch 1 changes
//! exit_mmap(), which every exit runs) and an mmap+touch+munmap loop, on Linux 7.3 without
//! the series, with it and no handler, and with it and `policyd load priority` attached
//! but idle.
//!
//! The host boots the two kernels alternately (Boots::VanillaAndTest), this scenario
//! once per boot; the kernel's BTF says which one it is. Within a boot of the test kernel,
//! rounds without and with policyd alternate. Each round times the whole loop; the host
//! reports the ratios of the medians to the vanilla kernel and the spread of the rounds.
//!
//! Under TCG the guest's clock counts instructions (QEMU's -icount), so the host's load
//! does not enter the times. Each round runs in a fresh process (`guest kernel-loops`):
//! a fork copies its parent's page tables, and this scenario's own process grows as it
//! reads policyd's output. Timed in that process, fork+exit cost 57% more after a first
//! policyd had run, on vanilla 7.3 as on the test kernel.

use std::process::{Command, Stdio};
use std::ptr;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use nix::libc;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use crate::guest::bench::emit_env;
use crate::guest::pdutil::{self, Policyd};
use crate::guest::util::{self, describe_status, spawn_in, Cgroup};
use crate::guest::Scenario;
use crate::records::{KernelCost, KernelCostRound, Record};

pub const NAME: &str = "bench-kernel-cost";

pub fn scenario() -> Scenario {
    Scenario::new(NAME, run)
        .mem_mb(512)
        .timeout_s(1200)
        .needs_policyd()
        .on_vanilla_and_test_kernel()
        .counts_instructions()
}

/// Pages each mmap loop iteration maps, touches and unmaps.
const MMAP_PAGES: usize = 16;

struct Sizes {
    rounds: usize,
    forks: usize,
    mmaps: usize,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            rounds: 3,
            forks: 300,
            mmaps: 2000,
        }
    } else {
        // Under TCG the loops count instructions, which vary by a few percent: more
        // rounds than this add time (an -icount guest runs slower), not precision.
        Sizes {
            rounds: 5,
            forks: 500,
            mmaps: 4000,
        }
    }
}

/// Whether the running kernel carries the series: its BTF has struct bpf_oom_ops.
fn has_series() -> Result<bool> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").context("reading the kernel's BTF")?;
    Ok(btf
        .windows(b"\0bpf_oom_ops\0".len())
        .any(|w| w == b"\0bpf_oom_ops\0"))
}

/// Nanoseconds per fork()+_exit()+waitpid() of a child that does nothing.
fn fork_exit_ns(n: usize) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: the child calls only _exit(), which is async-signal-safe.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => unsafe { libc::_exit(0) },
            ForkResult::Parent { child } => match waitpid(child, None).context("waitpid")? {
                WaitStatus::Exited(_, 0) => {}
                other => bail!("the forked child ended with {other:?}"),
            },
        }
    }
    Ok(t.elapsed().as_nanos() as f64 / n as f64)
}

/// Nanoseconds per mmap() of MMAP_PAGES anonymous pages, a write to each, munmap().
fn mmap_touch_ns(n: usize) -> Result<f64> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .context("sysconf(PAGE_SIZE)")?
        .context("no page size")? as usize;
    let len = page * MMAP_PAGES;
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: a fresh private anonymous mapping, written within its length and
        // unmapped before the next one; nothing else refers to it.
        unsafe {
            let p = libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                bail!("mmap: {}", std::io::Error::last_os_error());
            }
            for i in 0..MMAP_PAGES {
                ptr::write_volatile((p as *mut u8).add(i * page), 1);
            }
            if libc::munmap(p, len) != 0 {
                bail!("munmap: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(t.elapsed().as_nanos() as f64 / n as f64)
}

/// `guest kernel-loops`: both loops, their times on stdout for [`round`].
pub fn run_loops(forks: usize, mmaps: usize) -> Result<()> {
    let fork = fork_exit_ns(forks)?;
    let mmap = mmap_touch_ns(mmaps)?;
    println!("fork_exit_ns={fork:.1} mmap_touch_ns={mmap:.1}");
    Ok(())
}

/// One round in a fresh process in `cg`.
fn round(cg: &Cgroup, handler: &str, forks: usize, mmaps: usize) -> Result<KernelCostRound> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["guest", "kernel-loops"])
        .args(["--forks", &forks.to_string(), "--mmaps", &mmaps.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let out = spawn_in(cg, &mut cmd, None)?
        .wait_with_output()
        .context("waiting for guest kernel-loops")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "guest kernel-loops {}: {text}",
        describe_status(out.status)
    );
    let field = |key: &str| -> Result<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in guest kernel-loops' output {text:?}"))
    };
    Ok(KernelCostRound {
        handler: handler.to_owned(),
        fork_exit_ns: field("fork_exit_ns=")?,
        mmap_touch_ns: field("mmap_touch_ns=")?,
    })
}

fn run() -> Result<()> {
    emit_env(NAME)?;
    let quick = util::quick();
    let s = sizes(quick);
    let patched = has_series()?;
    // In a memory cgroup of its own, as a container's processes are: charging is part
    // of the cost, and the root cgroup charges nothing.
    let cg = Cgroup::create("bench-kernel-cost")?;
    let config = pdutil::write_config(NAME, "")?;

    // Warm-up, not recorded: page cache, slab caches, the first fork's faults.
    round(&cg, "none", s.forks / 10, s.mmaps / 10)?;
    let mut rounds = Vec::new();
    for _ in 0..s.rounds {
        rounds.push(round(&cg, "none", s.forks, s.mmaps)?);
        if patched {
            let pd = Policyd::start(&["priority", "--config", &config], false)?;
            rounds.push(round(&cg, "priority", s.forks, s.mmaps)?);
            pd.stop().context("stopping policyd")?;
        }
    }
    ensure!(!rounds.is_empty(), "no rounds ran");
    for r in &rounds {
        println!(
            "{} {}: fork+exit {:.0} ns, mmap+touch {:.0} ns",
            if patched { "patched" } else { "vanilla" },
            r.handler,
            r.fork_exit_ns,
            r.mmap_touch_ns
        );
    }
    util::emit_json(&Record::KernelCost(KernelCost {
        kernel: if patched { "patched" } else { "vanilla" }.to_owned(),
        forks_per_round: s.forks,
        mmaps_per_round: s.mmaps,
        mmap_pages: MMAP_PAGES,
        rounds,
    }));
    cg.remove()
}
